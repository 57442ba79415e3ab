//! Backend supervision in the VMM: a thread per vhost-user device watches
//! the backend's socket; when it hangs up (crash, kill -9, upgrade), the
//! guest keeps running, and the thread waits for a new backend on the same
//! socket path and hands it the device's state.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::VhostUserDevice;
use super::frontend::BackendConnection;
use crate::devices::virtio::mmio::MmioTransport;

/// How long to keep trying to reach a new backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconnectPolicy {
    /// Retry forever (backoff 1 ms doubling to 100 ms).
    Forever,
    /// Give up after this long; the device stays broken.
    GiveUpAfter(Duration),
}

/// Runs `f` on the vhost-user device inside `t`, if that is what it holds.
pub fn with_device<R>(
    t: &Mutex<MmioTransport>,
    f: impl FnOnce(&mut VhostUserDevice) -> R,
) -> Option<R> {
    let mut guard = t.lock().ok()?;
    guard
        .device_mut()
        .as_any_mut()
        .downcast_mut::<VhostUserDevice>()
        .map(f)
}

/// The supervision thread of one device; stopped when dropped.
pub struct Monitor {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    pub fn start(
        name: String,
        transport: Arc<Mutex<MmioTransport>>,
        policy: ReconnectPolicy,
    ) -> std::io::Result<Monitor> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_rx = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(format!("monitor-{name}"))
            .spawn(move || supervise(&transport, &stop_rx, policy))?;
        Ok(Monitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What ended a wait on a backend connection.
enum Woke {
    HungUp,
    Replaced,
    Stopped,
}

/// Waits until `fd` hangs up, the device moves to another connection, or
/// `stop` fires.
fn wait_hangup(fd: &OwnedFd, changed: &EventFd, stop: &EventFd) -> Woke {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: fd.as_raw_fd(),
                // Only hang-ups: pending replies (POLLIN) belong to whoever
                // sent the request.
                events: libc::POLLRDHUP,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: changed.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of three pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Woke::Stopped;
        }
        if fds[1].revents != 0 {
            return Woke::Stopped;
        }
        if fds[2].revents != 0 {
            let _ = changed.read();
            return Woke::Replaced;
        }
        let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if fds[0].revents & gone != 0 {
            return Woke::HungUp;
        }
    }
}

/// Sleeps for `d` unless `stop` fires first; false if it fired.
fn pause(stop: &EventFd, d: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: stop.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = d.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `fds` is a valid array of one pollfd struct for the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    n == 0
}

fn supervise(t: &Mutex<MmioTransport>, stop: &EventFd, policy: ReconnectPolicy) {
    loop {
        let Some((Some(fd), changed)) = with_device(t, |d| (d.watch_fd(), d.conn_changed())) else {
            return;
        };
        match wait_hangup(&fd, &changed, stop) {
            Woke::Stopped => return,
            Woke::Replaced => continue,
            Woke::HungUp => {}
        }
        drop(fd);
        let Some(path) = with_device(t, |d| {
            d.mark_disconnected();
            d.socket().to_path_buf()
        }) else {
            return;
        };
        log::warn!(
            "{}: backend went away; waiting for a new one",
            path.display()
        );
        if !reconnect(t, &path, stop, policy) {
            return;
        }
    }
}

/// Connects to a new backend at `path` and restores the device on it.
fn reconnect(
    t: &Mutex<MmioTransport>,
    path: &Path,
    stop: &EventFd,
    policy: ReconnectPolicy,
) -> bool {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(1);
    loop {
        if let ReconnectPolicy::GiveUpAfter(limit) = policy {
            if started.elapsed() > limit {
                log::error!(
                    "{}: no backend after {limit:?}; the device stays broken",
                    path.display()
                );
                return false;
            }
        }
        // Connect and negotiate without holding the device: the guest's
        // register accesses go on meanwhile.
        match BackendConnection::connect(path, Duration::ZERO) {
            Ok(conn) => match with_device(t, |d| d.restore(conn)) {
                Some(Ok(())) => {
                    log::info!(
                        "{}: new backend took over after {:?}",
                        path.display(),
                        started.elapsed()
                    );
                    return true;
                }
                Some(Err(e)) => log::warn!("{}: restoring failed: {e}", path.display()),
                None => return false,
            },
            Err(e) => log::debug!("{}: {e}", path.display()),
        }
        if !pause(stop, backoff) {
            return false;
        }
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}
