//! The data path of [`VhostUserBlkBackend`]: one pass of a queue worker
//! takes every available chain, parses and submits it, and every few
//! chains (and at its end) publishes finished requests' used entries as
//! one batch and notifies once for them; then it busy-polls (adaptive
//! window) before re-arming notifications and sleeping.

use std::sync::atomic::Ordering;
use std::time::Instant;

use log::warn;
use splitvm_backends::avail::{self, Round};
use splitvm_backends::metrics;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{Mem, VhostUserBlkBackend};
use crate::blk::{self, Op, Request, Segment, S_IOERR, S_OK};
use crate::chain;
use crate::inflight::QueueTracker;
use crate::io::{self as hio, Completion, GuestIovecs, IoKind, IoOp};
use crate::worker::{InFlight, Worker};

/// Chains taken between publishing used entries within one pass. With a
/// driver that sleeps until notified and a pass that finished all it took
/// before publishing any (page-cache hits complete inline), the driver
/// woke only then, and its wake-up, reap and refill ran while this worker
/// sat idle: the two took turns. Publishing (and notifying, if the driver
/// asks) every few chains overlaps them: blkgen, buffered 4 KiB randread,
/// QD 32 370k -> 570k IOPS, QD 8 170k -> 313k (the generator's own
/// ceiling); every chain (1) costs more than it gains (513k; 561k vs 610k
/// with a polling driver), 8 missed QD 8 (170k).
const PUBLISH_EVERY: usize = 4;

impl VhostUserBlkBackend {
    /// Pops and starts every available chain, completes what finished,
    /// notifies once per batch of [`PUBLISH_EVERY`] chains and at the end
    /// of the pass, then busy-polls for more (adaptive window,
    /// [`crate::worker::Poll`]) before re-enabling notifications and
    /// sleeping.
    pub(super) fn process_queue(&self, q: usize, w: &mut Worker, vring: &VringRwLock) {
        let Some(mut mem) = self.memory() else {
            return;
        };
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        w.poll.woke();
        if w.resume_pending {
            w.resume_pending = false;
            if self.resume(q, w, vring, &mem) {
                Self::notify(vring);
            }
        }
        // A poll hit followed by a pass that found nothing to do (a ring
        // the queue code refuses to pop from) must not spin forever.
        let mut may_poll = true;
        avail::rounds(vring, event_idx, || {
            // A pass can go round for as long as the driver keeps the queue
            // busy: take the current memory table every round, or a region
            // the frontend added meanwhile (ADD_MEM_REG, acknowledged
            // before its first request uses it) stays unknown here and its
            // requests are refused as outside guest memory.
            if let Some(m) = self.memory() {
                mem = m;
            }
            // `used`: a chain was answered at once (a used entry not yet
            // notified).
            let mut used = false;
            let mut reaped = false;
            let mut taken = 0usize;
            while let Some(chain) = avail::pop(vring, &mem) {
                used |= self.start_chain(q, w, vring, &mem, chain);
                taken += 1;
                if taken % PUBLISH_EVERY == 0 {
                    reaped |= self.publish(q, w, vring, &mem, used);
                    used = false;
                }
            }
            reaped |= self.publish(q, w, vring, &mem, used);
            let progress = taken > 0 || reaped;
            may_poll &= progress;
            if may_poll && Self::poll_for_work(w, vring, &mem) {
                return Round::Again;
            }
            if w.engine.quiesce() {
                return Round::Again;
            }
            Round::Done
        });
    }

    /// Hands the engine what was submitted since the last call, completes
    /// what it finished and notifies once if a used entry was added here
    /// or (`used`) by the caller. Returns whether anything was reaped.
    fn publish(
        &self,
        q: usize,
        w: &mut Worker,
        vring: &VringRwLock,
        mem: &Mem,
        used: bool,
    ) -> bool {
        w.engine.commit();
        let (reaped, added) = self.reap(q, w, vring, mem);
        if used || added {
            Self::notify(vring);
        }
        reaped
    }

    /// Spins for up to the worker's poll window until the avail ring has a
    /// new entry or the engine a completion. Returns whether one came.
    fn poll_for_work(w: &mut Worker, vring: &VringRwLock, mem: &Mem) -> bool {
        w.poll.dry();
        let window = w.poll.window;
        if window.is_zero() {
            return false;
        }
        let end = Instant::now() + window;
        loop {
            if w.engine.ready() || Self::avail_pending(vring, mem) {
                w.poll.busy();
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            // Not a bare spin: a task woken on this CPU (the driver we just
            // notified, when it shares the CPU; a guest's vCPU thread) runs
            // now instead of when our time slice ends. blkgen and this
            // worker pinned to one CPU, O_DIRECT randwrite, medians of 15
            // alternating rounds: QD 32 56.5k -> 59.7k IOPS, QD 8 36.9k ->
            // 37.4k; unpinned QD 1 randread 8.8k -> 9.0k (within noise).
            std::thread::yield_now();
        }
    }

    /// Whether the driver made entries available that were not popped yet
    /// (and no more than a ring's worth: a bogus index is not work).
    fn avail_pending(vring: &VringRwLock, mem: &Mem) -> bool {
        let st = vring.get_ref();
        let queue = st.get_queue();
        match queue.avail_idx(&**mem, std::sync::atomic::Ordering::Acquire) {
            Ok(idx) => {
                let n = idx.0.wrapping_sub(queue.next_avail());
                n != 0 && n <= queue.size()
            }
            Err(_) => false,
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
        // The worker's scratch vector: no allocation per request.
        let mut segs = std::mem::take(&mut w.segs);
        let truncated = chain::collect(chain, &mut segs);
        let added = self.start_request(q, w, vring, mem, head, &segs, truncated);
        w.segs = segs;
        added
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
        let data = std::mem::take(&mut w.data);
        let req = match blk::parse_in(&**mem, &disk.info, segs, truncated, data) {
            Ok(r) => r,
            Err(rej) => {
                metrics::counters().failed();
                self.guest_warn(q, &rej.reason);
                let len = match rej.status {
                    Some(at) if mem.write_obj(rej.code, at).is_ok() => 1,
                    _ => 0,
                };
                return Self::add_used(vring, t, head, len);
            }
        };
        let added = self.dispatch(q, w, vring, mem, head, &req);
        // Back to the worker for the next request.
        w.data = req.data;
        added
    }

    /// Starts (or answers at once) the parsed request `req` of chain `head`.
    fn dispatch(
        &self,
        q: usize,
        w: &mut Worker,
        vring: &VringRwLock,
        mem: &Mem,
        head: u16,
        req: &Request,
    ) -> bool {
        let disk = &self.inner.disk;
        let t = w.tracker.clone();
        let t = t.as_ref();
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
                let ok = blk::write_id(&**mem, req, &disk.info.serial);
                return self.finish(vring, t, mem, head, req.status, ok, blk::used_len(req));
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
        let offset = offset_of(req);
        let (from_guest, to_guest) = match req.op {
            Op::Write { .. } => (req.data_len, 0),
            Op::Read { .. } => (0, req.data_len),
            _ => (0, 0),
        };
        let token = w.put(InFlight {
            head,
            status: req.status,
            used_len: blk::used_len(req),
            from_guest,
            to_guest,
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
        if ok {
            // Only GET_ID writes data here: its used length minus the status byte.
            metrics::counters().completed(0, u64::from(used_len.saturating_sub(1)));
        } else {
            metrics::counters().failed();
        }
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

    /// Completes what the engine finished. Returns whether anything was
    /// reaped and whether any used entry was added.
    fn reap(&self, q: usize, w: &mut Worker, vring: &VringRwLock, mem: &Mem) -> (bool, bool) {
        let mut done = std::mem::take(&mut w.done);
        w.engine.reap(&mut done);
        let reaped = !done.is_empty();
        let added = self.complete(q, w, vring, mem, &mut done);
        w.done = done;
        (reaped, added)
    }

    /// Publishes the used entries of `done` (emptied) under one lock of the
    /// vring, as one batch; the caller notifies once for all of them.
    pub(super) fn complete(
        &self,
        q: usize,
        w: &mut Worker,
        vring: &VringRwLock,
        mem: &Mem,
        done: &mut Vec<Completion>,
    ) -> bool {
        if done.is_empty() {
            return false;
        }
        let mut used = false;
        let t = w.tracker.clone();
        let mut state = vring.get_mut();
        let queue = state.get_queue_mut();
        for c in done.drain(..) {
            let Some(r) = w.take(c.token) else {
                continue;
            };
            if let Err(e) = &c.result {
                warn!("queue {q}: I/O error: {e}");
            }
            let ok = c.result.is_ok();
            if ok {
                metrics::counters().completed(r.from_guest, r.to_guest);
            } else {
                metrics::counters().failed();
            }
            let code = if ok { S_OK } else { S_IOERR };
            // See `finish` for why a failed status write reports length 0.
            let len = match mem.write_obj(code, r.status) {
                Ok(()) if ok => r.used_len,
                Ok(()) => 1,
                Err(_) => 0,
            };
            if let Some(t) = &t {
                t.pre_put(r.head);
            }
            if let Err(e) = queue.add_used(&**mem, r.head, len) {
                warn!("add_used({}): {e}", r.head);
                continue;
            }
            if let Some(t) = &t {
                t.post_put(r.head, queue.next_used());
            }
            used = true;
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
