//! Waiting for a backend's socket to (re)appear: an inotify watch on the
//! socket's directory wakes the reconnect loop the moment a new backend
//! binds its socket, instead of at the next backoff tick. The backoff stays
//! as the fallback (a directory inotify cannot watch, a socket that was
//! bound before the watch existed, or one bound but not yet listening).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// An inotify watch for one file name in one directory.
pub struct SocketWatch {
    fd: OwnedFd,
    name: Vec<u8>,
}

/// Why [`SocketWatch::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// The watched name was created or moved into place.
    Appeared,
    /// The timeout passed.
    Timeout,
    /// The stop event fired.
    Stopped,
}

impl SocketWatch {
    /// Watches the directory of `socket` for its name being created.
    pub fn new(socket: &Path) -> io::Result<SocketWatch> {
        let dir = match socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = socket
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no name"))?
            .as_bytes()
            .to_vec();
        let cdir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: inotify_init1 takes no pointers; the result is checked.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `cdir` is a valid NUL-terminated string for the call.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                cdir.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ATTRIB,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketWatch { fd, name })
    }

    /// Waits up to `d` for the name to appear, or for `stop`.
    pub fn wait(&self, stop: &EventFd, d: Duration) -> Wake {
        let mut fds = [
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd structs for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            return if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                Wake::Timeout
            } else {
                Wake::Stopped
            };
        }
        if fds[0].revents != 0 {
            return Wake::Stopped;
        }
        if fds[1].revents != 0 && self.drain() {
            return Wake::Appeared;
        }
        Wake::Timeout
    }

    /// Reads every pending event; true if one names the socket.
    fn drain(&self) -> bool {
        // Room for many events; each is a 16-byte header plus a padded name.
        let mut buf = [0u8; 4096];
        let mut seen = false;
        loop {
            // SAFETY: `buf` is valid for writes of its whole length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                )
            };
            if n <= 0 {
                return seen;
            }
            seen |= names(&buf[..n as usize]).any(|name| name == OsStr::from_bytes(&self.name));
        }
    }
}

/// The file names in a buffer of `struct inotify_event` records.
fn names(mut buf: &[u8]) -> impl Iterator<Item = &OsStr> {
    const HEADER: usize = 16;
    std::iter::from_fn(move || {
        if buf.len() < HEADER {
            return None;
        }
        let len = u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
        let end = HEADER.checked_add(len).filter(|e| *e <= buf.len())?;
        let raw = &buf[HEADER..end];
        buf = &buf[end..];
        let name = raw.split(|b| *b == 0).next().unwrap_or_default();
        Some(OsStr::from_bytes(name))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn wakes_when_the_socket_is_bound_and_not_for_other_names() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("b.sock");
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let w = SocketWatch::new(&sock).unwrap();
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        assert_eq!(w.wait(&stop, Duration::from_millis(50)), Wake::Timeout);
        let t = std::thread::spawn({
            let sock = sock.clone();
            move || UnixListener::bind(sock).unwrap()
        });
        let start = Instant::now();
        let mut woke = Wake::Timeout;
        while woke == Wake::Timeout && start.elapsed() < Duration::from_secs(10) {
            woke = w.wait(&stop, Duration::from_secs(10));
        }
        assert_eq!(woke, Wake::Appeared);
        let _listener = t.join().unwrap();
        stop.write(1).unwrap();
        assert_eq!(w.wait(&stop, Duration::from_secs(10)), Wake::Stopped);
    }

    #[test]
    fn parses_event_records() {
        let mut buf = Vec::new();
        for name in ["a.sock", "longer-name"] {
            let padded = (name.len() + 1).div_ceil(16) * 16;
            buf.extend_from_slice(&1i32.to_ne_bytes());
            buf.extend_from_slice(&libc::IN_CREATE.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(padded, 0);
            buf.extend_from_slice(&n);
        }
        // A truncated record at the end is ignored, not read past.
        buf.extend_from_slice(&[0u8; 20]);
        let at = buf.len() - 8;
        buf[at..at + 4].copy_from_slice(&64u32.to_ne_bytes());
        let got: Vec<_> = names(&buf).collect();
        assert_eq!(got, [OsStr::new("a.sock"), OsStr::new("longer-name")]);
    }
}
