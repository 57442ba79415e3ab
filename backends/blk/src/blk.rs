//! The virtio-blk request model: turns the descriptors of one chain into a
//! checked [`Request`], or a [`Rejected`] saying which status (if any) to
//! return. No sockets, no `unsafe`, no host I/O: fuzz targets link this.
//!
//! Every field here is guest-controlled. Parsing never panics; every length
//! and sector computation is checked; every guest range a request names is
//! verified to lie inside guest memory before it is used.

use std::mem::offset_of;

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes per virtio-blk sector (fixed by the spec, whatever `blk_size` is).
pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the request header (`type`, `reserved`, `sector`).
pub const HEADER_LEN: u64 = 16;
/// Bytes of a GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Most guest segments (after splitting at memory-region edges) one request
/// may name: the host's `IOV_MAX`.
pub const MAX_SEGMENTS: usize = 1024;
/// Bytes of one discard / write-zeroes range descriptor.
pub const RANGE_LEN: u64 = 16;

/// Status byte values.
pub const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// I/O error (also: malformed request).
pub const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// Unsupported request.
pub const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Why a chain was rejected (logged at `warn`, rate-limited, by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlkError {
    /// The chain has no descriptor.
    #[error("empty descriptor chain")]
    Empty,
    /// The chain loops, points outside the table, or is longer than allowed.
    #[error("descriptor chain truncated (loop, bad index or too long)")]
    Truncated,
    /// A device-readable descriptor follows a device-writable one.
    #[error("readable descriptor after a writable one")]
    BadOrder,
    /// No device-writable byte for the status.
    #[error("no writable status byte")]
    NoStatus,
    /// The readable part is shorter than the 16-byte header.
    #[error("request header missing or short")]
    ShortHeader,
    /// A descriptor names memory outside the guest's.
    #[error("descriptor {addr:#x}+{len:#x} outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// More segments than [`MAX_SEGMENTS`].
    #[error("too many data segments")]
    TooManySegments,
    /// Unknown request type.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// Data length zero or not a multiple of the sector size.
    #[error("bad data length {0}")]
    BadLength(u64),
    /// The request reaches past the end of the image.
    #[error("sector {sector} + {len} bytes is past the end of the image")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Bytes.
        len: u64,
    },
    /// A write to a read-only image.
    #[error("write to a read-only image")]
    ReadOnly,
    /// A discard/write-zeroes payload that breaks the advertised limits.
    #[error("bad discard/write-zeroes payload: {0}")]
    BadRanges(&'static str),
}

/// One guest buffer: a descriptor, or a part of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Device-writable.
    pub write: bool,
}

/// The image, as far as request checking is concerned.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Usable size in bytes (a multiple of [`SECTOR_SIZE`]).
    pub capacity: u64,
    /// Writes, discards and write-zeroes are refused.
    pub readonly: bool,
    /// Advertised `max_discard_sectors` / `max_write_zeroes_sectors`.
    pub max_range_sectors: u32,
    /// Advertised `max_discard_seg` / `max_write_zeroes_seg`.
    pub max_range_segs: u32,
    /// GET_ID answer (zero-padded).
    pub serial: [u8; ID_BYTES],
}

/// A byte range of the image for discard / write-zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Byte offset.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Write-zeroes may deallocate (the UNMAP flag).
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `data` bytes from byte `offset` into the writable segments.
    Read {
        /// Byte offset in the image.
        offset: u64,
    },
    /// Write the readable data segments at byte `offset`.
    Write {
        /// Byte offset in the image.
        offset: u64,
    },
    /// Make completed writes durable.
    Flush,
    /// Write the serial into the writable segments.
    GetId,
    /// Deallocate ranges.
    Discard(Vec<Range>),
    /// Zero ranges.
    WriteZeroes(Vec<Range>),
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// Data buffers (readable for writes, writable for reads and GET_ID),
    /// each inside guest memory, at most [`MAX_SEGMENTS`].
    pub data: Vec<Segment>,
    /// Total bytes of `data`.
    pub data_len: u64,
    /// Guest address of the status byte (inside guest memory).
    pub status: GuestAddress,
}

/// A chain that gets no I/O: either a status to write, or nothing (dropped:
/// the caller returns it to the used ring with length 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where to write `status`, when the chain has a usable status byte.
    pub status: Option<GuestAddress>,
    /// The status byte to return.
    pub code: u8,
    /// Why.
    pub reason: BlkError,
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(src) = b.get(at..at + 4) {
        w.copy_from_slice(src);
    }
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        w.copy_from_slice(src);
    }
    u64::from_le_bytes(w)
}

const RANGE_F_UNMAP: u32 = 1;

/// Calls `f` with each piece of the `len` bytes starting `skip` bytes into
/// `segs`, in order, until `f` returns false.
fn cut_each(segs: &[Segment], mut skip: u64, mut len: u64, mut f: impl FnMut(Segment) -> bool) {
    for s in segs {
        if len == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let take = (s.len - skip).min(len);
        let piece = Segment {
            addr: s.addr.saturating_add(skip),
            len: take,
            write: s.write,
        };
        if !f(piece) {
            break;
        }
        len -= take;
        skip = 0;
    }
}

/// Takes `len` bytes starting `skip` bytes into `segs`, into `out`
/// (cleared first; reused across requests so parsing does not allocate).
fn cut_into(segs: &[Segment], skip: u64, len: u64, out: &mut Vec<Segment>) {
    out.clear();
    cut_each(segs, skip, len, |s| {
        out.push(s);
        true
    });
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().fold(0u64, |a, s| a.saturating_add(s.len))
}

fn in_memory<M: GuestMemoryBackend>(mem: &M, s: &Segment) -> Result<(), BlkError> {
    let bad = BlkError::OutsideMemory {
        addr: s.addr,
        len: s.len,
    };
    let len = usize::try_from(s.len).map_err(|_| bad.clone())?;
    if s.len == 0 || mem.check_range(GuestAddress(s.addr), len) {
        Ok(())
    } else {
        Err(bad)
    }
}

/// Reads `N` bytes starting `skip` bytes into `segs` (which may split them).
fn gather<M: GuestMemoryBackend, const N: usize>(
    mem: &M,
    segs: &[Segment],
    skip: u64,
) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    let mut at = 0usize;
    let mut ok = true;
    cut_each(segs, skip, N as u64, |s| {
        let dst = usize::try_from(s.len)
            .ok()
            .and_then(|n| at.checked_add(n))
            .and_then(|end| buf.get_mut(at..end));
        let read = match dst {
            Some(dst) => mem.read_slice(dst, GuestAddress(s.addr)).is_ok(),
            None => false,
        };
        if read {
            // `s.len` fit in usize above.
            at += s.len as usize;
        }
        ok &= read;
        read
    });
    (ok && at == N).then_some(buf)
}

/// Parses one chain. `descs` are its descriptors in order; `truncated` says
/// the chain did not end properly (loop, bad `next`, read error).
pub fn parse<M: GuestMemoryBackend>(
    mem: &M,
    disk: &DiskInfo,
    descs: &[Segment],
    truncated: bool,
) -> Result<Request, Rejected> {
    parse_in(mem, disk, descs, truncated, Vec::new())
}

/// [`parse`] with `data` as the storage of [`Request::data`], so that a
/// caller recycling it parses without allocating.
pub fn parse_in<M: GuestMemoryBackend>(
    mem: &M,
    disk: &DiskInfo,
    descs: &[Segment],
    truncated: bool,
    mut data: Vec<Segment>,
) -> Result<Request, Rejected> {
    data.clear();
    let drop = |reason| Rejected {
        status: None,
        code: S_IOERR,
        reason,
    };
    if descs.is_empty() {
        return Err(drop(BlkError::Empty));
    }
    if truncated {
        return Err(drop(BlkError::Truncated));
    }
    let first_w = descs.iter().position(|d| d.write).unwrap_or(descs.len());
    let (readable, writable) = descs.split_at(first_w);
    // The status byte: the last byte of the last descriptor, which must be
    // device-writable (never write into a buffer the driver marked readable).
    let status = match descs.last() {
        Some(d) if d.write && d.len > 0 => {
            let s = Segment {
                addr: d.addr.saturating_add(d.len - 1),
                len: 1,
                write: true,
            };
            if in_memory(mem, &s).is_err() {
                return Err(drop(BlkError::OutsideMemory {
                    addr: s.addr,
                    len: 1,
                }));
            }
            GuestAddress(s.addr)
        }
        _ => return Err(drop(BlkError::NoStatus)),
    };
    let wlen = total(writable);
    let fail = |code, reason| Rejected {
        status: Some(status),
        code,
        reason,
    };
    if writable.iter().any(|d| !d.write) {
        return Err(fail(S_IOERR, BlkError::BadOrder));
    }
    for d in descs {
        in_memory(mem, d).map_err(|e| fail(S_IOERR, e))?;
    }
    let hdr: [u8; HEADER_LEN as usize] =
        gather(mem, readable, 0).ok_or(fail(S_IOERR, BlkError::ShortHeader))?;
    // struct virtio_blk_outhdr { le32 type; le32 reserved; le64 sector; }
    let type_ = le32(&hdr, 0);
    let sector = le64(&hdr, 8);
    let rlen = total(readable);

    let op = match type_ {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            if type_ == VIRTIO_BLK_T_IN {
                cut_into(writable, 0, wlen - 1, &mut data);
            } else {
                cut_into(readable, HEADER_LEN, rlen - HEADER_LEN, &mut data);
            }
            let len = total(&data);
            if len == 0 || len % SECTOR_SIZE != 0 {
                return Err(fail(S_IOERR, BlkError::BadLength(len)));
            }
            let out_of_range = BlkError::OutOfRange { sector, len };
            let offset = sector
                .checked_mul(SECTOR_SIZE)
                .filter(|o| o.checked_add(len).is_some_and(|end| end <= disk.capacity))
                .ok_or(fail(S_IOERR, out_of_range))?;
            if type_ == VIRTIO_BLK_T_OUT {
                if disk.readonly {
                    return Err(fail(S_IOERR, BlkError::ReadOnly));
                }
                Op::Write { offset }
            } else {
                Op::Read { offset }
            }
        }
        VIRTIO_BLK_T_FLUSH => Op::Flush,
        VIRTIO_BLK_T_GET_ID => {
            cut_into(writable, 0, (wlen - 1).min(ID_BYTES as u64), &mut data);
            if data.is_empty() {
                return Err(fail(S_IOERR, BlkError::BadLength(0)));
            }
            Op::GetId
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if disk.readonly {
                return Err(fail(S_IOERR, BlkError::ReadOnly));
            }
            let discard = type_ == VIRTIO_BLK_T_DISCARD;
            let ranges = parse_ranges(mem, disk, readable, rlen - HEADER_LEN, discard)
                .map_err(|(code, e)| fail(code, e))?;
            if discard {
                Op::Discard(ranges)
            } else {
                Op::WriteZeroes(ranges)
            }
        }
        other => return Err(fail(S_UNSUPP, BlkError::Unsupported(other))),
    };
    if data.len() > MAX_SEGMENTS {
        return Err(fail(S_IOERR, BlkError::TooManySegments));
    }
    let data_len = total(&data);
    Ok(Request {
        op,
        data,
        data_len,
        status,
    })
}

fn parse_ranges<M: GuestMemoryBackend>(
    mem: &M,
    disk: &DiskInfo,
    readable: &[Segment],
    len: u64,
    discard: bool,
) -> Result<Vec<Range>, (u8, BlkError)> {
    let bad = |why| (S_IOERR, BlkError::BadRanges(why));
    if len == 0 || len % RANGE_LEN != 0 {
        return Err(bad("payload not a non-empty multiple of 16 bytes"));
    }
    let n = len / RANGE_LEN;
    if n > u64::from(disk.max_range_segs) {
        return Err(bad("more ranges than advertised"));
    }
    let mut out = Vec::new();
    for i in 0..n {
        let raw: [u8; RANGE_LEN as usize] =
            gather(mem, readable, HEADER_LEN + i * RANGE_LEN).ok_or(bad("range unreadable"))?;
        // struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; }
        let flags = le32(&raw, 12);
        if flags & !RANGE_F_UNMAP != 0 || (discard && flags != 0) {
            return Err((S_UNSUPP, BlkError::BadRanges("unknown flags")));
        }
        let sectors = le32(&raw, 8);
        if sectors > disk.max_range_sectors {
            return Err(bad("range longer than advertised"));
        }
        let sector = le64(&raw, 0);
        let range_len = u64::from(sectors) * SECTOR_SIZE;
        let offset = sector
            .checked_mul(SECTOR_SIZE)
            .filter(|o| {
                o.checked_add(range_len)
                    .is_some_and(|end| end <= disk.capacity)
            })
            .ok_or((
                S_IOERR,
                BlkError::OutOfRange {
                    sector,
                    len: range_len,
                },
            ))?;
        out.push(Range {
            offset,
            len: range_len,
            unmap: flags & RANGE_F_UNMAP != 0,
        });
    }
    Ok(out)
}

/// Writes the GET_ID answer into `req.data` (at most [`ID_BYTES`]).
pub fn write_id<M: GuestMemoryBackend>(mem: &M, req: &Request, serial: &[u8; ID_BYTES]) -> bool {
    let mut at = 0usize;
    for s in &req.data {
        let Ok(n) = usize::try_from(s.len) else {
            return false;
        };
        let Some(src) = at.checked_add(n).and_then(|end| serial.get(at..end)) else {
            return false;
        };
        if mem.write_slice(src, GuestAddress(s.addr)).is_err() {
            return false;
        }
        at += n;
    }
    true
}

/// Bytes the device wrote into the chain on success (for the used ring).
pub fn used_len(req: &Request) -> u32 {
    match req.op {
        Op::Read { .. } | Op::GetId => u32::try_from(req.data_len + 1).unwrap_or(u32::MAX),
        _ => 1,
    }
}

/// Values the config space reports.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Advertised `seg_max`.
    pub seg_max: u32,
    /// Advertised `blk_size`.
    pub blk_size: u32,
    /// Advertised `num_queues`.
    pub num_queues: u16,
    /// Discard / write-zeroes sectors per range.
    pub max_range_sectors: u32,
    /// Discard / write-zeroes ranges per request.
    pub max_range_segs: u32,
}

/// Bytes of the config space the backend serves (up to `unused1`, before
/// the secure-erase and zoned fields it does not offer).
pub const CONFIG_LEN: usize = offset_of!(virtio_blk_config, max_secure_erase_sectors);

impl ConfigSpace {
    /// The little-endian `virtio_blk_config` bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; CONFIG_LEN];
        let mut put = |off: usize, v: &[u8]| {
            if let Some(d) = b.get_mut(off..off + v.len()) {
                d.copy_from_slice(v);
            }
        };
        put(
            offset_of!(virtio_blk_config, capacity),
            &self.capacity_sectors.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, seg_max),
            &self.seg_max.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, blk_size),
            &self.blk_size.to_le_bytes(),
        );
        put(
            offset_of!(virtio_blk_config, num_queues),
            &self.num_queues.to_le_bytes(),
        );
        for f in [
            offset_of!(virtio_blk_config, max_discard_sectors),
            offset_of!(virtio_blk_config, max_write_zeroes_sectors),
        ] {
            put(f, &self.max_range_sectors.to_le_bytes());
        }
        for f in [
            offset_of!(virtio_blk_config, max_discard_seg),
            offset_of!(virtio_blk_config, max_write_zeroes_seg),
        ] {
            put(f, &self.max_range_segs.to_le_bytes());
        }
        put(
            offset_of!(virtio_blk_config, discard_sector_alignment),
            &1u32.to_le_bytes(),
        );
        put(offset_of!(virtio_blk_config, write_zeroes_may_unmap), &[1]);
        b
    }
}

/// The status byte value for a finished request.
pub fn status_of(ok: bool) -> u8 {
    if ok {
        S_OK
    } else {
        S_IOERR
    }
}
