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

/// Runs blkgen against `sock` and returns its requests completed.
fn blkgen(sock: &std::path::Path, rw: &str, qd: &str) -> u64 {
    let mut cmd = Command::new(bin_path("blkgen"));
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
        ]);
    let g = ChildGuard::spawn("blkgen", cmd);
    let (st, lines) = g.finish(Duration::from_secs(60));
    assert!(
        st.success(),
        "blkgen {rw} qd {qd}: {st}\n{}",
        lines.join("\n")
    );
    let kv = lines
        .iter()
        .find(|l| l.starts_with("BLKGEN "))
        .unwrap_or_else(|| panic!("no BLKGEN line:\n{}", lines.join("\n")));
    kv.split_whitespace()
        .find_map(|f| f.strip_prefix("requests="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no requests= in {kv}"))
}

#[test]
fn blk_direct_under_libblkio_never_loses_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    // Written, not sparse: direct reads then reach real blocks.
    fs::write(&img, vec![0x5a; 32 << 20]).unwrap();
    let (backend, sock) = spawn_blk(dir.path(), &img, &["--direct"]);
    wait_for("splitvm-blk socket", Duration::from_secs(10), || {
        sock.exists().then_some(())
    });
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
