//! splitvm-blk under a real frontend and a real Linux driver: QEMU 7.2
//! (`-M microvm`, TCG) with Debian's kernel and the level-2 initramfs from
//! `scripts/guest-assets`, three `vhost-user-blk` devices each served by its
//! own splitvm-blk (read-write patterns, ext2 file system, read-only).
//! After QEMU exits the test checks the images hold what the guest wrote.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use splitvm_tests::hostile::blk::spawn_blk;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::qemu::{boot, cpio, guest_assets, microvm, results};
use splitvm_tests::wait::wait_for;

const MIB: u64 = 1 << 20;
const PAT_LEN: usize = 64 << 10;

fn pattern() -> Vec<u8> {
    (0..PAT_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

const SCENARIO: &str = r#"
dev_of() { for d in /sys/block/vd*; do [ "$(cat $d/serial)" = "$1" ] && echo /dev/${d##*/}; done; }
RW=$(dev_of splitvm-rw); FS=$(dev_of splitvm-fs); RO=$(dev_of splitvm-ro)
echo "RESULT devices rw=$RW fs=$FS ro=$RO"
[ -n "$RW" ] && [ -n "$FS" ] && [ -n "$RO" ] || exit 1
ok() { if "$@"; then echo ok; else echo fail; fi; }
# Patterns: direct at 0 and at the last 4 KiB, buffered at 1 MiB and 4 MiB.
SECT=$(cat /sys/block/${RW#/dev/}/size)
echo "RESULT rw_sectors=$SECT"
echo "RESULT w_direct0=$(ok dd if=/pat.bin of=$RW bs=4096 count=4 oflag=direct 2>/dev/null)"
echo "RESULT w_directend=$(ok dd if=/pat.bin of=$RW bs=512 count=8 seek=$((SECT - 8)) oflag=direct 2>/dev/null)"
echo "RESULT w_buffered=$(ok dd if=/pat.bin of=$RW bs=4096 seek=256 2>/dev/null)"
dd if=/pat.bin of=$RW bs=4096 seek=1024 2>/dev/null
sync
echo 3 > /proc/sys/vm/drop_caches
head -c 16384 /pat.bin > /tmp/e16k
dd if=$RW bs=4096 count=4 iflag=direct of=/tmp/r0 2>/dev/null
echo "RESULT r_direct0=$(ok cmp -s /tmp/r0 /tmp/e16k)"
dd if=$RW bs=4096 skip=256 count=16 of=/tmp/r1 2>/dev/null
echo "RESULT r_buffered=$(ok cmp -s /tmp/r1 /pat.bin)"
echo "RESULT discard=$(ok blkdiscard -o $((4 << 20)) -l 65536 $RW)"
dd if=$RW bs=4096 skip=1024 count=16 iflag=direct of=/tmp/r2 2>/dev/null
dd if=/dev/zero bs=4096 count=16 of=/tmp/z 2>/dev/null
echo "RESULT r_discarded_zero=$(ok cmp -s /tmp/r2 /tmp/z)"
echo "RESULT flush=$(ok sync)"
# A file system. ext4 (which mounts ext2) needs a crc32c driver that the
# base initramfs does not load.
insmod /crc32c_generic.ko 2>/dev/null
mke2fs -F $FS > /tmp/mkfs.log 2>&1 && echo "RESULT mkfs=ok" || { echo "RESULT mkfs=fail"; cat /tmp/mkfs.log; }
mkdir -p /mnt
mount -t ext2 $FS /mnt 2>/tmp/mount.log && echo "RESULT mount=ok" || { echo "RESULT mount=fail"; cat /tmp/mount.log; cat /proc/filesystems; dmesg | tail -5; exit 1; }
cp /pat.bin /mnt/pat.bin && echo hello-splitvm > /mnt/hello
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext2 -o ro $FS /mnt
echo "RESULT fs_readback=$(ok cmp -s /mnt/pat.bin /pat.bin)"
umount /mnt
# Read-only device.
echo "RESULT ro_flag=$(cat /sys/block/${RO#/dev/}/ro)"
if dd if=/pat.bin of=$RO bs=4096 count=1 oflag=direct 2>/dev/null; then echo "RESULT ro_write=succeeded"; else echo "RESULT ro_write=failed"; fi
dd if=$RO bs=4096 count=1 iflag=direct of=/tmp/ro 2>/dev/null
head -c 4096 /pat.bin > /tmp/e4k
echo "RESULT ro_read=$(ok cmp -s /tmp/ro /tmp/e4k)"
sync
"#;

fn image(dir: &Path, name: &str, size: u64, fill: Option<&[u8]>) -> PathBuf {
    let p = dir.join(name);
    let f = fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    if let Some(b) = fill {
        let mut all = fs::read(&p).unwrap();
        all[..b.len()].copy_from_slice(b);
        fs::write(&p, all).unwrap();
    }
    p
}

#[test]
fn blk_qemu_linux_guest_reads_writes_and_mkfs() {
    let assets = guest_assets();
    let dir = tempfile::tempdir().unwrap();
    let pat = pattern();
    let rw = image(dir.path(), "rw.img", 64 * MIB, None);
    let fsimg = image(dir.path(), "fs.img", 32 * MIB, None);
    let ro = image(dir.path(), "ro.img", 8 * MIB, Some(&pat[..4096]));
    let mut backends = Vec::new();
    let mut chardevs = Vec::new();
    for (i, (img, serial, extra)) in [
        (&rw, "splitvm-rw", None),
        (&fsimg, "splitvm-fs", None),
        (&ro, "splitvm-ro", Some("--readonly")),
    ]
    .into_iter()
    .enumerate()
    {
        let d = dir.path().join(format!("b{i}"));
        fs::create_dir_all(&d).unwrap();
        let mut args = vec!["--serial", serial];
        args.extend(extra);
        let (child, sock) = spawn_blk(&d, img, &args);
        wait_for("backend socket", Duration::from_secs(10), || {
            sock.exists().then_some(())
        });
        chardevs.push(sock);
        backends.push(child);
    }

    let mut initrd = fs::read(assets.join("l2-initramfs.cpio")).unwrap();
    let crc = fs::read(assets.join("modules/kernel/crypto/crc32c_generic.ko")).unwrap();
    initrd.extend(cpio(
        dir.path(),
        &[
            ("scenario.sh", SCENARIO.as_bytes()),
            ("pat.bin", &pat),
            ("crc32c_generic.ko", &crc),
        ],
    ));
    let initrd_path = dir.path().join("initrd.cpio");
    fs::write(&initrd_path, initrd).unwrap();

    let mut cmd = microvm(&[]);
    for (i, sock) in chardevs.iter().enumerate() {
        cmd.arg("-chardev")
            .arg(format!("socket,id=c{i},path={}", sock.display()))
            .arg("-device")
            .arg(format!("vhost-user-blk,chardev=c{i}"));
    }
    boot(&mut cmd, &assets, &initrd_path);
    let mut qemu = ChildGuard::spawn("qemu", cmd);
    let done = qemu.wait_for_line("SPLITVM-L2-DONE", Duration::from_secs(240));
    let st = qemu.wait_exit(Duration::from_secs(60));
    // Every line up to SPLITVM-L2-DONE (prefixed; `results` skips the prefix).
    let lines: Vec<String> = qemu.dump().lines().map(str::to_string).collect();
    assert!(st.success(), "qemu exit status {st}");
    let res = results(&lines);
    let get = |k: &str| {
        res.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("guest reported no {k}: {lines:#?}"))
    };
    assert!(done.contains("rc=0"), "scenario failed: {lines:#?}");
    for k in [
        "w_direct0",
        "w_directend",
        "w_buffered",
        "r_direct0",
        "r_buffered",
        "discard",
        "r_discarded_zero",
        "flush",
        "mkfs",
        "mount",
        "fs_readback",
        "ro_read",
    ] {
        assert_eq!(get(k), "ok", "guest step {k}: {lines:#?}");
    }
    assert_eq!(get("rw_sectors"), (64 * MIB / 512).to_string());
    assert_eq!(get("ro_flag"), "1");
    assert_eq!(get("ro_write"), "failed");

    // The images hold exactly what the guest wrote.
    let img = fs::read(&rw).unwrap();
    assert_eq!(&img[..16384], &pat[..16384], "direct write at 0");
    assert_eq!(
        &img[img.len() - 4096..],
        &pat[..4096],
        "direct write at the end"
    );
    assert_eq!(
        &img[MIB as usize..MIB as usize + PAT_LEN],
        &pat[..],
        "buffered write"
    );
    let hole = 4 * MIB as usize;
    assert!(
        img[hole..hole + PAT_LEN].iter().all(|&b| b == 0),
        "discarded range"
    );
    assert!(
        img[16384..MIB as usize].iter().all(|&b| b == 0),
        "untouched range"
    );
    let ro_img = fs::read(&ro).unwrap();
    assert_eq!(&ro_img[..4096], &pat[..4096]);
    assert!(
        ro_img[4096..].iter().all(|&b| b == 0),
        "read-only image unchanged"
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /pat.bin"])
        .arg(&fsimg)
        .stderr(Stdio::null())
        .output()
        .expect("debugfs (package e2fsprogs)");
    assert_eq!(cat.stdout, pat, "file written through ext2");

    // Features QEMU negotiated, then a clean stop.
    for (i, mut b) in backends.into_iter().enumerate() {
        let line = b.wait_for_line("negotiated virtio features", Duration::from_secs(5));
        eprintln!("backend {i}: {line}");
        for f in [
            "VERSION_1",
            "RING_EVENT_IDX",
            "FLUSH",
            "DISCARD",
            "WRITE_ZEROES",
        ] {
            assert!(line.contains(f), "{f} negotiated with QEMU: {line}");
        }
        if i == 2 {
            assert!(line.contains(" RO"), "RO negotiated: {line}");
        }
        b.signal(libc::SIGTERM);
        let (st, _) = b.finish(Duration::from_secs(10));
        assert_eq!(st.code(), Some(0));
    }
}
