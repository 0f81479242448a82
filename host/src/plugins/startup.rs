//! Loading every configured rule at start-up, as fast as the machine allows.
//!
//! [`load`](super::load) one rule after another paid, for each rule, a read
//! of its file and a sha256 of it: 18 MB and ~10 ms for a Python rule, three
//! quarters of the start-up with 100 rules from one component
//! (`BENCHMARKS.md`, "Start-up with 100 Python rules"), while instantiating
//! and configuring each from the shared compiled component took ~1 ms.
//! [`load_all`] reads and hashes each file once, however many rules use it,
//! and loads on up to one thread per core.
//!
//! Guarantees:
//! - **The same outcome as loading one by one.** Each rule gets exactly the
//!   result [`load`](super::load) gives it (the same checks, the same error
//!   naming it), in the order of `specs`, and the host's lines about each
//!   rule ("Rule signature verified.", "Rule loaded.") are written in that
//!   order, after all have loaded. Only what a rule itself prints during
//!   `configure` goes out as it comes.
//! - **Bounded.** At most one thread per core (and never more than there are
//!   files), and at most one file's bytes in memory per thread: a file's
//!   bytes are dropped once every rule using it has loaded.
//! - **A file is read once.** Its trust (pin, each rule's signature) is
//!   checked on the bytes that are compiled; two rules of the same file see
//!   the same bytes even if it changes meanwhile (the reloader catches the
//!   change).
//! - **Limits unchanged.** Every rule is instantiated in its own store under
//!   its own limits; loading in parallel only changes which core does it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Content, LoadNote, LoadedRule, RuleLoadError, load_error, read_signature};
use crate::config::{RuleSource, RuleSpec};
use crate::hash::Sha256;
use crate::runtime::Runtime;
use crate::state::StateDb;

/// Loads every rule of `specs`: the results in the order of `specs`, each
/// what [`load`](super::load) would have returned for it.
pub fn load_all(
    runtime: &Runtime,
    state: &StateDb,
    specs: &[RuleSpec],
) -> Vec<Result<LoadedRule, RuleLoadError>> {
    let groups = by_source(specs);
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let threads = cores.min(groups.len());
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let group = next.fetch_add(1, Ordering::Relaxed);
            let Some(indices) = groups.get(group) else {
                return done;
            };
            done.extend(load_group(runtime, state, specs, indices));
        }
    };
    let mut results: Vec<Option<Outcome>> = specs.iter().map(|_| None).collect();
    let finished: Vec<_> = if threads <= 1 {
        work()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::Builder::new()
                        .name("vigil-load".into())
                        .spawn_scoped(scope, work)
                        .expect("spawning a loader thread")
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };
    for (index, result) in finished {
        results[index] = Some(result);
    }
    results
        .into_iter()
        .zip(specs)
        .map(|(result, spec)| {
            let (rule, note) = result.expect("every rule was loaded by some thread")?;
            note.log(spec, &rule);
            Ok(rule)
        })
        .collect()
}

/// One rule's result, with what its "Rule loaded." line will say.
type Outcome = Result<(LoadedRule, LoadNote), RuleLoadError>;

/// Where a rule's bytes come from, as a key: rules with the same key share
/// one read and one hash.
#[derive(PartialEq, Eq, Hash)]
enum SourceKey {
    Builtin(&'static str),
    File(PathBuf),
    /// Never shared: such a spec is refused on its own (see `load_group`).
    Pushed(usize),
}

/// The indices of `specs`, grouped by source, groups in order of first
/// appearance.
fn by_source(specs: &[RuleSpec]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<SourceKey, usize> = HashMap::new();
    for (index, spec) in specs.iter().enumerate() {
        let key = match &spec.source {
            RuleSource::Builtin(builtin) => SourceKey::Builtin(builtin.name),
            RuleSource::File(path) => SourceKey::File(path.clone()),
            RuleSource::Pushed { .. } => SourceKey::Pushed(index),
        };
        let group = *seen.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    groups
}

/// Reads and hashes the source the rules at `indices` share, once, and
/// loads each of them from those bytes.
fn load_group(
    runtime: &Runtime,
    state: &StateDb,
    specs: &[RuleSpec],
    indices: &[usize],
) -> Vec<(usize, Outcome)> {
    let first = &specs[indices[0]];
    let (read, file) = match &first.source {
        RuleSource::Builtin(builtin) => (Ok(Cow::Borrowed(builtin.wasm)), None),
        RuleSource::File(path) => (
            std::fs::read(path)
                .map(Cow::Owned)
                .map_err(|error| format!("cannot read the file: {error}")),
            Some(path.as_path()),
        ),
        // As `plugins::load` says: `cluster::rule_sync` loads these.
        RuleSource::Pushed { .. } => (
            Err("a pushed rule is loaded from the cluster's buckets, not from disk".to_string()),
            None,
        ),
    };
    let read = read.map(|bytes| {
        let hash = Sha256::of(&bytes);
        (bytes, hash)
    });
    indices
        .iter()
        .map(|&index| {
            let spec = &specs[index];
            let loaded = match &read {
                Ok((bytes, hash)) => {
                    let signature = match file {
                        Some(file) => read_signature(spec, file),
                        None => Ok(None),
                    };
                    signature.and_then(|signature| {
                        let content = Content {
                            bytes,
                            hash: *hash,
                            signature: signature.as_ref(),
                        };
                        super::load_content(runtime, state, spec, content)
                    })
                }
                Err(reason) => Err(load_error(spec, reason.clone())),
            };
            (index, loaded)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Settings;
    use crate::plugins::load;
    use crate::runtime::builtin;
    use crate::sources::make_sample;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("VIGIL_RULES_DIR")).join(format!("{name}.wasm"))
    }

    fn spec(name: &str, source: RuleSource, config: &str) -> RuleSpec {
        let template = Settings::local_default().rules.remove(0);
        RuleSpec {
            name: name.into(),
            source,
            config_json: config.into(),
            ..template
        }
    }

    /// The `label` and `count` labels of the `global-counter` rule's alert
    /// for one sample.
    fn counted(rule: &mut LoadedRule) -> (String, String) {
        let sample = make_sample("web-01", &[], Ok(vec![]), 1_000);
        let verdict = rule.instance.evaluate(&sample).expect("evaluate");
        let label = |name: &str| {
            let labels = &verdict.alerts[0].labels;
            let label = labels.iter().find(|label| label.name == name);
            label.expect("the label").value.clone()
        };
        (label("label"), label("count"))
    }

    /// What `load` and `load_all` gave one rule, comparable: its name, hash
    /// and subscriptions, or its error.
    fn outcome(
        result: &Result<LoadedRule, RuleLoadError>,
    ) -> Result<(String, String, Vec<String>), String> {
        match result {
            Ok(rule) => Ok((
                rule.name.to_string(),
                rule.hash.clone(),
                rule.info.metrics.clone(),
            )),
            Err(error) => Err(error.to_string()),
        }
    }

    #[test]
    fn each_rule_gets_what_load_gives_it_in_config_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = fixture("fixture_global_counter");
        // The same bytes under another path: read on its own, shared in memory.
        let copy = dir.path().join("copy.wasm");
        std::fs::copy(&counter, &copy).expect("copying the fixture");
        let junk = dir.path().join("junk.wasm");
        std::fs::write(&junk, b"not a component").expect("writing");
        let file = |path: &Path| RuleSource::File(path.to_path_buf());
        let label = |label: &str| format!(r#"{{"label": "{label}"}}"#);
        let mut specs = Vec::new();
        for i in 0..6 {
            specs.push(spec(
                &format!("counter-{i}"),
                file(&counter),
                &label(&format!("c{i}")),
            ));
        }
        // Failures between them, each with the reason `load` gives.
        specs.insert(
            1,
            spec("missing", file(&dir.path().join("gone.wasm")), "{}"),
        );
        specs.insert(3, spec("junk", file(&junk), "{}"));
        specs.insert(4, spec("refused", file(&counter), r#"{"label": 5}"#));
        specs.insert(
            5,
            spec("old", file(&fixture("fixture_wrong_version")), "{}"),
        );
        specs.push(spec("copy", file(&copy), &label("copy")));
        specs.push(spec(
            "threshold",
            RuleSource::Builtin(&builtin::THRESHOLD),
            "{}",
        ));

        let runtime = Runtime::new().expect("runtime");
        let state = StateDb::in_memory().expect("state db");
        let mut all = load_all(&runtime, &state, &specs);

        let alone = Runtime::new().expect("runtime");
        let alone_state = StateDb::in_memory().expect("state db");
        let one_by_one: Vec<_> = specs
            .iter()
            .map(|spec| outcome(&load(&alone, &alone_state, spec)))
            .collect();
        let outcomes: Vec<_> = all.iter().map(outcome).collect();
        assert_eq!(outcomes, one_by_one);
        let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        let loaded: Vec<&str> = all
            .iter()
            .zip(&names)
            .map(|(result, name)| result.as_ref().map_or(*name, |rule| rule.name.as_str()))
            .collect();
        assert_eq!(loaded, names, "in config order");
        let failed: Vec<&str> = all
            .iter()
            .zip(&names)
            .filter(|(result, _)| result.is_err())
            .map(|(_, name)| *name)
            .collect();
        assert_eq!(failed, ["missing", "junk", "refused", "old"]);

        // One compiled component per content, however many rules and paths
        // use it (the junk is refused before compiling).
        assert_eq!(runtime.component_stats().compilations(), 3);
        assert_eq!(
            runtime.components_in_memory(),
            2,
            "the counter and the threshold"
        );
        // Each rule of the shared bytes has its own instance and config.
        for rule in all.iter_mut().filter_map(|result| result.as_mut().ok()) {
            if rule.name.as_str() == "threshold" {
                continue;
            }
            let expected = match rule.name.as_str().strip_prefix("counter-") {
                Some(i) => format!("c{i}"),
                None => "copy".to_string(),
            };
            assert_eq!(counted(rule), (expected.clone(), "1".to_string()));
            assert_eq!(counted(rule), (expected, "2".to_string()));
        }
    }

    #[test]
    fn the_host_logs_each_rule_loaded_in_config_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = fixture("fixture_global_counter");
        // Four files (so several groups, loaded on several threads when
        // there are cores), two rules each, neither in file nor name order.
        let files: Vec<PathBuf> = (0..4)
            .map(|i| {
                let path = dir.path().join(format!("f{i}.wasm"));
                std::fs::copy(&counter, &path).expect("copying the fixture");
                path
            })
            .collect();
        let order = [3, 0, 2, 1, 0, 3, 1, 2];
        let specs: Vec<RuleSpec> = order
            .iter()
            .enumerate()
            .map(|(i, &file)| {
                let name = format!("r{}-{i}", 7 - i);
                spec(&name, RuleSource::File(files[file].clone()), "{}")
            })
            .collect();
        let runtime = Runtime::new().expect("runtime");
        let state = StateDb::in_memory().expect("state db");
        let (results, logs) = crate::test_logs::logs_of(|| load_all(&runtime, &state, &specs));
        assert!(results.iter().all(Result::is_ok));
        let logged: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains("Rule loaded."))
            .filter_map(|line| line.split("rule=").nth(1)?.split_whitespace().next())
            .collect();
        let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        assert_eq!(logged, names, "{logs}");
    }

    #[test]
    fn rules_are_grouped_by_source_in_order_of_first_appearance() {
        let a = RuleSource::File("/rules/a.wasm".into());
        let b = RuleSource::File("/rules/b.wasm".into());
        let threshold = RuleSource::Builtin(&builtin::THRESHOLD);
        let specs: Vec<RuleSpec> = [&b, &a, &threshold, &b, &a, &b]
            .into_iter()
            .enumerate()
            .map(|(i, source)| spec(&format!("r{i}"), source.clone(), "{}"))
            .collect();
        assert_eq!(by_source(&specs), [vec![0, 3, 5], vec![1, 4], vec![2]]);
    }
}
