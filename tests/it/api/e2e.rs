//! The API of a real `splitvm run --api-socket` booting a micro-guest that
//! halts forever, with a splitvm-blk disk: every endpoint through
//! `splitvm ctl` and raw HTTP, answers checked against `docs/api.yaml`;
//! then schemathesis (`tests/api/schemathesis.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use splitvm_tests::hostile::blk::spawn_blk;
use splitvm_tests::microguest;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;
use vmm_core::api::{BackendState, DeviceInfo, Metrics, VmInfo, VmState};

use super::spec::{Operations, Spec};
use super::{call, checked, ctl};

/// Prints `API-READY` on COM1, then halts forever (`hlt` in a loop: the
/// vCPU sleeps in KVM instead of spinning, and pause still kicks it out).
fn spinning_guest(path: &Path) {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"API-READY\n" {
        code.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt
    microguest::write_elf(path, &code, None);
}

struct Vm {
    child: ChildGuard,
    api: PathBuf,
}

/// Boots the spinning guest with `--api-socket` and the given disks; returns
/// once the guest printed its line and the API socket is there.
fn boot(dir: &Path, disks: &[&Path]) -> Vm {
    let kernel = dir.join("guest.elf");
    spinning_guest(&kernel);
    let api = dir.join("api.sock");
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm"));
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "64M"])
        .arg("--api-socket")
        .arg(&api);
    for d in disks {
        cmd.arg("--disk").arg(format!("socket={}", d.display()));
    }
    let mut child = ChildGuard::spawn("splitvm", cmd);
    child.wait_for_line("API-READY", Duration::from_secs(60));
    wait_for("the API socket", Duration::from_secs(30), || {
        api.exists().then_some(())
    });
    Vm { child, api }
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    p
}

fn sub(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two splitvm-blk backends on one image, in `dir/a` and `dir/b`, both
/// listening.
fn two_backends(dir: &Path) -> ((ChildGuard, PathBuf), (ChildGuard, PathBuf)) {
    let img = image(dir);
    let a = spawn_blk(&sub(dir, "a"), &img, &[]);
    let b = spawn_blk(&sub(dir, "b"), &img, &[]);
    for s in [&a.1, &b.1] {
        wait_for("a splitvm-blk socket", Duration::from_secs(20), || {
            s.exists().then_some(())
        });
    }
    (a, b)
}

#[test]
fn api_e2e_every_endpoint_of_a_running_vmm() {
    let spec = Spec::load();
    let mut seen = Operations::new();
    let dir = tempfile::tempdir().unwrap();
    let ((mut blk_a, sock_a), (blk_b, sock_b)) = two_backends(dir.path());
    let mut vm = boot(dir.path(), &[&sock_a]);
    let api = vm.api.clone();
    let p = api.as_path();

    let r = checked(&spec, &mut seen, p, "GET", "/vm", None);
    let info: VmInfo = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (info.state, info.vcpus, info.memory_bytes, info.pid),
        (VmState::Running, 1, 64 << 20, vm.child.pid())
    );
    assert!(info.cmdline.contains("console=ttyS0"), "{}", info.cmdline);
    let (code, out, err) = ctl(p, &["info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state    running"), "{out}");

    let r = checked(&spec, &mut seen, p, "GET", "/devices", None);
    let devs: Vec<DeviceInfo> = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(devs.len(), 1, "{devs:?}");
    let d = &devs[0];
    assert_eq!((d.name.as_str(), d.kind.as_str()), ("blk0", "blk"));
    assert_eq!(
        (d.state, d.backend_pid),
        (BackendState::Connected, Some(blk_a.pid()))
    );
    assert_eq!((d.socket.as_path(), d.link_up), (sock_a.as_path(), None));
    let r = checked(&spec, &mut seen, p, "GET", "/devices/blk0", None);
    assert_eq!(serde_json::from_slice::<DeviceInfo>(&r.body).unwrap(), *d);
    let (code, out, _) = ctl(p, &["devices"]);
    assert!(
        code == 0 && out.contains("blk0") && out.contains("connected"),
        "{out}"
    );
    let r = checked(&spec, &mut seen, p, "GET", "/devices/blk9", None);
    assert_eq!(r.status, 404);

    // Pause and resume, through raw HTTP and ctl.
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/pause", None);
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(p, "GET", "/vm", None);
    assert_eq!(
        serde_json::from_slice::<VmInfo>(&r.body).unwrap().state,
        VmState::Paused
    );
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/resume", None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(ctl(p, &["pause"]).1, "paused\n");
    let (_, out, _) = ctl(p, &["info", "--json"]);
    assert_eq!(
        serde_json::from_str::<VmInfo>(&out).unwrap().state,
        VmState::Paused
    );
    assert_eq!(ctl(p, &["resume"]).1, "resumed\n");
    let (_, out, _) = ctl(p, &["info"]);
    assert!(out.contains("state    running"), "{out}");

    // Metrics: the guest's `out`s are I/O exits of vCPU 0.
    let r = checked(&spec, &mut seen, p, "GET", "/metrics.json", None);
    let m: Metrics = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(m.vcpus.len(), 1);
    assert!(m.vcpus[0].io_exits >= 10, "{m:?}");
    assert_eq!(m.devices.len(), 1);
    let r = checked(&spec, &mut seen, p, "GET", "/metrics", None);
    let text = r.text();
    assert!(
        text.contains("# TYPE splitvm_vcpu_exits_total counter"),
        "{text}"
    );
    assert!(
        text.contains("splitvm_device_requests_total{device=\"blk0\"}"),
        "{text}"
    );
    assert!(
        text.contains("splitvm_vcpu_exits_total{vcpu=\"0\",reason=\"io\"}"),
        "{text}"
    );
    let (code, out, _) = ctl(p, &["metrics"]);
    assert!(code == 0 && out.contains("blk0"), "{out}");

    // Link: a blk device has none.
    let r = checked(
        &spec,
        &mut seen,
        p,
        "PUT",
        "/devices/blk0/link",
        Some(r#"{"up": false}"#),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let (code, _, err) = ctl(p, &["link", "blk0", "down"]);
    assert_eq!(code, 1);
    assert!(err.contains("409"), "{err}");

    // Swap: errors first, then to the second backend through ctl.
    let r = checked(
        &spec,
        &mut seen,
        p,
        "PUT",
        "/devices/blk0/swap",
        Some(r#"{"socket": "/nonexistent.sock"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let (code, out, err) = ctl(p, &["swap", "blk0", "--socket", sock_b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("blk0: now served by"), "{out}");
    blk_a.wait_for_line("frontend disconnected", Duration::from_secs(10));
    let r = checked(&spec, &mut seen, p, "GET", "/devices/blk0", None);
    let d: DeviceInfo = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (d.socket, d.backend_pid),
        (sock_b.clone(), Some(blk_b.pid()))
    );
    // And back, through raw HTTP.
    let body = format!(r#"{{"socket": "{}"}}"#, sock_a.display());
    let r = checked(
        &spec,
        &mut seen,
        p,
        "PUT",
        "/devices/blk0/swap",
        Some(&body),
    );
    assert_eq!(r.status, 204, "{}", r.text());

    // The VM is still up after all of it; shutdown ends it with status 0.
    let r = checked(&spec, &mut seen, p, "PUT", "/vm/shutdown", None);
    assert_eq!(r.status, 204, "{}", r.text());
    let st = vm.child.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{}", vm.child.dump());
    seen.insert(("PUT".into(), "/vm/kill".into())); // api_e2e_kill_ends_the_vmm
    assert_eq!(
        seen,
        spec.operations(),
        "every documented operation was called"
    );
}

#[test]
fn api_e2e_kill_ends_the_vmm_and_ctl_reports_a_gone_socket() {
    let spec = Spec::load();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = boot(dir.path(), &[]);
    let r = call(&vm.api, "GET", "/devices", None);
    spec.check(
        "GET",
        "/devices",
        r.status,
        r.header("content-type"),
        &r.body,
    );
    assert_eq!(r.text(), "[]");
    let (code, out, err) = ctl(&vm.api, &["kill"]);
    assert_eq!((code, out.as_str()), (0, "killed\n"), "{err}");
    let st = vm.child.wait_exit(Duration::from_secs(30));
    assert!(
        st.code().is_some(),
        "ended by itself, not by a signal: {st:?}"
    );
    let (code, _, err) = ctl(&vm.api, &["info"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to API socket"), "{err}");
}

#[test]
fn api_schemathesis_finds_no_server_error() {
    let root = splitvm_tests::workspace_root();
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("tests/api/schemathesis.sh"))
        .env("SPLITVM", splitvm_tests::bin_path("splitvm"))
        .env("SPLITVM_BLK", splitvm_tests::bin_path("splitvm-blk"));
    let mut st = ChildGuard::spawn("schemathesis", cmd);
    let status = st.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "schemathesis.sh failed:\n{}", st.dump());
}

/// The VMM's metrics include each backend's own counters from its metrics
/// socket: bytes the test moved through splitvm-blk before the VMM
/// connected (the counters belong to the backend process), the new
/// backend's after a swap, and null once the backend has no socket.
#[test]
fn api_e2e_metrics_include_backend_bytes() {
    use splitvm_tests::hostile::blk::{BlkDev, S_OK};
    use splitvm_tests::hostile::Setup;
    let spec = Spec::load();
    let mut seen = Operations::new();
    let dir = tempfile::tempdir().unwrap();
    let ((mut blk_a, sock_a), (mut blk_b, sock_b)) = two_backends(dir.path());
    // Move known bytes through the first backend, then let it go.
    let mut dev = BlkDev::connect(&sock_a, Setup::default());
    assert_eq!(dev.write(0, &[7; 8192]), S_OK);
    assert_eq!(dev.read(0, 4096).status, S_OK);
    drop(dev);
    blk_a.wait_for_line("frontend disconnected", Duration::from_secs(10));
    let mut vm = boot(dir.path(), &[&sock_a]);
    let p = vm.api.clone();
    let p = p.as_path();
    let blk0 = |seen: &mut Operations| {
        let r = checked(&spec, seen, p, "GET", "/metrics.json", None);
        let m: Metrics = serde_json::from_slice(&r.body).unwrap();
        m.devices.into_iter().find(|d| d.name == "blk0").unwrap()
    };
    let backend = |d: &vmm_core::api::DeviceMetrics| {
        (
            d.backend_requests,
            d.bytes_read,
            d.bytes_written,
            d.io_errors,
        )
    };
    let d = blk0(&mut seen);
    assert_eq!(
        backend(&d),
        (Some(2), Some(8192), Some(4096), Some(0)),
        "{d:?}"
    );
    let r = checked(&spec, &mut seen, p, "GET", "/metrics", None);
    let text = r.text();
    for line in [
        "splitvm_device_bytes_read_total{device=\"blk0\"} 8192\n",
        "splitvm_device_bytes_written_total{device=\"blk0\"} 4096\n",
        "splitvm_device_io_errors_total{device=\"blk0\"} 0\n",
        "splitvm_device_backend_requests_total{device=\"blk0\"} 2\n",
    ] {
        assert!(text.contains(line), "{line:?} missing in\n{text}");
    }
    let (code, out, err) = ctl(p, &["metrics"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("BYTES_READ") && out.contains(" 8192 "),
        "{out}"
    );

    // After a swap the counters are the new backend's (its socket's).
    let (code, _, err) = ctl(p, &["swap", "blk0", "--socket", sock_b.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let d = blk0(&mut seen);
    assert_eq!((d.bytes_read, d.bytes_written), (Some(0), Some(0)), "{d:?}");

    // The backend stops (its metrics socket goes with it): null, not an error.
    blk_b.signal(libc::SIGTERM);
    blk_b.wait_exit(Duration::from_secs(10));
    let d = blk0(&mut seen);
    assert_eq!(backend(&d), (None, None, None, None), "{d:?}");
    let r = checked(&spec, &mut seen, p, "GET", "/metrics", None);
    assert!(
        !r.text().contains("splitvm_device_bytes_read_total{"),
        "{}",
        r.text()
    );
    let (code, out, _) = ctl(p, &["metrics"]);
    assert!(code == 0 && out.contains(" - "), "{out}");
    let (code, _, err) = ctl(p, &["kill"]);
    assert_eq!(code, 0, "{err}");
    vm.child.wait_exit(Duration::from_secs(30));
}
