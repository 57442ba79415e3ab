//! `VhostUserBlkBackend`: the [`VhostUserBackend`] of `splitvm-blk`. One
//! worker thread per queue; each worker owns an I/O engine, parses chains
//! with [`crate::blk`], submits them and completes them from the engine's
//! completion eventfd. Guest mistakes are answered with a status byte (or
//! the chain is returned unused) and logged at `warn`, rate-limited.
//!
//! `INFLIGHT_SHMFD`: every head taken from the ring is marked in the
//! frontend's inflight region before its I/O starts and cleared after its
//! used entry is published ([`crate::inflight`]); after a reconnect the
//! worker first resubmits what the region still holds (`resume.rs`). The
//! region messages themselves are answered by [`crate::intercept`].

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use log::{info, warn};
use splitvm_backends::backing::GuestMem;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::blk::DiskInfo;
use crate::inflight::Region;
use crate::io::{self as hio, EngineKind};
use crate::worker::{RateLimit, Worker};

mod queue;

use splitvm_backends::avail::Mem;

/// The image and everything fixed at startup, shared by all connections.
#[derive(Debug)]
pub struct Disk {
    /// The open image.
    pub file: Arc<File>,
    /// Request limits.
    pub info: DiskInfo,
    /// Engine chosen at startup.
    pub engine: EngineKind,
    /// Queues offered.
    pub queues: u16,
    /// Largest queue size accepted.
    pub queue_size: u16,
    /// Config-space bytes.
    pub config: Vec<u8>,
}

impl Disk {
    /// Virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_DISCARD)
            | (1 << VIRTIO_BLK_F_WRITE_ZEROES)
            | (1 << VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.info.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }
}

/// Names of the feature bits in `f` that this backend knows, for logs.
pub fn feature_names(f: u64) -> String {
    const NAMES: &[(u32, &str)] = &[
        (VIRTIO_BLK_F_SEG_MAX, "SEG_MAX"),
        (VIRTIO_BLK_F_RO, "RO"),
        (VIRTIO_BLK_F_BLK_SIZE, "BLK_SIZE"),
        (VIRTIO_BLK_F_FLUSH, "FLUSH"),
        (VIRTIO_BLK_F_MQ, "MQ"),
        (VIRTIO_BLK_F_DISCARD, "DISCARD"),
        (VIRTIO_BLK_F_WRITE_ZEROES, "WRITE_ZEROES"),
        (VIRTIO_RING_F_INDIRECT_DESC, "RING_INDIRECT_DESC"),
        (VIRTIO_RING_F_EVENT_IDX, "RING_EVENT_IDX"),
        (30, "VHOST_USER_PROTOCOL_FEATURES"),
        (VIRTIO_F_VERSION_1, "VERSION_1"),
    ];
    let mut out: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| f & (1u64 << b) != 0)
        .map(|(_, n)| *n)
        .collect();
    let known = NAMES.iter().fold(0u64, |a, (b, _)| a | (1u64 << b));
    let other = format!("{:#x}", f & !known);
    if f & !known != 0 {
        out.push(&other);
        return out.join(" ");
    }
    out.join(" ")
}

pub(crate) struct Inner {
    disk: Arc<Disk>,
    event_idx: AtomicBool,
    mem: GuestMem,
    pub(crate) workers: Vec<Mutex<Worker>>,
    warn: RateLimit,
    /// The workers' exit events (closed with this connection's backend).
    exit: splitvm_backends::exit::ExitEvents,
}

/// See the module docs. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct VhostUserBlkBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VhostUserBlkBackend {
    /// A backend for one frontend connection, with a fresh engine per queue.
    pub fn new(disk: Arc<Disk>) -> Result<Self, hio::IoError> {
        let mut workers = Vec::new();
        for _ in 0..disk.queues {
            let engine =
                hio::new_engine(disk.engine, disk.file.clone(), u32::from(disk.queue_size))?;
            workers.push(Mutex::new(Worker::new(engine)));
        }
        Ok(VhostUserBlkBackend {
            inner: Arc::new(Inner {
                disk,
                event_idx: AtomicBool::new(false),
                mem: GuestMem::default(),
                workers,
                warn: RateLimit::default(),
                exit: Default::default(),
            }),
        })
    }

    fn completion_event(&self) -> u16 {
        self.inner.disk.queues + 1
    }

    pub(crate) fn memory(&self) -> Option<Mem> {
        self.inner.mem.get()
    }

    fn guest_warn(&self, q: usize, what: &dyn std::fmt::Display) {
        if self.inner.warn.allow() {
            warn!("queue {q}: guest request rejected: {what}");
        }
    }
}

impl VhostUserBackend for VhostUserBlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.inner.disk.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.inner.disk.queue_size)
    }

    fn features(&self) -> u64 {
        self.inner.disk.features()
    }

    fn acked_features(&self, features: u64) {
        info!(
            "negotiated virtio features {features:#x}: {}",
            feature_names(features)
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // STATUS is not offered: vhost-user-backend 0.24 does not handle
        // SET_STATUS/GET_STATUS. CONFIGURE_MEM_SLOTS (ADD/REM_MEM_REG) is
        // handled by the crate and required by libblkio-style frontends.
        // INFLIGHT_SHMFD's messages are answered by `crate::intercept`.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn reset_device(&self) {
        for (q, w) in self.inner.workers.iter().enumerate() {
            let mut w = lock(w);
            let mut done = Vec::new();
            w.engine.drain(&mut done);
            // The rings are being reset: finished requests get no used entry.
            for c in done {
                let _ = w.take(c.token);
            }
            if !w.idle() {
                warn!("queue {q}: requests left after reset");
            }
            // The driver abandoned whatever was in flight.
            if let (Some(t), Some(v)) = (&w.tracker, &w.vring) {
                t.clear_all(v.get_ref().get_queue().next_used());
            }
            w.resume_pending = w.tracker.is_some();
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = &self.inner.disk.config;
        let start = offset as usize;
        let end = start.saturating_add(size as usize);
        cfg.get(start..end.min(cfg.len()))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.inner.mem.set(mem)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.inner.disk.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.inner.exit.make()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // Wait for every request already taken from the ring so that
        // GET_VRING_BASE reports a ring with nothing outstanding.
        let q = queue_index as usize;
        let Some(w) = self.inner.workers.get(q) else {
            return Ok(());
        };
        let mut w = lock(w);
        // Reconcile with the region again when the ring restarts.
        w.resume_pending = w.tracker.is_some();
        let mut done = Vec::new();
        w.engine.drain(&mut done);
        let (Some(vring), Some(mem)) = (w.vring.clone(), self.memory()) else {
            return Ok(());
        };
        if self.complete(q, &mut w, &vring, &mem, &mut done) {
            Self::notify(&vring);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // Vring workers run only here: the first event installs their filter.
        splitvm_backends::sandbox::enter_worker();
        let (Some(vring), Some(w)) = (vrings.first(), self.inner.workers.get(thread_id)) else {
            return Ok(());
        };
        let mut w = lock(w);
        if w.vring.is_none() {
            w.vring = Some(vring.clone());
        }
        // A kick or a completion: either way the same pass (completions
        // first freed slots, new chains may wait without a kick under
        // EVENT_IDX).
        if device_event < self.inner.disk.queues || device_event == self.completion_event() {
            self.process_queue(thread_id, &mut w, vring);
        }
        Ok(())
    }
}

impl splitvm_backends::daemon::Device for VhostUserBlkBackend {
    fn attach(&self, handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        for (w, h) in self.inner.workers.iter().zip(handlers) {
            if let Some(fd) = lock(w).engine.notifier() {
                h.register_listener(fd, EventSet::IN, u64::from(self.completion_event()))?;
            }
        }
        Ok(())
    }

    fn intercept(&self) -> Option<Arc<dyn splitvm_backends::proxy::Intercept>> {
        Some(Arc::new(crate::intercept::BlkIntercept::new(self.clone())))
    }
}

impl VhostUserBlkBackend {
    /// Installs the frontend's inflight region (`SET_INFLIGHT_FD`): each
    /// covered queue tracks into it and reconciles before its next pop.
    pub(crate) fn install_inflight(&self, region: &Arc<Region>) {
        for (q, w) in self.inner.workers.iter().enumerate() {
            let mut w = lock(w);
            w.tracker = u16::try_from(q).ok().and_then(|q| region.queue(q));
            w.resume_pending = w.tracker.is_some();
            w.counter = 0;
        }
    }

    /// Queues served.
    pub(crate) fn queues(&self) -> u16 {
        self.inner.disk.queues
    }
}
