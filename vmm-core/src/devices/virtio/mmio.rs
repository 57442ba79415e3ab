//! The virtio-mmio transport, version 2 (modern) only. One 4 KiB window
//! and one GSI per device. Queue notifications never reach this code: they
//! are ioeventfds bound to the device's kick eventfds; interrupts are an
//! irqfd. What is left is registers and the status state machine.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::{Activation, QueueConfig, VirtioDevice, F_VERSION_1};
use crate::devices::bus::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d56_5053; // "SPVM"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of QueueNotify; the VMM registers ioeventfds here.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// InterruptStatus bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Lets code outside the vCPU threads raise a config-change interrupt.
#[derive(Clone)]
pub struct ConfigNotifier {
    status: Arc<AtomicU32>,
    generation: Arc<AtomicU32>,
    call: Arc<EventFd>,
}

impl ConfigNotifier {
    pub fn notify(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        if let Err(e) = self.call.write(1) {
            log::warn!("virtio-mmio: config interrupt: {e}");
        }
    }
}

/// A virtio device behind its MMIO register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    max_sizes: Vec<u16>,
    status: u32,
    interrupt_status: Arc<AtomicU32>,
    config_generation: Arc<AtomicU32>,
    kicks: Vec<EventFd>,
    call: Arc<EventFd>,
}

impl MmioTransport {
    /// `kicks` holds one eventfd per queue, `call` the irqfd's eventfd.
    pub fn new(device: Box<dyn VirtioDevice>, kicks: Vec<EventFd>, call: Arc<EventFd>) -> Self {
        let max_sizes = device.queue_max_sizes();
        let mut t = MmioTransport {
            queues: vec![QueueConfig::default(); max_sizes.len()],
            max_sizes,
            device,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            config_generation: Arc::new(AtomicU32::new(0)),
            kicks,
            call,
        };
        let notifier = t.config_notifier();
        t.device.set_config_notifier(notifier);
        t
    }

    pub fn config_notifier(&self) -> ConfigNotifier {
        ConfigNotifier {
            status: self.interrupt_status.clone(),
            generation: self.config_generation.clone(),
            call: self.call.clone(),
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    /// Stops the device as a driver reset would (used at VMM shutdown).
    pub fn stop(&mut self) {
        self.reset();
    }

    /// The device behind this window.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    fn queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        if self.status & STATUS_DRIVER_OK != 0 {
            self.device.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues
            .iter_mut()
            .for_each(|q| *q = QueueConfig::default());
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    fn set_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        // Bits may only be added, and FEATURES_OK only when the features
        // are acceptable; anything else is ignored and the driver notices.
        if new & self.status != self.status {
            log::warn!(
                "virtio-mmio: driver cleared status bits ({:#x} -> {new:#x})",
                self.status
            );
            return;
        }
        let added = new & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & F_VERSION_1 == 0 {
                log::warn!(
                    "virtio-mmio: driver features {:#x} not a modern subset of {offered:#x}",
                    self.driver_features
                );
                self.status = new & !STATUS_FEATURES_OK;
                return;
            }
        }
        if added & STATUS_DRIVER_OK != 0 && self.status & STATUS_FEATURES_OK != 0 {
            let act = Activation {
                features: self.driver_features,
                queues: &self.queues,
                kicks: &self.kicks,
                call: &self.call,
            };
            if let Err(e) = self.device.activate(act) {
                log::error!("virtio-mmio: activating device failed: {e}");
                self.status = new | STATUS_NEEDS_RESET;
                self.config_notifier().notify();
                return;
            }
        }
        self.status = new;
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let q = self.queue_sel as usize;
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.max_sizes.get(q).copied().map_or(0, u32::from),
            REG_QUEUE_READY => self.queues.get(q).map_or(0, |c| u32::from(c.ready)),
            // A vhost-user backend signals its call eventfd for used buffers
            // without telling the VMM, so once the device runs every
            // interrupt may be a ring interrupt (Firecracker does the same).
            REG_INTERRUPT_STATUS => {
                let running = if self.status & STATUS_DRIVER_OK != 0 {
                    INT_VRING
                } else {
                    0
                };
                self.interrupt_status.load(Ordering::SeqCst) | running
            }
            REG_STATUS => self.status,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX, // no shared memory regions
            REG_CONFIG_GENERATION => self.config_generation.load(Ordering::SeqCst),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let set_lo = |x: &mut u64, v: u32| *x = (*x & !0xffff_ffff) | u64::from(v);
        let set_hi = |x: &mut u64, v: u32| *x = (*x & 0xffff_ffff) | (u64::from(v) << 32);
        // Queue and feature registers are writable only before DRIVER_OK.
        let configuring = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if configuring && self.status & STATUS_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => set_lo(&mut self.driver_features, v),
                    1 => set_hi(&mut self.driver_features, v),
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM if configuring => {
                let max = self
                    .max_sizes
                    .get(self.queue_sel as usize)
                    .copied()
                    .unwrap_or(0);
                if let Some(q) = self.queue() {
                    // Split-ring sizes are powers of two up to the maximum.
                    if v <= u32::from(max) && v.is_power_of_two() {
                        q.size = v as u16;
                    } else {
                        log::warn!("virtio-mmio: bad queue size {v} (max {max})");
                    }
                }
            }
            REG_QUEUE_READY if configuring => {
                if let Some(q) = self.queue() {
                    q.ready = v == 1;
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally an ioeventfd; forward in case one was not taken.
                if let Some(k) = self.kicks.get(v as usize) {
                    let _ = k.write(1);
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW if configuring => self
                .queue()
                .into_iter()
                .for_each(|q| set_lo(&mut q.desc, v)),
            REG_QUEUE_DESC_HIGH if configuring => self
                .queue()
                .into_iter()
                .for_each(|q| set_hi(&mut q.desc, v)),
            REG_QUEUE_AVAIL_LOW if configuring => self
                .queue()
                .into_iter()
                .for_each(|q| set_lo(&mut q.avail, v)),
            REG_QUEUE_AVAIL_HIGH if configuring => self
                .queue()
                .into_iter()
                .for_each(|q| set_hi(&mut q.avail, v)),
            REG_QUEUE_USED_LOW if configuring => self
                .queue()
                .into_iter()
                .for_each(|q| set_lo(&mut q.used, v)),
            REG_QUEUE_USED_HIGH if configuring => self
                .queue()
                .into_iter()
                .for_each(|q| set_hi(&mut q.used, v)),
            REG_SHM_SEL => {}
            _ => log::debug!("virtio-mmio: ignored write {v:#x} at {offset:#x}"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(b) if offset.is_multiple_of(4) => self.write_reg(offset, u32::from_le_bytes(b)),
            _ => log::warn!("virtio-mmio: {}-byte write at {offset:#x}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::devices::virtio::DeviceError;

    #[derive(Default)]
    struct Seen {
        activated: Vec<(u64, Vec<QueueConfig>)>,
        resets: usize,
    }

    /// A device model standing in for a backend: the transport's logic is
    /// what is under test here; real backends are tested in tests/it.
    struct Model {
        seen: Arc<Mutex<Seen>>,
        fail: bool,
    }

    impl VirtioDevice for Model {
        fn device_type(&self) -> u32 {
            2
        }
        fn features(&self) -> u64 {
            F_VERSION_1 | 1 << 9
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![64, 64]
        }
        fn read_config(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, act: Activation<'_>) -> Result<(), DeviceError> {
            if self.fail {
                return Err(DeviceError("backend gone".into()));
            }
            self.seen
                .lock()
                .unwrap()
                .activated
                .push((act.features, act.queues.to_vec()));
            Ok(())
        }
        fn reset(&mut self) {
            self.seen.lock().unwrap().resets += 1;
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<Mutex<Seen>>, Vec<EventFd>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let clones = kicks.iter().map(|k| k.try_clone().unwrap()).collect();
        let call = Arc::new(EventFd::new(0).unwrap());
        let t = MmioTransport::new(
            Box::new(Model {
                seen: seen.clone(),
                fail,
            }),
            clones,
            call,
        );
        (t, seen, kicks)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        r(t, REG_STATUS)
    }

    #[test]
    fn identity_registers() {
        let (mut t, _, _) = transport(false);
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 2);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 64);
        w(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0, "no third queue");
        let mut cfg = [0u8; 2];
        t.read(CONFIG_SPACE + 7, &mut cfg);
        assert_eq!(cfg, [7, 7]);
    }

    #[test]
    fn features_ok_refused_for_unoffered_or_legacy_features() {
        let (mut t, _, _) = transport(false);
        let st = negotiate(&mut t, F_VERSION_1 | 1 << 20);
        assert_eq!(st & STATUS_FEATURES_OK, 0, "unoffered bit 20");
        w(&mut t, REG_STATUS, 0);
        let st = negotiate(&mut t, 1 << 9);
        assert_eq!(st & STATUS_FEATURES_OK, 0, "no VERSION_1");
        w(&mut t, REG_STATUS, 0);
        let st = negotiate(&mut t, F_VERSION_1 | 1 << 9);
        assert_ne!(st & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_activates_with_queue_config_and_reset_stops() {
        let (mut t, seen, kicks) = transport(false);
        negotiate(&mut t, F_VERSION_1);
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_QUEUE_NUM, 100); // not a power of two: ignored
        w(&mut t, REG_QUEUE_NUM, 128); // above the maximum: ignored
        w(&mut t, REG_QUEUE_NUM, 32);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        w(&mut t, REG_QUEUE_DESC_HIGH, 0x1);
        w(&mut t, REG_QUEUE_AVAIL_LOW, 0x2000);
        w(&mut t, REG_QUEUE_USED_LOW, 0x3000);
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        w(&mut t, REG_STATUS, st);
        assert_eq!(r(&mut t, REG_STATUS), st);
        {
            let s = seen.lock().unwrap();
            let (features, queues) = &s.activated[0];
            assert_eq!(*features, F_VERSION_1);
            assert!(!queues[0].ready);
            assert_eq!(
                queues[1],
                QueueConfig {
                    size: 32,
                    ready: true,
                    desc: 0x1_0000_1000,
                    avail: 0x2000,
                    used: 0x3000
                }
            );
        }
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS) & INT_VRING, INT_VRING);
        // Queue registers are frozen while running.
        w(&mut t, REG_QUEUE_DESC_LOW, 0x9000);
        assert_eq!(t.queues[1].desc, 0x1_0000_1000);
        // A notify that reaches the bus is forwarded to the kick eventfd.
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(kicks[1].read().unwrap(), 1);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(seen.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(t.queues[1], QueueConfig::default());
    }

    #[test]
    fn failed_activation_sets_needs_reset_and_config_interrupt() {
        let (mut t, _, _) = transport(true);
        negotiate(&mut t, F_VERSION_1);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        w(&mut t, REG_STATUS, st | STATUS_DRIVER_OK);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
        w(&mut t, REG_INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    }

    #[test]
    fn odd_sized_register_accesses_are_ignored() {
        let (mut t, _, _) = transport(false);
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(REG_STATUS, &[1]);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }
}
