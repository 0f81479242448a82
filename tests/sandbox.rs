//! The sandbox floor: a rule that never returns and a rule that allocates
//! without bound are stopped by the deadline and the memory cap, and cost
//! nothing but their own evaluations.

mod common;

use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, fixture, is_evaluation, toml_path, web_target};
use serde_json::json;

#[test]
fn runaway_rules_are_stopped_and_the_others_carry_on() {
    let server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 95, "memory_usage": 20})),
    );
    let mut vigil = Vigil::start(&format!(
        r#"
{}
[[rules]]
builtin = "threshold"

[[rules]]
path = "{}"
timeout = "50ms"

[[rules]]
path = "{}"
max_memory_mib = 16
"#,
        web_target(&server.url("status")),
        toml_path(&fixture("fixture_spin")),
        toml_path(&fixture("fixture_hog")),
    ));

    let rule_is = |rule: &'static str| {
        move |v: &serde_json::Value| is_evaluation(v, "web-01") && v["rule"] == rule
    };
    let spin = vigil.wait_for(
        "a spin evaluation",
        Duration::from_secs(10),
        rule_is("fixture_spin"),
    );
    assert_eq!(spin["error_kind"], "timeout");
    assert_eq!(spin["error"], "timeout: exceeded its 50ms deadline");
    let hog = vigil.wait_for(
        "a hog evaluation",
        Duration::from_secs(10),
        rule_is("fixture_hog"),
    );
    assert_eq!(hog["error_kind"], "memory_limit");
    assert_eq!(hog["error"], "memory limit: tried to use more than 16 MiB");

    // The well-behaved rule keeps evaluating every sample and alerting,
    // and the runaways keep being retried on fresh instances.
    vigil.collect_for(Duration::from_secs(2));
    assert_eq!(
        vigil.count(|v| common::is_alert(v, "firing", "CpuUsageHigh")),
        1
    );
    let good = vigil.count(rule_is("threshold"));
    let failed_good = vigil.count(|v| rule_is("threshold")(v) && v.get("error").is_some());
    assert_eq!(failed_good, 0);
    assert!(good >= 15, "threshold evaluated only {good} samples");
    assert!(vigil.count(rule_is("fixture_spin")) >= 5);
    assert!(vigil.count(rule_is("fixture_hog")) >= 5);
    assert!(vigil.is_running());
    assert!(vigil.stderr().contains("Rule evaluation failed"));
}
