//! splitvm-blk under libblkio's `virtio-blk-vhost-user` driver (through
//! `blkgen`, the benchmark's load generator): an independent, maintained
//! vhost-user-blk frontend with EVENT_IDX, on an image opened `--direct`,
//! so every request completes asynchronously in io_uring.
//!
//! At queue depth 1 this is the shape that once lost requests: a worker
//! round took the request, the next round only completed it, and the
//! driver's next request, added before notifications were back on, came
//! without a kick; the worker slept and the driver waited forever (about
//! every other 3-second run hung). `splitvm_backends::avail`'s unit tests
//! pin the rule down deterministically; this test runs the real thing.

use std::fs;
use std::process::Command;
use std::time::Duration;

use splitvm_tests::bin_path;
use splitvm_tests::hostile::blk::spawn_blk;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;

/// Runs blkgen against `sock` (under `prefix`, say `taskset -c 0`, with
/// `extra` arguments) and returns its `BLKGEN` line.
fn blkgen_kv(
    prefix: &[&str],
    sock: &std::path::Path,
    rw: &str,
    qd: &str,
    extra: &[&str],
) -> String {
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(bin_path("blkgen"));
            c
        }
        None => Command::new(bin_path("blkgen")),
    };
    cmd.arg("--socket")
        .arg(sock)
        .args(["--rw", rw, "--qd", qd, "--bs", "4096"])
        .args([
            "--seconds",
            "2",
            "--warmup",
            "0",
            "--stall-secs",
            "3",
            "--kv",
        ])
        .args(extra);
    let g = ChildGuard::spawn("blkgen", cmd);
    let (st, lines) = g.finish(Duration::from_secs(60));
    assert!(
        st.success(),
        "blkgen {rw} qd {qd}: {st}\n{}",
        lines.join("\n")
    );
    lines
        .iter()
        .find(|l| l.starts_with("BLKGEN "))
        .cloned()
        .unwrap_or_else(|| panic!("no BLKGEN line:\n{}", lines.join("\n")))
}

/// Field `key` of a `BLKGEN` line.
fn field(kv: &str, key: &str) -> u64 {
    kv.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {kv}"))
}

/// Runs blkgen against `sock` and returns its requests completed.
fn blkgen(sock: &std::path::Path, rw: &str, qd: &str) -> u64 {
    field(&blkgen_kv(&[], sock, rw, qd, &[]), "requests")
}

/// splitvm-blk `--direct` on a `mib` MiB image in `dir`, once its socket
/// is there.
fn direct_backend(dir: &std::path::Path, mib: usize) -> (ChildGuard, std::path::PathBuf) {
    let img = dir.join("disk.img");
    // Written, not sparse: direct reads then reach real blocks.
    fs::write(&img, vec![0x5a; mib << 20]).unwrap();
    let (backend, sock) = spawn_blk(dir, &img, &["--direct"]);
    wait_for("splitvm-blk socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
    (backend, sock)
}

#[test]
fn blk_direct_under_libblkio_never_loses_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let (backend, sock) = direct_backend(dir.path(), 32);
    for (rw, qd) in [
        ("randread", "1"),
        ("randwrite", "1"),
        ("randread", "1"),
        ("randwrite", "1"),
        ("randread", "8"),
    ] {
        let n = blkgen(&sock, rw, qd);
        assert!(
            n > 100,
            "{rw} qd {qd}: only {n} requests in 2 s\n{}",
            backend.dump()
        );
    }
}

/// `blkgen --watch-pid` (the bench's placement table) tells a backend on
/// blkgen's CPU from one on the other CPU: both pinned with `taskset`.
#[test]
fn blkgen_placement_record_tells_one_cpu_from_two() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs two CPUs, this machine has {cpus}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (backend, sock) = direct_backend(dir.path(), 8);
    let pid = backend.pid().to_string();
    let pin_backend = |cpu: &str| {
        // -a: every thread, the queue workers started later included
        // (they inherit the mask of the thread that spawns them).
        let st = Command::new("taskset")
            .args(["-a", "-p", "-c", cpu, &pid])
            .output()
            .expect("taskset");
        assert!(st.status.success(), "taskset: {st:?}");
    };
    let watch = ["--watch-pid", pid.as_str()];
    for (backend_cpu, want_same) in [("0", true), ("1", false)] {
        pin_backend(backend_cpu);
        let kv = blkgen_kv(&["taskset", "-c", "0"], &sock, "randread", "1", &watch);
        let samples = field(&kv, "placement_samples");
        let same = field(&kv, "same_cpu_pct");
        assert!(samples >= 50, "{kv}\n{}", backend.dump());
        if want_same {
            assert_eq!(same, 100, "backend on blkgen's CPU: {kv}");
        } else {
            assert_eq!(same, 0, "backend on the other CPU: {kv}");
        }
    }
}
