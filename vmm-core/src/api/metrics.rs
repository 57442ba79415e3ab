//! `GET /metrics`: [`Metrics`] in the Prometheus text exposition format
//! (version 0.0.4), one HELP and TYPE line per family; and the reading of
//! a backend's own counters from its metrics socket.

use std::fmt::Write;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Metrics;

/// Appended to a backend's vhost-user socket path to name its metrics
/// socket (the splitvm backends' convention, `splitvm_backends::metrics`).
pub const BACKEND_METRICS_SUFFIX: &str = ".metrics";

/// How long a backend may take to answer on its metrics socket.
const BACKEND_TIMEOUT: Duration = Duration::from_millis(200);

/// The longest answer read from a metrics socket.
const BACKEND_MAX_LINE: u64 = 4096;

/// What a backend's metrics socket answers (one JSON line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BackendCounters {
    pub requests: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub io_errors: u64,
}

/// The metrics socket of the backend listening on `socket`.
pub fn backend_metrics_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_os_string();
    s.push(BACKEND_METRICS_SUFFIX);
    PathBuf::from(s)
}

/// Reads the counters of the backend on `socket` from its metrics socket;
/// `None` when it has none (not a splitvm backend, or gone) or answers
/// nothing usable within [`BACKEND_TIMEOUT`].
pub fn backend_counters(socket: &Path) -> Option<BackendCounters> {
    backend_counters_all(&[socket]).pop().flatten()
}

/// [`backend_counters`] for every socket, asked all at once: the backends
/// answer in parallel, so hung ones cost [`BACKEND_TIMEOUT`] in all, not
/// each.
pub fn backend_counters_all(sockets: &[&Path]) -> Vec<Option<BackendCounters>> {
    let asked: Vec<_> = sockets
        .iter()
        .map(|s| {
            let path = backend_metrics_path(s);
            // A backend writes its line as it accepts: connecting asks.
            let conn = UnixStream::connect(&path).ok();
            (path, conn)
        })
        .collect();
    let deadline = Instant::now() + BACKEND_TIMEOUT;
    asked
        .into_iter()
        .map(|(path, conn)| read_counters(&path, conn?, deadline))
        .collect()
}

fn read_counters(path: &Path, s: UnixStream, deadline: Instant) -> Option<BackendCounters> {
    // A zero timeout means "block forever" to the socket: at least 1 ms.
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).ok()?;
    let mut line = String::new();
    if let Err(e) = s.take(BACKEND_MAX_LINE).read_to_string(&mut line) {
        log::debug!("{}: {e}", path.display());
        return None;
    }
    match serde_json::from_str(line.trim_end()) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("{}: unusable answer: {e}", path.display());
            None
        }
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders `m` as Prometheus text.
pub fn render_prometheus(m: &Metrics) -> String {
    let mut out = String::new();
    // `None`: no sample for that device (its backend exports no counters).
    type Field = fn(&super::DeviceMetrics) -> Option<u64>;
    let device_families: [(&str, &str, &str, Field); 8] = [
        (
            "splitvm_device_requests_total",
            "counter",
            "Requests the device's backend completed (advance of its used rings).",
            |d| Some(d.requests),
        ),
        (
            "splitvm_device_in_flight",
            "gauge",
            "Requests the guest made available that the backend has not completed.",
            |d| Some(d.in_flight),
        ),
        (
            "splitvm_device_reconnects_total",
            "counter",
            "Times the VMM reconnected the device to a backend.",
            |d| Some(d.reconnects),
        ),
        (
            "splitvm_device_errors_total",
            "counter",
            "Failed vhost-user requests to the device's backend.",
            |d| Some(d.errors),
        ),
        (
            "splitvm_device_backend_requests_total",
            "counter",
            "Requests the backend process counted as completed (since it started).",
            |d| d.backend_requests,
        ),
        (
            "splitvm_device_bytes_read_total",
            "counter",
            "Bytes the backend read from guest buffers (block writes, net TX), since it started.",
            |d| d.bytes_read,
        ),
        (
            "splitvm_device_bytes_written_total",
            "counter",
            "Bytes the backend wrote into guest buffers (block reads, net RX, input events), since it started.",
            |d| d.bytes_written,
        ),
        (
            "splitvm_device_io_errors_total",
            "counter",
            "Requests the backend completed with an error status, since it started.",
            |d| d.io_errors,
        ),
    ];
    for (name, kind, help, get) in device_families {
        family(&mut out, name, kind, help);
        for d in &m.devices {
            if let Some(v) = get(d) {
                let _ = writeln!(out, "{name}{{device=\"{}\"}} {v}", label(&d.name));
            }
        }
    }
    family(
        &mut out,
        "splitvm_vcpu_exits_total",
        "counter",
        "VM exits the VMM handled, by vCPU and reason.",
    );
    for v in &m.vcpus {
        for (reason, n) in [
            ("io", v.io_exits),
            ("mmio", v.mmio_exits),
            ("other", v.other_exits),
        ] {
            let _ = writeln!(
                out,
                "splitvm_vcpu_exits_total{{vcpu=\"{}\",reason=\"{reason}\"}} {n}",
                v.id
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{DeviceMetrics, VcpuMetrics};
    use super::*;

    #[test]
    fn prometheus_text_has_families_and_samples() {
        let m = Metrics {
            devices: vec![DeviceMetrics {
                name: "blk\"0".into(),
                requests: 7,
                in_flight: 2,
                reconnects: 1,
                errors: 0,
                ..DeviceMetrics::default()
            }],
            vcpus: vec![VcpuMetrics {
                id: 1,
                io_exits: 3,
                mmio_exits: 4,
                other_exits: 5,
            }],
        };
        let t = render_prometheus(&m);
        assert!(t.contains("# TYPE splitvm_device_requests_total counter\n"));
        assert!(t.contains("# TYPE splitvm_device_in_flight gauge\n"));
        assert!(t.contains("splitvm_device_requests_total{device=\"blk\\\"0\"} 7\n"));
        assert!(t.contains("splitvm_vcpu_exits_total{vcpu=\"1\",reason=\"mmio\"} 4\n"));
        assert!(t.ends_with('\n'));
        // No backend counters: the families are declared, with no sample.
        assert!(t.contains("# TYPE splitvm_device_bytes_read_total counter\n"));
        assert!(!t.contains("splitvm_device_bytes_read_total{"), "{t}");
    }

    #[test]
    fn backend_counters_render_when_present_and_null_in_json_when_not() {
        let with = DeviceMetrics {
            name: "blk0".into(),
            backend_requests: Some(3),
            bytes_read: Some(4096),
            bytes_written: Some(512),
            io_errors: Some(1),
            ..DeviceMetrics::default()
        };
        let without = DeviceMetrics {
            name: "qsd0".into(),
            ..DeviceMetrics::default()
        };
        let m = Metrics {
            devices: vec![with, without],
            vcpus: Vec::new(),
        };
        let t = render_prometheus(&m);
        assert!(t.contains("splitvm_device_bytes_read_total{device=\"blk0\"} 4096\n"));
        assert!(t.contains("splitvm_device_bytes_written_total{device=\"blk0\"} 512\n"));
        assert!(t.contains("splitvm_device_io_errors_total{device=\"blk0\"} 1\n"));
        assert!(t.contains("splitvm_device_backend_requests_total{device=\"blk0\"} 3\n"));
        assert!(!t.contains("bytes_read_total{device=\"qsd0\"}"), "{t}");
        // The ring counters are there for both.
        assert!(t.contains("splitvm_device_requests_total{device=\"qsd0\"} 0\n"));
        let j: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(j["devices"][0]["bytes_read"], 4096);
        assert!(j["devices"][1]["bytes_read"].is_null());
        assert!(j["devices"][1]["io_errors"].is_null());
        assert!(j["devices"][1]
            .as_object()
            .unwrap()
            .contains_key("bytes_written"));
    }

    #[test]
    fn backend_counters_come_from_the_metrics_socket() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("blk0.sock");
        // No metrics socket: none.
        assert_eq!(backend_counters(&sock), None);
        let l = std::os::unix::net::UnixListener::bind(backend_metrics_path(&sock)).unwrap();
        let t = std::thread::spawn(move || {
            for line in [
                "{\"requests\":2,\"bytes_read\":8,\"bytes_written\":9,\"io_errors\":1}\n",
                "not json\n",
            ] {
                let (mut s, _) = l.accept().unwrap();
                s.write_all(line.as_bytes()).unwrap();
            }
        });
        assert_eq!(
            backend_counters(&sock),
            Some(BackendCounters {
                requests: 2,
                bytes_read: 8,
                bytes_written: 9,
                io_errors: 1
            })
        );
        assert_eq!(backend_counters(&sock), None, "a bad answer is no answer");
        t.join().unwrap();
    }

    /// Backends that accept and never answer cost one timeout together:
    /// asked one after another, these five would take a second.
    #[test]
    fn hung_backends_are_waited_for_together() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let socks: Vec<_> = (0..6)
            .map(|i| dir.path().join(format!("d{i}.sock")))
            .collect();
        // The kernel queues connections on a listener nobody accepts from.
        let _hung: Vec<_> = socks[..5]
            .iter()
            .map(|s| std::os::unix::net::UnixListener::bind(backend_metrics_path(s)).unwrap())
            .collect();
        let good = std::os::unix::net::UnixListener::bind(backend_metrics_path(&socks[5])).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = good.accept().unwrap();
            s.write_all(b"{\"requests\":1,\"bytes_read\":2,\"bytes_written\":3,\"io_errors\":0}\n")
                .unwrap();
        });
        let paths: Vec<&Path> = socks.iter().map(PathBuf::as_path).collect();
        let t0 = Instant::now();
        let got = backend_counters_all(&paths);
        let took = t0.elapsed();
        t.join().unwrap();
        assert_eq!(got[..5], [None; 5]);
        assert_eq!(got[5].map(|c| c.bytes_written), Some(3));
        assert!(
            took < BACKEND_TIMEOUT * 4,
            "{took:?}: the hung backends were waited for one by one"
        );
    }
}
