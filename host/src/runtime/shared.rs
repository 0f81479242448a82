//! One compiled component in memory per content, however many rules use it.
//!
//! Two rules from the same file (two tenants, or one file under two names
//! with different configs) used to hold two copies of the same machine code:
//! each `prepare` compiled the bytes or mapped them from the compile cache
//! again. [`Components`] keys what `prepare` produced by the component's
//! sha256 and hands the same compiled, pre-linked component to every later
//! `prepare` of those bytes.
//!
//! Guarantees:
//! - **Shared code, never shared state.** What is shared is immutable: the
//!   machine code and the linker's resolution of the imports. Every use
//!   still gets its own `Store` (linear memory, globals, tables, WASI
//!   context, memory cap, deadline), its own state namespace (the rule's
//!   name) and its own log budget, when it instantiates (`RuleInstance`).
//!   Wasmtime may map a module's initial memory image copy-on-write into
//!   each instance; a write copies the page for that instance alone.
//! - **Held weakly.** The table holds weak references only: the code lives
//!   as long as a [`Prepared`](super::Prepared) (and so a rule instance)
//!   uses it, and is freed when the last rule using it is unloaded or
//!   reloaded to another version. A dead entry (a hash and a dangling weak
//!   pointer) is swept whenever a new component is added, so the table
//!   holds the components in memory plus at most those freed since the last
//!   new one.
//! - **Compiled once under a race.** Preparing the same bytes on two
//!   threads at once (the start-up loader and the reloader, or two new rule
//!   files) compiles once: the first holds the entry's lock while it
//!   compiles, the others wait for it and share the result. A compilation
//!   that fails leaves nothing behind; whoever waited tries for itself and
//!   gets the same error.
//! - **Never blocks a reader.** The figures ([`ComponentStats`]) are
//!   atomics, read by `/metrics` without taking any lock a `prepare` holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::bindings::RulePre;
use super::sandbox::StoreData;
use crate::hash::Sha256;

/// A compiled, pre-linked component: what every use of the same bytes
/// shares. Dropping the last reference frees its code.
pub(crate) struct SharedComponent {
    pub(crate) pre: RulePre<StoreData>,
    pub(crate) hash: Sha256,
    pub(crate) size: usize,
    pub(crate) imports: Vec<String>,
    /// Keeps the table's entry alive while the component is: a `prepare`
    /// of the same bytes finds it through the entry.
    _entry: Arc<Entry>,
    stats: Arc<Counters>,
}

impl SharedComponent {
    /// `made`, in no table and counted nowhere: a copy of its own, as
    /// `Runtime::prepare_cached` makes.
    pub(crate) fn alone(hash: Sha256, made: Made) -> Arc<SharedComponent> {
        let stats = Arc::new(Counters::default());
        stats.in_memory.fetch_add(1, Ordering::Relaxed);
        Arc::new(SharedComponent {
            pre: made.pre,
            hash,
            size: made.size,
            imports: made.imports,
            _entry: Arc::default(),
            stats,
        })
    }
}

impl Drop for SharedComponent {
    fn drop(&mut self) {
        self.stats.in_memory.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One content hash's place in the table. Its lock is held while the
/// component is compiled, so that concurrent `prepare`s of the same bytes
/// wait for the first instead of compiling again.
#[derive(Default)]
pub(crate) struct Entry {
    component: Mutex<Weak<SharedComponent>>,
}

#[derive(Default)]
struct Counters {
    in_memory: AtomicU64,
    compilations: AtomicU64,
    cache_loads: AtomicU64,
}

/// The in-memory table of compiled components, shared by a runtime and its
/// clones.
#[derive(Default)]
pub(crate) struct Components {
    entries: Mutex<HashMap<Sha256, Weak<Entry>>>,
    stats: Arc<Counters>,
}

/// What a `prepare` made, before it is shared: the pre-linked component and
/// what `Prepared` reports about it.
pub(crate) struct Made {
    pub(crate) pre: RulePre<StoreData>,
    pub(crate) size: usize,
    pub(crate) imports: Vec<String>,
}

impl Components {
    /// The component for `hash`: the one in memory if any use holds it,
    /// else what `make` returns (then shared with later calls). Concurrent
    /// calls for the same hash run `make` once. `make` not being called
    /// is how the caller knows the component was shared.
    pub(crate) fn get_or_prepare<E>(
        &self,
        hash: Sha256,
        make: impl FnOnce() -> Result<Made, E>,
    ) -> Result<Arc<SharedComponent>, E> {
        let entry = self.entry(hash);
        // Held while `make` compiles: others preparing these bytes wait here.
        let mut slot = entry.component.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(component) = slot.upgrade() {
            return Ok(component);
        }
        let made = make()?;
        self.stats.in_memory.fetch_add(1, Ordering::Relaxed);
        let component = Arc::new(SharedComponent {
            pre: made.pre,
            hash,
            size: made.size,
            imports: made.imports,
            _entry: entry.clone(),
            stats: self.stats.clone(),
        });
        *slot = Arc::downgrade(&component);
        Ok(component)
    }

    /// The table's entry for `hash`, added if there is none alive (sweeping
    /// the dead ones on the way).
    fn entry(&self, hash: Sha256) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = entries.get(&hash).and_then(Weak::upgrade) {
            return entry;
        }
        entries.retain(|_, entry| entry.strong_count() > 0);
        let entry = Arc::new(Entry::default());
        entries.insert(hash, Arc::downgrade(&entry));
        entry
    }

    /// Counts a component compiled from its bytes.
    pub(crate) fn compiled(&self) {
        self.stats.compilations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a component loaded from the disk cache.
    pub(crate) fn loaded_from_cache(&self) {
        self.stats.cache_loads.fetch_add(1, Ordering::Relaxed);
    }

    /// A read-only view of the figures.
    pub(crate) fn stats(&self) -> ComponentStats {
        ComponentStats(self.stats.clone())
    }
}

/// How many compiled components a runtime holds and how it got them: a
/// read model for `/metrics` and tests. Cheap to clone; reading it takes no
/// lock.
#[derive(Clone)]
pub struct ComponentStats(Arc<Counters>);

impl ComponentStats {
    /// Distinct compiled components in memory now (each shared by every
    /// rule loaded from the same bytes).
    pub fn in_memory(&self) -> u64 {
        self.0.in_memory.load(Ordering::Relaxed)
    }

    /// Components compiled from their bytes since the runtime started.
    pub fn compilations(&self) -> u64 {
        self.0.compilations.load(Ordering::Relaxed)
    }

    /// Components loaded from the disk cache since the runtime started.
    pub fn cache_loads(&self) -> u64 {
        self.0.cache_loads.load(Ordering::Relaxed)
    }
}

impl Default for ComponentStats {
    /// Figures of a runtime that has loaded nothing (for read models built
    /// without one).
    fn default() -> Self {
        ComponentStats(Arc::default())
    }
}

impl std::fmt::Debug for ComponentStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentStats")
            .field("in_memory", &self.in_memory())
            .field("compilations", &self.compilations())
            .field("cache_loads", &self.cache_loads())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;
    use crate::runtime::{Limits, Origin, Prepared, RuleInstance, Runtime};
    use crate::sources::make_sample;
    use crate::state::StateDb;

    /// The `global-counter` fixture: counts its calls in a `static`.
    fn global_counter() -> Vec<u8> {
        let path =
            std::path::Path::new(env!("VIGIL_RULES_DIR")).join("fixture_global_counter.wasm");
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// `wasm` with a custom section holding `tag`: other bytes (another
    /// hash), the same code.
    fn variant(wasm: &[u8], tag: u8) -> Vec<u8> {
        let name = b"vigil-test";
        let mut out = wasm.to_vec();
        out.extend_from_slice(&[0, (name.len() + 2) as u8, name.len() as u8]);
        out.extend_from_slice(name);
        out.push(tag);
        out
    }

    fn start(
        runtime: &Runtime,
        state: &StateDb,
        name: &str,
        prepared: Prepared,
        label: &str,
    ) -> RuleInstance {
        let config = format!(r#"{{"label": "{label}"}}"#);
        let rule_state = state.rule(name).expect("rule state");
        RuleInstance::start(
            runtime,
            name,
            prepared,
            config,
            Limits::default(),
            rule_state,
        )
        .expect("starting the rule")
        .0
    }

    /// The `count` and `label` labels of the rule's alert for one sample.
    fn counted(instance: &mut RuleInstance) -> (u64, String) {
        let sample = make_sample("web-01", &[], Ok(vec![]), 1_000);
        let verdict = instance.evaluate(&sample).expect("evaluate");
        let label = |name: &str| {
            verdict.alerts[0]
                .labels
                .iter()
                .find(|label| label.name == name)
                .map(|label| label.value.clone())
                .expect("the label")
        };
        (label("count").parse().expect("a count"), label("label"))
    }

    #[test]
    fn two_uses_of_the_same_bytes_share_the_code_and_keep_their_own_globals() {
        let runtime = Runtime::new().expect("runtime");
        let state = StateDb::in_memory().expect("state db");
        let bytes = global_counter();
        let first = runtime.prepare(&bytes).expect("compiling");
        let second = runtime.prepare(&bytes).expect("sharing");
        assert_eq!(first.origin, Origin::Compiled);
        assert_eq!(second.origin, Origin::Memory);
        assert!(Arc::ptr_eq(&first.shared, &second.shared));
        assert_eq!(runtime.component_stats().compilations(), 1);
        assert_eq!(runtime.components_in_memory(), 1);

        let mut a = start(&runtime, &state, "a", first, "alpha");
        let mut b = start(&runtime, &state, "b", second, "beta");
        assert_eq!(counted(&mut a), (1, "alpha".into()));
        assert_eq!(counted(&mut a), (2, "alpha".into()));
        assert_eq!(counted(&mut b), (1, "beta".into()));
        assert_eq!(counted(&mut a), (3, "alpha".into()));
        assert_eq!(counted(&mut b), (2, "beta".into()));
        assert_eq!(runtime.components_in_memory(), 1);
    }

    #[test]
    fn the_code_is_freed_with_its_last_use_and_compiled_again_after() {
        let runtime = Runtime::new().expect("runtime");
        let state = StateDb::in_memory().expect("state db");
        let bytes = global_counter();
        let a = start(
            &runtime,
            &state,
            "a",
            runtime.prepare(&bytes).expect("a"),
            "a",
        );
        let b = start(
            &runtime,
            &state,
            "b",
            runtime.prepare(&bytes).expect("b"),
            "b",
        );
        assert_eq!(runtime.components_in_memory(), 1);
        drop(a);
        assert_eq!(runtime.components_in_memory(), 1, "b still uses it");
        drop(b);
        assert_eq!(runtime.components_in_memory(), 0);
        // Nothing kept it: no disk cache here, so it is compiled again.
        let again = runtime.prepare(&bytes).expect("compiling again");
        assert_eq!(again.origin, Origin::Compiled);
        assert_eq!(runtime.component_stats().compilations(), 2);
    }

    #[test]
    fn reloads_to_new_versions_leave_one_entry_per_component_in_use() {
        let runtime = Runtime::new().expect("runtime");
        let bytes = global_counter();
        // A rule reloaded ten times: each version replaces the one before.
        let mut serving = runtime.prepare(&variant(&bytes, 0)).expect("v0");
        for tag in 1..10 {
            serving = runtime
                .prepare(&variant(&bytes, tag))
                .expect("next version");
            assert_eq!(runtime.components_in_memory(), 1, "version {tag}");
        }
        let entries = runtime.components.entries.lock().expect("entries").len();
        // The one serving, plus the one freed since the last was added.
        assert!(entries <= 2, "{entries} entries for one component in use");
        drop(serving);
        assert_eq!(runtime.components_in_memory(), 0);
    }

    #[test]
    fn concurrent_prepares_of_the_same_bytes_compile_once() {
        let runtime = Runtime::new().expect("runtime");
        let bytes = global_counter();
        const THREADS: usize = 4;
        let barrier = Barrier::new(THREADS);
        let origins: Vec<Origin> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        runtime.prepare(&bytes).expect("preparing")
                    })
                })
                .collect();
            // Joined together, so that every `Prepared` is alive at the end.
            let prepared: Vec<Prepared> = handles
                .into_iter()
                .map(|handle| handle.join().expect("thread"))
                .collect();
            prepared.iter().map(|prepared| prepared.origin).collect()
        });
        let compiled = origins.iter().filter(|o| **o == Origin::Compiled).count();
        assert_eq!(compiled, 1, "{origins:?}");
        assert_eq!(runtime.component_stats().compilations(), 1);
    }

    #[test]
    fn prepare_cached_makes_a_copy_of_its_own() {
        let runtime = Runtime::new().expect("runtime");
        let bytes = global_counter();
        let shared = runtime.prepare(&bytes).expect("compiling");
        let alone = runtime.prepare_cached(&bytes, None).expect("compiling");
        assert_eq!(alone.origin, Origin::Compiled);
        assert!(!Arc::ptr_eq(&shared.shared, &alone.shared));
        assert_eq!(runtime.components_in_memory(), 1);
        assert_eq!(runtime.component_stats().compilations(), 2);
    }
}
