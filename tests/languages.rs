//! Rules in languages other than Rust, built from source by the test with
//! the pinned toolchains (`plugins/python/requirements.txt` and
//! `plugins/js/package.json`, installed by `.ci/run`), loaded by the host and
//! checked on real samples. Each language implements the same two rules, so
//! one scenario per rule runs against every language.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Behavior, StatusServer, Vigil, is_alert, toml_path, web_target};
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Js,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds `plugins/LANG/NAME` into a component in `out`.
fn build(lang: Lang, name: &str, out: &Path) -> PathBuf {
    let wit = repo().join("wit");
    let (mut command, source, hint) = match lang {
        Lang::Python => {
            let source = repo().join("plugins/python").join(name);
            let mut command = Command::new(common::componentize_py());
            command
                .arg("-d")
                .arg(&wit)
                // The glue (`vigil_rule.py`) sits in `plugins/python`.
                .args([
                    "-w",
                    "rule",
                    "componentize",
                    "-p",
                    ".",
                    "-p",
                    "..",
                    "app",
                    "-o",
                ]);
            (
                command,
                source,
                "python3 -m pip install -r plugins/python/requirements.txt",
            )
        }
        Lang::Js => {
            let tool = repo().join("plugins/js/node_modules/.bin/componentize-qjs");
            let source = repo().join("plugins/js").join(name);
            let mut command = Command::new(tool);
            command
                .args(["--sync", "--world", "rule", "--wit"])
                .arg(&wit)
                // The glue (`vigil.js`) sits in `plugins/js`.
                .args(["--module-root", "..", "--js", "rule.js", "-o"]);
            (command, source, "npm ci --prefix plugins/js")
        }
    };
    let wasm = out.join(format!("{name}.wasm"));
    let status = command
        .arg(&wasm)
        .current_dir(&source)
        .status()
        .unwrap_or_else(|error| {
            panic!("cannot run the {lang:?} toolchain ({error})\nhint: {hint}")
        });
    assert!(status.success(), "building {lang:?} rule {name} failed");
    // Leave the source tree as it was.
    let _ = std::fs::remove_dir_all(source.join("__pycache__"));
    let _ = std::fs::remove_dir_all(source.join("../__pycache__"));
    wasm
}

/// Runs the rule's own `cases.toml` (from its source folder, next to the
/// component it names) with `vigil test`, which must pass with `summary`.
fn passes_its_cases(lang: Lang, name: &str, wasm: &Path, summary: &str) {
    let source = match lang {
        Lang::Python => repo().join("plugins/python").join(name),
        Lang::Js => repo().join("plugins/js").join(name),
    };
    let cases = wasm.with_file_name("cases.toml");
    std::fs::copy(source.join("cases.toml"), &cases).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("test")
        .arg(&cases)
        .arg("--data-dir")
        .arg(wasm.with_file_name("vigil-data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{lang:?} {name}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, format!("ok: {summary} of `{}`\n", cases.display()));
}

/// The threshold rule passes its cases, fires on a real high sample and
/// resolves on a low one.
fn threshold_evaluates_real_samples(lang: Lang, watching: &str) {
    let out = tempfile::tempdir().unwrap();
    let rule = build(lang, "threshold", out.path());
    passes_its_cases(lang, "threshold", &rule, "3 expectations over 6 samples");
    let server = StatusServer::start();
    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 95, "memory_usage": 20})),
    );
    // The data directory `vigil test` just used: its compile cache has the
    // component, so it is not compiled a second time (seconds for Python).
    let mut vigil = Vigil::start_with_data_dir(
        &format!(
            "{}\n[[rules]]\nname = \"threshold_x\"\npath = \"{}\"\nconfig = {{ thresholds = {{ cpu_usage = 80, memory_usage = 80 }} }}\n",
            web_target(&server.url("status")),
            toml_path(&rule)
        ),
        &rule.with_file_name("vigil-data"),
        tempfile::tempdir().unwrap(),
    );
    let fired = vigil.wait_for("CpuUsageHigh", Duration::from_secs(60), |v| {
        is_alert(v, "firing", "CpuUsageHigh")
    });
    assert_eq!(fired["rule"], "threshold_x");
    assert_eq!(fired["summary"], "cpu_usage is 95.0, above 80");
    assert_eq!(fired["labels"], json!({"metric": "cpu_usage"}));
    assert!(vigil.stderr().contains(watching), "{}", vigil.stderr());
    assert!(
        vigil.stderr().contains("compiled=\"from cache\""),
        "{}",
        vigil.stderr()
    );

    server.set(
        "status",
        Behavior::json(json!({"cpu_usage": 10, "memory_usage": 20})),
    );
    vigil.wait_for("CpuUsageHigh resolved", Duration::from_secs(10), |v| {
        is_alert(v, "resolved", "CpuUsageHigh")
    });
    // A down target is reported, with the poll's reason.
    server.set("status", Behavior::Status(500));
    let down = vigil.wait_for("TargetDown", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "TargetDown")
    });
    assert!(
        down["summary"]
            .as_str()
            .unwrap()
            .starts_with("target `web-01` is down: "),
        "{down}"
    );
}

/// The N-of-M rule passes its cases and fills its window in the host's
/// state on real samples, and a new version swapped in while the alert
/// fires picks the window up where the old one left it.
fn window_survives_a_hot_reload(lang: Lang) {
    let out = tempfile::tempdir().unwrap();
    let built = build(lang, "sustained", out.path());
    passes_its_cases(lang, "sustained", &built, "4 expectations over 8 samples");
    let rules = tempfile::tempdir().unwrap();
    let rule = rules.path().join("sustained.wasm");
    std::fs::copy(&built, &rule).unwrap();
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 95})));
    // Shares the compile cache `vigil test` filled (see above).
    let mut vigil = Vigil::start_with_data_dir(
        &format!(
            "{}\n[[rules]]\nname = \"sustained\"\npath = \"{}\"\nconfig = {{ metric = \"cpu_usage\", above = 80, n = 3, m = 3 }}\n",
            web_target(&server.url("status")),
            toml_path(&rule)
        ),
        &built.with_file_name("vigil-data"),
        tempfile::tempdir().unwrap(),
    );
    let fired = vigil.wait_for("CpuUsageSustained", Duration::from_secs(60), |v| {
        is_alert(v, "firing", "CpuUsageSustained")
    });
    assert_eq!(
        fired["summary"],
        "cpu_usage above 80 in 3 of the last 3 samples"
    );
    // Three high samples before the alert: the window filled up first.
    let before: Vec<_> = vigil
        .seen
        .iter()
        .filter(|v| common::is_evaluation(v, "web-01"))
        .map(|v| v["alerts"].clone())
        .collect();
    assert_eq!(before[..2], [json!([]), json!([])], "{before:?}");

    // Version 2 starts from the window version 1 stored: it reports the
    // alert on its first sample, so the alert neither resolves nor fires again.
    std::fs::write(
        &rule,
        common::new_version(std::fs::read(&built).unwrap(), 1),
    )
    .unwrap();
    let first_v2 = vigil.wait_for("version 2", Duration::from_secs(60), |v| {
        common::is_evaluation(v, "web-01") && v["rule_version"] == 2
    });
    assert_eq!(first_v2["alerts"], json!(["CpuUsageSustained"]));
    vigil.collect_for(Duration::from_millis(300));
    assert_eq!(
        vigil.count(|v| is_alert(v, "firing", "CpuUsageSustained")),
        1
    );
    assert_eq!(
        vigil.count(|v| is_alert(v, "resolved", "CpuUsageSustained")),
        0
    );
}

#[test]
fn a_python_rule_evaluates_real_samples() {
    threshold_evaluates_real_samples(
        Lang::Python,
        "python threshold watching ['cpu_usage', 'memory_usage']",
    );
}

#[test]
fn a_python_rule_keeps_its_window_in_state_across_a_hot_reload() {
    window_survives_a_hot_reload(Lang::Python);
}

#[test]
fn a_js_rule_evaluates_real_samples() {
    threshold_evaluates_real_samples(Lang::Js, "js threshold watching cpu_usage, memory_usage");
}

#[test]
fn a_js_rule_keeps_its_window_in_state_across_a_hot_reload() {
    window_survives_a_hot_reload(Lang::Js);
}
