//! Names the syscall seccomp refused before the process dies. The
//! allowlists' mismatch action is `SECCOMP_RET_TRAP`, not `KILL_PROCESS`: the kernel
//! then delivers `SIGSYS` with the syscall's number to this handler, which
//! writes it to stderr and re-raises the signal with the default action,
//! so the process still ends "killed by SIGSYS" as before. Without it, a
//! kill by seccomp leaves no trace unless the kernel's audit log is on.

use std::io;
use std::sync::OnceLock;

/// The process's name, for the message (set once by [`install`]).
static NAME: OnceLock<&'static str> = OnceLock::new();

/// Where `si_syscall` sits in a `SIGSYS` siginfo on x86_64: after
/// `si_signo`, `si_errno`, `si_code` (+ padding) and `si_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;

/// Installs the handler (once, before the filters; any thread); `name`
/// starts its message.
pub fn install(name: &'static str) -> io::Result<()> {
    let _ = NAME.set(name);
    // SAFETY: a zeroed sigaction is valid; the fields set below are the
    // handler (an extern "C" fn of the SA_SIGINFO signature) and flags.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = report as *const () as usize;
    // SA_RESETHAND: the re-raised SIGSYS takes the default action (the
    // handler itself may not call sigaction: vCPU threads' filters forbid it).
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    // SAFETY: sa is fully initialized and outlives the call.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Formats `nr` in decimal into the tail of `buf`; returns where it starts.
fn decimal(mut nr: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (nr % 10) as u8;
        nr /= 10;
        if nr == 0 {
            return i;
        }
    }
}

/// Async-signal-safe: only write(2), getpid(2), gettid(2) and tgkill(2).
/// A thread whose allowlist lacks one of them traps again inside the
/// handler, with SIGSYS blocked: the kernel then kills the process with
/// SIGSYS at once, so the outcome is the same, only without the message.
extern "C" fn report(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo for SIGSYS; the read
        // stays within it (128 bytes).
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let mut digits = [0u8; 20];
    let start = decimal(u64::from(nr.unsigned_abs()), &mut digits);
    // OnceLock::get is an atomic load: async-signal-safe.
    let name = NAME.get().copied().unwrap_or("splitvm");
    let parts: [&[u8]; 4] = [
        name.as_bytes(),
        b": seccomp: forbidden syscall ",
        &digits[start..],
        b"; the process is killed (SIGSYS)\n",
    ];
    for p in parts {
        // SAFETY: writes a valid buffer to stderr; the result is ignored
        // because nothing else can be done from here.
        unsafe { libc::write(libc::STDERR_FILENO, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: plain syscalls with integer arguments. SIGSYS is blocked
    // while this handler runs, so it is delivered (default action now: the
    // handler was reset) the moment the handler returns.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats_numbers() {
        let mut b = [0u8; 20];
        let s = decimal(0, &mut b);
        assert_eq!(&b[s..], b"0");
        let s = decimal(435, &mut b);
        assert_eq!(&b[s..], b"435");
        let s = decimal(u64::MAX, &mut b);
        assert_eq!(&b[s..], b"18446744073709551615");
    }
}
