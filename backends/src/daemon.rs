//! The one serve loop of every backend: bind the socket (replacing a stale
//! one) or take an inherited one (see [`crate::listener`]), serve one frontend with a [`VhostUserDaemon`], and after it goes
//! away listen again. SIGTERM or SIGINT ends the loop cleanly: the current
//! connection is shut down, the vring workers are told to exit through their
//! exit events and joined, the socket file is removed (unless it was
//! inherited: its owner removes it) and [`serve`] returns `Ok(())`.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{
    ShutdownHandle, VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock,
};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::abi;
use crate::listener::{self, ListenError, ListenOn};
use crate::proxy::{Intercept, Proxy};

/// Errors of the serve loop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket could not be bound or taken over.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Signal handlers could not be installed.
    #[error("cannot install SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] io::Error),
    /// Creating or waiting on the stop/accept poll set failed.
    #[error("waiting for a frontend failed: {0}")]
    Poll(#[source] io::Error),
    /// The device could not build its per-connection backend.
    #[error("cannot set up the device for a new frontend: {0}")]
    Device(#[source] io::Error),
    /// The vhost-user daemon failed outside a normal disconnect.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// The message proxy in front of the daemon could not be set up.
    #[error("cannot set up the vhost-user message proxy: {0}")]
    Proxy(#[source] io::Error),
}

/// A device served by [`serve`]: a [`VhostUserBackend`] with the types the
/// daemon needs, plus a hook to register its own fds with the vring workers.
pub trait Device:
    VhostUserBackend<Bitmap = (), Vring = VringRwLock<GuestMemoryAtomic<GuestMemoryMmap>>>
    + Clone
    + 'static
{
    /// Called once per connection after the workers exist and before the
    /// frontend is accepted: register extra fds (completion eventfds, taps)
    /// with `VringEpollHandler::register_listener`. `handlers[i]` serves
    /// worker thread `i`.
    fn attach(&self, _handlers: &[Arc<VringEpollHandler<Self>>]) -> io::Result<()> {
        Ok(())
    }

    /// A hook on the frontend's messages for requests the
    /// `vhost-user-backend` crate does not implement. `Some` puts a
    /// [`Proxy`] between the frontend and the daemon for this connection;
    /// `None` (the default) connects the frontend to the daemon directly.
    fn intercept(&self) -> Option<Arc<dyn Intercept>> {
        None
    }
}

/// What [`serve`] needs to know.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Thread and log name of the daemon (`splitvm-blk`, ...).
    pub name: String,
    /// Socket to listen on: a path, or an inherited fd.
    pub listen: ListenOn,
    /// Listen again after a frontend disconnects (the default); `false`
    /// serves one frontend and returns.
    pub reconnect: bool,
}

/// Stop request shared by the signal thread and the serve loop.
struct Stop {
    requested: AtomicBool,
    event: EventFd,
    conn: Mutex<Option<ShutdownHandle>>,
}

impl Stop {
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.event.write(1);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = conn.as_ref() {
            h.shutdown();
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn set_conn(&self, h: Option<ShutdownHandle>) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = h;
        // A signal that arrived between accept and here found no handle.
        if self.requested() {
            self.request();
        }
    }
}

const EV_STOP: u64 = 0;
const EV_ACCEPT: u64 = 1;

/// Serves frontends on `cfg.listen` until SIGTERM/SIGINT (or, without
/// `reconnect`, until the first frontend leaves). `make` builds a fresh
/// device for every connection (the device may share state across them,
/// such as an open image).
pub fn serve<T, F>(cfg: &ServeConfig, mut make: F) -> Result<(), DaemonError>
where
    T: Device,
    F: FnMut() -> io::Result<T>,
{
    let stop = Arc::new(Stop {
        requested: AtomicBool::new(false),
        event: EventFd::new(EFD_NONBLOCK).map_err(DaemonError::Poll)?,
        conn: Mutex::new(None),
    });
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;
    let signals_handle = signals.handle();
    let stop2 = stop.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig}: stopping");
                stop2.request();
            }
        })
        .map_err(DaemonError::Signals)?;

    let result = serve_loop(cfg, &stop, &mut make);
    signals_handle.close();
    result
}

fn serve_loop<T, F>(cfg: &ServeConfig, stop: &Stop, make: &mut F) -> Result<(), DaemonError>
where
    T: Device,
    F: FnMut() -> io::Result<T>,
{
    // Dropping the listener removes the socket file if this process bound it.
    let bound = listener::open(&cfg.listen)?;
    let mut listener = bound.listener;
    let shown = match (&bound.path, &cfg.listen) {
        (Some(p), _) => p.display().to_string(),
        (None, ListenOn::Fd(fd)) => format!("inherited fd {fd}"),
        (None, ListenOn::Path(p)) => p.display().to_string(),
    };
    let epoll = Epoll::new().map_err(DaemonError::Poll)?;
    epoll
        .ctl(
            ControlOperation::Add,
            stop.event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EV_STOP),
        )
        .map_err(DaemonError::Poll)?;
    epoll
        .ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EV_ACCEPT),
        )
        .map_err(DaemonError::Poll)?;
    if bound.inherited {
        info!("listening on {shown} (inherited socket)");
    } else {
        info!("listening on {shown}");
    }
    if let Err(e) = listener::notify_ready() {
        warn!("cannot notify NOTIFY_SOCKET: {e}");
    }
    let private_base = private_socket_base(&cfg.name, bound.inherited, bound.path.as_deref());

    loop {
        if !wait_for_frontend(&epoll, stop)? {
            info!("stopped");
            return Ok(());
        }
        let device = make().map_err(DaemonError::Device)?;
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(cfg.name.clone(), device.clone(), mem)
            .map_err(|e| DaemonError::Daemon(e.to_string()))?;
        device
            .attach(&daemon.get_epoll_handlers())
            .map_err(DaemonError::Device)?;
        let proxy = match device.intercept() {
            None => {
                daemon
                    .start(&mut listener)
                    .map_err(|e| DaemonError::Daemon(e.to_string()))?;
                None
            }
            Some(hook) => Some(start_proxied(&private_base, &listener, &mut daemon, hook)?),
        };
        info!("frontend connected");
        stop.set_conn(daemon.shutdown_handle());
        let ended = daemon.wait();
        stop.set_conn(None);
        match ended {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => info!("frontend disconnected"),
            Err(e) => warn!("frontend disconnected: {e}"),
        }
        // Dropping the daemon signals every worker's exit event and joins them.
        drop(daemon);
        if let Some(p) = proxy {
            p.join();
        }
        if stop.requested() {
            info!("stopped");
            return Ok(());
        }
        if !cfg.reconnect {
            return Ok(());
        }
    }
}

/// Blocks until a frontend is waiting to be accepted (`true`) or a stop
/// was requested (`false`).
fn wait_for_frontend(epoll: &Epoll, stop: &Stop) -> Result<bool, DaemonError> {
    let mut events = [EpollEvent::default(); 2];
    loop {
        if stop.requested() {
            return Ok(false);
        }
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DaemonError::Poll(e)),
        };
        if events[..n].iter().any(|e| e.data() == EV_STOP) || stop.requested() {
            return Ok(false);
        }
        if events[..n].iter().any(|e| e.data() == EV_ACCEPT) {
            return Ok(true);
        }
    }
}

/// Accepts the frontend on `listener` itself, lets the daemon connect to a
/// private socket next to it, and relays between the two through a
/// [`Proxy`]. The private socket is removed as soon as the daemon is
/// connected; a connection from any other process is refused.
fn start_proxied<T: Device>(
    base: &Path,
    listener: &Listener,
    daemon: &mut VhostUserDaemon<T>,
    hook: Arc<dyn Intercept>,
) -> Result<Proxy, DaemonError> {
    let frontend = loop {
        match listener.accept() {
            Ok(Some(s)) => break s,
            Ok(None) => continue,
            Err(e) => return Err(DaemonError::Daemon(format!("accept: {e}"))),
        }
    };
    let inner_path = inner_socket_path(base);
    let _ = fs::remove_file(&inner_path);
    let inner_listener = UnixListener::bind(&inner_path).map_err(DaemonError::Proxy)?;
    let connected = match inner_path.to_str() {
        Some(p) => daemon
            .start_client(p)
            .map_err(|e| DaemonError::Daemon(e.to_string()))
            .and_then(|()| accept_own(&inner_listener).map_err(DaemonError::Proxy)),
        None => Err(DaemonError::Proxy(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path is not UTF-8",
        ))),
    };
    let _ = fs::remove_file(&inner_path);
    Proxy::start(frontend, connected?, hook).map_err(DaemonError::Proxy)
}

/// Where the proxy's private socket goes: next to the socket, except for
/// an inherited socket under systemd, whose directory the service may not
/// write: there `$RUNTIME_DIRECTORY` (the unit's `RuntimeDirectory=`).
fn private_socket_base(name: &str, inherited: bool, path: Option<&Path>) -> PathBuf {
    let in_runtime_dir = std::env::var_os("RUNTIME_DIRECTORY")
        .filter(|_| inherited)
        .map(|d| PathBuf::from(d).join(format!("{name}.sock")));
    in_runtime_dir
        .or_else(|| path.map(Path::to_path_buf))
        .unwrap_or_else(|| std::env::temp_dir().join(format!("{name}.sock")))
}

/// `<socket>.<pid>.fwd`: the daemon's side of the proxy.
fn inner_socket_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(format!(".{}.fwd", std::process::id()));
    PathBuf::from(s)
}

/// Accepts the connection this process made, dropping any other.
fn accept_own(listener: &UnixListener) -> io::Result<UnixStream> {
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    loop {
        let (s, _) = listener.accept()?;
        match abi::peer_pid(&s) {
            Ok(pid) if pid == me => return Ok(s),
            Ok(pid) => warn!("refused a connection from pid {pid} on the private socket"),
            Err(e) => warn!("refused a connection on the private socket: {e}"),
        }
    }
}
