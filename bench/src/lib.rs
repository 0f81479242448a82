//! The scene for issue 15: Vigil against Prometheus and Alertmanager on the
//! same job, measured in one run.
//!
//! - [`fleet`]: N synthetic targets behind one loopback port, and the
//!   control endpoint that flips one of them above the threshold.
//! - [`receiver`]: the webhook receiver both systems notify, stamping
//!   arrivals.
//! - [`proc`]: CPU time and peak RSS of the processes under test, from
//!   `/proc`.
//! - [`children`]: the processes under test, killed by PID when dropped.
//! - `src/bin/compare.rs`: the driver that runs both systems on one fleet
//!   and prints their figures side by side (`bench/compare.sh`).
//! - `src/bin/cluster.rs`: the same fleet polled by 1, 2 and 3 `vigil`
//!   nodes sharing it through NATS (`bench/cluster.sh`, issue 16).
//!
//! Nothing here is part of the test suite: the figures are measured by hand
//! and recorded in `BENCHMARKS.md`.

pub mod children;
pub mod fleet;
pub mod proc;
pub mod receiver;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch: the one clock the fleet's
/// flips and the receiver's arrivals are both stamped with.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos() as u64
}

/// Serves `app` on `127.0.0.1:port` (0: any free port) in a task of the
/// current runtime; returns the address.
pub async fn serve(app: axum::Router, port: u16) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("error: server on {addr} stopped: {error}");
        }
    });
    Ok(addr)
}

/// Min, median and max of some durations in seconds (`None` when empty).
pub fn min_median_max(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    };
    Some((sorted[0], median, sorted[sorted.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(min_median_max(&[]), None);
        assert_eq!(min_median_max(&[3.0, 1.0, 2.0]), Some((1.0, 2.0, 3.0)));
        assert_eq!(min_median_max(&[4.0, 1.0, 2.0, 3.0]), Some((1.0, 2.5, 4.0)));
    }
}
