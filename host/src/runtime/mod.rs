//! Wasmtime, wrapped: one engine per process, the rule world's bindings, the
//! sandbox, limits, and long-lived rule instances.
//!
//! This is the only module that touches wasmtime. Its errors are converted
//! here into [`LoadError`] and [`CallError`], which name what went wrong in
//! the operator's terms (`timeout`, `memory limit`, `trap: ...`).
//!
//! Guarantees:
//! - A rule's call that runs past its deadline is stopped (epoch
//!   interruption; the deadline is set before every call, and the epoch
//!   advances while any call runs: see [`epoch`]).
//! - A rule's linear memory cannot grow past its cap.
//! - A rule that trapped never runs again in the same store: the next call
//!   gets a fresh instance from the pre-linked component, configured again.
//! - A rule can reach nothing but the `vigil:rules/host` imports, clocks and
//!   random numbers (see [`sandbox`]).
//! - Rules loaded from the same bytes share one compiled component in
//!   memory, and nothing else: each has its own store, linear memory and
//!   globals (see [`shared`]).

mod bindings;
pub mod builtin;
mod cache;
mod component;
mod epoch;
mod host;
mod instance;
mod sample;
pub(crate) mod sandbox;
mod shared;
mod targets;

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

pub use bindings::vigil::rules::host::Level;
pub use bindings::vigil::rules::types::{
    ActionOutcome, ActionRequest, ActionStatus, Alert, Health, Label, RuleInfo, Severity, Verdict,
};
pub use cache::CompileCache;
pub use component::{LoadError, Origin, Prepared, WIT_PACKAGE, WIT_VERSION};
pub use instance::{CallError, RuleInstance};
pub use sample::{Metric, Sample};
pub use sandbox::RuleLog;
pub use shared::ComponentStats;

use sandbox::StoreData;

/// How often the epoch advances. Deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Resource limits for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of linear memory the rule's instance may use.
    pub max_memory_bytes: usize,
    /// Wall-clock deadline for one `evaluate` call.
    pub evaluate_timeout: Duration,
    /// Wall-clock deadline for instantiation plus `configure`.
    pub init_timeout: Duration,
    /// Most alerts in one verdict.
    pub max_alerts: usize,
    /// Most action requests in one verdict.
    pub max_actions: usize,
    /// Most bytes of text (names, summaries, labels, ...) in one verdict.
    pub max_verdict_bytes: usize,
    /// Log lines per second a rule may write (host log, stdout and stderr
    /// together); twice as many may come in a burst. The rest are dropped
    /// and counted.
    pub log_lines_per_second: u32,
    /// Most bytes of keys and values the rule may keep in its key-value
    /// state.
    pub max_state_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 128 * 1024 * 1024,
            evaluate_timeout: Duration::from_millis(100),
            init_timeout: Duration::from_secs(5),
            max_alerts: 1_000,
            max_actions: 100,
            max_verdict_bytes: 1024 * 1024,
            log_lines_per_second: 100,
            max_state_bytes: crate::state::MAX_RULE_BYTES,
        }
    }
}

/// The process-wide wasm runtime: an engine whose epoch ticks in a
/// background thread while rules run, a linker with WASI and the host imports, the compiled
/// components rules use (one per content, shared by the runtime's clones),
/// and optionally a cache of compiled components on disk.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<StoreData>>,
    components: Arc<shared::Components>,
    cache: Option<CompileCache>,
    ticker: epoch::Ticker,
}

/// The runtime could not be set up (a wasmtime configuration problem).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the wasm runtime: {0}")]
pub struct RuntimeError(String);

impl Runtime {
    /// Builds the engine, starts its epoch ticker and links the imports.
    pub fn new() -> Result<Self, RuntimeError> {
        let error = |e: wasmtime::Error| RuntimeError(format!("{e:#}"));
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Rules are called synchronously. The component-model-async feature
        // is not compiled in, so this only states the intent: if it ever is,
        // its per-store machinery stays off (BENCHMARKS.md measured no
        // difference in this build).
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(error)?;
        let ticker = epoch::Ticker::start(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(error)?;
        deny_waiting(&mut linker).map_err(error)?;
        bindings::Rule::add_to_linker::<_, HasSelf<_>>(&mut linker, |data| data).map_err(error)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            components: Arc::default(),
            cache: None,
            ticker,
        })
    }

    /// Keeps compiled components in `cache`: [`prepare`](Self::prepare),
    /// and so every load and reload of a rule, takes them from there when
    /// it can (a restart, a version seen before) and adds them otherwise.
    pub fn with_compile_cache(mut self, cache: CompileCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The cache [`prepare`](Self::prepare) uses, if any.
    pub fn compile_cache(&self) -> Option<&CompileCache> {
        self.cache.as_ref()
    }

    /// The engine, shared by every rule.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What advances the engine's epoch; every call into a rule is counted
    /// in with it (see [`epoch`]).
    fn ticker(&self) -> &epoch::Ticker {
        &self.ticker
    }

    /// Distinct compiled components in memory now: rules loaded from the
    /// same bytes count once.
    pub fn components_in_memory(&self) -> u64 {
        self.components.stats().in_memory()
    }

    /// A read-only view of the compiled components (in memory, compiled,
    /// loaded from the disk cache), for `/metrics`.
    pub fn component_stats(&self) -> ComponentStats {
        self.components.stats()
    }
}

/// The WASI version whose clock functions [`deny_waiting`] replaces; it must
/// be the one `wasmtime-wasi` links (components importing any 0.2.x resolve
/// to it).
const WASI_CLOCKS: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces the clock functions that let a rule wait (`subscribe-duration`,
/// `subscribe-instant`: how `sleep` is built) with ones that trap.
///
/// A wait blocks inside the host, where epoch interruption cannot reach, so
/// a sleeping rule would hold its thread past any deadline. Rules have no
/// reason to wait: they answer one sample and return.
fn deny_waiting(linker: &mut Linker<StoreData>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;

    linker.allow_shadowing(true);
    let mut clock = linker.instance(WASI_CLOCKS)?;
    for function in ["subscribe-duration", "subscribe-instant"] {
        clock.func_wrap(
            function,
            move |_, _: (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
                Err(wasmtime::format_err!(
                    "rules may not sleep or wait (`{WASI_CLOCKS}#{function}` is denied)"
                ))
            },
        )?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

/// Ticks to allow for `timeout`: rounded up, plus one for the tick already
/// under way when the call starts.
fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    u64::try_from(timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2) + 1
}

impl Verdict {
    /// The names of the alerts it reports, in order.
    pub fn alert_names(&self) -> Vec<&str> {
        self.alerts
            .iter()
            .map(|alert| alert.name.as_str())
            .collect()
    }

    /// The names of the actions it asks for, in order.
    pub fn action_names(&self) -> Vec<&str> {
        self.actions
            .iter()
            .map(|action| action.action.as_str())
            .collect()
    }
}
