//! The polling tasks of every target, kept in step with the config.
//!
//! Targets started together (at start, or added by one config reload)
//! spread their first polls evenly over their interval, so 10,000 targets
//! polled every second make 10,000 polls a second from the start instead of
//! 10,000 at once every second: the same work, without a burst that fills
//! the sample queue and delays every sample behind it. Each target keeps its
//! phase after that. The first of them polls at once, so a lone target (the
//! zero-config run, a target added alone) is polled without waiting.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::TargetSpec;
use crate::names::TargetName;
use crate::runtime::Sample;

/// When target `index` of `count` started together polls first:
/// `index / count` of its interval from now.
pub fn first_poll_delay(index: usize, count: usize, interval: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    let nanos = interval.as_nanos() * (index % count) as u128 / count as u128;
    Duration::from_nanos(nanos as u64)
}

/// One polling task per target, by name, all sending to one queue; the HTTP
/// ones share one client.
pub struct Pollers {
    running: HashMap<TargetName, (TargetSpec, tokio::task::JoinHandle<()>)>,
    samples: mpsc::Sender<Arc<Sample>>,
    http: reqwest::Client,
}

impl Pollers {
    /// No targets yet; samples will go to `samples`.
    pub fn new(samples: mpsc::Sender<Arc<Sample>>) -> Self {
        Pollers {
            running: HashMap::new(),
            samples,
            http: super::fetch::client(),
        }
    }

    /// Makes the running pollers match `targets`: new targets start, gone
    /// ones stop, changed ones restart (their first polls spread over their
    /// interval); the others are not touched.
    pub fn apply(&mut self, targets: &[TargetSpec]) {
        let names: HashSet<&str> = targets.iter().map(|target| target.name.as_str()).collect();
        self.running.retain(|name, (_, task)| {
            let keep = names.contains(name.as_str());
            if !keep {
                tracing::info!(target = %name, "Target removed; polling stops.");
                task.abort();
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
                None if !self.running.is_empty() => {
                    tracing::info!(target = %target.name, "Target added; polling starts.")
                }
                None => {}
            }
            starting.push(target);
        }
        let count = starting.len();
        for (index, target) in starting.into_iter().enumerate() {
            let delay = first_poll_delay(index, count, target.interval);
            let task = super::spawn(target, self.samples.clone(), &self.http, delay);
            self.running
                .insert(target.name.clone(), (target.clone(), task));
        }
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
        assert_eq!(delays[1], Duration::from_millis(1));
        assert_eq!(delays[999], Duration::from_millis(999));
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
    }
}
