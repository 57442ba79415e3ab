//! `wakecost`: the price of one wake-up on this machine.
//!
//! Every request through a vhost-user backend wakes the driver at least
//! once (the call eventfd), and a driver on another CPU than the backend
//! pays a cross-CPU wake-up that an in-process engine (fio) does not. On
//! bare metal that is a few µs; in a small VM whose idle vCPUs halt it can
//! cost more than a disk read. `scripts/bench` prints these figures with
//! the machine so the QD 1 rows can be read against them.
//!
//! Two threads bounce a token through a pair of blocking eventfds, both on
//! one CPU and then on two different CPUs; a wake-up is half a round trip.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use vmm_sys_util::eventfd::EventFd;

/// Eventfd ping-pong between two threads, on one CPU and across two.
#[derive(Parser, Debug)]
#[command(name = "wakecost")]
struct Args {
    /// Round trips per sample.
    #[arg(long, default_value_t = 2000)]
    trips: u32,
    /// Samples per placement (the median is reported).
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// First CPU.
    #[arg(long, default_value_t = 0)]
    cpu_a: usize,
    /// Second CPU for the cross-CPU placement (default: the last online one).
    #[arg(long)]
    cpu_b: Option<usize>,
    /// Print one `WAKECOST key=value ...` line instead of prose.
    #[arg(long)]
    kv: bool,
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("CPU {cpu} out of range");
    }
    // SAFETY: cpu_set_t is plain data; an all-zero value is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays
    // inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is
    // the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pin to CPU {cpu}"));
    }
    Ok(())
}

/// Mean time of one wake-up (half a round trip) with the two threads on
/// `a` and `b`.
fn sample(a: usize, b: usize, trips: u32) -> Result<Duration> {
    // Both CPUs must be usable before the echo thread starts: one that
    // failed to pin would leave this thread waiting for a pong forever.
    pin(b)?;
    pin(a)?;
    let ping = EventFd::new(0).context("eventfd")?;
    let pong = EventFd::new(0).context("eventfd")?;
    let (ping2, pong2) = (
        ping.try_clone().context("eventfd")?,
        pong.try_clone().context("eventfd")?,
    );
    let echo = thread::spawn(move || -> Result<()> {
        pin(b)?;
        for _ in 0..trips {
            ping2.read().context("read ping")?;
            pong2.write(1).context("write pong")?;
        }
        Ok(())
    });
    // Each sample runs on a fresh thread (see `measure`), so the caller's
    // own affinity is untouched.
    // The echo thread may still be migrating: the first trips are warm-up.
    let warm = trips / 10;
    let mut start = Instant::now();
    for i in 0..trips {
        if i == warm {
            start = Instant::now();
        }
        ping.write(1).context("write ping")?;
        pong.read().context("read pong")?;
    }
    let elapsed = start.elapsed();
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(elapsed / (2 * (trips - warm)))
}

/// Median of `samples` samples, each on a thread of its own.
fn measure(a: usize, b: usize, trips: u32, samples: usize) -> Result<Duration> {
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let d = thread::spawn(move || sample(a, b, trips))
            .join()
            .map_err(|_| anyhow::anyhow!("sampling thread panicked"))??;
        v.push(d);
    }
    v.sort();
    Ok(v[v.len() / 2])
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.trips < 10 {
        bail!("--trips must be at least 10");
    }
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let b = args.cpu_b.unwrap_or(cpus.saturating_sub(1));
    let same = measure(args.cpu_a, args.cpu_a, args.trips, args.samples)?;
    let cross = if b != args.cpu_a {
        Some(measure(args.cpu_a, b, args.trips, args.samples)?)
    } else {
        None
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    #[allow(clippy::print_stdout)] // the figures are this tool's output
    if args.kv {
        println!(
            "WAKECOST cpu_a={} cpu_b={b} same_cpu_us={:.1} cross_cpu_us={}",
            args.cpu_a,
            us(same),
            cross.map_or("-".into(), |c| format!("{:.1}", us(c)))
        );
    } else {
        println!(
            "one wake-up (eventfd, blocking): {:.1} µs on CPU {}",
            us(same),
            args.cpu_a
        );
        match cross {
            Some(c) => println!("across CPUs {} and {b}: {:.1} µs", args.cpu_a, us(c)),
            None => println!("one CPU only: no cross-CPU figure"),
        }
    }
    Ok(())
}
