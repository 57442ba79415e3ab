//! splitvm-blk's `INFLIGHT_SHMFD`: the hostile-frontend harness is the
//! frontend, gets the region with `GET_INFLIGHT_FD`, kills the backend
//! with requests in flight, restarts it and reconnects as QEMU does
//! (`SET_INFLIGHT_FD` with the same fd, vring base = used idx). Each
//! request must complete exactly once and the image must hold what each
//! request wrote.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use splitvm_tests::hostile::blk::{spawn_blk, BlkDev, S_OK, T_FLUSH, T_OUT};
use splitvm_tests::hostile::inflight::{self, Region};
use splitvm_tests::hostile::{Desc, Setup, F_WRITE};
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::stats::summary;
use splitvm_tests::wait::wait_for;

const IMG_SIZE: u64 = 64 << 20;
const LIMIT: Duration = Duration::from_secs(20);

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    fs::File::create(&p).unwrap().set_len(IMG_SIZE).unwrap();
    p
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(0x9e37_79b9)) as u8 ^ (i >> 9) as u8
        })
        .collect()
}

fn file_bytes(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let all = fs::read(p).unwrap();
    all[off as usize..off as usize + len].to_vec()
}

fn setup() -> Setup {
    Setup {
        mem_size: 160 << 20,
        queue_size: 512,
        timeout: LIMIT,
        ..Setup::default()
    }
}

/// A request written into the ring (not yet available): head and the gpa
/// of its status byte.
struct Req {
    head: u16,
    status: u64,
}

fn write_chain(dev: &mut BlkDev, type_: u32, sector: u64, data: &[u8]) -> Req {
    let hdr = dev.header(type_, sector);
    let mut descs = vec![Desc {
        addr: hdr,
        len: 16,
        ..Desc::default()
    }];
    if !data.is_empty() {
        let at = dev.buf(data);
        descs.push(Desc {
            addr: at,
            len: data.len() as u32,
            ..Desc::default()
        });
    }
    let status = dev.status_byte();
    descs.push(Desc {
        addr: status,
        len: 1,
        flags: F_WRITE,
        next: 0,
    });
    Req {
        head: dev.write_raw(0, &descs),
        status,
    }
}

fn status(dev: &BlkDev, r: &Req) -> u8 {
    dev.fe.mem.read(r.status, 1)[0]
}

fn spawn(dir: &Path, img: &Path, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let (child, sock) = spawn_blk(dir, img, extra);
    (child, sock)
}

/// Stops the backend (SIGSTOP) and waits until the kernel reports it stopped,
/// so the region read next is exactly what it leaves behind.
fn freeze(child: &ChildGuard) {
    child.signal(libc::SIGSTOP);
    let stat = format!("/proc/{}/stat", child.pid());
    wait_for("backend stopped", LIMIT, || {
        let s = fs::read_to_string(&stat).ok()?;
        let state = s.rsplit(") ").next()?.chars().next()?;
        (state == 'T' || state == 't').then_some(())
    });
}

fn kill(mut child: ChildGuard) {
    child.signal(libc::SIGKILL);
    child.wait_exit(LIMIT);
}

/// Every used entry the frontend has not seen yet, without waiting.
fn drain_used(dev: &mut BlkDev) -> Vec<u32> {
    let mut v = Vec::new();
    while let Some((id, _)) = dev.fe.queues[0].ring.pop_used(&dev.fe.mem) {
        v.push(id);
    }
    v
}

/// Makes `heads` available without kicking.
fn make_available(dev: &mut BlkDev, heads: &[u16]) {
    let q = &mut dev.fe.queues[0];
    for &h in heads {
        q.ring.push_avail(&dev.fe.mem, h);
    }
}

/// Writes a used entry for `head` and publishes it, as a backend that died
/// right after its used-ring update would have.
fn forge_used(dev: &mut BlkDev, head: u16, len: u32) {
    let ring = dev.fe.queues[0].ring.clone();
    let idx = ring.used_idx(&dev.fe.mem);
    let slot = u64::from(idx % ring.size);
    let at = ring.used + 4 + 8 * slot;
    dev.fe.mem.write(at, &u32::from(head).to_le_bytes());
    dev.fe.mem.write(at + 4, &len.to_le_bytes());
    dev.fe.mem.w16(ring.used + 2, idx.wrapping_add(1));
}

#[test]
fn blk_inflight_crash_midway_completes_each_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (child, sock) = spawn(dir.path(), &img, &["--io-engine", "sync"]);
    let (fe, region) = inflight::connect(&sock, setup());
    let mut dev = BlkDev::from_frontend(fe);
    assert_eq!(dev.write(0, &pattern(1, 512)), S_OK, "warm-up write");
    assert_eq!(region.version(0), 1, "backend initialised the region");
    assert!(region.in_flight(0).is_empty());

    // Big synchronous writes, one batch: the backend marks each head before
    // its write starts and clears a few at a time as it publishes their
    // used entries.
    const N: usize = 96;
    const LEN: usize = 512 << 10;
    let mut reqs = Vec::new();
    let mut stored = HashMap::new();
    for k in 0..N {
        let sector = 2048 + (k * LEN / 512) as u64;
        let r = write_chain(&mut dev, T_OUT, sector, &pattern(k as u32 + 10, LEN));
        stored.insert(r.head, (k, sector));
        reqs.push(r);
    }
    let heads: Vec<u16> = reqs.iter().map(|r| r.head).collect();
    dev.fe.submit_many(0, &heads);
    // Poll the shared region (no sleep: spin until the deadline) until
    // requests are in flight and some of the batch's used entries are out:
    // the backend publishes while its pass still runs, so a driver that
    // waits for the interrupt can refill meanwhile.
    let end = Instant::now() + LIMIT;
    // Used entries of this batch so far (the warm-up write took one); a
    // backend that published the batch at its end jumps from 0 to N.
    let published = |dev: &BlkDev| {
        let idx = dev.fe.queues[0].ring.used_idx(&dev.fe.mem);
        usize::from(idx.wrapping_sub(1))
    };
    while region.in_flight(0).len() < 2 || !(4..N).contains(&published(&dev)) {
        assert!(
            Instant::now() < end,
            "never saw requests in flight after used entries of the same batch"
        );
        std::hint::spin_loop();
    }
    freeze(&child);
    let at_kill = region.in_flight(0);
    kill(child);
    let before: Vec<u32> = drain_used(&mut dev);
    eprintln!(
        "at kill: {} request(s) in flight, {} completed before the crash",
        at_kill.len(),
        before.len()
    );
    assert!(!at_kill.is_empty(), "requests in flight at kill time");

    let (child, sock2) = spawn(dir.path(), &img, &["--io-engine", "sync"]);
    assert_eq!(sock, sock2);
    inflight::reconnect(&mut dev.fe, &sock, &region);
    let mut after = Vec::new();
    while before.len() + after.len() < N {
        after.push(dev.fe.wait_used(0).0);
    }
    // Nothing more: the next entry is a new flush.
    let flush = write_chain(&mut dev, T_FLUSH, 0, &[]);
    dev.fe.submit(0, flush.head);
    assert_eq!(
        dev.fe.wait_used(0).0,
        u32::from(flush.head),
        "no duplicate before the flush"
    );
    assert_eq!(status(&dev, &flush), S_OK);

    let mut count: HashMap<u32, usize> = HashMap::new();
    for id in before.iter().chain(&after) {
        *count.entry(*id).or_default() += 1;
    }
    for h in &heads {
        assert_eq!(
            count.get(&u32::from(*h)),
            Some(&1),
            "head {h} completed exactly once"
        );
    }
    // The synchronous engine finishes the resubmitted requests first, in
    // counter order; the heads never taken follow as new requests.
    let mut resubmitted = at_kill.clone();
    resubmitted.sort_by_key(|&(_, c)| c);
    let resubmitted: Vec<u32> = resubmitted
        .iter()
        .map(|&(h, _)| u32::from(h))
        .filter(|h| !before.contains(h))
        .collect();
    assert_eq!(
        after[..resubmitted.len()],
        resubmitted[..],
        "exactly the in-flight heads first, in counter order"
    );
    assert!(
        region.in_flight(0).is_empty(),
        "region clear after the resubmission"
    );
    let all = fs::read(&img).unwrap();
    for r in &reqs {
        assert_eq!(status(&dev, r), S_OK, "status of head {}", r.head);
        let (k, sector) = stored[&r.head];
        let at = sector as usize * 512;
        assert!(
            all[at..at + LEN] == pattern(k as u32 + 10, LEN)[..],
            "image content of request {k} (head {})",
            r.head
        );
    }
    drop(child);
}

#[test]
fn blk_inflight_forged_region_resubmits_exactly_those_in_counter_order() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let old = pattern(99, 4096);
    fs::write(&img, [vec![0u8; 3000 * 512], old.clone()].concat()).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(IMG_SIZE)
        .unwrap();
    let (child, sock) = spawn(dir.path(), &img, &["--io-engine", "sync"]);
    let (fe, region) = inflight::connect(&sock, setup());
    let mut dev = BlkDev::from_frontend(fe);
    assert_eq!(dev.write(8, &pattern(1, 512)), S_OK, "warm-up write");
    kill(child);

    // As a crashed backend leaves it: D was taken first and its used entry
    // landed but was not cleared; B, C, A were taken next (counters in that
    // order, heads in another) and are in flight; E is available, untaken.
    let (a, b, c) = (pattern(1, 4096), pattern(2, 4096), pattern(3, 4096));
    let (d, e) = (pattern(4, 4096), pattern(5, 4096));
    let ra = write_chain(&mut dev, T_OUT, 1000, &a);
    let rb = write_chain(&mut dev, T_OUT, 1000, &b);
    let rc = write_chain(&mut dev, T_OUT, 2000, &c);
    let rd = write_chain(&mut dev, T_OUT, 3000, &d);
    let re = write_chain(&mut dev, T_OUT, 4000, &e);
    make_available(&mut dev, &[rd.head, rb.head, rc.head, ra.head, re.head]);
    let used0 = dev.fe.queues[0].ring.used_idx(&dev.fe.mem);
    region.set_desc(0, rd.head, true, 100);
    region.set_desc(0, rb.head, true, 101);
    region.set_desc(0, rc.head, true, 102);
    region.set_desc(0, ra.head, true, 103);
    region.set_batch(0, rd.head, used0);
    dev.fe.mem.write(rd.status, &[S_OK]);
    forge_used(&mut dev, rd.head, 1);
    assert_eq!(drain_used(&mut dev), vec![u32::from(rd.head)]);

    let (child, _) = spawn(dir.path(), &img, &["--io-engine", "sync"]);
    inflight::reconnect(&mut dev.fe, &sock, &region);
    let got: Vec<u32> = (0..4).map(|_| dev.fe.wait_used(0).0).collect();
    let want: Vec<u32> = [rb.head, rc.head, ra.head, re.head]
        .iter()
        .map(|&h| u32::from(h))
        .collect();
    assert_eq!(
        got, want,
        "resubmitted in counter order, then the untaken one"
    );
    let flush = write_chain(&mut dev, T_FLUSH, 0, &[]);
    dev.fe.submit(0, flush.head);
    assert_eq!(
        dev.fe.wait_used(0).0,
        u32::from(flush.head),
        "nothing twice"
    );
    for r in [&ra, &rb, &rc, &re, &flush] {
        assert_eq!(status(&dev, r), S_OK);
    }
    assert!(region.in_flight(0).is_empty());
    assert_eq!(
        region.used_idx(0),
        dev.fe.queues[0].ring.used_idx(&dev.fe.mem)
    );
    assert!(
        file_bytes(&img, 1000 * 512, 4096) == a,
        "A (taken after B) wins"
    );
    assert!(file_bytes(&img, 2000 * 512, 4096) == c);
    assert!(file_bytes(&img, 3000 * 512, 4096) == old, "D is not redone");
    assert!(file_bytes(&img, 4000 * 512, 4096) == e);
    drop(child);
}

#[test]
fn blk_inflight_restart_timing() {
    const RESTARTS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (mut child, sock) = spawn(dir.path(), &img, &[]);
    let (fe, region): (_, Region) = inflight::connect(&sock, setup());
    let mut dev = BlkDev::from_frontend(fe);
    assert_eq!(dev.write(0, &pattern(1, 512)), S_OK);
    let mut times = Vec::new();
    for k in 0..RESTARTS {
        kill(child);
        let data = pattern(k as u32, 4096);
        let sector = 64 + 8 * k as u64;
        let r = write_chain(&mut dev, T_OUT, sector, &data);
        make_available(&mut dev, &[r.head]);
        region.set_desc(0, r.head, true, 1000 + k as u64);
        let (c, _) = spawn(dir.path(), &img, &[]);
        child = c;
        let ready = inflight::reconnect(&mut dev.fe, &sock, &region);
        assert_eq!(dev.fe.wait_used(0).0, u32::from(r.head));
        times.push(ready.elapsed());
        assert_eq!(status(&dev, &r), S_OK);
        assert!(file_bytes(&img, sector * 512, 4096) == data);
    }
    eprintln!(
        "restart -> first completed request over {RESTARTS} restarts: {}",
        summary(&mut times)
    );
    drop(child);
}
