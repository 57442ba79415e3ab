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

/// What one round of a vring worker's loop asks for next (see [`rounds`]).
pub enum Round {
    /// Go round again at once, notifications still off: the round knows
    /// more work is waiting (a poll hit, an engine that must be drained).
    Again,
    /// The round is over: re-enable notifications and re-check.
    Done,
}

/// Runs `round` until the queue is drained, with the EVENT_IDX dance:
/// notifications off while a round runs, then re-enabled and re-checked
/// so that a chain the guest added meanwhile is not left waiting for a
/// kick that will not come. Without EVENT_IDX one round is all (unless
/// it asks for [`Round::Again`]): the guest kicks for every chain.
///
/// Whether a re-check that finds chains calls for another round depends
/// on the ring, not on what the last round did: once a chain was taken
/// since notifications were last enabled, the avail event lies behind and
/// the guest adds the next chain without a kick, so it must be fetched
/// now. That holds even when the last round took nothing (blk with
/// `--direct`: a round that took a chain, then one that only completed
/// it; going to sleep there left the guest's next request waiting
/// forever). When nothing was taken since, the avail event names the very
/// next chain and the guest kicks for it: a ring that still claims chains
/// then claims ones it cannot hand out, and going round again would spin.
/// Generic over `round` so a worker's hot path stays free of allocation.
pub fn rounds(vring: &VringRwLock, event_idx: bool, mut round: impl FnMut() -> Round) {
    // `next_avail` when notifications were last enabled (the avail event).
    let mut armed_at = vring.queue_next_avail();
    loop {
        if event_idx {
            let _ = vring.disable_notification();
        }
        match round() {
            Round::Again => continue,
            Round::Done => {
                if !event_idx {
                    break;
                }
                let took = vring.queue_next_avail() != armed_at;
                let more = matches!(vring.enable_notification(), Ok(true));
                armed_at = vring.queue_next_avail();
                if !(more && took) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

    const SIZE: u16 = 16;
    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    /// A ready queue with EVENT_IDX over real guest memory, every
    /// descriptor a one-buffer chain, nothing available yet.
    fn queue() -> (GuestMemoryAtomic<GuestMemoryMmap>, VringRwLock) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        for i in 0..u64::from(SIZE) {
            let d = DESC + 16 * i;
            mem.write_obj(0x8000 + 0x100 * i, GuestAddress(d)).unwrap();
            mem.write_obj(0x100u32, GuestAddress(d + 8)).unwrap();
        }
        let atomic = GuestMemoryAtomic::new(mem);
        let vring = VringRwLock::new(atomic.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_event_idx(true);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        (atomic, vring)
    }

    /// The driver's side: publishes head `i` as avail entry `i` and says
    /// whether it would kick (the virtio spec's `vring_need_event`).
    fn offer(mem: &GuestMemoryMmap, i: u16) -> bool {
        let slot = AVAIL + 4 + 2 * u64::from(i % SIZE);
        mem.write_obj(i % SIZE, GuestAddress(slot)).unwrap();
        let old: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        let new = old.wrapping_add(1);
        mem.write_obj(new, GuestAddress(AVAIL + 2)).unwrap();
        let avail_event: u16 = mem
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn a_chain_offered_during_a_round_that_took_none_gets_a_round() {
        // blk with --direct at queue depth 1: a round takes the request,
        // the next only completes it, and the driver's next request
        // arrives before notifications are back on.
        let (mem, vring) = queue();
        let m = mem.memory();
        vring.enable_notification().unwrap();
        assert!(offer(&m, 0), "the first chain after arming kicks");
        let mut taken = Vec::new();
        let mut round = 0;
        rounds(&vring, true, || {
            round += 1;
            while let Some(c) = pop(&vring, &mem.memory()) {
                taken.push(c.head_index());
            }
            match round {
                1 => Round::Again,
                2 => {
                    assert!(!offer(&m, 1), "the avail event lags: no kick");
                    Round::Done
                }
                _ => Round::Done,
            }
        });
        assert_eq!(taken, [0, 1], "the kick-less chain was fetched");
    }

    #[test]
    fn a_ring_claiming_chains_it_cannot_hand_out_ends_the_loop() {
        let (mem, vring) = queue();
        // An avail index far more than a queue ahead: nothing pops, yet
        // every re-check says chains are waiting.
        mem.memory()
            .write_obj(3 * SIZE, GuestAddress(AVAIL + 2))
            .unwrap();
        let mut n = 0;
        rounds(&vring, true, || {
            n += 1;
            assert!(pop(&vring, &mem.memory()).is_none());
            Round::Done
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn chains_keep_coming_until_the_ring_is_drained() {
        let (mem, vring) = queue();
        let m = mem.memory();
        vring.enable_notification().unwrap();
        offer(&m, 0);
        let mut taken = Vec::new();
        rounds(&vring, true, || {
            while let Some(c) = pop(&vring, &mem.memory()) {
                taken.push(c.head_index());
            }
            let next = taken.len() as u16;
            if next < 4 {
                // Offered after this round's last pop: no kick comes for it.
                assert!(!offer(&m, next));
            }
            Round::Done
        });
        assert_eq!(taken, [0, 1, 2, 3]);
    }
}
