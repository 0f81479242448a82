//! The command line: the embedded default works with no config, and a host
//! that cannot be fully configured refuses to start, saying why.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Vigil, fixture, is_alert, toml_path};

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

#[test]
fn with_no_config_it_watches_this_machine_within_10s() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = vigil()
        .arg("run")
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("an evaluation line within 10s");
    assert!(
        line.contains(" eval     local/threshold up: cpu_usage="),
        "{line}"
    );
    assert!(line.contains(" memory_usage="), "{line}");
    assert!(line.contains(" disk_used_percent{mount=/}="), "{line}");
}

#[test]
fn low_thresholds_on_this_machine_fire() {
    let mut vigil = Vigil::start(
        r#"
[[targets]]
name = "this-host"
kind = "local"
interval = "1s"

[[rules]]
builtin = "threshold"
config = { thresholds = { memory_usage = 0.001, load1 = { below = 1e9, severity = "info" } } }
"#,
    );
    let fired = vigil.wait_for("MemoryUsageHigh", Duration::from_secs(10), |v| {
        is_alert(v, "firing", "MemoryUsageHigh")
    });
    assert_eq!(fired["target"], "this-host");
    assert_eq!(
        fired["summary"].as_str().unwrap().split(" is ").next(),
        Some("memory_usage")
    );
    // Both alerts come from the same first sample; the order between them is
    // not part of the contract.
    vigil.collect_for(Duration::from_millis(100));
    let load: Vec<_> = vigil
        .seen
        .iter()
        .filter(|v| is_alert(v, "firing", "Load1Low"))
        .collect();
    assert_eq!(load.len(), 1, "Load1Low fires once");
    assert_eq!(load[0]["severity"], "info");
}

/// Runs `vigil run` with this config and expects it to refuse to start;
/// returns stderr.
fn refused(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = vigil()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vigil started with a config it should refuse:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "nothing may run: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    stderr.replace(&path.display().to_string(), "vigil.toml")
}

const TARGET: &str = "[[targets]]\nname = \"me\"\nkind = \"local\"\n";

#[test]
fn broken_configs_are_refused_with_file_line_and_reason() {
    let stderr = refused(
        "[[targets]]\nname = \"web\"\nkind = \"http-json\"\nurl = \"http://x/status\"\ninterval = 5\n",
    );
    assert!(
        stderr.contains("error: vigil.toml: TOML parse error at line 5"),
        "{stderr}"
    );
    assert!(
        stderr.contains("invalid type: integer `5`, expected a string"),
        "{stderr}"
    );

    let stderr = refused(&format!(
        "{TARGET}\n[[targets]]\nname = \"api\"\nkind = \"http-json\"\n"
    ));
    assert!(
        stderr.contains("error: vigil.toml:5: target `api`: kind `http-json` needs a `url`"),
        "{stderr}"
    );

    let stderr = refused("[[targets]\nname = 1");
    assert!(stderr.contains("TOML parse error at line 1"), "{stderr}");

    let stderr = refused(&format!("{TARGET}\n[[rules]]\npath = \"missing.wasm\"\n"));
    assert!(stderr.contains("rule `missing`"), "{stderr}");
    assert!(stderr.contains("declared at vigil.toml:5"), "{stderr}");
    assert!(
        stderr.contains("cannot read the file: No such file or directory"),
        "{stderr}"
    );
}

fn refused_rule(file: &Path) -> String {
    refused(&format!(
        "{TARGET}\n[[rules]]\nname = \"bad\"\npath = \"{}\"\n",
        toml_path(file)
    ))
}

#[test]
fn invalid_rule_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let threshold = std::fs::read(fixture("vigil_threshold")).unwrap();

    let cases = [
        (
            write("text.wasm", b"#!/bin/sh\nrm -rf /\n"),
            "not a WebAssembly file",
        ),
        (
            write("random.wasm", &random_bytes(4096)),
            "not a WebAssembly file",
        ),
        (
            // Random bytes behind a valid component header.
            write(
                "noise.wasm",
                &[&b"\0asm\x0d\0\x01\0"[..], &random_bytes(4096)].concat(),
            ),
            "not a valid component: ",
        ),
        (
            // The smallest valid core module: magic and version 1.
            write("core.wasm", b"\0asm\x01\0\0\0"),
            "a core WebAssembly module, not a component\nhint: build for `wasm32-wasip2`",
        ),
        (
            write("truncated.wasm", &threshold[..threshold.len() / 2]),
            "not a valid component: ",
        ),
        (
            fixture("fixture_wrong_version"),
            "built for `vigil:rules/host@0.1.0`, but this host serves `vigil:rules@0.3.0`",
        ),
        (fixture("fixture_no_evaluate"), "does not export `evaluate`"),
    ];
    for (file, reason) in &cases {
        let stderr = refused_rule(file);
        let expected = format!(
            "rule `bad` ({}, declared at vigil.toml:5): {reason}",
            file.display()
        );
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn a_rule_that_refuses_its_config_is_refused() {
    let stderr = refused(&format!(
        "{TARGET}\n[[rules]]\nbuiltin = \"threshold\"\nconfig = {{ thresholds = {{ cpu_usage = \"high\" }} }}\n"
    ));
    assert!(
        stderr.contains(
            "rule `threshold` (builtin:threshold, declared at vigil.toml:5): `configure` refused its config: \
             threshold `cpu_usage`: expected a number (the upper limit) or a table with `above` and/or `below`"
        ),
        "{stderr}"
    );
}

#[test]
fn a_rule_that_loops_in_configure_is_refused_at_its_deadline() {
    let stderr = refused(&format!(
        "{TARGET}\n[[rules]]\nname = \"stuck\"\npath = \"{}\"\nconfig = {{ attack = \"configure-loop\" }}\ninit_timeout = \"300ms\"\n",
        toml_path(&fixture("fixture_hostile"))
    ));
    assert!(
        stderr.contains("rule `stuck` (")
            && stderr.contains(
                "`configure` failed: timeout: exceeded its 300ms deadline (raise `init_timeout`)"
            ),
        "{stderr}"
    );
}

/// Deterministic noise (xorshift), so a failure reproduces.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn check_reports_a_good_rule_and_refuses_a_bad_one() {
    let run = |args: &[&str]| {
        let output = vigil().arg("check").args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    };
    let good = fixture("fixture_counter");
    let (code, stdout, _) = run(&[good.to_str().unwrap()]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(": ok, a rule for vigil:rules@0.3.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rule        counter 0.1.0: counts samples in durable state"),
        "{stdout}"
    );
    assert!(stdout.contains("subscribes  every metric"), "{stdout}");
    assert!(
        stdout.contains("vigil:rules/host@0.3.0"),
        "imports are listed:\n{stdout}"
    );

    let wrong = fixture("fixture_wrong_version");
    let (code, stdout, stderr) = run(&[wrong.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(
            "built for `vigil:rules/host@0.1.0`, but this host serves `vigil:rules@0.3.0`"
        ),
        "{stderr}"
    );

    let threshold = fixture("vigil_threshold");
    let (code, _, stderr) = run(&[
        threshold.to_str().unwrap(),
        "--config",
        r#"{"thresholds": {"x": "y"}}"#,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("`configure` refused its config: threshold `x`"),
        "{stderr}"
    );
}

#[test]
fn test_replays_a_case_file_and_shows_a_diff_when_it_fails() {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/threshold/tests/cases.toml");
    let data = tempfile::tempdir().unwrap();
    let test = |cases: &Path| {
        vigil()
            .arg("test")
            .arg(cases)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let output = test(&cases);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("ok: 4 expectations over 9 samples"),
        "{stdout}"
    );
    // The rule was compiled into the data directory's cache, which the
    // next run (and `vigil run`) loads it from.
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("compiled=\"now\""), "{stderr}");
    assert!(
        data.path()
            .join("cache")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
    );

    // The same cases, expecting CpuUsageHigh one minute too early.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("cases.toml");
    let text = std::fs::read_to_string(&cases).unwrap().replace(
        "at = \"5m\"                              # above 80 since 4m: pending, `for` is 2m\nalerts = [\"DiskUsedPercentHigh\"]",
        "at = \"5m\"\nalerts = [\"CpuUsageHigh\", \"DiskUsedPercentHigh\"]",
    );
    std::fs::write(&broken, text).unwrap();
    let output = test(&broken);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("compiled=\"from cache\""), "{stderr}");
    assert!(
        stdout.contains("FAIL step 5 (5m)")
            && stdout.contains("  - CpuUsageHigh   (expected, not firing)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 of 4 expectations failed"), "{stdout}");
}
