//! The polling tasks of every target, kept in step with the config.
//!
//! Targets started together (at start, or added by one config reload)
//! spread their first polls evenly over their interval, so 10,000 targets
//! polled every second make 10,000 polls a second from the start instead of
//! 10,000 at once every second: the same work, without a burst that fills
//! the sample queue and delays every sample behind it. Each target keeps its
//! phase after that. The first of them polls at once, so a lone target (the
//! zero-config run, a target added alone) is polled without waiting.
//!
//! The first polls fall on a grid of [`STEP`] (10 ms): the targets whose turn
//! falls in one step poll together, so the host wakes up 100 times a second
//! for them, not once per target. Each wake-up of a thread costs a context
//! switch (and, on a VM, an inter-processor interrupt), which at one poll
//! per wake-up was most of the host's CPU time (`BENCHMARKS.md`).
//!
//! In a cluster ([`Pollers::in_cluster`]) only the targets whose partition
//! this node owns are polled: [`Pollers::rescope`] starts the targets of a
//! partition gained and stops those of one lost, and each task checks its
//! [`Claim`] before every poll, so a lease that lapses stops polling at
//! its deadline even before the pollers are told.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::TargetBoard;
use crate::cluster::{Claim, NodeId, Ownership};
use crate::config::TargetSpec;
use crate::names::TargetName;
use crate::runtime::Sample;

/// The grid the first polls of targets started together fall on.
pub const STEP: Duration = Duration::from_millis(10);

/// When target `index` of `count` started together polls first:
/// `index / count` of its interval from now, rounded down to a [`STEP`].
pub fn first_poll_delay(index: usize, count: usize, interval: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let nanos = interval.as_nanos() * (index % count) as u128 / count as u128;
    let step = STEP.as_nanos();
    Duration::from_nanos((nanos / step * step) as u64)
}

/// One polling task per target, by name, all sending to one queue; the HTTP
/// ones share one client.
pub struct Pollers {
    running: HashMap<TargetName, (TargetSpec, tokio::task::JoinHandle<()>)>,
    samples: mpsc::Sender<Arc<Sample>>,
    board: TargetBoard,
    http: reqwest::Client,
    /// The targets the config asks for, owned here or not.
    config: Vec<TargetSpec>,
    /// In a cluster: which partitions this node polls.
    ownership: Option<Ownership>,
}

impl Pollers {
    /// No targets yet; samples will go to `samples`, and each poll is
    /// published on `board`.
    pub fn new(samples: mpsc::Sender<Arc<Sample>>, board: TargetBoard) -> Self {
        Pollers {
            running: HashMap::new(),
            samples,
            board,
            http: super::fetch::client(None),
            config: Vec::new(),
            ownership: None,
        }
    }

    /// Polls only the targets of the partitions `ownership` holds, and
    /// names `node` in every HTTP poll ([`super::fetch::NODE_HEADER`]).
    pub fn in_cluster(mut self, ownership: Ownership, node: &NodeId) -> Self {
        self.ownership = Some(ownership);
        self.http = super::fetch::client(Some(node.as_str()));
        self
    }

    /// Makes the running pollers match `targets`: new targets start, gone
    /// ones stop, changed ones restart (their first polls spread over their
    /// interval); the others are not touched. In a cluster, only the
    /// targets owned now run. Returns the targets that stopped, so that the
    /// rules can forget them.
    pub fn apply(&mut self, targets: &[TargetSpec]) -> Vec<TargetName> {
        self.config = targets.to_vec();
        self.rescope()
    }

    /// Starts and stops targets as the owned partitions changed (nothing
    /// changes outside a cluster). Returns the targets that stopped.
    pub fn rescope(&mut self) -> Vec<TargetName> {
        let targets: Vec<TargetSpec> = match &self.ownership {
            None => self.config.clone(),
            Some(ownership) => self
                .config
                .iter()
                .filter(|target| ownership.owns_target(&target.name))
                .cloned()
                .collect(),
        };
        let targets = &targets[..];
        let clustered = self.ownership.is_some();
        let names: HashSet<&str> = targets.iter().map(|target| target.name.as_str()).collect();
        let mut stopped = Vec::new();
        self.running.retain(|name, (_, task)| {
            let keep = names.contains(name.as_str());
            if !keep {
                if clustered {
                    tracing::debug!(target = %name, "Target's partition is no longer held here; polling stops.");
                } else {
                    tracing::info!(target = %name, "Target removed; polling stops.");
                }
                task.abort();
                self.board.forget(name);
                stopped.push(name.clone());
            }
            keep
        });
        let mut starting = Vec::new();
        for target in targets {
            match self.running.get(&target.name) {
                Some((running, _)) if running == target => continue,
                Some((_, task)) => {
                    tracing::info!(target = %target.name, "Target changed; polling restarts.");
                    task.abort();
                }
                None if clustered => {
                    tracing::debug!(target = %target.name, "Target's partition is held here; polling starts.")
                }
                None if !self.running.is_empty() => {
                    tracing::info!(target = %target.name, "Target added; polling starts.")
                }
                None => {}
            }
            starting.push(target);
        }
        let (count, now) = (starting.len(), tokio::time::Instant::now());
        for (index, target) in starting.into_iter().enumerate() {
            let start = now + first_poll_delay(index, count, target.interval);
            self.board.track(target);
            let task = super::spawn(
                target,
                self.samples.clone(),
                self.board.clone(),
                &self.http,
                start,
                self.ownership
                    .as_ref()
                    .map(|ownership| Claim::new(ownership, &target.name)),
            );
            self.running
                .insert(target.name.clone(), (target.clone(), task));
        }
        stopped
    }

    /// How many targets are polled.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether no target is polled.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

impl Drop for Pollers {
    /// Stops every poll: a sample being taken is abandoned.
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_polls_are_spread_evenly_over_the_interval() {
        let second = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..1000)
            .map(|index| first_poll_delay(index, 1000, second))
            .collect();
        assert_eq!(delays[0], Duration::ZERO);
        // Ten to a step of 10 ms, a hundred steps.
        assert_eq!(delays[9], Duration::ZERO);
        assert_eq!(delays[10], Duration::from_millis(10));
        assert_eq!(delays[999], Duration::from_millis(990));
        for step in 0..100 {
            let at = STEP * step;
            assert_eq!(
                delays.iter().filter(|d| **d == at).count(),
                10,
                "step {step}"
            );
        }
        // A hundred in every tenth of the interval.
        for tenth in 0..10 {
            let from = second * tenth / 10;
            let to = second * (tenth + 1) / 10;
            let here = delays.iter().filter(|d| **d >= from && **d < to).count();
            assert_eq!(here, 100, "tenth {tenth}");
        }
    }

    #[test]
    fn a_lone_target_polls_at_once() {
        assert_eq!(
            first_poll_delay(0, 1, Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(
            first_poll_delay(0, 0, Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(
            first_poll_delay(1, 2, Duration::from_secs(5)),
            Duration::from_millis(2500)
        );
        // Off the grid, rounded down to it.
        assert_eq!(
            first_poll_delay(1, 3, Duration::from_millis(100)),
            Duration::from_millis(30)
        );
    }
}
