//! Real Linux under splitvm, in the nested lab (tests/lab/README.md): one
//! level-1 boot runs every scenario below; each test asserts its own part.
//! Run with `cargo test` (one process shares the lab run), after
//! `cargo build --release --workspace --bins`.

use std::sync::OnceLock;

use splitvm_tests::lab::{Lab, LabRun, L2};

const WORD: &str = "splitvm_lab_word=ok";

/// Level-2 modules the base initramfs loads (tests/lab/README.md).
const MODULES: [&str; 6] = [
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_input",
    "evdev",
    "ext4",
];

/// Scenario: reports which of [`MODULES`] are loaded.
fn modules_scenario() -> String {
    format!(
        "for m in {}; do\n\tgrep -q \"^$m \" /proc/modules && echo \"RESULT module_$m=loaded\"\ndone\nexit 0\n",
        MODULES.join(" ")
    )
}

fn assert_modules_loaded(run: &splitvm_tests::lab::L2View<'_>) {
    for m in MODULES {
        assert_eq!(run.result(&format!("module_{m}")), "loaded");
    }
}

/// Guest-visible MemTotal for a `size_mib` guest: the Debian kernel keeps
/// ~45 MiB for itself; allow up to 64 MiB.
fn memtotal_range(size_mib: u64) -> std::ops::RangeInclusive<u64> {
    (size_mib - 64) * 1024..=size_mib * 1024
}

fn lab() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let run = RUN.get_or_init(|| {
        std::panic::catch_unwind(|| {
            Lab::new()
                // The lab itself: QEMU+KVM inside level 1 boots the same guest.
                .l2(L2::qemu("qemu_1cpu")
                    .args(["--cpus", "1", "--memory", "256M", "--cmdline", WORD])
                    .scenario(&modules_scenario()))
                .l2(L2::splitvm("splitvm_1cpu_256m")
                    .args(["--cpus", "1", "--memory", "256M", "--cmdline", WORD])
                    .scenario(&modules_scenario()))
                .l2(L2::splitvm("splitvm_2cpu_512m").args(["--cpus", "2", "--memory", "512M"]))
                .run()
        })
        .map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "lab run panicked".into())
        })
    });
    match run {
        Ok(r) => r,
        Err(e) => panic!("the nested lab did not run: {e}"),
    }
}

#[test]
fn nested_lab_qemu_boots_l2() {
    let run = lab().l2("qemu_1cpu");
    run.assert_ok();
    assert_eq!(run.result("nproc"), "1");
    run.result_in("memtotal_kb", memtotal_range(256));
    assert!(
        run.result("cmdline").split_whitespace().any(|w| w == WORD),
        "cmdline {:?} lacks {WORD}",
        run.result("cmdline")
    );
    assert_modules_loaded(&run);
}

#[test]
fn nested_lab_splitvm_boots_1cpu_256m() {
    let run = lab().l2("splitvm_1cpu_256m");
    run.assert_ok();
    assert_eq!(run.result("nproc"), "1");
    run.result_in("memtotal_kb", memtotal_range(256));
    let cmdline = run.result("cmdline");
    assert!(
        cmdline.split_whitespace().any(|w| w == WORD),
        "cmdline {cmdline:?} lacks {WORD}"
    );
    assert_modules_loaded(&run);
}

#[test]
fn nested_lab_splitvm_boots_2cpu_512m() {
    let run = lab().l2("splitvm_2cpu_512m");
    run.assert_ok();
    assert_eq!(run.result("nproc"), "2");
    run.result_in("memtotal_kb", memtotal_range(512));
}
