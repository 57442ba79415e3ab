//! The `unsafe` system calls of `splitvm-blk` outside the I/O engines:
//! creating and sealing the memfd of the inflight region.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// A new, empty memfd that can be sealed.
pub fn memfd(name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string for the whole call;
    // the result is checked before use.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The seals of `file` (`F_GET_SEALS`); an error for files that are not
/// memfds.
pub fn seals(file: &File) -> io::Result<i32> {
    // SAFETY: fcntl on a descriptor owned by `file`; no memory is passed.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Adds `seals` to `file` (`F_ADD_SEALS`).
pub fn add_seals(file: &File, seals: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor owned by `file`; no memory is passed.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
