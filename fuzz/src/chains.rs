//! Descriptor chains and the requests in them: a split virtqueue laid out
//! by the input in a small guest memory whose bytes are also the input, as
//! a hostile driver would write it. Every chain the queue hands out goes
//! through the same steps as in the backends: the blk worker's chain walk
//! and `blk::parse` (and `write_id` for GET_ID), blk's resume-path walker
//! `chain::walk` from the same head, and the net TX checks (`VnetHdr`,
//! `check_tx`, `parse_ctrl`) on the readable bytes; then the used entry is
//! published, so the used ring and notification code run too.

use splitvm_blk::blk::{self, DiskInfo, Op, Segment};
use splitvm_blk::chain::{self, MAX_CHAIN};
use splitvm_net::net::{self, VnetHdr};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: a 64 KiB region at 0 (the rings and most buffers), a hole,
/// and a 4 KiB region at 1 MiB (buffers that cross region boundaries).
const LOW: u64 = 0x1_0000;
const HIGH: u64 = 0x10_0000;
const HIGH_LEN: u64 = 0x1000;
/// Chains popped per input.
const MAX_POPS: usize = 64;

struct Params {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    next_avail: u16,
    features: u64,
}

fn params(p: &[u8; 16]) -> Params {
    let w = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
    Params {
        // Powers of two (valid) most of the time, anything otherwise.
        size: if p[0] & 0x80 == 0 {
            1 << (p[0] % 16)
        } else {
            w(0)
        },
        // Addresses in 8-byte steps over the low region and past it.
        desc: u64::from(w(2)) * 8,
        avail: u64::from(w(4)) * 2,
        used: u64::from(w(6)) * 4,
        event_idx: p[8] & 1 != 0,
        next_avail: w(9),
        features: u64::from_le_bytes([p[11], p[12], p[13], p[14], p[15], 0, 0, 1]),
    }
}

fn disk() -> DiskInfo {
    DiskInfo {
        capacity: 1 << 20,
        readonly: false,
        max_range_sectors: 1 << 21,
        max_range_segs: 16,
        serial: *b"fuzz-serial-0123456\0",
    }
}

/// The readable bytes of `segs` (at most 64 KiB + a header, as net reads).
fn readable(mem: &GuestMemoryMmap, segs: &[Segment]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs.iter().filter(|s| !s.write) {
        let room = (0x1_0000 + 12usize).saturating_sub(out.len());
        let n = usize::try_from(s.len).unwrap_or(usize::MAX).min(room);
        let mut b = vec![0u8; n];
        if mem.read_slice(&mut b, GuestAddress(s.addr)).is_err() {
            return out;
        }
        out.extend_from_slice(&b);
    }
    out
}

/// Fuzz body: 16 bytes of queue parameters, then the low region's contents.
pub fn run(data: &[u8]) {
    let Some((p, body)) = data.split_first_chunk::<16>() else {
        return;
    };
    let p = params(p);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW as usize),
        (GuestAddress(HIGH), HIGH_LEN as usize),
    ]) else {
        return;
    };
    let n = body.len().min(LOW as usize);
    let _ = mem.write_slice(&body[..n], GuestAddress(0));
    // The high region repeats the input, so buffers there hold data too.
    if !body.is_empty() {
        let fill: Vec<u8> = body
            .iter()
            .copied()
            .cycle()
            .take(HIGH_LEN as usize)
            .collect();
        let _ = mem.write_slice(&fill, GuestAddress(HIGH));
    }

    let Ok(mut q) = Queue::new(32768) else {
        return;
    };
    if q.try_set_size(p.size).is_err()
        || q.try_set_desc_table_address(GuestAddress(p.desc)).is_err()
        || q.try_set_avail_ring_address(GuestAddress(p.avail)).is_err()
        || q.try_set_used_ring_address(GuestAddress(p.used)).is_err()
    {
        return;
    }
    q.set_event_idx(p.event_idx);
    q.set_next_avail(p.next_avail);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let info = disk();
    let mut pops = 0;
    while pops < MAX_POPS {
        pops += 1;
        let Some(c) = q.pop_descriptor_chain(&mem) else {
            break;
        };
        let head = c.head_index();
        // The blk worker's walk (vhu_blk/queue.rs `start_chain`).
        let mut segs = Vec::new();
        let truncated = chain::collect(c, &mut segs);
        let used = match blk::parse(&mem, &info, &segs, truncated) {
            Ok(req) => {
                if req.op == Op::GetId {
                    let _ = blk::write_id(&mem, &req, &info.serial);
                }
                let _ = mem.write_obj(blk::S_OK, req.status);
                blk::used_len(&req)
            }
            Err(rej) => match rej.status {
                Some(at) if mem.write_obj(rej.code, at).is_ok() => 1,
                _ => 0,
            },
        };
        // The resume path names the chain by its head and walks it itself.
        let _ = chain::walk(&mem, p.desc, p.size, head, MAX_CHAIN);
        // The net TX and control-queue checks on the same bytes.
        let bytes = readable(&mem, &segs);
        let hlen = net::hdr_len(p.features);
        if let Some(h) = bytes.get(..hlen).and_then(VnetHdr::parse) {
            let _ = net::check_tx(&h, bytes.len() - hlen, p.features);
        }
        let _ = net::parse_ctrl(&bytes);
        let _ = q.add_used(&mem, head, used);
    }
    let _ = q.needs_notification(&mem);
    let _ = q.enable_notification(&mem);
}
