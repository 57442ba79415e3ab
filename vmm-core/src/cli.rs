//! The `splitvm` command line: clap arguments, then `TryFrom<RunArgs> for
//! VmConfig` doing all validation, so bad input fails before any KVM work.

use std::fs::File;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::arch::x86_64::boot::{detect_format, BootProtocol};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, GSI_MAX, VIRTIO_GSI_START};
use crate::config::{merge_cmdline, DeviceConfig, SerialTarget, VmConfig};
use crate::vhost_user::device::DeviceKind;
use crate::vhost_user::monitor::ReconnectPolicy;

/// splitvm: a KVM VMM whose devices run as separate vhost-user processes.
#[derive(Parser, Debug)]
#[command(name = "splitvm", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a guest and run it until it resets or powers off.
    Run(RunArgs),
    /// Query or steer a running splitvm through its API socket.
    Ctl(crate::ctl::CtlArgs),
    /// Start a VM and its backends from a vm.toml and supervise them.
    Up(crate::up::UpArgs),
    /// Stop a VM started with `splitvm up`, backends and all.
    Down(crate::up::DownArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BootArg {
    /// Linux 64-bit boot protocol (zero page); PVH if the ELF has only that.
    Linux,
    /// PVH entry (the ELF's XEN_ELFNOTE_PHYS32_ENTRY).
    Pvh,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Kernel: an ELF vmlinux or a bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; `console=ttyS0 reboot=k panic=1` are added
    /// unless it sets those keys itself.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Guest memory, e.g. 256M, 1G, or bytes.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u16,
    /// Serial console: `stdout` or `file:PATH`.
    #[arg(long, default_value = "stdout", value_parser = parse_serial)]
    pub serial: SerialTarget,
    /// Boot protocol.
    #[arg(long, value_enum, default_value_t = BootArg::Linux)]
    pub boot: BootArg,
    /// A virtio-blk device served by a vhost-user backend: `socket=PATH`.
    #[arg(long = "disk", value_name = "socket=PATH", value_parser = parse_socket_arg)]
    pub disks: Vec<PathBuf>,
    /// A virtio-net device served by a vhost-user backend: `socket=PATH`.
    #[arg(long = "net", value_name = "socket=PATH", value_parser = parse_socket_arg)]
    pub nets: Vec<PathBuf>,
    /// A virtio-input device served by a vhost-user backend: `socket=PATH`.
    #[arg(long = "input", value_name = "socket=PATH", value_parser = parse_socket_arg)]
    pub inputs: Vec<PathBuf>,
    /// Seconds to keep retrying each backend socket at startup.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Serve the management API (HTTP/1.1 + JSON) on this unix socket.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Seconds to wait for a new backend after one goes away; by default
    /// splitvm waits forever and the guest never notices.
    #[arg(long)]
    pub reconnect_timeout: Option<u64>,
}

/// Parses `socket=PATH`, the one key a device argument has today.
fn parse_socket_arg(s: &str) -> Result<PathBuf, String> {
    match s.split_once('=') {
        Some(("socket", p)) if !p.is_empty() => Ok(PathBuf::from(p)),
        Some((k, _)) if k != "socket" => Err(format!("unknown key {k:?}; expected socket=PATH")),
        _ => Err(format!("{s:?}: expected socket=PATH")),
    }
}

/// Errors in the `run` arguments. Each names the input it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--kernel {path}: {source}")]
    KernelUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--kernel {path}: not an ELF vmlinux or bzImage")]
    KernelFormat { path: String },
    #[error("--initrd {path}: {source}")]
    InitrdUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--initrd {path}: not a regular file")]
    InitrdNotFile { path: String },
    #[error("--memory: must be at least 16 MiB")]
    MemoryTooSmall,
    #[error("--memory: {want} MiB is more than this host has ({host} MiB)")]
    MemoryTooBig { want: u64, host: u64 },
    #[error("--cpus: must be between 1 and {MAX_CPUS}, got {0}")]
    Cpus(u16),
    #[error("too many devices: {0} (at most {MAX_DEVICES})")]
    TooManyDevices(usize),
    #[error("--cmdline: {len} bytes with defaults; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
}

/// APIC ids are 8-bit in the MADT and MP table; 255 is broadcast.
pub const MAX_CPUS: u16 = 254;
const MIN_MEMORY: u64 = 16 << 20;
/// One GSI each, from the first free one to the IOAPIC's last pin.
pub const MAX_DEVICES: usize = (GSI_MAX - VIRTIO_GSI_START + 1) as usize;

/// Parses `256M`, `1G`, `512K`, or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 256M or 1G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_serial(s: &str) -> Result<SerialTarget, String> {
    match s {
        "stdout" => Ok(SerialTarget::Stdout),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialTarget::File(PathBuf::from(p))),
            _ => Err(format!("{s:?}: expected `stdout` or `file:PATH`")),
        },
    }
}

fn host_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl TryFrom<RunArgs> for VmConfig {
    type Error = ConfigError;

    fn try_from(a: RunArgs) -> Result<VmConfig, ConfigError> {
        let kpath = a.kernel.display().to_string();
        let mut k = File::open(&a.kernel).map_err(|source| ConfigError::KernelUnreadable {
            path: kpath.clone(),
            source,
        })?;
        match detect_format(&mut k) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(ConfigError::KernelFormat { path: kpath }),
            Err(source) => {
                return Err(ConfigError::KernelUnreadable {
                    path: kpath,
                    source,
                })
            }
        }
        if let Some(p) = &a.initrd {
            let path = p.display().to_string();
            let f = File::open(p).map_err(|source| ConfigError::InitrdUnreadable {
                path: path.clone(),
                source,
            })?;
            let md = f
                .metadata()
                .map_err(|source| ConfigError::InitrdUnreadable {
                    path: path.clone(),
                    source,
                })?;
            if !md.is_file() {
                return Err(ConfigError::InitrdNotFile { path });
            }
        }
        if a.memory < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall);
        }
        if let Some(host) = host_memory_bytes() {
            if a.memory > host {
                return Err(ConfigError::MemoryTooBig {
                    want: a.memory >> 20,
                    host: host >> 20,
                });
            }
        }
        if a.cpus == 0 || a.cpus > MAX_CPUS {
            return Err(ConfigError::Cpus(a.cpus));
        }
        let cmdline = merge_cmdline(&a.cmdline);
        // The kernel's buffer holds COMMAND_LINE_SIZE bytes including the NUL.
        if cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong {
                len: cmdline.len(),
                max: CMDLINE_MAX_SIZE - 1,
            });
        }
        let devices: Vec<DeviceConfig> = [
            (DeviceKind::Block, a.disks),
            (DeviceKind::Net, a.nets),
            (DeviceKind::Input, a.inputs),
        ]
        .into_iter()
        .flat_map(|(kind, socks)| {
            socks
                .into_iter()
                .map(move |socket| DeviceConfig { kind, socket })
        })
        .collect();
        if devices.len() > MAX_DEVICES {
            return Err(ConfigError::TooManyDevices(devices.len()));
        }
        Ok(VmConfig {
            api_socket: a.api_socket,
            devices,
            connect_timeout: std::time::Duration::from_secs(a.connect_timeout),
            reconnect: match a.reconnect_timeout {
                None => ReconnectPolicy::Forever,
                Some(s) => ReconnectPolicy::GiveUpAfter(std::time::Duration::from_secs(s)),
            },
            kernel: a.kernel,
            initrd: a.initrd,
            cmdline,
            memory_bytes: a.memory,
            cpus: a.cpus as u8,
            serial: a.serial,
            boot: match a.boot {
                BootArg::Linux => BootProtocol::Linux,
                BootArg::Pvh => BootProtocol::Pvh,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn serial_targets_parse() {
        assert_eq!(parse_serial("stdout"), Ok(SerialTarget::Stdout));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialTarget::File("/tmp/x".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tty").is_err());
    }

    #[test]
    fn device_args_take_only_socket() {
        assert_eq!(
            parse_socket_arg("socket=/run/b.sock"),
            Ok("/run/b.sock".into())
        );
        assert!(parse_socket_arg("/run/b.sock").is_err());
        assert!(parse_socket_arg("path=/x")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse_socket_arg("socket=").is_err());
    }
}
