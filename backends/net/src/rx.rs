//! The RX path of [`VhostUserNetBackend`]: frames from the tap into the
//! guest's RX chains (one chain per frame, or several with `MRG_RXBUF`),
//! holding a frame while the guest has no buffers and dropping once that
//! lasts [`STARVE_LIMIT`](crate::vhu_net::STARVE_LIMIT).

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::warn;
use splitvm_backends::metrics;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::net::{self, Counters, NetError, HDR_LEN};
use crate::vhu_net::{lock, Mem, Pair, VhostUserNetBackend, MAX_SEGS, STARVE_LIMIT};

#[derive(Clone, Copy)]
pub(crate) struct Seg {
    pub(crate) addr: GuestAddress,
    pub(crate) len: usize,
}

/// Appends the descriptors of `chain`, all of one direction (`write`), to
/// `out` (a scratch vector the caller reuses: no allocation per packet) and
/// returns their capacity. On an error `out` is left as it was.
pub(crate) fn segments(
    chain: DescriptorChain<Mem>,
    write: bool,
    out: &mut Vec<Seg>,
) -> Result<usize, NetError> {
    let start = out.len();
    let r = walk(chain, write, out, start);
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn walk(
    chain: DescriptorChain<Mem>,
    write: bool,
    out: &mut Vec<Seg>,
    start: usize,
) -> Result<usize, NetError> {
    // `virtio-queue` ends the walk quietly on a loop or a bad `next`; the
    // last descriptor then still says NEXT, and the chain is refused
    // rather than used as far as it could be read.
    let mut cut_short = false;
    for d in chain {
        cut_short = d.has_next();
        if out.len() - start >= MAX_SEGS {
            return Err(NetError::BadChain("too many descriptors"));
        }
        if d.is_write_only() != write {
            return Err(NetError::BadChain(if write {
                "device-readable descriptor in an RX chain"
            } else {
                "device-writable descriptor in a TX chain"
            }));
        }
        out.push(Seg {
            addr: d.addr(),
            len: d.len() as usize,
        });
    }
    if cut_short {
        return Err(NetError::BadChain(
            "chain cut short: a loop or a bad next index",
        ));
    }
    match capacity(&out[start..]) {
        0 => Err(NetError::BadChain("no buffer space")),
        n => Ok(n),
    }
}

fn capacity(segs: &[Seg]) -> usize {
    segs.iter().fold(0usize, |a, s| a.saturating_add(s.len))
}

/// Writes `data` from its start into `segs`; returns the bytes written.
fn scatter(mem: &Mem, segs: &[Seg], data: &[u8]) -> Result<usize, NetError> {
    let mut done = 0;
    for s in segs {
        if done == data.len() {
            break;
        }
        let n = s.len.min(data.len() - done);
        mem.write_slice(&data[done..done + n], s.addr)
            .map_err(|_| NetError::BadChain("RX buffer outside guest memory"))?;
        done += n;
    }
    Ok(done)
}

pub(crate) enum Rx {
    Delivered,
    NoBuffers,
}

impl VhostUserNetBackend {
    /// Moves frames from the tap into the RX ring of pair `p`.
    pub(crate) fn process_rx(&self, p: usize, vring: &VringRwLock) {
        let dev = &self.inner.dev;
        let (Some(tap), Some(pair)) = (dev.taps.get(p), self.inner.pairs.get(p)) else {
            return;
        };
        let mut pair = lock(pair);
        let mem = self.memory();
        let live = mem.is_some() && Self::ring_live(vring);
        if !live && p > 0 && !pair.detached && tap.detach().is_ok() {
            // A disabled pair: let the kernel steer flows to the others.
            pair.detached = true;
        }
        let mut used = false;
        loop {
            let len = match pair.pending.take() {
                Some(n) => n,
                None => match tap.read_packet(&mut pair.rx) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!("tap {} read: {e}", tap.name());
                        break;
                    }
                },
            };
            if len < HDR_LEN + net::ETH_HLEN {
                Counters::bump(&dev.counters.rx_bad_buffers);
                continue;
            }
            if !dev.link_up.load(Ordering::Relaxed) {
                Counters::bump(&dev.counters.rx_no_buffers);
                continue;
            }
            let res = match (&mem, live) {
                (Some(m), true) => self.deliver(vring, m, &mut pair, len),
                _ => Ok(Rx::NoBuffers),
            };
            match res {
                Ok(Rx::Delivered) => {
                    used = true;
                    pair.starved_since = None;
                    Counters::bump(&dev.counters.rx_frames);
                    // Frame bytes, virtio-net header excluded.
                    metrics::counters().completed(0, (len - HDR_LEN) as u64);
                }
                Ok(Rx::NoBuffers) => {
                    let since = *pair.starved_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STARVE_LIMIT {
                        // Read and drop rather than stall the tap.
                        Counters::bump(&dev.counters.rx_no_buffers);
                        continue;
                    }
                    pair.pending = Some(len);
                    // Ask for a kick when buffers arrive; retry if some already did.
                    if live && matches!(vring.enable_notification(), Ok(true)) {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    used = true;
                    Counters::bump(&dev.counters.rx_bad_buffers);
                    metrics::counters().failed();
                    self.guest_warn(&format!("queue {}: RX frame dropped", 2 * p), &e);
                }
            }
        }
        if used {
            Self::notify(vring);
        }
    }

    /// Puts the packet in `pair.rx[..len]` into the guest's RX buffers.
    fn deliver(
        &self,
        vring: &VringRwLock,
        mem: &Mem,
        pair: &mut Pair,
        len: usize,
    ) -> Result<Rx, NetError> {
        let hdr_len = net::hdr_len(self.acked());
        let mrg = self.has(net::F_MRG_RXBUF);
        let need = hdr_len + (len - HDR_LEN);
        // The chains taken (head, end of its descriptors in `segs`).
        pair.segs.clear();
        pair.chains.clear();
        let mut have = 0usize;
        let mut skipped_bad = false;
        let mut q = vring.get_mut();
        let queue = q.get_queue_mut();
        while have < need {
            let Some(chain) = queue.pop_descriptor_chain(mem.clone()) else {
                if !skipped_bad {
                    for _ in 0..pair.chains.len() {
                        queue.go_to_previous_position();
                    }
                    return Ok(Rx::NoBuffers);
                }
                // A bad chain sits between these and the ring's end: they
                // cannot be given back, so they are returned unused.
                for (head, _) in &pair.chains {
                    if let Err(e) = queue.add_used(&**mem, *head, 0) {
                        warn!("add_used({head}): {e}");
                    }
                }
                return Err(NetError::BadChain(
                    "RX buffers interleaved with a bad chain",
                ));
            };
            let head = chain.head_index();
            let cap = match segments(chain, true, &mut pair.segs) {
                Ok(n) => n,
                Err(e) => {
                    // The bad chain goes back unused; keep looking.
                    if let Err(e) = queue.add_used(&**mem, head, 0) {
                        warn!("add_used({head}): {e}");
                    }
                    Counters::bump(&self.inner.dev.counters.rx_bad_buffers);
                    self.guest_warn("RX chain returned unused", &e);
                    skipped_bad = true;
                    continue;
                }
            };
            have = have.saturating_add(cap);
            if !mrg && have < need {
                // Without merged buffers a frame takes one chain: this one
                // goes back unused and the frame is dropped.
                if let Err(e) = queue.add_used(&**mem, head, 0) {
                    warn!("add_used({head}): {e}");
                }
                return Err(NetError::RxBufferTooSmall { have, need });
            }
            pair.chains.push((head, pair.segs.len()));
        }
        drop(q);
        // The guest's header goes right before the frame in `rx`, so header
        // and frame are one slice and reach the guest in one copy: the
        // tap's 12-byte header gets the buffer count and, when the guest's
        // header is the 10-byte one (no num_buffers), moves up by 2.
        let n = u16::try_from(pair.chains.len()).unwrap_or(u16::MAX);
        pair.rx[10..12].copy_from_slice(&n.to_le_bytes());
        let start = HDR_LEN - hdr_len;
        pair.rx.copy_within(..hdr_len, start);
        let data = &pair.rx[start..len];
        let (mut off, mut from) = (0, 0);
        let mut err = None;
        for &(head, end) in &pair.chains {
            let segs = pair.segs.get(from..end).unwrap_or_default();
            from = end;
            let wrote = if err.is_none() && off < data.len() {
                match scatter(mem, segs, &data[off..]) {
                    Ok(w) => w,
                    Err(e) => {
                        err = Some(e);
                        0
                    }
                }
            } else {
                0
            };
            off += wrote;
            Self::add_used(vring, head, u32::try_from(wrote).unwrap_or(u32::MAX));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(Rx::Delivered),
        }
    }
}
