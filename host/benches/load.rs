//! What a restart costs per rule: `plugins::load` of the bundled `threshold`
//! rule compiling it, against loading it from a warm compile cache; then
//! the same for 10 rules (the same component under 10 names, each with its
//! own state namespace and instance: the first compiles or loads from the
//! cache, the other nine share its compiled component from memory).
//!
//! Each iteration drops what it loaded before the next starts (`iter`, not
//! `iter_with_large_drop`), so that no iteration finds the previous one's
//! component in memory; the `prepare_*` cases use `prepare_cached`, which
//! never shares.
//!
//! Run with `cargo bench -p vigil --bench load`. Results: `BENCHMARKS.md`
//! at the workspace root.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode};
use vigil::config::{RuleSpec, Settings};
use vigil::plugins::{self, builtin};
use vigil::runtime::{CompileCache, Origin, Runtime};
use vigil::state::StateDb;

/// How many rules the "restart" cases load.
const RULES: usize = 10;

fn load(c: &mut Criterion) {
    let compiling = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = CompileCache::new(dir.path().join("cache"));
    // Same engine, plus the cache.
    let cached = compiling.clone().with_compile_cache(cache.clone());
    let state = StateDb::in_memory().expect("state db");
    let spec = Settings::local_default().rules.remove(0);
    let specs: Vec<RuleSpec> = (0..RULES)
        .map(|i| RuleSpec {
            name: format!("threshold-{i}").into(),
            ..spec.clone()
        })
        .collect();

    // Warm the cache, and check that the cached runtime does hit it.
    let bytes = builtin::THRESHOLD.wasm;
    let origin = |runtime: &Runtime| runtime.prepare(bytes).expect("preparing").origin;
    assert_eq!(origin(&cached), Origin::Compiled);
    assert_eq!(origin(&cached), Origin::Cache);
    assert_eq!(origin(&compiling), Origin::Compiled);
    let entry_bytes: u64 = std::fs::read_dir(cache.dir())
        .expect("cache dir")
        .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
        .sum();
    println!(
        "threshold: component {} bytes, cache entry {entry_bytes} bytes",
        bytes.len()
    );

    let load_all = |runtime: &Runtime, specs: &[RuleSpec]| {
        specs
            .iter()
            .map(|spec| plugins::load(runtime, &state, spec).expect("loading"))
            .collect::<Vec<_>>()
    };

    let mut group = c.benchmark_group("load_threshold");
    // Tens of milliseconds per iteration: one iteration per sample.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("compile", |b| {
        b.iter(|| load_all(&compiling, black_box(&specs[..1])))
    });
    group.bench_function("cached", |b| {
        b.iter(|| load_all(&cached, black_box(&specs[..1])))
    });
    // Only the compiled component (no instance, no `init`): where the
    // difference comes from.
    group.bench_function("prepare_compile", |b| {
        b.iter_with_large_drop(|| {
            compiling
                .prepare_cached(black_box(bytes), None)
                .expect("compiling")
        })
    });
    group.bench_function("prepare_cached", |b| {
        b.iter_with_large_drop(|| {
            cached
                .prepare_cached(black_box(bytes), Some(&cache))
                .expect("from the cache")
        })
    });
    group.finish();

    let mut group = c.benchmark_group(format!("load_{RULES}_rules"));
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("compile", |b| {
        b.iter(|| load_all(&compiling, black_box(&specs)))
    });
    group.bench_function("cached", |b| {
        b.iter(|| load_all(&cached, black_box(&specs)))
    });
    group.finish();
}

fn main() {
    // Two cores shared with other builds: keep runs short, and few: each
    // iteration loads every rule.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    load(&mut criterion);
    criterion.final_summary();
}
