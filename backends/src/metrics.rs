//! Per-process I/O counters of a backend, and the unix socket that exports
//! them to the VMM.
//!
//! Only the backend sees the data its device moves, so it counts here and
//! the VMM reads the counters when it builds its metrics. The socket path is
//! by convention the vhost-user socket's path plus [`SUFFIX`] (so the VMM
//! finds it without configuration), or `--metrics-socket PATH`. Every
//! connection gets one line of JSON and is closed:
//!
//! ```text
//! {"requests":N,"bytes_read":N,"bytes_written":N,"io_errors":N}
//! ```
//!
//! `bytes_read` counts bytes the device read from guest buffers (block
//! writes, transmitted frames, status events), `bytes_written` bytes it wrote
//! into guest buffers (block reads, received frames, input events). The
//! counters belong to the process: a restarted backend starts again from 0.
//!
//! The data path only does relaxed atomic adds on [`counters`]; there is one
//! device per backend process, so the counters are a process-wide static.

use std::io::{self, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use log::{debug, info, warn};

/// Appended to the vhost-user socket path to name the metrics socket.
pub const SUFFIX: &str = ".metrics";

/// Pause after a failed `accept` (out of fds, ...), so that a persistent
/// failure does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The I/O counters of one backend process.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    io_errors: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests completed (successfully or not).
    pub requests: u64,
    /// Bytes the device read from guest buffers.
    pub bytes_read: u64,
    /// Bytes the device wrote into guest buffers.
    pub bytes_written: u64,
    /// Requests completed with an error status.
    pub io_errors: u64,
}

impl Snapshot {
    /// The line served on the metrics socket (newline included).
    pub fn to_json_line(&self) -> String {
        format!(
            "{{\"requests\":{},\"bytes_read\":{},\"bytes_written\":{},\"io_errors\":{}}}\n",
            self.requests, self.bytes_read, self.bytes_written, self.io_errors
        )
    }
}

static COUNTERS: Counters = Counters {
    requests: AtomicU64::new(0),
    bytes_read: AtomicU64::new(0),
    bytes_written: AtomicU64::new(0),
    io_errors: AtomicU64::new(0),
};

/// This process's counters.
pub fn counters() -> &'static Counters {
    &COUNTERS
}

impl Counters {
    /// A request completed successfully, having read `read` bytes from
    /// guest buffers and written `written` bytes into them.
    #[inline]
    pub fn completed(&self, read: u64, written: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.add_bytes(read, written);
    }

    /// A request completed with an error status.
    #[inline]
    pub fn failed(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.io_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes moved outside any request count (e.g. part of a frame).
    #[inline]
    pub fn add_bytes(&self, read: u64, written: u64) {
        if read != 0 {
            self.bytes_read.fetch_add(read, Ordering::Relaxed);
        }
        if written != 0 {
            self.bytes_written.fetch_add(written, Ordering::Relaxed);
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            io_errors: self.io_errors.load(Ordering::Relaxed),
        }
    }
}

/// Errors setting up the metrics socket.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The socket could not be bound.
    #[error("cannot bind the metrics socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The serving thread could not be started.
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] io::Error),
}

/// The metrics path by convention: `<vhost-user socket>.metrics`.
pub fn default_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_os_string();
    s.push(SUFFIX);
    PathBuf::from(s)
}

/// The bound metrics socket. Bind it before the sandbox is entered, start
/// serving with [`MetricsListener::spawn`] after (a sandboxed process may
/// create no socket files, and the sandbox wants no threads yet). Dropping
/// the returned [`MetricsGuard`] (or this listener, if never spawned)
/// removes the socket file.
pub struct MetricsListener {
    listener: UnixListener,
    guard: MetricsGuard,
}

impl MetricsListener {
    /// Binds `path`, replacing a stale socket (a previous process's).
    pub fn bind(path: &Path) -> Result<Self, MetricsError> {
        let bind_err = |source| MetricsError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => debug!("removed stale metrics socket {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        Ok(MetricsListener {
            listener,
            guard: MetricsGuard {
                path: path.to_path_buf(),
            },
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.guard.path
    }

    /// Serves every connection on its own thread; the guard removes the
    /// socket file when dropped.
    pub fn spawn(self) -> Result<MetricsGuard, MetricsError> {
        let MetricsListener { listener, guard } = self;
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener))
            .map_err(MetricsError::Thread)?;
        info!("metrics on {}", guard.path.display());
        Ok(guard)
    }
}

/// Removes the metrics socket file when dropped (clean exit).
#[derive(Debug)]
pub struct MetricsGuard {
    path: PathBuf,
}

impl Drop for MetricsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Binds (if a path is given) before the sandbox: the one call backends
/// make. `None` means no metrics socket.
pub fn bind(path: Option<&Path>) -> Result<Option<MetricsListener>, MetricsError> {
    path.map(MetricsListener::bind).transpose()
}

/// Starts serving a listener from [`bind`] (after the sandbox).
pub fn spawn(l: Option<MetricsListener>) -> Result<Option<MetricsGuard>, MetricsError> {
    l.map(MetricsListener::spawn).transpose()
}

fn serve(listener: &UnixListener) {
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                // One short line into an empty socket buffer: never blocks.
                let line = counters().snapshot().to_json_line();
                if let Err(e) = s.write_all(line.as_bytes()) {
                    debug!("metrics client went away: {e}");
                }
            }
            Err(e) => {
                warn!("metrics socket: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn default_path_appends_the_suffix() {
        assert_eq!(
            default_path(Path::new("/run/x/blk0.sock")),
            PathBuf::from("/run/x/blk0.sock.metrics")
        );
    }

    #[test]
    fn json_line_has_every_counter() {
        let s = Snapshot {
            requests: 3,
            bytes_read: 4096,
            bytes_written: 512,
            io_errors: 1,
        };
        assert_eq!(
            s.to_json_line(),
            "{\"requests\":3,\"bytes_read\":4096,\"bytes_written\":512,\"io_errors\":1}\n"
        );
    }

    #[test]
    fn socket_serves_the_counters_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.metrics");
        std::fs::write(&path, b"stale").unwrap();
        let guard = MetricsListener::bind(&path).unwrap().spawn().unwrap();
        let before = counters().snapshot();
        counters().completed(10, 20);
        counters().failed();
        let mut line = String::new();
        UnixStream::connect(&path)
            .unwrap()
            .read_to_string(&mut line)
            .unwrap();
        assert!(line.ends_with("}\n"), "{line:?}");
        let after = |key: &str| -> u64 {
            let at = line.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().unwrap()
        };
        // Other tests in this process may count too: at least ours.
        assert!(after("requests") >= before.requests + 2);
        assert!(after("bytes_read") >= before.bytes_read + 10);
        assert!(after("bytes_written") >= before.bytes_written + 20);
        assert!(after("io_errors") > before.io_errors);
        drop(guard);
        assert!(!path.exists(), "removed on drop");
    }
}
