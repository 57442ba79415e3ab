//! Malformed vhost-user messages, written byte by byte on a raw connection
//! (the `vhost` crate's frontend cannot send them): wrong sizes, missing,
//! extra and wrong fds, out-of-range queue indices, and memory tables that
//! overlap, are huge, or point past their fd. None may be accepted (acked
//! with 0) except the two marked harmless. [`run_message_cases`] sends
//! each after a normal negotiation, then probes the same connection with
//! `GET_FEATURES`: either the backend still answers on it ("survived"), or
//! it dropped the connection ("dropped"), or it waits for bytes that never
//! come ("stalled", for headers that promise more than is sent). Either
//! way the frontend then hangs up and a new, correct frontend must be
//! served correctly.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::FrontendReq as Req;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::connect_stream;

// Request codes from the vhost crate's FrontendReq (the spec's numbers).
const GET_FEATURES: u32 = Req::GET_FEATURES as u32;
const SET_FEATURES: u32 = Req::SET_FEATURES as u32;
const SET_OWNER: u32 = Req::SET_OWNER as u32;
const SET_MEM_TABLE: u32 = Req::SET_MEM_TABLE as u32;
const SET_VRING_NUM: u32 = Req::SET_VRING_NUM as u32;
const SET_VRING_ADDR: u32 = Req::SET_VRING_ADDR as u32;
const SET_VRING_BASE: u32 = Req::SET_VRING_BASE as u32;
const GET_VRING_BASE: u32 = Req::GET_VRING_BASE as u32;
const SET_VRING_KICK: u32 = Req::SET_VRING_KICK as u32;
const SET_VRING_CALL: u32 = Req::SET_VRING_CALL as u32;
const GET_PROTOCOL_FEATURES: u32 = Req::GET_PROTOCOL_FEATURES as u32;
const SET_PROTOCOL_FEATURES: u32 = Req::SET_PROTOCOL_FEATURES as u32;
const SET_VRING_ENABLE: u32 = Req::SET_VRING_ENABLE as u32;
const SET_BACKEND_REQ_FD: u32 = Req::SET_BACKEND_REQ_FD as u32;
const GET_CONFIG: u32 = Req::GET_CONFIG as u32;
const SET_INFLIGHT_FD: u32 = Req::SET_INFLIGHT_FD as u32;
const ADD_MEM_REG: u32 = Req::ADD_MEM_REG as u32;
/// Header flags: version 1.
const V1: u32 = 0x1;
/// Header flags: version 1, NEED_REPLY.
const V1_ACK: u32 = 0x9;
/// `REPLY_ACK | MQ | CONFIG | CONFIGURE_MEM_SLOTS` (what is offered of it
/// is acked).
const PROTOCOL_WANTED: u64 = (1 << 3) | (1 << 0) | (1 << 9) | (1 << 15);
/// Bytes of each memfd handed over as guest memory.
const REGION: u64 = 1 << 20;
/// Frontend address of the memfd regions.
const UADDR: u64 = 0x7f00_0000_0000;

/// A descriptor to attach.
#[derive(Debug, Clone, Copy)]
pub enum Fd {
    /// A fresh eventfd.
    Event,
    /// A fresh [`REGION`]-byte memfd.
    Mem,
    /// `/dev/null`.
    Null,
}

/// One malformed message.
#[derive(Debug, Clone)]
pub struct MsgCase {
    /// What is wrong with it.
    pub what: &'static str,
    /// Request code.
    pub request: u32,
    /// Header size field, when it is not the body's length.
    pub size: Option<u32>,
    /// Body.
    pub body: Vec<u8>,
    /// Descriptors sent with it.
    pub fds: Vec<Fd>,
    /// The backend may accept it (ack 0): it is odd but harmless.
    pub may_accept: bool,
}

/// What the backend did with a malformed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It still answers `GET_FEATURES` on the same connection; `ack` is the
    /// `REPLY_ACK` status it gave the message (0: accepted), if any.
    Survived {
        /// The ack's status word.
        ack: Option<u64>,
    },
    /// It closed the connection.
    Dropped,
    /// It waits for the rest of a message that promised more bytes.
    Stalled,
}

fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn state(index: u32, num: u32) -> Vec<u8> {
    let mut b = Vec::new();
    le32(&mut b, index);
    le32(&mut b, num);
    b
}

fn mem_table(regions: &[[u64; 4]]) -> Vec<u8> {
    let mut b = Vec::new();
    le32(&mut b, regions.len() as u32);
    le32(&mut b, 0);
    for r in regions {
        for &v in r {
            le64(&mut b, v);
        }
    }
    b
}

fn case(what: &'static str, request: u32, body: Vec<u8>, fds: Vec<Fd>) -> MsgCase {
    MsgCase {
        what,
        request,
        size: None,
        body,
        fds,
        may_accept: false,
    }
}

/// Every malformed message, for a device with `queues` queues.
pub fn message_cases(queues: u32) -> Vec<MsgCase> {
    let ok_region = [0, REGION, UADDR, 0];
    let mut addr = Vec::new();
    le32(&mut addr, 0xffff);
    le32(&mut addr, 0);
    for a in [UADDR, UADDR + 0x2000, UADDR + 0x1000, 0] {
        le64(&mut addr, a);
    }
    vec![
        // Wrong sizes.
        case(
            "SET_FEATURES with a 4-byte body",
            SET_FEATURES,
            vec![0; 4],
            vec![],
        ),
        case(
            "SET_VRING_NUM with a 2-byte body",
            SET_VRING_NUM,
            vec![0; 2],
            vec![],
        ),
        case(
            "SET_MEM_TABLE with a 6-byte body",
            SET_MEM_TABLE,
            vec![1, 0, 0, 0, 0, 0],
            vec![Fd::Mem],
        ),
        case("GET_CONFIG with an empty body", GET_CONFIG, vec![], vec![]),
        MsgCase {
            size: Some(0x1_0000),
            ..case(
                "header claims 64 KiB, none sent",
                GET_FEATURES,
                vec![],
                vec![],
            )
        },
        MsgCase {
            size: Some(u32::MAX),
            ..case("header claims 4 GiB", SET_FEATURES, vec![0; 8], vec![])
        },
        case("unknown request 999", 999, vec![0; 8], vec![]),
        // Bad fds.
        case(
            "SET_VRING_KICK without its fd",
            SET_VRING_KICK,
            0u64.to_le_bytes().to_vec(),
            vec![],
        ),
        case(
            "SET_VRING_CALL with three fds",
            SET_VRING_CALL,
            0u64.to_le_bytes().to_vec(),
            vec![Fd::Event, Fd::Event, Fd::Event],
        ),
        // A kick fd that never becomes readable: the queue just never runs.
        MsgCase {
            may_accept: true,
            ..case(
                "SET_VRING_KICK with /dev/null",
                SET_VRING_KICK,
                0u64.to_le_bytes().to_vec(),
                vec![Fd::Null],
            )
        },
        case(
            "SET_MEM_TABLE of two regions with one fd",
            SET_MEM_TABLE,
            mem_table(&[ok_region, [REGION, REGION, UADDR + REGION, 0]]),
            vec![Fd::Mem],
        ),
        case(
            "SET_MEM_TABLE backed by /dev/null",
            SET_MEM_TABLE,
            mem_table(&[ok_region]),
            vec![Fd::Null],
        ),
        case(
            "GET_FEATURES with an fd",
            GET_FEATURES,
            vec![],
            vec![Fd::Event],
        ),
        case(
            "SET_BACKEND_REQ_FD with an eventfd",
            SET_BACKEND_REQ_FD,
            vec![],
            vec![Fd::Event],
        ),
        case(
            "SET_INFLIGHT_FD without its fd",
            SET_INFLIGHT_FD,
            vec![0; 24],
            vec![],
        ),
        // Queue indices out of range.
        case(
            "SET_VRING_NUM on queue 99",
            SET_VRING_NUM,
            state(99, 256),
            vec![],
        ),
        case(
            "SET_VRING_NUM on the first missing queue",
            SET_VRING_NUM,
            state(queues, 256),
            vec![],
        ),
        case(
            "SET_VRING_ADDR on queue 0xffff",
            SET_VRING_ADDR,
            addr,
            vec![],
        ),
        case(
            "SET_VRING_BASE on queue 1000",
            SET_VRING_BASE,
            state(1000, 0),
            vec![],
        ),
        case(
            "GET_VRING_BASE on queue 64",
            GET_VRING_BASE,
            state(64, 0),
            vec![],
        ),
        case(
            "SET_VRING_ENABLE on queue 500",
            SET_VRING_ENABLE,
            state(500, 1),
            vec![],
        ),
        case(
            "SET_VRING_KICK on queue 0xff",
            SET_VRING_KICK,
            0xffu64.to_le_bytes().to_vec(),
            vec![Fd::Event],
        ),
        case("SET_VRING_NUM 0", SET_VRING_NUM, state(0, 0), vec![]),
        // Taken as is; the queue then never passes the ready check.
        MsgCase {
            may_accept: true,
            ..case(
                "SET_VRING_NUM 3 (not a power of two)",
                SET_VRING_NUM,
                state(0, 3),
                vec![],
            )
        },
        case(
            "SET_VRING_NUM 65535",
            SET_VRING_NUM,
            state(0, 65535),
            vec![],
        ),
        // Memory tables.
        case(
            "overlapping regions",
            SET_MEM_TABLE,
            mem_table(&[ok_region, [0x8_0000, REGION, UADDR + REGION, 0]]),
            vec![Fd::Mem, Fd::Mem],
        ),
        case(
            "region of 64 TiB on a 1 MiB fd",
            SET_MEM_TABLE,
            mem_table(&[[0, 1 << 46, UADDR, 0]]),
            vec![Fd::Mem],
        ),
        case(
            "region offset past its fd",
            SET_MEM_TABLE,
            mem_table(&[[0, REGION, UADDR, 4 * REGION]]),
            vec![Fd::Mem],
        ),
        case(
            "region wraps the guest address space",
            SET_MEM_TABLE,
            mem_table(&[[u64::MAX - 0xfff, REGION, UADDR, 0]]),
            vec![Fd::Mem],
        ),
        case(
            "region of 0 bytes",
            SET_MEM_TABLE,
            mem_table(&[[0, 0, UADDR, 0]]),
            vec![Fd::Mem],
        ),
        case("empty memory table", SET_MEM_TABLE, mem_table(&[]), vec![]),
        case(
            "nine regions (the limit is eight)",
            SET_MEM_TABLE,
            mem_table(&[ok_region; 9]),
            vec![Fd::Mem; 9],
        ),
        case(
            "ADD_MEM_REG of 64 TiB",
            ADD_MEM_REG,
            [
                vec![0; 8],
                mem_table(&[[0, 1 << 46, UADDR, 0]])[8..].to_vec(),
            ]
            .concat(),
            vec![Fd::Mem],
        ),
    ]
}

fn new_fd(kind: Fd) -> File {
    match kind {
        Fd::Event => {
            // SAFETY: eventfd takes no pointers; checked below.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh descriptor nothing else owns.
            unsafe { File::from_raw_fd(fd) }
        }
        Fd::Mem => {
            let name = c"hostile-msg";
            // SAFETY: valid NUL-terminated name; checked below.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh descriptor nothing else owns.
            let f = unsafe { File::from_raw_fd(fd) };
            f.set_len(REGION).expect("size memfd");
            f
        }
        Fd::Null => File::open("/dev/null").expect("open /dev/null"),
    }
}

/// A raw vhost-user connection.
pub struct RawConn {
    s: UnixStream,
    buf: Vec<u8>,
}

/// What a read of one reply found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// A reply: request code and body.
    Msg(u32, Vec<u8>),
    /// The backend closed the connection.
    Closed,
    /// Nothing within the deadline.
    Timeout,
}

impl RawConn {
    /// Connects to `socket` (retrying until `limit`).
    pub fn connect(socket: &Path, limit: Duration) -> Self {
        RawConn {
            s: connect_stream(socket, limit),
            buf: Vec::new(),
        }
    }

    /// Sends one message with `fds`; `size` overrides the header's size.
    pub fn send(
        &self,
        request: u32,
        flags: u32,
        size: Option<u32>,
        body: &[u8],
        fds: &[RawFd],
    ) -> bool {
        let mut b = Vec::new();
        le32(&mut b, request);
        le32(&mut b, flags);
        le32(&mut b, size.unwrap_or(body.len() as u32));
        b.extend_from_slice(body);
        let mut sent = 0;
        while sent < b.len() {
            let with: &[RawFd] = if sent == 0 { fds } else { &[] };
            match self.s.send_with_fds(&[&b[sent..]], with) {
                Ok(0) | Err(_) => return false,
                Ok(n) => sent += n,
            }
        }
        true
    }

    /// Reads the next reply, waiting at most `limit`.
    pub fn reply(&mut self, limit: Duration) -> Reply {
        let end = Instant::now() + limit;
        loop {
            if self.buf.len() >= 12 {
                let w = |i: usize| {
                    u32::from_le_bytes([
                        self.buf[i],
                        self.buf[i + 1],
                        self.buf[i + 2],
                        self.buf[i + 3],
                    ])
                };
                let total = 12 + w(8) as usize;
                if self.buf.len() >= total {
                    let code = w(0);
                    let body = self.buf[12..total].to_vec();
                    self.buf.drain(..total);
                    return Reply::Msg(code, body);
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Reply::Timeout;
            }
            self.s.set_read_timeout(Some(left)).expect("read timeout");
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return Reply::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Reply::Timeout
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Reply::Closed,
            }
        }
    }

    /// Reads replies until one to `request`; panics on anything else.
    fn expect(&mut self, request: u32, limit: Duration) -> Vec<u8> {
        match self.reply(limit) {
            Reply::Msg(c, body) if c == request => body,
            other => panic!("waiting for the reply to {request}: {other:?}"),
        }
    }

    /// SET_OWNER, features and protocol features as offered (protocol:
    /// [`PROTOCOL_WANTED`] of them).
    pub fn negotiate(&mut self, limit: Duration) {
        assert!(self.send(SET_OWNER, V1, None, &[], &[]));
        assert!(self.send(GET_FEATURES, V1, None, &[], &[]));
        let f = self.expect(GET_FEATURES, limit);
        assert!(self.send(SET_FEATURES, V1, None, &f, &[]));
        assert!(self.send(GET_PROTOCOL_FEATURES, V1, None, &[], &[]));
        let p = self.expect(GET_PROTOCOL_FEATURES, limit);
        let p = u64::from_le_bytes(p[..8].try_into().expect("8 bytes")) & PROTOCOL_WANTED;
        assert!(self.send(SET_PROTOCOL_FEATURES, V1, None, &p.to_le_bytes(), &[]));
    }

    /// Sends `c` with NEED_REPLY, then probes with GET_FEATURES.
    pub fn try_case(&mut self, c: &MsgCase, limit: Duration) -> Verdict {
        let files: Vec<File> = c.fds.iter().map(|&k| new_fd(k)).collect();
        let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        if !self.send(c.request, V1_ACK, c.size, &c.body, &fds) {
            return Verdict::Dropped;
        }
        if !self.send(GET_FEATURES, V1, None, &[], &[]) {
            return Verdict::Dropped;
        }
        let mut ack = None;
        loop {
            match self.reply(limit) {
                Reply::Msg(GET_FEATURES, _) if c.request != GET_FEATURES || ack.is_some() => {
                    return Verdict::Survived { ack }
                }
                // The ack (or answer) to the malformed message itself.
                Reply::Msg(_, body) => {
                    ack = Some(body.get(..8).map_or(u64::MAX, |b| {
                        u64::from_le_bytes(b.try_into().expect("8 bytes"))
                    }));
                }
                Reply::Closed => return Verdict::Dropped,
                Reply::Timeout => return Verdict::Stalled,
            }
        }
    }
}

/// Sends every case of [`message_cases`] to the backend on `socket`, each on
/// a new connection after a normal negotiation; after each, `alive` must
/// serve a correct frontend (it connects its own). Returns the verdicts.
pub fn run_message_cases(
    socket: &Path,
    queues: u32,
    limit: Duration,
    mut alive: impl FnMut(&str),
) -> Vec<(&'static str, Verdict)> {
    let mut out = Vec::new();
    for c in message_cases(queues) {
        let mut conn = RawConn::connect(socket, limit);
        conn.negotiate(limit);
        // A stalled backend is waiting for bytes: a short probe is enough.
        let v = conn.try_case(&c, Duration::from_secs(2).min(limit));
        drop(conn);
        assert!(
            c.may_accept || v != Verdict::Survived { ack: Some(0) },
            "{}: accepted",
            c.what
        );
        alive(c.what);
        out.push((c.what, v));
    }
    for (what, v) in &out {
        eprintln!("malformed message: {what:45} -> {v:?}, then served a new frontend");
    }
    out
}
