//! Per-call cost of the default `threshold` rule: the embedded wasm component
//! as the host runs it, against the same rule compiled natively.
//!
//! Run with `cargo bench -p vigil --bench evaluate`. Results and how to read
//! them: `BENCHMARKS.md` at the workspace root.
//!
//! Both sides get the same input: one sample of `web-01` with 20 metrics.
//! The host's worker would first narrow a sample to the metrics the rule
//! subscribed to (3 for `threshold`); here `instance.evaluate` is called on
//! the full sample so that wasm and native see identical data. The
//! `wasm_subscribed` case measures the worker's real path (view + call).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use vigil::config::Settings;
use vigil::plugins::{self, LoadedRule};
use vigil::runtime::Runtime;
use vigil::state::StateDb;
use vigil_sdk::Rule as _;
use vigil_threshold::Threshold;

mod sample;
use sample::{CALM, Reading, TARGET, TARGET_LABELS, TIMESTAMP_MS, host_sample};

/// The same poll with cpu_usage at 91 and memory_usage at 95: two alerts.
fn alerting() -> Vec<Reading> {
    let mut readings = CALM.to_vec();
    readings[0].1 = 91.0;
    readings[1].1 = 95.0;
    readings
}

/// `count` readings: the calm poll repeated, each repetition told apart by an
/// `instance` label (so 200 metrics look like 10 instances of one host).
fn scaled(count: usize) -> Vec<(Reading, Option<String>)> {
    (0..count)
        .map(|i| {
            let instance = (count > CALM.len()).then(|| (i / CALM.len()).to_string());
            (CALM[i % CALM.len()], instance)
        })
        .collect()
}

fn sdk_labels<'a>(pairs: &[(&'a str, &'a str)], extra: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut labels: Vec<(&str, &str)> = pairs
        .iter()
        .copied()
        .chain(extra.map(|value| ("instance", value)))
        .collect();
    labels.sort();
    labels
}

/// The same sample as the SDK's type, for the native rule (which gets it
/// as the SDK hands it over in wasm, with names and labels already kept).
fn sdk_sample<'a>(
    readings: impl IntoIterator<Item = (&'a Reading, Option<&'a str>)>,
) -> vigil_sdk::Sample<'static> {
    readings.into_iter().fold(
        vigil_sdk::Sample::up(TARGET, [])
            .with_timestamp_ms(TIMESTAMP_MS)
            .with_labels(sdk_labels(&TARGET_LABELS, None)),
        |sample, (&(name, value, labels), extra)| {
            sample.with_metric(name, value, sdk_labels(labels, extra))
        },
    )
}

/// The bundled rule with its default config, exactly as `vigil` loads it.
fn load_wasm(runtime: &Runtime, state: &StateDb) -> LoadedRule {
    let settings = Settings::local_default();
    plugins::load(runtime, state, &settings.rules[0]).expect("loading the bundled threshold rule")
}

/// Checks that both builds of the rule agree on `readings` before timing them.
fn check_agree(
    rule: &mut LoadedRule,
    native: &mut Threshold,
    readings: &[Reading],
    alerts: &[&str],
) {
    let wasm = rule
        .instance
        .evaluate(&host_sample(readings.iter().map(|r| (r, None))))
        .expect("wasm evaluate");
    let native = native.evaluate(&sdk_sample(readings.iter().map(|r| (r, None))));
    let wasm: Vec<(&str, &str)> = wasm
        .alerts
        .iter()
        .map(|a| (a.name.as_str(), a.summary.as_str()))
        .collect();
    let native: Vec<(&str, &str)> = native
        .alerts
        .iter()
        .map(|a| (a.name.as_str(), a.summary.as_str()))
        .collect();
    assert_eq!(wasm, native, "wasm and native disagree");
    let names: Vec<&str> = wasm.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, alerts);
}

fn wasm_vs_native(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let state = StateDb::in_memory().expect("state db");
    let mut rule = load_wasm(&runtime, &state);
    let mut native = Threshold::configure("{}").expect("native init");

    let hot = alerting();
    check_agree(&mut rule, &mut native, &CALM, &[]);
    check_agree(
        &mut rule,
        &mut native,
        &hot,
        &["CpuUsageHigh", "MemoryUsageHigh"],
    );

    let calm_host = host_sample(CALM.iter().map(|r| (r, None)));
    let calm_sdk = sdk_sample(CALM.iter().map(|r| (r, None)));
    let hot_host = host_sample(hot.iter().map(|r| (r, None)));
    let hot_sdk = sdk_sample(hot.iter().map(|r| (r, None)));

    let mut group = c.benchmark_group("threshold_20_metrics");
    group.bench_function("wasm", |b| {
        b.iter(|| {
            rule.instance
                .evaluate(black_box(&calm_host))
                .expect("evaluate")
        })
    });
    group.bench_function("wasm_alerting", |b| {
        b.iter(|| {
            rule.instance
                .evaluate(black_box(&hot_host))
                .expect("evaluate")
        })
    });
    group.bench_function("native", |b| {
        b.iter(|| native.evaluate(black_box(&calm_sdk)))
    });
    group.bench_function("native_alerting", |b| {
        b.iter(|| native.evaluate(black_box(&hot_sdk)))
    });
    // What the worker does per sample: narrow to the subscribed metrics
    // (cpu_usage, memory_usage, disk_used_percent: 5 of the 20), then call.
    let shared = Arc::new(calm_host.clone());
    let subscription = rule.subscription.clone();
    group.bench_function("wasm_subscribed", |b| {
        b.iter(|| {
            let view = subscription.view(black_box(&shared));
            rule.instance.evaluate(&view).expect("evaluate")
        })
    });
    group.finish();

    // In the running host a rule's thread sleeps between samples, so each
    // call starts with cold caches. Time single calls after an idle sleep;
    // only the calls are measured, so keep the measured budget small.
    let mut group = c.benchmark_group("threshold_20_metrics_after_idle");
    group
        .sample_size(10)
        .measurement_time(Duration::from_millis(300));
    group.bench_function("wasm", |b| {
        b.iter_custom(|iterations| {
            after_idle(iterations, || rule.instance.evaluate(&calm_host).map(drop))
        })
    });
    group.bench_function("native", |b| {
        b.iter_custom(|iterations| {
            after_idle(iterations, || {
                black_box(native.evaluate(&calm_sdk));
                Ok::<(), ()>(())
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("threshold_wasm_by_metric_count");
    for count in [2, 20, 200] {
        let readings = scaled(count);
        let sample = host_sample(readings.iter().map(|(r, i)| (r, i.as_deref())));
        assert_eq!(sample.metrics.len(), count);
        group.bench_with_input(BenchmarkId::new("wasm", count), &sample, |b, sample| {
            b.iter(|| rule.instance.evaluate(black_box(sample)).expect("evaluate"))
        });
        let sample = sdk_sample(readings.iter().map(|(r, i)| (r, i.as_deref())));
        group.bench_with_input(BenchmarkId::new("native", count), &sample, |b, sample| {
            b.iter(|| native.evaluate(black_box(sample)))
        });
    }
    group.finish();
}

/// Runs `call` `iterations` times, each after a sleep (1 ms, or
/// `VIGIL_BENCH_IDLE_MS`), and returns the time spent in the calls alone.
fn after_idle<E: std::fmt::Debug>(
    iterations: u64,
    mut call: impl FnMut() -> Result<(), E>,
) -> Duration {
    let idle = std::env::var("VIGIL_BENCH_IDLE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(1), Duration::from_millis);
    let mut total = Duration::ZERO;
    for _ in 0..iterations {
        std::thread::sleep(idle);
        let started = std::time::Instant::now();
        call().expect("evaluate");
        total += started.elapsed();
    }
    total
}

fn main() {
    // Two shared cores: keep runs short.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50)
        .configure_from_args();
    wasm_vs_native(&mut criterion);
    criterion.final_summary();
}
