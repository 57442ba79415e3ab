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

use super::device::{UsedReader, VhostUserDevice};
use super::frontend::BackendConnection;
use super::watch::{SocketWatch, Wake};
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

/// How long after a restore the monitor watches for the new backend's
/// first completed request (to log the restart time).
const FIRST_COMPLETION_WINDOW: Duration = Duration::from_secs(5);

/// A restore whose first completed request is still awaited: the moment
/// the new backend was reached, and the used indices before it.
struct Restart {
    reached: Instant,
    restored: Duration,
    before: Vec<u16>,
    reader: UsedReader,
}

impl Restart {
    /// True once a request completed (or the window passed); logs it.
    fn check(&self, path: &Path) -> bool {
        let elapsed = self.reached.elapsed();
        if self.reader.read() != self.before {
            log::info!(
                "{}: restart: backend reached, state restored after {:.1} ms, first request completed after {:.1} ms",
                path.display(),
                self.restored.as_secs_f64() * 1e3,
                elapsed.as_secs_f64() * 1e3
            );
            return true;
        }
        elapsed > FIRST_COMPLETION_WINDOW
    }
}

/// Waits until `fd` hangs up, the device moves to another connection, or
/// `stop` fires. Meanwhile polls for `restart`'s first completion.
fn wait_hangup(
    fd: &OwnedFd,
    changed: &EventFd,
    stop: &EventFd,
    path: &Path,
    mut restart: Option<Restart>,
) -> Woke {
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
        if restart.as_ref().is_some_and(|r| r.check(path)) {
            restart = None;
        }
        let timeout = if restart.is_some() { 1 } else { -1 };
        // SAFETY: `fds` is a valid array of three pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
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

fn supervise(t: &Mutex<MmioTransport>, stop: &EventFd, policy: ReconnectPolicy) {
    let mut restart = None;
    loop {
        let Some((Some(fd), changed, path)) = with_device(t, |d| {
            (d.watch_fd(), d.conn_changed(), d.socket().to_path_buf())
        }) else {
            return;
        };
        match wait_hangup(&fd, &changed, stop, &path, restart.take()) {
            Woke::Stopped => return,
            Woke::Replaced => continue,
            Woke::HungUp => {}
        }
        drop(fd);
        if with_device(t, |d| d.mark_disconnected()).is_none() {
            return;
        }
        log::warn!(
            "{}: backend went away; waiting for a new one",
            path.display()
        );
        match reconnect(t, &path, stop, policy) {
            Some(r) => restart = r,
            None => return,
        }
    }
}

/// Connects to a new backend at `path` and restores the device on it.
/// `None` when it gave up or was stopped; else what to time next.
fn reconnect(
    t: &Mutex<MmioTransport>,
    path: &Path,
    stop: &EventFd,
    policy: ReconnectPolicy,
) -> Option<Option<Restart>> {
    let started = Instant::now();
    let watch = SocketWatch::new(path)
        .map_err(|e| log::debug!("{}: no inotify watch ({e}); polling", path.display()))
        .ok();
    // No backend runs: the used indices stay put until one is reached.
    let before = with_device(t, |d| d.used_reader())?;
    let before = before.map(|r| (r.read(), r));
    let mut backoff = Duration::from_millis(1);
    loop {
        if let ReconnectPolicy::GiveUpAfter(limit) = policy {
            if started.elapsed() > limit {
                log::error!(
                    "{}: no backend after {limit:?}; the device stays broken",
                    path.display()
                );
                return None;
            }
        }
        // Connect and negotiate without holding the device: the guest's
        // register accesses go on meanwhile.
        let reached = Instant::now();
        match BackendConnection::connect(path, Duration::ZERO) {
            Ok(conn) => match with_device(t, |d| d.restore(conn)) {
                Some(Ok(())) => {
                    log::info!(
                        "{}: new backend took over after {:?}",
                        path.display(),
                        started.elapsed()
                    );
                    let restored = reached.elapsed();
                    return Some(before.map(|(before, reader)| Restart {
                        reached,
                        restored,
                        before,
                        reader,
                    }));
                }
                Some(Err(e)) => log::warn!("{}: restoring failed: {e}", path.display()),
                None => return None,
            },
            Err(e) => log::debug!("{}: {e}", path.display()),
        }
        let woke = match &watch {
            Some(w) => w.wait(stop, backoff),
            None if pause(stop, backoff) => Wake::Timeout,
            None => Wake::Stopped,
        };
        match woke {
            Wake::Stopped => return None,
            // A new socket: try it at once, and soon again if it is bound
            // but not listening yet.
            Wake::Appeared => backoff = Duration::from_millis(1),
            Wake::Timeout => backoff = (backoff * 2).min(Duration::from_millis(100)),
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
