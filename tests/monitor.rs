//! The classic monitor, end to end: a status endpoint on loopback, the
//! bundled `threshold` rule in its sandbox, alerts that fire and resolve
//! exactly once.

mod common;

use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, is_alert, is_evaluation, web_target};
use serde_json::json;

fn setup(server: &StatusServer, rule_config: &str) -> Vigil {
    Vigil::start(&format!(
        "{}timeout = \"1s\"\nlabels = {{ team = \"payments\" }}\n\n[[rules]]\nbuiltin = \"threshold\"\n{rule_config}\n",
        web_target(&server.url("status"))
    ))
}

#[test]
fn memory_above_80_fires_once_after_for_and_resolves_once() {
    let server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 12, "memory_usage": 91})),
    );
    let mut vigil = setup(
        &server,
        r#"config = { thresholds = { cpu_usage = 80, memory_usage = { above = 80, for = "1s" } } }"#,
    );

    let fired = vigil.wait_for("MemoryUsageHigh firing", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "MemoryUsageHigh")
    });
    let held = fired["at_ms"].as_u64().unwrap() - fired["active_since_ms"].as_u64().unwrap();
    assert!(held >= 1000, "fired after {held}ms, before its `for` of 1s");
    assert_eq!(fired["target"], "web-01");
    assert_eq!(fired["rule"], "threshold");
    assert_eq!(fired["severity"], "warning");
    assert_eq!(fired["summary"], "memory_usage is 91.0, above 80");
    assert_eq!(fired["labels"], json!({"metric": "memory_usage"}));
    // It was pending, not firing, for the samples before: evaluations that
    // reported it came before the event.
    let at = fired["at_ms"].as_u64().unwrap();
    let pending = vigil.count(|v| {
        is_evaluation(v, "web-01")
            && v["timestamp_ms"].as_u64().unwrap() < at
            && v["alerts"].as_array().is_some_and(|a| !a.is_empty())
    });
    assert!(
        pending >= 1,
        "no evaluation reported the alert before it fired"
    );

    // Still high for a while: no second announcement.
    vigil.collect_for(Duration::from_millis(1500));
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "MemoryUsageHigh")), 1);

    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 12, "memory_usage": 50})),
    );
    let resolved = vigil.wait_for("MemoryUsageHigh resolved", Duration::from_secs(5), |v| {
        is_alert(v, "resolved", "MemoryUsageHigh")
    });
    assert_eq!(resolved["fingerprint"], fired["fingerprint"]);
    vigil.collect_for(Duration::from_millis(1500));
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "MemoryUsageHigh")), 1);
    assert_eq!(
        vigil.count(|v| is_alert(v, "resolved", "MemoryUsageHigh")),
        1
    );
    assert_eq!(
        vigil.count(|v| v["type"] == "alert" && v["name"] != "MemoryUsageHigh"),
        0
    );
}

#[test]
fn stopped_server_fires_target_down_with_the_reason() {
    let mut server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 12, "memory_usage": 40})),
    );
    let mut vigil = setup(&server, "");
    vigil.wait_for("a healthy evaluation", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && v["health"] == "up"
    });

    server.stop();
    let down = vigil.wait_for("TargetDown firing", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "TargetDown")
    });
    assert_eq!(down["severity"], "critical");
    let summary = down["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("target `web-01` is down: cannot connect to http://127.0.0.1:"),
        "{summary}"
    );
    assert!(summary.contains("Connection refused"), "{summary}");
    vigil.collect_for(Duration::from_millis(500));
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "TargetDown")), 1);
    assert!(vigil.is_running());
}

#[test]
fn samples_carry_target_labels_and_only_subscribed_metrics() {
    let server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(
            json!({"cpu_usage": 12, "memory_usage": 40, "uptime": 99, "version": "1.2"}),
        ),
    );
    let mut vigil = setup(&server, "");
    let evaluation = vigil.wait_for("an evaluation", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && v["health"] == "up"
    });
    // `threshold` subscribes to the metrics it checks; `uptime` is not sent.
    let names: Vec<&str> = evaluation["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu_usage", "memory_usage"]);
    assert_eq!(evaluation["labels"], json!({"team": "payments"}));
    assert_eq!(evaluation["alerts"], json!([]));
}
