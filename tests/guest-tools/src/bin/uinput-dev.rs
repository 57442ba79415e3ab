//! `uinput-dev NAME`: creates a uinput device called NAME that is a keyboard
//! (keys 1..=248, LEDs), a mouse (left/right/middle, REL_X/Y/WHEEL) and a
//! tablet (ABS_X/Y in 0..=32767) at once; prints `UINPUT-READY
//! /dev/input/eventN`; injects `type code value` lines read from stdin
//! (numbers; add your own `0 0 0` SYN); prints `LED code value` for every
//! LED event written to the device. Ends (removing the device) at stdin EOF.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::thread;

use splitvm_guest_tools::{
    ioc, parse_triple, read_events, write_event, EV_ABS, EV_KEY, EV_LED, EV_REL, EV_SYN,
};

const U: u8 = b'U';
const UI_DEV_CREATE: u64 = ioc(0, U, 1, 0);
const UI_DEV_DESTROY: u64 = ioc(0, U, 2, 0);
const UI_DEV_SETUP: u64 = ioc(1, U, 3, 92);
const UI_ABS_SETUP: u64 = ioc(1, U, 4, 28);
const UI_SET_EVBIT: u64 = ioc(1, U, 100, 4);
const UI_SET_KEYBIT: u64 = ioc(1, U, 101, 4);
const UI_SET_RELBIT: u64 = ioc(1, U, 102, 4);
const UI_SET_LEDBIT: u64 = ioc(1, U, 105, 4);
const UI_SET_ABSBIT: u64 = ioc(1, U, 103, 4);

fn ioctl_val(f: &File, req: u64, v: libc::c_int) -> io::Result<()> {
    // SAFETY: the UI_SET_*BIT and UI_DEV_* ioctls take an int by value (or
    // nothing); no memory is passed. The fd is owned by `f`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, libc::c_long::from(v)) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_ptr(f: &File, req: u64, buf: &[u8]) -> io::Result<()> {
    // SAFETY: `req` is UI_DEV_SETUP or UI_ABS_SETUP, whose size field equals
    // `buf.len()` (92, 28); the kernel only reads that many bytes from `buf`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, buf.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sysname(f: &File) -> io::Result<String> {
    let mut b = [0u8; 64];
    // SAFETY: UI_GET_SYSNAME(64) writes at most 64 bytes into `b`.
    let r = unsafe {
        libc::ioctl(
            f.as_raw_fd(),
            ioc(2, U, 44, b.len() as u64) as _,
            b.as_mut_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

fn create(name: &str) -> io::Result<(File, String)> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/uinput")?;
    for t in [EV_SYN, EV_KEY, EV_REL, EV_ABS, EV_LED] {
        ioctl_val(&f, UI_SET_EVBIT, t.into())?;
    }
    for k in (1..=248).chain([0x110, 0x111, 0x112]) {
        ioctl_val(&f, UI_SET_KEYBIT, k)?;
    }
    for r in [0, 1, 8] {
        ioctl_val(&f, UI_SET_RELBIT, r)?;
    }
    for l in [0, 1, 2] {
        ioctl_val(&f, UI_SET_LEDBIT, l)?;
    }
    for axis in [0u16, 1] {
        ioctl_val(&f, UI_SET_ABSBIT, axis.into())?;
        let mut s = [0u8; 28];
        s[..2].copy_from_slice(&axis.to_le_bytes());
        // absinfo at offset 4: value, minimum, maximum, fuzz, flat, resolution.
        s[12..16].copy_from_slice(&32767i32.to_le_bytes());
        ioctl_ptr(&f, UI_ABS_SETUP, &s)?;
    }
    let mut setup = [0u8; 92];
    // input_id: bustype BUS_VIRTUAL, vendor "SV", product 0x10, version 1.
    setup[..8].copy_from_slice(&[6, 0, 0x56, 0x53, 0x10, 0, 1, 0]);
    let n = name.len().min(79);
    setup[8..8 + n].copy_from_slice(&name.as_bytes()[..n]);
    ioctl_ptr(&f, UI_DEV_SETUP, &setup)?;
    ioctl_val(&f, UI_DEV_CREATE, 0)?;
    let sys = sysname(&f)?;
    let dir = format!("/sys/devices/virtual/input/{sys}");
    let ev = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("event"))
        .ok_or_else(|| io::Error::other(format!("no event node under {dir}")))?;
    Ok((f, format!("/dev/input/{ev}")))
}

fn run() -> Result<(), String> {
    let name = std::env::args()
        .nth(1)
        .ok_or("usage: uinput-dev NAME < events")?;
    let (f, node) = create(&name).map_err(|e| format!("creating the uinput device: {e}"))?;
    println!("UINPUT-READY {node}");
    let reader = f.try_clone().map_err(|e| e.to_string())?;
    thread::spawn(move || loop {
        match read_events(&reader) {
            Ok(evs) => {
                for e in evs.into_iter().filter(|e| e.0 == EV_LED) {
                    println!("LED {} {}", e.1, e.2);
                }
            }
            Err(e) => {
                eprintln!("uinput-dev: read: {e}");
                return;
            }
        }
    });
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_triple(&line) {
            Some(e) => write_event(&f, e).map_err(|e| format!("inject: {e}"))?,
            None => eprintln!("uinput-dev: ignoring {line:?} (want: type code value)"),
        }
    }
    let _ = ioctl_val(&f, UI_DEV_DESTROY, 0);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uinput-dev: {e}");
            ExitCode::from(1)
        }
    }
}
