//! Tenants against the real binary: two tenants share a host, one of them
//! running the `nosy` fixture, which tries every way out of its tenant it
//! can (other targets, another tenant's action, another rule's state, the
//! `tenant` label), and a test per attempt. The operator's grant is held
//! against a tenant file that asks for more, at start and on reload.
//!
//! Every test asserts what was delivered, stored or audited, counted once
//! the host has worked for a while: no timing is asserted.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use common::{Behavior, StatusServer, Vigil, fixture, get_json, poll_json, toml_path};

/// What the keeper keeps in its state, for the nosy rule to go after.
const SECRET: &str = "S3CRET";

/// A host with tenants `victim` (the keeper, granted `victim-*` targets,
/// the `victim-restart` action and the `victim-log` sink) and `nosy`
/// (granted `nosy-*` and `nosy-log` only), polling `victim-01` and
/// `nosy-01`.
struct Scene {
    vigil: Vigil,
    base: String,
    _status: StatusServer,
}

impl Scene {
    fn start(nosy_file: &str) -> Scene {
        Scene::start_with(nosy_file, "")
    }

    /// [`Scene::start`] with `grant` added to the nosy tenant's grant.
    fn start_with(nosy_file: &str, grant: &str) -> Scene {
        let status = StatusServer::start();
        for target in ["victim-01", "nosy-01"] {
            status.set(
                target,
                Behavior::json(json!({"cpu_usage": 10.0, "memory_usage": 10.0})),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let tenants = root.join("tenants.d");
        std::fs::create_dir_all(tenants.join("rules")).unwrap();
        std::fs::copy(fixture("fixture_nosy"), tenants.join("rules/nosy.wasm")).unwrap();
        std::fs::write(
            tenants.join("victim.toml"),
            format!(
                "[[rules]]\nname = \"keeper\"\npath = \"rules/nosy.wasm\"\nconfig = {{ role = \"keeper\", secret = \"{SECRET}\" }}\n"
            ),
        )
        .unwrap();
        std::fs::write(tenants.join("nosy.toml"), nosy_file).unwrap();
        let target = |name: &str| {
            format!(
                "[[targets]]\nname = \"{name}\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\n",
                status.url(name)
            )
        };
        let config = format!(
            "{}{}
[actions.victim-restart]
command = [\"/usr/bin/touch\", \"{marker}\"]
mode = \"enforce\"

[[sinks]]
name = \"victim-log\"
kind = \"file\"
path = \"{victim_log}\"

[[sinks]]
name = \"nosy-log\"
kind = \"file\"
path = \"{nosy_log}\"

[[tenants]]
name = \"victim\"
targets = [\"victim-*\"]
actions = [\"victim-restart\"]
sinks = [\"victim-log\"]

[[tenants]]
name = \"nosy\"
targets = [\"nosy-*\"]
sinks = [\"nosy-log\"]
max_memory_mib = 32
{grant}
",
            target("victim-01"),
            target("nosy-01"),
            marker = toml_path(&root.join("restarted")),
            victim_log = toml_path(&root.join("victim.jsonl")),
            nosy_log = toml_path(&root.join("nosy.jsonl")),
        );
        let data = root.join("data");
        let vigil = Vigil::start_with_data_dir(&config, &data, dir);
        let base = vigil.api_base(&data);
        Scene {
            vigil,
            base,
            _status: status,
        }
    }

    fn root(&self) -> &Path {
        self.vigil.dir()
    }

    /// The alerts the API tracks for `rule`.
    fn alerts(&self, rule: &str) -> Vec<Value> {
        get_json(&format!("{}/api/v1/alerts?rule={rule}", self.base))["alerts"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until `rule` has evaluated at least `count` samples.
    fn wait_evaluations(&self, rule: &str, count: u64) {
        poll_json(
            &format!("{}/api/v1/rules?name={rule}", self.base),
            &format!("{count} evaluations of {rule}"),
            |rules| {
                rules["rules"][0]["counters"]["evaluations"]
                    .as_u64()
                    .is_some_and(|n| n >= count)
            },
        );
    }

    /// Every JSON line a file sink wrote.
    fn delivered(&self, sink: &str) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.root().join(format!("{sink}.jsonl"))).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

const NOSY: &str = "[[rules]]\nname = \"snoop\"\npath = \"rules/nosy.wasm\"\nconfig = { role = \"nosy\", action = \"victim-restart\", spoof = \"victim\" }\n";

#[test]
fn a_tenants_rule_receives_only_its_granted_targets() {
    let scene = Scene::start(NOSY);
    scene.wait_evaluations("nosy/snoop", 20);
    scene.wait_evaluations("victim/keeper", 20);
    // Each rule reports the target of every sample it got.
    let seen = |rule: &str, alert: &str| -> Vec<String> {
        scene
            .alerts(rule)
            .iter()
            .filter(|tracked| tracked["name"] == alert)
            .map(|tracked| tracked["labels"]["seen"].to_string())
            .collect()
    };
    assert_eq!(seen("nosy/snoop", "Saw"), ["\"nosy-01\""]);
    assert_eq!(seen("victim/keeper", "Holds"), ["\"victim-01\""]);
    // Two targets polled, and each rule evaluated only its own share: the
    // router never offered the other tenant's samples.
    let rules = get_json(&format!("{}/api/v1/rules", scene.base));
    for rule in rules["rules"].as_array().unwrap() {
        assert_eq!(rule["counters"]["dropped"], 0, "{rule}");
    }
}

#[test]
fn another_tenants_action_is_refused_and_audited() {
    let scene = Scene::start(NOSY);
    let audit = poll_json(
        &format!("{}/api/v1/audit?rule=nosy/snoop&since=1h", scene.base),
        "an audit record of the nosy rule's request",
        |audit| !audit["records"].as_array().unwrap().is_empty(),
    );
    let record = &audit["records"][0];
    assert_eq!(record["action"], "victim-restart");
    assert_eq!(record["target"], "nosy-01");
    assert_eq!(record["status"], "refused");
    assert_eq!(record["decision"]["code"], "not-granted");
    assert_eq!(
        record["decision"]["message"],
        "action `victim-restart` is not granted to tenant `nosy`"
    );
    scene.wait_evaluations("nosy/snoop", 20);
    assert!(
        !scene.root().join("restarted").exists(),
        "the victim's action ran for the nosy rule"
    );
    let refused = get_json(&format!(
        "{}/api/v1/audit?rule=nosy/snoop&status=refused&since=1h&limit=1000",
        scene.base
    ));
    let all = get_json(&format!(
        "{}/api/v1/audit?rule=nosy/snoop&since=1h&limit=1000",
        scene.base
    ));
    assert_eq!(refused, all, "every request of the nosy rule is refused");
}

#[test]
fn a_tenants_state_cannot_reach_another_rules_keys() {
    let scene = Scene::start(NOSY);
    scene.wait_evaluations("nosy/snoop", 30);
    scene.wait_evaluations("victim/keeper", 30);
    let snoop = &scene.alerts("nosy/snoop")[0];
    let annotations = snoop["annotations"].as_object().unwrap();
    // Ten probes plus the long key, each read and then written.
    assert_eq!(annotations.len(), 22, "{snoop}");
    for (name, value) in annotations {
        let value = value.as_str().unwrap();
        if name.starts_with("read_") {
            // After its first sample the rule reads back its own writes:
            // under its own name, never the keeper's.
            assert!(
                value == "-" || value == "pwned",
                "{name} read {value:?}: another rule's state"
            );
        }
    }
    // The long key is refused, every other write lands in its own namespace.
    assert_eq!(
        annotations["write_10"],
        "state key is 324 bytes; the limit is 256"
    );
    for n in 0..10 {
        assert_eq!(annotations[&format!("write_{n}")], "ok");
    }
    // The keeper, evaluating all along, still reads its own secret.
    let keeper = &scene.alerts("victim/keeper")[0];
    assert_eq!(keeper["annotations"]["secret"], SECRET);
}

#[test]
fn a_rule_cannot_set_or_spoof_the_tenant_label() {
    let scene = Scene::start(NOSY);
    scene.wait_evaluations("nosy/snoop", 10);
    let snoop = &scene.alerts("nosy/snoop")[0];
    assert_eq!(snoop["labels"]["tenant"], "nosy", "{snoop}");
    let keeper = &scene.alerts("victim/keeper")[0];
    assert_eq!(keeper["labels"]["tenant"], "victim", "{keeper}");
    // Delivered by what the host set: to the nosy tenant's sink only.
    let nosy = poll_until(&scene, "an alert in the nosy tenant's sink", || {
        let delivered = scene.delivered("nosy");
        (!delivered.is_empty()).then_some(delivered)
    });
    for event in &nosy {
        assert_eq!(event["rule"], "nosy/snoop", "{event}");
        assert_eq!(event["labels"]["tenant"], "nosy", "{event}");
    }
    let victim = poll_until(&scene, "an alert in the victim tenant's sink", || {
        let delivered = scene.delivered("victim");
        (!delivered.is_empty()).then_some(delivered)
    });
    for event in &victim {
        assert_eq!(event["rule"], "victim/keeper", "{event}");
        assert_eq!(event["labels"]["tenant"], "victim", "{event}");
    }
}

#[test]
fn a_tenant_file_asking_for_more_than_its_grant_is_refused() {
    // Each way of asking for more, and the reason the host gives.
    let asks = [
        (
            "targets = [\"*\"]",
            "targets: `*` is not within the targets granted to the tenant (nosy-*)",
        ),
        (
            "target_labels = { }\ntargets = [\"victim-01\"]",
            "targets: `victim-01` is not within the targets granted to the tenant (nosy-*)",
        ),
        ("max_memory_mib = 64", "max_memory_mib (at most 32 MiB)"),
        ("timeout = \"1s\"", "timeout (at most 100ms)"),
        (
            "log_lines_per_second = 100000",
            "log_lines_per_second (at most 100)",
        ),
        (
            "max_state_bytes = \"1GiB\"",
            "max_state_bytes (at most 1048576 bytes)",
        ),
    ];
    let scene = Scene::start(NOSY);
    scene.wait_evaluations("nosy/snoop", 5);
    let file = scene.root().join("tenants.d/nosy.toml");
    for (ask, reason) in asks {
        let evaluations = evaluations(&scene, "nosy/snoop");
        std::fs::write(&file, format!("{NOSY}{ask}\n")).unwrap();
        wait_log(&scene, reason);
        // The tenant's running rule keeps serving.
        scene.wait_evaluations("nosy/snoop", evaluations + 5);
    }
    for (ask, reason) in [
        (
            "actions = [\"victim-restart\"]\n",
            "action `victim-restart` is not granted to tenant `nosy` (granted: none)",
        ),
        (
            "sinks = [\"victim-log\"]\n",
            "sink `victim-log` is not granted to tenant `nosy` (granted: nosy-log)",
        ),
    ] {
        std::fs::write(&file, format!("{ask}{NOSY}")).unwrap();
        wait_log(&scene, reason);
    }
    std::fs::write(
        &file,
        NOSY.replace("rules/nosy.wasm", "../tenants.d/rules/nosy.wasm"),
    )
    .unwrap();
    wait_log(&scene, "leaves the tenant's folder");
    // Refused, yet the file before stays in force.
    let tenant = &get_json(&format!("{}/api/v1/tenants?name=nosy", scene.base))["tenants"][0];
    assert_eq!(tenant["in_force"], true, "{tenant}");
    assert!(
        tenant["refused"]
            .as_str()
            .unwrap()
            .contains("leaves the tenant's folder"),
        "{tenant}"
    );
    // The other tenant was never touched: one version, never reloaded.
    let rules = get_json(&format!("{}/api/v1/rules?name=victim/keeper", scene.base));
    assert_eq!(rules["rules"][0]["version"], 1, "{rules}");
    assert!(rules["rules"][0]["counters"]["evaluations"].as_u64() > Some(0));
    let rules = get_json(&format!("{}/api/v1/rules?name=nosy/snoop", scene.base));
    assert_eq!(rules["rules"][0]["version"], 1, "{rules}");
}

#[test]
fn a_broken_tenant_file_at_start_stops_that_tenant_only() {
    let scene = Scene::start("[[rules]\nname = \"snoop\"\n");
    scene.wait_evaluations("victim/keeper", 5);
    let rules = get_json(&format!("{}/api/v1/rules", scene.base));
    let names: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["victim/keeper"]);
    wait_log(
        &scene,
        "Tenant file refused; the tenant runs no rule until it is fixed.",
    );
    // Fixed, it loads without a restart.
    std::fs::write(scene.root().join("tenants.d/nosy.toml"), NOSY).unwrap();
    scene.wait_evaluations("nosy/snoop", 5);
}

#[test]
fn a_tenant_past_its_evaluation_rate_loses_samples_and_the_others_do_not() {
    // 10 samples a second for each rule; the nosy tenant may evaluate 2.
    let scene = Scene::start_with(NOSY, "evaluations_per_second = 2");
    scene.wait_evaluations("victim/keeper", 40);
    let counters = |rule: &str| {
        get_json(&format!("{}/api/v1/rules?name={rule}", scene.base))["rules"][0]["counters"]
            .clone()
    };
    let nosy = counters("nosy/snoop");
    let victim = counters("victim/keeper");
    assert!(nosy["rate_limited"].as_u64().unwrap() > 0, "{nosy}");
    assert!(
        nosy["evaluations"].as_u64() < victim["evaluations"].as_u64(),
        "nosy {nosy} victim {victim}"
    );
    assert_eq!(victim["rate_limited"], 0, "{victim}");
}

fn evaluations(scene: &Scene, rule: &str) -> u64 {
    get_json(&format!("{}/api/v1/rules?name={rule}", scene.base))["rules"][0]["counters"]
        ["evaluations"]
        .as_u64()
        .unwrap()
}

/// Waits (at most 60 s) until vigil's log holds `text`.
fn wait_log(scene: &Scene, text: &str) {
    poll_until(scene, &format!("{text:?} in the log"), || {
        scene.vigil.stderr().contains(text).then_some(())
    });
}

/// Polls `check` every 50 ms until it gives a value; after 60 s, fails
/// with vigil's log.
fn poll_until<T>(scene: &Scene, what: &str, check: impl Fn() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within 60s\n--- vigil's stderr ---\n{}",
            scene.vigil.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
