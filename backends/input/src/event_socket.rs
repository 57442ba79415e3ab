//! The event socket of the profile mode: a unix stream socket where any
//! number of clients write newline-delimited JSON (see [`crate::json`]).
//! Accepted lines become events in the [`EventHub`]; a refused line gets
//! `{"error":"...","line":N}` on the same connection, which stays open.
//! Status events from the guest (LEDs) are written to every client as JSON
//! lines. Threads: `event-socket` (accept) and one `event-client` per client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use log::{debug, info, warn};
use serde_json::json;

use crate::hub::{EventHub, StatusSink};
use crate::input::InputEvent;
use crate::json::{self, Command, TouchState};

/// Longest accepted line.
pub const MAX_LINE: usize = 64 << 10;
/// A client that does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of the event socket.
#[derive(Debug, thiserror::Error)]
pub enum EventSocketError {
    /// Something other than a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The accept thread could not be started.
    #[error("cannot start the event socket thread: {0}")]
    Thread(#[source] io::Error),
}

struct Client {
    id: u64,
    out: Mutex<UnixStream>,
}

impl Client {
    fn send(&self, line: &str) -> io::Result<()> {
        let mut s = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        s.write_all(format!("{line}\n").as_bytes())
    }
}

/// An event socket bound but not accepting yet.
pub struct BoundEventSocket {
    me: Arc<EventSocket>,
    listener: UnixListener,
}

impl BoundEventSocket {
    /// Starts the accepting thread.
    pub fn start(self) -> Result<Arc<EventSocket>, EventSocketError> {
        let acceptor = self.me.clone();
        let listener = self.listener;
        thread::Builder::new()
            .name("event-socket".into())
            .spawn(move || acceptor.accept_loop(&listener))
            .map_err(EventSocketError::Thread)?;
        info!("event socket listening on {}", self.me.path.display());
        Ok(self.me)
    }
}

/// The listening event socket.
pub struct EventSocket {
    path: PathBuf,
    hub: Arc<EventHub>,
    clients: Mutex<Vec<Arc<Client>>>,
    touch: Mutex<TouchState>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventSocket {
    /// Binds `path` (replacing a stale socket) and starts accepting.
    pub fn start(path: &Path, hub: Arc<EventHub>) -> Result<Arc<Self>, EventSocketError> {
        Self::bind(path, hub)?.start()
    }

    /// Binds `path` (replacing a stale socket); [`BoundEventSocket::start`]
    /// starts accepting (after the backend entered its sandbox).
    pub fn bind(path: &Path, hub: Arc<EventHub>) -> Result<BoundEventSocket, EventSocketError> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                return Err(EventSocketError::NotASocket(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| EventSocketError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let me = Arc::new(EventSocket {
            path: path.to_path_buf(),
            hub,
            clients: Mutex::new(Vec::new()),
            touch: Mutex::new(TouchState::default()),
            next_id: AtomicU64::new(1),
        });
        Ok(BoundEventSocket { me, listener })
    }

    fn accept_loop(self: Arc<Self>, listener: &UnixListener) {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    warn!("event socket accept: {e}");
                    continue;
                }
            };
            if let Err(e) = self.add_client(stream) {
                warn!("event socket client: {e}");
            }
        }
    }

    fn add_client(self: &Arc<Self>, stream: UnixStream) -> io::Result<()> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client {
            id,
            out: Mutex::new(stream.try_clone()?),
        });
        lock(&self.clients).push(client.clone());
        debug!("event client {id} connected");
        let me = self.clone();
        thread::Builder::new()
            .name("event-client".into())
            .spawn(move || {
                me.serve_client(stream, &client);
                lock(&me.clients).retain(|c| c.id != id);
                debug!("event client {id} left");
            })?;
        Ok(())
    }

    fn serve_client(&self, stream: UnixStream, client: &Client) {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        let mut n = 0u64;
        loop {
            buf.clear();
            let got = match r
                .by_ref()
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) => return,
                Ok(g) => g,
                Err(e) => {
                    debug!("event client {}: {e}", client.id);
                    return;
                }
            };
            n += 1;
            let reply = if got > MAX_LINE && buf.last() != Some(&b'\n') {
                // Skip the rest of the over-long line.
                if r.skip_until(b'\n').is_err() {
                    return;
                }
                Some(json::error_line(
                    &format!("line longer than {MAX_LINE} bytes"),
                    n,
                ))
            } else {
                self.handle_line(&buf, n)
            };
            if let Some(line) = reply {
                if let Err(e) = client.send(&line) {
                    debug!("event client {}: reply: {e}", client.id);
                    return;
                }
            }
        }
    }

    /// Handles one line; returns the reply, if any.
    fn handle_line(&self, raw: &[u8], n: u64) -> Option<String> {
        let Ok(text) = std::str::from_utf8(raw) else {
            return Some(json::error_line("line is not UTF-8", n));
        };
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let parsed = self.hub.with_capabilities(|caps| {
            let mut touch = lock(&self.touch);
            json::parse_line(text, caps, &mut touch)
        });
        match parsed {
            Ok(Command::Events(ev)) => {
                let dropped = self.hub.push(&ev);
                if dropped > 0 {
                    let s = self.hub.stats();
                    debug!(
                        "queue full: dropped {dropped} report(s), {} in all",
                        s.dropped_reports
                    );
                }
                None
            }
            Ok(Command::Ping(v)) => Some(json!({ "pong": v }).to_string()),
            Ok(Command::Stats) => {
                let s = self.hub.stats();
                Some(
                    json!({
                        "queued": s.queued,
                        "dropped_reports": s.dropped_reports,
                        "dropped_events": s.dropped_events,
                    })
                    .to_string(),
                )
            }
            Err(e) => Some(json::error_line(&e, n)),
        }
    }

    /// Removes the socket file (at shutdown; the accept thread ends with the process).
    pub fn remove_file(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Clients connected now.
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }
}

impl StatusSink for EventSocket {
    fn status(&self, ev: InputEvent) {
        let line = json::status_line(ev);
        let clients: Vec<Arc<Client>> = lock(&self.clients).clone();
        if clients.is_empty() {
            debug!("status event {line} with no event-socket client: dropped");
        }
        for c in clients {
            if let Err(e) = c.send(&line) {
                debug!("event client {}: status event: {e}", c.id);
            }
        }
    }
}
