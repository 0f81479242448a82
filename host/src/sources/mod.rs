//! Sources: poll a target on its own schedule and turn each poll into a
//! [`Sample`].
//!
//! A failed poll is not an error to swallow: it becomes a sample whose
//! health is `down` with the reason, so rules can alert on it. Each target
//! runs in its own task, so a slow or dead target never delays another.
//! The HTTP kinds share one client and connection pool ([`fetch::client`]),
//! and targets started together spread their first polls over their
//! interval ([`first_poll_delay`]) instead of all polling at once.
//!
//! | kind | module |
//! |---|---|
//! | `http-json` | [`http_json`]: a JSON object of numbers |
//! | `prometheus` | [`prometheus`]: a `/metrics` page, parsed by [`exposition`] |
//! | `command` | [`command`]: a Nagios plugin, its output parsed by [`perfdata`] |
//! | `local` | [`local`]: this machine |
//!
//! A metric's labels tell its series apart (`node_cpu_seconds_total` with
//! `cpu=0,mode=idle`; a check's `load1` with its `unit`), in every kind:
//! names stay the names the source printed.

pub mod board;
pub mod command;
pub mod exposition;
mod failure;
mod fetch;
pub mod http_json;
pub mod local;
pub mod perfdata;
mod pollers;
pub mod prometheus;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

pub use board::{TargetBoard, TargetHealth, TargetView};
pub use command::CommandSource;
pub use failure::{PollError, Reason};
pub use fetch::NODE_HEADER;
pub use http_json::{HttpJsonSource, flatten};
pub use local::LocalSource;
pub use pollers::{Pollers, first_poll_delay};
pub use prometheus::PrometheusSource;

use crate::clock::now_ms;
use crate::cluster::Claim;
use crate::config::{TargetKind, TargetSpec};
use crate::runtime::{Health, Label, Metric, Sample};

/// Something that can be polled for metrics.
pub trait Source: Send + 'static {
    /// Takes one reading. `Err` is the reason the target counts as down.
    fn poll(&mut self) -> impl Future<Output = Result<Reading, PollError>> + Send;
}

/// What one successful poll read.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// The metrics.
    pub metrics: Vec<Metric>,
    /// Labels for this sample only, beside the target's (a check's
    /// `check_output`). The config keeps their names apart.
    pub labels: Vec<Label>,
}

impl From<Vec<Metric>> for Reading {
    fn from(metrics: Vec<Metric>) -> Self {
        Reading {
            metrics,
            labels: Vec::new(),
        }
    }
}

/// Starts polling `target` every interval, the first time at `start`,
/// sending each sample to `samples` until that channel closes and
/// publishing each poll on `board`. HTTP targets go through `http` (see
/// [`fetch::client`]). With a `claim` (cluster mode), a poll whose turn
/// comes when the claim no longer holds is skipped.
pub fn spawn(
    target: &TargetSpec,
    samples: mpsc::Sender<Arc<Sample>>,
    board: TargetBoard,
    http: &fetch::HttpClient,
    start: tokio::time::Instant,
    claim: Option<Claim>,
) -> tokio::task::JoinHandle<()> {
    match &target.kind {
        TargetKind::HttpJson {
            url,
            timeout,
            max_body_bytes,
        } => {
            let source = HttpJsonSource::new(http.clone(), url.clone(), *timeout, *max_body_bytes);
            tokio::spawn(run(target.clone(), source, samples, board, start, claim))
        }
        TargetKind::Prometheus {
            url,
            timeout,
            max_body_bytes,
        } => {
            let source =
                PrometheusSource::new(http.clone(), url.clone(), *timeout, *max_body_bytes);
            tokio::spawn(run(target.clone(), source, samples, board, start, claim))
        }
        TargetKind::Command {
            argv,
            timeout,
            max_output_bytes,
        } => {
            let source = CommandSource::new(argv.clone(), *timeout, *max_output_bytes);
            tokio::spawn(run(target.clone(), source, samples, board, start, claim))
        }
        TargetKind::Local => tokio::spawn(run(
            target.clone(),
            LocalSource::new(),
            samples,
            board,
            start,
            claim,
        )),
    }
}

async fn run<S: Source>(
    target: TargetSpec,
    mut source: S,
    samples: mpsc::Sender<Arc<Sample>>,
    board: TargetBoard,
    start: tokio::time::Instant,
    claim: Option<Claim>,
) {
    let labels: Vec<Label> = target
        .labels
        .iter()
        .map(|(name, value)| Label {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    let mut ticks = tokio::time::interval_at(start, target.interval);
    // A poll that overruns its interval delays the next one instead of
    // firing a burst to catch up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Checked at the poll itself, not only when the pollers are told:
        // a node paused past its lease wakes with every timer due at once.
        if claim.as_ref().is_some_and(|claim| !claim.holds()) {
            continue;
        }
        let (started_ms, started) = (now_ms(), std::time::Instant::now());
        let polled = source.poll().await;
        board.polled(
            &target.name,
            started_ms,
            started.elapsed(),
            polled.as_ref().map(|_| ()),
        );
        let (result, extra) = match polled {
            Ok(reading) => (Ok(reading.metrics), reading.labels),
            Err(error) => {
                tracing::warn!(target = %target.name, reason = %error.reason, message = error.message, "Target is down.");
                (Err(error.message), Vec::new())
            }
        };
        // Stamped with the poll's start: the moment this node was allowed
        // to poll (the check above), which is what fencing a late write
        // compares with the partition's lease (`cluster::alert_state`).
        let mut sample = make_sample(&target.name, &labels, result, started_ms);
        if !extra.is_empty() {
            sample.labels.extend(extra);
            // The contract promises labels sorted by name.
            sample.labels.sort_by(|a, b| a.name.cmp(&b.name));
        }
        if samples.send(Arc::new(sample)).await.is_err() {
            return;
        }
    }
}

/// Builds the sample for one poll.
pub fn make_sample(
    target: &str,
    labels: &[Label],
    result: Result<Vec<Metric>, String>,
    timestamp_ms: u64,
) -> Sample {
    let (health, metrics) = match result {
        Ok(metrics) => (Health::Up, metrics),
        Err(reason) => (Health::Down(reason), Vec::new()),
    };
    Sample {
        target: target.to_string(),
        timestamp_ms,
        health,
        metrics,
        labels: labels.to_vec(),
        recent_actions: Vec::new(),
    }
}

fn describe(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}
