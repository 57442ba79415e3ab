//! The backend request channel (`BACKEND_REQ`): how a backend tells the
//! VMM that its config space changed (a net link going down, say). A thread
//! per connection waits on the channel; a change marks the cached config
//! stale and raises the device's config interrupt.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::mmio::ConfigNotifier;

/// Shared between the device and its request thread.
#[derive(Clone, Default)]
pub struct ConfigState {
    /// Set when the backend reported a change; the next config read refetches.
    pub stale: Arc<AtomicBool>,
    /// Raises the config interrupt; set once the transport exists.
    pub notifier: Arc<Mutex<Option<ConfigNotifier>>>,
}

struct Handler {
    name: String,
    state: ConfigState,
}

impl VhostUserFrontendReqHandler for Handler {
    fn handle_config_change(&self) -> HandlerResult<u64> {
        log::info!("{}: backend reports a config change", self.name);
        self.state.stale.store(true, Ordering::SeqCst);
        if let Ok(n) = self.state.notifier.lock() {
            if let Some(n) = n.as_ref() {
                n.notify();
            }
        }
        Ok(0)
    }
}

/// The thread serving one connection's backend requests; stopped on drop.
pub struct BackendReqThread {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// Errors setting up the channel.
#[derive(Debug, thiserror::Error)]
pub enum BackendReqError {
    #[error("creating the backend request channel failed: {0}")]
    Channel(#[source] vhost::vhost_user::Error),
    #[error("backend request channel: {0}")]
    Io(#[source] std::io::Error),
}

impl BackendReqThread {
    /// Creates the channel; returns the thread and the fd to hand the
    /// backend with `SET_BACKEND_REQ_FD`.
    pub fn start(
        name: &str,
        state: ConfigState,
        reply_ack: bool,
    ) -> Result<(BackendReqThread, RawFd), BackendReqError> {
        let mut handler = FrontendReqHandler::new(Arc::new(Handler {
            name: name.to_string(),
            state,
        }))
        .map_err(BackendReqError::Channel)?;
        handler.set_reply_ack_flag(reply_ack);
        let tx = handler.get_tx_raw_fd();
        let stop = EventFd::new(EFD_NONBLOCK).map_err(BackendReqError::Io)?;
        let stop_rx = stop.try_clone().map_err(BackendReqError::Io)?;
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name("backend-req".to_string())
            .spawn(move || serve(&name, handler, stop_rx))
            .map_err(BackendReqError::Io)?;
        Ok((
            BackendReqThread {
                stop,
                thread: Some(thread),
            },
            tx,
        ))
    }
}

fn serve(name: &str, mut handler: FrontendReqHandler<Handler>, stop: EventFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: handler.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
            && fds[0].revents & libc::POLLIN == 0
        {
            return;
        }
        if let Err(e) = handler.handle_request() {
            log::warn!("{name}: backend request channel: {e}");
            return;
        }
    }
}

impl Drop for BackendReqThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
