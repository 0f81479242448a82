//! What the HTTP sources (`http-json`, `prometheus`) share: one `GET` with a
//! whole-request timeout and a body cap, whose every failure is a reason a
//! target is down ("timed out after 2s waiting for ...", "HTTP 500 ...",
//! "body larger than ... (max_body_bytes)").
//!
//! The body is read chunk by chunk up to the cap ([`read_body_capped`]), so
//! a huge or endless page costs one chunk past the cap, never its size.
//!
//! Every HTTP target shares one [`client`] and its connection pool: a
//! `reqwest::Client` is a connector, a TLS configuration with the system's
//! trusted roots parsed into it, and a pool, about 45 KiB and a root-store
//! load each, which per target cost 10,000 targets 450 MiB and a burst of
//! work at start (`BENCHMARKS.md`, "Same job as Prometheus"). The timeout
//! is set per request, so targets keep their own.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderValue};

use super::describe;
use super::failure::{PollError, Reason};
use crate::http::read_body_capped;

/// The header that names the cluster node which polled (cluster mode only):
/// a target, or the operator reading its access log, can tell which node
/// watches it now.
pub const NODE_HEADER: &str = "vigil-node";

/// The client every HTTP target polls through: keep-alive connections are
/// pooled per host and reused by whichever target asks next. In a cluster,
/// `node` is sent in [`NODE_HEADER`] with every poll.
pub fn client(node: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(node) = node.and_then(|node| HeaderValue::from_str(node).ok()) {
        headers.insert(NODE_HEADER, node);
    }
    reqwest::Client::builder()
        .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .default_headers(headers)
        .build()
        .expect("a default HTTP client builds")
}

/// A capped `GET` of one URL.
pub struct CappedGet {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
    max_body_bytes: usize,
    accept: Option<HeaderValue>,
}

impl CappedGet {
    /// A `GET url` through `client` (see [`client`]), bounded by `timeout`
    /// (body included) and `max_body_bytes`.
    pub fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        CappedGet {
            client,
            url,
            timeout,
            max_body_bytes,
            accept: None,
        }
    }

    /// Sends this `Accept` header with every request.
    pub fn accept(mut self, accept: &'static str) -> Self {
        self.accept = Some(HeaderValue::from_static(accept));
        self
    }

    /// The body of a 2xx answer, or the reason there is none.
    pub async fn fetch(&self) -> Result<Vec<u8>, PollError> {
        let mut request = self.client.get(self.url.clone()).timeout(self.timeout);
        if let Some(accept) = &self.accept {
            request = request.header(ACCEPT, accept.clone());
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| self.describe_error(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(PollError::new(
                Reason::HttpStatus,
                format!("HTTP {status} from {}", self.url),
            ));
        }
        if let Some(length) = response.content_length()
            && length > self.max_body_bytes as u64
        {
            return Err(self.too_large());
        }
        let body = read_body_capped(&mut response, self.max_body_bytes)
            .await
            .map_err(|error| self.describe_error(&error))?;
        if body.truncated {
            return Err(self.too_large());
        }
        Ok(body.bytes)
    }

    fn too_large(&self) -> PollError {
        PollError::new(
            Reason::TooLarge,
            format!(
                "body larger than {} bytes (max_body_bytes)",
                self.max_body_bytes
            ),
        )
    }

    fn describe_error(&self, error: &reqwest::Error) -> PollError {
        if error.is_timeout() {
            return PollError::new(
                Reason::Timeout,
                format!(
                    "timed out after {} waiting for {}",
                    describe(self.timeout),
                    self.url
                ),
            );
        }
        // The innermost cause says what happened ("Connection refused").
        let mut cause: &dyn std::error::Error = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        let (reason, what) = if error.is_connect() {
            (Reason::Connect, "cannot connect to")
        } else {
            (Reason::Other, "request failed for")
        };
        PollError::new(reason, format!("{what} {}: {cause}", self.url))
    }
}
