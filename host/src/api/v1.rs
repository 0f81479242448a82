//! `/api/v1`: the JSON API. Every list takes filters as query parameters;
//! a parameter the endpoint does not know is refused (400) with the ones it
//! does, so a typo never silently matches everything.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{ApiError, Shared};
use crate::actions::{AuditQuery, AuditStatus};
use crate::alerts::{ActiveAlert, Severity, State as AlertState};
use crate::config::{ReloadRequest, TenantView};
use crate::plugins::RuleState;
use crate::sources::{Reason, TargetHealth, TargetView};

/// Most audit records one request returns.
pub const MAX_AUDIT_LIMIT: usize = 1000;
/// How long `POST /reload` waits for the config to be read.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

/// The OpenAPI document, checked against the running server by the tests.
pub const OPENAPI: &str = include_str!("openapi.yaml");

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/rules", get(rules))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/tenants", get(tenants))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/openapi.yaml", get(openapi))
}

/// Query parameters, checked against what an endpoint takes.
struct Filters(Vec<(String, String)>);

impl Filters {
    /// Parses `raw`; `repeatable` may appear more than once, `single` once.
    fn parse(
        raw: Option<String>,
        single: &[&str],
        repeatable: &[&str],
    ) -> Result<Filters, ApiError> {
        let raw = raw.unwrap_or_default();
        let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect();
        for (index, (key, _)) in pairs.iter().enumerate() {
            let known: Vec<&str> = single.iter().chain(repeatable).copied().collect();
            if !known.contains(&key.as_str()) {
                let hint = if known.is_empty() {
                    "this endpoint takes no parameters".to_string()
                } else {
                    format!("the parameters are: {}", known.join(", "))
                };
                return Err(ApiError::bad(format!(
                    "unknown parameter `{}`; {hint}",
                    crate::text::prefix(key, 100)
                )));
            }
            if single.contains(&key.as_str()) && pairs[..index].iter().any(|(k, _)| k == key) {
                return Err(ApiError::bad(format!(
                    "parameter `{key}` is given twice; it takes one value"
                )));
            }
        }
        Ok(Filters(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` among `options` (text, value), if given; a value
    /// not among them is refused with the list.
    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)]) -> Result<Option<T>, ApiError> {
        let Some(given) = self.get(key) else {
            return Ok(None);
        };
        match options.iter().find(|(text, _)| *text == given) {
            Some((_, value)) => Ok(Some(*value)),
            None => {
                let texts: Vec<&str> = options.iter().map(|(text, _)| *text).collect();
                Err(ApiError::bad(format!(
                    "{key} `{}` is not one of: {}",
                    crate::text::prefix(given, 100),
                    texts.join(", ")
                )))
            }
        }
    }

    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

type Answer = Result<Response, ApiError>;

// The bodies: serialised straight from the views (going through a
// `serde_json::Value` first costs more than the rest of the request).

/// The body of `/api/v1/targets`.
#[derive(Serialize)]
pub struct TargetList {
    /// The targets that match, by name.
    pub targets: Vec<TargetView>,
}

#[derive(Serialize)]
struct AlertList<'a> {
    alerts: Vec<AlertJson<'a>>,
}

#[derive(Serialize)]
struct RuleList {
    rules: Vec<RuleJson>,
}

#[derive(Serialize)]
struct AuditList {
    records: Vec<crate::actions::AuditRecord>,
}

/// One alert as the API shows it.
#[derive(Serialize)]
struct AlertJson<'a> {
    rule: &'a str,
    target: &'a str,
    name: &'a str,
    state: AlertState,
    severity: Severity,
    summary: &'a str,
    labels: BTreeMap<&'a str, &'a str>,
    annotations: BTreeMap<&'a str, &'a str>,
    fingerprint: String,
    active_since_ms: u64,
    last_seen_ms: u64,
    for_ms: u64,
}

impl<'a> From<&'a ActiveAlert> for AlertJson<'a> {
    fn from(active: &'a ActiveAlert) -> Self {
        let alert = &active.alert;
        AlertJson {
            rule: &active.rule,
            target: &active.target,
            name: &alert.name,
            state: alert.state,
            severity: alert.severity,
            summary: &alert.summary,
            labels: pairs(&alert.labels),
            annotations: pairs(&alert.annotations),
            fingerprint: alert.fingerprint.to_string(),
            active_since_ms: alert.active_since_ms,
            last_seen_ms: alert.last_seen_ms,
            for_ms: alert.for_ms,
        }
    }
}

fn pairs(list: &[(String, String)]) -> BTreeMap<&str, &str> {
    list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `GET /api/v1/alerts?rule=&target=&name=&state=&severity=&label=k=v`
async fn alerts(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Answer {
    let filters = Filters::parse(
        raw,
        &["rule", "target", "name", "state", "severity"],
        &["label"],
    )?;
    let state = filters.choice(
        "state",
        &[
            ("pending", AlertState::Pending),
            ("firing", AlertState::Firing),
        ],
    )?;
    let severity = filters.choice(
        "severity",
        &[
            ("info", Severity::Info),
            ("warning", Severity::Warning),
            ("critical", Severity::Critical),
        ],
    )?;
    let mut labels = Vec::new();
    for matcher in filters.all("label") {
        match matcher.split_once('=') {
            Some((name, value)) if !name.is_empty() => labels.push((name, value)),
            _ => {
                return Err(ApiError::bad(format!(
                    "label `{}` is not NAME=VALUE, e.g. label=team=db",
                    crate::text::prefix(matcher, 100)
                )));
            }
        }
    }
    let all = shared.views.alerts.snapshot();
    let selected: Vec<AlertJson> = all
        .iter()
        .filter(|active| {
            filters.get("rule").is_none_or(|rule| *active.rule == *rule)
                && filters
                    .get("target")
                    .is_none_or(|target| *active.target == *target)
                && filters
                    .get("name")
                    .is_none_or(|name| active.alert.name == name)
                && state.is_none_or(|state| active.alert.state == state)
                && severity.is_none_or(|severity| active.alert.severity == severity)
                && labels.iter().all(|(name, value)| {
                    active
                        .alert
                        .labels
                        .iter()
                        .any(|(k, v)| k == name && v == value)
                })
        })
        .map(AlertJson::from)
        .collect();
    Ok(axum::Json(AlertList { alerts: selected }).into_response())
}

/// One rule as the API shows it.
#[derive(Serialize)]
struct RuleJson {
    name: String,
    version: u64,
    hash: String,
    source: String,
    loaded_at_ms: u64,
    last_reload_error: Option<String>,
    reloads: u64,
    refused_reloads: u64,
    #[serde(flatten)]
    state: RuleState,
    counters: BTreeMap<&'static str, u64>,
}

/// `GET /api/v1/rules?name=`
async fn rules(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Answer {
    let filters = Filters::parse(raw, &["name"], &[])?;
    let views = &shared.views;
    let refused = views.alert_stats.refused_verdicts();
    let rules: Vec<RuleJson> = views
        .status
        .snapshot()
        .into_iter()
        .filter(|(name, _)| filters.get("name").is_none_or(|wanted| name == wanted))
        .map(|(name, status)| {
            let counters = views.rules.get(&name);
            let mut counts = counters
                .as_deref()
                .map(super::metrics::rule_counts)
                .unwrap_or_default();
            counts.insert(
                "refused_verdicts",
                refused.get(name.as_str()).copied().unwrap_or(0),
            );
            RuleJson {
                version: status.version,
                hash: status.hash,
                source: status.source,
                loaded_at_ms: status.loaded_at_ms,
                last_reload_error: status.last_error,
                reloads: status.reloads,
                refused_reloads: status.refused,
                state: counters.map(|c| c.state()).unwrap_or(RuleState {
                    health: "unknown",
                    ..RuleState::default()
                }),
                counters: counts.into_iter().collect(),
                name,
            }
        })
        .collect();
    Ok(axum::Json(RuleList { rules }).into_response())
}

/// `GET /api/v1/targets?name=&health=&reason=`
async fn targets(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Answer {
    let filters = Filters::parse(raw, &["name", "health", "reason"], &[])?;
    let health = filters.choice(
        "health",
        &[
            ("up", TargetHealth::Up),
            ("down", TargetHealth::Down),
            ("unknown", TargetHealth::Unknown),
        ],
    )?;
    let reasons: Vec<(&str, Reason)> = Reason::ALL.iter().map(|r| (r.as_str(), *r)).collect();
    let reason = filters.choice("reason", &reasons)?;
    let targets: Vec<TargetView> = shared
        .views
        .targets
        .snapshot()
        .into_iter()
        .filter(|view| {
            filters.get("name").is_none_or(|name| *view.name == *name)
                && health.is_none_or(|health| view.health == health)
                && reason.is_none_or(|reason| view.reason == Some(reason))
        })
        .collect();
    Ok(axum::Json(TargetList { targets }).into_response())
}

/// The body of `/api/v1/tenants`.
#[derive(Serialize)]
struct TenantList {
    tenants: Vec<TenantView>,
}

/// `GET /api/v1/tenants?name=`
async fn tenants(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Answer {
    let filters = Filters::parse(raw, &["name"], &[])?;
    let tenants = shared
        .views
        .tenants
        .snapshot()
        .into_iter()
        .filter(|tenant| filters.get("name").is_none_or(|name| *tenant.name == *name))
        .collect();
    Ok(axum::Json(TenantList { tenants }).into_response())
}

/// `GET /api/v1/audit?action=&target=&rule=&status=&since=1h&limit=100`
async fn audit(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Answer {
    let filters = Filters::parse(
        raw,
        &["action", "target", "rule", "status", "since", "limit"],
        &[],
    )?;
    let status = match filters.get("status").map(str::parse::<AuditStatus>) {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(message)) => return Err(ApiError::bad(message)),
    };
    let since_ms = match filters.get("since").map(parse_since) {
        None => None,
        Some(Some(since)) => Some(
            crate::clock::now_ms()
                .saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
        ),
        Some(None) => {
            return Err(ApiError::bad(format!(
                "since `{}` is not a duration; write whole numbers with a unit (ms, s, m, h, d, w), e.g. since=1h or since=1h30m",
                crate::text::prefix(filters.get("since").unwrap_or_default(), 100)
            )));
        }
    };
    let limit = match filters.get("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(limit)) if (1..=MAX_AUDIT_LIMIT).contains(&limit) => limit,
        Some(_) => {
            return Err(ApiError::bad(format!(
                "limit must be a whole number from 1 to {MAX_AUDIT_LIMIT}"
            )));
        }
    };
    let query = AuditQuery {
        action: filters.get("action").map(str::to_string),
        target: filters.get("target").map(str::to_string),
        rule: filters.get("rule").map(str::to_string),
        since_ms,
        status,
        limit: Some(limit),
    };
    let log = shared.views.audit.clone();
    // A filter that matches little reads the whole log: off the async
    // workers.
    match tokio::task::spawn_blocking(move || log.list(&query)).await {
        Ok(Ok(records)) => Ok(axum::Json(AuditList { records }).into_response()),
        Ok(Err(problem)) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            problem.to_string(),
        )),
        Err(_) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the audit log failed".into(),
        )),
    }
}

/// Parses `since`: one or more whole numbers of at most 9 digits, each
/// followed by a unit (`ms`, `s`, `m`, `h`, `d`, `w`): `90s`, `1h30m`.
///
/// Narrower than the config's durations (humantime: fractions, spaces,
/// `min`, `hours`, ...) on purpose: the OpenAPI document states this
/// grammar as a pattern, and a query parameter whose accepted values a
/// pattern cannot state would accept what its document calls invalid.
fn parse_since(text: &str) -> Option<Duration> {
    const UNITS: [(&str, u64); 6] = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
        ("w", 604_800_000),
    ];
    let mut rest = text;
    let mut total_ms: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, ms) = UNITS.iter().find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[unit.len()..];
        total_ms = total_ms.saturating_add(number.saturating_mul(*ms));
    }
    Some(Duration::from_millis(total_ms))
}

/// `POST /api/v1/reload`: re-reads the config, as `SIGHUP` does, and says
/// whether it was taken.
async fn reload(State(shared): State<Arc<Shared>>, RawQuery(raw): RawQuery) -> Answer {
    Filters::parse(raw, &[], &[])?;
    let (reply, answer) = oneshot::channel();
    if shared.views.reload.try_send(ReloadRequest(reply)).is_err() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "a reload is already waiting; try again in a moment".into(),
        ));
    }
    match tokio::time::timeout(RELOAD_WAIT, answer).await {
        Ok(Ok(Ok(()))) => Ok(axum::Json(serde_json::json!({ "reloaded": true })).into_response()),
        Ok(Ok(Err(reason))) if reason.starts_with("vigil runs without a config file") => {
            Err(ApiError(StatusCode::CONFLICT, reason))
        }
        Ok(Ok(Err(reason))) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, reason)),
        Ok(Err(_)) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the host is shutting down".into(),
        )),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the config was not read within {}s", RELOAD_WAIT.as_secs()),
        )),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_whole_numbers_with_units_as_the_document_says() {
        let ms = |text: &str| parse_since(text).map(|d| d.as_millis());
        assert_eq!(ms("250ms"), Some(250));
        assert_eq!(ms("90s"), Some(90_000));
        assert_eq!(ms("1h30m"), Some(5_400_000));
        assert_eq!(ms("2d"), Some(172_800_000));
        assert_eq!(ms("1w"), Some(604_800_000));
        assert_eq!(ms("999999999w"), Some(999_999_999 * 604_800_000));
        for refused in [
            "",
            "1",
            "h",
            "1h ",
            " 1h",
            "1.5h",
            "1 h",
            "1min",
            "1H",
            "1h\n",
            "1234567890s",
            "-1s",
            "+1s",
            "1hh",
        ] {
            assert_eq!(ms(refused), None, "{refused:?} parsed");
        }
    }
}
