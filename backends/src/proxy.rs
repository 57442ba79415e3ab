//! A vhost-user message interceptor between the frontend and the
//! `vhost-user-backend` daemon, for requests that crate does not implement
//! (`GET_INFLIGHT_FD`/`SET_INFLIGHT_FD` for splitvm-blk). Its request
//! handler is private, so a device that needs such requests gets this
//! proxy instead: every frontend message passes through
//! [`Intercept::on_request`], which answers it itself or forwards it
//! (possibly after acting on its descriptors); the daemon's replies go back
//! unchanged. Control plane only: the data path never touches it.
//!
//! Threads: `vhost-proxy` reads the frontend, `vhost-proxy-reply` reads the
//! daemon. When either side goes away both connections are shut down, so
//! the daemon sees a disconnect exactly as without the proxy.

use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use log::warn;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::abi;

/// vhost-user header bytes: request, flags, size (u32 each, little endian).
pub const HEADER_LEN: usize = 12;
/// Largest message body accepted (the vhost crate's limit is 4 KiB).
pub const MAX_BODY: usize = 0x1_0000;
/// Header flag: protocol version 1.
pub const FLAG_VERSION: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the frontend wants an ack (`REPLY_ACK`).
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// One vhost-user message with the descriptors that came with it.
#[derive(Debug)]
pub struct Message {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload.
    pub body: Vec<u8>,
    /// Descriptors passed with the message.
    pub files: Vec<File>,
}

impl Message {
    /// A reply to `request` carrying `body` and `files`.
    pub fn reply(request: u32, body: Vec<u8>, files: Vec<File>) -> Self {
        Message {
            request,
            flags: FLAG_VERSION | FLAG_REPLY,
            body,
            files,
        }
    }

    /// Whether the frontend set `NEED_REPLY`.
    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    fn encode(&self) -> io::Result<Vec<u8>> {
        let size = u32::try_from(self.body.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "body too large"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        out.extend_from_slice(&self.request.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&self.body);
        Ok(out)
    }
}

/// What to do with a frontend message.
#[derive(Debug)]
pub enum Verdict {
    /// Pass it (as returned) to the daemon.
    Forward(Message),
    /// Handled here; send this reply to the frontend, if any.
    Handled(Option<Message>),
}

/// A device's hook on the frontend's messages.
pub trait Intercept: Send + Sync {
    /// Looks at one frontend message before the daemon does. An error ends
    /// the connection.
    fn on_request(&self, msg: Message) -> io::Result<Verdict>;
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Fills `buf` completely, collecting descriptors. `Ok(false)`: the peer
/// closed before the first byte.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], files: &mut Vec<File>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let rest = buf.get_mut(got..).ok_or_else(|| bad("short buffer"))?;
        let (n, mut fds) = match abi::recv_with_files(sock, rest) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        files.append(&mut fds);
        if files.len() > abi::MAX_FDS {
            return Err(bad("too many descriptors"));
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        got += n;
    }
    Ok(true)
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HEADER_LEN];
    let mut files = Vec::new();
    if !recv_exact(sock, &mut hdr, &mut files)? {
        return Ok(None);
    }
    let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    let size = usize::try_from(size).map_err(|_| bad("message size"))?;
    if size > MAX_BODY {
        return Err(bad("message too large"));
    }
    let mut body = vec![0u8; size];
    if size > 0 && !recv_exact(sock, &mut body, &mut files)? {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(Some(Message {
        request,
        flags,
        body,
        files,
    }))
}

/// Writes one message; its descriptors go with the first bytes.
pub fn write_message(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let bytes = msg.encode()?;
    let fds: Vec<RawFd> = msg.files.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = bytes.get(sent..).ok_or_else(|| bad("short buffer"))?;
        let with: &[RawFd] = if sent == 0 { &fds } else { &[] };
        match sock.send_with_fds(&[rest], with) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => sent += n,
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    }
    Ok(())
}

/// The two proxy threads of one connection.
pub struct Proxy {
    threads: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Starts relaying between `frontend` and `inner` (the daemon's end).
    pub fn start(
        frontend: UnixStream,
        inner: UnixStream,
        intercept: Arc<dyn Intercept>,
    ) -> io::Result<Self> {
        frontend.set_nonblocking(false)?;
        inner.set_nonblocking(false)?;
        let fe_write = Arc::new(Mutex::new(frontend.try_clone()?));
        let fe_write2 = fe_write.clone();
        let (fe_a, inner_a) = (frontend.try_clone()?, inner.try_clone()?);
        let (fe_b, inner_b) = (frontend, inner);
        let down = |a: &UnixStream, b: &UnixStream| {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        };
        let requests = thread::Builder::new()
            .name("vhost-proxy".into())
            .spawn(move || {
                if let Err(e) = relay_requests(&fe_a, &inner_a, &fe_write, intercept.as_ref()) {
                    warn!("vhost-user proxy (requests): {e}");
                }
                down(&fe_a, &inner_a);
            })?;
        let replies = thread::Builder::new()
            .name("vhost-proxy-reply".into())
            .spawn(move || {
                if let Err(e) = relay_replies(&inner_b, &fe_write2) {
                    warn!("vhost-user proxy (replies): {e}");
                }
                down(&fe_b, &inner_b);
            })?;
        Ok(Proxy {
            threads: vec![requests, replies],
        })
    }

    /// Waits for both threads (after either connection ended).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn send_locked(sock: &Mutex<UnixStream>, msg: &Message) -> io::Result<()> {
    let s = sock.lock().unwrap_or_else(PoisonError::into_inner);
    write_message(&s, msg)
}

fn relay_requests(
    frontend: &UnixStream,
    inner: &UnixStream,
    fe_write: &Mutex<UnixStream>,
    intercept: &dyn Intercept,
) -> io::Result<()> {
    while let Some(msg) = read_message(frontend)? {
        match intercept.on_request(msg)? {
            Verdict::Forward(m) => write_message(inner, &m)?,
            Verdict::Handled(Some(reply)) => send_locked(fe_write, &reply)?,
            Verdict::Handled(None) => {}
        }
    }
    Ok(())
}

fn relay_replies(inner: &UnixStream, fe_write: &Mutex<UnixStream>) -> io::Result<()> {
    while let Some(msg) = read_message(inner)? {
        send_locked(fe_write, &msg)?;
    }
    Ok(())
}
