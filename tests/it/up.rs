//! `splitvm up` and `splitvm down` on this host with micro-guests: the
//! launcher starts the backends on sockets it owns, boots the VMM, restarts
//! a killed backend (the VMM reconnects), and `down` leaves no process and
//! no socket. The broken-file table is in `vmm-core/src/up/config.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use splitvm_tests::microguest;
use splitvm_tests::proc::ChildGuard;
use splitvm_tests::wait::wait_for;
use vmm_core::api::{BackendState, DeviceInfo};

/// Prints `line` on COM1, then halts forever (`hlt` in a loop).
fn halting_guest(path: &Path, line: &[u8]) {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in line {
        code.extend([0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    code.extend([0xf4, 0xeb, 0xfd]); // hlt; jmp back to the hlt
    microguest::write_elf(path, &code, None);
}

/// A vm.toml in `dir` with `body` after the common head; backends are the
/// ones built next to the tests' `splitvm`.
fn write_config(dir: &Path, body: &str) -> PathBuf {
    let bins = splitvm_tests::bin_path("splitvm-blk");
    let text = format!(
        "name = \"t\"\nrun_dir = \"run\"\nbackend_dir = \"{}\"\n{body}",
        bins.parent().unwrap().display()
    );
    let p = dir.join("vm.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn up(config: &Path) -> ChildGuard {
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm"));
    cmd.arg("up").arg(config);
    ChildGuard::spawn("splitvm-up", cmd)
}

fn down(config: &Path) -> (i32, String) {
    let out = Command::new(splitvm_tests::bin_path("splitvm"))
        .arg("down")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn devices(api: &Path) -> Vec<DeviceInfo> {
    let out = Command::new(splitvm_tests::bin_path("splitvm"))
        .args(["ctl", "--json", "--api-socket"])
        .arg(api)
        .arg("devices")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pid_file(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; `up` reaps its children.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn up_restarts_a_killed_backend_and_down_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    halting_guest(&d.join("guest.elf"), b"UP-READY\n");
    std::fs::File::create(d.join("disk.img"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let cfg = write_config(
        d,
        "[vm]\nkernel = \"guest.elf\"\nmemory = \"64M\"\n[[blk]]\nimage = \"disk.img\"\n",
    );
    let run = d.join("run");
    let mut vm = up(&cfg);
    let line = vm.wait_for_line("VMM pid", Duration::from_secs(60));
    assert!(line.contains("API"), "{line}");
    vm.wait_for_line("UP-READY", Duration::from_secs(60));
    let api = run.join("api.sock");
    wait_for("the API socket", Duration::from_secs(30), || {
        api.exists().then_some(())
    });
    let vmm_pid = pid_file(&run.join("vmm.pid")).unwrap();
    let first = pid_file(&run.join("blk0.pid")).unwrap();
    let devs = devices(&api);
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(
        (devs[0].name.as_str(), devs[0].state, devs[0].backend_pid),
        ("blk0", BackendState::Connected, Some(first)),
        "the backend re-listened on the inherited socket, so SO_PEERCRED names it"
    );
    assert_eq!(devs[0].socket, run.join("blk0.sock"));
    // `up` names the backend's metrics socket next to its vhost-user socket.
    let counters = vmm_core::api::metrics::backend_counters(&devs[0].socket);
    assert!(counters.is_some(), "blk0 serves its metrics socket");

    // A second `up` of the same VM is refused while this one runs.
    let (st, lines) = up(&cfg).finish(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1));
    assert!(lines.iter().any(|l| l.contains("already up")), "{lines:?}");

    // Kill the backend: `up` starts a new one on the same socket and the
    // VMM reconnects to it.
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    vm.wait_for_line("blk0: restarted as pid", Duration::from_secs(30));
    let second = wait_for("a new blk0 pid", Duration::from_secs(30), || {
        pid_file(&run.join("blk0.pid")).filter(|p| *p != first)
    });
    let dev = wait_for("blk0 reconnected", Duration::from_secs(30), || {
        devices(&api)
            .into_iter()
            .find(|d| d.reconnects >= 1 && d.state == BackendState::Connected)
    });
    assert_ne!(dev.backend_pid, Some(first), "a dead pid is never reported");
    assert!(alive(second) && alive(vmm_pid) && !alive(first));
    // The restarted backend replaced the killed one's metrics socket.
    wait_for("blk0's new metrics socket", Duration::from_secs(30), || {
        vmm_core::api::metrics::backend_counters(&dev.socket)
    });

    // down: VMM first, then the backend, then the files.
    let (code, err) = down(&cfg);
    assert_eq!(code, 0, "{err}");
    // The VMM took SIGTERM as a graceful shutdown: status 0, not killed.
    vm.wait_for_line("VMM ended: exit status: 0", Duration::from_secs(60));
    let st = vm.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "up after down: {st}\n{}", vm.dump());
    assert!(!alive(vmm_pid) && !alive(second));
    assert!(!run.exists(), "the run directory and its sockets are gone");
    let (code, err) = down(&cfg);
    assert_eq!(code, 1);
    assert!(err.contains("no `splitvm up` runs in"), "{err}");
}

#[test]
fn up_ends_with_the_guest_and_removes_its_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    microguest::write_elf(
        &d.join("guest.elf"),
        &microguest::print_and_reset(b"BYE\n"),
        None,
    );
    let ev = "input-events.sock";
    let cfg = write_config(
        d,
        &format!(
            "[vm]\nkernel = \"guest.elf\"\nmemory = \"64M\"\n\
             [[input]]\nprofile = \"keyboard\"\nevent_socket = \"{ev}\"\n"
        ),
    );
    let (st, lines) = up(&cfg).finish(Duration::from_secs(60));
    assert!(st.success(), "{lines:?}");
    assert!(lines.iter().any(|l| l == "BYE"), "{lines:?}");
    // Backend lines carry the device name.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("splitvm-input[input0]: INFO")),
        "{lines:?}"
    );
    assert!(!d.join("run").exists(), "{lines:?}");
}

#[test]
fn up_bad_file_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[vm]\nkernel = \"guest.elf\"\ncpus = \"two\"\n");
    let (st, lines) = up(&cfg).finish(Duration::from_secs(30));
    assert_eq!(st.code(), Some(2));
    let want = format!("{}:6:8: vm.cpus: invalid type", cfg.display());
    assert!(lines.iter().any(|l| l.contains(&want)), "{want}\n{lines:?}");
    // A backend that cannot start is reported, and nothing is left behind.
    let img = dir.path().join("disk.img");
    std::fs::write(&img, b"").unwrap();
    halting_guest(&dir.path().join("guest.elf"), b"X\n");
    let cfg = write_config(
        dir.path(),
        "[vm]\nkernel = \"guest.elf\"\n[[blk]]\nimage = \"disk.img\"\nqueues = 0\n",
    );
    let (st, lines) = up(&cfg).finish(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("blk0:") && l.contains("ended before it was ready")),
        "{lines:?}"
    );
    assert!(!dir.path().join("run").exists());
}

#[test]
fn up_vmm_takes_sigterm_as_a_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    halting_guest(&kernel, b"TERM-READY\n");
    let mut cmd = Command::new(splitvm_tests::bin_path("splitvm"));
    cmd.arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "64M"])
        .env("RUST_LOG", "info");
    let mut vm = ChildGuard::spawn("splitvm", cmd);
    vm.wait_for_line("TERM-READY", Duration::from_secs(60));
    vm.signal(libc::SIGTERM);
    vm.wait_for_line("signal 15: shutting down", Duration::from_secs(10));
    let st = vm.wait_exit(Duration::from_secs(30));
    assert_eq!(st.code(), Some(0), "{}", vm.dump());
}
