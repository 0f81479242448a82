//! What the network sinks share: one JSON POST, with an optional bearer
//! token, whose answer is a success only when it is 2xx. Anything else (an
//! error status, a refused connection, a timeout) is a [`SinkError`] that
//! names the URL and the status, and the outbox retries.

use std::fmt;
use std::time::Duration;

use super::SinkError;
use crate::http::read_body_capped;

/// The header that carries a notification's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// How much of an error answer's body is kept for the log.
const ERROR_EXCERPT: usize = 512;

/// A secret read from a file or the environment (never from the config
/// file itself). Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text` (trimmed: token files end with a newline).
    pub fn new(text: &str) -> Self {
        Secret(text.trim().to_string())
    }

    /// The secret, unless it is empty.
    pub fn non_empty(self) -> Option<Self> {
        (!self.0.is_empty()).then_some(self)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a network sink posts, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL posted to.
    pub url: reqwest::Url,
    /// Sent as `Authorization: Bearer ...` when set.
    pub bearer: Option<Secret>,
    /// Deadline for the whole request, answer included.
    pub timeout: Duration,
}

/// An endpoint with its HTTP client (TLS with the system's roots).
pub struct Poster {
    endpoint: Endpoint,
    client: reqwest::Client,
    /// In a cluster: the node posting, sent in `vigil-node`.
    node: Option<String>,
}

impl Poster {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(endpoint.timeout)
            .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| SinkError(format!("cannot build an HTTP client: {error}")))?;
        Ok(Poster {
            endpoint,
            client,
            node: None,
        })
    }

    /// The URL posted to.
    pub fn url(&self) -> &reqwest::Url {
        &self.endpoint.url
    }

    /// Names `node` in every request (the `vigil-node` header), so a
    /// receiver can tell which node of a cluster delivered.
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// POSTs `body` as JSON; a 2xx answer is the only success.
    pub async fn post(&self, body: &serde_json::Value) -> Result<(), SinkError> {
        self.post_keyed(body, None).await
    }

    /// POSTs `body` as JSON with `key` in the [`IDEMPOTENCY_HEADER`]: the
    /// same for every attempt at the same notification, so a receiver can
    /// drop the repeats at-least-once delivery makes.
    pub async fn post_keyed(
        &self,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> Result<(), SinkError> {
        // Serialised here rather than with reqwest's `json` feature: one
        // line, and one feature fewer to build.
        let mut request = self
            .client
            .post(self.endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("JSON values serialise"));
        if let Some(token) = &self.endpoint.bearer {
            request = request.bearer_auth(token.expose());
        }
        if let Some(key) = key {
            request = request.header(IDEMPOTENCY_HEADER, key);
        }
        if let Some(node) = &self.node {
            request = request.header(crate::sources::NODE_HEADER, node.as_str());
        }
        let url = &self.endpoint.url;
        let mut response = request
            .send()
            .await
            .map_err(|error| SinkError(format!("POST {url}: {}", error_chain(&error))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let excerpt = read_body_capped(&mut response, ERROR_EXCERPT)
            .await
            .map(|body| String::from_utf8_lossy(&body.bytes).trim().to_string())
            .unwrap_or_default();
        let excerpt = crate::text::one_line(&excerpt).into_owned();
        Err(SinkError(if excerpt.is_empty() {
            format!("POST {url}: HTTP {status}")
        } else {
            format!("POST {url}: HTTP {status}: {excerpt}")
        }))
    }
}

/// reqwest's error with its causes ("error sending request: connection
/// refused"), which its `Display` leaves out.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Milliseconds since the epoch as RFC 3339 with milliseconds, the way
/// Alertmanager writes times.
pub fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn poster(url: &str) -> Poster {
        Poster::new(Endpoint {
            url: url.parse().unwrap(),
            bearer: None,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn nothing_listening_and_an_error_status_are_errors_that_say_which() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", closed.local_addr().unwrap());
        drop(closed);
        let refused = poster(&url).post(&serde_json::json!({})).await.unwrap_err();
        assert!(refused.0.starts_with(&format!("POST {url}: ")), "{refused}");
        assert!(
            refused.0.to_lowercase().contains("connection refused"),
            "{refused}"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let body = "no such receiver\nsecond line";
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        let status = poster(&url).post(&serde_json::json!({})).await.unwrap_err();
        assert_eq!(
            status.0,
            format!("POST {url}: HTTP 404 Not Found: no such receiver\\nsecond line")
        );
    }
}
