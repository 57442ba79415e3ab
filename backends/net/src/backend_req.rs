//! Sending `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` to the frontend.
//!
//! vhost 0.18's [`Backend`] (the handle vhost-user-backend passes to
//! `set_backend_req_fd`) forwards shared-object and shmem requests only:
//! its `handle_config_change` is the trait default (`ENOSYS`), and it does
//! not expose its socket. So the backend finds that socket itself: the one
//! unnamed, connected `AF_UNIX` stream socket of this process whose peer is
//! another process (the frontend's end of its socketpair), newest inode
//! first, and keeps a duplicate of it. The vhost-user connection itself is
//! named (it was accepted on our listening path), and in-process pairs
//! (signal-hook's) have this process as peer. The message has no body and
//! no NEED_REPLY flag, so nothing is ever read from the channel and the
//! crate's own use of it (it never sends on its own) cannot interleave.

use std::fs;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use vhost::vhost_user::Backend;

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
const CONFIG_CHANGE_MSG: u32 = 2;
/// Header flag: protocol version 1.
const VERSION_1: u32 = 0x1;

/// Errors finding or using the channel.
#[derive(Debug, thiserror::Error)]
pub enum BackendReqError {
    /// `/proc/self/fd` could not be read.
    #[error("cannot list /proc/self/fd: {0}")]
    Proc(#[source] io::Error),
    /// No socket looked like the channel.
    #[error("no unnamed unix stream socket with a foreign peer found")]
    NotFound,
    /// Duplicating or writing failed.
    #[error("backend request channel: {0}")]
    Io(#[source] io::Error),
}

/// The frontend's backend request channel (a duplicate of the socket held
/// by the crate's [`Backend`]).
pub struct ConfigChangeSender {
    _backend: Backend,
    fd: OwnedFd,
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`, which lives
    // for the call; a non-socket fd makes it fail without writing.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

fn is_channel(fd: RawFd) -> bool {
    if sockopt(fd, libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || sockopt(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || sockopt(fd, libc::SO_ACCEPTCONN) != Some(0)
    {
        return false;
    }
    // SAFETY: an all-zero sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    let r =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    if r != 0 || len as usize > mem::size_of::<libc::sa_family_t>() {
        return false;
    }
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut clen = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes one `ucred` (at most `clen` bytes) into `cred`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut clen,
        )
    };
    r == 0 && cred.pid != 0 && cred.pid != std::process::id() as libc::pid_t
}

impl ConfigChangeSender {
    /// Finds the channel `backend` was built on (see the module docs).
    pub fn find(backend: Backend) -> Result<Self, BackendReqError> {
        let mut best: Option<(u64, RawFd)> = None;
        for entry in fs::read_dir("/proc/self/fd").map_err(BackendReqError::Proc)? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<RawFd>().ok())
            else {
                continue;
            };
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok())
            else {
                continue;
            };
            if is_channel(fd) && best.is_none_or(|(i, _)| inode > i) {
                best = Some((inode, fd));
            }
        }
        let (_, fd) = best.ok_or(BackendReqError::NotFound)?;
        // SAFETY: F_DUPFD_CLOEXEC on an fd that is open (it is held by the
        // crate's `Backend`, which we keep alive) returns a new fd we own.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(BackendReqError::Io(io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(ConfigChangeSender {
            _backend: backend,
            fd,
        })
    }

    /// Tells the frontend the config space changed.
    pub fn config_changed(&self) -> Result<(), BackendReqError> {
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
        msg[4..8].copy_from_slice(&VERSION_1.to_le_bytes());
        // SAFETY: send reads `msg.len()` bytes from `msg`, which lives for
        // the call; MSG_NOSIGNAL turns a closed peer into EPIPE.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n != msg.len() as isize {
            return Err(BackendReqError::Io(io::Error::last_os_error()));
        }
        Ok(())
    }
}
