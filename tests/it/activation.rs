//! Backends on an inherited listening socket, started the way systemd
//! starts a socket-activated service: the test owns the socket (bound and
//! listening, like a `.socket` unit), passes it as fd 3 and execs the
//! backend through `sh -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec ...'`, so
//! `LISTEN_PID` is the backend's own pid. A killed backend is replaced by a
//! new one on the same fd, which serves on the same path.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use splitvm_tests::hostile::blk::{BlkDev, S_OK};
use splitvm_tests::hostile::Setup;
use splitvm_tests::proc::ChildGuard;

/// How the backend finds its socket.
#[derive(Clone, Copy)]
enum Via {
    /// `LISTEN_FDS=1` and `LISTEN_PID` = the backend's pid, no flag.
    Systemd,
    /// `--socket-fd 3`.
    Flag,
}

/// Starts `prog` with `listener` as its fd 3.
fn launch(prog: &str, listener: RawFd, via: Via, args: &[&str]) -> ChildGuard {
    let bin = splitvm_tests::bin_path(prog);
    let mut cmd = match via {
        Via::Systemd => {
            let mut c = Command::new("sh");
            // `$$` is the shell's pid, which `exec` hands to the backend.
            c.arg("-c")
                .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
                .arg(&bin);
            c
        }
        Via::Flag => {
            let mut c = Command::new(&bin);
            c.args(["--socket-fd", "3"]);
            c
        }
    };
    cmd.args(args);
    // SAFETY: between fork and exec the closure only calls dup2 or fcntl,
    // which are async-signal-safe, on fds this process owns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 leaves close-on-exec clear on fd 3; an fd that is 3
            // already needs it cleared by hand.
            let r = if listener == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(listener, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    ChildGuard::spawn(prog, cmd)
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    p
}

#[test]
fn activation_blk_restarts_on_the_same_socket() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let img_arg = img.to_str().unwrap();
    let sock = dir.path().join("blk.sock");
    // The "socket unit": bound and listening before any backend runs.
    let listener = UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();

    let mut first = launch("splitvm-blk", fd, Via::Systemd, &["--image", img_arg]);
    first.wait_for_line("(inherited socket)", Duration::from_secs(20));
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(dev.write(8, &[0x5a; 512]), S_OK);
    assert_eq!(dev.read(8, 512).data, vec![0x5a; 512]);

    // Killed: the path stays (the backend never owned it) and a frontend
    // may connect meanwhile; it waits in the backlog.
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10));
    drop(dev);
    assert!(sock.exists(), "a killed backend leaves the socket in place");

    // A new backend on the same fd, this time through --socket-fd.
    let mut second = launch("splitvm-blk", fd, Via::Flag, &["--image", img_arg]);
    second.wait_for_line("(inherited socket)", Duration::from_secs(20));
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(
        dev.read(8, 512).data,
        vec![0x5a; 512],
        "same image, same path"
    );
    assert_eq!(dev.write(9, &[0xa5; 512]), S_OK);

    // SIGTERM: a clean exit that leaves the inherited socket's path alone.
    second.signal(libc::SIGTERM);
    assert!(second.wait_exit(Duration::from_secs(10)).success());
    assert!(
        sock.exists(),
        "the owner of the socket removes it, not the backend"
    );

    // And a third on the same socket still serves, after a clean stop.
    let mut third = launch("splitvm-blk", fd, Via::Systemd, &["--image", img_arg]);
    third.wait_for_line("(inherited socket)", Duration::from_secs(20));
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(dev.read(9, 512).data, vec![0xa5; 512]);
}

#[test]
fn activation_net_and_input_take_fd_3_too() {
    let dir = tempfile::tempdir().unwrap();
    let ev = dir.path().join("events.sock");
    let sock = dir.path().join("input.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let args = [
        "--profile",
        "keyboard",
        "--event-socket",
        ev.to_str().unwrap(),
    ];
    let mut input = launch("splitvm-input", listener.as_raw_fd(), Via::Systemd, &args);
    let line = input.wait_for_line("(inherited socket)", Duration::from_secs(20));
    assert!(
        line.contains(sock.to_str().unwrap()) && line.contains("inherited"),
        "{line}"
    );
    let mut dev = splitvm_tests::hostile::input::InputDev::connect(&sock);
    // VIRTIO_INPUT_CFG_ID_NAME: the backend answers on the inherited socket.
    assert!(!dev.select(1, 0).is_empty());
    drop(dev);
    input.signal(libc::SIGTERM);
    assert!(input.wait_exit(Duration::from_secs(10)).success());
    assert!(sock.exists());

    // splitvm-net gets as far as its tap: the socket part needs no privilege.
    let nsock = dir.path().join("net.sock");
    let nl = UnixListener::bind(&nsock).unwrap();
    let args = ["--tap-fd", "0"];
    let net = launch("splitvm-net", nl.as_raw_fd(), Via::Systemd, &args);
    let (st, lines) = net.finish(Duration::from_secs(10));
    assert!(!st.success());
    assert!(
        !lines.iter().any(|l| l.contains("no socket to listen on")),
        "splitvm-net found its socket: {lines:?}"
    );
}

#[test]
fn activation_refuses_what_is_not_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // LISTEN_PID names another process: the variables are not for us.
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm-blk"));
    cmd.env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1")
        .arg("--image")
        .arg(&img);
    let (st, lines) = ChildGuard::spawn("splitvm-blk", cmd).finish(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert!(
        lines.iter().any(|l| l.contains("--socket-path")),
        "names the flags: {lines:?}"
    );
    // fd 3 is a file, or a unix socket that does not listen.
    let file = std::fs::File::open(&img).unwrap();
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    for (fd, why) in [
        (file.as_raw_fd(), "not a unix socket"),
        (a.as_raw_fd(), "not listening"),
    ] {
        let args = ["--image", img.to_str().unwrap()];
        let (st, lines) =
            launch("splitvm-blk", fd, Via::Flag, &args).finish(Duration::from_secs(10));
        assert_eq!(st.code(), Some(1));
        let errs: Vec<_> = lines.iter().filter(|l| l.contains("ERROR")).collect();
        assert!(
            errs.len() == 1 && errs[0].contains("socket fd 3") && errs[0].contains(why),
            "{why}: {lines:?}"
        );
    }
}
