//! Command-line behaviour of the backend binaries.

use std::process::Command;
use std::time::Duration;

use splitvm_tests::proc::ChildGuard;

#[test]
fn backend_cli_socket_path_required() {
    let device_args: [(&str, &[&str]); 3] = [
        ("splitvm-blk", &["--image", "/dev/null"]),
        ("splitvm-net", &["--tap", "tap-none"]),
        ("splitvm-input", &["--evdev", "/dev/null"]),
    ];
    for (name, args) in device_args {
        let mut cmd = Command::new(splitvm_tests::bin_path(name));
        // Neither --socket-path, --socket-fd nor socket activation.
        cmd.args(args)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID");
        let (st, lines) = ChildGuard::spawn(name, cmd).finish(Duration::from_secs(10));
        assert_eq!(st.code(), Some(1), "{name} without a socket");
        let errs: Vec<_> = lines.iter().filter(|l| l.contains("ERROR")).collect();
        assert!(
            errs.len() == 1 && errs[0].contains("--socket-path") && errs[0].contains("--socket-fd"),
            "{name} names the missing flags once: {lines:?}"
        );
        // Both flags at once are refused by the parser.
        let mut cmd = Command::new(splitvm_tests::bin_path(name));
        cmd.args(args)
            .args(["--socket-path", "/tmp/x", "--socket-fd", "3"]);
        let (st, lines) = ChildGuard::spawn(name, cmd).finish(Duration::from_secs(10));
        assert_eq!(st.code(), Some(2), "{name}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("cannot be used with")),
            "{lines:?}"
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
