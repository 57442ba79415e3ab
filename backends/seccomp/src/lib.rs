//! The seccomp pieces the VMM (`vmm-core/src/sandbox`) and the backends
//! (`backends/src/sandbox`) share; each keeps its own allowlists.
//!
//! - [`compile`] and [`arg_rule`]: a `seccompiler` filter for x86_64;
//! - [`clone3_enosys`] and [`open_eacces`]: filters stacked on an allowlist
//!   (the kernel applies the strictest verdict of all filters) that turn a
//!   syscall into an error the C library handles instead of a kill;
//! - [`sigsys`]: the handler that names a refused syscall before the
//!   process dies (allowlists trap on a mismatch rather than kill).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub mod sigsys;

/// What any thread of a Rust program makes, whatever it does: memory,
/// futexes, reads and writes on fds it holds, poll/epoll waits, signal
/// masks and returns (the `SIGSYS` reporter: `getpid`, `gettid`, `tgkill`),
/// time, exiting, `fstat`-like calls, `rseq`; and `openat`, which glibc
/// may make at any moment, for [`open_eacces`] to refuse.
pub const THREAD_BASICS: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_rseq,
];

/// A filter that does not compile (a bug in a list, not a runtime state).
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter: {0}")]
pub struct FilterError(String);

/// A rule on one 32-bit argument of a syscall.
pub fn arg_rule(arg: u8, op: SeccompCmpOp, val: u64) -> Result<SeccompRule, FilterError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, val)
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(|e| FilterError(e.to_string()))
}

/// Compiles `rules` (syscall number → rules, empty: any arguments) into a
/// BPF program: `matched` for a listed syscall, `mismatch` otherwise.
pub fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, FilterError> {
    SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| FilterError(e.to_string()))?
        .try_into()
        .map_err(|e: seccompiler::BackendError| FilterError(e.to_string()))
}

/// The argument rules of a control thread (the VMM's control plane, a
/// backend's process-wide list), inserted into `rules`: `clone` only for
/// threads (`CLONE_THREAD`: no child processes), `socket` only `AF_UNIX`,
/// `prctl` only naming a thread and `no_new_privs`, `seccomp` only adding
/// a filter (`SECCOMP_SET_MODE_FILTER`: a vCPU or vring worker tightening
/// its own). All of these only narrow what the thread can do.
pub fn insert_control_rules(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
) -> Result<(), FilterError> {
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![arg_rule(0, SeccompCmpOp::MaskedEq(thread), thread)?],
    );
    rules.insert(
        libc::SYS_socket,
        vec![arg_rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)?],
    );
    rules.insert(
        libc::SYS_prctl,
        vec![
            arg_rule(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)?,
            arg_rule(0, SeccompCmpOp::Eq, libc::PR_SET_NO_NEW_PRIVS as u64)?,
        ],
    );
    rules.insert(
        libc::SYS_seccomp,
        vec![arg_rule(0, SeccompCmpOp::Eq, SECCOMP_SET_MODE_FILTER)?],
    );
    Ok(())
}

/// An allowlist: the syscalls in `rules` pass, any other traps to the
/// [`sigsys`] handler (which names it, then the process dies by `SIGSYS`).
pub fn allowlist(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, FilterError> {
    compile(rules, SeccompAction::Trap, SeccompAction::Allow)
}

/// One syscall fails with `errno`, everything else passes.
fn refuse(nr: i64, errno: i32) -> Result<BpfProgram, FilterError> {
    compile(
        BTreeMap::from([(nr, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
    )
}

/// `clone3` → `ENOSYS`: its flags are out of a filter's reach, so the C
/// library falls back to `clone`, whose `CLONE_THREAD` an allowlist checks.
pub fn clone3_enosys() -> Result<BpfProgram, FilterError> {
    refuse(libc::SYS_clone3, libc::ENOSYS)
}

/// `openat` → `EACCES`, for threads with no file to open. glibc opens
/// `/proc/sys/vm/overcommit_memory` the first time it shrinks a thread's
/// malloc arena, at a moment that depends on allocation history: with
/// `openat` merely missing from an allowlist, that killed the VMM on a
/// backend reconnect in the nested lab. Stacked on an allowlist that has
/// `openat`, this makes it a failure glibc handles.
pub fn open_eacces() -> Result<BpfProgram, FilterError> {
    refuse(libc::SYS_openat, libc::EACCES)
}
