//! The alert stage: evaluations in, alert events out to the delivery stage.
//!
//! It folds each verdict into the [`Tracker`], keeps the host's own alerts
//! ([`HostAlerts`]) in step with what the other stages report, and offers
//! every transition to its [`Outlet`] (the sinks' delivery stage, which
//! implements it). It never waits: the sinks have queues of their own.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::host::{HOST_RULE, HOST_TARGET, HostAlerts};
use super::{AlertEvent, Tracker};
use crate::actions::BreakerTrip;
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
    /// Takes one evaluation, for those who want them; must not wait.
    fn evaluation(&self, evaluation: &Arc<Evaluation>);
    /// Whether anyone wants evaluations at all.
    fn wants_evaluations(&self) -> bool;
}

/// Alert state and the way out to the sinks.
pub struct Alerting<O: Outlet> {
    /// [`HOST_RULE`] and [`HOST_TARGET`], typed once.
    host_rule: RuleName,
    host_target: TargetName,
    tracker: Tracker,
    host: HostAlerts,
    delivery: O,
}

impl<O: Outlet> Alerting<O> {
    /// Starts from the alerts saved in `store`. Alerts of rules not in
    /// `configured` resolve now; the host's own alerts about rules that are
    /// still configured carry on.
    pub fn start(
        store: StateDb,
        configured: &HashSet<&str>,
        delivery: O,
        now_ms: u64,
    ) -> Result<Self, StateError> {
        let mut tracker = Tracker::persistent(store)?;
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
        };
        alerting.send(gone);
        alerting.observe_host(now_ms);
        Ok(alerting)
    }

    /// Folds one evaluation in: its verdict's alerts (a failed call leaves
    /// them as they were) and the rule's health. Sinks that want
    /// evaluations get it too.
    pub fn evaluated(&mut self, evaluation: Evaluation, now_ms: u64) {
        // The evaluation's line comes before the events it causes.
        let evaluation = Arc::new(evaluation);
        if self.delivery.wants_evaluations() {
            self.delivery.evaluation(&evaluation);
        }
        let sample = &evaluation.sample;
        match &evaluation.result {
            Ok(verdict) => {
                let events = self.tracker.observe(
                    &evaluation.rule,
                    &TargetName::from(sample.target.as_str()),
                    &verdict.alerts,
                    sample.timestamp_ms,
                );
                self.send(events);
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
        if self.host.rule_health(&evaluation.rule, &evaluation.health) {
            self.observe_host(now_ms);
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
        self.host.rule_gone(rule);
        self.observe_host(now_ms);
    }

    /// Hands the delivery stage over, for shutdown.
    pub fn into_delivery(self) -> O {
        self.delivery
    }

    fn observe_host(&mut self, now_ms: u64) {
        let alerts = self.host.alerts();
        let events = self
            .tracker
            .observe(&self.host_rule, &self.host_target, &alerts, now_ms);
        self.send(events);
    }

    fn send(&self, events: Vec<AlertEvent>) {
        for event in events {
            self.delivery.alert(event);
        }
    }
}
