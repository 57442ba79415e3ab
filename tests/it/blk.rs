//! splitvm-blk behaving correctly for a well-behaved frontend: the real
//! binary on a temp image, driven by the hostile-frontend harness.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use splitvm_tests::hostile::blk::{
    spawn_blk, BlkDev, F_RO, S_IOERR, S_OK, T_DISCARD, T_IN, T_WRITE_ZEROES,
};
use splitvm_tests::hostile::{Desc, Setup, F_WRITE};
use splitvm_tests::wait::wait_for;

const IMG_SIZE: u64 = 8 << 20;

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    let f = fs::File::create(&p).unwrap();
    f.set_len(IMG_SIZE).unwrap();
    p
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) as u8)
        .collect()
}

fn file_bytes(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let all = fs::read(p).unwrap();
    all[off as usize..off as usize + len].to_vec()
}

#[test]
fn blk_write_read_patterns_land_in_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (_child, sock) = spawn_blk(dir.path(), &img, &[]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(dev.capacity(), IMG_SIZE / 512);
    let last = IMG_SIZE / 512 - 1;
    let cases: &[(u64, usize)] = &[(0, 512), (1, 4096), (100, 512), (2048, 65536), (last, 512)];
    for (k, &(sector, len)) in cases.iter().enumerate() {
        let p = pattern(k as u32 + 1, len);
        assert_eq!(dev.write(sector, &p), S_OK, "write at sector {sector}");
        let r = dev.read(sector, len);
        assert_eq!(r.status, S_OK);
        assert_eq!(r.used_len as usize, len + 1, "read used length");
        assert_eq!(r.data, p, "read back at sector {sector}");
    }
    assert_eq!(dev.flush(), S_OK);
    for (k, &(sector, len)) in cases.iter().enumerate() {
        assert_eq!(
            file_bytes(&img, sector * 512, len),
            pattern(k as u32 + 1, len),
            "image bytes at sector {sector}"
        );
    }
    // Untouched areas stay zero.
    assert!(file_bytes(&img, 200 * 512, 4096).iter().all(|&b| b == 0));
}

#[test]
fn blk_scattered_buffers_and_indirect_chain() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (_child, sock) = spawn_blk(dir.path(), &img, &[]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    // A write whose data is split in three descriptors of odd sizes.
    let p = pattern(9, 1536);
    let hdr = dev.header(1, 10);
    let a = dev.buf(&p[..100]);
    let b = dev.buf(&p[100..1000]);
    let c = dev.buf(&p[1000..]);
    let st = dev.status_byte();
    let d = |addr, len, flags| Desc {
        addr,
        len,
        flags,
        next: 0,
    };
    dev.raw(
        0,
        &[
            d(hdr, 16, 0),
            d(a, 100, 0),
            d(b, 900, 0),
            d(c, 536, 0),
            d(st, 1, F_WRITE),
        ],
    );
    assert_eq!(dev.fe.mem.read(st, 1)[0], S_OK);
    assert_eq!(file_bytes(&img, 10 * 512, 1536), p);
    // The same data read through an indirect table.
    let hdr = dev.header(T_IN, 10);
    let data = dev.alloc(1536);
    let st = dev.status_byte();
    let table: Vec<u8> = [
        Desc {
            addr: hdr,
            len: 16,
            flags: 1,
            next: 1,
        },
        Desc {
            addr: data,
            len: 1536,
            flags: F_WRITE | 1,
            next: 2,
        },
        Desc {
            addr: st,
            len: 1,
            flags: F_WRITE,
            next: 0,
        },
    ]
    .iter()
    .flat_map(|d| d.bytes())
    .collect();
    let t = dev.buf(&table);
    dev.raw(0, &[d(t, 48, 4)]);
    assert_eq!(dev.fe.mem.read(st, 1)[0], S_OK);
    assert_eq!(dev.fe.mem.read(data, 1536), p);
}

#[test]
fn blk_flush_discard_write_zeroes_get_id() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (_child, sock) = spawn_blk(dir.path(), &img, &["--serial", "SPLITVM-SERIAL-01"]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    let p = pattern(3, 64 << 10);
    assert_eq!(dev.write(0, &p), S_OK);
    assert_eq!(dev.write(1024, &p), S_OK);
    assert_eq!(dev.flush(), S_OK);
    // Discard 8 sectors at 8, write-zeroes 16 at 1024+16 (and with UNMAP at 1100).
    assert_eq!(dev.ranges(T_DISCARD, &[(8, 8)], 0), S_OK);
    assert_eq!(dev.ranges(T_WRITE_ZEROES, &[(1040, 16)], 0), S_OK);
    assert_eq!(dev.ranges(T_WRITE_ZEROES, &[(1100, 4)], 1), S_OK);
    let r = dev.read(8, 4096);
    assert!(
        r.data.iter().all(|&b| b == 0),
        "discarded range reads zeros"
    );
    assert_eq!(
        dev.read(0, 4096).data,
        p[..4096].to_vec(),
        "before the hole"
    );
    assert!(dev.read(1040, 8192).data.iter().all(|&b| b == 0));
    assert!(dev.read(1100, 2048).data.iter().all(|&b| b == 0));
    assert_eq!(dev.read(1024, 8192).data, p[..8192].to_vec());
    assert!(file_bytes(&img, 8 * 512, 4096).iter().all(|&b| b == 0));
    assert_eq!(
        file_bytes(&img, 16 * 512, 512),
        p[16 * 512..17 * 512].to_vec()
    );
    let id = dev.get_id();
    assert_eq!(id.status, S_OK);
    assert_eq!(&id.data[..17], b"SPLITVM-SERIAL-01");
    assert!(id.data[17..].iter().all(|&b| b == 0));
    assert_eq!(id.used_len, 21);
}

#[test]
fn blk_readonly_rejects_writes_and_advertises_ro() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let p = pattern(5, 4096);
    {
        let mut all = fs::read(&img).unwrap();
        all[4096..8192].copy_from_slice(&p);
        fs::write(&img, all).unwrap();
    }
    let (_child, sock) = spawn_blk(dir.path(), &img, &["--readonly"]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_ne!(dev.fe.offered & F_RO, 0, "VIRTIO_BLK_F_RO offered");
    assert_eq!(dev.read(8, 4096).data, p);
    assert_eq!(dev.write(8, &[0u8; 512]), S_IOERR);
    assert_eq!(dev.ranges(T_DISCARD, &[(8, 8)], 0), S_IOERR);
    assert_eq!(dev.ranges(T_WRITE_ZEROES, &[(8, 8)], 0), S_IOERR);
    assert_eq!(dev.flush(), S_OK);
    assert_eq!(file_bytes(&img, 4096, 4096), p, "image unchanged");
}

#[test]
fn blk_config_space_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (mut child, sock) = spawn_blk(dir.path(), &img, &["--queues", "2"]);
    let mut dev = BlkDev::connect(
        &sock,
        Setup {
            queues: 2,
            ..Setup::default()
        },
    );
    let cfg = dev.fe.config(0, 60);
    let le32 = |o: usize| u32::from_le_bytes(cfg[o..o + 4].try_into().unwrap());
    assert_eq!(
        u64::from_le_bytes(cfg[..8].try_into().unwrap()),
        IMG_SIZE / 512
    );
    assert!(le32(12) >= 1, "seg_max");
    assert_eq!(le32(20), 512, "blk_size");
    assert_eq!(u16::from_le_bytes([cfg[34], cfg[35]]), 2, "num_queues");
    assert!(le32(36) > 0 && le32(40) > 0, "discard limits");
    assert!(le32(48) > 0 && le32(52) > 0, "write-zeroes limits");
    for bit in [32, 29, 28, 2, 6, 9, 12, 13, 14] {
        assert_ne!(
            dev.fe.acked & (1u64 << bit),
            0,
            "feature bit {bit} negotiated"
        );
    }
    assert_eq!(dev.fe.offered & F_RO, 0);
    // Both queues serve requests.
    let p = pattern(7, 4096);
    assert_eq!(dev.request_on(1, 1, 64, &p, 0).status, S_OK);
    assert_eq!(dev.request_on(0, T_IN, 64, &[], 4096).data, p);
    child.wait_for_line("negotiated virtio features", Duration::from_secs(5));
}

#[test]
fn blk_many_requests_in_flight() {
    for engine in ["io-uring", "sync"] {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let (_child, sock) = spawn_blk(dir.path(), &img, &["--io-engine", engine]);
        let mut dev = BlkDev::connect(&sock, Setup::default());
        // 64 writes published with one kick, then 64 reads the same way.
        let mut heads = Vec::new();
        let mut statuses = Vec::new();
        for i in 0..64u64 {
            let hdr = dev.header(1, i * 8);
            let data = dev.buf(&pattern(i as u32, 4096));
            let st = dev.status_byte();
            let d = |addr, len, flags| Desc {
                addr,
                len,
                flags,
                next: 0,
            };
            heads.push(dev.write_raw(0, &[d(hdr, 16, 0), d(data, 4096, 0), d(st, 1, F_WRITE)]));
            statuses.push(st);
        }
        dev.fe.submit_many(0, &heads);
        let mut seen = 0;
        while seen < 64 {
            dev.fe.wait_used(0);
            seen += 1;
        }
        for st in statuses {
            assert_eq!(dev.fe.mem.read(st, 1)[0], S_OK, "{engine}");
        }
        for i in 0..64u64 {
            assert_eq!(
                file_bytes(&img, i * 4096, 4096),
                pattern(i as u32, 4096),
                "{engine}: block {i}"
            );
        }
    }
}

#[test]
fn blk_reconnect_after_frontend_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (mut child, sock) = spawn_blk(dir.path(), &img, &[]);
    for round in 0..3u32 {
        let mut dev = BlkDev::connect(&sock, Setup::default());
        let p = pattern(round, 512);
        assert_eq!(dev.write(u64::from(round), &p), S_OK);
        assert_eq!(dev.read(u64::from(round), 512).data, p);
        drop(dev);
        child.wait_for_line("frontend disconnected", Duration::from_secs(10));
    }
}

#[test]
fn blk_sigterm_exits_zero_and_restart_serves() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (child, sock) = spawn_blk(dir.path(), &img, &[]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    let p = pattern(11, 512);
    assert_eq!(dev.write(3, &p), S_OK);
    // Connected: SIGTERM must end the connection and the process cleanly.
    child.signal(libc::SIGTERM);
    let (st, _) = child.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM");
    assert!(!sock.exists(), "socket removed on exit");
    drop(dev);
    // Idle (no frontend): SIGTERM ends it too.
    let (child, sock) = spawn_blk(dir.path(), &img, &[]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(
        dev.read(3, 512).data,
        p,
        "restarted backend serves the same image"
    );
    drop(dev);
    let mut child = child;
    child.wait_for_line("frontend disconnected", Duration::from_secs(10));
    child.signal(libc::SIGTERM);
    let (st, _) = child.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
    wait_for("socket removal", Duration::from_secs(5), || {
        (!sock.exists()).then_some(())
    });
}
