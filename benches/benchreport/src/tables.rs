//! The markdown of `docs/benchmarks.md`: one section per benchmark kind,
//! each between `<!-- bench:NAME -->` markers so that a later run without
//! that kind keeps the earlier section.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{median, Record};

/// Contenders in the order the tables show them.
const ORDER: &[&str] = &["splitvm-blk", "base", "qsd", "fio", "null"];

const KEPT: &str = "*Kept from an earlier run of scripts/bench: not measured this time.*";

/// Medians of one contender on one workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Med {
    pub iops: f64,
    pub mib_s: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub runs: usize,
}

/// `(workloads in first-seen order, contenders, medians by (contender, workload))`.
pub type BlkTable = (Vec<String>, Vec<String>, BTreeMap<(String, String), Med>);

/// Groups the `blk` records and takes medians.
pub fn blk_medians(recs: &[Record]) -> BlkTable {
    let mut wls: Vec<String> = Vec::new();
    let mut cons: Vec<String> = Vec::new();
    let mut raw: BTreeMap<(String, String), Vec<&Record>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.kind == "blk") {
        let (c, w) = (r.s("contender").to_string(), r.s("wl").to_string());
        if !wls.contains(&w) {
            wls.push(w.clone());
        }
        if !cons.contains(&c) {
            cons.push(c.clone());
        }
        raw.entry((c, w)).or_default().push(r);
    }
    cons.sort_by_key(|c| ORDER.iter().position(|o| o == c).unwrap_or(ORDER.len()));
    let mut out = BTreeMap::new();
    for (k, rs) in raw {
        let m = |f: &str| median(rs.iter().filter_map(|r| r.n(f)).collect()).unwrap_or(0.0);
        out.insert(
            k,
            Med {
                iops: m("iops"),
                mib_s: m("mib_s"),
                p50: m("p50_us"),
                p99: m("p99_us"),
                p999: m("p999_us"),
                runs: rs.len(),
            },
        );
    }
    (wls, cons, out)
}

/// IOPS of every round, by (contender, workload) and then by round.
type Rounds = BTreeMap<(String, String), BTreeMap<String, f64>>;

fn blk_rounds(recs: &[Record]) -> Rounds {
    let mut out = Rounds::new();
    for r in recs.iter().filter(|r| r.kind == "blk") {
        if let Some(iops) = r.n("iops") {
            out.entry((r.s("contender").to_string(), r.s("wl").to_string()))
                .or_default()
                .insert(r.s("run").to_string(), iops);
        }
    }
    out
}

/// Median over the rounds both ran of `a`'s IOPS over `b`'s on `w`. The
/// contenders of a round run back to back, so a ratio taken within the
/// round cancels most of the disk's drift from one round to the next,
/// which a ratio of medians taken over all rounds keeps.
fn per_round(rounds: &Rounds, a: &str, b: &str, w: &str) -> Option<f64> {
    let ra = rounds.get(&(a.to_string(), w.to_string()))?;
    let rb = rounds.get(&(b.to_string(), w.to_string()))?;
    median(
        ra.iter()
            .filter_map(|(run, x)| rb.get(run).filter(|y| **y > 0.0).map(|y| x / y))
            .collect(),
    )
}

/// Display name of a contender.
pub fn label(c: &str) -> &str {
    match c {
        "splitvm-blk" => "splitvm-blk",
        "base" => "splitvm-blk (base build)",
        "qsd" => "qemu-storage-daemon",
        "fio" => "fio io_uring (limit)",
        "null" => "blkgen ceiling (null backend)",
        other => other,
    }
}

/// Header and rule lines of a table: the workload, one column per
/// contender, then the `extra` columns, all but the first right-aligned.
fn table_head<S: AsRef<str>>(cons: &[S], extra: &[&str]) -> String {
    let mut head = "| workload |".to_string();
    let mut rule = "| --- |".to_string();
    for c in cons
        .iter()
        .map(|c| label(c.as_ref()))
        .chain(extra.iter().copied())
    {
        let _ = write!(head, " {c} |");
        rule.push_str(" ---: |");
    }
    format!("{head}\n{rule}\n")
}

fn ratio(a: Option<&Med>, b: Option<&Med>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.iops > 0.0 => format!("{:.2}×", a.iops / b.iops),
        _ => "–".into(),
    }
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

fn blk_section(recs: &[Record]) -> Option<String> {
    let (wls, cons, med) = blk_medians(recs);
    let rounds = blk_rounds(recs);
    if wls.is_empty() {
        return None;
    }
    let get = |c: &str, w: &str| med.get(&(c.to_string(), w.to_string()));
    let mut s = String::new();
    let runs = med.values().map(|m| m.runs).min().unwrap_or(0);
    let _ = writeln!(
        s,
        "Medians of {runs}+ runs per cell (contenders alternate within every run). \
         IOPS, with MiB/s for the 128 KiB rows.\n"
    );
    s.push_str(&table_head(&cons, &["splitvm/qsd", "splitvm/fio"]));
    for w in &wls {
        let mut row = format!("| {w} |");
        for c in &cons {
            match get(c, w) {
                Some(m) if w.contains("128k") => {
                    let _ = write!(row, " {:.0} ({:.0} MiB/s) |", m.iops, m.mib_s);
                }
                Some(m) => {
                    let _ = write!(row, " {:.0} |", m.iops);
                }
                None => row.push_str(" – |"),
            }
        }
        let sv = get("splitvm-blk", w);
        let _ = writeln!(
            row,
            " {} | {} |",
            ratio(sv, get("qsd", w)),
            ratio(sv, get("fio", w))
        );
        s.push_str(&row);
    }
    let _ = writeln!(
        s,
        "\nLatency in µs, p50 / p99 / p99.9 (blkgen: submit to completion seen; fio: clat).\n"
    );
    s.push_str(&table_head(&cons, &[]));
    for w in &wls {
        let mut row = format!("| {w} |");
        for c in &cons {
            match get(c, w) {
                Some(m) => {
                    let _ = write!(row, " {:.0} / {:.0} / {:.0} |", m.p50, m.p99, m.p999);
                }
                None => row.push_str(" – |"),
            }
        }
        let _ = writeln!(s, "{row}");
    }
    if let Some(t) = placement_table(recs, &wls, &cons) {
        s.push_str(&t);
    }
    let _ = writeln!(
        s,
        "\nTargets of issue 9 (splitvm-blk): at least 0.9× fio, never below qsd, \
         p99 at or under qsd's, and at QD 1 at most half of the median latency qsd adds over fio.\n"
    );
    let _ = writeln!(
        s,
        "Each verdict is on the ratio of the medians above; next to it, \"per round\" is \
         the median of the ratios within each round. The contenders of a round run back \
         to back, so that figure cancels most of the disk's drift between rounds. The \
         last column says whether the generator itself (blkgen against the null \
         backend) reaches 0.9× fio: where it does not, no vhost-user backend measured \
         with it can.\n\n\
         | workload | ≥ 0.9× fio | ≥ qsd | p99 ≤ qsd | added p50 over fio (splitvm / qsd) | ceiling ≥ 0.9× fio |\n\
         | --- | --- | --- | --- | --- | --- |"
    );
    for w in &wls {
        let (Some(sv), Some(q), Some(f)) = (get("splitvm-blk", w), get("qsd", w), get("fio", w))
        else {
            continue;
        };
        let added = if w.ends_with("-qd1") {
            let (a, b) = (sv.p50 - f.p50, q.p50 - f.p50);
            format!("{a:.0} / {b:.0} µs: {}", yes(a <= b / 2.0))
        } else {
            "–".into()
        };
        let ceiling = match get("null", w) {
            Some(n) => format!(
                "{} ({:.2}×)",
                if n.iops >= 0.9 * f.iops { "yes" } else { "no" },
                n.iops / f.iops.max(1e-9)
            ),
            None => "–".into(),
        };
        let pr = |peer: &str| {
            per_round(&rounds, "splitvm-blk", peer, w)
                .map_or(String::new(), |r| format!("; per round {r:.2}×"))
        };
        let _ = writeln!(
            s,
            "| {w} | {} ({:.2}×{}) | {} ({:.2}×{}) | {} ({:.0} vs {:.0} µs) | {added} | {ceiling} |",
            yes(sv.iops >= 0.9 * f.iops),
            sv.iops / f.iops.max(1e-9),
            pr("fio"),
            yes(sv.iops >= q.iops),
            sv.iops / q.iops.max(1e-9),
            pr("qsd"),
            yes(sv.p99 <= q.p99),
            sv.p99,
            q.p99
        );
    }
    Some(s)
}

/// Where blkgen ran against each vhost-user backend (the records'
/// `same_cpu_pct`, from `blkgen --watch-pid`): median over the rounds,
/// with the smallest and largest round. `None` when no record has it.
fn placement_table(recs: &[Record], wls: &[String], cons: &[String]) -> Option<String> {
    let mut by: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for r in recs.iter().filter(|r| r.kind == "blk") {
        if let Some(p) = r.n("same_cpu_pct") {
            by.entry((r.s("contender"), r.s("wl"))).or_default().push(p);
        }
    }
    if by.is_empty() {
        return None;
    }
    let cons: Vec<&String> = cons
        .iter()
        .filter(|c| by.keys().any(|(k, _)| k == c))
        .collect();
    let mut s = String::from(
        "\nPlacement: in how many of blkgen's 10 ms samples it was on the same CPU as the \
         backend thread that ran most since the previous sample (median of the rounds, \
         smallest–largest round). On one CPU a completion's wake-up is local; across \
         CPUs it costs the cross-CPU figure of \"one wake-up\" above.\n\n",
    );
    s.push_str(&table_head(&cons, &[]));
    for w in wls {
        let mut row = format!("| {w} |");
        for c in &cons {
            match by.get(&(c.as_str(), w.as_str())) {
                Some(v) => {
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let m = median(v.clone()).unwrap_or(0.0);
                    let _ = write!(row, " {m:.0}% ({lo:.0}–{hi:.0}) |");
                }
                None => row.push_str(" – |"),
            }
        }
        let _ = writeln!(s, "{row}");
    }
    Some(s)
}

fn med_of(rs: &[&Record], f: &str) -> Option<f64> {
    median(rs.iter().filter_map(|r| r.n(f)).collect())
}

fn group<'a>(recs: &'a [Record], kind: &str, key: &[&str]) -> Vec<(String, Vec<&'a Record>)> {
    let mut out: Vec<(String, Vec<&Record>)> = Vec::new();
    for r in recs.iter().filter(|r| r.kind == kind) {
        let k = key.iter().map(|f| r.s(f)).collect::<Vec<_>>().join(" ");
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(r),
            None => out.push((k, vec![r])),
        }
    }
    out
}

fn net_section(recs: &[Record]) -> Option<String> {
    let groups = group(recs, "net", &["contender", "dir", "size"]);
    if groups.is_empty() {
        return None;
    }
    let mut s = String::from(
        "netgen (benches/netgen) drives splitvm-net's virtqueues as the guest would \
         and a tap inside a network namespace the bench creates; `tx` = guest to tap \
         (counted at the tap), `rx` = tap to guest (frames sent into the tap by a raw \
         socket in the namespace, counted as used RX buffers). Frame size excludes the \
         virtio-net header.\n\n\
         | backend | direction | frame bytes | packets/s | Gbit/s | runs |\n\
         | --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    for (_, rs) in groups {
        let r = rs[0];
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.3} | {} |",
            r.s("contender"),
            r.s("dir"),
            r.s("size"),
            med_of(&rs, "pps").unwrap_or(0.0),
            med_of(&rs, "gbit").unwrap_or(0.0),
            rs.len()
        );
    }
    Some(s)
}

fn restart_section(recs: &[Record]) -> Option<String> {
    let groups = group(recs, "restart", &["contender"]);
    if groups.is_empty() {
        return None;
    }
    let mut s = String::from(
        "Backend restart → first completed request (benches/restartgen, the \
         `blk_inflight_restart_timing` test as a bench): the tests' hostile frontend \
         keeps a 4 KiB write in flight in its INFLIGHT_SHMFD region, SIGKILLs \
         splitvm-blk, starts a new one on the same socket, reconnects as QEMU does and \
         waits for that write's used entry (resubmitted by the new process). Timed from \
         the new process's exec and from the accepted connection; medians over the runs \
         of each run's median / p99.\n\n\
         | backend | from exec: median | p99 | from reconnect: median | p99 | restarts per run | runs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (_, rs) in groups {
        let ms = |f: &str| med_of(&rs, f).unwrap_or(0.0) / 1000.0;
        let _ = writeln!(
            s,
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} |",
            rs[0].s("contender"),
            ms("median_us"),
            ms("p99_us"),
            ms("conn_median_us"),
            ms("conn_p99_us"),
            rs[0].s("restarts"),
            rs.len()
        );
    }
    Some(s)
}

fn boot_section(recs: &[Record]) -> Option<String> {
    let groups = group(recs, "boot", &["vmm"]);
    if groups.is_empty() {
        return None;
    }
    let mut s = String::from(
        "scripts/bench-boot, inside the nested lab (level 1 is QEMU/TCG with KVM \
         inside): the same level-2 Debian guest (vmlinux + initramfs, 1 vCPU, 256 MiB) \
         under splitvm and under `qemu-system-x86_64 -M microvm -enable-kvm -cpu host`, \
         alternating. Milliseconds from exec; peak RSS of the VMM process.\n\n\
         | VMM | first serial byte | /init | exit | peak RSS | runs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut meds: BTreeMap<String, [f64; 4]> = BTreeMap::new();
    for (vmm, rs) in &groups {
        let ok: Vec<&Record> = rs
            .iter()
            .copied()
            .filter(|r| r.s("rc") == "0" && r.n("match0_ms").is_some_and(|v| v >= 0.0))
            .collect();
        let m = [
            med_of(&ok, "first_byte_ms").unwrap_or(f64::NAN),
            med_of(&ok, "match0_ms").unwrap_or(f64::NAN),
            med_of(&ok, "exit_ms").unwrap_or(f64::NAN),
            med_of(&ok, "maxrss_kb").unwrap_or(f64::NAN),
        ];
        let _ = writeln!(
            s,
            "| {vmm} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB | {}/{} |",
            m[0],
            m[1],
            m[2],
            m[3] / 1024.0,
            ok.len(),
            rs.len()
        );
        meds.insert(vmm.clone(), m);
    }
    if let (Some(a), Some(b)) = (meds.get("splitvm"), meds.get("qemu")) {
        let _ = writeln!(
            s,
            "| splitvm/qemu | {:.2}× | {:.2}× | {:.2}× | {:.2}× | |",
            a[0] / b[0],
            a[1] / b[1],
            a[2] / b[2],
            a[3] / b[3]
        );
    }
    Some(s)
}

/// The previous text of section `name`, if `old` has one.
fn previous(old: &str, name: &str) -> Option<String> {
    let open = format!("<!-- bench:{name} -->\n");
    let close = format!("<!-- /bench:{name} -->");
    let a = old.find(&open)? + open.len();
    let b = a + old[a..].find(&close)?;
    let body = old[a..b].trim_end();
    if body.is_empty() {
        return None;
    }
    Some(if body.starts_with(KEPT) {
        body.to_string()
    } else {
        format!("{KEPT}\n\n{body}")
    })
}

fn section(out: &mut String, title: &str, name: &str, now: Option<String>, old: &str) {
    let body = now
        .map(|b| b.trim_end().to_string())
        .or_else(|| previous(old, name))
        .unwrap_or_else(|| "*Not measured yet.*".into());
    let _ = writeln!(
        out,
        "## {title}\n\n<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->\n"
    );
}

/// The whole report.
pub fn render(recs: &[Record], machine: &str, old: &str, command: &str, plot: &str) -> String {
    let mut s = String::from(
        "# Benchmarks\n\n\
         Generated by `scripts/bench` (do not edit by hand; rerun it). Every contender \
         runs on the same machine in the same run, alternating (one run of each, then \
         the next round), and every figure is the median of the rounds. The machine is \
         shared and noisy (see below): compare ratios within one report, not absolute \
         numbers across reports.\n\n",
    );
    // The machine and method text comes from the script: markdown with
    // its own headings.
    let _ = writeln!(s, "Command: `{command}`\n\n{}\n", machine.trim_end());
    section(
        &mut s,
        "Block: vhost-user-blk",
        "blk",
        blk_section(recs),
        old,
    );
    let _ = writeln!(s, "{plot}\n");
    section(
        &mut s,
        "Network: virtqueues ↔ tap",
        "net",
        net_section(recs),
        old,
    );
    section(
        &mut s,
        "Backend restart",
        "restart",
        restart_section(recs),
        old,
    );
    section(
        &mut s,
        "VMM boot (nested lab)",
        "boot",
        boot_section(recs),
        old,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_round_pairs_rounds_not_medians() {
        // The disk halves its speed in round 2: both contenders see it, so
        // each round's ratio is 0.9 while the ratio of medians is not.
        let recs: Vec<Record> = [
            "blk contender=splitvm-blk wl=w run=1 iops=90",
            "blk contender=fio wl=w run=1 iops=100",
            "blk contender=splitvm-blk wl=w run=2 iops=45",
            "blk contender=fio wl=w run=2 iops=50",
            "blk contender=splitvm-blk wl=w run=3 iops=45",
            "blk contender=fio wl=w run=3 iops=100",
            // A round only one side ran is left out.
            "blk contender=splitvm-blk wl=w run=4 iops=1",
        ]
        .iter()
        .filter_map(|l| crate::parse_line(l))
        .collect();
        let rounds = blk_rounds(&recs);
        let r = per_round(&rounds, "splitvm-blk", "fio", "w");
        assert_eq!(r, Some(0.9));
        assert_eq!(per_round(&rounds, "splitvm-blk", "qsd", "w"), None);
    }

    #[test]
    fn placement_table_gives_median_and_range_per_contender() {
        let recs: Vec<Record> = [
            "blk contender=splitvm-blk wl=w run=1 iops=9 same_cpu_pct=0",
            "blk contender=splitvm-blk wl=w run=2 iops=9 same_cpu_pct=80",
            "blk contender=splitvm-blk wl=w run=3 iops=9 same_cpu_pct=10",
            "blk contender=qsd wl=w run=1 iops=9 same_cpu_pct=100",
            // fio has no placement record: no column.
            "blk contender=fio wl=w run=1 iops=9",
        ]
        .iter()
        .filter_map(|l| crate::parse_line(l))
        .collect();
        let (wls, cons, _) = blk_medians(&recs);
        let t = placement_table(&recs, &wls, &cons).unwrap();
        assert!(t.contains("| splitvm-blk | qemu-storage-daemon |\n"), "{t}");
        assert!(t.contains("| w | 10% (0–80) | 100% (100–100) |"), "{t}");
        assert!(placement_table(&recs[4..], &wls, &cons).is_none());
    }
}
