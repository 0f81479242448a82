//! Polling: every way a status endpoint can misbehave becomes a down sample
//! with a reason that says what happened, and never stalls another target.

mod common;

use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, is_evaluation};
use serde_json::{Value, json};

#[test]
fn bad_answers_mark_their_target_down_and_the_others_keep_polling() {
    let server = StatusServer::start();
    server.set(
        "good",
        Behavior::json(json!({"cpu_usage": 10, "memory_usage": 20})),
    );
    server.set("malformed", Behavior::Body(r#"{"cpu_usage": 10,"#.into()));
    server.set("error", Behavior::Status(500));
    server.set("slow", Behavior::Slow(Duration::from_secs(3), "{}".into()));
    let huge = format!(r#"{{"padding": "{}"}}"#, "x".repeat(10 * 1024 * 1024));
    server.set("huge", Behavior::Body(huge));
    server.set("array", Behavior::json(json!([1, 2, 3])));

    let target = |name: &str| {
        format!(
            "[[targets]]\nname = \"{name}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\n",
            server.url(name)
        )
    };
    let config: String = ["good", "malformed", "error", "slow", "huge", "array"]
        .iter()
        .map(|name| target(name))
        .collect();
    let mut vigil = Vigil::start(&config);

    let expectations = [
        (
            "malformed",
            "invalid JSON: EOF while parsing a value at line 1 column 17".to_string(),
        ),
        (
            "error",
            format!(
                "HTTP 500 Internal Server Error from {}",
                server.url("error")
            ),
        ),
        (
            "slow",
            format!("timed out after 300ms waiting for {}", server.url("slow")),
        ),
        (
            "huge",
            "body larger than 1048576 bytes (max_body_bytes)".to_string(),
        ),
        (
            "array",
            "expected a JSON object of metrics, got an array".to_string(),
        ),
    ];
    for (name, reason) in &expectations {
        let down = vigil.wait_for(
            &format!("a down sample from `{name}`"),
            Duration::from_secs(10),
            |v| is_evaluation(v, name) && v["health"] == "down",
        );
        assert_eq!(down["reason"], *reason, "target `{name}`");
        assert_eq!(down["metrics"], json!([]));
        // The bundled rule turns it into TargetDown.
        assert_eq!(down["alerts"], json!(["TargetDown"]));
    }

    // Three more polls of every bad target, `slow` hanging until its 300 ms
    // timeout each time: the good target is polled at least as often as
    // the slow one meanwhile (its cycle is a third as long), never down, and
    // every bad target is retried.
    let polls = |vigil: &Vigil, name: &str| vigil.count(|v: &Value| is_evaluation(v, name));
    let before: Vec<usize> = expectations
        .iter()
        .map(|(name, _)| polls(&vigil, name))
        .collect();
    let good_before = polls(&vigil, "good");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while expectations
        .iter()
        .zip(&before)
        .any(|((name, _), before)| polls(&vigil, name) < before + 3)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the bad targets were not polled three more times within a minute"
        );
        vigil.collect_for(Duration::from_millis(100));
    }
    let slow = expectations
        .iter()
        .position(|(name, _)| *name == "slow")
        .unwrap();
    let slow_polls = polls(&vigil, "slow") - before[slow];
    let good_polls = polls(&vigil, "good") - good_before;
    assert!(
        good_polls >= slow_polls,
        "`good` polled {good_polls} times while `slow` was polled {slow_polls} times"
    );
    assert_eq!(
        vigil.count(|v| is_evaluation(v, "good") && v["health"] == "down"),
        0
    );
    assert!(vigil.is_running());
}

/// Polls follow redirects (a status page moved behind a proxy, as
/// Prometheus follows them), relative ones included, and a redirect loop is
/// a down target that says so rather than a poll that never ends.
#[test]
fn redirects_are_followed_and_a_loop_marks_the_target_down() {
    let server = StatusServer::start();
    server.set("good", Behavior::json(json!({"cpu_usage": 17})));
    server.set("moved", Behavior::Redirect("good".into()));
    server.set("loop", Behavior::Redirect("/loop".into()));
    let config: String = ["moved", "loop"]
        .iter()
        .map(|name| {
            format!(
                "[[targets]]\nname = \"{name}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"2s\"\n",
                server.url(name)
            )
        })
        .collect();
    let mut vigil = Vigil::start(&config);
    let up = vigil.wait_for("a sample from `moved`", Duration::from_secs(10), |v| {
        is_evaluation(v, "moved")
    });
    assert_eq!(up["health"], "up", "{up}");
    assert_eq!(up["metrics"][0]["name"], "cpu_usage", "{up}");
    assert_eq!(up["metrics"][0]["value"], 17.0, "{up}");
    let down = vigil.wait_for("a sample from `loop`", Duration::from_secs(10), |v| {
        is_evaluation(v, "loop")
    });
    assert_eq!(down["health"], "down", "{down}");
    assert_eq!(
        down["reason"],
        format!("more than 10 redirects from {}", server.url("loop"))
    );
    assert!(vigil.is_running());
}

/// Issue 15: every HTTP target polls through one shared client and
/// connection pool, and targets started together spread their first polls
/// over the interval. Many targets behind one server (one host and port, as
/// the shared pool sees them) are still each polled, each gets its own
/// answer (no answer crosses to another target on a reused connection),
/// and none is down.
#[test]
fn many_targets_on_one_server_are_each_polled_for_their_own_answer() {
    const TARGETS: usize = 200;
    let server = StatusServer::start();
    let mut config = String::new();
    for i in 0..TARGETS {
        let name = format!("t{i:03}");
        server.set(
            &name,
            Behavior::json(json!({"cpu_usage": i as f64 / 10.0, "memory_usage": 1})),
        );
        config += &format!(
            "[[targets]]\nname = \"{name}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"200ms\"\n",
            server.url(&name)
        );
    }
    let mut vigil = Vigil::start(&config);

    let polled = |vigil: &Vigil, i: usize| vigil.count(|v| is_evaluation(v, &format!("t{i:03}")));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (0..TARGETS).any(|i| polled(&vigil, i) < 3) {
        assert!(
            std::time::Instant::now() < deadline,
            "within a minute, targets polled fewer than 3 times: {:?}",
            (0..TARGETS)
                .filter(|&i| polled(&vigil, i) < 3)
                .collect::<Vec<_>>()
        );
        vigil.collect_for(Duration::from_millis(100));
    }
    for value in vigil.seen.iter().filter(|v| v["type"] == "evaluation") {
        let target = value["target"].as_str().unwrap();
        assert_eq!(value["health"], "up", "{value}");
        let i: f64 = target[1..].parse().unwrap();
        let cpu = value["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|metric| metric["name"] == "cpu_usage")
            .unwrap_or_else(|| panic!("no cpu_usage in {value}"));
        assert_eq!(cpu["value"], json!(i / 10.0), "target `{target}`");
    }
    assert!(server.requests() >= 3 * TARGETS);
    assert!(vigil.is_running());
}
