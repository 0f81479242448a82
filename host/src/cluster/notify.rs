//! Notifications once, from any node: every alert transition is published
//! to the work-queue stream `vigil_<name>_notifications` with the
//! transition's idempotency key as its message id
//! (`<fingerprint>:<firing|resolved>:<active_since_ms>`, see
//! `sinks::idempotency_key`), and every node's notifier reads the shared
//! durable consumer `notifier` and hands each message to the network sinks.
//!
//! ```text
//! alert stage ─▶ local outbox "nats" (redb) ─StreamSink: publish, wait for the ack─▶ stream
//! stream ─▶ consumer `notifier` ─▶ Notifier (one per node) ─▶ webhook / Alertmanager ─2xx─▶ ack
//! ```
//!
//! **What it guarantees.** A transition is lost neither while NATS is
//! unreachable (it waits in the local durable outbox, retried until the
//! server acknowledges the publish) nor when a notifier dies mid-delivery
//! (the message is acknowledged only after every sink that takes it
//! answered 2xx; unacknowledged, the server hands it to a notifier again
//! after [`ACK_WAIT`]). A transition published twice within the stream's
//! duplicate window (two minutes), by a node that retried or by two nodes
//! during a handover, is stored once.
//!
//! **What it refuses to promise.** Exactly once at the receiver: a notifier
//! killed after the receiver took a notification and before the ack makes
//! the next notifier send it again, with the same `Idempotency-Key` header,
//! which a receiver may use to drop it. Order across alerts: notifiers
//! work in parallel.
//!
//! While a sink takes its time, the notifier tells the server it is still
//! at it every third of [`ACK_WAIT`], so a slow receiver does not get the
//! same notification from a second node. Tenant grants of sinks are not
//! checked here (only each sink's route): clusters with tenants route by
//! `[[sinks]]` routes.

use std::time::Duration;

use super::nats::{Notification, NotificationStream};
use crate::alerts::AlertEvent;
use crate::sinks::spec::NetworkSink;
use crate::sinks::{Sink, SinkError, idempotency_key};

/// How long the server waits for a notifier's ack before handing the
/// message to another.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// The first wait before a failed notification is tried again, doubled
/// with each failure up to [`RETRY_MAX`].
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The sink behind the local outbox "nats": a transition is accepted once
/// the stream has stored it (or knew it already).
pub struct StreamSink {
    stream: NotificationStream,
}

impl StreamSink {
    /// Publishes to `stream`.
    pub fn new(stream: NotificationStream) -> Self {
        StreamSink { stream }
    }
}

#[async_trait::async_trait]
impl Sink for StreamSink {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        let key = idempotency_key(event);
        let payload = serde_json::to_vec(event).expect("alert events serialise");
        let published = tokio::time::timeout(ACK_WAIT, self.stream.publish(&key, payload.into()));
        match published.await {
            Ok(Ok(duplicate)) => {
                if duplicate {
                    tracing::debug!(key, "Notification already in the stream.");
                }
                Ok(())
            }
            Ok(Err(error)) => Err(SinkError(format!(
                "cannot publish to the notification stream: {error:#}"
            ))),
            Err(_) => Err(SinkError(
                "the notification stream did not acknowledge in time".into(),
            )),
        }
    }
}

/// Starts this node's notifier: it reads `stream` and drives `sinks`
/// until the task is aborted.
pub fn spawn(stream: NotificationStream, sinks: Vec<NetworkSink>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(stream, sinks))
}

async fn run(stream: NotificationStream, mut sinks: Vec<NetworkSink>) {
    loop {
        let mut messages = match stream.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "Cannot read the notification stream; trying again.");
                tokio::time::sleep(RETRY_INITIAL).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => handle(&message, &mut sinks).await,
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "The notification stream failed; reading it again.");
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY_INITIAL).await;
    }
}

/// Hands one message to every sink that takes it; acknowledges when all
/// did, asks for it again later otherwise.
async fn handle(message: &Notification, sinks: &mut [NetworkSink]) {
    let event: AlertEvent = match serde_json::from_slice(message.payload()) {
        Ok(event) => event,
        Err(error) => {
            // Written by a version that sends something else: no sink can
            // take it, and asking again would not change that.
            tracing::error!(%error, "Dropped an unreadable notification.");
            let _ = message.ack().await;
            return;
        }
    };
    let key = idempotency_key(&event);
    let mut failed = None;
    for sink in sinks.iter_mut() {
        if !sink.route.matches(&sink.name, &event) {
            continue;
        }
        if let Err(error) = deliver(message, sink, &event).await {
            failed = Some((sink.name.clone(), error));
        }
    }
    match failed {
        None => {
            if let Err(error) = message.ack().await {
                // The server hands it out again after ACK_WAIT: a repeat
                // with the same key.
                tracing::warn!(key, error = %format!("{error:#}"), "Delivered, but the ack did not reach NATS; it will be delivered again.");
            }
        }
        Some((sink, error)) => {
            let delay = crate::sinks::outbox::retry_delay(
                message.delivered(),
                RETRY_INITIAL,
                RETRY_MAX,
                1.0,
            );
            tracing::warn!(sink, key, %error, retry_in = %humantime::format_duration(delay), "Notification not delivered; trying again.");
            let _ = message.retry(delay).await;
        }
    }
}

/// One sink's attempt, telling the server meanwhile that this node is at it.
async fn deliver(
    message: &Notification,
    sink: &mut NetworkSink,
    event: &AlertEvent,
) -> Result<(), SinkError> {
    let attempt = sink.sink.alert(event);
    tokio::pin!(attempt);
    let mut progress = tokio::time::interval(ACK_WAIT / 3);
    progress.tick().await;
    loop {
        tokio::select! {
            result = &mut attempt => return result,
            _ = progress.tick() => {
                let _ = message.progress().await;
            }
        }
    }
}
