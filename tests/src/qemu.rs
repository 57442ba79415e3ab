//! QEMU under TCG on this host as the real frontend of our backends: the
//! Debian guest's assets, a microvm command line with guest memory on a
//! shared memfd (what vhost-user needs), initramfs overlays, and the
//! guest's `RESULT` lines.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `scripts/guest-assets` (idempotent, cached) and returns its directory.
pub fn guest_assets() -> PathBuf {
    let script = crate::workspace_root().join("scripts/guest-assets");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/guest-assets");
    assert!(out.status.success(), "scripts/guest-assets failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Host TSC frequency in kHz (microvm under TCG needs `tsc_early_khz`).
pub fn tsc_khz() -> u64 {
    if let Ok(v) = std::env::var("SPLITVM_TSC_KHZ") {
        return v.parse().expect("SPLITVM_TSC_KHZ is a number");
    }
    let info = fs::read_to_string("/proc/cpuinfo").unwrap();
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("cpu MHz in /proc/cpuinfo");
    (mhz * 1000.0).round() as u64
}

/// The kernel command line for a Debian guest under microvm/TCG. The guest
/// resets with `reboot=t` (triple fault): `reboot=k` sometimes left QEMU's
/// microvm running after the guest rebooted.
pub fn append() -> String {
    format!(
        "console=ttyS0 tsc_early_khz={} panic=-1 reboot=t quiet",
        tsc_khz()
    )
}

/// `qemu-system-x86_64 -M microvm` under TCG (after `prefix`, e.g.
/// `ip netns exec NS`), 512 MiB of guest memory on a shared memfd, modern
/// virtio-mmio, the console on stdout, no reboot. Devices and the kernel
/// are added by the caller.
pub fn microvm(prefix: &[&str]) -> Command {
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (*p, rest.to_vec()),
        None => ("qemu-system-x86_64", Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(pre);
    if !prefix.is_empty() {
        cmd.arg("qemu-system-x86_64");
    }
    cmd.args(["-M", "microvm", "-accel", "tcg", "-cpu", "max"])
        .args(["-m", "512", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio"])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-machine", "memory-backend=mem"]);
    cmd
}

/// Adds the Debian kernel, `initrd` and the command line to a [`microvm`] command.
pub fn boot(cmd: &mut Command, assets: &Path, initrd: &Path) {
    cmd.arg("-kernel")
        .arg(assets.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append());
}

/// An uncompressed newc cpio holding `files` (name, bytes) at `/`.
pub fn cpio(dir: &Path, files: &[(&str, &[u8])]) -> Vec<u8> {
    let stage = dir.join("overlay");
    fs::create_dir_all(&stage).unwrap();
    for (name, bytes) in files {
        fs::write(stage.join(name), bytes).unwrap();
    }
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(&stage)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cpio (package cpio)");
    let names: String = files.iter().map(|(n, _)| format!("{n}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(names.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "cpio failed");
    out.stdout
}

/// Every `key=value` after `RESULT ` in `lines`, in order.
pub fn results(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| l.split_once("RESULT "))
        .flat_map(|(_, kv)| {
            kv.split_whitespace()
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}
