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
//! The first polls fall on a grid ([`grid_step`]): the targets whose turn
//! falls in one step poll together, so the host wakes up once per step for
//! them, not once per target. Each wake-up of a thread costs a context
//! switch (and, on a VM, an inter-processor interrupt), which at one poll
//! per wake-up was most of the host's CPU time (`BENCHMARKS.md`). The step
//! is [`STEP`] (10 ms, 100 wake-ups a second) for many targets, and
//! coarser for fewer, so that a step holds about [`MIN_BURST`] targets:
//! 1,000 targets every second poll in 10 bursts of 100, which took a third
//! off the host's CPU. The grid moves only the phase of each target's polls,
//! never their period, so it costs nothing in detection latency.
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

/// The finest grid the first polls of targets started together fall on.
pub const STEP: Duration = Duration::from_millis(10);
/// The fewest targets that share a step of the grid, when there are enough
/// of them: the grid is coarser than [`STEP`] for fewer than
/// `MIN_BURST` × (interval / [`STEP`]) targets.
pub const MIN_BURST: usize = 100;

/// The grid for `count` targets with `interval` started together: [`STEP`],
/// or coarser so that each step has about [`MIN_BURST`] of them: a
/// thousand targets polled every second wake the host 10 times a second,
/// not 100.
pub fn grid_step(count: usize, interval: Duration) -> Duration {
    let coarse = interval.as_nanos() * MIN_BURST as u128 / count.max(1) as u128;
    // An interval shorter than `STEP` is its own grid.
    let finest = interval.as_nanos().max(1);
    Duration::from_nanos(coarse.clamp(STEP.as_nanos().min(finest), finest) as u64)
}

/// When target `index` of `count` started together polls first:
/// `index / count` of its interval from now, rounded down to the
/// [`grid_step`].
pub fn first_poll_delay(index: usize, count: usize, interval: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let nanos = interval.as_nanos() * (index % count) as u128 / count as u128;
    let step = grid_step(count, interval).as_nanos();
    Duration::from_nanos((nanos / step * step) as u64)
}

/// One polling task per target, by name, all sending to one queue; the HTTP
/// ones share one client.
pub struct Pollers {
    running: HashMap<TargetName, (TargetSpec, tokio::task::JoinHandle<()>)>,
    samples: mpsc::Sender<Arc<Sample>>,
    board: TargetBoard,
    http: super::fetch::HttpClient,
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
    fn an_interval_shorter_than_the_finest_step_is_its_own_grid() {
        let fast = Duration::from_millis(5);
        assert_eq!(grid_step(1, fast), fast);
        assert_eq!(grid_step(10_000, fast), fast);
        assert!(first_poll_delay(3, 4, fast) < fast);
    }

    #[test]
    fn first_polls_are_spread_evenly_over_the_interval() {
        let second = Duration::from_secs(1);
        let delays: Vec<Duration> = (0..10_000)
            .map(|index| first_poll_delay(index, 10_000, second))
            .collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[99], Duration::ZERO);
        assert_eq!(delays[100], Duration::from_millis(10));
        assert_eq!(delays[9_999], Duration::from_millis(990));
        // On the 10 ms grid, a hundred in each step.
        for step in 0..100 {
            let at = Duration::from_millis(step * 10);
            assert_eq!(
                delays.iter().filter(|d| **d == at).count(),
                100,
                "step {step}"
            );
        }
    }

    #[test]
    fn fewer_targets_share_a_coarser_grid() {
        let second = Duration::from_secs(1);
        assert_eq!(grid_step(50_000, second), STEP);
        assert_eq!(grid_step(10_000, second), STEP);
        assert_eq!(grid_step(1_000, second), Duration::from_millis(100));
        assert_eq!(grid_step(10, second), second);
        let delays: Vec<Duration> = (0..1000)
            .map(|index| first_poll_delay(index, 1000, second))
            .collect();
        // Ten bursts of a hundred, a tenth of the interval apart.
        for tenth in 0..10 {
            let at = second * tenth / 10;
            assert_eq!(
                delays.iter().filter(|d| **d == at).count(),
                100,
                "tenth {tenth}"
            );
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
        // A few targets are one burst: all poll at once.
        assert_eq!(
            first_poll_delay(1, 2, Duration::from_secs(5)),
            Duration::ZERO
        );
        // Off the grid, rounded down to it: 750.25 ms on a 10 ms grid.
        assert_eq!(
            first_poll_delay(15_005, 20_000, Duration::from_secs(1)),
            Duration::from_millis(750)
        );
    }
}
