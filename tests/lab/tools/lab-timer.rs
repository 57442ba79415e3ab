//! lab-timer: sub-millisecond timing for the nested lab (busybox `date` has no
//! `%N`). Built by `tests/lab/run-l1.sh` as a static binary with plain `rustc`
//! (std only, no crates) and packed into the level-1 image.
//!
//! ```text
//! lab-timer now
//!     prints the wall clock as seconds with microseconds: 1700000000.123456
//! lab-timer run [--match STR]... [--prefix P] [--timeout SECS] -- CMD ARGS...
//!     runs CMD, copies its stdout lines to stdout (each with prefix P), and
//!     at the end prints one line
//!     LAB-TIMER rc=N first_byte_ms=F match0_ms=M0 ... exit_ms=E maxrss_kb=K
//!     times from just before exec; -1 for what never happened; maxrss_kb is
//!     the child's peak RSS (getrusage of waited-for children). The child's
//!     stderr is inherited. Exit status: the child's, 124 on timeout.
//! ```

use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `struct rusage` of x86_64 Linux.
#[repr(C)]
#[derive(Default)]
struct Rusage {
    ru_utime: [i64; 2],
    ru_stime: [i64; 2],
    ru_maxrss: i64,
    rest: [i64; 13],
}

const RUSAGE_CHILDREN: i32 = -1;

extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

fn children_maxrss_kb() -> i64 {
    let mut ru = Rusage::default();
    // SAFETY: `ru` is a valid, writable `struct rusage` for the duration of
    // the call; getrusage(2) writes only into it.
    let rc = unsafe { getrusage(RUSAGE_CHILDREN, &mut ru) };
    if rc == 0 {
        ru.ru_maxrss
    } else {
        -1
    }
}

enum Event {
    Bytes(Vec<u8>),
    Eof,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: lab-timer now\n       lab-timer run [--match STR]... [--prefix P] [--timeout SECS] -- CMD ARGS..."
    );
    ExitCode::from(2)
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3}", d.as_secs_f64() * 1e3),
        None => "-1".to_string(),
    }
}

fn run(args: &[String]) -> ExitCode {
    let mut matches: Vec<String> = Vec::new();
    let mut prefix = String::new();
    let mut timeout = Duration::from_secs(600);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--match" if i + 1 < args.len() => {
                matches.push(args[i + 1].clone());
                i += 2;
            }
            "--prefix" if i + 1 < args.len() => {
                prefix = args[i + 1].clone();
                i += 2;
            }
            "--timeout" if i + 1 < args.len() => {
                let Ok(s) = args[i + 1].parse::<f64>() else {
                    return usage();
                };
                timeout = Duration::from_secs_f64(s);
                i += 2;
            }
            "--" => {
                i += 1;
                break;
            }
            _ => return usage(),
        }
    }
    let cmd = &args[i..];
    if cmd.is_empty() {
        return usage();
    }

    let t0 = Instant::now();
    let mut child = match Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lab-timer: cannot run {}: {e}", cmd[0]);
            return ExitCode::from(127);
        }
    };
    let mut out = child.stdout.take().expect("stdout was piped");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send((Instant::now(), Event::Eof));
                    return;
                }
                Ok(n) => {
                    let _ = tx.send((Instant::now(), Event::Bytes(buf[..n].to_vec())));
                }
            }
        }
    });

    let deadline = t0 + timeout;
    let mut first_byte = None;
    let mut matched: Vec<Option<Duration>> = vec![None; matches.len()];
    let mut line = Vec::new();
    let mut timed_out = false;
    let stdout = std::io::stdout();
    let emit = |line: &[u8]| {
        let mut o = stdout.lock();
        let _ = o.write_all(prefix.as_bytes());
        let _ = o.write_all(line);
        let _ = o.write_all(b"\n");
        let _ = o.flush();
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, Event::Bytes(b))) => {
                first_byte.get_or_insert(t - t0);
                for &c in &b {
                    if c != b'\n' {
                        line.push(c);
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    for (k, m) in matches.iter().enumerate() {
                        if matched[k].is_none() && text.contains(m.as_str()) {
                            matched[k] = Some(t - t0);
                        }
                    }
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    emit(&line);
                    line.clear();
                }
                // A match may sit in a line that is not finished yet.
                let text = String::from_utf8_lossy(&line);
                for (k, m) in matches.iter().enumerate() {
                    if matched[k].is_none() && text.contains(m.as_str()) {
                        matched[k] = Some(t - t0);
                    }
                }
            }
            Ok((_, Event::Eof)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    if !line.is_empty() {
        emit(&line);
    }
    let status = child.wait();
    let exit = t0.elapsed();
    let rc = match status {
        _ if timed_out => 124,
        Ok(s) => s.code().unwrap_or(128),
        Err(_) => 128,
    };
    let mut summary = format!("LAB-TIMER rc={rc} first_byte_ms={}", ms(first_byte));
    for (k, m) in matched.iter().enumerate() {
        summary.push_str(&format!(" match{k}_ms={}", ms(*m)));
    }
    summary.push_str(&format!(
        " exit_ms={} maxrss_kb={}",
        ms(Some(exit)),
        children_maxrss_kb()
    ));
    println!("{summary}");
    ExitCode::from(u8::try_from(rc).unwrap_or(1))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("now") => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            println!("{}.{:06}", t.as_secs(), t.subsec_micros());
            ExitCode::SUCCESS
        }
        Some("run") => run(&args[1..]),
        _ => usage(),
    }
}
