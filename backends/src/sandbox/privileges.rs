//! rlimits, `no_new_privs` and the capability drop.

use std::io;

use log::{info, warn};

/// `RLIMIT_CORE` 0 (guest data never lands in a core file) and
/// `RLIMIT_NOFILE` `max_files` (never above the current hard limit).
pub(super) fn set_rlimits(max_files: u64) {
    let core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; no other memory is touched.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &core) } != 0 {
        warn!(
            "sandbox: rlimit: core dumps stay allowed: {}",
            io::Error::last_os_error()
        );
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } == 0;
    let max = if got {
        cur.rlim_max.min(max_files)
    } else {
        max_files
    };
    let files = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &files) } != 0 {
        warn!(
            "sandbox: rlimit: open files stay unbounded: {}",
            io::Error::last_os_error()
        );
    } else {
        info!("sandbox: rlimits: no core dumps, at most {max} open files");
    }
}

/// `PR_SET_NO_NEW_PRIVS`: no exec can gain privileges again (and the
/// precondition of unprivileged Landlock and seccomp).
pub(super) fn no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empties the bounding and ambient sets, then the effective, permitted
/// and inheritable sets (in the user namespace the process is in now).
pub(super) fn drop_capabilities() -> io::Result<()> {
    // The bounding set: until the kernel says the number is past the last
    // capability (EINVAL). Dropping needs CAP_SETPCAP, still held here.
    let mut cap = 0;
    loop {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            warn!("sandbox: capabilities: bounding set kept capability {cap}: {e}");
        }
        cap += 1;
        if cap > 63 {
            break;
        }
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        warn!(
            "sandbox: capabilities: ambient set not cleared: {}",
            io::Error::last_os_error()
        );
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads the header and two data structs (version 3).
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    info!("sandbox: capabilities: all dropped");
    Ok(())
}
