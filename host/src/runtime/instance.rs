//! A long-lived rule instance: one store, reused call after call, rebuilt
//! from the pre-linked component after a failure.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, Trap};

use super::bindings::Rule;
use super::component::{LoadError, Prepared};
use super::sandbox::{Output, StoreData};
use super::{Limits, RuleInfo, Runtime, Sample, Verdict, deadline_ticks};
use crate::state::RuleState;

/// Why one call into a rule failed. The rule's instance is rebuilt before the
/// next call; the host and the other rules are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Ran past its deadline.
    #[error("timeout: exceeded its {}ms deadline", .0.as_millis())]
    Timeout(Duration),
    /// Tried to grow its memory past the cap.
    #[error("memory limit: tried to use more than {} MiB", .0 / (1024 * 1024))]
    MemoryLimit(usize),
    /// Any other trap: a panic, `unreachable`, an out-of-bounds access, a
    /// stack overflow, a denied host call.
    #[error("trap: {0}")]
    Trap(String),
    /// Returned a verdict past the limits on alerts, actions or text.
    #[error("verdict too large: {0}")]
    VerdictTooLarge(String),
    /// Not called: the rule is quarantined after failing too often.
    #[error("quarantined: not evaluated, next try in {}", humantime::format_duration(Duration::from_secs(.0.as_secs())))]
    Quarantined(Duration),
}

impl CallError {
    /// A short, stable name for the kind of failure, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::MemoryLimit(_) => "memory_limit",
            CallError::Trap(_) => "trap",
            CallError::VerdictTooLarge(_) => "verdict_too_large",
            CallError::Quarantined(_) => "quarantined",
        }
    }
}

/// One rule, instantiated and configured, ready for samples.
pub struct RuleInstance {
    name: Arc<str>,
    runtime: Runtime,
    prepared: Prepared,
    config: String,
    limits: Limits,
    state: RuleState,
    output: Output,
    /// `None` after a failed call, until the next call rebuilds it.
    live: Option<Live>,
}

struct Live {
    store: Store<StoreData>,
    rule: Rule,
}

impl RuleInstance {
    /// Instantiates the rule and calls `configure` with its JSON config.
    pub fn start(
        runtime: &Runtime,
        name: &str,
        prepared: Prepared,
        config: String,
        limits: Limits,
        state: RuleState,
    ) -> Result<(Self, RuleInfo), LoadError> {
        let name: Arc<str> = name.into();
        let mut instance = RuleInstance {
            output: Output::new(&name, limits.log_lines_per_second),
            name,
            runtime: runtime.clone(),
            prepared,
            config,
            limits,
            state,
            live: None,
        };
        let info = instance.instantiate()?;
        Ok((instance, info))
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Linear memory the live instance holds, in bytes (0 between a failed
    /// call and the next one, when there is no instance).
    pub fn memory_bytes(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |live| live.store.data().limiter.memory_bytes)
    }

    /// The limits this instance runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Evaluates one sample. On failure the instance is thrown away and the
    /// next call starts from a fresh one; state written during the failed
    /// call is dropped.
    pub fn evaluate(&mut self, sample: &Sample) -> Result<Verdict, CallError> {
        if self.live.is_none() {
            self.instantiate().map_err(|error| match error {
                LoadError::ConfigureFailed(error) => error,
                other => CallError::Trap(format!("re-instantiating after a failure: {other}")),
            })?;
        }
        let live = self.live.as_mut().expect("instantiated above");
        let timeout = self.limits.evaluate_timeout;
        prepare_call(&mut live.store, &self.output, timeout);
        match live.rule.call_evaluate(&mut live.store, sample) {
            Ok(verdict) => {
                if let Err(error) = check_verdict(&verdict, &self.limits) {
                    // The instance is sound; only this answer is refused,
                    // together with the state it wrote.
                    live.store.data_mut().host.pending.clear();
                    return Err(error);
                }
                commit_state(&mut live.store);
                Ok(verdict)
            }
            Err(error) => {
                let error = self.classify(error, timeout);
                self.live = None;
                Err(error)
            }
        }
    }

    fn instantiate(&mut self) -> Result<RuleInfo, LoadError> {
        self.live = None;
        let data = StoreData::new(
            self.name.clone(),
            self.limits.max_memory_bytes,
            hostcall_fuel(&self.limits),
            self.state.clone(),
            &self.output,
        );
        let mut store = Store::new(self.runtime.engine(), data);
        store.limiter(|data| &mut data.limiter);
        // Caps what wasmtime copies out of the rule in one call (a verdict,
        // a log line, a state value) before it allocates it on the host.
        store.set_hostcall_fuel(hostcall_fuel(&self.limits));
        let timeout = self.limits.init_timeout;
        prepare_call(&mut store, &self.output, timeout);
        let rule = match self.prepared.pre.instantiate(&mut store) {
            Ok(rule) => rule,
            Err(error) => return Err(self.instantiate_error(error, &store, timeout)),
        };
        let info = match rule.call_configure(&mut store, &self.config) {
            Ok(Ok(info)) => info,
            Ok(Err(message)) => return Err(LoadError::ConfigureRefused(message)),
            Err(error) => return Err(self.instantiate_error(error, &store, timeout)),
        };
        commit_state(&mut store);
        self.live = Some(Live { store, rule });
        Ok(info)
    }

    fn instantiate_error(
        &self,
        error: wasmtime::Error,
        store: &Store<StoreData>,
        timeout: Duration,
    ) -> LoadError {
        LoadError::ConfigureFailed(classify(error, store.data(), &self.output, timeout))
    }

    fn classify(&self, error: wasmtime::Error, timeout: Duration) -> CallError {
        let data = self.live.as_ref().map(|live| live.store.data());
        match data {
            Some(data) => classify(error, data, &self.output, timeout),
            None => CallError::Trap(format!("{error:#}")),
        }
    }
}

/// Bytes wasmtime may copy out of the rule per call: the verdict's text
/// limit plus room for the records around it, and never less than a state
/// value.
fn hostcall_fuel(limits: &Limits) -> usize {
    let records = (limits.max_alerts + limits.max_actions).saturating_mul(256);
    limits
        .max_verdict_bytes
        .saturating_add(records)
        .max(2 * crate::state::MAX_VALUE_BYTES)
}

/// What wasmtime says when a call copies more than the hostcall fuel allows
/// (its error type is private, so the message is what there is to match).
const FUEL_EXHAUSTED: &str = "too much data is being copied between the host and the guest";

/// Refuses verdicts past the limits: a rule cannot flood the alert pipeline
/// or the sinks behind it.
fn check_verdict(verdict: &Verdict, limits: &Limits) -> Result<(), CallError> {
    let too_large = |what: String| Err(CallError::VerdictTooLarge(what));
    if verdict.alerts.len() > limits.max_alerts {
        return too_large(format!(
            "{} alerts (limit {})",
            verdict.alerts.len(),
            limits.max_alerts
        ));
    }
    if verdict.actions.len() > limits.max_actions {
        return too_large(format!(
            "{} actions (limit {})",
            verdict.actions.len(),
            limits.max_actions
        ));
    }
    let labels = |labels: &[super::Label]| -> usize {
        labels.iter().map(|l| l.name.len() + l.value.len()).sum()
    };
    let bytes: usize = verdict
        .alerts
        .iter()
        .map(|a| a.name.len() + a.summary.len() + labels(&a.labels) + labels(&a.annotations))
        .chain(
            verdict
                .actions
                .iter()
                .map(|a| a.action.len() + a.reason.len() + labels(&a.params)),
        )
        .sum();
    if bytes > limits.max_verdict_bytes {
        return too_large(format!(
            "{bytes} bytes of text (limit {})",
            limits.max_verdict_bytes
        ));
    }
    Ok(())
}

/// Arms the deadline and resets per-call bookkeeping.
fn prepare_call(store: &mut Store<StoreData>, output: &Output, timeout: Duration) {
    store.set_epoch_deadline(deadline_ticks(timeout));
    store.data_mut().limiter.hit = false;
    store.data_mut().host.pending.clear();
    output.stderr.clear_last_line();
}

fn commit_state(store: &mut Store<StoreData>) {
    let host = &mut store.data_mut().host;
    if let Err(error) = host.state.commit(&mut host.pending) {
        tracing::error!(rule = %host.rule, %error, "Saving rule state failed; the writes of this call are lost.");
        host.pending.clear();
    }
}

/// Names a failure for what it is: the deadline, the memory cap, or a trap
/// (with the panic message a Rust guest printed, when there is one).
fn classify(
    error: wasmtime::Error,
    data: &StoreData,
    output: &Output,
    timeout: Duration,
) -> CallError {
    if data.limiter.hit {
        return CallError::MemoryLimit(data.limiter.max_memory);
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Timeout(timeout);
    }
    if error.root_cause().to_string().starts_with(FUEL_EXHAUSTED) {
        return CallError::VerdictTooLarge(format!(
            "the rule returned more data than the host copies out of one call (about {} bytes)",
            data.limiter.max_copy
        ));
    }
    // The root cause, without the wasm backtrace wasmtime wraps it in.
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    match output.stderr.last_line() {
        Some(line) if !line.trim().is_empty() => {
            CallError::Trap(format!("{trap} (stderr: {})", line.trim()))
        }
        _ => CallError::Trap(trap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_reports_the_linear_memory_it_holds() {
        let runtime = Runtime::new().unwrap();
        let prepared = runtime
            .prepare(crate::runtime::builtin::THRESHOLD.wasm)
            .unwrap();
        let state = crate::state::StateDb::in_memory()
            .unwrap()
            .rule("t")
            .unwrap();
        let limits = Limits::default();
        let (instance, _) =
            RuleInstance::start(&runtime, "t", prepared, "{}".into(), limits, state).unwrap();
        // At least the one page every Rust rule starts with, under the cap.
        let bytes = instance.memory_bytes();
        assert!(bytes >= 64 * 1024, "{bytes}");
        assert!(bytes <= limits.max_memory_bytes, "{bytes}");
        assert_eq!(bytes % (64 * 1024), 0, "whole wasm pages: {bytes}");
    }

    #[test]
    fn call_errors_read_as_what_they_are() {
        let timeout = CallError::Timeout(Duration::from_millis(50));
        assert_eq!(timeout.to_string(), "timeout: exceeded its 50ms deadline");
        let memory = CallError::MemoryLimit(64 * 1024 * 1024);
        assert_eq!(
            memory.to_string(),
            "memory limit: tried to use more than 64 MiB"
        );
        assert_eq!(memory.kind(), "memory_limit");
    }
}
