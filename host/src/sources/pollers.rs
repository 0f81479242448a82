//! The polling tasks of every target, kept in step with the config.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::TargetBoard;
use crate::config::TargetSpec;
use crate::names::TargetName;
use crate::runtime::Sample;

/// One polling task per target, by name, all sending to one queue.
pub struct Pollers {
    running: HashMap<TargetName, (TargetSpec, tokio::task::JoinHandle<()>)>,
    samples: mpsc::Sender<Arc<Sample>>,
    board: TargetBoard,
}

impl Pollers {
    /// No targets yet; samples will go to `samples`, and each poll is
    /// published on `board`.
    pub fn new(samples: mpsc::Sender<Arc<Sample>>, board: TargetBoard) -> Self {
        Pollers {
            running: HashMap::new(),
            samples,
            board,
        }
    }

    /// Makes the running pollers match `targets`: new targets start, gone
    /// ones stop, changed ones restart; the others are not touched.
    pub fn apply(&mut self, targets: &[TargetSpec]) {
        let names: HashSet<&str> = targets.iter().map(|target| target.name.as_str()).collect();
        self.running.retain(|name, (_, task)| {
            let keep = names.contains(name.as_str());
            if !keep {
                tracing::info!(target = %name, "Target removed; polling stops.");
                task.abort();
                self.board.forget(name);
            }
            keep
        });
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
            self.board.track(target);
            let task = super::spawn(target, self.samples.clone(), self.board.clone());
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
