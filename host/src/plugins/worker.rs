//! One thread per rule, evaluating the samples sent to it in order.
//!
//! Rules are called synchronously (a wasm call is a few microseconds), so each
//! rule gets a plain thread rather than a slot on the async runtime: a rule
//! that burns its whole deadline delays only its own queue, never the poll
//! loop or another rule.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{LoadedRule, Subscription};
use crate::runtime::{CallError, Sample, Verdict};

/// Samples waiting for one rule before senders wait.
const QUEUE: usize = 1024;

/// The outcome of one rule on one sample.
#[derive(Debug)]
pub struct Evaluation {
    /// The rule's name.
    pub rule: Arc<str>,
    /// The sample as the rule saw it (only its subscribed metrics).
    pub sample: Arc<Sample>,
    /// Its verdict, or why the call failed.
    pub result: Result<Verdict, CallError>,
    /// How long the call took.
    pub duration: Duration,
}

/// A rule's worker thread and the queue that feeds it.
pub struct RuleWorker {
    name: Arc<str>,
    queue: mpsc::Sender<Arc<Sample>>,
    thread: JoinHandle<()>,
}

impl RuleWorker {
    /// Starts a thread that evaluates every sample it is sent and reports
    /// each outcome on `results`.
    pub fn spawn(rule: LoadedRule, results: mpsc::UnboundedSender<Evaluation>) -> Self {
        let (queue, mut samples) = mpsc::channel::<Arc<Sample>>(QUEUE);
        let name = rule.name.clone();
        let LoadedRule {
            name: rule_name,
            subscription,
            mut instance,
            ..
        } = rule;
        let thread = std::thread::Builder::new()
            .name(format!("rule-{name}"))
            .spawn(move || {
                while let Some(sample) = samples.blocking_recv() {
                    let evaluation = evaluate(&rule_name, &subscription, &mut instance, &sample);
                    if results.send(evaluation).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning a rule thread");
        RuleWorker {
            name,
            queue,
            thread,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a sample, waiting while the rule's queue is full.
    pub async fn send(&self, sample: Arc<Sample>) {
        if self.queue.send(sample).await.is_err() {
            tracing::error!(rule = %self.name, "Rule worker stopped; sample not evaluated.");
        }
    }

    /// Closes the queue and waits for the samples already queued.
    pub fn stop(self) {
        drop(self.queue);
        if self.thread.join().is_err() {
            tracing::error!(rule = %self.name, "Rule worker panicked.");
        }
    }
}

fn evaluate(
    rule: &Arc<str>,
    subscription: &Subscription,
    instance: &mut crate::runtime::RuleInstance,
    sample: &Arc<Sample>,
) -> Evaluation {
    let view = subscription.view(sample);
    let started = Instant::now();
    let result = instance.evaluate(&view);
    Evaluation {
        rule: rule.clone(),
        sample: view,
        result,
        duration: started.elapsed(),
    }
}
