//! Pausing and resuming vCPUs. A paused vCPU thread waits outside KVM_RUN;
//! a vCPU inside KVM_RUN is kicked out with a real-time signal whose
//! handler does nothing (the ioctl returns EINTR).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the no-op handler for [`kick_signal`]; once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), noop_handler)
}

/// What the vCPUs should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Run,
    Pause,
}

#[derive(Debug)]
struct Inner {
    want: Want,
    /// vCPUs currently parked.
    parked: usize,
}

/// Shared by the vCPU threads and whoever pauses them.
#[derive(Clone)]
pub struct RunState {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    threads: Arc<Mutex<Vec<libc::pthread_t>>>,
}

impl Default for RunState {
    fn default() -> Self {
        RunState {
            inner: Arc::new((
                Mutex::new(Inner {
                    want: Want::Run,
                    parked: 0,
                }),
                Condvar::new(),
            )),
            threads: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl RunState {
    /// Records a vCPU thread so it can be kicked.
    pub fn add_thread(&self, t: libc::pthread_t) {
        if let Ok(mut v) = self.threads.lock() {
            v.push(t);
        }
    }

    pub fn want(&self) -> Want {
        self.inner.0.lock().map(|i| i.want).unwrap_or(Want::Run)
    }

    /// Called by a vCPU thread before each KVM_RUN: parks while paused.
    pub fn park_if_paused(&self) {
        let (m, cv) = &*self.inner;
        let Ok(mut g) = m.lock() else { return };
        if g.want == Want::Run {
            return;
        }
        g.parked += 1;
        cv.notify_all();
        while g.want == Want::Pause {
            g = match cv.wait(g) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        g.parked -= 1;
        cv.notify_all();
    }

    /// Pauses every vCPU; returns once all `count` are parked or `limit` passed.
    pub fn pause(&self, count: usize, limit: Duration) -> bool {
        let (m, cv) = &*self.inner;
        let Ok(mut g) = m.lock() else { return false };
        g.want = Want::Pause;
        drop(g);
        let end = Instant::now() + limit;
        loop {
            // Kick again each round: a signal that lands just before a vCPU
            // enters KVM_RUN is not seen by it.
            self.kick_all();
            let Ok(g) = m.lock() else { return false };
            if g.parked >= count {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = cv.wait_timeout(g, left.min(Duration::from_millis(5)));
        }
    }

    pub fn resume(&self) {
        let (m, cv) = &*self.inner;
        if let Ok(mut g) = m.lock() {
            g.want = Want::Run;
            cv.notify_all();
        }
    }

    fn kick_all(&self) {
        if let Ok(v) = self.threads.lock() {
            for t in v.iter() {
                // SAFETY: `t` names a vCPU thread of this process that lives
                // until the process exits; the signal has a no-op handler.
                unsafe {
                    libc::pthread_kill(*t, kick_signal());
                }
            }
        }
    }
}

/// Exits of one vCPU, by reason.
#[derive(Debug, Default)]
pub struct ExitCounters {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

impl ExitCounters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}
