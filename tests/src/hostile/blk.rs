//! virtio-blk requests for the hostile frontend: well-formed ones
//! (read/write/flush/get_id/discard/write_zeroes) and raw chains for the
//! malformed ones, plus `spawn_blk` to start the real backend.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Desc, HostileFrontend, Setup, F_WRITE};
use crate::proc::ChildGuard;

/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Get serial.
pub const T_GET_ID: u32 = 8;
/// Discard.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;
/// Status: ok.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported.
pub const S_UNSUPP: u8 = 2;
/// What the harness puts in a status byte before submitting.
pub const S_UNTOUCHED: u8 = 0xa5;
/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u64 = 1 << 5;

/// Starts `splitvm-blk` on `image` with a socket in `dir`.
pub fn spawn_blk(dir: &Path, image: &Path, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let sock = dir.join("blk.sock");
    let mut cmd = Command::new(crate::bin_path("splitvm-blk"));
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--image")
        .arg(image)
        .args(extra);
    (ChildGuard::spawn("splitvm-blk", cmd), sock)
}

/// A completed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status byte (or [`S_UNTOUCHED`]).
    pub status: u8,
    /// Used length the device reported.
    pub used_len: u32,
    /// Bytes of the device-writable data buffer.
    pub data: Vec<u8>,
}

/// A blk device driven through the hostile frontend.
pub struct BlkDev {
    /// The frontend.
    pub fe: HostileFrontend,
}

impl BlkDev {
    /// Connects to a blk backend at `socket`.
    pub fn connect(socket: &Path, setup: Setup) -> Self {
        BlkDev {
            fe: HostileFrontend::connect(socket, setup),
        }
    }

    /// A blk device on an already set-up frontend (for example one from
    /// [`super::inflight::connect`]).
    pub fn from_frontend(fe: HostileFrontend) -> Self {
        BlkDev { fe }
    }

    /// Capacity in sectors (config space).
    pub fn capacity(&mut self) -> u64 {
        let b = self.fe.config(0, 8);
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }

    /// See [`HostileFrontend::alloc`].
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.fe.alloc(len)
    }

    /// See [`HostileFrontend::buf`].
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        self.fe.buf(data)
    }

    /// Allocates a 16-byte request header.
    pub fn header(&mut self, type_: u32, sector: u64) -> u64 {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&type_.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.buf(&h)
    }

    /// Allocates a status byte set to [`S_UNTOUCHED`].
    pub fn status_byte(&mut self) -> u64 {
        self.buf(&[S_UNTOUCHED])
    }

    /// See [`HostileFrontend::submit_raw`].
    pub fn raw(&mut self, q: usize, descs: &[Desc]) -> (u32, u32) {
        self.fe.submit_raw(q, descs)
    }

    /// See [`HostileFrontend::write_raw`].
    pub fn write_raw(&mut self, q: usize, descs: &[Desc]) -> u16 {
        self.fe.write_raw(q, descs)
    }

    /// A request with a readable `out` payload and an `in_len`-byte
    /// writable data buffer (either may be empty), on queue `q`.
    pub fn request_on(
        &mut self,
        q: usize,
        type_: u32,
        sector: u64,
        out: &[u8],
        in_len: usize,
    ) -> Reply {
        let hdr = self.header(type_, sector);
        let mut descs = vec![Desc {
            addr: hdr,
            len: 16,
            ..Desc::default()
        }];
        if !out.is_empty() {
            let at = self.buf(out);
            descs.push(Desc {
                addr: at,
                len: out.len() as u32,
                ..Desc::default()
            });
        }
        let data = (in_len > 0).then(|| {
            let at = self.buf(&vec![0xeeu8; in_len]);
            descs.push(Desc {
                addr: at,
                len: in_len as u32,
                flags: F_WRITE,
                next: 0,
            });
            at
        });
        let st = self.status_byte();
        descs.push(Desc {
            addr: st,
            len: 1,
            flags: F_WRITE,
            next: 0,
        });
        let (_, used_len) = self.raw(q, &descs);
        Reply {
            status: self.fe.mem.read(st, 1)[0],
            used_len,
            data: data
                .map(|at| self.fe.mem.read(at, in_len))
                .unwrap_or_default(),
        }
    }

    /// [`request_on`](Self::request_on) queue 0.
    pub fn request(&mut self, type_: u32, sector: u64, out: &[u8], in_len: usize) -> Reply {
        self.request_on(0, type_, sector, out, in_len)
    }

    /// Reads `len` bytes from `sector`.
    pub fn read(&mut self, sector: u64, len: usize) -> Reply {
        self.request(T_IN, sector, &[], len)
    }

    /// Writes `data` at `sector`; returns the status.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        self.request(T_OUT, sector, data, 0).status
    }

    /// Flush; returns the status.
    pub fn flush(&mut self) -> u8 {
        self.request(T_FLUSH, 0, &[], 0).status
    }

    /// GET_ID into a 20-byte buffer.
    pub fn get_id(&mut self) -> Reply {
        self.request(T_GET_ID, 0, &[], 20)
    }

    /// Discard or write-zeroes `(sector, sectors)` ranges with `flags`.
    pub fn ranges(&mut self, type_: u32, ranges: &[(u64, u32)], flags: u32) -> u8 {
        let mut payload = Vec::new();
        for &(s, n) in ranges {
            payload.extend_from_slice(&s.to_le_bytes());
            payload.extend_from_slice(&n.to_le_bytes());
            payload.extend_from_slice(&flags.to_le_bytes());
        }
        self.request(type_, 0, &payload, 0).status
    }

    /// A known-good request after a hostile one: write then read back a
    /// sector; panics if the backend no longer serves correctly.
    pub fn assert_alive(&mut self, sector: u64) {
        let pattern: Vec<u8> = (0..512u32).map(|i| (i * 7 + sector as u32) as u8).collect();
        assert_eq!(
            self.write(sector, &pattern),
            S_OK,
            "write after hostile request"
        );
        let r = self.read(sector, 512);
        assert_eq!(r.status, S_OK, "read after hostile request");
        assert_eq!(r.data, pattern, "data after hostile request");
    }
}

impl super::cases::Device for BlkDev {
    fn fe(&mut self) -> &mut HostileFrontend {
        &mut self.fe
    }

    fn assert_alive(&mut self, _tag: &str) {
        BlkDev::assert_alive(self, 7);
    }
}
