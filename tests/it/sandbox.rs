//! The sandbox, seen from outside: every running backend and the VMM show
//! their seccomp filters, `no_new_privs` and (backends) no capabilities in
//! `/proc/<pid>/status`, and live in namespaces of their own; a test build
//! of splitvm-blk (feature `sandbox-selftest`, built here into its own
//! target directory, never part of a release build) proves that an open
//! outside its paths fails and that a forbidden syscall kills it with
//! `SIGSYS`, after which the frontend reconnects to a new backend as after
//! any other death.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use splitvm_tests::hostile::blk::spawn_blk;
use splitvm_tests::hostile::input::spawn_profile;
use splitvm_tests::hostile::net::{spawn_net, NetNs};
use splitvm_tests::microguest;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;
use vmm_core::vhost_user::monitor::{with_device, Monitor, ReconnectPolicy};

use crate::frontend::{driver_for, image};

const T: Duration = Duration::from_secs(20);

/// One field of `/proc/<pid>/status` (or of a thread's, with `task`).
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_string()
}

fn status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status of a running process")
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("namespace link")
}

/// The sandbox a backend must be in: both seccomp filters, no_new_privs,
/// no capabilities, and its own user, mount and network namespaces.
fn assert_backend_confined(name: &str, pid: u32) {
    let st = status(pid);
    assert_eq!(
        status_field(&st, "Seccomp"),
        "2",
        "{name}: seccomp filter mode"
    );
    assert_eq!(status_field(&st, "NoNewPrivs"), "1", "{name}");
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(&st, set),
            "0000000000000000",
            "{name}: {set} empty"
        );
    }
    for kind in ["user", "mnt", "net", "ipc", "uts"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "{name}: own {kind} namespace"
        );
    }
}

/// `Seccomp_filters` of every thread of `pid`, by thread name.
fn thread_filters(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let p = e.unwrap().path().join("status");
        let Ok(st) = std::fs::read_to_string(p) else {
            continue;
        };
        let n = status_field(&st, "Seccomp_filters").parse().unwrap();
        out.push((status_field(&st, "Name"), n));
    }
    out
}

#[test]
fn sandbox_confines_every_backend_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (mut blk, sock) = spawn_blk(dir.path(), &img, &[]);
    let line = blk.wait_for_line("sandbox on: seccomp allows", T);
    assert!(line.contains("on vring workers"), "{line}");
    blk.wait_for_line("listening on", T);
    assert_backend_confined("splitvm-blk", blk.pid());

    // A vring worker adds its own, tighter filter on its first event: one
    // more than the process-wide three (allowlist, clone3, openat).
    let mut d = driver_for(&sock);
    d.init();
    assert_eq!(d.request(1, 0, &mut vec![7u8; 512]), 0, "a write is served");
    let threads = thread_filters(blk.pid());
    assert!(
        threads.iter().any(|(_, n)| *n == 4),
        "a worker with its own filter: {threads:?}"
    );
    assert!(
        threads.iter().all(|(_, n)| *n >= 3),
        "every thread filtered: {threads:?}"
    );

    let input_dir = dir.path().join("input");
    std::fs::create_dir_all(&input_dir).unwrap();
    let (mut input, _, _) = spawn_profile(&input_dir, "keyboard", &[]);
    input.wait_for_line("listening on", T);
    assert_backend_confined("splitvm-input", input.pid());

    let net_dir = dir.path().join("net");
    std::fs::create_dir_all(&net_dir).unwrap();
    let netns = NetNs::new("sbx");
    let (mut net, _) = spawn_net(&net_dir, &netns, "sbx0", &[]);
    net.wait_for_line("listening on", T);
    assert_backend_confined("splitvm-net", net.pid());
}

#[test]
fn sandbox_off_warns_and_leaves_the_backend_unconfined() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (mut blk, _) = spawn_blk(dir.path(), &img, &["--sandbox", "off"]);
    blk.wait_for_line("sandbox off (--sandbox off)", T);
    blk.wait_for_line("listening on", T);
    let st = status(blk.pid());
    assert_eq!(status_field(&st, "Seccomp"), "0");
    assert_eq!(
        ns(&blk.pid().to_string(), "user"),
        ns("self", "user"),
        "no namespaces either"
    );
}

/// splitvm-blk built with `sandbox-selftest`, in `<target>/selftest`.
fn selftest_blk() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let release = splitvm_tests::bin_path("splitvm-blk");
            let target = release
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>/splitvm-blk")
                .join("selftest");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "--release", "-p", "splitvm-blk"])
                .args(["--features", "sandbox-selftest", "--target-dir"])
                .arg(&target)
                .current_dir(splitvm_tests::workspace_root())
                .status()
                .expect("running cargo");
            assert!(st.success(), "building the selftest splitvm-blk");
            target.join("release").join("splitvm-blk")
        })
        .clone()
}

fn spawn_selftest(dir: &Path, img: &Path, secret: &Path, extra: &[&str]) -> ChildGuard {
    let mut cmd = Command::new(selftest_blk());
    cmd.arg("--socket-path")
        .arg(dir.join("blk.sock"))
        .arg("--image")
        .arg(img)
        .args(extra)
        .env("SPLITVM_SANDBOX_SELFTEST_OPEN", secret);
    ChildGuard::spawn("splitvm-blk-selftest", cmd)
}

#[test]
fn sandbox_selftest_open_fails_forbidden_syscall_kills_and_the_frontend_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // A file next to the backend's own socket: readable to the test, not
    // to the sandboxed backend.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "not for backends").unwrap();
    let sock = dir.path().join("blk.sock");

    let mut blk = spawn_selftest(dir.path(), &img, &secret, &[]);
    let line = blk.wait_for_line("sandbox selftest: open", Duration::from_secs(60));
    assert!(
        line.contains("refused") && line.contains("Permission denied"),
        "{line}"
    );
    blk.wait_for_line("listening on", T);

    let mut d = driver_for(&sock);
    let _mon = Monitor::start("blk0".into(), d.t.clone(), ReconnectPolicy::Forever).unwrap();
    d.init();
    let first = vec![0x31u8; 4096];
    assert_eq!(d.request(1, 0, &mut first.clone()), 0);

    // The forbidden syscall (socket(AF_INET)): SIGSYS, from the kernel,
    // for the whole process.
    blk.signal(libc::SIGHUP);
    let st = blk.wait_exit(T);
    assert_eq!(st.signal(), Some(libc::SIGSYS), "killed by seccomp: {st:?}");
    assert!(
        !blk.dump().contains("not killed"),
        "the syscall must not return"
    );
    // The SIGSYS handler named it first (stderr is read by another thread).
    let named = format!(
        "splitvm-blk: seccomp: forbidden syscall {}",
        libc::SYS_socket
    );
    splitvm_tests::wait::wait_for("the refused syscall on stderr", T, || {
        blk.dump().contains(&named).then_some(())
    });

    // Like any other death: a request waits, a new backend on the same
    // socket is picked up and serves it.
    let later = vec![0x32u8; 4096];
    d.submit(1, 8, &later);
    let (_b, s2) = spawn_blk(dir.path(), &img, &[]);
    assert_eq!(s2, sock);
    assert_eq!(d.complete(1, &mut [], T), 0, "served after the reconnect");
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(&on_disk[..4096], &first[..]);
    assert_eq!(&on_disk[4096..8192], &later[..]);
    assert_eq!(with_device(&d.t, |v| v.reconnects()), Some(1));
}

/// The same test build without its sandbox: the open works and the syscall
/// returns, so what the test above sees is the sandbox's doing.
#[test]
fn sandbox_selftest_without_the_sandbox_opens_and_survives() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "readable without a sandbox").unwrap();
    let mut blk = spawn_selftest(dir.path(), &img, &secret, &["--sandbox", "off"]);
    blk.wait_for_line("listening on", Duration::from_secs(60));
    blk.signal(libc::SIGHUP);
    blk.wait_for_line("not killed", T);
    assert!(blk.dump().contains("sandbox off"));
    blk.signal(libc::SIGTERM);
    assert!(blk.wait_exit(T).success());
}

/// Prints `SBX-READY` on COM1, then halts forever.
fn halting_guest(path: &Path) {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in b"SBX-READY\n" {
        code.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt
    microguest::write_elf(path, &code, None);
}

#[test]
fn sandbox_confines_the_vmm_and_its_vcpu_threads() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let (mut blk, sock) = spawn_blk(dir.path(), &img, &[]);
    blk.wait_for_line("listening on", T);
    let kernel = dir.path().join("guest.elf");
    halting_guest(&kernel);
    let api = dir.path().join("api.sock");
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm"));
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "64M", "--cpus", "2"])
        .arg("--disk")
        .arg(format!("socket={}", sock.display()))
        .arg("--api-socket")
        .arg(&api)
        .env("RUST_LOG", "info");
    let mut vmm = ChildGuard::spawn("splitvm", cmd);
    vmm.wait_for_line("SBX-READY", Duration::from_secs(60));
    wait_for("the API socket", T, || api.exists().then_some(()));
    let st = status(vmm.pid());
    assert_eq!(status_field(&st, "Seccomp"), "2");
    assert_eq!(status_field(&st, "NoNewPrivs"), "1");
    // Every thread has the process-wide filters; each vCPU one more. A
    // new thread names itself and adds its filter once it is scheduled,
    // which may be after vCPU 0 has already printed: poll until both
    // vCPUs have, and fail on what was seen last.
    let mut threads = Vec::new();
    let both = splitvm_tests::wait::poll_until(T, || {
        threads = thread_filters(vmm.pid());
        let vcpus = threads.iter().filter(|(n, _)| n.starts_with("vcpu"));
        (vcpus.clone().count() == 2 && vcpus.clone().all(|(_, n)| *n == 4)).then_some(())
    });
    assert!(
        both.is_some(),
        "two vCPU threads with 4 filters: {threads:?}"
    );
    assert!(threads.iter().all(|(_, n)| *n >= 3), "{threads:?}");

    // The control plane still works under its filter: the API answers,
    // and the backend's death is survived (reconnect policy).
    let out = Command::new(splitvm_tests::bin_path("splitvm"))
        .args(["ctl", "--api-socket"])
        .arg(&api)
        .arg("info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    blk.signal(libc::SIGKILL);
    blk.wait_exit(T);
    let (mut blk2, _) = spawn_blk(dir.path(), &img, &[]);
    blk2.wait_for_line("frontend connected", T);
    let st = status(vmm.pid());
    assert_eq!(
        status_field(&st, "State").chars().next(),
        Some('S'),
        "VMM alive"
    );
}
