//! The HTTP API of a running host, end to end: the real `vigil` binary
//! polling a status server on loopback, asked over HTTP what it is doing
//! (issue 13). Every answer is checked as a user reads it: status code,
//! content type, and the JSON fields.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Behavior, StatusServer, Vigil, get_json, http, poll_json};
use serde_json::{Value, json};

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A host polling `web-01` (the status server's `web`) and `db-01` (a
/// closed port) with the bundled rule, its API on a free loopback port.
fn host(server: &StatusServer) -> (Vigil, String) {
    let config = format!(
        r#"
[[targets]]
name = "web-01"
kind = "http-json"
url = "{}"
interval = "100ms"
labels = {{ team = "web" }}

[[targets]]
name = "db-01"
kind = "http-json"
url = "http://127.0.0.1:{}/status"
interval = "100ms"

[[rules]]
builtin = "threshold"

[api]
listen = "127.0.0.1:0"
"#,
        server.url("web"),
        closed_port()
    );
    let vigil = Vigil::start(&config);
    let base = vigil.api_base(&vigil.dir().join("data"));
    (vigil, base)
}

fn names(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_endpoint_answers_what_the_host_is_doing() {
    let server = StatusServer::start();
    server.set(
        "web",
        Behavior::json(json!({"cpu_usage": 91, "memory_usage": 10})),
    );
    let (vigil, base) = host(&server);

    // What is firing: web-01's CPU and db-01 itself (the bundled rule
    // alerts on a target that is down), sorted by rule, target and name,
    // with every field a user reads.
    let alerts = poll_json(&format!("{base}/api/v1/alerts"), "two firing alerts", |v| {
        v["alerts"].as_array().unwrap().len() == 2
            && v["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["state"] == "firing")
    });
    assert_eq!(alerts["alerts"][0]["name"], "TargetDown");
    assert_eq!(alerts["alerts"][0]["target"], "db-01");
    assert_eq!(alerts["alerts"][0]["severity"], "critical");
    let alert = &alerts["alerts"][1];
    assert_eq!(alert["name"], "CpuUsageHigh");
    assert_eq!(alert["rule"], "threshold");
    assert_eq!(alert["target"], "web-01");
    assert_eq!(alert["summary"], "cpu_usage is 91.0, above 80");
    assert_eq!(alert["labels"], json!({"metric": "cpu_usage"}));
    assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
    assert!(alert["active_since_ms"].as_u64().unwrap() > 0);
    let count = |query: &str| {
        get_json(&format!("{base}/api/v1/alerts?{query}"))["alerts"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("target=web-01&rule=threshold&name=CpuUsageHigh"), 1);
    assert_eq!(
        count("label=metric%3Dcpu_usage&state=firing&severity=warning"),
        1
    );
    assert_eq!(count("target=db-01"), 1);
    assert_eq!(count("severity=critical&name=CpuUsageHigh"), 0);
    assert_eq!(count("state=pending"), 0);
    assert_eq!(count("label=metric%3Dmemory_usage"), 0);

    // Is every target polled: one up, one down with the reason.
    let targets = poll_json(&format!("{base}/api/v1/targets"), "db-01 down", |v| {
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "db-01" && t["health"] == "down")
    });
    assert_eq!(names(&targets, "targets"), ["db-01", "web-01"]);
    let db = &targets["targets"][0];
    assert_eq!(db["reason"], "connect");
    assert!(
        db["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect to")
    );
    assert!(db["failures"]["connect"].as_u64().unwrap() >= 1);
    let web = &targets["targets"][1];
    assert_eq!(web["health"], "up");
    assert_eq!(web["kind"], "http-json");
    assert_eq!(web["interval_ms"], 100.0);
    assert_eq!(web["labels"], json!({"team": "web"}));
    assert!(web["polls"].as_u64().unwrap() >= 1);
    assert!(web["last_duration_ms"].as_f64().unwrap() > 0.0);
    let down = get_json(&format!("{base}/api/v1/targets?health=down&reason=connect"));
    assert_eq!(names(&down, "targets"), ["db-01"]);

    // Is every rule healthy: version, source, hash, counters.
    let rules = get_json(&format!("{base}/api/v1/rules"));
    assert_eq!(names(&rules, "rules"), ["threshold"]);
    let rule = &rules["rules"][0];
    assert_eq!(rule["version"], 1);
    assert_eq!(rule["source"], "builtin:threshold");
    assert_eq!(rule["hash"].as_str().unwrap().len(), 64);
    assert_eq!(rule["health"], "healthy");
    assert_eq!(rule["last_reload_error"], Value::Null);
    assert!(rule["counters"]["evaluations"].as_u64().unwrap() >= 1);
    assert_eq!(rule["counters"]["traps"], 0);
    assert_eq!(
        names(
            &get_json(&format!("{base}/api/v1/rules?name=nope")),
            "rules"
        ),
        Vec::<String>::new()
    );

    // What did remediation do: nothing is declared, so nothing.
    let audit = get_json(&format!("{base}/api/v1/audit?since=1h&limit=10"));
    assert_eq!(audit, json!({"records": []}));

    // Liveness, readiness, the document.
    assert_eq!(
        get_json(&format!("{base}/healthz")),
        json!({"status": "up"})
    );
    assert_eq!(get_json(&format!("{base}/readyz")), json!({"ready": true}));
    let (status, content_type, body) = http("GET", &format!("{base}/api/v1/openapi.yaml"), None);
    assert_eq!((status, content_type.as_str()), (200, "application/yaml"));
    assert!(body.starts_with("openapi: 3"), "{body}");
    let (status, content_type, page) = http("GET", &format!("{base}/"), None);
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(page.contains("<title>Vigil</title>"));

    // The commands ask the running host: its database is locked.
    let data = vigil.dir().join("data");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["status", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(text.contains("alerts: 2 firing, 0 pending"), "{text}");
    assert!(
        text.contains("CpuUsageHigh on web-01 by threshold: cpu_usage is 91.0, above 80"),
        "{text}"
    );
    assert!(text.contains("targets: 2 (1 down)"), "{text}");
    let audit = common::run_vigil([
        std::ffi::OsStr::new("audit"),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(audit, "", "no action was requested");
}

#[test]
fn bad_requests_get_a_4xx_with_a_json_message() {
    let server = StatusServer::start();
    server.set("web", Behavior::json(json!({"cpu_usage": 10})));
    let (_vigil, base) = host(&server);
    let refused = |method: &str, path: &str, token: Option<&str>| -> (u16, String) {
        let (status, content_type, body) = http(method, &format!("{base}{path}"), token);
        assert_eq!(content_type, "application/json", "{method} {path}: {body}");
        let value: Value = serde_json::from_str(&body).unwrap();
        let message = value["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error message in {body}"));
        assert_eq!(value.as_object().unwrap().len(), 1, "{body}");
        (status, message.to_string())
    };
    let bad = |path: &str, says: &str| {
        let (status, message) = refused("GET", path, None);
        assert_eq!(status, 400, "{path}: {message}");
        assert!(message.contains(says), "{path}: {message}");
    };
    for endpoint in ["alerts", "rules", "targets", "audit"] {
        bad(
            &format!("/api/v1/{endpoint}?colour=red"),
            "unknown parameter `colour`",
        );
    }
    bad(
        "/api/v1/alerts?state=burning",
        "state `burning` is not one of: pending, firing",
    );
    bad("/api/v1/alerts?severity=loud", "severity `loud`");
    bad(
        "/api/v1/alerts?label=team",
        "label `team` is not NAME=VALUE",
    );
    bad(
        "/api/v1/alerts?rule=a&rule=b",
        "parameter `rule` is given twice",
    );
    bad("/api/v1/targets?health=sideways", "health `sideways`");
    bad(
        "/api/v1/targets?reason=bad-luck",
        "reason `bad-luck` is not one of: timeout, connect",
    );
    bad("/api/v1/audit?status=maybe", "unknown status `maybe`");
    bad("/api/v1/audit?since=soon", "since `soon` is not a duration");
    bad(
        "/api/v1/audit?limit=0",
        "limit must be a whole number from 1 to 1000",
    );
    bad(
        "/api/v1/audit?limit=1001",
        "limit must be a whole number from 1 to 1000",
    );
    bad("/api/v1/audit?limit=ten", "limit must be a whole number");

    let huge = format!("/api/v1/alerts?rule={}", "x".repeat(5000));
    let (status, message) = refused("GET", &huge, None);
    assert_eq!(status, 414, "{message}");
    assert!(message.contains("longer than 4096 bytes"), "{message}");

    for (method, path) in [
        ("DELETE", "/api/v1/alerts"),
        ("POST", "/api/v1/targets"),
        ("PUT", "/metrics"),
        ("GET", "/api/v1/reload"),
    ] {
        let (status, message) = refused(method, path, None);
        assert_eq!(status, 405, "{method} {path}: {message}");
        assert_eq!(message, format!("{method} is not allowed on {path}"));
    }
    let (status, message) = refused("GET", "/api/v2/alerts", None);
    assert_eq!(status, 404, "{message}");
    assert!(
        message.contains("no such path: /api/v2/alerts"),
        "{message}"
    );

    // Changing state needs the token.
    let (status, message) = refused("POST", "/api/v1/reload", None);
    assert_eq!(status, 401, "{message}");
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let (status, _) = refused("POST", "/api/v1/reload", Some("not-the-token-at-all"));
    assert_eq!(status, 401);
}

#[test]
fn reload_over_the_api_applies_a_new_config_and_refuses_a_broken_one() {
    let server = StatusServer::start();
    server.set("web", Behavior::json(json!({"cpu_usage": 10})));
    server.set("db", Behavior::json(json!({"cpu_usage": 20})));
    let (vigil, base) = host(&server);
    let token = std::fs::read_to_string(vigil.dir().join("data/api.token")).unwrap();
    assert!(token.len() >= 32, "the made token is long: {token}");
    poll_json(&format!("{base}/api/v1/targets"), "two targets", |v| {
        v["targets"].as_array().unwrap().len() == 2
    });

    // A new target: the reload takes it.
    let config = std::fs::read_to_string(vigil.config_path()).unwrap();
    let added = format!(
        "{config}\n[[targets]]\nname = \"db-02\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\n",
        server.url("db")
    );
    std::fs::write(vigil.config_path(), &added).unwrap();
    let (status, _, body) = http("POST", &format!("{base}/api/v1/reload"), Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"reloaded": true})
    );
    let targets = poll_json(&format!("{base}/api/v1/targets"), "db-02", |v| {
        v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "db-02" && t["health"] == "up")
    });
    assert_eq!(names(&targets, "targets"), ["db-01", "db-02", "web-01"]);

    // A broken config: refused with where and why, and nothing changes.
    std::fs::write(
        vigil.config_path(),
        format!("{added}\n[[targets]]\nname = 7\n"),
    )
    .unwrap();
    let (status, _, body) = http("POST", &format!("{base}/api/v1/reload"), Some(&token));
    assert_eq!(status, 422, "{body}");
    let message = serde_json::from_str::<Value>(&body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("vigil.toml:"),
        "names the file and line: {message}"
    );
    let targets = get_json(&format!("{base}/api/v1/targets"));
    assert_eq!(names(&targets, "targets"), ["db-01", "db-02", "web-01"]);
}

#[test]
fn ready_only_once_every_target_was_polled() {
    let server = StatusServer::start();
    let released = Arc::new(AtomicBool::new(false));
    server.set(
        "web",
        Behavior::Held(released.clone(), json!({"cpu_usage": 10}).to_string()),
    );
    let config = format!(
        "[[targets]]\nname = \"web-01\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"5m\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        server.url("web")
    );
    let vigil = Vigil::start(&config);
    let base = vigil.api_base(&vigil.dir().join("data"));
    // The first poll is held: not ready, and it says what it waits for.
    let (status, _, body) = http("GET", &format!("{base}/readyz"), None);
    assert_eq!(status, 503, "{body}");
    let value: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["ready"], false);
    assert!(
        value == json!({"ready": false, "waiting_for": "the host to start"})
            || value
                == json!({"ready": false, "waiting_for": "1 targets not polled yet", "targets": ["web-01"]}),
        "{value}"
    );
    assert_eq!(
        get_json(&format!("{base}/healthz")),
        json!({"status": "up"})
    );
    released.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while http("GET", &format!("{base}/readyz"), None).0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn on_an_address_others_can_reach_every_read_needs_the_token() {
    let server = StatusServer::start();
    server.set("web", Behavior::json(json!({"cpu_usage": 10})));
    let dir = tempfile::tempdir().unwrap();
    let token = "a-token-of-the-operators-choosing";
    std::fs::write(dir.path().join("api.token"), format!("{token}\n")).unwrap();
    let config = format!(
        "[[targets]]\nname = \"web-01\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\n\n[api]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"api.token\"\n",
        server.url("web")
    );
    let data = dir.path().join("data");
    let vigil = Vigil::start_with_data_dir(&config, &data, dir);
    let port = vigil.api_addr(&data).port();
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/api/v1/alerts", "/api/v1/targets", "/metrics"] {
        let (status, _, body) = http("GET", &format!("{base}{path}"), None);
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _, body) = http("GET", &format!("{base}{path}"), Some(token));
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Probes stay open (a load balancer has no token), and so does the page,
    // which holds no data and asks for the token itself.
    assert_eq!(http("GET", &format!("{base}/healthz"), None).0, 200);
    assert_eq!(http("GET", &format!("{base}/"), None).0, 200);
    // The token is the operator's, not one made in the data directory.
    assert!(!data.join("api.token").exists());
    drop(vigil);
}

#[test]
fn status_and_audit_find_the_host_through_its_config() {
    let server = StatusServer::start();
    server.set("web", Behavior::json(json!({"cpu_usage": 10})));
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "data_dir = \"state\"\n\n[[targets]]\nname = \"web-01\"\nkind = \"http-json\"\nurl = \"{}\"\ninterval = \"100ms\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        server.url("web")
    );
    let data = dir.path().join("state");
    let mut vigil = Vigil::start_with_data_dir(&config, &data, dir);
    let base = vigil.api_base(&data);
    poll_json(&format!("{base}/api/v1/targets"), "web-01 up", |v| {
        v["targets"][0]["health"] == "up"
    });
    let config_path = vigil.config_path();
    let vigil_cmd = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let status = vigil_cmd(&["status", "--format", "json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["running"], true);
    assert_eq!(report["api"], base);
    assert_eq!(report["targets"][0]["name"], "web-01");
    // --since of 30 days is passed on in units the API takes.
    let audit = vigil_cmd(&["audit", "--format", "json", "--since", "30d"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    // A stopped host: status says so, and fails; audit reads the database.
    vigil.terminate();
    let status = vigil_cmd(&["status"]);
    assert_eq!(status.status.code(), Some(1));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.starts_with("vigil is not running on "), "{text}");
    assert!(text.contains("alerts saved when it stopped: 0"), "{text}");
    let audit = vigil_cmd(&["audit"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
}
