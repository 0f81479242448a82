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
    /// stack overflow.
    #[error("trap: {0}")]
    Trap(String),
}

impl CallError {
    /// A short, stable name for the kind of failure, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::MemoryLimit(_) => "memory_limit",
            CallError::Trap(_) => "trap",
        }
    }
}

/// One rule, instantiated and `init`ed, ready for samples.
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
    /// Instantiates the rule and calls `init` with its JSON config.
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
            output: Output::new(&name),
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
                LoadError::InitFailed(error) => error,
                other => CallError::Trap(format!("re-instantiating after a failure: {other}")),
            })?;
        }
        let live = self.live.as_mut().expect("instantiated above");
        let timeout = self.limits.evaluate_timeout;
        prepare_call(&mut live.store, &self.output, timeout);
        match live.rule.call_evaluate(&mut live.store, sample) {
            Ok(verdict) => {
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
            self.state.clone(),
            &self.output,
        );
        let mut store = Store::new(self.runtime.engine(), data);
        store.limiter(|data| &mut data.limiter);
        let timeout = self.limits.init_timeout;
        prepare_call(&mut store, &self.output, timeout);
        let rule = match self.prepared.pre.instantiate(&mut store) {
            Ok(rule) => rule,
            Err(error) => return Err(self.instantiate_error(error, &store, timeout)),
        };
        let info = match rule.call_init(&mut store, &self.config) {
            Ok(Ok(info)) => info,
            Ok(Err(message)) => return Err(LoadError::InitRefused(message)),
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
        LoadError::InitFailed(classify(error, store.data(), &self.output, timeout))
    }

    fn classify(&self, error: wasmtime::Error, timeout: Duration) -> CallError {
        let data = self.live.as_ref().map(|live| live.store.data());
        match data {
            Some(data) => classify(error, data, &self.output, timeout),
            None => CallError::Trap(format!("{error:#}")),
        }
    }
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
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
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
