//! `splitvm-blk`: a vhost-user block device backend serving a raw image
//! (regular file or block device).
//!
//! Files: `cli.rs` (arguments → [`Config`]), `blk.rs` (the request model, no
//! sockets and no `unsafe`), `io/` (the `io_uring` and synchronous engines),
//! `vhu_blk.rs` (the `VhostUserBackend`) with `vhu_blk/queue.rs` (its data
//! path) and `worker.rs` (per-queue state),
//! `inflight.rs` (the `INFLIGHT_SHMFD` region), `intercept.rs` (its
//! messages), `chain.rs` (chain walks), `resume.rs` (resubmission after a
//! reconnect),
//! `abi.rs` (memfd syscalls), and this file ([`start_backend`]).

#![deny(clippy::print_stdout, clippy::print_stderr)]

mod abi;
#[forbid(unsafe_code)]
pub mod blk;
#[forbid(unsafe_code)]
pub mod chain;
pub mod cli;
#[forbid(unsafe_code)]
pub mod inflight;
#[forbid(unsafe_code)]
pub mod intercept;
pub mod io;
#[forbid(unsafe_code)]
mod resume;
pub mod vhu_blk;
#[forbid(unsafe_code)]
mod worker;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use log::{info, warn};
use splitvm_backends::daemon::{self, DaemonError, ServeConfig};
use splitvm_backends::listener::ListenOn;
use splitvm_backends::metrics::{self, MetricsError};
use splitvm_backends::sandbox::{self, SandboxError};

use crate::blk::{ConfigSpace, DiskInfo, ID_BYTES, SECTOR_SIZE};
use crate::io::EngineKind;
use crate::vhu_blk::{feature_names, Disk, VhostUserBlkBackend};

/// Discard / write-zeroes sectors per range advertised (1 GiB).
const MAX_RANGE_SECTORS: u32 = 1 << 21;
/// Discard / write-zeroes ranges per request advertised.
const MAX_RANGE_SEGS: u32 = 16;
/// `seg_max` advertised: data segments per request.
const SEG_MAX: u32 = 128;

/// Everything `splitvm-blk` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// vhost-user socket: a path, or an inherited listening fd.
    pub listen: ListenOn,
    /// Where to serve the I/O counters ([`splitvm_backends::metrics`]), if anywhere.
    pub metrics: Option<PathBuf>,
    /// `--sandbox`.
    pub sandbox: sandbox::Mode,
    /// Raw image: regular file or block device.
    pub image: PathBuf,
    /// Refuse writes and advertise `VIRTIO_BLK_F_RO`.
    pub readonly: bool,
    /// Open the image with `O_DIRECT`.
    pub direct: bool,
    /// Number of queues (one worker thread each).
    pub queues: u16,
    /// Largest queue size accepted.
    pub queue_size: u16,
    /// GET_ID answer, zero-padded.
    pub serial: [u8; ID_BYTES],
    /// I/O engine.
    pub engine: EngineKind,
}

/// Errors of `splitvm-blk`.
#[derive(Debug, thiserror::Error)]
pub enum BlkBackendError {
    /// The image could not be opened.
    #[error("cannot open image {path}: {source}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image's size could not be read.
    #[error("cannot size image {path}: {source}")]
    Size {
        /// Image path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The image is smaller than one sector.
    #[error("image {0} is smaller than 512 bytes")]
    TooSmall(PathBuf),
    /// The I/O engine could not be set up.
    #[error(transparent)]
    Io(#[from] io::IoError),
    /// The sandbox could not be entered.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The metrics socket could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The serve loop failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

fn open_image(cfg: &Config) -> Result<(File, u64), BlkBackendError> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(!cfg.readonly);
    if cfg.direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let mut file = opts
        .open(&cfg.image)
        .map_err(|source| BlkBackendError::Open {
            path: cfg.image.clone(),
            source,
        })?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|source| BlkBackendError::Size {
            path: cfg.image.clone(),
            source,
        })?;
    if size % SECTOR_SIZE != 0 {
        warn!(
            "image size {size} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not used",
            size % SECTOR_SIZE
        );
    }
    let capacity = size - size % SECTOR_SIZE;
    if capacity == 0 {
        return Err(BlkBackendError::TooSmall(cfg.image.clone()));
    }
    Ok((file, capacity))
}

/// Opens the image and serves frontends on `config.listen` until
/// SIGTERM/SIGINT, listening again after each disconnect.
pub fn start_backend(config: Config) -> Result<(), BlkBackendError> {
    let listener = daemon::listen(&config.listen)?;
    let metrics = metrics::bind(config.metrics.as_deref())?;
    let (file, capacity) = open_image(&config)?;
    let engine = io::probe(config.engine)?;
    info!(
        "image {} ({capacity} bytes{}{}), {} queue(s) of up to {}, I/O engine {}",
        config.image.display(),
        if config.readonly { ", read-only" } else { "" },
        if config.direct { ", O_DIRECT" } else { "" },
        config.queues,
        config.queue_size,
        engine.name()
    );
    let info = DiskInfo {
        capacity,
        readonly: config.readonly,
        max_range_sectors: MAX_RANGE_SECTORS,
        max_range_segs: MAX_RANGE_SEGS,
        serial: config.serial,
    };
    let space = ConfigSpace {
        capacity_sectors: capacity / SECTOR_SIZE,
        seg_max: SEG_MAX,
        blk_size: SECTOR_SIZE as u32,
        num_queues: config.queues,
        max_range_sectors: MAX_RANGE_SECTORS,
        max_range_segs: MAX_RANGE_SEGS,
    };
    let disk = Arc::new(Disk {
        file: Arc::new(file),
        info,
        engine,
        queues: config.queues,
        queue_size: config.queue_size,
        config: space.to_bytes(),
    });
    info!(
        "offering virtio features {}",
        feature_names(disk.features())
    );
    let serve = ServeConfig {
        name: "splitvm-blk".into(),
        listen: config.listen.clone(),
        reconnect: true,
    };
    sandbox::enter(config.sandbox, &sandbox_policy(&config))?;
    // Removes the metrics socket when this function returns.
    let _metrics = metrics::spawn(metrics)?;
    daemon::serve(&serve, listener, || {
        VhostUserBlkBackend::new(disk.clone()).map_err(std::io::Error::other)
    })?;
    Ok(())
}

/// What splitvm-blk keeps once sandboxed: the open image, the listener, its
/// io_uring rings; no file opens at all (the image is open already), no
/// network, only the socket's directory to remove the socket at exit.
pub fn sandbox_policy(config: &Config) -> sandbox::Policy {
    sandbox::Policy {
        name: "splitvm-blk",
        new_netns: true,
        read_paths: Vec::new(),
        rw_paths: Vec::new(),
        remove_dirs: sandbox::listen_dirs(&config.listen, config.metrics.as_deref()),
        max_files: 1024,
        syscalls: sandbox::SyscallSet {
            main: vec![
                libc::SYS_io_uring_setup,
                libc::SYS_io_uring_register,
                libc::SYS_fallocate,
            ],
            worker: vec![
                libc::SYS_io_uring_enter,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_fallocate,
            ],
            ioctl_types: Vec::new(),
            worker_ioctls: false,
        },
    }
}
