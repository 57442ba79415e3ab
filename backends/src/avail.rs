//! The EVENT_IDX re-check every vring worker does after re-enabling
//! notifications, hardened against a guest whose avail index runs more
//! than a queue ahead of what the device consumed. `virtio-queue` then
//! refuses to hand out chains, yet `enable_notification` keeps answering
//! "more available"; a worker that trusted it went round again forever,
//! spinning a core and never seeing its exit event. Found by the
//! `vhost_user_blk` fuzz target; `tests/it/*_hostile.rs` cover it.

use std::sync::atomic::Ordering;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

/// Re-enables notifications on `vring` and says whether to go round again:
/// true when the guest made more chains available meanwhile, false when
/// it did not, or when its avail index is more than the queue size ahead
/// (such a ring yields no chains until the guest repairs it or the ring is
/// reset; its next kick brings the worker back).
pub fn enable_and_recheck<M: GuestMemory>(vring: &VringRwLock, mem: &M) -> bool {
    if !matches!(vring.enable_notification(), Ok(true)) {
        return false;
    }
    let state = vring.get_ref();
    let q = state.get_queue();
    match q.avail_idx(mem, Ordering::Acquire) {
        Ok(avail) => avail.0.wrapping_sub(q.next_avail()) <= q.size(),
        Err(_) => false,
    }
}
