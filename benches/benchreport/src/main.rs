//! `benchreport`: the reporting half of `scripts/bench`.
//!
//! * `benchreport fio-kv` turns one `fio --output-format=json` result into
//!   the same `blk key=value ...` record that blkgen's `--kv` line becomes.
//! * `benchreport report` reads every record of a run (one per line:
//!   `blk`, `net`, `restart`, `boot` followed by `key=value` fields), takes
//!   the median of each metric per contender and workload, and writes
//!   `docs/benchmarks.md` (tables, ratios, target checks) and the PNG plot
//!   of IOPS against queue depth (`plot.rs`). A section with no records in
//!   this run (say the boot benchmark, which is optional) keeps the text it
//!   had in the previous file, marked as such.

mod plot;
mod tables;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Report generator for scripts/bench.
#[derive(Parser, Debug)]
#[command(name = "benchreport")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Reads fio's JSON on stdin, prints one `blk ...` record.
    FioKv {
        /// Contender name.
        #[arg(long)]
        label: String,
        /// Workload id (`randread-4k-qd1`, ...).
        #[arg(long)]
        wl: String,
        /// Run number.
        #[arg(long)]
        run: u32,
    },
    /// Writes the markdown report and the plot.
    Report {
        /// Records, one per line.
        #[arg(long)]
        results: PathBuf,
        /// Machine and method description (markdown with its own
        /// headings, included verbatim).
        #[arg(long)]
        machine: PathBuf,
        /// Output markdown (its previous sections are reused when a
        /// section has no records now).
        #[arg(long)]
        out: PathBuf,
        /// Output PNG.
        #[arg(long)]
        plot: PathBuf,
        /// How the run was started (quoted in the report).
        #[arg(long, default_value = "scripts/bench")]
        command: String,
    },
}

/// One parsed line: its kind and fields.
#[derive(Debug, Clone)]
pub struct Record {
    /// `blk`, `net`, `restart`, `boot`.
    pub kind: String,
    /// Fields.
    pub f: BTreeMap<String, String>,
}

impl Record {
    /// A field as text ("" when missing).
    pub fn s(&self, k: &str) -> &str {
        self.f.get(k).map(String::as_str).unwrap_or("")
    }

    /// A field as a number.
    pub fn n(&self, k: &str) -> Option<f64> {
        self.f.get(k).and_then(|v| v.parse().ok())
    }
}

fn parse_line(line: &str) -> Option<Record> {
    let mut it = line.split_whitespace();
    let kind = it.next()?.to_string();
    let f = it
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Record { kind, f })
}

/// Median of `v` (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fio_kv(label: &str, wl: &str, run: u32) -> Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    // fio may print warnings before the JSON object.
    let start = s.find('{').context("no JSON object in fio's output")?;
    let v: serde_json::Value = serde_json::from_str(&s[start..]).context("fio JSON")?;
    let job = &v["jobs"][0];
    let opts = &job["job options"];
    let rw = opts["rw"].as_str().unwrap_or("?").to_string();
    let side = if rw.contains("read") { "read" } else { "write" };
    let d = &job[side];
    let iops = d["iops"].as_f64().context("iops")?;
    let kib_s = d["bw"].as_f64().context("bw")?;
    let pct = |p: &str| -> f64 {
        d["clat_ns"]["percentile"][p]
            .as_f64()
            .map(|ns| (ns / 1000.0).round())
            .unwrap_or(-1.0)
    };
    if job["error"].as_i64().unwrap_or(0) != 0 {
        bail!("fio job error {}", job["error"]);
    }
    let bs = opts["bs"].as_str().unwrap_or("?");
    let qd = opts["iodepth"].as_str().unwrap_or("?");
    Ok(format!(
        "blk contender={label} wl={wl} rw={rw} bs={bs} qd={qd} run={run} iops={iops:.0} \
         mib_s={:.1} p50_us={} p99_us={} p999_us={}",
        kib_s / 1024.0,
        pct("50.000000"),
        pct("99.000000"),
        pct("99.900000"),
    ))
}

fn main() -> Result<()> {
    match Args::parse().cmd {
        Cmd::FioKv { label, wl, run } => {
            let line = fio_kv(&label, &wl, run)?;
            #[allow(clippy::print_stdout)] // the record is this command's output
            {
                println!("{line}");
            }
        }
        Cmd::Report {
            results,
            machine,
            out,
            plot,
            command,
        } => {
            let text = fs::read_to_string(&results)
                .with_context(|| format!("read {}", results.display()))?;
            let recs: Vec<Record> = text.lines().filter_map(parse_line).collect();
            let machine = fs::read_to_string(&machine).unwrap_or_default();
            let old = fs::read_to_string(&out).unwrap_or_default();
            let plot_name = plot
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let plot_note = match plot::draw(&recs, &plot) {
                Ok(()) => format!("![IOPS vs queue depth]({plot_name})"),
                Err(e) => format!("(plot not drawn: {e:#})"),
            };
            let md = tables::render(&recs, &machine, &old, &command, &plot_note);
            fs::write(&out, md).with_context(|| format!("write {}", out.display()))?;
        }
    }
    Ok(())
}
