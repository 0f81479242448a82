//! Which alerts a sink gets: its route (`match_rules`, `match_labels`),
//! matched against the labels receivers see ([`labels`]). Pure.

use std::collections::BTreeMap;

use crate::alerts::{AlertEvent, HOST_RULE};
use crate::names::RuleName;

/// The labels an alert carries out of the host: the rule's identity
/// labels plus `alertname`, `rule`, `target` and `severity`, which the
/// host sets and a rule cannot override (an alert label of the same name
/// is replaced). Routes match on these, and the webhook and Alertmanager
/// sinks send them.
pub fn labels(event: &AlertEvent) -> BTreeMap<String, String> {
    let alert = &event.alert;
    let mut labels: BTreeMap<String, String> = alert.labels.iter().cloned().collect();
    for (name, value) in [
        ("alertname", alert.name.clone()),
        ("rule", event.rule.to_string()),
        ("target", event.target.to_string()),
        ("severity", alert.severity.to_string()),
    ] {
        labels.insert(name.into(), value);
    }
    labels
}

/// A sink's route: an alert goes to the sink when its rule is one of
/// `rules` (or `rules` is empty) and it has every label of `labels`
/// with that value. The default route takes everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// `match_rules`: the rules whose alerts it takes; empty for all.
    pub rules: Vec<RuleName>,
    /// `match_labels`: labels the alert must have, with these values.
    pub labels: BTreeMap<String, String>,
}

impl Route {
    /// Whether `event` goes to a sink named `sink` with this route.
    ///
    /// `DeliveryFailing{sink}` never goes to the sink it is about: that
    /// sink is the one not delivering, and its outbox is what overflows.
    pub fn matches(&self, sink: &str, event: &AlertEvent) -> bool {
        if event.rule.as_str() == HOST_RULE
            && event.alert.name == "DeliveryFailing"
            && event
                .alert
                .labels
                .iter()
                .any(|(name, value)| name == "sink" && value == sink)
        {
            return false;
        }
        if !self.rules.is_empty() && !self.rules.contains(&event.rule) {
            return false;
        }
        if self.labels.is_empty() {
            return true;
        }
        let labels = labels(event);
        self.labels
            .iter()
            .all(|(name, value)| labels.get(name) == Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Fingerprint, Severity, State, Status, TrackedAlert};

    fn event(rule: &str, name: &str, labels: &[(&str, &str)], severity: Severity) -> AlertEvent {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AlertEvent {
            status: Status::Firing,
            rule: rule.into(),
            target: "web-01".into(),
            alert: TrackedAlert {
                fingerprint: Fingerprint::of(rule, "web-01", name, &labels),
                name: name.into(),
                severity,
                summary: String::new(),
                labels,
                annotations: vec![],
                for_ms: 0,
                keep_firing_for_ms: 0,
                state: State::Firing,
                active_since_ms: 0,
                last_seen_ms: 0,
            },
            at_ms: 0,
        }
    }

    #[test]
    fn the_host_sets_the_identity_labels_a_rule_cannot_forge() {
        let forged = event(
            "disk",
            "DiskFull",
            &[("mount", "/"), ("rule", "other"), ("severity", "info")],
            Severity::Critical,
        );
        let labels: Vec<(String, String)> = labels(&forged).into_iter().collect();
        let expected = [
            ("alertname", "DiskFull"),
            ("mount", "/"),
            ("rule", "disk"),
            ("severity", "critical"),
            ("target", "web-01"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(labels, expected);
    }

    #[test]
    fn routes_match_rules_and_labels_together() {
        let critical = event("disk", "DiskFull", &[("team", "db")], Severity::Critical);
        let warning = event("cpu", "CpuHigh", &[("team", "db")], Severity::Warning);
        assert!(Route::default().matches("s", &critical));
        let by_rule = Route {
            rules: vec!["disk".into()],
            ..Route::default()
        };
        assert!(by_rule.matches("s", &critical) && !by_rule.matches("s", &warning));
        let by_labels = Route {
            rules: vec![],
            labels: [("severity", "critical"), ("team", "db")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        };
        assert!(by_labels.matches("s", &critical) && !by_labels.matches("s", &warning));
        let both = Route {
            rules: vec!["cpu".into()],
            ..by_labels
        };
        assert!(!both.matches("s", &critical) && !both.matches("s", &warning));
    }

    #[test]
    fn delivery_failing_never_goes_to_the_sink_it_is_about() {
        let failing = event(
            HOST_RULE,
            "DeliveryFailing",
            &[("sink", "pager")],
            Severity::Critical,
        );
        assert!(!Route::default().matches("pager", &failing));
        assert!(Route::default().matches("console", &failing));
    }
}
