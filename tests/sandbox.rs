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
    assert_eq!(
        spin["error"],
        "timeout: exceeded its 50ms deadline (raise `timeout`)"
    );
    let hog = vigil.wait_for(
        "a hog evaluation",
        Duration::from_secs(10),
        rule_is("fixture_hog"),
    );
    assert_eq!(hog["error_kind"], "memory_limit");
    assert_eq!(
        hog["error"],
        "memory limit: tried to use more than 16 MiB of linear memory and tables (raise `max_memory_mib`)"
    );

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
            "memory limit: tried to use more than 128 MiB of linear memory and tables (raise `max_memory_mib`)".into()
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
            "verdict too large: 5000 alerts (limit 1000; raise `max_alerts`)".into()
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
            "verdict too large: more than about 1330176 bytes, the most the host copies out of one call (raise `max_verdict_bytes`)".into()
        )
    );
    assert_eq!(vigil.count(|v| common::is_alert(v, "firing", "Huge")), 0);
}

#[test]
fn a_log_flood_is_cut_to_the_rate_limit_shared_by_log_stdout_and_stderr() {
    let started = std::time::Instant::now();
    let (vigil, _server) = attack("log-flood", "log_lines_per_second = 50");
    let seconds = started.elapsed().as_secs() + 1;
    let log = vigil.stderr();
    let lines = |marker: &str| log.lines().filter(|line| line.contains(marker)).count();
    let (stdout, stderr) = (lines("stdout flood line"), lines("stderr flood line"));
    let host = lines("flood line") - stdout - stderr;
    let flooded = host + stdout + stderr;
    // One budget for the three: a burst of 100, then 50 per second for as
    // long as it ran.
    assert!(
        flooded <= 100 + 50 * seconds as usize,
        "{flooded} flood lines reached the log ({host} log, {stdout} stdout, {stderr} stderr)"
    );
    assert!(flooded >= 100, "only {flooded} flood lines reached the log");
    assert!(
        host > 0 && stdout > 0 && stderr > 0,
        "every stream logs within the budget: {host} log, {stdout} stdout, {stderr} stderr"
    );
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
            expect("Args", "0 arguments"),
            expect("Tcp", "denied: Permission denied (os error 2)"),
            expect("Udp", "denied: Permission denied (os error 2)"),
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

/// The most the host process may hold while a rule capped at 32 MiB attacks
/// it. The host runs in about 36 MiB here (wasmtime, the bundled rule,
/// buffers); buffering what the attacks ask for would take 100 MB more.
const HOST_RSS_BOUND: u64 = 96 * 1024 * 1024;

/// Runs an attack with the hostile rule capped at 32 MiB and checks that the
/// host's peak RSS stayed under [`HOST_RSS_BOUND`] while it ran.
fn bounded_attack(config: &str, extra: &str) -> (Vigil, StatusServer) {
    let extra = format!("max_memory_mib = 32\n{extra}");
    let peak = std::cell::Cell::new(0);
    let (vigil, server) = attack_until(config, &extra, |vigil| {
        peak.set(vigil.peak_rss());
        hostile_lines(vigil) >= HOSTILE_SAMPLES
    });
    let peak = peak.get();
    assert!(
        peak < HOST_RSS_BOUND,
        "the host's peak RSS was {} MiB",
        peak >> 20
    );
    (vigil, server)
}

/// The summary of the hostile rule's first `name` alert.
fn summary(vigil: &Vigil, name: &str) -> String {
    vigil
        .seen
        .iter()
        .find(|v| v["type"] == "alert" && v["rule"] == "hostile" && v["name"] == name)
        .and_then(|v| v["summary"].as_str())
        .unwrap_or_else(|| panic!("no {name} alert"))
        .to_string()
}

#[test]
fn a_state_value_over_64_kib_is_refused_to_the_rule() {
    let (vigil, _server) = attack("state-huge", "");
    assert_eq!(
        summary(&vigil, "StateHuge"),
        "state value for `big` is 102400 bytes; the limit is 65536"
    );
}

#[test]
fn one_call_buffers_at_most_1000_state_writes() {
    let (vigil, _server) = bounded_attack(r#"{ attack = "state-set-flood" }"#, "");
    assert_eq!(
        summary(&vigil, "StateFlood"),
        "one call may change at most 1000 state keys (a fixed limit); `key-1000` would be one \
         more: keep fewer keys, e.g. one JSON value"
    );
}

#[test]
fn a_state_delete_flood_traps_at_the_same_limit() {
    let (vigil, _server) = bounded_attack(r#"{ attack = "state-delete-flood" }"#, "");
    let (kind, error) = first_error(&vigil);
    assert_eq!(kind, "trap");
    assert!(
        error.starts_with(
            "trap: state-delete: one call may change at most 1000 state keys (a fixed limit); \
             `key-1000` would be one more"
        ),
        "{error}"
    );
}

#[test]
fn deleting_keys_too_long_to_exist_buffers_nothing() {
    // A million deletes of 100 KiB keys: buffered, they would be 100 MB per
    // call. The call runs to its deadline instead, holding nothing.
    let (vigil, _server) = bounded_attack(r#"{ attack = "state-delete-long" }"#, "");
    assert_eq!(first_error(&vigil).0, "timeout");
}

#[test]
fn a_large_random_request_traps_before_the_host_fills_it() {
    let (vigil, _server) = bounded_attack(r#"{ attack = "random-huge" }"#, "");
    assert_eq!(
        first_error(&vigil),
        (
            "trap".into(),
            "trap: asked `wasi:random` for 33554432 bytes in one call; the limit is 65536 (fixed)"
                .into()
        )
    );
}

#[test]
fn a_rule_holds_a_bounded_number_of_wasi_handles() {
    let (vigil, _server) = bounded_attack(r#"{ attack = "handle-flood" }"#, "");
    let (kind, error) = first_error(&vigil);
    assert_eq!(kind, "trap");
    assert!(
        error.starts_with(
            "trap: holds more than 1000 WASI handles (streams, pollables) at once; the limit is fixed"
        ),
        "{error}"
    );
}

#[test]
fn a_huge_log_message_is_a_copy_limit_not_a_large_verdict() {
    let (vigil, _server) = bounded_attack(r#"{ attack = "log-huge" }"#, "");
    assert_eq!(
        first_error(&vigil),
        (
            "copy_limit".into(),
            "copy limit: the rule passed more than about 1330176 bytes to one host call (a log \
             message, a state value); the limit grows with `max_verdict_bytes`"
                .into()
        )
    );
}

/// Starts vigil with the bundled rule and `rule` (a TOML table body), which
/// must fail to load, and returns the error it exits with.
fn refused_at_start(rule: &str) -> String {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let mut vigil = Vigil::start(&format!(
        "{}\n[[rules]]\nbuiltin = \"threshold\"\n\n[[rules]]\n{rule}\n",
        web_target(&server.url("status")),
    ));
    let status = vigil.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    assert_eq!(vigil.count(|v| is_evaluation(v, "web-01")), 0);
    let log = vigil.stderr();
    let error = log
        .lines()
        .find(|line| line.starts_with("rule `"))
        .unwrap_or_else(|| panic!("no line names the refused rule: {log}"));
    error.to_string()
}

#[test]
fn huge_rule_info_is_refused_at_load_as_a_copy_limit() {
    let error = refused_at_start(&format!(
        "name = \"hostile\"\npath = \"{}\"\nconfig = {{ attack = \"info-huge\" }}",
        toml_path(&fixture("fixture_hostile"))
    ));
    assert!(
        error.ends_with(
            "`configure` failed: copy limit: `configure` returned more than about 1330176 \
             bytes of rule info; the limit grows with `max_verdict_bytes`"
        ),
        "{error}"
    );
}

#[test]
fn waiting_for_an_instant_is_denied() {
    let (vigil, _server) = attack("wait-instant", "");
    assert_eq!(
        first_error(&vigil),
        (
            "trap".into(),
            "trap: rules may not sleep or wait (`wasi:clocks/monotonic-clock@0.2.12#subscribe-instant` is denied)".into()
        )
    );
}

#[test]
fn more_than_100_actions_are_refused_as_too_large() {
    let (vigil, _server) = attack("action-flood", "");
    assert_eq!(
        first_error(&vigil),
        (
            "verdict_too_large".into(),
            "verdict too large: 101 actions (limit 100; raise `max_actions`)".into()
        )
    );
}

#[test]
fn more_than_1_mib_of_text_is_refused_as_too_large() {
    let (vigil, _server) = attack("text-flood", "");
    assert_eq!(
        first_error(&vigil),
        (
            "verdict_too_large".into(),
            "verdict too large: 1126405 bytes of text (limit 1048576; raise `max_verdict_bytes`)"
                .into()
        )
    );
    assert_eq!(vigil.count(|v| common::is_alert(v, "firing", "Wordy")), 0);
}

#[test]
fn alert_and_label_names_must_be_names() {
    let (vigil, _server) = attack("bad-name", "");
    assert_eq!(
        first_error(&vigil),
        (
            "invalid_verdict".into(),
            r#"invalid verdict: alert name "Bad Name{x=\"1\"}" is not a valid name: use letters, digits and `_`, not starting with a digit"#.into()
        )
    );
    let (vigil, _server) = attack_with(r#"{ attack = "bad-name", label = true }"#, "");
    assert_eq!(
        first_error(&vigil),
        (
            "invalid_verdict".into(),
            r#"invalid verdict: label name "bad name\nx" is not a valid name: use letters, digits and `_`, not starting with a digit"#.into()
        )
    );
    assert_eq!(
        vigil.count(|v| common::is_alert(v, "firing", "GoodName")),
        0
    );
}

#[test]
fn nothing_a_rule_writes_can_forge_a_host_line() {
    for panic in [false, true] {
        let (vigil, _server) =
            attack_with(&format!(r#"{{ attack = "forge", panic = {panic} }}"#), "");
        let log = vigil.stderr();
        // The rule's text reached the log, escaped inside the host's lines.
        assert!(log.contains("forged by the rule"), "{log}");
        for line in log.lines() {
            assert!(
                !line.starts_with("1999-"),
                "a line the rule wrote: {line:?}"
            );
            assert!(
                !line.contains(['\r', '\u{1b}']),
                "a raw control character in the log: {line:?}"
            );
        }
        let forged_lines = log.lines().filter(|l| l.contains("forged")).count();
        assert!(forged_lines >= 3, "{log}");
        // JSON output stays exact: the summary is the rule's, unescaped.
        if !panic {
            assert_eq!(
                summary(&vigil, "Forged"),
                "summary\n1999-01-01T00:00:00.000000Z  INFO vigil::app: forged by the rule\r\u{1b}[2K"
            );
        }
    }
}

#[test]
fn a_component_importing_wasi_http_is_refused_at_load() {
    let error = refused_at_start(&format!(
        "path = \"{}\"",
        toml_path(&fixture("fixture_http_client"))
    ));
    assert!(
        error.starts_with("rule `fixture_http_client` (")
            && error.contains("imports `wasi:http/")
            && error.contains("which rules are not granted"),
        "{error}"
    );
}

#[test]
fn the_hosts_lines_about_a_rules_actions_share_its_log_budget() {
    // 100 requests per sample (refused: no action is declared), each one a
    // line "Action request handled." without the budget.
    let started = std::time::Instant::now();
    let (vigil, _server) = attack_with(
        r#"{ attack = "action-flood", count = 100 }"#,
        "log_lines_per_second = 10",
    );
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(first_error(&vigil).0, "none");
    let log = vigil.stderr();
    let handled = log.matches("Action request handled.").count();
    assert!(handled > 0, "{log}");
    assert!(
        handled as u64 <= 20 + 10 * seconds,
        "{handled} lines about the rule's requests in {seconds} s"
    );
}

/// Makes the hand-written core module `plugins/wat-fixtures/NAME.wat` a
/// component of the `rule` world, in `dir`.
fn wat_rule(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text =
        std::fs::read_to_string(root.join(format!("plugins/wat-fixtures/{name}.wat"))).unwrap();
    let mut module = wat::parse_str(&text).unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(root.join("wit")).unwrap();
    let world = resolve.select_world(&[package], Some("rule")).unwrap();
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .unwrap();
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, component).unwrap();
    path
}

#[test]
fn the_memory_cap_counts_every_memory_and_table_together() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["memories", "tables"] {
        let error = refused_at_start(&format!(
            "path = \"{}\"\nmax_memory_mib = 16",
            toml_path(&wat_rule(name, dir.path()))
        ));
        assert!(
            error.ends_with(
                "`configure` failed: memory limit: tried to use more than 16 MiB of linear \
                 memory and tables (raise `max_memory_mib`)"
            ),
            "{name}: {error}"
        );
    }
}

#[test]
fn the_console_text_output_has_no_line_a_rule_wrote() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let dir = tempfile::tempdir().unwrap();
    let hostile = toml_path(&fixture("fixture_hostile"));
    let config = format!(
        "{}\n[[rules]]\nname = \"forger\"\npath = \"{hostile}\"\nconfig = {{ attack = \"forge\" }}\n\n[[rules]]\nname = \"panicker\"\npath = \"{hostile}\"\nconfig = {{ attack = \"forge\", panic = true }}\n",
        web_target(&server.url("status")),
    );
    let config_path = dir.path().join("vigil.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .args(["--format", "text", "--evaluations", "show", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        // Split on '\n' only: a stray '\r' must show up inside a line.
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    // Until both rules have had 5 samples and the forged alert has fired.
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let done = |seen: &[String]| {
        let evals = |rule: &str| {
            seen.iter()
                .filter(|l| l.contains(&format!(" eval     web-01/{rule} ")))
                .count()
        };
        evals("forger") >= 5
            && evals("panicker") >= 5
            && seen.iter().any(|l| l.contains("FIRING   Forged"))
    };
    while !done(&seen) {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .unwrap_or_else(|| panic!("not enough output within a minute: {seen:#?}"));
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(error) => panic!("{error}: {seen:#?}"),
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for line in &seen {
        assert!(
            line.starts_with("20") && !line.starts_with("1999"),
            "a line the rule wrote: {line:?}"
        );
        assert!(
            !line.contains(['\r', '\u{1b}']),
            "a raw control character: {line:?}"
        );
    }
    let fired = seen.iter().find(|l| l.contains("FIRING   Forged")).unwrap();
    assert!(
        fired.ends_with("summary\\n1999-01-01T00:00:00.000000Z  INFO vigil::app: forged by the rule\\r\\u{1b}[2K"),
        "{fired}"
    );
    let failed = seen
        .iter()
        .find(|l| l.contains("web-01/panicker") && l.contains("FAILED"))
        .unwrap();
    // The panic message's last line, escaped inside the host's line.
    assert!(
        failed.contains(
            "(stderr: 1999-01-01T00:00:00.000000Z  INFO vigil::app: forged by the rule\\r\\u{1b}[2K)"
        ),
        "{failed}"
    );
}
