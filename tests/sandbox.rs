//! The sandbox: every hostile rule is stopped, its failure reported as what
//! it is, and a well-behaved rule evaluated alongside keeps every sample.

mod common;

use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, fixture, is_evaluation, toml_path, web_target};
use serde_json::{Value, json};

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

    // Each runaway fails on fresh instances until quarantine sets it aside
    // (after 5 failures in a row); the well-behaved rule carries on.
    for rule in ["fixture_spin", "fixture_hog"] {
        let failures = std::cell::Cell::new(0);
        vigil.wait_for(
            &format!("five failures of {rule}"),
            Duration::from_secs(30),
            |v| {
                if rule_is(rule)(v) && v.get("error").is_some() {
                    failures.set(failures.get() + 1);
                }
                failures.get() >= 5
            },
        );
    }
    assert!(vigil.is_running());
    vigil.terminate();
    assert_eq!(
        vigil.count(|v| common::is_alert(v, "firing", "CpuUsageHigh")),
        1
    );
    let failed_good = vigil.count(|v| rule_is("threshold")(v) && v.get("error").is_some());
    assert_eq!(failed_good, 0);
    // Every rule had a line for every sample (evaluated, failed or skipped
    // in quarantine): the runaways cost the well-behaved rule none.
    let stamps = |rule: &'static str| -> std::collections::BTreeSet<u64> {
        vigil
            .seen
            .iter()
            .filter(|v| rule_is(rule)(v))
            .map(|v| v["timestamp_ms"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(stamps("threshold"), stamps("fixture_spin"));
    assert_eq!(stamps("threshold"), stamps("fixture_hog"));
    assert!(vigil.stderr().contains("Rule evaluation failed"));
}

/// Runs the `hostile` fixture with `attack` next to the bundled rule, against
/// a healthy target polled every 100 ms, until the hostile rule has had
/// [`HOSTILE_SAMPLES`] samples. Checks that the bundled rule evaluated every
/// sample without a failure, and returns what was seen.
fn attack(attack: &str, extra: &str) -> (Vigil, StatusServer) {
    attack_with(&format!("{{ attack = \"{attack}\" }}"), extra)
}

/// Samples the hostile rule is handed (evaluated, failed or skipped) before
/// an attack is stopped and checked.
const HOSTILE_SAMPLES: usize = 10;

fn hostile_lines(vigil: &Vigil) -> usize {
    vigil.count(|v| is_evaluation(v, "web-01") && v["rule"] == "hostile")
}

/// [`attack`] with the hostile rule's whole config table.
fn attack_with(config: &str, extra: &str) -> (Vigil, StatusServer) {
    attack_until(config, extra, |vigil| {
        hostile_lines(vigil) >= HOSTILE_SAMPLES
    })
}

/// [`attack_with`], stopping once `done` says so (or failing after a
/// minute): counts, not a time window, so a busy machine only takes longer.
fn attack_until(config: &str, extra: &str, done: impl Fn(&Vigil) -> bool) -> (Vigil, StatusServer) {
    let server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 95, "memory_usage": 20})),
    );
    let mut vigil = Vigil::start(&format!(
        "{}\n[[rules]]\nbuiltin = \"threshold\"\n\n[[rules]]\nname = \"hostile\"\npath = \"{}\"\nconfig = {config}\n{extra}\n",
        web_target(&server.url("status")),
        toml_path(&fixture("fixture_hostile")),
    ));
    vigil.wait_for("a hostile evaluation", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && v["rule"] == "hostile"
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done(&vigil) {
        assert!(
            std::time::Instant::now() < deadline,
            "the attack did not get as far as the test waits for within a minute ({} hostile lines)",
            hostile_lines(&vigil)
        );
        vigil.collect_for(Duration::from_millis(100));
    }
    // Still up after the attack; then a clean stop, which evaluates and
    // reports every sample already taken, so the comparison below sees
    // complete data.
    assert!(vigil.is_running());
    vigil.terminate();
    let good = |v: &Value| is_evaluation(v, "web-01") && v["rule"] == "threshold";
    assert_eq!(vigil.count(|v| good(v) && v.get("error").is_some()), 0);
    // Every sample the hostile rule was handed, `threshold` evaluated too.
    let good_samples: std::collections::HashSet<u64> = vigil
        .seen
        .iter()
        .filter(|v| good(v))
        .map(|v| v["timestamp_ms"].as_u64().unwrap())
        .collect();
    for v in vigil
        .seen
        .iter()
        .filter(|v| is_evaluation(v, "web-01") && v["rule"] == "hostile")
    {
        let at = v["timestamp_ms"].as_u64().unwrap();
        assert!(
            good_samples.contains(&at),
            "`threshold` missed the sample of {at}"
        );
    }
    assert_eq!(
        vigil.count(|v| common::is_alert(v, "firing", "CpuUsageHigh")),
        1
    );
    (vigil, server)
}

/// The hostile rule's evaluations.
fn hostile(vigil: &Vigil) -> Vec<&Value> {
    vigil
        .seen
        .iter()
        .filter(|v| is_evaluation(v, "web-01") && v["rule"] == "hostile")
        .collect()
}

/// The first hostile evaluation: (error kind, error).
fn first_error(vigil: &Vigil) -> (String, String) {
    let first = hostile(vigil)[0];
    (
        first["error_kind"].as_str().unwrap_or("none").to_string(),
        first["error"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn deep_recursion_traps() {
    let (vigil, _server) = attack("recursion", "");
    // Rust keeps its stack in linear memory: running off its end is an
    // out-of-bounds access.
    assert_eq!(
        first_error(&vigil),
        (
            "trap".into(),
            "trap: wasm trap: out of bounds memory access".into()
        )
    );
}

#[test]
fn a_panic_is_reported_with_its_message() {
    let (vigil, _server) = attack("panic", "");
    assert_eq!(
        first_error(&vigil),
        (
            "trap".into(),
            "trap: wasm trap: wasm `unreachable` instruction executed (stderr: rule exploded on purpose)".into()
        )
    );
}

#[test]
fn a_million_alerts_hit_the_memory_cap() {
    // A generous deadline: on a busy machine building a million alerts can
    // take longer than the default 100 ms, and this test is about memory.
    let (vigil, _server) = attack("alert-flood", "timeout = \"5s\"");
    assert_eq!(
        first_error(&vigil),
        (
            "memory_limit".into(),
            "memory limit: tried to use more than 128 MiB".into()
        )
    );
}

#[test]
fn too_many_alerts_are_refused_as_too_large() {
    let (vigil, _server) = attack_with(r#"{ attack = "alert-flood", count = 5000 }"#, "");
    assert_eq!(
        first_error(&vigil),
        (
            "verdict_too_large".into(),
            "verdict too large: 5000 alerts (limit 1000)".into()
        )
    );
    assert_eq!(vigil.count(|v| common::is_alert(v, "firing", "Flood")), 0);
}

#[test]
fn a_100_mb_summary_is_never_copied_out() {
    let (vigil, _server) = attack("huge-summary", "max_memory_mib = 512\ntimeout = \"5s\"");
    assert_eq!(
        first_error(&vigil),
        (
            "verdict_too_large".into(),
            "verdict too large: the rule returned more data than the host copies out of one call (about 1330176 bytes)".into()
        )
    );
    assert_eq!(vigil.count(|v| common::is_alert(v, "firing", "Huge")), 0);
}

#[test]
fn a_log_flood_is_cut_to_the_rate_limit() {
    let (vigil, _server) = attack("log-flood", "log_lines_per_second = 50");
    let log = vigil.stderr();
    let flooded = log
        .lines()
        .filter(|line| line.contains("flood line"))
        .count();
    // A burst of 100, then 50 per second for the few seconds it ran.
    assert!(
        flooded <= 100 + 50 * 5,
        "{flooded} flood lines reached the log"
    );
    assert!(flooded >= 100, "only {flooded} flood lines reached the log");
    assert!(log.contains("Rule log lines dropped"), "{log}");
}

#[test]
fn sleeping_is_denied() {
    let (vigil, _server) = attack("sleep", "");
    assert_eq!(
        first_error(&vigil),
        (
            "trap".into(),
            "trap: rules may not sleep or wait (`wasi:clocks/monotonic-clock@0.2.12#subscribe-duration` is denied)".into()
        )
    );
}

#[test]
fn files_env_network_and_names_are_out_of_reach() {
    let server = StatusServer::start();
    // A port that really listens, so a refusal is the sandbox's doing.
    let open_port = server
        .url("x")
        .trim_start_matches("http://")
        .trim_end_matches("/x")
        .to_string();
    let (vigil, _other) = attack_with(
        &format!(r#"{{ attack = "escape", connect_to = "{open_port}" }}"#),
        "",
    );
    drop(server);
    let summaries: Vec<(String, String)> = vigil
        .seen
        .iter()
        .filter(|v| v["type"] == "alert" && v["rule"] == "hostile")
        .map(|v| {
            (
                v["name"].as_str().unwrap().into(),
                v["summary"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect = |name: &str, summary: &str| (name.to_string(), summary.to_string());
    assert_eq!(
        summaries,
        [
            expect("File", "denied: No such file or directory (os error 44)"),
            expect("Env", "0 variables"),
            expect("Tcp", "denied: Permission denied (os error 2)"),
            expect(
                "Dns",
                "denied: failed to lookup address information: Non-recoverable error"
            ),
        ]
    );
}

#[test]
fn a_failing_rule_is_quarantined_with_backoff_and_alerts_once() {
    // Three failures, 300 ms, one failure, 600 ms, then it works: watched
    // until `RuleFailing` has resolved, however long that takes.
    let (vigil, _server) = attack_until(
        r#"{ attack = "flaky" }"#,
        "quarantine_after = 3\nquarantine_backoff = \"300ms\"",
        |vigil| vigil.count(|v| common::is_alert(v, "resolved", "RuleFailing")) >= 1,
    );
    assert_eq!(
        vigil.count(|v| common::is_alert(v, "firing", "Recovered")),
        1
    );
    let resolved = vigil
        .seen
        .iter()
        .find(|v| common::is_alert(v, "resolved", "RuleFailing"))
        .expect("RuleFailing resolved");
    assert_eq!(resolved["rule"], "vigil");
    assert_eq!(resolved["labels"], json!({"rule": "hostile"}));
    assert_eq!(
        vigil.count(|v| common::is_alert(v, "firing", "RuleFailing")),
        1
    );
    let fired = vigil
        .seen
        .iter()
        .find(|v| common::is_alert(v, "firing", "RuleFailing"))
        .unwrap();
    assert_eq!(fired["severity"], "critical");
    let summary = fired["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(
            "rule `hostile` failed 3 times in a row and is quarantined; last error: trap: "
        ),
        "{summary}"
    );
    assert!(summary.ends_with("(stderr: flaky instance 3)"), "{summary}");

    // Failures 1-3, a quarantine, failure 4 on probation, a longer
    // quarantine, then the fifth instance works.
    let kinds: Vec<&str> = hostile(&vigil)
        .iter()
        .map(|v| v["error_kind"].as_str().unwrap_or("ok"))
        .collect();
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for kind in &kinds {
        match runs.last_mut() {
            Some((last, count)) if last == kind => *count += 1,
            _ => runs.push((kind, 1)),
        }
    }
    assert_eq!(runs[0], ("trap", 3), "{runs:?}");
    assert_eq!(runs[1].0, "quarantined", "{runs:?}");
    assert_eq!(runs[2], ("trap", 1), "{runs:?}");
    assert_eq!(runs[3].0, "quarantined", "{runs:?}");
    assert_eq!(runs[4].0, "ok", "{runs:?}");
    // The second quarantine is twice as long: about 6 samples, not 3.
    assert!(runs[3].1 > runs[1].1, "backoff did not grow: {runs:?}");
}

#[test]
fn quarantine_backoff_doubles_up_to_its_maximum() {
    // Every call panics; one failure quarantines. 1s, then 2s, then never
    // more than the 2s maximum.
    let quarantines = |vigil: &Vigil| vigil.stderr().matches("Rule quarantined.").count();
    let (vigil, _server) = attack_until(
        r#"{ attack = "panic" }"#,
        "quarantine_after = 1\nquarantine_backoff = \"1s\"\nquarantine_max_backoff = \"2s\"",
        |vigil| quarantines(vigil) >= 4,
    );
    let log = vigil.stderr();
    let backoffs: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Rule quarantined."))
        .filter_map(|line| line.split("retry_in=").nth(1)?.split_whitespace().next())
        .collect();
    assert!(backoffs.len() >= 4, "{log}");
    assert_eq!(backoffs[..4], ["1s", "2s", "2s", "2s"], "{log}");
}
