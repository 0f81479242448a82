//! The alert stage: evaluations in, alert events out to the delivery stage.
//!
//! It folds each verdict into the [`Tracker`], keeps the host's own alerts
//! ([`HostAlerts`]) in step with what the other stages report, and offers
//! every transition to its [`Outlet`] (the sinks' delivery stage, which
//! implements it). It never waits: the sinks have queues of their own.
//!
//! A verdict the tracker refuses ([`TooManyAlerts`]) is counted per rule
//! in [`AlertStats`] and logged with the rule, the target and the limit:
//! once when a (rule, target) starts being refused and once when it is
//! accepted again, so a rule refused on every sample cannot flood the log.
//! The host raises `RuleAlertsRefused{rule}` meanwhile, so the sinks hear
//! of it too. (Rule failures of the runtime are counted by the rule's
//! worker, which knows nothing of alert limits: these have their own
//! counter.)

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use super::bounds::{RuleAlertLimits, TooManyAlerts};
use super::host::{HOST_RULE, HOST_TARGET, HostAlerts};
use super::{AlertBoard, AlertEvent, TrackedAlert, Tracker};
use crate::actions::BreakerTrip;
use crate::cluster::alert_state::SharedAlerts;
use crate::names::{RuleName, TargetName};
use crate::plugins::Evaluation;
use crate::runtime::CallError;
use crate::state::{StateDb, StateError};

/// Where the alert stage hands what it produces. `sinks::Delivery` is the
/// one the host uses; the trait keeps this stage from depending on the
/// stage after it.
pub trait Outlet: Send {
    /// Takes one alert event; must not wait.
    fn alert(&self, event: AlertEvent);
    /// Takes the events one step caused, in order; must not wait. The
    /// default hands them over one by one; the delivery stage writes a
    /// network sink's share in one transaction.
    fn alerts(&self, events: Vec<AlertEvent>) {
        for event in events {
            self.alert(event);
        }
    }
    /// Takes one evaluation, for those who want them; must not wait.
    fn evaluation(&self, evaluation: &Arc<Evaluation>);
    /// Whether anyone wants evaluations at all.
    fn wants_evaluations(&self) -> bool;
    /// The sinks failing now, each with why (raised as `DeliveryFailing`).
    fn failing(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The alerts firing when the host started, for sinks that re-send
    /// what is firing.
    fn restored(&self, _firing: &[AlertEvent]) {}
}

/// Verdicts refused for breaking an alert limit, per rule: a read model
/// for the API, live while the host runs. Cheap to clone.
#[derive(Clone, Default)]
pub struct AlertStats(Arc<Mutex<BTreeMap<RuleName, u64>>>);

impl AlertStats {
    /// Refused verdicts per rule, since the start (only rules with some).
    pub fn refused_verdicts(&self) -> BTreeMap<RuleName, u64> {
        self.lock().clone()
    }

    fn refused(&self, rule: &RuleName) {
        *self.lock().entry(rule.clone()).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<RuleName, u64>> {
        // A map of counters has no invariant a panic could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Alert state and the way out to the sinks.
pub struct Alerting<O: Outlet> {
    /// [`HOST_RULE`] and [`HOST_TARGET`], typed once.
    host_rule: RuleName,
    host_target: TargetName,
    tracker: Tracker,
    host: HostAlerts,
    delivery: O,
    stats: AlertStats,
    /// (rule, target) whose last verdict was refused: logged once a spell.
    refusing: HashSet<(RuleName, TargetName)>,
    /// During [`Alerting::evaluated_batch`]: the events to hand on once the
    /// batch's alert state is saved.
    held: Option<Vec<AlertEvent>>,
}

impl<O: Outlet> Alerting<O> {
    /// Starts from the alerts saved in `store`. Alerts of rules not in
    /// `configured` resolve now; the host's own alerts about rules that are
    /// still configured carry on. `limits` bounds what each rule may make
    /// it track.
    pub fn start(
        store: StateDb,
        configured: &HashSet<&str>,
        limits: RuleAlertLimits,
        delivery: O,
        now_ms: u64,
    ) -> Result<Self, StateError> {
        let mut tracker = Tracker::persistent(store)?;
        tracker.set_limits(limits);
        let (host_rule, host_target) = (RuleName::from(HOST_RULE), TargetName::from(HOST_TARGET));
        let host = HostAlerts::restore(tracker.group(&host_rule, &host_target), configured);
        let gone = tracker.forget(
            |rule, _| *rule != host_rule && !configured.contains(rule.as_str()),
            now_ms,
        );
        let mut alerting = Alerting {
            host_rule,
            host_target,
            tracker,
            host,
            delivery,
            stats: AlertStats::default(),
            refusing: HashSet::new(),
            held: None,
        };
        alerting.send(gone);
        alerting.observe_host(now_ms);
        let firing: Vec<AlertEvent> = alerting.tracker.firing_events().collect();
        alerting.delivery.restored(&firing);
        Ok(alerting)
    }

    /// Folds one evaluation in: its verdict's alerts (a failed call leaves
    /// them as they were) and the rule's health. Sinks that want
    /// evaluations get it too.
    pub fn evaluated(&mut self, evaluation: Evaluation, now_ms: u64) {
        let evaluation = self.offer(evaluation);
        if let Some((target, events)) = self.fold(&evaluation, now_ms) {
            self.send(events);
            self.accepted(&evaluation.rule, target, now_ms);
        }
        self.health(&evaluation, now_ms);
    }

    /// Hands the evaluation to the sinks that want it; the evaluation's
    /// line comes before the events it causes.
    fn offer(&self, evaluation: Evaluation) -> Arc<Evaluation> {
        let evaluation = Arc::new(evaluation);
        if self.delivery.wants_evaluations() {
            self.delivery.evaluation(&evaluation);
        }
        evaluation
    }

    /// Folds the verdict into the tracker: the events to announce, or
    /// `None` when there was no verdict or it was refused.
    fn fold(
        &mut self,
        evaluation: &Evaluation,
        now_ms: u64,
    ) -> Option<(TargetName, Vec<AlertEvent>)> {
        let sample = &evaluation.sample;
        match &evaluation.result {
            Ok(verdict) => {
                let target = TargetName::from(sample.target.as_str());
                let observed = self.tracker.observe(
                    &evaluation.rule,
                    &target,
                    &verdict.alerts,
                    sample.timestamp_ms,
                );
                match observed {
                    Ok(events) => return Some((target, events)),
                    Err(refused) => self.refused(&refused, &evaluation.rule, target, now_ms),
                }
            }
            Err(CallError::Quarantined(_)) => {}
            // Out of the rule's log budget: a rule failing on every sample
            // cannot make the host log faster than the rule may.
            Err(_) if !evaluation.log.allow() => {}
            Err(error) => tracing::warn!(
                rule = %evaluation.rule,
                target = %sample.target,
                kind = error.kind(),
                %error,
                "Rule evaluation failed; its instance will be rebuilt."
            ),
        }
        None
    }

    fn health(&mut self, evaluation: &Evaluation, now_ms: u64) {
        if self.host.rule_health(&evaluation.rule, &evaluation.health) {
            self.observe_host(now_ms);
        }
    }

    /// Folds a batch of evaluations in, in order, as [`Alerting::evaluated`]
    /// does one by one, but with one durable commit of the alert state for
    /// all the transitions they cause, then one hand-over of their events
    /// (one outbox commit per network sink): a burst of transitions, such
    /// as many targets going down at once, costs two disk syncs, not two
    /// each. Nothing is handed on before the state is saved. When a sink
    /// wants evaluations, they go one by one, so that each evaluation's
    /// line still comes right before the events it causes.
    pub fn evaluated_batch(
        &mut self,
        evaluations: impl IntoIterator<Item = Evaluation>,
        now_ms: u64,
    ) {
        if self.delivery.wants_evaluations() {
            for evaluation in evaluations {
                self.evaluated(evaluation, now_ms);
            }
            return;
        }
        self.tracker.hold();
        self.held = Some(Vec::new());
        for evaluation in evaluations {
            self.evaluated(evaluation, now_ms);
        }
        self.tracker.commit();
        if let Some(events) = self.held.take() {
            self.delivery.alerts(events);
        }
    }

    /// Each rule's limits changed (a config reload).
    pub fn set_limits(&mut self, limits: RuleAlertLimits) {
        self.tracker.set_limits(limits);
    }

    /// Verdicts refused per rule, live while the host runs.
    pub fn stats(&self) -> AlertStats {
        self.stats.clone()
    }

    /// Every alert tracked now, live while the host runs.
    pub fn board(&self) -> AlertBoard {
        self.tracker.board()
    }

    fn refused(
        &mut self,
        refused: &TooManyAlerts,
        rule: &RuleName,
        target: TargetName,
        now_ms: u64,
    ) {
        self.stats.refused(rule);
        if !self.refusing.contains(&(rule.clone(), target.clone())) {
            tracing::warn!(
                rule = %rule,
                target = %target,
                limit = refused.key(),
                error = %refused,
                "Rule verdict refused: too many active alerts. Logged once until a verdict is accepted again; every refusal is counted."
            );
            self.refusing.insert((rule.clone(), target));
            if self.host.alerts_refused(rule, refused) {
                self.observe_host(now_ms);
            }
        }
    }

    fn accepted(&mut self, rule: &RuleName, target: TargetName, now_ms: u64) {
        if !self.refusing.is_empty() && self.refusing.remove(&(rule.clone(), target.clone())) {
            tracing::info!(rule = %rule, target = %target, "Rule verdicts are accepted again: its active alerts are within the limits.");
            let still = self.refusing.iter().any(|(r, _)| r == rule);
            if !still && self.host.alerts_accepted(rule) {
                self.observe_host(now_ms);
            }
        }
    }

    /// These rules just started dropping samples.
    pub fn rules_overloaded(&mut self, rules: Vec<RuleName>, now_ms: u64) {
        if self.host.rules_overloaded(rules.iter().map(|rule| &**rule)) {
            self.observe_host(now_ms);
        }
    }

    /// The periodic check: `dropped` is what each rule dropped since the
    /// last tick, `open` the breakers open now.
    pub fn tick(&mut self, dropped: &BTreeMap<RuleName, u64>, open: &[BreakerTrip], now_ms: u64) {
        let dropping: BTreeSet<&str> = dropped.keys().map(|rule| &**rule).collect();
        self.host.tick(&dropping, open);
        self.host.rules_overloaded(dropping);
        self.host.delivery_failing(&self.delivery.failing());
        self.observe_host(now_ms);
    }

    /// An action's circuit breaker opened.
    pub fn breaker_opened(&mut self, trip: &BreakerTrip, now_ms: u64) {
        self.host.breaker_opened(trip);
        self.observe_host(now_ms);
    }

    /// A rule is gone (its file removed, or the config dropped it) and its
    /// worker has reported its last evaluation: its alerts resolve.
    pub fn rule_gone(&mut self, rule: &str, now_ms: u64) {
        let events = self.tracker.forget(|r, _| r == rule, now_ms);
        self.send(events);
        self.refusing.retain(|(r, _)| r != rule);
        self.host.rule_gone(rule);
        self.observe_host(now_ms);
    }

    /// Hands the delivery stage over, for shutdown.
    pub fn into_delivery(self) -> O {
        self.delivery
    }

    fn observe_host(&mut self, now_ms: u64) {
        let alerts = self.host.alerts();
        match self
            .tracker
            .observe(&self.host_rule, &self.host_target, &alerts, now_ms)
        {
            Ok(events) => self.send(events),
            // A handful of alerts per rule and action: only a config with
            // more rules than the default limit gets here.
            Err(refused) => {
                tracing::error!(error = %refused, "The host's own alerts are past their limit; they stay as they were.")
            }
        }
    }

    fn send(&mut self, events: Vec<AlertEvent>) {
        match &mut self.held {
            Some(held) => held.extend(events),
            None => self.delivery.alerts(events),
        }
    }
}

/// In a cluster (issue 16): the alerts of a target live in NATS KV, and a
/// transition is announced only once its write there went through.
impl<O: Outlet> Alerting<O> {
    /// [`Alerting::evaluated`], with the target's alerts read from
    /// `shared` before the verdict is folded in, and written back after:
    /// a refused write (this node's lease lapsed, an older sample, another
    /// node's write in between) announces nothing and leaves the alerts as
    /// the cluster has them.
    pub async fn evaluated_shared(
        &mut self,
        evaluation: Evaluation,
        now_ms: u64,
        shared: &mut SharedAlerts,
    ) {
        let evaluation = self.offer(evaluation);
        let target = TargetName::from(evaluation.sample.target.as_str());
        let before = if evaluation.result.is_ok() {
            shared
                .load(&mut self.tracker, &evaluation.rule, &target)
                .await;
            Some(self.tracker.group_snapshot(&evaluation.rule, &target))
        } else {
            None
        };
        if let (Some((target, events)), Some(before)) = (self.fold(&evaluation, now_ms), before) {
            let changed = !same_shape(
                &before,
                &self.tracker.group_snapshot(&evaluation.rule, &target),
            );
            let committed = !changed
                || shared
                    .commit(
                        &mut self.tracker,
                        &evaluation.rule,
                        &target,
                        evaluation.sample.timestamp_ms,
                        before,
                    )
                    .await
                    .is_ok();
            if committed {
                self.send(events);
            }
            self.accepted(&evaluation.rule, target, now_ms);
        }
        self.health(&evaluation, now_ms);
    }
}

/// Whether two snapshots of a group hold the same alerts in the same
/// states since the same times (what a write must record; summaries and
/// last-seen times are refreshed by the next sample).
fn same_shape(a: &[TrackedAlert], b: &[TrackedAlert]) -> bool {
    let shape = |alerts: &[TrackedAlert]| {
        let mut shape: Vec<_> = alerts
            .iter()
            .map(|alert| (alert.fingerprint, alert.state, alert.active_since_ms))
            .collect();
        shape.sort_by_key(|(fingerprint, ..)| *fingerprint);
        shape
    };
    shape(a) == shape(b)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::alerts::{AlertLimits, Status};
    use crate::plugins::RuleHealth;
    use crate::runtime::{Alert, Severity, Verdict};

    /// Keeps every alert event.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<AlertEvent>>>);

    impl Outlet for Kept {
        fn alert(&self, event: AlertEvent) {
            self.0.lock().unwrap().push(event);
        }
        fn evaluation(&self, _: &Arc<Evaluation>) {}
        fn wants_evaluations(&self) -> bool {
            false
        }
    }

    /// Each hand-over: its events, and how many alerts the state database
    /// held at that moment.
    type Handed = Vec<(Vec<String>, usize)>;

    /// Records every hand-over (see [`Handed`]).
    #[derive(Clone)]
    struct SavedFirst {
        db: StateDb,
        handed: Arc<Mutex<Handed>>,
    }

    impl Outlet for SavedFirst {
        fn alert(&self, event: AlertEvent) {
            self.alerts(vec![event]);
        }
        fn alerts(&self, events: Vec<AlertEvent>) {
            if events.is_empty() {
                return;
            }
            let names = events
                .iter()
                .map(|e| format!("{:?} {} {}", e.status, e.rule, e.alert.name))
                .collect();
            let saved = self.db.saved_alerts().unwrap().len();
            self.handed.lock().unwrap().push((names, saved));
        }
        fn evaluation(&self, _: &Arc<Evaluation>) {}
        fn wants_evaluations(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_batch_is_saved_before_any_of_its_events_is_handed_over_in_one_go() {
        let db = StateDb::in_memory().unwrap();
        let outlet = SavedFirst {
            db: db.clone(),
            handed: Arc::default(),
        };
        let configured = HashSet::from(["r1", "r2"]);
        let limits = RuleAlertLimits::default();
        let mut alerting =
            Alerting::start(db.clone(), &configured, limits, outlet.clone(), 0).unwrap();
        alerting.evaluated_batch(
            [
                evaluation("r1", &["A", "B"], 1_000),
                evaluation("r2", &["C"], 1_000),
                evaluation("r1", &["A"], 2_000),
            ],
            2_000,
        );
        let handed = outlet.handed.lock().unwrap().clone();
        // Every transition, in order, in one hand-over.
        assert_eq!(handed.len(), 1, "{handed:?}");
        assert_eq!(
            handed[0].0,
            ["Firing r1 A", "Firing r1 B", "Firing r2 C", "Resolved r1 B"]
        );
        // When it was handed over, the state was already saved: a crash
        // after delivery finds every transition on disk.
        let saved_at_end = db.saved_alerts().unwrap().len();
        assert!(saved_at_end > 0);
        assert_eq!(handed[0].1, saved_at_end);
        // Outside a batch, each evaluation is saved and handed on alone.
        alerting.evaluated(evaluation("r2", &[], 3_000), 3_000);
        let handed = outlet.handed.lock().unwrap().clone();
        assert_eq!(handed[1].0, ["Resolved r2 C"]);
        assert_eq!(handed[1].1, db.saved_alerts().unwrap().len());
    }

    /// `rule`'s verdict for target `a` at `at_ms`: alerts named `names`.
    fn evaluation(rule: &str, names: &[&str], at_ms: u64) -> Evaluation {
        let alerts = names
            .iter()
            .map(|name| Alert {
                name: name.to_string(),
                severity: Severity::Info,
                summary: String::new(),
                labels: vec![],
                annotations: vec![],
                for_ms: 0,
                keep_firing_for_ms: 0,
            })
            .collect();
        Evaluation {
            rule: rule.into(),
            version: 1,
            sample: Arc::new(crate::sources::make_sample("a", &[], Ok(vec![]), at_ms)),
            result: Ok(Verdict {
                alerts,
                actions: vec![],
            }),
            duration: Duration::ZERO,
            health: RuleHealth::Healthy,
            log: crate::runtime::RuleLog::new(rule, 100),
        }
    }

    #[test]
    fn refused_verdicts_are_counted_per_rule_and_change_nothing_else() {
        let mut limits = RuleAlertLimits::default();
        let two = AlertLimits {
            per_target: 2,
            per_rule: 10,
        };
        limits.set("churn".into(), two);
        let kept = Kept::default();
        let configured = HashSet::from(["churn", "good"]);
        let db = StateDb::in_memory().unwrap();
        let mut alerting = Alerting::start(db, &configured, limits, kept.clone(), 0).unwrap();
        alerting.evaluated(evaluation("churn", &["A", "B"], 1_000), 1_000);
        alerting.evaluated(evaluation("churn", &["A", "B", "C"], 2_000), 2_000);
        alerting.evaluated(evaluation("churn", &["C", "D", "E"], 3_000), 3_000);
        alerting.evaluated(evaluation("good", &["X", "Y", "Z"], 3_000), 3_000);
        let stats = alerting.stats().refused_verdicts();
        assert_eq!(stats.into_iter().collect::<Vec<_>>(), [("churn".into(), 2)]);
        // A and B fired; the refused verdicts neither fired C nor resolved
        // A and B; the other rule is not limited by churn's limits.
        let events: Vec<(String, Status, String)> = kept
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.rule.to_string(), e.status, e.alert.name.clone()))
            .collect();
        let firing = |rule: &str, name: &str| (rule.to_string(), Status::Firing, name.to_string());
        // The host says so, once.
        assert_eq!(
            events,
            [
                firing("churn", "A"),
                firing("churn", "B"),
                firing("vigil", "RuleAlertsRefused"),
                firing("good", "X"),
                firing("good", "Y"),
                firing("good", "Z")
            ]
        );
        // Back within the limit: accepted again, and the host's alert ends.
        alerting.evaluated(evaluation("churn", &["A"], 4_000), 4_000);
        let resolved: Vec<String> = kept.0.lock().unwrap()[6..]
            .iter()
            .map(|e| format!("{:?} {}", e.status, e.alert.name))
            .collect();
        assert_eq!(resolved, ["Resolved B", "Resolved RuleAlertsRefused"]);
        assert_eq!(
            alerting.stats().refused_verdicts()[&RuleName::from("churn")],
            2
        );
    }
}
