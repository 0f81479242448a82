//! A sink that hands what it receives to a channel: for programs that embed
//! Vigil, and for tests that drive the pipeline in-process and read what it
//! delivered instead of parsing stdout.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Sink, SinkError};
use crate::alerts::AlertEvent;
use crate::plugins::Evaluation;

/// What a [`ChannelSink`] passes on.
#[derive(Debug, Clone)]
pub enum Delivered {
    /// An alert event.
    Alert(AlertEvent),
    /// An evaluation (only if the sink was added with evaluations on).
    Evaluation(Arc<Evaluation>),
}

/// Sends every event into a bounded channel. When the reader falls behind,
/// this sink waits for it, so its queue in [`Delivery`](super::Delivery)
/// fills and further events are dropped there and counted; the pipeline is
/// never held up.
pub struct ChannelSink {
    out: mpsc::Sender<Delivered>,
}

impl ChannelSink {
    /// A sink and the receiving end of its channel, which holds `capacity`
    /// events.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Delivered>) {
        let (out, received) = mpsc::channel(capacity.max(1));
        (ChannelSink { out }, received)
    }
}

#[async_trait::async_trait]
impl Sink for ChannelSink {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        self.out
            .send(Delivered::Alert(event.clone()))
            .await
            .map_err(|_| SinkError("the receiving end is closed".into()))
    }

    async fn evaluation(&mut self, evaluation: &Arc<Evaluation>) -> Result<(), SinkError> {
        self.out
            .send(Delivered::Evaluation(evaluation.clone()))
            .await
            .map_err(|_| SinkError("the receiving end is closed".into()))
    }
}
