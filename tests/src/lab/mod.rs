//! The nested lab from Rust: level-2 Linux guests under splitvm (or QEMU, to
//! check the lab itself) inside a level-1 Linux with nested SVM that
//! `tests/lab/run-l1.sh` boots under QEMU/TCG. One level-1 boot serves every
//! scenario given to one [`Lab`]; see `tests/lab/README.md`.
//!
//! ```no_run
//! use splitvm_tests::lab::{Lab, L2};
//! let run = Lab::new()
//!     .l2(L2::splitvm("one").args(["--cpus", "1", "--memory", "256M"]))
//!     .run();
//! assert_eq!(run.l2("one").result("nproc"), "1");
//! ```
//!
//! Before the level-1 boot, [`Lab::run`] probes once whether the host's own
//! `/dev/kvm` boots the level-2 guest under splitvm (`SPLITVM-L2-INIT` within
//! [`DIRECT_PROBE_LIMIT`]); if it does, splitvm scenarios run directly on the
//! host and only QEMU scenarios go to the lab.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::proc::ChildGuard;
use crate::workspace_root;

mod parse;
pub use parse::{parse_lines, Parsed};

/// How long the direct probe waits for the level-2 guest's first init line.
pub const DIRECT_PROBE_LIMIT: Duration = Duration::from_secs(15);

/// Level-1 boot (TCG) plus module loading, with margin.
const L1_BOOT_BUDGET: Duration = Duration::from_secs(120);

/// Default limit for one level-2 run (boot, scenario, reset): ~30 s on an
/// idle host, over 100 s when the host is loaded.
const L2_DEFAULT_LIMIT: Duration = Duration::from_secs(300);

/// Which VMM runs a level-2 guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// `splitvm run --kernel ... --initrd ... ARGS` (`run_l2` in lib.sh).
    Splitvm,
    /// `qemu-system-x86_64 -M microvm -enable-kvm` with splitvm's
    /// `--cpus/--memory/--cmdline` translated (`run_l2_qemu` in lib.sh).
    Qemu,
}

/// One level-2 boot: a VMM, its arguments, and an optional scenario script
/// that the guest runs as `/scenario.sh` after its modules are loaded.
#[derive(Clone, Debug)]
pub struct L2 {
    name: String,
    vmm: Vmm,
    args: Vec<String>,
    scenario: Option<String>,
    limit: Duration,
}

impl L2 {
    /// A level-2 run under splitvm. `name` must be a plain word (it names
    /// files and prefixes console lines).
    pub fn splitvm(name: &str) -> L2 {
        L2::new(name, Vmm::Splitvm)
    }

    /// A level-2 run under QEMU microvm with KVM (needs QEMU in the lab).
    pub fn qemu(name: &str) -> L2 {
        L2::new(name, Vmm::Qemu)
    }

    fn new(name: &str, vmm: Vmm) -> L2 {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "L2 name {name:?} must be a plain word"
        );
        let limit = std::env::var("SPLITVM_LAB_L2_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(L2_DEFAULT_LIMIT);
        L2 {
            name: name.to_string(),
            vmm,
            args: Vec::new(),
            scenario: None,
            limit,
        }
    }

    /// VMM arguments after `--kernel/--initrd` (e.g. `--cpus 2 --memory 512M`).
    pub fn args<I, S>(mut self, args: I) -> L2
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Shell script (busybox sh) run in the guest; print `RESULT key=value`
    /// lines to report; its exit code is reported as `SPLITVM-L2-DONE rc=N`.
    pub fn scenario(mut self, script: &str) -> L2 {
        self.scenario = Some(script.to_string());
        self
    }

    /// Overrides the time limit of this run.
    pub fn limit(mut self, limit: Duration) -> L2 {
        self.limit = limit;
        self
    }
}

/// What one level-2 run reported.
#[derive(Clone, Debug, Default)]
pub struct L2Run {
    /// Exit code of the VMM (`L2-EXIT rc=`); `None` if the run never ended.
    pub exit: Option<i32>,
    /// `RESULT key=value` lines of the guest.
    pub results: BTreeMap<String, String>,
    /// `SPLITVM-L2-DONE rc=N` of the guest's init (the scenario's status).
    pub done_rc: Option<i32>,
    /// Whether the guest printed `SPLITVM-L2-INIT`.
    pub init_seen: bool,
    /// Wall time of the run as measured in level 1 (or on the host).
    pub millis: Option<f64>,
    /// The guest's console (and the VMM's output), unprefixed.
    pub lines: Vec<String>,
}

/// How the splitvm scenarios ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabMode {
    /// Directly on the host's `/dev/kvm`.
    Direct,
    /// Inside the level-1 lab.
    Nested,
}

/// Everything a lab run printed, split per level-2 run.
#[derive(Debug)]
pub struct LabRun {
    /// Where the splitvm scenarios ran.
    pub mode: LabMode,
    /// `SPLITVM-L1-DONE rc=N`; `None` if level 1 never got there (or did not run).
    pub l1_done: Option<i32>,
    /// Exit status of run-l1.sh (`None` if it was not needed).
    pub l1_status: Option<i32>,
    /// Every output line, as printed (with `[l1] `/`[l2:NAME] ` prefixes).
    pub lines: Vec<String>,
    l2: BTreeMap<String, L2Run>,
    l1: BTreeMap<String, String>,
}

impl LabRun {
    /// The run named `name`; panics with the whole lab log if it is missing.
    pub fn l2(&self, name: &str) -> L2View<'_> {
        let run = self.l2.get(name);
        L2View {
            name: name.to_string(),
            run,
            lab: self,
        }
    }

    /// All output, one line each.
    pub fn log(&self) -> String {
        self.lines.join("\n")
    }

    /// A level-1 result (`L1-RESULT key=value`); panics with the log if absent.
    pub fn l1_result(&self, key: &str) -> &str {
        match self.l1.get(key) {
            Some(v) => v,
            None => panic!(
                "no level-1 result {key:?} (level-1 status {:?})\n--- lab log ---\n{}",
                self.l1_status,
                self.log()
            ),
        }
    }
}

/// One level-2 run with assertions that show the lab log on failure.
pub struct L2View<'a> {
    name: String,
    run: Option<&'a L2Run>,
    lab: &'a LabRun,
}

impl L2View<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "lab run {:?}: {what}\n--- lab log ({:?} mode, level-1 status {:?}) ---\n{}",
            self.name,
            self.lab.mode,
            self.lab.l1_status,
            self.lab.log()
        )
    }

    /// The parsed run; fails if the run never started.
    pub fn get(&self) -> &L2Run {
        match self.run {
            Some(r) => r,
            None => self.fail("never started"),
        }
    }

    /// Asserts the guest reached init, the scenario passed and the VMM exited 0.
    pub fn assert_ok(&self) -> &L2Run {
        let r = self.get();
        if !r.init_seen {
            self.fail("the guest never printed SPLITVM-L2-INIT");
        }
        if r.done_rc != Some(0) {
            self.fail(&format!("guest init reported rc {:?}", r.done_rc));
        }
        if r.exit != Some(0) {
            self.fail(&format!("VMM exit code {:?}, want 0", r.exit));
        }
        r
    }

    /// The guest's `RESULT key=...` value; fails if missing.
    pub fn result(&self, key: &str) -> &str {
        match self.get().results.get(key) {
            Some(v) => v,
            None => self.fail(&format!("no RESULT {key}=")),
        }
    }

    /// `RESULT key=` parsed as an integer within `range`.
    pub fn result_in(&self, key: &str, range: std::ops::RangeInclusive<u64>) -> u64 {
        let v = self.result(key);
        match v.trim().parse::<u64>() {
            Ok(n) if range.contains(&n) => n,
            _ => self.fail(&format!("RESULT {key}={v} not in {range:?}")),
        }
    }
}

/// A set of level-2 runs for one level-1 boot.
#[derive(Default)]
pub struct Lab {
    runs: Vec<L2>,
    with_qemu: bool,
    with_qsd: bool,
    /// Level-1 scenarios: directories under `tests/lab/scenarios/`, with limits.
    scenarios: Vec<(String, Duration)>,
}

impl Lab {
    /// An empty lab.
    pub fn new() -> Lab {
        Lab::default()
    }

    /// Adds a level-2 run (in order).
    pub fn l2(mut self, run: L2) -> Lab {
        if run.vmm == Vmm::Qemu {
            self.with_qemu = true;
        }
        assert!(
            self.runs.iter().all(|r| r.name != run.name),
            "duplicate L2 name {}",
            run.name
        );
        self.runs.push(run);
        self
    }

    /// Adds a level-1 scenario: `tests/lab/scenarios/NAME/` is packed at
    /// `/lab/scenarios/NAME/`, and its `l1.sh` runs in level 1 after the
    /// plain level-2 runs (it starts backends, calls `run_l2`, checks
    /// images, prints `L1-RESULT`). `limit` bounds the whole script.
    pub fn scenario(mut self, name: &str, limit: Duration) -> Lab {
        self.scenarios.push((name.to_string(), limit));
        self
    }

    /// Packs QEMU into level 1 (for scenarios that run it themselves).
    pub fn with_qemu(mut self) -> Lab {
        self.with_qemu = true;
        self
    }

    /// Packs qemu-storage-daemon into level 1.
    pub fn with_qsd(mut self) -> Lab {
        self.with_qsd = true;
        self
    }

    /// Runs the probe, then level 1 with every remaining scenario. Does not
    /// panic on guest failures: the returned [`LabRun`] says what happened.
    pub fn run(self) -> LabRun {
        let bins = bin_dir();
        let assets = GuestAssets::get();
        let mut lines = Vec::new();
        let mode = match direct_probe(&bins, &assets, &mut lines) {
            true => LabMode::Direct,
            false => LabMode::Nested,
        };
        let (direct, nested): (Vec<L2>, Vec<L2>) = self
            .runs
            .into_iter()
            .partition(|r| mode == LabMode::Direct && r.vmm == Vmm::Splitvm);
        for run in &direct {
            run_direct(&bins, &assets, run, &mut lines);
        }
        let (l1_status, l1_lines) = if nested.is_empty() && self.scenarios.is_empty() {
            (None, Vec::new())
        } else {
            let packs = Packs {
                qemu: self.with_qemu,
                qsd: self.with_qsd,
                scenarios: &self.scenarios,
            };
            let (st, l) = run_nested(&bins, &nested, &packs);
            (Some(st), l)
        };
        lines.extend(l1_lines);
        let Parsed { l1_done, l2, l1 } = parse_lines(&lines);
        for (name, r) in &l2 {
            eprintln!(
                "lab: {name}: init={} done_rc={:?} exit={:?} ms={:?} ({mode:?})",
                r.init_seen, r.done_rc, r.exit, r.millis
            );
        }
        LabRun {
            mode,
            l1_done,
            l1_status,
            lines,
            l2,
            l1,
        }
    }
}

/// Where the project's release binaries are: `$SPLITVM_LAB_BIN_DIR`, or
/// `$CARGO_TARGET_DIR/release`, or `<workspace>/target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SPLITVM_LAB_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release")
}

/// The guest kernel and base initramfs built by `scripts/guest-assets`.
#[derive(Clone, Debug)]
pub struct GuestAssets {
    /// Directory of the assets (`<cache>/<kernel version>`).
    pub dir: PathBuf,
    /// Kernel version, e.g. `6.1.0-57-amd64`.
    pub kver: String,
    /// The ELF kernel the level-2 guest boots.
    pub vmlinux: PathBuf,
    /// The level-2 base initramfs (uncompressed newc cpio).
    pub l2_initramfs: PathBuf,
}

impl GuestAssets {
    /// Runs `scripts/guest-assets` (cached after the first build) and reads
    /// its `assets.env`.
    pub fn get() -> GuestAssets {
        let script = workspace_root().join("scripts/guest-assets");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let env = std::fs::read_to_string(dir.join("assets.env"))
            .unwrap_or_else(|e| panic!("reading {}/assets.env: {e}", dir.display()));
        let var = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("assets.env has no {k}"))
                .trim_matches('"')
                .to_string()
        };
        GuestAssets {
            kver: var("KVER"),
            vmlinux: PathBuf::from(var("VMLINUX")),
            l2_initramfs: PathBuf::from(var("L2_INITRAMFS")),
            dir,
        }
    }
}

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
struct Packs<'a> {
    qemu: bool,
    qsd: bool,
    scenarios: &'a [(String, Duration)],
}

/// Builds the static guest tools (tests/guest-tools) into the target dir.
fn guest_tools() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = target.join("lab-tools");
    let script = workspace_root().join("scripts/build-guest-tools");
    let st = Command::new(&script)
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(st.success(), "{} failed", script.display());
    dir
}

fn run_nested(bins: &Path, runs: &[L2], packs: &Packs<'_>) -> (i32, Vec<String>) {
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
    }
    for (name, limit) in packs.scenarios {
        let dir = workspace_root().join("tests/lab/scenarios").join(name);
        cmd.arg("--file")
            .arg(format!("{}:/lab/scenarios/{name}", dir.display()));
        let _ = writeln!(
            script,
            "echo \"L1-SCENARIO-START {name}\"; timeout {} sh /lab/scenarios/{name}/l1.sh || rc=1; echo \"L1-SCENARIO-END {name}\"",
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
fn direct_probe(bins: &Path, assets: &GuestAssets, lines: &mut Vec<String>) -> bool {
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

fn run_direct(bins: &Path, assets: &GuestAssets, run: &L2, lines: &mut Vec<String>) {
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
