//! One component used many times (the tenancy issue): rules loaded from the
//! same file are compiled once and instantiated separately, so each use
//! keeps its own linear memory and globals, and reloading one use leaves
//! the others running.
//!
//! The rule is the `global-counter` fixture: it counts its `evaluate` calls
//! in a `static` and raises `Counted{count, label}` on every sample, `label`
//! coming from its config. A use that shared an instance, or its memory,
//! with another would count both uses' calls, and would report whichever
//! config was given last.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Behavior, StatusServer, Vigil, fixture, is_evaluation, toml_path, web_target};
use serde_json::{Value, json};

/// One use of a rule file: a `[[rules]]` table named `name`, loading
/// `path`, with `{ label = LABEL }` as its config.
pub struct Use<'a> {
    /// The rule's name.
    pub name: &'a str,
    /// The component file it loads.
    pub path: &'a Path,
    /// What its config's `label` says (it reports it in every alert).
    pub label: &'a str,
}

/// The `[[rules]]` tables of `uses`, one each.
pub fn rule_tables(uses: &[Use]) -> String {
    uses.iter()
        .map(|rule| {
            format!(
                "[[rules]]\nname = \"{}\"\npath = \"{}\"\nconfig = {{ label = \"{}\" }}\n",
                rule.name,
                toml_path(rule.path),
                rule.label
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config polling `url` as target `web-01` every 100 ms, with `uses`.
pub fn config(url: &str, uses: &[Use]) -> String {
    format!("{}\n{}", web_target(url), rule_tables(uses))
}

struct Setup {
    _server: StatusServer,
    vigil: Vigil,
    /// The one `global-counter` file both rules load.
    shared: PathBuf,
    url: String,
}

/// Vigil running rules `a` (label `alpha`) and `b` (label `beta`), both
/// from one copy of `global-counter`, on a fresh data directory (so
/// nothing comes from the compile cache).
fn setup() -> Setup {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 50})));
    let url = server.url("status");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("global-counter.wasm");
    std::fs::copy(fixture("fixture_global_counter"), &shared).unwrap();
    let text = config(&url, &uses(&shared, &shared));
    let vigil = Vigil::start_with_data_dir(&text, &dir.path().join("data"), dir);
    Setup {
        _server: server,
        vigil,
        shared,
        url,
    }
}

/// Rule `a` (label `alpha`) from `a`, rule `b` (label `beta`) from `b`.
fn uses<'a>(a: &'a Path, b: &'a Path) -> [Use<'a>; 2] {
    [
        Use {
            name: "a",
            path: a,
            label: "alpha",
        },
        Use {
            name: "b",
            path: b,
            label: "beta",
        },
    ]
}

/// The `Counted` alerts `rule` fired so far, as (rule version, count,
/// label), in the order vigil printed them. The rule version is that of
/// the evaluation printed last before the alert.
fn counted(vigil: &Vigil, rule: &str) -> Vec<(u64, u64, String)> {
    let mut version = 0;
    let mut found = Vec::new();
    for line in &vigil.seen {
        if is_evaluation(line, "web-01") && line["rule"] == rule {
            version = line["rule_version"].as_u64().unwrap();
        }
        if line["type"] == "alert"
            && line["status"] == "firing"
            && line["name"] == "Counted"
            && line["rule"] == rule
        {
            let labels = &line["labels"];
            let count = labels["count"].as_str().unwrap().parse().unwrap();
            let label = labels["label"].as_str().unwrap().to_string();
            found.push((version, count, label));
        }
    }
    found
}

/// The evaluations of `rule` at `version` printed so far; each must have
/// succeeded.
fn evaluations(vigil: &Vigil, rule: &str, version: u64) -> u64 {
    let mine: Vec<&Value> = vigil
        .seen
        .iter()
        .filter(|v| is_evaluation(v, "web-01") && v["rule"] == rule && v["rule_version"] == version)
        .collect();
    for evaluation in &mine {
        assert_eq!(evaluation["alerts"], json!(["Counted"]), "{evaluation}");
    }
    mine.len() as u64
}

/// Reads output until `rule` at `version` has fired `Counted` with a count
/// of `count` or more (at most 30 s). Whether it counted right is for
/// [`counts_its_own`] to say.
fn wait_count(vigil: &mut Vigil, rule: &str, version: u64, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !counted(vigil, rule)
        .iter()
        .any(|(v, c, _)| *v == version && *c >= count)
    {
        assert!(
            Instant::now() < deadline,
            "rule {rule} v{version} did not count to {count} within 30s; it counted {:?}\n{}",
            counted(vigil, rule).last(),
            vigil.stderr()
        );
        vigil.collect_for(Duration::from_millis(50));
    }
}

/// Checks that `rule` at `version` counted exactly its own evaluations,
/// each one once and in order, and reported its own `label` every time.
fn counts_its_own(vigil: &Vigil, rule: &str, version: u64, label: &str) -> u64 {
    let evaluated = evaluations(vigil, rule, version);
    let counts: Vec<u64> = counted(vigil, rule)
        .into_iter()
        .filter(|(v, _, _)| *v == version)
        .map(|(_, count, seen)| {
            assert_eq!(seen, label, "rule {rule} reported another use's config");
            count
        })
        .collect();
    let expected: Vec<u64> = (1..=evaluated).collect();
    assert_eq!(
        counts, expected,
        "rule {rule} v{version}: {evaluated} evaluations, but its counts were not 1..={evaluated}"
    );
    evaluated
}

/// `name`'s value on `/metrics` (a series without labels).
fn metric(vigil: &Vigil, name: &str) -> f64 {
    let base = vigil.api_base(&vigil.dir().join("data"));
    let (status, _, page) = common::http("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200, "{page}");
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} on /metrics:\n{page}"))
        .parse()
        .unwrap()
}

/// Polls `/metrics` until `name` reads `value` (at most 10 s).
fn wait_metric(vigil: &mut Vigil, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(vigil, name) != value {
        assert!(
            Instant::now() < deadline,
            "{name} stayed {} (expected {value})\n{}",
            metric(vigil, name),
            vigil.stderr()
        );
        vigil.collect_for(Duration::from_millis(50));
    }
}

/// The "Rule loaded." lines vigil logged for `rule`, by how the component
/// was had (`now`, `from cache`, `from memory`).
fn loads(vigil: &Vigil, rule: &str, how: &str) -> usize {
    vigil
        .stderr()
        .lines()
        .filter(|line| line.contains("Rule loaded."))
        .filter(|line| line.contains(&format!("rule={rule} ")))
        .filter(|line| line.contains(&format!("compiled=\"{how}\"")))
        .count()
}

#[test]
fn two_rules_from_one_file_compile_once_and_count_their_own_calls() {
    const K: u64 = 10;
    let Setup {
        _server, mut vigil, ..
    } = setup();
    wait_count(&mut vigil, "a", 1, K);
    wait_count(&mut vigil, "b", 1, K);
    vigil.terminate();

    // Each use counted exactly its own calls: its globals are its own.
    let a = counts_its_own(&vigil, "a", 1, "alpha");
    let b = counts_its_own(&vigil, "b", 1, "beta");
    assert!(a >= K && b >= K, "a: {a}, b: {b}");

    // Compiled once (a fresh data directory: nothing in the compile cache),
    // shared by the other use.
    let compiled = loads(&vigil, "a", "now") + loads(&vigil, "b", "now");
    let shared = loads(&vigil, "a", "from memory") + loads(&vigil, "b", "from memory");
    assert_eq!((compiled, shared), (1, 1), "{}", vigil.stderr());
}

#[test]
fn reloading_one_use_to_another_file_leaves_the_other_counting() {
    const K: u64 = 5;
    let Setup {
        _server,
        mut vigil,
        shared,
        url,
    } = setup();
    wait_count(&mut vigil, "a", 1, K);
    wait_count(&mut vigil, "b", 1, K);
    assert_eq!(metric(&vigil, "vigil_components_loaded"), 1.0);
    assert_eq!(metric(&vigil, "vigil_component_compilations_total"), 1.0);

    // Rule a moves to another file (same code, other bytes): a new version
    // with a fresh instance, while b keeps its own.
    let other = shared.with_file_name("other.wasm");
    let bytes = common::new_version(std::fs::read(&shared).unwrap(), 1);
    std::fs::write(&other, bytes).unwrap();
    let edited = config(&url, &uses(&other, &shared));
    std::fs::write(vigil.config_path().with_extension("tmp"), edited).unwrap();
    std::fs::rename(
        vigil.config_path().with_extension("tmp"),
        vigil.config_path(),
    )
    .unwrap();
    vigil.wait_for("rule a version 2", Duration::from_secs(30), |v| {
        is_evaluation(v, "web-01") && v["rule"] == "a" && v["rule_version"] == 2
    });
    assert_eq!(metric(&vigil, "vigil_components_loaded"), 2.0);
    assert_eq!(metric(&vigil, "vigil_component_compilations_total"), 2.0);
    let b_before = counted(&vigil, "b").len() as u64;
    wait_count(&mut vigil, "b", 1, b_before + K);
    wait_count(&mut vigil, "a", 2, K);

    // And back to the shared file: found in memory, and the other file's
    // code is freed with its last use.
    let back = config(&url, &uses(&shared, &shared));
    std::fs::write(vigil.config_path().with_extension("tmp"), back).unwrap();
    std::fs::rename(
        vigil.config_path().with_extension("tmp"),
        vigil.config_path(),
    )
    .unwrap();
    vigil.wait_for("rule a version 3", Duration::from_secs(30), |v| {
        is_evaluation(v, "web-01") && v["rule"] == "a" && v["rule_version"] == 3
    });
    wait_metric(&mut vigil, "vigil_components_loaded", 1.0);
    assert_eq!(metric(&vigil, "vigil_component_compilations_total"), 2.0);
    let b_now = counted(&vigil, "b").len() as u64;
    wait_count(&mut vigil, "b", 1, b_now + K);
    wait_count(&mut vigil, "a", 3, K);
    vigil.terminate();

    // b counted every one of its calls, 1, 2, 3, ... without a restart.
    let b = counts_its_own(&vigil, "b", 1, "beta");
    assert!(b >= b_now + K, "b: {b}");
    // Each version of a started from 1 and counted only its own calls.
    for version in 1..=3 {
        counts_its_own(&vigil, "a", version, "alpha");
    }
    assert_eq!(loads(&vigil, "a", "now"), 1 + 1, "{}", vigil.stderr());
    assert_eq!(loads(&vigil, "a", "from memory"), 1, "{}", vigil.stderr());
    assert_eq!(
        loads(&vigil, "a", "now") + loads(&vigil, "b", "now"),
        2,
        "{}",
        vigil.stderr()
    );
}

#[test]
fn one_component_shared_by_two_tenants_gives_each_its_own_alerts_and_counts() {
    const K: u64 = 10;
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 50})));
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants.d");
    std::fs::create_dir_all(tenants.join("rules")).unwrap();
    // One file, in the folder both tenants' files live in.
    let shared = tenants.join("rules/global-counter.wasm");
    std::fs::copy(fixture("fixture_global_counter"), &shared).unwrap();
    let mut config = web_target(&server.url("status"));
    for (tenant, label) in [("red", "crimson"), ("blue", "navy")] {
        std::fs::write(
            tenants.join(format!("{tenant}.toml")),
            format!(
                "[[rules]]\nname = \"count\"\npath = \"rules/global-counter.wasm\"\nconfig = {{ label = \"{label}\" }}\n"
            ),
        )
        .unwrap();
        config.push_str(&format!(
            "\n[[tenants]]\nname = \"{tenant}\"\ntargets = [\"web-*\"]\n"
        ));
    }
    let mut vigil = Vigil::start_with_data_dir(&config, &dir.path().join("data"), dir);
    wait_count(&mut vigil, "red/count", 1, K);
    wait_count(&mut vigil, "blue/count", 1, K);
    vigil.terminate();

    // Each tenant's use counted its own calls and reported its own config,
    // in alerts that carry its own tenant label.
    let red = counts_its_own(&vigil, "red/count", 1, "crimson");
    let blue = counts_its_own(&vigil, "blue/count", 1, "navy");
    assert!(red >= K && blue >= K, "red: {red}, blue: {blue}");
    for (rule, tenant) in [("red/count", "red"), ("blue/count", "blue")] {
        let alerts: Vec<&Value> = vigil
            .seen
            .iter()
            .filter(|line| line["type"] == "alert" && line["rule"] == rule)
            .collect();
        assert!(!alerts.is_empty());
        for alert in alerts {
            assert_eq!(alert["labels"]["tenant"], tenant, "{alert}");
        }
    }
    // Compiled once, shared by the other tenant.
    let compiled = loads(&vigil, "red/count", "now") + loads(&vigil, "blue/count", "now");
    let shared =
        loads(&vigil, "red/count", "from memory") + loads(&vigil, "blue/count", "from memory");
    assert_eq!((compiled, shared), (1, 1), "{}", vigil.stderr());
}
