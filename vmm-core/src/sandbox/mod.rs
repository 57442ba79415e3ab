//! The VMM's sandbox (`--sandbox on`, the default). Before the VMM starts
//! any thread: `no_new_privs` and a Landlock ruleset (files: read the
//! kernel and initrd, read and write `/dev/kvm` and the serial file, create
//! and remove the API socket in its directory; no TCP). Once every thread
//! of the control plane exists: a process-wide seccomp allowlist (API,
//! control, device monitors, backend requests, stdin), installed on all
//! threads at once, and a tighter one each vCPU thread adds as it starts;
//! `openat` fails with `EACCES` everywhere ([`splitvm_seccomp::open_eacces`]).
//! Any other syscall kills the process (`SIGSYS`, named on stderr first:
//! [`splitvm_seccomp::sigsys`]). Connecting to the
//! backends' sockets (also new ones given to `swap` at run time) needs no
//! Landlock right: Landlock does not restrict `connect(2)` on unix sockets.
//! A layer the kernel refuses is reported once with `warn!`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};
use log::{info, warn};
use seccompiler::{BpfProgram, SeccompCmpOp, SeccompRule};
use splitvm_seccomp::{arg_rule, clone3_enosys, open_eacces, sigsys};

use crate::config::{SerialTarget, VmConfig};

/// `--sandbox on|off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// `no_new_privs`, Landlock and seccomp where the kernel has them.
    #[default]
    On,
    /// None of them: for debugging only.
    Off,
}

/// Errors setting up a layer the kernel supports.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("landlock: {0}")]
    Landlock(String),
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error(transparent)]
    Filter(#[from] splitvm_seccomp::FilterError),
    #[error("serial file {path}: {source}")]
    Serial {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Syscalls of every VMM thread, on top of
/// [`splitvm_seccomp::THREAD_BASICS`].
const COMMON: &[i64] = &[
    libc::SYS_ioctl,
    // vCPUs write device registers that send vhost-user messages (with
    // eventfds) to the backends.
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_eventfd2,
];

/// On top of [`COMMON`], for the control plane: the API socket, reconnects
/// and swaps (new connections, memory table with the guest memfd), device
/// monitors, threads, the kick signal handler, removing the API socket.
const CONTROL: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_epoll_create1,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    // Reconnects wait for the backend's socket to appear (inotify).
    libc::SYS_inotify_init1,
    libc::SYS_inotify_add_watch,
    libc::SYS_inotify_rm_watch,
    // Swap resolves the new socket path (realpath).
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
];

/// `_IOC_TYPE` of KVM's ioctls.
const KVMIO: u64 = 0xAE;

/// The thread kinds of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Every thread but the vCPUs (process-wide filter).
    Control,
    /// A vCPU thread.
    Vcpu,
}

fn numbers(kind: ThreadKind) -> Vec<i64> {
    let mut v = splitvm_seccomp::THREAD_BASICS.to_vec();
    v.extend(COMMON);
    if kind == ThreadKind::Control {
        v.extend(CONTROL);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// How many syscalls a thread of `kind` may make.
pub fn syscall_count(kind: ThreadKind) -> usize {
    numbers(kind).len()
}

/// The allowlist of one thread kind.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        numbers(kind).into_iter().map(|n| (n, Vec::new())).collect();
    // ioctl: KVM's, terminal ones ('T': raw mode for the serial console,
    // FIONBIO, FIOCLEX) and nothing else.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            arg_rule(1, SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)?,
            arg_rule(1, SeccompCmpOp::MaskedEq(0xff00), u64::from(b'T') << 8)?,
        ],
    );
    if kind == ThreadKind::Control {
        splitvm_seccomp::insert_control_rules(&mut rules)?;
    }
    Ok(splitvm_seccomp::allowlist(rules)?)
}

fn rule(path: &Path, access: BitFlags<AccessFs>) -> Option<PathBeneath<PathFd>> {
    match PathFd::new(path) {
        Ok(fd) => Some(PathBeneath::new(fd, access)),
        Err(e) => {
            warn!("sandbox: landlock: no rule for {}: {e}", path.display());
            None
        }
    }
}

/// `no_new_privs` and Landlock, for the calling thread and every thread it
/// starts later: call before the VMM starts any.
pub fn restrict_files(mode: Mode, cfg: &VmConfig) -> Result<(), SandboxError> {
    if mode == Mode::Off {
        warn!("sandbox off (--sandbox off): no Landlock, no seccomp; for debugging only");
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let read = AccessFs::ReadFile.into();
    let rw = AccessFs::ReadFile | AccessFs::WriteFile;
    let mut rules = Vec::new();
    rules.extend(rule(&cfg.kernel, read));
    if let Some(i) = &cfg.initrd {
        rules.extend(rule(i, read));
    }
    rules.extend(rule(Path::new("/dev/kvm"), rw | AccessFs::IoctlDev));
    if let SerialTarget::File(p) = &cfg.serial {
        // Created now: Landlock grants rights on existing files.
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|source| SandboxError::Serial {
                path: p.display().to_string(),
                source,
            })?;
        rules.extend(rule(p, AccessFs::WriteFile.into()));
    }
    if let Some(api) = &cfg.api_socket {
        let dir = match api.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        rules.extend(rule(&dir, AccessFs::MakeSock | AccessFs::RemoveFile));
    }
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => info!(
            "sandbox: no_new_privs; landlock enforced ({:?}): kernel, initrd, /dev/kvm, serial file, API socket directory; no TCP",
            status.landlock
        ),
        RulesetStatus::PartiallyEnforced => warn!(
            "sandbox: landlock partially enforced: the kernel ({:?}) lacks some rights of {abi:?}",
            status.landlock
        ),
        RulesetStatus::NotEnforced => warn!(
            "sandbox: landlock not enforced: the kernel does not support it ({:?})",
            status.landlock
        ),
    }
    Ok(())
}

/// The process-wide seccomp filter, on every thread that exists now (and
/// inherited by later ones); returns the vCPU filter for
/// [`crate::vmm::Vmm::set_vcpu_filter`].
pub fn restrict_syscalls(mode: Mode) -> Result<Option<BpfProgram>, SandboxError> {
    if mode == Mode::Off {
        return Ok(None);
    }
    let control = filter(ThreadKind::Control)?;
    let vcpu = filter(ThreadKind::Vcpu)?;
    sigsys::install("splitvm")
        .map_err(|e| SandboxError::Seccomp(format!("SIGSYS handler: {e}")))?;
    for f in [&control, &clone3_enosys()?, &open_eacces()?] {
        seccompiler::apply_filter_all_threads(f)
            .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    info!(
        "sandbox: seccomp allows {} syscalls (API, control and device threads), {} on vCPU threads",
        syscall_count(ThreadKind::Control),
        syscall_count(ThreadKind::Vcpu)
    );
    Ok(Some(vcpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a forked child (the filters are for life): openat fails with
    /// EACCES, and a syscall off the list kills with SIGSYS after the
    /// handler named it on stderr.
    #[test]
    fn filters_refuse_openat_and_name_a_forbidden_syscall() {
        let filters = [
            filter(ThreadKind::Control).unwrap(),
            clone3_enosys().unwrap(),
            open_eacces().unwrap(),
        ];
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two fds into the array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes raw syscalls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: raw syscalls on fds and constant strings; _exit ends
            // the child without running the parent's destructors.
            unsafe {
                libc::dup2(pipe[1], libc::STDERR_FILENO);
                if sigsys::install("splitvm").is_err() {
                    libc::_exit(10);
                }
                for f in &filters {
                    if seccompiler::apply_filter(f).is_err() {
                        libc::_exit(11);
                    }
                }
                let fd = libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY);
                if fd >= 0 || *libc::__errno_location() != libc::EACCES {
                    libc::_exit(12);
                }
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                libc::_exit(13);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(pipe[1]) };
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let mut out = vec![0u8; 256];
        // SAFETY: reads into a buffer of the given length.
        let n = unsafe { libc::read(pipe[0], out.as_mut_ptr().cast(), out.len()) };
        out.truncate(n.max(0) as usize);
        let out = String::from_utf8_lossy(&out);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "status {status:#x}, stderr {out:?}"
        );
        assert!(
            out.contains(&format!("forbidden syscall {}", libc::SYS_socket)),
            "{out:?}"
        );
    }
}
