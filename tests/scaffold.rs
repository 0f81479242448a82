//! `vigil new`: the project it writes for each language builds with that
//! language's own toolchain and passes its own `cases.toml` unchanged, and
//! the same cases fail once an expectation in them is wrong. A missing
//! toolchain fails the test with the command that installs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `vigil new --lang LANG NAME --dir TMP`; returns TMP (delete on drop), the
/// project and what `vigil new` printed.
fn new_project(lang: &str, name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let parent = tempfile::tempdir().unwrap();
    let output = vigil()
        .args(["new", "--lang", lang, name, "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    let project = parent.path().join(name);
    (parent, project, text(&output.stdout))
}

/// Runs one build step in `project`; a missing tool or a failed step fails
/// the test, with `hint` on how to install the toolchain.
fn build(project: &Path, command: &mut Command, hint: &str) {
    command.current_dir(project);
    // What the outer cargo passes to its own builds must not reach the rule's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}\nhint: {hint}"));
    assert!(
        output.status.success(),
        "{command:?} failed\nhint: {hint}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// `vigil test cases.toml` in the project, with the compile cache beside it
/// (so the second run of a Python rule does not compile it again).
fn vigil_test(project: &Path) -> Output {
    vigil()
        .args(["test", "cases.toml", "--data-dir"])
        .arg(project.with_file_name("vigil-data"))
        .current_dir(project)
        .output()
        .unwrap()
}

/// The generated cases pass as written; expecting an alert at a step where
/// the rule raises none makes `vigil test` fail.
fn assert_cases_pass_then_catch_a_wrong_one(project: &Path) {
    let output = vigil_test(project);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout, "ok: 2 expectations over 6 samples of `cases.toml`\n",
        "{stderr}"
    );

    let cases = project.join("cases.toml");
    let good = std::fs::read_to_string(&cases).unwrap();
    // At 3m cpu_usage is 80, which is not above 80.
    let wrong = good.replacen("alerts = []", r#"alerts = ["CpuUsageHigh"]"#, 1);
    assert_ne!(wrong, good, "the cases have an `alerts = []` step");
    std::fs::write(&cases, wrong).unwrap();
    let output = vigil_test(project);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "FAIL step 3 (3m), expected alerts [\"CpuUsageHigh\"]:\n  \
         - CpuUsageHigh   (expected, not firing)\n\
         1 of 2 expectations failed in `cases.toml`\n"
    );
    assert!(stderr.ends_with("error: rule tests failed\n"), "{stderr}");
}

#[test]
fn a_new_rust_rule_builds_and_passes_its_cases() {
    let (_parent, project, printed) = new_project("rust", "disk-full");
    assert!(
        printed.contains(
            "\n  cargo build --release --target wasm32-wasip2\n  vigil test cases.toml\n"
        ),
        "{printed}"
    );
    // A target folder shared across runs, so a rerun compiles only the rule.
    let target_dir = repo().join("target/scaffold-rust");
    build(
        &project,
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", &target_dir),
        "rustup target add wasm32-wasip2 (and crates.io must be reachable)",
    );
    // Put the component where a plain `cargo build` in the project would,
    // which is where cases.toml looks.
    let wasm = "wasm32-wasip2/release/disk_full.wasm";
    let built = target_dir.join(wasm);
    let expected = project.join("target").join(wasm);
    std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
    std::fs::copy(&built, &expected).unwrap();
    assert_cases_pass_then_catch_a_wrong_one(&project);
}

#[test]
fn a_new_python_rule_builds_and_passes_its_cases() {
    let (_parent, project, printed) = new_project("python", "disk-full");
    let args = [
        "-d",
        "wit",
        "-w",
        "rule",
        "componentize",
        "app",
        "-o",
        "disk-full.wasm",
    ];
    let command = format!("componentize-py {}", args.join(" "));
    assert!(printed.contains(&format!("\n  {command}\n")), "{printed}");
    // The pin the project installs is the one this repository builds with.
    let pin = |path: &Path| std::fs::read_to_string(path.join("requirements.txt")).unwrap();
    assert_eq!(pin(&project), pin(&repo().join("plugins/python")));
    build(
        &project,
        Command::new(common::componentize_py()).args(args),
        "python3 -m pip install -r plugins/python/requirements.txt",
    );
    assert_cases_pass_then_catch_a_wrong_one(&project);
}

#[test]
fn a_new_js_rule_builds_and_passes_its_cases() {
    let (_parent, project, printed) = new_project("js", "disk-full");
    assert!(
        printed.contains("\n  npm install\n  npm run build\n"),
        "{printed}"
    );
    // The pin the project installs is the one this repository builds with.
    let pin = |path: &Path| {
        let text = std::fs::read_to_string(path.join("package.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["devDependencies"]["componentize-qjs"].clone()
    };
    assert_eq!(pin(&project), pin(&repo().join("plugins/js")));
    let hint = "install Node.js 20+ and npm";
    // From npm's cache when it has the package, else from the registry.
    build(
        &project,
        Command::new("npm").args(["install", "--prefer-offline", "--no-audit", "--no-fund"]),
        hint,
    );
    build(&project, Command::new("npm").args(["run", "build"]), hint);
    assert_cases_pass_then_catch_a_wrong_one(&project);
}

/// Runs `vigil ARGS` expecting it to refuse: exit status and stderr.
fn refusal(args: &[&str]) -> (Option<i32>, String) {
    let output = vigil().args(args).output().unwrap();
    assert!(output.stdout.is_empty(), "{}", text(&output.stdout));
    (output.status.code(), text(&output.stderr))
}

#[test]
fn refuses_a_folder_that_is_not_empty() {
    let parent = tempfile::tempdir().unwrap();
    let taken = parent.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    let dir = parent.path().to_str().unwrap();
    let (code, stderr) = refusal(&["new", "--lang", "rust", "taken", "--dir", dir]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "error: `{}` already exists and is not empty\n\
             hint: choose another name or --dir, or remove it\n",
            taken.display()
        )
    );
    let left: Vec<_> = std::fs::read_dir(&taken).unwrap().collect();
    assert_eq!(left.len(), 1, "nothing written next to notes.txt");
}

#[test]
fn refuses_a_name_that_is_not_lowercase_words() {
    let (code, stderr) = refusal(&["new", "--lang", "rust", "Disk_Full"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: invalid value 'Disk_Full' for '<NAME>': `Disk_Full` is not a rule name\n\
         hint: use lowercase letters, digits and `-`, starting with a letter, e.g. `disk-full`\n\
         \n\
         For more information, try '--help'.\n"
    );
}

#[test]
fn refuses_an_unknown_language() {
    let (code, stderr) = refusal(&["new", "--lang", "go", "disk-full"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: invalid value 'go' for '--lang <LANG>'\n  \
         [possible values: rust, python, js]\n\
         \n\
         For more information, try '--help'.\n"
    );
}
