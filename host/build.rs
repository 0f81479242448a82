//! Builds the guest rules in `plugins/` (the default `threshold` rule and the
//! test fixtures) as wasm32-wasip2 components, so that no binary is ever
//! committed and a fresh clone needs no manual step.
//!
//! The components land in `target/wasm-rules/wasm32-wasip2/rule/`; the path is
//! passed to the crate (and its tests and benches) as `VIGIL_RULES_DIR`. The
//! nested cargo uses its own target directory so it never waits on the lock
//! of the build that runs this script.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";
const GUEST_PACKAGES: [&str; 15] = [
    "vigil-threshold",
    "fixture-remediate",
    "fixture-counter",
    "fixture-cpu-hot",
    "fixture-hostile",
    "fixture-spin",
    "fixture-hog",
    "fixture-wrong-version",
    "fixture-no-evaluate",
    "fixture-http-client",
    "fixture-churn",
    "fixture-nosy",
    "fixture-global-counter",
    "fixture-boundary",
    "fixture-boundary-arena",
];

fn main() {
    let host_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = host_dir.parent().expect("host/ sits in the workspace root");
    for watched in ["plugins", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    check_target_installed();

    let target_root = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("wasm-rules");
    build_guests(root, &target_dir);

    let rules_dir = target_dir.join(WASM_TARGET).join("rule");
    for package in GUEST_PACKAGES {
        let file = rules_dir.join(format!("{}.wasm", package.replace('-', "_")));
        assert!(
            file.exists(),
            "the guest build did not produce {}",
            file.display()
        );
    }
    println!("cargo:rustc-env=VIGIL_RULES_DIR={}", rules_dir.display());
}

fn cargo() -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // What the outer build passes to rustc (flags, clippy's wrapper, its
    // target) must not leak into the guest build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    command
}

fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc runs");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout);
    let target_lib = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(WASM_TARGET);
    if !target_lib.exists() {
        panic!(
            "the `{WASM_TARGET}` Rust target is not installed, and Vigil's bundled rules need it\n\
             hint: run `rustup target add {WASM_TARGET}`"
        );
    }
}

fn build_guests(root: &Path, target_dir: &Path) {
    let mut command = cargo();
    command
        .current_dir(root)
        .args(["build", "--profile", "rule", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for package in GUEST_PACKAGES {
        command.args(["-p", package]);
    }
    let output = command.output().expect("cargo runs");
    if !output.status.success() {
        panic!(
            "building the guest rules in plugins/ failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
