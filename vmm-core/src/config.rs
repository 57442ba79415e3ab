//! The validated description of a VM, built from the CLI (`cli.rs`).

use std::path::PathBuf;

use crate::arch::x86_64::boot::BootProtocol;
use crate::vhost_user::device::DeviceKind;

/// A device served by a vhost-user backend at `socket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    pub kind: DeviceKind,
    pub socket: PathBuf,
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialTarget {
    Stdout,
    File(PathBuf),
}

/// A VM to run.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The complete kernel command line (defaults merged in).
    pub cmdline: String,
    pub memory_bytes: u64,
    pub cpus: u8,
    pub serial: SerialTarget,
    pub boot: BootProtocol,
    /// vhost-user devices, in the order they appear to the guest.
    pub devices: Vec<DeviceConfig>,
    /// How long to keep retrying a backend socket at startup.
    pub connect_timeout: std::time::Duration,
    /// Where to serve the management API, if anywhere.
    pub api_socket: Option<PathBuf>,
    /// What to do when a backend goes away while the guest runs.
    pub reconnect: crate::vhost_user::monitor::ReconnectPolicy,
}

/// Parameters splitvm adds unless the user's command line sets them.
pub const DEFAULT_CMDLINE: [(&str, &str); 3] =
    [("console", "ttyS0"), ("reboot", "k"), ("panic", "1")];

/// The user's command line with each default whose key it lacks prepended.
pub fn merge_cmdline(user: &str) -> String {
    let keys: Vec<&str> = user
        .split_whitespace()
        .map(|w| w.split('=').next().unwrap_or(w))
        .collect();
    let mut out: Vec<String> = DEFAULT_CMDLINE
        .iter()
        .filter(|(k, _)| !keys.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !user.trim().is_empty() {
        out.push(user.trim().to_string());
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults_are_overridable() {
        assert_eq!(merge_cmdline(""), "console=ttyS0 reboot=k panic=1");
        assert_eq!(
            merge_cmdline("panic=5 quiet"),
            "console=ttyS0 reboot=k panic=5 quiet"
        );
    }
}
