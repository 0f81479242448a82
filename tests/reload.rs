//! Hot reload: rules swap while samples keep flowing, whatever way the file
//! is replaced, and a broken version never serves.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Behavior, StatusServer, Vigil, fixture, is_alert, is_evaluation, toml_path, web_target,
};
use serde_json::{Value, json};

/// The bundled threshold rule with a custom section appended: the same
/// behaviour under a different hash, i.e. a new version.
fn variant(tag: u32) -> Vec<u8> {
    variant_of("vigil_threshold", tag)
}

/// Fixture `name` with a custom section appended (see [`variant`]).
fn variant_of(name: &str, tag: u32) -> Vec<u8> {
    common::new_version(std::fs::read(fixture(name)).unwrap(), tag)
}

struct Setup {
    server: StatusServer,
    vigil: Vigil,
    rule: PathBuf,
    _dir: tempfile::TempDir,
}

/// A rules directory holding `threshold.wasm` (variant 0), vigil watching it
/// and polling a status server every `interval`. `rule_extra` goes into the
/// rule's table.
fn setup(interval: &str, rule_extra: &str) -> Setup {
    setup_head("", interval, rule_extra)
}

/// [`setup`] with top-level config keys in `head`.
fn setup_head(head: &str, interval: &str, rule_extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let rule = rules.join("threshold.wasm");
    std::fs::write(&rule, variant(0)).unwrap();
    setup_with(dir, rule, head, interval, rule_extra)
}

fn setup_with(
    dir: tempfile::TempDir,
    rule: PathBuf,
    head: &str,
    interval: &str,
    rule_extra: &str,
) -> Setup {
    let server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 95, "memory_usage": 20})),
    );
    let target = web_target(&server.url("status")).replace("\"100ms\"", &format!("\"{interval}\""));
    let vigil = Vigil::start(&format!(
        "{head}\n{target}\n[[rules]]\nname = \"threshold\"\npath = \"{}\"\n{rule_extra}\n",
        toml_path(&rule)
    ));
    Setup {
        server,
        vigil,
        rule,
        _dir: dir,
    }
}

fn evaluations(vigil: &Vigil) -> Vec<&Value> {
    vigil
        .seen
        .iter()
        .filter(|v| is_evaluation(v, "web-01") && v["rule"] == "threshold")
        .collect()
}

fn version(value: &Value) -> u64 {
    value["rule_version"].as_u64().unwrap()
}

/// Waits until the rule serves `expected`, then checks it stays there.
fn wait_version(vigil: &mut Vigil, expected: u64) {
    vigil.wait_for(
        &format!("rule version {expected}"),
        Duration::from_secs(10),
        |v| is_evaluation(v, "web-01") && v["rule_version"] == expected,
    );
    vigil.collect_for(Duration::from_millis(200));
    let newest = evaluations(vigil).iter().map(|v| version(v)).max().unwrap();
    assert_eq!(newest, expected, "one change, one new version");
}

/// Reads output until vigil's log has said `what` `times` times.
fn wait_log(vigil: &mut Vigil, what: &str, times: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vigil.stderr().matches(what).count() < times {
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not say {what:?} {times} times:\n{}",
            vigil.stderr()
        );
        vigil.collect_for(Duration::from_millis(20));
    }
}

/// Writes through a temporary file renamed over the target, as most
/// deploy tools and many editors do.
fn write_renaming(path: &Path, bytes: &[u8]) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

#[test]
fn swaps_under_load_evaluate_every_sample_once_and_never_serve_a_broken_version() {
    let Setup {
        server,
        mut vigil,
        rule,
        _dir,
    } = setup(
        "5ms",
        // `request_id` never passes; subscribing to it puts it in the output.
        "config = { thresholds = { cpu_usage = 80, request_id = 1e18 } }",
    );
    server.set("status", Behavior::Numbered(json!({"cpu_usage": 95})));
    vigil.wait_for("CpuUsageHigh", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    });

    let broken: [&[u8]; 3] = [
        b"not wasm at all",
        b"\0asm\x01\0\0\0",
        b"\0asm\x0d\0\x01\0\x07garbage",
    ];
    let mut refusals = 0;
    for i in 1..=30u32 {
        if i % 5 == 0 {
            std::fs::write(&rule, broken[(i as usize / 5) % broken.len()]).unwrap();
            refusals += 1;
            wait_log(&mut vigil, "Rule reload refused", refusals);
        }
        if i % 2 == 0 {
            write_renaming(&rule, &variant(i));
        } else {
            std::fs::write(&rule, variant(i)).unwrap();
        }
        let expected = u64::from(i) + 1;
        vigil.wait_for(
            &format!("version {expected}"),
            Duration::from_secs(10),
            |v| is_evaluation(v, "web-01") && v["rule_version"] == expected,
        );
    }
    vigil.terminate();

    let evaluated = evaluations(&vigil);
    // Every poll became a sample, and every sample was evaluated once.
    let polls = server.requests();
    assert!(
        evaluated.len() + 1 >= polls && evaluated.len() <= polls,
        "{} evaluations for {polls} polls",
        evaluated.len()
    );
    let request_id = |v: &Value| {
        v["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "request_id")
            .map(|m| m["value"].as_f64().unwrap() as u64)
    };
    // Samples taken before the server started numbering have no id.
    let mut ids: Vec<u64> = evaluated.iter().filter_map(|v| request_id(v)).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "a sample was evaluated twice");
    let (first, last) = (ids[0], ids[count - 1]);
    assert_eq!(
        count as u64,
        last - first + 1,
        "a sample between {first} and {last} was not evaluated"
    );
    // Versions only go up, every valid write made exactly one, and no
    // broken one ever evaluated anything.
    let versions: Vec<u64> = evaluated.iter().map(|v| version(v)).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "a version went backwards"
    );
    let mut distinct = versions.clone();
    distinct.dedup();
    assert_eq!(distinct, (1..=31).collect::<Vec<_>>());
    assert!(evaluated.iter().all(|v| v.get("error").is_none()));
    // The alert held throughout: announced once, never resolved.
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "CpuUsageHigh")), 1);
    assert_eq!(vigil.count(|v| is_alert(v, "resolved", "CpuUsageHigh")), 0);
    assert_eq!(
        vigil.stderr().matches("Rule reload refused").count(),
        refusals
    );
}

#[test]
fn each_way_of_replacing_a_file_reloads_once() {
    // A debounce far longer than the pauses below (2 ms, 5 ms), so a busy
    // machine that stretches them still shows one change each.
    let Setup {
        server: _server,
        mut vigil,
        rule,
        _dir,
    } = setup_head("reload_debounce = \"500ms\"", "20ms", "");
    wait_version(&mut vigil, 1);

    std::fs::write(&rule, variant(1)).unwrap(); // in place
    wait_version(&mut vigil, 2);

    write_renaming(&rule, &variant(2));
    wait_version(&mut vigil, 3);

    // Delete, then create within the debounce: one change, no unload.
    std::fs::remove_file(&rule).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    std::fs::write(&rule, variant(3)).unwrap();
    wait_version(&mut vigil, 4);

    // A slow copy: chunks with pauses shorter than the debounce.
    let bytes = variant(4);
    let mut file = std::fs::File::create(&rule).unwrap();
    for chunk in bytes.chunks(bytes.len() / 4 + 1) {
        std::io::Write::write_all(&mut file, chunk).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(file);
    wait_version(&mut vigil, 5);

    // Same bytes again: nothing to do.
    std::fs::write(&rule, variant(4)).unwrap();
    vigil.collect_for(Duration::from_millis(300));
    assert_eq!(
        evaluations(&vigil).iter().map(|v| version(v)).max(),
        Some(5)
    );

    let log = vigil.stderr();
    assert!(!log.contains("Rule file removed"), "{log}");
    assert!(!log.contains("Rule reload refused"), "{log}");
    assert_eq!(log.matches("Rule reloaded.").count(), 4);
}

#[test]
fn a_flipped_symlink_reloads_like_a_configmap() {
    // rules/threshold.wasm -> ..data/threshold.wasm, ..data -> ..v0
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("..v0")).unwrap();
    std::fs::write(rules.join("..v0/threshold.wasm"), variant(0)).unwrap();
    std::os::unix::fs::symlink("..v0", rules.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/threshold.wasm", rules.join("threshold.wasm")).unwrap();
    let rule = rules.join("threshold.wasm");
    let Setup {
        mut vigil,
        _dir,
        server: _server,
        ..
    } = setup_with(dir, rule, "", "20ms", "");
    wait_version(&mut vigil, 1);

    for version in 1..=2u32 {
        let next = rules.join(format!("..v{version}"));
        std::fs::create_dir(&next).unwrap();
        std::fs::write(next.join("threshold.wasm"), variant(version)).unwrap();
        std::os::unix::fs::symlink(format!("..v{version}"), rules.join("..data_tmp")).unwrap();
        std::fs::rename(rules.join("..data_tmp"), rules.join("..data")).unwrap();
        wait_version(&mut vigil, u64::from(version) + 1);
    }
}

#[test]
fn a_broken_version_is_refused_with_the_reason_and_the_old_one_serves() {
    let Setup {
        server: _server,
        mut vigil,
        rule,
        _dir,
    } = setup("20ms", "");
    wait_version(&mut vigil, 1);
    let cases = [
        (
            std::fs::read(fixture("fixture_wrong_version")).unwrap(),
            "built for `vigil:rules/host@0.1.0`",
        ),
        (
            std::fs::read(fixture("fixture_no_evaluate")).unwrap(),
            "does not export `evaluate`",
        ),
        (
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (variant(1)[..1000].to_vec(), "not a valid component"),
    ];
    for (bytes, reason) in &cases {
        std::fs::write(&rule, bytes).unwrap();
        wait_log(&mut vigil, reason, 1);
    }
    // The old version goes on serving after the last refusal.
    let refused_at = evaluations(&vigil).len();
    vigil.wait_for(
        "an evaluation after the refusals",
        Duration::from_secs(10),
        |v| is_evaluation(v, "web-01"),
    );
    let evaluated = evaluations(&vigil);
    assert!(evaluated.len() > refused_at);
    assert!(
        evaluated
            .iter()
            .all(|v| version(v) == 1 && v.get("error").is_none())
    );
    // A good version after all that loads as version 2.
    std::fs::write(&rule, variant(7)).unwrap();
    wait_version(&mut vigil, 2);
}

#[test]
fn deleting_a_rule_unloads_it_and_resolves_its_alerts() {
    let Setup {
        server: _server,
        mut vigil,
        rule,
        _dir,
    } = setup("20ms", "");
    vigil.wait_for("CpuUsageHigh", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    });
    std::fs::remove_file(&rule).unwrap();
    vigil.wait_for("CpuUsageHigh resolved", Duration::from_secs(10), |v| {
        is_alert(v, "resolved", "CpuUsageHigh")
    });
    let before = evaluations(&vigil).len();
    vigil.collect_for(Duration::from_millis(300));
    assert_eq!(
        evaluations(&vigil).len(),
        before,
        "an unloaded rule evaluated samples"
    );
    assert!(vigil.is_running());

    // Putting it back loads it again, as a new version, and the alert is a
    // new episode.
    std::fs::write(&rule, variant(0)).unwrap();
    vigil.wait_for("the rule back", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && v["rule_version"] == 2
    });
    vigil.wait_for("CpuUsageHigh again", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    });
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "CpuUsageHigh")), 2);
}

#[test]
fn a_pending_for_survives_a_swap() {
    // A `for` far longer than a swap takes, so the alert is still pending
    // when version 2 takes over, however busy the machine.
    let Setup {
        server: _server,
        mut vigil,
        rule,
        _dir,
    } = setup(
        "20ms",
        "config = { thresholds = { cpu_usage = { above = 80, for = \"5s\" } } }",
    );
    let first = vigil.wait_for("an evaluation", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01")
    });
    let started = first["timestamp_ms"].as_u64().unwrap();
    write_renaming(&rule, &variant(1));
    vigil.wait_for("version 2", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && version(v) == 2
    });
    assert_eq!(
        vigil.count(|v| is_alert(v, "firing", "CpuUsageHigh")),
        0,
        "fired before the swap"
    );
    let fired = vigil.wait_for("CpuUsageHigh", Duration::from_secs(20), |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    });
    // Version 2 fired it, and the alert kept the start version 1 saw.
    assert_eq!(fired["active_since_ms"].as_u64().unwrap(), started);
    let at = fired["at_ms"].as_u64().unwrap();
    assert!(
        at >= started + 5000,
        "fired {}ms after the start",
        at - started
    );
    let firing_evaluation = evaluations(&vigil)
        .into_iter()
        .find(|v| v["timestamp_ms"] == at)
        .expect("the evaluation that fired it");
    assert_eq!(version(firing_evaluation), 2);
}

/// Vigil polling target `a` (cpu_usage 60) with the bundled rule alerting
/// above 80, once it has evaluated `a`; also the config it runs with.
fn watching_a() -> (StatusServer, Vigil, String) {
    let server = StatusServer::start();
    server.set("a", Behavior::json(json!({"cpu_usage": 60})));
    let good = config(&server, &["a"], 80);
    let mut vigil = Vigil::start(&good);
    vigil.wait_for("an evaluation of a", Duration::from_secs(10), |v| {
        is_evaluation(v, "a")
    });
    (server, vigil, good)
}

/// A config with the given targets (route names of `server`) and the
/// bundled rule alerting above `cpu`.
fn config(server: &StatusServer, targets: &[&str], cpu: u32) -> String {
    let mut text = String::new();
    for name in targets {
        text += &format!(
            "[[targets]]\nname = \"{name}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"20ms\"\n\n",
            server.url(name)
        );
    }
    text + &format!(
        "[[rules]]\nbuiltin = \"threshold\"\nconfig = {{ thresholds = {{ cpu_usage = {cpu} }} }}\n"
    )
}

#[test]
fn a_config_edit_changes_only_what_it_changes() {
    let server = StatusServer::start();
    server.set("a", Behavior::json(json!({"cpu_usage": 60})));
    server.set("b", Behavior::json(json!({"cpu_usage": 10})));
    let mut vigil = Vigil::start(&config(&server, &["a"], 80));
    vigil.wait_for("an evaluation of a", Duration::from_secs(10), |v| {
        is_evaluation(v, "a")
    });

    // Add target b, lower the threshold: the rule reloads (version 2) and
    // fires for a; a's poller is left alone.
    write_renaming(
        &vigil.config_path(),
        config(&server, &["a", "b"], 50).as_bytes(),
    );
    let fired = vigil.wait_for("CpuUsageHigh on a", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    });
    assert_eq!(fired["target"], "a");
    vigil.wait_for("an evaluation of b", Duration::from_secs(10), |v| {
        is_evaluation(v, "b")
    });
    assert!(
        vigil
            .seen
            .iter()
            .any(|v| is_evaluation(v, "a") && v["rule_version"] == 2)
    );

    // Change b's interval: b's poller restarts, a's does not.
    let changed = config(&server, &["a", "b"], 50);
    let at = changed.rfind("interval = \"20ms\"").unwrap();
    let changed = format!(
        "{}interval = \"30ms\"{}",
        &changed[..at],
        &changed[at + "interval = \"20ms\"".len()..]
    );
    write_renaming(&vigil.config_path(), changed.as_bytes());
    wait_log(&mut vigil, "Target changed; polling restarts. target=b", 1);

    // Remove b: its polling stops.
    write_renaming(&vigil.config_path(), config(&server, &["a"], 50).as_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !vigil.stderr().contains("Target removed; polling stops.") {
        assert!(std::time::Instant::now() < deadline, "{}", vigil.stderr());
        vigil.collect_for(Duration::from_millis(50));
    }
    vigil.collect_for(Duration::from_millis(100));
    let b_before = vigil.count(|v| is_evaluation(v, "b"));
    vigil.collect_for(Duration::from_millis(300));
    assert_eq!(
        vigil.count(|v| is_evaluation(v, "b")),
        b_before,
        "b is still polled"
    );

    let log = vigil.stderr();
    assert_eq!(log.matches("Config reloaded.").count(), 3, "{log}");
    assert!(
        log.contains("Target added; polling starts. target=b"),
        "{log}"
    );
    assert!(
        !log.contains("polling restarts. target=a"),
        "a was restarted:\n{log}"
    );
    assert_eq!(vigil.count(|v| is_alert(v, "firing", "CpuUsageHigh")), 1);
}

#[test]
fn a_rule_config_refused_by_configure_on_reload_leaves_the_old_version_serving() {
    let (_server, mut vigil, good) = watching_a();
    // Valid TOML, a valid host config, but `configure` refuses it.
    let refused = good.replace(
        "thresholds = { cpu_usage = 80 }",
        "thresholds = { cpu_usage = { severity = \"info\" } }",
    );
    assert_ne!(refused, good);
    write_renaming(&vigil.config_path(), refused.as_bytes());
    wait_log(&mut vigil, "Rule reload refused", 1);
    let log = vigil.stderr();
    let line = log
        .lines()
        .find(|line| line.contains("Rule reload refused"))
        .unwrap();
    assert!(
        line.contains("rule `threshold` (builtin:threshold"),
        "{line}"
    );
    assert!(line.contains("give `above`, `below` or both"), "{line}");
    // Version 1 goes on evaluating.
    let refused_at = vigil.count(|v| is_evaluation(v, "a"));
    vigil.wait_for(
        "an evaluation after the refusal",
        Duration::from_secs(10),
        |v| is_evaluation(v, "a"),
    );
    assert!(vigil.count(|v| is_evaluation(v, "a")) > refused_at);
    assert!(
        vigil
            .seen
            .iter()
            .filter(|v| is_evaluation(v, "a"))
            .all(|v| v["rule_version"] == 1 && v.get("error").is_none())
    );
}

#[test]
fn new_limits_in_the_config_reload_the_rule() {
    let (_server, mut vigil, good) = watching_a();
    // Same component, same config, a new deadline: a new version.
    write_renaming(
        &vigil.config_path(),
        format!("{good}timeout = \"50ms\"\n").as_bytes(),
    );
    vigil.wait_for("version 2", Duration::from_secs(10), |v| {
        is_evaluation(v, "a") && v["rule_version"] == 2
    });
    let log = vigil.stderr();
    assert!(
        log.contains("Rule changed in the config; reloading it. rule=threshold"),
        "{log}"
    );
}

#[test]
fn a_broken_config_edit_is_refused_and_sighup_reloads() {
    let (server, mut vigil, good) = watching_a();

    let broken = good.replace("interval = \"20ms\"", "interval = \"soon\"");
    std::fs::write(vigil.config_path(), &broken).unwrap();
    wait_log(&mut vigil, "Config reload refused", 1);
    let log = vigil.stderr();
    assert!(
        log.contains("vigil.toml: TOML parse error at line 5"),
        "{log}"
    );
    assert!(log.contains("invalid duration `soon`"), "{log}");
    // Still polling, with the old config.
    let before = vigil.count(|v| is_evaluation(v, "a"));
    vigil.collect_for(Duration::from_millis(300));
    assert!(vigil.count(|v| is_evaluation(v, "a")) > before);

    // A good config back: the watch applies it.
    std::fs::write(vigil.config_path(), config(&server, &["a"], 50)).unwrap();
    vigil.wait_for(
        "CpuUsageHigh after the reload",
        Duration::from_secs(10),
        |v| is_alert(v, "firing", "CpuUsageHigh"),
    );
    wait_log(&mut vigil, "Config reloaded.", 1);

    // SIGHUP with the file unchanged: no file event can explain a reload,
    // and SIGHUP must reload on its own.
    vigil.signal("HUP");
    wait_log(&mut vigil, "Config reloaded.", 2);
    let log = vigil.stderr();
    let forced = log
        .lines()
        .filter(|line| line.contains("Config reloaded.") && line.contains("forced=true"))
        .count();
    assert_eq!(forced, 1, "{log}");
}

#[test]
fn the_rule_state_carries_over_to_the_new_version() {
    // The counter fixture counts samples in its key-value state and reports
    // the count as a label of its alert.
    let dir = tempfile::tempdir().unwrap();
    let rule = dir.path().join("threshold.wasm");
    std::fs::write(&rule, variant_of("fixture_counter", 0)).unwrap();
    let Setup {
        mut vigil,
        _dir,
        server: _server,
        ..
    } = setup_with(dir, rule.clone(), "", "20ms", "");
    let count = |v: &Value| -> Option<u64> {
        (v["type"] == "alert" && v["status"] == "firing" && v["name"] == "Counted")
            .then(|| v["labels"]["count"].as_str().unwrap().parse().unwrap())
    };
    vigil.wait_for("count 5", Duration::from_secs(10), |v| count(v) == Some(5));
    write_renaming(&rule, &variant_of("fixture_counter", 1));
    vigil.wait_for("version 2", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && v["rule_version"] == 2
    });
    vigil.collect_for(Duration::from_millis(200));
    let counts: Vec<u64> = vigil.seen.iter().filter_map(count).collect();
    let expected: Vec<u64> = (1..=counts.len() as u64).collect();
    assert_eq!(
        counts, expected,
        "the count restarted or skipped across the swap"
    );
    let log = vigil.stderr();
    assert!(log.contains("counter starting, instance 2"), "{log}");
}

#[test]
fn a_rules_directory_loads_new_files_and_unloads_removed_ones() {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 95})));
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.d");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("first.wasm"), variant_of("fixture_cpu_hot", 0)).unwrap();
    std::fs::write(rules.join("README.md"), "not a rule").unwrap();
    let target = web_target(&server.url("status")).replace("\"100ms\"", "\"20ms\"");
    let mut vigil = Vigil::start(&format!(
        "{target}\n[[rules]]\ndir = \"{}\"\ntimeout = \"50ms\"\n",
        toml_path(&rules)
    ));
    let by = |rule: &'static str| move |v: &Value| is_evaluation(v, "web-01") && v["rule"] == rule;
    vigil.wait_for("the first rule", Duration::from_secs(10), by("first"));

    // A file dropped in becomes a rule; the others are not touched.
    std::fs::write(rules.join("second.wasm"), variant_of("fixture_cpu_hot", 1)).unwrap();
    vigil.wait_for("the second rule", Duration::from_secs(10), by("second"));
    let fired = vigil.wait_for("CpuHot from second", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "CpuHot") && v["rule"] == "second"
    });
    assert_eq!(fired["target"], "web-01");

    // A file taken out unloads its rule and resolves its alert.
    std::fs::remove_file(rules.join("first.wasm")).unwrap();
    vigil.wait_for("first's alert resolved", Duration::from_secs(10), |v| {
        is_alert(v, "resolved", "CpuHot") && v["rule"] == "first"
    });
    let first_before = vigil.count(by("first"));
    vigil.collect_for(Duration::from_millis(300));
    assert_eq!(
        vigil.count(by("first")),
        first_before,
        "an unloaded rule evaluated samples"
    );
    assert!(vigil.count(by("second")) > 0);
    assert!(!vigil.stderr().contains("README"), "{}", vigil.stderr());
}

#[test]
fn a_refused_version_is_tried_once_until_its_file_changes() {
    // Two rules in one folder. `a` starts as the counter fixture, which
    // ignores the config meant for the hostile one.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let (a, b) = (rules.join("a.wasm"), rules.join("threshold.wasm"));
    std::fs::write(&a, variant_of("fixture_counter", 0)).unwrap();
    std::fs::write(&b, variant(0)).unwrap();
    let a_table = format!(
        "[[rules]]\nname = \"a\"\npath = \"{}\"\nconfig = {{ attack = \"configure-loop\" }}\ninit_timeout = \"300ms\"\n",
        toml_path(&a)
    );
    let Setup {
        server: _server,
        mut vigil,
        _dir,
        ..
    } = setup_with(dir, b.clone(), &a_table, "20ms", "");
    wait_version(&mut vigil, 1);

    // `a` becomes a rule whose `configure` runs to its deadline: refused.
    std::fs::write(&a, std::fs::read(fixture("fixture_hostile")).unwrap()).unwrap();
    wait_log(&mut vigil, "Rule reload refused", 1);
    // Reading the file, then a change to the other rule in the folder:
    // the folder's files are all looked at again, and `a` is not retried.
    for _ in 0..5 {
        std::fs::read(&a).unwrap();
    }
    std::fs::write(&b, variant(1)).unwrap();
    wait_version(&mut vigil, 2);
    let log = vigil.stderr();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("Rule reload refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(
        refusals[0].contains("timeout: exceeded its 300ms deadline (raise `init_timeout`)"),
        "{}",
        refusals[0]
    );
    // The old version of `a` served all along, and still does.
    let a_evaluations = |vigil: &Vigil| {
        vigil
            .seen
            .iter()
            .filter(|v| is_evaluation(v, "web-01") && v["rule"] == "a")
            .map(|v| (v["rule_version"].as_u64(), v.get("error").is_some()))
            .collect::<Vec<_>>()
    };
    let before = a_evaluations(&vigil).len();
    vigil.wait_for(
        "an evaluation of a after the refusal",
        Duration::from_secs(10),
        |v| is_evaluation(v, "web-01") && v["rule"] == "a",
    );
    let served = a_evaluations(&vigil);
    assert!(served.len() > before);
    assert!(
        served
            .iter()
            .all(|&(version, failed)| version == Some(1) && !failed),
        "{served:?}"
    );
    // New content is tried.
    std::fs::write(&a, variant_of("fixture_counter", 1)).unwrap();
    vigil.wait_for("a's version 2", Duration::from_secs(10), |v| {
        is_evaluation(v, "web-01") && v["rule"] == "a" && v["rule_version"] == 2
    });
}

#[test]
fn data_dir_and_reload_debounce_take_effect_at_the_next_start() {
    let server = StatusServer::start();
    server.set("a", Behavior::json(json!({"cpu_usage": 60})));
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("vigil.toml");
    let text = |data: &str, debounce: &str, cpu: u32| {
        format!(
            "data_dir = \"{data}\"\nreload_debounce = \"{debounce}\"\n{}",
            config(&server, &["a"], cpu)
        )
    };
    let start = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"));
        command.arg("run").arg("--config").arg(&config_path).args([
            "--format",
            "json",
            "--evaluations",
            "show",
        ]);
        Vigil::spawn(command, tempfile::tempdir().unwrap())
    };
    std::fs::write(&config_path, text("first", "20ms", 80)).unwrap();
    let mut vigil = start();
    vigil.wait_for("an evaluation of a", Duration::from_secs(10), |v| {
        is_evaluation(v, "a")
    });

    // Both changed: the running host says it cannot apply them now.
    write_renaming(&config_path, text("second", "1h", 80).as_bytes());
    wait_log(&mut vigil, "it takes effect at the next start", 2);
    let log = vigil.stderr();
    for key in ["data_dir", "reload_debounce"] {
        assert!(
            log.contains(&format!(
                "Config setting changed; it takes effect at the next start. key=\"{key}\""
            )),
            "{log}"
        );
    }
    // The debounce in force is still 20 ms, not an hour: the next edit
    // applies at once.
    write_renaming(&config_path, text("second", "1h", 50).as_bytes());
    vigil.wait_for(
        "CpuUsageHigh after the edit",
        Duration::from_secs(30),
        |v| is_alert(v, "firing", "CpuUsageHigh"),
    );
    vigil.terminate();
    assert!(dir.path().join("first").join("state.redb").exists());
    assert!(!dir.path().join("second").exists());

    // The next start uses the new folder.
    let mut vigil = start();
    vigil.wait_for("an evaluation of a", Duration::from_secs(10), |v| {
        is_evaluation(v, "a")
    });
    vigil.terminate();
    assert!(dir.path().join("second").join("state.redb").exists());
}
