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

/// `rule` evaluated `target` on this line.
fn evaluated(value: &serde_json::Value, rule: &str, target: &str) -> bool {
    is_evaluation(value, target) && value["rule"] == rule
}

#[test]
fn a_rule_sees_only_the_targets_it_selects_and_a_reload_moves_it() {
    let server = StatusServer::start();
    server.set("web", Behavior::json(json!({"cpu_usage": 10})));
    server.set("db", Behavior::json(json!({"cpu_usage": 10})));
    let config = |selector: &str| {
        format!(
            "[[targets]]\nname = \"web-01\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"50ms\"\n\n\
             [[targets]]\nname = \"db-01\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"50ms\"\nlabels = {{ tier = \"data\" }}\n\n\
             [[rules]]\nbuiltin = \"threshold\"\nname = \"all\"\n\n\
             [[rules]]\nbuiltin = \"threshold\"\nname = \"picky\"\n{selector}\n",
            server.url("web"),
            server.url("db")
        )
    };
    let mut vigil = Vigil::start(&config("targets = [\"web-*\"]"));
    // Twenty db-01 samples reached the rule that sees everything: the
    // picky rule was offered none of them.
    for _ in 0..20 {
        vigil.wait_for("db-01 evaluated", Duration::from_secs(60), |v| {
            evaluated(v, "all", "db-01")
        });
    }
    assert!(vigil.count(|v| evaluated(v, "picky", "web-01")) > 0);
    assert_eq!(vigil.count(|v| evaluated(v, "picky", "db-01")), 0);

    // Selected by label now: the next version sees db-01 only.
    std::fs::write(
        vigil.config_path(),
        config("target_labels = { tier = \"data\" }"),
    )
    .unwrap();
    vigil.signal("HUP");
    vigil.wait_for("picky on db-01", Duration::from_secs(60), |v| {
        evaluated(v, "picky", "db-01")
    });
    let moved = vigil.seen.len();
    for _ in 0..20 {
        vigil.wait_for("web-01 evaluated", Duration::from_secs(60), |v| {
            evaluated(v, "all", "web-01")
        });
    }
    let after = &vigil.seen[moved..];
    assert_eq!(
        after
            .iter()
            .filter(|v| evaluated(v, "picky", "web-01"))
            .count(),
        0,
        "no web-01 sample after the first db-01 one"
    );
}
