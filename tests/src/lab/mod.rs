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
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::workspace_root;

mod parse;
mod runner;
pub use parse::{parse_lines, Parsed};
pub use runner::guest_tools;
use runner::{direct_probe, run_direct, run_nested, Packs};

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

    /// A level-1 result, if level 1 printed it.
    pub fn l1_get(&self, key: &str) -> Option<&str> {
        self.l1.get(key).map(String::as_str)
    }

    /// A level-2 run, if it happened.
    pub fn l2_run(&self, name: &str) -> Option<&L2Run> {
        self.l2.get(name)
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
    with_dpdk: bool,
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

    /// Packs DPDK's `dpdk-testpmd` and the drivers it needs into level 1.
    pub fn with_dpdk(mut self) -> Lab {
        self.with_dpdk = true;
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
                dpdk: self.with_dpdk,
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
