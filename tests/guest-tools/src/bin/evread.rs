//! `evread`: reads input events from an evdev device and prints them as
//! `type code value` lines.
//!
//! `evread (--dev PATH | --name NAME) [-n COUNT] [--timeout SECS] [--no-syn]
//!         [--led CODE=VALUE] [--echo-led] [--ready]`
//!
//! `--name` finds the device in /sys/class/input (waiting up to the
//! timeout). `--led` writes an EV_LED event first. `--ready` prints
//! `EVREAD-READY <path>` once the device is open. `--echo-led` answers every
//! key press with an LED_CAPSL toggle (for round-trip latency). Exit status:
//! 0 when COUNT events were read (or no -n given and the timeout passed),
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
    timeout: Duration,
    no_syn: bool,
    led: Option<(u16, i32)>,
    echo_led: bool,
    ready: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        dev: None,
        name: None,
        count: None,
        timeout: Duration::from_secs(10),
        no_syn: false,
        led: None,
        echo_led: false,
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
            "--no-syn" => o.no_syn = true,
            "--echo-led" => o.echo_led = true,
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
        println!("EVREAD-READY {}", path.display());
    }
    let mut got = 0usize;
    let mut caps = 0;
    loop {
        if o.count.is_some_and(|n| got >= n) {
            return Ok(true);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_readable(&f, left).map_err(|e| e.to_string())? {
            return Ok(o.count.is_none());
        }
        for e in read_events(&f).map_err(|e| format!("read: {e}"))? {
            if o.echo_led && e.0 == EV_KEY && e.2 == 1 {
                caps ^= 1;
                write_event(&f, (EV_LED, 1, caps)).map_err(|e| format!("echo LED: {e}"))?;
            }
            if o.no_syn && e.0 == EV_SYN {
                continue;
            }
            if o.count.is_some_and(|n| got >= n) {
                break;
            }
            println!("{} {} {}", e.0, e.1, e.2);
            got += 1;
        }
    }
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
