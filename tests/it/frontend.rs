//! splitvm's vhost-user frontend and virtio-mmio transport against real
//! backends on this host: `qemu-storage-daemon` (a backend nobody here
//! wrote) and `splitvm-blk`. The test plays the guest driver: it programs
//! the transport's registers, lays a split ring in the VMM's memfd guest
//! memory and checks what lands in the image file.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use splitvm_tests::hostile::blk::spawn_blk;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;
use vm_memory::{Bytes, GuestAddress};
use vmm_core::devices::bus::BusDevice;
use vmm_core::devices::virtio::mmio::{
    MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use vmm_core::devices::virtio::F_VERSION_1;
use vmm_core::vhost_user::device::{DeviceKind, VhostUserDevice};
use vmm_core::vhost_user::monitor::{Monitor, ReconnectPolicy};
use vmm_core::vstate::memory::{create_guest_memory, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QSIZE: u16 = 16;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_1000;
const USED: u64 = 0x10_2000;
const HDR: u64 = 0x20_0000;
const DATA: u64 = 0x20_1000;
const STATUS: u64 = 0x21_0000;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// The guest side: registers through the bus interface, rings in memory.
pub(crate) struct Driver {
    pub(crate) t: Arc<Mutex<MmioTransport>>,
    mem: GuestMemory,
    call: Arc<EventFd>,
    next_avail: u16,
}

impl Driver {
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.lock().unwrap().read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(&mut self, off: u64, v: u32) {
        self.t.lock().unwrap().write(off, &v.to_le_bytes());
    }

    /// Feature negotiation and queue 0 setup, as Linux's virtio_mmio does.
    pub(crate) fn init(&mut self) -> u64 {
        assert_eq!(self.r(0x000), 0x7472_6976, "magic");
        assert_eq!(self.r(0x004), 2, "modern virtio-mmio only");
        assert_eq!(self.r(0x008), 2, "block device");
        self.w(0x070, 0);
        self.w(0x070, STATUS_ACKNOWLEDGE);
        self.w(0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.w(0x014, 0);
        let lo = u64::from(self.r(0x010));
        self.w(0x014, 1);
        let offered = lo | (u64::from(self.r(0x010)) << 32);
        assert_ne!(offered & F_VERSION_1, 0, "VERSION_1 offered: {offered:#x}");
        let want = offered & (F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
        self.w(0x024, 0);
        self.w(0x020, want as u32);
        self.w(0x024, 1);
        self.w(0x020, (want >> 32) as u32);
        let st = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.w(0x070, st);
        assert_eq!(self.r(0x070), st, "FEATURES_OK accepted");
        self.w(0x030, 0);
        assert!(self.r(0x034) >= u32::from(QSIZE), "queue max size");
        self.w(0x038, u32::from(QSIZE));
        for (lo, addr) in [(0x080, DESC), (0x090, AVAIL), (0x0a0, USED)] {
            self.w(lo, addr as u32);
            self.w(lo + 4, (addr >> 32) as u32);
        }
        for a in [DESC, AVAIL, USED] {
            self.mem.write_slice(&[0u8; 4096], GuestAddress(a)).unwrap();
        }
        self.next_avail = 0;
        self.w(0x044, 1);
        self.w(0x070, st | STATUS_DRIVER_OK);
        assert_eq!(self.r(0x070), st | STATUS_DRIVER_OK, "device started");
        // Capacity in 512-byte sectors, from the backend's config space.
        let mut cap = [0u8; 8];
        self.t.lock().unwrap().read(0x100, &mut cap);
        u64::from_le_bytes(cap)
    }

    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = DESC + u64::from(i) * 16;
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(base)).unwrap();
        m.write_obj(len, GuestAddress(base + 8)).unwrap();
        m.write_obj(flags, GuestAddress(base + 12)).unwrap();
        m.write_obj(next, GuestAddress(base + 14)).unwrap();
    }

    /// Submits a 3-descriptor blk request and waits for its completion.
    pub(crate) fn request(&mut self, kind: u32, sector: u64, data: &mut [u8]) -> u8 {
        self.submit(kind, sector, data);
        self.complete(kind, data, Duration::from_secs(10))
    }

    /// Puts a request in the ring and notifies the device.
    pub(crate) fn submit(&mut self, kind: u32, sector: u64, data: &[u8]) {
        self.put(kind, sector, data);
        // QueueNotify: in a VM this is an ioeventfd; the transport forwards it.
        self.w(0x050, 0);
    }

    /// Puts a request in the ring without notifying the device.
    fn put(&mut self, kind: u32, sector: u64, data: &[u8]) {
        let m = self.mem.clone();
        m.write_obj(kind, GuestAddress(HDR)).unwrap();
        m.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        m.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        m.write_obj(0xa5u8, GuestAddress(STATUS)).unwrap();
        let data_flags = if kind == 0 { VIRTQ_DESC_F_WRITE } else { 0 };
        if kind == 1 {
            m.write_slice(data, GuestAddress(DATA)).unwrap();
        }
        self.desc(0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
        if data.is_empty() {
            self.desc(1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
        } else {
            self.desc(
                1,
                DATA,
                data.len() as u32,
                data_flags | VIRTQ_DESC_F_NEXT,
                2,
            );
            self.desc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
        }
        let slot = u64::from(self.next_avail % QSIZE);
        m.write_obj(0u16, GuestAddress(AVAIL + 4 + slot * 2))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        m.write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Waits until the used ring catches up with what was submitted.
    pub(crate) fn complete(&mut self, kind: u32, data: &mut [u8], limit: Duration) -> u8 {
        let m = self.mem.clone();
        let want = self.next_avail;
        let call = self.call.clone();
        wait_for("the used ring to advance", limit, || {
            let _ = call.read();
            (m.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() == want).then_some(())
        });
        assert_ne!(self.r(0x060) & 1, 0, "InterruptStatus reports VRING");
        if kind == 0 {
            m.read_slice(data, GuestAddress(DATA)).unwrap();
        }
        m.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

pub(crate) fn driver_for(socket: &Path) -> Driver {
    let (mem, _memfd) = create_guest_memory(64 << 20).expect("guest memory");
    let dev = VhostUserDevice::connect(
        DeviceKind::Block,
        socket,
        mem.clone(),
        Duration::from_secs(20),
    )
    .expect("connect to the backend");
    let kicks = (0..4)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    let call = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    Driver {
        t: Arc::new(Mutex::new(MmioTransport::new(
            Box::new(dev),
            kicks,
            call.clone(),
        ))),
        mem,
        call,
        next_avail: 0,
    }
}

/// Writes, reads back, flushes, resets the device and does it again.
fn exercise(d: &mut Driver, image: &Path) {
    let cap = d.init();
    assert_eq!(cap, 16 << 20 >> 9, "capacity from the backend");
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(d.request(1, 8, &mut pattern.clone()), 0, "write ok");
    let mut back = vec![0u8; 4096];
    assert_eq!(d.request(0, 8, &mut back), 0, "read ok");
    assert_eq!(back, pattern);
    assert_eq!(d.request(4, 0, &mut []), 0, "flush ok");
    let on_disk = std::fs::read(image).unwrap();
    assert_eq!(&on_disk[4096..8192], &pattern[..], "image holds the write");

    // Guest reset: GET_VRING_BASE stops the ring; a new driver instance
    // starts over from index 0 and is served again.
    d.w(0x070, 0);
    assert_eq!(d.r(0x070), 0);
    d.init();
    let second: Vec<u8> = vec![0x5a; 512];
    assert_eq!(
        d.request(1, 100, &mut second.clone()),
        0,
        "write after reset"
    );
    let on_disk = std::fs::read(image).unwrap();
    assert_eq!(&on_disk[100 * 512..101 * 512], &second[..]);
}

pub(crate) fn image(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("disk.img");
    std::fs::File::create(&p)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    p
}

/// Starts qemu-storage-daemon exporting `img` on `sock`, with a QMP monitor on `qmp`.
fn spawn_qsd(img: &Path, sock: &Path, qmp: &Path) -> ChildGuard {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--chardev")
        .arg(format!(
            "socket,id=m,path={},server=on,wait=off",
            qmp.display()
        ))
        .arg("--monitor")
        .arg("chardev=m");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            img.display()
        ))
        .arg("--blockdev")
        .arg("driver=raw,node-name=d,file=f")
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,addr.type=unix,addr.path={},node-name=d,writable=on",
            sock.display()
        ));
    let qsd = ChildGuard::spawn("qemu-storage-daemon", cmd);
    wait_for("the qsd socket", Duration::from_secs(20), || {
        sock.exists().then_some(())
    });
    qsd
}

#[test]
fn frontend_drives_qemu_storage_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let sock = dir.path().join("qsd.sock");
    let _qsd = spawn_qsd(&img, &sock, &dir.path().join("qmp.sock"));
    let mut d = driver_for(&sock);
    exercise(&mut d, &img);
}

#[test]
fn frontend_drives_splitvm_blk() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (_blk, sock) = spawn_blk(dir.path(), &img, &[]);
    wait_for("the splitvm-blk socket", Duration::from_secs(20), || {
        sock.exists().then_some(())
    });
    let mut d = driver_for(&sock);
    exercise(&mut d, &img);
}

/// kill -9 the backend between requests and while a request waits: the
/// monitor reconnects to the restarted backend on the same socket, replays
/// the device state, and the queued request completes.
#[test]
fn frontend_survives_backend_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (img, sock, mut blk, mut d, _mon) = supervised(dir.path());
    for round in 0..5u8 {
        let data = vec![round; 4096];
        assert_eq!(d.request(1, u64::from(round) * 8, &mut data.clone()), 0);
        blk.signal(libc::SIGKILL);
        blk.wait_exit(Duration::from_secs(10));
        // Submitted while no backend runs: the kick waits in the eventfd.
        let later = vec![round + 100; 4096];
        d.submit(1, 1000 + u64::from(round) * 8, &later);
        let (b, s2) = spawn_blk(dir.path(), &img, &[]);
        assert_eq!(s2, sock);
        blk = b;
        assert_eq!(
            d.complete(1, &mut [], Duration::from_secs(20)),
            0,
            "round {round}"
        );
        let on_disk = std::fs::read(&img).unwrap();
        let at = |s: u64| &on_disk[(s * 512) as usize..(s * 512 + 4096) as usize];
        assert_eq!(at(u64::from(round) * 8), &data[..]);
        assert_eq!(at(1000 + u64::from(round) * 8), &later[..]);
    }
    let reconnects = vmm_core::vhost_user::monitor::with_device(&d.t, |v| v.reconnects());
    assert_eq!(reconnects, Some(5));
}

/// splitvm-blk on an image in `dir`, a driver that set the device up, and
/// the monitor thread that reconnects it.
fn supervised(
    dir: &Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    ChildGuard,
    Driver,
    Monitor,
) {
    let img = image(dir);
    let (blk, sock) = spawn_blk(dir, &img, &[]);
    wait_for("the splitvm-blk socket", Duration::from_secs(20), || {
        sock.exists().then_some(())
    });
    let mut d = driver_for(&sock);
    let mon = Monitor::start("blk0".into(), d.t.clone(), ReconnectPolicy::Forever).unwrap();
    d.init();
    (img, sock, blk, d, mon)
}

/// A backend can die after reading the guest's kick but before popping the
/// request, and the guest (with `EVENT_IDX`) does not kick again; or after
/// writing the used ring but before raising the interrupt. The VMM kicks
/// every queue and raises the interrupt once after each restore, so the
/// next backend serves the request and the guest looks at the used ring.
#[test]
fn restore_recovers_a_kick_and_an_interrupt_the_dead_backend_swallowed() {
    use vmm_core::vhost_user::monitor::with_device;
    let dir = tempfile::tempdir().unwrap();
    let (img, _sock, mut blk, mut d, _mon) = supervised(dir.path());
    for round in 0..3u8 {
        blk.signal(libc::SIGKILL);
        blk.wait_exit(Duration::from_secs(10));
        // The kick that went with this request died with the old backend.
        let data = vec![round + 1; 4096];
        d.put(1, 2000 + u64::from(round) * 8, &data);
        while d.call.read().is_ok() {}
        let (b, _) = spawn_blk(dir.path(), &img, &[]);
        blk = b;
        let want = u64::from(round) + 1;
        wait_for("the restore", Duration::from_secs(20), || {
            (with_device(&d.t, |v| v.reconnects()) == Some(want)).then_some(())
        });
        assert_eq!(
            d.complete(1, &mut [], Duration::from_secs(20)),
            0,
            "round {round}: the request behind the lost kick completes"
        );
        let on_disk = std::fs::read(&img).unwrap();
        let at = (2000 + u64::from(round) * 8) as usize * 512;
        assert_eq!(&on_disk[at..at + 4096], &data[..]);
    }
    // The interrupt the restore raises, with nothing new in the used ring.
    blk.signal(libc::SIGKILL);
    blk.wait_exit(Duration::from_secs(10));
    while d.call.read().is_ok() {}
    let (_blk, _) = spawn_blk(dir.path(), &img, &[]);
    let call = d.call.clone();
    wait_for(
        "an interrupt after the restore",
        Duration::from_secs(20),
        || call.read().ok(),
    );
    assert_eq!(with_device(&d.t, |v| v.reconnects()), Some(4));
}

/// Measured, not asserted: through splitvm's own frontend and monitor
/// thread, the time from a restarted splitvm-blk's socket appearing to the
/// completion of the guest request that waited for it.
#[test]
fn frontend_restart_timing() {
    use splitvm_tests::stats::summary;
    const RESTARTS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let (img, sock, mut blk, mut d, _mon) = supervised(dir.path());
    let mut times = Vec::new();
    for k in 0..RESTARTS {
        blk.signal(libc::SIGKILL);
        blk.wait_exit(Duration::from_secs(10));
        // A stale socket file outlives a killed backend.
        let _ = std::fs::remove_file(&sock);
        d.submit(1, 4000 + 8 * k as u64, &[k as u8; 4096]);
        let (b, _) = spawn_blk(dir.path(), &img, &[]);
        blk = b;
        let ready = spin_until("the new socket", || sock.exists());
        let want = d.next_avail;
        let used = spin_until("the request's completion", || {
            d.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() == want
        });
        times.push(used - ready);
        assert_eq!(d.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    }
    eprintln!(
        "splitvm frontend: new backend socket -> first completed request over {RESTARTS} restarts: {}",
        summary(&mut times)
    );
}

/// When `cond` first held, polled every 50 µs (for timings; 20 s limit).
fn spin_until(what: &str, mut cond: impl FnMut() -> bool) -> std::time::Instant {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return std::time::Instant::now();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no {what}");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Swap: the device moves from one splitvm-blk process to another serving
/// the same image; requests before and after land, the old backend sees
/// its frontend go.
#[test]
fn swap_moves_a_running_device_to_another_backend() {
    use vmm_core::vhost_user::frontend::BackendConnection;
    use vmm_core::vhost_user::monitor::with_device;
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (mut a, sock_a) = spawn_blk(&a_dir, &img, &[]);
    let (_b, sock_b) = spawn_blk(&b_dir, &img, &[]);
    for s in [&sock_a, &sock_b] {
        wait_for("a splitvm-blk socket", Duration::from_secs(20), || {
            s.exists().then_some(())
        });
    }
    let mut d = driver_for(&sock_a);
    let _mon = Monitor::start("blk0".into(), d.t.clone(), ReconnectPolicy::Forever).unwrap();
    d.init();
    let first = vec![0x11u8; 4096];
    assert_eq!(d.request(1, 0, &mut first.clone()), 0);

    let conn = BackendConnection::connect(&sock_b, Duration::from_secs(5)).unwrap();
    let old = with_device(&d.t, |v| v.swap(conn)).unwrap().unwrap();
    assert_eq!(old, sock_a);
    a.wait_for_line("frontend disconnected", Duration::from_secs(10));
    let second = vec![0x22u8; 4096];
    assert_eq!(
        d.request(1, 8, &mut second.clone()),
        0,
        "served by the new backend"
    );
    let mut back = vec![0u8; 4096];
    assert_eq!(d.request(0, 0, &mut back), 0);
    assert_eq!(back, first, "the new backend sees what the old one wrote");
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(&on_disk[4096..8192], &second[..]);
    assert_eq!(
        with_device(&d.t, |v| v.socket().to_path_buf()).unwrap(),
        sock_b
    );
}
