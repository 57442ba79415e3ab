//! The backend sandbox, entered after a backend has opened everything it
//! serves from (listener, image, tap, evdev device, event socket) and before
//! it starts any thread or serves a frontend. Layers, in order:
//!
//! 1. rlimits: no core dumps, a bounded number of open files;
//! 2. namespaces: new user, mount, ipc, uts (and network where the
//!    policy asks) namespaces;
//! 3. `no_new_privs`;
//! 4. Landlock: file access only beneath the policy's paths, no TCP;
//! 5. capabilities: bounding, ambient, effective, permitted and inheritable
//!    sets emptied;
//! 6. seccomp-BPF: a process-wide allowlist (every thread kind's union) and a
//!    tighter one each vring worker installs on its first event
//!    ([`enter_worker`]); any other syscall kills the process (`SIGSYS`,
//!    named on stderr first by [`splitvm_seccomp::sigsys`]). `openat` fails
//!    with `EACCES` ([`splitvm_seccomp::open_eacces`]) on every thread that
//!    has no file to open.
//!
//! A layer the kernel refuses is reported once (what and why) with `warn!`
//! and the others still apply; `--sandbox off` skips all of them with a
//! warning. Single-threaded callers only: a user namespace cannot be
//! entered by a process that has threads, and Landlock restricts only the
//! calling thread (and the threads it starts afterwards).

mod landlock;
mod namespaces;
mod privileges;
pub mod seccomp;

use std::path::PathBuf;
use std::sync::OnceLock;

use log::{info, warn};

pub use seccomp::{SyscallSet, ThreadKind};

/// `--sandbox on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Every layer the kernel supports (the default).
    #[default]
    On,
    /// No sandbox at all: for debugging only.
    Off,
}

/// Errors that stop a backend from starting: the layer the kernel supports
/// could not be set up (a refused layer is only reported, not an error).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A seccomp filter did not compile.
    #[error(transparent)]
    Filter(#[from] splitvm_seccomp::FilterError),
    /// `no_new_privs` could not be set.
    #[error("no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    /// Capabilities could not be dropped.
    #[error("dropping capabilities: {0}")]
    Caps(#[source] std::io::Error),
    /// A Landlock ruleset could not be built.
    #[error("landlock: {0}")]
    Landlock(String),
}

/// What one backend may do once sandboxed.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Backend name for the log (`splitvm-blk`, ...).
    pub name: &'static str,
    /// Enter a new network namespace (blk and input need no network; net
    /// keeps only its tap fds, which work from any namespace, but a new
    /// namespace would hide nothing it needs, so it is asked too).
    pub new_netns: bool,
    /// Files beneath these paths may be opened for reading.
    pub read_paths: Vec<PathBuf>,
    /// Files beneath these paths may be opened for reading and writing.
    pub rw_paths: Vec<PathBuf>,
    /// Entries in these directories may be removed (the sockets' own
    /// directories, so that the sockets are removed at exit).
    pub remove_dirs: Vec<PathBuf>,
    /// `RLIMIT_NOFILE`.
    pub max_files: u64,
    /// The syscalls of this backend's threads.
    pub syscalls: SyscallSet,
}

/// The worker filters, built by [`enter`] and installed by each vring
/// worker thread on its first event.
static WORKER_FILTERS: OnceLock<Vec<seccompiler::BpfProgram>> = OnceLock::new();

thread_local! {
    static WORKER_SANDBOXED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Enters the sandbox (or, with [`Mode::Off`], warns that it does not).
/// Must run before the process starts any thread.
pub fn enter(mode: Mode, policy: &Policy) -> Result<(), SandboxError> {
    if mode == Mode::Off {
        warn!("sandbox off (--sandbox off): no namespaces, Landlock, capability drop or seccomp; for debugging only");
        return Ok(());
    }
    privileges::set_rlimits(policy.max_files);
    namespaces::enter(policy.new_netns);
    privileges::no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    landlock::restrict(policy)?;
    privileges::drop_capabilities().map_err(SandboxError::Caps)?;
    #[cfg(feature = "sandbox-selftest")]
    selftest_open();
    let (process_wide, worker_filters) = filters(&policy.syscalls)?;
    let _ = WORKER_FILTERS.set(worker_filters);
    splitvm_seccomp::sigsys::install(policy.name)
        .map_err(|e| SandboxError::Seccomp(format!("SIGSYS handler: {e}")))?;
    for f in &process_wide {
        seccompiler::apply_filter(f).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    info!(
        "sandbox on: seccomp allows {} syscalls (main and other threads), {} on vring workers",
        policy.syscalls.count(ThreadKind::Main),
        policy.syscalls.count(ThreadKind::Worker)
    );
    Ok(())
}

/// The process-wide filters and, in the order a worker installs them, the
/// worker's. A backend whose main thread opens files after sandboxing
/// (input: evdev devices) keeps openat there, under Landlock; everywhere
/// else it fails with EACCES. The worker's allowlist comes last: it has no
/// `seccomp(2)`, so no filter can be added after it.
fn filters(
    set: &seccomp::SyscallSet,
) -> Result<(Vec<seccompiler::BpfProgram>, Vec<seccompiler::BpfProgram>), SandboxError> {
    let no_open = splitvm_seccomp::open_eacces()?;
    let worker = seccomp::build(set, ThreadKind::Worker)?;
    let main = seccomp::build(set, ThreadKind::Main)?;
    let clone3 = splitvm_seccomp::clone3_enosys()?;
    if set.main.contains(&libc::SYS_openat) {
        Ok((vec![main, clone3], vec![no_open, worker]))
    } else {
        Ok((vec![main, clone3, no_open], vec![worker]))
    }
}

/// Called by a vring worker thread on every event: the first call in a
/// thread installs the worker filter on top of the process-wide one.
pub fn enter_worker() {
    if WORKER_SANDBOXED.with(|c| c.replace(true)) {
        return;
    }
    for f in WORKER_FILTERS.get().into_iter().flatten() {
        if let Err(e) = seccompiler::apply_filter(f) {
            warn!("vring worker seccomp filter not installed: {e}; the process-wide one applies");
        }
    }
}

/// Test builds only (`sandbox-selftest`): prove the file layers by opening
/// `SPLITVM_SANDBOX_SELFTEST_OPEN` after sandboxing and logging the result.
#[cfg(feature = "sandbox-selftest")]
fn selftest_open() {
    if let Some(p) = std::env::var_os("SPLITVM_SANDBOX_SELFTEST_OPEN") {
        match std::fs::File::open(&p) {
            Ok(_) => warn!("sandbox selftest: open {} succeeded", p.to_string_lossy()),
            Err(e) => info!(
                "sandbox selftest: open {} refused: {e}",
                p.to_string_lossy()
            ),
        }
    }
}

/// Test builds only (`sandbox-selftest`): make a syscall the allowlists
/// forbid, `socket(AF_INET)` (only `AF_UNIX` is allowed); the filter kills
/// the process with `SIGSYS`. Unsandboxed it just opens and closes a socket.
#[cfg(feature = "sandbox-selftest")]
pub fn selftest_forbidden_syscall() {
    info!("sandbox selftest: calling socket(AF_INET)");
    // SAFETY: socket takes integers only; the fd, if any, is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: closing the fd just created, owned by nobody else.
        unsafe { libc::close(fd) };
    }
    warn!("sandbox selftest: socket(AF_INET) returned {fd}: not killed");
}

/// The directory of a socket path (`.` for a bare name), for
/// [`Policy::remove_dirs`].
pub fn socket_dir(path: &std::path::Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The directories of the sockets this process binds, to remove them at
/// exit: the vhost-user socket's (none for an inherited socket, which its
/// owner removes) and the metrics socket's.
pub fn listen_dirs(
    on: &crate::listener::ListenOn,
    metrics: Option<&std::path::Path>,
) -> Vec<PathBuf> {
    let mut dirs = match on {
        crate::listener::ListenOn::Path(p) => vec![socket_dir(p)],
        crate::listener::ListenOn::Fd(_) => Vec::new(),
    };
    if let Some(m) = metrics.map(socket_dir) {
        if !dirs.contains(&m) {
            dirs.push(m);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::listener::ListenOn;

    /// In a forked child (filters are for life): the process-wide filters,
    /// then the worker's in [`enter_worker`]'s order, all install (a worker
    /// allowlist installed before another filter killed input's evdev
    /// backend with SIGSYS), and `openat` then fails with EACCES.
    fn worker_survives_its_filters(main: Vec<i64>) {
        let set = seccomp::SyscallSet {
            main,
            worker: vec![libc::SYS_sendto],
            ioctl_types: vec![b'E'],
            worker_ioctls: false,
        };
        let (process_wide, worker) = filters(&set).unwrap();
        // SAFETY: the child makes raw syscalls only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: seccomp and open with valid arguments; _exit.
            unsafe {
                for f in process_wide.iter().chain(&worker) {
                    if seccompiler::apply_filter(f).is_err() {
                        libc::_exit(10);
                    }
                }
                let fd = libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY);
                let refused = fd < 0 && *libc::__errno_location() == libc::EACCES;
                libc::_exit(if refused { 0 } else { 12 });
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x} (signal {})",
            libc::WTERMSIG(status)
        );
    }

    #[test]
    fn worker_filters_install_in_order_and_refuse_opens() {
        worker_survives_its_filters(Vec::new());
        worker_survives_its_filters(vec![libc::SYS_openat]);
    }

    #[test]
    fn remove_dirs_cover_the_vhost_user_and_metrics_sockets() {
        let on = ListenOn::Path("/run/vm/blk0.sock".into());
        let same = Path::new("/run/vm/blk0.sock.metrics");
        assert_eq!(listen_dirs(&on, Some(same)), vec![PathBuf::from("/run/vm")]);
        let other = Path::new("/run/metrics/blk0");
        assert_eq!(
            listen_dirs(&on, Some(other)),
            vec![PathBuf::from("/run/vm"), PathBuf::from("/run/metrics")]
        );
        // Inherited: only the metrics socket's directory, if any.
        assert!(listen_dirs(&ListenOn::Fd(3), None).is_empty());
        assert_eq!(
            listen_dirs(&ListenOn::Fd(3), Some(other)),
            vec![PathBuf::from("/run/metrics")]
        );
    }
}
