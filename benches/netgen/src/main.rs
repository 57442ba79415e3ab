//! `netgen`: a packet generator for `splitvm-net`, grown from the tests'
//! hostile frontend (`splitvm_tests::hostile`). It creates a network
//! namespace, starts `splitvm-net` in it on a tap, brings the tap up and
//! then, for each run, direction and frame size:
//!
//! * `tx`: keeps the TX virtqueue full of frames (written once, the heads
//!   recycled as their used entries come back) for `--seconds`, and counts
//!   what the tap received (its `rx_packets` counter) and the used entries;
//! * `rx`: a thread in the namespace sends frames into the tap from a raw
//!   socket as fast as it can while the frontend keeps the RX queue full of
//!   buffers; counts the used RX entries (frames delivered to the "guest").
//!
//! Prints one human line and, with `--kv`, one `NETGEN key=value` line per
//! measurement. Everything stays inside the namespace; runs are bounded
//! in time. Needs root (`ip netns`, tap).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use splitvm_tests::hostile::net::{test_frame, NetDev, NetNs, RXQ, TXQ};
use splitvm_tests::hostile::{wait_readable, Desc, F_WRITE};
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;

const TAP: &str = "tap0";
const QUEUE_SIZE: u16 = 256;
/// virtio-net header with `VERSION_1`.
const HDR_LEN: usize = 12;
const WARMUP: Duration = Duration::from_millis(300);
/// Offloads the generator does not want (it posts 4 KiB RX buffers):
/// GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, GUEST_UFO.
const NO_GUEST_OFFLOADS: u64 = !((1 << 1) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10));

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Dir {
    Tx,
    Rx,
}

/// Packet generator for splitvm-net.
#[derive(Parser, Debug)]
#[command(name = "netgen")]
struct Args {
    /// The splitvm-net binary.
    #[arg(long)]
    splitvm_net: PathBuf,
    /// Seconds per measurement (after a short warm-up).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds; each round measures every direction and size once.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Frame sizes in bytes (Ethernet header included, no FCS).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize, 1500])]
    sizes: Vec<usize>,
    /// Directions.
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Dir::Tx, Dir::Rx])]
    dirs: Vec<Dir>,
    /// Also print `NETGEN key=value ...` lines.
    #[arg(long)]
    kv: bool,
}

// Fields drop in order: the connection, the backend, then the namespace.
struct Bench {
    dev: NetDev,
    rx_posted: bool,
    _child: ChildGuard,
    ns: NetNs,
    _dir: tempfile::TempDir,
}

fn tap_counter(ns: &NetNs, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{TAP}/statistics/{name}");
    let out = ns.exec(&["cat", &path]);
    out.trim()
        .parse()
        .with_context(|| format!("{path}: {out:?}"))
}

impl Bench {
    fn new(bin: &PathBuf) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ns = NetNs::new("gen");
        let sock = dir.path().join("net.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(bin)
            .arg("--socket-path")
            .arg(&sock)
            .args(["--tap", TAP, "--queue-size", "256", "--mtu", "1500"]);
        let child = ChildGuard::spawn("splitvm-net", cmd);
        wait_for("tap in the namespace", Duration::from_secs(10), || {
            ns.has_link(TAP).then_some(())
        });
        ns.exec(&["ip", "link", "set", TAP, "up"]);
        let mut setup = NetDev::setup();
        setup.queue_size = QUEUE_SIZE;
        setup.features &= NO_GUEST_OFFLOADS;
        let dev = NetDev::connect(&sock, setup);
        Ok(Bench {
            dev,
            ns,
            rx_posted: false,
            _child: child,
            _dir: dir,
        })
    }

    /// Writes one single-descriptor chain per head `0..QUEUE_SIZE` on
    /// queue `q`, each pointing at its own buffer; returns the heads.
    fn lay_out(&mut self, q: usize, len: u32, flags: u16, fill: Option<&[u8]>) -> Vec<u16> {
        let ring = self.dev.fe.queues[q].ring.clone();
        (0..QUEUE_SIZE)
            .inspect(|&i| {
                let at = self.dev.alloc(u64::from(len));
                if let Some(b) = fill {
                    self.dev.fe.mem.write(at, b);
                }
                ring.write_desc(
                    &self.dev.fe.mem,
                    i,
                    Desc {
                        addr: at,
                        len,
                        flags,
                        next: 0,
                    },
                );
            })
            .collect()
    }

    /// Makes `heads` available on `q` with one kick.
    fn post(&mut self, q: usize, heads: &[u16]) {
        let fe = &mut self.dev.fe;
        for &h in heads {
            fe.queues[q].ring.push_avail(&fe.mem, h);
        }
        let _ = fe.queues[q].kick.write(1);
    }

    /// Runs until `end`, recycling every used head of `q`; returns the
    /// used entries seen.
    fn pump(&mut self, q: usize, end: Instant) -> u64 {
        let mut n = 0u64;
        let mut back = Vec::with_capacity(usize::from(QUEUE_SIZE));
        while Instant::now() < end {
            back.clear();
            let fe = &mut self.dev.fe;
            while let Some((id, _)) = fe.queues[q].ring.pop_used(&fe.mem) {
                back.push(id as u16);
            }
            if back.is_empty() {
                let _ = fe.queues[q].call.read();
                if fe.queues[q].ring.used_idx(&fe.mem) == fe.queues[q].ring.used_seen {
                    wait_readable(&fe.queues[q].call, Duration::from_millis(10));
                }
                continue;
            }
            n += back.len() as u64;
            let heads = std::mem::take(&mut back);
            self.post(q, &heads);
            back = heads;
        }
        n
    }

    fn tx(&mut self, size: usize, secs: f64) -> Result<(f64, f64)> {
        let mut b = vec![0u8; HDR_LEN];
        b.extend_from_slice(&test_frame(b"netgen", size));
        let heads = self.lay_out(TXQ, b.len() as u32, 0, Some(&b));
        self.post(TXQ, &heads);
        let _ = self.pump(TXQ, Instant::now() + WARMUP);
        // The tap counter is read around the measured window only.
        let before = tap_counter(&self.ns, "rx_packets")?;
        let t0 = Instant::now();
        let used = self.pump(TXQ, t0 + Duration::from_secs_f64(secs));
        let el = t0.elapsed().as_secs_f64();
        let after = tap_counter(&self.ns, "rx_packets")?;
        self.drain_tx()?;
        Ok(((after - before) as f64 / el, used as f64 / el))
    }

    fn rx(&mut self, size: usize, secs: f64) -> Result<(f64, f64)> {
        // The RX buffers are posted once and stay posted across runs (the
        // backend may hold them while no traffic comes).
        if !self.rx_posted {
            let heads = self.lay_out(RXQ, 4096, F_WRITE, None);
            self.post(RXQ, &heads);
            self.rx_posted = true;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let frame = test_frame(b"netgen", size);
        let sender = {
            let (stop, sent) = (stop.clone(), sent.clone());
            let ns = format!("/run/netns/{}", self.ns.name);
            thread::spawn(move || send_loop(&ns, &frame, &stop, &sent))
        };
        let _ = self.pump(RXQ, Instant::now() + WARMUP);
        let s0 = sent.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let got = self.pump(RXQ, t0 + Duration::from_secs_f64(secs));
        let el = t0.elapsed().as_secs_f64();
        let s1 = sent.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        // Frames still queued in the tap arrive later and are recycled by
        // the next RX run's warm-up.
        Ok((got as f64 / el, (s1 - s0) as f64 / el))
    }

    /// Waits until the backend returned every TX chain (so the next TX run
    /// can lay the ring out again).
    fn drain_tx(&mut self) -> Result<()> {
        let fe = &mut self.dev.fe;
        let queue = &mut fe.queues[TXQ];
        let deadline = Instant::now() + Duration::from_secs(5);
        while queue.ring.used_seen != queue.ring.avail_idx {
            if queue.ring.pop_used(&fe.mem).is_none() {
                if Instant::now() > deadline {
                    bail!("the TX queue did not drain within 5 s");
                }
                wait_readable(&queue.call, Duration::from_millis(10));
                let _ = queue.call.read();
            }
        }
        Ok(())
    }
}

/// Sends `frame` into the tap from a raw socket in the namespace until `stop`.
fn send_loop(ns: &str, frame: &[u8], stop: &AtomicBool, sent: &AtomicU64) -> Result<()> {
    let nsf = File::open(ns).with_context(|| format!("open {ns}"))?;
    // SAFETY: setns on an open netns fd; it affects only this thread.
    if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    // Protocol 0: the socket only sends, it receives nothing.
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(TAP)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_ifindex = idx as i32;
    sa.sll_halen = 6;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sendto reads `frame.len()` bytes and one sockaddr_ll.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r > 0 {
            n += 1;
            if n % 64 == 0 {
                sent.store(n, Ordering::Relaxed);
            }
        } else {
            // ENOBUFS when the tap's queue is full: let the backend run.
            thread::yield_now();
        }
    }
    sent.store(n, Ordering::Relaxed);
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut b = Bench::new(&a.splitvm_net)?;
    for run in 1..=a.runs {
        for &dir in &a.dirs {
            for &size in &a.sizes {
                let (pps, other) = match dir {
                    Dir::Tx => b.tx(size, a.seconds)?,
                    Dir::Rx => b.rx(size, a.seconds)?,
                };
                let gbit = pps * size as f64 * 8.0 / 1e9;
                let d = format!("{dir:?}").to_lowercase();
                let extra = match dir {
                    Dir::Tx => format!("used_pps={other:.0}"),
                    Dir::Rx => format!("offered_pps={other:.0}"),
                };
                #[allow(clippy::print_stdout)] // the results are this program's output
                {
                    println!(
                        "splitvm-net {d} {size} B run {run}: {pps:.0} packets/s {gbit:.3} Gbit/s ({extra})"
                    );
                    if a.kv {
                        println!(
                            "NETGEN contender=splitvm-net dir={d} size={size} run={run} \
                             pps={pps:.0} gbit={gbit:.4} {extra}"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
