//! `VhostUserNetBackend`: the [`VhostUserBackend`] of `splitvm-net`. Queue
//! pair `i` (RX `2i`, TX `2i+1`) and its tap fd are served by worker thread
//! `i`; the control queue (`2N`, or `2` without `MQ`) by thread 0.
//!
//! RX: a frame read from the tap goes into one RX chain (or, with
//! `MRG_RXBUF`, as many as it needs). When the guest has no buffers the
//! frame is kept and the tap is left alone until an RX kick; if that lasts
//! longer than [`STARVE_LIMIT`], frames are read and dropped (counted), so a
//! slow or stuck guest never stalls the host side. TX: each chain is checked
//! ([`crate::net::check_tx`]) and written to the tap as one packet. Every
//! guest mistake drops the packet, bumps a counter and warns (rate-limited).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{info, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use splitvm_backends::proxy::Intercept;

use crate::backend_req::{ConfigChangeSender, NetIntercept};
use crate::net::{self, ctrl, Counters, CtrlCmd, NetError, VnetHdr, HDR_LEN, MAX_FRAME};
use crate::tap::Tap;

type Mem = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// How long frames wait in the tap for RX buffers before being dropped.
pub const STARVE_LIMIT: Duration = Duration::from_millis(200);
/// Longest chain walked.
const MAX_SEGS: usize = 1024;
/// Largest control command read.
const MAX_CTRL: usize = 4096;

/// The device: taps and fixed settings, shared by every connection.
pub struct NetDevice {
    /// One tap fd per queue pair.
    pub taps: Vec<Tap>,
    /// MAC in the config space.
    pub mac: [u8; 6],
    /// MTU in the config space (`None`: MTU not offered).
    pub mtu: Option<u16>,
    /// Largest queue size accepted.
    pub queue_size: u16,
    /// Offloads (`TUN_F_*`) the tap accepts.
    pub tap_offloads: u32,
    /// Link state (config `status`).
    pub link_up: AtomicBool,
    /// Drop and pass counters.
    pub counters: Counters,
    /// The current connection's backend request channel, if any.
    pub backend_req: Mutex<Option<ConfigChangeSender>>,
}

impl NetDevice {
    /// Queue pairs.
    pub fn pairs(&self) -> u16 {
        u16::try_from(self.taps.len()).unwrap_or(u16::MAX)
    }

    /// Virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut f = bit(net::F_VERSION_1)
            | bit(29) // RING_EVENT_IDX
            | bit(28) // RING_INDIRECT_DESC
            | bit(net::F_MAC)
            | bit(net::F_STATUS)
            | bit(net::F_MRG_RXBUF)
            | bit(net::F_CTRL_VQ)
            | bit(net::F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.mtu.is_some() {
            f |= bit(net::F_MTU);
        }
        if self.tap_offloads & net::TUN_F_CSUM != 0 {
            f |= bit(net::F_CSUM) | bit(net::F_GUEST_CSUM);
            if self.tap_offloads & net::TUN_F_TSO4 != 0 {
                f |= bit(net::F_HOST_TSO4) | bit(net::F_GUEST_TSO4);
            }
            if self.tap_offloads & net::TUN_F_TSO6 != 0 {
                f |= bit(net::F_HOST_TSO6) | bit(net::F_GUEST_TSO6);
            }
        }
        f
    }

    /// Config-space bytes as they are now.
    pub fn config(&self) -> [u8; net::CONFIG_LEN] {
        net::config_space(
            self.mac,
            self.link_up.load(Ordering::SeqCst),
            self.pairs(),
            self.mtu.unwrap_or(1500),
        )
    }

    /// Sets the link state; tells the frontend when it changed. Returns
    /// whether the state changed.
    pub fn set_link(&self, up: bool) -> bool {
        if self.link_up.swap(up, Ordering::SeqCst) == up {
            return false;
        }
        info!("link {}", if up { "up" } else { "down" });
        let ch = self
            .backend_req
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ch.as_ref() {
            Some(c) => {
                if let Err(e) = c.config_changed() {
                    warn!("cannot notify the frontend of the config change: {e}");
                }
            }
            None => info!(
                "no backend request channel: the frontend sees the link on its next config read"
            ),
        }
        true
    }
}

/// Names of feature bits, for logs.
pub fn feature_names(f: u64) -> String {
    const NAMES: &[(u32, &str)] = &[
        (net::F_CSUM, "CSUM"),
        (net::F_GUEST_CSUM, "GUEST_CSUM"),
        (net::F_MTU, "MTU"),
        (net::F_MAC, "MAC"),
        (net::F_GUEST_TSO4, "GUEST_TSO4"),
        (net::F_GUEST_TSO6, "GUEST_TSO6"),
        (net::F_HOST_TSO4, "HOST_TSO4"),
        (net::F_HOST_TSO6, "HOST_TSO6"),
        (net::F_MRG_RXBUF, "MRG_RXBUF"),
        (net::F_STATUS, "STATUS"),
        (net::F_CTRL_VQ, "CTRL_VQ"),
        (net::F_MQ, "MQ"),
        (28, "RING_INDIRECT_DESC"),
        (29, "RING_EVENT_IDX"),
        (30, "VHOST_USER_PROTOCOL_FEATURES"),
        (net::F_VERSION_1, "VERSION_1"),
    ];
    let mut out: Vec<String> = NAMES
        .iter()
        .filter(|(b, _)| f & (1u64 << b) != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = NAMES.iter().fold(0u64, |a, (b, _)| a | (1u64 << b));
    if f & !known != 0 {
        out.push(format!("{:#x}", f & !known));
    }
    out.join(" ")
}

/// Rate limit for guest-triggered warnings.
#[derive(Default)]
struct RateLimit {
    second: AtomicU64,
    count: AtomicU64,
}

impl RateLimit {
    const PER_SECOND: u64 = 10;

    fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

/// Per-pair RX state.
struct Pair {
    /// Tap packet buffer (vnet header + frame).
    rx: Vec<u8>,
    /// A frame read but not yet delivered (its length in `rx`).
    pending: Option<usize>,
    /// Since when the guest has had no RX buffer for `pending`.
    starved_since: Option<Instant>,
    /// Scratch for the bytes handed to the guest / the tap.
    out: Vec<u8>,
    /// Queue detached from a multiqueue tap (its RX ring is disabled).
    detached: bool,
}

struct Inner {
    dev: Arc<NetDevice>,
    acked: AtomicU64,
    event_idx: AtomicBool,
    active_pairs: AtomicU16,
    mem: RwLock<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    pairs: Vec<Mutex<Pair>>,
    warn: RateLimit,
}

/// See the module docs. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct VhostUserNetBackend {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Copy)]
struct Seg {
    addr: GuestAddress,
    len: usize,
}

/// The descriptors of `chain`, all of one direction (`write`).
fn segments(chain: DescriptorChain<Mem>, write: bool) -> Result<Vec<Seg>, NetError> {
    let mut v = Vec::new();
    for d in chain {
        if v.len() >= MAX_SEGS {
            return Err(NetError::BadChain("too many descriptors"));
        }
        if d.is_write_only() != write {
            return Err(NetError::BadChain(if write {
                "device-readable descriptor in an RX chain"
            } else {
                "device-writable descriptor in a TX chain"
            }));
        }
        v.push(Seg {
            addr: d.addr(),
            len: d.len() as usize,
        });
    }
    if capacity(&v) == 0 {
        return Err(NetError::BadChain("no buffer space"));
    }
    Ok(v)
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

enum Rx {
    Delivered,
    NoBuffers,
}

impl VhostUserNetBackend {
    /// A backend for one frontend connection.
    pub fn new(dev: Arc<NetDevice>) -> Self {
        let pairs = (0..dev.taps.len())
            .map(|_| {
                Mutex::new(Pair {
                    rx: vec![0u8; HDR_LEN + MAX_FRAME],
                    pending: None,
                    starved_since: None,
                    out: Vec::with_capacity(HDR_LEN + MAX_FRAME),
                    detached: false,
                })
            })
            .collect();
        let active = dev.pairs();
        if dev.taps.len() > 1 {
            // A new frontend: every queue starts attached (a previous one
            // may have left some detached). Attaching an attached queue fails
            // harmlessly.
            for tap in &dev.taps {
                let _ = tap.attach();
            }
        }
        VhostUserNetBackend {
            inner: Arc::new(Inner {
                dev,
                acked: AtomicU64::new(0),
                event_idx: AtomicBool::new(false),
                active_pairs: AtomicU16::new(active),
                mem: RwLock::new(None),
                pairs,
                warn: RateLimit::default(),
            }),
        }
    }

    fn tap_event(&self) -> u16 {
        u16::try_from(self.num_queues() + 1).unwrap_or(u16::MAX)
    }

    fn acked(&self) -> u64 {
        self.inner.acked.load(Ordering::Relaxed)
    }

    fn has(&self, bit: u32) -> bool {
        self.acked() & (1u64 << bit) != 0
    }

    /// Index of the control queue for the negotiated features.
    fn ctrl_index(&self) -> usize {
        if self.has(net::F_MQ) {
            2 * self.inner.pairs.len()
        } else {
            2
        }
    }

    fn memory(&self) -> Option<Mem> {
        let m = self
            .inner
            .mem
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        m.as_ref().map(|a| a.memory())
    }

    fn guest_warn(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.inner.warn.allow() {
            warn!("{what}: {e}");
        }
    }

    fn notify(vring: &VringRwLock) {
        if vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                warn!("signal used queue: {e}");
            }
        }
    }

    fn add_used(vring: &VringRwLock, head: u16, len: u32) {
        if let Err(e) = vring.add_used(head, len) {
            warn!("add_used({head}): {e}");
        }
    }

    fn ring_live(vring: &VringRwLock) -> bool {
        let st = vring.get_ref();
        st.is_enabled() && st.get_queue().ready()
    }

    /// Moves frames from the tap into the RX ring of pair `p`.
    fn process_rx(&self, p: usize, vring: &VringRwLock) {
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
        let frame_len = len - HDR_LEN;
        let need = hdr_len + frame_len;
        let mut chains: Vec<(u16, Vec<Seg>)> = Vec::new();
        let mut have = 0usize;
        let mut skipped_bad = false;
        let mut q = vring.get_mut();
        let queue = q.get_queue_mut();
        while have < need {
            let Some(chain) = queue.pop_descriptor_chain(mem.clone()) else {
                if !skipped_bad {
                    for _ in 0..chains.len() {
                        queue.go_to_previous_position();
                    }
                    return Ok(Rx::NoBuffers);
                }
                // A bad chain sits between these and the ring's end: they
                // cannot be given back, so they are returned unused.
                for (head, _) in &chains {
                    if let Err(e) = queue.add_used(&**mem, *head, 0) {
                        warn!("add_used({head}): {e}");
                    }
                }
                return Err(NetError::BadChain(
                    "RX buffers interleaved with a bad chain",
                ));
            };
            let head = chain.head_index();
            let segs = match segments(chain, true) {
                Ok(s) => s,
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
            have = have.saturating_add(capacity(&segs));
            if !mrg && have < need {
                // Without merged buffers a frame takes one chain: this one
                // goes back unused and the frame is dropped.
                if let Err(e) = queue.add_used(&**mem, head, 0) {
                    warn!("add_used({head}): {e}");
                }
                return Err(NetError::RxBufferTooSmall { have, need });
            }
            chains.push((head, segs));
        }
        drop(q);
        let n = u16::try_from(chains.len()).unwrap_or(u16::MAX);
        pair.out.clear();
        pair.out.extend_from_slice(&pair.rx[..HDR_LEN]);
        pair.out[10..12].copy_from_slice(&n.to_le_bytes());
        pair.out.truncate(hdr_len);
        pair.out.extend_from_slice(&pair.rx[HDR_LEN..len]);
        let mut off = 0;
        let mut err = None;
        for (head, segs) in &chains {
            let wrote = if err.is_none() && off < pair.out.len() {
                match scatter(mem, segs, &pair.out[off..]) {
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
            Self::add_used(vring, *head, u32::try_from(wrote).unwrap_or(u32::MAX));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(Rx::Delivered),
        }
    }

    /// Sends every available TX chain of pair `p` to the tap.
    fn process_tx(&self, p: usize, vring: &VringRwLock) {
        let dev = &self.inner.dev;
        let (Some(tap), Some(pair), Some(mem)) =
            (dev.taps.get(p), self.inner.pairs.get(p), self.memory())
        else {
            return;
        };
        let mut pair = lock(pair);
        let event_idx = self.inner.event_idx.load(Ordering::Relaxed);
        let mut used = false;
        loop {
            if event_idx {
                let _ = vring.disable_notification();
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                if let Err(e) = self.tx_one(tap, &mem, &mut pair.out, chain) {
                    Counters::bump(&dev.counters.tx_bad);
                    self.guest_warn(&format!("queue {}: TX packet dropped", 2 * p + 1), &e);
                }
                Self::add_used(vring, head, 0);
                used = true;
            }
            if !event_idx || !matches!(vring.enable_notification(), Ok(true)) {
                break;
            }
        }
        if used {
            Self::notify(vring);
        }
    }

    fn tx_one(
        &self,
        tap: &Tap,
        mem: &Mem,
        out: &mut Vec<u8>,
        chain: DescriptorChain<Mem>,
    ) -> Result<(), NetError> {
        let dev = &self.inner.dev;
        let segs = segments(chain, false)?;
        let total = capacity(&segs);
        let hdr_len = net::hdr_len(self.acked());
        if total < hdr_len {
            return Err(NetError::ShortHeader(total));
        }
        if total - hdr_len > MAX_FRAME {
            return Err(NetError::TooBig(total - hdr_len));
        }
        out.clear();
        out.resize(total, 0);
        let mut off = 0;
        for s in &segs {
            mem.read_slice(&mut out[off..off + s.len], s.addr)
                .map_err(|_| NetError::BadChain("TX buffer outside guest memory"))?;
            off += s.len;
        }
        let hdr = VnetHdr::parse(&out[..hdr_len]).ok_or(NetError::ShortHeader(total))?;
        net::check_tx(&hdr, total - hdr_len, self.acked())?;
        if !dev.link_up.load(Ordering::Relaxed) {
            return Ok(());
        }
        // The tap always takes the 12-byte header.
        let tap_hdr = VnetHdr {
            num_buffers: 0,
            ..hdr
        }
        .to_bytes();
        if hdr_len == HDR_LEN {
            out[..HDR_LEN].copy_from_slice(&tap_hdr);
        } else {
            out.splice(..hdr_len, tap_hdr);
        }
        match tap.write_packet(out) {
            Ok(_) => Counters::bump(&dev.counters.tx_frames),
            Err(e) => {
                Counters::bump(&dev.counters.tx_tap_errors);
                self.guest_warn(&format!("tap {} write", tap.name()), &e);
            }
        }
        Ok(())
    }

    /// Answers every control command.
    fn process_ctrl(&self, vring: &VringRwLock) {
        let Some(mem) = self.memory() else {
            return;
        };
        let mut used = false;
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let (ack_at, cmd) = self.read_ctrl(&mem, chain);
            let ack = match cmd {
                Some(CtrlCmd::SetPairs(n)) if (1..=self.inner.dev.pairs()).contains(&n) => {
                    info!("guest uses {n} queue pair(s)");
                    self.inner.active_pairs.store(n, Ordering::Relaxed);
                    ctrl::OK
                }
                Some(CtrlCmd::Accept) => ctrl::OK,
                other => {
                    Counters::bump(&self.inner.dev.counters.ctrl_bad);
                    self.guest_warn("control command refused", &format!("{other:?}"));
                    ctrl::ERR
                }
            };
            let len = match ack_at {
                Some(at) if mem.write_obj(ack, at).is_ok() => 1,
                _ => 0,
            };
            Self::add_used(vring, head, len);
            used = true;
        }
        if used {
            Self::notify(vring);
        }
    }

    /// The readable bytes of a control chain and where its ack byte goes.
    fn read_ctrl(
        &self,
        mem: &Mem,
        chain: DescriptorChain<Mem>,
    ) -> (Option<GuestAddress>, Option<CtrlCmd>) {
        let mut data = Vec::new();
        let mut ack = None;
        let mut ok = true;
        for (i, d) in chain.enumerate() {
            if i >= MAX_SEGS {
                ok = false;
                break;
            }
            if d.is_write_only() {
                if d.len() >= 1 && ack.is_none() {
                    ack = Some(d.addr());
                }
                continue;
            }
            if ack.is_some() {
                ok = false; // readable after writable
                continue;
            }
            let n = (d.len() as usize).min(MAX_CTRL.saturating_sub(data.len()));
            let at = data.len();
            data.resize(at + n, 0);
            if mem.read_slice(&mut data[at..], d.addr()).is_err() {
                ok = false;
            }
        }
        let cmd = if ok { net::parse_ctrl(&data) } else { None };
        (ack, cmd)
    }
}

impl VhostUserBackend for VhostUserNetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.inner.pairs.len() + 1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.inner.dev.queue_size)
    }

    fn features(&self) -> u64 {
        self.inner.dev.features()
    }

    fn acked_features(&self, features: u64) {
        self.inner.acked.store(features, Ordering::Relaxed);
        info!(
            "negotiated virtio features {features:#x}: {}",
            feature_names(features)
        );
        let off = net::tap_offloads(features) & self.inner.dev.tap_offloads;
        for tap in &self.inner.dev.taps {
            if let Err(e) = tap.set_offload(off) {
                warn!("{e}");
            }
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn reset_device(&self) {
        for p in &self.inner.pairs {
            let mut p = lock(p);
            p.pending = None;
            p.starved_since = None;
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.inner.dev.config();
        let start = offset as usize;
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg.get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        *self
            .inner
            .mem
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let n = self.inner.pairs.len();
        (0..n)
            .map(|i| {
                let mut m = 0b11u64 << (2 * i);
                if i == 0 {
                    m |= 1 << (2 * n);
                }
                m
            })
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        let (Some(rx), Some(tx)) = (vrings.first(), vrings.get(1)) else {
            return Ok(());
        };
        if device_event == self.tap_event() {
            self.process_rx(thread_id, rx);
            return Ok(());
        }
        // Global queue index: thread i serves 2i, 2i+1; thread 0 also the
        // control queue at 2N (its third vring).
        let global = match device_event {
            0 | 1 => 2 * thread_id + usize::from(device_event),
            2 if thread_id == 0 => 2 * self.inner.pairs.len(),
            _ => return Ok(()),
        };
        if global == self.ctrl_index() && self.has(net::F_CTRL_VQ) {
            let ring = if global == 2 * self.inner.pairs.len() {
                vrings.get(2)
            } else {
                vrings.first()
            };
            if let Some(r) = ring {
                self.process_ctrl(r);
            }
            return Ok(());
        }
        match device_event {
            0 => {
                if let (Some(p), Some(tap)) = (
                    self.inner.pairs.get(thread_id),
                    self.inner.dev.taps.get(thread_id),
                ) {
                    let mut p = lock(p);
                    p.starved_since = None;
                    if p.detached && tap.attach().is_ok() {
                        p.detached = false;
                    }
                }
                self.process_rx(thread_id, rx);
            }
            1 => self.process_tx(thread_id, tx),
            _ => {}
        }
        Ok(())
    }
}

impl splitvm_backends::daemon::Device for VhostUserNetBackend {
    fn intercept(&self) -> Option<Arc<dyn Intercept>> {
        Some(Arc::new(NetIntercept::new(self.inner.dev.clone())))
    }

    fn attach(&self, handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        let ev = u64::from(self.tap_event());
        for (tap, h) in self.inner.dev.taps.iter().zip(handlers) {
            h.register_listener(tap.as_raw_fd(), EventSet::IN | EventSet::EDGE_TRIGGERED, ev)?;
        }
        Ok(())
    }
}
