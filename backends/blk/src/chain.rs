//! Descriptor chains to segments. [`collect`] is the normal path's walk of
//! a chain popped from the avail ring (the queue worker; the fuzz harness
//! runs the same function). [`walk`] follows the chain that starts at a
//! given head, for requests resubmitted after a reconnect (they are named
//! by head index from the inflight region, not popped from the avail
//! ring). Same rules as the normal path: at most one indirect table, every
//! `next` bounds-checked, a loop or a bad descriptor ends the chain as
//! truncated. No `unsafe`.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend};

use crate::blk::{Segment, MAX_SEGMENTS};

/// Longest chain (in descriptors) the backend walks; longer ones are dropped.
pub const MAX_CHAIN: usize = MAX_SEGMENTS + 2;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const DESC_LEN: u64 = 16;

struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc<M: GuestMemoryBackend>(mem: &M, table: u64, i: u32) -> Option<Desc> {
    let at = table.checked_add(u64::from(i).checked_mul(DESC_LEN)?)?;
    let mut b = [0u8; 16];
    mem.read_slice(&mut b, GuestAddress(at)).ok()?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    Some(Desc {
        addr: u64::from_le_bytes(a),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    })
}

/// The segments of the chain at `head` in the descriptor table at `table`
/// (`queue_size` entries), at most `max` of them, and whether the chain
/// was cut short (too long, loop, bad index, unreadable descriptor).
pub fn walk<M: GuestMemoryBackend>(
    mem: &M,
    table: u64,
    queue_size: u16,
    head: u16,
    max: usize,
) -> (Vec<Segment>, bool) {
    let mut segs = Vec::new();
    let (mut tbl, mut n, mut idx) = (table, u32::from(queue_size), u32::from(head));
    let mut indirect = false;
    let mut steps = 0u32;
    loop {
        if idx >= n || steps >= n {
            return (segs, true);
        }
        steps += 1;
        let Some(d) = read_desc(mem, tbl, idx) else {
            return (segs, true);
        };
        if d.flags & F_INDIRECT != 0 {
            let entries = d.len / DESC_LEN as u32;
            if indirect || d.len == 0 || d.len % DESC_LEN as u32 != 0 || entries > 65536 {
                return (segs, true);
            }
            (tbl, n, idx, steps, indirect) = (d.addr, entries, 0, 0, true);
            continue;
        }
        if segs.len() >= max {
            return (segs, true);
        }
        segs.push(Segment {
            addr: d.addr,
            len: u64::from(d.len),
            write: d.flags & F_WRITE != 0,
        });
        if d.flags & F_NEXT == 0 {
            return (segs, false);
        }
        idx = u32::from(d.next);
    }
}

/// The segments of a chain popped from the avail ring, into `segs`
/// (cleared first, so a worker's scratch vector is reused without
/// allocating), at most [`MAX_CHAIN`] of them; returns whether the chain
/// was cut short (too long, or `virtio-queue` ended it on a bad
/// descriptor while it still had a `next`).
pub fn collect<M>(chain: DescriptorChain<M>, segs: &mut Vec<Segment>) -> bool
where
    M: Deref,
    M::Target: GuestMemory,
{
    segs.clear();
    let mut truncated = false;
    for d in chain {
        if segs.len() >= MAX_CHAIN {
            truncated = true;
            break;
        }
        segs.push(Segment {
            addr: d.addr().0,
            len: u64::from(d.len()),
            write: d.is_write_only(),
        });
        truncated = d.has_next();
    }
    truncated
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    fn put(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = Vec::new();
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        mem.write_slice(&b, GuestAddress(at)).unwrap();
    }

    #[test]
    fn chain_walk_direct_indirect_and_loops() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let t = 0x1000;
        put(&mem, t + 16 * 3, 0x100, 16, F_NEXT, 5);
        put(&mem, t + 16 * 5, 0x200, 512, F_NEXT | F_WRITE, 6);
        put(&mem, t + 16 * 6, 0x400, 1, F_WRITE, 0);
        let (s, cut) = walk(&mem, t, 8, 3, 10);
        assert!(!cut);
        assert_eq!(s.len(), 3);
        assert_eq!((s[1].addr, s[1].len, s[1].write), (0x200, 512, true));
        assert!(walk(&mem, t, 8, 3, 2).1, "too long for max");
        assert!(walk(&mem, t, 5, 3, 10).1, "next beyond the ring");
        // A loop 0 -> 1 -> 0.
        put(&mem, t, 0x100, 1, F_NEXT, 1);
        put(&mem, t + 16, 0x100, 1, F_NEXT, 0);
        assert!(walk(&mem, t, 8, 0, 100).1);
        // Indirect table of two at 0x2000; nested indirect is refused.
        put(&mem, t + 16 * 7, 0x2000, 32, F_INDIRECT, 0);
        put(&mem, 0x2000, 0x100, 16, F_NEXT, 1);
        put(&mem, 0x2010, 0x400, 1, F_WRITE, 0);
        let (s, cut) = walk(&mem, t, 8, 7, 10);
        assert!(!cut);
        assert_eq!(s.len(), 2);
        put(&mem, 0x2010, 0x2000, 32, F_INDIRECT, 0);
        assert!(walk(&mem, t, 8, 7, 10).1);
        // Unreadable table.
        assert!(walk(&mem, 0xffff_0000, 8, 0, 10).1);
    }
}
