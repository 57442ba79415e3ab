//! Command line of `splitvm-net` and its validation into [`Config`].

use std::os::fd::RawFd;

use clap::Parser;
use splitvm_backends::cli::CommonArgs;

use crate::net::parse_mac;
use crate::{Config, TapSource};

const CONTROL_HELP: &str = "\
Link control: SIGUSR1 takes the link down, SIGUSR2 brings it up. The STATUS \
field of the config space changes (VIRTIO_NET_S_LINK_UP) and the frontend is \
told with VHOST_USER_BACKEND_CONFIG_CHANGE_MSG when it set up the backend \
request channel (BACKEND_REQ). While the link is down, frames in either \
direction are dropped. SIGTERM or SIGINT stops the backend; the drop \
counters are logged when a frontend disconnects and at exit.";

/// splitvm vhost-user net backend: serves a tap device to one frontend at a time.
#[derive(Parser, Debug)]
#[command(name = "splitvm-net", version, after_help = CONTROL_HELP)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Tap interface to open (created if missing; needs CAP_NET_ADMIN).
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "tap_fd",
        required_unless_present = "tap_fd"
    )]
    pub tap: Option<String>,
    /// Already-open tap fd (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), one per queue
    /// pair; repeat for a multiqueue tap. Needs no privilege.
    #[arg(long, value_name = "N")]
    pub tap_fd: Vec<RawFd>,
    /// MAC address the guest sees.
    #[arg(long, value_name = "MAC", default_value = "52:54:00:12:34:56")]
    pub mac: String,
    /// Queue pairs, one worker thread each (1..=16; with --tap-fd: the number of fds).
    #[arg(long, value_name = "N")]
    pub queues: Option<u16>,
    /// Largest virtqueue size accepted (a power of two, 2..=32768).
    #[arg(long, value_name = "Q", default_value_t = 1024)]
    pub queue_size: u16,
    /// MTU offered to the guest (VIRTIO_NET_F_MTU, 68..=65535).
    #[arg(long, value_name = "M")]
    pub mtu: Option<u16>,
    /// Start with the link down.
    #[arg(long)]
    pub link_down: bool,
}

/// Invalid arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No socket to listen on, or an unusable activation environment.
    #[error("{0}")]
    Listen(String),
    /// `--queues` out of range.
    #[error("--queues must be 1..=16, got {0}")]
    Queues(u16),
    /// `--queues` disagrees with the number of `--tap-fd`.
    #[error("--queues {queues} but {fds} --tap-fd given")]
    QueuesVsFds {
        /// `--queues`.
        queues: u16,
        /// Number of fds.
        fds: usize,
    },
    /// `--queue-size` not a power of two in range.
    #[error("--queue-size must be a power of two in 2..=32768, got {0}")]
    QueueSize(u16),
    /// `--mtu` out of range.
    #[error("--mtu must be 68..=65535, got {0}")]
    Mtu(u16),
    /// `--mac` malformed or multicast.
    #[error("--mac {0:?} is not a unicast aa:bb:cc:dd:ee:ff address")]
    Mac(String),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, Self::Error> {
        let listen = a
            .common
            .listen()
            .map_err(|e| ConfigError::Listen(e.to_string()))?;
        let queues = match (a.queues, a.tap_fd.len()) {
            (Some(q), 0) => q,
            (None, 0) => 1,
            (None, n) => u16::try_from(n).unwrap_or(u16::MAX),
            (Some(q), n) if usize::from(q) == n => q,
            (Some(q), n) => return Err(ConfigError::QueuesVsFds { queues: q, fds: n }),
        };
        if !(1..=16).contains(&queues) {
            return Err(ConfigError::Queues(queues));
        }
        if a.queue_size < 2 || !a.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        if let Some(m) = a.mtu {
            if m < 68 {
                return Err(ConfigError::Mtu(m));
            }
        }
        let mac = parse_mac(&a.mac)
            .filter(|m| m[0] & 1 == 0)
            .ok_or_else(|| ConfigError::Mac(a.mac.clone()))?;
        let tap = match a.tap {
            Some(name) => TapSource::Name(name),
            None => TapSource::Fds(a.tap_fd),
        };
        Ok(Config {
            metrics: a.common.metrics_path(),
            listen,
            sandbox: a.common.sandbox,
            tap,
            mac,
            queues,
            queue_size: a.queue_size,
            mtu: a.mtu,
            link_up: !a.link_down,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["splitvm-net", "--socket-path", "/s"];
        v.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(v).unwrap())
    }

    #[test]
    fn config_defaults() {
        let c = parse(&["--tap", "t0"]).unwrap();
        assert_eq!(c.queues, 1);
        assert_eq!(c.queue_size, 1024);
        assert_eq!(c.mtu, None);
        assert!(c.link_up);
        assert_eq!(c.tap, TapSource::Name("t0".into()));
        let c = parse(&["--tap-fd", "3", "--tap-fd", "4"]).unwrap();
        assert_eq!(c.queues, 2);
    }

    #[test]
    fn config_rejects_bad_values() {
        assert_eq!(
            parse(&["--tap", "t", "--queues", "0"]),
            Err(ConfigError::Queues(0))
        );
        assert_eq!(
            parse(&["--tap", "t", "--queue-size", "3"]),
            Err(ConfigError::QueueSize(3))
        );
        assert_eq!(
            parse(&["--tap", "t", "--mtu", "10"]),
            Err(ConfigError::Mtu(10))
        );
        assert!(matches!(
            parse(&["--tap", "t", "--mac", "01:00:00:00:00:01"]),
            Err(ConfigError::Mac(_))
        ));
        assert!(matches!(
            parse(&["--tap-fd", "3", "--queues", "2"]),
            Err(ConfigError::QueuesVsFds { .. })
        ));
    }

    #[test]
    fn tap_is_required_and_exclusive() {
        assert!(Args::try_parse_from(["splitvm-net", "--socket-path", "/s"]).is_err());
        assert!(Args::try_parse_from([
            "splitvm-net",
            "--socket-path",
            "/s",
            "--tap",
            "t",
            "--tap-fd",
            "3"
        ])
        .is_err());
    }
}
