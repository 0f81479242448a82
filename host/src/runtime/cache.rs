//! Compiled rules kept on disk, so that a restart, or a reload of a version
//! already seen, skips compilation: compiling a component takes tens of
//! milliseconds for Rust and seconds for an interpreter compiled to wasm;
//! loading a precompiled one takes milliseconds.
//!
//! An entry is one file, `<component>-<engine>.<artifact>.cwasm`:
//! - `<component>`: the sha256 of the component's bytes, i.e. what was
//!   compiled (`sha256sum rule.wasm` finds a rule's entry);
//! - `<engine>`: a hash of `Engine::precompile_compatibility_hash` (target,
//!   compiler flags, tunables, wasm features, wasmtime's version), i.e. how
//!   it was compiled, so that another build of the host never opens an
//!   entry it cannot use;
//! - `<artifact>`: the xxh3-128 of the file's own contents, its checksum.
//!   It guards against files damaged on disk, not against an attacker
//!   (who would need to write to the owner-only cache directory, and could
//!   as well replace the host); it is checked on every load, and hashing a
//!   Python rule's 35 MB artifact with sha256 cost ~20 ms where xxh3 takes
//!   a few.
//!
//! Guarantees:
//! - An entry is never trusted blindly. Its contents must hash to the
//!   checksum in its name, and wasmtime then checks that it was compiled by
//!   this version with these settings. An entry that fails either check
//!   (truncated, bit-flipped, written by another wasmtime) is logged with
//!   what was wrong, deleted, and compiled again from the component.
//! - An entry is written whole or not at all (a temporary file in the same
//!   directory, fsynced, then renamed into place), and never changed in
//!   place once there: a loaded component maps its file.
//! - The cache only saves time. A cache that cannot be read or written
//!   (read-only, full, not a directory) costs a warning and a compilation;
//!   it never fails a load.
//!
//! It evicts by size: after writing an entry, if the entries take more than
//! the budget ([`DEFAULT_BUDGET_BYTES`], 1 GiB: ~30 versions of a Python rule,
//! thousands of a Rust one), the least recently used ones are deleted (a hit
//! refreshes an entry's modification time). Deleting an entry, or the whole
//! directory, is safe at any time, even while the host runs: a loaded rule
//! keeps its mapping, and a missing entry is compiled again.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::hash::hex;

/// How much disk a cache's entries may take before the least recently used
/// are evicted.
pub const DEFAULT_BUDGET_BYTES: u64 = 1 << 30;

/// A directory of precompiled components (the data directory's `cache/`).
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    budget: u64,
}

impl CompileCache {
    /// A cache in `dir`, created when the first entry is written, with the
    /// default budget.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache {
            dir: dir.into(),
            budget: DEFAULT_BUDGET_BYTES,
        }
    }

    /// The same cache, evicting once its entries take more than `bytes`.
    pub fn with_budget(mut self, bytes: u64) -> Self {
        self.budget = bytes;
        self
    }

    /// The directory the entries are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component compiled from `bytes` (whose sha256 is `hash`), and
    /// whether it came from the cache. On a miss it is compiled and written
    /// to the cache. The only error is the component's own (it does not
    /// compile); cache problems are logged and worked around.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
        hash: &crate::hash::Sha256,
    ) -> wasmtime::Result<(Component, bool)> {
        let key = Key::new(engine, hash);
        if let Some(component) = self.lookup(engine, &key) {
            return Ok((component, true));
        }
        let component = Component::new(engine, bytes)?;
        match self.store(&key, &component) {
            Ok(path) => self.evict(&path),
            Err(error) => tracing::warn!(
                dir = %self.dir.display(),
                %error,
                "Cannot write to the compile cache; the rule was compiled and loads, \
                 but it will be compiled again next time."
            ),
        }
        Ok((component, false))
    }

    /// The cached component for `key`, if there is a sound entry. Unsound
    /// entries are deleted on the way.
    fn lookup(&self, engine: &Engine, key: &Key) -> Option<Component> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            // Nothing cached yet.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    %error,
                    "Cannot read the compile cache; compiling the rule."
                );
                return None;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(checksum) = name.to_str().and_then(|name| key.checksum_in(name)) else {
                continue;
            };
            let path = entry.path();
            match open(engine, &path, checksum) {
                Ok(component) => {
                    touch(&path);
                    return Some(component);
                }
                Err(error) => {
                    tracing::warn!(
                        path = %path.display(),
                        %error,
                        "Compile cache entry is unusable; deleting it and compiling the rule again."
                    );
                    if let Err(error) = fs::remove_file(&path) {
                        tracing::warn!(
                            path = %path.display(),
                            %error,
                            "Cannot delete the unusable compile cache entry."
                        );
                    }
                }
            }
        }
        None
    }

    /// Writes `component` as the entry for `key`: to a temporary file, synced,
    /// then renamed into place, so that an entry is never seen half-written.
    fn store(&self, key: &Key, component: &Component) -> io::Result<PathBuf> {
        let artifact = component.serialize().map_err(io::Error::other)?;
        create_private_dir(&self.dir)?;
        let path = self.dir.join(key.entry_name(&checksum(&artifact)));
        // Unique per process and per call, so that concurrent loads of the
        // same rule never write to the same temporary file.
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let temp = self.dir.join(format!(
            ".{}.{}-{}.tmp",
            key.0,
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::options().write(true).create_new(true).open(&temp)?;
            file.write_all(&artifact)?;
            // No fsync: this runs on the reload path, and a cache needs no
            // durability. An entry a crash left half-written fails its
            // checksum on the next lookup and is rebuilt.
            // Replacing an entry of the same name is harmless: the name
            // holds the checksum, so both have the same contents, and a
            // component mapping the old file keeps its own copy of it.
            fs::rename(&temp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map(|()| path)
    }

    /// Deletes the least recently used entries until the rest fit the
    /// budget. `keep`, the entry just written, always stays.
    fn evict(&self, keep: &Path) {
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                if path.extension()? != "cwasm" {
                    return None;
                }
                let metadata = entry.metadata().ok()?;
                Some((metadata.modified().ok()?, metadata.len(), path))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, size, _)| size).sum();
        // Oldest first.
        entries.sort();
        for (_, size, path) in entries {
            if total <= self.budget {
                break;
            }
            if path == keep {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    total -= size;
                    tracing::info!(
                        path = %path.display(),
                        size,
                        budget = self.budget,
                        "Evicted the least recently used compile cache entry."
                    );
                }
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    %error,
                    "Cannot evict a compile cache entry."
                ),
            }
        }
    }
}

/// Marks an entry as just used, for eviction. Failing costs nothing but the
/// accuracy of that order.
fn touch(path: &Path) {
    let touched = File::open(path).and_then(|file| file.set_modified(SystemTime::now()));
    if let Err(error) = touched {
        tracing::debug!(path = %path.display(), %error, "Cannot refresh a cache entry's time.");
    }
}

/// Reads the entry at `path`, checks it against `checksum`, and maps it.
/// The error says what is wrong with the entry.
fn open(engine: &Engine, path: &Path, expected: &str) -> Result<Component, String> {
    let contents = fs::read(path).map_err(|error| format!("cannot read it: {error}"))?;
    let actual = checksum(&contents);
    if actual != expected {
        return Err(format!(
            "corrupt: its name says checksum {expected}, but its {} bytes hash to {actual}",
            contents.len()
        ));
    }
    drop(contents);
    // SAFETY: `deserialize_file` executes the file's code, so the file must
    // be a precompiled component made by this wasmtime with this engine's
    // settings, and must not change while the component maps it. It is:
    // - written only by `CompileCache::store` above (in this run of the
    //   host or an earlier one), from a component wasmtime compiled, into
    //   the host's own data directory (the cache directory is created
    //   owner-only), keyed by the component's sha256 and the engine's
    //   compatibility hash;
    // - checked just above: its contents hash to the checksum in its name,
    //   so it is whole and exactly what `store` wrote (a corrupt or foreign
    //   entry has been refused; a concurrent `store` can only rename a file
    //   with the same contents over it, as the name holds the checksum);
    // - checked again by wasmtime, which refuses an artifact whose header
    //   does not match this engine (version, target, flags, tunables);
    // - never modified in place: entries are replaced by rename and removed
    //   by unlink, both of which leave an existing mapping untouched.
    #[allow(unsafe_code)]
    let mapped = unsafe { Component::deserialize_file(engine, path) };
    mapped.map_err(|error| format!("wasmtime refused it: {error:#}"))
}

/// An entry's checksum: the xxh3-128 of its contents, in hex.
fn checksum(contents: &[u8]) -> String {
    hex(&xxhash_rust::xxh3::xxh3_128(contents).to_be_bytes())
}

/// The name of a component's entries for one engine:
/// `<component sha256>-<engine hash>`.
struct Key(String);

impl Key {
    /// The key of the component whose bytes hash to `component`.
    fn new(engine: &Engine, component: &crate::hash::Sha256) -> Key {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine = hex(&hasher.0.finalize());
        // 64 bits tell engines apart; wasmtime checks the rest.
        Key(format!("{component}-{}", &engine[..16]))
    }

    fn entry_name(&self, checksum: &str) -> String {
        format!("{}.{checksum}.cwasm", self.0)
    }

    /// The checksum part of `name`, if `name` is an entry for this key.
    fn checksum_in<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.0.as_str())?
            .strip_prefix('.')?
            .strip_suffix(".cwasm")
    }
}

/// Feeds what `Hash` writes into sha256, so that the key does not depend on
/// the standard library's unspecified `DefaultHasher`.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the sha256 digest is used")
    }
}

/// Creates `dir` (and its parents); the directory itself readable and
/// writable by its owner only, as it holds code the host will run.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::builtin::THRESHOLD;
    use crate::runtime::{Limits, Metric, Origin, Prepared, RuleInstance, Runtime};
    use crate::sources::make_sample;
    use crate::state::StateDb;

    /// Whether `cache` had `bytes` compiled (it compiles and adds them
    /// otherwise).
    fn hit(cache: &CompileCache, engine: &Engine, bytes: &[u8], what: &str) -> bool {
        let hash = crate::hash::Sha256::of(bytes);
        cache.component(engine, bytes, &hash).expect(what).1
    }

    /// The entries in `cache`'s directory.
    fn entries(cache: &CompileCache) -> Vec<PathBuf> {
        let mut entries: Vec<PathBuf> = fs::read_dir(cache.dir())
            .expect("reading the cache directory")
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        entries
    }

    /// The one entry in `cache`, after checking it is the only file there
    /// (no temporary file left behind).
    fn only_entry(cache: &CompileCache) -> PathBuf {
        let entries = entries(cache);
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.into_iter().next().expect("one entry")
    }

    /// `wasm` with a custom section holding `tag`: another component (another
    /// cache key) that compiles to the same code.
    fn variant(wasm: &[u8], tag: u8) -> Vec<u8> {
        let name = b"vigil-test";
        let mut out = wasm.to_vec();
        out.extend_from_slice(&[0, (name.len() + 2) as u8, name.len() as u8]);
        out.extend_from_slice(name);
        out.push(tag);
        out
    }

    /// Replaces `path` with `contents` by rename, as the cache itself does,
    /// so that a component still mapping the old file is unaffected.
    fn replace(path: &Path, contents: &[u8]) {
        let temp = path.with_extension("test-tmp");
        fs::write(&temp, contents).expect("writing the replacement");
        fs::rename(&temp, path).expect("renaming the replacement into place");
    }

    /// What the rule answers to a sample with cpu_usage at 91: its alerts,
    /// as text.
    fn evaluate(runtime: &Runtime, prepared: Prepared) -> String {
        let state = StateDb::in_memory().expect("state db");
        let rule_state = state.rule("threshold").expect("rule state");
        let (mut instance, _) = RuleInstance::start(
            runtime,
            "threshold",
            prepared,
            "{}".into(),
            Limits::default(),
            rule_state,
        )
        .expect("starting the rule");
        let cpu = Metric {
            name: "cpu_usage".into(),
            value: 91.0,
            labels: vec![],
        };
        let sample = make_sample("web-01", &[], Ok(vec![cpu]), 1_000);
        let verdict = instance.evaluate(&sample).expect("evaluate");
        assert_eq!(verdict.alerts.len(), 1, "{verdict:?}");
        format!("{verdict:?}")
    }

    #[test]
    fn over_its_budget_the_least_recently_used_entry_is_evicted() {
        let runtime = Runtime::new().expect("runtime");
        let engine = runtime.engine();
        let dir = tempfile::tempdir().expect("tempdir");
        let [a, b, c] = [0, 1, 2].map(|tag| variant(THRESHOLD.wasm, tag));
        let unbounded = CompileCache::new(dir.path().join("cache"));
        assert!(!hit(&unbounded, engine, &a, "a"));
        let entry = fs::metadata(only_entry(&unbounded)).expect("entry").len();
        // Room for two entries, not three.
        let cache = unbounded.with_budget(entry * 5 / 2);
        // Timestamps a few milliseconds apart, even on coarse filesystems.
        let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
        pause();
        assert!(!hit(&cache, engine, &b, "b"));
        pause();
        assert!(hit(&cache, engine, &a, "a again"), "a hit");
        pause();
        // Writing c puts the cache over budget: b, used longest ago, goes.
        assert!(!hit(&cache, engine, &c, "c"));
        assert_eq!(entries(&cache).len(), 2);
        assert!(hit(&cache, engine, &a, "a"), "a was used recently");
        assert!(hit(&cache, engine, &c, "c"), "c was just written");
        assert!(!hit(&cache, engine, &b, "b"), "b was evicted");
    }

    /// Runs `body` with this thread's log lines captured, and returns them.
    fn logs_of(body: impl FnOnce()) -> String {
        crate::test_logs::logs_of(body).1
    }

    #[test]
    fn the_second_prepare_is_a_cache_hit_and_evaluates_alike() {
        let runtime = Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::new(dir.path().join("cache"));

        let first = runtime
            .prepare_cached(THRESHOLD.wasm, Some(&cache))
            .expect("compiling");
        assert!(first.origin != Origin::Cache);
        let entry = only_entry(&cache);
        let name = entry.file_name().and_then(|n| n.to_str()).expect("name");
        let component_sha = crate::hash::sha256_hex(THRESHOLD.wasm);
        assert!(name.starts_with(&component_sha), "{name}");
        assert!(name.ends_with(".cwasm"), "{name}");

        let second = runtime
            .prepare_cached(THRESHOLD.wasm, Some(&cache))
            .expect("loading from the cache");
        assert!(second.origin == Origin::Cache);
        assert_eq!(only_entry(&cache), entry);

        let uncached = runtime.prepare(THRESHOLD.wasm).expect("compiling");
        assert!(uncached.origin != Origin::Cache);
        let expected = evaluate(&runtime, uncached);
        assert_eq!(evaluate(&runtime, first), expected);
        assert_eq!(evaluate(&runtime, second), expected);
    }

    #[test]
    fn a_corrupt_entry_is_detected_deleted_and_rebuilt() {
        type Corruption = fn(&mut Vec<u8>);
        let corruptions: [(&str, Corruption); 3] = [
            ("a flipped bit", |bytes| {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0x10;
            }),
            ("truncated", |bytes| bytes.truncate(bytes.len() / 2)),
            ("empty", Vec::clear),
        ];
        let runtime = Runtime::new().expect("runtime");
        let expected = evaluate(
            &runtime,
            runtime.prepare(THRESHOLD.wasm).expect("compiling"),
        );
        for (what, corrupt) in corruptions {
            let dir = tempfile::tempdir().expect("tempdir");
            let cache = CompileCache::new(dir.path().join("cache"));
            runtime
                .prepare_cached(THRESHOLD.wasm, Some(&cache))
                .expect("compiling");
            let entry = only_entry(&cache);
            let mut bytes = fs::read(&entry).expect("reading the entry");
            corrupt(&mut bytes);
            replace(&entry, &bytes);

            let mut rebuilt = None;
            let logs = logs_of(|| {
                rebuilt = Some(runtime.prepare_cached(THRESHOLD.wasm, Some(&cache)));
            });
            let rebuilt = rebuilt.expect("ran").expect("rebuilding");
            assert!(
                rebuilt.origin != Origin::Cache,
                "{what}: a corrupt entry was used"
            );
            assert!(logs.contains("WARN"), "{what}: {logs}");
            assert!(
                logs.contains(&entry.display().to_string()),
                "{what}: {logs}"
            );
            assert!(logs.contains("corrupt"), "{what}: {logs}");
            assert_eq!(evaluate(&runtime, rebuilt), expected, "{what}");

            // The rebuilt entry (same name: the compilation is the same) is
            // sound, and the next load uses it.
            assert_eq!(only_entry(&cache), entry, "{what}");
            let again = runtime
                .prepare_cached(THRESHOLD.wasm, Some(&cache))
                .expect("loading from the cache");
            assert!(again.origin == Origin::Cache, "{what}");
            assert_eq!(evaluate(&runtime, again), expected, "{what}");
        }
    }

    #[test]
    fn an_entry_from_another_engine_is_refused_by_wasmtime_and_rebuilt() {
        let runtime = Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::new(dir.path().join("cache"));
        // Compiled without epoch interruption, then filed under this engine's
        // key with a correct checksum: only wasmtime's own check can tell.
        let other = Engine::new(&wasmtime::Config::new()).expect("another engine");
        let foreign = other
            .precompile_component(THRESHOLD.wasm)
            .expect("precompiling");
        let key = Key::new(runtime.engine(), &crate::hash::Sha256::of(THRESHOLD.wasm));
        create_private_dir(cache.dir()).expect("cache dir");
        let path = cache.dir().join(key.entry_name(&checksum(&foreign)));
        fs::write(&path, &foreign).expect("writing the foreign entry");

        let mut prepared = None;
        let logs = logs_of(|| {
            prepared = Some(runtime.prepare_cached(THRESHOLD.wasm, Some(&cache)));
        });
        let prepared = prepared.expect("ran").expect("rebuilding");
        assert!(prepared.origin != Origin::Cache);
        assert!(logs.contains("wasmtime refused it"), "{logs}");
        assert!(logs.contains(&path.display().to_string()), "{logs}");
        assert!(!path.exists(), "the foreign entry was not deleted");
        assert_ne!(only_entry(&cache), path);
        evaluate(&runtime, prepared);
        assert!(
            runtime
                .prepare_cached(THRESHOLD.wasm, Some(&cache))
                .expect("loading from the cache")
                .origin
                == Origin::Cache
        );
    }

    #[test]
    fn a_cache_that_cannot_be_written_still_loads_the_rule() {
        let runtime = Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        fs::write(&file, b"not a directory").expect("writing a file");
        let cache = CompileCache::new(file.join("cache"));
        for _ in 0..2 {
            let mut prepared = None;
            let logs = logs_of(|| {
                prepared = Some(runtime.prepare_cached(THRESHOLD.wasm, Some(&cache)));
            });
            let prepared = prepared.expect("ran").expect("compiling");
            assert!(prepared.origin != Origin::Cache);
            assert!(logs.contains("Cannot write to the compile cache"), "{logs}");
            evaluate(&runtime, prepared);
        }
    }

    #[test]
    fn a_component_that_does_not_compile_is_not_cached() {
        let runtime = Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CompileCache::new(dir.path().join("cache"));
        // A component header followed by garbage.
        let mut bytes = THRESHOLD.wasm[..8].to_vec();
        bytes.extend_from_slice(&[0xff; 64]);
        let error = runtime
            .prepare_cached(&bytes, Some(&cache))
            .err()
            .expect("garbage does not compile");
        assert!(
            matches!(error, super::super::LoadError::Invalid(_)),
            "{error}"
        );
        assert!(!cache.dir().exists() || entries(&cache).is_empty());
    }
}
