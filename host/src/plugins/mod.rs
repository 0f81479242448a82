//! Rules as the host runs them: loading (read, compile, link, `init`), the
//! metrics each rule subscribed to, and one worker thread per rule.
//!
//! Loading refuses a rule with the exact reason, naming the rule, its file
//! and where the config declares it. Nothing is half-loaded: a rule is
//! either ready for samples or an error.

pub mod builtin;
mod subscription;
mod worker;

use std::sync::Arc;

pub use subscription::Subscription;
pub use worker::{Evaluation, FailurePolicy, RuleCounters, RuleHealth, RuleWorker};

use crate::config::{RuleSource, RuleSpec};
use crate::runtime::{LoadError, RuleInfo, RuleInstance, Runtime};
use crate::state::StateDb;

/// A rule ready to evaluate samples.
pub struct LoadedRule {
    /// Its name from the config.
    pub name: Arc<str>,
    /// What it said about itself in `init`.
    pub info: RuleInfo,
    /// The metrics it asked for.
    pub subscription: Subscription,
    /// The running instance.
    pub instance: RuleInstance,
}

/// Why a rule could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("rule `{name}` ({file}, declared at {origin}): {reason}")]
pub struct RuleLoadError {
    /// The rule's name.
    pub name: String,
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
    let fail = |reason: String| RuleLoadError {
        name: spec.name.clone(),
        file: spec.source.to_string(),
        origin: spec.origin.clone(),
        reason,
    };
    let bytes: std::borrow::Cow<'static, [u8]> = match &spec.source {
        RuleSource::Builtin(builtin) => builtin.wasm.into(),
        RuleSource::File(path) => std::fs::read(path)
            .map_err(|error| fail(format!("cannot read the file: {error}")))?
            .into(),
    };
    let prepared = runtime
        .prepare(&bytes)
        .map_err(|error| fail(error.to_string()))?;
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
        "Rule loaded."
    );
    Ok(LoadedRule {
        name: spec.name.as_str().into(),
        subscription: Subscription::new(&info.metrics),
        info,
        instance,
    })
}
