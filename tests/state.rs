//! Rule state: durable across restarts, private to the rule, and committed
//! only when a call succeeds.

mod common;

use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, fixture, toml_path, web_target};
use serde_json::{Value, json};

fn config(server: &StatusServer, rule_config: &str) -> String {
    format!(
        r#"
{}
[[rules]]
path = "{}"
{rule_config}
"#,
        web_target(&server.url("status")),
        toml_path(&fixture("fixture_counter")),
    )
}

/// The count the counter fixture reported in a firing event.
fn count(value: &Value) -> Option<u64> {
    if value["type"] != "alert" || value["status"] != "firing" {
        return None;
    }
    value["labels"]["count"]
        .as_str()
        .map(|count| count.parse().unwrap())
}

#[test]
fn state_survives_a_restart_and_a_failed_call_writes_nothing() {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 1})));
    let data = tempfile::tempdir().unwrap();

    let mut vigil = Vigil::start_with_data_dir(
        &config(&server, "config = { panic_at = 3 }"),
        data.path(),
        tempfile::tempdir().unwrap(),
    );
    let failed = vigil.wait_for("the panic at 3", Duration::from_secs(10), |v| {
        v.get("error").is_some()
    });
    assert_eq!(failed["error_kind"], "trap");
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("trap: "), "{error}");
    assert!(error.ends_with("(stderr: count reached 3)"), "{error}");
    vigil.wait_for("count 5", Duration::from_secs(10), |v| count(v) == Some(5));
    let counts: Vec<u64> = vigil.seen.iter().filter_map(count).collect();
    // The call that panicked at 3 stored nothing, so 3 comes once more, from
    // the next sample, on a fresh instance.
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    let log = vigil.stderr();
    assert!(
        log.contains("counter starting, instance 1 rule=fixture_counter"),
        "the host log carries the rule's log lines, tagged:\n{log}"
    );
    assert!(
        log.contains(r#"counter says hello on stdout rule=fixture_counter stream="stdout""#),
        "the host log carries the rule's stdout, tagged:\n{log}"
    );
    drop(vigil);

    let mut vigil = Vigil::start_with_data_dir(
        &config(&server, ""),
        data.path(),
        tempfile::tempdir().unwrap(),
    );
    let first = vigil.wait_for("a count after the restart", Duration::from_secs(10), |v| {
        count(v).is_some()
    });
    let first = count(&first).unwrap();
    assert!(
        first > 5,
        "the count restarted from {first}; state was lost"
    );
}

#[test]
fn a_firing_alert_is_neither_announced_again_nor_forgotten_after_a_restart() {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 95})));
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[[rules]]\nbuiltin = \"threshold\"\n",
        web_target(&server.url("status"))
    );
    let start = || Vigil::start_with_data_dir(&config, data.path(), tempfile::tempdir().unwrap());
    let is_cpu =
        |status: &'static str| move |v: &Value| common::is_alert(v, status, "CpuUsageHigh");

    let mut vigil = start();
    let fired = vigil.wait_for("CpuUsageHigh", Duration::from_secs(10), is_cpu("firing"));
    vigil.terminate();

    let mut vigil = start();
    vigil.wait_for(
        "an evaluation still reporting it",
        Duration::from_secs(10),
        |v| common::is_evaluation(v, "web-01") && v["alerts"] == json!(["CpuUsageHigh"]),
    );
    vigil.collect_for(Duration::from_millis(500));
    assert_eq!(
        vigil.count(is_cpu("firing")),
        0,
        "announced again after the restart"
    );

    server.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let resolved = vigil.wait_for(
        "CpuUsageHigh resolved",
        Duration::from_secs(10),
        is_cpu("resolved"),
    );
    assert_eq!(resolved["fingerprint"], fired["fingerprint"]);
    assert_eq!(resolved["active_since_ms"], fired["active_since_ms"]);
}

#[test]
fn alerts_of_a_rule_dropped_from_the_config_resolve_at_start() {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 95})));
    let data = tempfile::tempdir().unwrap();
    let target = web_target(&server.url("status"));
    let with_rule = format!("{target}\n[[rules]]\nbuiltin = \"threshold\"\nname = \"cpu\"\n");
    let mut vigil =
        Vigil::start_with_data_dir(&with_rule, data.path(), tempfile::tempdir().unwrap());
    vigil.wait_for("CpuUsageHigh", Duration::from_secs(10), |v| {
        common::is_alert(v, "firing", "CpuUsageHigh")
    });
    vigil.terminate();

    let other = format!(
        "{target}\n[[rules]]\nbuiltin = \"threshold\"\nname = \"other\"\nconfig = {{ thresholds = {{ memory_usage = 80 }} }}\n"
    );
    let mut vigil = Vigil::start_with_data_dir(&other, data.path(), tempfile::tempdir().unwrap());
    let resolved = vigil.wait_for(
        "the old rule's alert resolved",
        Duration::from_secs(10),
        |v| common::is_alert(v, "resolved", "CpuUsageHigh"),
    );
    assert_eq!(resolved["rule"], "cpu");
}

#[test]
fn two_rules_from_the_same_component_never_see_each_others_state() {
    // The same counter under two names, the second added once the first
    // has counted to five: were the state shared, the second would start
    // counting where the first is.
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 1})));
    let counter = toml_path(&fixture("fixture_counter"));
    let rule = |name: &str| format!("[[rules]]\nname = \"{name}\"\npath = \"{counter}\"\n");
    let target = web_target(&server.url("status"));
    let mut vigil = Vigil::start(&format!("{target}\n{}", rule("one")));
    let reached = |name: &'static str, n: u64| {
        move |v: &Value| v["rule"] == name && count(v).is_some_and(|count| count >= n)
    };
    vigil.wait_for(
        "five counts of one",
        Duration::from_secs(30),
        reached("one", 5),
    );
    let config = format!("{target}\n{}{}", rule("one"), rule("two"));
    std::fs::write(vigil.config_path(), config).unwrap();
    vigil.wait_for(
        "three counts of two",
        Duration::from_secs(30),
        reached("two", 3),
    );
    vigil.terminate();
    for name in ["one", "two"] {
        let counts: Vec<u64> = vigil
            .seen
            .iter()
            .filter(|v| v["rule"] == name)
            .filter_map(count)
            .collect();
        let expected: Vec<u64> = (1..=counts.len() as u64).collect();
        assert_eq!(counts, expected, "rule `{name}` did not count on its own");
    }
}
