//! Delivery against real receivers: Debian's `prometheus-alertmanager`
//! (`.ci/run` installs it; a missing one fails the test with the command
//! that installs it) and a webhook receiver in the test (axum) whose
//! answers the test controls. The binary runs with `[[sinks]]` and its
//! console sink's JSON lines say when an alert fired or resolved.
//!
//! No test depends on timing: every wait is for an event, with a generous
//! deadline, and the assertions are on counts, sets and order.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{Behavior, StatusServer, Vigil, is_alert, toml_path, web_target};
use serde_json::{Value, json};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
/// Long enough for anything a loaded 2-core machine does; only reached
/// when the awaited event never comes.
const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `done` holds, or panics with `what`.
fn eventually<T>(what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(Instant::now() < deadline, "no {what} within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET url`: the status and the body, or `None` when nothing answers.
fn get(url: &str) -> Option<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    })
}

/// A real Alertmanager on free loopback ports, stopped by its pid on drop.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Self {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "`{ALERTMANAGER}` is missing: this test needs Debian's `prometheus-alertmanager`\nhint: run `.ci/run`, or `apt-get install -y prometheus-alertmanager`"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: nowhere\nreceivers:\n  - name: nowhere\n",
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--config.file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("alertmanager starts");
        let alertmanager = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        let ready = alertmanager.url("/-/ready");
        eventually("ready Alertmanager", || {
            get(&ready).filter(|(status, _)| *status == 200)
        });
        alertmanager
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The alerts Alertmanager's own API lists now.
    fn alerts(&self) -> Vec<Value> {
        let (status, body) = get(&self.url("/api/v2/alerts")).expect("alertmanager answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the webhook receiver got: each request's bearer header and body,
/// with the status it answered.
#[derive(Clone, Debug)]
struct Received {
    authorization: Option<String>,
    body: Value,
    answered: u16,
}

#[derive(Default)]
struct ReceiverState {
    answer: Mutex<u16>,
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver on 127.0.0.1 answering every POST with the status
/// the test sets (200 at first).
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start() -> Self {
        Self::start_on(0)
    }

    /// A receiver on `port` (0 for any free one).
    fn start_on(port: u16) -> Self {
        let state = Arc::new(ReceiverState::default());
        *state.answer.lock().unwrap() = 200;
        let app = Router::new()
            .route("/hook", axum::routing::post(take))
            .with_state(state.clone());
        let (runtime, addr) = common::serve(app, port);
        Receiver {
            addr,
            state,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn answer(&self, status: u16) {
        *self.state.answer.lock().unwrap() = status;
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The payloads it accepted (answered 2xx), in order.
    fn accepted(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.answered == 200)
            .map(|r| r.body)
            .collect()
    }
}

async fn take(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let answered = *state.answer.lock().unwrap();
    let authorization = headers
        .get("authorization")
        .map(|value| value.to_str().unwrap().to_string());
    let body = serde_json::from_str(&body).expect("the webhook body is JSON");
    state.received.lock().unwrap().push(Received {
        authorization,
        body,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// A status server whose `cpu_usage` the test sets, polled every 100 ms.
fn status(cpu: f64) -> StatusServer {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({ "cpu_usage": cpu })));
    server
}

fn set_cpu(server: &StatusServer, cpu: f64) {
    server.set("status", Behavior::json(json!({ "cpu_usage": cpu })));
}

/// The config: the status target, the bundled rule (cpu_usage above 80
/// fires `CpuUsageHigh`), a console sink and `sinks`.
fn config(server: &StatusServer, sinks: &str) -> String {
    format!(
        "{}\n[[sinks]]\nname = \"console\"\nkind = \"stdout\"\n\n{sinks}",
        web_target(&server.url("status"))
    )
}

/// Fires `CpuUsageHigh` and waits for the console to say so.
fn fire(vigil: &mut Vigil, server: &StatusServer) -> Value {
    set_cpu(server, 95.0);
    vigil.wait_for("CpuUsageHigh firing", PATIENCE, |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    })
}

/// Resolves `CpuUsageHigh` and waits for the console to say so.
fn resolve(vigil: &mut Vigil, server: &StatusServer) -> Value {
    set_cpu(server, 10.0);
    vigil.wait_for("CpuUsageHigh resolved", PATIENCE, |v| {
        is_alert(v, "resolved", "CpuUsageHigh")
    })
}

fn is_rfc3339(text: &Value) -> bool {
    text.as_str()
        .is_some_and(|text| humantime::parse_rfc3339(text).is_ok())
}

#[test]
fn alertmanager_lists_the_alert_while_it_fires_and_drops_it_once_resolved() {
    let alertmanager = Alertmanager::start();
    let server = status(10.0);
    let sinks = format!(
        "[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{}\"]\nretry_initial = \"50ms\"\nretry_max = \"500ms\"\n",
        alertmanager.url("")
    );
    let mut vigil = Vigil::start(&config(&server, &sinks));
    let fired = fire(&mut vigil, &server);
    let listed = eventually("CpuUsageHigh in Alertmanager", || {
        alertmanager
            .alerts()
            .into_iter()
            .find(|alert| alert["labels"]["alertname"] == "CpuUsageHigh")
    });
    assert_eq!(listed["status"]["state"], "active", "{listed}");
    assert_eq!(
        listed["labels"],
        json!({
            "alertname": "CpuUsageHigh",
            "fingerprint": fired["fingerprint"],
            "metric": "cpu_usage",
            "rule": "threshold",
            "severity": "warning",
            "target": "web-01",
        })
    );
    assert_eq!(listed["annotations"]["summary"], fired["summary"]);
    assert!(is_rfc3339(&listed["startsAt"]) && is_rfc3339(&listed["endsAt"]));

    resolve(&mut vigil, &server);
    // Alertmanager 0.25 leaves resolved alerts out of GET /api/v2/alerts;
    // an active one left would be a resolve it did not take.
    eventually("CpuUsageHigh gone from Alertmanager", || {
        let alerts = alertmanager.alerts();
        let still = alerts.iter().any(|alert| {
            alert["labels"]["alertname"] == "CpuUsageHigh" && alert["status"]["state"] == "active"
        });
        (!still).then_some(())
    });
    vigil.terminate();
}

/// The `endsAt` Alertmanager lists for the active `CpuUsageHigh`, if any.
fn listed_ends_at(alertmanager: &Alertmanager) -> Option<std::time::SystemTime> {
    let alerts = alertmanager.alerts();
    let alert = alerts.iter().find(|alert| {
        alert["labels"]["alertname"] == "CpuUsageHigh" && alert["status"]["state"] == "active"
    })?;
    humantime::parse_rfc3339(alert["endsAt"].as_str()?).ok()
}

#[test]
fn alertmanager_keeps_hearing_of_a_firing_alert_across_a_restart() {
    let alertmanager = Alertmanager::start();
    let server = status(10.0);
    let data = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[[sinks]]\nname = \"am\"\nkind = \"alertmanager\"\nurls = [\"{}\"]\nresend_interval = \"1s\"\n",
        alertmanager.url("")
    );
    let config = config(&server, &sinks);
    let start = || Vigil::start_with_data_dir(&config, data.path(), tempfile::tempdir().unwrap());
    let mut vigil = start();
    fire(&mut vigil, &server);
    let first = eventually("CpuUsageHigh in Alertmanager", || {
        listed_ends_at(&alertmanager)
    });
    // Re-sent while it fires: its end moves on.
    eventually("a re-send", || {
        listed_ends_at(&alertmanager).filter(|ends| *ends > first)
    });
    vigil.terminate();
    let last = listed_ends_at(&alertmanager).unwrap_or(first);
    // The restarted host announces nothing (the alert was firing and
    // still is) but re-sends what it has firing, so Alertmanager does not
    // time the alert out.
    let mut vigil = start();
    eventually("a re-send from the restarted host", || {
        listed_ends_at(&alertmanager).filter(|ends| *ends > last)
    });
    vigil.collect_for(Duration::from_millis(200));
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "CpuUsageHigh")), 0);
    vigil.terminate();
}

#[test]
fn the_webhook_payload_is_alertmanagers_version_4_field_for_field() {
    let receiver = Receiver::start();
    let server = status(10.0);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let sinks = format!(
        "[[sinks]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"{}\"\nbearer_token_file = \"{}\"\nexternal_url = \"http://vigil.example:9000/\"\n",
        receiver.url(),
        toml_path(&token)
    );
    let mut vigil = Vigil::start(&config(&server, &sinks));
    let fired = fire(&mut vigil, &server);
    let resolved = resolve(&mut vigil, &server);
    let accepted = eventually("two payloads", || {
        let accepted = receiver.accepted();
        (accepted.len() >= 2).then_some(accepted)
    });
    vigil.terminate();
    assert_eq!(accepted.len(), 2, "{accepted:#?}");
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer s3cret"))
    );
    let labels = json!({
        "alertname": "CpuUsageHigh",
        "metric": "cpu_usage",
        "rule": "threshold",
        "severity": "warning",
        "target": "web-01",
    });
    for (payload, status, event) in [
        (&accepted[0], "firing", &fired),
        (&accepted[1], "resolved", &resolved),
    ] {
        let keys: Vec<&String> = payload.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "alerts",
                "commonAnnotations",
                "commonLabels",
                "externalURL",
                "groupKey",
                "groupLabels",
                "receiver",
                "status",
                "truncatedAlerts",
                "version"
            ]
        );
        assert_eq!(payload["version"], "4");
        assert_eq!(
            payload["groupKey"],
            "{}:{alertname=\"CpuUsageHigh\", rule=\"threshold\", target=\"web-01\"}"
        );
        assert_eq!(payload["truncatedAlerts"], 0);
        assert_eq!(payload["status"], status);
        assert_eq!(payload["receiver"], "oncall");
        assert_eq!(
            payload["groupLabels"],
            json!({"alertname": "CpuUsageHigh", "rule": "threshold", "target": "web-01"})
        );
        assert_eq!(payload["commonLabels"], labels);
        assert_eq!(
            payload["commonAnnotations"],
            json!({"summary": event["summary"]})
        );
        assert_eq!(payload["externalURL"], "http://vigil.example:9000/");
        let alerts = payload["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        let keys: Vec<&String> = alert.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "annotations",
                "endsAt",
                "fingerprint",
                "generatorURL",
                "labels",
                "startsAt",
                "status"
            ]
        );
        assert_eq!(alert["status"], status);
        assert_eq!(alert["labels"], labels);
        assert_eq!(alert["annotations"], json!({"summary": event["summary"]}));
        assert_eq!(alert["fingerprint"], fired["fingerprint"]);
        assert_eq!(alert["generatorURL"], "http://vigil.example:9000/");
        let starts = humantime::parse_rfc3339(alert["startsAt"].as_str().unwrap()).unwrap();
        let since = std::time::UNIX_EPOCH
            + Duration::from_millis(fired["active_since_ms"].as_u64().unwrap());
        assert_eq!(starts, since);
        if status == "firing" {
            assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
        } else {
            let ends = humantime::parse_rfc3339(alert["endsAt"].as_str().unwrap()).unwrap();
            let at =
                std::time::UNIX_EPOCH + Duration::from_millis(resolved["at_ms"].as_u64().unwrap());
            assert_eq!(ends, at);
        }
    }
}

#[test]
fn an_outage_and_a_restart_lose_no_notification_and_keep_their_order() {
    // At first nothing listens on the receiver's port (connections are
    // refused); after the restart a receiver answers 503; then 200.
    let port = free_port();
    let server = status(10.0);
    let data = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[[sinks]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\nretry_initial = \"20ms\"\nretry_max = \"200ms\"\n"
    );
    let config = config(&server, &sinks);
    let start = || Vigil::start_with_data_dir(&config, data.path(), tempfile::tempdir().unwrap());

    // Down: an episode begins and ends, the next begins; nothing answers.
    let mut vigil = start();
    let first = fire(&mut vigil, &server);
    resolve(&mut vigil, &server);
    fire(&mut vigil, &server);
    eventually("a refused connection in the log", || {
        let log = vigil.stderr();
        (log.contains("Sink failed") && log.to_lowercase().contains("connection refused"))
            .then_some(())
    });
    // Restarted while the receiver is still down; it answers 503 now.
    vigil.terminate();
    let receiver = Receiver::start_on(port);
    receiver.answer(503);
    let mut vigil = start();
    eventually("refused attempts", || {
        (receiver.received().len() >= 2).then_some(())
    });
    resolve(&mut vigil, &server);
    assert!(receiver.accepted().is_empty());

    // Back: everything arrives, in order.
    receiver.answer(200);
    let accepted = eventually("four notifications", || {
        let accepted = receiver.accepted();
        let statuses: Vec<Value> = accepted.iter().map(|p| p["status"].clone()).collect();
        (statuses.len() >= 4).then_some(accepted)
    });
    vigil.terminate();
    let refused = receiver
        .received()
        .iter()
        .filter(|r| r.answered == 503)
        .count();
    assert!(refused >= 2, "{refused}");
    // At-least-once: a duplicate is the very same notification, so
    // dropping repeats leaves exactly the four, in order.
    let mut distinct: Vec<&Value> = Vec::new();
    for payload in &accepted {
        if !distinct.contains(&payload) {
            distinct.push(payload);
        }
    }
    let statuses: Vec<&Value> = distinct.iter().map(|p| &p["status"]).collect();
    assert_eq!(statuses, ["firing", "resolved", "firing", "resolved"]);
    let fingerprints: Vec<&Value> = accepted
        .iter()
        .map(|p| &p["alerts"][0]["fingerprint"])
        .collect();
    assert!(
        fingerprints.iter().all(|f| **f == first["fingerprint"]),
        "{fingerprints:?}"
    );
    // Each episode keeps its own start; its resolve carries it too.
    let starts: Vec<&Value> = distinct
        .iter()
        .map(|p| &p["alerts"][0]["startsAt"])
        .collect();
    assert_eq!(starts[0], starts[1]);
    assert_eq!(starts[2], starts[3]);
    assert_ne!(starts[0], starts[2]);
}

#[test]
fn a_receiver_failing_for_ever_keeps_its_bound_and_the_other_sink_hears_of_it() {
    let receiver = Receiver::start();
    receiver.answer(500);
    let server = status(10.0);
    let data = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nmax_queue = 3\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\n",
        receiver.url()
    );
    let mut vigil = Vigil::start_with_data_dir(
        &config(&server, &sinks),
        data.path(),
        tempfile::tempdir().unwrap(),
    );
    // Three episodes: six notifications for a bound of three.
    for _ in 0..3 {
        fire(&mut vigil, &server);
        resolve(&mut vigil, &server);
    }
    let failing = vigil.wait_for("DeliveryFailing on the console", PATIENCE, |v| {
        is_alert(v, "firing", "DeliveryFailing")
    });
    assert_eq!(failing["rule"], "vigil");
    assert_eq!(failing["labels"], json!({"sink": "hook"}));
    // How many were dropped by then depends on when the host's tick
    // came; that some were, and why, does not.
    let summary = failing["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("sink `hook` dropped ")
            && summary.contains("notifications: its outbox is full; last error: POST ")
            && summary.ends_with("HTTP 500 Internal Server Error"),
        "{failing}"
    );
    vigil.terminate();
    // The failing sink never got its own DeliveryFailing, only the rule's
    // alert (its first notification, tried again and again).
    let tried: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| r.body["alerts"][0]["labels"]["alertname"].clone())
        .collect();
    assert!(!tried.is_empty());
    assert!(tried.iter().all(|name| name == "CpuUsageHigh"), "{tried:?}");
    // What waits is within the bound and stays for the next start: each
    // full outbox dropped the oldest episode that had begun and ended
    // (F1 R1, then F2 R2), so the last one waits whole.
    let state = vigil::state::StateDb::open(&data.path().join("state.redb")).unwrap();
    let waiting: Vec<String> = state
        .outbox("hook")
        .all()
        .unwrap()
        .iter()
        .map(|(_, bytes)| {
            let event: Value = serde_json::from_slice(bytes).unwrap();
            event["status"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(waiting.len() <= 3);
    assert_eq!(waiting, ["firing", "resolved"]);
}

#[test]
fn a_sink_failing_longer_than_failing_after_is_reported_until_it_delivers_again() {
    let receiver = Receiver::start();
    receiver.answer(503);
    let server = status(10.0);
    let sinks = format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\nfailing_after = \"100ms\"\n",
        receiver.url()
    );
    let mut vigil = Vigil::start(&config(&server, &sinks));
    fire(&mut vigil, &server);
    let failing = vigil.wait_for("DeliveryFailing on the console", PATIENCE, |v| {
        is_alert(v, "firing", "DeliveryFailing")
    });
    let summary = failing["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("sink `hook` has failed for ")
            && summary.ends_with("HTTP 503 Service Unavailable"),
        "{summary}"
    );
    receiver.answer(200);
    vigil.wait_for("DeliveryFailing resolved", PATIENCE, |v| {
        is_alert(v, "resolved", "DeliveryFailing")
    });
    vigil.terminate();
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!(
        accepted[0]["alerts"][0]["labels"]["alertname"],
        "CpuUsageHigh"
    );
}
