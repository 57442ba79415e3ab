//! `splitvm up vm.toml` and `splitvm down vm.toml`: the one-command
//! launcher. `config` reads the file into a plan, `supervisor` runs it.
//! `down` finds the running `up` through the lock and pid files in the
//! VM's run directory and sends it SIGTERM.

pub mod config;
pub mod supervisor;

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use config::UpConfigError;

/// `splitvm up` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// The VM description (see examples/vm.toml).
    pub config: PathBuf,
    /// Only check the file and print what would run.
    #[arg(long)]
    pub dry_run: bool,
}

/// `splitvm down` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DownArgs {
    /// The VM description `splitvm up` was given.
    #[arg(required_unless_present = "run_dir")]
    pub config: Option<PathBuf>,
    /// Or the VM's run directory.
    #[arg(long, conflicts_with = "config")]
    pub run_dir: Option<PathBuf>,
    /// Seconds to wait for the VM and its backends to stop.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Errors of `up` and `down`.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Config(#[from] UpConfigError),
    #[error("{dir}: {source}")]
    RunDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} is already up (pid {pid}); `splitvm down` stops it")]
    AlreadyUp { name: String, pid: String },
    #[error("cannot bind {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: cannot start {binary}: {source}")]
    Spawn {
        name: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: {binary} ended before it was ready ({status})")]
    DiedEarly {
        name: String,
        binary: PathBuf,
        status: ExitStatus,
    },
    #[error("{name}: not ready within {limit:?}")]
    NotReady { name: String, limit: Duration },
    #[error("signal {0} while starting")]
    Interrupted(i32),
    #[error("cannot watch signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error("no `splitvm up` runs in {0}")]
    NotUp(PathBuf),
    #[error("`splitvm up` (pid {pid}) did not stop within {limit:?}")]
    DownTimeout { pid: i32, limit: Duration },
    #[error("internal: backend list empty after a push")]
    Internal,
}

impl UpError {
    /// Bad input (the file), as opposed to a failure while running.
    pub fn is_user_input(&self) -> bool {
        matches!(self, UpError::Config(_))
    }
}

/// Runs `splitvm up`; returns the exit code.
pub fn up(args: &UpArgs) -> Result<u8, UpError> {
    let exe = std::env::current_exe().map_err(|source| UpError::RunDir {
        dir: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let plan = config::load(&args.config, &exe)?;
    if args.dry_run {
        log::info!("{plan:#?}");
        return Ok(0);
    }
    supervisor::run(&plan, &exe)
}

/// Runs `splitvm down`: SIGTERM to the VM's `up`, then waits until it has
/// torn everything down (its lock is released when it exits).
pub fn down(args: &DownArgs) -> Result<(), UpError> {
    let dir = match (&args.run_dir, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(f)) => config::locate(f)?,
        (None, None) => return Err(UpError::NotUp(PathBuf::new())),
    };
    let lock_path = dir.join(supervisor::LOCK_FILE);
    let Ok(lock) = File::open(&lock_path) else {
        return Err(UpError::NotUp(dir));
    };
    if lock.try_lock().is_ok() {
        return Err(UpError::NotUp(dir));
    }
    let pid = std::fs::read_to_string(dir.join(supervisor::PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| UpError::NotUp(dir.clone()))?;
    // SAFETY: kill(2) with integer arguments; the pid is the lock holder's.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let limit = Duration::from_secs(args.timeout);
    let end = Instant::now() + limit;
    loop {
        if lock.try_lock().is_ok() {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(UpError::DownTimeout { pid, limit });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
