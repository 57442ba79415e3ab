//! Host I/O engines. [`uring::Uring`] keeps many requests in flight per
//! worker with `io_uring`; [`sync::Sync`] is the fallback when `io_uring` is
//! unavailable (old kernel, seccomp, container policy). Both take the same
//! [`IoOp`]s and report [`Completion`]s, so the virtqueue code does not care
//! which one runs.
//!
//! Guest buffers reach the kernel as `iovec`s that point into the guest's
//! shared mapping. [`GuestIovecs`] is the only way to build them: it holds
//! the memory guard that keeps that mapping alive until the I/O completes.

pub mod inline;
pub mod null;
pub mod sync;
pub mod uring;

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::blk::Segment;

/// Errors of the I/O layer.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A guest buffer could not be turned into host addresses.
    #[error("guest buffer {addr:#x}+{len:#x} is not mapped")]
    Unmapped {
        /// Guest address.
        addr: u64,
        /// Bytes.
        len: u64,
    },
    /// `io_uring` could not be set up.
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(#[source] io::Error),
    /// `io_uring` lacks an opcode the engine needs.
    #[error("io_uring lacks opcode {0}")]
    UringOpcode(&'static str),
    /// The completion eventfd could not be created or registered.
    #[error("cannot set up the completion eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// Arrays kept per thread at most (a full queue of requests).
const IOV_POOL_MAX: usize = 1024;

thread_local! {
    /// Empty `iovec` arrays of finished requests, kept per worker thread so
    /// that building [`GuestIovecs`] does not allocate on the request path.
    static IOV_POOL: RefCell<Vec<Vec<libc::iovec>>> = const { RefCell::new(Vec::new()) };
}

fn pooled_iov() -> Vec<libc::iovec> {
    IOV_POOL
        .try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Guest buffers as host `iovec`s, with the guard that keeps them mapped.
pub struct GuestIovecs {
    iov: Vec<libc::iovec>,
    bytes: u64,
    // Keeps every mapping the `iov` entries point into alive.
    _mem: GuestMemoryLoadGuard<GuestMemoryMmap>,
}

// SAFETY: the raw pointers in `iov` point into `MAP_SHARED` guest mappings
// owned (through an `Arc`) by `_mem`, which is itself `Send`; nothing about
// them is tied to the thread that built them.
unsafe impl Send for GuestIovecs {}

impl GuestIovecs {
    /// Translates `segs` (already checked to lie in guest memory) into host
    /// `iovec`s, splitting at memory-region edges.
    pub fn new(
        mem: GuestMemoryLoadGuard<GuestMemoryMmap>,
        segs: &[Segment],
    ) -> Result<Self, IoError> {
        let mut iov = pooled_iov();
        iov.clear();
        let mut bytes = 0u64;
        for s in segs {
            let unmapped = || IoError::Unmapped {
                addr: s.addr,
                len: s.len,
            };
            let len = usize::try_from(s.len).map_err(|_| unmapped())?;
            let m: &GuestMemoryMmap = &mem;
            for slice in GuestMemoryBackend::get_slices(m, GuestAddress(s.addr), len) {
                let slice = slice.map_err(|_| unmapped())?;
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            bytes = bytes.saturating_add(s.len);
        }
        Ok(GuestIovecs {
            iov,
            bytes,
            _mem: mem,
        })
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Drops the first `n` bytes (after a short read or write).
    fn advance(&mut self, mut n: u64) {
        let mut drop = 0;
        for v in self.iov.iter_mut() {
            if n == 0 {
                break;
            }
            let l = v.iov_len as u64;
            if n >= l {
                n -= l;
                drop += 1;
            } else {
                // `n < l <= usize::MAX`, so the cast is lossless.
                let k = n as usize;
                v.iov_base = v.iov_base.wrapping_byte_add(k);
                v.iov_len -= k;
                n = 0;
            }
        }
        self.iov.drain(..drop);
        self.bytes = self.iov.iter().map(|v| v.iov_len as u64).sum();
    }

    fn as_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn count(&self) -> usize {
        self.iov.len()
    }
}

impl Drop for GuestIovecs {
    fn drop(&mut self) {
        let mut iov = std::mem::take(&mut self.iov);
        iov.clear();
        let _ = IOV_POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < IOV_POOL_MAX {
                p.push(iov);
            }
        });
    }
}

/// What to do.
pub enum IoKind {
    /// Read into the buffers.
    Read(GuestIovecs),
    /// Write the buffers.
    Write(GuestIovecs),
    /// `fdatasync` (after everything submitted before it).
    Flush,
}

/// One host I/O.
pub struct IoOp {
    /// Caller's id, returned in the [`Completion`].
    pub token: u64,
    /// Byte offset in the image.
    pub offset: u64,
    /// The operation.
    pub kind: IoKind,
}

/// A finished [`IoOp`].
#[derive(Debug)]
pub struct Completion {
    /// The op's token.
    pub token: u64,
    /// Outcome.
    pub result: io::Result<()>,
}

/// An I/O engine bound to one image file; one per queue worker.
pub trait Engine: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Queues `op`. Failures are reported as completions, never here.
    fn submit(&mut self, op: IoOp);
    /// Hands queued ops to the kernel.
    fn commit(&mut self);
    /// Moves finished ops to `out` without blocking.
    fn reap(&mut self, out: &mut Vec<Completion>);
    /// Blocks until nothing is in flight; finished ops go to `out`.
    fn drain(&mut self, out: &mut Vec<Completion>);
    /// An fd that becomes readable when completions are ready, if the
    /// engine completes asynchronously.
    fn notifier(&self) -> Option<RawFd>;
    /// Ops submitted and not yet reaped.
    fn in_flight(&self) -> usize;
    /// Whether finished ops are waiting to be reaped (cheap: no syscall;
    /// the worker polls it while busy-waiting).
    fn ready(&mut self) -> bool {
        false
    }
    /// Called before the worker sleeps: resets the [`notifier`](Self::notifier)
    /// if it may have fired since the last call, then returns whether
    /// finished ops are waiting (then the worker reaps instead of sleeping).
    fn quiesce(&mut self) -> bool {
        false
    }
}

/// Which engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// `io_uring` if the kernel offers it, else synchronous.
    Auto,
    /// `io_uring` or fail.
    IoUring,
    /// Synchronous `preadv`/`pwritev` in the worker thread.
    Sync,
    /// No I/O at all: reads and writes succeed at once (benchmarks only).
    Null,
}

impl EngineKind {
    /// Short name for logs (`Auto` is resolved by [`probe`] first).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Auto => "auto",
            EngineKind::IoUring => "io_uring",
            EngineKind::Sync => "sync",
            EngineKind::Null => "null",
        }
    }
}

/// Builds the engine for one worker. `Auto` falls back to [`sync::Sync`]
/// (the caller logs which one runs).
pub fn new_engine(
    kind: EngineKind,
    file: Arc<File>,
    depth: u32,
) -> Result<Box<dyn Engine>, IoError> {
    match kind {
        EngineKind::Sync => Ok(Box::new(inline::Inline::new(sync::Sync::new(file)))),
        EngineKind::Null => Ok(Box::new(inline::Inline::new(null::Null))),
        EngineKind::IoUring => Ok(Box::new(uring::Uring::new(file, depth)?)),
        EngineKind::Auto => match uring::Uring::new(file.clone(), depth) {
            Ok(u) => Ok(Box::new(u)),
            Err(_) => Ok(Box::new(inline::Inline::new(sync::Sync::new(file)))),
        },
    }
}

/// Resolves `Auto` by probing `io_uring` once at startup.
pub fn probe(kind: EngineKind) -> Result<EngineKind, IoError> {
    match kind {
        EngineKind::Sync => Ok(EngineKind::Sync),
        EngineKind::Null => Ok(EngineKind::Null),
        EngineKind::IoUring => uring::probe().map(|()| EngineKind::IoUring),
        EngineKind::Auto => match uring::probe() {
            Ok(()) => Ok(EngineKind::IoUring),
            Err(e) => {
                log::warn!("{e}; using synchronous I/O");
                Ok(EngineKind::Sync)
            }
        },
    }
}

/// `fallocate(2)` on the image: discard (punch a hole) or zero a range.
/// Synchronous in the worker; these requests are rare and cheap on files.
pub fn fallocate_range(file: &File, offset: u64, len: u64, punch: bool) -> io::Result<()> {
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let modes: &[libc::c_int] = if punch {
        &[libc::FALLOC_FL_PUNCH_HOLE | keep]
    } else {
        // Zero range is not supported everywhere; a punched hole reads
        // back as zeros too.
        &[
            libc::FALLOC_FL_ZERO_RANGE | keep,
            libc::FALLOC_FL_PUNCH_HOLE | keep,
        ]
    };
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut last = io::Error::from_raw_os_error(libc::EOPNOTSUPP);
    for &mode in modes {
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if r == 0 {
            return Ok(());
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EOPNOTSUPP) {
            break;
        }
    }
    Err(last)
}
