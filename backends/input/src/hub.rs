//! Where event sources (the evdev reader, the event socket) meet the vring
//! worker: the bounded [`EventQueue`], an eventfd that wakes the worker, the
//! device's [`Capabilities`], and the sink for status events (LEDs) the
//! guest sends back. Lives for the whole process, across frontends.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::input::{Capabilities, EventQueue, InputEvent};

/// Receives status-queue events (LEDs, sounds) from the guest.
pub trait StatusSink: Send + Sync {
    /// Delivers one event the guest put on the status queue.
    fn status(&self, ev: InputEvent);
}

/// Queue counters for logs and the event socket's `stats` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Deliverable events queued.
    pub queued: usize,
    /// Reports dropped because the queue was full.
    pub dropped_reports: u64,
    /// Events dropped with them.
    pub dropped_events: u64,
}

/// See the module docs.
pub struct EventHub {
    queue: Mutex<EventQueue>,
    wake: EventFd,
    caps: RwLock<Capabilities>,
    sink: RwLock<Option<Arc<dyn StatusSink>>>,
}

impl EventHub {
    /// A hub holding at most about `limit` queued events.
    pub fn new(caps: Capabilities, limit: usize) -> std::io::Result<Self> {
        Ok(EventHub {
            queue: Mutex::new(EventQueue::new(limit)),
            wake: EventFd::new(EFD_NONBLOCK)?,
            caps: RwLock::new(caps),
            sink: RwLock::new(None),
        })
    }

    /// The queue, locked.
    pub fn queue(&self) -> MutexGuard<'_, EventQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The eventfd the vring worker polls.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Queues `events` (in order) and wakes the worker. Returns how many
    /// reports the queue dropped meanwhile to stay within its bound.
    pub fn push(&self, events: &[InputEvent]) -> u64 {
        let dropped = {
            let mut q = self.queue();
            let before = q.dropped_reports();
            for e in events {
                q.push(*e);
            }
            q.dropped_reports() - before
        };
        let _ = self.wake.write(1);
        dropped
    }

    /// Drops the report being built (the source lost events).
    pub fn discard_partial(&self) {
        self.queue().discard_partial();
    }

    /// Queue counters.
    pub fn stats(&self) -> Stats {
        let q = self.queue();
        Stats {
            queued: q.len(),
            dropped_reports: q.dropped_reports(),
            dropped_events: q.dropped_events(),
        }
    }

    /// A copy of the device's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the capabilities under the lock.
    pub fn with_capabilities<R>(&self, f: impl FnOnce(&Capabilities) -> R) -> R {
        f(&self.caps.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the capabilities (a host device came back different).
    pub fn set_capabilities(&self, caps: Capabilities) {
        *self.caps.write().unwrap_or_else(PoisonError::into_inner) = caps;
    }

    /// Sets where status events go.
    pub fn set_sink(&self, sink: Arc<dyn StatusSink>) {
        *self.sink.write().unwrap_or_else(PoisonError::into_inner) = Some(sink);
    }

    /// Passes a status event from the guest to the sink.
    pub fn status(&self, ev: InputEvent) {
        let sink = self
            .sink
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(s) = sink {
            s.status(ev);
        }
    }
}
