//! `splitvm-input`: a vhost-user virtio-input backend. It passes a host
//! evdev device through (identity and capabilities in the config space,
//! events forwarded, LEDs written back, optional exclusive grab, survives
//! the device being unplugged and plugged again), or serves a synthetic
//! keyboard, mouse, tablet or touch screen fed from a unix socket of
//! newline-delimited JSON.
//!
//! Files: `cli.rs` (arguments → [`Config`]), `input.rs` (config space and
//! event queue, no sockets and no `unsafe`), `codes.rs` (event names),
//! `profiles.rs`, `json.rs` (the socket's line protocol), `hub.rs` (sources
//! meet the vring worker), `evdev.rs` (host device), `event_socket.rs`,
//! `vhu_input.rs` (the `VhostUserBackend`), `send.rs` (the `send` client),
//! and this file ([`start_backend`]).

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod cli;
#[forbid(unsafe_code)]
pub mod codes;
pub mod evdev;
pub mod event_socket;
#[forbid(unsafe_code)]
pub mod hub;
#[forbid(unsafe_code)]
pub mod input;
#[forbid(unsafe_code)]
pub mod json;
#[forbid(unsafe_code)]
pub mod profiles;
#[forbid(unsafe_code)]
pub mod send;
#[forbid(unsafe_code)]
pub mod vhu_input;

use std::path::PathBuf;
use std::sync::Arc;

use log::info;
use splitvm_backends::daemon::{self, DaemonError, ServeConfig};
use splitvm_backends::listener::ListenOn;
use splitvm_backends::metrics::{self, MetricsError};
use splitvm_backends::sandbox::{self, SandboxError};

use crate::evdev::{EvdevError, EvdevSource};
use crate::event_socket::{EventSocket, EventSocketError};
use crate::hub::EventHub;
use crate::profiles::Profile;
use crate::vhu_input::VhostUserInputBackend;

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A host evdev device.
    Evdev {
        /// `/dev/input/eventN`.
        path: PathBuf,
        /// Take exclusive use of it.
        grab: bool,
    },
    /// A synthetic device fed from a JSON event socket.
    Profile {
        /// Which device.
        profile: Profile,
        /// The socket clients write events to.
        event_socket: PathBuf,
        /// Name override.
        name: Option<String>,
    },
}

/// Everything `splitvm-input` needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// vhost-user socket: a path, or an inherited listening fd.
    pub listen: ListenOn,
    /// Where to serve the I/O counters ([`splitvm_backends::metrics`]), if anywhere.
    pub metrics: Option<PathBuf>,
    /// `--sandbox`.
    pub sandbox: sandbox::Mode,
    /// Event source.
    pub source: Source,
    /// Queue bound (events) while the guest has no buffers.
    pub max_queued_events: usize,
}

/// Errors of `splitvm-input`.
#[derive(Debug, thiserror::Error)]
pub enum InputBackendError {
    /// The evdev device could not be used.
    #[error(transparent)]
    Evdev(#[from] EvdevError),
    /// The event socket could not be set up.
    #[error(transparent)]
    EventSocket(#[from] EventSocketError),
    /// The hub's eventfd could not be created.
    #[error("cannot create the event hub: {0}")]
    Hub(#[source] std::io::Error),
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

/// Opens the event source and serves frontends on `config.listen`
/// until SIGTERM/SIGINT, listening again after each disconnect.
pub fn start_backend(config: Config) -> Result<(), InputBackendError> {
    let listener = daemon::listen(&config.listen)?;
    let metrics = metrics::bind(config.metrics.as_deref())?;
    let policy = sandbox_policy(&config);
    let mut socket = None;
    let hub = match &config.source {
        Source::Evdev { path, grab } => {
            let (src, caps) = EvdevSource::open(path, *grab)?;
            info!(
                "evdev {}: {:?} ({} event types{})",
                path.display(),
                caps.name,
                caps.ev_bits.len(),
                if *grab { ", grabbed" } else { "" }
            );
            let hub = Arc::new(
                EventHub::new(caps, config.max_queued_events).map_err(InputBackendError::Hub)?,
            );
            hub.set_sink(src.clone());
            sandbox::enter(config.sandbox, &policy)?;
            src.start(hub.clone())?;
            hub
        }
        Source::Profile {
            profile,
            event_socket,
            name,
        } => {
            let caps = profile.capabilities(name.as_deref());
            info!("profile {}: {:?}", profile.name(), caps.name);
            let hub = Arc::new(
                EventHub::new(caps, config.max_queued_events).map_err(InputBackendError::Hub)?,
            );
            let bound = EventSocket::bind(event_socket, hub.clone())?;
            sandbox::enter(config.sandbox, &policy)?;
            let s = bound.start()?;
            hub.set_sink(s.clone());
            socket = Some(s);
            hub
        }
    };
    // Removes the metrics socket when this function returns.
    let _metrics = metrics::spawn(metrics)?;
    let serve = ServeConfig {
        name: "splitvm-input".into(),
        listen: config.listen.clone(),
        reconnect: true,
    };
    let result = daemon::serve(&serve, listener, || {
        Ok(VhostUserInputBackend::new(hub.clone()))
    });
    if let Some(s) = socket {
        s.remove_file();
    }
    result?;
    Ok(())
}

/// What splitvm-input keeps once sandboxed: the evdev fd (evdev ioctls) or
/// the event socket, the listener; reading and writing files only in the
/// evdev device's directory (to open the device again after it is
/// unplugged and plugged back: a new inode), no network, only the sockets'
/// directories to remove them at exit.
pub fn sandbox_policy(config: &Config) -> sandbox::Policy {
    let mut rw_paths = Vec::new();
    let mut remove_dirs = sandbox::listen_dirs(&config.listen, config.metrics.as_deref());
    let mut main = Vec::new();
    match &config.source {
        Source::Evdev { path, .. } => {
            rw_paths.push(sandbox::socket_dir(path));
            main.push(libc::SYS_openat);
        }
        Source::Profile { event_socket, .. } => {
            remove_dirs.push(sandbox::socket_dir(event_socket));
        }
    }
    sandbox::Policy {
        name: "splitvm-input",
        new_netns: true,
        read_paths: Vec::new(),
        rw_paths,
        remove_dirs,
        max_files: 1024,
        syscalls: sandbox::SyscallSet {
            main,
            // LEDs from the status queue go to event-socket clients.
            worker: vec![libc::SYS_sendto],
            // 'E': EVIOCG* (identity, capabilities), EVIOCGRAB.
            ioctl_types: vec![b'E'],
            worker_ioctls: false,
        },
    }
}
