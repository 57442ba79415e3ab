//! splitvm-blk dies under QEMU's `vhost-user-blk` and comes back: QEMU 7.2
//! (`-M microvm`, TCG, chardev `reconnect=1`) keeps the inflight region it
//! got with `GET_INFLIGHT_FD`; the Debian guest writes a pattern of several
//! MiB with `dd oflag=direct` in chunks while the test SIGKILLs the backend
//! after a few chunks and starts a new one on the same socket. The guest
//! must see no I/O error, read back the same checksum, and the image must
//! hold what the guest wrote.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use splitvm_tests::hostile::blk::spawn_blk;
use splitvm_tests::hostile::inflight::Region;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;

use splitvm_tests::qemu::{boot, cpio, guest_assets, microvm, results};

const MIB: usize = 1 << 20;
/// Pattern written by the guest.
const BIG: usize = 8 * MIB;
/// `dd` chunks (64 KiB blocks).
const CHUNKS: usize = 16;
/// The backend is killed once the guest reports this chunk done.
const KILL_AFTER: usize = 3;
/// Written by the test at [`MARK_AT`] in the image once it has killed and
/// restarted the backend: the guest stops rewriting its pattern.
const MARK: &str = "SPLITVM-KILLED";
const MARK_AT: usize = 3 * BIG;
/// Passes over the pattern before the guest gives up waiting for the mark.
const MAX_PASSES: usize = 100;

fn big_pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BIG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn scenario() -> String {
    let per = BIG / 65536 / CHUNKS;
    format!(
        r#"
dev_of() {{ for d in /sys/block/vd*; do [ "$(cat $d/serial)" = "$1" ] && echo /dev/${{d##*/}}; done; }}
RW=$(dev_of splitvm-rc)
echo "RESULT device=$RW"
[ -n "$RW" ] || exit 1
# Pass after pass over the same pattern, until the test has killed the
# backend and says so in the image: a slow host cannot let the guest finish
# before the kill.
pass=0
while :; do
	i=0
	while [ $i -lt {CHUNKS} ]; do
		dd if=/big.bin of=$RW bs=65536 count={per} skip=$((i * {per})) seek=$((i * {per})) oflag=direct 2>/dev/null || echo "RESULT dd_failed=$i"
		echo "RESULT chunk=$i"
		i=$((i + 1))
	done
	pass=$((pass + 1))
	dd if=$RW bs=512 count=1 skip={mark_sector} iflag=direct 2>/dev/null | grep -q {MARK} && break
	[ $pass -ge {MAX_PASSES} ] && echo "RESULT never_killed=$pass" && break
done
echo "RESULT passes=$pass"
sync
echo 3 > /proc/sys/vm/drop_caches
W=$(md5sum < /big.bin | cut -d' ' -f1)
R=$(dd if=$RW bs=65536 count={total} iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
echo "RESULT md5_written=$W md5_read=$R"
echo "RESULT ioerr=$(dmesg | grep -c -e 'I/O error' -e 'blk_update_request')"
"#,
        total = BIG / 65536,
        mark_sector = MARK_AT / 512,
    )
}

#[test]
fn blk_qemu_reconnect_backend_killed_mid_dd() {
    let assets = guest_assets();
    let dir = tempfile::tempdir().unwrap();
    let big = big_pattern();
    let img = dir.path().join("rc.img");
    fs::File::create(&img)
        .unwrap()
        .set_len(4 * BIG as u64)
        .unwrap();
    let bdir = dir.path().join("b");
    fs::create_dir_all(&bdir).unwrap();
    // O_DIRECT: requests go through io_uring and stay in flight for the
    // disk's latency, long enough to be caught in the region below (buffered
    // I/O completes inline, in microseconds).
    let args = ["--serial", "splitvm-rc", "--direct"];
    let (backend, sock) = spawn_blk(&bdir, &img, &args);
    wait_for("backend socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });

    let mut initrd = fs::read(assets.join("l2-initramfs.cpio")).unwrap();
    let script = scenario();
    initrd.extend(cpio(
        dir.path(),
        &[("scenario.sh", script.as_bytes()), ("big.bin", &big)],
    ));
    let initrd_path = dir.path().join("initrd.cpio");
    fs::write(&initrd_path, initrd).unwrap();
    let mut qemu = ChildGuard::spawn("qemu", qemu_cmd(&assets, &initrd_path, &sock));

    qemu.wait_for_line(
        &format!("RESULT chunk={KILL_AFTER}"),
        Duration::from_secs(240),
    );
    // Kill the backend while it holds requests: watch its inflight region
    // (QEMU's default queue size 128), stop it when entries show, and kill
    // it if they are still there once it is stopped.
    let region = wait_for("backend's inflight region", Duration::from_secs(10), || {
        Region::of_process(backend.pid(), 1, 128)
    });
    let end = Instant::now() + Duration::from_secs(120);
    let at_kill = loop {
        assert!(Instant::now() < end, "never caught a request in flight");
        if region.in_flight(0).is_empty() {
            std::hint::spin_loop();
            continue;
        }
        freeze(&backend);
        let held = region.in_flight(0);
        if !held.is_empty() {
            break held;
        }
        backend.signal(libc::SIGCONT);
    };
    eprintln!(
        "killing the backend with {} request(s) in flight: {at_kill:?}",
        at_kill.len()
    );
    let mut backend = backend;
    backend.signal(libc::SIGKILL);
    backend.wait_exit(Duration::from_secs(10));
    let first_log = backend.dump();
    drop(backend);
    let (backend2, _) = spawn_blk(&bdir, &img, &args);
    // Beyond the pattern; synced, so the backend's O_DIRECT read sees it.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(MARK_AT as u64)).unwrap();
        f.write_all(MARK.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }

    let done = qemu.wait_for_line("SPLITVM-L2-DONE", Duration::from_secs(300));
    let st = qemu.wait_exit(Duration::from_secs(60));
    let lines: Vec<String> = qemu.dump().lines().map(str::to_string).collect();
    assert!(st.success(), "qemu exit status {st}");
    assert!(done.contains("rc=0"), "scenario failed: {lines:#?}");
    let res = results(&lines);
    let get = |k: &str| {
        res.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("guest reported no {k}: {lines:#?}"))
    };
    assert!(
        !res.iter()
            .any(|(k, _)| k == "dd_failed" || k == "never_killed"),
        "a dd failed, or the guest never saw the mark: {lines:#?}"
    );
    eprintln!("the guest wrote its pattern {} time(s)", get("passes"));
    assert_eq!(
        get("md5_written"),
        get("md5_read"),
        "checksum after the reconnect"
    );
    assert_eq!(get("ioerr"), "0", "guest I/O errors: {lines:#?}");
    for l in &lines {
        assert!(
            !l.contains("I/O error") && !l.contains("blk_update_request"),
            "guest log: {l}"
        );
    }
    let on_disk = fs::read(&img).unwrap();
    assert!(
        on_disk[..BIG] == big[..],
        "image holds what the guest wrote"
    );

    let second_log = backend2.dump();
    let resubmitted: Vec<&str> = second_log
        .lines()
        .filter(|l| l.contains("resubmitting") || l.contains("inflight"))
        .collect();
    eprintln!("first backend, last lines:");
    for l in first_log.lines().rev().take(3) {
        eprintln!("  {l}");
    }
    eprintln!("restarted backend: {resubmitted:#?}");
    assert!(
        second_log.contains("inflight region set"),
        "QEMU passed the inflight region to the new backend:\n{second_log}"
    );
    assert!(
        second_log.contains("resubmitting"),
        "the new backend resubmitted what was in flight:\n{second_log}"
    );
    backend2.signal(libc::SIGTERM);
    let (st, _) = backend2.finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));
}

/// Stops `child` (SIGSTOP) and waits until the kernel reports it stopped.
fn freeze(child: &ChildGuard) {
    child.signal(libc::SIGSTOP);
    let stat = format!("/proc/{}/stat", child.pid());
    wait_for("backend stopped", Duration::from_secs(10), || {
        let s = fs::read_to_string(&stat).ok()?;
        let state = s.rsplit(") ").next()?.chars().next()?;
        (state == 'T' || state == 't').then_some(())
    });
}

fn qemu_cmd(assets: &Path, initrd: &Path, sock: &Path) -> Command {
    let mut cmd = microvm(&[]);
    cmd.arg("-chardev")
        .arg(format!("socket,id=c0,path={},reconnect=1", sock.display()))
        .args(["-device", "vhost-user-blk,chardev=c0,num-queues=1"]);
    boot(&mut cmd, assets, initrd);
    cmd
}
