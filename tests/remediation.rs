//! Remediation end to end: a rule asks, the gate decides, the action runs
//! (as argv, never through a shell) or not, the audit log keeps it, and the
//! outcome comes back to the rule.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, fixture, toml_path, web_target};
use serde_json::{Value, json};

/// A `[[rules]]` table for the remediate fixture asking for `action` with
/// `value` as its one param.
fn asking(name: &str, action: &str, value: &str) -> String {
    format!(
        "[[rules]]\nname = \"{name}\"\npath = \"{}\"\nconfig = {{ action = \"{action}\", params = {{ value = {} }} }}\n\n",
        toml_path(&fixture("fixture_remediate")),
        toml::Value::String(value.into())
    )
}

struct Setup {
    _server: StatusServer,
    vigil: Vigil,
    data: tempfile::TempDir,
}

fn setup(head: &str, rules: &str, actions: &str) -> Setup {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "{head}\n{}\n{rules}\n{actions}",
        web_target(&server.url("status"))
    );
    let vigil = Vigil::start_with_data_dir(&config, data.path(), tempfile::tempdir().unwrap());
    Setup {
        _server: server,
        vigil,
        data,
    }
}

/// [`setup`] with `remediation_mode = "enforce"`.
fn enforcing(rules: &str, actions: &str) -> Setup {
    setup("remediation_mode = \"enforce\"", rules, actions)
}

/// `vigil audit` over a stopped vigil's data directory, as JSON records.
fn audit(data: &Path, filters: &[&str]) -> Vec<Value> {
    common::run_audit(data, "json", filters)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A feedback alert the remediate fixture raised: status name and summary.
fn feedback(vigil: &mut Vigil, rule: &str, status: &'static str) -> Value {
    let rule = rule.to_string();
    vigil.wait_for(
        &format!("{status} feedback for {rule}"),
        Duration::from_secs(10),
        move |v| common::is_alert(v, "firing", status) && v["rule"] == rule.as_str(),
    )
}

const RECORD: &str = r#"
[actions.record]
command = ["/usr/bin/printf", "<%s>", "{value}"]
params = { value = { pattern = "(?s).*" } }
allowed_rules = ["asker"]
cooldown = "1s"
"#;

#[test]
fn enforce_runs_argv_literally_and_the_outcome_reaches_the_rule() {
    let hostile = "; rm -rf / $(id) `id`\nnext line --flag";
    let Setup {
        mut vigil,
        data,
        _server,
    } = enforcing(&asking("asker", "record", hostile), RECORD);
    let done = feedback(&mut vigil, "asker", "Succeeded");
    assert_eq!(done["labels"]["action"], "record");
    vigil.terminate();

    let records = audit(data.path(), &["--status", "succeeded"]);
    assert!(!records.is_empty());
    let record = &records[0];
    assert_eq!(record["rule"], "asker");
    assert_eq!(record["target"], "web-01");
    assert_eq!(record["params"], json!([["value", hostile]]));
    // printf saw the whole value as one argument, uninterpreted.
    assert_eq!(record["outcome"]["output_excerpt"], format!("<{hostile}>"));
    assert_eq!(record["outcome"]["exit_code"], 0);
}

#[test]
fn dry_run_decides_and_records_but_runs_nothing() {
    let marker = tempfile::tempdir().unwrap();
    let file = marker.path().join("ran");
    let actions = "[actions.touch]\ncommand = [\"/usr/bin/touch\", \"{value}\"]\nparams = { value = { pattern = \".*\" } }\nallowed_rules = [\"asker\"]\n";
    // No remediation_mode: dry-run is the default.
    let Setup {
        mut vigil,
        data,
        _server,
    } = setup(
        "",
        &asking("asker", "touch", &file.display().to_string()),
        actions,
    );
    let dry = feedback(&mut vigil, "asker", "DryRun");
    assert!(
        dry["summary"]
            .as_str()
            .unwrap()
            .starts_with("dry-run: would run"),
        "{dry}"
    );
    vigil.collect_for(Duration::from_millis(300));
    vigil.terminate();
    assert!(!file.exists(), "a dry run touched the file");
    let records = audit(data.path(), &["--action", "touch"]);
    assert!(
        !records.is_empty() && records.iter().all(|r| r["status"] == "dry-run"),
        "{records:?}"
    );
}

#[test]
fn the_gate_refuses_with_the_first_reason_and_tells_the_rule() {
    let rules = [
        asking("asker", "nope", "x"),
        // Not allowed to ask for `strict` *and* a param that fails its
        // pattern: the first check in order gives the reason.
        asking("stranger", "strict", "; rm -rf /"),
        asking("asker2", "strict", "; rm -rf /"),
    ]
    .concat();
    let actions = format!(
        "{RECORD}\n[actions.strict]\ncommand = [\"/usr/bin/printf\", \"{{value}}\"]\nparams = {{ value = {{ pattern = \"[a-z]+\" }} }}\nallowed_rules = [\"asker2\"]\n"
    );
    let Setup {
        mut vigil,
        data,
        _server,
    } = setup("remediation_mode = \"enforce\"", &rules, &actions);
    let expected = [
        ("asker", "action `nope` is not declared"),
        (
            "stranger",
            "rule `stranger` may not request `strict` (it is not in the action's allowed_rules)",
        ),
        ("asker2", "`strict` param `value` \"; rm -rf /\" is not"),
    ];
    for (rule, reason) in expected {
        let refused = feedback(&mut vigil, rule, "Refused");
        let summary = refused["summary"].as_str().unwrap();
        assert!(summary.starts_with(reason), "{rule}: {summary}");
    }
    vigil.terminate();
    let refused = audit(data.path(), &["--status", "refused"]);
    for rule in ["asker", "stranger", "asker2"] {
        assert!(
            refused.iter().any(|r| r["rule"] == rule),
            "no refusal recorded for {rule}"
        );
    }
    assert!(audit(data.path(), &["--status", "succeeded"]).is_empty());
}

#[test]
fn cooldown_lets_one_run_through_per_target_and_window() {
    // Two targets asking on every sample; an hour of cooldown, so however
    // slow the machine, each target gets exactly one run.
    let other = StatusServer::start();
    other.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let second = format!(
        "[[targets]]\nname = \"web-02\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\n",
        other.url("status")
    );
    let rules = format!("{second}{}", asking("asker", "record", "x"));
    let Setup {
        mut vigil,
        data,
        _server,
    } = enforcing(
        &rules,
        &RECORD.replace("cooldown = \"1s\"", "cooldown = \"1h\""),
    );
    // A run, then a cooldown refusal, on each target (in any order).
    let seen = std::cell::RefCell::new(std::collections::HashSet::new());
    vigil.wait_for(
        "a run and a cooldown refusal on each target",
        Duration::from_secs(20),
        |v| {
            let cooling = v["summary"].as_str().is_some_and(|s| s.contains("cool"));
            for status in ["Succeeded", "Refused"] {
                if common::is_alert(v, "firing", status) && (status == "Succeeded" || cooling) {
                    let target = v["target"].as_str().unwrap().to_string();
                    seen.borrow_mut().insert((target, status));
                }
            }
            seen.borrow().len() == 4
        },
    );
    vigil.terminate();
    let records = audit(data.path(), &[]);
    for target in ["web-01", "web-02"] {
        let of = |status: &str| {
            records
                .iter()
                .filter(|r| r["target"] == target && r["status"] == status)
                .count()
        };
        assert_eq!(of("succeeded"), 1, "{target}: {records:#?}");
        assert!(of("refused") >= 1, "{target}: {records:#?}");
        // The run's outcome reached this target's next sample, and only it:
        // one `Succeeded` feedback per target.
        let told =
            vigil.count(|v| common::is_alert(v, "firing", "Succeeded") && v["target"] == target);
        assert_eq!(told, 1, "{target}");
    }
}

#[test]
fn a_run_past_its_timeout_is_killed_and_audited_as_timed_out() {
    let actions = "[actions.hang]\ncommand = [\"/usr/bin/sleep\", \"{value}\"]\nparams = { value = { values = [\"30\"] } }\nallowed_rules = [\"asker\"]\ntimeout = \"200ms\"\ncooldown = \"1h\"\n";
    let Setup {
        mut vigil,
        data,
        _server,
    } = enforcing(&asking("asker", "hang", "30"), actions);
    let told = feedback(&mut vigil, "asker", "TimedOut");
    assert_eq!(told["labels"]["action"], "hang");
    vigil.terminate();
    let records = audit(data.path(), &["--status", "timed-out"]);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["action"], "hang");
    assert_eq!(records[0]["target"], "web-01");
}

#[test]
fn a_run_cut_short_by_a_crash_shows_as_interrupted_after_restart() {
    // An unusual duration, to find the process by its command line.
    let actions = "[actions.slow]\ncommand = [\"/usr/bin/sleep\", \"{value}\"]\nparams = { value = { values = [\"5.0713\"] } }\nallowed_rules = [\"asker\"]\ntimeout = \"60s\"\ncooldown = \"1h\"\n";
    let Setup {
        mut vigil,
        data,
        _server,
    } = enforcing(&asking("asker", "slow", "5.0713"), actions);
    // Let the run start (the audit record is written before the process
    // is), then kill vigil without a chance to finish it.
    let running = || {
        std::fs::read_dir("/proc").unwrap().any(|entry| {
            entry
                .ok()
                .and_then(|entry| std::fs::read(entry.path().join("cmdline")).ok())
                .is_some_and(|cmdline| cmdline == b"/usr/bin/sleep\x005.0713\x00")
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the action never started"
        );
        vigil.collect_for(Duration::from_millis(20));
    }
    drop(vigil); // SIGKILL

    let records = audit(data.path(), &["--status", "started"]);
    assert_eq!(
        records.len(),
        1,
        "the run should be recorded as started before it ran"
    );

    // The next start marks it interrupted.
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let config = format!(
        "{}\n{}\n{actions}",
        web_target(&server.url("status")),
        asking("asker", "slow", "5.0713")
    );
    let mut again = Vigil::start_with_data_dir(&config, data.path(), tempfile::tempdir().unwrap());
    again.wait_for("an evaluation", Duration::from_secs(10), |v| {
        v["type"] == "evaluation"
    });
    assert!(
        again.stderr().contains("recorded as interrupted"),
        "{}",
        again.stderr()
    );
    again.terminate();
    let interrupted = audit(data.path(), &["--status", "interrupted"]);
    assert_eq!(interrupted.len(), 1);
    assert_eq!(interrupted[0]["action"], "slow");
}

#[test]
fn a_tripped_breaker_stops_the_action_and_raises_an_alert() {
    let actions = "[actions.broken]\ncommand = [\"/usr/bin/false\", \"{value}\"]\nparams = { value = { pattern = \".*\" } }\nallowed_rules = [\"asker\"]\nbreaker = { failures = 2, window = \"1h\" }\n";
    let Setup {
        mut vigil,
        data,
        _server,
    } = enforcing(&asking("asker", "broken", "x"), actions);
    let alert = vigil.wait_for("RemediationBreakerOpen", Duration::from_secs(10), |v| {
        common::is_alert(v, "firing", "RemediationBreakerOpen")
    });
    assert_eq!(alert["rule"], "vigil");
    assert_eq!(alert["labels"], json!({"action": "broken"}));
    assert_eq!(alert["severity"], "critical");
    // The next request meets the open breaker, and the rule hears of it.
    vigil.wait_for("a refusal by the breaker", Duration::from_secs(10), |v| {
        common::is_alert(v, "firing", "Refused")
            && v["summary"].as_str().is_some_and(|s| s.contains("breaker"))
    });
    vigil.terminate();
    let records = audit(data.path(), &["--action", "broken"]);
    assert_eq!(
        records.iter().filter(|r| r["status"] == "failed").count(),
        2,
        "{records:#?}"
    );
    assert!(records.iter().any(|r| {
        r["outcome"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("breaker"))
    }));
}

#[test]
fn the_gate_checks_params_then_cooldown_then_limit_then_breaker() {
    // One run allowed per hour and per target, and the first failure opens
    // the breaker. After the one run, each later request fails several
    // checks at once; the audit log must show the first in the gate's order.
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 10})));
    let data = tempfile::tempdir().unwrap();
    let targets = [
        web_target(&server.url("status")),
        web_target(&server.url("status")).replace("web-01", "web-02"),
    ]
    .concat();
    let rules = [
        asking("asker", "once", "ok"),
        asking("bad", "once", "; rm -rf /"),
    ]
    .concat();
    let actions = r#"
[actions.once]
command = ["/usr/bin/false", "{value}"]
params = { value = { pattern = "ok" } }
allowed_rules = ["asker", "bad"]
cooldown = "1h"
limit = { count = 1, window = "1h" }
breaker = { failures = 1, window = "1h" }
"#;
    let config = format!("remediation_mode = \"enforce\"\n{targets}\n{rules}\n{actions}");
    let mut vigil = Vigil::start_with_data_dir(&config, data.path(), tempfile::tempdir().unwrap());
    vigil.wait_for("the breaker", Duration::from_secs(10), |v| {
        common::is_alert(v, "firing", "RemediationBreakerOpen")
    });
    // Ten more samples of each target after the breaker opened.
    let asked = |vigil: &Vigil, target: &str| {
        vigil.count(|v| common::is_evaluation(v, target) && v["rule"] == "asker")
    };
    let seen = [asked(&vigil, "web-01"), asked(&vigil, "web-02")];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while asked(&vigil, "web-01") < seen[0] + 10 || asked(&vigil, "web-02") < seen[1] + 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "samples stopped coming"
        );
        vigil.collect_for(Duration::from_millis(100));
    }
    vigil.terminate();

    let records = audit(data.path(), &["--action", "once"]);
    let failed: Vec<&Value> = records.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{records:#?}");
    let (ran_for, finished) = (
        failed[0]["target"].as_str().unwrap(),
        failed[0]["outcome"]["finished_ms"].as_u64().unwrap(),
    );
    assert_eq!(failed[0]["rule"], "asker");
    let code = |r: &Value| r["decision"]["code"].as_str().unwrap_or("none").to_string();
    let refused = |rule: &str, target: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["status"] == "refused" && r["rule"] == rule && r["target"] == target)
            .collect()
    };
    let other = if ran_for == "web-01" {
        "web-02"
    } else {
        "web-01"
    };
    // A bad param is refused as such, whatever else applies.
    for target in ["web-01", "web-02"] {
        let bad = refused("bad", target);
        assert!(!bad.is_empty());
        assert!(bad.iter().all(|r| code(r) == "invalid-param"), "{bad:#?}");
    }
    // Where it ran: cooldown, though the limit and the breaker apply too.
    let same = refused("asker", ran_for);
    assert!(same.iter().all(|r| code(r) == "cooldown"), "{same:#?}");
    // Elsewhere: the limit, though the breaker is open too.
    let elsewhere = refused("asker", other);
    assert!(
        elsewhere.iter().all(|r| code(r) == "rate-limited"),
        "{elsewhere:#?}"
    );
    // Repeats of one refusal share a record; its last repeat counts.
    let last = |r: &Value| {
        r["last_requested_ms"]
            .as_u64()
            .or(r["requested_ms"].as_u64())
            .unwrap()
    };
    for refusals in [&same, &elsewhere] {
        assert!(
            refusals.iter().any(|r| last(r) > finished),
            "no refusal after the breaker opened: {refusals:#?}"
        );
    }
}
