//! Dispatch: the pipeline's side of remediation. Takes the actions a verdict
//! asks for, hands each to [`Remediation::handle`] on a task of its own (a
//! run can take its whole timeout; the pipeline never waits for it), and
//! brings the outcome back so it reaches the rule with its next sample of
//! that target. It also keeps the audit log within its retention: at start,
//! and then every [`RETENTION_EVERY`] ([`Dispatch::tick`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use super::{
    ActionSpec, AuditLog, AuditSettings, BreakerTrip, ClaimStore, RealExecutor, Remediation,
    TenantActions,
};
use crate::clock::now_ms;
use crate::names::{ActionName, NodeId, RuleName};
use crate::plugins::Evaluation;
use crate::runtime::ActionOutcome;
use crate::state::StateDb;

/// Outcomes on their way back before the tasks that report them wait.
const OUTCOMES: usize = 1024;
/// How often records past `[audit] max_age` are pruned. (The size bound is
/// kept by every append.)
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The outcome of one request, on its way back to the rule.
#[derive(Debug)]
pub struct Feedback {
    /// The rule that asked.
    pub rule: RuleName,
    /// The target it asked about.
    pub target: String,
    /// What became of the request.
    pub outcome: ActionOutcome,
    /// The breaker this run opened, if it did.
    pub breaker_opened: Option<BreakerTrip>,
}

/// Requests handled, by action and outcome (`succeeded`, `failed`,
/// `timed-out`, `dry-run`, `refused`): the read model of this stage.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ActionStats(Arc<Mutex<BTreeMap<(ActionName, &'static str), u64>>>);

impl ActionStats {
    /// Counts so far, by (action, outcome).
    pub fn snapshot(&self) -> BTreeMap<(ActionName, &'static str), u64> {
        self.lock().clone()
    }

    fn handled(&self, action: &str, outcome: &'static str) {
        *self
            .lock()
            .entry((ActionName::from(action), outcome))
            .or_default() += 1;
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<(ActionName, &'static str), u64>> {
        // Counters: no invariant a panic could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Hands action requests to the remediation gate and collects outcomes.
pub struct Dispatch {
    remediation: Arc<Remediation>,
    stats: ActionStats,
    feedback: mpsc::Sender<Feedback>,
    outcomes: mpsc::Receiver<Feedback>,
    /// When retention last ran, and whether a run is under way.
    retained_ms: u64,
    retaining: Arc<AtomicBool>,
}

impl Dispatch {
    /// Opens the audit log in `state` and starts remediation with the
    /// declared `actions`. Runs a previous process left unfinished are
    /// marked interrupted and logged; records past the retention of
    /// `audit` are deleted first. In a cluster, `claims` is where enforced
    /// runs are claimed, and this node's id.
    pub fn start(
        actions: BTreeMap<ActionName, ActionSpec>,
        audit: AuditSettings,
        state: &StateDb,
        claims: Option<(Arc<dyn ClaimStore>, NodeId)>,
    ) -> anyhow::Result<Self> {
        let audit = AuditLog::open_with(state, audit).context("cannot open the audit log")?;
        let now = now_ms();
        let pruned = audit
            .enforce_retention(now)
            .context("cannot prune the audit log")?;
        if pruned > 0 {
            tracing::info!(
                records = pruned,
                "Pruned audit records past their retention."
            );
        }
        let executor =
            Arc::new(RealExecutor::new().context("cannot build the HTTP client for actions")?);
        let (mut remediation, interrupted) = Remediation::start(actions, audit, executor, now_ms())
            .context("cannot read the audit log")?;
        if let Some((store, node)) = claims {
            remediation = remediation.with_claims(store, node);
        }
        for record in interrupted {
            tracing::warn!(
                audit_id = record.id,
                action = %record.action,
                target = %record.target,
                rule = %record.rule,
                "An action was running when vigil last stopped; it is recorded as interrupted."
            );
        }
        let (feedback, outcomes) = mpsc::channel(OUTCOMES);
        Ok(Dispatch {
            remediation: Arc::new(remediation),
            feedback,
            outcomes,
            retained_ms: now,
            retaining: Arc::default(),
            stats: ActionStats::default(),
        })
    }

    /// Decides, audits and (maybe) runs every action `evaluation` asks for,
    /// each on a task of its own.
    pub fn requested(&self, evaluation: &Evaluation) {
        let Ok(verdict) = &evaluation.result else {
            return;
        };
        for request in &verdict.actions {
            let (remediation, feedback) = (self.remediation.clone(), self.feedback.clone());
            let stats = self.stats.clone();
            let (rule, version) = (evaluation.rule.clone(), evaluation.version);
            let target = evaluation.sample.target.clone();
            let request = request.clone();
            // The line about the request is the rule's doing: it comes out
            // of the rule's log budget.
            let log = evaluation.log.clone();
            tokio::spawn(async move {
                match remediation
                    .handle(&rule, version, &target, &request, now_ms())
                    .await
                {
                    Ok(handled) => {
                        stats.handled(&request.action, handled.outcome.status.as_str());
                        if log.allow() {
                            tracing::info!(
                            rule = %rule,
                            target = %target,
                            action = %request.action,
                            audit_id = handled.audit_id,
                            status = ?handled.outcome.status,
                            detail = %handled.outcome.report.detail,
                            "Action request handled."
                            );
                        }
                        let outcome = handled
                            .outcome
                            .to_action_outcome(&request.action, request.params.clone());
                        let _ = feedback
                            .send(Feedback {
                                rule,
                                target,
                                outcome,
                                breaker_opened: handled.breaker_opened,
                            })
                            .await;
                    }
                    Err(error) => tracing::error!(
                        rule = %rule,
                        target = %target,
                        action = %request.action,
                        %error,
                        "Action request not handled: the audit log cannot be written, so nothing ran."
                    ),
                }
            });
        }
    }

    /// Requests handled so far, by action and outcome.
    pub fn stats(&self) -> ActionStats {
        self.stats.clone()
    }

    /// The audit log, for readers (the API).
    pub fn audit(&self) -> &super::AuditLog {
        self.remediation.audit()
    }

    /// The next outcome to hand back.
    pub async fn next_outcome(&mut self) -> Option<Feedback> {
        self.outcomes.recv().await
    }

    /// The periodic check: every [`RETENTION_EVERY`], prunes the audit log
    /// on a blocking thread (never two at once), so the pipeline does not
    /// wait on the database.
    pub fn tick(&mut self) {
        let now = now_ms();
        let every = RETENTION_EVERY.as_millis() as u64;
        if now < self.retained_ms.saturating_add(every)
            || self.retaining.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.retained_ms = now;
        let (audit, retaining) = (self.remediation.audit().clone(), self.retaining.clone());
        tokio::task::spawn_blocking(move || {
            match audit.enforce_retention(now) {
                Ok(0) => {}
                Ok(records) => {
                    tracing::info!(records, "Pruned audit records past their retention.")
                }
                Err(error) => {
                    tracing::error!(%error, "Pruning the audit log failed; it is tried again in a minute.")
                }
            }
            retaining.store(false, Ordering::Release);
        });
    }

    /// The actions whose circuit breaker is open now.
    pub fn open_breakers(&self) -> Vec<BreakerTrip> {
        self.remediation.open_breakers(now_ms())
    }

    /// Swaps the declared actions and what each tenant may request (at
    /// start and on a config reload); history and runs in flight are kept.
    pub fn reconfigure(&self, actions: BTreeMap<ActionName, ActionSpec>, tenants: TenantActions) {
        self.remediation.reconfigure(actions, tenants);
    }
}
