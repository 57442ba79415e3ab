//! A split virtqueue laid out in the harness's guest memory, written by
//! hand so tests can put anything in it.

use std::sync::atomic::{fence, Ordering};

use super::GuestMem;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// A raw descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// `F_*` flags.
    pub flags: u16,
    /// Next index (with `F_NEXT`).
    pub next: u16,
}

impl Desc {
    /// The 16 bytes of a `virtq_desc`.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// One split queue: descriptor table, avail ring and used ring.
#[derive(Debug, Clone)]
pub struct SplitQueue {
    /// Entries.
    pub size: u16,
    /// Descriptor table gpa.
    pub desc: u64,
    /// Avail ring gpa.
    pub avail: u64,
    /// Used ring gpa.
    pub used: u64,
    /// Next avail index to publish.
    pub avail_idx: u16,
    /// Next used index to consume.
    pub used_seen: u16,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
}

impl SplitQueue {
    /// Lays a queue of `size` entries out from `base` (needs < 64 KiB for 1024).
    pub fn new(base: u64, size: u16, event_idx: bool) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        SplitQueue {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            used_seen: 0,
            event_idx,
        }
    }

    /// Zeroes the rings.
    pub fn init(&self, mem: &GuestMem) {
        let end = self.used + 6 + 8 * u64::from(self.size);
        mem.write(self.desc, &vec![0u8; (end - self.desc) as usize]);
    }

    /// Writes descriptor `i` of the table.
    pub fn write_desc(&self, mem: &GuestMem, i: u16, d: Desc) {
        mem.write(self.desc + 16 * u64::from(i), &d.bytes());
    }

    /// Writes descriptors `first..` as a chain (sets `F_NEXT`/`next` except
    /// on the last); returns the head index.
    pub fn write_chain(&self, mem: &GuestMem, first: u16, descs: &[Desc]) -> u16 {
        let n = descs.len();
        for (k, d) in descs.iter().enumerate() {
            let i = (first as usize + k) % self.size as usize;
            let mut d = *d;
            if k + 1 < n {
                d.flags |= F_NEXT;
                d.next = ((i + 1) % self.size as usize) as u16;
            }
            self.write_desc(mem, i as u16, d);
        }
        first
    }

    /// Publishes `head` in the avail ring (and, with EVENT_IDX, asks for a
    /// call on the next used entry).
    pub fn push_avail(&mut self, mem: &GuestMem, head: u16) {
        let slot = self.avail_idx % self.size;
        mem.w16(self.avail + 4 + 2 * u64::from(slot), head);
        if self.event_idx {
            // used_event: interrupt once the used index passes what we saw.
            mem.w16(self.avail + 4 + 2 * u64::from(self.size), self.used_seen);
        }
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.w16(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
    }

    /// Sets the avail index to any value (for hostile tests).
    pub fn set_avail_idx(&mut self, mem: &GuestMem, idx: u16) {
        self.avail_idx = idx;
        mem.w16(self.avail + 2, idx);
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMem) -> u16 {
        fence(Ordering::SeqCst);
        mem.r16(self.used + 2)
    }

    /// The next used entry not consumed yet, as `(id, len)`.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Option<(u32, u32)> {
        if self.used_idx(mem) == self.used_seen {
            return None;
        }
        let slot = self.used_seen % self.size;
        let at = self.used + 4 + 8 * u64::from(slot);
        let e = (mem.r32(at), mem.r32(at + 4));
        self.used_seen = self.used_seen.wrapping_add(1);
        Some(e)
    }
}
