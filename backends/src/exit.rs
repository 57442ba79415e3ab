//! Exit events for the vring workers, without the descriptor leak.
//! `vhost-user-backend` 0.24 registers the consumer half of
//! `VhostUserBackend::exit_event` with a worker's epoll through
//! `into_raw_fd` and never closes it: one eventfd per worker thread per
//! frontend connection. A backend serving frontend after frontend ran out
//! of descriptors (found by the vhost-user fuzz targets: EMFILE after about
//! ten thousand connections; sooner under the sandbox's file limit).
//! [`ExitEvents`] hands the pairs out and closes the consumers when it is
//! dropped, with the per-connection backend that owns it: after the daemon,
//! its epoll sets and its workers are gone. Revisit when the crate closes
//! the fd itself (it would then be closed twice).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

/// See the module docs.
#[derive(Debug, Default)]
pub struct ExitEvents {
    consumers: Mutex<Vec<OwnedFd>>,
}

impl ExitEvents {
    /// A new exit event for `VhostUserBackend::exit_event`.
    pub fn make(&self) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        // SAFETY: the daemon takes `consumer` apart with `into_raw_fd` and
        // never closes that descriptor (see the module docs), so this is
        // the one owner that closes it, once, on drop.
        let fd = unsafe { OwnedFd::from_raw_fd(consumer.as_raw_fd()) };
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fd);
        Some((consumer, notifier))
    }
}
