//! One rule's evaluation, wherever it runs: the state a pool thread takes
//! with the rule ([`Worker`]: its instance, failure record and waiting
//! action outcomes), what it reports ([`WorkerEvent`]), the failure policy
//! that sets a failing rule aside, and the counters the API reads.
//!
//! After `quarantine_after` failures in a row the rule is quarantined: the
//! samples that arrive meanwhile are not evaluated (each is reported as
//! skipped), and after a backoff that doubles on every new quarantine (up to
//! a maximum) the next sample tries the rule again. One success ends it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{LoadedRule, Subscription};
use crate::config::FailurePolicy;
use crate::names::RuleName;
use crate::runtime::{ActionOutcome, CallError, RuleInstance, RuleLog, Sample, Verdict};

/// Outcomes kept for one target until its next sample (the newest).
const MAX_FEEDBACK_PER_TARGET: usize = 32;

/// Where a rule stands after an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleHealth {
    /// The last call succeeded.
    Healthy,
    /// Failing, not (yet) quarantined.
    Failing {
        /// Failures in a row.
        consecutive: u32,
    },
    /// Set aside after too many failures in a row.
    Quarantined {
        /// Failures in a row.
        consecutive: u32,
        /// The failure that led here.
        last_error: CallError,
        /// Until the next try.
        retry_in: Duration,
    },
}

/// The outcome of one rule on one sample.
#[derive(Debug)]
pub struct Evaluation {
    /// The rule's name.
    pub rule: RuleName,
    /// The version of the rule that evaluated it: 1 at start, +1 per reload.
    pub version: u64,
    /// The sample as the rule saw it (only its subscribed metrics).
    pub sample: Arc<Sample>,
    /// Its verdict, or why there is none.
    pub result: Result<Verdict, CallError>,
    /// How long the call took (zero when skipped).
    pub duration: Duration,
    /// The rule's health after this evaluation.
    pub health: RuleHealth,
    /// The rule's log budget: the host's lines about this evaluation (a
    /// failure, the actions it asked for) are taken from it.
    pub log: RuleLog,
}

/// What a worker reports.
#[derive(Debug)]
pub enum WorkerEvent {
    /// One sample evaluated (or skipped).
    Evaluated(Evaluation),
    /// The worker finished its queue and stopped; nothing more will come
    /// from it.
    Stopped {
        /// The rule.
        rule: RuleName,
        /// Samples that were queued but not evaluated because the host
        /// was shutting down and the grace period ran out.
        abandoned: u64,
    },
}

/// Upper bounds (seconds) of the evaluation duration histogram: a Rust
/// rule takes microseconds, Python milliseconds; the default deadline is
/// 100 ms.
const EVALUATION_BUCKETS: [f64; 12] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
    1.0,
];

/// Upper bounds (seconds) of the latency histogram (offered to evaluated):
/// from a call's few microseconds to the seconds a sample may wait behind
/// a rule that runs to its deadline on every sample.
const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a rule stands now, as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleState {
    /// `healthy`, `failing` or `quarantined` (`unknown` before the first
    /// evaluation).
    pub health: &'static str,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// The failure that led to the quarantine, while quarantined.
    #[serde(rename = "last_failure")]
    pub last_error: Option<String>,
    /// Until when it is quarantined (ms since the epoch).
    pub quarantined_until_ms: Option<u64>,
}

impl RuleState {
    fn of(health: &RuleHealth) -> Self {
        match health {
            RuleHealth::Healthy => RuleState {
                health: "healthy",
                ..RuleState::default()
            },
            RuleHealth::Failing { consecutive } => RuleState {
                health: "failing",
                consecutive_failures: *consecutive,
                ..RuleState::default()
            },
            RuleHealth::Quarantined {
                consecutive,
                last_error,
                retry_in,
            } => RuleState {
                health: "quarantined",
                consecutive_failures: *consecutive,
                last_error: Some(last_error.to_string()),
                quarantined_until_ms: Some(
                    crate::clock::now_ms().saturating_add(retry_in.as_millis() as u64),
                ),
            },
        }
    }
}

/// Per-rule counters, readable while the rule runs.
#[derive(Debug)]
pub struct RuleCounters {
    /// How the rule stands after its last evaluation.
    pub state: std::sync::Mutex<RuleState>,
    /// How long calls take (skipped ones are not counted).
    pub durations: prometheus_client::metrics::histogram::Histogram,
    /// How long from a sample's offer to the end of its call: the wait in
    /// the queue plus the call (skipped ones are not counted).
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// Calls made (successful or not).
    pub evaluations: AtomicU64,
    /// Calls that hit their deadline.
    pub timeouts: AtomicU64,
    /// Calls that hit the memory cap.
    pub memory_limits: AtomicU64,
    /// Calls that trapped otherwise.
    pub traps: AtomicU64,
    /// Verdicts refused as too large.
    pub verdicts_too_large: AtomicU64,
    /// Verdicts refused for an invalid alert or label name.
    pub invalid_verdicts: AtomicU64,
    /// Calls that passed the host more data than it copies out of one call.
    pub copy_limits: AtomicU64,
    /// Times the rule was quarantined.
    pub quarantines: AtomicU64,
    /// Samples not evaluated because the rule was quarantined.
    pub skipped: AtomicU64,
    /// Samples dropped for this rule because its queue was full.
    pub dropped: AtomicU64,
    /// Samples dropped for this rule because its tenant was past its
    /// evaluation rate.
    pub rate_limited: AtomicU64,
    /// Samples queued but not evaluated at shutdown.
    pub abandoned: AtomicU64,
    /// Action outcomes dropped because too many were waiting.
    pub feedback_dropped: AtomicU64,
}

impl Default for RuleCounters {
    fn default() -> Self {
        RuleCounters {
            state: std::sync::Mutex::new(RuleState {
                health: "unknown",
                ..RuleState::default()
            }),
            durations: prometheus_client::metrics::histogram::Histogram::new(EVALUATION_BUCKETS),
            latency: prometheus_client::metrics::histogram::Histogram::new(LATENCY_BUCKETS),
            evaluations: AtomicU64::default(),
            timeouts: AtomicU64::default(),
            memory_limits: AtomicU64::default(),
            traps: AtomicU64::default(),
            verdicts_too_large: AtomicU64::default(),
            invalid_verdicts: AtomicU64::default(),
            copy_limits: AtomicU64::default(),
            quarantines: AtomicU64::default(),
            skipped: AtomicU64::default(),
            dropped: AtomicU64::default(),
            rate_limited: AtomicU64::default(),
            abandoned: AtomicU64::default(),
            feedback_dropped: AtomicU64::default(),
        }
    }
}

impl RuleCounters {
    /// How the rule stands now.
    pub fn state(&self) -> RuleState {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn settled(&self, health: &RuleHealth) {
        let state = RuleState::of(health);
        let mut current = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current != state {
            *current = state;
        }
    }

    fn count(&self, result: &Result<Verdict, CallError>) {
        let counter = match result {
            Ok(_) => None,
            Err(CallError::Timeout(..)) => Some(&self.timeouts),
            Err(CallError::MemoryLimit(_)) => Some(&self.memory_limits),
            Err(CallError::Trap(_)) => Some(&self.traps),
            Err(CallError::VerdictTooLarge(_)) => Some(&self.verdicts_too_large),
            Err(CallError::InvalidVerdict(_)) => Some(&self.invalid_verdicts),
            Err(CallError::CopyLimit(_)) => Some(&self.copy_limits),
            Err(CallError::Quarantined(_)) => Some(&self.skipped),
        };
        if !matches!(result, Err(CallError::Quarantined(_))) {
            self.evaluations.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every rule's counters by name, shared between the workers and readers
/// (the API, tests). A rule keeps its counters across reloads.
#[derive(Debug, Clone, Default)]
pub struct RuleBoard(
    Arc<std::sync::Mutex<std::collections::BTreeMap<RuleName, Arc<RuleCounters>>>>,
);

impl RuleBoard {
    /// The counters of `rule`, created on first use.
    pub fn counters(&self, rule: &RuleName) -> Arc<RuleCounters> {
        let mut board = self.0.lock().expect("rule board lock");
        board.entry(rule.clone()).or_default().clone()
    }

    /// The counters of `rule`, if it ever ran.
    pub fn get(&self, rule: &str) -> Option<Arc<RuleCounters>> {
        self.0.lock().expect("rule board lock").get(rule).cloned()
    }

    /// Every rule's counters, by name.
    pub fn snapshot(&self) -> Vec<(RuleName, Arc<RuleCounters>)> {
        let board = self.0.lock().expect("rule board lock");
        board
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect()
    }
}

/// What a rule is told besides samples. A thread applies these before the
/// rule's next sample, so each sample is evaluated exactly once, by the
/// version before a swap or the one after.
pub(super) enum Control {
    /// A new version.
    Swap(Box<LoadedRule>),
    /// The outcome of an action this rule requested for a target.
    Feedback(String, ActionOutcome),
    /// Targets that are no longer polled.
    Forget(Vec<crate::names::TargetName>),
}

/// A rule's state, owned by whichever thread serves it.
pub(super) struct Worker {
    name: RuleName,
    /// Action outcomes waiting for the next sample of their target.
    feedback: HashMap<String, VecDeque<ActionOutcome>>,
    version: u64,
    subscription: Subscription,
    instance: RuleInstance,
    policy: FailurePolicy,
    counters: Arc<RuleCounters>,
    results: mpsc::Sender<WorkerEvent>,
    consecutive: u32,
    /// The length of the next quarantine.
    backoff: Duration,
    quarantined_until: Option<Instant>,
    last_error: Option<CallError>,
}

impl Worker {
    /// A rule about to serve its first sample, reporting on `results`.
    pub(super) fn new(
        rule: LoadedRule,
        policy: FailurePolicy,
        counters: Arc<RuleCounters>,
        results: mpsc::Sender<WorkerEvent>,
    ) -> Self {
        Worker {
            name: rule.name,
            feedback: HashMap::new(),
            version: rule.version,
            subscription: rule.subscription,
            instance: rule.instance,
            policy,
            counters,
            results,
            consecutive: 0,
            backoff: policy.initial_backoff,
            quarantined_until: None,
            last_error: None,
        }
    }

    /// Applies the swaps and outcomes given since the last sample.
    pub(super) fn take_orders(&mut self, orders: Vec<Control>) {
        for order in orders {
            match order {
                Control::Swap(rule) => self.swap(*rule),
                Control::Feedback(target, outcome) => {
                    let waiting = self.feedback.entry(target).or_default();
                    if waiting.len() == MAX_FEEDBACK_PER_TARGET {
                        waiting.pop_front();
                        self.counters
                            .feedback_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    waiting.push_back(outcome);
                }
                Control::Forget(targets) => self.forget(&targets),
            }
        }
    }

    /// Drops what the rule and its worker keep for targets no longer
    /// polled: the series the instance defined (`forget-target`) and the
    /// outcomes waiting for a next sample that will not come.
    fn forget(&mut self, targets: &[crate::names::TargetName]) {
        for target in targets {
            self.feedback.remove(target.as_str());
            if let Err(error) = self.instance.forget_target(target) {
                // The instance is rebuilt before the next sample, with no
                // targets; nothing is lost but this call.
                tracing::warn!(rule = %self.name, target = %target, %error, "Forgetting a removed target failed.");
            }
        }
    }

    /// Sends `event` to the alert stage, waiting while its queue is full.
    /// False when nobody reads them any more.
    pub(super) fn report(&self, event: WorkerEvent) -> bool {
        self.results.blocking_send(event).is_ok()
    }

    /// Reports that the rule stopped, with the samples it left.
    pub(super) fn stopped(self: Box<Self>, abandoned: u64) {
        self.counters
            .abandoned
            .fetch_add(abandoned, Ordering::Relaxed);
        let rule = self.name.clone();
        self.report(WorkerEvent::Stopped { rule, abandoned });
    }

    /// Installs a newer version. It starts with a clean failure record: the
    /// fix an operator just deployed deserves a try right away.
    fn swap(&mut self, rule: LoadedRule) {
        if rule.version <= self.version {
            tracing::warn!(rule = %self.name, running = self.version, offered = rule.version, "Ignored an older rule version.");
            return;
        }
        self.version = rule.version;
        self.subscription = rule.subscription;
        self.instance = rule.instance;
        self.consecutive = 0;
        self.backoff = self.policy.initial_backoff;
        self.quarantined_until = None;
        self.last_error = None;
    }

    /// Evaluates `sample`, offered at `offered`.
    pub(super) fn evaluate(&mut self, sample: &Arc<Sample>, offered: Instant) -> Evaluation {
        let mut view = self.subscription.view(sample);
        if let Some(outcomes) = self.feedback.remove(&sample.target) {
            let mut with_feedback = (*view).clone();
            with_feedback.recent_actions.extend(outcomes);
            view = Arc::new(with_feedback);
        }
        let (result, duration) = match self.quarantined_until {
            Some(until) if Instant::now() < until => {
                let retry_in = until - Instant::now();
                (Err(CallError::Quarantined(retry_in)), Duration::ZERO)
            }
            _ => {
                let started = Instant::now();
                let result = self.instance.evaluate(&view);
                (result, started.elapsed())
            }
        };
        self.counters.count(&result);
        if !matches!(result, Err(CallError::Quarantined(_))) {
            self.counters.durations.observe(duration.as_secs_f64());
            let latency = offered.elapsed();
            self.counters.latency.observe(latency.as_secs_f64());
        }
        let health = self.update_health(&result);
        self.counters.settled(&health);
        Evaluation {
            rule: self.name.clone(),
            version: self.version,
            sample: view,
            result,
            duration,
            health,
            log: self.instance.log_budget(),
        }
    }

    fn update_health(&mut self, result: &Result<Verdict, CallError>) -> RuleHealth {
        match result {
            Ok(_) => {
                if self.quarantined_until.take().is_some() || self.consecutive > 0 {
                    tracing::info!(rule = %self.name, "Rule evaluates again.");
                }
                self.consecutive = 0;
                self.backoff = self.policy.initial_backoff;
                self.last_error = None;
                return RuleHealth::Healthy;
            }
            Err(CallError::Quarantined(_)) => {}
            Err(error) => {
                self.consecutive += 1;
                self.last_error = Some(error.clone());
                if self.consecutive >= self.policy.quarantine_after {
                    let backoff = self.backoff;
                    self.quarantined_until = Some(Instant::now() + backoff);
                    self.backoff = (backoff * 2).min(self.policy.max_backoff);
                    self.counters.quarantines.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        rule = %self.name,
                        failures = self.consecutive,
                        retry_in = %humantime::format_duration(backoff),
                        %error,
                        "Rule quarantined."
                    );
                }
            }
        }
        match (&self.quarantined_until, &self.last_error) {
            (Some(until), Some(last_error)) => RuleHealth::Quarantined {
                consecutive: self.consecutive,
                last_error: last_error.clone(),
                retry_in: until.saturating_duration_since(Instant::now()),
            },
            _ => RuleHealth::Failing {
                consecutive: self.consecutive,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RuleSource, RuleSpec};
    use crate::runtime::{Health, Limits, Runtime};
    use crate::state::StateDb;

    /// Issue 15: what a rule keeps per target (its series, in the rule and
    /// in the host's table for its instance) goes when the target is
    /// removed, so it stays as large as the targets the rule sees.
    #[test]
    fn a_removed_target_is_forgotten_by_the_rule_before_its_next_sample() {
        let runtime = Runtime::new().unwrap();
        let state = StateDb::in_memory().unwrap();
        let spec = crate::config::Settings::local_default().rules.remove(0);
        let rule = super::super::load(&runtime, &state, &spec).unwrap();
        let (results, _evaluations) = mpsc::channel(16);
        let mut worker = Worker::new(
            rule,
            FailurePolicy::default(),
            Arc::new(RuleCounters::default()),
            results,
        );
        let poll = |target: &str| {
            let metrics = vec![crate::runtime::Metric {
                name: "cpu_usage".into(),
                value: 95.0,
                labels: vec![],
            }];
            Arc::new(crate::sources::make_sample(target, &[], Ok(metrics), 1))
        };
        for target in ["a", "b", "c"] {
            worker.evaluate(&poll(target), Instant::now());
        }
        assert_eq!(worker.instance.defined_targets(), 3);
        worker.take_orders(vec![Control::Forget(vec!["a".into(), "c".into()])]);
        assert_eq!(worker.instance.defined_targets(), 1);
        // A target that comes back is defined again and evaluated as before.
        let evaluation = worker.evaluate(&poll("c"), Instant::now());
        let verdict = evaluation.result.expect("evaluate");
        assert_eq!(verdict.alert_names(), ["CpuUsageHigh"]);
        assert_eq!(worker.instance.defined_targets(), 2);
    }

    #[test]
    fn counters_and_quarantine_follow_the_failures() {
        let runtime = Runtime::new().unwrap();
        let state = StateDb::in_memory().unwrap();
        let path = std::path::Path::new(env!("VIGIL_RULES_DIR")).join("fixture_hostile.wasm");
        let spec = RuleSpec {
            targets: Default::default(),
            name: "hostile".into(),
            source: RuleSource::File(path),
            config_json: r#"{"attack": "panic"}"#.into(),
            limits: Limits::default(),
            failure_policy: FailurePolicy::default(),
            origin: "test".into(),
            trust: Default::default(),
            tenant: None,
        };
        let rule = super::super::load(&runtime, &state, &spec).unwrap();
        let policy = FailurePolicy {
            quarantine_after: 2,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        };
        let counters = Arc::new(RuleCounters::default());
        let (results, mut evaluations) = mpsc::channel(16);
        let pool = super::super::Pool::start(2, super::super::QUEUE);
        let worker =
            super::super::RuleWorker::spawn(&pool, rule, policy, counters.clone(), results);
        let sample = Arc::new(crate::sources::make_sample("t", &[], Ok(vec![]), 1));
        for _ in 0..4 {
            worker.offer(sample.clone()).unwrap();
        }
        worker.close().join();
        let mut healths = Vec::new();
        while let Ok(event) = evaluations.try_recv() {
            if let WorkerEvent::Evaluated(evaluation) = event {
                assert!(matches!(evaluation.sample.health, Health::Up));
                healths.push(evaluation.health);
            }
        }
        assert_eq!(healths.len(), 4);
        assert_eq!(healths[0], RuleHealth::Failing { consecutive: 1 });
        assert!(matches!(
            healths[1],
            RuleHealth::Quarantined { consecutive: 2, .. }
        ));
        assert!(matches!(
            healths[3],
            RuleHealth::Quarantined { consecutive: 2, .. }
        ));
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        assert_eq!(read(&counters.evaluations), 2);
        assert_eq!(read(&counters.traps), 2);
        assert_eq!(read(&counters.quarantines), 1);
        assert_eq!(read(&counters.skipped), 2);
        assert_eq!(read(&counters.timeouts), 0);
    }
}
