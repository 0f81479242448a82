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
