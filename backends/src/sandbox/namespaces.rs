//! New namespaces for the backend. It opened every resource it needs
//! before, so the new namespaces take nothing it uses: the new user
//! namespace maps no ids (the backend holds no capability in the parent
//! namespaces anymore), the mount namespace is made private, ipc and uts
//! hide the host's System V objects and hostname, and a new network
//! namespace has no interfaces (and its own abstract unix socket space).
//!
//! No pid namespace: `unshare(CLONE_NEWPID)` applies to children only, and
//! a process whose children's pid namespace differs from its own cannot
//! create threads any more (`clone(CLONE_THREAD)` fails with `EINVAL`); a
//! backend starts threads and, under seccomp, cannot start any child
//! process at all (`clone` without `CLONE_THREAD`, `execve` are killed).

use std::io;

use log::{info, warn};

const LAYERS: [(libc::c_int, &str); 4] = [
    (libc::CLONE_NEWNS, "mount"),
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWUTS, "uts"),
    (libc::CLONE_NEWNET, "network"),
];

fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes only flags.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Enters what the kernel allows, reporting each namespace it refuses.
pub(super) fn enter(new_netns: bool) {
    // The user namespace first and alone: it grants the capabilities the
    // others need when the backend was started without them.
    match unshare(libc::CLONE_NEWUSER) {
        Ok(()) => info!("sandbox: namespaces: new user namespace (no ids mapped)"),
        Err(e) => warn!("sandbox: namespaces: user namespace refused by the kernel: {e}; continuing in the parent's"),
    }
    let mut entered = Vec::new();
    for (flag, name) in LAYERS {
        if flag == libc::CLONE_NEWNET && !new_netns {
            continue;
        }
        match unshare(flag) {
            Ok(()) => entered.push(name),
            Err(e) => warn!("sandbox: namespaces: {name} namespace refused by the kernel: {e}"),
        }
    }
    if entered.contains(&"mount") {
        make_mounts_private();
    }
    info!(
        "sandbox: namespaces: new {}; no pid namespace (threads need the parent's; seccomp forbids child processes)",
        entered.join(", ")
    );
}

/// Keeps mount events of the backend's namespace from reaching the host.
fn make_mounts_private() {
    // SAFETY: mount with a static path and null pointers for the unused
    // source, type and data arguments.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        warn!(
            "sandbox: namespaces: mounts not made private: {}",
            io::Error::last_os_error()
        );
    }
}
