//! splitvm-net against the hostile frontend, with its tap inside a network
//! namespace the test creates and an `AF_PACKET` socket on that tap as the
//! wire: frames cross in both directions with correct virtio-net headers;
//! every malformed TX chain, lying header, oversized frame and bad RX buffer
//! is dropped and counted; a guest without RX buffers never stalls the tap;
//! and a good frame still passes after each hostile case. Also the control
//! queue and link down/up with the config-change message.

use std::time::Duration;

use splitvm_tests::hostile::cases::{run_malformed_chains, Device};
use splitvm_tests::hostile::msg::{run_message_cases, Verdict};
use splitvm_tests::hostile::net::{
    eth_frame, hdr, is_test_frame, plain_hdr, spawn_net_up, test_frame, NetDev, NetNs,
    PacketSocket, CTRLQ, F_MRG_RXBUF, HDR_LEN, TXQ,
};
use splitvm_tests::hostile::{
    within, Desc, HostileFrontend, Setup, EVENT_IDX, F_INDIRECT, F_NEXT, F_WRITE,
};
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::{poll_until, wait_for};

const T: Duration = Duration::from_secs(5);
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc];

struct Fx {
    _dir: tempfile::TempDir,
    child: ChildGuard,
    dev: NetDev,
    wire: PacketSocket,
    // Dropped last: the namespace outlives the backend.
    _ns: NetNs,
}

fn fixture(setup: Setup) -> Fx {
    fixture_with(setup, &[])
}

fn fixture_with(setup: Setup, extra: &[&str]) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("h");
    let mut args = vec![
        "--mac",
        "52:54:00:aa:bb:cc",
        "--mtu",
        "1400",
        "--queue-size",
        "256",
    ];
    args.extend_from_slice(extra);
    let (child, sock) = spawn_net_up(dir.path(), &ns, "tap0", &args);
    ns.exec(&["ip", "link", "set", "tap0", "mtu", "9000"]);
    let wire = PacketSocket::open(&ns, "tap0");
    let dev = NetDev::connect(&sock, setup);
    Fx {
        _dir: dir,
        child,
        dev,
        wire,
        _ns: ns,
    }
}

/// A broadcast IPv4/UDP frame (10.99.0.2:9 -> 10.99.0.255:9) carrying `payload`.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 99, 0, 2, 10, 99, 0, 255,
    ];
    let total = (20 + 8 + payload.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut sum = 0u32;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let mut f = eth_frame([0xff; 6], [0x02, 0, 0, 0, 0, 1], 0x0800, &ip);
    let ulen = (8 + payload.len()) as u16;
    f.extend_from_slice(&[0, 9, 0, 9]);
    f.extend_from_slice(&ulen.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn d(addr: u64, len: u32, flags: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next: 0,
    }
}

/// Stops the backend and returns its final counters as `(name, value)`.
fn counters(child: ChildGuard) -> Vec<(String, u64)> {
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{lines:#?}");
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("counters:"))
        .unwrap_or_else(|| panic!("no counters line: {lines:#?}"));
    eprintln!("{line}");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

fn get(c: &[(String, u64)], k: &str) -> u64 {
    c.iter().find(|(n, _)| n == k).map(|(_, v)| *v).unwrap()
}

/// A good TX frame with `tag` reaches the wire, and nothing tagged "bad" came first.
fn assert_tx_alive(f: &mut Fx, tag: &str) {
    tx_reaches_wire(&mut f.dev, &f.wire, tag);
}

fn tx_reaches_wire(dev: &mut NetDev, wire: &PacketSocket, tag: &str) {
    let frame = test_frame(tag.as_bytes(), 120);
    dev.tx(&plain_hdr(), &frame);
    let got = wire
        .recv(T, |w| {
            is_test_frame(w, b"bad") || is_test_frame(w, tag.as_bytes())
        })
        .unwrap_or_else(|| panic!("good frame {tag} never reached the wire"));
    assert_eq!(got, frame, "after {tag}: a hostile frame reached the wire");
}

#[test]
fn net_frames_cross_both_ways_with_headers() {
    let mut f = fixture(NetDev::setup());
    assert_eq!(f.dev.config(), (MAC, 1, 1, 1400), "config space");
    assert!(f.dev.fe.acked & F_MRG_RXBUF != 0);

    // TX: plain, then with a partial checksum, then split over two descriptors.
    let frame = test_frame(b"tx-1", 200);
    f.dev.tx(&plain_hdr(), &frame);
    assert_eq!(f.wire.recv(T, |w| is_test_frame(w, b"tx-1")), Some(frame));
    let frame = udp_frame(b"tx-2-partial-csum");
    f.dev.tx(&hdr(1, 0, 0, 0, 34, 6), &frame);
    let got = f
        .wire
        .recv(T, |w| w.len() == frame.len() && w[42..] == frame[42..])
        .expect("UDP frame with a partial checksum on the wire");
    assert_eq!(got[..40], frame[..40], "headers up to the UDP checksum");
    let frame = test_frame(b"tx-3", 1000);
    let h = f.dev.buf(&plain_hdr());
    let b = f.dev.buf(&frame);
    f.dev.tx_raw(&[d(h, HDR_LEN as u32, 0), d(b, 1000, 0)]);
    assert_eq!(f.wire.recv(T, |w| is_test_frame(w, b"tx-3")), Some(frame));

    // RX into merged buffers: a small frame, then one spanning three buffers.
    f.dev.post_rx(32, 4096);
    let frame = test_frame(b"rx-1", 300);
    f.wire.send(&frame).unwrap();
    let p = f.dev.recv_tagged(b"rx-1", T).expect("rx-1 in the RX queue");
    assert_eq!(p.frame, frame);
    assert_eq!(p.num_buffers(), 1);
    assert_eq!(p.hdr[1], 0, "gso_type none");
    let frame = test_frame(b"rx-2", 9000);
    f.wire.send(&frame).unwrap();
    let p = f.dev.recv_tagged(b"rx-2", T).expect("rx-2 in the RX queue");
    assert_eq!(p.frame.len(), frame.len());
    assert_eq!(p.frame, frame);
    assert_eq!((p.num_buffers(), p.buffers), (3, 3));
    let c = counters(f.child);
    assert_eq!(get(&c, "tx_frames"), 3);
    assert_eq!(get(&c, "tx_bad"), 0);
}

#[test]
fn net_hostile_tx_is_dropped_and_counted() {
    let mut f = fixture(NetDev::setup());
    let bad = |len| test_frame(b"bad", len);
    let mut cases: Vec<(&str, Vec<Desc>)> = Vec::new();
    let h5 = f.dev.buf(&[0u8; 5]);
    cases.push(("header only, 5 bytes", vec![d(h5, 5, 0)]));
    let mut runt = plain_hdr().to_vec();
    runt.extend_from_slice(&bad(200)[..10]);
    let r = f.dev.buf(&runt);
    cases.push(("runt frame", vec![d(r, runt.len() as u32, 0)]));
    for (what, h) in [
        ("csum past the frame", hdr(1, 0, 0, 0, 190, 20)),
        ("csum_start 0xffff", hdr(1, 0, 0, 0, 0xffff, 0xffff)),
        ("TSO4 with gso_size 0", hdr(1, 1, 54, 0, 34, 16)),
        ("GSO UDP not negotiated", hdr(1, 3, 42, 100, 34, 6)),
        ("GSO ECN not negotiated", hdr(1, 0x81, 54, 100, 34, 16)),
        ("hdr_len past the frame", hdr(1, 1, 5000, 100, 34, 16)),
        ("GSO without NEEDS_CSUM", hdr(0, 1, 54, 100, 0, 0)),
    ] {
        let mut b = h.to_vec();
        b.extend_from_slice(&bad(200));
        let at = f.dev.buf(&b);
        cases.push((what, vec![d(at, b.len() as u32, 0)]));
    }
    // A frame over 64 KiB in two descriptors.
    let big = bad(70_000);
    let hb = f.dev.buf(&plain_hdr());
    let bb = f.dev.buf(&big);
    cases.push((
        "70000-byte frame",
        vec![d(hb, HDR_LEN as u32, 0), d(bb, big.len() as u32, 0)],
    ));
    let mut good = plain_hdr().to_vec();
    good.extend_from_slice(&bad(100));
    let g = f.dev.buf(&good);
    let glen = good.len() as u32;
    cases.push(("device-writable descriptor", vec![d(g, glen, F_WRITE)]));
    cases.push((
        "writable descriptor after the frame",
        vec![d(g, glen, 0), d(g, 16, F_WRITE)],
    ));
    let end = f.dev.fe.mem.size;
    cases.push(("address outside memory", vec![d(end + 0x1000, 100, 0)]));
    cases.push(("buffer across the end", vec![d(end - 50, 100, 0)]));
    cases.push(("address u64::MAX", vec![d(u64::MAX - 10, 100, 0)]));
    let tbl = f.dev.buf(&[0u8; 15]);
    cases.push(("indirect table of 15 bytes", vec![d(tbl, 15, F_INDIRECT)]));
    cases.push((
        "indirect table outside memory",
        vec![d(end + 0x1000, 32, F_INDIRECT)],
    ));

    for (i, (what, descs)) in cases.iter().enumerate() {
        let (_, len) = f.dev.tx_raw(descs);
        assert_eq!(len, 0, "{what}: TX used length");
        assert_tx_alive(&mut f, &format!("good-{i}"));
    }

    // A chain that loops (desc n -> n): walked up to the queue size, never forever.
    let first = f.dev.write_raw(1, &[d(g, 16, F_NEXT)]);
    let ring = f.dev.fe.queues[1].ring.clone();
    ring.write_desc(
        &f.dev.fe.mem,
        first,
        Desc {
            addr: g,
            len: 16,
            flags: F_NEXT,
            next: first,
        },
    );
    f.dev.fe.submit(1, first);
    f.dev.fe.wait_used(1);
    assert_tx_alive(&mut f, "after-loop");

    let c = counters(f.child);
    assert!(
        get(&c, "tx_bad") >= cases.len() as u64,
        "every hostile TX chain counted: {c:?}"
    );
}

#[test]
fn net_hostile_rx_buffers_and_starvation() {
    let mut f = fixture(NetDev::setup());
    // No RX buffers for longer than the backend waits: the wire keeps
    // sending (never blocked) and the backend reads and drops.
    let mut sent = 0u32;
    poll_until(Duration::from_millis(600), || {
        f.wire
            .send(&test_frame(b"starve", 200))
            .expect("send never blocks");
        sent += 1;
        None::<()>
    });
    assert!(sent > 10);
    f.dev.post_rx(64, 4096);
    let frame = test_frame(b"after-starve", 200);
    f.wire.send(&frame).unwrap();
    let mut stale = 0;
    loop {
        let p = f.dev.recv(T).expect("after-starve frame");
        if is_test_frame(&p.frame, b"starve") {
            stale += 1;
            continue;
        }
        if is_test_frame(&p.frame, b"after-starve") {
            assert_eq!(p.frame, frame);
            break;
        }
    }
    assert!(
        stale <= 2,
        "{stale} stale frames delivered after starvation"
    );

    // RX chains the device must not use: readable, outside memory, a
    // table that is not a table. Each comes back with length 0, the frame
    // goes to the next good buffer or is dropped.
    let end = f.dev.fe.mem.size;
    let rd = f.dev.alloc(4096);
    let tbl = f.dev.buf(&[0u8; 15]);
    for (i, descs) in [
        vec![d(rd, 4096, 0)],
        vec![d(end + 0x1000, 4096, F_WRITE)],
        vec![d(end - 16, 4096, F_WRITE)],
        vec![d(tbl, 15, F_INDIRECT)],
        vec![d(rd, 2048, F_WRITE), d(rd + 2048, 2048, 0)],
    ]
    .into_iter()
    .enumerate()
    {
        // Drain the good buffers first so the bad chain is at the front.
        let tag = format!("hostile-rx-{i}");
        let head = f.dev.post_rx_raw(&descs);
        // Every earlier buffer is used up by filler frames until the bad
        // chain's turn comes: send until its used entry shows up.
        let used = wait_for(&format!("used entry of bad RX chain {i}"), T, || {
            f.wire.send(&test_frame(tag.as_bytes(), 100)).unwrap();
            loop {
                match f.dev.rx_used(Duration::from_millis(20)) {
                    Some((id, len)) if id == u32::from(head) => return Some(len),
                    Some(_) => continue,
                    None => return None,
                }
            }
        });
        assert_eq!(used, 0, "bad RX chain {i} returned unused");
        f.dev.post_rx(4, 4096);
        let good = test_frame(format!("good-rx-{i}").as_bytes(), 500);
        f.wire.send(&good).unwrap();
        let p = f
            .dev
            .recv_tagged(format!("good-rx-{i}").as_bytes(), T)
            .expect("good frame after a bad RX chain");
        assert_eq!(p.frame, good);
    }
    let c = counters(f.child);
    assert!(get(&c, "rx_no_buffers") > 0, "{c:?}");
    assert!(get(&c, "rx_bad_buffers") >= 5, "{c:?}");
}

#[test]
fn net_rx_without_merged_buffers() {
    let setup = Setup {
        features: !F_MRG_RXBUF,
        ..NetDev::setup()
    };
    let mut f = fixture(setup);
    assert_eq!(f.dev.fe.acked & F_MRG_RXBUF, 0);
    // Too small for the frame: returned unused, frame dropped.
    let small = f.dev.alloc(64);
    let head = f.dev.post_rx_raw(&[d(small, 64, F_WRITE)]);
    let used = wait_for("small RX buffer returned", T, || {
        f.wire.send(&test_frame(b"too-big", 1000)).unwrap();
        f.dev.rx_used(Duration::from_millis(20))
    });
    assert_eq!(used, (u32::from(head), 0));
    // Big-packet mode: one 64 KiB chain of several descriptors per frame.
    f.dev.post_rx(8, 9100);
    let frame = test_frame(b"per-buffer", 8000);
    f.wire.send(&frame).unwrap();
    let p = f.dev.recv_tagged(b"per-buffer", T).expect("frame");
    assert_eq!(p.frame, frame);
    assert_eq!(p.num_buffers(), 1);
    let c = counters(f.child);
    assert!(get(&c, "rx_bad_buffers") >= 1, "{c:?}");
}

#[test]
fn net_ctrl_queue_and_link_change() {
    let mut f = fixture(NetDev::setup());
    assert_eq!(f.dev.fe.queues.len(), CTRLQ + 1);
    assert_eq!(f.dev.ctrl(&[4, 0, 1, 0]), Some(0), "VQ_PAIRS_SET 1");
    assert_eq!(f.dev.ctrl(&[4, 0, 2, 0]), Some(1), "VQ_PAIRS_SET 2 of 1");
    assert_eq!(f.dev.ctrl(&[4, 0, 0, 0]), Some(1), "VQ_PAIRS_SET 0");
    assert_eq!(f.dev.ctrl(&[4, 0]), Some(1), "short VQ_PAIRS_SET");
    assert_eq!(f.dev.ctrl(&[0, 0, 1]), Some(0), "RX promisc");
    assert_eq!(f.dev.ctrl(&[77, 3]), Some(1), "unknown class");
    assert_eq!(f.dev.ctrl(&[4]), Some(1), "one byte");

    f.dev.open_backend_req();
    f.child.signal(libc::SIGUSR1);
    assert_eq!(
        f.dev.backend_request(T),
        Some(2),
        "CONFIG_CHANGE_MSG on link down"
    );
    assert_eq!(f.dev.config().1, 0, "status without LINK_UP");
    // Down: TX frames are dropped (the used entry comes after that decision).
    f.dev.post_rx(8, 4096);
    f.dev.tx(&plain_hdr(), &test_frame(b"bad-down", 100));
    f.child.signal(libc::SIGUSR2);
    assert_eq!(
        f.dev.backend_request(T),
        Some(2),
        "CONFIG_CHANGE_MSG on link up"
    );
    assert_eq!(f.dev.config().1, 1, "status LINK_UP");
    assert_tx_alive(&mut f, "up-again");
    let frame = test_frame(b"up-rx", 100);
    f.wire.send(&frame).unwrap();
    let p = f.dev.recv_tagged(b"up-rx", T).expect("RX after link up");
    assert_eq!(p.frame, frame);
}

#[test]
fn net_multiqueue_pairs_and_ctrl() {
    let setup = Setup {
        queues: 5,
        ..NetDev::setup()
    };
    let mut f = fixture_with(setup, &["--queues", "2"]);
    assert_eq!(f.dev.config().2, 2, "max_virtqueue_pairs");
    assert_eq!(f.dev.ctrl_on(4, &[4, 0, 2, 0]), Some(0), "VQ_PAIRS_SET 2");
    assert_eq!(
        f.dev.ctrl_on(4, &[4, 0, 3, 0]),
        Some(1),
        "VQ_PAIRS_SET 3 of 2"
    );
    for (q, tag) in [(1, "mq-tx0"), (3, "mq-tx1")] {
        let frame = test_frame(tag.as_bytes(), 100);
        f.dev.tx_on(q, &plain_hdr(), &frame);
        let got = f.wire.recv(T, |w| is_test_frame(w, tag.as_bytes()));
        assert_eq!(got, Some(frame), "TX on queue {q}");
    }
    f.dev.post_rx_on(0, 64, 4096);
    f.dev.post_rx_on(2, 64, 4096);
    let n = 16;
    for i in 0..n {
        let mut fr = test_frame(format!("mq-rx-{i:02}").as_bytes(), 200);
        fr[11] = i as u8; // distinct source MACs
        f.wire.send(&fr).unwrap();
    }
    let mut per_queue = [0usize; 2];
    let mut seen = std::collections::BTreeSet::new();
    let all = poll_until(T, || {
        for (k, q) in [0usize, 2].into_iter().enumerate() {
            while let Some(p) = f.dev.recv_on(q, Duration::from_millis(10)) {
                if is_test_frame(&p.frame, b"mq-rx-") {
                    seen.insert(p.frame[14..22].to_vec());
                    per_queue[k] += 1;
                }
            }
        }
        (seen.len() == n).then_some(())
    });
    eprintln!("RX frames per pair: {per_queue:?}");
    assert!(
        all.is_some(),
        "{} of {n} RX frames arrived: {per_queue:?}",
        seen.len()
    );
}

#[test]
fn net_serves_the_next_frontend_after_a_disconnect() {
    let mut f = fixture(NetDev::setup());
    assert_tx_alive(&mut f, "first-frontend");
    f.child.signal(libc::SIGUSR1);
    // A new frontend (the old one's socket closes): link state and
    // traffic carry over to it.
    let sock = f._dir.path().join("net.sock");
    let Fx {
        _dir,
        child,
        dev,
        wire,
        _ns,
    } = f;
    drop(dev);
    let mut f = Fx {
        dev: NetDev::connect(&sock, NetDev::setup()),
        _dir,
        child,
        wire,
        _ns,
    };
    let d2 = &mut f.dev;
    wait_for("link down seen by the second frontend", T, || {
        (d2.config().1 == 0).then_some(())
    });
    f.child.signal(libc::SIGUSR2);
    let d2 = &mut f.dev;
    wait_for("link up", T, || (d2.config().1 == 1).then_some(()));
    assert_tx_alive(&mut f, "second-frontend");
    f.dev.post_rx(8, 4096);
    let frame = test_frame(b"second-rx", 300);
    f.wire.send(&frame).unwrap();
    let p = f
        .dev
        .recv_tagged(b"second-rx", T)
        .expect("RX on the second frontend");
    assert_eq!(p.frame, frame);
}

impl Device for Fx {
    fn fe(&mut self) -> &mut HostileFrontend {
        &mut self.dev.fe
    }

    fn assert_alive(&mut self, tag: &str) {
        let tag = format!("alive-{}", tag.replace(' ', "-"));
        assert_tx_alive(self, &tag);
    }
}

#[test]
fn net_hostile_malformed_tx_chain_table() {
    let mut f = fixture(NetDev::setup());
    let out = run_malformed_chains(&mut f, TXQ, 0);
    for o in &out {
        assert!(
            matches!(o.used_len, None | Some(0)),
            "{}: {:?}",
            o.what,
            o.used_len
        );
    }
    // Every chain that came back was dropped and counted, none sent: a
    // chain cut short (a loop, `next` past the table) used to go out as
    // far as it could be read.
    let c = counters(f.child);
    let returned = out.iter().filter(|o| o.used_len.is_some()).count() as u64;
    assert!(get(&c, "tx_bad") >= returned, "{c:?}");
}

/// See `blk_hostile_avail_index_overrun_left_in_place`: the TX worker must
/// not spin on an avail index more than a queue ahead.
#[test]
fn net_hostile_avail_index_overrun_left_in_place() {
    let f = fixture(NetDev::setup());
    let Fx {
        _dir,
        mut child,
        mut dev,
        wire,
        _ns,
    } = f;
    assert!(dev.fe.acked & EVENT_IDX != 0, "EVENT_IDX negotiated");
    {
        let fe = &mut dev.fe;
        let q = &mut fe.queues[TXQ];
        let idx = q.ring.avail_idx.wrapping_add(q.ring.size + 5);
        q.ring.set_avail_idx(&fe.mem, idx);
        q.kick.write(1).unwrap();
    }
    drop(dev);
    child.wait_for_line("frontend disconnected", T);
    let sock = _dir.path().join("net.sock");
    let dev = within(
        "a new frontend is served",
        Duration::from_secs(20),
        move || NetDev::connect(&sock, NetDev::setup()),
    );
    let mut f = Fx {
        _dir,
        child,
        dev,
        wire,
        _ns,
    };
    assert_tx_alive(&mut f, "after-overrun");
}

#[test]
fn net_hostile_vhost_user_messages() {
    let f = fixture(NetDev::setup());
    let Fx {
        _dir,
        child,
        dev,
        wire,
        _ns,
    } = f;
    drop(dev);
    let sock = _dir.path().join("net.sock");
    let s = sock.clone();
    let out = run_message_cases(&sock, 3, T, |what| {
        let s = s.clone();
        let mut dev = within(what, Duration::from_secs(20), move || {
            NetDev::connect(&s, NetDev::setup())
        });
        tx_reaches_wire(&mut dev, &wire, &format!("msg-{}", what.replace(' ', "-")));
    });
    assert!(out.iter().any(|(_, v)| *v == Verdict::Dropped));
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{lines:#?}");
}
