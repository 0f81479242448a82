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
    let mut due = start;
    let turn = tokio::time::sleep_until(due);
    tokio::pin!(turn);
    loop {
        turn.as_mut().await;
        // Checked at the poll itself, not only when the pollers are told:
        // a node paused past its lease wakes with every timer due at once.
        let holds = claim.as_ref().is_none_or(Claim::holds);
        if holds && !poll_once(&target, &labels, &mut source, &samples, &board).await {
            return;
        }
        due = next_turn(due, target.interval, tokio::time::Instant::now());
        turn.as_mut().reset(due);
    }
}

/// Polls `target` once, publishes the poll on `board` and sends its sample.
/// False once nobody takes samples any more.
async fn poll_once<S: Source>(
    target: &TargetSpec,
    labels: &[Label],
    source: &mut S,
    samples: &mpsc::Sender<Arc<Sample>>,
    board: &TargetBoard,
) -> bool {
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
    // Stamped with the poll's start: the moment this node was allowed to
    // poll (the claim checked just before), which is what fencing a late
    // write compares with the partition's lease (`cluster::alert_state`).
    let mut sample = make_sample(&target.name, labels, result, started_ms);
    if !extra.is_empty() {
        sample.labels.extend(extra);
        // The contract promises labels sorted by name.
        sample.labels.sort_by(|a, b| a.name.cmp(&b.name));
    }
    samples.send(Arc::new(sample)).await.is_ok()
}

/// When a target whose turn was `due` polls next, `now` being the moment
/// that turn's poll ended: one interval later, or, when that moment has
/// passed too (the poll started late, or took longer than an interval),
/// the first turn after `now` on the same phase. Missed turns are skipped,
/// not caught up in a burst, and the phase is kept: the next turn is always
/// `due` plus a whole number of intervals.
///
/// Keeping the phase is what keeps a loaded host out of a spiral. When each
/// late turn moved the next one to "now + interval" instead (tokio's
/// `MissedTickBehavior::Delay`), targets drifted off the first-poll grid
/// (see `pollers`) one late poll at a time, each drifted target cost a
/// wake-up of its own, and 50,000 targets on one core went from keeping up
/// to falling ever further behind, timing out by the thousand
/// (BENCHMARKS.md, "Fourth round").
pub fn next_turn(
    due: tokio::time::Instant,
    interval: Duration,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    let next = due + interval;
    if next > now || interval.is_zero() {
        return next;
    }
    let late = now.duration_since(next).as_nanos();
    let skipped = late / interval.as_nanos() + 1;
    // At most `late / interval + 1` intervals: `late` is bounded by the
    // time since start, so this stays far inside a u32.
    next + interval * u32::try_from(skipped).unwrap_or(u32::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn a_turn_on_time_comes_one_interval_after_the_last() {
        let (due, second) = (Instant::now(), Duration::from_secs(1));
        assert_eq!(next_turn(due, second, due), due + second);
        // Late, but less than an interval: still on the same phase.
        let late = due + Duration::from_millis(700);
        assert_eq!(next_turn(due, second, late), due + second);
    }

    #[test]
    fn a_late_turn_skips_what_it_missed_and_keeps_its_phase() {
        let (due, second) = (Instant::now(), Duration::from_secs(1));
        // A poll that ended 2.3 s after its turn: the turns at +1 s and
        // +2 s are gone, the next is +3 s, not 2.3 + 1 = +3.3 s.
        let now = due + Duration::from_millis(2_300);
        assert_eq!(next_turn(due, second, now), due + second * 3);
        // Exactly on a later turn: the one after it.
        assert_eq!(next_turn(due, second, due + second), due + second * 2);
        for late_ms in [1_001, 5_555, 86_400_000] {
            let now = due + Duration::from_millis(late_ms);
            let next = next_turn(due, second, now);
            assert!(next > now, "{late_ms} ms late");
            assert!(next <= now + second, "{late_ms} ms late");
            assert_eq!(
                next.duration_since(due).as_nanos() % second.as_nanos(),
                0,
                "{late_ms} ms late: off its phase"
            );
        }
    }
}
