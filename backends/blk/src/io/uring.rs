//! The `io_uring` engine: every request of a queue goes to the kernel as
//! soon as it is parsed, many in flight at once; completions arrive on an
//! eventfd that the vring worker polls next to the kick fd. Buffered
//! writes are the exception: they are copied into the page cache inline
//! (see `submit`).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Completion, Engine, GuestIovecs, IoError, IoKind, IoOp};

/// Checks once that `io_uring` works here with the opcodes the engine uses.
pub fn probe() -> Result<(), IoError> {
    let ring = IoUring::new(8).map_err(IoError::UringUnavailable)?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(IoError::UringUnavailable)?;
    for (code, name) in [
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !p.is_supported(code) {
            return Err(IoError::UringOpcode(name));
        }
    }
    Ok(())
}

struct Slot {
    op: IoOp,
    /// Bytes still to transfer (short reads/writes are resubmitted).
    left: u64,
}

/// See the module docs.
pub struct Uring {
    ring: IoUring,
    file: Arc<File>,
    event: EventFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Slots waiting for room in the submission queue.
    backlog: VecDeque<usize>,
    /// Slots the kernel holds (pushed, completion not reaped).
    kernel: usize,
    depth: usize,
    done: Vec<Completion>,
    /// Completions copied out of the ring (reused: no allocation per reap).
    cqes: Vec<(u64, i32)>,
    /// The image is open without `O_DIRECT`: writes are done inline.
    buffered: bool,
    /// Completions were reaped since the eventfd was last reset: it has
    /// (probably) fired. Reset once before sleeping, not per reap.
    signaled: bool,
}

impl Uring {
    /// A ring of `depth` entries on `file`, completions signalled on an eventfd.
    pub fn new(file: Arc<File>, depth: u32) -> Result<Self, IoError> {
        let depth = depth.clamp(8, 4096);
        // Cooperative task running, as fio sets up its rings: a completion
        // no longer interrupts the worker with an IPI while it runs (or
        // spins in its poll window on another CPU); it is posted the next
        // time the worker enters the kernel, and the TASKRUN flag tells
        // the spinning worker to enter (`ready`, `collect`). A sleeping
        // worker is still woken. Kernels before 5.19 refuse the flags.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(depth)
            .or_else(|_| IoUring::new(depth))
            .map_err(IoError::UringUnavailable)?;
        let event = EventFd::new(EFD_NONBLOCK).map_err(IoError::EventFd)?;
        ring.submitter()
            .register_eventfd(event.as_raw_fd())
            .map_err(IoError::EventFd)?;
        // SAFETY: F_GETFL on an fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let buffered = flags >= 0 && flags & libc::O_DIRECT == 0;
        Ok(Uring {
            ring,
            file,
            event,
            slots: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            kernel: 0,
            depth: depth as usize,
            done: Vec::new(),
            cqes: Vec::new(),
            buffered,
            signaled: false,
        })
    }

    fn entry(&self, idx: usize) -> Option<squeue::Entry> {
        let slot = self.slots.get(idx)?.as_ref()?;
        let fd = types::Fd(self.file.as_raw_fd());
        let e = match &slot.op.kind {
            IoKind::Read(b) => opcode::Readv::new(fd, b.as_ptr(), u32::try_from(b.count()).ok()?)
                .offset(slot.op.offset)
                .build(),
            IoKind::Write(b) => opcode::Writev::new(fd, b.as_ptr(), u32::try_from(b.count()).ok()?)
                .offset(slot.op.offset)
                .build(),
            // Drain: the flush starts after everything submitted before it.
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        };
        Some(e.user_data(idx as u64))
    }

    /// Moves backlog slots into the submission queue while there is room.
    fn fill(&mut self) {
        while self.kernel < self.depth {
            let Some(idx) = self.backlog.pop_front() else {
                break;
            };
            let Some(e) = self.entry(idx) else {
                self.finish(idx, Err(io::Error::from_raw_os_error(libc::EINVAL)));
                continue;
            };
            // SAFETY: the entry points at the iovec array and buffers of
            // slot `idx`; the slot (with its `GuestIovecs` and memory guard)
            // stays in `self.slots`, unmoved on the heap, until this entry's
            // completion is reaped, and `Drop` waits for all completions.
            let pushed = unsafe { self.ring.submission().push(&e) };
            if pushed.is_err() {
                self.backlog.push_front(idx);
                break;
            }
            self.kernel += 1;
        }
    }

    fn finish(&mut self, idx: usize, result: io::Result<()>) {
        if let Some(slot) = self.slots.get_mut(idx).and_then(Option::take) {
            self.free.push(idx);
            self.done.push(Completion {
                token: slot.op.token,
                result,
            });
        }
    }

    fn on_cqe(&mut self, idx: usize, res: i32) {
        let Some(slot) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            log::error!("io_uring completion for unknown slot {idx}");
            return;
        };
        if res < 0 {
            self.finish(idx, Err(io::Error::from_raw_os_error(-res)));
            return;
        }
        // `res >= 0`, so the cast is lossless.
        let n = res as u64;
        match &mut slot.op.kind {
            IoKind::Flush => self.finish(idx, Ok(())),
            IoKind::Read(b) | IoKind::Write(b) => {
                if n >= slot.left {
                    self.finish(idx, Ok(()));
                } else if n == 0 {
                    self.finish(idx, Err(io::Error::from(io::ErrorKind::UnexpectedEof)));
                } else {
                    // Short transfer: resubmit the rest.
                    b.advance(n);
                    slot.left -= n;
                    slot.op.offset = slot.op.offset.saturating_add(n);
                    self.backlog.push_back(idx);
                }
            }
        }
    }

    /// Moves every completion out of the ring. The eventfd is not read
    /// here (a syscall per reap): [`Engine::quiesce`] resets it once
    /// before the worker sleeps.
    fn collect(&mut self) {
        if self.ring.submission().taskrun() {
            // Completions wait as task work: any entry into the kernel
            // posts them (and submits what is queued, harmlessly early).
            if let Err(e) = self.ring.submit() {
                if e.kind() != io::ErrorKind::Interrupted && e.raw_os_error() != Some(libc::EBUSY) {
                    log::error!("io_uring enter: {e}");
                }
            }
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        self.signaled |= !cqes.is_empty();
        for &(ud, res) in &cqes {
            self.kernel = self.kernel.saturating_sub(1);
            self.on_cqe(usize::try_from(ud).unwrap_or(usize::MAX), res);
        }
        self.cqes = cqes;
    }
}

/// Reads what the page cache holds of `bufs` at `offset` without blocking
/// (`RWF_NOWAIT`), dropping it from `bufs`. `Ok(None)`: all of it was read;
/// `Ok(Some(at))`: the rest starts at `at` and needs real I/O.
fn read_cached(file: &File, bufs: &mut GuestIovecs, mut offset: u64) -> io::Result<Option<u64>> {
    while bufs.bytes() > 0 {
        let (Ok(off), Ok(cnt)) = (
            libc::off_t::try_from(offset),
            libc::c_int::try_from(bufs.count()),
        ) else {
            return Ok(Some(offset));
        };
        // SAFETY: `bufs` holds `cnt` iovecs that point into guest mappings
        // kept alive by its memory guard for this whole call.
        let n =
            unsafe { libc::preadv2(file.as_raw_fd(), bufs.as_ptr(), cnt, off, libc::RWF_NOWAIT) };
        if n > 0 {
            // `n > 0`, so the cast to u64 is lossless.
            bufs.advance(n as u64);
            offset = offset.saturating_add(n as u64);
            continue;
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Not cached (or RWF_NOWAIT unsupported here): io_uring does it.
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL) => return Ok(Some(offset)),
            _ => return Err(e),
        }
    }
    Ok(None)
}

impl Engine for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn submit(&mut self, op: IoOp) {
        // Buffered writes cannot be done without blocking inside
        // io_uring_enter (ext4 has no async buffered writes), so io_uring
        // hands each one to an io-wq thread, and writes to one file are
        // serialised there anyway. Copying into the page cache right here
        // costs one syscall and no thread switch.
        let op = match op {
            IoOp {
                token,
                offset,
                kind: IoKind::Write(b),
            } if self.buffered => {
                let result = super::sync::rw(&self.file, b, offset, true);
                self.done.push(Completion { token, result });
                return;
            }
            IoOp {
                token,
                offset,
                kind: IoKind::Read(mut b),
            } if self.buffered => {
                // Page-cache hits complete here without entering the ring;
                // what is not cached goes to io_uring (read ahead async).
                let offset = match read_cached(&self.file, &mut b, offset) {
                    Ok(None) => {
                        self.done.push(Completion {
                            token,
                            result: Ok(()),
                        });
                        return;
                    }
                    Ok(Some(rest_at)) => rest_at,
                    Err(e) => {
                        self.done.push(Completion {
                            token,
                            result: Err(e),
                        });
                        return;
                    }
                };
                IoOp {
                    token,
                    offset,
                    kind: IoKind::Read(b),
                }
            }
            op => op,
        };
        let left = match &op.kind {
            IoKind::Read(b) | IoKind::Write(b) => b.bytes(),
            IoKind::Flush => 0,
        };
        let slot = Slot { op, left };
        let idx = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.backlog.push_back(idx);
        self.fill();
        if !self.buffered {
            // With O_DIRECT every request goes to the device at once, not
            // with the rest of the pass: a device that completes a batch
            // together got the next batch together, in waves, and sat idle
            // between them (4 KiB randread QD 32, 32 requests per
            // io_uring_enter: 56-60k IOPS against qemu-storage-daemon's
            // 70-74k; one per enter, as qsd submits: 75-80k). Buffered I/O
            // keeps the one enter per pass: it rarely enters the ring.
            self.commit();
        }
    }

    fn commit(&mut self) {
        loop {
            self.fill();
            // Nothing queued: no io_uring_enter (one per batch, not per pass).
            if self.ring.submission().is_empty() {
                return;
            }
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // Completion queue full: reap, then try again.
                    self.collect();
                }
                Err(e) => {
                    log::error!("io_uring submit: {e}");
                    return;
                }
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        self.collect();
        if !self.backlog.is_empty() {
            self.commit();
        }
        out.append(&mut self.done);
    }

    fn drain(&mut self, out: &mut Vec<Completion>) {
        while self.kernel > 0 || !self.backlog.is_empty() {
            self.fill();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => {
                    log::error!("io_uring wait: {e}");
                    break;
                }
            }
            self.collect();
        }
        out.append(&mut self.done);
    }

    fn notifier(&self) -> Option<RawFd> {
        Some(self.event.as_raw_fd())
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn ready(&mut self) -> bool {
        !self.done.is_empty()
            || !self.ring.completion().is_empty()
            || self.ring.submission().taskrun()
    }

    fn quiesce(&mut self) -> bool {
        if self.signaled {
            // Reset first, then look: a completion posted after the reset
            // fires the eventfd again, one posted before is seen below.
            let _ = self.event.read();
            self.signaled = false;
        }
        !self.ring.completion().is_empty() || self.ring.submission().taskrun()
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into guest buffers: wait for every
        // completion before the buffers (and their memory guards) go away.
        self.backlog.clear();
        while self.kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
            self.collect();
        }
        if self.kernel > 0 {
            // Cannot wait: leak the buffers' guards rather than unmap
            // memory the kernel may still touch.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
