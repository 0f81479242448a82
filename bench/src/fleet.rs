//! A synthetic fleet: N targets behind one loopback port, a path per
//! target, over HTTP/1.1 with keep-alive.
//!
//! | path | answers |
//! |---|---|
//! | `GET /t/{i}/status` | `{"cpu_usage":42.0,"memory_usage":51.0}` (Vigil's `http-json`) |
//! | `GET /t/{i}/metrics` | the same two gauges in Prometheus' text format |
//! | `POST /control/flip/{i}` | target `i`'s `cpu_usage` becomes 95 (above the threshold of 80); answers `{"target": "t-00042", "at_unix_ns": ...}`, the instant the value changed |
//! | `POST /control/restore/{i}` | back to 42, answered the same way |
//! | `GET /control/stats/{expected_ms}` | requests served, targets seen, and the spread of the time between two requests for one target |
//! | `POST /control/reset` | starts the counters and the spread over |
//!
//! Values are steady, so the only alert either system can raise is the one
//! the driver flips. The instant a flip reports is taken right after the new
//! value is stored: every request served after it sees the new value.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::unix_ns;

/// The steady value of every metric.
pub const STEADY_CPU: f64 = 42.0;
/// `cpu_usage` of a flipped target, above the rules' 80.
pub const FLIPPED_CPU: f64 = 95.0;
/// The steady `memory_usage`.
pub const STEADY_MEMORY: f64 = 51.0;
/// Intervals between two requests to a target are counted in 1 ms buckets
/// up to this; longer ones share the last bucket.
const BUCKETS: usize = 10_000;

/// The name of target `i`, as both systems label it.
pub fn target_name(i: usize) -> String {
    format!("t-{i:05}")
}

/// The fleet's state: each target's value and when it was last asked.
pub struct Fleet {
    started: Instant,
    flipped: Vec<AtomicBool>,
    /// Milliseconds since `started` of each target's last request, plus one
    /// (0: never asked since the last reset).
    last_ms: Vec<AtomicU64>,
    requests: AtomicU64,
    intervals: Vec<AtomicU64>,
}

impl Fleet {
    /// A fleet of `targets` steady targets.
    pub fn new(targets: usize) -> Arc<Self> {
        Arc::new(Fleet {
            started: Instant::now(),
            flipped: (0..targets).map(|_| AtomicBool::new(false)).collect(),
            last_ms: (0..targets).map(|_| AtomicU64::new(0)).collect(),
            requests: AtomicU64::new(0),
            intervals: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// The routes above, over this fleet.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/t/{i}/status", axum::routing::get(status))
            .route("/t/{i}/metrics", axum::routing::get(metrics))
            .route("/control/flip/{i}", axum::routing::post(flip))
            .route("/control/restore/{i}", axum::routing::post(restore))
            .route("/control/stats/{expected_ms}", axum::routing::get(stats))
            .route("/control/reset", axum::routing::post(reset))
            .with_state(self.clone())
    }

    /// Counts a request to target `i` and says whether it is flipped, or
    /// `None` when there is no such target.
    fn visit(&self, i: usize) -> Option<bool> {
        let flipped = self.flipped.get(i)?.load(Ordering::Acquire);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms[i].swap(now, Ordering::Relaxed);
        if last != 0 {
            let bucket = ((now - last) as usize).min(BUCKETS);
            self.intervals[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(flipped)
    }

    fn set(&self, i: usize, flipped: bool) -> Option<Flip> {
        self.flipped.get(i)?.store(flipped, Ordering::Release);
        Some(Flip {
            target: target_name(i),
            at_unix_ns: unix_ns(),
        })
    }

    /// The counters since the last reset.
    pub fn stats(&self, expected_ms: u64) -> Stats {
        let counts: Vec<u64> = self
            .intervals
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        // The same intervals, by how far each is from the expected one.
        let mut deviations = vec![0u64; BUCKETS + 1];
        for (ms, count) in counts.iter().enumerate() {
            deviations[(ms as u64).abs_diff(expected_ms) as usize] += count;
        }
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> u64 {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (ms, count) in deviations.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return ms as u64;
                }
            }
            0
        };
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            targets: self.flipped.len(),
            targets_seen: self
                .last_ms
                .iter()
                .filter(|last| last.load(Ordering::Relaxed) != 0)
                .count(),
            intervals: total,
            deviation_p50_ms: quantile(0.5),
            deviation_p99_ms: quantile(0.99),
            deviation_max_ms: deviations.iter().rposition(|&count| count > 0).unwrap_or(0) as u64,
        }
    }

    /// Starts the counters over.
    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        for count in &self.intervals {
            count.store(0, Ordering::Relaxed);
        }
        for last in &self.last_ms {
            last.store(0, Ordering::Relaxed);
        }
    }
}

/// What a flip or a restore answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flip {
    /// The target's name.
    pub target: String,
    /// When its value changed, in nanoseconds since the Unix epoch.
    pub at_unix_ns: u64,
}

/// What `/control/stats` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    /// Requests for targets served since the last reset.
    pub requests: u64,
    /// Targets in the fleet.
    pub targets: usize,
    /// Targets asked at least once since the last reset.
    pub targets_seen: usize,
    /// Intervals measured (two requests in a row for one target).
    pub intervals: u64,
    /// Median distance of an interval from the expected one.
    pub deviation_p50_ms: u64,
    /// 99th percentile of that distance.
    pub deviation_p99_ms: u64,
    /// The largest.
    pub deviation_max_ms: u64,
}

type Shared = State<Arc<Fleet>>;

async fn status(State(fleet): Shared, Path(i): Path<usize>) -> Response {
    let Some(flipped) = fleet.visit(i) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cpu = if flipped { FLIPPED_CPU } else { STEADY_CPU };
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"cpu_usage\":{cpu:.1},\"memory_usage\":{STEADY_MEMORY:.1}}}"),
    )
        .into_response()
}

async fn metrics(State(fleet): Shared, Path(i): Path<usize>) -> Response {
    let Some(flipped) = fleet.visit(i) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cpu = if flipped { FLIPPED_CPU } else { STEADY_CPU };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!(
            "# HELP cpu_usage CPU in use, percent.\n# TYPE cpu_usage gauge\ncpu_usage {cpu}\n\
             # HELP memory_usage Memory in use, percent.\n# TYPE memory_usage gauge\nmemory_usage {STEADY_MEMORY}\n"
        ),
    )
        .into_response()
}

async fn flip(State(fleet): Shared, Path(i): Path<usize>) -> Response {
    answer(fleet.set(i, true))
}

async fn restore(State(fleet): Shared, Path(i): Path<usize>) -> Response {
    answer(fleet.set(i, false))
}

fn answer(flip: Option<Flip>) -> Response {
    match flip {
        Some(flip) => axum::Json(flip).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stats(State(fleet): Shared, Path(expected_ms): Path<u64>) -> Response {
    axum::Json(fleet.stats(expected_ms)).into_response()
}

async fn reset(State(fleet): Shared) -> StatusCode {
    fleet.reset();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_measured_per_target() {
        let fleet = Fleet::new(3);
        assert_eq!(fleet.visit(0), Some(false));
        assert_eq!(fleet.visit(0), Some(false));
        assert_eq!(fleet.visit(2), Some(false));
        assert_eq!(fleet.visit(3), None);
        let stats = fleet.stats(0);
        assert_eq!(
            (stats.requests, stats.targets_seen, stats.intervals),
            (3, 2, 1)
        );
        fleet.set(2, true);
        assert_eq!(fleet.visit(2), Some(true));
        fleet.reset();
        assert_eq!(fleet.stats(0).targets_seen, 0);
    }
}
