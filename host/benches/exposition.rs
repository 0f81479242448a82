//! Parsing a `/metrics` page: the `prometheus` source's parser on a page
//! shaped like node_exporter's on a 16-core machine (CPU seconds per core
//! and mode, meminfo gauges, a histogram, a summary, HELP and TYPE lines),
//! generated here so no machine's page is committed.
//!
//! Run with `cargo bench -p vigil --bench exposition`. Results, and the
//! comparison with the `prometheus-parse` and `openmetrics-parser` crates:
//! `BENCHMARKS.md`, "Prometheus pages".

use std::fmt::Write;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vigil::sources::exposition;

fn page() -> String {
    let mut page = String::new();
    page.push_str("# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n# TYPE node_cpu_seconds_total counter\n");
    for cpu in 0..16 {
        for mode in [
            "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
        ] {
            let _ = writeln!(
                page,
                "node_cpu_seconds_total{{cpu=\"{cpu}\",mode=\"{mode}\"}} {}.{}",
                1000 + cpu * 37,
                cpu * 13 % 100
            );
        }
    }
    for i in 0..60 {
        let _ = writeln!(
            page,
            "# HELP node_memory_Field{i}_bytes Memory information field Field{i}_bytes.\n# TYPE node_memory_Field{i}_bytes gauge\nnode_memory_Field{i}_bytes {}",
            1.6e10 / f64::from(i + 1)
        );
    }
    page.push_str("# TYPE http_request_duration_seconds histogram\n");
    for le in [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ] {
        let _ = writeln!(
            page,
            "http_request_duration_seconds_bucket{{handler=\"/metrics\",le=\"{le}\"}} 42"
        );
    }
    page.push_str("http_request_duration_seconds_sum{handler=\"/metrics\"} 1.5e-01\nhttp_request_duration_seconds_count{handler=\"/metrics\"} 42\n");
    page.push_str("# TYPE go_gc_duration_seconds summary\n");
    for q in ["0", "0.25", "0.5", "0.75", "1"] {
        let _ = writeln!(page, "go_gc_duration_seconds{{quantile=\"{q}\"}} 2.1e-05");
    }
    page.push_str("go_gc_duration_seconds_sum 0.003\ngo_gc_duration_seconds_count 140\n");
    page
}

fn main() {
    let page = page();
    let series = exposition::parse(&page, usize::MAX)
        .expect("a valid page")
        .len();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("exposition");
    group.throughput(Throughput::Bytes(page.len() as u64));
    group.bench_function(
        format!("parse {series} series, {} bytes", page.len()),
        |b| b.iter(|| exposition::parse(black_box(&page), usize::MAX).expect("valid")),
    );
    group.finish();
    criterion.final_summary();
}
