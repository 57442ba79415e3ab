//! `blkgen`: a vhost-user-blk load generator. Connects to a backend socket
//! as a frontend through the `blkio` crate (driver `virtio-blk-vhost-user`),
//! keeps `--qd` requests of `--bs` bytes in flight at random aligned offsets
//! (or sequential) offsets for `--seconds`, and prints one line: IOPS,
//! bandwidth and p50/p99/p99.9 latency; with `--kv` also one
//! `BLKGEN key=value ...` line for scripts (`scripts/bench`). With
//! `--watch-pid` it also records where it and the backend ran
//! ([`placement`]).

mod placement;

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blkio::{Blkio, Completion, ReqFlags};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Pattern {
    Randread,
    Randwrite,
    /// Sequential read, wrapping at the end of the device.
    Read,
    /// Sequential write, wrapping at the end of the device.
    Write,
}

/// vhost-user-blk load generator.
#[derive(Parser, Debug)]
#[command(name = "blkgen")]
struct Args {
    /// vhost-user-blk socket of the backend under test.
    #[arg(long)]
    socket: String,
    /// Label printed at the start of the result line.
    #[arg(long, default_value = "backend")]
    label: String,
    /// Access pattern.
    #[arg(long, value_enum, default_value_t = Pattern::Randread)]
    rw: Pattern,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    /// Requests kept in flight.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Measured run time in seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Warm-up in seconds: requests run but are not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Virtqueues to set up (requests use the first).
    #[arg(long, default_value_t = 1)]
    queues: i32,
    /// Also print one machine-readable `BLKGEN key=value ...` line.
    #[arg(long)]
    kv: bool,
    /// Use a libblkio poll queue: wait for completions by spinning on the
    /// used ring instead of sleeping on the call eventfd (one core busy).
    #[arg(long)]
    poll: bool,
    /// Give up (exit 1) when no request completes for this many seconds:
    /// a backend that lost a request fails the run instead of hanging it.
    #[arg(long, default_value_t = 10.0)]
    stall_secs: f64,
    /// The backend's process id: sample, during the measured window, whether
    /// blkgen and the backend's busiest thread run on one CPU.
    #[arg(long)]
    watch_pid: Option<u32>,
}

/// xorshift64*: reproducible offsets without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.qd == 0 || a.bs == 0 || a.bs % 512 != 0 {
        bail!("--qd must be > 0 and --bs a non-zero multiple of 512");
    }
    let mut b = Blkio::new("virtio-blk-vhost-user").context("blkio driver")?;
    b.set_str("path", &a.socket).context("path")?;
    b.connect().context("connect")?;
    if a.poll {
        b.set_i32("num-queues", a.queues - 1)
            .context("num-queues")?;
        b.set_i32("num-poll-queues", 1).context("num-poll-queues")?;
    } else {
        b.set_i32("num-queues", a.queues).context("num-queues")?;
    }
    let mut started = b.start().context("start")?;
    let capacity = b.get_u64("capacity").context("capacity")?;
    let blocks = capacity / a.bs as u64;
    if blocks == 0 {
        bail!("device smaller than one block");
    }
    let region = b
        .alloc_mem_region(a.qd * a.bs)
        .context("alloc_mem_region")?;
    b.map_mem_region(&region).context("map_mem_region")?;
    let mut q = if a.poll {
        started.poll_queues.remove(0)
    } else {
        started.queues.remove(0)
    };

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sent = vec![Instant::now(); a.qd];
    let mut seq = 0u64;
    let submit = |q: &mut blkio::Blkioq, rng: &mut Rng, seq: &mut u64, slot: usize| {
        let block = match a.rw {
            Pattern::Randread | Pattern::Randwrite => rng.next() % blocks,
            Pattern::Read | Pattern::Write => {
                let b = *seq % blocks;
                *seq += 1;
                b
            }
        };
        let off = block * a.bs as u64;
        let buf = (region.addr + slot * a.bs) as *mut u8;
        match a.rw {
            Pattern::Randread | Pattern::Read => q.read(off, buf, a.bs, slot, ReqFlags::empty()),
            Pattern::Randwrite | Pattern::Write => q.write(off, buf, a.bs, slot, ReqFlags::empty()),
        }
    };
    for (slot, t) in sent.iter_mut().enumerate() {
        *t = Instant::now();
        submit(&mut q, &mut rng, &mut seq, slot);
    }
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..a.qd).map(|_| MaybeUninit::uninit()).collect();
    let warm_until = Instant::now() + Duration::from_secs_f64(a.warmup.max(0.0));
    let end = warm_until + Duration::from_secs_f64(a.seconds.max(0.01));
    let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 20);
    let sampler = a
        .watch_pid
        .map(|pid| placement::Sampler::start(pid, warm_until))
        .transpose()
        .context("placement sampler")?;
    let mut measured_start = None;
    let mut done = 0u64;
    let stall = Duration::from_secs_f64(a.stall_secs.max(0.001));
    loop {
        let mut timeout = stall;
        let n = q
            .do_io(&mut comps, 1, Some(&mut timeout), None)
            .with_context(|| {
                format!(
                    "no completion within {:.1} s ({} requests in flight): the backend stalled",
                    a.stall_secs, a.qd
                )
            })?;
        let now = Instant::now();
        let stop = now >= end;
        for c in &comps[..n] {
            // SAFETY: `do_io` initialised the first `n` completions.
            let c = unsafe { c.assume_init_ref() };
            if c.ret != 0 {
                bail!("request failed: ret {}", c.ret);
            }
            let slot = c.user_data;
            if now >= warm_until {
                measured_start.get_or_insert(now);
                done += 1;
                let us = now.duration_since(sent[slot]).as_micros();
                lat_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            if !stop {
                sent[slot] = Instant::now();
                submit(&mut q, &mut rng, &mut seq, slot);
            }
        }
        if stop {
            break;
        }
    }
    let secs = measured_start
        .map(|s| Instant::now().duration_since(s).as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-9);
    let placement = sampler.map(placement::Sampler::finish);
    lat_us.sort_unstable();
    let iops = done as f64 / secs;
    let mib_s = iops * a.bs as f64 / f64::from(1 << 20);
    let (p50, p99, p999) = (
        percentile(&lat_us, 0.50),
        percentile(&lat_us, 0.99),
        percentile(&lat_us, 0.999),
    );
    let rw = format!("{:?}", a.rw).to_lowercase();
    println!(
        "{}: {rw} bs={} qd={} IOPS {iops:.0} {mib_s:.1} MiB/s p50 {p50} us p99 {p99} us \
         p99.9 {p999} us ({done} requests in {secs:.2} s)",
        a.label, a.bs, a.qd,
    );
    if let Some(p) = placement {
        println!(
            "{}: same CPU as the backend in {:.0}% of {} samples",
            a.label,
            p.same_cpu_pct(),
            p.samples
        );
    }
    if a.kv {
        let place = placement.map_or(String::new(), |p| {
            format!(
                " same_cpu_pct={:.0} placement_samples={}",
                p.same_cpu_pct(),
                p.samples
            )
        });
        println!(
            "BLKGEN label={} rw={rw} bs={} qd={} iops={iops:.0} mib_s={mib_s:.1} \
             p50_us={p50} p99_us={p99} p999_us={p999} requests={done}{place}",
            a.label, a.bs, a.qd,
        );
    }
    Ok(())
}
