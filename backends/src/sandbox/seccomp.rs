//! The seccomp allowlists of the backends, by thread kind. Syscalls are
//! named by number (`libc::SYS_*`, x86_64); `ioctl` is limited to a few
//! generic requests plus the request types (`_IOC_TYPE`) the backend's
//! devices use, `socket` to `AF_UNIX`, `prctl` to naming a thread and
//! `no_new_privs`, `seccomp` to adding a filter, `clone`
//! to threads (`CLONE_THREAD`: no child processes). Any other syscall traps
//! to [`splitvm_seccomp::sigsys`], which names it on stderr, and the whole
//! process dies by `SIGSYS`. The stacked refusals (`clone3` → `ENOSYS`,
//! `openat` → `EACCES`) are [`splitvm_seccomp`]'s.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompCmpOp, SeccompRule};
use splitvm_seccomp::arg_rule;

use super::SandboxError;

/// Which threads a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The process-wide filter: the main thread (accepting frontends), the
    /// vhost-user message thread, the proxy, signal and event threads, and
    /// the union of everything the other kinds need.
    Main,
    /// A vring worker: reads rings in guest memory, does the device I/O,
    /// signals eventfds. No sockets, no files, no threads, no mappings of
    /// new fds.
    Worker,
}

/// Syscalls every backend thread makes on top of
/// [`splitvm_seccomp::THREAD_BASICS`]: positioned I/O on the image and
/// guest buffers, `epoll_pwait2`.
const COMMON: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_epoll_pwait2,
    libc::SYS_lseek,
];

/// What only the process-wide filter allows on top of [`COMMON`]: the
/// control plane (accepting frontends, vhost-user messages with fds,
/// mapping guest memory, the inflight memfd, the proxy's private socket),
/// threads, signal handlers and removing the sockets at exit.
const MAIN: &[i64] = &[
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigaction,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// `ioctl` requests any thread may make: `FIONBIO` (std's
/// `set_nonblocking`), `FIOCLEX`/`FIONCLEX`, `TCGETS` (is stderr a tty).
const IOCTL_GENERIC: &[u32] = &[0x5421, 0x5451, 0x5450, 0x5401];

/// One backend's syscalls on top of the common lists.
#[derive(Debug, Clone, Default)]
pub struct SyscallSet {
    /// Extra syscalls for the process-wide filter.
    pub main: Vec<i64>,
    /// Extra syscalls for vring workers (also added to the process-wide
    /// filter, which must allow everything any thread does).
    pub worker: Vec<i64>,
    /// `_IOC_TYPE` bytes of device ioctls (`'T'` tun, `'E'` evdev), for
    /// the threads that may make them.
    pub ioctl_types: Vec<u8>,
    /// Whether vring workers make device ioctls.
    pub worker_ioctls: bool,
}

impl SyscallSet {
    fn numbers(&self, kind: ThreadKind) -> Vec<i64> {
        let mut v: Vec<i64> = splitvm_seccomp::THREAD_BASICS.to_vec();
        v.extend(COMMON);
        v.extend(&self.worker);
        if kind == ThreadKind::Main {
            v.extend(MAIN);
            v.extend(&self.main);
            v.extend([
                libc::SYS_socket,
                libc::SYS_prctl,
                libc::SYS_clone,
                libc::SYS_seccomp,
            ]);
        }
        v.push(libc::SYS_ioctl);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How many syscalls a thread of this kind may make.
    pub fn count(&self, kind: ThreadKind) -> usize {
        self.numbers(kind).len()
    }
}

/// Compiles the filter of one thread kind.
pub fn build(set: &SyscallSet, kind: ThreadKind) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in set.numbers(kind) {
        rules.insert(nr, Vec::new());
    }
    let mut ioctl = Vec::new();
    for &req in IOCTL_GENERIC {
        ioctl.push(arg_rule(1, SeccompCmpOp::Eq, u64::from(req))?);
    }
    if kind == ThreadKind::Main || set.worker_ioctls {
        for &t in &set.ioctl_types {
            ioctl.push(arg_rule(
                1,
                SeccompCmpOp::MaskedEq(0xff00),
                u64::from(t) << 8,
            )?);
        }
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    if kind == ThreadKind::Main {
        splitvm_seccomp::insert_control_rules(&mut rules)?;
    }
    Ok(splitvm_seccomp::allowlist(rules)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> SyscallSet {
        SyscallSet {
            main: vec![libc::SYS_openat],
            worker: vec![libc::SYS_io_uring_enter],
            ioctl_types: vec![b'T'],
            worker_ioctls: false,
        }
    }

    #[test]
    fn every_worker_syscall_is_allowed_process_wide() {
        // Filters stack: a syscall the process-wide list lacks kills a
        // worker even if the worker's own list has it.
        let s = set();
        let main = s.numbers(ThreadKind::Main);
        for nr in s.numbers(ThreadKind::Worker) {
            assert!(main.contains(&nr), "syscall {nr}");
        }
        assert!(s.count(ThreadKind::Worker) < s.count(ThreadKind::Main));
    }

    #[test]
    fn workers_get_no_sockets_threads_or_opens() {
        // openat is in the list but refused by the stacked EACCES filter.
        assert!(!splitvm_seccomp::open_eacces().unwrap().is_empty());
        let w = set().numbers(ThreadKind::Worker);
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_clone,
            libc::SYS_execve,
            libc::SYS_mount,
        ] {
            assert!(!w.contains(&nr), "syscall {nr}");
        }
        let m = set().numbers(ThreadKind::Main);
        assert!(!m.contains(&libc::SYS_execve) && !m.contains(&libc::SYS_ptrace));
    }

    #[test]
    fn both_filters_compile() {
        for kind in [ThreadKind::Main, ThreadKind::Worker] {
            assert!(!build(&set(), kind).unwrap().is_empty());
        }
        assert!(!splitvm_seccomp::clone3_enosys().unwrap().is_empty());
    }
}
