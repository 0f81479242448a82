//! The alert stage's read model: every alert tracked now (pending and
//! firing) and how many transitions were announced, published by the
//! [`Tracker`](super::Tracker) as it changes and read by the API, the page
//! and `/metrics`.
//!
//! A group is published when it changes shape and whenever it has alerts
//! (so summaries stay current): the cost follows the number of active
//! alerts, not of samples.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::lifecycle::{AlertEvent, State, Status, TrackedAlert};
use crate::names::{RuleName, TargetName};

/// One tracked alert with the rule and target that reported it.
#[derive(Debug, Clone)]
pub struct ActiveAlert {
    /// The rule that reported it.
    pub rule: RuleName,
    /// The target it is about.
    pub target: TargetName,
    /// The alert.
    pub alert: TrackedAlert,
}

/// The alerts of each (rule, target) that has some.
type Groups = HashMap<(RuleName, TargetName), Arc<[TrackedAlert]>>;

#[derive(Debug, Default)]
struct Shared {
    groups: Mutex<Groups>,
    firing: AtomicU64,
    resolved: AtomicU64,
}

/// Every tracked alert, by (rule, target). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AlertBoard(Arc<Shared>);

impl AlertBoard {
    /// (rule, target) tracks `alerts` now (none: the group is gone).
    pub(super) fn publish<'a>(
        &self,
        rule: &RuleName,
        target: &TargetName,
        alerts: impl Iterator<Item = &'a TrackedAlert>,
    ) {
        let alerts: Arc<[TrackedAlert]> = alerts.cloned().collect();
        let mut groups = self.lock();
        if alerts.is_empty() {
            groups.remove(&(rule.clone(), target.clone()));
        } else {
            groups.insert((rule.clone(), target.clone()), alerts);
        }
    }

    /// Counts announced transitions.
    pub(super) fn announced(&self, events: &[AlertEvent]) {
        for event in events {
            let counter = match event.status {
                Status::Firing => &self.0.firing,
                Status::Resolved => &self.0.resolved,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every tracked alert, sorted by rule, target, name and fingerprint.
    pub fn snapshot(&self) -> Vec<ActiveAlert> {
        let groups: Vec<_> = self
            .lock()
            .iter()
            .map(|(key, alerts)| (key.clone(), alerts.clone()))
            .collect();
        let mut alerts: Vec<ActiveAlert> = groups
            .into_iter()
            .flat_map(|((rule, target), alerts)| {
                alerts
                    .iter()
                    .map(|alert| ActiveAlert {
                        rule: rule.clone(),
                        target: target.clone(),
                        alert: alert.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        alerts.sort_by(|a, b| {
            (&a.rule, &a.target, &a.alert.name, a.alert.fingerprint).cmp(&(
                &b.rule,
                &b.target,
                &b.alert.name,
                b.alert.fingerprint,
            ))
        });
        alerts
    }

    /// How many alerts are pending and how many firing now.
    pub fn counts(&self) -> (u64, u64) {
        let groups = self.lock();
        let (mut pending, mut firing) = (0, 0);
        for alert in groups.values().flat_map(|alerts| alerts.iter()) {
            match alert.state {
                State::Pending => pending += 1,
                State::Firing => firing += 1,
            }
        }
        (pending, firing)
    }

    /// Transitions announced since the start: (firing, resolved).
    pub fn transitions(&self) -> (u64, u64) {
        (
            self.0.firing.load(Ordering::Relaxed),
            self.0.resolved.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        // A map of copies: no invariant a panic could break.
        self.0
            .groups
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
