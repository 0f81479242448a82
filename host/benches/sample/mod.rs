//! The sample the benchmarks evaluate: one poll of `web-01` with the 20
//! metrics of a typical host, as the host's sources build it. Shared by the
//! `evaluate` and `languages` benches so their figures compare.

#![allow(dead_code)] // each bench uses part of it

use vigil::runtime::{Health, Label, Metric, Sample};

/// One reading: name, value, labels.
pub type Reading = (&'static str, f64, &'static [(&'static str, &'static str)]);

/// The 20 metrics of a typical host poll. All below the default thresholds
/// (cpu_usage and memory_usage above 80, disk_used_percent above 90).
pub const CALM: [Reading; 20] = [
    ("cpu_usage", 37.5, &[]),
    ("memory_usage", 61.2, &[]),
    ("disk_used_percent", 54.0, &[("mount", "/")]),
    ("disk_used_percent", 71.3, &[("mount", "/var")]),
    ("disk_used_percent", 12.8, &[("mount", "/data")]),
    ("load_average_1m", 1.42, &[]),
    ("load_average_5m", 1.18, &[]),
    ("load_average_15m", 0.97, &[]),
    ("swap_used_percent", 3.1, &[]),
    ("uptime_seconds", 864_213.0, &[]),
    ("process_count", 287.0, &[]),
    ("open_file_descriptors", 4_812.0, &[]),
    (
        "net_rx_bytes_per_second",
        1_254_331.0,
        &[("interface", "eth0")],
    ),
    (
        "net_tx_bytes_per_second",
        893_102.0,
        &[("interface", "eth0")],
    ),
    ("tcp_connections_established", 342.0, &[]),
    ("http_requests_per_second", 118.4, &[("service", "api")]),
    ("http_error_rate", 0.004, &[("service", "api")]),
    ("http_latency_p99_ms", 212.0, &[("service", "api")]),
    ("queues.mail.depth", 7.0, &[]),
    ("temperature_celsius", 48.5, &[("sensor", "cpu0")]),
];

pub const TARGET: &str = "web-01";
pub const TIMESTAMP_MS: u64 = 1_760_000_000_000;
pub const TARGET_LABELS: [(&str, &str); 2] = [("env", "prod"), ("region", "eu-west-1")];

pub fn host_labels(pairs: &[(&str, &str)], extra: Option<&str>) -> Vec<Label> {
    let mut labels: Vec<Label> = pairs
        .iter()
        .map(|&(name, value)| Label {
            name: name.into(),
            value: value.into(),
        })
        .chain(extra.map(|value| Label {
            name: "instance".into(),
            value: value.into(),
        }))
        .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

/// A host-side sample, as `sources` builds it.
pub fn host_sample<'a>(
    readings: impl IntoIterator<Item = (&'a Reading, Option<&'a str>)>,
) -> Sample {
    Sample {
        target: TARGET.into(),
        timestamp_ms: TIMESTAMP_MS,
        health: Health::Up,
        metrics: readings
            .into_iter()
            .map(|(&(name, value, labels), extra)| Metric {
                name: name.into(),
                value,
                labels: host_labels(labels, extra),
            })
            .collect(),
        labels: host_labels(&TARGET_LABELS, None),
        recent_actions: Vec::new(),
    }
}
