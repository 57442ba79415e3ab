//! splitvm's vhost-user frontend (the device model and virtio-mmio
//! transport `splitvm run` uses) against a virtio-net backend nobody here
//! wrote: DPDK's vhost PMD in `dpdk-testpmd` (Debian package `dpdk-dev`),
//! io-forwarding between `net_vhost0` (the vhost-user server) and `net_tap0`
//! (a tap inside a network namespace the test creates). The test plays the
//! virtio-net driver as Linux's does: it accepts the features it knows,
//! sets up every queue they imply, sends the control-queue command Linux
//! sends at probe (and waits for its ack forever), then moves frames both
//! ways between the rings and an `AF_PACKET` socket on the tap, resets the
//! device and does it again. A real Linux guest runs the same setup in the
//! nested lab (`tests/lab/scenarios/dpdk`).

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use splitvm_tests::hostile::net::{is_test_frame, test_frame, NetNs, PacketSocket};
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::{poll_until, wait_for};
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::bus::BusDevice;
use vmm_core::devices::virtio::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use vmm_core::devices::virtio::F_VERSION_1;
use vmm_core::vhost_user::device::{DeviceKind, VhostUserDevice};
use vmm_core::vstate::memory::{create_guest_memory, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_MQ: u64 = 1 << 22;
/// What Linux's virtio_net accepts among the features that change the
/// queue layout or the config space (offloads are left out: the test does
/// not build checksummed or segmented frames).
const DRIVER_FEATURES: u64 =
    F_VERSION_1 | F_MTU | F_MAC | F_MRG_RXBUF | F_STATUS | F_CTRL_VQ | F_MQ;

const QSIZE: u16 = 64;
const RING_BASE: u64 = 0x10_0000;
const BUF_BASE: u64 = 0x100_0000;
const BUF_SIZE: u64 = 4096;
const HDR_LEN: usize = 12;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;
const TAP: &str = "dtap0";

/// One split ring laid out at a fixed place in guest memory.
#[derive(Clone, Copy)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    last_used: u16,
}

impl Ring {
    fn at(q: usize) -> Ring {
        let base = RING_BASE + q as u64 * 0x4000;
        Ring {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// Buffer `slot` of queue `q`: fixed per descriptor, so a used id names it.
    fn buf(q: usize, slot: u16) -> u64 {
        BUF_BASE + (q as u64 * u64::from(QSIZE) + u64::from(slot)) * BUF_SIZE
    }
}

/// The guest side of one virtio-net device.
struct Driver {
    t: Arc<Mutex<MmioTransport>>,
    mem: GuestMemory,
    rings: Vec<Ring>,
    features: u64,
}

impl Driver {
    fn r(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.lock().unwrap().read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&self, off: u64, v: u32) {
        self.t.lock().unwrap().write(off, &v.to_le_bytes());
    }

    fn config(&self, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.t.lock().unwrap().read(0x100 + off, &mut b);
        b
    }

    /// Feature negotiation and every queue the features imply, as Linux's
    /// virtio_net and virtio_mmio do. Returns (offered, accepted).
    fn init(&mut self) -> (u64, u64) {
        assert_eq!(self.r(0x000), 0x7472_6976, "magic");
        assert_eq!(self.r(0x008), 1, "net device");
        self.w(0x070, 0);
        self.w(0x070, STATUS_ACKNOWLEDGE);
        self.w(0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.w(0x014, 0);
        let lo = u64::from(self.r(0x010));
        self.w(0x014, 1);
        let offered = lo | (u64::from(self.r(0x010)) << 32);
        let want = offered & DRIVER_FEATURES;
        self.w(0x024, 0);
        self.w(0x020, want as u32);
        self.w(0x024, 1);
        self.w(0x020, (want >> 32) as u32);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.w(0x070, st);
        assert_eq!(self.r(0x070), st, "FEATURES_OK accepted");
        self.features = want;
        // One pair (Linux uses max_virtqueue_pairs only with MQ and
        // CTRL_VQ; one pair is what the backend serves here), then the
        // control queue right after the data queues.
        let queues = if want & F_CTRL_VQ != 0 { 3 } else { 2 };
        self.rings.clear();
        for q in 0..queues {
            let ring = Ring::at(q);
            self.w(0x030, q as u32);
            assert!(
                self.r(0x034) >= u32::from(QSIZE),
                "queue {q}: max size {} (the transport offers fewer queues than the features imply)",
                self.r(0x034)
            );
            self.w(0x038, u32::from(QSIZE));
            for (reg, addr) in [(0x080, ring.desc), (0x090, ring.avail), (0x0a0, ring.used)] {
                self.w(reg, addr as u32);
                self.w(reg + 4, (addr >> 32) as u32);
            }
            for a in [ring.desc, ring.avail, ring.used] {
                self.mem.write_slice(&[0u8; 4096], GuestAddress(a)).unwrap();
            }
            self.w(0x044, 1);
            self.rings.push(ring);
        }
        self.w(0x070, st | STATUS_DRIVER_OK);
        assert_eq!(
            self.r(0x070),
            st | STATUS_DRIVER_OK,
            "device started (backend took the rings)"
        );
        (offered, want)
    }

    fn desc(&self, q: usize, slot: u16, addr: u64, len: u32, flags: u16) {
        let base = self.rings[q].desc + u64::from(slot) * 16;
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(base)).unwrap();
        m.write_obj(len, GuestAddress(base + 8)).unwrap();
        m.write_obj(flags, GuestAddress(base + 12)).unwrap();
        m.write_obj(0u16, GuestAddress(base + 14)).unwrap();
    }

    /// Puts the one-descriptor chain `slot` in the avail ring (no kick).
    fn publish(&mut self, q: usize, slot: u16) {
        let ring = &mut self.rings[q];
        let at = ring.avail + 4 + u64::from(ring.next_avail % QSIZE) * 2;
        self.mem.write_obj(slot, GuestAddress(at)).unwrap();
        ring.next_avail = ring.next_avail.wrapping_add(1);
        self.mem
            .write_obj(ring.next_avail, GuestAddress(ring.avail + 2))
            .unwrap();
    }

    fn kick(&self, q: usize) {
        self.w(0x050, q as u32);
    }

    /// The next used entry of queue `q`: (id, len).
    fn used(&mut self, q: usize, limit: Duration) -> Option<(u16, u32)> {
        let mem = self.mem.clone();
        let ring = self.rings[q];
        let got = poll_until(limit, || {
            let idx: u16 = mem.read_obj(GuestAddress(ring.used + 2)).unwrap();
            (idx != ring.last_used).then_some(())
        });
        got?;
        let e = ring.used + 4 + u64::from(ring.last_used % QSIZE) * 8;
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.rings[q].last_used = ring.last_used.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Posts RX buffer `slot` (one writable descriptor).
    fn post_rx(&mut self, slot: u16) {
        self.desc(
            RX,
            slot,
            Ring::buf(RX, slot),
            BUF_SIZE as u32,
            VIRTQ_DESC_F_WRITE,
        );
        self.publish(RX, slot);
    }

    /// Sends `frame` behind a zeroed header; waits for its used entry.
    fn send(&mut self, frame: &[u8]) {
        let slot = self.rings[TX].next_avail % QSIZE;
        let at = Ring::buf(TX, slot);
        let mut b = vec![0u8; HDR_LEN];
        b.extend_from_slice(frame);
        self.mem.write_slice(&b, GuestAddress(at)).unwrap();
        self.desc(TX, slot, at, b.len() as u32, 0);
        self.publish(TX, slot);
        self.kick(TX);
        let (id, _) = self
            .used(TX, Duration::from_secs(20))
            .expect("the backend returns the TX buffer");
        assert_eq!(id, slot, "TX used id");
    }

    /// The next frame in the RX queue; the buffer is posted again.
    fn recv(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let (id, len) = self.used(RX, limit)?;
        assert!(
            len as usize >= HDR_LEN && u64::from(len) <= BUF_SIZE,
            "RX len {len}"
        );
        let mut b = vec![0u8; len as usize];
        self.mem
            .read_slice(&mut b, GuestAddress(Ring::buf(RX, id)))
            .unwrap();
        if self.features & F_MRG_RXBUF != 0 {
            assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1, "num_buffers");
        }
        self.post_rx(id);
        self.kick(RX);
        Some(b.split_off(HDR_LEN))
    }

    /// A frame carrying `tag`, skipping others (the namespace's own traffic).
    fn recv_tagged(&mut self, tag: &[u8], limit: Duration) -> Vec<u8> {
        let end = std::time::Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.recv(left) {
                Some(f) if is_test_frame(&f, tag) => return f,
                Some(_) => {}
                None => panic!(
                    "no frame tagged {:?} in the RX queue",
                    String::from_utf8_lossy(tag)
                ),
            }
        }
    }

    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET 1`, which Linux sends at probe
    /// when MQ and CTRL_VQ are negotiated, then spins until it is acked.
    fn ctrl_set_pairs(&mut self, limit: Duration) -> Option<u8> {
        let cmd = Ring::buf(CTRL, 0);
        let ack = cmd + 64;
        self.mem
            .write_slice(&[4, 0, 1, 0], GuestAddress(cmd))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(ack)).unwrap();
        let base = self.rings[CTRL].desc;
        let m = &self.mem;
        m.write_obj(cmd, GuestAddress(base)).unwrap();
        m.write_obj(4u32, GuestAddress(base + 8)).unwrap();
        m.write_obj(1u16, GuestAddress(base + 12)).unwrap(); // NEXT
        m.write_obj(1u16, GuestAddress(base + 14)).unwrap();
        m.write_obj(ack, GuestAddress(base + 16)).unwrap();
        m.write_obj(1u32, GuestAddress(base + 24)).unwrap();
        m.write_obj(VIRTQ_DESC_F_WRITE, GuestAddress(base + 28))
            .unwrap();
        self.publish(CTRL, 0);
        self.kick(CTRL);
        self.used(CTRL, limit)?;
        Some(self.mem.read_obj(GuestAddress(ack)).unwrap())
    }
}

/// `dpdk-testpmd` in `ns`: vhost-user server on `sock`, tap `dtap0`, io
/// forwarding between them. `--no-huge` (no hugepages needed), two lcores
/// on one CPU at the lowest priority (the forwarding lcore busy-polls),
/// and a stats period so it keeps running with stdin at EOF; SIGTERM ends
/// it with its forwarding statistics.
fn spawn_testpmd(ns: &NetNs, sock: &Path) -> ChildGuard {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        "nice",
        "-n",
        "19",
        "dpdk-testpmd",
    ])
    .args([
        "--no-shconf",
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--no-telemetry",
    ])
    .arg("--lcores")
    .arg(format!("0@{cpu},1@{cpu}", cpu = first_allowed_cpu()))
    .args(["--file-prefix", &ns.name])
    .arg("--vdev")
    .arg(format!("net_vhost0,iface={},queues=1", sock.display()))
    .arg("--vdev")
    .arg(format!("net_tap0,iface={TAP}"))
    .args(["--log-level", "lib.vhost.config:info", "--"])
    .args([
        "--forward-mode=io",
        "--auto-start",
        "--total-num-mbufs",
        "8192",
    ])
    .args(["--stats-period", "3600"]);
    ChildGuard::spawn("dpdk-testpmd", cmd)
}

/// The EAL's runtime directory for one `--file-prefix` (empty with
/// `--no-shconf --no-telemetry`), removed on drop, also after a failure.
struct RuntimeDir(String);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lowest CPU this process may run on (testpmd's lcores go there).
fn first_allowed_cpu() -> usize {
    // SAFETY: all-zero is a valid cpu_set_t; sched_getaffinity writes at
    // most size_of::<cpu_set_t>() bytes into it; pid 0 is this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set filled in above.
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .expect("some CPU is allowed")
}

fn driver_for(sock: &Path) -> Driver {
    let (mem, _memfd) = create_guest_memory(64 << 20).expect("guest memory");
    let dev = VhostUserDevice::connect(DeviceKind::Net, sock, mem.clone(), Duration::from_secs(30))
        .expect("connect to testpmd's vhost-user socket");
    let kicks = (0..8)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let call = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    Driver {
        t: Arc::new(Mutex::new(MmioTransport::new(Box::new(dev), kicks, call))),
        mem,
        rings: Vec::new(),
        features: 0,
    }
}

/// Frames both ways: one each, then a burst from the guest.
fn traffic(d: &mut Driver, wire: &PacketSocket, round: u32) {
    for slot in 0..32 {
        d.post_rx(slot);
    }
    d.kick(RX);
    let out_tag = format!("svm-out-{round}");
    let frame = test_frame(out_tag.as_bytes(), 1000);
    d.send(&frame);
    let seen = wire
        .recv(Duration::from_secs(20), |f| {
            is_test_frame(f, out_tag.as_bytes())
        })
        .expect("the guest's frame comes out of the tap");
    assert_eq!(seen, frame, "frame on the wire");

    let in_tag = format!("svm-in-{round}");
    let frame = test_frame(in_tag.as_bytes(), 1200);
    wire.send(&frame).expect("send on the tap");
    let got = d.recv_tagged(in_tag.as_bytes(), Duration::from_secs(20));
    assert_eq!(got, frame, "frame in the guest's RX queue");

    for i in 0..32u32 {
        let tag = format!("svm-burst-{round}-{i}");
        d.send(&test_frame(tag.as_bytes(), 60 + i as usize * 40));
        wire.recv(Duration::from_secs(20), |f| {
            is_test_frame(f, tag.as_bytes())
        })
        .unwrap_or_else(|| panic!("burst frame {i} of round {round} on the wire"));
    }
}

/// Port `port`'s RX-packets from testpmd's final forwarding statistics.
fn forward_rx_packets(lines: &[String], port: u32) -> Option<u64> {
    let head = format!("Forward statistics for port {port} ");
    let at = lines.iter().position(|l| l.contains(&head))?;
    let l = lines.get(at + 1)?;
    let mut w = l.split_whitespace();
    while let Some(x) = w.next() {
        if x == "RX-packets:" {
            return w.next()?.parse().ok();
        }
    }
    None
}

#[test]
fn frontend_drives_dpdk_testpmd_vhost_pmd() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhu.sock");
    let ns = NetNs::new("dpdk");
    let _rundir = RuntimeDir(format!("/var/run/dpdk/{}", ns.name));
    let pmd = spawn_testpmd(&ns, &sock);
    wait_for(
        "testpmd's vhost-user socket",
        Duration::from_secs(60),
        || sock.exists().then_some(()),
    );
    wait_for("testpmd's tap", Duration::from_secs(30), || {
        ns.has_link(TAP).then_some(())
    });
    ns.exec(&["ip", "link", "set", TAP, "up"]);
    let wire = PacketSocket::open(&ns, TAP);

    let mut d = driver_for(&sock);
    let (offered, accepted) = d.init();
    eprintln!("testpmd offers {offered:#x}; the driver accepted {accepted:#x}");
    if accepted & F_MAC != 0 {
        let mac = d.config(0, 6);
        assert!(
            mac != [0; 6] && mac[0] & 1 == 0,
            "MAC {mac:02x?} from the config space"
        );
    }
    if accepted & F_STATUS != 0 {
        assert_eq!(d.config(6, 2)[0] & 1, 1, "link up in the config space");
    }
    if accepted & F_MTU != 0 {
        let mtu = u16::from_le_bytes(d.config(10, 2).try_into().unwrap());
        assert!(mtu >= 68, "MTU {mtu} from the config space");
    }
    if accepted & F_CTRL_VQ != 0 && accepted & F_MQ != 0 {
        assert_eq!(
            d.ctrl_set_pairs(Duration::from_secs(10)),
            Some(0),
            "the control queue answers (Linux waits for it forever)"
        );
    }
    traffic(&mut d, &wire, 0);

    // Driver reset (GET_VRING_BASE), then a new driver instance.
    d.w(0x070, 0);
    assert_eq!(d.r(0x070), 0);
    let (_, again) = d.init();
    assert_eq!(again, accepted);
    traffic(&mut d, &wire, 1);

    for l in pmd
        .dump()
        .lines()
        .filter(|l| l.contains("negotiated") || l.contains("features"))
    {
        eprintln!("{l}");
    }
    pmd.signal(libc::SIGTERM);
    let (st, lines) = pmd.finish(Duration::from_secs(60));
    assert!(st.success(), "testpmd exit: {st:?}");
    let vhost_rx = forward_rx_packets(&lines, 0).expect("testpmd's statistics for port 0");
    assert!(
        vhost_rx >= 2 * 33,
        "testpmd received {vhost_rx} frames from the guest"
    );
}
