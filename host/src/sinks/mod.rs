//! Sinks: where alert events (and, for sinks that ask, evaluations) go.
//!
//! Every sink runs on a task of its own behind a bounded queue
//! ([`Delivery`]), so a slow or failing sink never holds up evaluation or
//! another sink: the alert stage only ever *offers* an event.
//!
//! | guarantees | refuses to |
//! |---|---|
//! | each sink sees alert events in the order they happened | block the pipeline on a sink |
//! | evaluations never crowd out alert events: one is queued only while the sink's queue is at most half full | grow a queue without bound |
//! | an event that finds a queue full is counted and logged per sink | drop an event silently |
//!
//! A full queue still loses the event: the durable outbox that makes
//! delivery at-least-once across outages and restarts sits in front of
//! network sinks (see the delivery issue), not here.

pub mod channel;
pub mod stdout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

pub use channel::{ChannelSink, Delivered};
pub use stdout::{Format, StdoutSink};

use crate::alerts::{AlertEvent, Outlet};
use crate::plugins::Evaluation;

/// Events waiting for one sink before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 8192;

/// Why a sink could not take an event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Something that takes alert events, one at a time, in order.
///
/// Implementations may take their time (a network round trip, a retry):
/// each sink has its own task and queue.
#[async_trait::async_trait]
pub trait Sink: Send + 'static {
    /// Delivers one alert event (firing or resolved).
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError>;

    /// Takes one evaluation. Called only for sinks added with
    /// [`SinkOptions::evaluations`]; the default ignores it.
    async fn evaluation(&mut self, _evaluation: &Arc<Evaluation>) -> Result<(), SinkError> {
        Ok(())
    }
}

/// How a sink is attached.
#[derive(Debug, Clone, Copy)]
pub struct SinkOptions {
    /// Whether it also receives every evaluation (a line per rule per
    /// sample: useful on a console, too much for a receiver of alerts).
    pub evaluations: bool,
    /// Events that may wait for it before new ones are dropped.
    pub queue: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            evaluations: false,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// What one sink has been through, readable while it runs.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Alert events it took.
    pub delivered: AtomicU64,
    /// Alert events it failed to take (the sink returned an error).
    pub failed: AtomicU64,
    /// Alert events dropped because its queue was full.
    pub dropped_alerts: AtomicU64,
    /// Evaluations not offered because its queue was half full or more.
    pub dropped_evaluations: AtomicU64,
}

enum Message {
    Alert(Arc<AlertEvent>),
    Evaluation(Arc<Evaluation>),
}

struct Attached {
    name: Arc<str>,
    queue: mpsc::Sender<Message>,
    capacity: usize,
    evaluations: bool,
    stats: Arc<SinkStats>,
    task: tokio::task::JoinHandle<()>,
}

/// The delivery stage: every attached sink, each on its own task.
#[derive(Default)]
pub struct Delivery {
    sinks: Vec<Attached>,
}

impl Delivery {
    /// No sinks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `sink` under `name` and starts its task (call inside a
    /// tokio runtime).
    pub fn add(&mut self, name: &str, sink: impl Sink, options: SinkOptions) -> Arc<SinkStats> {
        let capacity = options.queue.max(2);
        let (queue, messages) = mpsc::channel(capacity);
        let stats = Arc::new(SinkStats::default());
        let name: Arc<str> = name.into();
        let task = tokio::spawn(drive(name.clone(), sink, messages, stats.clone()));
        self.sinks.push(Attached {
            name,
            queue,
            capacity,
            evaluations: options.evaluations,
            stats: stats.clone(),
            task,
        });
        stats
    }

    /// Whether any sink wants evaluations (so the caller can skip building
    /// them).
    pub fn wants_evaluations(&self) -> bool {
        self.sinks.iter().any(|sink| sink.evaluations)
    }

    /// Offers an alert event to every sink, never waiting.
    pub fn alert(&self, event: AlertEvent) {
        let event = Arc::new(event);
        for sink in &self.sinks {
            if sink.queue.try_send(Message::Alert(event.clone())).is_err() {
                let dropped = sink.stats.dropped_alerts.fetch_add(1, Ordering::Relaxed) + 1;
                // The first drop and then every 1000th: a stuck sink must
                // not flood the log as well.
                if dropped % 1000 == 1 {
                    tracing::error!(
                        sink = %sink.name,
                        alert = %event.alert.name,
                        status = ?event.status,
                        dropped,
                        "Sink is too far behind; alert event dropped."
                    );
                }
            }
        }
    }

    /// Offers an evaluation to the sinks that want them, while their queue
    /// is at most half full.
    pub fn evaluation(&self, evaluation: &Arc<Evaluation>) {
        for sink in self.sinks.iter().filter(|sink| sink.evaluations) {
            let has_room = sink.queue.capacity() > sink.capacity / 2;
            if !has_room
                || sink
                    .queue
                    .try_send(Message::Evaluation(evaluation.clone()))
                    .is_err()
            {
                sink.stats
                    .dropped_evaluations
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes every queue and waits up to `grace` for the sinks to take what
    /// is queued. Returns, per sink, the events still waiting when it was
    /// cut off (also logged).
    pub async fn close(self, grace: Duration) -> Vec<(Arc<str>, usize)> {
        let deadline = tokio::time::Instant::now() + grace;
        let mut left = Vec::new();
        for sink in self.sinks {
            let Attached {
                name, queue, task, ..
            } = sink;
            let waiting = queue.max_capacity() - queue.capacity();
            drop(queue);
            let mut task = task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(sink = %name, waiting, "Sink did not finish within the shutdown grace; events still queued are not delivered.");
                left.push((name, waiting));
            }
        }
        left
    }
}

impl Outlet for Delivery {
    fn alert(&self, event: AlertEvent) {
        Delivery::alert(self, event);
    }

    fn evaluation(&self, evaluation: &Arc<Evaluation>) {
        Delivery::evaluation(self, evaluation);
    }

    fn wants_evaluations(&self) -> bool {
        Delivery::wants_evaluations(self)
    }
}

async fn drive(
    name: Arc<str>,
    mut sink: impl Sink,
    mut messages: mpsc::Receiver<Message>,
    stats: Arc<SinkStats>,
) {
    while let Some(message) = messages.recv().await {
        let result = match &message {
            Message::Alert(event) => sink.alert(event).await,
            Message::Evaluation(evaluation) => {
                if let Err(error) = sink.evaluation(evaluation).await {
                    tracing::debug!(sink = %name, %error, "Sink refused an evaluation.");
                }
                continue;
            }
        };
        match result {
            Ok(()) => stats.delivered.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                tracing::error!(sink = %name, %error, "Sink failed to take an alert event.");
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}
