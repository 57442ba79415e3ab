//! Command line of `splitvm-net`: the link control is documented in
//! `--help`, bad input fails once with exit status 1.

use std::process::Command;
use std::time::Duration;

use splitvm_tests::proc::ChildGuard;

fn run(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-net"));
    cmd.args(args);
    let (st, lines) = ChildGuard::spawn("splitvm-net", cmd).finish(Duration::from_secs(10));
    (st.code(), lines)
}

#[test]
fn net_cli_help_documents_link_control() {
    let (st, lines) = run(&["--help"]);
    assert_eq!(st, Some(0));
    let text = lines.join(" ");
    for want in [
        "SIGUSR1",
        "SIGUSR2",
        "--tap-fd",
        "--mtu",
        "--queues",
        "CONFIG_CHANGE",
    ] {
        assert!(text.contains(want), "--help mentions {want}: {text}");
    }
}

#[test]
fn net_cli_bad_input_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    // Not a tap: stdin of the child is /dev/null (fd 0).
    let (st, lines) = run(&["--socket-path", sock, "--tap-fd", "0"]);
    assert_eq!(st, Some(1), "{lines:?}");
    let errs: Vec<_> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errs.len(), 1, "one error line: {lines:?}");
    assert!(errs[0].contains("fd 0"), "{errs:?}");
    let (st, lines) = run(&[
        "--socket-path",
        sock,
        "--tap",
        "t0",
        "--mac",
        "01:02:03:04:05:06",
    ]);
    assert_eq!(st, Some(1));
    assert!(lines.iter().any(|l| l.contains("--mac")), "{lines:?}");
    let (st, lines) = run(&["--socket-path", sock, "--tap", "t0", "--tap-fd", "3"]);
    assert_eq!(st, Some(2), "clap usage error: {lines:?}");
}
