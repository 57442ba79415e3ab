//! The EVENT_IDX re-check every vring worker does after re-enabling
//! notifications, hardened against a ring that claims chains it cannot
//! hand out: an avail index more than a queue ahead of the device, a queue
//! of size 0, an avail ring whose entries lie outside guest memory.
//! `virtio-queue` then pops nothing, yet `enable_notification` keeps
//! answering "more available"; a worker that trusted it went round again
//! forever, spinning a core and never seeing its exit event, so the backend
//! could not let the frontend go. Found by the `vhost_user_blk` fuzz
//! target; `tests/it/*_hostile.rs` (`*_avail_index_overrun_*`) cover it.

use vhost_user_backend::{VringRwLock, VringT};

/// Re-enables notifications on `vring` and says whether to go round again:
/// only when the guest made more chains available meanwhile *and* the
/// round that just ended took at least one (`progressed`). A round that
/// took nothing although chains were claimed means the ring is broken;
/// waiting for the next kick is then right, and loses no wake-up: the
/// avail event already named the chain the guest would add next.
pub fn enable_and_recheck(vring: &VringRwLock, progressed: bool) -> bool {
    matches!(vring.enable_notification(), Ok(true)) && progressed
}
