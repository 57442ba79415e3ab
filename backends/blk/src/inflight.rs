//! `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`: the shared region in which the
//! backend records which descriptor heads it has taken from a split ring
//! and not yet returned, so that a restarted backend can resubmit them.
//!
//! Layout, per queue (the vhost-user spec's "Inflight I/O tracking" and
//! QEMU's libvhost-user `VuVirtqInflight`/`VuDescStateSplit`, little endian):
//!
//! | offset | field |
//! |---|---|
//! | 0 | `features` u64 |
//! | 8 | `version` u16 (1 once initialised; 0 in a fresh region) |
//! | 10 | `desc_num` u16 |
//! | 12 | `last_batch_head` u16 |
//! | 14 | `used_idx` u16 |
//! | 16 + 16·i | descriptor `i`: `inflight` u8, 5 bytes padding, `next` u16, `counter` u64 |
//!
//! Each queue's part is `align_up(16·queue_size + 2, 64)` bytes (exactly
//! libvhost-user's `vu_inflight_queue_size`), and the region is that times
//! `num_queues`.
//!
//! The region comes from the frontend and may have been written by another
//! (older, crashed) backend: every index read from it is bounds-checked and
//! only the queue's own size bounds the scan.

use std::cmp::Ordering as CmpOrdering;
use std::fs::File;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

use crate::abi;

/// Region format version this backend writes.
pub const VERSION: u16 = 1;
/// Bytes of one descriptor's state.
pub const DESC_STATE_LEN: u64 = 16;
/// Bytes of a queue's header before its descriptor states.
pub const QUEUE_HEADER_LEN: u64 = 16;
/// Alignment of each queue's part.
pub const QUEUE_ALIGN: u64 = 64;
/// Largest queue size accepted (virtio's split-ring maximum).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest number of queues accepted.
pub const MAX_QUEUES: u16 = 256;
/// Bytes of the `VhostUserInflight` payload.
pub const MSG_LEN: usize = 24;

const OFF_VERSION: u64 = 8;
const OFF_DESC_NUM: u64 = 10;
const OFF_LAST_BATCH_HEAD: u64 = 12;
const OFF_USED_IDX: u64 = 14;
const D_INFLIGHT: u64 = 0;
const D_COUNTER: u64 = 8;

/// Errors of inflight region handling.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// The frontend's request is malformed.
    #[error("bad inflight request: {0}")]
    BadRequest(&'static str),
    /// The region could not be created.
    #[error("cannot create the inflight region: {0}")]
    Create(#[source] std::io::Error),
    /// The frontend's file is smaller than the region it describes.
    #[error("inflight file holds {have} bytes, the region needs {need} at offset {offset}")]
    FileTooSmall {
        /// File size.
        have: u64,
        /// Bytes needed.
        need: u64,
        /// Offset of the region in the file.
        offset: u64,
    },
    /// The region could not be mapped.
    #[error("cannot map the inflight region: {0}")]
    Map(String),
}

/// Bytes of one queue's part of the region (libvhost-user's
/// `vu_inflight_queue_size`).
pub fn queue_region_size(queue_size: u16) -> u64 {
    let raw = DESC_STATE_LEN * u64::from(queue_size) + 2;
    raw.div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

/// The `VhostUserInflight` payload of `GET_INFLIGHT_FD`/`SET_INFLIGHT_FD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightMsg {
    /// Bytes of the region.
    pub mmap_size: u64,
    /// Offset of the region in the file.
    pub mmap_offset: u64,
    /// Queues the region covers.
    pub num_queues: u16,
    /// Descriptor states per queue.
    pub queue_size: u16,
}

impl InflightMsg {
    /// Parses the payload (exactly [`MSG_LEN`] bytes).
    pub fn parse(b: &[u8]) -> Result<Self, InflightError> {
        let b: &[u8; MSG_LEN] = b
            .try_into()
            .map_err(|_| InflightError::BadRequest("payload size"))?;
        let u64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Ok(InflightMsg {
            mmap_size: u64_at(0),
            mmap_offset: u64_at(8),
            num_queues: u16::from_le_bytes([b[16], b[17]]),
            queue_size: u16::from_le_bytes([b[18], b[19]]),
        })
    }

    /// The payload bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MSG_LEN);
        v.extend_from_slice(&self.mmap_size.to_le_bytes());
        v.extend_from_slice(&self.mmap_offset.to_le_bytes());
        v.extend_from_slice(&self.num_queues.to_le_bytes());
        v.extend_from_slice(&self.queue_size.to_le_bytes());
        v.resize(MSG_LEN, 0);
        v
    }

    /// Checks the queue geometry; returns the bytes the region needs.
    pub fn needed(&self) -> Result<u64, InflightError> {
        if self.num_queues == 0 || self.num_queues > MAX_QUEUES {
            return Err(InflightError::BadRequest("num_queues"));
        }
        if self.queue_size == 0 || self.queue_size > MAX_QUEUE_SIZE {
            return Err(InflightError::BadRequest("queue_size"));
        }
        Ok(queue_region_size(self.queue_size) * u64::from(self.num_queues))
    }
}

/// `GET_INFLIGHT_FD`: a zeroed, sealed memfd for `num_queues` queues of
/// `queue_size`, and the reply payload describing it.
pub fn allocate(num_queues: u16, queue_size: u16) -> Result<(File, InflightMsg), InflightError> {
    let mut msg = InflightMsg {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues,
        queue_size,
    };
    msg.mmap_size = msg.needed()?;
    let file = abi::memfd(c"splitvm-blk-inflight").map_err(InflightError::Create)?;
    file.set_len(msg.mmap_size).map_err(InflightError::Create)?;
    abi::add_seals(
        &file,
        libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
    )
    .map_err(InflightError::Create)?;
    Ok((file, msg))
}

/// A mapped inflight region (`SET_INFLIGHT_FD`).
#[derive(Debug)]
pub struct Region {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
    per_queue: u64,
}

impl Region {
    /// Maps the frontend's `file` as `msg` describes, after checking it.
    /// Initialises each queue's `desc_num` as libvhost-user does.
    pub fn map(file: File, msg: &InflightMsg) -> Result<Arc<Region>, InflightError> {
        let need = msg.needed()?;
        if msg.mmap_size < need {
            return Err(InflightError::BadRequest(
                "mmap_size smaller than the queues need",
            ));
        }
        if msg.mmap_offset % 4096 != 0 {
            return Err(InflightError::BadRequest("mmap_offset not page aligned"));
        }
        let have = file
            .metadata()
            .map_err(|e| InflightError::Map(e.to_string()))?
            .len();
        let end = msg.mmap_offset.checked_add(need);
        if end.is_none_or(|e| e > have) {
            return Err(InflightError::FileTooSmall {
                have,
                need,
                offset: msg.mmap_offset,
            });
        }
        // A frontend that shrank the file under the mapping would make
        // every access fault: seal it if it is a memfd without the seal.
        if abi::seals(&file).is_ok_and(|s| s & libc::F_SEAL_SHRINK == 0)
            && abi::add_seals(&file, libc::F_SEAL_SHRINK).is_err()
        {
            log::warn!("inflight region cannot be sealed against shrinking");
        }
        let size = usize::try_from(need).map_err(|_| InflightError::BadRequest("size"))?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(file, msg.mmap_offset), size)
            .map_err(|e| InflightError::Map(e.to_string()))?;
        let region = Arc::new(Region {
            map,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
            per_queue: queue_region_size(msg.queue_size),
        });
        for q in 0..region.num_queues {
            if let Some(t) = region.queue(q) {
                t.put16(OFF_DESC_NUM, region.queue_size);
            }
        }
        Ok(region)
    }

    /// Queues covered.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The tracker of queue `q`, if the region covers it.
    pub fn queue(self: &Arc<Self>, q: u16) -> Option<QueueTracker> {
        (q < self.num_queues).then(|| QueueTracker {
            region: self.clone(),
            base: self.per_queue * u64::from(q),
            size: self.queue_size,
        })
    }

    fn slice(&self) -> VolatileSlice<'_> {
        self.map.as_volatile_slice()
    }
}

/// What a restarted backend does with a queue (see [`QueueTracker::resume`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The region was fresh (version 0): nothing to resubmit, keep the
    /// frontend's vring base.
    pub fresh: bool,
    /// Heads to resubmit, in the order they were first taken (counter).
    pub heads: Vec<u16>,
    /// Where to continue taking from the avail ring: used idx + in flight.
    pub next_avail: u16,
    /// Counter for the next head taken.
    pub next_counter: u64,
    /// In-flight entries ignored because they name no descriptor of the ring.
    pub dropped: usize,
}

/// One queue's part of a [`Region`].
#[derive(Debug, Clone)]
pub struct QueueTracker {
    region: Arc<Region>,
    base: u64,
    size: u16,
}

impl QueueTracker {
    fn at(&self, off: u64) -> usize {
        // In range: `base + off` lies inside the mapping by construction
        // (`off` < the queue's part); volatile accessors check again.
        usize::try_from(self.base + off).unwrap_or(usize::MAX)
    }

    fn desc(&self, head: u16, field: u64) -> u64 {
        QUEUE_HEADER_LEN + DESC_STATE_LEN * u64::from(head) + field
    }

    fn put8(&self, off: u64, v: u8) {
        let _ = self
            .region
            .slice()
            .store(v, self.at(off), Ordering::Release);
    }

    fn put16(&self, off: u64, v: u16) {
        let _ = self
            .region
            .slice()
            .store(v.to_le(), self.at(off), Ordering::Release);
    }

    fn put64(&self, off: u64, v: u64) {
        let _ = self
            .region
            .slice()
            .store(v.to_le(), self.at(off), Ordering::Release);
    }

    fn get8(&self, off: u64) -> u8 {
        self.region
            .slice()
            .load::<u8>(self.at(off), Ordering::Acquire)
            .unwrap_or(0)
    }

    fn get16(&self, off: u64) -> u16 {
        u16::from_le(
            self.region
                .slice()
                .load::<u16>(self.at(off), Ordering::Acquire)
                .unwrap_or(0),
        )
    }

    fn get64(&self, off: u64) -> u64 {
        u64::from_le(
            self.region
                .slice()
                .load::<u64>(self.at(off), Ordering::Acquire)
                .unwrap_or(0),
        )
    }

    /// Descriptor states in this queue's part.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Records `head` as taken, with `counter`, before any I/O for it
    /// starts. Heads beyond the region are not tracked (returns false).
    pub fn mark(&self, head: u16, counter: u64) -> bool {
        if head >= self.size {
            return false;
        }
        self.put64(self.desc(head, D_COUNTER), counter);
        fence(Ordering::SeqCst);
        self.put8(self.desc(head, D_INFLIGHT), 1);
        true
    }

    /// Before the used-ring entry for `head` is written.
    pub fn pre_put(&self, head: u16) {
        if head < self.size {
            self.put16(OFF_LAST_BATCH_HEAD, head);
            fence(Ordering::SeqCst);
        }
    }

    /// After the used ring's idx became `used_idx` with `head`'s entry.
    pub fn post_put(&self, head: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        if head < self.size {
            self.put8(self.desc(head, D_INFLIGHT), 0);
        }
        fence(Ordering::SeqCst);
        self.put16(OFF_USED_IDX, used_idx);
    }

    /// Forgets every in-flight entry (device reset: the requests are
    /// abandoned by the driver).
    pub fn clear_all(&self, used_idx: u16) {
        for i in 0..self.size {
            self.put8(self.desc(i, D_INFLIGHT), 0);
        }
        fence(Ordering::SeqCst);
        self.put16(OFF_USED_IDX, used_idx);
    }

    /// Heads currently marked in flight (for tests and logs).
    pub fn in_flight(&self) -> Vec<(u16, u64)> {
        (0..self.size)
            .filter(|&i| self.get8(self.desc(i, D_INFLIGHT)) != 0)
            .map(|i| (i, self.get64(self.desc(i, D_COUNTER))))
            .collect()
    }

    /// Reconciles the region with the ring when a queue starts (libvhost-
    /// user's `vu_check_queue_inflights`): a fresh region is initialised; an
    /// entry whose used-ring update landed but whose clearing did not (the
    /// region's `used_idx` lags the ring's) is cleared through
    /// `last_batch_head`; the remaining entries naming a descriptor of the
    /// ring (`ring_size`) are returned in counter order. `ring_used_idx` is
    /// the used ring's idx as the guest sees it.
    pub fn resume(&self, ring_used_idx: u16, ring_size: u16) -> Resume {
        if self.get16(OFF_VERSION) == 0 {
            self.put16(OFF_VERSION, VERSION);
            self.put16(OFF_USED_IDX, ring_used_idx);
            return Resume {
                fresh: true,
                heads: Vec::new(),
                next_avail: ring_used_idx,
                next_counter: 0,
                dropped: 0,
            };
        }
        if self.get16(OFF_USED_IDX) != ring_used_idx {
            let last = self.get16(OFF_LAST_BATCH_HEAD);
            if last < self.size {
                self.put8(self.desc(last, D_INFLIGHT), 0);
            }
            fence(Ordering::SeqCst);
            self.put16(OFF_USED_IDX, ring_used_idx);
        }
        let mut list = Vec::new();
        let mut dropped = 0;
        for (head, counter) in self.in_flight() {
            if head < ring_size {
                list.push((counter, head));
            } else {
                self.put8(self.desc(head, D_INFLIGHT), 0);
                dropped += 1;
            }
        }
        list.sort_by(|a, b| match a.0.cmp(&b.0) {
            CmpOrdering::Equal => a.1.cmp(&b.1),
            o => o,
        });
        let next_counter = list.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        // At most `ring_size` (<= u16::MAX) distinct heads.
        let inuse = u16::try_from(list.len()).unwrap_or(u16::MAX);
        Resume {
            fresh: false,
            heads: list.into_iter().map(|(_, h)| h).collect(),
            next_avail: ring_used_idx.wrapping_add(inuse),
            next_counter,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(nq: u16, qs: u16) -> (Arc<Region>, File) {
        let (file, msg) = allocate(nq, qs).unwrap();
        let again = file.try_clone().unwrap();
        (Region::map(file, &msg).unwrap(), again)
    }

    #[test]
    fn inflight_sizes_match_libvhost_user() {
        assert_eq!(queue_region_size(128), 2112);
        assert_eq!(queue_region_size(256), 4160);
        assert_eq!(queue_region_size(1), 64);
        assert_eq!(queue_region_size(3), 64);
        for qs in 1..=1024u16 {
            let s = queue_region_size(qs);
            assert_eq!(s % 64, 0);
            assert!(s >= QUEUE_HEADER_LEN + DESC_STATE_LEN * u64::from(qs));
        }
        let (_, msg) = allocate(2, 128).unwrap();
        assert_eq!(msg.mmap_size, 2 * 2112);
        assert_eq!(InflightMsg::parse(&msg.to_bytes()).unwrap(), msg);
    }

    #[test]
    fn inflight_resume_orders_by_counter_and_reconciles_last_batch() {
        let (r, _f) = region(1, 16);
        let t = r.queue(0).unwrap();
        assert!(t.resume(0, 16).fresh);
        // Taken in the order 5, 2, 9, 7; 2 completed; 9's used entry landed
        // (ring idx 2) but the crash came before it was cleared.
        for (c, h) in [(10u64, 5u16), (11, 2), (12, 9), (13, 7)] {
            assert!(t.mark(h, c));
        }
        t.pre_put(2);
        t.post_put(2, 1);
        t.pre_put(9);
        let res = t.resume(2, 16);
        assert!(!res.fresh);
        assert_eq!(res.heads, vec![5, 7]);
        assert_eq!(res.next_avail, 4);
        assert_eq!(res.next_counter, 14);
        assert_eq!(res.dropped, 0);
    }

    #[test]
    fn inflight_hostile_region_is_bounded() {
        let (r, f) = region(1, 8);
        let t = r.queue(0).unwrap();
        t.resume(0, 8);
        // Garbage written by "another process": last_batch_head out of
        // range, a head beyond a smaller ring, odd inflight values.
        let m = MmapRegion::<()>::from_file(FileOffset::new(f, 0), 64 * 3).unwrap();
        let s = m.as_volatile_slice();
        s.write_obj(0xffffu16, 12).unwrap();
        s.write_obj(0x1234u16, 14).unwrap();
        for h in [1u64, 6] {
            s.write_obj(0x7fu8, (16 + 16 * h) as usize).unwrap();
            s.write_obj(u64::MAX - h, (16 + 16 * h + 8) as usize)
                .unwrap();
        }
        let res = t.resume(3, 4);
        assert_eq!(res.heads, vec![1]);
        assert_eq!(res.dropped, 1);
        assert_eq!(res.next_avail, 4);
        assert!(r.queue(1).is_none());
    }

    #[test]
    fn inflight_map_rejects_bad_geometry() {
        let (file, mut msg) = allocate(1, 64).unwrap();
        msg.mmap_size -= 1;
        assert!(Region::map(file.try_clone().unwrap(), &msg).is_err());
        msg.mmap_size += 1;
        msg.num_queues = 2;
        msg.mmap_size *= 2;
        assert!(matches!(
            Region::map(file.try_clone().unwrap(), &msg),
            Err(InflightError::FileTooSmall { .. })
        ));
        msg.num_queues = 0;
        assert!(Region::map(file, &msg).is_err());
        assert!(allocate(1, 0).is_err());
    }
}
