//! Builds a VM from a [`VmConfig`] and runs it to the end.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Read, Write};
use std::sync::{Arc, Mutex};
use std::thread;

use linux_loader::loader::Cmdline;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::terminal::Terminal;

use kvm_ioctls::IoEventAddress;

use crate::api::control::{DeviceHandle, VmmHandle};
use crate::arch::x86_64::acpi::MmioDeviceInfo;
use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, CMOS_PORT, I8042_PORT, SERIAL_IRQ, SERIAL_PORT, VIRTIO_GSI_START,
    VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::arch::x86_64::{acpi, boot, mptable};
use crate::config::{SerialTarget, VmConfig};
use crate::devices::bus::{Bus, BusDevice};
use crate::devices::cmos::Cmos;
use crate::devices::console_out::{line_out, ConsoleFlusher, STALE};
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::VirtioDevice;
use crate::vhost_user::device::VhostUserDevice;
use crate::vhost_user::frontend::FrontendError;
use crate::vhost_user::monitor::Monitor;
use crate::vstate::memory::{self, GuestMemory};
use crate::vstate::run_state::{install_kick_handler, RunState};
use crate::vstate::vcpu::{ExitSignal, Vcpu, VcpuError, VmExitEvent};
use crate::vstate::vm::{Vm, VmError};
use std::os::unix::thread::JoinHandleExt;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("guest memory: {0}")]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error("kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cpus: {want} is more than this host's KVM allows ({max})")]
    TooManyVcpus { want: u8, max: usize },
    #[error("serial output {path}: {source}")]
    SerialFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("creating an eventfd failed: {0}")]
    EventFd(#[source] std::io::Error),
    #[error(transparent)]
    Backend(#[from] FrontendError),
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {source}")]
    Ioeventfd {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("spawning thread {name} failed: {source}")]
    Thread {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl VmmError {
    /// True when the error comes from what the user gave (a file, a size),
    /// not from the host or the guest: the CLI exits with status 2 for those.
    pub fn is_user_input(&self) -> bool {
        matches!(
            self,
            VmmError::Boot(
                boot::BootError::KernelOpen { .. }
                    | boot::BootError::KernelFormat { .. }
                    | boot::BootError::KernelLoad { .. }
                    | boot::BootError::NoPvhEntry { .. }
                    | boot::BootError::InitrdOpen { .. }
                    | boot::BootError::InitrdTooBig { .. }
            ) | VmmError::Cmdline(_)
                | VmmError::TooManyVcpus { .. }
                | VmmError::SerialFile { .. }
        )
    }
}

/// A built VM, ready to start.
/// A vhost-user device on the MMIO bus, with its supervision thread.
pub struct AttachedDevice {
    /// `blk0`, `net1`, ...: the name the API and logs use.
    pub name: String,
    pub transport: Arc<Mutex<MmioTransport>>,
    _monitor: Monitor,
}

pub struct Vmm {
    devices: Vec<AttachedDevice>,
    handle: Arc<VmmHandle>,
    // The memslots point into `mem`; the Vmm must outlive the vCPU threads,
    // so `run` borrows it and the caller drops it only at process exit.
    _vm: Vm,
    _mem: GuestMemory,
    _memfd: std::fs::File,
    vcpus: Vec<Vcpu>,
    exit: ExitSignal,
    serial: Arc<Mutex<SerialDevice>>,
    console: Option<ConsoleFlusher>,
    /// Installed by each vCPU thread before it first enters the guest.
    vcpu_filter: Option<Arc<seccompiler::BpfProgram>>,
}

/// The console's writer, and its flusher when it assembles lines (stdout
/// that is no terminal, where log lines may share the stream).
fn serial_output(
    target: &SerialTarget,
) -> Result<(Box<dyn Write + Send>, Option<ConsoleFlusher>), VmmError> {
    Ok(match target {
        SerialTarget::Stdout if !std::io::stdout().is_terminal() => {
            let (w, f) = line_out(Box::new(std::io::stdout()));
            (Box::new(w), Some(f))
        }
        SerialTarget::Stdout => (Box::new(std::io::stdout()), None),
        SerialTarget::File(p) => (
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| VmmError::SerialFile {
                        path: p.display().to_string(),
                        source,
                    })?,
            ),
            None,
        ),
    })
}

impl Vmm {
    /// Creates the VM, loads the guest and creates the vCPUs.
    pub fn build(cfg: &VmConfig) -> Result<Vmm, VmmError> {
        let vm = Vm::new()?;
        if usize::from(cfg.cpus) > vm.max_vcpus() {
            return Err(VmmError::TooManyVcpus {
                want: cfg.cpus,
                max: vm.max_vcpus(),
            });
        }
        let (mem, memfd) = memory::create_guest_memory(cfg.memory_bytes)?;
        vm.register_memory(&mem)?;

        let kernel = boot::load_kernel(&mem, &cfg.kernel, cfg.boot)?;
        let initrd = cfg
            .initrd
            .as_ref()
            .map(|p| boot::load_initrd(&mem, p, kernel.end()))
            .transpose()?;
        let mut mmio = Bus::new();
        let mut mmio_infos = Vec::new();
        let mut devices = Vec::new();
        for (i, dev) in cfg.devices.iter().enumerate() {
            let info = MmioDeviceInfo {
                addr: VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE,
                len: VIRTIO_MMIO_SIZE,
                gsi: VIRTIO_GSI_START + i as u32,
            };
            let backend =
                VhostUserDevice::connect(dev.kind, &dev.socket, mem.clone(), cfg.connect_timeout)?;
            let transport = Arc::new(Mutex::new(attach_mmio(&vm, Box::new(backend), info)?));
            mmio.insert(info.addr, info.len, transport.clone())?;
            let name = format!("{}{i}", dev.kind.name());
            let monitor = Monitor::start(name.clone(), transport.clone(), cfg.reconnect).map_err(
                |source| VmmError::Thread {
                    name: format!("monitor-{name}"),
                    source,
                },
            )?;
            devices.push(AttachedDevice {
                name,
                transport,
                _monitor: monitor,
            });
            mmio_infos.push(info);
        }
        let mut full_cmdline = cfg.cmdline.clone();
        for d in &mmio_infos {
            full_cmdline.push_str(&format!(" virtio_mmio.device=4K@{:#x}:{}", d.addr, d.gsi));
        }
        let cmdline =
            Cmdline::try_from(&full_cmdline, CMDLINE_MAX_SIZE).map_err(VmmError::Cmdline)?;
        mptable::setup_mptable(&mem, cfg.cpus)?;
        let rsdp = acpi::setup_acpi(&mem, cfg.cpus, &mmio_infos)?;
        boot::write_boot_info(&mem, &kernel, &cmdline, initrd, rsdp)?;

        let exit = ExitSignal::new();
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.register_irqfd(&serial_irq, SERIAL_IRQ)?;
        let (serial_out, console) = serial_output(&cfg.serial)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
        let mut pio = Bus::new();
        pio.insert(u64::from(SERIAL_PORT), 8, serial.clone())?;
        let i8042: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(I8042::new(exit.clone())));
        pio.insert(u64::from(I8042_PORT), 5, i8042)?;
        let cmos: Arc<Mutex<dyn BusDevice>> = Arc::new(Mutex::new(Cmos::default()));
        pio.insert(u64::from(CMOS_PORT), 2, cmos)?;
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);

        let mut vcpus = Vec::new();
        let run_state = RunState::default();
        let mut counters = Vec::new();
        for id in 0..cfg.cpus {
            let entry = (id == 0).then(|| kernel.entry());
            let mut vcpu = Vcpu::new(
                &vm,
                &mem,
                id,
                cfg.cpus,
                entry,
                pio.clone(),
                mmio.clone(),
                exit.clone(),
            )?;
            vcpu.set_run_state(run_state.clone());
            counters.push(vcpu.counters());
            vcpus.push(vcpu);
        }
        let handle = Arc::new(VmmHandle {
            vcpus: cfg.cpus,
            memory_bytes: cfg.memory_bytes,
            kernel: cfg.kernel.clone(),
            cmdline: full_cmdline,
            started: std::time::Instant::now(),
            devices: devices
                .iter()
                .map(|d: &AttachedDevice| DeviceHandle {
                    name: d.name.clone(),
                    transport: d.transport.clone(),
                })
                .collect(),
            run_state,
            counters: Mutex::new(counters),
            exit: exit.clone(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            swap_connect_timeout: cfg.connect_timeout,
        });
        Ok(Vmm {
            devices,
            handle,
            _vm: vm,
            _mem: mem,
            _memfd: memfd,
            vcpus,
            exit,
            serial,
            console,
            vcpu_filter: None,
        })
    }

    /// The VM's vhost-user devices.
    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// Starts one thread per vCPU and waits for the VM to end.
    /// What the management API controls.
    pub fn handle(&self) -> Arc<VmmHandle> {
        self.handle.clone()
    }

    /// The seccomp filter each vCPU thread installs as it starts
    /// (`None`: no filter of its own).
    pub fn set_vcpu_filter(&mut self, filter: Option<seccompiler::BpfProgram>) {
        self.vcpu_filter = filter.map(Arc::new);
    }

    pub fn run(&mut self) -> Result<VmExitEvent, VmmError> {
        if let Err(e) = install_kick_handler() {
            log::warn!("no vCPU kick signal ({e}): pausing will not work");
        }
        for mut vcpu in std::mem::take(&mut self.vcpus) {
            let name = format!("vcpu{}", vcpu.id());
            let filter = self.vcpu_filter.clone();
            let h = thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if let Some(f) = filter {
                        if let Err(e) = seccompiler::apply_filter(&f) {
                            log::warn!("vcpu{}: seccomp filter not installed: {e}", vcpu.id());
                        }
                    }
                    let ev = vcpu.run();
                    log::debug!("vcpu{} stopped: {ev}", vcpu.id());
                })
                .map_err(|source| VmmError::Thread { name, source })?;
            self.handle.run_state.add_thread(h.as_pthread_t());
        }
        let _stdin = StdinForwarder::start(self.serial.clone());
        let ev = match &self.console {
            Some(c) => {
                let ev = self.exit.wait_ticking(STALE, || c.flush_stale(STALE));
                c.flush_all();
                ev
            }
            None => self.exit.wait(),
        };
        Ok(ev)
    }
}

/// Puts `device` behind a virtio-mmio window: one ioeventfd per queue on
/// QueueNotify (matching the queue index) and one irqfd on the device's GSI.
fn attach_mmio(
    vm: &Vm,
    device: Box<dyn VirtioDevice>,
    info: MmioDeviceInfo,
) -> Result<MmioTransport, VmmError> {
    let notify = info.addr + REG_QUEUE_NOTIFY;
    let mut kicks = Vec::new();
    for q in 0..device.queue_max_sizes().len() {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
        vm.fd()
            .register_ioevent(&evt, &IoEventAddress::Mmio(notify), q as u32)
            .map_err(|source| VmmError::Ioeventfd {
                addr: notify,
                source,
            })?;
        kicks.push(evt);
    }
    let call = EventFd::new(EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&call, info.gsi)?;
    Ok(MmioTransport::new(device, kicks, Arc::new(call)))
}

/// Forwards a terminal's keystrokes to the serial port, in raw mode, and
/// restores the terminal when dropped. Does nothing when stdin is no tty.
struct StdinForwarder {
    raw: bool,
}

impl StdinForwarder {
    fn start(serial: Arc<Mutex<SerialDevice>>) -> StdinForwarder {
        let stdin = std::io::stdin();
        let lock = stdin.lock();
        if !lock.is_terminal() {
            return StdinForwarder { raw: false };
        }
        let raw = lock.set_raw_mode().is_ok();
        drop(lock);
        let spawned = thread::Builder::new()
            .name("stdin".to_string())
            .spawn(move || {
                let mut buf = [0u8; 64];
                let mut input = std::io::stdin();
                while let Ok(n) = input.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = serial.lock() {
                        s.enqueue_input(&buf[..n]);
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("no serial input: {e}");
        }
        StdinForwarder { raw }
    }
}

impl Drop for StdinForwarder {
    fn drop(&mut self) {
        if self.raw {
            let _ = std::io::stdin().lock().set_canon_mode();
        }
    }
}
