//! A hostile vhost-user frontend for backend tests: it owns a memfd "guest
//! memory", sets up split virtqueues in it, writes descriptor chains
//! directly (good or deliberately broken), kicks through the kick eventfd
//! and waits on the call eventfd with a deadline. Device-specific request
//! builders sit beside it (`blk.rs`); net and input reuse this core.

pub mod blk;
pub mod cases;
pub mod inflight;
pub mod input;
pub mod mem;
pub mod msg;
pub mod net;
pub mod vring;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use mem::GuestMem;
pub use vring::{Desc, SplitQueue, F_INDIRECT, F_NEXT, F_WRITE};

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
pub const VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const INDIRECT_DESC: u64 = 1 << 28;

/// How the harness sets the device up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Guest memory size.
    pub mem_size: usize,
    /// Queues to set up.
    pub queues: usize,
    /// Size of every queue.
    pub queue_size: u16,
    /// Feature bits to ack (intersected with what the backend offers).
    pub features: u64,
    /// How long to wait for the socket and for each completion.
    pub timeout: Duration,
    /// Protocol features to ack (intersected with what the backend offers).
    pub protocol: VhostUserProtocolFeatures,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mem_size: 64 << 20,
            queues: 1,
            queue_size: 256,
            features: u64::MAX,
            timeout: Duration::from_secs(10),
            protocol: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::RESET_DEVICE,
        }
    }
}

/// One queue as the frontend sees it.
pub struct Queue {
    /// The split ring in guest memory.
    pub ring: SplitQueue,
    /// Kick eventfd (frontend writes).
    pub kick: EventFd,
    /// Call eventfd (backend writes).
    pub call: EventFd,
}

/// A connected frontend with its own guest memory and queues.
pub struct HostileFrontend {
    /// The vhost-user control connection.
    pub fe: Frontend,
    /// Guest memory shared with the backend.
    pub mem: GuestMem,
    /// The queues.
    pub queues: Vec<Queue>,
    /// Features offered by the backend.
    pub offered: u64,
    /// Features acked.
    pub acked: u64,
    /// Protocol features acked.
    pub protocol: VhostUserProtocolFeatures,
    /// Per-completion deadline.
    pub timeout: Duration,
    /// Next free descriptor slot per queue (chains are written to fresh slots).
    next_desc: Vec<u16>,
    /// Next free gpa in the data area.
    next_gpa: u64,
}

/// Gpa where queue `i` lives (64 KiB per queue, below the data area).
pub fn queue_base(i: usize) -> u64 {
    0x1_0000 * (i as u64 + 1)
}

/// First gpa of the data area the request builders allocate from.
pub const DATA_BASE: u64 = 0x10_0000;

/// Connects to `socket`, retrying until `limit` (the socket may not be
/// listening yet). Never opens a separate probe connection.
pub fn connect_stream(socket: &Path, limit: Duration) -> UnixStream {
    crate::wait::wait_for(
        &format!("backend socket {}", socket.display()),
        limit,
        || UnixStream::connect(socket).ok(),
    )
}

impl HostileFrontend {
    /// Connects and negotiates, without setting up memory or queues.
    pub fn connect_raw(socket: &Path, setup: &Setup) -> (Frontend, u64) {
        let stream = connect_stream(socket, setup.timeout);
        let fe = Frontend::from_stream(stream, setup.queues as u64);
        fe.set_owner().expect("SET_OWNER");
        let offered = fe.get_features().expect("GET_FEATURES");
        (fe, offered)
    }

    /// Connects, negotiates features, passes the memory table and sets up
    /// every queue, enabled and ready.
    pub fn connect(socket: &Path, setup: Setup) -> Self {
        let (mut fe, offered) = Self::connect_raw(socket, &setup);
        let acked = offered & setup.features;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if acked & PROTOCOL_FEATURES != 0 {
            let pf = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
            protocol = pf & setup.protocol;
            fe.set_protocol_features(protocol)
                .expect("SET_PROTOCOL_FEATURES");
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let n = fe.get_queue_num().expect("GET_QUEUE_NUM");
                assert!(n as usize >= setup.queues, "backend offers {n} queues");
            }
        }
        fe.set_features(acked).expect("SET_FEATURES");
        let mem = GuestMem::new(setup.mem_size);
        fe.set_mem_table(&[mem.region_info()])
            .expect("SET_MEM_TABLE");
        let mut h = HostileFrontend {
            fe,
            mem,
            queues: Vec::new(),
            offered,
            acked,
            protocol,
            timeout: setup.timeout,
            next_desc: vec![0; setup.queues],
            next_gpa: DATA_BASE,
        };
        for i in 0..setup.queues {
            let ring = SplitQueue::new(queue_base(i), setup.queue_size, acked & EVENT_IDX != 0);
            ring.init(&h.mem);
            let q = Queue {
                ring,
                kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
                call: EventFd::new(EFD_NONBLOCK).expect("call eventfd"),
            };
            h.setup_queue(i, &q);
            h.queues.push(q);
        }
        h
    }

    fn setup_queue(&mut self, i: usize, q: &Queue) {
        let va = |gpa: u64| self.mem.host_addr(gpa);
        self.fe
            .set_vring_num(i, q.ring.size)
            .expect("SET_VRING_NUM");
        let cfg = VringConfigData {
            queue_max_size: q.ring.size,
            queue_size: q.ring.size,
            flags: 0,
            desc_table_addr: va(q.ring.desc),
            used_ring_addr: va(q.ring.used),
            avail_ring_addr: va(q.ring.avail),
            log_addr: None,
        };
        self.fe.set_vring_addr(i, &cfg).expect("SET_VRING_ADDR");
        self.fe.set_vring_base(i, 0).expect("SET_VRING_BASE");
        self.fe.set_vring_call(i, &q.call).expect("SET_VRING_CALL");
        self.fe.set_vring_kick(i, &q.kick).expect("SET_VRING_KICK");
        if self.acked & PROTOCOL_FEATURES != 0 {
            self.fe.set_vring_enable(i, true).expect("SET_VRING_ENABLE");
        }
    }

    /// Allocates `len` bytes of guest memory in the data area (4 KiB
    /// aligned), wrapping around when it is used up. The one allocator of
    /// every device's request builders.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = (len.max(1) + 0xfff) & !0xfff;
        if self.next_gpa + len > self.mem.size {
            self.next_gpa = DATA_BASE;
        }
        let at = self.next_gpa;
        self.next_gpa += len;
        at
    }

    /// Allocates a buffer holding `data`.
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        let at = self.alloc(data.len() as u64);
        self.mem.write(at, data);
        at
    }

    /// Writes `descs` as one chain on queue `q` in fresh descriptor slots,
    /// without making it available; returns the head.
    pub fn write_raw(&mut self, q: usize, descs: &[Desc]) -> u16 {
        let ring = &self.queues[q].ring;
        let first = self.next_desc[q];
        ring.write_chain(&self.mem, first, descs);
        self.next_desc[q] = ((first as usize + descs.len().max(1)) % ring.size as usize) as u16;
        first
    }

    /// Writes `descs` on queue `q`, submits it and waits for its used
    /// entry, which must name its head; returns `(id, len)`.
    pub fn submit_raw(&mut self, q: usize, descs: &[Desc]) -> (u32, u32) {
        let head = self.write_raw(q, descs);
        self.submit(q, head);
        let used = self.wait_used(q);
        assert_eq!(used.0, u32::from(head), "used id is the chain head");
        used
    }

    /// Reads `size` bytes of the device config space at `offset`.
    pub fn config(&mut self, offset: u32, size: u32) -> Vec<u8> {
        let buf = vec![0u8; size as usize];
        let (_, payload) = self
            .fe
            .get_config(offset, size, VhostUserConfigFlags::WRITABLE, &buf)
            .expect("GET_CONFIG");
        payload.to_vec()
    }

    /// Makes `head` available on queue `q` and kicks.
    pub fn submit(&mut self, q: usize, head: u16) {
        let queue = &mut self.queues[q];
        queue.ring.push_avail(&self.mem, head);
        queue.kick.write(1).expect("kick");
    }

    /// Makes several heads available with one kick.
    pub fn submit_many(&mut self, q: usize, heads: &[u16]) {
        let queue = &mut self.queues[q];
        for &h in heads {
            queue.ring.push_avail(&self.mem, h);
        }
        queue.kick.write(1).expect("kick");
    }

    /// Waits (call eventfd, deadline `self.timeout`) until queue `q` has a
    /// used entry not yet seen; returns `(id, len)`.
    pub fn wait_used(&mut self, q: usize) -> (u32, u32) {
        self.try_wait_used(q, self.timeout)
            .unwrap_or_else(|| panic!("queue {q}: no used entry within {:?}", self.timeout))
    }

    /// Like [`wait_used`](Self::wait_used) but `None` at the deadline.
    pub fn try_wait_used(&mut self, q: usize, limit: Duration) -> Option<(u32, u32)> {
        let end = Instant::now() + limit;
        let queue = &mut self.queues[q];
        loop {
            if let Some(e) = queue.ring.pop_used(&self.mem) {
                return Some(e);
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            wait_readable(&queue.call, left);
            let _ = queue.call.read();
        }
    }
}

/// Blocks until `fd` is readable or `limit` passes.
pub fn wait_readable(fd: &EventFd, limit: Duration) {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd on the stack, count 1.
    unsafe {
        libc::poll(&mut p, 1, ms);
    }
}

/// Converts a region for `SET_MEM_TABLE` (re-exported for other tests).
pub fn region_info(mem: &GuestMem) -> VhostUserMemoryRegionInfo {
    mem.region_info()
}

/// Runs `f` on its own thread and returns its result, or panics if it
/// failed or took longer than `limit` (a backend stuck in a worker never
/// answers a new frontend; without this the test would hang instead of
/// failing).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|e| panic!("{what}: failed or not done within {limit:?} ({e})"))
}
