//! `evread`: reads input events from an evdev device and prints them as
//! `type code value` lines.
//!
//! `evread (--dev PATH | --name NAME) [-n COUNT] [--until TYPE:CODE:VALUE]
//!         [--timeout SECS] [--no-syn] [--led CODE=VALUE] [--echo-led]
//!         [--ping-led N] [--ready]`
//!
//! `--name` finds the device in /sys/class/input (waiting up to the
//! timeout). `--until` stops after printing that event. `--led` writes an
//! EV_LED event first. `--ready` prints `EVREAD-READY <path>` on stderr once
//! the device is open. `--echo-led` answers every
//! key press with an LED_CAPSL toggle (for round-trip latency; the LED
//! events that come back are then not printed or counted). `--ping-led N`
//! waits for one key press, then N times toggles LED_CAPSL and times the
//! next key press (the host answers with `splitvm-input send --echo N`),
//! printing `PING-RTT n= median_us= p99_us= min_us= max_us=`. Exit status:
//! 0 when COUNT events were read or the `--until` event came (or neither
//! was asked for and the timeout passed),
//! 1 on error, 2 when the timeout passed first.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use splitvm_guest_tools::{
    find_by_name, read_events, wait_readable, write_event, EV_KEY, EV_LED, EV_SYN,
};

struct Opts {
    dev: Option<PathBuf>,
    name: Option<String>,
    count: Option<usize>,
    until: Option<(u16, u16, i32)>,
    timeout: Duration,
    no_syn: bool,
    led: Option<(u16, i32)>,
    echo_led: bool,
    ping: Option<usize>,
    ready: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        dev: None,
        name: None,
        count: None,
        until: None,
        timeout: Duration::from_secs(10),
        no_syn: false,
        led: None,
        echo_led: false,
        ping: None,
        ready: false,
    };
    let mut a = std::env::args().skip(1);
    while let Some(arg) = a.next() {
        let mut val = |what: &str| a.next().ok_or(format!("{what} needs a value"));
        match arg.as_str() {
            "--dev" => o.dev = Some(val("--dev")?.into()),
            "--name" => o.name = Some(val("--name")?),
            "-n" => o.count = Some(val("-n")?.parse().map_err(|e| format!("-n: {e}"))?),
            "--timeout" => {
                let s: f64 = val("--timeout")?
                    .parse()
                    .map_err(|e| format!("--timeout: {e}"))?;
                o.timeout = Duration::from_secs_f64(s.max(0.0));
            }
            "--until" => {
                let v = val("--until")?;
                let p: Vec<&str> = v.split(':').collect();
                let [t, c, x] = p.as_slice() else {
                    return Err("--until TYPE:CODE:VALUE".into());
                };
                let num = |s: &str| s.parse::<i64>().map_err(|e| format!("--until: {e}"));
                o.until = Some((
                    u16::try_from(num(t)?).map_err(|e| e.to_string())?,
                    u16::try_from(num(c)?).map_err(|e| e.to_string())?,
                    i32::try_from(num(x)?).map_err(|e| e.to_string())?,
                ));
            }
            "--no-syn" => o.no_syn = true,
            "--echo-led" => o.echo_led = true,
            "--ping-led" => {
                o.ping = Some(
                    val("--ping-led")?
                        .parse()
                        .map_err(|e| format!("--ping-led: {e}"))?,
                )
            }
            "--ready" => o.ready = true,
            "--led" => {
                let v = val("--led")?;
                let (c, x) = v.split_once('=').ok_or("--led CODE=VALUE")?;
                o.led = Some((
                    c.parse().map_err(|e| format!("--led: {e}"))?,
                    x.parse().map_err(|e| format!("--led: {e}"))?,
                ));
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if o.dev.is_none() && o.name.is_none() {
        return Err("--dev PATH or --name NAME is required".into());
    }
    Ok(o)
}

fn run(o: &Opts) -> Result<bool, String> {
    let start = Instant::now();
    let end = start + o.timeout;
    let path = match (&o.dev, &o.name) {
        (Some(p), _) => p.clone(),
        (None, Some(n)) => loop {
            if let Some(p) = find_by_name(n) {
                break p;
            }
            if Instant::now() >= end {
                return Err(format!("no input device named {n:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        },
        (None, None) => return Err("no device".into()),
    };
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some((code, v)) = o.led {
        write_event(&f, (EV_LED, code, v)).map_err(|e| format!("write LED: {e}"))?;
        write_event(&f, (EV_SYN, 0, 0)).map_err(|e| format!("write SYN: {e}"))?;
    }
    if o.ready {
        eprintln!("EVREAD-READY {}", path.display());
    }
    if let Some(n) = o.ping {
        return ping(&f, n, end);
    }
    let mut got = 0usize;
    let mut caps = 0;
    loop {
        if o.count.is_some_and(|n| got >= n) {
            return Ok(true);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(&f, left).map_err(|e| e.to_string())? {
            return Ok(o.count.is_none() && o.until.is_none());
        }
        for e in read_events(&f).map_err(|e| format!("read: {e}"))? {
            if o.echo_led && e.0 == EV_KEY && e.2 == 1 {
                caps ^= 1;
                write_event(&f, (EV_LED, 1, caps)).map_err(|e| format!("echo LED: {e}"))?;
            }
            // Our own LED writes come back to this fd: not input.
            if (o.no_syn && e.0 == EV_SYN) || (o.echo_led && e.0 == EV_LED) {
                continue;
            }
            if o.count.is_some_and(|n| got >= n) {
                break;
            }
            println!("{} {} {}", e.0, e.1, e.2);
            got += 1;
            if o.until == Some(e) {
                return Ok(true);
            }
        }
    }
}

/// Waits for the next key press (other events are skipped); `false` at `end`.
fn next_press(f: &std::fs::File, end: Instant) -> Result<bool, String> {
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(f, left).map_err(|e| e.to_string())? {
            return Ok(false);
        }
        let evs = read_events(f).map_err(|e| format!("read: {e}"))?;
        if evs.iter().any(|e| e.0 == EV_KEY && e.2 == 1) {
            return Ok(true);
        }
    }
}

/// `--ping-led N`: waits for a first key press (the host side is ready),
/// then N times toggles LED_CAPSL and times the next key press. Prints
/// `PING-RTT n= median_us= p99_us= min_us= max_us=`.
fn ping(f: &std::fs::File, n: usize, end: Instant) -> Result<bool, String> {
    if !next_press(f, end)? {
        return Ok(false);
    }
    let mut rtt = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let v = i32::from(i % 2 == 0);
        write_event(f, (EV_LED, 1, v)).map_err(|e| format!("write LED: {e}"))?;
        if !next_press(f, end)? {
            return Ok(false);
        }
        rtt.push(t0.elapsed().as_micros());
    }
    rtt.sort_unstable();
    let q = |p: f64| rtt[((rtt.len() - 1) as f64 * p).round() as usize];
    if !rtt.is_empty() {
        println!(
            "PING-RTT n={} median_us={} p99_us={} min_us={} max_us={}",
            rtt.len(),
            q(0.5),
            q(0.99),
            q(0.0),
            q(1.0)
        );
    }
    Ok(true)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("evread: {e}");
            return ExitCode::from(1);
        }
    };
    match run(&o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("evread: timed out");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("evread: {e}");
            ExitCode::from(1)
        }
    }
}
