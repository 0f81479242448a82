//! Prototype shapes of the host/rule boundary, timed side by side (issue 15,
//! goal 3: the per-call cost of a wasm rule under 1.5 µs).
//!
//! Run with `cargo bench -p vigil --bench boundary`. Results and how to read
//! them: `BENCHMARKS.md`, section "`evaluate`", subsection "Per-call cost:
//! the options side by side".
//!
//! Every shape runs the same check (the default `threshold` rule's:
//! `cpu_usage` and `memory_usage` above 80, `disk_used_percent` above 90, an
//! alert per label set) in the fixture `plugins/fixtures/boundary`, on the
//! samples of the `evaluate` bench (2, 20 and 200 metrics):
//!
//! - `full`: contract 0.2.0's shape, the whole sample crosses on every call
//!   (the reference for the machine's load: it did not change with 0.3.0);
//! - `full_arena`: the same, with the SDK's arena behind `cabi_realloc`
//!   (`fixture-boundary-arena`; no contract change);
//! - `interned`: the rule learned the target's series once, each call
//!   carries the target, the timestamp and a `list<f64>` of values by index
//!   (the shape contract 0.3.0 took);
//! - `accessor`: only the target crosses and the rule asks the host for the
//!   readings of each metric it checks (what the methods of a `sample`
//!   resource would cost, without the handle);
//! - `batch10`: ten samples per call; divide by 10 for the cost per sample.
//!
//! The bundled `threshold` rule, loaded as `vigil` loads it, runs in the same
//! process as `threshold`, the reference for the absolute figure (since 0.3.0
//! it goes through the interned contract, the host's series table and the
//! SDK's).
//!
//! This bench instantiates the prototype world with its own `bindgen!` and a
//! plain store (no memory limiter, deadline armed once): a prototype is not
//! a contract, so it stays out of `host/src/runtime`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use vigil::config::Settings;
use vigil::runtime::{Runtime, Sample as HostSample};
use vigil::state::StateDb;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod sample;
use sample::{CALM, Reading as CalmReading, host_sample};

mod proto {
    wasmtime::component::bindgen!({
        world: "boundary",
        path: "../plugins/fixtures/boundary/wit",
    });
}

use proto::Boundary;
use proto::vigil::boundary_proto::types::{
    Health, Label, Metric, Reading, Sample, Series, Verdict,
};

/// What a prototype store carries: WASI (the guest's std imports it) and the
/// sample the `readings` accessor reads from.
struct Data {
    wasi: WasiCtx,
    table: ResourceTable,
    current: Option<Arc<HostSample>>,
}

impl WasiView for Data {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl proto::vigil::boundary_proto::types::Host for Data {}

impl proto::BoundaryImports for Data {
    fn readings(&mut self, name: String) -> Vec<Reading> {
        let Some(sample) = &self.current else {
            return Vec::new();
        };
        sample
            .metrics
            .iter()
            .filter(|metric| metric.name == name)
            .map(|metric| Reading {
                value: metric.value,
                labels: labels(&metric.labels),
            })
            .collect()
    }
}

fn labels(labels: &[vigil::runtime::Label]) -> Vec<Label> {
    labels
        .iter()
        .map(|label| Label {
            name: label.name.clone(),
            value: label.value.clone(),
        })
        .collect()
}

/// The host's sample in the prototype's types (what `full` sends).
fn proto_sample(sample: &HostSample) -> Sample {
    Sample {
        target: sample.target.clone(),
        timestamp_ms: sample.timestamp_ms,
        health: Health::Up,
        metrics: sample
            .metrics
            .iter()
            .map(|metric| Metric {
                name: metric.name.clone(),
                value: metric.value,
                labels: labels(&metric.labels),
            })
            .collect(),
        labels: labels(&sample.labels),
    }
}

/// The series of a sample in order (what `interned` sends once).
fn series(sample: &HostSample) -> Vec<Series> {
    sample
        .metrics
        .iter()
        .map(|metric| Series {
            name: metric.name.clone(),
            labels: labels(&metric.labels),
        })
        .collect()
}

/// One prototype instance.
struct Proto {
    store: Store<Data>,
    rule: Boundary,
}

impl Proto {
    fn new(engine: &Engine, file: &str) -> Self {
        let path = format!("{}/{file}", env!("VIGIL_RULES_DIR"));
        let component = Component::from_file(engine, &path).expect("compiling the fixture");
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("linking WASI");
        Boundary::add_to_linker::<_, HasSelf<_>>(&mut linker, |data| data)
            .expect("linking the accessor");
        let mut store = Store::new(
            engine,
            Data {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                current: None,
            },
        );
        // The engine interrupts on epochs; a bench call never comes near this.
        store.set_epoch_deadline(u64::MAX / 2);
        let rule = Boundary::instantiate(&mut store, &component, &linker).expect("instantiating");
        Proto { store, rule }
    }

    fn full(&mut self, sample: &Sample) -> Verdict {
        self.rule
            .call_evaluate_full(&mut self.store, sample)
            .expect("evaluate-full")
    }

    fn batch(&mut self, samples: &[Sample]) -> Vec<Verdict> {
        self.rule
            .call_evaluate_batch(&mut self.store, samples)
            .expect("evaluate-batch")
    }

    fn define(&mut self, sample: &HostSample) {
        self.rule
            .call_define_series(&mut self.store, &sample.target, &series(sample))
            .expect("define-series");
    }

    /// What the host would do per call: gather the values in series order.
    fn interned(&mut self, sample: &HostSample) -> Verdict {
        let values: Vec<f64> = sample.metrics.iter().map(|metric| metric.value).collect();
        self.rule
            .call_evaluate_interned(
                &mut self.store,
                &sample.target,
                sample.timestamp_ms,
                &values,
            )
            .expect("evaluate-interned")
    }

    fn accessor(&mut self, sample: &Arc<HostSample>) -> Verdict {
        self.store.data_mut().current = Some(sample.clone());
        let verdict = self
            .rule
            .call_evaluate_accessor(&mut self.store, &sample.target, sample.timestamp_ms)
            .expect("evaluate-accessor");
        self.store.data_mut().current = None;
        verdict
    }
}

/// `count` readings, as in the `evaluate` bench: 20 calm metrics repeated,
/// told apart by an `instance` label.
fn scaled(count: usize, hot: bool) -> HostSample {
    let readings: Vec<(CalmReading, Option<String>)> = (0..count)
        .map(|i| {
            let instance = (count > CALM.len()).then(|| (i / CALM.len()).to_string());
            let mut reading = CALM[i % CALM.len()];
            if hot && i % CALM.len() < 2 {
                reading.1 = 91.0 + i as f64;
            }
            (reading, instance)
        })
        .collect();
    host_sample(readings.iter().map(|(r, i)| (r, i.as_deref())))
}

/// The alerts' names and summaries, sorted: the accessor shape visits the
/// metrics check by check, the others in sample order.
fn alert_names(verdict: &Verdict) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = verdict
        .alerts
        .iter()
        .map(|alert| (alert.name.clone(), alert.summary.clone()))
        .collect();
    names.sort();
    names
}

/// Every shape answers the same for `sample`, and `expected` alerts come back.
fn check_agree(base: &mut Proto, arena: &mut Proto, sample: &Arc<HostSample>, expected: usize) {
    let full = alert_names(&base.full(&proto_sample(sample)));
    assert_eq!(full.len(), expected, "{full:?}");
    for proto in [&mut *base, &mut *arena] {
        assert_eq!(alert_names(&proto.full(&proto_sample(sample))), full);
        proto.define(sample);
        assert_eq!(alert_names(&proto.interned(sample)), full);
        assert_eq!(alert_names(&proto.accessor(sample)), full);
        let batch = proto.batch(&[proto_sample(sample), proto_sample(sample)]);
        assert_eq!(alert_names(&batch[1]), full);
    }
}

fn shapes(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let engine = runtime.engine();
    let mut base = Proto::new(engine, "fixture_boundary.wasm");
    let mut arena = Proto::new(engine, "fixture_boundary_arena.wasm");

    // The arena must hold across calls that grow, shrink and alert.
    for (count, hot, alerts) in [
        (20, true, 2),
        (200, false, 0),
        (2, true, 2),
        (200, true, 20),
    ] {
        check_agree(&mut base, &mut arena, &Arc::new(scaled(count, hot)), alerts);
    }

    let state = StateDb::in_memory().expect("state db");
    let settings = Settings::local_default();
    let mut threshold = vigil::plugins::load(&runtime, &state, &settings.rules[0])
        .expect("loading the bundled threshold rule");

    let mut group = c.benchmark_group("boundary");
    for count in [2, 20, 200] {
        let host = Arc::new(scaled(count, false));
        let sample = proto_sample(&host);
        let ten = vec![sample.clone(); 10];
        base.define(&host);
        arena.define(&host);
        group.bench_with_input(BenchmarkId::new("full", count), &sample, |b, s| {
            b.iter(|| base.full(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("full_arena", count), &sample, |b, s| {
            b.iter(|| arena.full(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("interned", count), &host, |b, s| {
            b.iter(|| base.interned(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("interned_arena", count), &host, |b, s| {
            b.iter(|| arena.interned(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("accessor", count), &host, |b, s| {
            b.iter(|| base.accessor(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("batch10", count), &ten, |b, s| {
            b.iter(|| base.batch(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("batch10_arena", count), &ten, |b, s| {
            b.iter(|| arena.batch(black_box(s)))
        });
        group.bench_with_input(BenchmarkId::new("threshold", count), &host, |b, s| {
            b.iter(|| threshold.instance.evaluate(black_box(s)).expect("evaluate"))
        });
    }
    group.finish();
}

fn main() {
    // Two shared cores: keep runs short; compare shapes within one run.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    shapes(&mut criterion);
    criterion.final_summary();
}
