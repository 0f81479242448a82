//! What the HTTP sources (`http-json`, `prometheus`) share: one `GET` with a
//! whole-request timeout and a body cap, whose every failure is a reason a
//! target is down ("timed out after 2s waiting for ...", "HTTP 500 ...",
//! "body larger than ... (max_body_bytes)").
//!
//! The body is read chunk by chunk up to the cap ([`read_body_capped`]), so
//! a huge or endless page costs one chunk past the cap, never its size.
//!
//! Every HTTP target shares one [`client`] and its connection pool: a
//! client is a connector, a TLS configuration with the system's trusted
//! roots parsed into it, and a pool, about 45 KiB and a root-store load
//! each, which per target cost 10,000 targets 450 MiB and a burst of work
//! at start (`BENCHMARKS.md`, "Same job as Prometheus"). The timeout is set
//! per request, so targets keep their own.
//!
//! Polls go through hyper's pooled client, not `reqwest` (which the sinks
//! and actions use): a poll is the hot path, one per target per interval,
//! and `reqwest` added a tower stack to each (redirect and retry layers,
//! and a fresh parse of the URL from text on every response, 4.5 % of the
//! host's CPU at 1,000 targets; BENCHMARKS.md, "Third round"). What it gave
//! is kept: redirects followed (at most [`MAX_REDIRECTS`], like Prometheus
//! and `reqwest`), `TCP_NODELAY`, idle connections closed after 90 s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, HeaderMap, HeaderValue, LOCATION, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::describe;
use super::failure::{PollError, Reason};

/// The header that names the cluster node which polled (cluster mode only):
/// a target, or the operator reading its access log, can tell which node
/// watches it now.
pub const NODE_HEADER: &str = "vigil-node";

/// Redirects followed before a poll fails.
pub const MAX_REDIRECTS: usize = 10;

/// How long an unused keep-alive connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The client every HTTP target polls through (see [`client`]); cloning it
/// shares the pool.
#[derive(Clone)]
pub struct HttpClient {
    pool: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Sent with every request: the user agent and, in a cluster, the node.
    headers: Arc<HeaderMap>,
}

/// The client every HTTP target polls through: keep-alive connections are
/// pooled per host and reused by whichever target asks next. In a cluster,
/// `node` is sent in [`NODE_HEADER`] with every poll.
pub fn client(node: Option<&str>) -> HttpClient {
    let mut headers = HeaderMap::new();
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("vigil/", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(node) = node.and_then(|node| HeaderValue::from_str(node).ok()) {
        headers.insert(NODE_HEADER, node);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .unwrap_or_else(|error| {
            // `https` targets then fail on the certificate they present
            // (and say so); `http` ones need no roots.
            tracing::warn!(%error, "No trusted root certificates loaded; https targets cannot be verified.");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        });
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    let pool = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(connector);
    HttpClient {
        pool,
        headers: Arc::new(headers),
    }
}

/// A capped `GET` of one URL.
pub struct CappedGet {
    client: HttpClient,
    url: reqwest::Url,
    /// `url`, parsed once for every request.
    uri: Uri,
    timeout: Duration,
    max_body_bytes: usize,
    accept: Option<HeaderValue>,
}

impl CappedGet {
    /// A `GET url` through `client` (see [`client`]), bounded by `timeout`
    /// (body included) and `max_body_bytes`.
    pub fn new(
        client: HttpClient,
        url: reqwest::Url,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        // A `Url` is valid as a `Uri`; one that is not fails every poll,
        // saying why.
        let uri = url.as_str().parse().unwrap_or_default();
        CappedGet {
            client,
            url,
            uri,
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
        match tokio::time::timeout(self.timeout, self.fetch_untimed()).await {
            Ok(fetched) => fetched,
            Err(_) => Err(PollError::new(
                Reason::Timeout,
                format!(
                    "timed out after {} waiting for {}",
                    describe(self.timeout),
                    self.url
                ),
            )),
        }
    }

    async fn fetch_untimed(&self) -> Result<Vec<u8>, PollError> {
        let mut response = self.send(self.uri.clone()).await?;
        let mut location = self.url.clone();
        for _ in 0..MAX_REDIRECTS {
            let Some(next) = redirect(&response, &location) else {
                break;
            };
            location = next;
            let uri = location
                .as_str()
                .parse()
                .map_err(|error| self.failed(Reason::Other, &error))?;
            response = self.send(uri).await?;
        }
        let status = response.status();
        if status.is_redirection() && response.headers().contains_key(LOCATION) {
            return Err(PollError::new(
                Reason::HttpStatus,
                format!("more than {MAX_REDIRECTS} redirects from {}", self.url),
            ));
        }
        if !status.is_success() {
            return Err(PollError::new(
                Reason::HttpStatus,
                format!("HTTP {status} from {}", self.url),
            ));
        }
        let length = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|length| length > self.max_body_bytes as u64) {
            return Err(self.too_large());
        }
        self.read_capped(response.into_body()).await
    }

    async fn send(&self, uri: Uri) -> Result<http::Response<Incoming>, PollError> {
        let mut request = Request::get(uri)
            .body(Empty::new())
            .map_err(|error| self.failed(Reason::Other, &error))?;
        let headers = request.headers_mut();
        for (name, value) in self.client.headers.iter() {
            headers.insert(name, value.clone());
        }
        if let Some(accept) = &self.accept {
            headers.insert(ACCEPT, accept.clone());
        }
        self.client.pool.request(request).await.map_err(|error| {
            let reason = if error.is_connect() {
                Reason::Connect
            } else {
                Reason::Other
            };
            self.failed(reason, &error)
        })
    }

    /// Reads the body chunk by chunk, refusing it at the first byte past the
    /// cap (dropping the body then closes the connection, so a huge or
    /// endless body costs one chunk past the cap, never its size).
    async fn read_capped(&self, mut body: Incoming) -> Result<Vec<u8>, PollError> {
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| self.failed(Reason::Other, &error))?;
            if let Ok(chunk) = frame.into_data() {
                if chunk.len() > self.max_body_bytes - bytes.len() {
                    return Err(self.too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
        }
        Ok(bytes)
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

    /// A failure, told by its innermost cause ("Connection refused").
    fn failed(&self, reason: Reason, error: &(dyn std::error::Error + 'static)) -> PollError {
        let mut cause = error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        let what = match reason {
            Reason::Connect => "cannot connect to",
            _ => "request failed for",
        };
        PollError::new(reason, format!("{what} {}: {cause}", self.url))
    }
}

/// Where a redirect answer sends the request next (its `Location`, resolved
/// against `from`), or `None` when `response` is not one to follow.
fn redirect(response: &http::Response<Incoming>, from: &reqwest::Url) -> Option<reqwest::Url> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    let next = from.join(location).ok()?;
    matches!(next.scheme(), "http" | "https").then_some(next)
}
