//! Socket calls the libraries do not wrap safely: receiving file
//! descriptors with a message, and asking the kernel who is on the other
//! end of a unix socket.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most descriptors accepted with one message (vhost-user sends at most 8).
pub const MAX_FDS: usize = 32;

/// One `recvmsg` into `buf`; descriptors that came with it are returned as
/// owned [`File`]s. `Ok((0, _))` means the peer closed the connection.
pub fn recv_with_files(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<File>)> {
    let mut fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the single iovec points at `buf`, which is exclusively
    // borrowed for this call and valid for `buf.len()` bytes of writes.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let files = fds
        .iter()
        .take(nfds.min(MAX_FDS))
        .map(|&fd| {
            // SAFETY: the kernel installed these `nfds` descriptors in our
            // table for this message; nothing else owns them yet.
            unsafe { File::from_raw_fd(fd) }
        })
        .collect();
    Ok((n, files))
}

/// The process id of the peer of a connected unix socket (`SO_PEERCRED`).
pub fn peer_pid(sock: &UnixStream) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size
    // of `cred`; the fd is a socket owned by `sock` for the whole call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid)
}
