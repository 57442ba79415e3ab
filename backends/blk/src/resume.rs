//! Resubmission after a reconnect: when a queue starts with an inflight
//! region, reconcile the region with the used ring, continue the avail ring
//! after what was already taken, and resubmit the heads still in flight,
//! in the order they were first taken, each exactly once.

use std::sync::atomic::Ordering;

use log::{info, warn};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;

use crate::chain::{self, MAX_CHAIN};
use crate::vhu_blk::VhostUserBlkBackend;
use crate::worker::Worker;

use splitvm_backends::avail::Mem;

impl VhostUserBlkBackend {
    /// Reconciles queue `q` with its inflight region and resubmits what it
    /// holds. Returns whether a used entry was added.
    pub(crate) fn resume(&self, q: usize, w: &mut Worker, vring: &VringRwLock, mem: &Mem) -> bool {
        let Some(t) = w.tracker.clone() else {
            return false;
        };
        let (used, size, table) = {
            let st = vring.get_ref();
            let queue = st.get_queue();
            match queue.used_idx(&**mem, Ordering::Acquire) {
                Ok(u) => (u.0, queue.size(), queue.desc_table()),
                Err(e) => {
                    warn!("queue {q}: cannot read the used ring to resume: {e}");
                    return false;
                }
            }
        };
        let res = t.resume(used, size);
        if res.fresh {
            return false;
        }
        if res.dropped > 0 {
            warn!(
                "queue {q}: ignored {} inflight entries beyond the ring size {size}",
                res.dropped
            );
        }
        vring.set_queue_next_used(used);
        vring.set_queue_next_avail(res.next_avail);
        w.counter = res.next_counter;
        if res.heads.is_empty() {
            return false;
        }
        info!(
            "queue {q}: resubmitting {} request(s) in flight before the reconnect (used idx {used})",
            res.heads.len()
        );
        let mut added = false;
        for head in res.heads {
            let (segs, truncated) = chain::walk(&**mem, table, size, head, MAX_CHAIN);
            added |= self.start_request(q, w, vring, mem, head, &segs, truncated);
        }
        w.engine.commit();
        added
    }
}
