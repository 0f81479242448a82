//! One thread per rule, evaluating the samples sent to it in order, and the
//! failure policy that sets a failing rule aside.
//!
//! Rules are called synchronously (a wasm call is a few microseconds), so each
//! rule gets a plain thread rather than a slot on the async runtime: a rule
//! that burns its whole deadline delays only its own queue, never the poll
//! loop or another rule.
//!
//! After `quarantine_after` failures in a row the rule is quarantined: the
//! samples that arrive meanwhile are not evaluated (each is reported as
//! skipped), and after a backoff that doubles on every new quarantine (up to
//! a maximum) the next sample tries the rule again. One success ends it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{LoadedRule, Subscription};
use crate::config::FailurePolicy;
use crate::runtime::{ActionOutcome, CallError, RuleInstance, Sample, Verdict};

/// Samples waiting for one rule before senders wait.
const QUEUE: usize = 1024;

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
    pub rule: Arc<str>,
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
}

/// What a worker reports.
#[derive(Debug)]
pub enum WorkerEvent {
    /// One sample evaluated (or skipped).
    Evaluated(Evaluation),
    /// The worker finished its queue and stopped; nothing more will come
    /// from it.
    Stopped(Arc<str>),
}

/// Per-rule counters, readable while the rule runs.
#[derive(Debug, Default)]
pub struct RuleCounters {
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
    /// Times the rule was quarantined.
    pub quarantines: AtomicU64,
    /// Samples not evaluated because the rule was quarantined.
    pub skipped: AtomicU64,
}

impl RuleCounters {
    fn count(&self, result: &Result<Verdict, CallError>) {
        let counter = match result {
            Ok(_) => None,
            Err(CallError::Timeout(_)) => Some(&self.timeouts),
            Err(CallError::MemoryLimit(_)) => Some(&self.memory_limits),
            Err(CallError::Trap(_)) => Some(&self.traps),
            Err(CallError::VerdictTooLarge(_)) => Some(&self.verdicts_too_large),
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

/// A rule's worker thread and the queue that feeds it.
pub struct RuleWorker {
    name: Arc<str>,
    queue: mpsc::Sender<Job>,
    thread: JoinHandle<()>,
}

/// What a worker is sent. Samples and swaps share one queue, so a swap
/// lands between two samples: each sample is evaluated exactly once, by the
/// version before the swap or the one after.
enum Job {
    Sample(Arc<Sample>),
    Swap(Box<LoadedRule>),
    /// The outcome of an action this rule requested for a target.
    Feedback(String, ActionOutcome),
}

impl RuleWorker {
    /// Starts a thread that evaluates every sample it is sent and reports
    /// each outcome on `results`.
    pub fn spawn(
        rule: LoadedRule,
        policy: FailurePolicy,
        counters: Arc<RuleCounters>,
        results: mpsc::UnboundedSender<WorkerEvent>,
    ) -> Self {
        let (queue, mut jobs) = mpsc::channel::<Job>(QUEUE);
        let name = rule.name.clone();
        let mut worker = Worker {
            name: rule.name,
            feedback: HashMap::new(),
            version: rule.version,
            subscription: rule.subscription,
            instance: rule.instance,
            policy,
            counters,
            consecutive: 0,
            backoff: policy.initial_backoff,
            quarantined_until: None,
            last_error: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("rule-{name}"))
            .spawn(move || {
                while let Some(job) = jobs.blocking_recv() {
                    match job {
                        Job::Sample(sample) => {
                            let evaluation = worker.evaluate(&sample);
                            if results.send(WorkerEvent::Evaluated(evaluation)).is_err() {
                                return;
                            }
                        }
                        Job::Swap(rule) => worker.swap(*rule),
                        Job::Feedback(target, outcome) => {
                            worker.feedback.entry(target).or_default().push(outcome);
                        }
                    }
                }
                let _ = results.send(WorkerEvent::Stopped(worker.name.clone()));
            })
            .expect("spawning a rule thread");
        RuleWorker {
            name,
            queue,
            thread,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a sample, waiting while the rule's queue is full.
    pub async fn send(&self, sample: Arc<Sample>) {
        if self.queue.send(Job::Sample(sample)).await.is_err() {
            tracing::error!(rule = %self.name, "Rule worker stopped; sample not evaluated.");
        }
    }

    /// Hands the rule the outcome of an action it requested, with its next
    /// sample of `target`.
    pub async fn feedback(&self, target: String, outcome: ActionOutcome) {
        if self
            .queue
            .send(Job::Feedback(target, outcome))
            .await
            .is_err()
        {
            tracing::warn!(rule = %self.name, "Rule worker stopped; action feedback dropped.");
        }
    }

    /// Queues a new version of the rule; it takes over after the samples
    /// already queued. A version not newer than the running one is ignored.
    pub async fn swap(&self, rule: LoadedRule) {
        if self.queue.send(Job::Swap(Box::new(rule))).await.is_err() {
            tracing::error!(rule = %self.name, "Rule worker stopped; new version not installed.");
        }
    }

    /// Closes the queue; the thread finishes the samples already queued,
    /// reports [`WorkerEvent::Stopped`] and ends, without anyone waiting.
    pub fn close(self) {
        drop(self.queue);
    }

    /// Closes the queue and waits for the samples already queued.
    pub fn stop(self) {
        drop(self.queue);
        if self.thread.join().is_err() {
            tracing::error!(rule = %self.name, "Rule worker panicked.");
        }
    }
}

/// What the worker thread owns.
struct Worker {
    name: Arc<str>,
    /// Action outcomes waiting for the next sample of their target.
    feedback: HashMap<String, Vec<ActionOutcome>>,
    version: u64,
    subscription: Subscription,
    instance: RuleInstance,
    policy: FailurePolicy,
    counters: Arc<RuleCounters>,
    consecutive: u32,
    /// The length of the next quarantine.
    backoff: Duration,
    quarantined_until: Option<Instant>,
    last_error: Option<CallError>,
}

impl Worker {
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

    fn evaluate(&mut self, sample: &Arc<Sample>) -> Evaluation {
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
        let health = self.update_health(&result);
        Evaluation {
            rule: self.name.clone(),
            version: self.version,
            sample: view,
            result,
            duration,
            health,
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

    #[test]
    fn counters_and_quarantine_follow_the_failures() {
        let runtime = Runtime::new().unwrap();
        let state = StateDb::in_memory().unwrap();
        let path = std::path::Path::new(env!("VIGIL_RULES_DIR")).join("fixture_hostile.wasm");
        let spec = RuleSpec {
            name: "hostile".into(),
            source: RuleSource::File(path),
            config_json: r#"{"attack": "panic"}"#.into(),
            limits: Limits::default(),
            failure_policy: FailurePolicy::default(),
            origin: "test".into(),
        };
        let rule = super::super::load(&runtime, &state, &spec).unwrap();
        let policy = FailurePolicy {
            quarantine_after: 2,
            initial_backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        };
        let counters = Arc::new(RuleCounters::default());
        let (results, mut evaluations) = mpsc::unbounded_channel();
        let worker = RuleWorker::spawn(rule, policy, counters.clone(), results);
        let runtime_tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let sample = Arc::new(crate::sources::make_sample("t", &[], Ok(vec![]), 1));
        runtime_tokio.block_on(async {
            for _ in 0..4 {
                worker.send(sample.clone()).await;
            }
        });
        worker.stop();
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
