//! What the API costs a host watching 1,000 targets: rendering `/metrics`
//! and the JSON of `/api/v1/targets` and `/api/v1/alerts` from the read
//! models, which is all the work a request adds (the pipeline pays nothing
//! for being watched: the stages update their read models anyway).
//!
//! Run with `cargo bench -p vigil --bench api`. Results: `BENCHMARKS.md`,
//! "The API: what watching a host costs it".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use criterion::Criterion;
use vigil::actions::AuditLog;
use vigil::alerts::{AlertStats, Tracker};
use vigil::api::{Views, metrics, v1};
use vigil::config::{TargetKind, TargetSpec};
use vigil::plugins::RuleBoard;
use vigil::plugins::reload::StatusBoard;
use vigil::runtime::{Alert, Severity};
use vigil::sources::{PollError, Reason, TargetBoard};
use vigil::state::StateDb;

const TARGETS: usize = 1000;

/// 1,000 polled targets (one in ten down), the bundled rule, and one alert
/// per target that is down.
fn views(tracker: &mut Tracker) -> Views {
    let targets = TargetBoard::default();
    let down = PollError::new(Reason::Connect, "cannot connect to http://10.0.0.1/status");
    for i in 0..TARGETS {
        let spec = TargetSpec {
            name: format!("web-{i:04}").as_str().into(),
            labels: BTreeMap::from([("team".to_string(), "payments".to_string())]),
            interval: Duration::from_secs(1),
            kind: TargetKind::HttpJson {
                url: format!("http://127.0.0.1:8080/t/{i}").parse().unwrap(),
                timeout: Duration::from_secs(2),
                max_body_bytes: 1 << 20,
            },
        };
        targets.track(&spec);
        let outcome = if i % 10 == 0 { Err(&down) } else { Ok(()) };
        targets.polled(
            &spec.name,
            1_764_500_400_000,
            Duration::from_micros(800),
            outcome,
        );
        if i % 10 == 0 {
            let alert = Alert {
                name: "TargetDown".into(),
                severity: Severity::Critical,
                summary: format!("target `{}` is down", spec.name),
                labels: vec![],
                annotations: vec![],
                for_ms: 0,
                keep_firing_for_ms: 0,
            };
            tracker
                .observe(&"threshold".into(), &spec.name, &[alert], 1_764_500_400_000)
                .unwrap();
        }
    }
    let rules = RuleBoard::default();
    rules.counters(&"threshold".into());
    let status = StatusBoard::default();
    let state = StateDb::in_memory().unwrap();
    let (reload, _) = tokio::sync::mpsc::channel(1);
    Views {
        targets,
        alerts: tracker.board(),
        alert_stats: AlertStats::default(),
        status,
        rules,
        components: Default::default(),
        router: Arc::default(),
        sinks: Vec::new(),
        actions: Default::default(),
        audit: AuditLog::open(&state).unwrap(),
        running: Arc::new(AtomicBool::new(true)),
        reload,
        tenants: Default::default(),
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut tracker = Tracker::default();
    let views = views(&mut tracker);
    let registry = metrics::registry(views.clone());
    let text = metrics::render(&registry);
    println!(
        "/metrics at {TARGETS} targets: {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );
    let mut group = criterion.benchmark_group("api_1000_targets");
    group.bench_function("metrics", |b| b.iter(|| metrics::render(&registry)));
    group.bench_function("targets_json", |b| {
        b.iter(|| {
            serde_json::to_vec(&v1::TargetList {
                targets: views.targets.snapshot(),
            })
        })
    });
    group.bench_function("alerts_snapshot", |b| b.iter(|| views.alerts.snapshot()));
    group.finish();
    criterion.final_summary();
}
