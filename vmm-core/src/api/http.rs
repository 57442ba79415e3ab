//! The API server: HTTP/1.1 on a unix socket, one request per connection,
//! no async runtime. The `api` thread accepts; each connection is served on
//! its own `api-conn` thread, at most `Limits::max_connections` at once
//! (`slots.rs`; more are answered 503 at once), so neither a slow client
//! nor a slow VMM operation (a swap waiting for a backend) stops the others.
//!
//! Anyone who can open the socket can send anything, so every size is
//! bounded ([`Limits`]): the request head, the number of headers, the body.
//! A request must arrive whole within `Limits::request_timeout`, so a slow
//! or silent client holds its thread at most that long. Bodies need a
//! `Content-Length`; `Transfer-Encoding` (chunked) is refused with 501.

use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::routes::{self, Response};
use super::slots::Active;
use super::VmmControl;

/// Bounds on what one request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers, bytes.
    pub max_head: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Body, bytes.
    pub max_body: usize,
    /// Time from accept until the whole request has arrived (and again for
    /// writing the response).
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 8 << 10,
            max_headers: 32,
            max_body: 64 << 10,
            request_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// Another process serves on the path already.
    #[error("API socket {0}: in use by a running server")]
    InUse(PathBuf),
    /// The path exists and is not a socket: not ours to remove.
    #[error("API socket {0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the api thread: {0}")]
    Thread(#[source] io::Error),
}

/// A request that arrived whole.
#[derive(Debug)]
struct RawRequest {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// Why a request could not be read; each maps to a status (or to silence).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The client closed without sending a byte: nothing to answer.
    #[error("client closed the connection")]
    Closed,
    #[error("{0}")]
    Malformed(String),
    #[error("request not complete within {0:?}")]
    Timeout(Duration),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("body of {0} bytes; the limit is {1}")]
    BodyTooLarge(u64, usize),
    #[error("Transfer-Encoding is not supported; send a Content-Length")]
    TransferEncoding,
    #[error("reading the request: {0}")]
    Io(#[source] io::Error),
}

impl ReadError {
    fn status(&self) -> Option<u16> {
        match self {
            ReadError::Closed | ReadError::Io(_) => None,
            ReadError::Malformed(_) => Some(400),
            ReadError::Timeout(_) => Some(408),
            ReadError::BodyTooLarge(..) => Some(413),
            ReadError::HeadTooLarge(_) | ReadError::TooManyHeaders(_) => Some(431),
            ReadError::TransferEncoding => Some(501),
        }
    }
}

/// Reads into `buf` until the deadline; 0 means end of stream.
fn read_some(
    stream: &mut UnixStream,
    buf: &mut [u8],
    deadline: Instant,
    limit: Duration,
) -> Result<usize, ReadError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout(limit));
        }
        stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(ReadError::Timeout(limit))
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Parsed head: method, target, body length, whether the client waits for
/// `100 Continue`, and the head's length in bytes.
struct Head {
    method: String,
    target: String,
    content_length: u64,
    expect_continue: bool,
    len: usize,
}

fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, ReadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::TooManyHeaders(limits.max_headers))
        }
        Err(e) => return Err(ReadError::Malformed(format!("malformed request: {e}"))),
    };
    let mut content_length: Option<u64> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::TransferEncoding);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ReadError::Malformed("invalid Content-Length".into()))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(ReadError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = Some(n);
        }
        if h.name.eq_ignore_ascii_case("expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(ReadError::Malformed("unsupported Expect header".into()));
            }
        }
    }
    // httparse fills these in a complete parse.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(ReadError::Malformed("malformed request line".into()));
    };
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        content_length: content_length.unwrap_or(0),
        expect_continue,
        len,
    }))
}

fn read_request(stream: &mut UnixStream, limits: &Limits) -> Result<RawRequest, ReadError> {
    let deadline = Instant::now() + limits.request_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head = loop {
        let n = read_some(stream, &mut chunk, deadline, limits.request_timeout)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("connection closed inside the request head".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = parse_head(&buf, limits)? {
            if h.len > limits.max_head {
                return Err(ReadError::HeadTooLarge(limits.max_head));
            }
            break h;
        }
        if buf.len() > limits.max_head {
            return Err(ReadError::HeadTooLarge(limits.max_head));
        }
    };
    if head.content_length > limits.max_body as u64 {
        return Err(ReadError::BodyTooLarge(
            head.content_length,
            limits.max_body,
        ));
    }
    // Bounded by max_body just above.
    let want = head.content_length as usize;
    let mut body = buf.split_off(head.len);
    if head.expect_continue && body.len() < want {
        write_all_by(stream, b"HTTP/1.1 100 Continue\r\n\r\n", deadline).map_err(ReadError::Io)?;
    }
    while body.len() < want {
        let n = read_some(stream, &mut chunk, deadline, limits.request_timeout)?;
        if n == 0 {
            return Err(ReadError::Malformed(format!(
                "connection closed after {} of {want} body bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    // Bytes past the body (a pipelined request) are dropped with the connection.
    body.truncate(want);
    Ok(RawRequest {
        method: head.method,
        target: head.target,
        body,
    })
}

fn write_all_by(stream: &mut UnixStream, data: &[u8], deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
    stream.write_all(data)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The bytes of `resp` on the wire, with `Connection: close`.
fn encode(resp: &Response) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    out.push_str("Server: splitvm\r\nConnection: close\r\n");
    if let Some(ct) = resp.content_type {
        out.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(allow) = resp.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    if resp.status != 204 {
        out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp.body);
    bytes
}

/// After an error answer, reads what the client is still sending (bounded
/// in bytes and time), so it can finish writing and read the answer instead
/// of seeing its connection reset.
fn drain(stream: &mut UnixStream, limits: &Limits) {
    let deadline = Instant::now() + limits.request_timeout.min(Duration::from_secs(1));
    let mut chunk = [0u8; 4096];
    let mut total = 0usize;
    while total < (1 << 20) {
        match read_some(stream, &mut chunk, deadline, limits.request_timeout) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Serves one connection: reads one request, answers it, closes. Public
/// for the fuzz harness, which feeds it a socketpair.
pub fn serve_connection(mut stream: UnixStream, control: &dyn VmmControl, limits: &Limits) {
    let (resp, drain_after) = match read_request(&mut stream, limits) {
        Ok(req) => {
            let resp = routes::handle(control, &req.method, &req.target, &req.body);
            log::debug!("api: {} {} -> {}", req.method, req.target, resp.status);
            (resp, false)
        }
        Err(e) => match e.status() {
            Some(status) => {
                log::debug!("api: bad request: {e} -> {status}");
                (Response::error(status, e.to_string()), true)
            }
            None => {
                log::debug!("api: {e}");
                return;
            }
        },
    };
    let deadline = Instant::now() + limits.request_timeout;
    if let Err(e) = write_all_by(&mut stream, &encode(&resp), deadline) {
        log::debug!("api: writing the response: {e}");
        return;
    }
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if drain_after {
        drain(&mut stream, limits);
    }
}

/// Serves `stream` on a new `api-conn` thread, or answers 503 when
/// `max_connections` are busy.
fn dispatch(
    mut stream: UnixStream,
    control: &Arc<dyn VmmControl>,
    limits: &Limits,
    active: &Arc<Active>,
) {
    let Some(slot) = active.enter(limits.max_connections) else {
        log::warn!(
            "api: more than {} connections; answering 503",
            limits.max_connections
        );
        // A fresh socket's send buffer takes this small answer without
        // blocking; a client that does not read cannot stall the acceptor.
        let resp = Response::error(503, "too many connections; retry");
        if stream.set_nonblocking(true).is_ok() {
            let _ = stream.write_all(&encode(&resp));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Closing with unread bytes would reset the connection before
            // the client reads the answer: take what already arrived.
            let mut chunk = [0u8; 4096];
            for _ in 0..16 {
                match stream.read(&mut chunk) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        return;
    };
    let control = control.clone();
    let limits = *limits;
    let spawned = std::thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            let _slot = slot;
            serve_connection(stream, control.as_ref(), &limits);
        });
    if let Err(e) = spawned {
        // The closure (and its slot) was dropped with the error.
        log::warn!("api: starting a connection thread: {e}");
    }
}

fn serve_until(
    listener: UnixListener,
    control: Arc<dyn VmmControl>,
    limits: Limits,
    stop: &AtomicBool,
    active: &Arc<Active>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        match conn {
            Ok(stream) => dispatch(stream, &control, &limits, active),
            Err(e) => {
                log::warn!("api: accept: {e}");
                // Out of fds and the like: do not spin on the error.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serves `listener` forever on the calling thread with default [`Limits`].
pub fn serve(listener: UnixListener, control: Arc<dyn VmmControl>) {
    serve_until(
        listener,
        control,
        Limits::default(),
        &AtomicBool::new(false),
        &Arc::new(Active::default()),
    );
}

/// A running API server on its `api` thread. Dropping it stops the thread
/// and removes the socket.
#[derive(Debug)]
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    active: Arc<Active>,
    /// How long stopping waits for connections in progress.
    linger: Duration,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// The socket the server listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, lets the connections in progress finish (at most
    /// the request timeout; so the answer to a shutdown or kill gets out
    /// before the process ends), removes the socket.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; the loop sees the flag and ends.
        if UnixStream::connect(&self.path).is_ok() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        if !self.active.wait_idle(self.linger) {
            log::warn!("api: connections still open after {:?}", self.linger);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Binds `path` (removing a stale socket nobody serves) and serves on a new
/// thread named `api` with default [`Limits`].
pub fn spawn(path: &Path, control: Arc<dyn VmmControl>) -> Result<ApiServer, ApiServerError> {
    spawn_with(path, control, Limits::default())
}

/// [`spawn`] with explicit limits.
pub fn spawn_with(
    path: &Path,
    control: Arc<dyn VmmControl>,
    limits: Limits,
) -> Result<ApiServer, ApiServerError> {
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if !md.file_type().is_socket() {
            return Err(ApiServerError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ApiServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|source| ApiServerError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| ApiServerError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(Active::default());
    let (thread_stop, thread_active) = (stop.clone(), active.clone());
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || serve_until(listener, control, limits, &thread_stop, &thread_active))
        .map_err(ApiServerError::Thread)?;
    log::info!("api: serving on {}", path.display());
    Ok(ApiServer {
        path: path.to_path_buf(),
        stop,
        active,
        linger: limits.request_timeout,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_reject() {
        let l = Limits::default();
        let h = parse_head(b"PUT /vm HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", &l)
            .unwrap()
            .unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("PUT", "/vm"));
        assert_eq!((h.content_length, h.len), (5, 39));
        assert!(parse_head(b"GET /vm HTTP/1.1\r\n", &l).unwrap().is_none());
        for bad in [
            &b"GET /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
            b"GET /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /vm HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
            b"GET /vm HTTP/1.1\r\nExpect: magic\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(bad, &l).err().and_then(|e| e.status()),
                Some(400),
                "{bad:?}"
            );
        }
        let te = parse_head(
            b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            &l,
        );
        assert_eq!(te.err().and_then(|e| e.status()), Some(501));
    }

    #[test]
    fn responses_encode() {
        let r = encode(&Response::no_content());
        assert!(r.starts_with(b"HTTP/1.1 204 No Content\r\n"));
        assert!(!String::from_utf8_lossy(&r).contains("Content-Length"));
        let r = String::from_utf8(encode(&Response::error(404, "x"))).unwrap();
        assert!(r.contains("Content-Length: 13\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n{\"error\":\"x\"}"), "{r}");
    }
}
