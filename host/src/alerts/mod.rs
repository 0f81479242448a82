//! The alert engine: turns level-triggered verdicts into firing and resolved
//! events, each announced exactly once.
//!
//! [`lifecycle`] holds the pure state machine; [`Tracker`] keeps one group
//! of alerts per (rule, target) and feeds it, within the limits of
//! [`bounds`]; [`host`] is what Vigil says about itself; [`Alerting`] is the
//! pipeline stage that ties them to the sinks.

pub mod board;
pub mod bounds;
pub mod host;
pub mod lifecycle;
mod stage;

use std::collections::HashMap;

pub use board::{ActiveAlert, AlertBoard};
pub use bounds::{AlertLimits, RuleAlertLimits, TooManyAlerts};
pub use host::{HOST_RULE, HOST_TARGET, HostAlerts};
pub use lifecycle::{AlertEvent, Fingerprint, Severity, State, Status, TENANT_LABEL, TrackedAlert};
pub use stage::{AlertStats, Alerting, Outlet};

use crate::names::{RuleName, TargetName};
use crate::runtime::Alert;
use crate::state::{AlertChanges, StateDb, StateError};

/// Every alert the host is tracking, grouped by (rule, target).
///
/// With a database ([`Tracker::persistent`]) an alert is saved whenever it
/// appears, fires or ends (only the alerts that did, one row each, not the
/// whole group), so that a restart neither announces a firing alert again
/// nor forgets a pending one's start. Summaries and last-seen times are
/// not saved on every sample: the next sample refreshes them.
///
/// It keeps at most [`AlertLimits`] alerts per (rule, target) and per rule
/// (see [`bounds`]): a verdict that would take a rule past them is refused
/// and changes nothing.
///
/// Between [`Tracker::hold`] and [`Tracker::commit`] the saves are gathered
/// and written in one transaction, one durable commit for a batch of
/// transitions: the caller announces none of them before the commit.
#[derive(Default)]
pub struct Tracker {
    groups: HashMap<(RuleName, TargetName), lifecycle::Group>,
    /// Alerts tracked per rule, over all its targets.
    per_rule: HashMap<RuleName, usize>,
    limits: RuleAlertLimits,
    store: Option<StateDb>,
    /// While held: the changes to save at [`Tracker::commit`], in order.
    held: Option<Vec<AlertChanges>>,
    board: AlertBoard,
}

impl Tracker {
    /// A tracker that saves its alerts in `store`, starting from what was
    /// saved there (and moving groups an older version saved whole to the
    /// one-row-per-alert layout). Alerts that no longer parse are dropped
    /// with a warning.
    pub fn persistent(store: StateDb) -> Result<Self, StateError> {
        let mut groups: HashMap<(RuleName, TargetName), lifecycle::Group> = HashMap::new();
        for (rule, target, _, bytes) in store.saved_alerts()? {
            match serde_json::from_slice::<TrackedAlert>(&bytes) {
                Ok(alert) => groups
                    .entry((RuleName::from(rule), TargetName::from(target)))
                    .or_default()
                    .insert(alert),
                Err(error) => {
                    tracing::warn!(rule, target, %error, "Dropped an unreadable saved alert.")
                }
            }
        }
        for (rule, target, bytes) in store.take_legacy_alert_groups()? {
            match serde_json::from_slice::<lifecycle::Group>(&bytes) {
                Ok(legacy) => {
                    let key = (RuleName::from(rule), TargetName::from(target));
                    let group = groups.entry(key.clone()).or_default();
                    for alert in legacy.alerts() {
                        group.insert(alert.clone());
                    }
                    save_changes(&store, &mut None, &key, group, &[]);
                }
                Err(error) => {
                    tracing::warn!(rule, target, %error, "Dropped an unreadable saved alert group.")
                }
            }
        }
        let mut per_rule = HashMap::new();
        let board = AlertBoard::default();
        for ((rule, target), group) in &groups {
            *per_rule.entry(rule.clone()).or_default() += group.len();
            board.publish(rule, target, group.alerts());
        }
        Ok(Tracker {
            groups,
            per_rule,
            limits: RuleAlertLimits::default(),
            store: Some(store),
            held: None,
            board,
        })
    }

    /// From now until [`Tracker::commit`], gathers the changes to save
    /// instead of writing each transition on its own.
    pub fn hold(&mut self) {
        if self.store.is_some() && self.held.is_none() {
            self.held = Some(Vec::new());
        }
    }

    /// Saves what was gathered since [`Tracker::hold`] in one transaction,
    /// and writes each change on its own again from now on.
    pub fn commit(&mut self) {
        let (Some(store), Some(held)) = (&self.store, self.held.take()) else {
            return;
        };
        if let Err(error) = store.save_alert_changes(&held) {
            tracing::error!(groups = held.len(), %error, "Saving alert state failed; a restart may announce these alerts again.");
        }
    }

    /// Sets each rule's limits (at start and when the config changes). A
    /// rule already past a lowered limit keeps its alerts, but no verdict
    /// of it may add to them until it is back under.
    pub fn set_limits(&mut self, limits: RuleAlertLimits) {
        self.limits = limits;
    }

    /// Folds the alerts `rule` reported for `target` at `now_ms` into the
    /// tracked state and returns the transitions to announce; or, when that
    /// would take the rule past its [`AlertLimits`], changes nothing and
    /// says which limit.
    pub fn observe(
        &mut self,
        rule: &RuleName,
        target: &TargetName,
        alerts: &[Alert],
        now_ms: u64,
    ) -> Result<Vec<AlertEvent>, TooManyAlerts> {
        let key = (rule.clone(), target.clone());
        let before_len = self.groups.get(&key).map_or(0, lifecycle::Group::len);
        let rule_total = self.per_rule.get(rule).copied().unwrap_or(0);
        self.check(&key, before_len, rule_total, alerts, now_ms)?;
        let group = self.groups.entry(key.clone()).or_default();
        let before = group.shape();
        let events = lifecycle::step(group, rule, target, alerts, now_ms);
        let after_len = group.len();
        if let Some(store) = &self.store {
            save_changes(store, &mut self.held, &key, group, &before);
        }
        if after_len > 0 || !before.is_empty() {
            self.board.publish(rule, target, group.alerts());
        }
        self.board.announced(&events);
        if after_len == 0 {
            self.groups.remove(&key);
        }
        let total = rule_total - before_len + after_len;
        if total == 0 {
            self.per_rule.remove(rule);
        } else {
            self.per_rule.insert(rule.clone(), total);
        }
        Ok(events)
    }

    /// Refuses a verdict that would take (rule, target) or the rule past
    /// its limit and grow it. The exact count needs every fingerprint, so
    /// it is only worked out when the verdict is big enough to matter.
    fn check(
        &mut self,
        key: &(RuleName, TargetName),
        before_len: usize,
        rule_total: usize,
        alerts: &[Alert],
        now_ms: u64,
    ) -> Result<(), TooManyAlerts> {
        let limits = self.limits.get(&key.0);
        if before_len + alerts.len() <= limits.per_target
            && rule_total + alerts.len() <= limits.per_rule
        {
            return Ok(());
        }
        let empty = lifecycle::Group::default();
        let group = self.groups.get(key).unwrap_or(&empty);
        let would = lifecycle::size_after(group, &key.0, &key.1, alerts, now_ms);
        if would > limits.per_target && would > before_len {
            return Err(TooManyAlerts::PerTarget {
                rule: key.0.clone(),
                target: key.1.clone(),
                would,
                limit: limits.per_target,
            });
        }
        let would = rule_total - before_len + would;
        if would > limits.per_rule && would > rule_total {
            return Err(TooManyAlerts::PerRule {
                rule: key.0.clone(),
                target: key.1.clone(),
                would,
                limit: limits.per_rule,
            });
        }
        Ok(())
    }

    /// How many alerts are tracked for `rule`, over all its targets.
    pub fn tracked(&self, rule: &RuleName) -> usize {
        self.per_rule.get(rule).copied().unwrap_or(0)
    }

    /// Drops every group whose (rule, target) matches, announcing each of
    /// its firing alerts as resolved at `now_ms`: for a rule that is gone.
    pub fn forget(
        &mut self,
        matches: impl Fn(&RuleName, &TargetName) -> bool,
        now_ms: u64,
    ) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        self.groups.retain(|(rule, target), group| {
            if !matches(rule, target) {
                return true;
            }
            if let Some(store) = &self.store {
                let key = (rule.clone(), target.clone());
                let empty = lifecycle::Group::default();
                save_changes(store, &mut self.held, &key, &empty, &group.shape());
            }
            self.board.publish(rule, target, std::iter::empty());
            if let Some(total) = self.per_rule.get_mut(rule) {
                *total -= group.len();
                if *total == 0 {
                    self.per_rule.remove(rule);
                }
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
        self.board.announced(&events);
        events
    }

    /// The read model of what this tracker holds, kept current as it
    /// changes.
    pub fn board(&self) -> AlertBoard {
        self.board.clone()
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

    /// Every firing alert as a firing event, dated when it became active,
    /// in no particular order: what a sink that re-sends firing alerts
    /// starts from after a restart.
    pub fn firing_events(&self) -> impl Iterator<Item = AlertEvent> + '_ {
        self.groups.iter().flat_map(|((rule, target), group)| {
            group
                .alerts()
                .filter(|alert| alert.state == State::Firing)
                .map(|alert| AlertEvent {
                    status: Status::Firing,
                    rule: rule.clone(),
                    target: target.clone(),
                    alert: alert.clone(),
                    at_ms: alert.active_since_ms,
                })
        })
    }

    /// Alerts currently firing, in no particular order.
    pub fn firing(&self) -> impl Iterator<Item = &TrackedAlert> {
        self.groups
            .values()
            .flat_map(|group| group.alerts())
            .filter(|alert| alert.state == State::Firing)
    }
}

/// In a cluster the (rule, target) groups also live in NATS KV
/// (`cluster::alert_state`): these let the alert stage load a group from
/// there and put one back when its write was refused.
impl Tracker {
    /// Replaces the group of (`rule`, `target`) with `alerts` (what the
    /// cluster's store holds), without announcing anything; saved locally
    /// too.
    pub fn replace_group(
        &mut self,
        rule: &RuleName,
        target: &TargetName,
        alerts: Vec<TrackedAlert>,
    ) {
        let key = (rule.clone(), target.clone());
        let old = self.groups.remove(&key).unwrap_or_default();
        let mut group = lifecycle::Group::default();
        for alert in alerts {
            group.insert(alert);
        }
        if let Some(store) = &self.store {
            save_changes(store, &mut self.held, &key, &group, &old.shape());
        }
        let total = self.per_rule.get(rule).copied().unwrap_or(0) - old.len() + group.len();
        if total == 0 {
            self.per_rule.remove(rule);
        } else {
            self.per_rule.insert(rule.clone(), total);
        }
        self.board.publish(rule, target, group.alerts());
        if !group.is_empty() {
            self.groups.insert(key, group);
        }
    }

    /// The alerts of (`rule`, `target`) as they are now, owned.
    pub fn group_snapshot(&self, rule: &RuleName, target: &TargetName) -> Vec<TrackedAlert> {
        self.group(rule, target).cloned().collect()
    }
}

/// Saves what changed in `group` since `before` (its earlier shape): one
/// row per alert that appeared, fired or ended, in one transaction; or,
/// while `held`, adds them to what [`Tracker::commit`] will save.
fn save_changes(
    store: &StateDb,
    held: &mut Option<Vec<AlertChanges>>,
    key: &(RuleName, TargetName),
    group: &lifecycle::Group,
    before: &[(Fingerprint, State, u64)],
) {
    let (changed, gone) = group.changes_since(before);
    let upserts: Vec<(u64, Vec<u8>)> = changed
        .into_iter()
        .map(|alert| {
            let bytes = serde_json::to_vec(alert).expect("tracked alerts serialise");
            (alert.fingerprint.as_u64(), bytes)
        })
        .collect();
    let removed: Vec<u64> = gone.into_iter().map(Fingerprint::as_u64).collect();
    if let Some(held) = held {
        if !upserts.is_empty() || !removed.is_empty() {
            held.push(AlertChanges {
                rule: key.0.to_string(),
                target: key.1.to_string(),
                upserts,
                removed,
            });
        }
        return;
    }
    if let Err(error) = store.save_alerts(&key.0, &key.1, &upserts, &removed) {
        tracing::error!(rule = %key.0, target = %key.1, %error, "Saving alert state failed; a restart may announce these alerts again.");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Severity;

    /// `count` alerts named `{prefix}0..`, each firing at once and kept
    /// firing for an hour once gone.
    fn fresh(prefix: &str, count: usize) -> Vec<Alert> {
        (0..count)
            .map(|n| Alert {
                name: format!("{prefix}{n}"),
                severity: Severity::Info,
                summary: String::new(),
                labels: vec![],
                annotations: vec![],
                for_ms: 0,
                keep_firing_for_ms: 3_600_000,
            })
            .collect()
    }

    fn limited(per_target: usize, per_rule: usize) -> Tracker {
        let mut limits = RuleAlertLimits::default();
        limits.set(
            "churn".into(),
            AlertLimits {
                per_target,
                per_rule,
            },
        );
        let mut tracker = Tracker::default();
        tracker.set_limits(limits);
        tracker
    }

    #[test]
    fn a_verdict_past_the_per_target_limit_is_refused_and_changes_nothing() {
        let mut tracker = limited(5, 100);
        let (rule, target) = (RuleName::from("churn"), TargetName::from("a"));
        assert_eq!(
            tracker
                .observe(&rule, &target, &fresh("A", 3), 0)
                .unwrap()
                .len(),
            3
        );
        // 3 kept firing + 3 new = 6 > 5.
        let refused = tracker.observe(&rule, &target, &fresh("B", 3), 1_000);
        assert!(
            matches!(
                refused,
                Err(TooManyAlerts::PerTarget {
                    would: 6,
                    limit: 5,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(tracker.group(&rule, &target).count(), 3);
        assert_eq!(tracker.tracked(&rule), 3);
        // The same alerts again, or fewer new ones, are fine.
        assert!(
            tracker
                .observe(&rule, &target, &fresh("A", 3), 2_000)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            tracker
                .observe(&rule, &target, &fresh("C", 2), 3_000)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(tracker.tracked(&rule), 5);
        // Other rules are not limited by this one's limits.
        let other = RuleName::from("other");
        assert_eq!(
            tracker
                .observe(&other, &target, &fresh("D", 50), 0)
                .unwrap()
                .len(),
            50
        );
    }

    #[test]
    fn the_per_rule_limit_counts_every_target() {
        let mut tracker = limited(10, 12);
        let rule = RuleName::from("churn");
        for target in ["a", "b"] {
            let events = tracker
                .observe(&rule, &target.into(), &fresh(target, 6), 0)
                .unwrap();
            assert_eq!(events.len(), 6);
        }
        let refused = tracker.observe(&rule, &"c".into(), &fresh("c", 1), 0);
        assert!(
            matches!(
                refused,
                Err(TooManyAlerts::PerRule {
                    would: 13,
                    limit: 12,
                    ..
                })
            ),
            "{refused:?}"
        );
        // A gone target frees its share.
        tracker.forget(|_, target| target == "a", 1);
        assert_eq!(tracker.tracked(&rule), 6);
        assert_eq!(
            tracker
                .observe(&rule, &"c".into(), &fresh("c", 6), 2)
                .unwrap()
                .len(),
            6
        );
    }

    #[test]
    fn a_lowered_limit_keeps_what_is_tracked_but_lets_it_shrink() {
        let mut tracker = limited(10, 100);
        let (rule, target) = (RuleName::from("churn"), TargetName::from("a"));
        tracker.observe(&rule, &target, &fresh("A", 8), 0).unwrap();
        let mut lower = RuleAlertLimits::default();
        lower.set(
            rule.clone(),
            AlertLimits {
                per_target: 2,
                per_rule: 100,
            },
        );
        tracker.set_limits(lower);
        // Reporting 4 of the 8 keeps 8 (the rest keep firing): not a growth.
        assert!(
            tracker
                .observe(&rule, &target, &fresh("A", 4), 1_000)
                .is_ok()
        );
        assert!(
            tracker
                .observe(&rule, &target, &fresh("B", 1), 2_000)
                .is_err()
        );
    }

    #[test]
    fn only_alerts_that_change_state_are_written_and_a_restart_gets_them_back() {
        let db = StateDb::in_memory().unwrap();
        let (rule, target) = (RuleName::from("r"), TargetName::from("t"));
        let mut tracker = Tracker::persistent(db.clone()).unwrap();
        let mut alerts = fresh("A", 3);
        tracker.observe(&rule, &target, &alerts, 0).unwrap();
        assert_eq!(db.saved_alerts().unwrap().len(), 3);
        // A new summary is no transition: nothing is written for A0..A2.
        alerts[0].summary = "changed".into();
        alerts.truncate(1);
        alerts.push(fresh("B", 1).remove(0));
        tracker.observe(&rule, &target, &alerts, 1_000).unwrap();
        let saved = db.saved_alerts().unwrap();
        assert_eq!(saved.len(), 4);
        assert!(
            saved
                .iter()
                .all(|(.., bytes)| !String::from_utf8_lossy(bytes).contains("changed")),
            "an unchanged alert was rewritten"
        );
        drop(tracker);
        let restarted = Tracker::persistent(db.clone()).unwrap();
        assert_eq!(restarted.group(&rule, &target).count(), 4);
        assert_eq!(restarted.tracked(&rule), 4);
        // Forgetting the rule removes its rows.
        let mut restarted = restarted;
        assert_eq!(restarted.forget(|r, _| *r == rule, 2_000).len(), 4);
        assert!(db.saved_alerts().unwrap().is_empty());
    }

    #[test]
    fn groups_saved_whole_by_an_older_version_are_moved_to_rows() {
        let db = StateDb::in_memory().unwrap();
        let mut group = lifecycle::Group::default();
        lifecycle::step(&mut group, &"r".into(), &"t".into(), &fresh("A", 2), 0);
        db.save_legacy_alert_group("r", "t", &serde_json::to_vec(&group).unwrap())
            .unwrap();
        let tracker = Tracker::persistent(db.clone()).unwrap();
        assert_eq!(tracker.group(&"r".into(), &"t".into()).count(), 2);
        assert_eq!(db.saved_alerts().unwrap().len(), 2);
        assert!(db.take_legacy_alert_groups().unwrap().is_empty());
    }
}
