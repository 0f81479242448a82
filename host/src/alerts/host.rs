//! The host's own alerts: what Vigil says about itself, through the same
//! lifecycle and sinks as the rules' alerts.
//!
//! | alert | fires | resolves |
//! |---|---|---|
//! | `RuleFailing{rule}` | the rule is quarantined after failing too often | it evaluates again, or is removed |
//! | `RuleOverloaded{rule}` | samples are dropped for the rule because its queue is full | 30 s after the last drop, or it is removed |
//! | `RemediationBreakerOpen{action}` | an action's circuit breaker opens | the breaker closes |
//! | `DeliveryFailing{sink}` | a network sink's outbox is full and drops notifications, or the sink has failed for its `failing_after` (1 min) without a success; delivered on the other sinks only | the sink accepts a notification again, or is gone |
//! | `RuleAlertsRefused{rule}` | a verdict of the rule is refused: it would have more active alerts than its limit | a verdict fits again on every target that was refused, or the rule is removed; not restored after a restart (the next refused verdict raises it again) |
//!
//! They belong to rule [`HOST_RULE`] and target [`HOST_TARGET`] (the host
//! itself); what each is about is in its labels. The set of conditions that
//! hold is the host's "verdict": it is observed as a whole whenever it
//! changes and on every tick, so each alert fires once and resolves once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use super::{TooManyAlerts, TrackedAlert};
use crate::actions::BreakerTrip;
use crate::plugins::RuleHealth;
use crate::runtime::{Alert, Label, Severity};

/// The rule name the host's own alerts carry.
pub const HOST_RULE: &str = "vigil";
/// The target the host's own alerts carry: the host itself.
pub const HOST_TARGET: &str = "vigil";

/// How long `RuleOverloaded` keeps firing after the last dropped sample, so
/// a rule that drops in bursts does not make it flap.
pub const OVERLOAD_HOLD: Duration = Duration::from_secs(30);

/// What an alert of the host is about: its name and the one label that
/// identifies its subject.
type Subject = (String, String);

/// The conditions that hold now, each as the alert that reports it.
#[derive(Debug, Default)]
pub struct HostAlerts {
    active: BTreeMap<Subject, Alert>,
}

impl HostAlerts {
    /// Rebuilds the conditions from the host's saved alerts (a restart),
    /// keeping only those about rules in `configured` (and every breaker),
    /// so a firing alert is neither announced again nor forgotten.
    pub fn restore<'a>(
        saved: impl Iterator<Item = &'a TrackedAlert>,
        configured: &HashSet<&str>,
    ) -> Self {
        let mut host = HostAlerts::default();
        for alert in saved {
            let Some((label, value)) = alert.labels.first() else {
                continue;
            };
            if label == "rule" && !configured.contains(value.as_str()) {
                continue;
            }
            // Which targets were refused is not saved: it resolves now and
            // fires again at the next refused verdict.
            if alert.name == "RuleAlertsRefused" {
                continue;
            }
            host.active.insert(
                (alert.name.clone(), value.clone()),
                Alert {
                    name: alert.name.clone(),
                    severity: severity(alert.severity),
                    summary: alert.summary.clone(),
                    labels: labels(&alert.labels),
                    annotations: labels(&alert.annotations),
                    for_ms: alert.for_ms,
                    keep_firing_for_ms: alert.keep_firing_for_ms,
                },
            );
        }
        host
    }

    /// Every alert that holds now.
    pub fn alerts(&self) -> Vec<Alert> {
        self.active.values().cloned().collect()
    }

    /// Follows a rule's health after an evaluation. Returns whether the set
    /// changed.
    pub fn rule_health(&mut self, rule: &str, health: &RuleHealth) -> bool {
        let subject = ("RuleFailing".to_string(), rule.to_string());
        match rule_failing(rule, health) {
            Some(alert) => {
                let changed =
                    self.active.get(&subject).map(|old| &old.summary) != Some(&alert.summary);
                self.active.insert(subject, alert);
                changed
            }
            // Still failing but not quarantined, or healthy: only a success
            // ends `RuleFailing` (a failure on probation keeps it).
            None if matches!(health, RuleHealth::Healthy) => self.active.remove(&subject).is_some(),
            None => false,
        }
    }

    /// Samples were dropped for these rules. Returns whether the set
    /// changed.
    pub fn rules_overloaded<'a>(&mut self, rules: impl IntoIterator<Item = &'a str>) -> bool {
        let mut changed = false;
        for rule in rules {
            let subject = ("RuleOverloaded".to_string(), rule.to_string());
            changed |= self.active.insert(subject, rule_overloaded(rule)).is_none();
        }
        changed
    }

    /// The next tick: rules that dropped nothing since the last one are no
    /// longer reported overloaded (the alert itself holds for
    /// [`OVERLOAD_HOLD`]); breakers not in `open` have closed.
    pub fn tick(&mut self, dropping: &BTreeSet<&str>, open: &[BreakerTrip]) {
        let open: HashSet<&str> = open.iter().map(|trip| trip.action.as_str()).collect();
        self.active.retain(|(name, about), _| match name.as_str() {
            "RuleOverloaded" => dropping.contains(about.as_str()),
            "RemediationBreakerOpen" => open.contains(about.as_str()),
            _ => true,
        });
    }

    /// The sinks failing now, each with why: `DeliveryFailing` holds for
    /// exactly these. Returns whether the set changed.
    pub fn delivery_failing(&mut self, failing: &[(String, String)]) -> bool {
        let before = self.active.len();
        self.active.retain(|(name, sink), _| {
            name != "DeliveryFailing" || failing.iter().any(|(failing, _)| failing == sink)
        });
        let mut changed = self.active.len() != before;
        for (sink, why) in failing {
            let subject = ("DeliveryFailing".to_string(), sink.clone());
            changed |= self
                .active
                .insert(subject, delivery_failing(sink, why))
                .is_none();
        }
        changed
    }

    /// A verdict of `rule` was refused. Returns whether the set changed.
    pub fn alerts_refused(&mut self, rule: &str, refused: &TooManyAlerts) -> bool {
        let subject = ("RuleAlertsRefused".to_string(), rule.to_string());
        self.active
            .insert(subject, alerts_refused(rule, refused))
            .is_none()
    }

    /// `rule`'s verdicts fit again on every target. Returns whether the set
    /// changed.
    pub fn alerts_accepted(&mut self, rule: &str) -> bool {
        let subject = ("RuleAlertsRefused".to_string(), rule.to_string());
        self.active.remove(&subject).is_some()
    }

    /// An action's breaker opened.
    pub fn breaker_opened(&mut self, trip: &BreakerTrip) {
        let subject = ("RemediationBreakerOpen".to_string(), trip.action.clone());
        self.active.insert(subject, breaker_open(trip));
    }

    /// A rule is gone: nothing more is said about it.
    pub fn rule_gone(&mut self, rule: &str) {
        self.active
            .retain(|(name, about), _| name == "RemediationBreakerOpen" || about != rule);
    }
}

fn severity(severity: super::Severity) -> Severity {
    match severity {
        super::Severity::Info => Severity::Info,
        super::Severity::Warning => Severity::Warning,
        super::Severity::Critical => Severity::Critical,
    }
}

fn labels(pairs: &[(String, String)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(name, value)| Label {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

fn about(name: &str, value: &str) -> Vec<Label> {
    let mut pairs = vec![(name.to_string(), value.to_string())];
    // An alert about a tenant's rule is the tenant's to see too.
    if name == "rule"
        && let Some(tenant) = crate::names::tenant_of(value)
    {
        pairs.push((super::TENANT_LABEL.to_string(), tenant.to_string()));
    }
    labels(&pairs)
}

/// `RuleFailing` while a rule is quarantined.
fn rule_failing(rule: &str, health: &RuleHealth) -> Option<Alert> {
    let RuleHealth::Quarantined {
        consecutive,
        last_error,
        retry_in,
    } = health
    else {
        return None;
    };
    Some(Alert {
        name: "RuleFailing".into(),
        severity: Severity::Critical,
        summary: format!(
            "rule `{rule}` failed {consecutive} times in a row and is quarantined; last error: {last_error}"
        ),
        labels: about("rule", rule),
        annotations: about(
            "next_try_in",
            &humantime::format_duration(Duration::from_secs(retry_in.as_secs())).to_string(),
        ),
        for_ms: 0,
        keep_firing_for_ms: 0,
    })
}

/// `RuleOverloaded` while samples are dropped for a rule.
fn rule_overloaded(rule: &str) -> Alert {
    Alert {
        name: "RuleOverloaded".into(),
        severity: Severity::Warning,
        summary: format!(
            "rule `{rule}` is not keeping up: its queue is full and samples are dropped for it; \
             the other rules are not affected"
        ),
        labels: about("rule", rule),
        annotations: about(
            "hint",
            "make the rule faster, subscribe it to fewer metrics, or poll its targets less often",
        ),
        for_ms: 0,
        keep_firing_for_ms: OVERLOAD_HOLD.as_millis() as u64,
    }
}

/// `RuleAlertsRefused` while a rule's verdicts are refused for having too
/// many active alerts.
fn alerts_refused(rule: &str, refused: &TooManyAlerts) -> Alert {
    let message = refused.to_string();
    let summary = message.lines().next().unwrap_or_default().to_string();
    Alert {
        name: "RuleAlertsRefused".into(),
        severity: Severity::Warning,
        summary,
        labels: about("rule", rule),
        annotations: about(
            "hint",
            &format!(
                "does the rule put a changing value (a time, a counter, an id) in an alert's name or labels? if it really has that many, raise `{}` in its [[rules]] table",
                refused.key()
            ),
        ),
        for_ms: 0,
        keep_firing_for_ms: 0,
    }
}

/// `DeliveryFailing` while a sink drops notifications or keeps failing.
fn delivery_failing(sink: &str, why: &str) -> Alert {
    Alert {
        name: "DeliveryFailing".into(),
        severity: Severity::Critical,
        summary: why.to_string(),
        labels: about("sink", sink),
        annotations: about(
            "hint",
            "is the receiver up and reachable from this host? its notifications wait in the outbox (the oldest are dropped past `max_queue`)",
        ),
        for_ms: 0,
        keep_firing_for_ms: 0,
    }
}

/// `RemediationBreakerOpen` while an action's circuit breaker is open.
fn breaker_open(trip: &BreakerTrip) -> Alert {
    Alert {
        name: "RemediationBreakerOpen".into(),
        severity: Severity::Critical,
        summary: format!(
            "action `{}` is stopped: {:?} within {}; it runs again after the window",
            trip.action,
            trip.cause,
            humantime::format_duration(trip.window)
        ),
        labels: about("action", &trip.action),
        annotations: vec![],
        for_ms: 0,
        keep_firing_for_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::gate::BreakerCause;
    use crate::runtime::CallError;

    fn names(host: &HostAlerts) -> Vec<String> {
        host.alerts()
            .iter()
            .map(|alert| format!("{}{{{}}}", alert.name, alert.labels[0].value))
            .collect()
    }

    fn quarantined() -> RuleHealth {
        RuleHealth::Quarantined {
            consecutive: 5,
            last_error: CallError::Trap("boom".into()),
            retry_in: Duration::from_secs(10),
        }
    }

    #[test]
    fn rule_failing_holds_from_quarantine_until_a_success() {
        let mut host = HostAlerts::default();
        assert!(!host.rule_health("a", &RuleHealth::Failing { consecutive: 1 }));
        assert!(host.rule_health("a", &quarantined()));
        assert!(
            !host.rule_health("a", &quarantined()),
            "same alert, no change"
        );
        // A failure on probation keeps it; a success ends it.
        assert!(!host.rule_health("a", &RuleHealth::Failing { consecutive: 6 }));
        assert_eq!(names(&host), ["RuleFailing{a}"]);
        assert!(host.rule_health("a", &RuleHealth::Healthy));
        assert!(host.alerts().is_empty());
    }

    #[test]
    fn overload_and_breakers_clear_on_the_tick_after_they_stop() {
        let mut host = HostAlerts::default();
        assert!(host.rules_overloaded(["slow"]));
        assert!(!host.rules_overloaded(["slow"]));
        let trip = BreakerTrip {
            action: "restart".into(),
            cause: BreakerCause::Failures(3),
            window: Duration::from_secs(3600),
            opened_ms: 0,
            until_ms: 3_600_000,
        };
        host.breaker_opened(&trip);
        // Still dropping, breaker still open: both stay.
        host.tick(&BTreeSet::from(["slow"]), std::slice::from_ref(&trip));
        assert_eq!(
            names(&host),
            ["RemediationBreakerOpen{restart}", "RuleOverloaded{slow}"]
        );
        let overload = &host.alerts()[1];
        assert_eq!(
            overload.keep_firing_for_ms,
            OVERLOAD_HOLD.as_millis() as u64
        );
        host.tick(&BTreeSet::new(), &[]);
        assert!(host.alerts().is_empty());
    }

    #[test]
    fn delivery_failing_holds_for_exactly_the_sinks_failing_now() {
        let mut host = HostAlerts::default();
        let failing = |sinks: &[&str]| -> Vec<(String, String)> {
            sinks
                .iter()
                .map(|sink| (sink.to_string(), format!("sink `{sink}` has failed for 1m")))
                .collect()
        };
        assert!(host.delivery_failing(&failing(&["pager", "am"])));
        assert!(!host.delivery_failing(&failing(&["pager", "am"])));
        assert_eq!(
            names(&host),
            ["DeliveryFailing{am}", "DeliveryFailing{pager}"]
        );
        assert!(host.delivery_failing(&failing(&["am"])));
        assert_eq!(names(&host), ["DeliveryFailing{am}"]);
        assert!(host.delivery_failing(&[]));
        assert!(host.alerts().is_empty());
    }

    #[test]
    fn refused_verdicts_raise_one_alert_per_rule_until_they_fit_again() {
        let mut host = HostAlerts::default();
        let refused = TooManyAlerts::PerTarget {
            rule: "churn".into(),
            target: "web-01".into(),
            would: 1200,
            limit: 1000,
        };
        assert!(host.alerts_refused("churn", &refused));
        assert!(
            !host.alerts_refused("churn", &refused),
            "same alert, no change"
        );
        let alert = &host.alerts()[0];
        assert_eq!(
            alert.summary,
            "rule `churn` would have 1200 active alerts for target `web-01`, more than its limit of 1000 (`max_active_alerts_per_target`); the verdict is refused: the alerts already tracked keep their state and the new ones are not tracked"
        );
        assert!(
            alert.annotations[0]
                .value
                .contains("raise `max_active_alerts_per_target`")
        );
        assert!(host.alerts_accepted("churn"));
        assert!(!host.alerts_accepted("churn"));
        assert!(host.alerts().is_empty());
    }

    #[test]
    fn a_restart_keeps_what_is_about_configured_rules_and_breakers() {
        let mut before = HostAlerts::default();
        before.rule_health("kept", &quarantined());
        before.rule_health("dropped", &quarantined());
        before.rules_overloaded(["kept"]);
        let refused = TooManyAlerts::PerRule {
            rule: "kept".into(),
            target: "t".into(),
            would: 11,
            limit: 10,
        };
        before.alerts_refused("kept", &refused);
        let tracked: Vec<TrackedAlert> = before
            .alerts()
            .into_iter()
            .map(|alert| {
                let labels = vec![(alert.labels[0].name.clone(), alert.labels[0].value.clone())];
                TrackedAlert {
                    fingerprint: super::super::Fingerprint::of(
                        "vigil",
                        "vigil",
                        &alert.name,
                        &labels,
                    ),
                    name: alert.name,
                    severity: super::super::Severity::Critical,
                    summary: alert.summary,
                    labels,
                    annotations: vec![],
                    for_ms: 0,
                    keep_firing_for_ms: alert.keep_firing_for_ms,
                    state: super::super::State::Firing,
                    active_since_ms: 0,
                    last_seen_ms: 0,
                }
            })
            .collect();
        let after = HostAlerts::restore(tracked.iter(), &HashSet::from(["kept"]));
        assert_eq!(names(&after), ["RuleFailing{kept}", "RuleOverloaded{kept}"]);
        let mut after = after;
        after.rule_gone("kept");
        assert!(after.alerts().is_empty());
    }
}
