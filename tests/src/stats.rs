//! Small statistics for measured (not asserted) figures the tests print.

use std::time::Duration;

/// The `p` quantile (0.0..=1.0) of an ascending slice (nearest rank).
/// Panics on an empty slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// "median M, p99 P, max X" of `times` (sorted here).
pub fn summary(times: &mut [Duration]) -> String {
    times.sort();
    format!(
        "median {:?}, p99 {:?}, max {:?}",
        percentile(times, 0.5),
        percentile(times, 0.99),
        times[times.len() - 1]
    )
}
