//! splitvm-blk against a hostile frontend: every malformed chain gets an
//! error status (when it has a writable status byte) or is returned unused,
//! the backend never crashes or touches memory outside the guest's or bytes
//! outside the image, and a correct request afterwards still succeeds.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use splitvm_tests::hostile::blk::{
    spawn_blk, BlkDev, S_IOERR, S_UNSUPP, S_UNTOUCHED, T_DISCARD, T_IN, T_OUT, T_WRITE_ZEROES,
};
use splitvm_tests::hostile::cases::run_malformed_chains;
use splitvm_tests::hostile::msg::{run_message_cases, Verdict};
use splitvm_tests::hostile::{
    within, Desc, HostileFrontend, Setup, EVENT_IDX, F_INDIRECT, F_NEXT, F_WRITE,
};
use splitvm_tests::proc::ChildGuard;
use vhost::{VhostBackend, VringConfigData};

const IMG_SIZE: u64 = 4 << 20;
const SECTORS: u64 = IMG_SIZE / 512;

struct Fixture {
    _dir: tempfile::TempDir,
    img: PathBuf,
    child: ChildGuard,
    sock: PathBuf,
    dev: BlkDev,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    fs::File::create(&img).unwrap().set_len(IMG_SIZE).unwrap();
    let (child, sock) = spawn_blk(dir.path(), &img, &[]);
    let dev = BlkDev::connect(&sock, Setup::default());
    Fixture {
        _dir: dir,
        img,
        child,
        sock,
        dev,
    }
}

fn d(addr: u64, len: u32, flags: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next: 0,
    }
}

/// Submits `descs`; asserts the used length and the status byte at `st`.
fn expect(dev: &mut BlkDev, descs: &[Desc], st: u64, used: u32, status: u8, what: &str) {
    dev.fe.mem.write(st, &[S_UNTOUCHED]);
    let (_, len) = dev.raw(0, descs);
    assert_eq!(len, used, "{what}: used length");
    assert_eq!(dev.fe.mem.read(st, 1)[0], status, "{what}: status");
    dev.assert_alive(7);
}

#[test]
fn blk_hostile_chain_shapes() {
    let mut f = fixture();
    let dev = &mut f.dev;
    let hdr = dev.header(T_IN, 0);
    let data = dev.alloc(512);
    let st = dev.status_byte();
    // Header only: no status byte -> returned unused.
    expect(dev, &[d(hdr, 16, 0)], st, 0, S_UNTOUCHED, "header only");
    // Device-writable header.
    expect(
        dev,
        &[
            d(hdr, 16, F_WRITE),
            d(data, 512, F_WRITE),
            d(st, 1, F_WRITE),
        ],
        st,
        1,
        S_IOERR,
        "writable header",
    );
    // Read-only status.
    expect(
        dev,
        &[d(hdr, 16, 0), d(data, 512, F_WRITE), d(st, 1, 0)],
        st,
        0,
        S_UNTOUCHED,
        "read-only status",
    );
    // Short header.
    expect(
        dev,
        &[d(hdr, 8, 0), d(data, 512, F_WRITE), d(st, 1, F_WRITE)],
        st,
        1,
        S_IOERR,
        "short header",
    );
    // Readable descriptor after a writable one.
    expect(
        dev,
        &[
            d(hdr, 16, 0),
            d(data, 512, F_WRITE),
            d(data, 512, 0),
            d(st, 1, F_WRITE),
        ],
        st,
        1,
        S_IOERR,
        "bad order",
    );
    // Zero-length descriptors everywhere but the status.
    expect(
        dev,
        &[d(hdr, 16, 0), d(data, 0, F_WRITE), d(st, 1, F_WRITE)],
        st,
        1,
        S_IOERR,
        "zero-length data",
    );
    // Data not a multiple of 512.
    expect(
        dev,
        &[d(hdr, 16, 0), d(data, 500, F_WRITE), d(st, 1, F_WRITE)],
        st,
        1,
        S_IOERR,
        "partial sector",
    );
    // A write whose data is device-writable (so there is no write payload).
    let whdr = dev.header(T_OUT, 0);
    expect(
        dev,
        &[d(whdr, 16, 0), d(data, 512, F_WRITE), d(st, 1, F_WRITE)],
        st,
        1,
        S_IOERR,
        "write without payload",
    );
}

#[test]
fn blk_hostile_loops_bad_indices_and_indirect() {
    let mut f = fixture();
    let dev = &mut f.dev;
    let hdr = dev.header(T_IN, 0);
    let data = dev.alloc(512);
    let st = dev.status_byte();
    let ring = dev.fe.queues[0].ring.clone();
    let mem = &dev.fe.mem;
    // 200 -> 201 -> 200 ... a loop.
    ring.write_desc(
        mem,
        200,
        Desc {
            addr: hdr,
            len: 16,
            flags: F_NEXT,
            next: 201,
        },
    );
    ring.write_desc(
        mem,
        201,
        Desc {
            addr: data,
            len: 512,
            flags: F_NEXT | F_WRITE,
            next: 200,
        },
    );
    dev.fe.submit(0, 200);
    assert_eq!(
        dev.fe.wait_used(0),
        (200, 0),
        "looping chain returned unused"
    );
    dev.assert_alive(1);
    // `next` past the table.
    let mem = &dev.fe.mem;
    ring.write_desc(
        mem,
        210,
        Desc {
            addr: hdr,
            len: 16,
            flags: F_NEXT,
            next: 9999,
        },
    );
    dev.fe.submit(0, 210);
    assert_eq!(dev.fe.wait_used(0), (210, 0), "bad next returned unused");
    dev.assert_alive(2);
    // A head index past the queue: no used entry can name it; the next good
    // request must still complete (raw() checks the used id is its own).
    dev.fe.submit(0, 5000);
    dev.assert_alive(3);
    // Indirect: table length not a multiple of 16, nested indirect, table
    // outside memory, and a table longer than the backend walks.
    let nested = dev.buf(
        &Desc {
            addr: hdr,
            len: 16,
            flags: F_INDIRECT,
            next: 0,
        }
        .bytes(),
    );
    let mut long = Vec::new();
    long.extend_from_slice(
        &Desc {
            addr: hdr,
            len: 16,
            flags: F_NEXT,
            next: 1,
        }
        .bytes(),
    );
    for i in 1..2000u16 {
        long.extend_from_slice(
            &Desc {
                addr: data,
                len: 512,
                flags: F_NEXT | F_WRITE,
                next: i + 1,
            }
            .bytes(),
        );
    }
    long.extend_from_slice(
        &Desc {
            addr: st,
            len: 1,
            flags: F_WRITE,
            next: 0,
        }
        .bytes(),
    );
    let long_len = long.len() as u32;
    let long = dev.buf(&long);
    for (what, desc) in [
        ("odd table length", d(nested, 20, F_INDIRECT)),
        ("nested indirect", d(nested, 16, F_INDIRECT)),
        ("table outside memory", d(1 << 40, 64, F_INDIRECT)),
        ("2001-entry table", d(long, long_len, F_INDIRECT)),
    ] {
        let (_, len) = dev.raw(0, &[desc]);
        assert_eq!(len, 0, "{what}: returned unused");
        dev.assert_alive(4);
    }
    assert_eq!(dev.fe.mem.read(st, 1)[0], S_UNTOUCHED);
}

#[test]
fn blk_hostile_addresses_outside_guest_memory() {
    let mut f = fixture();
    let dev = &mut f.dev;
    let hdr = dev.header(T_IN, 0);
    let data = dev.alloc(512);
    let st = dev.status_byte();
    let end = dev.fe.mem.size;
    for (what, data_desc) in [
        ("data past the end", d(end - 256, 512, F_WRITE)),
        ("data far away", d(1 << 40, 512, F_WRITE)),
        ("data address wraps", d(u64::MAX - 100, 512, F_WRITE)),
    ] {
        expect(
            dev,
            &[d(hdr, 16, 0), data_desc, d(st, 1, F_WRITE)],
            st,
            1,
            S_IOERR,
            what,
        );
    }
    // Header outside memory: status is writable, so IOERR.
    expect(
        dev,
        &[d(1 << 40, 16, 0), d(data, 512, F_WRITE), d(st, 1, F_WRITE)],
        st,
        1,
        S_IOERR,
        "header outside",
    );
    // Status outside memory: nothing to write, returned unused.
    let (_, len) = dev.raw(
        0,
        &[d(hdr, 16, 0), d(data, 512, F_WRITE), d(1 << 40, 1, F_WRITE)],
    );
    assert_eq!(len, 0, "status outside memory");
    // A write sourcing guest memory that is not there leaves the image alone.
    let whdr = dev.header(T_OUT, 100);
    expect(
        dev,
        &[d(whdr, 16, 0), d(end - 100, 512, 0), d(st, 1, F_WRITE)],
        st,
        1,
        S_IOERR,
        "write source outside",
    );
    assert!(fs::read(&f.img).unwrap()[100 * 512..101 * 512]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn blk_hostile_sectors_types_and_ranges() {
    let mut f = fixture();
    let dev = &mut f.dev;
    for (what, sector, len) in [
        ("read at capacity", SECTORS, 512usize),
        ("read across the end", SECTORS - 1, 1024),
        ("sector overflows", u64::MAX / 256, 512),
        ("sector u64::MAX", u64::MAX, 512),
    ] {
        assert_eq!(dev.read(sector, len).status, S_IOERR, "{what}");
        assert_eq!(
            dev.write(sector, &vec![0xffu8; len]),
            S_IOERR,
            "{what} (write)"
        );
    }
    dev.assert_alive(9);
    assert_eq!(
        fs::metadata(&f.img).unwrap().len(),
        IMG_SIZE,
        "image did not grow"
    );
    for t in [2u32, 3, 99, 0x8000_0000, u32::MAX] {
        assert_eq!(dev.request(t, 0, &[], 512).status, S_UNSUPP, "type {t}");
    }
    dev.assert_alive(9);
    // Discard / write-zeroes payloads.
    assert_eq!(
        dev.ranges(T_DISCARD, &[(0, 8)], 1),
        S_UNSUPP,
        "UNMAP on discard"
    );
    assert_eq!(
        dev.ranges(T_WRITE_ZEROES, &[(0, 8)], 6),
        S_UNSUPP,
        "unknown flags"
    );
    assert_eq!(
        dev.ranges(T_DISCARD, &[(SECTORS - 4, 8)], 0),
        S_IOERR,
        "past the end"
    );
    assert_eq!(
        dev.ranges(T_DISCARD, &[(u64::MAX, 1)], 0),
        S_IOERR,
        "overflow"
    );
    assert_eq!(
        dev.ranges(T_DISCARD, &[(0, u32::MAX)], 0),
        S_IOERR,
        "too long"
    );
    let many: Vec<(u64, u32)> = (0..17).map(|i| (i * 8, 8)).collect();
    assert_eq!(dev.ranges(T_DISCARD, &many, 0), S_IOERR, "too many ranges");
    assert_eq!(
        dev.request(T_DISCARD, 0, &[0u8; 15], 0).status,
        S_IOERR,
        "ragged payload"
    );
    assert_eq!(
        dev.request(T_DISCARD, 0, &[], 0).status,
        S_IOERR,
        "no payload"
    );
    assert_eq!(
        dev.request(T_IN, 0, &[], 0).status,
        S_IOERR,
        "read with no data"
    );
    dev.assert_alive(9);
}

#[test]
fn blk_hostile_avail_index_jump_then_recovery() {
    let mut f = fixture();
    let dev = &mut f.dev;
    let good = dev.fe.queues[0].ring.avail_idx;
    // The avail index claims 1000 new entries in a 256-entry ring.
    {
        let q = &mut dev.fe.queues[0];
        q.ring.set_avail_idx(&dev.fe.mem, good.wrapping_add(1000));
        q.kick.write(1).unwrap();
    }
    // The device must not consume anything; restore the index and go on.
    {
        let q = &mut dev.fe.queues[0];
        q.ring.set_avail_idx(&dev.fe.mem, good);
    }
    dev.assert_alive(5);
}

#[test]
fn blk_hostile_bad_vring_address_then_new_frontend() {
    let mut f = fixture();
    drop(f.dev);
    f.child
        .wait_for_line("frontend disconnected", Duration::from_secs(10));
    // A frontend that places the ring outside the memory table.
    let setup = Setup::default();
    let (fe, offered) = HostileFrontend::connect_raw(&f.sock, &setup);
    let _ = fe.set_features(offered);
    let _ = fe.set_vring_num(0, 256);
    let cfg = VringConfigData {
        queue_max_size: 256,
        queue_size: 256,
        flags: 0,
        desc_table_addr: 0xdead_0000_0000,
        used_ring_addr: 0xdead_0001_0000,
        avail_ring_addr: 0xdead_0002_0000,
        log_addr: None,
    };
    // Without REPLY_ACK the refusal is not reported back; the backend drops
    // the connection, and must then serve the next frontend.
    let _ = fe.set_vring_addr(0, &cfg);
    drop(fe);
    let mut dev = BlkDev::connect(&f.sock, Setup::default());
    dev.assert_alive(6);
}

#[test]
fn blk_hostile_disconnect_with_requests_in_flight() {
    let mut f = fixture();
    let dev = &mut f.dev;
    let mut heads = Vec::new();
    for i in 0..32u64 {
        let hdr = dev.header(T_OUT, i * 8);
        let data = dev.buf(&[0x5a; 4096]);
        let st = dev.status_byte();
        heads.push(dev.write_raw(0, &[d(hdr, 16, 0), d(data, 4096, 0), d(st, 1, F_WRITE)]));
    }
    dev.fe.submit_many(0, &heads);
    drop(f.dev);
    let mut dev = BlkDev::connect(&f.sock, Setup::default());
    dev.assert_alive(600);
}

#[test]
fn blk_hostile_malformed_chain_table() {
    let mut f = fixture();
    let out = run_malformed_chains(&mut f.dev, 0, F_WRITE);
    // Unused, or only a status byte (IOERR): never data.
    for o in &out {
        assert!(o.used_len <= Some(1), "{}: {:?}", o.what, o.used_len);
    }
}

/// A guest that moves the avail index more than a queue ahead and leaves
/// it there: the worker used to go round its EVENT_IDX loop forever (100%
/// of a core, deaf to its exit event), so the backend could not let the
/// frontend go and never served the next one.
#[test]
fn blk_hostile_avail_index_overrun_left_in_place() {
    let mut f = fixture();
    assert!(f.dev.fe.acked & EVENT_IDX != 0, "EVENT_IDX negotiated");
    {
        let fe = &mut f.dev.fe;
        let q = &mut fe.queues[0];
        let idx = q.ring.avail_idx.wrapping_add(q.ring.size + 5);
        q.ring.set_avail_idx(&fe.mem, idx);
        q.kick.write(1).unwrap();
    }
    drop(f.dev);
    f.child
        .wait_for_line("frontend disconnected", Duration::from_secs(10));
    let sock = f.sock.clone();
    let mut dev = within(
        "a new frontend is served",
        Duration::from_secs(20),
        move || BlkDev::connect(&sock, Setup::default()),
    );
    dev.assert_alive(8);
}

#[test]
fn blk_hostile_vhost_user_messages() {
    let f = fixture();
    let Fixture {
        _dir,
        child,
        sock,
        dev,
        ..
    } = f;
    drop(dev);
    let s = sock.clone();
    let out = run_message_cases(&sock, 1, Duration::from_secs(10), move |what| {
        let s = s.clone();
        let mut dev = within(what, Duration::from_secs(20), move || {
            BlkDev::connect(&s, Setup::default())
        });
        dev.assert_alive(3);
    });
    assert!(out.iter().any(|(_, v)| *v == Verdict::Dropped));
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{lines:#?}");
}
