//! Real Linux under splitvm, in the nested lab (tests/lab/README.md): one
//! level-1 boot runs every scenario below; each test asserts its own part.
//! Run with `cargo test` (one process shares the lab run), after
//! `cargo build --release --workspace --bins`.

use std::sync::OnceLock;
use std::time::Duration;

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

/// The one level-1 run every nested-lab test shares (input_qemu.rs too).
pub(crate) fn lab() -> &'static LabRun {
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
                // splitvm-blk and qemu-storage-daemon as backends of splitvm.
                .scenario("blk", Duration::from_secs(900))
                // kill -9 splitvm-blk again and again under a dd workload.
                .scenario("restart", Duration::from_secs(600))
                // move the disk between backends through the API, under load.
                .scenario("swap", Duration::from_secs(600))
                // splitvm-net on a level-1 tap: ping, ARP, TCP both ways, link.
                .scenario("net", Duration::from_secs(600))
                // splitvm-input: evdev passthrough, profiles; QEMU as frontend.
                .scenario("input", Duration::from_secs(1500))
                // splitvm up examples/vm.toml: blk, net, input; kill; down.
                .scenario("up", Duration::from_secs(900))
                // splitvm's frontend against DPDK's vhost PMD (dpdk-testpmd).
                .scenario("dpdk", Duration::from_secs(600))
                .with_dpdk()
                .with_qsd()
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

/// The guest's writes (direct, buffered, at the end of the disk), discard
/// and write-zeroes through splitvm-blk, as the guest and the image file see
/// them.
fn assert_raw_blk(l2: &str, img: &str) {
    let lab = lab();
    let run = lab.l2(l2);
    run.assert_ok();
    for rc in [
        "direct_rc",
        "buffered_rc",
        "tail_rc",
        "discard_rc",
        "zeroout_rc",
    ] {
        assert_eq!(run.result(rc), "0", "{l2}: {rc}");
    }
    assert_ne!(
        run.result("past_end_rc"),
        "0",
        "{l2}: write past the end must fail"
    );
    let a = run.result("a_md5");
    let b = run.result("b_md5");
    assert_eq!(run.result("direct_back_md5"), a, "{l2}: direct read-back");
    assert_eq!(
        run.result("buffered_back_md5"),
        b,
        "{l2}: buffered read-back"
    );
    assert_eq!(
        run.result("tail_back_md5"),
        a,
        "{l2}: last blocks read-back"
    );
    assert_ne!(run.result("discard_before"), "0");
    assert_eq!(
        run.result("discard_after"),
        "0",
        "{l2}: discarded range reads zeroes"
    );
    assert_ne!(run.result("zeroout_before"), "0");
    assert_eq!(
        run.result("zeroout_after"),
        "0",
        "{l2}: zeroed range reads zeroes"
    );
    assert_eq!(
        run.result("io_errors"),
        "0",
        "{l2}: guest logged I/O errors"
    );
    // The image file in level 1 holds exactly that.
    assert_eq!(lab.l1_result(&format!("{img}_img_direct_md5")), a);
    assert_eq!(lab.l1_result(&format!("{img}_img_buffered_md5")), b);
    assert_eq!(lab.l1_result(&format!("{img}_img_tail_md5")), a);
    assert_eq!(lab.l1_result(&format!("{img}_img_discard_nonzero")), "0");
    assert_eq!(lab.l1_result(&format!("{img}_img_zeroout_nonzero")), "0");
}

#[test]
fn nested_lab_splitvm_blk_raw_io() {
    assert_raw_blk("blk", "blk");
    let run = lab().l2("blk");
    assert_eq!(run.result("rw_sectors"), (64u64 << 20 >> 9).to_string());
}

#[test]
fn nested_lab_splitvm_blk_readonly_and_filesystem() {
    let lab = lab();
    let run = lab.l2("blk");
    run.assert_ok();
    assert_eq!(run.result("ro_sysfs"), "1");
    assert_ne!(
        run.result("ro_write_rc"),
        "0",
        "writes to a read-only disk fail"
    );
    assert_eq!(run.result("ro_marker"), "read-only-marker");
    assert_eq!(
        lab.l1_result("blk_img_ro_md5"),
        lab.l1_result("blk_img_ro_expected_md5"),
        "the read-only image is unchanged"
    );
    assert_eq!(run.result("mkfs_rc"), "0");
    assert_eq!(run.result("fs_write_rc"), "0");
    assert_eq!(
        run.result("fs_readback"),
        format!("splitvm-fs-check-{}", run.result("a_md5"))
    );
    assert_eq!(lab.l1_result("blk_img_fs_has_file"), "1");
}

#[test]
fn nested_lab_splitvm_blk_ends_cleanly_on_sigterm() {
    let lab = lab();
    assert_eq!(lab.l1_result("blk_term_rc"), "0");
    assert_eq!(lab.l1_result("blk_term_socket_left"), "no");
}

#[test]
fn nested_lab_splitvm_with_qemu_storage_daemon() {
    assert_raw_blk("qsd", "qsd");
}

/// The guest writes and verifies while level 1 kills splitvm-blk with
/// SIGKILL at random moments and restarts it: every checksum matches, the
/// guest logs no I/O error, and the image holds what the guest wrote last.
#[test]
fn nested_lab_blk_survives_repeated_kill_9() {
    let lab = lab();
    let run = lab.l2("restart");
    run.assert_ok();
    let kills: u32 = lab.l1_result("restart_kills").parse().unwrap();
    assert!(
        kills >= 50,
        "only {kills} kills happened during the workload"
    );
    assert_ne!(run.result("rounds"), "0");
    assert_eq!(run.result("mismatches"), "0");
    assert_eq!(run.result("failed_writes"), "0");
    assert_eq!(run.result("io_errors"), "0");
    for s in 0..4 {
        assert_eq!(
            lab.l1_result(&format!("restart_img_stream{s}_md5")),
            run.result(&format!("stream{s}_md5")),
            "stream {s} in the image"
        );
    }
    eprintln!(
        "restart: {kills} kills, {} rounds, {} backends resubmitted in-flight requests",
        run.result("rounds"),
        lab.l1_result("restart_resubmitted")
    );
    // Measured, not asserted: the VMM reaching the new backend -> the first
    // guest request it completed, over every restart.
    let ms = |k: &str| {
        lab.l1_get(&format!("restart_first_completion_{k}"))
            .unwrap_or("-")
    };
    eprintln!(
        "restart -> first completed guest request: n={} median={} ms p99={} ms max={} ms",
        ms("n"),
        ms("ms_p50"),
        ms("ms_p99"),
        ms("ms_max")
    );
}

/// Swap through the API while the guest writes: A -> B, a refused swap to a
/// socket nobody serves, B -> A. The guest sees no error, the backend pid
/// the API reports follows, and the image holds the guest's data.
#[test]
fn nested_lab_blk_swap_between_backends_under_load() {
    let lab = lab();
    let run = lab.l2("swap");
    run.assert_ok();
    let (a, b) = (lab.l1_result("swap_a_pid"), lab.l1_result("swap_b_pid"));
    assert_eq!(lab.l1_result("swap_pid_before"), a);
    assert_eq!(lab.l1_result("swap_to_b_rc"), "0");
    assert_eq!(lab.l1_result("swap_pid_after_b"), b);
    assert_ne!(
        lab.l1_result("swap_to_nowhere_rc"),
        "0",
        "swap to nowhere must fail"
    );
    assert_eq!(
        lab.l1_result("swap_pid_after_nowhere"),
        b,
        "a failed swap changes nothing"
    );
    assert_eq!(lab.l1_result("swap_back_to_a_rc"), "0");
    assert_eq!(lab.l1_result("swap_pid_after_a"), a);
    assert_eq!(
        lab.l1_result("swap_rounds_after_last_swap_ok"),
        "0",
        "the guest kept working after the last swap"
    );
    assert_eq!(lab.l1_result("swap_b_saw_disconnect"), "1");
    assert_eq!(lab.l1_result("swap_b_term_rc"), "0");
    assert_eq!(run.result("mismatches"), "0");
    assert_eq!(run.result("failed_writes"), "0");
    assert_eq!(run.result("io_errors"), "0");
    for s in 0..4 {
        assert_eq!(
            lab.l1_result(&format!("swap_img_stream{s}_md5")),
            run.result(&format!("stream{s}_md5")),
            "stream {s} in the image"
        );
    }
}

/// splitvm + splitvm-net + Linux's virtio_net: MAC and MTU from the
/// backend, ping and ARP to a level-1 address, 4 MiB each way over TCP with
/// matching checksums, link down/up seen as carrier changes, and ping
/// resuming after splitvm-net is killed with SIGKILL and restarted.
#[test]
fn nested_lab_splitvm_net() {
    let lab = lab();
    let run = lab.l2("net");
    run.assert_ok();
    assert_eq!(run.result("net_mac"), "52:54:00:12:34:58");
    assert_eq!(run.result("net_mtu"), "1400");
    assert_eq!(run.result("net_carrier"), "1");
    assert_eq!(run.result("net_ping"), "ok");
    assert_eq!(
        run.result("net_arp"),
        lab.l1_result("net_tap_mac"),
        "ARP resolved"
    );
    assert_eq!(
        run.result("net_rx_md5"),
        lab.l1_result("net_pat_md5"),
        "level 1 -> guest"
    );
    assert_eq!(
        run.result("net_tx_md5"),
        lab.l1_result("net_rx_md5"),
        "guest -> level 1"
    );
    assert_eq!(lab.l1_result("net_rx_bytes"), (4u64 << 20).to_string());
    assert_eq!(run.result("net_link_down_seen"), "yes");
    assert_eq!(run.result("net_link_up_seen"), "yes");
    assert_eq!(run.result("net_ping_after_up"), "ok");
    // kill -9 of the backend and a new one on the same socket: ping resumes.
    assert_eq!(lab.l1_result("net_restarted"), "yes");
    assert_eq!(run.result("net_ping_after_restart"), "ok");
    assert_eq!(lab.l1_result("net_term_rc"), "0");
}

/// The negotiated features the guest prints (`/sys/bus/virtio/devices/*/features`:
/// one `0`/`1` per bit, bit 0 first).
fn feature_bits(s: &str) -> u64 {
    s.chars()
        .take(64)
        .enumerate()
        .filter(|(_, c)| *c == '1')
        .fold(0, |f, (i, _)| f | 1 << i)
}

/// splitvm's frontend against a vhost-user-net backend nobody here wrote:
/// DPDK's vhost PMD in `dpdk-testpmd`, io-forwarding to its tap PMD in level
/// 1, with Linux's virtio_net: what DPDK logged as negotiated is what the
/// guest acked (no control queue and no config-space features: DPDK
/// follows QEMU's convention, where both are the frontend's), link up, ping
/// and ARP to the tap's address, 4 MiB each way over TCP with matching
/// checksums, and testpmd's own count of the guest's frames.
#[test]
fn nested_lab_net_dpdk_testpmd() {
    const VERSION_1: u64 = 1 << 32;
    const PROTOCOL_FEATURES: u64 = 1 << 30;
    const CTRL_VQ_MQ_MAC_STATUS: u64 = 1 << 17 | 1 << 22 | 1 << 5 | 1 << 16;
    const HOST_TSO: u64 = 1 << 11 | 1 << 12;
    let lab = lab();
    let run = lab.l2("dpdk");
    run.assert_ok();
    assert_eq!(lab.l1_result("dpdk_started"), "yes");
    let logged = lab.l1_result("dpdk_features");
    let dpdk = u64::from_str_radix(logged.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("testpmd's negotiated features {logged:?}"));
    let guest = feature_bits(run.result("dpdk_guest_features"));
    eprintln!("dpdk-testpmd negotiated {dpdk:#x}; the guest acked {guest:#x}");
    assert_eq!(
        dpdk & !PROTOCOL_FEATURES,
        guest,
        "DPDK runs what the guest acked"
    );
    assert_ne!(guest & VERSION_1, 0, "VERSION_1");
    assert_eq!(
        guest & CTRL_VQ_MQ_MAC_STATUS,
        0,
        "nobody serves a control queue or config"
    );
    assert_eq!(run.result("dpdk_carrier"), "1");
    assert_eq!(run.result("dpdk_ping"), "ok");
    assert_eq!(
        run.result("dpdk_arp"),
        lab.l1_result("dpdk_tap_mac"),
        "ARP resolved"
    );
    assert_eq!(
        run.result("dpdk_rx_md5"),
        lab.l1_result("dpdk_pat_md5"),
        "level 1 -> guest"
    );
    assert_eq!(run.result("dpdk_rx_bytes"), (4u64 << 20).to_string());
    assert_eq!(
        run.result("dpdk_tx_md5"),
        lab.l1_result("dpdk_rx_md5"),
        "guest -> level 1"
    );
    assert_eq!(lab.l1_result("dpdk_rx_bytes"), (4u64 << 20).to_string());
    // The guest's 4 MiB crossed testpmd's vhost port as frames of at most
    // 1514 bytes, or 64 KiB with host TSO.
    let max_frame = if guest & HOST_TSO != 0 { 65_550 } else { 1514 };
    let rx: u64 = lab
        .l1_result("dpdk_port0_rx")
        .parse()
        .expect("port 0 RX-packets");
    assert!(
        rx >= (4 << 20) / max_frame,
        "testpmd received {rx} frames from the guest"
    );
    assert_eq!(lab.l1_result("dpdk_term_rc"), "0");
    for key in ["dpdk_tx_ms", "dpdk_rx_ms"] {
        let ms: f64 = run.result(key).parse().unwrap_or(f64::NAN);
        eprintln!(
            "{key}: {ms} ms, {:.1} Mbit/s",
            4.0 * 8.0 * 1.048_576 / (ms / 1000.0)
        );
    }
}

/// `splitvm up examples/vm.toml`: Linux with a disk, a NIC and a keyboard,
/// each from a backend `up` started; splitvm-blk killed with SIGKILL while
/// the guest writes, restarted by `up` on the same socket, the VMM
/// reconnected and both rounds of data read back; `splitvm down` stops it
/// all and leaves no process, no socket and no tap.
#[test]
fn nested_lab_splitvm_up_and_down() {
    let lab = lab();
    assert_eq!(lab.l1_result("scenario_up_rc"), "0");
    let run = lab.l2("up");
    assert_eq!(run.result("up_virtio_devices"), "3");
    assert_eq!(run.result("up_blk_round1"), "ok");
    assert_eq!(run.result("up_net_ping"), "ok");
    assert_eq!(run.result("up_blk_round2_write"), "ok");
    assert_eq!(run.result("up_input"), "ok");
    assert_eq!(run.result("up_blk_verify"), "ok");
    assert_eq!(lab.l1_result("up_started"), "yes");
    assert_eq!(lab.l1_result("up_blk_restarted"), "yes");
    assert_eq!(lab.l1_result("up_blk_reconnects"), "1");
    assert_eq!(lab.l1_result("up_down_rc"), "0");
    assert_eq!(lab.l1_result("up_rc"), "0");
    assert_eq!(lab.l1_result("up_pids_seen"), "5");
    assert_eq!(lab.l1_result("up_procs_left"), "0");
    assert_eq!(lab.l1_result("up_files_left"), "0");
    assert_eq!(lab.l1_result("up_tap_left"), "no");
}
