//! `splitvm-net`: a vhost-user net device backend on a tap device.
//!
//! Files: `cli.rs` (arguments → [`Config`]), `net.rs` (headers, checks,
//! config space, control commands; no sockets and no `unsafe`), `tap.rs`
//! (the tap fds), `device.rs` (what connections share), `rx.rs` (the RX
//! path), `backend_req.rs` (the message hook: config-change
//! notification and QEMU 7.2's early `SET_VRING_ENABLE`),
//! `vhu_net.rs` (the `VhostUserBackend`), and this file ([`start_backend`]
//! and the link control).

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod backend_req;
pub mod cli;
pub mod device;
#[forbid(unsafe_code)]
pub mod net;
pub mod rx;
pub mod tap;
pub mod vhu_net;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;

use log::info;
use signal_hook::consts::{SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use splitvm_backends::daemon::{self, DaemonError, ServeConfig};
use splitvm_backends::listener::ListenOn;
use splitvm_backends::metrics::{self, MetricsError};
use splitvm_backends::sandbox::{self, SandboxError};

use crate::device::{feature_names, NetDevice};
use crate::net::Counters;
use crate::tap::{Tap, TapError};
use crate::vhu_net::VhostUserNetBackend;

/// Where the tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// Open (or create) the named tap, one fd per queue pair.
    Name(String),
    /// Fds already open, one per queue pair.
    Fds(Vec<RawFd>),
}

/// Everything `splitvm-net` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// vhost-user socket: a path, or an inherited listening fd.
    pub listen: ListenOn,
    /// Where to serve the I/O counters ([`splitvm_backends::metrics`]), if anywhere.
    pub metrics: Option<PathBuf>,
    /// `--sandbox`.
    pub sandbox: sandbox::Mode,
    /// The tap.
    pub tap: TapSource,
    /// MAC in the config space.
    pub mac: [u8; 6],
    /// Queue pairs.
    pub queues: u16,
    /// Largest queue size accepted.
    pub queue_size: u16,
    /// MTU offered (`VIRTIO_NET_F_MTU`).
    pub mtu: Option<u16>,
    /// Initial link state.
    pub link_up: bool,
}

/// Errors of `splitvm-net`.
#[derive(Debug, thiserror::Error)]
pub enum NetBackendError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The link-control signal handlers could not be installed.
    #[error("cannot install SIGUSR1/SIGUSR2 handlers: {0}")]
    Signals(#[source] std::io::Error),
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

fn open_taps(cfg: &Config) -> Result<Vec<Tap>, TapError> {
    match &cfg.tap {
        TapSource::Name(n) => Tap::open_named(n, usize::from(cfg.queues)),
        TapSource::Fds(fds) => fds.iter().map(|&fd| Tap::from_fd(fd)).collect(),
    }
}

/// Opens the tap and serves frontends on `config.listen` until
/// SIGTERM/SIGINT, listening again after each disconnect.
pub fn start_backend(config: Config) -> Result<(), NetBackendError> {
    let listener = daemon::listen(&config.listen)?;
    let metrics = metrics::bind(config.metrics.as_deref())?;
    let taps = open_taps(&config)?;
    let tap_offloads = taps.first().map_or(0, Tap::probe_offloads);
    let name = taps
        .first()
        .map(|t| t.name().to_string())
        .unwrap_or_default();
    let dev = Arc::new(NetDevice {
        taps,
        mac: config.mac,
        mtu: config.mtu,
        queue_size: config.queue_size,
        tap_offloads,
        link_up: AtomicBool::new(config.link_up),
        counters: Counters::default(),
        backend_req: Mutex::new(None),
    });
    info!(
        "tap {name}, {} queue pair(s) of up to {}, tap offloads {tap_offloads:#x}",
        config.queues, config.queue_size
    );
    info!("offering virtio features {}", feature_names(dev.features()));

    sandbox::enter(config.sandbox, &sandbox_policy(&config))?;
    // Removes the metrics socket when this function returns.
    let _metrics = metrics::spawn(metrics)?;
    let mut signals = Signals::new([SIGUSR1, SIGUSR2]).map_err(NetBackendError::Signals)?;
    let link_handle = signals.handle();
    let dev2 = dev.clone();
    thread::Builder::new()
        .name("link".into())
        .spawn(move || {
            for sig in signals.forever() {
                dev2.set_link(sig == SIGUSR2);
            }
        })
        .map_err(NetBackendError::Signals)?;

    let serve = ServeConfig {
        name: "splitvm-net".into(),
        listen: config.listen.clone(),
        reconnect: true,
    };
    let mut connections = 0u64;
    let result = daemon::serve(&serve, listener, || {
        if connections > 0 {
            info!("counters: {}", dev.counters);
        }
        connections += 1;
        *dev.backend_req
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Ok(VhostUserNetBackend::new(dev.clone()))
    });
    link_handle.close();
    info!("counters: {}", dev.counters);
    result?;
    Ok(())
}

/// What splitvm-net keeps once sandboxed: the tap fds (tun ioctls on them),
/// the listener; no file opens, a network namespace of its own (the tap
/// fds keep working: they belong to the host's), only the socket's
/// directory to remove the socket at exit.
pub fn sandbox_policy(config: &Config) -> sandbox::Policy {
    sandbox::Policy {
        name: "splitvm-net",
        new_netns: true,
        read_paths: Vec::new(),
        rw_paths: Vec::new(),
        remove_dirs: sandbox::listen_dirs(&config.listen, config.metrics.as_deref()),
        max_files: 1024,
        syscalls: sandbox::SyscallSet {
            main: Vec::new(),
            worker: Vec::new(),
            // 'T': TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNSETQUEUE, TUNGETIFF.
            ioctl_types: vec![b'T'],
            worker_ioctls: true,
        },
    }
}
