//! Where the generator and the backend ran: a sampler thread that, every
//! [`PERIOD`] of the measured window, reads the CPU blkgen's I/O thread
//! last ran on and the CPU of the backend thread that ran most since the
//! previous sample (`/proc/PID/task/*/{stat,schedstat}`). Whether the two
//! shared a CPU decides what a completion's wake-up costs (benches/wakecost),
//! so a report can state the placement of each cell instead of inferring it.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Sampling period: 100 samples in a one-second cell, and a wake-up too
/// rare to move the figures it describes.
const PERIOD: Duration = Duration::from_millis(10);

/// What the samples found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Samples in which the backend had run since the previous one.
    pub samples: u32,
    /// Of those, samples with the generator on the backend thread's CPU.
    pub same_cpu: u32,
}

impl Placement {
    pub fn same_cpu_pct(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.same_cpu) / f64::from(self.samples)
    }
}

/// A running sampler; [`Sampler::finish`] stops it.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Placement>,
}

impl Sampler {
    /// Starts sampling the calling thread against process `pid` from
    /// `from` on.
    pub fn start(pid: u32, from: Instant) -> std::io::Result<Self> {
        let me = fs::read_link("/proc/thread-self")?;
        let me = format!("/proc/{}/stat", me.display());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("placement".into())
            .spawn(move || sample(&me, pid, from, &flag))?;
        Ok(Sampler { stop, handle })
    }

    pub fn finish(self) -> Placement {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn sample(me: &str, pid: u32, from: Instant, stop: &AtomicBool) -> Placement {
    let mut out = Placement::default();
    let mut ran: HashMap<String, u64> = HashMap::new();
    if let Some(wait) = from.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    // The first pass only records run times: nothing to compare with yet.
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let gen = fs::read_to_string(me).ok().and_then(|s| last_cpu(&s));
        let busiest = busiest_thread(pid, &mut ran);
        if !first {
            if let (Some(g), Some(b)) = (gen, busiest) {
                out.samples += 1;
                out.same_cpu += u32::from(g == b);
            }
        }
        first = false;
        thread::sleep(PERIOD);
    }
    out
}

/// The CPU of the thread of `pid` that ran longest since the previous
/// call (run times kept in `ran`), or `None` when none ran.
fn busiest_thread(pid: u32, ran: &mut HashMap<String, u64>) -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let dir = e.path();
        let Some(ns) = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(cpu) = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| last_cpu(&s))
        else {
            continue;
        };
        let key = dir.display().to_string();
        let delta = ns.saturating_sub(ran.insert(key, ns).unwrap_or(ns));
        if delta > 0 && best.is_none_or(|(d, _)| delta > d) {
            best = Some((delta, cpu));
        }
    }
    best.map(|(_, cpu)| cpu)
}

/// Field 39 of `/proc/.../stat` (`processor`): the CPU the thread last ran
/// on. Counted after the command name, which may hold spaces and ')'.
fn last_cpu(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_cpu_skips_a_command_name_with_spaces_and_parens() {
        let mut fields = vec!["S".to_string()];
        // Fields 4..=38, then 39 = 7.
        fields.extend((4..=38).map(|i| i.to_string()));
        fields.push("7".into());
        fields.push("0".into());
        let stat = format!("123 (a) b (c) {}", fields.join(" "));
        assert_eq!(last_cpu(&stat), Some(7));
        assert_eq!(last_cpu("123 (x) S 1 2"), None);
    }

    #[test]
    fn this_thread_has_a_cpu_and_a_busy_process_is_sampled() {
        let s = fs::read_to_string("/proc/thread-self/stat").unwrap();
        let cpu = last_cpu(&s).unwrap();
        assert!(cpu < 4096);
        // This process, watched while this thread spins: every sample
        // finds a thread of it that ran.
        let sampler = Sampler::start(std::process::id(), Instant::now()).unwrap();
        let end = Instant::now() + Duration::from_millis(80);
        while Instant::now() < end {
            std::hint::spin_loop();
        }
        let p = sampler.finish();
        assert!(p.samples >= 3, "{p:?}");
        // The busiest thread is the spinner, which is also the generator.
        assert!(p.same_cpu * 2 > p.samples, "{p:?}");
    }
}
