//! What many rules from one component cost in memory and start-up time:
//! N rules loaded at once from the same bytes (each its own name, state
//! namespace and instance), with the compiled component shared, as the host
//! loads rules (`plugins::load`), against each rule holding a copy of its
//! own, as the host did before components were shared (`prepare_cached`
//! from the warm disk cache for each rule, then `RuleInstance::start`:
//! exactly the path `Runtime::prepare` took then).
//!
//! A third mode, `load_all`, is how the host loads its rules at start-up
//! now: the same sharing, with each file read and hashed once and the
//! rules instantiated on up to one thread per core.
//!
//! Rules are loaded without their worker threads, so the figures are the
//! instances' and the compiled code's, not the threads' stacks. Each case
//! runs in a child process of its own (this binary again, with the case as
//! arguments), so that one case's freed memory does not hide another's
//! cost; the compile cache is warmed once, before any case, so every case
//! is a restart.
//!
//! Run with `cargo bench --workspace --bench instances`. The Python and
//! JavaScript threshold rules are included when `VIGIL_BENCH_LANG_DIR`
//! (default `target/bench-rules`, as `host/benches/languages.sh` builds
//! them) holds `python.wasm` and `js-qjs.wasm`. Results: `BENCHMARKS.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vigil::config::{RuleSource, RuleSpec, Settings};
use vigil::plugins::{self, builtin};
use vigil::runtime::{CompileCache, RuleInstance, Runtime};
use vigil::state::StateDb;

/// Every rule gets this config: the two thresholds of the classic monitor.
const CONFIG: &str = r#"{"thresholds": {"cpu_usage": 80, "memory_usage": 80}}"#;

/// How the rules get their compiled component.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `plugins::load_all`, as the host loads its rules at start-up: the
    /// file read and hashed once, the component from the disk cache once
    /// and shared, the rules instantiated on up to one thread per core.
    All,
    /// `plugins::load` for each rule in turn, as the host loaded them
    /// before `load_all`: the first from the disk cache, the rest shared,
    /// but the file read and hashed for every rule.
    Shared,
    /// A copy each, from the disk cache.
    Separate,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Separate, Mode::Shared, Mode::All];

    fn name(self) -> &'static str {
        match self {
            Mode::All => "load_all",
            Mode::Shared => "shared",
            Mode::Separate => "separate",
        }
    }

    fn parse(name: &str) -> Mode {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .unwrap_or_else(|| panic!("no mode `{name}`"))
    }
}

/// What one case measured.
struct Figures {
    rss_before_kib: u64,
    rss_after_kib: u64,
    file_after_kib: u64,
    pss_before_kib: u64,
    pss_after_kib: u64,
    took: Duration,
    components: u64,
}

/// `VmRSS` and `RssFile` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("RssFile:"))
}

/// `Pss` of this process, in KiB: resident memory with each page shared by
/// several mappings (a file mapped by every copy of a component, the
/// copy-on-write image of a module's initial memory) divided among them.
fn pss_kib() -> u64 {
    let rollup =
        std::fs::read_to_string("/proc/self/smaps_rollup").expect("/proc/self/smaps_rollup");
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("a Pss line")
}

/// The component `name`: `rust` is the bundled rule, the others are files
/// in the languages folder.
fn component(name: &str) -> Option<(Vec<u8>, PathBuf)> {
    if name == "rust" {
        return Some((builtin::THRESHOLD.wasm.to_vec(), PathBuf::new()));
    }
    let path = lang_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).ok().map(|bytes| (bytes, path))
}

fn lang_dir() -> PathBuf {
    std::env::var_os("VIGIL_BENCH_LANG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-rules"))
}

/// `count` rules named `NAME-i`, all from component `name`.
fn specs(name: &str, path: &Path, count: usize) -> Vec<RuleSpec> {
    let template = Settings::local_default().rules.remove(0);
    (0..count)
        .map(|i| RuleSpec {
            name: format!("{name}-{i}").as_str().into(),
            source: if name == "rust" {
                template.source.clone()
            } else {
                RuleSource::File(path.to_path_buf())
            },
            config_json: CONFIG.into(),
            ..template.clone()
        })
        .collect()
}

/// Loads `count` rules from component `name` with `mode`, keeping them all
/// alive, and measures.
fn run_case(name: &str, mode: Mode, count: usize, cache_dir: &Path) -> Figures {
    let (bytes, path) = component(name).expect("the component");
    let runtime = Runtime::new()
        .expect("runtime")
        .with_compile_cache(CompileCache::new(cache_dir));
    let state = StateDb::in_memory().expect("state db");
    let specs = specs(name, &path, count);
    let (rss_before_kib, _) = rss_kib();
    let pss_before_kib = pss_kib();
    let started = Instant::now();
    let mut held: Vec<RuleInstance> = Vec::with_capacity(count);
    if mode == Mode::All {
        for loaded in plugins::load_all(&runtime, &state, &specs) {
            held.push(loaded.expect("loading").instance);
        }
    }
    for spec in specs.iter().filter(|_| mode != Mode::All) {
        let instance = match mode {
            Mode::Shared => {
                plugins::load(&runtime, &state, spec)
                    .expect("loading")
                    .instance
            }
            Mode::All => unreachable!("loaded above"),
            Mode::Separate => {
                let prepared = runtime
                    .prepare_cached(&bytes, runtime.compile_cache())
                    .expect("loading from the cache");
                let rule_state = state.rule(&spec.name).expect("rule state");
                RuleInstance::start(
                    &runtime,
                    &spec.name,
                    prepared,
                    spec.config_json.clone(),
                    spec.limits,
                    rule_state,
                )
                .expect("starting")
                .0
            }
        };
        held.push(instance);
    }
    let took = started.elapsed();
    let (rss_after_kib, file_after_kib) = rss_kib();
    let pss_after_kib = pss_kib();
    let components = runtime.components_in_memory();
    drop(held);
    Figures {
        rss_before_kib,
        rss_after_kib,
        file_after_kib,
        pss_before_kib,
        pss_after_kib,
        took,
        components,
    }
}

/// Runs one case in a child process and returns its line.
fn child(name: &str, mode: Mode, count: usize, cache_dir: &Path) -> String {
    let output = Command::new(std::env::current_exe().expect("this bench"))
        .args(["--case", name, mode.name(), &count.to_string()])
        .arg(cache_dir)
        .output()
        .expect("running a case");
    assert!(
        output.status.success(),
        "case {name} {} {count} failed:\n{}",
        mode.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--case") {
        let mode = Mode::parse(&args[2]);
        let count: usize = args[3].parse().expect("a count");
        let f = run_case(&args[1], mode, count, Path::new(&args[4]));
        let added = f.rss_after_kib.saturating_sub(f.rss_before_kib);
        let pss_added = f.pss_after_kib.saturating_sub(f.pss_before_kib);
        println!(
            "{:<8} {:<9} {:>5} rules  RSS {:>8} -> {:>8} KiB (+{:>8} KiB, file-backed now {:>7} KiB)  {:>7.1} KiB/rule  PSS +{:>8} KiB {:>7.1} KiB/rule  load {:>9.1?}  components in memory {}",
            args[1],
            mode.name(),
            count,
            f.rss_before_kib,
            f.rss_after_kib,
            added,
            f.file_after_kib,
            added as f64 / count as f64,
            pss_added,
            pss_added as f64 / count as f64,
            f.took,
            f.components,
        );
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is taken.
    let cache = tempfile::tempdir().expect("tempdir");
    let cache_dir = cache.path().join("cache");
    let mut cases: Vec<(&str, usize)> = vec![("rust", 1000), ("rust", 100)];
    for lang in ["python", "js-qjs"] {
        if component(lang).is_some() {
            cases.push((lang, 100));
        } else {
            println!(
                "{lang}: not in {} (run host/benches/languages.sh to build it); skipped",
                lang_dir().display()
            );
        }
    }
    // Warm the disk cache: every case is a restart.
    let runtime = Runtime::new()
        .expect("runtime")
        .with_compile_cache(CompileCache::new(&cache_dir));
    for (name, _) in &cases {
        let (bytes, _) = component(name).expect("the component");
        runtime.prepare(&bytes).expect("compiling");
    }
    drop(runtime);
    for (name, count) in cases {
        for mode in Mode::ALL {
            print!("{}", child(name, mode, count, &cache_dir));
        }
    }
}
