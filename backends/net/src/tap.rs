//! The host side: a tap device opened with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR` (and `IFF_MULTI_QUEUE` for several queue pairs), one
//! non-blocking fd per queue pair. Opening by name needs `CAP_NET_ADMIN`;
//! fds handed over with `--tap-fd` need no privilege.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::net::{HDR_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
const IFF_ATTACH_QUEUE: libc::c_short = 0x0200;
const IFF_DETACH_QUEUE: libc::c_short = 0x0400;

/// Errors of the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// The interface name is too long or has a NUL.
    #[error("bad tap name {0:?}")]
    Name(String),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to tap {name}: {source}")]
    SetIff {
        /// Interface.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A `--tap-fd` is not a tap with a vnet header.
    #[error("fd {fd} is not a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR: {why}")]
    NotTap {
        /// The fd.
        fd: RawFd,
        /// What was wrong.
        why: String,
    },
    /// Another ioctl or fcntl failed.
    #[error("tap {what}: {source}")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn zeroed() -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }
}

/// One tap queue (one fd).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn ioctl_int(
    fd: RawFd,
    req: libc::c_ulong,
    val: &libc::c_int,
    what: &'static str,
) -> Result<(), TapError> {
    // SAFETY: `fd` is an open tun fd; the request takes a pointer to an int
    // that lives for the call.
    let r = unsafe { libc::ioctl(fd, req, val as *const libc::c_int) };
    if r < 0 {
        return Err(TapError::Ioctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Tap {
    /// Opens `queues` fds of the tap `name` (created if missing).
    pub fn open_named(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Err(TapError::Name(name.to_string()));
        }
        let mut taps = Vec::new();
        for _ in 0..queues {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(TapError::OpenTun)?;
            let mut req = IfReq::zeroed();
            for (d, s) in req.name.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if queues > 1 {
                req.flags |= IFF_MULTI_QUEUE;
            }
            // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
            // `IfReq` lays out (40 bytes); it lives for the call.
            let r = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
            if r < 0 {
                return Err(TapError::SetIff {
                    name: name.to_string(),
                    source: io::Error::last_os_error(),
                });
            }
            let tap = Tap {
                file,
                name: name.to_string(),
            };
            tap.set_vnet_hdr_len()?;
            taps.push(tap);
        }
        Ok(taps)
    }

    /// Takes over an fd of an attached tap (checked with `TUNGETIFF`).
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        let not_tap = |why: String| TapError::NotTap { fd, why };
        // SAFETY: fcntl(F_GETFD) on any integer only inspects the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(not_tap(io::Error::last_os_error().to_string()));
        }
        let mut req = IfReq::zeroed();
        // SAFETY: TUNGETIFF writes one `struct ifreq` into `req`; on a
        // non-tun fd it fails without writing.
        let r = unsafe { libc::ioctl(fd, TUNGETIFF, &mut req as *mut IfReq) };
        if r < 0 {
            return Err(not_tap(io::Error::last_os_error().to_string()));
        }
        let need = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if req.flags & need != need {
            return Err(not_tap(format!("flags {:#x}", req.flags)));
        }
        // SAFETY: the fd is open (checked above) and handed to us by the
        // command line: from here on this process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        // SAFETY: plain fcntl calls on the fd we now own.
        let ok = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0
                && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
                && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) >= 0
        };
        if !ok {
            return Err(TapError::Ioctl {
                what: "fcntl",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `name` is NUL-terminated within IFNAMSIZ by the kernel.
        let name = unsafe { CStr::from_ptr(req.name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let tap = Tap { file, name };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        let len = HDR_LEN as libc::c_int;
        ioctl_int(
            self.file.as_raw_fd(),
            TUNSETVNETHDRSZ,
            &len,
            "TUNSETVNETHDRSZ",
        )
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the offloads (`TUN_F_*`) the tap may hand us.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        let v = flags as libc::c_uint;
        // SAFETY: TUNSETOFFLOAD takes the flags by value (an unsigned int as
        // the ioctl argument); no memory is passed.
        let r =
            unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(v)) };
        if r < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETOFFLOAD",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The offloads this tap accepts, probed by setting them (then cleared).
    pub fn probe_offloads(&self) -> u32 {
        let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        let ok = if self.set_offload(all).is_ok() {
            all
        } else if self.set_offload(TUN_F_CSUM).is_ok() {
            TUN_F_CSUM
        } else {
            0
        };
        let _ = self.set_offload(0);
        ok
    }

    fn set_queue(&self, flags: libc::c_short) -> Result<(), TapError> {
        let mut req = IfReq::zeroed();
        req.flags = flags;
        // SAFETY: TUNSETQUEUE reads one `struct ifreq` that lives for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETQUEUE, &mut req as *mut IfReq) };
        if r < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETQUEUE",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Attaches this queue of a multiqueue tap (it receives flows again).
    pub fn attach(&self) -> Result<(), TapError> {
        self.set_queue(IFF_ATTACH_QUEUE)
    }

    /// Detaches this queue of a multiqueue tap (the kernel steers its
    /// flows to the other queues).
    pub fn detach(&self) -> Result<(), TapError> {
        self.set_queue(IFF_DETACH_QUEUE)
    }

    /// Reads one packet (vnet header + frame); `WouldBlock` when empty.
    pub fn read_packet(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet (vnet header + frame).
    pub fn write_packet(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
