//! Trust (issue 14): a rule file pinned by sha256 or required to carry a
//! minisign signature from a trusted key loads only when it passes, at start
//! and on every hot reload, and a refused reload leaves the old version
//! serving with the reason where operators look.
//!
//! Keys and signatures come from the real `minisign` tool (Debian's
//! `minisign` package, installed by `.ci/run`), and `vigil keygen` / `vigil
//! sign` are checked against it both ways. Every key is made in a temporary
//! folder at test time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Behavior, StatusServer, Vigil, fixture, is_evaluation, toml_path, web_target};
use serde_json::json;
use vigil::hash::Sha256;

/// The bundled rule with a custom section: the same behaviour, another
/// build (another hash).
fn build(tag: u32) -> Vec<u8> {
    common::new_version(std::fs::read(fixture("vigil_threshold")).unwrap(), tag)
}

/// Runs a program to completion; `what` names it in failures.
fn run(mut command: Command) -> Output {
    command
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

/// The `minisign` tool. A machine without it fails here, loudly, with the
/// package that provides it: these tests are about interoperating with it.
fn minisign() -> Command {
    let found = Command::new("minisign")
        .arg("-v")
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        found,
        "the `minisign` tool is missing: install the Debian package `minisign` (`apt-get install minisign`; .ci/run does)"
    );
    Command::new("minisign")
}

fn vigil_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

/// A key pair's files.
struct Keys {
    public: PathBuf,
    secret: PathBuf,
}

/// `minisign -G` without a password (`-W`): a key pair in `dir`.
fn minisign_keys(dir: &Path, name: &str) -> Keys {
    let keys = Keys {
        public: dir.join(format!("{name}.pub")),
        secret: dir.join(format!("{name}.key")),
    };
    let mut command = minisign();
    command
        .args(["-G", "-W", "-p"])
        .arg(&keys.public)
        .arg("-s")
        .arg(&keys.secret);
    let output = run(command);
    assert!(output.status.success(), "minisign -G: {output:?}");
    keys
}

/// `minisign -S`: signs `file` into `file.minisig` with this trusted comment.
fn minisign_sign(keys: &Keys, file: &Path, comment: &str) {
    let mut command = minisign();
    command
        .arg("-S")
        .arg("-s")
        .arg(&keys.secret)
        .arg("-m")
        .arg(file)
        .args(["-t", comment]);
    let output = run(command);
    assert!(output.status.success(), "minisign -S: {output:?}");
}

/// `minisign -V`: whether `file` verifies with `public`, and what it printed.
fn minisign_verify(public: &Path, file: &Path) -> (bool, String) {
    let mut command = minisign();
    command.arg("-V").arg("-p").arg(public).arg("-m").arg(file);
    let output = run(command);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn signature_of(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", file.display()))
}

/// A folder with a rules folder, the operator's key (`ops`) and a stranger's.
struct Workspace {
    dir: tempfile::TempDir,
    rules: PathBuf,
    ops: Keys,
    stranger: Keys,
}

fn workspace() -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let ops = minisign_keys(dir.path(), "ops");
    let stranger = minisign_keys(dir.path(), "stranger");
    Workspace {
        dir,
        rules,
        ops,
        stranger,
    }
}

/// A config polling `server` every 20 ms with rule `threshold` from `rule`
/// (`rule_extra` in its table), trusting `ops`'s key.
fn config(server: &StatusServer, keys: &Keys, rule: &Path, rule_extra: &str) -> String {
    let target = web_target(&server.url("status")).replace("\"100ms\"", "\"20ms\"");
    format!(
        "[trust]\nkeys = [\"{}\"]\n\n{target}\n[[rules]]\nname = \"threshold\"\npath = \"{}\"\n{rule_extra}\n",
        toml_path(&keys.public),
        toml_path(rule)
    )
}

fn status_server() -> StatusServer {
    let server = StatusServer::start();
    server.set("status", Behavior::json(json!({"cpu_usage": 50})));
    server
}

/// Waits for an evaluation by `rule` at `version`.
fn wait_serving(vigil: &mut Vigil, rule: &str, version: u64) {
    vigil.wait_for(
        &format!("an evaluation by {rule} version {version}"),
        Duration::from_secs(20),
        |v| is_evaluation(v, "web-01") && v["rule"] == rule && v["rule_version"] == version,
    );
}

/// Reads output until the log says `what` (then returns the log).
fn wait_log(vigil: &mut Vigil, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = vigil.stderr();
        if log.contains(what) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the log never said {what:?}:\n{log}"
        );
        vigil.collect_for(Duration::from_millis(20));
    }
}

/// After a refusal: the rule goes on evaluating, and only at `version`.
fn still_serving(vigil: &mut Vigil, rule: &str, version: u64) {
    let before = vigil.seen.len();
    wait_serving(vigil, rule, version);
    vigil.collect_for(Duration::from_millis(200));
    let versions: Vec<u64> = vigil.seen[before..]
        .iter()
        .filter(|v| is_evaluation(v, "web-01") && v["rule"] == rule)
        .map(|v| v["rule_version"].as_u64().unwrap())
        .collect();
    assert!(
        !versions.is_empty() && versions.iter().all(|&v| v == version),
        "{versions:?}"
    );
}

/// Starts vigil on `config` and expects it to refuse to start; returns its
/// log.
fn refused_at_start(config: &str) -> String {
    let mut vigil = Vigil::start(config);
    let status = vigil.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "vigil started:\n{}", vigil.stderr());
    // The exit can come before the thread reading stderr has read the last
    // lines: wait for the error `main` prints last, and then until nothing
    // more arrives (its `hint:` lines can come in a later read).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    loop {
        let log = vigil.stderr();
        if (log.contains("error: ") && log == seen) || Instant::now() > deadline {
            return log;
        }
        seen = log;
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rule_signed_by_a_trusted_minisign_key_loads_and_its_trusted_comment_is_logged() {
    let ws = workspace();
    let rule = ws.rules.join("threshold.wasm");
    std::fs::write(&rule, build(0)).unwrap();
    minisign_sign(&ws.ops, &rule, "release 7 by ci");
    let server = status_server();
    let mut vigil = Vigil::start(&config(&server, &ws.ops, &rule, "require_signature = true"));
    wait_serving(&mut vigil, "threshold", 1);
    let log = wait_log(&mut vigil, "Rule signature verified.");
    let line = log
        .lines()
        .find(|line| line.contains("Rule signature verified."))
        .unwrap();
    assert!(
        line.contains("rule=threshold") && line.contains("trusted_comment=release 7 by ci"),
        "{line}"
    );
    assert!(line.contains("ops.pub"), "{line}");
}

#[test]
fn a_tampered_file_a_stranger_s_key_or_no_signature_refuses_the_start_with_the_reason() {
    let ws = workspace();
    let server = status_server();
    let rule = ws.rules.join("threshold.wasm");
    let sig = signature_of(&rule);
    // Each case leaves the rule and its signature as the case says.
    let cases: [(&str, &dyn Fn()); 3] = [
        (
            "does not match the file: the file or its signature changed after signing",
            &|| {
                std::fs::write(&rule, build(0)).unwrap();
                minisign_sign(&ws.ops, &rule, "release 1");
                std::fs::write(&rule, build(1)).unwrap();
            },
        ),
        ("was made by a key that is not trusted", &|| {
            std::fs::write(&rule, build(0)).unwrap();
            minisign_sign(&ws.stranger, &rule, "release 1");
        }),
        ("it is not signed", &|| {
            std::fs::write(&rule, build(0)).unwrap();
            let _ = std::fs::remove_file(&sig);
        }),
    ];
    for (reason, prepare) in cases {
        prepare();
        let log = refused_at_start(&config(&server, &ws.ops, &rule, "require_signature = true"));
        // The rule, its file, the reason, and a hint.
        let expected = format!("rule `threshold` ({}, declared at ", rule.display());
        assert!(log.contains(&expected), "{log}");
        assert!(log.contains(reason), "{reason}:\n{log}");
        assert!(log.contains(&format!("`{}`", sig.display())), "{log}");
        assert!(log.contains("\nhint: "), "{log}");
    }
    // The control: the same setup with a good signature starts.
    std::fs::write(&rule, build(0)).unwrap();
    minisign_sign(&ws.ops, &rule, "release 1");
    let mut vigil = Vigil::start(&config(&server, &ws.ops, &rule, "require_signature = true"));
    wait_serving(&mut vigil, "threshold", 1);
}

#[test]
fn a_tampered_hot_reload_keeps_the_old_version_and_a_new_signature_is_checked_again() {
    let ws = workspace();
    let server = status_server();
    let rule = ws.rules.join("threshold.wasm");
    std::fs::write(&rule, build(0)).unwrap();
    minisign_sign(&ws.ops, &rule, "release 1");
    let mut vigil = Vigil::start(&config(&server, &ws.ops, &rule, "require_signature = true"));
    wait_serving(&mut vigil, "threshold", 1);

    // New bytes under the old signature: refused, and version 1 serves on.
    std::fs::write(&rule, build(1)).unwrap();
    let log = wait_log(&mut vigil, "Rule reload refused");
    let refusal = log
        .lines()
        .find(|line| line.contains("Rule reload refused"))
        .unwrap();
    assert!(
        refusal.contains("does not match the file") && refusal.contains("rule=threshold"),
        "{refusal}"
    );
    still_serving(&mut vigil, "threshold", 1);

    // A stranger's signature for the new bytes: refused as well.
    minisign_sign(&ws.stranger, &rule, "release 2");
    wait_log(&mut vigil, "was made by a key that is not trusted");
    still_serving(&mut vigil, "threshold", 1);

    // The operator's signature arrives after the file: the change of
    // signature alone makes the reloader check again, and version 2 loads.
    minisign_sign(&ws.ops, &rule, "release 2");
    wait_serving(&mut vigil, "threshold", 2);
    wait_log(&mut vigil, "trusted_comment=release 2");
}

#[test]
fn a_sha256_pin_loads_its_build_and_refuses_any_other_at_start_and_on_reload() {
    let ws = workspace();
    let server = status_server();
    let rule = ws.rules.join("threshold.wasm");
    std::fs::write(&rule, build(0)).unwrap();
    let (pin, other) = (Sha256::of(&build(0)), Sha256::of(&build(1)));

    // A pin for another build refuses the start, naming both hashes.
    let log = refused_at_start(&config(
        &server,
        &ws.ops,
        &rule,
        &format!("sha256 = \"{other}\""),
    ));
    assert!(
        log.contains(&format!(
            "rule `threshold` ({}, declared at ",
            rule.display()
        )) && log.contains(&format!("its sha256 is {pin}, but the config pins {other}"))
            && log.contains(&format!(
                "hint: if this build is the one to run, pin it: sha256 = \"{pin}\""
            )),
        "{log}"
    );

    // The pinned build loads; no signature is asked for.
    let mut vigil = Vigil::start(&config(
        &server,
        &ws.ops,
        &rule,
        &format!("sha256 = \"{pin}\""),
    ));
    wait_serving(&mut vigil, "threshold", 1);
    // Another build on reload is refused, and the pinned one serves on.
    std::fs::write(&rule, build(1)).unwrap();
    let log = wait_log(&mut vigil, "Rule reload refused");
    assert!(
        log.contains(&format!("its sha256 is {other}, but the config pins {pin}")),
        "{log}"
    );
    still_serving(&mut vigil, "threshold", 1);
    // Putting the pinned bytes back is not a new version.
    std::fs::write(&rule, build(0)).unwrap();
    still_serving(&mut vigil, "threshold", 1);
}

#[test]
fn a_rules_folder_that_requires_signatures_loads_a_new_file_once_its_signature_arrives() {
    let ws = workspace();
    let server = status_server();
    let signed = ws.rules.join("signed.wasm");
    std::fs::write(&signed, build(0)).unwrap();
    minisign_sign(&ws.ops, &signed, "signed");
    // At start, an unsigned file in the folder refuses the start.
    let unsigned = ws.rules.join("late.wasm");
    std::fs::write(&unsigned, build(1)).unwrap();
    let target = web_target(&server.url("status")).replace("\"100ms\"", "\"20ms\"");
    let text = format!(
        "[trust]\nkeys = [\"{}\"]\nrequire_signature = true\n\n{target}\n[[rules]]\ndir = \"{}\"\n",
        toml_path(&ws.ops.public),
        toml_path(&ws.rules)
    );
    let log = refused_at_start(&text);
    assert!(
        log.contains("rule `late`") && log.contains("it is not signed"),
        "{log}"
    );

    std::fs::remove_file(&unsigned).unwrap();
    let mut vigil = Vigil::start(&text);
    wait_serving(&mut vigil, "signed", 1);
    // A new file without its signature is refused...
    std::fs::write(&unsigned, build(1)).unwrap();
    let log = wait_log(&mut vigil, "Rule reload refused");
    assert!(
        log.lines()
            .any(|line| line.contains("rule=late") && line.contains("it is not signed")),
        "{log}"
    );
    vigil.collect_for(Duration::from_millis(300));
    assert!(
        !vigil.seen.iter().any(|v| v["rule"] == "late"),
        "an unsigned rule evaluated"
    );
    // ...and loads when its signature is deployed beside it.
    minisign_sign(&ws.ops, &unsigned, "late");
    wait_serving(&mut vigil, "late", 1);
}

#[test]
fn vigil_sign_makes_signatures_minisign_verifies_and_signs_with_minisign_keys() {
    let ws = workspace();
    let dir = ws.dir.path();
    let rule = ws.rules.join("threshold.wasm");
    std::fs::write(&rule, build(0)).unwrap();

    // vigil keygen + vigil sign, verified by minisign -V.
    let (public, secret) = (dir.join("vigil.pub"), dir.join("vigil.key"));
    let mut keygen = vigil_command();
    keygen
        .args(["keygen", "--without-password", "--public-key"])
        .arg(&public)
        .arg("--secret-key")
        .arg(&secret);
    let output = run(keygen);
    assert!(output.status.success(), "vigil keygen: {output:?}");
    let sign = |secret: &Path, comment: &str| {
        let mut command = vigil_command();
        command
            .args(["sign", "--secret-key"])
            .arg(secret)
            .args(["--trusted-comment", comment])
            .arg(&rule);
        let output = run(command);
        assert!(output.status.success(), "vigil sign: {output:?}");
    };
    sign(&secret, "made by vigil sign");
    let (verified, text) = minisign_verify(&public, &rule);
    assert!(verified, "{text}");
    assert!(
        text.contains("Trusted comment: made by vigil sign"),
        "{text}"
    );
    // The same check fails on other bytes: it is a real verification.
    let copy = dir.join("copy.wasm");
    std::fs::write(&copy, build(1)).unwrap();
    std::fs::copy(signature_of(&rule), signature_of(&copy)).unwrap();
    let (verified, text) = minisign_verify(&public, &copy);
    assert!(!verified, "{text}");

    // minisign signs with a key vigil made.
    minisign_sign(
        &Keys {
            public: public.clone(),
            secret: secret.clone(),
        },
        &rule,
        "minisign with vigil's key",
    );
    assert!(minisign_verify(&public, &rule).0);

    // vigil sign signs with a key minisign made, and the host accepts it.
    sign(&ws.ops.secret, "vigil sign with minisign's key");
    let (verified, text) = minisign_verify(&ws.ops.public, &rule);
    assert!(verified, "{text}");
    let server = status_server();
    let mut vigil = Vigil::start(&config(&server, &ws.ops, &rule, "require_signature = true"));
    wait_serving(&mut vigil, "threshold", 1);
    wait_log(&mut vigil, "trusted_comment=vigil sign with minisign's key");
}

/// The reloader's status board, in-process: a refused reload is its last
/// error while the old version serves, and a renewed signature for the
/// same bytes is recorded without a new version.
#[test]
fn the_status_board_shows_the_refusal_and_the_signer() {
    use vigil::app::App;
    use vigil::config::Settings;
    use vigil::plugins::reload::{RuleStatus, StatusBoard};
    use vigil::sinks::Delivery;
    use vigil::state::DataDir;

    let ws = workspace();
    let rule = ws.rules.join("threshold.wasm");
    std::fs::write(&rule, build(0)).unwrap();
    minisign_sign(&ws.ops, &rule, "release 1");
    let config_path = ws.dir.path().join("vigil.toml");
    let text = "[trust]\nkeys = [\"ops.pub\"]\nrequire_signature = true\n\n[[targets]]\nname = \"here\"\nkind = \"local\"\ninterval = \"1h\"\n\n[[rules]]\nname = \"threshold\"\npath = \"rules/threshold.wasm\"\n";
    let settings = Settings::parse(text, &config_path).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = ws.dir.path().join("data");
    let app = runtime
        .block_on(App::build(settings, &DataDir::new(&data), Delivery::new()))
        .unwrap();
    let board = app.status();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(app.run(async {
        let _ = stopped.await;
    }));

    let wait = |what: &str, done: &dyn Fn(&RuleStatus) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = board_status(&board);
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "no {what}: {status:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    fn board_status(board: &StatusBoard) -> RuleStatus {
        board
            .snapshot()
            .get("threshold")
            .cloned()
            .unwrap_or_default()
    }

    let first = wait("version 1", &|s| s.version == 1);
    let signer = first.signer.clone().unwrap();
    assert_eq!(signer.key, ws.dir.path().join("ops.pub"));
    assert_eq!(signer.trusted_comment, "release 1");

    std::fs::write(&rule, build(1)).unwrap();
    let refused = wait("a refusal", &|s| s.last_error.is_some());
    assert_eq!(refused.version, 1);
    assert_eq!(refused.hash, first.hash);
    let reason = refused.last_error.unwrap();
    assert!(
        reason.starts_with(&format!(
            "`{}` does not match the file",
            signature_of(&rule).display()
        )),
        "{reason}"
    );

    // The old bytes come back with a new signature: no new version, the new
    // signer recorded, the error cleared.
    std::fs::write(&rule, build(0)).unwrap();
    minisign_sign(&ws.ops, &rule, "release 1, signed again");
    let renewed = wait("the new signature", &|s| {
        s.signer
            .as_ref()
            .is_some_and(|signer| signer.trusted_comment == "release 1, signed again")
    });
    assert_eq!((renewed.version, renewed.last_error), (1, None));

    // A stranger's signature for the same bytes is refused; the version
    // serving and its recorded signer stay.
    minisign_sign(&ws.stranger, &rule, "not ours");
    let refused = wait("the stranger's signature refused", &|s| {
        s.last_error.is_some()
    });
    assert!(
        refused
            .last_error
            .as_deref()
            .is_some_and(|reason| reason.contains("was made by a key that is not trusted")),
        "{refused:?}"
    );
    assert_eq!(refused.version, 1);
    assert_eq!(refused.signer, renewed.signer);

    let _ = stop.send(());
    runtime.block_on(task).unwrap().unwrap();
}

/// A host whose operator requires tenant `pay`'s rules to be signed; the
/// tenant's file trusts `pay.pub` (made here, with the stranger's key as
/// the one it does not trust) and runs `tenants.d/rules/threshold.wasm`.
fn tenant_config(ws: &Workspace, server: &StatusServer) -> (String, PathBuf) {
    let tenants = ws.dir.path().join("tenants.d");
    std::fs::create_dir_all(tenants.join("rules")).unwrap();
    let pay = minisign_keys(&tenants, "pay");
    let rule = tenants.join("rules/threshold.wasm");
    std::fs::write(&rule, build(0)).unwrap();
    minisign_sign(&pay, &rule, "pay release 1");
    std::fs::write(
        tenants.join("pay.toml"),
        "[trust]\nkeys = [\"pay.pub\"]\n\n[[rules]]\nname = \"threshold\"\npath = \"rules/threshold.wasm\"\n",
    )
    .unwrap();
    let target = web_target(&server.url("status")).replace("\"100ms\"", "\"20ms\"");
    let config = format!(
        "{target}\n[[tenants]]\nname = \"pay\"\nfile = \"{}\"\ntargets = [\"*\"]\nrequire_signature = true\n",
        toml_path(&tenants.join("pay.toml"))
    );
    (config, rule)
}

#[test]
fn a_tenants_rules_carry_a_signature_by_a_key_the_tenant_trusts() {
    let ws = workspace();
    let server = status_server();
    let (config, rule) = tenant_config(&ws, &server);
    let mut vigil = Vigil::start(&config);
    wait_serving(&mut vigil, "pay/threshold", 1);
    let log = wait_log(&mut vigil, "Rule signature verified.");
    assert!(log.contains("pay.pub"), "{log}");

    // Signed by a key the operator or another tenant may trust, but not
    // this tenant: refused on reload, the signed version serves on.
    std::fs::write(&rule, build(1)).unwrap();
    minisign_sign(&ws.stranger, &rule, "not pay's");
    wait_log(&mut vigil, "was made by a key that is not trusted");
    still_serving(&mut vigil, "pay/threshold", 1);

    // The tenant cannot switch the requirement off.
    let file = ws.dir.path().join("tenants.d/pay.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}require_signature = false\n")).unwrap();
    wait_log(
        &mut vigil,
        "require_signature = false, but the operator requires every rule of this tenant to be signed",
    );
    still_serving(&mut vigil, "pay/threshold", 1);
}

#[test]
fn a_tenants_unsigned_rule_does_not_stop_the_host() {
    let ws = workspace();
    let server = status_server();
    let (config, rule) = tenant_config(&ws, &server);
    std::fs::remove_file(signature_of(&rule)).unwrap();
    let mut vigil = Vigil::start(&config);
    wait_log(&mut vigil, "it is not signed");
    assert!(vigil.is_running(), "{}", vigil.stderr());
    // The tenant signs it: it loads without a restart.
    let pay = Keys {
        public: ws.dir.path().join("tenants.d/pay.pub"),
        secret: ws.dir.path().join("tenants.d/pay.key"),
    };
    minisign_sign(&pay, &rule, "pay release 2");
    wait_serving(&mut vigil, "pay/threshold", 1);
}
