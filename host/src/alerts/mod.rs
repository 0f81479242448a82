//! The alert engine: turns level-triggered verdicts into firing and resolved
//! events, each announced exactly once.
//!
//! [`lifecycle`] holds the pure state machine; [`Tracker`] keeps one group
//! of alerts per (rule, target) and feeds it; [`host`] is what Vigil says
//! about itself; [`Alerting`] is the pipeline stage that ties them to the
//! sinks.

pub mod host;
pub mod lifecycle;
mod stage;

use std::collections::HashMap;

pub use host::{HOST_RULE, HOST_TARGET, HostAlerts};
pub use lifecycle::{AlertEvent, Fingerprint, Severity, State, Status, TrackedAlert};
pub use stage::{Alerting, Outlet};

use crate::names::{RuleName, TargetName};
use crate::runtime::Alert;
use crate::state::{StateDb, StateError};

/// Every alert the host is tracking, grouped by (rule, target).
///
/// With a database ([`Tracker::persistent`]) each group is saved whenever one
/// of its alerts appears, fires or ends, so that a restart neither announces
/// a firing alert again nor forgets a pending one's start.
#[derive(Default)]
pub struct Tracker {
    groups: HashMap<(RuleName, TargetName), lifecycle::Group>,
    store: Option<StateDb>,
}

impl Tracker {
    /// A tracker that saves its groups in `store`, starting from what was
    /// saved there. Groups that no longer parse are dropped with a warning.
    pub fn persistent(store: StateDb) -> Result<Self, StateError> {
        let mut groups = HashMap::new();
        for (rule, target, bytes) in store.alert_groups()? {
            match serde_json::from_slice::<lifecycle::Group>(&bytes) {
                Ok(group) => {
                    groups.insert((RuleName::from(rule), TargetName::from(target)), group);
                }
                Err(error) => {
                    tracing::warn!(rule, target, %error, "Dropped an unreadable saved alert group.")
                }
            }
        }
        Ok(Tracker {
            groups,
            store: Some(store),
        })
    }

    /// Folds the alerts `rule` reported for `target` at `now_ms` into the
    /// tracked state and returns the transitions to announce.
    pub fn observe(
        &mut self,
        rule: &RuleName,
        target: &TargetName,
        alerts: &[Alert],
        now_ms: u64,
    ) -> Vec<AlertEvent> {
        let key = (rule.clone(), target.clone());
        let group = self.groups.entry(key.clone()).or_default();
        let before = group.shape();
        let events = lifecycle::step(group, rule, target, alerts, now_ms);
        let changed = group.shape() != before;
        let empty = group.alerts().next().is_none();
        if changed {
            self.save(&key);
        }
        if empty {
            self.groups.remove(&key);
        }
        events
    }

    fn save(&self, key: &(RuleName, TargetName)) {
        let Some(store) = &self.store else { return };
        let group = self
            .groups
            .get(key)
            .filter(|group| group.alerts().next().is_some());
        let bytes = group.map(|group| serde_json::to_vec(group).expect("alert groups serialise"));
        if let Err(error) = store.save_alert_group(&key.0, &key.1, bytes.as_deref()) {
            tracing::error!(rule = %key.0, target = %key.1, %error, "Saving alert state failed; a restart may announce these alerts again.");
        }
    }

    /// Drops every group whose (rule, target) matches, announcing each of
    /// its firing alerts as resolved at `now_ms`: for a rule that is gone.
    pub fn forget(
        &mut self,
        matches: impl Fn(&RuleName, &TargetName) -> bool,
        now_ms: u64,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        let mut gone = Vec::new();
        self.groups.retain(|(rule, target), group| {
            if !matches(rule, target) {
                return true;
            }
            gone.push((rule.clone(), target.clone()));
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
        for key in &gone {
            self.save(key);
        }
        events
    }

    /// The alerts tracked for (`rule`, `target`), pending and firing.
    pub fn group(
        &self,
        rule: &RuleName,
        target: &TargetName,
    ) -> impl Iterator<Item = &TrackedAlert> {
        self.groups
            .get(&(rule.clone(), target.clone()))
            .into_iter()
            .flat_map(|group| group.alerts())
    }

    /// Alerts currently firing, in no particular order.
    pub fn firing(&self) -> impl Iterator<Item = &TrackedAlert> {
        self.groups
            .values()
            .flat_map(|group| group.alerts())
            .filter(|alert| alert.state == State::Firing)
    }
}

/// Labels as people read them: `{mount="/var", team="db"}`, or nothing when
/// there are none.
pub fn format_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    format!("{{{}}}", pairs.join(", "))
}
