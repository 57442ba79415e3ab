//! The EVENT_IDX re-check every vring worker does after re-enabling
//! notifications, hardened against a ring that claims chains it cannot
//! hand out: an avail index more than a queue ahead of the device, a queue
//! of size 0, an avail ring whose entries lie outside guest memory.
//! `virtio-queue` then pops nothing, yet `enable_notification` keeps
//! answering "more available"; a worker that trusted it went round again
//! forever, spinning a core and never seeing its exit event, so the backend
//! could not let the frontend go. Found by the `vhost_user_blk` fuzz
//! target; `tests/it/*_hostile.rs` (`*_avail_index_overrun_*`) cover it.
//!
//! [`rounds`] is the whole loop (notifications off, a round, re-enable and
//! re-check) that the blk, net and input workers share; [`pop`] takes one
//! chain.

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

/// The guest memory a worker pops chains against.
pub type Mem = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Re-enables notifications on `vring` and says whether to go round again:
/// only when the guest made more chains available meanwhile *and* the
/// round that just ended took at least one (`progressed`). A round that
/// took nothing although chains were claimed means the ring is broken;
/// waiting for the next kick is then right, and loses no wake-up: the
/// avail event already named the chain the guest would add next.
pub fn enable_and_recheck(vring: &VringRwLock, progressed: bool) -> bool {
    matches!(vring.enable_notification(), Ok(true)) && progressed
}

/// What one round of a vring worker's loop asks for next (see [`rounds`]).
pub enum Round {
    /// Go round again at once, notifications still off: the round knows
    /// more work is waiting (a poll hit, an engine that must be drained).
    Again,
    /// The round is over. `progressed`: it took at least one chain and
    /// would take another that arrived meanwhile ([`enable_and_recheck`]).
    Done { progressed: bool },
}

/// Runs `round` until the queue is drained, with the EVENT_IDX dance:
/// notifications off while a round runs, then re-enabled and re-checked
/// so that a chain the guest added meanwhile is not left waiting for a
/// kick that will not come. Without EVENT_IDX one round is all (unless
/// it asks for [`Round::Again`]): the guest kicks for every chain.
/// Generic over `round` so a worker's hot path stays free of allocation.
pub fn rounds(vring: &VringRwLock, event_idx: bool, mut round: impl FnMut() -> Round) {
    loop {
        if event_idx {
            let _ = vring.disable_notification();
        }
        match round() {
            Round::Again => continue,
            Round::Done { progressed } => {
                if !event_idx || !enable_and_recheck(vring, progressed) {
                    break;
                }
            }
        }
    }
}

/// Pops the next available chain of `vring`, if any.
pub fn pop(vring: &VringRwLock, mem: &Mem) -> Option<DescriptorChain<Mem>> {
    vring
        .get_mut()
        .get_queue_mut()
        .pop_descriptor_chain(mem.clone())
}
