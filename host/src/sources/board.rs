//! The sources' read model: where every target stands (last poll, health,
//! why it is down, how long polls take), published by each polling task
//! after every poll and read by the API and `/metrics`.
//!
//! One lock, held for a map update per poll: at 1,000 targets a second
//! that is 1,000 short critical sections, nothing a poll waits on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use super::failure::{PollError, Reason};
use crate::config::TargetSpec;
use crate::names::TargetName;

/// Upper bounds (seconds) of the poll duration histogram: a loopback poll
/// takes a millisecond, a check a few seconds, a timeout up to the
/// target's limit.
const POLL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Up, down, or not polled yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetHealth {
    /// Not polled yet.
    Unknown,
    /// The last poll read metrics.
    Up,
    /// The last poll failed.
    Down,
}

/// One target, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetView {
    /// Its name.
    pub name: TargetName,
    /// `http-json`, `prometheus`, `command` or `local`.
    pub kind: &'static str,
    /// Time between the starts of two polls.
    #[serde(
        serialize_with = "crate::duration::serialize_ms",
        rename = "interval_ms"
    )]
    pub interval: Duration,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The last poll's outcome.
    pub health: TargetHealth,
    /// Why the last poll failed, when it did.
    pub reason: Option<Reason>,
    /// The failure in words, when it did.
    pub message: Option<String>,
    /// When the last poll started (ms since the epoch).
    pub last_poll_ms: Option<u64>,
    /// How long the last poll took.
    #[serde(
        serialize_with = "crate::duration::serialize_opt_ms",
        rename = "last_duration_ms"
    )]
    pub last_duration: Option<Duration>,
    /// Polls taken since the host started (or the target changed).
    pub polls: u64,
    /// Failed polls, by reason (only reasons that occurred).
    pub failures: BTreeMap<Reason, u64>,
}

impl TargetView {
    fn new(spec: &TargetSpec) -> Self {
        TargetView {
            name: spec.name.clone(),
            kind: spec.kind.name(),
            interval: spec.interval,
            labels: spec.labels.clone(),
            health: TargetHealth::Unknown,
            reason: None,
            message: None,
            last_poll_ms: None,
            last_duration: None,
            polls: 0,
            failures: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Board {
    targets: BTreeMap<TargetName, TargetView>,
    /// Poll durations by source kind (per target would be a series per
    /// target and bucket: the last duration of each is in its view).
    durations: BTreeMap<&'static str, Histogram>,
}

/// Every target's view, shared between the polling tasks and readers.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TargetBoard(Arc<Mutex<Board>>);

impl TargetBoard {
    /// A target is polled from now on (new, or changed: its counts restart).
    pub fn track(&self, spec: &TargetSpec) {
        self.lock()
            .targets
            .insert(spec.name.clone(), TargetView::new(spec));
    }

    /// A target is no longer polled.
    pub fn forget(&self, name: &TargetName) {
        self.lock().targets.remove(name);
    }

    /// `target` was polled at `started_ms` for `took`.
    pub fn polled(
        &self,
        target: &TargetName,
        started_ms: u64,
        took: Duration,
        outcome: Result<(), &PollError>,
    ) {
        let mut board = self.lock();
        let Some(view) = board.targets.get_mut(target) else {
            // Removed while its last poll was under way.
            return;
        };
        view.polls += 1;
        view.last_poll_ms = Some(started_ms);
        view.last_duration = Some(took);
        match outcome {
            Ok(()) => {
                view.health = TargetHealth::Up;
                view.reason = None;
                view.message = None;
            }
            Err(error) => {
                view.health = TargetHealth::Down;
                view.reason = Some(error.reason);
                view.message = Some(error.message.clone());
                *view.failures.entry(error.reason).or_default() += 1;
            }
        }
        let kind = view.kind;
        board
            .durations
            .entry(kind)
            .or_insert_with(|| Histogram::new(POLL_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// Every target, by name.
    pub fn snapshot(&self) -> Vec<TargetView> {
        self.lock().targets.values().cloned().collect()
    }

    /// One target.
    pub fn get(&self, name: &str) -> Option<TargetView> {
        self.lock().targets.get(name).cloned()
    }

    /// Targets not polled even once yet.
    pub fn never_polled(&self) -> Vec<TargetName> {
        self.lock()
            .targets
            .values()
            .filter(|view| view.polls == 0)
            .map(|view| view.name.clone())
            .collect()
    }

    /// The poll duration histogram of each source kind.
    pub fn durations(&self) -> Vec<(&'static str, Histogram)> {
        self.lock()
            .durations
            .iter()
            .map(|(kind, histogram)| (*kind, histogram.clone()))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Board> {
        // Views and counters: no invariant a panic could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
