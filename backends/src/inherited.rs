//! Descriptors a backend inherits from whoever started it. A shell, a
//! supervisor or a test harness can leave descriptors open across `exec`
//! (the vhost crate, for one, receives fds without `MSG_CMSG_CLOEXEC`, so a
//! frontend that then starts a backend hands it its inflight memfd). The
//! sandbox does not see them: Landlock checks opens, not descriptors that
//! are already open. So a backend closes, first thing in `main`, every
//! descriptor above stderr that its command line or environment does not
//! name.
//!
//! Named are: the values of flags whose name ends in `-fd` (`--socket-fd`,
//! `--tap-fd`, as `--x-fd N`, `--x-fd=N` or comma-separated), descriptors
//! given as paths (`/dev/fd/N`, `/proc/self/fd/N`, anywhere in an
//! argument), and the sockets of systemd socket activation (`LISTEN_FDS`,
//! from fd 3).

use std::ffi::OsString;
use std::io;
use std::os::fd::RawFd;

use crate::listener::LISTEN_FDS_START;

/// The descriptors above stderr that `args` (the whole command line,
/// program name included) and `listen_fds` (the `LISTEN_FDS` variable)
/// name. Sorted, without repeats.
pub fn named(args: &[OsString], listen_fds: Option<&str>) -> Vec<RawFd> {
    let mut keep = Vec::new();
    let mut takes_fd = false;
    for a in args {
        let a = a.to_string_lossy();
        if takes_fd {
            keep.extend(numbers(&a));
        }
        takes_fd = false;
        if let Some(flag) = a.strip_prefix("--") {
            match flag.split_once('=') {
                Some((name, value)) if name.ends_with("-fd") => keep.extend(numbers(value)),
                Some(_) => {}
                None => takes_fd = flag.ends_with("-fd"),
            }
        }
        for prefix in ["/dev/fd/", "/proc/self/fd/"] {
            for (i, _) in a.match_indices(prefix) {
                let digits: String = a[i + prefix.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                keep.extend(digits.parse::<RawFd>());
            }
        }
    }
    // However many sockets it claims: the listener reports a bad count
    // with the descriptors still there.
    if let Some(n) = listen_fds.and_then(|v| v.trim().parse::<RawFd>().ok()) {
        keep.extend(LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(n.clamp(0, 1024)));
    }
    keep.retain(|&fd| fd > 2);
    keep.sort_unstable();
    keep.dedup();
    keep
}

fn numbers(v: &str) -> impl Iterator<Item = RawFd> + '_ {
    v.split(',').filter_map(|n| n.trim().parse().ok())
}

/// Closes every open descriptor above stderr that is not in `keep`;
/// returns those it closed.
///
/// # Safety
///
/// No object of this process may own any descriptor above stderr other
/// than those in `keep`: call it before the process opens or adopts one
/// (the first thing `main` does), or an owner would later close or use a
/// number that is free or reused.
pub unsafe fn close_unnamed(keep: &[RawFd]) -> io::Result<Vec<RawFd>> {
    // Listed in full before closing anything, so the directory's own
    // descriptor is gone by then (closing its number fails with EBADF,
    // which is not reported).
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut closed = Vec::new();
    for fd in open.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: by this function's contract nothing in this process owns
        // `fd`, so closing it cannot pull a descriptor from under an owner.
        if unsafe { libc::close(fd) } == 0 {
            closed.push(fd);
        }
    }
    Ok(closed)
}

/// [`named`] from this process's command line and environment, then
/// [`close_unnamed`].
///
/// # Safety
///
/// As for [`close_unnamed`]: the first thing `main` does.
pub unsafe fn close_at_start() -> io::Result<Vec<RawFd>> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let keep = named(&args, std::env::var("LISTEN_FDS").ok().as_deref());
    // SAFETY: forwarded from this function's own contract.
    unsafe { close_unnamed(&keep) }
}

/// Logs what [`close_at_start`] did, once logging is set up.
pub fn report(result: &io::Result<Vec<RawFd>>) {
    match result {
        Ok(fds) if fds.is_empty() => {}
        Ok(fds) => log::info!(
            "closed {} inherited descriptor(s) the command line does not name: {fds:?}",
            fds.len()
        ),
        Err(e) => log::warn!("cannot list inherited descriptors (/proc/self/fd): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn names_fd_flags_fd_paths_and_socket_activation() {
        let a = args(&[
            "splitvm-net",
            "--socket-fd",
            "7",
            "--tap-fd=9,10",
            "--tap-fd",
            "11",
            "--image",
            "/dev/fd/12",
            "--evdev=/proc/self/fd/13",
            "--queues",
            "4",
            "--tap-fd",
            "1",
        ]);
        assert_eq!(named(&a, Some("2")), vec![3, 4, 7, 9, 10, 11, 12, 13]);
    }

    #[test]
    fn other_numbers_are_not_descriptors() {
        let a = args(&[
            "splitvm-blk",
            "--queues",
            "8",
            "--queue-size",
            "5",
            "/tmp/6",
        ]);
        assert!(named(&a, None).is_empty());
        assert!(named(&a, Some("x")).is_empty());
    }
}
