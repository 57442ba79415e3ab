//! The management API through a real unix socket with real HTTP bytes:
//! the router and the HTTP layer against a test `VmmControl`, every answer
//! checked against `docs/api.yaml`; `splitvm ctl` against the same server;
//! then (in `api/e2e.rs`) a real `splitvm run --api-socket` and schemathesis.

mod client;
mod e2e;
mod fake;
mod spec;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_core::api::http::{self, ApiServer, ApiServerError, Limits};
use vmm_core::api::{DeviceInfo, Metrics, VmInfo, VmState, VmmControl};

pub use client::{call, checked, exchange, parse_reply};
use fake::FakeVmm;
use spec::{Operations, Spec};

struct Server {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    fake: Arc<FakeVmm>,
    server: Option<ApiServer>,
}

fn server_with(limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let fake = FakeVmm::new();
    let server = http::spawn_with(&sock, fake.clone(), limits).expect("spawn API server");
    Server {
        _dir: dir,
        sock,
        fake,
        server: Some(server),
    }
}

fn server() -> Server {
    server_with(Limits::default())
}

#[test]
fn api_every_operation_answers_as_documented() {
    let spec = Spec::load();
    let s = server();
    let mut seen = Operations::new();
    let p = &s.sock;
    let vm = checked(&spec, &mut seen, p, "GET", "/vm", None);
    assert_eq!(vm.status, 200);
    let info: VmInfo = serde_json::from_slice(&vm.body).unwrap();
    assert_eq!((info.state, info.vcpus), (VmState::Running, 2));
    for (path, want) in [
        ("/vm/pause", VmState::Paused),
        ("/vm/pause", VmState::Paused),
        ("/vm/resume", VmState::Running),
    ] {
        let r = checked(&spec, &mut seen, p, "PUT", path, None);
        assert_eq!(r.status, 204, "{path}: {}", r.text());
        assert_eq!(s.fake.info().state, want);
    }
    let devs = checked(&spec, &mut seen, p, "GET", "/devices", None);
    let devs: Vec<DeviceInfo> = serde_json::from_slice(&devs.body).unwrap();
    assert_eq!(devs.len(), 2);
    let d = checked(&spec, &mut seen, p, "GET", "/devices/net0", None);
    assert_eq!(d.status, 200);
    // A real socket for the swap to name.
    let new_sock = s._dir.path().join("new-blk.sock");
    let _l = UnixListener::bind(&new_sock).unwrap();
    let body = format!(r#"{{"socket": "{}"}}"#, new_sock.display());
    let r = checked(
        &spec,
        &mut seen,
        p,
        "PUT",
        "/devices/blk0/swap",
        Some(&body),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s.fake.st().blk_socket, new_sock);
    let r = checked(
        &spec,
        &mut seen,
        p,
        "PUT",
        "/devices/net0/link",
        Some(r#"{"up": false}"#),
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!s.fake.st().net_link);
    let m = checked(&spec, &mut seen, p, "GET", "/metrics.json", None);
    let m: Metrics = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(m, s.fake.metrics());
    let prom = checked(&spec, &mut seen, p, "GET", "/metrics", None);
    assert_eq!(
        prom.header("content-type"),
        Some("text/plain; version=0.0.4")
    );
    let text = prom.text();
    for family in [
        "splitvm_device_requests_total",
        "splitvm_device_in_flight",
        "splitvm_device_reconnects_total",
        "splitvm_device_errors_total",
        "splitvm_vcpu_exits_total",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{text}");
        assert!(text.contains(&format!("# TYPE {family} ")), "{text}");
    }
    assert!(text.contains("splitvm_device_requests_total{device=\"blk0\"} 10\n"));
    assert!(text.contains("splitvm_vcpu_exits_total{vcpu=\"1\",reason=\"io\"} 5\n"));
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/shutdown", None);
    assert_eq!(r.status, 204);
    assert_eq!(s.fake.info().state, VmState::ShuttingDown);
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/shutdown", None);
    assert_eq!(r.status, 409, "a second shutdown conflicts");
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/pause", None);
    assert_eq!(r.status, 409);
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/kill", None);
    assert_eq!(r.status, 204);
    assert!(s.fake.st().killed);
    assert_eq!(
        seen,
        spec.operations(),
        "every documented operation was called"
    );
}

#[test]
fn api_errors_name_the_problem_with_the_documented_status() {
    let spec = Spec::load();
    let s = server();
    let mut seen = Operations::new();
    let p = &s.sock;
    let mut expect = |method: &str, path: &str, body: Option<&str>, status: u16, needle: &str| {
        let r = checked(&spec, &mut seen, p, method, path, body);
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.text());
        assert!(
            r.error().contains(needle),
            "{method} {path}: {:?} lacks {needle:?}",
            r.error()
        );
    };
    expect("GET", "/devices/blk9", None, 404, "blk9");
    expect("GET", "/devices/a%2Fb", None, 404, "a/b");
    expect("GET", "/devices/%zz", None, 400, "percent");
    let link = "/devices/net0/link";
    expect(
        "PUT",
        link,
        Some(r#"{"up": "yes"}"#),
        400,
        "field `up`: invalid type",
    );
    expect("PUT", link, Some(r#"{"up": 1}"#), 400, "field `up`");
    expect(
        "PUT",
        link,
        Some(r#"{"up": true, "speed": 10}"#),
        400,
        "unknown field `speed`",
    );
    expect("PUT", link, Some(r#"{}"#), 400, "missing field `up`");
    expect("PUT", link, Some("[true]"), 400, "JSON object");
    expect("PUT", link, Some("null"), 400, "JSON object");
    expect("PUT", link, Some("{\"up\": tru"), 400, "not valid JSON");
    expect("PUT", link, Some(""), 400, "missing JSON body");
    expect("PUT", link, None, 400, "missing JSON body");
    expect(
        "PUT",
        "/devices/blk0/link",
        Some(r#"{"up": true}"#),
        409,
        "no link",
    );
    expect(
        "PUT",
        "/devices/nope/link",
        Some(r#"{"up": true}"#),
        404,
        "nope",
    );
    let swap = "/devices/blk0/swap";
    expect("PUT", swap, Some(r#"{"socket": 5}"#), 400, "field `socket`");
    expect(
        "PUT",
        swap,
        Some(r#"{"path": "/x"}"#),
        400,
        "unknown field `path`",
    );
    expect(
        "PUT",
        swap,
        Some(r#"{"socket": "/nonexistent/b.sock"}"#),
        400,
        "/nonexistent/b.sock",
    );
    expect(
        "PUT",
        swap,
        Some(r#"{"socket": "/"}"#),
        400,
        "not a unix socket",
    );
    expect("PUT", swap, Some(r#"{"socket": ""}"#), 400, "empty");
    expect(
        "PUT",
        "/devices/nope/swap",
        Some(r#"{"socket": "/x"}"#),
        404,
        "nope",
    );
    // blk0's own backend socket (the fake reports it as blk0's from now on).
    let own = s._dir.path().join("own.sock");
    let _own = UnixListener::bind(&own).unwrap();
    s.fake.st().blk_socket = own.clone();
    let body = format!(r#"{{"socket": "{}"}}"#, own.display());
    expect("PUT", swap, Some(&body), 409, "already serves blk0");
    // The backend fails: 502.
    let failing = s._dir.path().join("fail.sock");
    let _l = UnixListener::bind(&failing).unwrap();
    let body = format!(r#"{{"socket": "{}"}}"#, failing.display());
    expect("PUT", swap, Some(&body), 502, "did not negotiate");
    // The VMM fails: 500.
    s.fake.st().pause_fails = true;
    expect("PUT", "/vm/pause", None, 500, "did not stop");

    // Not in the spec: unknown paths and wrong methods.
    for (method, path, status, allow) in [
        ("GET", "/nope", 404, None),
        ("GET", "/vm/", 404, None),
        ("GET", "/devices/blk0/swap/x", 404, None),
        ("POST", "/vm", 405, Some("GET")),
        ("GET", "/vm/pause", 405, Some("PUT")),
        ("DELETE", "/devices/blk0", 405, Some("GET")),
        ("GET", "/devices/blk0/link", 405, Some("PUT")),
        ("PUT", "/metrics", 405, Some("GET")),
    ] {
        let r = call(p, method, path, None);
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert_eq!(r.header("allow"), allow, "{method} {path}");
        spec.check_schema("Error", &r.body);
    }
}

/// Sends raw bytes; expects `status` with a JSON error containing `needle`.
fn expect_raw(spec: &Spec, sock: &Path, bytes: &[u8], half_close: bool, status: u16, needle: &str) {
    let r = exchange(sock, bytes, half_close);
    assert_eq!(
        r.status,
        status,
        "{:?}: {}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
        r.text()
    );
    spec.check_schema("Error", &r.body);
    assert!(
        r.error().contains(needle),
        "{:?} lacks {needle:?}",
        r.error()
    );
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn api_malformed_http_is_answered_and_never_kills_the_server() {
    let spec = Spec::load();
    let s = server();
    let p = &s.sock;
    expect_raw(
        &spec,
        p,
        b"\x00\xff\x13garbage\r\n\r\n",
        false,
        400,
        "malformed",
    );
    expect_raw(
        &spec,
        p,
        b"GET /vm HTTP/9.9\r\n\r\n",
        false,
        400,
        "malformed",
    );
    expect_raw(
        &spec,
        p,
        b"GET /vm HTTP/1.1\r\nHost",
        true,
        400,
        "closed inside",
    );
    let big = format!("GET /vm HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    expect_raw(&spec, p, big.as_bytes(), false, 431, "head larger");
    let endless = format!("GET /vm HTTP/1.1\r\nX-Big: {}", "a".repeat(1 << 20));
    expect_raw(&spec, p, endless.as_bytes(), false, 431, "head larger");
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /vm HTTP/1.1\r\n{many}\r\n");
    expect_raw(&spec, p, many.as_bytes(), false, 431, "header fields");
    let huge = b"PUT /devices/net0/link HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n";
    expect_raw(&spec, p, huge, false, 413, "10000000");
    // The client really sends the big body: it still reads the 413.
    let mut with_body =
        b"PUT /devices/net0/link HTTP/1.1\r\nContent-Length: 200000\r\n\r\n".to_vec();
    with_body.extend(std::iter::repeat_n(b' ', 200_000));
    expect_raw(&spec, p, &with_body, false, 413, "65536");
    let chunked = b"PUT /devices/net0/link HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    expect_raw(&spec, p, chunked, false, 501, "Transfer-Encoding");
    let short = b"PUT /devices/net0/link HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"up\":";
    expect_raw(&spec, p, short, true, 400, "body bytes");
    let bad_len = b"PUT /devices/net0/link HTTP/1.1\r\nContent-Length: 1x\r\n\r\n";
    expect_raw(&spec, p, bad_len, false, 400, "Content-Length");
    let two_len = b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
    expect_raw(&spec, p, two_len, false, 400, "Content-Length");
    // No Content-Length on a body route: the body is empty.
    let no_len = b"PUT /devices/net0/link HTTP/1.1\r\n\r\n{\"up\": true}";
    expect_raw(&spec, p, no_len, false, 400, "missing JSON body");
    // A client that connects and leaves: nothing to answer, server goes on.
    drop(UnixStream::connect(p).unwrap());
    // Expect: 100-continue is honoured.
    let mut c = UnixStream::connect(p).unwrap();
    c.write_all(
        b"PUT /devices/net0/link HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 12\r\n\r\n",
    )
    .unwrap();
    let mut cont = [0u8; 25];
    c.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"{\"up\": true}").unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_reply(&raw).status, 204);
    // Still serving.
    assert_eq!(call(p, "GET", "/vm", None).status, 200);
}

#[test]
fn api_slow_clients_time_out_and_others_are_served_after() {
    let spec = Spec::load();
    let limit = Duration::from_millis(300);
    let s = server_with(Limits {
        request_timeout: limit,
        ..Limits::default()
    });
    let p = &s.sock;
    // Silent, then half a head, then half a body: each 408 after the limit.
    for partial in [
        &b""[..],
        b"GET /vm HTTP/1.1\r\nHo",
        b"PUT /devices/net0/link HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"up\"",
    ] {
        let t = Instant::now();
        let r = exchange(p, partial, false);
        assert_eq!(r.status, 408, "{}", r.text());
        spec.check_schema("Error", &r.body);
        assert!(t.elapsed() >= limit, "answered before the limit");
        assert!(t.elapsed() < limit * 20, "took {:?}", t.elapsed());
    }
    // A stalled client holds only its own connection: a request next to it
    // is answered before the stalled one times out.
    let mut stalled = UnixStream::connect(p).unwrap();
    stalled.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
    let t = Instant::now();
    assert_eq!(call(p, "GET", "/vm", None).status, 200);
    assert!(t.elapsed() < limit, "took {:?}", t.elapsed());
    let mut raw = Vec::new();
    stalled.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_reply(&raw).status, 408);
}

#[test]
fn api_connections_beyond_the_limit_get_503_and_slots_come_back() {
    let spec = Spec::load();
    let s = server_with(Limits {
        request_timeout: Duration::from_secs(30),
        max_connections: 2,
        ..Limits::default()
    });
    let p = &s.sock;
    let mut stalled: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut c = UnixStream::connect(p).unwrap();
            c.write_all(b"GET /vm HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    // Both slots are taken once the server accepted both; then a third
    // connection is refused at once.
    let r = splitvm_tests::wait::wait_for("a 503", Duration::from_secs(10), || {
        let r = call(p, "GET", "/vm", None);
        (r.status == 503).then_some(r)
    });
    spec.check_schema("Error", &r.body);
    assert!(r.error().contains("too many connections"), "{}", r.error());
    // Finishing the stalled requests frees the slots.
    for c in &mut stalled {
        c.write_all(b"\r\n").unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).unwrap();
        assert_eq!(parse_reply(&raw).status, 200);
    }
    drop(stalled);
    splitvm_tests::wait::wait_for("a free slot", Duration::from_secs(10), || {
        (call(p, "GET", "/vm", None).status == 200).then_some(())
    });
}

/// A VMM operation that takes long holds only its own connection; the
/// client gives up after its `--timeout` with a one-line error.
#[test]
fn api_slow_operation_does_not_stop_the_api_and_ctl_times_out() {
    let s = server();
    let hang = s._dir.path().join("hang.sock");
    let _l = UnixListener::bind(&hang).unwrap();
    let t = Instant::now();
    let (code, out, err) = ctl(
        &s.sock,
        &[
            "--timeout",
            "1",
            "swap",
            "blk0",
            "--socket",
            hang.to_str().unwrap(),
        ],
    );
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(
        err.trim_end(),
        "splitvm ctl: error: no answer from the API within 1s"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // The swap still waits in the VMM; the API answers everything else.
    let (code, out, err) = ctl(&s.sock, &["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("running"), "{out}");
    s.fake.st().hold_swaps = false;
    s.fake.swap_gate.notify_all();
    splitvm_tests::wait::wait_for("the held swap to land", Duration::from_secs(10), || {
        (s.fake.st().blk_socket == hang).then_some(())
    });
}

#[test]
fn api_server_takes_stale_sockets_refuses_live_ones_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    // A stale socket (its listener is gone) is replaced.
    drop(UnixListener::bind(&sock).unwrap());
    let srv = http::spawn(&sock, FakeVmm::new()).expect("spawn over a stale socket");
    assert_eq!(srv.path(), sock);
    // A live one is not taken over.
    match http::spawn(&sock, FakeVmm::new()) {
        Err(ApiServerError::InUse(p)) => assert_eq!(p, sock),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(call(&sock, "GET", "/vm", None).status, 200);
    srv.stop();
    assert!(!sock.exists(), "stop removes the socket");
    // A file that is no socket is left alone.
    std::fs::write(&sock, "data").unwrap();
    assert!(matches!(
        http::spawn(&sock, FakeVmm::new()),
        Err(ApiServerError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "data");
    assert!(matches!(
        http::spawn(&dir.path().join("no/such/dir/api.sock"), FakeVmm::new()),
        Err(ApiServerError::Bind { .. })
    ));
}

/// Runs `splitvm ctl --api-socket SOCK ARGS`; returns (status, stdout, stderr).
pub fn ctl(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(splitvm_tests::bin_path("splitvm"))
        .arg("ctl")
        .arg("--api-socket")
        .arg(sock)
        .args(args)
        .output()
        .expect("run splitvm ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_prints_human_and_json_output_and_one_line_errors() {
    let mut s = server();
    let p = s.sock.clone();
    let ok = |args: &[&str]| {
        let (code, out, err) = ctl(&p, args);
        assert_eq!(code, 0, "ctl {args:?}: {err}");
        out
    };
    let out = ok(&["info"]);
    assert!(
        out.contains("state    running") && out.contains("pid      4242"),
        "{out}"
    );
    let json: VmInfo = serde_json::from_str(&ok(&["info", "--json"])).unwrap();
    assert_eq!(json, s.fake.info());
    assert_eq!(ok(&["pause"]), "paused\n");
    assert_eq!(s.fake.info().state, VmState::Paused);
    assert_eq!(ok(&["--json", "resume"]), "");
    assert_eq!(s.fake.info().state, VmState::Running);
    let out = ok(&["devices"]);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.contains("blk0") && out.contains("/run/net0.sock"),
        "{out}"
    );
    let devs: Vec<DeviceInfo> = serde_json::from_str(&ok(&["devices", "--json"])).unwrap();
    assert_eq!(devs, s.fake.devices());
    let new_sock = s._dir.path().join("b.sock");
    let _l = UnixListener::bind(&new_sock).unwrap();
    let out = ok(&["swap", "blk0", "--socket", new_sock.to_str().unwrap()]);
    assert!(out.starts_with("blk0: now served by"), "{out}");
    assert_eq!(s.fake.st().blk_socket, new_sock);
    assert_eq!(ok(&["link", "net0", "down"]), "net0: link down\n");
    assert!(!s.fake.st().net_link);
    assert_eq!(ok(&["link", "net0", "up"]), "net0: link up\n");
    let out = ok(&["metrics"]);
    assert!(out.contains("DEVICE") && out.contains("VCPU"), "{out}");
    let m: Metrics = serde_json::from_str(&ok(&["metrics", "--json"])).unwrap();
    assert_eq!(m, s.fake.metrics());
    assert!(ok(&["metrics", "--prometheus"]).contains("# TYPE splitvm_vcpu_exits_total counter"));

    // API errors: status 1, one line with the API's message.
    for (args, needle) in [
        (&["link", "blk0", "up"][..], "409: blk0 has no link"),
        (
            &["swap", "blk0", "--socket", "/nonexistent.sock"],
            "400: field `socket`",
        ),
        (
            &["swap", "zzz", "--socket", "/x"],
            "404: no device named \"zzz\"",
        ),
        (&["link", "a/b", "up"], "404"),
    ] {
        let (code, out, err) = ctl(&p, args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("splitvm ctl: error:") && err.contains(needle),
            "{err}"
        );
    }
    assert_eq!(ok(&["shutdown"]), "shutting down\n");
    assert_eq!(ok(&["kill"]), "killed\n");
    // No server: one line naming the socket.
    s.server.take().unwrap().stop();
    let (code, _, err) = ctl(&p, &["info"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to API socket") && err.contains("api.sock"),
        "{err}"
    );
    // Usage errors are clap's (status 2).
    assert_eq!(ctl(&p, &["link", "net0", "sideways"]).0, 2);
}
