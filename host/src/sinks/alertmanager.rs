//! The `alertmanager` sink: alerts POSTed to Alertmanager's
//! `/api/v2/alerts`, as Prometheus sends them, so Alertmanager's grouping,
//! silences, inhibition and receivers apply to Vigil's alerts.
//!
//! - Each alert is a postable alert: `labels` (`alertname`, `rule`,
//!   `target`, `severity`, `fingerprint` and the rule's), `annotations`
//!   (`summary` and the rule's), `startsAt`, `endsAt` and, when
//!   `external_url` is set, `generatorURL`.
//! - A firing alert's `endsAt` is four re-send intervals ahead: Alertmanager
//!   resolves an alert nobody re-sends by then (a host that died must not
//!   leave alerts firing for ever). So while nothing else waits, the alerts
//!   firing are re-sent every `resend_interval` (1 min by default, as
//!   Prometheus does), starting after a restart from what the host had
//!   firing.
//! - A resolved alert is sent once with `endsAt` at its resolve time. If
//!   the outbox's bound dropped that resolve while Alertmanager was away,
//!   the alert is no longer re-sent and expires there at its `endsAt`.
//!
//! With several Alertmanagers (an HA pair), each URL is a sink of its own
//! with its own outbox: each gets every alert, and they de-duplicate among
//! themselves, so one being down delays nothing for the other.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::post::{Poster, rfc3339};
use super::route::labels;
use super::webhook::annotations;
use super::{Sink, SinkError};
use crate::alerts::{AlertEvent, Fingerprint, Status};
use crate::clock::now_ms;

/// How often firing alerts are re-sent when the config does not say.
pub const DEFAULT_RESEND_INTERVAL: Duration = Duration::from_secs(60);
/// Alerts per POST when re-sending, so a big firing set is several
/// requests of a bounded size.
const RESEND_BATCH: usize = 500;

/// The path of the alerts API under an Alertmanager's base URL.
pub fn alerts_url(base: &reqwest::Url) -> reqwest::Url {
    let mut url = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

/// POSTs alerts to one Alertmanager and keeps re-sending those firing.
pub struct AlertmanagerSink {
    poster: Poster,
    resend: Duration,
    generator_url: Option<String>,
    /// What this Alertmanager has been told is firing.
    firing: BTreeMap<Fingerprint, AlertEvent>,
}

impl AlertmanagerSink {
    /// A sink posting through `poster` (to [`alerts_url`]), re-sending
    /// firing alerts every `resend`.
    pub fn new(poster: Poster, resend: Duration, external_url: Option<&reqwest::Url>) -> Self {
        AlertmanagerSink {
            poster,
            resend,
            generator_url: external_url.map(|url| url.to_string()),
            firing: BTreeMap::new(),
        }
    }

    fn postable(&self, event: &AlertEvent, now_ms: u64) -> Value {
        postable(event, now_ms, self.resend, self.generator_url.as_deref())
    }
}

/// One alert as Alertmanager's API takes it, at `now_ms`.
pub fn postable(
    event: &AlertEvent,
    now_ms: u64,
    resend: Duration,
    generator_url: Option<&str>,
) -> Value {
    let mut labels = labels(event);
    labels.insert("fingerprint".into(), event.alert.fingerprint.to_string());
    let ends_at = match event.status {
        Status::Firing => now_ms.saturating_add(4 * resend.as_millis() as u64),
        Status::Resolved => event.at_ms,
    };
    let mut alert = json!({
        "labels": labels,
        "annotations": annotations(event),
        "startsAt": rfc3339(event.alert.active_since_ms),
        "endsAt": rfc3339(ends_at),
    });
    if let Some(url) = generator_url {
        alert["generatorURL"] = json!(url);
    }
    alert
}

#[async_trait::async_trait]
impl Sink for AlertmanagerSink {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        let body = json!([self.postable(event, now_ms())]);
        self.poster.post(&body).await?;
        let fingerprint = event.alert.fingerprint;
        match event.status {
            Status::Firing => {
                self.firing.insert(fingerprint, event.clone());
            }
            Status::Resolved => {
                self.firing.remove(&fingerprint);
            }
        }
        Ok(())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.resend)
    }

    async fn refresh(&mut self) -> Result<(), SinkError> {
        let now = now_ms();
        let alerts: Vec<Value> = self
            .firing
            .values()
            .map(|event| self.postable(event, now))
            .collect();
        for batch in alerts.chunks(RESEND_BATCH) {
            self.poster.post(&Value::Array(batch.to_vec())).await?;
        }
        Ok(())
    }

    fn restore(&mut self, firing: &[AlertEvent]) {
        for event in firing {
            self.firing.insert(event.alert.fingerprint, event.clone());
        }
    }

    /// Their resolves were dropped while this Alertmanager was away: no
    /// longer re-sent, they expire there at their `endsAt`.
    fn forget(&mut self, alerts: &[Fingerprint]) {
        for fingerprint in alerts {
            self.firing.remove(fingerprint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Severity, State, TrackedAlert};

    #[test]
    fn the_api_path_goes_under_the_base_url() {
        for (base, expected) in [
            ("http://am:9093", "http://am:9093/api/v2/alerts"),
            ("http://am:9093/", "http://am:9093/api/v2/alerts"),
            (
                "https://am/alertmanager/",
                "https://am/alertmanager/api/v2/alerts",
            ),
        ] {
            assert_eq!(alerts_url(&base.parse().unwrap()).as_str(), expected);
        }
    }

    #[test]
    fn a_postable_alert_ends_ahead_while_firing_and_at_its_resolve_time() {
        let mut event = AlertEvent {
            status: Status::Firing,
            rule: "threshold".into(),
            target: "web-01".into(),
            alert: TrackedAlert {
                fingerprint: Fingerprint::of("threshold", "web-01", "CpuUsageHigh", &[]),
                name: "CpuUsageHigh".into(),
                severity: Severity::Warning,
                summary: "cpu_usage is 91.0, above 80".into(),
                labels: vec![],
                annotations: vec![],
                for_ms: 0,
                keep_firing_for_ms: 0,
                state: State::Firing,
                active_since_ms: 1_764_500_400_000,
                last_seen_ms: 1_764_500_400_000,
            },
            at_ms: 1_764_500_400_000,
        };
        let minute = Duration::from_secs(60);
        let now = 1_764_500_460_000;
        let fingerprint = event.alert.fingerprint.to_string();
        assert_eq!(
            postable(&event, now, minute, None),
            json!({
                "labels": {"alertname": "CpuUsageHigh", "fingerprint": fingerprint,
                    "rule": "threshold", "severity": "warning", "target": "web-01"},
                "annotations": {"summary": "cpu_usage is 91.0, above 80"},
                "startsAt": "2025-11-30T11:00:00.000Z",
                "endsAt": "2025-11-30T11:05:00.000Z",
            })
        );
        event.status = Status::Resolved;
        event.at_ms += 30_000;
        let resolved = postable(&event, now, minute, Some("http://vigil/"));
        assert_eq!(resolved["endsAt"], "2025-11-30T11:00:30.000Z");
        assert_eq!(resolved["generatorURL"], "http://vigil/");
    }
}
