//! A host evdev device (`/dev/input/eventN`): its identity and capabilities
//! through the `EVIOCG*` ioctls, an optional exclusive grab, event reads,
//! and LED writes. [`EvdevSource`] runs the reader thread that forwards
//! events to the [`EventHub`] and, when the device is unplugged, waits for
//! its node to come back and resumes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use log::{info, warn};

use crate::hub::{EventHub, StatusSink};
use crate::input::{
    set_bit, AbsInfo, Capabilities, DevIds, InputEvent, CFG_PAYLOAD, EV_ABS, EV_MAX, EV_SYN,
    SYN_DROPPED,
};

/// Errors of the evdev device.
#[derive(Debug, thiserror::Error)]
pub enum EvdevError {
    /// The device node could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Device path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An `EVIOCG*` ioctl failed (not an evdev node?).
    #[error("{what} on {path}: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// Device path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The reader thread could not be started.
    #[error("cannot start the evdev reader thread: {0}")]
    Thread(#[source] io::Error),
}

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((b'E' as u64) << 8) | nr
}

/// `sizeof(struct input_event)` on 64-bit Linux (timeval, type, code, value).
pub const RAW_EVENT_SIZE: usize = 24;

/// An open evdev device.
#[derive(Debug)]
pub struct EvdevDevice {
    file: File,
    path: PathBuf,
}

impl EvdevDevice {
    /// Opens `path` read-write (read-only if that is refused), blocking reads.
    pub fn open(path: &Path) -> Result<Self, EvdevError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .or_else(|_| File::open(path))
            .map_err(|source| EvdevError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(EvdevDevice {
            file,
            path: path.to_path_buf(),
        })
    }

    fn ioctl_buf(&self, what: &'static str, req: u64, buf: &mut [u8]) -> Result<usize, EvdevError> {
        // SAFETY: `req` is a read ioctl whose size field is at most
        // `buf.len()` (every caller builds it from the buffer's length), so
        // the kernel writes only inside `buf`; the fd is owned by `self`.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, buf.as_mut_ptr()) };
        if r < 0 {
            return Err(EvdevError::Ioctl {
                what,
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(usize::try_from(r).unwrap_or(0).min(buf.len()))
    }

    fn string(&self, what: &'static str, nr: u64) -> Result<String, EvdevError> {
        let mut b = [0u8; CFG_PAYLOAD];
        let n = self.ioctl_buf(what, ioc(IOC_READ, nr, b.len() as u64), &mut b)?;
        let s = &b[..n];
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        Ok(String::from_utf8_lossy(&s[..end]).into_owned())
    }

    fn bits(&self, what: &'static str, nr: u64) -> Result<Vec<u8>, EvdevError> {
        let mut b = vec![0u8; CFG_PAYLOAD];
        let n = self.ioctl_buf(what, ioc(IOC_READ, nr, b.len() as u64), &mut b)?;
        b.truncate(n);
        Ok(b)
    }

    /// Identity and capabilities, read with `EVIOCGNAME`, `EVIOCGUNIQ`,
    /// `EVIOCGID`, `EVIOCGPROP`, `EVIOCGBIT` per type and `EVIOCGABS`.
    pub fn capabilities(&self) -> Result<Capabilities, EvdevError> {
        let name = self.string("EVIOCGNAME", 0x06)?;
        // Many devices have no unique id: the ioctl fails with ENOENT.
        let serial = self.string("EVIOCGUNIQ", 0x08).unwrap_or_default();
        let mut id = [0u8; 8];
        self.ioctl_buf("EVIOCGID", ioc(IOC_READ, 0x02, 8), &mut id)?;
        let w = |i: usize| u16::from_le_bytes([id[i], id[i + 1]]);
        let props = self.bits("EVIOCGPROP", 0x09).unwrap_or_default();
        let mut caps = Capabilities {
            name,
            serial,
            ids: DevIds {
                bustype: w(0),
                vendor: w(2),
                product: w(4),
                version: w(6),
            },
            props,
            ..Default::default()
        };
        let types = self.bits("EVIOCGBIT(0)", 0x20)?;
        for t in 1..=EV_MAX {
            if !crate::input::test_bit(&types, t) {
                continue;
            }
            let bits = self.bits("EVIOCGBIT", 0x20 + u64::from(t))?;
            if bits.iter().all(|&b| b == 0) {
                // Still announce the type (EV_REP has no code bits).
                caps.ev_bits.entry(t).or_default();
                continue;
            }
            let mut map = Vec::new();
            for (i, byte) in bits.iter().enumerate() {
                for bit in 0..8u16 {
                    if byte & (1 << bit) != 0 {
                        if let Ok(code) = u16::try_from(i * 8) {
                            set_bit(&mut map, code + bit);
                        }
                    }
                }
            }
            caps.ev_bits.insert(t, map);
        }
        let abs_codes: Vec<u16> = caps
            .ev_bits
            .get(&EV_ABS)
            .map(|m| {
                (0..0x40u16)
                    .filter(|&c| crate::input::test_bit(m, c))
                    .collect()
            })
            .unwrap_or_default();
        for code in abs_codes {
            let mut a = [0u8; 24];
            self.ioctl_buf(
                "EVIOCGABS",
                ioc(IOC_READ, 0x40 + u64::from(code), 24),
                &mut a,
            )?;
            let v = |i: usize| i32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            caps.abs.insert(
                code,
                AbsInfo {
                    min: v(4),
                    max: v(8),
                    fuzz: v(12),
                    flat: v(16),
                    res: v(20),
                },
            );
        }
        Ok(caps)
    }

    /// Takes (or releases) exclusive use of the device (`EVIOCGRAB`).
    pub fn grab(&self, on: bool) -> Result<(), EvdevError> {
        let arg: libc::c_int = on.into();
        // SAFETY: EVIOCGRAB takes its argument by value (an int, cast to a
        // pointer-sized argument), so no memory is passed to the kernel.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                ioc(IOC_WRITE, 0x90, 4) as _,
                libc::c_long::from(arg),
            )
        };
        if r < 0 {
            return Err(EvdevError::Ioctl {
                what: "EVIOCGRAB",
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Blocks until events arrive; returns them (whole records only).
    pub fn read_events(&self) -> io::Result<Vec<InputEvent>> {
        let mut buf = [0u8; RAW_EVENT_SIZE * 64];
        let n = (&self.file).read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        Ok(buf[..n]
            .chunks_exact(RAW_EVENT_SIZE)
            .map(|r| {
                InputEvent::new(
                    u16::from_le_bytes([r[16], r[17]]),
                    u16::from_le_bytes([r[18], r[19]]),
                    i32::from_le_bytes([r[20], r[21], r[22], r[23]]),
                )
            })
            .collect())
    }

    /// Writes one event (an LED, a sound) followed by nothing: the kernel
    /// applies `EV_LED` writes at once.
    pub fn write_event(&self, ev: InputEvent) -> io::Result<()> {
        let mut r = [0u8; RAW_EVENT_SIZE];
        r[16..18].copy_from_slice(&ev.type_.to_le_bytes());
        r[18..20].copy_from_slice(&ev.code.to_le_bytes());
        r[20..24].copy_from_slice(&ev.value.to_le_bytes());
        (&self.file).write_all(&r)
    }
}

/// The evdev event source: reader thread plus the LED sink.
pub struct EvdevSource {
    path: PathBuf,
    grab: bool,
    current: Mutex<Option<Arc<EvdevDevice>>>,
}

/// First and last delay between checks for an unplugged device's node.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));

impl EvdevSource {
    /// Opens the device (and grabs it with `grab`); returns the source and
    /// the device's capabilities.
    pub fn open(path: &Path, grab: bool) -> Result<(Arc<Self>, Capabilities), EvdevError> {
        let dev = EvdevDevice::open(path)?;
        let caps = dev.capabilities()?;
        if grab {
            dev.grab(true)?;
        }
        Ok((
            Arc::new(EvdevSource {
                path: path.to_path_buf(),
                grab,
                current: Mutex::new(Some(Arc::new(dev))),
            }),
            caps,
        ))
    }

    fn current(&self) -> Option<Arc<EvdevDevice>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_current(&self, d: Option<Arc<EvdevDevice>>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = d;
    }

    /// Starts the reader thread (`evdev`), which runs for the life of the process.
    pub fn start(self: &Arc<Self>, hub: Arc<EventHub>) -> Result<(), EvdevError> {
        let me = self.clone();
        thread::Builder::new()
            .name("evdev".into())
            .spawn(move || me.run(&hub))
            .map(|_| ())
            .map_err(EvdevError::Thread)
    }

    fn run(&self, hub: &EventHub) {
        loop {
            let Some(dev) = self.current() else {
                self.wait_for_device(hub);
                continue;
            };
            match dev.read_events() {
                Ok(events) => forward(hub, &events),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(
                        "{}: device gone ({e}); waiting for it to come back",
                        self.path.display()
                    );
                    hub.discard_partial();
                    self.set_current(None);
                }
            }
        }
    }

    /// Polls for the node with exponential backoff, reopens and resumes.
    fn wait_for_device(&self, hub: &EventHub) {
        let mut delay = BACKOFF.0;
        loop {
            if self.path.exists() {
                match self.reopen() {
                    Ok((dev, caps)) => {
                        if hub.with_capabilities(|c| *c != caps) {
                            warn!(
                                "{}: the device came back with other capabilities ({}); \
                                 the guest keeps the old ones until it re-probes",
                                self.path.display(),
                                caps.name
                            );
                            hub.set_capabilities(caps);
                        }
                        info!("{}: device is back; resuming", self.path.display());
                        self.set_current(Some(Arc::new(dev)));
                        return;
                    }
                    Err(e) => log::debug!("{}: not ready yet: {e}", self.path.display()),
                }
            }
            thread::sleep(delay);
            delay = (delay * 2).min(BACKOFF.1);
        }
    }

    fn reopen(&self) -> Result<(EvdevDevice, Capabilities), EvdevError> {
        let dev = EvdevDevice::open(&self.path)?;
        let caps = dev.capabilities()?;
        if self.grab {
            dev.grab(true)?;
        }
        Ok((dev, caps))
    }
}

/// Forwards read events; a `SYN_DROPPED` discards the report being built.
fn forward(hub: &EventHub, events: &[InputEvent]) {
    let mut start = 0;
    for (i, e) in events.iter().enumerate() {
        if e.type_ == EV_SYN && e.code == SYN_DROPPED {
            hub.push(&events[start..i]);
            hub.discard_partial();
            start = i + 1;
        }
    }
    if start < events.len() {
        hub.push(&events[start..]);
    }
}

impl StatusSink for EvdevSource {
    fn status(&self, ev: InputEvent) {
        let Some(dev) = self.current() else {
            log::debug!("status event {ev:?} while the device is gone: dropped");
            return;
        };
        if let Err(e) = dev.write_event(ev) {
            warn!("{}: writing status event: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values from linux/input.h on x86_64.
        assert_eq!(ioc(IOC_READ, 0x02, 8), 0x8008_4502); // EVIOCGID
        assert_eq!(ioc(IOC_WRITE, 0x90, 4), 0x4004_4590); // EVIOCGRAB
        assert_eq!(ioc(IOC_READ, 0x40, 24), 0x8018_4540); // EVIOCGABS(0)
        assert_eq!(ioc(IOC_READ, 0x06, 128), 0x8080_4506); // EVIOCGNAME(128)
    }

    #[test]
    fn a_file_that_is_not_evdev_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = EvdevSource::open(f.path(), false).err().unwrap();
        assert!(
            matches!(
                err,
                EvdevError::Ioctl {
                    what: "EVIOCGNAME",
                    ..
                }
            ),
            "{err}"
        );
        assert!(EvdevSource::open(Path::new("/nonexistent/event9"), false).is_err());
    }
}
