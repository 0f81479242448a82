//! The alert engine: turns level-triggered verdicts into firing and resolved
//! events, each announced exactly once.
//!
//! [`lifecycle`] holds the pure state machine; [`Tracker`] keeps one group
//! of alerts per (rule, target) and feeds it.

pub mod lifecycle;

use std::collections::HashMap;

pub use lifecycle::{AlertEvent, Fingerprint, Severity, State, Status, TrackedAlert};

use crate::runtime::Alert;

/// Every alert the host is tracking, grouped by (rule, target).
#[derive(Debug, Default)]
pub struct Tracker {
    groups: HashMap<(String, String), lifecycle::Group>,
}

impl Tracker {
    /// Folds the alerts `rule` reported for `target` at `now_ms` into the
    /// tracked state and returns the transitions to announce.
    pub fn observe(
        &mut self,
        rule: &str,
        target: &str,
        alerts: &[Alert],
        now_ms: u64,
    ) -> Vec<AlertEvent> {
        let key = (rule.to_string(), target.to_string());
        let group = self.groups.entry(key).or_default();
        let events = lifecycle::step(group, rule, target, alerts, now_ms);
        if group.alerts().next().is_none() {
            self.groups.remove(&(rule.to_string(), target.to_string()));
        }
        events
    }

    /// Drops every group whose (rule, target) matches, announcing each of
    /// its firing alerts as resolved at `now_ms`: for a rule that is gone.
    pub fn forget(&mut self, matches: impl Fn(&str, &str) -> bool, now_ms: u64) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        self.groups.retain(|(rule, target), group| {
            if !matches(rule, target) {
                return true;
            }
            for alert in group.alerts().filter(|alert| alert.state == State::Firing) {
                events.push(AlertEvent {
                    status: Status::Resolved,
                    rule: rule.clone(),
                    target: target.clone(),
                    alert: alert.clone(),
                    at_ms: now_ms,
                });
            }
            false
        });
        events
    }

    /// Alerts currently firing, in no particular order.
    pub fn firing(&self) -> impl Iterator<Item = &TrackedAlert> {
        self.groups
            .values()
            .flat_map(|group| group.alerts())
            .filter(|alert| alert.state == State::Firing)
    }
}
