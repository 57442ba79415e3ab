//! The API server's connection slots: at most `Limits::max_connections`
//! connections are served at once (the acceptor answers 503 beyond), and a
//! stopping server waits until the last one is done.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Connections being served, so a stopping server can let them finish.
#[derive(Debug, Default)]
pub(super) struct Active {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Active {
    /// Takes a slot unless `max` are taken.
    pub(super) fn enter(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone()))
    }

    /// Waits until no connection is served, at most `limit`.
    pub(super) fn wait_idle(&self, limit: Duration) -> bool {
        let n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        match self.idle.wait_timeout_while(n, limit, |n| *n > 0) {
            Ok((_, t)) => !t.timed_out(),
            Err(_) => false,
        }
    }
}

/// Releases a connection slot when its thread ends, even by a panic.
pub(super) struct Slot(Arc<Active>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = self.0.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}
