//! The synchronous engine: `preadv`/`pwritev`/`fdatasync` in the worker
//! thread, one request at a time. Used when `io_uring` is unavailable.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::inline::RunNow;
use super::{GuestIovecs, IoKind, IoOp};

/// See the module docs.
pub struct Sync {
    file: Arc<File>,
}

impl Sync {
    /// An engine on `file`.
    pub fn new(file: Arc<File>) -> Self {
        Sync { file }
    }
}

/// `preadv`/`pwritev` of all of `bufs` at `offset`, resuming after short
/// transfers; also the [`super::uring::Uring`] engine's inline path.
pub(super) fn rw(
    file: &File,
    mut bufs: GuestIovecs,
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    while bufs.bytes() > 0 {
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let cnt = libc::c_int::try_from(bufs.count())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = file.as_raw_fd();
        // SAFETY: `bufs` holds `cnt` iovecs that point into guest
        // mappings kept alive by its memory guard for this whole call.
        let n = unsafe {
            if write {
                libc::pwritev(fd, bufs.as_ptr(), cnt, off)
            } else {
                libc::preadv(fd, bufs.as_ptr(), cnt, off)
            }
        };
        match n {
            n if n > 0 => {
                // `n > 0`, so the cast to u64 is lossless.
                bufs.advance(n as u64);
                offset = offset.saturating_add(n as u64);
            }
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl RunNow for Sync {
    fn name(&self) -> &'static str {
        "sync"
    }

    fn run(&self, op: IoOp) -> io::Result<()> {
        match op.kind {
            IoKind::Read(b) => rw(&self.file, b, op.offset, false),
            IoKind::Write(b) => rw(&self.file, b, op.offset, true),
            IoKind::Flush => self.file.sync_data(),
        }
    }
}
