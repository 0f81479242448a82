//! Remediation: rules ask for actions by name; the host decides whether they
//! run, runs them safely, and keeps an audit trail.
//!
//! ```text
//!  verdict.actions ──▶ Gate::check ──Decision──▶ AuditLog::record_decision ──▶ Executor::execute ──Outcome──▶ AuditLog::record_outcome
//!  (ActionRequest)     (pure: spec,              (durable, before any          (dry-run, or real:            Gate::finished (breaker)
//!                       history, now_ms)          execution)                    argv / HTTP, timeout)         feedback to the rule
//! ```
//!
//! In a cluster an approved enforced run is also claimed
//! ([`ClaimStore::claim`]) between the gate and the audit record, and the
//! claim is settled with the outcome after the run ([`claims`]).
//!
//! | module | guarantees | refuses to |
//! |---|---|---|
//! | [`config`] | actions are declared by the operator only and validated whole: placeholders name declared params, patterns are anchored, the program is fixed | accept a placeholder in `command[0]` or in a header, an unknown field, an unused param |
//! | [`gate`] | the seven checks, in order, first refusal wins; no clock, no I/O | run an undeclared action, a rule not allowed, an invalid or oversized param, past a cooldown, limit, open breaker, or twice at once for a target |
//! | [`exec`] | argv without a shell, one param one element; killed and reaped at its timeout with its process group; output capped | interpret a param |
//! | [`audit`] | a record before and after every run; an unfinished run shows after a crash; newest-first queries; a size and age bound | lose a run silently |
//! | [`claims`] | in a cluster, an enforced run is claimed in a shared store before it starts and settled after; a claim that never finished refuses the action as `outcome-unknown` until an operator releases it | run twice what a dead node may have half done, or run unclaimed |
//! | [`refusals`] | a repeated refusal adds to its record's count; at most N refusal records per rule a minute, the rest counted in one summary; no clock, no I/O | write one record per refusal |
//!
//! [`Remediation`] ties them together; it is what the pipeline calls.
//!
//! # Wiring it in
//!
//! 1. **Config.** Embed `BTreeMap<String, Spanned<ActionConfig>>` as
//!    `actions` in the config file struct and call
//!    [`ActionConfig::validate`]`(name, global_mode)` for each (prefix errors
//!    with `file:line: action `name`: `), or call [`parse_actions`] on the
//!    `actions` table. The global [`Mode`] (default dry-run) needs a key of
//!    its own outside `[actions]` (an action may be named `mode`), e.g. a
//!    top-level `remediation_mode = "enforce"`.
//! 2. **Start.** `AuditLog::open(&state_db)`, then
//!    [`Remediation::start`]`(specs, audit, Arc::new(RealExecutor::new()?), now_ms)`:
//!    it marks runs a previous process left `started` as `interrupted`
//!    (returned, to log or alert on) and replays recent history into the
//!    gate, so a restart does not reset cooldowns, limits or breakers.
//! 3. **Each verdict.** For each `verdict.actions` entry, on the async
//!    runtime (rule workers are plain threads):
//!    `tokio::spawn(async move { remediation.handle(rule, version, target, &request, now_ms).await })`.
//!    Spawn, do not await on the sample path: a run can take its whole
//!    timeout. `now_ms` is wall-clock ms since the Unix epoch.
//! 4. **Feedback.** [`Handled::outcome`]`.to_action_outcome(action, params)`
//!    goes into the next sample of that (rule, target) as `recent_actions`.
//! 5. **Alerts.** [`Handled::breaker_opened`] is `Some` once, when a breaker
//!    opens; [`Remediation::open_breakers`] gives the level for a
//!    `RemediationBreakerOpen` alert that resolves when it closes.
//! 6. **Reload.** [`Remediation::reconfigure`] swaps the declared actions;
//!    history and runs in flight are kept.
//! 7. **CLI.** `vigil audit` opens the database, `AuditLog::open`, and
//!    prints [`AuditLog::list`]`(&AuditQuery { .. })`. redb allows one
//!    process per file, so it works while the host is stopped (or, later,
//!    through the host's API).

pub mod audit;
pub mod claims;
pub mod config;
pub mod dispatch;
pub mod exec;
pub mod gate;
pub mod refusals;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

pub use audit::{
    AuditDecision, AuditError, AuditLog, AuditQuery, AuditRecord, AuditSettings, AuditStatus,
};
pub use claims::{Claim, ClaimError, ClaimStore, Claimed};
pub use config::{ActionConfig, ActionSpec, Mode, parse_actions};
pub use exec::{DryRunExecutor, Executor, Outcome, RealExecutor, RunReport};
pub use gate::{BreakerTrip, Decision, Gate, Invocation, Reason, Run, Status, TenantActions};

use crate::names::{ActionName, NodeId};
use crate::runtime::ActionRequest;

/// The gate, the audit log and an executor, used together the only safe
/// way: decide, (in a cluster) claim, record, execute, record, feed the
/// breaker.
pub struct Remediation {
    gate: Mutex<Gate>,
    audit: AuditLog,
    executor: Arc<dyn Executor>,
    /// In a cluster: where enforced runs are claimed, and as whom.
    claims: Option<(Arc<dyn ClaimStore>, NodeId)>,
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// Its audit record.
    pub audit_id: u64,
    /// How it ended (`refused` with the reason, `dry-run`, ...).
    pub outcome: Outcome,
    /// The breaker this run opened, if it did: raise an alert.
    pub breaker_opened: Option<BreakerTrip>,
}

impl Remediation {
    /// Starts remediation for `specs`. Runs in `enforce` mode go to
    /// `executor`; runs in `dry-run` mode never reach it. Marks what a
    /// previous process left unfinished as interrupted (returned) and
    /// replays the history the gate needs from the audit log.
    pub fn start(
        specs: BTreeMap<ActionName, ActionSpec>,
        audit: AuditLog,
        executor: Arc<dyn Executor>,
        now_ms: u64,
    ) -> Result<(Self, Vec<AuditRecord>), AuditError> {
        let interrupted = audit.interrupt_unfinished(now_ms)?;
        let mut gate = Gate::new(specs);
        let since =
            now_ms.saturating_sub(u64::try_from(gate.lookback().as_millis()).unwrap_or(u64::MAX));
        let mut history = audit.list(&AuditQuery {
            since_ms: Some(since),
            ..AuditQuery::default()
        })?;
        history.reverse();
        for record in history {
            if !matches!(record.decision, AuditDecision::Run { .. }) {
                continue;
            }
            // Timed on the gate's clock: the request time plus how long it ran.
            let finished = record.outcome.as_ref().and_then(|outcome| {
                let took = outcome.finished_ms.saturating_sub(outcome.started_ms);
                Some((record.status.finished_as()?, record.requested_ms + took))
            });
            gate.replay(
                &record.action,
                &record.target,
                record.requested_ms,
                finished,
            );
        }
        let remediation = Remediation {
            gate: Mutex::new(gate),
            audit,
            executor,
            claims: None,
        };
        Ok((remediation, interrupted))
    }

    /// In a cluster: claims every enforced run in `store` as `node` before
    /// it starts (see [`claims`]). Dry runs are not claimed: nothing runs.
    pub fn with_claims(mut self, store: Arc<dyn ClaimStore>, node: NodeId) -> Self {
        self.claims = Some((store, node));
        self
    }

    /// Decides on one request, records it, runs it if approved, records the
    /// outcome. An `Err` means the audit log failed; a run whose `started`
    /// record could not be written is not executed.
    ///
    /// Dropping the future mid-run kills the process (`kill_on_drop`) and
    /// clears it from in flight; its audit record stays `started` and shows
    /// as interrupted at the next start.
    pub async fn handle(
        &self,
        rule: &str,
        rule_version: u64,
        target: &str,
        request: &ActionRequest,
        now_ms: u64,
    ) -> Result<Handled, AuditError> {
        let mut decision = self.gate().check(rule, target, request, now_ms);
        // The gate put an approved run in flight: the guard takes it out
        // again if it does not get to run (refused by its claim, an audit
        // write that failed, the future dropped).
        let approved = match &decision {
            Decision::Run(run) => Some(run.clone()),
            Decision::Refuse(_) => None,
        };
        let mut guard = approved.as_ref().map(|run| InFlight {
            remediation: self,
            run,
            now_ms,
            done: false,
        });
        let mut claim = None;
        if let (Some(run), Some((store, node))) = (&approved, &self.claims)
            && run.mode == Mode::Enforce
        {
            let wanted = Claim::running(&run.action, target, rule, node, now_ms);
            match claimed(store.as_ref(), &wanted).await {
                Ok(revision) => claim = Some((wanted, revision)),
                Err(reason) => decision = Decision::Refuse(reason),
            }
        }
        let recorded =
            self.audit
                .record_decision(rule, rule_version, target, request, &decision, now_ms);
        let (run, mut guard) = match (decision, guard.take()) {
            (Decision::Run(run), Some(guard)) => (run, guard),
            (Decision::Refuse(reason), _) => {
                return Ok(Handled {
                    audit_id: recorded?,
                    outcome: Outcome::refused(&reason, now_ms),
                    breaker_opened: None,
                });
            }
            (Decision::Run(_), None) => unreachable!("an approved run has its guard"),
        };
        let audit_id = recorded?; // On error the guard closes the run unexecuted.
        let outcome = match run.mode {
            Mode::DryRun => DryRunExecutor.execute(&run).await,
            Mode::Enforce => self.executor.execute(&run).await,
        };
        guard.done = true;
        if let (Some((wanted, revision)), Some((store, _))) = (claim, &self.claims) {
            let settled = wanted.settled(outcome.status, outcome.report.finished_ms);
            if let Err(error) = store.settle(&settled, revision).await {
                tracing::error!(
                    action = %run.action,
                    target,
                    %error,
                    "The run finished but its claim could not be settled: the next request for this action and target is refused as \"outcome unknown\" until an operator releases the claim."
                );
            }
        }
        // The gate's clock, advanced by how long the run took.
        let took = outcome
            .report
            .finished_ms
            .saturating_sub(outcome.report.started_ms);
        let breaker_opened =
            self.gate()
                .finished(&run.action, &run.target, outcome.status, now_ms + took);
        self.audit.record_outcome(audit_id, &outcome)?;
        Ok(Handled {
            audit_id,
            outcome,
            breaker_opened,
        })
    }

    /// Swaps the declared actions (config reload), keeping history.
    pub fn reconfigure(&self, specs: BTreeMap<ActionName, ActionSpec>, tenants: TenantActions) {
        let mut gate = self.gate();
        gate.reconfigure(specs);
        gate.set_tenant_actions(tenants);
    }

    /// Breakers open now.
    pub fn open_breakers(&self, now_ms: u64) -> Vec<BreakerTrip> {
        self.gate()
            .open_breakers(now_ms)
            .into_iter()
            .cloned()
            .collect()
    }

    /// The audit log (for the API).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn gate(&self) -> MutexGuard<'_, Gate> {
        // The gate has no invariant a panic elsewhere could break halfway.
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Claims `wanted` in `store`: the revision to settle at, or why the run
/// must not go ahead.
async fn claimed(store: &dyn ClaimStore, wanted: &Claim) -> Result<u64, Reason> {
    match store.claim(wanted).await {
        Ok(Claimed::Ours(revision)) => Ok(revision),
        Ok(Claimed::Unknown(earlier)) => Err(Reason::OutcomeUnknown {
            action: wanted.action.clone(),
            target: wanted.target.clone(),
            node: earlier.node.to_string(),
            claimed_ms: earlier.claimed_ms,
        }),
        // Someone else's run started a moment ago: it is in flight there.
        Ok(Claimed::Taken) => Err(Reason::InFlight {
            action: wanted.action.clone(),
            target: wanted.target.clone(),
        }),
        Err(error) => Err(Reason::ClaimUnavailable {
            action: wanted.action.clone(),
            error: error.to_string(),
        }),
    }
}

/// Closes a run in the gate if `handle` did not get to (its audit write
/// failed, or the future was dropped), so it does not stay in flight for ever.
struct InFlight<'a> {
    remediation: &'a Remediation,
    run: &'a Run,
    now_ms: u64,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.remediation.gate().finished(
                &self.run.action,
                &self.run.target,
                Status::Refused,
                self.now_ms,
            );
        }
    }
}

/// `text`, cut to at most `max` bytes (on a character boundary) with its
/// full length noted: `xxxx… (1048576 bytes)`.
pub(crate) fn excerpt(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let kept = crate::text::prefix(text, max);
    Cow::Owned(format!("{kept}… ({} bytes)", text.len()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::runtime::Label;
    use crate::state::StateDb;

    /// Counts executions; "runs" for 10 ms and fails.
    #[derive(Default)]
    struct Failing(AtomicUsize);

    #[async_trait::async_trait]
    impl Executor for Failing {
        async fn execute(&self, _run: &Run) -> Outcome {
            self.0.fetch_add(1, Ordering::SeqCst);
            Outcome {
                status: Status::Failed,
                report: RunReport {
                    detail: "exited with status 1".into(),
                    exit_code: Some(1),
                    output_excerpt: String::new(),
                    started_ms: 5_000,
                    finished_ms: 5_010,
                },
            }
        }
    }

    fn specs(mode: &str) -> BTreeMap<ActionName, ActionSpec> {
        let text = format!(
            r#"
            [restart]
            command = ["/usr/bin/systemctl", "restart", "{{service}}"]
            params = {{ service = {{ values = ["nginx"] }} }}
            allowed_rules = ["threshold"]
            breaker = {{ failures = 2, window = "1h" }}
            mode = "{mode}"
            "#
        );
        parse_actions(&text.parse().unwrap(), Mode::DryRun).unwrap()
    }

    fn restart() -> ActionRequest {
        ActionRequest {
            action: "restart".into(),
            params: vec![Label {
                name: "service".into(),
                value: "nginx".into(),
            }],
            reason: "cpu high".into(),
        }
    }

    #[tokio::test]
    async fn enforce_runs_records_and_opens_the_breaker_which_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let executor = Arc::new(Failing::default());
        {
            let audit = AuditLog::open(&StateDb::open(&path).unwrap()).unwrap();
            let (remediation, interrupted) =
                Remediation::start(specs("enforce"), audit, executor.clone(), 0).unwrap();
            assert!(interrupted.is_empty());
            let first = remediation
                .handle("threshold", 1, "a", &restart(), 1_000)
                .await
                .unwrap();
            assert_eq!(first.outcome.status, Status::Failed);
            assert_eq!(first.breaker_opened, None);
            let second = remediation
                .handle("threshold", 1, "b", &restart(), 2_000)
                .await
                .unwrap();
            let trip = second.breaker_opened.expect("two failures open it");
            assert_eq!(trip.opened_ms, 2_010);
            let third = remediation
                .handle("threshold", 1, "c", &restart(), 3_000)
                .await
                .unwrap();
            assert_eq!(third.outcome.status, Status::Refused);
            assert!(third.outcome.report.detail.starts_with("breaker open: "));
            assert_eq!(executor.0.load(Ordering::SeqCst), 2);
            let record = remediation.audit().get(second.audit_id).unwrap().unwrap();
            assert_eq!(record.status, AuditStatus::Failed);
            let feedback = third.outcome.to_action_outcome("restart", restart().params);
            assert_eq!(feedback.status, crate::runtime::ActionStatus::Refused);
        }
        // After a restart the breaker is still open: history came back from the log.
        let audit = AuditLog::open(&StateDb::open(&path).unwrap()).unwrap();
        let (remediation, _) =
            Remediation::start(specs("enforce"), audit, executor.clone(), 4_000).unwrap();
        assert_eq!(remediation.open_breakers(4_000).len(), 1);
        let refused = remediation
            .handle("threshold", 1, "d", &restart(), 4_000)
            .await
            .unwrap();
        assert_eq!(refused.outcome.status, Status::Refused);
        assert_eq!(executor.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn dry_run_never_reaches_the_executor() {
        let executor = Arc::new(Failing::default());
        let audit = AuditLog::open(&StateDb::in_memory().unwrap()).unwrap();
        let (remediation, _) =
            Remediation::start(specs("dry-run"), audit, executor.clone(), 0).unwrap();
        let handled = remediation
            .handle("threshold", 7, "a", &restart(), 1_000)
            .await
            .unwrap();
        assert_eq!(handled.outcome.status, Status::DryRun);
        assert_eq!(
            handled.outcome.report.detail,
            r#"dry-run: would run ["/usr/bin/systemctl", "restart", "nginx"]"#
        );
        assert_eq!(executor.0.load(Ordering::SeqCst), 0);
        let record = remediation.audit().get(handled.audit_id).unwrap().unwrap();
        assert_eq!(record.status, AuditStatus::DryRun);
        // Which version of the rule asked is on the record.
        assert_eq!(record.rule_version, 7);
    }

    #[tokio::test]
    async fn a_run_left_started_is_reported_interrupted_at_the_next_start() {
        let state = StateDb::in_memory().unwrap();
        let audit = AuditLog::open(&state).unwrap();
        let mut gate = Gate::new(specs("enforce"));
        let decision = gate.check("threshold", "a", &restart(), 1_000);
        audit
            .record_decision("threshold", 1, "a", &restart(), &decision, 1_000)
            .unwrap();
        // ...the host dies here.
        let (remediation, interrupted) = Remediation::start(
            specs("enforce"),
            AuditLog::open(&state).unwrap(),
            Arc::new(Failing::default()),
            2_000,
        )
        .unwrap();
        assert_eq!(interrupted.len(), 1);
        assert_eq!(interrupted[0].status, AuditStatus::Interrupted);
        // Not left in flight: the target can be acted on again.
        let handled = remediation
            .handle("threshold", 1, "a", &restart(), 3_000)
            .await
            .unwrap();
        assert_eq!(handled.outcome.status, Status::Failed);
    }

    /// Claims in memory, as the NATS bucket keeps them; `down` makes
    /// every call fail.
    #[derive(Default)]
    struct Claims {
        held: Mutex<BTreeMap<String, (Claim, u64)>>,
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl ClaimStore for Claims {
        async fn claim(&self, claim: &Claim) -> Result<Claimed, ClaimError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(ClaimError("connection refused".into()));
            }
            let mut held = self.held.lock().unwrap();
            let key = claims::key(&claim.action, &claim.target);
            let revision = match held.get(&key) {
                None => 1,
                Some((existing, revision)) => {
                    if let Some(blocked) = claims::blocking(existing.clone()) {
                        return Ok(blocked);
                    }
                    revision + 1
                }
            };
            held.insert(key, (claim.clone(), revision));
            Ok(Claimed::Ours(revision))
        }

        async fn settle(&self, claim: &Claim, revision: u64) -> Result<(), ClaimError> {
            let mut held = self.held.lock().unwrap();
            let key = claims::key(&claim.action, &claim.target);
            assert_eq!(held.get(&key).map(|(_, at)| *at), Some(revision));
            held.insert(key, (claim.clone(), revision + 1));
            Ok(())
        }
    }

    #[tokio::test]
    async fn in_a_cluster_a_run_is_claimed_first_and_an_unfinished_claim_is_never_run_again() {
        let executor = Arc::new(Failing::default());
        let store = Arc::new(Claims::default());
        let audit = AuditLog::open(&StateDb::in_memory().unwrap()).unwrap();
        let (remediation, _) =
            Remediation::start(specs("enforce"), audit, executor.clone(), 0).unwrap();
        let remediation = remediation.with_claims(store.clone(), "node-b".into());
        // A finished run is taken over and settled with its outcome.
        let first = remediation
            .handle("threshold", 1, "a", &restart(), 1_000)
            .await
            .unwrap();
        assert_eq!(first.outcome.status, Status::Failed);
        let key = claims::key("restart", "a");
        let (settled, _) = store.held.lock().unwrap()[&key].clone();
        assert_eq!(settled.node.to_string(), "node-b");
        assert_eq!(settled.finished.unwrap().status, "failed");
        // Another node died while running it on `b`: its claim stays.
        let orphan = Claim::running("restart", "b", "threshold", &"node-a".into(), 1_500);
        store
            .held
            .lock()
            .unwrap()
            .insert(claims::key("restart", "b"), (orphan, 7));
        for now in [2_000, 3_000] {
            let refused = remediation
                .handle("threshold", 1, "b", &restart(), now)
                .await
                .unwrap();
            assert_eq!(refused.outcome.status, Status::Refused);
            let detail = &refused.outcome.report.detail;
            assert!(
                detail.starts_with("outcome unknown: node `node-a` claimed `restart` for `b` at "),
                "{detail}"
            );
            let record = remediation.audit().get(refused.audit_id).unwrap().unwrap();
            assert_eq!(record.status, AuditStatus::Refused);
        }
        assert_eq!(executor.0.load(Ordering::SeqCst), 1, "never run on `b`");
        // NATS unreachable: nothing runs unclaimed.
        store.down.store(true, Ordering::SeqCst);
        let refused = remediation
            .handle("threshold", 1, "c", &restart(), 4_000)
            .await
            .unwrap();
        assert_eq!(refused.outcome.status, Status::Refused);
        assert!(
            refused.outcome.report.detail.starts_with(
                "`restart` not run: it cannot be claimed in the cluster (connection refused)"
            ),
            "{}",
            refused.outcome.report.detail
        );
        assert_eq!(executor.0.load(Ordering::SeqCst), 1);
        // Not left in flight by the refusals: once claims answer, it runs.
        store.down.store(false, Ordering::SeqCst);
        let ran = remediation
            .handle("threshold", 1, "c", &restart(), 5_000)
            .await
            .unwrap();
        assert_eq!(ran.outcome.status, Status::Failed);
        assert_eq!(executor.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn dry_runs_are_not_claimed() {
        let store = Arc::new(Claims::default());
        store.down.store(true, Ordering::SeqCst);
        let audit = AuditLog::open(&StateDb::in_memory().unwrap()).unwrap();
        let (remediation, _) =
            Remediation::start(specs("dry-run"), audit, Arc::new(Failing::default()), 0).unwrap();
        let remediation = remediation.with_claims(store, "node-b".into());
        let handled = remediation
            .handle("threshold", 7, "a", &restart(), 1_000)
            .await
            .unwrap();
        assert_eq!(handled.outcome.status, Status::DryRun);
    }

    #[test]
    fn excerpts_cut_on_a_character_boundary() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("ééé", 3), "é… (6 bytes)");
    }
}
