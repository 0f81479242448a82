//! `prometheus`: scrapes a `/metrics` page (the Prometheus text format or
//! OpenMetrics text), as Prometheus itself would, from node_exporter or any
//! other exporter.
//!
//! Every series on the page is one metric: its name as written and its
//! labels as the metric's own labels (sorted by name), so
//! `node_cpu_seconds_total{cpu="0",mode="idle"}` reaches a rule as the
//! metric `node_cpu_seconds_total` with the labels `cpu=0` and `mode=idle`.
//! The contract's `metric` record carries labels, so no identity is folded
//! into names. Counters and histograms arrive as their series
//! (`_total`, `_bucket{le=...}`, `_sum`, `_count`): a rule that wants a
//! rate keeps the previous value in its state.
//!
//! The fetch is the one `http-json` uses (timeout for the whole request,
//! body capped at `max_body_bytes`, every failure a down sample with the
//! reason); the page is parsed strictly ([`super::exposition`]): one bad
//! line marks the target down with that line's number and text, and a page
//! of more than [`MAX_SERIES`] series is refused rather than flooding every
//! rule.

use std::time::Duration;

use super::exposition;
use super::fetch::CappedGet;
use super::{PollError, Reading, Source};

/// Most series taken from one page. A full node_exporter page of a large
/// machine has a few thousand; past this the page is refused, since every
/// series crosses into every rule that subscribed to its name.
pub const MAX_SERIES: usize = 10_000;

/// What Prometheus 2.x asks for: OpenMetrics first, the classic text format
/// as the fallback every exporter serves.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes one `/metrics` URL.
pub struct PrometheusSource {
    get: CappedGet,
}

impl PrometheusSource {
    /// A source for `url` with a whole-request `timeout` and a body cap,
    /// polled through `client` (shared by every HTTP target).
    pub fn new(
        client: super::fetch::HttpClient,
        url: reqwest::Url,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        PrometheusSource {
            get: CappedGet::new(client, url, timeout, max_body_bytes).accept(ACCEPT),
        }
    }
}

impl Source for PrometheusSource {
    async fn poll(&mut self) -> Result<Reading, PollError> {
        let body = self.get.fetch().await?;
        let text = std::str::from_utf8(&body).map_err(|error| {
            let line = body[..error.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            PollError::malformed(format!("malformed page at line {line}: not UTF-8 text"))
        })?;
        exposition::parse(text, MAX_SERIES)
            .map(Reading::from)
            .map_err(|error| PollError::malformed(error.to_string()))
    }
}
