//! `splitvm run` end to end on this host's KVM with micro-guests, and every
//! kind of bad input: each a one-line error naming the input, status 2.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use splitvm_tests::microguest::{
    self, print_and_halt, print_and_reset, print_cmdline_64, triple_fault,
};
use splitvm_tests::proc::ChildGuard;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("splitvm-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir temp");
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn splitvm(args: &[&str]) -> Command {
    let mut c = Command::new(splitvm_tests::bin_path("splitvm"));
    c.arg("run").args(args);
    c
}

/// Runs splitvm to completion; returns (exit code, stdout lines, stderr lines).
fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    let out = splitvm(args)
        .output()
        .unwrap_or_else(|e| panic!("{name}: spawn splitvm: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn guest(dir: &TempDir, name: &str, code: &[u8], pvh: Option<&[u8]>) -> String {
    let p = dir.path(name);
    microguest::write_elf(&p, code, pvh);
    p.display().to_string()
}

#[test]
fn microguest_boots_prints_cmdline_and_resets_with_status_0() {
    let dir = TempDir::new("boot64");
    let k = guest(&dir, "k.elf", &print_cmdline_64(), None);
    let mut child = ChildGuard::spawn(
        "splitvm",
        splitvm(&[
            "--kernel",
            &k,
            "--cmdline",
            "hello=splitvm",
            "--memory",
            "64M",
        ]),
    );
    let line = child.wait_for_line("hello=splitvm", Duration::from_secs(60));
    assert_eq!(line, "console=ttyS0 reboot=k panic=1 hello=splitvm");
    let (st, _) = child.finish(Duration::from_secs(30));
    assert_eq!(
        st.code(),
        Some(0),
        "i8042 reset must end the VM with status 0"
    );
}

#[test]
fn microguest_boots_with_two_vcpus_and_high_memory() {
    // 3.5 GiB crosses the 32-bit hole: the guest still boots from low RAM.
    let dir = TempDir::new("smp");
    let k = guest(&dir, "k.elf", &print_and_reset(b"two\n"), None);
    let (code, out, err) = run("smp", &["--kernel", &k, "--cpus", "2", "--memory", "3584M"]);
    assert_eq!((code, out.as_str()), (0, "two\n"), "stderr: {err}");
}

/// On a pipe the console is written a line at a time (so log lines sharing
/// the stream cannot split a guest line); a prompt without a newline must
/// still show up while the guest waits.
#[test]
fn a_prompt_without_newline_reaches_a_pipe_while_the_guest_waits() {
    let dir = TempDir::new("prompt");
    let k = guest(&dir, "k.elf", &print_and_halt(b"boot ok\nlogin: "), None);
    let mut child = splitvm(&["--kernel", &k, "--memory", "32M"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn splitvm");
    let mut out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    while !seen.ends_with(b"login: ") {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(chunk) => seen.extend(chunk),
            Err(_) => break,
        }
    }
    let running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(String::from_utf8_lossy(&seen), "boot ok\nlogin: ");
    assert!(running, "the guest halts forever: the VM must still run");
}

#[test]
fn pvh_entry_is_used_when_asked() {
    let dir = TempDir::new("pvh");
    let k = guest(
        &dir,
        "k.elf",
        &print_and_reset(b"64\n"),
        Some(&print_and_reset(b"pvh\n")),
    );
    let (code, out, err) = run("pvh", &["--kernel", &k, "--boot", "pvh", "--memory", "32M"]);
    assert_eq!((code, out.as_str()), (0, "pvh\n"), "stderr: {err}");
    let (code, out, err) = run("linux", &["--kernel", &k, "--memory", "32M"]);
    assert_eq!((code, out.as_str()), (0, "64\n"), "stderr: {err}");
}

#[test]
fn serial_goes_to_a_file_when_asked() {
    let dir = TempDir::new("serialfile");
    let k = guest(&dir, "k.elf", &print_and_reset(b"to-file\n"), None);
    let log = dir.path("console.log");
    let target = format!("file:{}", log.display());
    let (code, out, err) = run(
        "file",
        &["--kernel", &k, "--serial", &target, "--memory", "32M"],
    );
    assert_eq!((code, out.as_str()), (0, ""), "stderr: {err}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "to-file\n");
}

#[test]
fn triple_fault_ends_with_one_line_naming_vcpu_rip_and_reason() {
    let dir = TempDir::new("fault");
    let k = guest(&dir, "k.elf", &triple_fault(), None);
    let (code, out, err) = run("fault", &["--kernel", &k, "--memory", "32M"]);
    assert_eq!(out, "X");
    assert_eq!(code, 1, "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].contains("vcpu0"), "{err}");
    assert!(lines[0].contains("rip 0x"), "{err}");
}

/// A bad input: exit status 2, one line on stderr naming `needle`, no panic.
fn assert_bad_input(args: &[&str], needle: &str) {
    let (code, out, err) = run(needle, args);
    assert_eq!(code, 2, "args {args:?}: stdout {out:?} stderr {err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert!(lines[0].contains(needle), "expected {needle:?} in {err:?}");
}

#[test]
fn bad_inputs_fail_with_status_2_and_name_the_input() {
    let dir = TempDir::new("bad");
    let k = guest(&dir, "k.elf", &print_and_reset(b"x"), None);
    let not_elf = dir.path("notes.txt");
    std::fs::write(&not_elf, "this is no kernel").unwrap();
    let not_elf = not_elf.display().to_string();
    let unreadable = dir.path("no-such-initrd").display().to_string();
    let long = "x".repeat(3000);
    let dirpath = dir.0.display().to_string();

    assert_bad_input(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
    assert_bad_input(&["--kernel", &not_elf], "not an ELF vmlinux or bzImage");
    assert_bad_input(&["--kernel", &k, "--memory", "0"], "--memory");
    assert_bad_input(&["--kernel", &k, "--memory", "64T"], "--memory");
    assert_bad_input(&["--kernel", &k, "--memory", "lots"], "--memory");
    assert_bad_input(&["--kernel", &k, "--cpus", "0"], "--cpus");
    assert_bad_input(&["--kernel", &k, "--cpus", "300"], "--cpus");
    assert_bad_input(&["--kernel", &k, "--cmdline", &long], "--cmdline");
    assert_bad_input(&["--kernel", &k, "--initrd", &unreadable], "no-such-initrd");
    assert_bad_input(
        &["--kernel", &k, "--initrd", &dirpath],
        "not a regular file",
    );
    assert_bad_input(&["--kernel", &k, "--serial", "tty9"], "--serial");
    assert_bad_input(&["--kernel", &k, "--boot", "pvh"], "PVH");
}

#[test]
fn initrd_too_big_for_memory_is_bad_input() {
    let dir = TempDir::new("bigrd");
    let k = guest(&dir, "k.elf", &print_and_reset(b"x"), None);
    let rd = dir.path("big.cpio");
    let f = std::fs::File::create(&rd).unwrap();
    f.set_len(40 << 20).unwrap();
    assert_bad_input(
        &[
            "--kernel",
            &k,
            "--memory",
            "32M",
            "--initrd",
            rd.to_str().unwrap(),
        ],
        "big.cpio",
    );
}
