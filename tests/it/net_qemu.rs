//! splitvm-net under a real frontend and a real Linux driver: QEMU 7.2
//! (`-M microvm`, TCG) with Debian's kernel and the level-2 initramfs from
//! `scripts/guest-assets`, one `virtio-net-device` on a `vhost-user`
//! netdev served by splitvm-net, whose tap sits in a network namespace the
//! test creates (with an address; nothing leaves the namespace). The guest
//! checks MAC and MTU, pings the tap side (ARP resolved), and moves several
//! MiB each way over TCP with busybox `nc`; both sides compare md5sums.
//!
//! The same guest then runs once more with QEMU's in-process
//! `-netdev tap` for a throughput comparison (printed, not asserted).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use splitvm_tests::hostile::net::{spawn_net, NetNs};
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::qemu::{boot, guest_assets, microvm};
use splitvm_tests::wait::wait_for;

const MAC: &str = "52:54:00:12:34:57";
const MTU: &str = "1400";
const MIB: usize = 1 << 20;
/// Bytes moved each way.
const XFER: usize = 8 * MIB;

/// The L2 initramfs plus an overlay holding `/scenario.sh`.
fn initrd(assets: &Path, dir: &Path, scenario: &str) -> PathBuf {
    let stage = dir.join("overlay");
    fs::create_dir_all(&stage).unwrap();
    fs::write(stage.join("scenario.sh"), scenario).unwrap();
    let out = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"scenario.sh\n")?;
            c.wait_with_output()
        })
        .expect("cpio (package cpio)");
    assert!(out.status.success(), "cpio failed");
    let mut img = fs::read(assets.join("l2-initramfs.cpio")).unwrap();
    img.extend(out.stdout);
    let p = dir.join("initrd.cpio");
    fs::write(&p, img).unwrap();
    p
}

fn scenario(host_ip: &str, guest_ip: &str) -> String {
    format!(
        r#"
now() {{ cut -d' ' -f1 /proc/uptime; }}
ms() {{ awk -v a="$1" -v b="$2" 'BEGIN {{ printf "%d", (b - a) * 1000 }}'; }}
ip link set eth0 up
ip addr add {guest_ip}/24 dev eth0
echo "RESULT mac=$(cat /sys/class/net/eth0/address)"
echo "RESULT mtu=$(cat /sys/class/net/eth0/mtu)"
echo "RESULT carrier=$(cat /sys/class/net/eth0/carrier)"
ok=fail
for i in $(seq 1 30); do
	if ping -c 1 -W 1 {host_ip} >/dev/null 2>&1; then ok=ok; break; fi
done
echo "RESULT ping_first=$ok"
ping -c 3 -W 2 {host_ip} >/tmp/ping 2>&1 && echo "RESULT ping=ok" || {{ echo "RESULT ping=fail"; cat /tmp/ping; }}
echo "RESULT arp=$(ip neigh show {host_ip} | awk '{{ for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i + 1) }}')"
dd if=/dev/urandom of=/tmp/out bs=65536 count={blocks} 2>/dev/null
echo "RESULT tx_md5=$(md5sum /tmp/out | cut -d' ' -f1)"
t0=$(now)
nc {host_ip} 5001 </tmp/out
t1=$(now)
echo "RESULT tx_ms=$(ms $t0 $t1)"
t0=$(now)
nc {host_ip} 5002 >/tmp/in
t1=$(now)
echo "RESULT rx_ms=$(ms $t0 $t1)"
echo "RESULT rx_bytes=$(wc -c </tmp/in)"
echo "RESULT rx_md5=$(md5sum /tmp/in | cut -d' ' -f1)"
"#,
        blocks = XFER / 65536
    )
}

fn md5(data: &[u8], dir: &Path, name: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    let out = Command::new("md5sum").arg(&p).output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// What the host side saw: bytes received on 5001 and the seconds they took.
struct HostSide {
    received: Vec<u8>,
    rx_secs: f64,
    tx_secs: f64,
}

/// Listens on port 5001 (sink) and 5002 (sends `data`) inside `ns`, one
/// connection each, on a thread that entered the namespace.
fn host_side(ns: &NetNs, data: Vec<u8>) -> JoinHandle<HostSide> {
    let path = format!("/run/netns/{}", ns.name);
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let nsf = fs::File::open(&path).unwrap();
        // SAFETY: setns on an open netns fd; it affects only this thread.
        let r = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        let sink = TcpListener::bind(("0.0.0.0", 5001)).unwrap();
        let source = TcpListener::bind(("0.0.0.0", 5002)).unwrap();
        tx.send(()).unwrap();
        let (mut c, _) = sink.accept().unwrap();
        let t = Instant::now();
        let mut received = Vec::new();
        c.read_to_end(&mut received).unwrap();
        let rx_secs = t.elapsed().as_secs_f64();
        drop(c);
        let (mut c, _) = source.accept().unwrap();
        let t = Instant::now();
        c.write_all(&data).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        // Wait for the guest to close: all data is then in the guest.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        HostSide {
            received,
            rx_secs,
            tx_secs: t.elapsed().as_secs_f64(),
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("listeners bound");
    h
}

fn packets(ns: &NetNs, ifname: &str) -> (u64, u64) {
    let get = |f: &str| -> u64 {
        ns.exec(&["cat", &format!("/sys/class/net/{ifname}/statistics/{f}")])
            .trim()
            .parse()
            .unwrap()
    };
    (get("rx_packets"), get("tx_packets"))
}

enum Netdev {
    VhostUser(PathBuf),
    Tap(&'static str),
}

struct Outcome {
    results: Vec<(String, String)>,
    lines: Vec<String>,
    host: HostSide,
    pkts: u64,
}

fn run_guest(
    assets: &Path,
    dir: &Path,
    ns: &NetNs,
    netdev: Netdev,
    tap: &str,
    data: &[u8],
) -> Outcome {
    let host_ip = "10.77.0.1";
    let rd = initrd(assets, dir, &scenario(host_ip, "10.77.0.2"));
    let mut cmd = microvm(&["ip", "netns", "exec", &ns.name]);
    match &netdev {
        Netdev::VhostUser(sock) => {
            cmd.arg("-chardev")
                .arg(format!("socket,id=c0,path={}", sock.display()))
                .args(["-netdev", "vhost-user,id=n0,chardev=c0"]);
        }
        Netdev::Tap(name) => {
            cmd.arg("-netdev")
                .arg(format!("tap,id=n0,ifname={name},script=no,downscript=no"));
        }
    }
    cmd.arg("-device").arg(format!(
        "virtio-net-device,netdev=n0,mac={MAC},host_mtu={MTU}"
    ));
    boot(&mut cmd, assets, &rd);
    let host = host_side(ns, data.to_vec());
    let before = packets(ns, tap);
    let mut qemu = ChildGuard::spawn("qemu", cmd);
    let done = qemu.wait_for_line("SPLITVM-L2-DONE", Duration::from_secs(300));
    let st = qemu.wait_exit(Duration::from_secs(60));
    let after = packets(ns, tap);
    let lines: Vec<String> = qemu.dump().lines().map(str::to_string).collect();
    assert!(st.success(), "qemu exit status {st}");
    assert!(done.contains("rc=0"), "scenario failed: {lines:#?}");
    let host = host.join().expect("host side");
    let results = lines
        .iter()
        .filter_map(|l| l.split_once("RESULT "))
        .filter_map(|(_, kv)| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    Outcome {
        results,
        lines,
        host,
        pkts: (after.0 - before.0) + (after.1 - before.1),
    }
}

impl Outcome {
    fn get(&self, k: &str) -> &str {
        self.results
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("guest reported no {k}: {:#?}", self.lines))
    }

    fn mbits(&self) -> (f64, f64) {
        let bits = (XFER * 8) as f64 / 1e6;
        (bits / self.host.rx_secs, bits / self.host.tx_secs)
    }

    fn pps(&self) -> f64 {
        self.pkts as f64 / (self.host.rx_secs + self.host.tx_secs)
    }
}

fn pattern() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..XFER)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn setup_ns(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns
}

#[test]
fn net_qemu_linux_guest_ping_tcp_mac_mtu() {
    let assets = guest_assets();
    let dir = tempfile::tempdir().unwrap();
    let data = pattern();
    let want_rx_md5 = md5(&data, dir.path(), "pattern.bin");

    // splitvm-net.
    let ns = setup_ns("q");
    let (backend, sock) = spawn_net(dir.path(), &ns, "tap0", &["--mac", MAC, "--mtu", MTU]);
    wait_for("backend socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    ns.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "tap0"]);
    ns.exec(&["ip", "link", "set", "tap0", "up"]);
    let tap_mac = ns
        .exec(&["cat", "/sys/class/net/tap0/address"])
        .trim()
        .to_string();
    let vu = run_guest(
        &assets,
        dir.path(),
        &ns,
        Netdev::VhostUser(sock),
        "tap0",
        &data,
    );
    assert_eq!(vu.get("mac"), MAC);
    assert_eq!(vu.get("mtu"), MTU);
    assert_eq!(vu.get("carrier"), "1");
    assert_eq!(vu.get("ping_first"), "ok", "{:#?}", vu.lines);
    assert_eq!(vu.get("ping"), "ok", "{:#?}", vu.lines);
    assert_eq!(vu.get("arp"), tap_mac, "ARP resolved to the tap's MAC");
    assert_eq!(vu.host.received.len(), XFER, "bytes the host received");
    let got_md5 = md5(&vu.host.received, dir.path(), "received.bin");
    assert_eq!(vu.get("tx_md5"), got_md5, "guest -> host md5");
    assert_eq!(vu.get("rx_bytes"), XFER.to_string());
    assert_eq!(vu.get("rx_md5"), want_rx_md5, "host -> guest md5");
    backend.signal(libc::SIGTERM);
    let (st, lines) = backend.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("negotiated virtio features"))
        .expect("features negotiated");
    eprintln!("splitvm-net with QEMU: {line}");
    for f in ["VERSION_1", "MRG_RXBUF", "RING_EVENT_IDX"] {
        assert!(line.contains(f), "{f} negotiated: {line}");
    }
    if let Some(c) = lines.iter().rev().find(|l| l.contains("counters:")) {
        eprintln!("{c}");
    }
    drop(ns);

    // QEMU's in-process tap, same guest, same transfer: throughput ratio.
    let ns = setup_ns("t");
    // A persistent tap QEMU attaches to, with its address set up front.
    ns.exec(&["ip", "tuntap", "add", "dev", "tap1", "mode", "tap"]);
    ns.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "tap1"]);
    ns.exec(&["ip", "link", "set", "tap1", "up"]);
    let qt = run_guest(&assets, dir.path(), &ns, Netdev::Tap("tap1"), "tap1", &data);
    assert_eq!(
        qt.get("rx_md5"),
        want_rx_md5,
        "host -> guest md5 (QEMU tap)"
    );
    let (vu_in, vu_out) = vu.mbits();
    let (qt_in, qt_out) = qt.mbits();
    eprintln!(
        "NET-BENCH guest->host Mbit/s: splitvm-net {vu_in:.1} qemu-tap {qt_in:.1} ratio {:.2}",
        vu_in / qt_in
    );
    eprintln!(
        "NET-BENCH host->guest Mbit/s: splitvm-net {vu_out:.1} qemu-tap {qt_out:.1} ratio {:.2}",
        vu_out / qt_out
    );
    eprintln!(
        "NET-BENCH packets/s (tap rx+tx during the run): splitvm-net {:.0} qemu-tap {:.0} ratio {:.2}",
        vu.pps(),
        qt.pps(),
        vu.pps() / qt.pps()
    );
    eprintln!(
        "NET-BENCH guest-timed ms: splitvm-net tx {} rx {}; qemu-tap tx {} rx {}",
        vu.get("tx_ms"),
        vu.get("rx_ms"),
        qt.get("tx_ms"),
        qt.get("rx_ms")
    );
}
