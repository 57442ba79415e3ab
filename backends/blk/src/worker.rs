//! Per-queue worker state of [`crate::vhu_blk`]: the requests handed to the
//! engine, the queue's inflight-region tracker (`INFLIGHT_SHMFD`), and the
//! rate limit for guest-triggered warnings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vhost_user_backend::VringRwLock;
use vm_memory::GuestAddress;

use crate::blk::Segment;
use crate::inflight::QueueTracker;
use crate::io::{Completion, Engine};

/// A request the engine holds.
pub(crate) struct InFlight {
    pub(crate) head: u16,
    pub(crate) status: GuestAddress,
    pub(crate) used_len: u32,
    /// Data bytes the request reads from guest buffers (a write's), for
    /// the metrics.
    pub(crate) from_guest: u64,
    /// Data bytes it writes into guest buffers (a read's).
    pub(crate) to_guest: u64,
}

/// One queue's worker.
pub(crate) struct Worker {
    pub(crate) engine: Box<dyn Engine>,
    reqs: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// The vring this worker serves (known after its first event).
    pub(crate) vring: Option<VringRwLock>,
    /// The queue's part of the inflight region, once the frontend set one.
    pub(crate) tracker: Option<QueueTracker>,
    /// Reconcile with the region before taking anything from the ring
    /// (set when a region is installed and when the ring is stopped).
    pub(crate) resume_pending: bool,
    /// Counter recorded with the next head taken.
    pub(crate) counter: u64,
    /// Scratch buffers reused for every request (no allocation per
    /// request): the chain's descriptors, the request's data segments and
    /// the engine's completions.
    pub(crate) segs: Vec<Segment>,
    pub(crate) data: Vec<Segment>,
    pub(crate) done: Vec<Completion>,
    /// Busy-polling before sleeping.
    pub(crate) poll: Poll,
}

impl Worker {
    pub(crate) fn new(engine: Box<dyn Engine>) -> Self {
        Worker {
            engine,
            reqs: Vec::new(),
            free: Vec::new(),
            vring: None,
            tracker: None,
            resume_pending: false,
            counter: 0,
            segs: Vec::new(),
            data: Vec::new(),
            done: Vec::new(),
            poll: Poll::default(),
        }
    }

    pub(crate) fn put(&mut self, r: InFlight) -> u64 {
        let idx = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.reqs.get_mut(i) {
                    *s = Some(r);
                }
                i
            }
            None => {
                self.reqs.push(Some(r));
                self.reqs.len() - 1
            }
        };
        idx as u64
    }

    pub(crate) fn take(&mut self, token: u64) -> Option<InFlight> {
        let i = usize::try_from(token).ok()?;
        let r = self.reqs.get_mut(i)?.take()?;
        self.free.push(i);
        Some(r)
    }

    pub(crate) fn idle(&self) -> bool {
        self.reqs.iter().all(Option::is_none)
    }

    /// Records `head` as taken from the ring (before any I/O for it).
    pub(crate) fn track(&mut self, head: u16) {
        if let Some(t) = &self.tracker {
            if t.mark(head, self.counter) {
                self.counter = self.counter.wrapping_add(1);
            }
        }
    }
}

/// Adaptive busy-polling window, as QEMU's `poll-max-ns`: after the queue
/// runs dry the worker keeps looking at the avail ring and the engine's
/// completion ring for `window` before it goes back to sleep in epoll.
/// A hit saves two wake-ups (ours and, with `EVENT_IDX`, the frontend's
/// kick syscall, since notifications stay off while polling). As QEMU
/// adjusts `poll_ns`, the window is judged by the whole idle time, from
/// the moment the queue ran dry (poll included) to the next event: within
/// the window, the poll worked; between the window and [`Poll::MAX`], a
/// longer poll would have caught it, so the window doubles; beyond `MAX`
/// polling cannot pay off and only burns a core others need, so it halves.
#[derive(Debug)]
pub(crate) struct Poll {
    pub(crate) window: Duration,
    /// When the queue last ran dry (the start of the last poll).
    idle: Option<Instant>,
}

impl Poll {
    /// Largest window. With 64 µs the worker often slept just before the
    /// driver refilled the ring (blkgen sleeping on the call eventfd needs
    /// a wake-up, then reaps a whole batch before it submits again), and
    /// every refill then cost the driver a kick and us a wake-up.
    pub(crate) const MAX: Duration = Duration::from_micros(256);
    /// Window after growing from zero.
    const START: Duration = Duration::from_micros(4);

    /// The worker was woken by an event (kick or completion) after
    /// sleeping: adjusts the window to the idle time that ended.
    pub(crate) fn woke(&mut self) {
        let Some(t) = self.idle.take() else {
            return;
        };
        let idle = t.elapsed();
        if idle <= self.window {
            // The poll should have caught it (it came as the poll ended).
        } else if idle <= Self::MAX {
            self.window = (self.window * 2).clamp(Self::START, Self::MAX);
        } else {
            self.window /= 2;
            if self.window < Self::START {
                self.window = Duration::ZERO;
            }
        }
    }

    /// The queue ran dry: polling (if any) starts now.
    pub(crate) fn dry(&mut self) {
        self.idle = Some(Instant::now());
    }

    /// The poll found work: the queue was not idle after all.
    pub(crate) fn busy(&mut self) {
        self.idle = None;
    }
}

impl Default for Poll {
    fn default() -> Self {
        Poll {
            window: Self::MAX,
            idle: None,
        }
    }
}

/// Rate limit for guest-triggered warnings: at most a few per second.
#[derive(Default)]
pub(crate) struct RateLimit {
    second: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    const PER_SECOND: u64 = 10;

    pub(crate) fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}
