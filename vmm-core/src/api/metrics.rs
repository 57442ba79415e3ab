//! `GET /metrics`: [`Metrics`] in the Prometheus text exposition format
//! (version 0.0.4), one HELP and TYPE line per family.

use std::fmt::Write;

use super::Metrics;

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
    type Field = fn(&super::DeviceMetrics) -> u64;
    let device_families: [(&str, &str, &str, Field); 4] = [
        (
            "splitvm_device_requests_total",
            "counter",
            "Requests the device's backend completed (advance of its used rings).",
            |d| d.requests,
        ),
        (
            "splitvm_device_in_flight",
            "gauge",
            "Requests the guest made available that the backend has not completed.",
            |d| d.in_flight,
        ),
        (
            "splitvm_device_reconnects_total",
            "counter",
            "Times the VMM reconnected the device to a backend.",
            |d| d.reconnects,
        ),
        (
            "splitvm_device_errors_total",
            "counter",
            "Failed vhost-user requests to the device's backend.",
            |d| d.errors,
        ),
    ];
    for (name, kind, help, get) in device_families {
        family(&mut out, name, kind, help);
        for d in &m.devices {
            let _ = writeln!(out, "{name}{{device=\"{}\"}} {}", label(&d.name), get(d));
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
    }
}
