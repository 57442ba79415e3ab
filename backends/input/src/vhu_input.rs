//! `VhostUserInputBackend`: the [`VhostUserBackend`] of `splitvm-input`.
//! Queue 0 (eventq) takes device-writable buffers and gets one 8-byte event
//! each; queue 1 (statusq) brings events from the guest (LEDs) that go to
//! the [`EventHub`]'s status sink. One worker thread serves both queues and
//! also wakes on the hub's eventfd when a source queued events. Guest
//! mistakes (short, read-only or out-of-memory buffers) return the buffer
//! with length 0 and are logged at `warn`, rate-limited; the event stays
//! queued for the next buffer.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{info, warn};
use splitvm_backends::avail::{self, Round};
use splitvm_backends::backing::GuestMem;
use splitvm_backends::metrics;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::hub::EventHub;
use crate::input::{ConfigSpace, InputEvent, EVENT_SIZE};

use splitvm_backends::avail::Mem;

/// The event queue.
pub const EVENTQ: u16 = 0;
/// The status queue.
pub const STATUSQ: u16 = 1;
/// Epoll token of the hub's eventfd (past the queues and the exit event).
const EV_HUB: u16 = 3;
/// Largest queue size accepted.
pub const QUEUE_SIZE: usize = 1024;
/// Longest chain walked on either queue.
const MAX_CHAIN: usize = 16;

/// Rate limit for guest-triggered warnings: at most a few per second.
struct RateLimit {
    second: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    const PER_SECOND: u64 = 10;

    fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

struct Inner {
    hub: Arc<EventHub>,
    config: Mutex<ConfigSpace>,
    event_idx: AtomicBool,
    mem: GuestMem,
    warn: RateLimit,
    reported_drops: AtomicU64,
    /// The workers' exit events (closed with this connection's backend).
    exit: splitvm_backends::exit::ExitEvents,
}

/// See the module docs. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct VhostUserInputBackend {
    inner: Arc<Inner>,
}

/// Why a buffer could not take an event or give one.
#[derive(Debug, thiserror::Error)]
enum BufferError {
    /// No device-writable descriptor of at least 8 bytes.
    #[error("eventq buffer has no writable descriptor of 8 bytes")]
    NoWritable,
    /// No device-readable bytes for a whole event.
    #[error("statusq buffer holds fewer than 8 readable bytes")]
    ShortStatus,
    /// The buffer lies outside guest memory.
    #[error("buffer outside guest memory: {0}")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

impl VhostUserInputBackend {
    /// A backend for one frontend connection.
    pub fn new(hub: Arc<EventHub>) -> Self {
        let stale = hub.queue().clear();
        if stale > 0 {
            info!("dropped {stale} event(s) queued before this frontend connected");
        }
        VhostUserInputBackend {
            inner: Arc::new(Inner {
                hub,
                config: Mutex::new(ConfigSpace::default()),
                event_idx: AtomicBool::new(false),
                mem: GuestMem::default(),
                warn: RateLimit {
                    second: AtomicU64::new(0),
                    count: AtomicU64::new(0),
                },
                reported_drops: AtomicU64::new(0),
                exit: Default::default(),
            }),
        }
    }

    fn memory(&self) -> Option<Mem> {
        self.inner.mem.get()
    }

    fn guest_warn(&self, q: u16, what: &dyn std::fmt::Display) {
        if self.inner.warn.allow() {
            warn!("queue {q}: guest buffer rejected: {what}");
        }
    }

    fn report_drops(&self) {
        let s = self.inner.hub.stats();
        let before = self
            .inner
            .reported_drops
            .swap(s.dropped_reports, Ordering::Relaxed);
        if s.dropped_reports > before && self.inner.warn.allow() {
            warn!(
                "no guest buffers: dropped {} report(s) ({} events) so far",
                s.dropped_reports, s.dropped_events
            );
        }
    }

    /// Runs `body` over the available chains of `vring` with the EVENT_IDX
    /// dance; notifies the guest if a used entry was added (`body` returns
    /// whether it added one).
    fn with_queue(&self, vring: &VringRwLock, mut body: impl FnMut(&Mem) -> bool) {
        let Some(mem) = self.memory() else {
            return;
        };
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        let mut used = false;
        avail::rounds(vring, event_idx, || {
            used |= body(&mem);
            Round::Done
        });
        if used && vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                warn!("signal used queue: {e}");
            }
        }
    }

    /// Moves queued events into eventq buffers while both last.
    fn fill_eventq(&self, vring: &VringRwLock) {
        self.with_queue(vring, |mem| {
            let mut used = false;
            loop {
                let mut q = self.inner.hub.queue();
                let Some(ev) = q.peek() else {
                    return used;
                };
                let Some(chain) = avail::pop(vring, mem) else {
                    return used;
                };
                let head = chain.head_index();
                match write_event(mem, chain, ev) {
                    Ok(()) => {
                        q.advance();
                        metrics::counters().completed(0, EVENT_SIZE as u64);
                        used |= add_used(vring, head, EVENT_SIZE as u32);
                    }
                    Err(e) => {
                        drop(q);
                        metrics::counters().failed();
                        self.guest_warn(EVENTQ, &e);
                        used |= add_used(vring, head, 0);
                    }
                }
            }
        });
        self.report_drops();
    }

    /// Takes every statusq buffer and passes its event to the sink.
    fn drain_statusq(&self, vring: &VringRwLock) {
        self.with_queue(vring, |mem| {
            let mut used = false;
            while let Some(chain) = avail::pop(vring, mem) {
                let head = chain.head_index();
                match read_event(mem, chain) {
                    Ok(ev) => {
                        metrics::counters().completed(EVENT_SIZE as u64, 0);
                        self.inner.hub.status(ev);
                    }
                    Err(e) => {
                        metrics::counters().failed();
                        self.guest_warn(STATUSQ, &e);
                    }
                }
                used |= add_used(vring, head, 0);
            }
            used
        });
    }
}

fn add_used(vring: &VringRwLock, head: u16, len: u32) -> bool {
    if let Err(e) = vring.add_used(head, len) {
        warn!("add_used({head}): {e}");
        return false;
    }
    true
}

/// Writes `ev` into the first device-writable descriptor of at least 8 bytes.
fn write_event(mem: &Mem, chain: DescriptorChain<Mem>, ev: InputEvent) -> Result<(), BufferError> {
    let d = chain
        .take(MAX_CHAIN)
        .find(|d| d.is_write_only() && d.len() as usize >= EVENT_SIZE)
        .ok_or(BufferError::NoWritable)?;
    mem.write_slice(&ev.to_bytes(), d.addr())
        .map_err(BufferError::Memory)
}

/// Gathers the first 8 device-readable bytes of a chain.
fn read_event(mem: &Mem, chain: DescriptorChain<Mem>) -> Result<InputEvent, BufferError> {
    let mut b = [0u8; EVENT_SIZE];
    let mut got = 0;
    for d in chain.take(MAX_CHAIN) {
        if d.is_write_only() || got == EVENT_SIZE {
            break;
        }
        let n = (d.len() as usize).min(EVENT_SIZE - got);
        mem.read_slice(&mut b[got..got + n], d.addr())
            .map_err(BufferError::Memory)?;
        got += n;
    }
    if got < EVENT_SIZE {
        return Err(BufferError::ShortStatus);
    }
    Ok(InputEvent::from_bytes(&b))
}

impl VhostUserBackend for VhostUserInputBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        info!("negotiated virtio features {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // STATUS is not offered: vhost-user-backend 0.24 does not handle it.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        let n = self.inner.hub.queue().clear();
        *self
            .inner
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = ConfigSpace::default();
        info!("device reset; {n} queued event(s) dropped");
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = *self
            .inner
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner
            .hub
            .with_capabilities(|caps| cfg.read(caps, offset, size))
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.inner
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(offset, buf);
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.inner.mem.set(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![0b11]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.exit.make()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Vring workers run only here: the first event installs their filter.
        splitvm_backends::sandbox::enter_worker();
        let (Some(eventq), Some(statusq)) = (vrings.first(), vrings.get(1)) else {
            return Ok(());
        };
        match device_event {
            EVENTQ => self.fill_eventq(eventq),
            STATUSQ => self.drain_statusq(statusq),
            EV_HUB => {
                let _ = self.inner.hub.wake_fd().read();
                if eventq.get_ref().get_queue().ready() {
                    self.fill_eventq(eventq);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl splitvm_backends::daemon::Device for VhostUserInputBackend {
    fn attach(&self, handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        if let Some(h) = handlers.first() {
            h.register_listener(
                self.inner.hub.wake_fd().as_raw_fd(),
                EventSet::IN,
                u64::from(EV_HUB),
            )?;
        }
        Ok(())
    }
}
