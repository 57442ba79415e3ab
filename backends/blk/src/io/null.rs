//! The null engine (`--io-engine null`): every read and write completes at
//! once without touching the image (reads leave the guest buffer as it
//! was). Only for benchmarks: it measures the virtqueue path and the
//! frontend's ceiling with no storage cost (`scripts/bench`).

use std::os::fd::RawFd;

use super::{Completion, Engine, IoOp};

/// See the module docs.
#[derive(Default)]
pub struct Null {
    done: Vec<Completion>,
}

impl Engine for Null {
    fn name(&self) -> &'static str {
        "null"
    }

    fn submit(&mut self, op: IoOp) {
        self.done.push(Completion {
            token: op.token,
            result: Ok(()),
        });
    }

    fn commit(&mut self) {}

    fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    fn drain(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.done);
    }

    fn notifier(&self) -> Option<RawFd> {
        None
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
