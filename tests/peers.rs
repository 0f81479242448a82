//! The `prometheus` and `command` sources against real peers: Debian's
//! `prometheus-node-exporter` and the Nagios plugins of
//! `monitoring-plugins-basic` (`.ci/run` installs both). A missing peer
//! fails the test with the command that installs it; nothing is skipped.
//!
//! Then every way a page or a check can go wrong: each a down sample with
//! the reason, while the other targets keep their samples coming.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Behavior, StatusServer, Vigil, is_alert, is_evaluation, require, toml_path};
use serde_json::{Value, json};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const PLUGINS: &str = "/usr/lib/nagios/plugins";

fn plugin(name: &str) -> String {
    require(&format!("{PLUGINS}/{name}"), "monitoring-plugins-basic")
        .display()
        .to_string()
}

/// A node_exporter on a free loopback port, stopped by its pid on drop.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start() -> Self {
        let program = require(NODE_EXPORTER, "prometheus-node-exporter");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(program)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // A few cheap collectors, not the dozens of the default.
            .args([
                "--collector.disable-defaults",
                "--collector.loadavg",
                "--collector.cpu",
                "--collector.meminfo",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node_exporter starts");
        NodeExporter { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line that matches, whether an earlier wait already read it
/// or it is still to come.
fn seen_or_wait(vigil: &mut Vigil, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
    if let Some(found) = vigil.seen.iter().find(|v| matches(v)) {
        return found.clone();
    }
    vigil.wait_for(what, Duration::from_secs(30), matches)
}

fn metric<'a>(evaluation: &'a Value, name: &str) -> Vec<&'a Value> {
    evaluation["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == name)
        .collect()
}

#[test]
fn node_exporter_series_reach_a_rule_with_their_labels() {
    let exporter = NodeExporter::start();
    // node_load1 is never negative and every CPU spends time idle, so both
    // thresholds hold on any machine: the alerts prove the values arrived.
    let config = format!(
        r#"
[[targets]]
name = "node"
kind = "prometheus"
url = "{}"
interval = "200ms"
timeout = "5s"

[[rules]]
builtin = "threshold"
config = {{ target_down = false, thresholds = {{ node_load1 = {{ above = -1, alert = "LoadSeen" }}, node_cpu_seconds_total = {{ above = -1, alert = "CpuSecondsSeen" }} }} }}
"#,
        exporter.url()
    );
    let mut vigil = Vigil::start(&config);

    let up = vigil.wait_for(
        "an up sample of node_exporter",
        Duration::from_secs(60),
        |v| is_evaluation(v, "node") && v["health"] == "up",
    );
    let load = metric(&up, "node_load1");
    assert_eq!(load.len(), 1, "{up}");
    assert!(load[0]["value"].as_f64().unwrap() >= 0.0);
    assert_eq!(load[0]["labels"], json!({}));
    // One series per CPU and mode, told apart by labels, not by name.
    let cpu = metric(&up, "node_cpu_seconds_total");
    assert!(
        cpu.iter()
            .any(|m| m["labels"] == json!({"cpu": "0", "mode": "idle"})),
        "{up}"
    );

    let fired = seen_or_wait(&mut vigil, "LoadSeen firing", |v| {
        is_alert(v, "firing", "LoadSeen")
    });
    assert_eq!(fired["target"], "node");
    let idle = seen_or_wait(&mut vigil, "CpuSecondsSeen firing for cpu 0, idle", |v| {
        is_alert(v, "firing", "CpuSecondsSeen")
            && v["labels"]["cpu"] == "0"
            && v["labels"]["mode"] == "idle"
    });
    assert_eq!(idle["labels"]["metric"], "node_cpu_seconds_total");
    assert_eq!(
        vigil.count(|v| v["type"] == "evaluation" && v["health"] == "down"),
        0
    );
}

#[test]
fn nagios_plugins_perfdata_and_status_reach_a_rule() {
    let check_load = plugin("check_load");
    let check_disk = plugin("check_disk");
    let config = format!(
        r#"
[[targets]]
name = "load"
kind = "command"
command = ["{check_load}", "-w", "1000,1000,1000", "-c", "2000,2000,2000"]
interval = "200ms"

[[targets]]
name = "disk"
kind = "command"
command = ["{check_disk}", "-w", "0%", "-c", "0%", "-p", "/"]
interval = "200ms"

[[rules]]
builtin = "threshold"
config = {{ target_down = false, thresholds = {{ check_status = {{ above = 3 }}, load1 = {{ above = -1, alert = "Load1Seen" }}, load1_warn = {{ above = 999, alert = "LoadWarnAt1000" }}, "/" = {{ above = 0, alert = "RootUsed" }} }} }}
"#
    );
    let mut vigil = Vigil::start(&config);

    let load = vigil.wait_for("an up sample of check_load", Duration::from_secs(60), |v| {
        is_evaluation(v, "load") && v["health"] == "up"
    });
    assert_eq!(metric(&load, "check_status")[0]["value"], 0.0, "{load}");
    assert!(metric(&load, "load1")[0]["value"].as_f64().unwrap() >= 0.0);
    assert_eq!(metric(&load, "load1_warn")[0]["value"], 1000.0);
    let output = load["labels"]["check_output"].as_str().unwrap();
    assert!(output.starts_with("LOAD OK"), "{output}");
    assert!(!output.contains('|'), "{output}");

    let disk = vigil.wait_for("an up sample of check_disk", Duration::from_secs(60), |v| {
        is_evaluation(v, "disk") && v["health"] == "up"
    });
    let root = metric(&disk, "/");
    assert_eq!(root.len(), 1, "{disk}");
    assert_eq!(root[0]["labels"], json!({"unit": "B"}));
    assert!(root[0]["value"].as_f64().unwrap() > 0.0);
    assert!(
        disk["labels"]["check_output"]
            .as_str()
            .unwrap()
            .starts_with("DISK "),
        "{disk}"
    );

    for (name, target) in [
        ("Load1Seen", "load"),
        ("LoadWarnAt1000", "load"),
        ("RootUsed", "disk"),
    ] {
        let fired = seen_or_wait(&mut vigil, &format!("{name} firing"), |v| {
            is_alert(v, "firing", name)
        });
        assert_eq!(fired["target"], target, "{fired}");
        if name == "RootUsed" {
            assert_eq!(fired["labels"]["unit"], "B", "{fired}");
        }
    }
}

/// Writes an executable `/bin/sh` script.
fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    toml_path(&path)
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: dead all the same).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn bad_pages_and_bad_checks_are_down_with_the_reason_and_the_host_goes_on() {
    let scripts = tempfile::tempdir().unwrap();
    let dir = scripts.path();
    let pids = dir.join("pids");
    let hang = script(
        dir,
        "hang",
        &format!(
            "echo $$ >> '{p}'\n/bin/sleep 1000 &\necho $! >> '{p}'\n/bin/sleep 1000 &\necho $! >> '{p}'\nwait",
            p = pids.display()
        ),
    );
    let flood = script(dir, "flood", "/usr/bin/head -c 104857600 /dev/zero");
    let exit137 = script(dir, "exit137", "echo 'CHECK OK'; exit 137");
    let fine = script(dir, "fine", "echo 'FINE OK | x=1'");

    let server = StatusServer::start();
    let huge = format!("# a 10 MB page\n{}", "a_metric 1\n".repeat(1024 * 1024));
    server.set("huge", Behavior::Body(huge));
    let mut garbled = String::new();
    for i in 0..40 {
        garbled.push_str(&format!("series{{n=\"{i}\"}} {i}\n"));
    }
    garbled.push_str("<html>oops</html>\n");
    for i in 40..80 {
        garbled.push_str(&format!("series{{n=\"{i}\"}} {i}\n"));
    }
    server.set("garbled", Behavior::Body(garbled));
    server.set("good", Behavior::Body("good_metric 1\n".into()));

    let page = |name: &str| {
        format!(
            "[[targets]]\nname = \"{name}\"\nkind = \"prometheus\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"5s\"\n",
            server.url(name)
        )
    };
    let check = |name: &str, path: &str, timeout: &str| {
        format!(
            "[[targets]]\nname = \"{name}\"\nkind = \"command\"\ncommand = [\"{path}\"]\ninterval = \"100ms\"\ntimeout = \"{timeout}\"\n"
        )
    };
    let config = [
        page("huge"),
        page("garbled"),
        page("good"),
        check("hang", &hang, "300ms"),
        check("flood", &flood, "30s"),
        check("exit137", &exit137, "30s"),
        check("fine", &fine, "30s"),
    ]
    .concat();
    let mut vigil = Vigil::start(&config);

    let expectations = [
        ("huge", "body larger than 1048576 bytes (max_body_bytes)".to_string()),
        (
            "garbled",
            "malformed page at line 41: expected a metric name, a comment or a blank line: `<html>oops</html>`".to_string(),
        ),
        (
            "hang",
            "did not finish within 300ms (timeout); killed with its process group".to_string(),
        ),
        (
            "flood",
            "printed more than 65536 bytes on stdout (max_output_bytes); killed".to_string(),
        ),
        (
            "exit137",
            "exited with status 137; a check exits 0 (OK), 1 (WARNING), 2 (CRITICAL) or 3 (UNKNOWN); 137 is 128+9, as a shell reports death by signal 9: CHECK OK".to_string(),
        ),
    ];
    for (name, reason) in &expectations {
        let down = vigil.wait_for(
            &format!("a down sample from `{name}`"),
            Duration::from_secs(60),
            |v| is_evaluation(v, name) && v["health"] == "down",
        );
        assert_eq!(down["reason"], *reason, "target `{name}`");
        assert_eq!(down["metrics"], json!([]));
        assert_eq!(down["alerts"], json!(["TargetDown"]));
    }

    // The hanging check's first run: the shell and both sleeps it started
    // are killed with the group, however long the machine takes.
    let first_run: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .take(3)
        .map(|line| line.parse().unwrap())
        .collect();
    assert_eq!(first_run.len(), 3);
    wait_until_dead(&first_run);

    // Three more polls of every bad target; the good ones are never down.
    let polls = |vigil: &Vigil, name: &str| vigil.count(|v: &Value| is_evaluation(v, name));
    let before: Vec<usize> = expectations
        .iter()
        .map(|(name, _)| polls(&vigil, name))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while expectations
        .iter()
        .zip(&before)
        .any(|((name, _), before)| polls(&vigil, name) < before + 3)
    {
        assert!(
            Instant::now() < deadline,
            "the bad targets were not polled three more times within two minutes"
        );
        vigil.collect_for(Duration::from_millis(100));
    }
    for (name, _) in &expectations {
        assert_eq!(
            vigil.count(|v| is_evaluation(v, name) && v["health"] == "up"),
            0,
            "`{name}` was never up"
        );
    }
    for good in ["good", "fine"] {
        assert!(polls(&vigil, good) >= 3, "`{good}` kept being polled");
        assert_eq!(
            vigil.count(|v| is_evaluation(v, good) && v["health"] == "down"),
            0,
            "`{good}` was never down"
        );
    }
    assert!(vigil.is_running());

    // A stop drops the check in flight: its group goes too, so no run of
    // the hanging check outlives the host.
    vigil.terminate();
    let every_run: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    wait_until_dead(&every_run);
}

/// Waits (30 s at most, however busy the machine) for every pid to be dead.
fn wait_until_dead(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pids.iter().all(|&pid| is_dead(pid)) {
        let alive: Vec<&u32> = pids.iter().filter(|&&pid| !is_dead(pid)).collect();
        assert!(
            Instant::now() < deadline,
            "processes of the timed-out check survive: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
