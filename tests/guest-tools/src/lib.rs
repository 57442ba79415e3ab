//! Shared bits of the guest helper binaries: `evread`, `blkzeroout`,
//! `uinput-dev`. Only std + libc, so `scripts/build-guest-tools` links them
//! statically for initramfs images.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

/// `sizeof(struct input_event)` on 64-bit Linux.
pub const RAW_EVENT_SIZE: usize = 24;
/// `EV_SYN`.
pub const EV_SYN: u16 = 0;
/// `EV_KEY`.
pub const EV_KEY: u16 = 1;
/// `EV_REL`.
pub const EV_REL: u16 = 2;
/// `EV_ABS`.
pub const EV_ABS: u16 = 3;
/// `EV_LED`.
pub const EV_LED: u16 = 0x11;

/// `_IOC(dir, ty, nr, size)`.
pub const fn ioc(dir: u64, ty: u8, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((ty as u64) << 8) | nr
}

/// `(type, code, value)` of one event.
pub type Ev = (u16, u16, i32);

/// The 24 bytes of a `struct input_event` (time left zero).
pub fn encode(e: Ev) -> [u8; RAW_EVENT_SIZE] {
    let mut r = [0u8; RAW_EVENT_SIZE];
    r[16..18].copy_from_slice(&e.0.to_le_bytes());
    r[18..20].copy_from_slice(&e.1.to_le_bytes());
    r[20..24].copy_from_slice(&e.2.to_le_bytes());
    r
}

/// Decodes whole `struct input_event` records.
pub fn decode(buf: &[u8]) -> Vec<Ev> {
    buf.chunks_exact(RAW_EVENT_SIZE)
        .map(|r| {
            (
                u16::from_le_bytes([r[16], r[17]]),
                u16::from_le_bytes([r[18], r[19]]),
                i32::from_le_bytes([r[20], r[21], r[22], r[23]]),
            )
        })
        .collect()
}

/// Writes one event to an evdev or uinput fd.
pub fn write_event(f: &File, e: Ev) -> io::Result<()> {
    (&*f).write_all(&encode(e))
}

/// Waits until `f` is readable (`true`) or `limit` passes (`false`).
pub fn wait_readable(f: &File, limit: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(limit.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd on the stack, count 1; poll only writes `revents`.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r > 0)
}

/// Reads what is there (blocking once): whole events.
pub fn read_events(f: &File) -> io::Result<Vec<Ev>> {
    let mut buf = [0u8; RAW_EVENT_SIZE * 64];
    let n = (&*f).read(&mut buf)?;
    Ok(decode(&buf[..n]))
}

/// `/dev/input/eventN` whose device is named `name` (from
/// `/sys/class/input/eventN/device/name`).
pub fn find_by_name(name: &str) -> Option<PathBuf> {
    let mut hits: Vec<String> = fs::read_dir("/sys/class/input")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("event"))
        .filter(|n| {
            fs::read_to_string(format!("/sys/class/input/{n}/device/name"))
                .is_ok_and(|s| s.trim_end() == name)
        })
        .collect();
    hits.sort();
    hits.first()
        .map(|n| PathBuf::from(format!("/dev/input/{n}")))
}

/// Parses `"type code value"` (numbers).
pub fn parse_triple(line: &str) -> Option<Ev> {
    let mut it = line.split_whitespace();
    let t = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    let v = it.next()?.parse().ok()?;
    it.next().is_none().then_some((t, c, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trip() {
        assert_eq!(decode(&encode((1, 30, -1))), vec![(1, 30, -1)]);
        assert_eq!(parse_triple("1 30 1"), Some((1, 30, 1)));
        assert_eq!(parse_triple("1 30"), None);
        assert_eq!(ioc(1, b'U', 100, 4), 0x4004_5564); // UI_SET_EVBIT
    }
}
