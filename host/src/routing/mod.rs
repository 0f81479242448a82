//! Routing: the step between sources and rule workers. Each sample goes to
//! the rules whose [`TargetSelector`] takes its target (every rule, unless
//! its `targets` / `target_labels` say otherwise; tenant grants and cluster
//! partitions will narrow it here too), by a queue per rule.
//!
//! | guarantees | refuses to |
//! |---|---|
//! | a sample is offered to each selecting rule once, in arrival order | wait on any rule, or offer a rule a target its selector does not take |
//! | a rule whose queue is full loses that sample alone, counted per rule | let one slow rule delay another, or the alerts |
//! | the first drop of a spell is reported at once (for `RuleOverloaded`) and logged; later ones are summed per tick | log a line per dropped sample |
//!
//! The router owns the rule workers: installing a new version, removing a
//! rule and handing action outcomes back all go through it, since it holds
//! the only way into each worker.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::names::{RuleName, TargetName};
use crate::plugins::{
    FailurePolicy, LoadedRule, Pool, Refused, RuleBoard, RuleWorker, Stopping, WorkerEvent,
};
use crate::runtime::{ActionOutcome, Sample};

mod selector;

pub use selector::{NamePattern, TargetSelector};

/// Totals across every rule, readable while the host runs.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Samples that reached the router.
    pub samples: AtomicU64,
    /// (sample, rule) pairs queued.
    pub queued: AtomicU64,
    /// (sample, rule) pairs dropped because the rule's queue was full.
    pub dropped: AtomicU64,
}

/// The routing stage and the rule workers behind it.
pub struct Router {
    /// Each rule's worker, and the targets it sees.
    workers: BTreeMap<RuleName, (RuleWorker, TargetSelector)>,
    /// The threads that evaluate every rule.
    pool: Pool,
    board: RuleBoard,
    results: mpsc::Sender<WorkerEvent>,
    /// Samples dropped per rule since the last [`Router::tick`].
    dropping: BTreeMap<RuleName, u64>,
    /// Rules removed whose worker has not reported `Stopped` yet.
    removed: HashSet<RuleName>,
    stats: Arc<RouterStats>,
}

impl Router {
    /// A router with no rules yet, whose rules run on `pool`. Workers
    /// report on `results`; their counters are published on `board`.
    pub fn new(board: RuleBoard, results: mpsc::Sender<WorkerEvent>, pool: Pool) -> Self {
        Router {
            workers: BTreeMap::new(),
            pool,
            board,
            results,
            dropping: BTreeMap::new(),
            removed: HashSet::new(),
            stats: Arc::default(),
        }
    }

    /// The router's totals.
    pub fn stats(&self) -> Arc<RouterStats> {
        self.stats.clone()
    }

    /// The threads that evaluate the rules (to set a tenant's share).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// How many rules are running.
    pub fn rules(&self) -> usize {
        self.workers.len()
    }

    /// Offers each of `samples`, in order, to every rule that selects it,
    /// never waiting. The burst is offered under one hold of the pool's
    /// lock and wakes its threads once ([`Pool::offering`]). Returns the
    /// rules that just started dropping samples (the first drop since the
    /// last tick), for the host's `RuleOverloaded` alert.
    pub fn route(&mut self, samples: impl IntoIterator<Item = Arc<Sample>>) -> Vec<RuleName> {
        let mut started = Vec::new();
        let mut closed = Vec::new();
        let mut offering = self.pool.offering();
        for sample in samples {
            self.stats.samples.fetch_add(1, Ordering::Relaxed);
            for (name, (worker, selector)) in &self.workers {
                if !selector.selects(&sample) {
                    continue;
                }
                match worker.offer_in(&mut offering, sample.clone()) {
                    Ok(()) => {
                        self.stats.queued.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Refused::Full) => {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        worker.counters().dropped.fetch_add(1, Ordering::Relaxed);
                        let dropped = self.dropping.entry(name.clone()).or_default();
                        *dropped += 1;
                        if *dropped == 1 {
                            started.push((name.clone(), sample.clone()));
                        }
                    }
                    // Counted by the worker: a tenant past its rate is a
                    // policy, not a rule that cannot keep up.
                    Err(Refused::RateLimited) => {}
                    Err(Refused::Closed) => closed.push(name.clone()),
                }
            }
        }
        // Logged once the threads can take the burst.
        drop(offering);
        for name in closed {
            tracing::error!(rule = %name, "Rule worker stopped; sample not evaluated.");
        }
        started
            .into_iter()
            .map(|(name, sample)| {
                tracing::warn!(rule = %name, target = %sample.target, "Rule is not keeping up; its queue is full and samples are dropped for it.");
                name
            })
            .collect()
    }

    /// The samples each rule dropped since the last tick (only rules that
    /// dropped any), and a fresh count from now on.
    pub fn tick(&mut self) -> BTreeMap<RuleName, u64> {
        let dropped = std::mem::take(&mut self.dropping);
        for (rule, count) in &dropped {
            tracing::warn!(rule = %rule, dropped = count, "Samples dropped for a rule that is not keeping up.");
        }
        dropped
    }

    /// Runs `rule`: as the next version of a running rule, or as a new
    /// rule (then with `policy`).
    /// The new version's selector applies from the next sample routed.
    pub fn install(&mut self, rule: LoadedRule, policy: FailurePolicy) {
        match self.workers.get_mut(&rule.name) {
            Some((worker, selector)) => {
                *selector = rule.targets.clone();
                worker.swap(rule);
            }
            None => {
                self.removed.remove(&rule.name);
                let counters = self.board.counters(&rule.name);
                let name = rule.name.clone();
                let selector = rule.targets.clone();
                let worker =
                    RuleWorker::spawn(&self.pool, rule, policy, counters, self.results.clone());
                self.workers.insert(name, (worker, selector));
            }
        }
    }

    /// Stops sending `rule` samples. Its worker finishes what is queued,
    /// then reports `Stopped`; see [`Router::stopped`].
    pub fn remove(&mut self, rule: &str) {
        if let Some((name, (worker, _))) = self.workers.remove_entry(rule) {
            self.dropping.remove(rule);
            self.removed.insert(name);
            // Not joined: it leaves the pool on its own once its queue is done.
            drop(worker.close());
        }
    }

    /// A worker reported `Stopped`. True when its rule was removed (and not
    /// installed again since): its alerts can end now, as no late
    /// evaluation can re-fire them.
    pub fn stopped(&mut self, rule: &str) -> bool {
        self.removed.remove(rule)
    }

    /// Hands the outcome of an action to the rule that asked for it.
    pub fn feedback(&self, rule: &str, target: String, outcome: ActionOutcome) {
        if let Some((worker, _)) = self.workers.get(rule) {
            worker.feedback(target, outcome);
        }
    }

    /// Tells every rule that `targets` stopped being polled, so that each
    /// drops what it kept for them (their series, waiting action outcomes).
    pub fn forget_targets(&self, targets: &[TargetName]) {
        if targets.is_empty() {
            return;
        }
        for (worker, _) in self.workers.values() {
            worker.forget_targets(targets);
        }
    }

    /// Closes every rule's queue for shutdown; the workers finish what is
    /// queued unless told to abandon it.
    pub fn close(self) -> Vec<Stopping> {
        self.workers
            .into_values()
            .map(|(worker, _)| worker.close())
            .collect()
    }
}
