//! The HTTP API: what an operator asks of a running host (what is firing,
//! is every target polled, is every rule healthy, what did remediation do)
//! answered from the read models each stage publishes ([`Views`]); nothing
//! here locks a stage's own state or waits on it.
//!
//! | path | what |
//! |---|---|
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | rules loaded and every target polled once (503 until then) |
//! | `GET /metrics` | Prometheus text format ([`metrics`]) |
//! | `GET /api/v1/{alerts,rules,targets,audit}` | JSON ([`v1`]) |
//! | `POST /api/v1/reload` | re-read the config, as `SIGHUP` (bearer token) |
//! | `GET /api/v1/openapi.yaml` | the API's OpenAPI document |
//! | `GET /` | the page ([`page`]) |
//!
//! Errors are JSON, `{"error": "..."}`, with the status code that fits.
//! The token guards what changes state; on an address other machines can
//! reach, it guards everything but `/healthz`, `/readyz` and the page (which
//! holds no data: it asks for the token and sends it to the API).

pub mod client;
pub mod metrics;
mod page;
pub mod status;
pub mod v1;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::mpsc;

use crate::actions::AuditLog;
use crate::actions::dispatch::ActionStats;
use crate::alerts::{AlertBoard, AlertStats};
use crate::config::{ApiSettings, Listen, ReloadRequest, TenantBoard};
use crate::plugins::RuleBoard;
use crate::plugins::reload::StatusBoard;
use crate::routing::RouterStats;
use crate::runtime::ComponentStats;
use crate::sinks::SinkStats;
use crate::sources::TargetBoard;
use crate::state::DataDir;

/// Longest query string taken; longer ones are answered 414.
pub const MAX_QUERY_BYTES: usize = 4096;

/// The file in the data directory that says where a running host's API
/// listens (`{"addr": "127.0.0.1:9470", "pid": 4242}`), for `vigil status`
/// and `vigil audit`; removed when the host stops.
pub const ADDR_FILE: &str = "api.json";
/// The token file a host makes in its data directory when the config names
/// none.
pub const TOKEN_FILE: &str = "api.token";

/// What the API reads: every stage's read model. Cheap to clone.
#[derive(Clone)]
pub struct Views {
    /// Every target's last poll.
    pub targets: TargetBoard,
    /// Every alert tracked now.
    pub alerts: AlertBoard,
    /// Verdicts refused for alert limits, per rule.
    pub alert_stats: AlertStats,
    /// Each rule's version, source and reloads.
    pub status: StatusBoard,
    /// Each rule's counters and health.
    pub rules: RuleBoard,
    /// The compiled components in memory, and how many were compiled.
    pub components: ComponentStats,
    /// The router's totals.
    pub router: Arc<RouterStats>,
    /// Each sink's counters.
    pub sinks: Vec<(Arc<str>, Arc<SinkStats>)>,
    /// Action requests by action and outcome.
    pub actions: ActionStats,
    /// The audit log.
    pub audit: AuditLog,
    /// Set once the host runs (config and rules loaded).
    pub running: Arc<AtomicBool>,
    /// Where reload requests go.
    pub reload: mpsc::Sender<ReloadRequest>,
    /// The tenants, their grants and whether their files are in force.
    pub tenants: TenantBoard,
}

/// Shared by every handler.
struct Shared {
    views: Views,
    registry: prometheus_client::registry::Registry,
    token: String,
    /// Whether reads need the token too (the address is not loopback).
    guard_reads: bool,
    /// Latched once every target was polled once.
    ready: AtomicBool,
}

/// A bound API server, not yet serving.
pub struct Api {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    addr_file: Option<PathBuf>,
}

impl Api {
    /// Binds the address `settings` asks for and reads (or makes) the
    /// token; `None` when the API is off. The default address falls back to
    /// a free port when taken; a configured one that cannot be bound is an
    /// error.
    pub async fn bind(
        settings: &ApiSettings,
        data_dir: &DataDir,
        views: Views,
    ) -> anyhow::Result<Option<Api>> {
        let Some(addr) = settings.listen.addr() else {
            return Ok(None);
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(error) if matches!(settings.listen, Listen::Default(_)) => {
                let fallback = SocketAddr::new(addr.ip(), 0);
                let listener = tokio::net::TcpListener::bind(fallback)
                    .await
                    .with_context(|| format!("cannot listen on {fallback} for the API"))?;
                tracing::warn!(wanted = %addr, %error, listen = %listener.local_addr()?, "The API's default address is taken (another vigil?); it listens on a free port instead. Set [api] listen to choose.");
                listener
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot listen on {addr} for the API ([api] listen)\nhint: pick a free port, or listen = \"off\"")
                });
            }
        };
        let token = match &settings.token_file {
            Some(file) => read_token(file)?,
            None => make_token(&data_dir.path().join(TOKEN_FILE))?,
        };
        let guard_reads = !addr.ip().is_loopback();
        let local = listener.local_addr()?;
        let addr_file = data_dir.path().join(ADDR_FILE);
        let record = serde_json::json!({ "addr": local.to_string(), "pid": std::process::id() });
        std::fs::write(&addr_file, record.to_string())
            .with_context(|| format!("cannot write {}", addr_file.display()))?;
        tracing::info!(url = %format!("http://{local}/"), "API and page listening.");
        Ok(Some(Api {
            listener,
            shared: Arc::new(Shared {
                registry: metrics::registry(views.clone()),
                views,
                token,
                guard_reads,
                ready: AtomicBool::new(false),
            }),
            addr_file: Some(addr_file),
        }))
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let router = router(self.shared.clone());
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "The API server stopped.");
        }
        if let Some(file) = self.addr_file.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics::serve))
        .merge(v1::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            authorize,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The page holds no data (it reads the API like any client), so it
        // loads without the token and asks for it when the API answers 401.
        .merge(page::routes())
        .merge(guarded)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// Checks the bearer token where it is needed, and the query's length.
async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if request.uri().query().map_or(0, str::len) > MAX_QUERY_BYTES {
        return error(
            StatusCode::URI_TOO_LONG,
            format!("the query string is longer than {MAX_QUERY_BYTES} bytes"),
        );
    }
    let changes_state =
        request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD;
    if (changes_state || shared.guard_reads) && !bearer_matches(request.headers(), &shared.token) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this request needs the API token: send `Authorization: Bearer TOKEN` (the token is in [api] token_file, or the data directory's api.token)".into(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
        return response;
    }
    next.run(request).await
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compared in constant time: the time a wrong guess takes says nothing
    // about how much of it was right.
    let (given, token) = (given.trim().as_bytes(), token.as_bytes());
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "up" })).into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.views.running.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "waiting_for": "the host to start" })),
        )
            .into_response();
    }
    if !shared.ready.load(Ordering::Acquire) {
        let never = shared.views.targets.never_polled();
        if !never.is_empty() {
            let total = never.len();
            let shown: Vec<_> = never.into_iter().take(20).collect();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "ready": false,
                    "waiting_for": format!("{total} targets not polled yet"),
                    "targets": shown,
                })),
            )
                .into_response();
        }
        // Once every target has been polled, the host stays ready: a target
        // added later does not make a running host unready.
        shared.ready.store(true, Ordering::Release);
    }
    axum::Json(serde_json::json!({ "ready": true })).into_response()
}

async fn not_found(request: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such path: {}; see /api/v1/openapi.yaml",
            crate::text::prefix(request.uri().path(), 200)
        ),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {}",
            request.method(),
            crate::text::prefix(request.uri().path(), 200)
        ),
    )
}

/// A JSON error: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: String) -> Response {
    ApiError(status, message).into_response()
}

/// A request the API refuses or cannot answer: the status code and why.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// A 400: the request is wrong, and `message` says how.
    pub fn bad(message: String) -> Self {
        ApiError(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(status, message) = self;
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// Reads the operator's token file: one line, at least 16 characters.
fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "cannot read the API token file {} ([api] token_file)",
            file.display()
        )
    })?;
    let token = text.trim().to_string();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        anyhow::bail!(
            "the API token in {} must be one word of at least 16 characters\nhint: e.g. `head -c 32 /dev/urandom | base64 > {}`",
            file.display(),
            file.display()
        );
    }
    Ok(token)
}

/// Makes a fresh random token in `file`, readable by this user only.
fn make_token(file: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot write the API token to {}", file.display()))?;
    out.write_all(token.as_bytes())?;
    Ok(token)
}

fn getrandom(bytes: &mut [u8]) -> anyhow::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(bytes))
        .context("cannot read /dev/urandom for the API token")
}
