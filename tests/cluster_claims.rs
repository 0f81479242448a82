//! Remediation fails closed in a cluster (issue 16, item 9): every run is
//! claimed in NATS KV before it starts; the node that takes over a dead
//! node's targets finds the claim of a run that never finished and reports
//! "outcome unknown" instead of running it again, until an operator
//! releases it; with NATS unreachable nothing runs at all.
//!
//! Real nats-server (2.15, `tests/cluster/requirements.txt`) and `vigil`
//! processes on loopback. The action is a small script that appends
//! `NODE PID` to a file and then (for the first test) sleeps, so the file
//! counts the runs whatever the timing, and a run can be caught in the
//! middle.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Behavior, NatsServer, StatusServer, Vigil, fixture, toml_path};
use serde_json::{Value, json};

/// Each test runs two or three processes; one at a time on 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// The action's program: `SCRIPT NODE RUNS SECONDS` appends `NODE PID` to
/// RUNS, then sleeps SECONDS (as the same process).
const SCRIPT: &str = "#!/bin/sh\necho \"$1 $$\" >> \"$2\"\nexec sleep \"$3\"\n";

struct Scene {
    nats: NatsServer,
    status: StatusServer,
    dir: tempfile::TempDir,
}

impl Scene {
    fn start() -> Self {
        let status = StatusServer::start();
        status.set("status", Behavior::json(json!({"cpu_usage": 95})));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("mark.sh");
        std::fs::write(&script, SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scene {
            nats: NatsServer::start(),
            status,
            dir,
        }
    }

    fn runs_file(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    /// The runs so far: (node, pid) per line.
    fn runs(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.runs_file())
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let (node, pid) = line.split_once(' ').unwrap();
                (node.to_string(), pid.parse().unwrap())
            })
            .collect()
    }

    /// Node `node`'s config: one target polled every 500 ms, the remediate
    /// fixture asking for `mark` on every sample, `mark` sleeping `seconds`,
    /// leases of `ttl` seconds.
    fn config(&self, node: &str, seconds: u32, ttl: u32) -> String {
        format!(
            r#"remediation_mode = "enforce"

[api]
listen = "off"

[cluster]
urls = ["{nats}"]
name = "claims"
node = "{node}"
partitions = 4
lease_ttl = "{ttl}s"
renew_every = "1s"

[[targets]]
name = "status"
kind = "http-json"
url = "{url}"
interval = "500ms"

[[rules]]
name = "remediate"
path = "{rule}"
config = {{ action = "mark" }}

[actions.mark]
command = ["{script}", "{node}", "{runs}", "{seconds}"]
allowed_rules = ["remediate"]
timeout = "120s"
"#,
            nats = self.nats.url(),
            url = self.status.url("status"),
            rule = toml_path(&fixture("fixture_remediate")),
            script = toml_path(&self.dir.path().join("mark.sh")),
            runs = toml_path(&self.runs_file()),
        )
    }

    /// Waits until the runs file has `count` lines.
    fn wait_runs(&self, count: usize, timeout: Duration) -> Vec<(String, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let runs = self.runs();
            if runs.len() >= count {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "{} runs of `mark` within {timeout:?}, expected {count}",
                runs.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Scene {
    /// The scripts' sleeps outlive a node killed with SIGKILL: stop them.
    fn drop(&mut self) {
        for (_, pid) in self.runs() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// A `Refused` outcome the remediate fixture reports, whose detail starts
/// with `prefix`.
fn refused_with(value: &Value, prefix: &str) -> bool {
    common::is_alert(value, "firing", "Refused")
        && value["summary"]
            .as_str()
            .is_some_and(|summary| summary.starts_with(prefix))
}

/// `vigil cluster claims ARGS --config CONFIG`: its stdout, after checking
/// it succeeded.
fn claims(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["cluster", "claims"];
    all.extend_from_slice(args);
    let config = config.display().to_string();
    all.extend(["--config", config.as_str()]);
    common::run_vigil(all)
}

#[test]
fn a_run_cut_short_by_a_dead_node_is_never_run_again_until_released() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let scene = Scene::start();
    let mut nodes = vec![
        ("a", Vigil::start(&scene.config("a", 60, 6))),
        ("b", Vigil::start(&scene.config("b", 60, 6))),
    ];
    // Whoever owns the target's partition runs `mark`, which keeps running.
    let first = scene.wait_runs(1, Duration::from_secs(60));
    let (runner, _) = &first[0];
    let index = nodes.iter().position(|(id, _)| id == runner).unwrap();
    let (_, mut dead) = nodes.remove(index);
    let (survivor, mut other) = nodes.remove(0);
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(10));

    // The survivor takes the target over after the lease runs out, its rule
    // asks again with every sample, and every time the claim says the
    // earlier run's outcome is unknown.
    let prefix = format!("outcome unknown: node `{runner}` claimed `mark` for `status` at ");
    for seen in 1..=3 {
        other.wait_for(
            &format!("refusal {seen} as outcome unknown on node {survivor}"),
            Duration::from_secs(60),
            |value| refused_with(value, &prefix),
        );
    }
    assert_eq!(
        scene.runs().len(),
        1,
        "the action ran again after its node died mid-run: {:?}",
        scene.runs()
    );
    let listed = claims(&other.config_path(), &["list", "--format", "json"]);
    let claim: Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(claim["action"], "mark");
    assert_eq!(claim["target"], "status");
    assert_eq!(claim["node"], runner.as_str());
    assert!(claim.get("finished").is_none(), "{claim}");

    // An operator who checked releases the claim: the next request runs.
    let released = claims(&other.config_path(), &["release", "mark", "status"]);
    assert_eq!(
        released.trim(),
        format!("Released the claim of `mark` on `status` (node {runner}).")
    );
    let runs = scene.wait_runs(2, Duration::from_secs(60));
    assert_eq!(runs[1].0, survivor, "{runs:?}");
    // Released once: running again, it is claimed by the survivor.
    let listed = claims(&other.config_path(), &["list", "--format", "json"]);
    let claim: Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(claim["node"], survivor);
    other.terminate();
}

#[test]
fn with_nats_unreachable_nothing_runs_unclaimed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut scene = Scene::start();
    // Runs that end at once: one per sample while NATS answers. A long
    // lease keeps the node polling while NATS is away (each claim attempt
    // waits up to 5 s for an answer that does not come).
    let mut node = Vigil::start(&scene.config("a", 0, 30));
    scene.wait_runs(2, Duration::from_secs(60));
    scene.nats.kill();
    // The node keeps its lease until the deadline and keeps polling, but
    // every request is refused for want of a claim.
    let prefix = "`mark` not run: it cannot be claimed in the cluster (";
    node.wait_for(
        "a refusal for want of a claim",
        Duration::from_secs(30),
        |value| refused_with(value, prefix),
    );
    let runs = scene.runs().len();
    node.wait_for(
        "a second refusal for want of a claim",
        Duration::from_secs(30),
        |value| refused_with(value, prefix),
    );
    assert_eq!(scene.runs().len(), runs, "a run went ahead without a claim");
    node.terminate();
}
