//! virtio-net for the hostile frontend: a network namespace with the tap
//! inside it, `splitvm-net` started in that namespace, an `AF_PACKET`
//! socket on the tap (the "wire"), and a [`NetDev`] that puts TX chains and
//! RX buffers (good or broken) on the rings, reads the control queue's acks,
//! the config space, and config-change messages on the backend request
//! channel.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::VhostUserFrontend;

use super::{Desc, HostileFrontend, Setup, F_WRITE};
use crate::proc::ChildGuard;

/// Ethertype of the test frames (IEEE local experimental).
pub const ETHERTYPE_TEST: u16 = 0x88b5;
/// Queue indices with one pair and the control queue.
pub const RXQ: usize = 0;
/// TX queue.
pub const TXQ: usize = 1;
/// Control queue (one pair, or `MQ` not acked).
pub const CTRLQ: usize = 2;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Header length with `VERSION_1`.
pub const HDR_LEN: usize = 12;

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    /// Its name (`ip netns`).
    pub name: String,
}

impl NetNs {
    /// Creates `svt-<tag>-<pid>-<n>` with IPv6 off (no router solicitations
    /// or ND on the test wire).
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "svt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        ns
    }

    /// Runs a command in the namespace; panics on failure; returns stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `ifname` exists in the namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "ip", "link", "show", ifname])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Starts `splitvm-net` inside `ns` on the tap `tap` (it creates it), with
/// a socket in `dir`.
pub fn spawn_net(dir: &Path, ns: &NetNs, tap: &str, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let sock = dir.join("net.sock");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(crate::bin_path("splitvm-net"))
        .arg("--socket-path")
        .arg(&sock)
        .args(["--tap", tap])
        .args(extra);
    (ChildGuard::spawn("splitvm-net", cmd), sock)
}

/// [`spawn_net`], then waits (5 s at most) for the tap to appear in `ns`
/// and brings it up.
pub fn spawn_net_up(dir: &Path, ns: &NetNs, tap: &str, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let (child, sock) = spawn_net(dir, ns, tap, extra);
    crate::wait::wait_for(
        &format!("{tap} in the namespace"),
        Duration::from_secs(5),
        || ns.has_link(tap).then_some(()),
    );
    ns.exec(&["ip", "link", "set", tap, "up"]);
    (child, sock)
}

/// An Ethernet frame.
pub fn eth_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A test frame: broadcast, [`ETHERTYPE_TEST`], `tag` then a pattern up to `len` bytes.
pub fn test_frame(tag: &[u8], len: usize) -> Vec<u8> {
    let mut payload = tag.to_vec();
    let mut i = 0u32;
    while payload.len() + 14 < len {
        payload.push((i.wrapping_mul(31) ^ (i >> 8)) as u8);
        i += 1;
    }
    eth_frame([0xff; 6], [0x02, 0, 0, 0, 0, 1], ETHERTYPE_TEST, &payload)
}

/// Whether `f` is a test frame carrying `tag`.
pub fn is_test_frame(f: &[u8], tag: &[u8]) -> bool {
    f.len() >= 14 + tag.len()
        && f[12..14] == ETHERTYPE_TEST.to_be_bytes()
        && &f[14..14 + tag.len()] == tag
}

/// An `AF_PACKET` socket bound to an interface inside a namespace: what
/// the "wire" side of the tap sends and receives.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket in `ns` on `ifname` (a thread enters the namespace
    /// with `setns`; the socket stays there).
    pub fn open(ns: &NetNs, ifname: &str) -> Self {
        let path = format!("/run/netns/{}", ns.name);
        let ifname = std::ffi::CString::new(ifname).expect("no NUL");
        let fd = std::thread::spawn(move || {
            let nsf = File::open(&path).expect("open netns file");
            // SAFETY: setns on an open netns fd; it affects only this thread.
            let r = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) call.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: `fd` is fresh and owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: if_nametoindex reads a NUL-terminated string.
            let idx = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert!(idx > 0, "no interface {ifname:?} in the namespace");
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = proto;
            sa.sll_ifindex = idx as i32;
            // SAFETY: bind reads one sockaddr_ll of the given size.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            fd
        })
        .join()
        .expect("netns thread");
        PacketSocket { fd }
    }

    /// Sends one frame out of the interface (towards the backend).
    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: send reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for an incoming frame (from the backend) for which `want`
    /// holds; `None` at the deadline.
    pub fn recv(&self, limit: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 70000];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one pollfd on the stack.
            if unsafe { libc::poll(&mut p, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut salen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: recvfrom writes at most buf.len() bytes and one sockaddr_ll.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut salen,
                )
            };
            if n <= 0 || sa.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if want(f) {
                return Some(f.to_vec());
            }
        }
    }
}

/// A frame the device put in the RX queue.
#[derive(Debug, Clone)]
pub struct RxPacket {
    /// The virtio-net header (12 bytes).
    pub hdr: Vec<u8>,
    /// The frame.
    pub frame: Vec<u8>,
    /// Used entries it took.
    pub buffers: usize,
}

impl RxPacket {
    /// `num_buffers` from the header.
    pub fn num_buffers(&self) -> u16 {
        u16::from_le_bytes([self.hdr[10], self.hdr[11]])
    }
}

/// A net device driven through the hostile frontend.
pub struct NetDev {
    /// The frontend.
    pub fe: HostileFrontend,
    rx_bufs: HashMap<(usize, u16), u64>,
    req: Option<UnixStream>,
}

impl NetDev {
    /// Connects with one pair and the control queue (3 queues).
    pub fn connect(socket: &Path, setup: Setup) -> Self {
        NetDev {
            fe: HostileFrontend::connect(socket, setup),
            rx_bufs: HashMap::new(),
            req: None,
        }
    }

    /// The default setup: 3 queues, every feature, plus `BACKEND_REQ`.
    pub fn setup() -> Setup {
        let d = Setup::default();
        Setup {
            queues: 3,
            protocol: d.protocol | VhostUserProtocolFeatures::BACKEND_REQ,
            ..d
        }
    }

    /// See [`HostileFrontend::alloc`].
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.fe.alloc(len)
    }

    /// See [`HostileFrontend::buf`].
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        self.fe.buf(data)
    }

    /// See [`HostileFrontend::write_raw`].
    pub fn write_raw(&mut self, q: usize, descs: &[Desc]) -> u16 {
        self.fe.write_raw(q, descs)
    }

    /// Submits `descs` on the TX queue and waits for its used entry.
    pub fn tx_raw(&mut self, descs: &[Desc]) -> (u32, u32) {
        self.tx_raw_on(TXQ, descs)
    }

    /// Submits `descs` on TX queue `q` and waits for its used entry.
    pub fn tx_raw_on(&mut self, q: usize, descs: &[Desc]) -> (u32, u32) {
        self.fe.submit_raw(q, descs)
    }

    /// Sends `hdr` + `frame` in one descriptor.
    pub fn tx(&mut self, hdr: &[u8], frame: &[u8]) {
        self.tx_on(TXQ, hdr, frame);
    }

    /// Sends `hdr` + `frame` in one descriptor on TX queue `q`.
    pub fn tx_on(&mut self, q: usize, hdr: &[u8], frame: &[u8]) {
        let mut b = hdr.to_vec();
        b.extend_from_slice(frame);
        let at = self.buf(&b);
        self.tx_raw_on(
            q,
            &[Desc {
                addr: at,
                len: b.len() as u32,
                ..Desc::default()
            }],
        );
    }

    /// Posts `n` RX buffers of `size` bytes each (one descriptor each).
    pub fn post_rx(&mut self, n: usize, size: u32) {
        self.post_rx_on(RXQ, n, size);
    }

    /// Posts `n` RX buffers of `size` bytes on RX queue `q`.
    pub fn post_rx_on(&mut self, q: usize, n: usize, size: u32) {
        let mut heads = Vec::new();
        for _ in 0..n {
            let at = self.alloc(u64::from(size));
            let head = self.write_raw(
                q,
                &[Desc {
                    addr: at,
                    len: size,
                    flags: F_WRITE,
                    next: 0,
                }],
            );
            self.rx_bufs.insert((q, head), at);
            heads.push(head);
        }
        self.fe.submit_many(q, &heads);
    }

    /// Posts one raw RX chain (hostile shapes); returns its head.
    pub fn post_rx_raw(&mut self, descs: &[Desc]) -> u16 {
        let head = self.write_raw(RXQ, descs);
        self.fe.submit(RXQ, head);
        head
    }

    /// Waits for the next used RX entry: `(id, len)`.
    pub fn rx_used(&mut self, limit: Duration) -> Option<(u32, u32)> {
        self.fe.try_wait_used(RXQ, limit)
    }

    /// Waits for the next packet in buffers posted by [`post_rx`](Self::post_rx)
    /// (merged buffers are joined).
    pub fn recv(&mut self, limit: Duration) -> Option<RxPacket> {
        self.recv_on(RXQ, limit)
    }

    /// [`recv`](Self::recv) on RX queue `q`.
    pub fn recv_on(&mut self, q: usize, limit: Duration) -> Option<RxPacket> {
        let (id, len) = self.fe.try_wait_used(q, limit)?;
        let at = *self
            .rx_bufs
            .get(&(q, id as u16))
            .expect("used id of a posted buffer");
        let mut data = self.fe.mem.read(at, len as usize);
        assert!(
            data.len() >= HDR_LEN,
            "RX used length {len} shorter than the header"
        );
        let n = u16::from_le_bytes([data[10], data[11]]) as usize;
        for _ in 1..n {
            let (id, len) = self.fe.try_wait_used(q, limit).expect("next merged buffer");
            let at = *self.rx_bufs.get(&(q, id as u16)).expect("posted buffer");
            data.extend(self.fe.mem.read(at, len as usize));
        }
        Some(RxPacket {
            hdr: data[..HDR_LEN].to_vec(),
            frame: data[HDR_LEN..].to_vec(),
            buffers: n.max(1),
        })
    }

    /// Waits for a received test frame with `tag`, skipping others.
    pub fn recv_tagged(&mut self, tag: &[u8], limit: Duration) -> Option<RxPacket> {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let p = self.recv(left)?;
            if is_test_frame(&p.frame, tag) {
                return Some(p);
            }
        }
    }

    /// Sends a control command; returns the ack byte (or `None` if the
    /// device left it untouched).
    pub fn ctrl(&mut self, out: &[u8]) -> Option<u8> {
        self.ctrl_on(CTRLQ, out)
    }

    /// [`ctrl`](Self::ctrl) on control queue `q` (with `MQ`: `2 * pairs`).
    pub fn ctrl_on(&mut self, q: usize, out: &[u8]) -> Option<u8> {
        let cmd = self.buf(out);
        let ack = self.buf(&[0xa5]);
        let head = self.write_raw(
            q,
            &[
                Desc {
                    addr: cmd,
                    len: out.len() as u32,
                    ..Desc::default()
                },
                Desc {
                    addr: ack,
                    len: 1,
                    flags: F_WRITE,
                    next: 0,
                },
            ],
        );
        self.fe.submit(q, head);
        let (_, len) = self.fe.wait_used(q);
        (len == 1).then(|| self.fe.mem.read(ack, 1)[0])
    }

    /// Config space: `(mac, status, max_virtqueue_pairs, mtu)`.
    pub fn config(&mut self) -> ([u8; 6], u16, u16, u16) {
        let c = self.fe.config(0, 12);
        let le = |o: usize| u16::from_le_bytes([c[o], c[o + 1]]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&c[..6]);
        (mac, le(6), le(8), le(10))
    }

    /// Hands the backend a request channel (`SET_BACKEND_REQ_FD`).
    pub fn open_backend_req(&mut self) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        self.fe
            .fe
            .set_backend_request_fd(&theirs)
            .expect("SET_BACKEND_REQ_FD");
        self.req = Some(ours);
        // A request with a reply: the backend has handled the fd when it answers.
        let _ = self.config();
    }

    /// Waits for one message on the backend request channel; returns its
    /// request code.
    pub fn backend_request(&mut self, limit: Duration) -> Option<u32> {
        let s = self.req.as_mut().expect("open_backend_req first");
        s.set_read_timeout(Some(limit)).expect("timeout");
        let mut hdr = [0u8; 12];
        s.read_exact(&mut hdr).ok()?;
        let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let mut body = vec![0u8; size];
        s.read_exact(&mut body).ok()?;
        Some(u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]))
    }
}

/// A plain (no offload) 12-byte virtio-net header.
pub fn plain_hdr() -> [u8; HDR_LEN] {
    [0; HDR_LEN]
}

/// A header with the given fields (little-endian).
pub fn hdr(
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    cs_start: u16,
    cs_off: u16,
) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&cs_start.to_le_bytes());
    h[8..10].copy_from_slice(&cs_off.to_le_bytes());
    h
}
