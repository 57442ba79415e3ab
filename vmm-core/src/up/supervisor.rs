//! `splitvm up`'s supervisor. It owns every backend socket: it binds each
//! path itself and hands the listening socket to the backend as fd 3
//! (`--socket-fd 3`), so a backend that dies is replaced on the same socket
//! without a moment where the path is missing, and a frontend reconnecting
//! meanwhile waits in the socket's backlog. It waits for each backend's
//! `READY=1` (sd_notify, on a datagram socket per backend), starts the VMM
//! (`splitvm run` in a child process, in this process group so it keeps
//! the terminal), restarts dead backends with backoff, and on SIGTERM,
//! SIGINT or SIGHUP, or when the VMM ends, tears down in order: the VMM
//! first (SIGTERM: a graceful shutdown that lets the backends drain), then
//! the backends, then the files.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::config::{BackendPlan, Plan};
use super::UpError;
use crate::api::metrics::backend_metrics_path;

/// Restart backoff: first delay, cap, and the uptime after which a backend
/// counts as healthy again (the delay starts over).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long the VMM may take for its graceful shutdown, and a backend to
/// stop after SIGTERM, before SIGKILL.
const VMM_STOP_LIMIT: Duration = Duration::from_secs(20);
const BACKEND_STOP_LIMIT: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(50);

/// Files in the run directory.
pub const LOCK_FILE: &str = "up.lock";
pub const PID_FILE: &str = "up.pid";

struct Backend {
    plan: BackendPlan,
    listener: UnixListener,
    notify: UnixDatagram,
    notify_path: PathBuf,
    pid_path: PathBuf,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
}

/// Why the supervision loop ended.
enum Ended {
    Signal(i32),
    Vmm(ExitStatus),
}

/// Runs the plan until a signal or the VMM's end; returns the exit code
/// for `splitvm up` (the VMM's own when it ended by itself).
pub fn run(plan: &Plan, self_exe: &Path) -> Result<u8, UpError> {
    let dir = &plan.run_dir;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| UpError::RunDir {
            dir: dir.clone(),
            source,
        })?;
    check_own_dir(dir)?;
    let lock = take_lock(plan)?;
    let signals = watch_signals()?;
    let mut backends = Vec::new();
    let result = start_and_supervise(plan, self_exe, &signals, &mut backends);
    stop_backends(&mut backends);
    for b in &backends {
        // A backend that was killed leaves its metrics socket behind.
        let metrics = backend_metrics_path(&b.plan.socket);
        for f in [&b.plan.socket, &b.notify_path, &b.pid_path, &metrics]
            .into_iter()
            .chain(&b.plan.extra_files)
        {
            let _ = fs::remove_file(f);
        }
    }
    drop(backends);
    for f in ["vmm.pid", PID_FILE, LOCK_FILE] {
        let _ = fs::remove_file(dir.join(f));
    }
    let _ = fs::remove_file(&plan.api_socket);
    // Only if empty: never remove what someone else put there.
    let _ = fs::remove_dir(dir);
    // Last: `splitvm down` returns when the lock is free.
    drop(lock);
    result
}

/// The run directory may sit in a shared /tmp: use it only if it is a real
/// directory of this user that nobody else may write.
fn check_own_dir(dir: &Path) -> Result<(), UpError> {
    use std::os::unix::fs::MetadataExt;
    let bad = |why: &str| UpError::RunDir {
        dir: dir.to_path_buf(),
        source: io::Error::new(io::ErrorKind::PermissionDenied, why.to_string()),
    };
    let m = fs::symlink_metadata(dir).map_err(|source| UpError::RunDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    // SAFETY: geteuid takes no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me {
        return Err(bad("not a directory of this user"));
    }
    if m.mode() & 0o022 != 0 {
        return Err(bad("writable by others"));
    }
    Ok(())
}

fn take_lock(plan: &Plan) -> Result<File, UpError> {
    let path = plan.run_dir.join(LOCK_FILE);
    let io_err = |source| UpError::RunDir {
        dir: path.clone(),
        source,
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err)?;
    if lock.try_lock().is_err() {
        let pid = fs::read_to_string(plan.run_dir.join(PID_FILE)).unwrap_or_default();
        return Err(UpError::AlreadyUp {
            name: plan.name.clone(),
            pid: pid.trim().to_string(),
        });
    }
    fs::write(
        plan.run_dir.join(PID_FILE),
        format!("{}\n", std::process::id()),
    )
    .map_err(io_err)?;
    Ok(lock)
}

fn watch_signals() -> Result<mpsc::Receiver<i32>, UpError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(UpError::Signals)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })
        .map_err(UpError::Signals)?;
    Ok(rx)
}

fn start_and_supervise(
    plan: &Plan,
    self_exe: &Path,
    signals: &mpsc::Receiver<i32>,
    backends: &mut Vec<Backend>,
) -> Result<u8, UpError> {
    for p in &plan.backends {
        let mut b = bind(plan, p)?;
        b.child = Some(spawn_backend(&b)?);
        b.started = Instant::now();
        // Appended first, so a failure below still stops this one.
        backends.push(b);
        let b = backends.last_mut().ok_or(UpError::Internal)?;
        wait_ready(b, plan.ready_timeout, signals)?;
    }
    let _ = fs::remove_file(&plan.api_socket);
    let mut vmm = Command::new(self_exe);
    vmm.arg("run").args(&plan.vmm_args);
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe { vmm.pre_exec(die_with_parent) };
    let mut vmm = vmm.spawn().map_err(|source| UpError::Spawn {
        name: "vmm".into(),
        binary: self_exe.to_path_buf(),
        source,
    })?;
    let _ = fs::write(plan.run_dir.join("vmm.pid"), format!("{}\n", vmm.id()));
    info!(
        "{}: VMM pid {}, API {}",
        plan.name,
        vmm.id(),
        plan.api_socket.display()
    );

    let ended = supervise(&mut vmm, backends, signals);
    match ended {
        Ended::Signal(sig) => {
            info!("signal {sig}: stopping the VM, then its backends");
            let st = stop_child(&mut vmm, VMM_STOP_LIMIT, "the VMM");
            info!("VMM ended: {st}");
            Ok(0)
        }
        Ended::Vmm(st) => {
            info!("VMM ended: {st}; stopping the backends");
            Ok(st.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
        }
    }
}

fn supervise(vmm: &mut Child, backends: &mut [Backend], signals: &mpsc::Receiver<i32>) -> Ended {
    loop {
        match signals.recv_timeout(TICK) {
            Ok(sig) => return Ended::Signal(sig),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The signal thread is gone: behave as if asked to stop.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ended::Signal(0),
        }
        if let Ok(Some(st)) = vmm.try_wait() {
            return Ended::Vmm(st);
        }
        for b in backends.iter_mut() {
            tend(b);
        }
    }
}

/// Notices a dead backend, schedules its restart, and restarts it when due.
fn tend(b: &mut Backend) {
    let mut buf = [0u8; 256];
    // READY messages of restarted backends: nobody waits for them (the
    // socket is non-blocking once the first backend was ready).
    while b.notify.recv(&mut buf).is_ok() {}
    if let Some(c) = b.child.as_mut() {
        let Ok(Some(st)) = c.try_wait() else { return };
        if b.started.elapsed() >= HEALTHY_AFTER {
            b.backoff = BACKOFF_FIRST;
        }
        warn!(
            "{}: {} (pid {}) ended: {st}; restarting in {:?}",
            b.plan.name,
            b.plan.binary.display(),
            c.id(),
            b.backoff
        );
        b.child = None;
        b.restart_at = Some(Instant::now() + b.backoff);
        b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
        return;
    }
    if b.restart_at.is_some_and(|t| Instant::now() >= t) {
        b.restart_at = None;
        match spawn_backend(b) {
            Ok(c) => {
                info!("{}: restarted as pid {}", b.plan.name, c.id());
                b.child = Some(c);
                b.started = Instant::now();
            }
            Err(e) => {
                warn!("{e}; retrying in {:?}", b.backoff);
                b.restart_at = Some(Instant::now() + b.backoff);
                b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Binds the backend's socket (replacing a stale one: the lock says no
/// other `up` of this VM runs) and its notify socket.
fn bind(plan: &Plan, p: &BackendPlan) -> Result<Backend, UpError> {
    let sock_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpError::Socket { path, source }
    };
    let _ = fs::remove_file(&p.socket);
    let listener = UnixListener::bind(&p.socket).map_err(sock_err(&p.socket))?;
    let notify_path = plan.run_dir.join(format!("{}.notify", p.name));
    let _ = fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).map_err(sock_err(&notify_path))?;
    notify
        .set_read_timeout(Some(TICK))
        .map_err(sock_err(&notify_path))?;
    Ok(Backend {
        plan: p.clone(),
        listener,
        notify,
        notify_path,
        pid_path: plan.run_dir.join(format!("{}.pid", p.name)),
        child: None,
        started: Instant::now(),
        backoff: BACKOFF_FIRST,
        restart_at: None,
    })
}

fn spawn_backend(b: &Backend) -> Result<Child, UpError> {
    let mut cmd = Command::new(&b.plan.binary);
    cmd.args(&b.plan.args)
        .args(["--socket-fd", "3"])
        // An inherited socket gets no metrics socket unless named; the
        // VMM looks for it next to the vhost-user socket.
        .arg("--metrics-socket")
        .arg(backend_metrics_path(&b.plan.socket))
        .env("NOTIFY_SOCKET", &b.notify_path)
        .env("SPLITVM_DEVICE", &b.plan.name)
        .stdin(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches `up`, which
        // stops the VMM before the backends.
        .process_group(0);
    let fd = b.listener.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe calls (fcntl, dup2, prctl) on fds it names.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the copy; an fd already at 3
            // needs it cleared by hand.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            die_with_parent()
        })
    };
    let child = cmd.spawn().map_err(|source| UpError::Spawn {
        name: b.plan.name.clone(),
        binary: b.plan.binary.clone(),
        source,
    })?;
    let _ = fs::write(&b.pid_path, format!("{}\n", child.id()));
    Ok(child)
}

/// If `up` itself dies (SIGKILL), its children get SIGTERM instead of
/// living on. Runs in the child before exec.
fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits for the backend's `READY=1`; fails if it exits first, if the
/// deadline passes, or if a signal asks `up` to stop.
fn wait_ready(
    b: &mut Backend,
    limit: Duration,
    signals: &mpsc::Receiver<i32>,
) -> Result<(), UpError> {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 256];
    loop {
        if let Ok(n) = b.notify.recv(&mut buf) {
            if buf[..n].split(|&c| c == b'\n').any(|l| l == b"READY=1") {
                // From now on `tend` only drains it, without waiting.
                if let Err(e) = b.notify.set_nonblocking(true) {
                    warn!("{}: notify socket: {e}", b.plan.name);
                }
                info!(
                    "{}: {} ready on {}",
                    b.plan.name,
                    b.plan.binary.display(),
                    b.plan.socket.display()
                );
                return Ok(());
            }
        }
        if let Some(c) = b.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                b.child = None;
                return Err(UpError::DiedEarly {
                    name: b.plan.name.clone(),
                    binary: b.plan.binary.clone(),
                    status: st,
                });
            }
        }
        if let Ok(sig) = signals.try_recv() {
            return Err(UpError::Interrupted(sig));
        }
        if Instant::now() >= end {
            return Err(UpError::NotReady {
                name: b.plan.name.clone(),
                limit,
            });
        }
    }
}

/// SIGTERM, then SIGKILL after `limit`; reaps the child.
fn stop_child(c: &mut Child, limit: Duration, what: &str) -> String {
    if let Ok(Some(st)) = c.try_wait() {
        return st.to_string();
    }
    if let Ok(pid) = i32::try_from(c.id()) {
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(Some(st)) = c.try_wait() {
            return st.to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    warn!(
        "{what} (pid {}) ignored SIGTERM for {limit:?}: killing it",
        c.id()
    );
    let _ = c.kill();
    c.wait().map_or_else(|e| e.to_string(), |st| st.to_string())
}

fn stop_backends(backends: &mut [Backend]) {
    // SIGTERM all first so they stop in parallel, then reap each.
    for b in backends.iter() {
        if let Some(pid) = b.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            // SAFETY: kill(2) on our own child, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    for b in backends.iter_mut() {
        if let Some(mut c) = b.child.take() {
            let st = stop_child(&mut c, BACKEND_STOP_LIMIT, &b.plan.name);
            info!("{}: backend ended: {st}", b.plan.name);
        }
    }
}
