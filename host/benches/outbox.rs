//! What handing an alert event to a network sink costs the alert stage:
//! `Outbox::push`, which writes the event to the state database (one
//! durable redb commit) before anything is sent, and, once the outbox is
//! at its bound, picks what to drop first.
//!
//! Run with `cargo bench -p vigil --bench outbox`. Results: `BENCHMARKS.md`,
//! "Outbox: the cost of a durable hand-over".

use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use vigil::alerts::{AlertEvent, Fingerprint, Severity, State, Status, TrackedAlert};
use vigil::sinks::{Outbox, OutboxSettings, SinkStats};
use vigil::state::StateDb;

fn event(n: u64, status: Status) -> AlertEvent {
    let labels = vec![("mount".to_string(), format!("/data{n}"))];
    AlertEvent {
        status,
        rule: "threshold".into(),
        target: "web-01".into(),
        alert: TrackedAlert {
            fingerprint: Fingerprint::of("threshold", "web-01", "DiskFull", &labels),
            name: "DiskFull".into(),
            severity: Severity::Critical,
            summary: format!("/data{n} is 93% full"),
            labels,
            annotations: vec![],
            for_ms: 0,
            keep_firing_for_ms: 0,
            state: State::Firing,
            active_since_ms: 1_764_500_400_000,
            last_seen_ms: 1_764_500_400_000,
        },
        at_ms: 1_764_500_400_000 + n,
    }
}

fn outbox(db: &StateDb, max_queue: usize) -> Outbox {
    let settings = OutboxSettings {
        max_queue,
        ..OutboxSettings::default()
    };
    Outbox::open(
        "bench".into(),
        db.outbox("bench"),
        settings,
        Arc::new(SinkStats::default()),
    )
    .expect("the outbox opens")
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut group = criterion.benchmark_group("outbox");

    // On disk, as a host runs it: the commit's fsync is the cost.
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(&dir.path().join("state.redb")).unwrap();
    let on_disk = outbox(&db, usize::MAX);
    let mut n = 0;
    group.bench_function("push, on disk (one durable commit)", |b| {
        b.iter(|| {
            n += 1;
            on_disk.push(&[Arc::new(event(n, Status::Firing))]);
        })
    });

    // A verdict that changed 100 alerts at once: still one commit.
    let batch_disk = outbox(&db, usize::MAX);
    group.bench_function("push 100 events at once, on disk", |b| {
        b.iter(|| {
            let events: Vec<Arc<AlertEvent>> = (0..100)
                .map(|_| {
                    n += 1;
                    Arc::new(event(n, Status::Firing))
                })
                .collect();
            batch_disk.push(&events);
        })
    });

    // Removing a delivered row: synced, and not (one in SYNC_EVERY is).
    let table = db.outbox("bench-remove");
    let row = serde_json::to_vec(&event(0, Status::Firing)).unwrap();
    for durable in [true, false] {
        let what = if durable { "synced" } else { "not synced" };
        group.bench_function(format!("remove a delivered row, on disk, {what}"), |b| {
            b.iter_custom(|iters| {
                let first = table.push(&vec![row.clone(); iters as usize], &[]).unwrap();
                let start = std::time::Instant::now();
                for seq in first..first + iters {
                    table.remove(seq, durable).unwrap();
                }
                start.elapsed()
            })
        });
    }

    // At the bound of 10,000 firing notifications (in memory, to see the
    // drop policy's own cost): each push drops the oldest.
    let db = StateDb::in_memory().unwrap();
    let full = outbox(&db, 10_000);
    for n in 0..10_000 {
        full.push(&[Arc::new(event(n, Status::Firing))]);
    }
    let mut n = 10_000;
    group.bench_function("push at the bound of 10000, in memory", |b| {
        b.iter(|| {
            n += 1;
            full.push(&[Arc::new(event(n, Status::Firing))]);
        })
    });
    group.finish();
    criterion.final_summary();
}
