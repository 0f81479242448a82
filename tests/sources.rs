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

    // Over two more seconds the good target keeps its 100ms rhythm although
    // `slow` hangs for 300ms on every poll, and every bad target is retried.
    let before = vigil.count(|v| is_evaluation(v, "good"));
    vigil.collect_for(Duration::from_secs(2));
    let good = vigil.count(|v| is_evaluation(v, "good") && v["health"] == "up") - before;
    assert!(
        good >= 12,
        "only {good} evaluations of `good` in 2s at a 100ms interval"
    );
    assert_eq!(
        vigil.count(|v| is_evaluation(v, "good") && v["health"] == "down"),
        0
    );
    for (name, _) in &expectations {
        let polls = vigil.count(|v: &Value| is_evaluation(v, name));
        assert!(polls >= 3, "`{name}` was polled only {polls} times");
    }
    assert!(vigil.is_running());
}
