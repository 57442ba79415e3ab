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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use log::{info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::blk::{self, DiskInfo, Op, Request, Segment, MAX_SEGMENTS, S_IOERR, S_OK};
use crate::inflight::{QueueTracker, Region};
use crate::io::{self as hio, Completion, EngineKind, GuestIovecs, IoKind, IoOp};
use crate::worker::{InFlight, RateLimit, Worker};

type Mem = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Longest chain (in descriptors) the backend walks; longer ones are dropped.
pub(crate) const MAX_CHAIN: usize = MAX_SEGMENTS + 2;

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
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
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
                mem: RwLock::new(None),
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
        let m = self
            .inner
            .mem
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        m.as_ref().map(|a| a.memory())
    }

    fn guest_warn(&self, q: usize, what: &dyn std::fmt::Display) {
        if self.inner.warn.allow() {
            warn!("queue {q}: guest request rejected: {what}");
        }
    }

    /// Pops and starts every available chain, then completes what finished.
    fn process_queue(&self, q: usize, w: &mut Worker, vring: &VringRwLock) {
        let Some(mem) = self.memory() else {
            return;
        };
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        let mut used = false;
        if w.resume_pending {
            w.resume_pending = false;
            used |= self.resume(q, w, vring, &mem);
        }
        loop {
            if event_idx {
                let _ = vring.disable_notification();
            }
            let mut popped = false;
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else {
                    break;
                };
                popped = true;
                used |= self.start_chain(q, w, vring, &mem, chain);
            }
            w.engine.commit();
            used |= self.reap(q, w, vring, &mem);
            if !event_idx {
                break;
            }
            if !splitvm_backends::avail::enable_and_recheck(vring, popped) {
                break;
            }
        }
        if used {
            Self::notify(vring);
        }
    }

    /// Takes one chain: records it in flight, then starts it. Returns
    /// whether a used entry was added.
    fn start_chain(
        &self,
        q: usize,
        w: &mut Worker,
        vring: &VringRwLock,
        mem: &Mem,
        chain: DescriptorChain<Mem>,
    ) -> bool {
        let head = chain.head_index();
        w.track(head);
        let mut segs = Vec::new();
        let mut truncated = false;
        for d in chain {
            if segs.len() >= MAX_CHAIN {
                truncated = true;
                break;
            }
            segs.push(Segment {
                addr: d.addr().0,
                len: u64::from(d.len()),
                write: d.is_write_only(),
            });
            truncated = d.has_next();
        }
        self.start_request(q, w, vring, mem, head, &segs, truncated)
    }

    /// Parses the request in `segs` (chain `head`, already recorded in
    /// flight) and submits it, or answers it at once. Returns whether a
    /// used entry was added.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_request(
        &self,
        q: usize,
        w: &mut Worker,
        vring: &VringRwLock,
        mem: &Mem,
        head: u16,
        segs: &[Segment],
        truncated: bool,
    ) -> bool {
        let disk = &self.inner.disk;
        let t = w.tracker.clone();
        let t = t.as_ref();
        let req = match blk::parse(&**mem, &disk.info, segs, truncated) {
            Ok(r) => r,
            Err(rej) => {
                self.guest_warn(q, &rej.reason);
                let len = match rej.status {
                    Some(at) if mem.write_obj(rej.code, at).is_ok() => 1,
                    _ => 0,
                };
                return Self::add_used(vring, t, head, len);
            }
        };
        let kind = match &req.op {
            Op::Read { .. } | Op::Write { .. } => match GuestIovecs::new(mem.clone(), &req.data) {
                Ok(b) if matches!(req.op, Op::Read { .. }) => IoKind::Read(b),
                Ok(b) => IoKind::Write(b),
                Err(e) => {
                    self.guest_warn(q, &e);
                    return self.finish(vring, t, mem, head, req.status, false, 1);
                }
            },
            Op::Flush => IoKind::Flush,
            Op::GetId => {
                let ok = blk::write_id(&**mem, &req, &disk.info.serial);
                return self.finish(vring, t, mem, head, req.status, ok, blk::used_len(&req));
            }
            Op::Discard(ranges) | Op::WriteZeroes(ranges) => {
                let punch = matches!(req.op, Op::Discard(_));
                let mut ok = true;
                for r in ranges {
                    if let Err(e) =
                        hio::fallocate_range(&disk.file, r.offset, r.len, punch || r.unmap)
                    {
                        warn!("queue {q}: fallocate {}+{}: {e}", r.offset, r.len);
                        ok = false;
                        break;
                    }
                }
                return self.finish(vring, t, mem, head, req.status, ok, 1);
            }
        };
        let offset = offset_of(&req);
        let token = w.put(InFlight {
            head,
            status: req.status,
            used_len: blk::used_len(&req),
        });
        w.engine.submit(IoOp {
            token,
            offset,
            kind,
        });
        false
    }

    /// Writes the status, adds the used entry. Returns true (an entry was added).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        vring: &VringRwLock,
        t: Option<&QueueTracker>,
        mem: &Mem,
        head: u16,
        status: GuestAddress,
        ok: bool,
        used_len: u32,
    ) -> bool {
        let code = if ok { S_OK } else { S_IOERR };
        let len = if ok { used_len } else { 1 };
        // `status` was checked to lie in guest memory when the chain was
        // parsed; a memory table change since then makes this write fail,
        // which leaves the guest's byte untouched.
        let len = if mem.write_obj(code, status).is_ok() {
            len
        } else {
            0
        };
        Self::add_used(vring, t, head, len)
    }

    /// Publishes `head`'s used entry; with an inflight region, brackets it
    /// as libvhost-user does: `last_batch_head` first, then the used ring,
    /// then the entry cleared and the region's `used_idx` updated.
    fn add_used(vring: &VringRwLock, t: Option<&QueueTracker>, head: u16, len: u32) -> bool {
        if let Some(t) = t {
            t.pre_put(head);
        }
        if let Err(e) = vring.add_used(head, len) {
            warn!("add_used({head}): {e}");
            return false;
        }
        if let Some(t) = t {
            let used = vring.get_ref().get_queue().next_used();
            t.post_put(head, used);
        }
        true
    }

    pub(crate) fn notify(vring: &VringRwLock) {
        if vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                warn!("signal used queue: {e}");
            }
        }
    }

    /// Completes what the engine finished. Returns whether any used entry was added.
    fn reap(&self, q: usize, w: &mut Worker, vring: &VringRwLock, mem: &Mem) -> bool {
        let mut done = Vec::new();
        w.engine.reap(&mut done);
        self.complete(q, w, vring, mem, done)
    }

    fn complete(
        &self,
        q: usize,
        w: &mut Worker,
        vring: &VringRwLock,
        mem: &Mem,
        done: Vec<Completion>,
    ) -> bool {
        let mut used = false;
        let t = w.tracker.clone();
        for c in done {
            let Some(r) = w.take(c.token) else {
                continue;
            };
            if let Err(e) = &c.result {
                warn!("queue {q}: I/O error: {e}");
            }
            let ok = c.result.is_ok();
            used |= self.finish(vring, t.as_ref(), mem, r.head, r.status, ok, r.used_len);
        }
        used
    }
}

fn offset_of(req: &Request) -> u64 {
    match req.op {
        Op::Read { offset } | Op::Write { offset } => offset,
        _ => 0,
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
        splitvm_backends::backing::check(&mem)?;
        *self
            .inner
            .mem
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
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
        if self.complete(q, &mut w, &vring, &mem, done) {
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
        if device_event < self.inner.disk.queues {
            self.process_queue(thread_id, &mut w, vring);
        } else if device_event == self.completion_event() {
            if let Some(mem) = self.memory() {
                if self.reap(thread_id, &mut w, vring, &mem) {
                    Self::notify(vring);
                }
            }
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
