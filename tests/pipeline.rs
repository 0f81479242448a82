//! The host's stages, driven in-process through their seams: a source
//! feeding the router, sinks receiving events, a sink that blocks, and a
//! slow rule next to a fast one. Counts and order are asserted, never
//! timings: every wait is for an event, with a generous deadline.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Behavior, StatusServer, fixture, toml_path};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use vigil::alerts::{AlertEvent, Status};
use vigil::app::{App, Stopped};
use vigil::config::Settings;
use vigil::runtime::{Metric, Sample};
use vigil::sinks::{ChannelSink, Delivered, Delivery, Sink, SinkError, SinkOptions};
use vigil::sources::make_sample;
use vigil::state::DataDir;

/// Long enough for anything a loaded 2-core machine does; only reached
/// when the awaited event never comes.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running app and the way to stop it.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<Stopped>>,
}

impl Running {
    async fn stop(self) -> Stopped {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

fn start(app: App) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

fn cpu(target: &str, value: f64, timestamp_ms: u64) -> Arc<Sample> {
    let metric = Metric {
        name: "cpu_usage".into(),
        value,
        labels: vec![],
    };
    Arc::new(make_sample(target, &[], Ok(vec![metric]), timestamp_ms))
}

/// The bundled rule, no targets: samples come from the test.
fn scripted() -> Settings {
    let mut settings = Settings::local_default();
    settings.targets.clear();
    settings
}

/// Receives until `done` says so, or panics with what came.
async fn receive_until(
    received: &mut mpsc::Receiver<Delivered>,
    what: &str,
    mut done: impl FnMut(&Delivered) -> bool,
) {
    let wait = async {
        while let Some(item) = received.recv().await {
            if done(&item) {
                return;
            }
        }
        panic!("the sink closed before {what}");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {PATIENCE:?}"));
}

fn alert(item: &Delivered) -> Option<&AlertEvent> {
    match item {
        Delivered::Alert(event) => Some(event),
        Delivered::Evaluation(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_feeds_the_router_and_a_sink_receives_every_event_in_order() {
    let data = tempfile::tempdir().unwrap();
    let mut delivery = Delivery::new();
    let (sink, mut received) = ChannelSink::new(1024);
    let options = SinkOptions {
        evaluations: true,
        ..SinkOptions::default()
    };
    delivery.add("test", sink, options);
    let app = App::build(scripted(), &DataDir::new(data.path()), delivery)
        .await
        .unwrap();
    let source = app.samples();
    let running = start(app);

    for (at, value) in [(1_000, 95.0), (2_000, 96.0), (3_000, 10.0)] {
        source.send(cpu("scripted", value, at)).await.unwrap();
    }
    let mut seen = Vec::new();
    receive_until(&mut received, "the resolved event", |item| {
        seen.push(match item {
            Delivered::Evaluation(evaluation) => {
                assert_eq!(evaluation.sample.target, "scripted");
                format!("eval {}", evaluation.sample.timestamp_ms)
            }
            Delivered::Alert(event) => {
                format!("{:?} {} {}", event.status, event.alert.name, event.at_ms)
            }
        });
        alert(item).is_some_and(|event| event.status == Status::Resolved)
    })
    .await;
    assert_eq!(
        seen,
        [
            "eval 1000",
            "Firing CpuUsageHigh 1000",
            "eval 2000",
            "eval 3000",
            "Resolved CpuUsageHigh 3000",
        ]
    );
    let stopped = running.stop().await;
    assert!(stopped.abandoned.is_empty() && stopped.undelivered.is_empty());
}

/// A sink that takes its first event and then holds it until released.
struct Blocked {
    release: Arc<Semaphore>,
    taken: mpsc::UnboundedSender<AlertEvent>,
}

#[async_trait::async_trait]
impl Sink for Blocked {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        let permit = self.release.acquire().await.expect("semaphore open");
        permit.forget();
        let _ = self.taken.send(event.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_blocks_delays_neither_evaluation_nor_the_other_sinks() {
    let data = tempfile::tempdir().unwrap();
    let release = Arc::new(Semaphore::new(0));
    let (taken_tx, mut taken) = mpsc::unbounded_channel();
    let mut delivery = Delivery::new();
    delivery.add(
        "blocked",
        Blocked {
            release: release.clone(),
            taken: taken_tx,
        },
        SinkOptions::default(),
    );
    let (sink, mut received) = ChannelSink::new(4096);
    delivery.add("free", sink, SinkOptions::default());
    let app = App::build(scripted(), &DataDir::new(data.path()), delivery)
        .await
        .unwrap();
    let board = app.rules();
    let source = app.samples();
    let running = start(app);

    // 200 samples, alternating above and below 80: 100 firing and 100
    // resolved events, all while the blocked sink has not taken one.
    const SAMPLES: u64 = 200;
    for i in 0..SAMPLES {
        let value = if i % 2 == 0 { 95.0 } else { 10.0 };
        source
            .send(cpu("flapping", value, 1_000 * (i + 1)))
            .await
            .unwrap();
    }
    let mut events = Vec::new();
    receive_until(&mut received, "200 alert events", |item| {
        events.extend(alert(item).cloned());
        events.len() == SAMPLES as usize
    })
    .await;
    let threshold = board.get("threshold").unwrap();
    assert_eq!(threshold.evaluations.load(Ordering::Relaxed), SAMPLES);
    assert!(taken.try_recv().is_err(), "the blocked sink took an event");
    let statuses: Vec<Status> = events.iter().map(|event| event.status).collect();
    let expected: Vec<Status> = (0..SAMPLES)
        .map(|i| {
            if i % 2 == 0 {
                Status::Firing
            } else {
                Status::Resolved
            }
        })
        .collect();
    assert_eq!(statuses, expected);

    // Released, it catches up on everything, in the same order.
    release.add_permits(SAMPLES as usize);
    let mut caught_up = Vec::new();
    while caught_up.len() < events.len() {
        let event = tokio::time::timeout(PATIENCE, taken.recv())
            .await
            .expect("the released sink catches up")
            .unwrap();
        caught_up.push(event);
    }
    assert_eq!(caught_up, events);
    let stopped = running.stop().await;
    assert!(stopped.undelivered.is_empty(), "{stopped:?}");
}

/// `targets` http-json targets polled every 100 ms from `server`, the bundled
/// rule, and the slow fixture (40 ms a call) as rule `slow`.
fn fleet(server: &StatusServer, targets: usize, dir: &Path) -> Settings {
    let mut config = String::from("shutdown_grace = \"2s\"\n");
    for i in 0..targets {
        config.push_str(&format!(
            "[[targets]]\nname = \"t{i}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"5s\"\n",
            server.url(&format!("t{i}"))
        ));
    }
    config.push_str(&format!(
        "[[rules]]\nbuiltin = \"threshold\"\n[[rules]]\nname = \"slow\"\npath = \"{}\"\nconfig = {{ busy_ms = 40 }}\ntimeout = \"1s\"\n",
        toml_path(&fixture("fixture_spin"))
    ));
    Settings::parse(&config, &dir.join("vigil.toml")).unwrap()
}

#[test]
fn a_slow_rule_drops_its_own_samples_and_never_holds_up_the_others() {
    const TARGETS: usize = 50; // 500 samples a second
    let server = StatusServer::start();
    let calm = json!({"cpu_usage": 20, "memory_usage": 30});
    for i in 0..TARGETS {
        server.set(&format!("t{i}"), Behavior::json(calm.clone()));
    }
    let dir = tempfile::tempdir().unwrap();
    let settings = fleet(&server, TARGETS, dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut delivery = Delivery::new();
        let (sink, mut received) = ChannelSink::new(4096);
        delivery.add("test", sink, SinkOptions::default());
        let app = App::build(settings, &DataDir::new(dir.path().join("data")), delivery)
            .await
            .unwrap();
        let (board, stats) = (app.rules(), app.router_stats());
        let running = start(app);

        let mut events: Vec<AlertEvent> = Vec::new();
        receive_until(&mut received, "RuleOverloaded firing", |item| {
            events.extend(alert(item).cloned());
            events
                .last()
                .is_some_and(|event| event.alert.name == "RuleOverloaded")
        })
        .await;
        let overloaded = events.last().unwrap().clone();
        assert_eq!(overloaded.status, Status::Firing);
        assert_eq!(overloaded.rule, "vigil");
        assert_eq!(
            overloaded.alert.labels,
            [("rule".to_string(), "slow".to_string())]
        );

        // Alert events keep flowing while `slow` drops samples.
        server.set(
            "t7",
            Behavior::json(json!({"cpu_usage": 97, "memory_usage": 30})),
        );
        receive_until(&mut received, "CpuUsageHigh firing on t7", |item| {
            events.extend(alert(item).cloned());
            events.last().is_some_and(|event| {
                event.alert.name == "CpuUsageHigh" && event.status == Status::Firing
            })
        })
        .await;
        assert_eq!(events.last().unwrap().target, "t7");
        server.set("t7", Behavior::json(calm.clone()));
        receive_until(&mut received, "CpuUsageHigh resolved on t7", |item| {
            events.extend(alert(item).cloned());
            events.last().is_some_and(|event| {
                event.alert.name == "CpuUsageHigh" && event.status == Status::Resolved
            })
        })
        .await;

        let stopped = running.stop().await;
        while let Ok(item) = received.try_recv() {
            events.extend(alert(&item).cloned());
        }
        let samples = stats.samples.load(Ordering::Relaxed);
        let read = |rule: &str| board.get(rule).unwrap();
        let (fast, slow) = (read("threshold"), read("slow"));
        // The bundled rule evaluated every sample the router saw.
        assert_eq!(fast.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(fast.evaluations.load(Ordering::Relaxed), samples);
        // The slow one evaluated some, dropped some, and left the rest
        // queued at shutdown: every sample is accounted for.
        let (evaluated, dropped, abandoned) = (
            slow.evaluations.load(Ordering::Relaxed),
            slow.dropped.load(Ordering::Relaxed),
            slow.abandoned.load(Ordering::Relaxed),
        );
        assert!(dropped > 0);
        assert_eq!(evaluated + dropped + abandoned, samples);
        assert_eq!(
            stopped.abandoned.get("slow").copied().unwrap_or(0),
            abandoned
        );
        assert!(!stopped.abandoned.contains_key("threshold"));
        let fired = |name: &str| {
            events
                .iter()
                .filter(|event| event.alert.name == name && event.status == Status::Firing)
                .count()
        };
        assert_eq!(fired("RuleOverloaded"), 1, "{events:#?}");
        assert_eq!(fired("CpuUsageHigh"), 1, "{events:#?}");
    });
}

/// Regression test for the shutdown that drained a slow rule's whole queue
/// through it (a minute and more): SIGTERM stops within the grace period,
/// and what was not evaluated is counted in the log.
#[test]
fn sigterm_with_a_slow_rules_queue_full_stops_within_the_grace_and_counts_the_rest() {
    const TARGETS: usize = 20; // 400 samples a second against 25 evaluations
    let server = StatusServer::start();
    for i in 0..TARGETS {
        server.set(&format!("t{i}"), Behavior::json(json!({"cpu_usage": 20})));
    }
    let mut config = String::from("shutdown_grace = \"1s\"\n");
    for i in 0..TARGETS {
        config.push_str(&format!(
            "[[targets]]\nname = \"t{i}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"50ms\"\n",
            server.url(&format!("t{i}"))
        ));
    }
    config.push_str(&format!(
        "[[rules]]\nname = \"slow\"\npath = \"{}\"\nconfig = {{ busy_ms = 40 }}\ntimeout = \"1s\"\n",
        toml_path(&fixture("fixture_spin"))
    ));
    let mut vigil = common::Vigil::start(&config);
    // The queue is full once the first sample is dropped: draining it
    // through the rule would take 1024 × 40 ms, about 41 s.
    vigil.wait_for("RuleOverloaded", PATIENCE, |v| {
        common::is_alert(v, "firing", "RuleOverloaded")
    });
    // `terminate` fails unless vigil exits within 10 s.
    vigil.terminate();
    let log = vigil.stderr();
    let line = log
        .lines()
        .find(|line| line.contains("Samples queued for this rule were not evaluated at shutdown."))
        .unwrap_or_else(|| panic!("no count of abandoned samples in the log:\n{log}"));
    assert!(line.contains("rule=slow"), "{line}");
    let abandoned: u64 = line
        .split("abandoned=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no abandoned=N in: {line}"));
    assert!(abandoned > 0, "{line}");
}
