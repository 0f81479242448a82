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
//! No clock and no I/O in here: time is the sample's timestamp, passed in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

    /// What must survive a restart: which alerts, in which state, since
    /// when. (Summaries and last-seen times change every sample and are
    /// refreshed by the next one.)
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
        let labels = sorted(&alert.labels);
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
        tracked.for_ms = alert.for_ms;
        tracked.keep_firing_for_ms = alert.keep_firing_for_ms;
        tracked.last_seen_ms = now_ms;
        let held = now_ms.saturating_sub(tracked.active_since_ms);
        if tracked.state == State::Pending && held >= tracked.for_ms {
            tracked.state = State::Firing;
            events.push(event(Status::Firing, rule, target, tracked, now_ms));
        }
    }
    group.alerts.retain(|fingerprint, tracked| {
        if seen.contains(fingerprint) {
            return true;
        }
        let unseen_for = now_ms.saturating_sub(tracked.last_seen_ms);
        match tracked.state {
            State::Pending => false,
            State::Firing if unseen_for < tracked.keep_firing_for_ms => true,
            State::Firing => {
                events.push(event(Status::Resolved, rule, target, tracked, now_ms));
                false
            }
        }
    });
    events
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
