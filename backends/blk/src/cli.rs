//! Command line of `splitvm-blk` and its validation into [`Config`].

use std::path::PathBuf;

use clap::Parser;
use splitvm_backends::cli::CommonArgs;

use crate::blk::ID_BYTES;
use crate::io::EngineKind;
use crate::Config;

/// splitvm vhost-user block backend: serves a raw image to one frontend at a time.
#[derive(Parser, Debug)]
#[command(name = "splitvm-blk", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Raw image to serve (regular file or block device).
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// Serve the image read-only (advertises VIRTIO_BLK_F_RO; writes fail).
    #[arg(long)]
    pub readonly: bool,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    pub direct: bool,
    /// Number of virtqueues, one worker thread each (1..=64).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queues: u16,
    /// Largest virtqueue size accepted (a power of two, 2..=32768).
    #[arg(long, value_name = "Q", default_value_t = 1024)]
    pub queue_size: u16,
    /// Serial returned by GET_ID (at most 20 bytes).
    #[arg(long, value_name = "ID", default_value = "splitvm-blk")]
    pub serial: String,
    /// I/O engine: auto picks io_uring when the kernel offers it.
    #[arg(long, value_enum, default_value_t = EngineKind::Auto)]
    pub io_engine: EngineKind,
}

/// Invalid arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No socket to listen on, or an unusable activation environment.
    #[error("{0}")]
    Listen(String),
    /// `--queues` out of range.
    #[error("--queues must be 1..=64, got {0}")]
    Queues(u16),
    /// `--queue-size` not a power of two in range.
    #[error("--queue-size must be a power of two in 2..=32768, got {0}")]
    QueueSize(u16),
    /// `--serial` too long.
    #[error("--serial is {0} bytes; at most 20 fit")]
    Serial(usize),
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, Self::Error> {
        let listen = a
            .common
            .listen()
            .map_err(|e| ConfigError::Listen(e.to_string()))?;
        if !(1..=64).contains(&a.queues) {
            return Err(ConfigError::Queues(a.queues));
        }
        if a.queue_size < 2 || !a.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(a.queue_size));
        }
        let s = a.serial.as_bytes();
        if s.len() > ID_BYTES {
            return Err(ConfigError::Serial(s.len()));
        }
        let mut serial = [0u8; ID_BYTES];
        serial[..s.len()].copy_from_slice(s);
        Ok(Config {
            metrics: a.common.metrics_path(),
            listen,
            sandbox: a.common.sandbox,
            image: a.image,
            readonly: a.readonly,
            direct: a.direct,
            queues: a.queues,
            queue_size: a.queue_size,
            serial,
            engine: a.io_engine,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["splitvm-blk", "--socket-path", "/s", "--image", "/i"];
        v.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(v).unwrap())
    }

    #[test]
    fn config_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.queues, 1);
        assert_eq!(c.queue_size, 1024);
        assert!(!c.readonly);
        assert_eq!(&c.serial[..11], b"splitvm-blk");
    }

    #[test]
    fn config_rejects_bad_values() {
        assert_eq!(parse(&["--queues", "0"]), Err(ConfigError::Queues(0)));
        assert_eq!(
            parse(&["--queue-size", "100"]),
            Err(ConfigError::QueueSize(100))
        );
        assert_eq!(
            parse(&["--serial", "012345678901234567890"]),
            Err(ConfigError::Serial(21))
        );
    }

    #[test]
    fn image_is_required() {
        assert!(Args::try_parse_from(["splitvm-blk", "--socket-path", "/s"]).is_err());
    }
}
