//! Issue 14: 100 tenants × 10 rules over 1,000 targets, on the evaluation
//! pool. Each tenant's 10 rules see its own 10 targets (`tNN-*`), and every
//! target sends one sample a second through `App::samples()` (1,000 samples
//! and 10,000 evaluations a second). Reports the process's threads and
//! memory, and the p99 of the latency histogram (offered to the end of the
//! call) of one quiet tenant's 10 rules and of all 99 quiet tenants.
//!
//! ```text
//! cargo bench -p vigil --bench tenants -- quiet   # every tenant runs the bundled threshold rule
//! cargo bench -p vigil --bench tenants -- spin    # the same, but t00's 10 rules run to their 100 ms deadline on every sample
//! ```
//!
//! `VIGIL_BENCH_SECONDS` (default 30) is the measured window, after 5 s of
//! warm-up that the histograms' figures leave out. `VIGIL_BENCH_THREADS`
//! sets `evaluation_threads` (default: the host's default, the cores).
//! Results: `BENCHMARKS.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use vigil::app::App;
use vigil::config::{FailurePolicy, Listen, RuleSource, RuleSpec, Settings};
use vigil::plugins::{RuleBoard, RuleCounters};
use vigil::routing::{NamePattern, TargetSelector};
use vigil::runtime::{Label, Metric};
use vigil::sinks::Delivery;
use vigil::sources::make_sample;
use vigil::state::DataDir;

const TENANTS: usize = 100;
const RULES_PER_TENANT: usize = 10;
const TARGETS_PER_TENANT: usize = 10;
const TARGETS: usize = TENANTS * TARGETS_PER_TENANT;
const WARM_UP: Duration = Duration::from_secs(5);
/// The quiet tenant whose rules are reported on their own.
const QUIET: usize = TENANTS - 1;

/// The histogram a run reads: the latency (queue wait plus call).
fn measured(counters: &RuleCounters) -> &Histogram {
    &counters.latency
}

/// The call alone, for comparison.
fn calls(counters: &RuleCounters) -> &Histogram {
    &counters.durations
}

fn tenant(n: usize) -> String {
    format!("t{n:02}")
}

fn settings(spin: bool) -> Settings {
    let mut settings = Settings::local_default();
    let threshold = settings.rules.remove(0);
    settings.targets.clear();
    settings.api.listen = Listen::Off;
    settings.shutdown_grace = Duration::from_secs(1);
    if let Some(threads) = std::env::var("VIGIL_BENCH_THREADS")
        .ok()
        .and_then(|text| text.parse().ok())
    {
        settings.evaluation_threads = threads;
    }
    println!("evaluation threads: {}", settings.evaluation_threads);
    for t in 0..TENANTS {
        for m in 0..RULES_PER_TENANT {
            let mut spec = threshold.clone();
            if spin && t == 0 {
                spec = RuleSpec {
                    source: RuleSource::File(
                        std::path::Path::new(env!("VIGIL_RULES_DIR")).join("fixture_spin.wasm"),
                    ),
                    // Runs to its deadline every time, never set aside.
                    failure_policy: FailurePolicy {
                        quarantine_after: u32::MAX,
                        ..FailurePolicy::default()
                    },
                    ..spec
                };
            }
            spec.name = format!("{}/rule-{m}", tenant(t)).into();
            spec.tenant = Some(tenant(t).into());
            spec.targets = TargetSelector {
                names: vec![NamePattern::new(&format!("{}-*", tenant(t))).unwrap()],
                ..TargetSelector::default()
            };
            settings.rules.push(spec);
        }
    }
    settings
}

fn sample(target: usize, timestamp_ms: u64) -> Arc<vigil::runtime::Sample> {
    let name = format!(
        "{}-h{}",
        tenant(target / TARGETS_PER_TENANT),
        target % TARGETS_PER_TENANT
    );
    let metric = |name: &str, value: f64, labels: Vec<Label>| Metric {
        name: name.into(),
        value,
        labels,
    };
    let mount = vec![Label {
        name: "mount".into(),
        value: "/".into(),
    }];
    let metrics = vec![
        metric("cpu_usage", 20.0, vec![]),
        metric("memory_usage", 30.0, vec![]),
        metric("disk_used_percent", 40.0, mount),
        metric("load1", 0.5, vec![]),
    ];
    Arc::new(make_sample(&name, &[], Ok(metrics), timestamp_ms))
}

/// Cumulative buckets `(upper bound, count)`, read the way a scrape does.
/// (`vigil::api::metrics::histogram_buckets` does the same; this copy lets
/// the bench build on commits before it, for the "before" figures.)
fn buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
    let mut registry = Registry::default();
    registry.register("h", "", histogram.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix("h_bucket{le=\"")?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The summed buckets of `histogram` of the rules of `tenants`.
fn snapshot(
    board: &RuleBoard,
    histogram: fn(&RuleCounters) -> &Histogram,
    tenants: impl Fn(&str) -> bool,
) -> Vec<(f64, u64)> {
    let mut total: Vec<(f64, u64)> = Vec::new();
    for (name, counters) in board.snapshot() {
        let owner = name.split('/').next().unwrap_or_default();
        if !tenants(owner) {
            continue;
        }
        let rule = buckets(histogram(&counters));
        if total.is_empty() {
            total = rule;
        } else {
            for (sum, (_, count)) in total.iter_mut().zip(rule) {
                sum.1 += count;
            }
        }
    }
    total
}

/// The `q` quantile of the observations between two snapshots, linearly
/// interpolated inside its bucket (as Prometheus' `histogram_quantile`).
fn quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> (f64, u64) {
    let window: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|(&(le, a), &(_, b))| (le, a - b))
        .collect();
    let count = window.last().map_or(0, |&(_, n)| n);
    let rank = q * count as f64;
    let mut lower = (0.0, 0);
    for &(le, n) in &window {
        if n as f64 >= rank {
            if le.is_infinite() {
                return (lower.0, count);
            }
            let share = (rank - lower.1 as f64) / (n - lower.1).max(1) as f64;
            return (lower.0 + (le - lower.0) * share, count);
        }
        lower = (le, n);
    }
    (f64::NAN, count)
}

fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("/proc/self/status has {field}"))
}

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let spin = args.iter().any(|arg| arg == "spin");
    let seconds: u64 = std::env::var("VIGIL_BENCH_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(spin, Duration::from_secs(seconds)));
}

async fn run(spin: bool, window: Duration) {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let app = App::build(settings(spin), &DataDir::new(data.path()), Delivery::new())
        .await
        .unwrap();
    let loaded = started.elapsed();
    let (board, source, stats) = (app.rules(), app.samples(), app.router_stats());
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap().trim()
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    // 1,000 targets, each once a second: 10 samples every 10 ms.
    let feeder = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut next = 0;
        loop {
            ticks.tick().await;
            let now = vigil::clock::now_ms();
            for _ in 0..TARGETS / 100 {
                if source.send(sample(next % TARGETS, now)).await.is_err() {
                    return;
                }
                next += 1;
            }
        }
    });

    tokio::time::sleep(WARM_UP).await;
    let quiet_tenant = tenant(QUIET);
    let spinning = tenant(0);
    let one_quiet = |owner: &str| owner == quiet_tenant;
    let all_quiet = |owner: &str| owner != spinning;
    let (one_before, all_before) = (
        snapshot(&board, measured, one_quiet),
        snapshot(&board, measured, all_quiet),
    );
    let calls_before = snapshot(&board, calls, one_quiet);
    let samples_before = stats.samples.load(std::sync::atomic::Ordering::Relaxed);
    let cpu_before = cpu_seconds();
    tokio::time::sleep(window).await;
    let (one_after, all_after) = (
        snapshot(&board, measured, one_quiet),
        snapshot(&board, measured, all_quiet),
    );
    let calls_after = snapshot(&board, calls, one_quiet);
    let samples = stats.samples.load(std::sync::atomic::Ordering::Relaxed) - samples_before;
    let cpu = cpu_seconds() - cpu_before;
    let threads = proc_status("Threads:");
    let (rss, peak) = (proc_status("VmRSS:"), proc_status("VmHWM:"));
    feeder.abort();
    let _ = stop.send(());
    let _ = host.await;

    let (one_p99, one_count) = quantile(&one_before, &one_after, 0.99);
    let (one_p50, _) = quantile(&one_before, &one_after, 0.50);
    let (all_p99, all_count) = quantile(&all_before, &all_after, 0.99);
    let (calls_p99, _) = quantile(&calls_before, &calls_after, 0.99);
    let read =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let (mut spin_calls, mut spin_dropped) = (0, 0);
    for (name, counters) in board.snapshot() {
        if name.starts_with(&format!("{spinning}/")) {
            spin_calls += read(&counters.evaluations);
            spin_dropped += read(&counters.dropped);
        }
    }
    println!(
        "scenario: {}",
        if spin {
            "spin (t00's 10 rules run to their deadline)"
        } else {
            "quiet (every tenant runs the bundled rule)"
        }
    );
    println!(
        "rules: {}, targets: {TARGETS}, loaded in {loaded:.1?}",
        TENANTS * RULES_PER_TENANT
    );
    println!(
        "window: {window:?} after {WARM_UP:?} warm-up; samples routed: {samples} ({:.0}/s); CPU {cpu:.1} s ({:.0}% of one core)",
        samples as f64 / window.as_secs_f64(),
        100.0 * cpu / window.as_secs_f64()
    );
    println!(
        "threads: {threads}; RSS {} MiB, peak {} MiB",
        rss / 1024,
        peak / 1024
    );
    println!(
        "{quiet_tenant} (10 rules): {one_count} evaluations, latency p50 {:.1} µs, p99 {:.1} µs; the call alone p99 {:.1} µs",
        one_p50 * 1e6,
        one_p99 * 1e6,
        calls_p99 * 1e6
    );
    println!(
        "all 99 quiet tenants: {all_count} evaluations, latency p99 {:.1} µs",
        all_p99 * 1e6
    );
    if spin {
        println!("{spinning} (spinning): {spin_calls} calls, {spin_dropped} samples dropped");
    }
}
