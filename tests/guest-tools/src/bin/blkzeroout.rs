//! `blkzeroout DEV OFFSET LEN`: zeroes a byte range of a block device with
//! the `BLKZEROOUT` ioctl (the guest kernel turns it into virtio-blk
//! WRITE_ZEROES when the device offers it). Offsets take a `K`/`M`/`G` suffix.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use splitvm_guest_tools::ioc;

/// `BLKZEROOUT` = `_IO(0x12, 127)`.
const BLKZEROOUT: u64 = ioc(0, 0x12, 127, 0);

fn size(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or(format!("bad size {s:?}"))
}

fn run() -> Result<(), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [dev, off, len] = a.as_slice() else {
        return Err("usage: blkzeroout DEV OFFSET LEN".into());
    };
    let range = [size(off)?, size(len)?];
    let f = OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("{dev}: {e}"))?;
    // SAFETY: BLKZEROOUT reads a `u64[2]` (start, length) from the pointer,
    // which points at `range`, alive for the call; the fd is owned by `f`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if r < 0 {
        return Err(format!(
            "BLKZEROOUT {dev}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blkzeroout: {e}");
            ExitCode::from(1)
        }
    }
}
