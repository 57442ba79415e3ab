//! What the engines that finish every op inside `submit` share
//! ([`super::sync::Sync`], [`super::null::Null`]): the finished ops wait in
//! a list until the worker reaps them. Nothing is ever left in the kernel,
//! so there is no notifier and draining never blocks.

use std::io;
use std::os::fd::RawFd;

use super::{Completion, Engine, IoOp};

/// Carries out one op at once, in the worker thread.
pub trait RunNow: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Does `op`; its outcome becomes the op's [`Completion`].
    fn run(&self, op: IoOp) -> io::Result<()>;
}

/// The [`Engine`] of a [`RunNow`].
pub struct Inline<R> {
    run: R,
    done: Vec<Completion>,
}

impl<R: RunNow> Inline<R> {
    /// An engine that does every op with `run` when it is submitted.
    pub fn new(run: R) -> Self {
        Inline {
            run,
            done: Vec::new(),
        }
    }
}

impl<R: RunNow> Engine for Inline<R> {
    fn name(&self) -> &'static str {
        self.run.name()
    }

    fn submit(&mut self, op: IoOp) {
        let token = op.token;
        let result = self.run.run(op);
        self.done.push(Completion { token, result });
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
