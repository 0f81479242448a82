//! Rules pushed to a cluster (issue 16, item 10): `vigil rules push` of a
//! new version reaches every node; a broken or digest-mismatched component
//! is refused on every node and the version before keeps serving.
//!
//! Three `vigil` processes join one nats-server (2.15, from
//! `tests/cluster/requirements.txt`) on loopback and share 9 targets that
//! answer `{"up": 1}`. The rule is the bundled `threshold` component,
//! pushed with a config whose alert name says which push it is (`UpV1`,
//! `UpV2`); a second version is the same component with a custom section
//! appended (another sha256). Each node's API says which revision it runs
//! (`/api/v1/rules`), `vigil cluster status` what each node published, and
//! each node's evaluation lines which revision evaluated and what it
//! alerted. Waits are bounded (60 s) and generous: a noisy 2-core box.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use common::{NatsServer, Vigil, fixture, new_version, run_vigil, serve};
use serde_json::Value;
use vigil::cluster::nats::Nats;
use vigil::cluster::rule_store::RuleStore;
use vigil::cluster::rules::Manifest;

const RULE: &str = "up-check";
const TARGETS: usize = 9;
const NODES: [&str; 3] = ["a", "b", "c"];
const WAIT: Duration = Duration::from_secs(60);

/// Each test starts three hosts: one at a time on a 2-core box.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(nats: &str, status: std::net::SocketAddr, node: &str) -> String {
    let mut text = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n\n[cluster]\nurls = [\"{nats}\"]\nname = \"rules\"\nnode = \"{node}\"\npartitions = 12\nlease_ttl = \"6s\"\nrenew_every = \"1s\"\n"
    );
    for index in 0..TARGETS {
        text.push_str(&format!(
            "\n[[targets]]\nname = \"t{index}\"\nkind = \"http-json\"\nurl = \"http://{status}/t{index}\"\ninterval = \"500ms\"\n"
        ));
    }
    text
}

/// The threshold rule's config: alert `alert` while `up` is above 0.5.
fn rule_config(alert: &str) -> String {
    format!(
        "{{\"target_down\": false, \"thresholds\": {{\"up\": {{\"above\": 0.5, \"alert\": \"{alert}\"}}}}}}"
    )
}

/// Dropped in this order: the nodes first, the servers they use last.
struct Fleet {
    nodes: Vec<Vigil>,
    apis: Vec<String>,
    /// Where components to push are written.
    files: tempfile::TempDir,
    _status: tokio::runtime::Runtime,
    _nats: NatsServer,
}

impl Fleet {
    fn start() -> Self {
        let nats = NatsServer::start();
        let app = Router::new().route("/{target}", axum::routing::get(|| async { "{\"up\": 1}" }));
        let (status, addr) = serve(app, 0);
        let nodes: Vec<Vigil> = NODES
            .iter()
            .map(|node| Vigil::start(&config(&nats.url(), addr, node)))
            .collect();
        let apis = nodes
            .iter()
            .map(|vigil| vigil.api_base(&vigil.dir().join("data")))
            .collect();
        Fleet {
            _nats: nats,
            _status: status,
            nodes,
            apis,
            files: tempfile::tempdir().unwrap(),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.nodes[0].config_path()
    }

    /// `vigil rules push` of `bytes` with `alert` in its config: the
    /// revision it printed.
    fn push(&self, bytes: &[u8], alert: &str) -> u64 {
        let file = self.files.path().join(format!("{alert}.wasm"));
        std::fs::write(&file, bytes).unwrap();
        let out = run_vigil([
            "rules".as_ref(),
            "push".as_ref(),
            file.as_os_str(),
            "--name".as_ref(),
            RULE.as_ref(),
            "--rule-config".as_ref(),
            rule_config(alert).as_ref(),
            "--config".as_ref(),
            self.config_path().as_os_str(),
        ]);
        revision_in(&out)
    }

    /// The rule as each node's API shows it, once `done` holds for every
    /// node (at most [`WAIT`]).
    fn wait_nodes(&self, what: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rules: Vec<Value> = self
                .apis
                .iter()
                .map(|api| {
                    let list = common::get_json(&format!("{api}/api/v1/rules?name={RULE}"));
                    list["rules"].get(0).cloned().unwrap_or(Value::Null)
                })
                .collect();
            if rules.iter().all(&done) {
                return rules;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.nodes.iter().map(Vigil::stderr).collect();
                panic!(
                    "not every node has {what} within {WAIT:?}: {rules:#?}\n--- logs ---\n{}",
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `vigil cluster status --format json`.
    fn status(&self) -> Value {
        let out = run_vigil([
            "cluster".as_ref(),
            "status".as_ref(),
            "--format".as_ref(),
            "json".as_ref(),
            "--config".as_ref(),
            self.config_path().as_os_str(),
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// Waits until `vigil cluster status` shows every node with `done`
    /// holding for its entry of the rule.
    fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.status();
            let nodes = status["nodes"].as_array().unwrap();
            if nodes.len() == NODES.len() && nodes.iter().all(|node| done(&node["rules"][RULE])) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "`vigil cluster status` does not show {what} on every node within {WAIT:?}: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn revision_in(out: &str) -> u64 {
    let rest = out
        .split(" revision ")
        .nth(1)
        .unwrap_or_else(|| panic!("no revision in `{out}`"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn threshold() -> Vec<u8> {
    std::fs::read(fixture("vigil_threshold")).unwrap()
}

/// Writes a manifest that names `digest` while the object stored under
/// that name holds `bytes`: what a tampered or corrupted store looks like.
fn push_mismatched(config: &Path, digest: &str, bytes: &[u8]) -> u64 {
    let settings = vigil::config::Settings::load(config).unwrap();
    let cluster = settings.cluster.unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let nats = Nats::connect(&cluster).await.unwrap();
        let store = RuleStore::open(&nats, &cluster).await.unwrap();
        store.put_component(digest, bytes).await.unwrap();
        let manifest = Manifest {
            digest: digest.to_string(),
            size: bytes.len() as u64,
            config: serde_json::from_str(&rule_config("UpV3")).unwrap(),
            enabled: true,
            signature: None,
            pushed_by: "test@mismatch".into(),
            pushed_at_ms: 0,
        };
        store.put_manifest(&RULE.into(), &manifest).await.unwrap()
    })
}

#[test]
fn a_pushed_version_reaches_every_node_and_a_bad_one_is_refused_on_every_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start();
    let v1 = threshold();
    let v2 = new_version(v1.clone(), 2);

    // v1 reaches every node.
    let r1 = fleet.push(&v1, "UpV1");
    fleet.wait_nodes("revision 1", |rule| rule["version"] == r1);

    // v2 reaches every node: timed from just before the push to the last
    // node's swap (each node's `loaded_at_ms`, one machine's clock).
    let pushed_ms = vigil::clock::now_ms();
    let r2 = fleet.push(&v2, "UpV2");
    assert!(r2 > r1);
    let rules = fleet.wait_nodes("revision 2", |rule| rule["version"] == r2);
    let last_swap = rules
        .iter()
        .map(|rule| rule["loaded_at_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    let digest_v2 = vigil::hash::sha256_hex(&v2);
    for rule in &rules {
        assert_eq!(rule["hash"], digest_v2.as_str(), "{rule:#}");
    }
    eprintln!(
        "rollout across {} nodes: {} ms from push to the last node's swap",
        NODES.len(),
        last_swap.saturating_sub(pushed_ms)
    );
    fleet.wait_status("revision 2", |rule| {
        rule["revision"] == r2 && rule["digest"] == digest_v2.as_str()
    });

    // A component that is not one: refused on every node, v2 serves.
    let broken = fleet.push(b"\0asm but not a component", "Broken");
    fleet.wait_nodes("the broken push refused", |rule| {
        rule["version"] == r2 && rule["refused_reloads"] == 1
    });

    // A manifest whose object holds other bytes: refused on every node
    // before anything compiles, v2 serves.
    let v3 = new_version(v1.clone(), 3);
    let mismatched = push_mismatched(&fleet.config_path(), &vigil::hash::sha256_hex(&v3), &v1);
    let rules = fleet.wait_nodes("the mismatched push refused", |rule| {
        rule["version"] == r2 && rule["refused_reloads"] == 2
    });
    for rule in &rules {
        let error = rule["last_reload_error"].as_str().unwrap();
        assert!(error.starts_with("digest mismatch"), "{error}");
    }
    let status = fleet.wait_status("the refusals", |rule| {
        rule["revision"] == r2 && rule["refused"][0] == mismatched
    });
    assert!(broken < mismatched, "{status:#}");

    // And v2 keeps serving: every evaluation of the rule from now on, on
    // every node, is revision 2 alerting `UpV2`. (What the nodes printed
    // before is read and set aside first.)
    for node in &mut fleet.nodes {
        node.collect_for(Duration::from_millis(200));
    }
    let seen_before: Vec<usize> = fleet.nodes.iter().map(|node| node.seen.len()).collect();
    for node in &mut fleet.nodes {
        node.collect_for(Duration::from_secs(2));
    }
    let mut evaluations = 0;
    for (node, before) in fleet.nodes.iter().zip(seen_before) {
        for line in node.seen[before..]
            .iter()
            .filter(|line| line["type"] == "evaluation" && line["rule"] == RULE)
        {
            assert_eq!(line["rule_version"], r2, "{line}");
            assert_eq!(line["alerts"], serde_json::json!(["UpV2"]), "{line}");
            evaluations += 1;
        }
    }
    assert!(
        evaluations >= TARGETS,
        "only {evaluations} evaluations in 2 s"
    );
}
