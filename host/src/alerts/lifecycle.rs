//! The alert lifecycle as a pure function of (state, verdict, time).
//!
//! Rules are level-triggered: each verdict lists the alerts that hold for one
//! sample of one target. [`step`] folds that list into the group of alerts
//! the same rule reported for the same target before, and returns what must
//! be announced:
//!
//! - new alert: `pending`; it fires once it has held for `for-ms` (at once
//!   when `for-ms` is 0) and is announced **once**, as `firing`;
//! - alert no longer reported: a pending one is forgotten silently; a firing
//!   one keeps firing for `keep-firing-for-ms` after it was last reported,
//!   then is announced **once**, as `resolved`.
//!
//! `for-ms` and `keep-firing-for-ms` are cut to [`MAX_HOLD_MS`] (a day):
//! the host does not keep an alert for longer than that on a rule's word.
//!
//! No clock and no I/O in here: time is the sample's timestamp, passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bounds::MAX_HOLD_MS;
use crate::names::{RuleName, TargetName};
use crate::runtime::{self, Label};

/// A stable identity for an alert: rule, target, name and identity labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// Hashes the identity. Labels must be sorted by name.
    pub fn of(rule: &str, target: &str, name: &str, labels: &[(String, String)]) -> Self {
        let mut hasher = Sha256::new();
        for part in [rule, target, name] {
            hasher.update(part.as_bytes());
            hasher.update([0xff]);
        }
        for (key, value) in labels {
            hasher.update(key.as_bytes());
            hasher.update([0xfe]);
            hasher.update(value.as_bytes());
            hasher.update([0xff]);
        }
        let digest = hasher.finalize();
        Fingerprint(u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")))
    }
}

impl Fingerprint {
    /// The number behind it (the key it is saved under).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl From<runtime::Severity> for Severity {
    fn from(severity: runtime::Severity) -> Self {
        match severity {
            runtime::Severity::Info => Severity::Info,
            runtime::Severity::Warning => Severity::Warning,
            runtime::Severity::Critical => Severity::Critical,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Reported, waiting out its `for`.
    Pending,
    /// Announced as firing.
    Firing,
}

/// An alert the host is tracking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedAlert {
    /// Its identity.
    pub fingerprint: Fingerprint,
    /// Its name.
    pub name: String,
    /// Latest severity reported.
    pub severity: Severity,
    /// Latest summary reported.
    pub summary: String,
    /// Identity labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Latest annotations reported, sorted by name.
    pub annotations: Vec<(String, String)>,
    /// How long it must hold before firing.
    pub for_ms: u64,
    /// How long it keeps firing once no longer reported.
    pub keep_firing_for_ms: u64,
    /// Pending or firing.
    pub state: State,
    /// When it was first reported (this episode).
    pub active_since_ms: u64,
    /// When it was last reported.
    pub last_seen_ms: u64,
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started firing.
    Firing,
    /// Stopped firing.
    Resolved,
}

/// Something to announce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Firing or resolved.
    pub status: Status,
    /// The rule that reported it.
    pub rule: RuleName,
    /// The target it is about.
    pub target: TargetName,
    /// The alert as last reported.
    pub alert: TrackedAlert,
    /// When the transition happened (the sample's timestamp).
    pub at_ms: u64,
}

/// The alerts one rule reported for one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    alerts: BTreeMap<Fingerprint, TrackedAlert>,
}

impl Group {
    /// The alerts being tracked, pending and firing.
    pub fn alerts(&self) -> impl Iterator<Item = &TrackedAlert> {
        self.alerts.values()
    }

    /// Tracks `alert` (one restored from the database), replacing any with
    /// its fingerprint.
    pub fn insert(&mut self, alert: TrackedAlert) {
        self.alerts.insert(alert.fingerprint, alert);
    }

    /// What changed since `before` (an earlier [`shape`](Self::shape)):
    /// the alerts that appeared or changed state, and the fingerprints of
    /// those gone. This is what a save must write; the rest is on disk.
    pub fn changes_since(
        &self,
        before: &[(Fingerprint, State, u64)],
    ) -> (Vec<&TrackedAlert>, Vec<Fingerprint>) {
        let changed = self
            .alerts
            .values()
            .filter(|alert| {
                let now = (alert.fingerprint, alert.state, alert.active_since_ms);
                match before.binary_search_by_key(&alert.fingerprint, |(fp, ..)| *fp) {
                    Ok(at) => before[at] != now,
                    Err(_) => true,
                }
            })
            .collect();
        let gone = before
            .iter()
            .map(|(fingerprint, ..)| *fingerprint)
            .filter(|fingerprint| !self.alerts.contains_key(fingerprint))
            .collect();
        (changed, gone)
    }

    /// How many alerts are tracked.
    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    /// What must survive a restart: which alerts, in which state, since
    /// when, sorted by fingerprint. (Summaries and last-seen times change
    /// every sample and are refreshed by the next one.)
    pub fn shape(&self) -> Vec<(Fingerprint, State, u64)> {
        self.alerts
            .values()
            .map(|alert| (alert.fingerprint, alert.state, alert.active_since_ms))
            .collect()
    }
}

/// Folds one verdict's alerts into `group` at time `now_ms` and returns the
/// transitions to announce, firing ones first in the order reported.
pub fn step(
    group: &mut Group,
    rule: &RuleName,
    target: &TargetName,
    reported: &[runtime::Alert],
    now_ms: u64,
) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    let mut seen = BTreeSet::new();
    for alert in reported {
        let labels = with_tenant(sorted(&alert.labels), rule);
        let fingerprint = Fingerprint::of(rule, target, &alert.name, &labels);
        if !seen.insert(fingerprint) {
            continue; // the same alert twice in one verdict counts once
        }
        let tracked = group
            .alerts
            .entry(fingerprint)
            .or_insert_with(|| TrackedAlert {
                fingerprint,
                name: alert.name.clone(),
                severity: alert.severity.into(),
                summary: String::new(),
                labels,
                annotations: Vec::new(),
                for_ms: 0,
                keep_firing_for_ms: 0,
                state: State::Pending,
                active_since_ms: now_ms,
                last_seen_ms: now_ms,
            });
        tracked.severity = alert.severity.into();
        tracked.summary.clone_from(&alert.summary);
        tracked.annotations = sorted(&alert.annotations);
        tracked.for_ms = alert.for_ms.min(MAX_HOLD_MS);
        tracked.keep_firing_for_ms = alert.keep_firing_for_ms.min(MAX_HOLD_MS);
        tracked.last_seen_ms = now_ms;
        let held = now_ms.saturating_sub(tracked.active_since_ms);
        if tracked.state == State::Pending && held >= tracked.for_ms {
            tracked.state = State::Firing;
            events.push(event(Status::Firing, rule, target, tracked, now_ms));
        }
    }
    group.alerts.retain(|fingerprint, tracked| {
        if seen.contains(fingerprint) || kept_unseen(tracked, now_ms) {
            return true;
        }
        if tracked.state == State::Firing {
            events.push(event(Status::Resolved, rule, target, tracked, now_ms));
        }
        false
    });
    events
}

/// How many alerts `group` would track after [`step`] with the same
/// arguments, without changing it: the tracker checks its limits with it
/// before it steps.
pub fn size_after(
    group: &Group,
    rule: &RuleName,
    target: &TargetName,
    reported: &[runtime::Alert],
    now_ms: u64,
) -> usize {
    let seen: BTreeSet<Fingerprint> = reported
        .iter()
        .map(|alert| {
            let labels = with_tenant(sorted(&alert.labels), rule);
            Fingerprint::of(rule, target, &alert.name, &labels)
        })
        .collect();
    let kept = group
        .alerts
        .iter()
        .filter(|(fingerprint, tracked)| {
            !seen.contains(fingerprint) && kept_unseen(tracked, now_ms)
        })
        .count();
    seen.len() + kept
}

/// Whether an alert that was not reported at `now_ms` is still tracked: a
/// firing one within its `keep-firing-for`.
fn kept_unseen(tracked: &TrackedAlert, now_ms: u64) -> bool {
    let unseen_for = now_ms.saturating_sub(tracked.last_seen_ms);
    tracked.state == State::Firing && unseen_for < tracked.keep_firing_for_ms
}

fn event(
    status: Status,
    rule: &RuleName,
    target: &TargetName,
    alert: &TrackedAlert,
    at_ms: u64,
) -> AlertEvent {
    AlertEvent {
        status,
        rule: rule.clone(),
        target: target.clone(),
        alert: alert.clone(),
        at_ms,
    }
}

/// Labels sorted by name; of duplicate names the last one wins.
/// The label that names the tenant whose rule raised an alert. The host
/// sets it; a rule cannot.
pub const TENANT_LABEL: &str = "tenant";

/// `labels` (sorted) with the `tenant` label the host sets: the rule's
/// tenant for a tenant's rule, none for the operator's. Whatever `tenant`
/// label the rule itself reported is dropped, so no rule can pass its
/// alerts off as another tenant's. The host's own alerts keep theirs: the
/// host sets it on an alert about a tenant's rule.
fn with_tenant(mut labels: Vec<(String, String)>, rule: &RuleName) -> Vec<(String, String)> {
    if rule.as_str() == super::HOST_RULE {
        return labels;
    }
    labels.retain(|(name, _)| name != TENANT_LABEL);
    if let Some(tenant) = rule.tenant() {
        let at = labels.partition_point(|(name, _)| name.as_str() < TENANT_LABEL);
        labels.insert(at, (TENANT_LABEL.to_string(), tenant.to_string()));
    }
    labels
}

fn sorted(labels: &[Label]) -> Vec<(String, String)> {
    let map: BTreeMap<&str, &str> = labels
        .iter()
        .map(|label| (label.name.as_str(), label.value.as_str()))
        .collect();
    map.into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime::Alert;

    fn alert(name: &str, for_ms: u64) -> Alert {
        Alert {
            name: name.into(),
            severity: runtime::Severity::Warning,
            summary: format!("{name} is bad"),
            labels: vec![],
            annotations: vec![],
            for_ms,
            keep_firing_for_ms: 0,
        }
    }

    fn statuses(events: &[AlertEvent]) -> Vec<(Status, &str)> {
        events
            .iter()
            .map(|e| (e.status, e.alert.name.as_str()))
            .collect()
    }

    /// Runs a series of verdicts, one per second, and collects every event.
    fn run(verdicts: &[Vec<Alert>]) -> Vec<(u64, Status, String)> {
        let mut group = Group::default();
        let mut all = Vec::new();
        for (second, verdict) in verdicts.iter().enumerate() {
            let now = second as u64 * 1000;
            for event in step(&mut group, &"r".into(), &"t".into(), verdict, now) {
                all.push((now, event.status, event.alert.name));
            }
        }
        all
    }

    #[test]
    fn fires_once_and_resolves_once() {
        let hot = vec![alert("Hot", 0)];
        let events = run(&[vec![], hot.clone(), hot.clone(), hot, vec![], vec![]]);
        assert_eq!(
            events,
            [
                (1000, Status::Firing, "Hot".into()),
                (4000, Status::Resolved, "Hot".into())
            ]
        );
    }

    #[test]
    fn waits_out_for_and_forgets_a_pending_alert_silently() {
        let slow = vec![alert("Slow", 2000)];
        // Held 0s, 1s, then gone: never fires, never resolves.
        assert_eq!(run(&[slow.clone(), slow.clone(), vec![]]), []);
        // Held 0s, 1s, 2s: fires at 2s.
        let events = run(&[slow.clone(), slow.clone(), slow.clone(), vec![]]);
        assert_eq!(
            events,
            [
                (2000, Status::Firing, "Slow".into()),
                (3000, Status::Resolved, "Slow".into())
            ]
        );
    }

    #[test]
    fn a_pending_alert_restarts_its_for_after_a_gap() {
        let slow = vec![alert("Slow", 1500)];
        let events = run(&[slow.clone(), vec![], slow.clone(), slow.clone(), slow]);
        assert_eq!(events, [(4000, Status::Firing, "Slow".into())]);
    }

    #[test]
    fn keep_firing_for_rides_out_flapping() {
        let mut sticky = alert("Sticky", 0);
        sticky.keep_firing_for_ms = 2000;
        let on = vec![sticky];
        let events = run(&[on.clone(), vec![], on, vec![], vec![], vec![]]);
        assert_eq!(
            events,
            [
                (0, Status::Firing, "Sticky".into()),
                (4000, Status::Resolved, "Sticky".into())
            ]
        );
    }

    #[test]
    fn for_and_keep_firing_for_are_cut_to_a_day() {
        let mut forever = alert("Forever", u64::MAX);
        forever.keep_firing_for_ms = u64::MAX;
        let mut group = Group::default();
        let (rule, target) = (RuleName::from("r"), TargetName::from("t"));
        step(
            &mut group,
            &rule,
            &target,
            std::slice::from_ref(&forever),
            0,
        );
        let tracked = group.alerts().next().unwrap();
        assert_eq!(
            (tracked.for_ms, tracked.keep_firing_for_ms),
            (MAX_HOLD_MS, MAX_HOLD_MS)
        );
        // It fires after a day, not never; and resolves a day after it is gone.
        let events = step(
            &mut group,
            &rule,
            &target,
            std::slice::from_ref(&forever),
            MAX_HOLD_MS,
        );
        assert_eq!(statuses(&events), [(Status::Firing, "Forever")]);
        assert_eq!(
            step(&mut group, &rule, &target, &[], 2 * MAX_HOLD_MS - 1),
            []
        );
        let events = step(&mut group, &rule, &target, &[], 2 * MAX_HOLD_MS);
        assert_eq!(statuses(&events), [(Status::Resolved, "Forever")]);
    }

    #[test]
    fn changes_since_lists_only_what_appeared_fired_or_ended() {
        let mut group = Group::default();
        let (rule, target) = (RuleName::from("r"), TargetName::from("t"));
        let (hot, slow, gone) = (alert("Hot", 0), alert("Slow", 1500), alert("Gone", 5000));
        step(
            &mut group,
            &rule,
            &target,
            &[hot.clone(), slow.clone(), gone],
            0,
        );
        let before = group.shape();
        // Hot only refreshes; Slow fires; Gone (pending) is forgotten; New appears.
        step(
            &mut group,
            &rule,
            &target,
            &[hot, slow, alert("New", 0)],
            2000,
        );
        let (changed, removed) = group.changes_since(&before);
        let mut names: Vec<&str> = changed.iter().map(|a| a.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["New", "Slow"]);
        let gone = Fingerprint::of("r", "t", "Gone", &[]);
        assert_eq!(removed, [gone]);
        assert_eq!(group.changes_since(&group.shape()), (vec![], vec![]));
    }

    #[test]
    fn size_after_predicts_what_step_keeps() {
        let mut sticky = alert("Sticky", 0);
        sticky.keep_firing_for_ms = 1500;
        let verdicts = [
            vec![sticky.clone(), alert("Slow", 5000), alert("Hot", 0)],
            vec![alert("Hot", 0), alert("Hot", 0)],
            vec![alert("New", 0)],
            vec![],
            vec![],
        ];
        let mut group = Group::default();
        let (rule, target) = (RuleName::from("r"), TargetName::from("t"));
        for (second, verdict) in verdicts.iter().enumerate() {
            let now = second as u64 * 1000;
            let predicted = size_after(&group, &rule, &target, verdict, now);
            step(&mut group, &rule, &target, verdict, now);
            assert_eq!(predicted, group.len(), "at {now}");
        }
    }

    #[test]
    fn labels_are_identity_and_annotations_are_not() {
        let mut group = Group::default();
        let mut root = alert("DiskFull", 0);
        root.labels = vec![Label {
            name: "mount".into(),
            value: "/".into(),
        }];
        let mut var = root.clone();
        var.labels[0].value = "/var".into();
        let events = step(
            &mut group,
            &"r".into(),
            &"t".into(),
            &[root.clone(), var.clone()],
            0,
        );
        assert_eq!(
            statuses(&events),
            [(Status::Firing, "DiskFull"), (Status::Firing, "DiskFull")]
        );
        assert_ne!(events[0].alert.fingerprint, events[1].alert.fingerprint);

        root.annotations = vec![Label {
            name: "runbook".into(),
            value: "x".into(),
        }];
        root.summary = "new words".into();
        assert_eq!(
            step(&mut group, &"r".into(), &"t".into(), &[root, var], 1000),
            []
        );
        let summaries: Vec<&str> = group.alerts().map(|a| a.summary.as_str()).collect();
        assert!(summaries.contains(&"new words"));
    }

    #[test]
    fn duplicates_in_one_verdict_count_once() {
        let mut group = Group::default();
        let events = step(
            &mut group,
            &"r".into(),
            &"t".into(),
            &[alert("A", 0), alert("A", 0)],
            0,
        );
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn fingerprints_are_stable_and_label_order_free() {
        let a = Fingerprint::of(
            "r",
            "t",
            "A",
            &[("a".into(), "1".into()), ("b".into(), "2".into())],
        );
        assert_eq!(
            a,
            Fingerprint::of(
                "r",
                "t",
                "A",
                &[("a".into(), "1".into()), ("b".into(), "2".into())]
            )
        );
        assert_ne!(
            a,
            Fingerprint::of(
                "r",
                "u",
                "A",
                &[("a".into(), "1".into()), ("b".into(), "2".into())]
            )
        );
        // Field boundaries matter: ("ab", "") is not ("a", "b").
        assert_ne!(
            Fingerprint::of("ab", "", "A", &[]),
            Fingerprint::of("a", "b", "A", &[])
        );
        let mut group = Group::default();
        let mut unordered = alert("A", 0);
        unordered.labels = vec![
            Label {
                name: "b".into(),
                value: "2".into(),
            },
            Label {
                name: "a".into(),
                value: "1".into(),
            },
        ];
        let events = step(&mut group, &"r".into(), &"t".into(), &[unordered], 0);
        assert_eq!(events[0].alert.fingerprint, a);
    }
}
