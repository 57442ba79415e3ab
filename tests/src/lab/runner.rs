//! Running the lab: level 1 under QEMU/TCG via `tests/lab/run-l1.sh`, or
//! level-2 guests directly on a host whose `/dev/kvm` runs Linux.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{GuestAssets, Vmm, DIRECT_PROBE_LIMIT, L1_BOOT_BUDGET, L2};
use crate::proc::ChildGuard;
use crate::workspace_root;

/// Kills a whole process group when dropped (run-l1.sh and its QEMU, or a
/// directly run VMM), so nothing outlives a failing test.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a process group this module created; no memory
        // is involved.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What besides the project's binaries goes into level 1.
pub(super) struct Packs<'a> {
    pub(super) qemu: bool,
    pub(super) qsd: bool,
    pub(super) dpdk: bool,
    pub(super) scenarios: &'a [(String, Duration)],
}

/// Builds the static guest tools (tests/guest-tools) once per test
/// process into `<target>/lab-tools`, and returns that directory.
pub fn guest_tools() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        let dir = target.join("lab-tools");
        let script = workspace_root().join("scripts/build-guest-tools");
        let st = Command::new(&script)
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(st.success(), "{} failed", script.display());
        dir
    })
    .clone()
}

pub(super) fn run_nested(bins: &Path, runs: &[L2], packs: &Packs<'_>) -> (i32, Vec<String>) {
    let tmp = TempDir::new("lab");
    let mut script = String::from(". /lab/lib.sh\nrc=0\n");
    let mut cmd = Command::new(workspace_root().join("tests/lab/run-l1.sh"));
    cmd.arg("--bin-dir").arg(bins);
    let mut budget = L1_BOOT_BUDGET;
    for run in runs {
        let func = match run.vmm {
            Vmm::Splitvm => "run_l2",
            Vmm::Qemu => "run_l2_qemu",
        };
        let mut line = format!("{func} {} --timeout {}", run.name, run.limit.as_secs());
        if let Some(body) = &run.scenario {
            let src = tmp.0.join(format!("{}.sh", run.name));
            std::fs::write(&src, body).expect("writing scenario");
            let dest = format!("/lab/scenarios/{}.sh", run.name);
            cmd.arg("--file").arg(format!("{}:{dest}", src.display()));
            let _ = write!(line, " --scenario {dest}");
        }
        line.push_str(" --");
        for a in &run.args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        // Every run is attempted; the script's status says whether all passed.
        line.push_str(" || rc=1\n");
        script.push_str(&line);
        budget += run.limit + Duration::from_secs(10);
    }
    if !packs.scenarios.is_empty() {
        cmd.arg("--file")
            .arg(format!("{}:/lab/tools", guest_tools().display()));
        // examples/vm.toml for the up scenario.
        cmd.arg("--file").arg(format!(
            "{}:/lab/examples",
            workspace_root().join("examples").display()
        ));
    }
    for (name, limit) in packs.scenarios {
        let dir = workspace_root().join("tests/lab/scenarios").join(name);
        cmd.arg("--file")
            .arg(format!("{}:/lab/scenarios/{name}", dir.display()));
        let _ = writeln!(
            script,
            "echo \"L1-SCENARIO-START {name}\"; timeout {} sh /lab/scenarios/{name}/l1.sh; s=$?; echo \"L1-RESULT scenario_{name}_rc=$s\"; [ $s = 0 ] || rc=1",
            limit.as_secs()
        );
        budget += *limit;
    }
    script.push_str("exit $rc\n");
    let script_path = tmp.0.join("run.sh");
    std::fs::write(&script_path, &script).expect("writing lab script");
    cmd.arg("--script").arg(&script_path);
    cmd.arg("--timeout").arg(budget.as_secs().to_string());
    if packs.qemu {
        cmd.arg("--with-qemu");
    }
    if packs.qsd {
        cmd.arg("--with-qsd");
    }
    if packs.dpdk {
        cmd.arg("--with-dpdk");
    }
    cmd.process_group(0);
    let guard = ChildGuard::spawn("lab", cmd);
    let _group = KillGroup(guard.pid() as i32);
    // run-l1.sh ends QEMU at its --timeout; the margin covers image building.
    let (status, lines) = guard.finish(budget + Duration::from_secs(300));
    (status.code().unwrap_or(-1), lines)
}

/// Builds `<base initramfs> + <overlay with /scenario.sh>` on the host.
fn host_initrd(assets: &GuestAssets, dir: &Path, scenario: Option<&str>) -> PathBuf {
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(&overlay).expect("overlay dir");
    if let Some(body) = scenario {
        std::fs::write(overlay.join("scenario.sh"), body).expect("writing scenario");
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . | cpio --quiet -o -H newc")
        .arg("sh")
        .arg(&overlay)
        .output()
        .expect("running cpio");
    assert!(out.status.success(), "cpio failed");
    let mut initrd = std::fs::read(&assets.l2_initramfs).expect("reading L2 initramfs");
    initrd.extend_from_slice(&out.stdout);
    let path = dir.join("initrd.cpio");
    std::fs::write(&path, initrd).expect("writing initrd");
    path
}

/// Runs `cmd`, forwarding its merged output lines (prefixed) into `lines`,
/// until it exits, `stop` matches a line, or `limit` passes. Returns the exit
/// code (`None` if it was killed) and whether `stop` matched.
fn run_collect(
    mut cmd: Command,
    prefix: &str,
    limit: Duration,
    stop: Option<&str>,
    lines: &mut Vec<String>,
) -> (Option<i32>, bool) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child: Child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            lines.push(format!("{prefix}cannot run {cmd:?}: {e}"));
            return (Some(127), false);
        }
    };
    let _group = KillGroup(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let l = String::from_utf8_lossy(&l)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let end = Instant::now() + limit;
    let mut matched = false;
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                let hit = stop.is_some_and(|s| l.contains(s));
                lines.push(format!("{prefix}{l}"));
                if hit {
                    matched = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    if matched || Instant::now() >= end {
        let _ = child.kill();
        let _ = child.wait();
        return (None, matched);
    }
    let code = child.wait().ok().and_then(|s| s.code());
    (code, matched)
}

fn splitvm_cmd(bins: &Path, assets: &GuestAssets, initrd: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new(bins.join("splitvm"));
    cmd.arg("run")
        .arg("--kernel")
        .arg(&assets.vmlinux)
        .arg("--initrd")
        .arg(initrd)
        .args(args);
    cmd
}

/// Whether the host's `/dev/kvm` boots the level-2 guest under splitvm.
pub(super) fn direct_probe(bins: &Path, assets: &GuestAssets, lines: &mut Vec<String>) -> bool {
    if std::env::var_os("SPLITVM_LAB_FORCE_NESTED").is_some() {
        lines.push("[probe] SPLITVM_LAB_FORCE_NESTED is set: nested lab".into());
        return false;
    }
    if !bins.join("splitvm").exists() || !Path::new("/dev/kvm").exists() {
        lines.push("[probe] no splitvm binary or no /dev/kvm: nested lab".into());
        return false;
    }
    let tmp = TempDir::new("probe");
    let initrd = host_initrd(assets, &tmp.0, None);
    let args = ["--cpus", "1", "--memory", "256M"].map(String::from);
    let cmd = splitvm_cmd(bins, assets, &initrd, &args);
    let (_, ok) = run_collect(
        cmd,
        "[probe] ",
        DIRECT_PROBE_LIMIT,
        Some("SPLITVM-L2-INIT"),
        lines,
    );
    let verdict = if ok {
        "host /dev/kvm boots the level-2 guest: direct mode"
    } else {
        "no SPLITVM-L2-INIT from the host's /dev/kvm: nested lab"
    };
    lines.push(format!("[probe] {verdict}"));
    eprintln!("lab probe: {verdict}");
    ok
}

pub(super) fn run_direct(bins: &Path, assets: &GuestAssets, run: &L2, lines: &mut Vec<String>) {
    let tmp = TempDir::new(&run.name);
    let initrd = host_initrd(assets, &tmp.0, run.scenario.as_deref());
    let cmd = splitvm_cmd(bins, assets, &initrd, &run.args);
    let t0 = Instant::now();
    lines.push(format!("L2-START name={} vmm=splitvm direct", run.name));
    let (code, _) = run_collect(cmd, &format!("[l2:{}] ", run.name), run.limit, None, lines);
    lines.push(format!(
        "L2-EXIT name={} rc={} ms={:.1}",
        run.name,
        code.unwrap_or(124),
        t0.elapsed().as_secs_f64() * 1e3
    ));
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir();
        for n in 0u32.. {
            let p = base.join(format!("splitvm-{tag}-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        unreachable!("u32 range exhausted")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
