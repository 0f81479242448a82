//! Rules as the host runs them: loading (read, compile, link, `configure`), the
//! metrics each rule subscribed to, and one worker thread per rule.
//!
//! Loading refuses a rule with the exact reason, naming the rule, its file
//! and where the config declares it. Nothing is half-loaded: a rule is
//! either ready for samples or an error.

pub mod reload;
mod subscription;
mod worker;

use std::borrow::Cow;
use std::time::Duration;

/// The sha256 of a component, in hex: its identity for reloads and caches.
pub use crate::hash::sha256_hex as content_hash;
pub use subscription::Subscription;

/// A rule's quarantine settings, parsed with the rest of its config.
pub use crate::config::FailurePolicy;
/// The rules embedded in the binary (they live in the runtime, below the
/// config that names them).
pub use crate::runtime::builtin;
pub use worker::{
    Evaluation, QUEUE, Refused, RuleBoard, RuleCounters, RuleHealth, RuleState, RuleWorker,
    Stopping, WorkerEvent,
};

use crate::config::{RuleSource, RuleSpec};
use crate::names::RuleName;
use crate::runtime::{LoadError, RuleInfo, RuleInstance, Runtime};
use crate::state::StateDb;

/// A rule ready to evaluate samples.
pub struct LoadedRule {
    /// Its name from the config.
    pub name: RuleName,
    /// What it said about itself in `configure`.
    pub info: RuleInfo,
    /// The metrics it asked for.
    pub subscription: Subscription,
    /// The running instance.
    pub instance: RuleInstance,
    /// 1 when first loaded, one more for every reload that succeeded.
    pub version: u64,
    /// sha256 of the component, hex.
    pub hash: String,
    /// The targets it sees (its spec's `targets` and `target_labels`).
    pub targets: crate::routing::TargetSelector,
}

/// Why a rule could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("rule `{name}` ({file}, declared at {origin}): {reason}")]
pub struct RuleLoadError {
    /// The rule's name.
    pub name: RuleName,
    /// Its file or builtin name.
    pub file: String,
    /// Where the config declares it.
    pub origin: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads, compiles, links and initialises a rule. Slow for big components:
/// call it off the evaluation path.
pub fn load(
    runtime: &Runtime,
    state: &StateDb,
    spec: &RuleSpec,
) -> Result<LoadedRule, RuleLoadError> {
    let bytes: Cow<'static, [u8]> = match &spec.source {
        RuleSource::Builtin(builtin) => builtin.wasm.into(),
        RuleSource::File(path) => std::fs::read(path)
            .map_err(|error| load_error(spec, format!("cannot read the file: {error}")))?
            .into(),
    };
    load_bytes(runtime, state, spec, bytes)
}

fn load_error(spec: &RuleSpec, reason: String) -> RuleLoadError {
    RuleLoadError {
        name: spec.name.clone(),
        file: spec.source.to_string(),
        origin: spec.origin.clone(),
        reason,
    }
}

/// [`load`] for bytes already read (the reloader hashes them first).
pub fn load_bytes(
    runtime: &Runtime,
    state: &StateDb,
    spec: &RuleSpec,
    bytes: Cow<'static, [u8]>,
) -> Result<LoadedRule, RuleLoadError> {
    let fail = |reason: String| load_error(spec, reason);
    let prepared = runtime
        .prepare(&bytes)
        .map_err(|error| fail(error.to_string()))?;
    // For the log, to the microsecond: `1.234ms`, not `1.234567ms`.
    let compile_time = Duration::from_micros(prepared.compile_time.as_micros() as u64);
    let cached = prepared.cached;
    let state = state
        .rule(&spec.name)
        .map_err(|error| fail(error.to_string()))?;
    let (instance, info) = RuleInstance::start(
        runtime,
        &spec.name,
        prepared,
        spec.config_json.clone(),
        spec.limits,
        state,
    )
    .map_err(|error: LoadError| fail(error.to_string()))?;
    tracing::info!(
        rule = %spec.name,
        version = %info.version,
        source = %spec.source,
        subscriptions = ?info.metrics,
        compiled = if cached { "from cache" } else { "now" },
        ?compile_time,
        "Rule loaded."
    );
    Ok(LoadedRule {
        name: spec.name.as_str().into(),
        subscription: Subscription::new(&info.metrics),
        info,
        instance,
        version: 1,
        hash: content_hash(&bytes),
        targets: spec.targets.clone(),
    })
}
