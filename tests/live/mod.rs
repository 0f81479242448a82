//! Shared by the tests that talk to a running host's HTTP API
//! (`tests/openapi.rs`, `tests/metrics.rs`): a host whose API listens on a
//! free loopback port, fed by a status server over the classic threshold
//! and a rule that asks for remediation, so that every endpoint has
//! something to show (a firing alert, targets, rules, audit records).
//!
//! `tests/live/requirements.txt` pins the Python tools these tests run;
//! `.ci/run` installs it.

#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Behavior, StatusServer, Vigil, fixture, toml_path, web_target};

/// A running host with its API, the status server it polls, and where it
/// keeps its data.
pub struct Host {
    /// `http://127.0.0.1:PORT`, where the API listens.
    pub base: String,
    /// The bearer token the host made in its data directory.
    pub token: String,
    /// The host process (stopped on drop).
    pub vigil: Vigil,
    /// The status server `web-01` polls.
    pub server: StatusServer,
    /// The data directory.
    pub data: tempfile::TempDir,
}

/// The host's config: the API on `127.0.0.1:0` (a free port, written to
/// `<data_dir>/api.json`), `web-01` at cpu_usage 95 for the threshold rule
/// (so `CpuUsageHigh` fires), and two rules of the remediate fixture: one
/// whose action the gate approves (dry-run), one asking for an action
/// nobody declared (refused); and two tenants, `team` running the bundled
/// rule from its file `tenant_file`, and `absent`, whose file is missing
/// (so `/api/v1/tenants` shows one in force and one refused).
fn config(server: &StatusServer, tenant_file: &std::path::Path) -> String {
    let remediate = toml_path(&fixture("fixture_remediate"));
    format!(
        r#"{target}
[[rules]]
builtin = "threshold"
config = {{ thresholds = {{ cpu_usage = 80 }} }}

[[rules]]
name = "asker"
path = "{remediate}"
config = {{ action = "record", params = {{ value = "x" }} }}

[[rules]]
name = "stranger"
path = "{remediate}"
config = {{ action = "nope", params = {{ value = "y" }} }}

[actions.record]
command = ["/usr/bin/printf", "<%s>", "{{value}}"]
params = {{ value = {{ pattern = "[a-z]+" }} }}
allowed_rules = ["asker"]
cooldown = "1s"

[api]
listen = "127.0.0.1:0"

[[tenants]]
name = "team"
file = "{tenant_file}"
targets = ["web-*"]
actions = ["record"]

[[tenants]]
name = "absent"
file = "{absent_file}"
target_labels = {{ team = "absent" }}
"#,
        target = web_target(&server.url("status")),
        tenant_file = toml_path(tenant_file),
        absent_file = toml_path(&tenant_file.with_file_name("absent.toml")),
    )
}

impl Host {
    /// Starts the host and waits until it is ready with a firing alert and
    /// audit records of both decisions to show.
    pub fn start() -> Host {
        let server = StatusServer::start();
        server.set(
            "status",
            Behavior::json(json!({"cpu_usage": 95, "memory_usage": 40})),
        );
        let data = tempfile::tempdir().unwrap();
        let tenants = tempfile::tempdir().unwrap();
        let tenant_file = tenants.path().join("team.toml");
        std::fs::write(
            &tenant_file,
            "[[rules]]\nname = \"cpu\"\nbuiltin = \"threshold\"\n",
        )
        .unwrap();
        let vigil =
            Vigil::start_with_data_dir(&config(&server, &tenant_file), data.path(), tenants);
        let addr = vigil.api_addr(data.path());
        let token = std::fs::read_to_string(data.path().join("api.token"))
            .expect("the host wrote api.token in its data directory");
        let host = Host {
            base: format!("http://{addr}"),
            token,
            vigil,
            server,
            data,
        };
        host.wait_until("/readyz answers 200", |host| {
            host.get("/readyz").status == 200
        });
        host.wait_until("CpuUsageHigh firing in /api/v1/alerts", |host| {
            host.json("/api/v1/alerts?name=CpuUsageHigh&state=firing")["alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        });
        for status in ["dry-run", "refused"] {
            host.wait_until(&format!("a `{status}` audit record"), |host| {
                host.json(&format!("/api/v1/audit?status={status}&limit=1"))["records"]
                    .as_array()
                    .is_some_and(|records| !records.is_empty())
            });
        }
        host
    }

    /// `GET path` (with its query), without the token.
    pub fn get(&self, path: &str) -> Answer {
        request("GET", &format!("{}{path}", self.base), None)
    }

    /// `GET path` that must answer 200 with JSON: the JSON.
    pub fn json(&self, path: &str) -> Value {
        let answer = self.get(path);
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        serde_json::from_str(&answer.body)
            .unwrap_or_else(|error| panic!("GET {path} is not JSON ({error}): {}", answer.body))
    }

    /// Polls `done` every 100 ms for up to 30 s; panics with the host's log
    /// when it never holds.
    pub fn wait_until(&self, what: &str, done: impl Fn(&Host) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "no {what} within 30s\n--- vigil's stderr ---\n{}",
                self.vigil.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// One HTTP request with reqwest on a runtime of its own.
pub fn request(method: &str, url: &str, token: Option<&str>) -> Answer {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut builder = client.request(method.parse().unwrap(), url);
        if let Some(token) = token {
            builder = builder.bearer_auth(token);
        }
        let response = builder
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {url} failed: {error}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.text().await.unwrap();
        Answer {
            status,
            content_type,
            body,
        }
    })
}

/// The pinned requirements of these tests' Python tools.
pub const REQUIREMENTS: &str = include_str!("requirements.txt");

/// The version `requirements.txt` pins for `package`.
pub fn pinned(package: &str) -> &'static str {
    REQUIREMENTS
        .lines()
        .find_map(|line| line.trim().strip_prefix(package)?.strip_prefix("=="))
        .unwrap_or_else(|| panic!("tests/live/requirements.txt pins no `{package}`"))
        .trim()
}

/// A script pip installed for the `python3` on PATH (in its scripts
/// directory: pyenv shims may not list it yet), checked to be the version
/// `requirements.txt` pins; panics with the install command otherwise.
pub fn python_tool(name: &str) -> PathBuf {
    let hint = format!(
        "hint: run `.ci/run`, or `python3 -m pip install -r tests/live/requirements.txt` (PyPI's `{name}=={}`)",
        pinned(name)
    );
    let program = crate::common::pip_script(name);
    let version = Command::new(&program)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("`{name}` is missing ({error})\n{hint}"));
    let printed = String::from_utf8_lossy(&version.stdout);
    assert!(
        printed.contains(pinned(name)),
        "`{}` is not the pinned {name} {} (it says `{}`)\n{hint}",
        program.display(),
        pinned(name),
        printed.trim()
    );
    program
}
