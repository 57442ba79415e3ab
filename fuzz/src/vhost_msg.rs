//! vhost-user messages from fuzz bytes, sent to a real backend: the
//! device's `VhostUserBackend` inside a `VhostUserDaemon` connected over a
//! unix socket, behind the backends' message proxy when the device has one
//! (blk's inflight messages, net's backend-request hook), as `daemon::serve`
//! wires them. After the messages, every eventfd handed over is kicked (so
//! queues set up by the messages are processed, with rings and buffers
//! taken from the input bytes copied into every memory fd), then the
//! frontend hangs up; the daemon must end its connection and the process
//! must survive. Both the byte-level framing (lying sizes, odd flags,
//! unknown codes, fds on any message) and well-formed messages with
//! hostile values (queue indices, sizes, addresses, memory tables) are
//! generated, see [`decode`].

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use splitvm_backends::daemon::Device;
use splitvm_backends::proxy::Proxy;
use vhost::vhost_user::message::FrontendReq as Req;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::devices::{self, memfd};

/// Size of every memory fd (memory regions, inflight regions).
pub const REGION: u64 = 1 << 20;
/// Frontend address of memory region `i`: `UADDR + i * REGION`.
pub const UADDR: u64 = 0x7f00_0000_0000;
/// A feature word meaning "what the device offers" (the session fills it
/// in; the daemon drops a frontend that acks anything else).
const OFFERED: u64 = 0xffff_ffff_ffff_fffe;
/// How long a session waits for its final GET_FEATURES to be answered.
const SYNC_LIMIT: Duration = Duration::from_secs(2);
/// Messages sent per input at most.
const MAX_MSGS: usize = 256;

/// A descriptor attached to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// An eventfd (kicked after the messages).
    Event,
    /// A [`REGION`]-byte memfd holding the input bytes.
    Mem,
    /// One end of a socketpair (a backend request channel).
    Socket,
    /// `/dev/null`.
    Null,
}

/// One message as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// Header size field, when it lies about the body.
    pub size: Option<u32>,
    /// Body.
    pub body: Vec<u8>,
    /// Descriptors sent with it.
    pub fds: Vec<FdKind>,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn byte(&mut self) -> u8 {
        self.u8().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (a, rest) = self.data.split_at(n);
        self.data = rest;
        a.to_vec()
    }
    /// One of `table`, or any value when the byte says so.
    fn pick(&mut self, table: &[u64]) -> u64 {
        let b = self.byte();
        match table.get(usize::from(b) % (table.len() + 1)) {
            Some(&v) => v,
            None => self.u64(),
        }
    }
}

// Request codes from the vhost crate's FrontendReq (the spec's numbers).
const GET_FEATURES: u32 = Req::GET_FEATURES as u32;
const SET_FEATURES: u32 = Req::SET_FEATURES as u32;
const SET_MEM_TABLE: u32 = Req::SET_MEM_TABLE as u32;
const SET_VRING_NUM: u32 = Req::SET_VRING_NUM as u32;
const SET_VRING_ADDR: u32 = Req::SET_VRING_ADDR as u32;
const SET_VRING_BASE: u32 = Req::SET_VRING_BASE as u32;
const GET_VRING_BASE: u32 = Req::GET_VRING_BASE as u32;
const SET_VRING_KICK: u32 = Req::SET_VRING_KICK as u32;
const SET_VRING_CALL: u32 = Req::SET_VRING_CALL as u32;
const SET_VRING_ERR: u32 = Req::SET_VRING_ERR as u32;
const SET_PROTOCOL_FEATURES: u32 = Req::SET_PROTOCOL_FEATURES as u32;
const SET_VRING_ENABLE: u32 = Req::SET_VRING_ENABLE as u32;
const SET_BACKEND_REQ_FD: u32 = Req::SET_BACKEND_REQ_FD as u32;
const GET_CONFIG: u32 = Req::GET_CONFIG as u32;
const SET_CONFIG: u32 = Req::SET_CONFIG as u32;
const GET_INFLIGHT_FD: u32 = Req::GET_INFLIGHT_FD as u32;
const SET_INFLIGHT_FD: u32 = Req::SET_INFLIGHT_FD as u32;
const ADD_MEM_REG: u32 = Req::ADD_MEM_REG as u32;
const REM_MEM_REG: u32 = Req::REM_MEM_REG as u32;

fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// `(gpa, size, uaddr, offset)` of region `i` in a well-formed table, or a
/// hostile variant chosen by `shape`.
fn region(i: u64, shape: u8) -> [u64; 4] {
    let uaddr = UADDR + i * REGION;
    match shape % 8 {
        // Overlapping guest addresses.
        5 => [0, REGION, uaddr, 0],
        // Larger than the fd.
        6 => [i * REGION, 1 << 40, uaddr, 0],
        // Offset past the fd, address wrap.
        7 => [u64::MAX - 0xfff, REGION, uaddr, REGION],
        _ => [i * REGION, REGION, uaddr, 0],
    }
}

/// A well-formed message of type `request` with values from `r` (queue
/// indices one past the device's, sizes at the edges, addresses inside and
/// outside the regions, hostile memory tables).
fn sane(request: u32, r: &mut Reader) -> (Vec<u8>, Vec<FdKind>) {
    let mut b = Vec::new();
    let mut fds = Vec::new();
    let index = |r: &mut Reader| u32::from(r.byte() % 6);
    match request {
        SET_FEATURES | SET_PROTOCOL_FEATURES => {
            le64(&mut b, r.pick(&[OFFERED, u64::MAX, 0, 1 << 32]));
        }
        SET_MEM_TABLE => {
            let n = 1 + u64::from(r.byte() % 3);
            let shape = r.byte();
            le32(&mut b, n as u32);
            le32(&mut b, 0);
            for i in 0..n {
                for v in region(i, if i + 1 == n { shape } else { 0 }) {
                    le64(&mut b, v);
                }
                fds.push(FdKind::Mem);
            }
        }
        ADD_MEM_REG | REM_MEM_REG => {
            le64(&mut b, 0);
            let i = u64::from(r.byte() % 4);
            for v in region(i, r.byte()) {
                le64(&mut b, v);
            }
            if request == ADD_MEM_REG {
                fds.push(FdKind::Mem);
            }
        }
        SET_VRING_NUM | SET_VRING_BASE | GET_VRING_BASE | SET_VRING_ENABLE => {
            le32(&mut b, index(r));
            let num = r.pick(&[0, 1, 2, 64, 256, 257, 1024, 32768, 65535]);
            le32(&mut b, num as u32);
        }
        SET_VRING_ADDR => {
            le32(&mut b, index(r));
            le32(&mut b, 0);
            for _ in 0..3 {
                // Mostly inside region 0 (rings at 16-byte steps), sometimes
                // anywhere.
                let a = if r.byte() & 0x80 == 0 {
                    UADDR + u64::from(r.u16()) * 16
                } else {
                    r.u64()
                };
                le64(&mut b, a);
            }
            le64(&mut b, 0);
        }
        SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
            let nofd = r.byte() & 1 != 0;
            le64(&mut b, u64::from(index(r)) | if nofd { 0x100 } else { 0 });
            if !nofd {
                fds.push(FdKind::Event);
            }
        }
        SET_BACKEND_REQ_FD => fds.push(FdKind::Socket),
        GET_CONFIG | SET_CONFIG => {
            let offset = u32::from(r.byte());
            let size = u32::from(r.byte());
            le32(&mut b, offset);
            le32(&mut b, size);
            le32(&mut b, u32::from(r.byte() & 1));
            if request == SET_CONFIG {
                let payload = r.take(size as usize);
                b.extend_from_slice(&payload);
            }
            b.resize(12 + size as usize, 0);
        }
        GET_INFLIGHT_FD | SET_INFLIGHT_FD => {
            le64(
                &mut b,
                r.pick(&[0, 0x1000, 0x2000, 0x4_0000, REGION, 1 << 40]),
            );
            le64(&mut b, r.pick(&[0, 0x1000, 1, REGION]));
            b.extend_from_slice(&u16::from(r.byte() % 4).to_le_bytes());
            let qs = r.pick(&[0, 1, 256, 1024, 65535]);
            b.extend_from_slice(&(qs as u16).to_le_bytes());
            // Padding to the C struct's 24 bytes.
            b.resize(24, 0);
            if request == SET_INFLIGHT_FD {
                fds.push(FdKind::Mem);
            }
        }
        _ => {}
    }
    (b, fds)
}

/// Turns fuzz bytes into messages. Per message: a code byte, a control
/// byte (bit 0: NEED_REPLY; bits 1-2: extra fds; bit 3: the header's size
/// lies; bit 4: a well-formed body from [`sane`]; bit 5: a long raw body;
/// bit 6: an unknown code; bit 7: raw header flags), then what those ask
/// for.
pub fn decode(data: &[u8]) -> Vec<Msg> {
    let mut r = Reader { data };
    let mut out = Vec::new();
    while out.len() < MAX_MSGS {
        let Some(code) = r.u8() else {
            break;
        };
        let ctl = r.byte();
        let request = if ctl & 0x40 != 0 {
            u32::from(code) << 8 | u32::from(code)
        } else {
            u32::from(code % 48)
        };
        let flags = if ctl & 0x80 != 0 {
            u32::from(r.byte())
        } else {
            0x1 | if ctl & 1 != 0 { 0x8 } else { 0 }
        };
        let (body, mut fds) = if ctl & 0x10 != 0 {
            sane(request, &mut r)
        } else {
            let len = if ctl & 0x20 != 0 {
                usize::from(r.u16() % 0x1100)
            } else {
                usize::from(r.byte())
            };
            (r.take(len), Vec::new())
        };
        let extra = (ctl >> 1) & 3;
        if extra > 0 {
            let kinds = r.byte();
            for k in 0..extra {
                fds.push(match (kinds >> (2 * k)) & 3 {
                    0 => FdKind::Event,
                    1 => FdKind::Mem,
                    2 => FdKind::Socket,
                    _ => FdKind::Null,
                });
            }
        }
        let size = (ctl & 0x08 != 0).then(|| u32::from(r.u16()));
        out.push(Msg {
            request,
            flags,
            size,
            body,
            fds,
        });
    }
    out
}

/// The socket the daemons connect to (`start_client`), one per process, in
/// a private directory removed at exit.
fn listener() -> &'static Mutex<(PathBuf, UnixListener)> {
    static L: OnceLock<Mutex<(PathBuf, UnixListener)>> = OnceLock::new();
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn cleanup() {
        if let Some(d) = DIR.get() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    L.get_or_init(|| {
        // libFuzzer's own main does not ignore SIGPIPE as Rust's does, and
        // writing to a backend that dropped the connection must not kill it.
        // SAFETY: setting a signal disposition to SIG_IGN has no handler to
        // be unsafe about.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let dir = std::env::temp_dir().join(format!("splitvm-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fuzz socket dir");
        let _ = DIR.set(dir.clone());
        // SAFETY: registers a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(cleanup) };
        let path = dir.join("vhost.sock");
        let l = UnixListener::bind(&path).expect("bind the fuzz socket");
        Mutex::new((path, l))
    })
}

fn eventfd() -> Option<File> {
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    // SAFETY: a fresh descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// The fds of one message, created fresh; eventfds are also kept in `kicks`.
fn make_fds(kinds: &[FdKind], data: &[u8], kicks: &mut Vec<File>) -> Vec<File> {
    let mut files = Vec::new();
    for k in kinds {
        let f = match k {
            FdKind::Event => eventfd().and_then(|e| {
                let ours = e.try_clone().ok()?;
                kicks.push(ours);
                Some(e)
            }),
            FdKind::Mem => {
                let f = memfd("fuzz-guest", REGION);
                if !data.is_empty() {
                    let fill: Vec<u8> = data.iter().copied().cycle().take(0x1_0000).collect();
                    let _ = std::os::unix::fs::FileExt::write_all_at(&f, &fill, 0);
                }
                Some(f)
            }
            FdKind::Socket => UnixStream::pair()
                .ok()
                .map(|(a, _b)| File::from(OwnedFd::from(a))),
            FdKind::Null => File::open("/dev/null").ok(),
        };
        files.extend(f);
    }
    files
}

fn send(sock: &UnixStream, m: &Msg, files: &[File]) -> bool {
    let size = m.size.unwrap_or(m.body.len() as u32);
    let mut bytes = Vec::with_capacity(12 + m.body.len());
    le32(&mut bytes, m.request);
    le32(&mut bytes, m.flags);
    le32(&mut bytes, size);
    bytes.extend_from_slice(&m.body);
    let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < bytes.len() {
        let with: &[RawFd] = if sent == 0 { &fds } else { &[] };
        match sock.send_with_fds(&[&bytes[sent..]], with) {
            Ok(0) | Err(_) => return false,
            Ok(n) => sent += n,
        }
    }
    true
}

/// Takes the first whole reply off `buf`; returns its request code.
fn next_reply(buf: &mut Vec<u8>) -> Option<u32> {
    let hdr = buf.first_chunk::<12>()?;
    let w = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
    let (code, end) = (w(0), 12 + w(8) as usize);
    if buf.len() < end {
        return None;
    }
    buf.drain(..end);
    Some(code)
}

/// Runs one connection of `device` through the messages in `data`;
/// returns the request codes of the replies the backend sent.
pub fn session<T: Device>(device: T, data: &[u8]) -> Vec<u32> {
    let mut msgs = decode(data);
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon =
        VhostUserDaemon::new("fuzz".into(), device.clone(), mem).expect("vhost-user daemon");
    device
        .attach(&daemon.get_epoll_handlers())
        .expect("attach device fds");
    let inner = {
        let l = listener().lock().unwrap_or_else(PoisonError::into_inner);
        let path = l.0.to_str().expect("UTF-8 socket path").to_string();
        daemon.start_client(&path).expect("daemon connects");
        l.1.accept().expect("accept the daemon").0
    };
    let (ours, proxy) = match device.intercept() {
        None => (inner, None),
        Some(hook) => {
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            let p = Proxy::start(theirs, inner, hook).expect("start the proxy");
            (ours, Some(p))
        }
    };
    // Replies are read (and dropped) as they come, so the backend never
    // blocks on a full socket.
    let mut rx = ours.try_clone().expect("clone the socket");
    let (tx, replies) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = rx.read(&mut buf) {
            all.extend_from_slice(&buf[..n]);
            while let Some(code) = next_reply(&mut all) {
                if tx.send(code).is_err() {
                    break;
                }
            }
        }
    });
    let mut kicks = Vec::new();
    for m in &mut msgs {
        if m.body == OFFERED.to_le_bytes() {
            let f = match m.request {
                SET_FEATURES => device.features(),
                SET_PROTOCOL_FEATURES => device.protocol_features().bits(),
                _ => OFFERED,
            };
            m.body = f.to_le_bytes().to_vec();
        }
    }
    let mut codes = Vec::new();
    let mut sent_all = true;
    // The eventfds to kick: all but a kick fd replaced by a later
    // SET_VRING_KICK of the same queue. vhost-user-backend 0.24 leaves a
    // replaced kick fd registered with the worker's epoll and then reads
    // the new one, so a kick on the old fd blocks that worker for good and
    // the connection can never end: a hang a frontend (not a guest) can
    // cause, in the crate, reported rather than fixed here.
    let mut live: Vec<Option<u64>> = Vec::new();
    for m in &msgs {
        let first = kicks.len();
        let files = make_fds(&m.fds, data, &mut kicks);
        let queue = (m.request == SET_VRING_KICK && m.size.is_none())
            .then(|| {
                m.body
                    .first_chunk::<8>()
                    .map(|b| u64::from_le_bytes(*b) & 0xff)
            })
            .flatten();
        if queue.is_some() {
            for q in live.iter_mut().filter(|q| **q == queue) {
                *q = Some(u64::MAX);
            }
        }
        live.extend((first..kicks.len()).map(|_| queue));
        if !send(&ours, m, &files) {
            sent_all = false;
            break;
        }
    }
    for (mut k, q) in kicks.iter().zip(&live) {
        if *q != Some(u64::MAX) {
            let _ = k.write_all(&1u64.to_ne_bytes());
        }
    }
    // Without lying sizes the stream is in step: a final GET_FEATURES is
    // answered after everything before it was handled, so the whole input
    // takes effect (and is answered) before the hang-up, not just what won
    // the race with it. A backend that dropped the connection ends the
    // wait too.
    if sent_all && msgs.iter().all(|m| m.size.is_none()) {
        let sync = Msg {
            request: GET_FEATURES,
            flags: 0x1,
            size: None,
            body: Vec::new(),
            fds: Vec::new(),
        };
        let want = 1 + msgs.iter().filter(|m| m.request == GET_FEATURES).count();
        if send(&ours, &sync, &[]) {
            let end = Instant::now() + SYNC_LIMIT;
            let mut seen = 0;
            while seen < want {
                let left = end.saturating_duration_since(Instant::now());
                match replies.recv_timeout(left) {
                    Ok(code) => {
                        seen += usize::from(code == GET_FEATURES);
                        codes.push(code);
                    }
                    Err(_) => break,
                }
            }
        }
    }
    let _ = ours.shutdown(Shutdown::Write);
    if let Err(e) = daemon.wait() {
        log::debug!("connection ended: {e}");
    }
    // Dropping the daemon signals every worker's exit event and joins them.
    drop(daemon);
    if let Some(p) = proxy {
        p.join();
    }
    let _ = ours.shutdown(Shutdown::Both);
    let _ = reader.join();
    codes.extend(replies.try_iter());
    log::debug!("replies: {codes:?}");
    codes
}

/// Fuzz body for splitvm-blk.
pub fn run_blk(data: &[u8]) {
    let _ = session(devices::blk(), data);
}

/// Fuzz body for splitvm-net.
pub fn run_net(data: &[u8]) {
    let _ = session(devices::net(), data);
}

/// Fuzz body for splitvm-input.
pub fn run_input(data: &[u8]) {
    let _ = session(devices::input(), data);
}
