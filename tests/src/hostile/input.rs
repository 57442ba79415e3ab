//! virtio-input through the hostile frontend: config-space reads through
//! `SET_CONFIG` (select/subsel) + `GET_CONFIG`, event buffers on the
//! eventq, status events on the statusq, raw chains for the malformed
//! cases, plus `spawn_input` and an event-socket client.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;

use super::{Desc, HostileFrontend, Setup, F_WRITE};
use crate::proc::ChildGuard;

/// The event queue.
pub const EVENTQ: usize = 0;
/// The status queue.
pub const STATUSQ: usize = 1;
/// `VIRTIO_INPUT_CFG_ID_NAME`.
pub const CFG_ID_NAME: u8 = 0x01;
/// `VIRTIO_INPUT_CFG_ID_SERIAL`.
pub const CFG_ID_SERIAL: u8 = 0x02;
/// `VIRTIO_INPUT_CFG_ID_DEVIDS`.
pub const CFG_ID_DEVIDS: u8 = 0x03;
/// `VIRTIO_INPUT_CFG_PROP_BITS`.
pub const CFG_PROP_BITS: u8 = 0x10;
/// `VIRTIO_INPUT_CFG_EV_BITS`.
pub const CFG_EV_BITS: u8 = 0x11;
/// `VIRTIO_INPUT_CFG_ABS_INFO`.
pub const CFG_ABS_INFO: u8 = 0x12;
/// Bytes of `virtio_input_config`.
pub const CONFIG_SIZE: u32 = 136;

/// `(type, code, value)` of one event.
pub type Ev = (u16, u16, i32);

/// `EV_SYN`/`SYN_REPORT`.
pub const SYN: Ev = (0, 0, 0);

/// Decodes a `virtio_input_event`.
pub fn decode(b: &[u8]) -> Ev {
    (
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
        i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// Encodes a `virtio_input_event`.
pub fn encode(e: Ev) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&e.0.to_le_bytes());
    b[2..4].copy_from_slice(&e.1.to_le_bytes());
    b[4..].copy_from_slice(&e.2.to_le_bytes());
    b
}

/// Whether bit `n` of a config bitmap is set.
pub fn bit(map: &[u8], n: u16) -> bool {
    map.get(usize::from(n / 8))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// Starts `splitvm-input` with sockets in `dir` and `args` after
/// `--socket-path`; returns the guard, the vhost-user socket and the event
/// socket path (`dir/events.sock`, used when `args` name it).
pub fn spawn_input(dir: &Path, args: &[&str]) -> (ChildGuard, PathBuf, PathBuf) {
    let sock = dir.join("input.sock");
    let events = dir.join("events.sock");
    let mut cmd = Command::new(crate::bin_path("splitvm-input"));
    cmd.arg("--socket-path").arg(&sock).args(args);
    (ChildGuard::spawn("splitvm-input", cmd), sock, events)
}

/// Starts a profile backend with its event socket in `dir`.
pub fn spawn_profile(dir: &Path, profile: &str, extra: &[&str]) -> (ChildGuard, PathBuf, PathBuf) {
    let events = dir.join("events.sock");
    let ev = events.to_str().expect("utf-8 path").to_string();
    let mut args = vec!["--profile", profile, "--event-socket", ev.as_str()];
    args.extend_from_slice(extra);
    spawn_input(dir, &args)
}

/// A client of the JSON event socket.
pub struct EventClient {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl EventClient {
    /// Connects, retrying until `limit` (the socket may not exist yet).
    pub fn connect(path: &Path, limit: Duration) -> Self {
        let s = crate::wait::wait_for(&format!("event socket {}", path.display()), limit, || {
            UnixStream::connect(path).ok()
        });
        EventClient {
            w: s.try_clone().expect("clone event socket"),
            r: BufReader::new(s),
        }
    }

    /// Writes one line.
    pub fn send(&mut self, line: &str) {
        writeln!(self.w, "{line}").expect("write event socket");
    }

    /// Reads one line within `limit`; `None` at the deadline.
    pub fn try_line(&mut self, limit: Duration) -> Option<String> {
        let end = Instant::now() + limit;
        let mut s = String::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.r
                .get_ref()
                .set_read_timeout(Some(left))
                .expect("read timeout");
            match self.r.read_line(&mut s) {
                Ok(0) => panic!("event socket closed"),
                Ok(_) => return Some(s.trim_end().to_string()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("read event socket: {e}"),
            }
        }
    }

    /// Reads one line or panics after `limit`.
    pub fn line(&mut self, limit: Duration) -> String {
        self.try_line(limit)
            .unwrap_or_else(|| panic!("no line from the event socket within {limit:?}"))
    }

    /// Sends a ping and returns every line before the pong (errors, LEDs):
    /// after it, every earlier line of this connection has been queued.
    pub fn sync(&mut self, limit: Duration) -> Vec<String> {
        self.send(r#"{"ping":"sync"}"#);
        let mut before = Vec::new();
        loop {
            let l = self.line(limit);
            if l.contains(r#""pong":"sync""#) {
                return before;
            }
            before.push(l);
        }
    }
}

/// An input device driven through the hostile frontend.
pub struct InputDev {
    /// The frontend.
    pub fe: HostileFrontend,
    /// Buffer gpa of each outstanding head, per queue.
    pub outstanding: [HashMap<u16, u64>; 2],
}

impl InputDev {
    /// Connects with both queues set up.
    pub fn connect(socket: &Path) -> Self {
        Self::connect_with(
            socket,
            Setup {
                queues: 2,
                ..Setup::default()
            },
        )
    }

    /// Connects with `setup` (its `queues` should be 2).
    pub fn connect_with(socket: &Path, setup: Setup) -> Self {
        InputDev {
            fe: HostileFrontend::connect(socket, setup),
            outstanding: [HashMap::new(), HashMap::new()],
        }
    }

    /// Selects `select`/`subsel` with `SET_CONFIG` and returns the payload
    /// (`size` bytes) that `GET_CONFIG` then reports.
    pub fn select(&mut self, select: u8, subsel: u8) -> Vec<u8> {
        self.fe
            .fe
            .set_config(0, VhostUserConfigFlags::WRITABLE, &[select, subsel])
            .expect("SET_CONFIG");
        let b = self.fe.config(0, CONFIG_SIZE);
        assert_eq!(b.len(), CONFIG_SIZE as usize, "GET_CONFIG size");
        assert_eq!((b[0], b[1]), (select, subsel), "select/subsel read back");
        let size = usize::from(b[2]);
        assert!(size <= 128, "size {size}");
        b[8..8 + size].to_vec()
    }

    /// The config string at `select` (name, serial).
    pub fn string(&mut self, select: u8) -> String {
        String::from_utf8(self.select(select, 0)).expect("utf-8 config string")
    }

    /// `(min, max, fuzz, flat, res)` of an absolute axis, or `None`.
    pub fn abs_info(&mut self, axis: u8) -> Option<[i32; 5]> {
        let p = self.select(CFG_ABS_INFO, axis);
        if p.is_empty() {
            return None;
        }
        assert_eq!(p.len(), 20, "virtio_input_absinfo size");
        let v = |i: usize| i32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        Some([v(0), v(4), v(8), v(12), v(16)])
    }

    /// See [`HostileFrontend::alloc`].
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.fe.alloc(len)
    }

    /// See [`HostileFrontend::write_raw`].
    pub fn write_raw(&mut self, q: usize, descs: &[Desc]) -> u16 {
        self.fe.write_raw(q, descs)
    }

    /// Posts `n` empty 8-byte event buffers on the eventq (one kick).
    pub fn post_event_buffers(&mut self, n: usize) {
        let mut heads = Vec::new();
        for _ in 0..n {
            let at = self.alloc(8);
            self.fe.mem.write(at, &[0xee; 8]);
            let head = self.write_raw(
                EVENTQ,
                &[Desc {
                    addr: at,
                    len: 8,
                    flags: F_WRITE,
                    next: 0,
                }],
            );
            self.outstanding[EVENTQ].insert(head, at);
            heads.push(head);
        }
        self.fe.submit_many(EVENTQ, &heads);
    }

    /// Waits for `n` used event buffers; returns their events in used order.
    pub fn events(&mut self, n: usize) -> Vec<Ev> {
        (0..n)
            .map(|_| {
                let (id, len) = self.fe.wait_used(EVENTQ);
                assert_eq!(len, 8, "used length of an event buffer");
                let at = self.outstanding[EVENTQ]
                    .remove(&(id as u16))
                    .unwrap_or_else(|| panic!("used id {id} was not outstanding"));
                decode(&self.fe.mem.read(at, 8))
            })
            .collect()
    }

    /// Puts `ev` on the statusq and waits for the buffer to come back.
    pub fn status(&mut self, ev: Ev) {
        let at = self.alloc(8);
        self.fe.mem.write(at, &encode(ev));
        let head = self.write_raw(
            STATUSQ,
            &[Desc {
                addr: at,
                len: 8,
                flags: 0,
                next: 0,
            }],
        );
        self.fe.submit(STATUSQ, head);
        let (id, _) = self.fe.wait_used(STATUSQ);
        assert_eq!(id, u32::from(head), "statusq used id");
    }
}

pub use crate::lab::guest_tools;
