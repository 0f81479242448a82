//! The `webhook` sink: each alert event POSTed as Alertmanager's webhook
//! payload, version 4, field for field, so a receiver written for
//! Alertmanager (a chat bridge, a pager's integration) takes Vigil's as
//! they are. One alert per payload: Vigil announces each transition once
//! and does no grouping, so a group is one alert, its labels the group's.
//!
//! ```json
//! {"version": "4", "groupKey": "{}:{alertname=\"CpuUsageHigh\", rule=\"threshold\", target=\"web-01\"}",
//!  "truncatedAlerts": 0, "status": "firing", "receiver": "oncall",
//!  "groupLabels": {"alertname": "CpuUsageHigh", "rule": "threshold", "target": "web-01"},
//!  "commonLabels": {...}, "commonAnnotations": {...}, "externalURL": "",
//!  "alerts": [{"status": "firing", "labels": {...}, "annotations": {"summary": "..."},
//!              "startsAt": "2026-11-30T11:00:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
//!              "generatorURL": "", "fingerprint": "3f1c2a9b0d4e5f60"}]}
//! ```
//!
//! It sits behind an outbox ([`super::outbox`]): a notification that is
//! not answered 2xx is sent again, later, with the same content and the
//! same `Idempotency-Key` header ([`idempotency_key`]:
//! `<fingerprint>:<firing|resolved>:<active_since_ms>`), which a receiver
//! may use to drop repeats. In a cluster the key is also the message id in
//! the notification stream, and any node may deliver: the `vigil-node`
//! header says which.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::post::{Poster, rfc3339};
use super::route::labels;
use super::{Sink, SinkError};
use crate::alerts::{AlertEvent, Status, format_labels};

/// What Alertmanager writes as `endsAt` while an alert fires (Go's zero
/// time).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// POSTs every alert event to one URL.
pub struct WebhookSink {
    receiver: String,
    external_url: String,
    poster: Poster,
}

impl WebhookSink {
    /// A sink named `receiver` (the payload's `receiver`) posting through
    /// `poster`; `external_url` is the payload's `externalURL` and each
    /// alert's `generatorURL` (empty when unset).
    pub fn new(receiver: &str, poster: Poster, external_url: Option<&reqwest::Url>) -> Self {
        WebhookSink {
            receiver: receiver.to_string(),
            external_url: external_url.map(|url| url.to_string()).unwrap_or_default(),
            poster,
        }
    }
}

#[async_trait::async_trait]
impl Sink for WebhookSink {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        let key = idempotency_key(event);
        self.poster
            .post_keyed(
                &payload(event, &self.receiver, &self.external_url),
                Some(&key),
            )
            .await
    }
}

/// One transition's stable key: `<fingerprint>:<status>:<active_since_ms>`.
/// An alert fires and resolves once per episode, and an episode is named by
/// when it became active, so two different notifications never share it
/// and every attempt at one does.
pub fn idempotency_key(event: &AlertEvent) -> String {
    format!(
        "{}:{}:{}",
        event.alert.fingerprint,
        status(event),
        event.alert.active_since_ms
    )
}

/// `summary` and the rule's annotations (a rule's own `summary`
/// annotation gives way to the alert's summary).
pub fn annotations(event: &AlertEvent) -> BTreeMap<String, String> {
    let alert = &event.alert;
    let mut annotations: BTreeMap<String, String> = alert.annotations.iter().cloned().collect();
    annotations.insert("summary".into(), alert.summary.clone());
    annotations
}

fn status(event: &AlertEvent) -> &'static str {
    match event.status {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    }
}

/// The version 4 payload for one event.
pub fn payload(event: &AlertEvent, receiver: &str, external_url: &str) -> Value {
    let labels = labels(event);
    let annotations = annotations(event);
    let group: BTreeMap<&str, &str> = ["alertname", "rule", "target"]
        .into_iter()
        .filter_map(|name| Some((name, labels.get(name)?.as_str())))
        .collect();
    let group_key = format!(
        "{{}}:{}",
        format_labels(
            labels
                .iter()
                .filter(|(name, _)| group.contains_key(name.as_str()))
        )
    );
    let ends_at = match event.status {
        Status::Firing => ZERO_TIME.to_string(),
        Status::Resolved => rfc3339(event.at_ms),
    };
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status(event),
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status(event),
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(event.alert.active_since_ms),
            "endsAt": ends_at,
            "generatorURL": external_url,
            "fingerprint": event.alert.fingerprint.to_string(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Fingerprint, Severity, State, TrackedAlert};

    #[test]
    fn the_payload_is_alertmanagers_version_4_field_for_field() {
        let labels = vec![("mount".to_string(), "/var".to_string())];
        let mut event = AlertEvent {
            status: Status::Firing,
            rule: "disk".into(),
            target: "db-01".into(),
            alert: TrackedAlert {
                fingerprint: Fingerprint::of("disk", "db-01", "DiskFull", &labels),
                name: "DiskFull".into(),
                severity: Severity::Critical,
                summary: "/var is 93% full".into(),
                labels,
                annotations: vec![("runbook".into(), "https://wiki/disk".into())],
                for_ms: 0,
                keep_firing_for_ms: 0,
                state: State::Firing,
                active_since_ms: 1_764_500_400_123,
                last_seen_ms: 1_764_500_400_123,
            },
            at_ms: 1_764_500_400_123,
        };
        let fingerprint = event.alert.fingerprint.to_string();
        let labels = json!({"alertname": "DiskFull", "mount": "/var", "rule": "disk",
            "severity": "critical", "target": "db-01"});
        let annotations = json!({"runbook": "https://wiki/disk", "summary": "/var is 93% full"});
        let expected = |status: &str, ends_at: &str| {
            json!({
                "version": "4",
                "groupKey": "{}:{alertname=\"DiskFull\", rule=\"disk\", target=\"db-01\"}",
                "truncatedAlerts": 0,
                "status": status,
                "receiver": "oncall",
                "groupLabels": {"alertname": "DiskFull", "rule": "disk", "target": "db-01"},
                "commonLabels": labels,
                "commonAnnotations": annotations,
                "externalURL": "http://vigil.example/",
                "alerts": [{
                    "status": status,
                    "labels": labels,
                    "annotations": annotations,
                    "startsAt": "2025-11-30T11:00:00.123Z",
                    "endsAt": ends_at,
                    "generatorURL": "http://vigil.example/",
                    "fingerprint": fingerprint,
                }],
            })
        };
        assert_eq!(
            payload(&event, "oncall", "http://vigil.example/"),
            expected("firing", ZERO_TIME)
        );
        event.status = Status::Resolved;
        event.at_ms += 90_000;
        assert_eq!(
            payload(&event, "oncall", "http://vigil.example/"),
            expected("resolved", "2025-11-30T11:01:30.123Z")
        );
    }
}
