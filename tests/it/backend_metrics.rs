//! The backends' metrics sockets (`<socket>.metrics`): real splitvm-blk,
//! splitvm-net and splitvm-input processes driven by the hostile frontend,
//! their counters read with the VMM's own reader and checked against the
//! exact bytes the test moved; the socket file is replaced when stale,
//! removed on a clean exit, and a new process starts from zero.

use std::fs;
use std::path::Path;
use std::time::Duration;

use splitvm_tests::hostile::blk::{spawn_blk, BlkDev, S_IOERR, S_OK};
use splitvm_tests::hostile::input::{spawn_profile, EventClient, InputDev};
use splitvm_tests::hostile::net::{
    is_test_frame, plain_hdr, spawn_net_up, test_frame, NetDev, NetNs, PacketSocket,
};
use splitvm_tests::hostile::Setup;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;
use vmm_core::api::metrics::{backend_counters, backend_metrics_path, BackendCounters};

const T: Duration = Duration::from_secs(10);
const SECTORS: u64 = 2048;

/// The counters of the backend on `sock`, once its metrics socket answers.
fn counters(sock: &Path) -> BackendCounters {
    wait_for("the metrics socket to answer", T, || backend_counters(sock))
}

/// Polls until the counters equal `want` (a used entry may reach the
/// driver just before the backend counts it); fails with the last value.
fn wait_counters(sock: &Path, want: BackendCounters) {
    let mut last = None;
    let got = splitvm_tests::wait::poll_until(T, || {
        last = backend_counters(sock);
        (last == Some(want)).then_some(())
    });
    assert!(got.is_some(), "counters {last:?}, want {want:?}");
}

/// Counters: requests, bytes read, bytes written, I/O errors.
fn counts(requests: u64, bytes_read: u64, bytes_written: u64, io_errors: u64) -> BackendCounters {
    BackendCounters {
        requests,
        bytes_read,
        bytes_written,
        io_errors,
    }
}

fn zero() -> BackendCounters {
    counts(0, 0, 0, 0)
}

/// SIGTERM: a clean exit that leaves no metrics socket behind.
fn stop(child: ChildGuard, sock: &Path) {
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(T);
    assert_eq!(st.code(), Some(0), "{lines:#?}");
    assert!(
        !backend_metrics_path(sock).exists(),
        "metrics socket removed on exit"
    );
}

fn image(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    fs::File::create(&img)
        .unwrap()
        .set_len(SECTORS * 512)
        .unwrap();
    img
}

#[test]
fn backend_metrics_blk_counts_exact_bytes_and_restarts_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (child, sock) = spawn_blk(dir.path(), &img, &[]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(counters(&sock), zero(), "nothing done yet");

    // Writes: the device reads 4096 + 1536 bytes from guest buffers.
    assert_eq!(dev.write(0, &[0x5a; 4096]), S_OK);
    assert_eq!(dev.write(8, &[0xa5; 1536]), S_OK);
    // Reads: it writes 512 + 65536 bytes into guest buffers; GET_ID 20.
    assert_eq!(dev.read(0, 512).status, S_OK);
    assert_eq!(dev.read(16, 65536).status, S_OK);
    assert_eq!(dev.get_id().status, S_OK);
    assert_eq!(dev.flush(), S_OK);
    // Past the end: an error status, no bytes.
    assert_eq!(dev.read(SECTORS, 512).status, S_IOERR);
    wait_counters(&sock, counts(7, 4096 + 1536, 512 + 65536 + 20, 1));

    // Killed: the socket files stay behind; a new process replaces them
    // and counts from zero.
    child.signal(libc::SIGKILL);
    drop(child);
    drop(dev);
    let metrics = backend_metrics_path(&sock);
    assert!(
        metrics.exists(),
        "a killed backend leaves its metrics socket"
    );
    let (child, sock2) = spawn_blk(dir.path(), &img, &[]);
    assert_eq!(sock2, sock);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(counters(&sock), zero(), "a new process starts from zero");
    assert_eq!(dev.read(0, 4096).data, vec![0x5a; 4096]);
    wait_counters(&sock, counts(1, 0, 4096, 0));
    // A clean stop removes both sockets.
    stop(child, &sock);
    assert!(!sock.exists(), "vhost-user socket removed on exit");
}

#[test]
fn backend_metrics_blk_metrics_socket_flag() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // --metrics-socket elsewhere: no file at the conventional path.
    let other = dir.path().join("elsewhere");
    fs::create_dir(&other).unwrap();
    let m = other.join("m.sock");
    let m_arg = m.to_str().unwrap();
    let (child, sock) = spawn_blk(dir.path(), &img, &["--metrics-socket", m_arg]);
    let mut dev = BlkDev::connect(&sock, Setup::default());
    assert_eq!(dev.write(0, &[1; 512]), S_OK);
    wait_for("the metrics socket", T, || m.exists().then_some(()));
    assert!(!backend_metrics_path(&sock).exists());
    let line = std::io::read_to_string(std::os::unix::net::UnixStream::connect(&m).unwrap());
    assert_eq!(
        line.unwrap(),
        "{\"requests\":1,\"bytes_read\":512,\"bytes_written\":0,\"io_errors\":0}\n"
    );
    child.signal(libc::SIGTERM);
    let (st, lines) = child.finish(T);
    assert_eq!(st.code(), Some(0), "{lines:#?}");
    assert!(!m.exists(), "removed on exit, in its own directory too");
    assert_eq!(
        fs::read_dir(&other).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn backend_metrics_net_counts_frames_without_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let ns = NetNs::new("m");
    let (child, sock) = spawn_net_up(dir.path(), &ns, "tap0", &["--mtu", "1400"]);
    let wire = PacketSocket::open(&ns, "tap0");
    let mut dev = NetDev::connect(&sock, NetDev::setup());
    assert_eq!(counters(&sock), zero());
    let frame = test_frame(b"m-tx", 200);
    dev.tx(&plain_hdr(), &frame);
    assert_eq!(wire.recv(T, |w| is_test_frame(w, b"m-tx")), Some(frame));
    dev.post_rx(32, 4096);
    let frame = test_frame(b"m-rx", 300);
    wire.send(&frame).unwrap();
    let p = dev.recv_tagged(b"m-rx", T).expect("m-rx in the RX queue");
    assert_eq!(p.frame, frame);
    // The tap may also carry frames the namespace's own stack sends (IPv6
    // router solicitations once the link is up): at least our two.
    let c = counters(&sock);
    assert!(c.requests >= 2, "{c:?}");
    assert_eq!(c.bytes_read, 200, "TX frame bytes, header excluded: {c:?}");
    assert!(c.bytes_written >= 300, "{c:?}");
    assert_eq!(c.io_errors, 0);
    stop(child, &sock);
    drop(ns);
}

#[test]
fn backend_metrics_input_counts_events_both_ways() {
    const EV_LED: u16 = 0x11;
    let dir = tempfile::tempdir().unwrap();
    let (child, sock, events) = spawn_profile(dir.path(), "keyboard", &[]);
    let mut dev = InputDev::connect(&sock);
    let mut c = EventClient::connect(&events, T);
    assert_eq!(counters(&sock), zero());
    dev.post_event_buffers(8);
    c.send(r#"{"key":"KEY_A"}"#);
    assert!(c.sync(T).is_empty(), "no errors");
    // A tap: press, SYN, release, SYN = 4 events of 8 bytes into the guest.
    assert_eq!(dev.events(4).len(), 4);
    // An LED from the guest: 8 bytes read, then passed to the client.
    dev.status((EV_LED, 1, 1));
    assert!(c.line(T).contains("LED_CAPSL"));
    wait_counters(&sock, counts(5, 8, 32, 0));
    stop(child, &sock);
}
