//! `INFLIGHT_SHMFD` from the frontend side: negotiate it, get the region
//! with `GET_INFLIGHT_FD` and keep it, read (or forge) its entries as a
//! crashed backend would have left them, and reconnect to a restarted
//! backend the way QEMU's vhost-user-blk does (`SET_INFLIGHT_FD` with the
//! same fd, then memory and vrings again, `SET_VRING_BASE` = the used
//! ring's idx, since the dead backend cannot answer `GET_VRING_BASE`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    connect_stream, queue_base, GuestMem, HostileFrontend, Queue, Setup, SplitQueue, EVENT_IDX,
    PROTOCOL_FEATURES,
};

fn set_cloexec(f: &File) {
    // SAFETY: F_SETFD on an fd `f` owns; no memory is passed.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    assert_eq!(rc, 0, "FD_CLOEXEC: {}", std::io::Error::last_os_error());
}

/// libvhost-user's per-queue size: `align_up(16 * queue_size + 2, 64)`.
pub fn queue_region_size(queue_size: u16) -> u64 {
    (16 * u64::from(queue_size) + 2).div_ceil(64) * 64
}

/// The frontend's copy of the inflight region.
pub struct Region {
    /// The fd the backend gave (kept across backend restarts).
    pub file: File,
    /// What `GET_INFLIGHT_FD` answered.
    pub info: VhostUserInflight,
    map: MmapRegion<()>,
}

impl Region {
    /// The region a backend process `pid` has mapped, for watching a
    /// frontend we do not drive (QEMU). Found through the mapping, not
    /// among the open fds: a backend spawned while another test of this
    /// process held a region also holds that one, inherited (the vhost
    /// crate receives fds without `CLOEXEC`), and watching it saw nothing.
    /// `None` while the backend has no region (or more than one).
    pub fn of_process(pid: u32, num_queues: u16, queue_size: u16) -> Option<Region> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let mut mapped = maps
            .lines()
            .filter(|l| l.ends_with("/memfd:splitvm-blk-inflight (deleted)"));
        let mut fields = mapped.next()?.split_whitespace();
        let range = fields.next()?.to_string();
        let offset = u64::from_str_radix(fields.nth(1)?, 16).ok()?;
        if mapped.next().is_some() {
            return None;
        }
        let path = format!("/proc/{pid}/map_files/{range}");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ok()?;
        let size = queue_region_size(queue_size) * u64::from(num_queues);
        if file.metadata().ok()?.len() < offset + size {
            return None;
        }
        let map = MmapRegion::<()>::from_file(
            FileOffset::new(file.try_clone().ok()?, offset),
            size as usize,
        )
        .ok()?;
        let info = VhostUserInflight {
            mmap_size: size,
            mmap_offset: offset,
            num_queues,
            queue_size,
        };
        Some(Region { file, info, map })
    }

    fn off(&self, q: usize) -> usize {
        q * queue_region_size(self.info.queue_size) as usize
    }

    /// Header `version` of queue `q`.
    pub fn version(&self, q: usize) -> u16 {
        self.map
            .as_volatile_slice()
            .read_obj(self.off(q) + 8)
            .unwrap()
    }

    /// Header `used_idx` of queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.map
            .as_volatile_slice()
            .read_obj(self.off(q) + 14)
            .unwrap()
    }

    /// Heads of queue `q` marked in flight, with their counters.
    pub fn in_flight(&self, q: usize) -> Vec<(u16, u64)> {
        let s = self.map.as_volatile_slice();
        (0..self.info.queue_size)
            .filter_map(|h| {
                let d = self.off(q) + 16 + 16 * h as usize;
                let f: u8 = s.read_obj(d).unwrap();
                (f != 0).then(|| (h, s.read_obj(d + 8).unwrap()))
            })
            .collect()
    }

    /// Writes descriptor state `head` of queue `q` as a backend would.
    pub fn set_desc(&self, q: usize, head: u16, inflight: bool, counter: u64) {
        let s = self.map.as_volatile_slice();
        let d = self.off(q) + 16 + 16 * head as usize;
        s.write_obj(counter, d + 8).unwrap();
        s.write_obj(u8::from(inflight), d).unwrap();
    }

    /// Writes the header's `last_batch_head` and `used_idx` of queue `q`.
    pub fn set_batch(&self, q: usize, last_batch_head: u16, used_idx: u16) {
        let s = self.map.as_volatile_slice();
        s.write_obj(last_batch_head, self.off(q) + 12).unwrap();
        s.write_obj(used_idx, self.off(q) + 14).unwrap();
    }
}

/// Negotiation as QEMU does it, with `INFLIGHT_SHMFD`; returns the acked
/// virtio features and protocol features.
fn negotiate(fe: &mut Frontend, setup: &Setup) -> (u64, VhostUserProtocolFeatures) {
    fe.set_owner().expect("SET_OWNER");
    let offered = fe.get_features().expect("GET_FEATURES");
    let acked = offered & setup.features;
    assert!(
        acked & PROTOCOL_FEATURES != 0,
        "backend offers protocol features"
    );
    let pf = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    assert!(
        pf.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        "backend offers INFLIGHT_SHMFD: {pf:?}"
    );
    let protocol = pf
        & (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD);
    fe.set_protocol_features(protocol)
        .expect("SET_PROTOCOL_FEATURES");
    (acked, protocol)
}

/// After negotiation: inflight fd, features, memory, every vring (with
/// `bases[i]` as the vring base), enabled.
fn start(h: &mut HostileFrontend, region: &Region, bases: &[u16]) {
    h.fe.set_inflight_fd(&region.info, region.file.as_raw_fd())
        .expect("SET_INFLIGHT_FD");
    h.fe.set_features(h.acked).expect("SET_FEATURES");
    h.fe.set_mem_table(&[h.mem.region_info()])
        .expect("SET_MEM_TABLE");
    for (i, base) in bases.iter().enumerate() {
        let ring = h.queues[i].ring.clone();
        let va = |gpa: u64| h.mem.host_addr(gpa);
        h.fe.set_vring_num(i, ring.size).expect("SET_VRING_NUM");
        let cfg = VringConfigData {
            queue_max_size: ring.size,
            queue_size: ring.size,
            flags: 0,
            desc_table_addr: va(ring.desc),
            used_ring_addr: va(ring.used),
            avail_ring_addr: va(ring.avail),
            log_addr: None,
        };
        h.fe.set_vring_addr(i, &cfg).expect("SET_VRING_ADDR");
        h.fe.set_vring_base(i, *base).expect("SET_VRING_BASE");
        h.fe.set_vring_call(i, &h.queues[i].call)
            .expect("SET_VRING_CALL");
        h.fe.set_vring_kick(i, &h.queues[i].kick)
            .expect("SET_VRING_KICK");
        h.fe.set_vring_enable(i, true).expect("SET_VRING_ENABLE");
    }
}

/// Connects with `INFLIGHT_SHMFD`: negotiation, `GET_INFLIGHT_FD` for
/// `setup.queues` queues of `setup.queue_size`, then the usual setup.
pub fn connect(socket: &Path, setup: Setup) -> (HostileFrontend, Region) {
    let stream = connect_stream(socket, setup.timeout);
    let mut fe = Frontend::from_stream(stream, setup.queues as u64);
    let (acked, protocol) = negotiate(&mut fe, &setup);
    let ask = VhostUserInflight {
        mmap_size: 0,
        mmap_offset: 0,
        num_queues: setup.queues as u16,
        queue_size: setup.queue_size,
    };
    let (info, file) = fe.get_inflight_fd(&ask).expect("GET_INFLIGHT_FD");
    // Received without CLOEXEC: keep it out of the processes other tests
    // of this binary spawn meanwhile.
    set_cloexec(&file);
    assert_eq!(
        info.mmap_size,
        queue_region_size(setup.queue_size) * setup.queues as u64,
        "region size as libvhost-user computes it"
    );
    let map = MmapRegion::<()>::from_file(
        FileOffset::new(file.try_clone().expect("dup inflight fd"), info.mmap_offset),
        info.mmap_size as usize,
    )
    .expect("map inflight region");
    let region = Region { file, info, map };
    let mem = GuestMem::new(setup.mem_size);
    let mut queues = Vec::new();
    for i in 0..setup.queues {
        let ring = SplitQueue::new(queue_base(i), setup.queue_size, acked & EVENT_IDX != 0);
        ring.init(&mem);
        queues.push(Queue {
            ring,
            kick: EventFd::new(EFD_NONBLOCK).expect("kick eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("call eventfd"),
        });
    }
    let mut h = HostileFrontend {
        fe,
        mem,
        queues,
        offered: acked,
        acked,
        protocol,
        timeout: setup.timeout,
        next_desc: vec![0; setup.queues],
        next_gpa: super::DATA_BASE,
    };
    start(&mut h, &region, &vec![0; setup.queues]);
    (h, region)
}

/// Reconnects `h` (same guest memory, rings and region) to a backend on
/// `socket`, as QEMU does after the old backend died: the vring base is
/// the used ring's idx. Returns when the connection is set up; the
/// `Instant` is when the socket accepted the connection.
pub fn reconnect(h: &mut HostileFrontend, socket: &Path, region: &Region) -> std::time::Instant {
    let stream = connect_stream(socket, h.timeout);
    let connected = std::time::Instant::now();
    let mut fe = Frontend::from_stream(stream, h.queues.len() as u64);
    let setup = Setup {
        features: h.acked,
        ..Setup::default()
    };
    let (acked, protocol) = negotiate(&mut fe, &setup);
    assert_eq!(acked, h.acked, "same features after the restart");
    h.fe = fe;
    h.protocol = protocol;
    // Kick/call eventfds are fresh per connection, as in QEMU.
    for q in h.queues.iter_mut() {
        q.kick = EventFd::new(EFD_NONBLOCK).expect("kick eventfd");
        q.call = EventFd::new(EFD_NONBLOCK).expect("call eventfd");
    }
    let bases: Vec<u16> = h.queues.iter().map(|q| q.ring.used_idx(&h.mem)).collect();
    start(h, region, &bases);
    connected
}
