//! The page at `/`, in a real browser: Debian's `chromium`, headless,
//! driven by `playwright-core` (`tests/page/page.mjs`) against the real
//! `vigil` binary polling a status server on loopback. The test asserts on
//! the DOM; it takes no screenshots.
//!
//! The Rust side owns the status server and vigil; the script owns the
//! browser. They take turns in lines: the script prints what it saw
//! (`ready`, `firing`, ...), the test changes the world and writes the next
//! step on the script's stdin. Every wait is for a condition, bounded.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, toml_path, web_target};
use serde_json::json;

/// How long one step of the script may take: Chromium's start on a busy
/// 2-core machine is most of it.
const STEP: Duration = Duration::from_secs(60);

/// One browser at a time: the tests of this file run on shared cores.
static BROWSER: Mutex<()> = Mutex::new(());

#[test]
fn the_page_shows_a_firing_alert_and_drops_it_when_it_resolves() {
    let _one = BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = StatusServer::start();
    server.set("status", calm());
    let mut vigil = Vigil::start(&format!(
        "{}\n[[rules]]\nbuiltin = \"threshold\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        web_target(&server.url("status"))
    ));
    let addr = vigil.api_addr(&vigil.dir().join("data"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let mut script = Script::start(&format!("http://{addr}/"), "alerts");
    script.expect("ready", &vigil);
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 95, "memory_usage": 10})),
    );
    script.send("high");
    script.expect("firing", &vigil);
    server.set("status", calm());
    script.send("low");
    script.expect("resolved", &vigil);
    vigil.terminate();
    script.send("stopped");
    script.expect("banner", &vigil);
    script.expect("ok", &vigil);
    script.finish(&vigil);
}

/// Regression guard for the page behind the token: where the API needs it
/// (an address other machines can reach), the page still loads, says why
/// the tables are empty, and takes the token.
#[test]
fn the_page_asks_for_the_token_where_the_api_needs_it() {
    let _one = BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = StatusServer::start();
    server.set("status", calm());
    let dir = tempfile::tempdir().unwrap();
    let token = "page-test-token-0123456789abcdef";
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, token).unwrap();
    let data_dir = dir.path().join("data");
    // The host guards reads only on an address that is not loopback, so
    // this one listens on every interface (a free port, for a few seconds,
    // behind the token) and the browser comes in through loopback.
    let vigil = Vigil::start_with_data_dir(
        &format!(
            "{}\n[[rules]]\nbuiltin = \"threshold\"\n\n[api]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n",
            web_target(&server.url("status")),
            toml_path(&token_file)
        ),
        &data_dir,
        dir,
    );
    let addr = vigil.api_addr(&data_dir);
    let mut script = Script::start(&format!("http://127.0.0.1:{}/", addr.port()), "token");
    script.expect("ready", &vigil);
    script.send(token);
    script.expect("authorized", &vigil);
    script.expect("ok", &vigil);
    script.finish(&vigil);
}

fn calm() -> Behavior {
    Behavior::json(json!({"cpu_usage": 10, "memory_usage": 10}))
}

/// `tests/page/page.mjs` running one scene.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Script {
    fn start(url: &str, scene: &str) -> Script {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/page");
        let chromium = chromium();
        assert!(
            folder
                .join("node_modules/playwright-core/package.json")
                .exists(),
            "{} has no node_modules/playwright-core: run `npm ci --prefix tests/page` (the pinned playwright-core from npm; .ci/run does)",
            folder.display()
        );
        let mut child = Command::new("node")
            .arg(folder.join("page.mjs"))
            .args([url.as_ref(), chromium.as_os_str(), scene.as_ref()])
            .current_dir(&folder)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot run `node` ({error}): install Node.js 20+ (Debian's `nodejs`)")
            });
        let (lines, stderr) = common::pipe_lines(&mut child);
        let stdin = child.stdin.take().unwrap();
        Script {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|error| panic!("cannot write `{line}` to page.mjs: {error}"));
    }

    /// Waits for the script to print `word`, or fails with what it and
    /// vigil said.
    fn expect(&mut self, word: &str, vigil: &Vigil) {
        let why = match self.lines.recv_timeout(STEP) {
            Ok(line) if line == word => return,
            Ok(line) => format!("page.mjs printed `{line}` where `{word}` was expected"),
            Err(RecvTimeoutError::Timeout) => {
                format!("page.mjs did not print `{word}` within {STEP:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Its stderr is read to the end before its exit is seen.
                let _ = self.child.wait();
                std::thread::sleep(Duration::from_millis(100));
                format!("page.mjs exited before printing `{word}`")
            }
        };
        panic!(
            "{why}\n--- page.mjs stderr ---\n{}\n--- vigil's stderr ---\n{}",
            self.stderr.lock().unwrap(),
            vigil.stderr()
        );
    }

    /// Waits for a clean exit.
    fn finish(mut self, vigil: &Vigil) {
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "page.mjs exited with {status}\n--- its stderr ---\n{}\n--- vigil's stderr ---\n{}",
            self.stderr.lock().unwrap(),
            vigil.stderr()
        );
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `chromium` on PATH, or a failure that names the package.
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("`chromium` is not on PATH: `sudo apt-get install chromium` (Debian's package; .ci/run installs it)")
        })
}
