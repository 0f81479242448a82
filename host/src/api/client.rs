//! The command line's side of the API: `vigil status` and `vigil audit`
//! ask the running host that owns a data directory, which is the only way
//! to read its database while it runs (the database allows one process).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;

use super::{ADDR_FILE, TOKEN_FILE};
use crate::state::DataDir;

/// How long a command waits for the host to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running host's API.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// The API of the host running on `data_dir`, if one is: its address
    /// file is there and something accepts connections at that address.
    pub fn find(data_dir: &DataDir) -> Option<Client> {
        let addr = running_addr(data_dir)?;
        let token = std::fs::read_to_string(data_dir.path().join(TOKEN_FILE))
            .ok()
            .map(|token| token.trim().to_string());
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("vigil-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(Client {
            base: format!("http://{addr}"),
            token,
            http,
        })
    }

    /// Where it is.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` (with its query), decoded from JSON; an error answer is
    /// returned with the host's message.
    pub async fn get<T: DeserializeOwned>(&self, path_and_query: &str) -> anyhow::Result<T> {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the running vigil at {url}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("cannot read the answer of {url}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|value| value.get("error")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            anyhow::bail!("the running vigil answered {status}: {message}");
        }
        serde_json::from_slice(&body).with_context(|| format!("unexpected answer from {url}"))
    }
}

/// The address in `data_dir`'s address file, if the process that wrote it
/// is still alive (a host killed outright leaves the file behind, and its
/// port may be someone else's now) and something listens there.
fn running_addr(data_dir: &DataDir) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(data_dir.path().join(ADDR_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let addr: SocketAddr = value.get("addr")?.as_str()?.parse().ok()?;
    let pid = value.get("pid")?.as_u64()?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    Some(addr)
}

/// A query string from the parameters that are set, encoded.
pub fn query<'a>(params: impl IntoIterator<Item = (&'a str, Option<String>)>) -> String {
    let mut encoder = form_urlencoded::Serializer::new(String::new());
    for (key, value) in params {
        if let Some(value) = value {
            encoder.append_pair(key, &value);
        }
    }
    let text = encoder.finish();
    if text.is_empty() {
        text
    } else {
        format!("?{text}")
    }
}
