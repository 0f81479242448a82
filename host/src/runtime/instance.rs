//! A long-lived rule instance: one store, reused call after call, rebuilt
//! from the pre-linked component after a failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, WasmBacktrace};

use super::bindings::Rule;
use super::component::{LoadError, Prepared};
use super::epoch::Ticking;
use super::sandbox::{self, Output, StoreData};
use super::targets::{Lookup, Targets};
use super::{EPOCH_TICK, Limits, RuleInfo, Runtime, Sample, Verdict, deadline_ticks};
use crate::names::Syntax;
use crate::state::RuleState;

/// Why one call into a rule failed. The rule's instance is rebuilt before the
/// next call; the host and the other rules are unaffected.
///
/// Each message names the limit that was hit and the `[[rules]]` config key
/// that raises it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Ran past its deadline; the second field is the config key that sets it.
    #[error("timeout: exceeded its {}ms deadline (raise `{}`)", .0.as_millis(), .1)]
    Timeout(Duration, &'static str),
    /// Tried to grow its memories and tables past the cap.
    #[error(
        "memory limit: tried to use more than {} MiB of linear memory and tables (raise `max_memory_mib`)",
        .0 / (1024 * 1024)
    )]
    MemoryLimit(usize),
    /// Any other trap: a panic, `unreachable`, an out-of-bounds access, a
    /// stack overflow, a denied host call.
    #[error("trap: {0}")]
    Trap(String),
    /// Returned a verdict past the limits on alerts, actions or text.
    #[error("verdict too large: {0}")]
    VerdictTooLarge(String),
    /// Returned a verdict the host will not pass on: an alert or label name
    /// that is not a valid name.
    #[error("invalid verdict: {0}")]
    InvalidVerdict(String),
    /// Passed the host more data in one host call (a log message, a state
    /// value) than the host copies out of a call.
    #[error("copy limit: {0}")]
    CopyLimit(String),
    /// Not called: the rule is quarantined after failing too often.
    #[error("quarantined: not evaluated, next try in {}", humantime::format_duration(Duration::from_secs(.0.as_secs())))]
    Quarantined(Duration),
}

impl CallError {
    /// A short, stable name for the kind of failure, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(..) => "timeout",
            CallError::MemoryLimit(_) => "memory_limit",
            CallError::Trap(_) => "trap",
            CallError::VerdictTooLarge(_) => "verdict_too_large",
            CallError::InvalidVerdict(_) => "invalid_verdict",
            CallError::CopyLimit(_) => "copy_limit",
            CallError::Quarantined(_) => "quarantined",
        }
    }
}

/// Which export a call went to: it decides the deadline's config key and
/// what a copy past the limit was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Configure,
    Evaluate,
}

impl Call {
    fn timeout_key(self) -> &'static str {
        match self {
            Call::Configure => "init_timeout",
            Call::Evaluate => "timeout",
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
    /// The targets this instance was told about; goes with the store.
    targets: Targets,
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

    /// The rule's log budget, for the host's own lines about the rule.
    pub fn log_budget(&self) -> super::RuleLog {
        self.output.log_budget()
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
        let (started, _ticking) =
            prepare_call(&self.runtime, &mut live.store, &self.output, timeout);
        // One deadline covers the definition and the evaluation.
        let called = match live.targets.lookup(sample) {
            Lookup::Known(id) => Ok(id),
            Lookup::Define(defined) => live
                .rule
                .call_define_target(
                    &mut live.store,
                    defined.id,
                    &sample.target,
                    &defined.labels,
                    &defined.series,
                )
                .map(|()| defined.id),
        }
        .and_then(|id| {
            live.rule.call_evaluate(
                &mut live.store,
                id,
                sample.timestamp_ms,
                &sample.health,
                live.targets.values(sample),
                &sample.recent_actions,
            )
        });
        match called {
            Ok(verdict) => {
                let checked = if started.elapsed() > deadline(timeout) {
                    // Returned just as the deadline passed, between two
                    // epoch ticks: what is left (the commit) would run past
                    // it, so the call counts as timed out.
                    Err(CallError::Timeout(timeout, Call::Evaluate.timeout_key()))
                } else {
                    check_verdict(&verdict, &self.limits)
                };
                if let Err(error) = checked {
                    // The instance is sound; only this answer is refused,
                    // together with the state it wrote.
                    live.store.data_mut().host.pending.clear();
                    return Err(error);
                }
                commit_state(&mut live.store);
                Ok(verdict)
            }
            Err(error) => {
                let error = classify(
                    error,
                    live.store.data(),
                    &self.output,
                    timeout,
                    Call::Evaluate,
                );
                self.live = None;
                Err(error)
            }
        }
    }

    /// Tells the rule that `target` is gone, so that it and the host drop
    /// what they kept for it. Nothing happens when the live instance never
    /// saw the target (or there is no live instance: a new one starts with
    /// no targets). A failure rebuilds the instance, like a failed
    /// evaluation.
    pub fn forget_target(&mut self, target: &str) -> Result<(), CallError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        let Some(id) = live.targets.forget(target) else {
            return Ok(());
        };
        let timeout = self.limits.evaluate_timeout;
        let _ticking = prepare_call(&self.runtime, &mut live.store, &self.output, timeout);
        match live.rule.call_forget_target(&mut live.store, id) {
            Ok(()) => {
                commit_state(&mut live.store);
                Ok(())
            }
            Err(error) => {
                let error = classify(
                    error,
                    live.store.data(),
                    &self.output,
                    timeout,
                    Call::Evaluate,
                );
                self.live = None;
                Err(error)
            }
        }
    }

    /// Targets the live instance has been told about and not forgotten (0
    /// when there is no live instance).
    pub fn defined_targets(&self) -> usize {
        self.live.as_ref().map_or(0, |live| live.targets.len())
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
        let (started, _ticking) = prepare_call(&self.runtime, &mut store, &self.output, timeout);
        let rule = match self.prepared.shared.pre.instantiate(&mut store) {
            Ok(rule) => rule,
            Err(error) => return Err(self.instantiate_error(error, &store, timeout)),
        };
        let info = match rule.call_configure(&mut store, &self.config) {
            Ok(Ok(info)) => info,
            Ok(Err(message)) => return Err(LoadError::ConfigureRefused(message)),
            Err(error) => return Err(self.instantiate_error(error, &store, timeout)),
        };
        if started.elapsed() > deadline(timeout) {
            return Err(LoadError::ConfigureFailed(CallError::Timeout(
                timeout,
                Call::Configure.timeout_key(),
            )));
        }
        commit_state(&mut store);
        self.live = Some(Live {
            store,
            rule,
            targets: Targets::default(),
        });
        Ok(info)
    }

    fn instantiate_error(
        &self,
        error: wasmtime::Error,
        store: &Store<StoreData>,
        timeout: Duration,
    ) -> LoadError {
        LoadError::ConfigureFailed(classify(
            error,
            store.data(),
            &self.output,
            timeout,
            Call::Configure,
        ))
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
            "{} alerts (limit {}; raise `max_alerts`)",
            verdict.alerts.len(),
            limits.max_alerts
        ));
    }
    if verdict.actions.len() > limits.max_actions {
        return too_large(format!(
            "{} actions (limit {}; raise `max_actions`)",
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
            "{bytes} bytes of text (limit {}; raise `max_verdict_bytes`)",
            limits.max_verdict_bytes
        ));
    }
    check_names(verdict)
}

/// Refuses alert and label names outside the Prometheus convention
/// (`[a-zA-Z_][a-zA-Z0-9_]*`): they become label names in every sink, and a
/// name with spaces, `=` or a newline could forge the host's output.
fn check_names(verdict: &Verdict) -> Result<(), CallError> {
    for alert in &verdict.alerts {
        check_name("alert name", &alert.name)?;
        for label in alert.labels.iter().chain(&alert.annotations) {
            check_name("label name", &label.name)?;
        }
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), CallError> {
    if Syntax::Identifier.accepts(name) {
        return Ok(());
    }
    let mut shown: String = name.chars().take(64).collect();
    if shown.len() < name.len() {
        shown.push_str("...");
    }
    Err(CallError::InvalidVerdict(format!(
        "{what} \"{}\" is not a valid name: use letters, digits and `_`, not starting with a digit",
        shown.escape_debug()
    )))
}

/// Counts the call in with the epoch ticker (so its deadline has a clock),
/// arms the deadline and resets per-call bookkeeping; returns when the call
/// starts, and the count, to hold until the call returns.
fn prepare_call<'r>(
    runtime: &'r Runtime,
    store: &mut Store<StoreData>,
    output: &Output,
    timeout: Duration,
) -> (Instant, Ticking<'r>) {
    let ticking = runtime.ticker().call();
    store.set_epoch_deadline(deadline_ticks(timeout));
    store.data_mut().limiter.hit = false;
    store.data_mut().host.pending.clear();
    output.stderr.clear_last_line();
    (Instant::now(), ticking)
}

/// The time a call may take before the epoch stops it: `timeout` rounded up
/// to whole ticks, plus the tick under way.
fn deadline(timeout: Duration) -> Duration {
    EPOCH_TICK.saturating_mul(u32::try_from(deadline_ticks(timeout)).unwrap_or(u32::MAX))
}

fn commit_state(store: &mut Store<StoreData>) {
    let host = &mut store.data_mut().host;
    if let Err(error) = host.state.commit(&mut host.pending) {
        tracing::error!(rule = %host.rule, %error, "Saving rule state failed; the writes of this call are lost.");
        host.pending.clear();
    }
}

/// Names a failure for what it is: the deadline, the memory cap, the copy
/// limit, or a trap (with the panic message a Rust guest printed, when there
/// is one).
fn classify(
    error: wasmtime::Error,
    data: &StoreData,
    output: &Output,
    timeout: Duration,
    call: Call,
) -> CallError {
    if data.limiter.hit {
        return CallError::MemoryLimit(data.limiter.max_memory);
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return CallError::Timeout(timeout, call.timeout_key());
    }
    let root = error.root_cause().to_string();
    if root.starts_with(FUEL_EXHAUSTED) {
        return copy_limit(&error, data.limiter.max_copy, call);
    }
    if let Some(asked) = root
        .strip_prefix("requested len ")
        .and_then(|rest| rest.split_whitespace().next())
    {
        return CallError::Trap(format!(
            "asked `wasi:random` for {asked} bytes in one call; the limit is {} (fixed)",
            sandbox::MAX_RANDOM_BYTES
        ));
    }
    if root.contains("resource table has no free keys") {
        return CallError::Trap(format!(
            "holds more than {} WASI handles (streams, pollables) at once; the limit is fixed",
            sandbox::MAX_RESOURCES
        ));
    }
    // The root cause, without the wasm backtrace wasmtime wraps it in.
    let trap = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => root,
    };
    match output.stderr.last_line() {
        Some(line) if !line.trim().is_empty() => {
            CallError::Trap(format!("{trap} (stderr: {})", line.trim()))
        }
        _ => CallError::Trap(trap),
    }
}

/// Says where a copy past the hostcall fuel happened. With rule frames on
/// the stack the rule was calling the host (a log line, a state value);
/// without, wasmtime was copying the export's result out.
fn copy_limit(error: &wasmtime::Error, max_copy: usize, call: Call) -> CallError {
    let in_host_call = error
        .downcast_ref::<WasmBacktrace>()
        .is_some_and(|trace| !trace.frames().is_empty());
    if in_host_call {
        return CallError::CopyLimit(format!(
            "the rule passed more than about {max_copy} bytes to one host call (a log \
             message, a state value); the limit grows with `max_verdict_bytes`"
        ));
    }
    match call {
        Call::Evaluate => CallError::VerdictTooLarge(format!(
            "more than about {max_copy} bytes, the most the host copies out of one call \
             (raise `max_verdict_bytes`)"
        )),
        Call::Configure => CallError::CopyLimit(format!(
            "`configure` returned more than about {max_copy} bytes of rule info; the limit \
             grows with `max_verdict_bytes`"
        )),
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

    /// Issue 15: the SDK serves a call's arguments from an arena that is
    /// reset after each call and grows when a sample does not fit. Samples
    /// that shrink and grow past its block, each with its own values, must
    /// come back as exactly their own alerts.
    #[test]
    fn rust_rules_read_each_sample_right_as_samples_outgrow_the_sdk_arena() {
        let runtime = Runtime::new().unwrap();
        let prepared = runtime
            .prepare(crate::runtime::builtin::THRESHOLD.wasm)
            .unwrap();
        let state = crate::state::StateDb::in_memory()
            .unwrap()
            .rule("t")
            .unwrap();
        let (mut instance, _) = RuleInstance::start(
            &runtime,
            "t",
            prepared,
            "{}".into(),
            Limits::default(),
            state,
        )
        .unwrap();
        // 2,000 disks with 100-byte mount paths: about 300 KiB of sample,
        // many times the arena's first block. Every tenth disk is full.
        for (call, disks) in [3, 2_000, 3, 2_000, 2_000, 1, 2_000]
            .into_iter()
            .enumerate()
        {
            let mount = |disk: usize| format!("/{call}/{disk:0>98}");
            let value = 91.0 + call as f64;
            let full = |disk: usize| disk.is_multiple_of(10);
            let metrics = (0..disks)
                .map(|disk| crate::runtime::Metric {
                    name: "disk_used_percent".into(),
                    value: if full(disk) { value } else { 50.0 },
                    labels: vec![crate::runtime::Label {
                        name: "mount".into(),
                        value: mount(disk),
                    }],
                })
                .collect();
            let sample = crate::sources::make_sample("web-01", &[], Ok(metrics), 0);
            let verdict = instance.evaluate(&sample).expect("evaluate");
            let full_disks: Vec<usize> = (0..disks).filter(|&disk| full(disk)).collect();
            assert_eq!(verdict.alerts.len(), full_disks.len(), "call {call}");
            for (&disk, alert) in full_disks.iter().zip(&verdict.alerts) {
                let label = alert.labels.iter().find(|label| label.name == "mount");
                assert_eq!(
                    label.map(|label| label.value.as_str()),
                    Some(mount(disk).as_str()),
                    "call {call}, disk {disk}"
                );
                assert!(
                    alert.summary.contains(&format!("{value}")),
                    "call {call}: {}",
                    alert.summary
                );
            }
        }
    }

    fn threshold(runtime: &Runtime) -> RuleInstance {
        let prepared = runtime
            .prepare(crate::runtime::builtin::THRESHOLD.wasm)
            .unwrap();
        let state = crate::state::StateDb::in_memory()
            .unwrap()
            .rule("t")
            .unwrap();
        // Every metric, so that a sample's series reach the rule as sent.
        let config =
            r#"{"thresholds": {"cpu_usage": 80, "memory_usage": 80, "disk_used_percent": 90}}"#;
        RuleInstance::start(
            runtime,
            "t",
            prepared,
            config.into(),
            Limits::default(),
            state,
        )
        .unwrap()
        .0
    }

    fn poll(target: &str, readings: &[(&str, f64, Option<&str>)]) -> Sample {
        let metrics = readings
            .iter()
            .map(|&(name, value, mount)| crate::runtime::Metric {
                name: name.into(),
                value,
                labels: mount
                    .map(|mount| crate::runtime::Label {
                        name: "mount".into(),
                        value: mount.into(),
                    })
                    .into_iter()
                    .collect(),
            })
            .collect();
        crate::sources::make_sample(target, &[], Ok(metrics), 1)
    }

    fn alerts(verdict: &Verdict) -> Vec<(String, String, Vec<crate::runtime::Label>)> {
        verdict
            .alerts
            .iter()
            .map(|alert| {
                (
                    alert.name.clone(),
                    alert.summary.clone(),
                    alert.labels.clone(),
                )
            })
            .collect()
    }

    /// Issue 15: with contract 0.3.0 the rule keeps each target's series
    /// and gets values by index. Samples whose series change from one poll
    /// to the next (another order, one more or one fewer, other labels, a
    /// down poll between, two targets in turn) must be evaluated exactly as
    /// a fresh instance, which has every target defined anew, evaluates them.
    #[test]
    fn samples_whose_series_change_evaluate_as_on_a_fresh_instance() {
        let runtime = Runtime::new().unwrap();
        let mut long_lived = threshold(&runtime);
        let cpu = ("cpu_usage", 91.0, None);
        let mem = ("memory_usage", 20.0, None);
        let var = ("disk_used_percent", 95.0, Some("/var"));
        let data = ("disk_used_percent", 50.0, Some("/data"));
        let down = crate::sources::make_sample("a", &[], Err("refused".into()), 2);
        let samples = [
            poll("a", &[cpu, mem, var]),
            poll("b", &[mem, cpu]),
            poll("a", &[mem, cpu, var]),
            poll("a", &[var, data]),
            poll("a", &[data, var]),
            down.clone(),
            poll("a", &[data, var]),
            poll("b", &[mem, cpu, data]),
            poll("a", &[("memory_usage", 99.0, None)]),
            poll("a", &[]),
            poll("a", &[cpu, mem, var]),
            down,
        ];
        for (index, sample) in samples.iter().enumerate() {
            let got = long_lived.evaluate(sample).expect("long-lived evaluate");
            let expected = threshold(&runtime)
                .evaluate(sample)
                .expect("fresh evaluate");
            assert_eq!(
                alerts(&got),
                alerts(&expected),
                "sample {index}: {sample:?}"
            );
        }
        assert_eq!(long_lived.defined_targets(), 2);
    }

    /// A removed target is forgotten on both sides; its id goes to the next
    /// new target, which the rule must know by its own name and series.
    #[test]
    fn forgotten_targets_leave_the_table_and_their_ids_serve_new_ones() {
        let runtime = Runtime::new().unwrap();
        let mut rule = threshold(&runtime);
        let down =
            |target: &str| crate::sources::make_sample(target, &[], Err("refused".into()), 1);
        for target in ["a", "b", "c"] {
            rule.evaluate(&down(target)).unwrap();
        }
        assert_eq!(rule.defined_targets(), 3);
        rule.forget_target("b").unwrap();
        rule.forget_target("never-seen").unwrap();
        assert_eq!(rule.defined_targets(), 2);
        let verdict = rule.evaluate(&down("d")).unwrap();
        assert_eq!(verdict.alerts[0].summary, "target `d` is down: refused");
        let verdict = rule
            .evaluate(&poll("d", &[("cpu_usage", 95.0, None)]))
            .unwrap();
        assert_eq!(verdict.alert_names(), ["CpuUsageHigh"]);
        let verdict = rule.evaluate(&down("c")).unwrap();
        assert_eq!(verdict.alerts[0].summary, "target `c` is down: refused");
        assert_eq!(rule.defined_targets(), 3);
    }

    #[test]
    fn a_runaway_call_is_stopped_at_its_deadline_after_the_ticker_went_idle() {
        let runtime = Runtime::new().unwrap();
        let spin = std::path::Path::new(env!("VIGIL_RULES_DIR")).join("fixture_spin.wasm");
        let prepared = runtime.prepare(&std::fs::read(spin).unwrap()).unwrap();
        let state = crate::state::StateDb::in_memory()
            .unwrap()
            .rule("spin")
            .unwrap();
        let limits = Limits {
            evaluate_timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let (mut rule, _) =
            RuleInstance::start(&runtime, "spin", prepared, "{}".into(), limits, state).unwrap();
        for _ in 0..2 {
            // Nothing runs: the ticker parks, and the call must wake it.
            let give_up = Instant::now() + Duration::from_secs(10);
            while !runtime.ticker().parked() {
                assert!(Instant::now() < give_up, "the idle ticker never parked");
                std::thread::sleep(EPOCH_TICK);
            }
            // On its own thread: without a clock the call would never end.
            let (done, result) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let error = rule.evaluate(&poll("a", &[("cpu_usage", 1.0, None)]));
                let _ = done.send((rule, error));
            });
            let (back, error) = result
                .recv_timeout(Duration::from_secs(30))
                .expect("the runaway call was never stopped");
            let error = error.unwrap_err();
            assert!(matches!(error, CallError::Timeout(..)), "{error}");
            rule = back;
        }
    }

    #[test]
    fn call_errors_read_as_what_they_are() {
        let timeout = CallError::Timeout(Duration::from_millis(50), "timeout");
        assert_eq!(
            timeout.to_string(),
            "timeout: exceeded its 50ms deadline (raise `timeout`)"
        );
        let memory = CallError::MemoryLimit(64 * 1024 * 1024);
        assert_eq!(
            memory.to_string(),
            "memory limit: tried to use more than 64 MiB of linear memory and tables (raise `max_memory_mib`)"
        );
        assert_eq!(memory.kind(), "memory_limit");
    }
}
