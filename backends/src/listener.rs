//! Where a backend listens: a socket path it binds itself, or a listening
//! socket it inherits (`--socket-fd N`, or systemd socket activation through
//! `LISTEN_FDS`/`LISTEN_PID`, whose first fd is 3).
//!
//! An inherited socket belongs to whoever made it (a supervisor such as
//! `splitvm up`, or systemd): the backend never unlinks its path, so a
//! restarted backend picks up the same socket, and a frontend that
//! connected while no backend ran waits in its backlog.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost::vhost_user::Listener;

/// First fd systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Listen backlog set again on an inherited socket.
const BACKLOG: libc::c_int = 128;

/// Where to listen, as the command line and environment say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOn {
    /// Bind this path (replacing a stale socket) and remove it at exit.
    Path(PathBuf),
    /// Use this inherited listening socket; never unlink its path.
    Fd(RawFd),
}

/// Errors finding or opening the listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Neither flag was given and the process was not socket-activated.
    #[error(
        "no socket to listen on: give --socket-path PATH or --socket-fd N, \
         or start the backend under systemd socket activation (LISTEN_FDS)"
    )]
    NoSocket,
    /// `LISTEN_FDS`/`LISTEN_PID` are set for this process but unusable.
    #[error("systemd socket activation: {0}")]
    Activation(String),
    /// The inherited fd is not a listening unix stream socket.
    #[error("socket fd {fd}: {reason}")]
    NotListening {
        /// The fd.
        fd: RawFd,
        /// What is wrong with it.
        reason: String,
    },
    /// The inherited fd was already taken by this process.
    #[error("socket fd {0} is already in use by this process")]
    Taken(RawFd),
    /// The socket path could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
}

/// Picks the socket: `--socket-path`, else `--socket-fd`, else systemd
/// socket activation from the environment.
pub fn resolve(path: Option<PathBuf>, fd: Option<RawFd>) -> Result<ListenOn, ListenError> {
    if let Some(p) = path {
        return Ok(ListenOn::Path(p));
    }
    if let Some(fd) = fd {
        return Ok(ListenOn::Fd(fd));
    }
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    match activation(pid.as_deref(), fds.as_deref(), std::process::id())? {
        Some(fd) => Ok(ListenOn::Fd(fd)),
        None => Err(ListenError::NoSocket),
    }
}

/// `sd_listen_fds` semantics: the variables count only when `LISTEN_PID`
/// is this process (a child that inherited the environment ignores them).
fn activation(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    me: u32,
) -> Result<Option<RawFd>, ListenError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(me) {
        return Ok(None);
    }
    match fds.trim().parse::<u32>() {
        Ok(1) => Ok(Some(LISTEN_FDS_START)),
        Ok(n) => Err(ListenError::Activation(format!(
            "LISTEN_FDS={n}: a backend serves exactly one socket"
        ))),
        Err(_) => Err(ListenError::Activation(format!(
            "LISTEN_FDS={fds:?} is not a number"
        ))),
    }
}

/// A listening socket ready for the serve loop.
pub struct Bound {
    /// The listener (it unlinks the path on drop only if this process bound it).
    pub listener: Listener,
    /// The socket's path, if it has one (for logs and private sockets next to it).
    pub path: Option<PathBuf>,
    /// Whether the socket was inherited.
    pub inherited: bool,
}

static FD_TAKEN: AtomicBool = AtomicBool::new(false);

/// Binds the path or takes the inherited fd.
pub fn open(on: &ListenOn) -> Result<Bound, ListenError> {
    match on {
        ListenOn::Path(p) => Ok(Bound {
            // `true`: replace a stale socket; the listener removes it on drop.
            listener: Listener::new(p, true).map_err(|source| ListenError::Bind {
                path: p.clone(),
                source,
            })?,
            path: Some(p.clone()),
            inherited: false,
        }),
        ListenOn::Fd(fd) => {
            let fd = *fd;
            check_listening(fd)?;
            if FD_TAKEN.swap(true, Ordering::SeqCst) {
                return Err(ListenError::Taken(fd));
            }
            // SAFETY: `fd` is open and a listening unix stream socket
            // (checked above); it was inherited, so no other object of this
            // process owns it, and FD_TAKEN makes this the only conversion.
            let l = unsafe { UnixListener::from_raw_fd(fd) };
            // Not passed on to anything this process might start.
            // SAFETY: fcntl on an fd `l` owns; no memory is involved.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // listen() again records this process as the one a connecting
            // frontend's SO_PEERCRED names (instead of the socket's creator).
            // SAFETY: listen on an fd `l` owns; no memory is involved.
            unsafe { libc::listen(fd, BACKLOG) };
            let path = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
            Ok(Bound {
                // From a UnixListener the vhost Listener has no path: it
                // never unlinks the socket.
                listener: Listener::from(l),
                path,
                inherited: true,
            })
        }
    }
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes and `len` holds the size of
    // `v`; getsockopt on any fd number is harmless (EBADF/ENOTSOCK).
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check_listening(fd: RawFd) -> Result<(), ListenError> {
    let bad = |reason: String| ListenError::NotListening { fd, reason };
    let domain = sockopt(fd, libc::SO_DOMAIN).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTSOCK) => bad("not a unix socket (not a socket at all)".into()),
        _ => bad(e.to_string()),
    })?;
    if domain != libc::AF_UNIX {
        return Err(bad(format!("not a unix socket (domain {domain})")));
    }
    if sockopt(fd, libc::SO_TYPE).map_err(|e| bad(e.to_string()))? != libc::SOCK_STREAM {
        return Err(bad("not a stream socket".into()));
    }
    if sockopt(fd, libc::SO_ACCEPTCONN).map_err(|e| bad(e.to_string()))? != 1 {
        return Err(bad(
            "not listening (bind and listen before passing it)".into()
        ));
    }
    Ok(())
}

/// Tells a supervisor the backend is ready (`READY=1` to `NOTIFY_SOCKET`,
/// the sd_notify protocol; a leading `@` is an abstract socket). Without
/// `NOTIFY_SOCKET` it does nothing.
pub fn notify_ready() -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = target.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(PathBuf::from(&target))?,
    };
    let sock = UnixDatagram::unbound()?;
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    sock.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_follows_sd_listen_fds() {
        assert_eq!(activation(None, None, 7).unwrap(), None);
        assert_eq!(activation(Some("7"), None, 7).unwrap(), None);
        // Meant for another process (the environment was inherited).
        assert_eq!(activation(Some("8"), Some("1"), 7).unwrap(), None);
        assert_eq!(activation(Some("7"), Some("1"), 7).unwrap(), Some(3));
        let e = activation(Some("7"), Some("2"), 7).unwrap_err().to_string();
        assert!(e.contains("LISTEN_FDS=2"), "{e}");
        assert!(activation(Some("7"), Some("x"), 7).is_err());
    }

    #[test]
    fn flags_win_over_the_environment() {
        assert_eq!(
            resolve(Some("/s".into()), Some(5)).unwrap(),
            ListenOn::Path("/s".into())
        );
        assert_eq!(resolve(None, Some(5)).unwrap(), ListenOn::Fd(5));
    }

    #[test]
    fn inherited_fd_must_be_a_listening_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let e = check_listening(std::os::fd::AsRawFd::as_raw_fd(&f)).unwrap_err();
        assert!(e.to_string().contains("not a unix socket"), "{e}");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = check_listening(std::os::fd::AsRawFd::as_raw_fd(&a)).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        check_listening(std::os::fd::AsRawFd::as_raw_fd(&l)).unwrap();
    }
}
