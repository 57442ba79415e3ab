//! Reading the lab's output: level-2 runs by name (`[l2:NAME] ...`,
//! `L2-START`, `L2-EXIT`) and level-1 checks (`L1-RESULT k=v`, or a
//! scenario's own `TAG-L1 k=v ...` lines).

use std::collections::BTreeMap;

use super::L2Run;

/// Everything parsed from one lab log.
#[derive(Debug, Default)]
pub struct Parsed {
    /// `SPLITVM-L1-DONE rc=N`.
    pub l1_done: Option<i32>,
    pub l2: BTreeMap<String, L2Run>,
    /// Level-1 results: `L1-RESULT k=v`, and each `k=v` of `TAG-L1 ...` lines.
    pub l1: BTreeMap<String, String>,
}

/// Splits lab output into level-2 runs: `[l2:NAME] RESULT k=v`,
/// `[l2:NAME] SPLITVM-L2-INIT`, `[l2:NAME] SPLITVM-L2-DONE rc=N`,
/// `L2-EXIT name=NAME rc=N ms=T` and `SPLITVM-L1-DONE rc=N` (each possibly
/// behind an `[l1] ` prefix).
pub fn parse_lines(lines: &[String]) -> Parsed {
    let mut l1 = BTreeMap::new();
    let mut l1_done = None;
    let mut runs: BTreeMap<String, L2Run> = BTreeMap::new();
    for raw in lines {
        let line = raw.strip_prefix("[l1] ").unwrap_or(raw);
        if let Some(rc) = line.strip_prefix("SPLITVM-L1-DONE rc=") {
            l1_done = rc.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("L2-EXIT ") {
            let fields: BTreeMap<&str, &str> = rest
                .split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect();
            if let Some(name) = fields.get("name") {
                let r = runs.entry(name.to_string()).or_default();
                r.exit = fields.get("rc").and_then(|v| v.parse().ok());
                r.millis = fields.get("ms").and_then(|v| v.parse().ok());
            }
        } else if let Some(rest) = line.strip_prefix("L2-START name=") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            runs.entry(name.to_string()).or_default();
        } else if let Some(kv) = line.strip_prefix("L1-RESULT ") {
            if let Some((k, v)) = kv.split_once('=') {
                l1.insert(k.to_string(), v.trim_end().to_string());
            }
        } else if let Some((tag, rest)) = line.split_once("-L1 ") {
            if !tag.is_empty() && tag.chars().all(|c| c.is_ascii_uppercase()) {
                for (k, v) in rest.split_whitespace().filter_map(|f| f.split_once('=')) {
                    l1.insert(k.to_string(), v.to_string());
                }
            }
        } else if let Some(rest) = line.strip_prefix("[l2:") {
            let Some((name, text)) = rest.split_once("] ") else {
                continue;
            };
            let r = runs.entry(name.to_string()).or_default();
            r.lines.push(text.to_string());
            if let Some(kv) = text.strip_prefix("RESULT ") {
                if let Some((k, v)) = kv.split_once('=') {
                    r.results.insert(k.to_string(), v.to_string());
                }
            } else if text.starts_with("SPLITVM-L2-INIT") {
                r.init_seen = true;
            } else if let Some(rc) = text.strip_prefix("SPLITVM-L2-DONE rc=") {
                r.done_rc = rc.trim().parse().ok();
            }
        }
    }
    Parsed {
        l1_done,
        l2: runs,
        l1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_lines_splits_runs() {
        let lines: Vec<String> = [
            "[l1] L2-START name=a vmm=qemu t=1.0",
            "[l1] [l2:a] SPLITVM-L2-INIT",
            "[l1] [l2:a] RESULT nproc=2",
            "[l1] [l2:a] RESULT cmdline=console=ttyS0 x=y",
            "[l1] [l2:a] SPLITVM-L2-DONE rc=0",
            "[l1] L2-EXIT name=a rc=0 ms=1234.5",
            "[l1] [l2:b] RESULT nproc=1",
            "[l1] L2-EXIT name=b rc=124 ms=9.0",
            "[l1] SPLITVM-L1-DONE rc=1",
        ]
        .map(String::from)
        .to_vec();
        let p = parse_lines(&lines);
        let (done, runs) = (p.l1_done, p.l2);
        assert_eq!(done, Some(1));
        let a = &runs["a"];
        assert!(a.init_seen);
        assert_eq!(a.done_rc, Some(0));
        assert_eq!(a.exit, Some(0));
        assert_eq!(a.millis, Some(1234.5));
        assert_eq!(a.results["nproc"], "2");
        assert_eq!(a.results["cmdline"], "console=ttyS0 x=y");
        let b = &runs["b"];
        assert!(!b.init_seen);
        assert_eq!(b.exit, Some(124));
        assert_eq!(b.results["nproc"], "1");
    }

    #[test]
    fn parse_lines_collects_level1_results() {
        let lines: Vec<String> = [
            "[l1] L1-RESULT blk_img_md5=abc def",
            "[l1] INPUT-L1 evdev_module=missing other=1",
            "[l1] [l2:x] RESULT k=v",
        ]
        .map(String::from)
        .to_vec();
        let p = parse_lines(&lines);
        assert_eq!(p.l1["blk_img_md5"], "abc def");
        assert_eq!(p.l1["evdev_module"], "missing");
        assert_eq!(p.l1["other"], "1");
        assert_eq!(p.l2["x"].results["k"], "v");
    }
}
