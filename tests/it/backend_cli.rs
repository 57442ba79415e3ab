//! Command-line behaviour of the backend binaries.

use std::process::Command;
use std::time::Duration;

use splitvm_tests::proc::ChildGuard;

#[test]
fn backend_cli_socket_path_required() {
    for name in ["splitvm-blk", "splitvm-net", "splitvm-input"] {
        let cmd = Command::new(splitvm_tests::bin_path(name));
        let (st, lines) = ChildGuard::spawn(name, cmd).finish(Duration::from_secs(10));
        assert_ne!(st.code(), Some(0), "{name} without arguments");
        assert!(
            lines.iter().any(|l| l.contains("--socket-path")),
            "{name} names the missing flag: {lines:?}"
        );
    }
}

#[test]
fn backend_cli_blk_bad_image_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-blk"));
    cmd.arg("--socket-path")
        .arg(dir.path().join("s"))
        .args(["--image", "/nonexistent/disk.img"]);
    let (st, lines) = ChildGuard::spawn("splitvm-blk", cmd).finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    let errs: Vec<_> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errs.len(), 1, "one error line: {lines:?}");
    assert!(errs[0].contains("/nonexistent/disk.img"));
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-blk"));
    cmd.arg("--socket-path").arg(dir.path().join("s")).args([
        "--image",
        "/dev/null",
        "--queues",
        "0",
    ]);
    let (st, lines) = ChildGuard::spawn("splitvm-blk", cmd).finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert!(lines.iter().any(|l| l.contains("--queues")), "{lines:?}");
}
