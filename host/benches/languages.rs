//! The same threshold rule written in each guest language, as the host runs
//! it: first compile, load from the compile cache, instantiate + `configure`,
//! one `evaluate` of the 20-metric sample, and the linear memory an instance
//! holds. Component sizes and memory are printed before the timings.
//!
//! Run with `host/benches/languages.sh`, which builds the Python and
//! JavaScript rules from source into `target/bench-rules/` (with the pinned
//! toolchains, plus the SpiderMonkey-based componentize-js for comparison)
//! and then runs this bench. The Rust rule is the bundled `threshold`.
//! Results: `BENCHMARKS.md` at the workspace root.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, criterion_main};
use vigil::plugins::builtin;
use vigil::runtime::{CompileCache, Limits, Origin, Prepared, RuleInstance, Runtime};
use vigil::state::StateDb;

mod sample;
use sample::{CALM, host_sample};

/// Every rule gets this config: the two thresholds of the classic monitor.
const CONFIG: &str = r#"{"thresholds": {"cpu_usage": 80, "memory_usage": 80}}"#;

/// The components to compare: the bundled Rust rule, then every `.wasm` in
/// `VIGIL_BENCH_LANG_DIR` (default `target/bench-rules`), named by file stem.
fn components() -> Vec<(String, Vec<u8>)> {
    let dir = std::env::var_os("VIGIL_BENCH_LANG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-rules"));
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| {
            panic!(
                "cannot read {} ({error})\nhint: run host/benches/languages.sh, which builds the rules first",
                dir.display()
            )
        })
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("reading a component"))
        })
        .collect();
    found.sort();
    found.insert(0, ("rust".into(), builtin::THRESHOLD.wasm.to_vec()));
    found
}

fn start(runtime: &Runtime, state: &StateDb, name: &str, prepared: Prepared) -> RuleInstance {
    let limits = Limits {
        // An interpreter's first call may take longer than a Rust rule's.
        evaluate_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let (instance, _) = RuleInstance::start(
        runtime,
        name,
        prepared,
        CONFIG.into(),
        limits,
        state.rule(name).expect("rule state"),
    )
    .unwrap_or_else(|error| panic!("starting {name}: {error}"));
    instance
}

fn languages(c: &mut Criterion) {
    let rules = components();
    let runtime = Runtime::new().expect("runtime");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = CompileCache::new(cache_dir.path());
    let state = StateDb::in_memory().expect("state db");
    let calm = host_sample(CALM.iter().map(|r| (r, None)));

    // Every rule must give the same answer before it is timed.
    let mut hot = CALM;
    hot[0].1 = 91.0;
    let hot = host_sample(hot.iter().map(|r| (r, None)));
    println!("{:<16} {:>12} {:>14}", "rule", "size", "memory");
    for (name, bytes) in &rules {
        let prepared = runtime
            .prepare_cached(bytes, Some(&cache))
            .unwrap_or_else(|error| panic!("compiling {name}: {error}"));
        let mut instance = start(&runtime, &state, name, prepared);
        let calm_verdict = instance.evaluate(&calm).expect("evaluate");
        assert!(calm_verdict.alerts.is_empty(), "{name}: calm sample alerts");
        let hot_verdict = instance.evaluate(&hot).expect("evaluate");
        let names: Vec<&str> = hot_verdict.alerts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["CpuUsageHigh"], "{name}");
        println!(
            "{name:<16} {:>12} {:>14}",
            bytes.len(),
            instance.memory_bytes()
        );
    }

    // Compiling takes from tens of milliseconds (Rust) to seconds (Python).
    let mut group = c.benchmark_group("language_first_compile");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for (name, bytes) in &rules {
        group.bench_function(name.as_str(), |b| {
            b.iter_with_large_drop(|| runtime.prepare_cached(black_box(bytes), None).unwrap())
        });
    }
    group.finish();

    let mut group = c.benchmark_group("language_cached_load");
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    for (name, bytes) in &rules {
        group.bench_function(name.as_str(), |b| {
            b.iter_with_large_drop(|| {
                let prepared = runtime
                    .prepare_cached(black_box(bytes), Some(&cache))
                    .unwrap();
                assert_eq!(prepared.origin, Origin::Cache);
                prepared
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("language_instantiate");
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    for (name, bytes) in &rules {
        let prepared = runtime.prepare_cached(bytes, Some(&cache)).unwrap();
        group.bench_function(name.as_str(), |b| {
            b.iter_with_large_drop(|| start(&runtime, &state, name, prepared.clone()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("language_evaluate_20_metrics");
    for (name, bytes) in &rules {
        let prepared = runtime.prepare_cached(bytes, Some(&cache)).unwrap();
        let mut instance = start(&runtime, &state, name, prepared);
        group.bench_function(name.as_str(), |b| {
            b.iter(|| instance.evaluate(black_box(&calm)).expect("evaluate"))
        });
    }
    group.finish();
}

fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    languages(&mut criterion);
}

criterion_main!(benches);
