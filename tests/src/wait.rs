//! Every wait in the tests polls a condition until a deadline; none sleeps
//! for a fixed time.

use std::time::{Duration, Instant};

/// Polls `probe` until it returns `Some`, or panics after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        // Poll tick, not the wait itself.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`wait_for`], but returns `None` at the deadline instead of panicking.
pub fn poll_until<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
