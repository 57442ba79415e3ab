//! `splitvm-input send`: a client of the event socket for shells and
//! scripts. Sends JSON lines (arguments, or stdin lines), then a ping, and
//! prints every reply until the pong (with `--follow`, until `--until`
//! matches, the socket closes or `--timeout`). `--latency N` measures round
//! trips instead: it taps a key and waits for the LED line a guest-side
//! `evread --echo-led` sends back.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Arguments of `splitvm-input send`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "splitvm-input send", version)]
pub struct SendArgs {
    /// The backend's `--event-socket`.
    #[arg(long, value_name = "PATH")]
    pub event_socket: PathBuf,
    /// Keep printing what the socket sends after the lines were accepted.
    #[arg(long)]
    pub follow: bool,
    /// With `--follow`: stop after a line containing this text.
    #[arg(long, value_name = "TEXT")]
    pub until: Option<String>,
    /// Give up after this many seconds (exit 1).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Measure N round trips: tap `--latency-key`, wait for an LED line.
    #[arg(long, value_name = "N")]
    pub latency: Option<u32>,
    /// After the lines: answer each of the next N LED lines with a tap of
    /// `--latency-key` (the other half of a guest-side `evread --ping-led N`).
    #[arg(long, value_name = "N")]
    pub echo: Option<u32>,
    /// Key tapped by `--latency` and `--echo`.
    #[arg(long, value_name = "KEY", default_value = "KEY_A")]
    pub latency_key: String,
    /// JSON lines to send; without any, stdin is read line by line.
    #[arg(value_name = "JSON")]
    pub lines: Vec<String>,
}

/// Errors of the `send` client.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("event socket I/O: {0}")]
    Io(#[from] io::Error),
    /// The backend refused at least one line (the replies were printed).
    #[error("{0} line(s) refused")]
    Refused(usize),
    /// Nothing came in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// The backend closed the socket early.
    #[error("the event socket closed")]
    Closed,
}

const DONE: &str = "splitvm-input-send-done";

/// Runs the client; replies go to `out`.
pub fn run(args: &SendArgs, out: &mut dyn Write) -> Result<(), SendError> {
    let stream = UnixStream::connect(&args.event_socket).map_err(|source| SendError::Connect {
        path: args.event_socket.clone(),
        source,
    })?;
    let limit = Duration::from_secs_f64(args.timeout.max(0.001));
    let end = Instant::now() + limit;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    if let Some(n) = args.latency {
        return latency(args, n, &mut writer, &mut reader, out, limit);
    }
    if args.lines.is_empty() {
        for line in io::stdin().lock().lines() {
            writeln!(writer, "{}", line?)?;
        }
    } else {
        for l in &args.lines {
            writeln!(writer, "{l}")?;
        }
    }
    if let Some(n) = args.echo {
        // LED lines may come back before any reply: answer from here on.
        return echo(args, n, &mut writer, &mut reader, out, limit);
    }
    writeln!(writer, "{{\"ping\":\"{DONE}\"}}")?;
    let mut errors = 0;
    let mut done = false;
    loop {
        let Some(line) = read_line(&mut reader, end, limit)? else {
            if done {
                break;
            }
            return Err(SendError::Closed);
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v.get("pong").and_then(Value::as_str) == Some(DONE) {
            done = true;
            if !args.follow {
                break;
            }
            continue;
        }
        if v.get("error").is_some() {
            errors += 1;
        }
        writeln!(out, "{line}")?;
        out.flush()?;
        if args.until.as_deref().is_some_and(|u| line.contains(u)) {
            break;
        }
    }
    if errors > 0 {
        return Err(SendError::Refused(errors));
    }
    Ok(())
}

/// One line, or `None` at EOF; a timeout is an error.
fn read_line(
    r: &mut BufReader<UnixStream>,
    end: Instant,
    limit: Duration,
) -> Result<Option<String>, SendError> {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(SendError::Timeout(limit, "a reply"));
    }
    r.get_ref().set_read_timeout(Some(left))?;
    let mut s = String::new();
    match r.read_line(&mut s) {
        Ok(0) => Ok(None),
        Ok(_) => Ok(Some(s.trim_end().to_string())),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(SendError::Timeout(limit, "a reply"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Answers `n` LED lines with key taps; each wait has the whole `limit`.
/// Other lines are printed; an error line fails.
fn echo(
    args: &SendArgs,
    n: u32,
    w: &mut UnixStream,
    r: &mut BufReader<UnixStream>,
    out: &mut dyn Write,
    limit: Duration,
) -> Result<(), SendError> {
    for _ in 0..n {
        loop {
            let Some(line) = read_line(r, Instant::now() + limit, limit)? else {
                return Err(SendError::Closed);
            };
            if line.contains("EV_LED") {
                break;
            }
            writeln!(out, "{line}")?;
            if line.contains("\"error\"") {
                return Err(SendError::Refused(1));
            }
        }
        writeln!(w, "{{\"key\":\"{}\"}}", args.latency_key)?;
    }
    writeln!(out, "echoed {n}")?;
    Ok(())
}

fn latency(
    args: &SendArgs,
    n: u32,
    w: &mut UnixStream,
    r: &mut BufReader<UnixStream>,
    out: &mut dyn Write,
    limit: Duration,
) -> Result<(), SendError> {
    let mut samples = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        writeln!(w, "{{\"key\":\"{}\"}}", args.latency_key)?;
        loop {
            let Some(line) = read_line(r, t0 + limit, limit)? else {
                return Err(SendError::Closed);
            };
            if line.contains("\"error\"") {
                writeln!(out, "{line}")?;
                return Err(SendError::Refused(1));
            }
            if line.contains("EV_LED") {
                break;
            }
        }
        let us = t0.elapsed().as_secs_f64() * 1e6;
        samples.push(us);
        writeln!(out, "rtt {i} {us:.0}us")?;
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).copied().unwrap_or(0.0)
    };
    writeln!(
        out,
        "latency n={} median_us={:.0} p99_us={:.0} min_us={:.0} max_us={:.0}",
        samples.len(),
        pick(0.5),
        pick(0.99),
        pick(0.0),
        pick(1.0)
    )?;
    Ok(())
}
