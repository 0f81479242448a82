//! The console sink: one line per evaluation and per alert event, readable
//! text by default or JSON lines for machines (`--format json`).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{Sink, SinkError};
use crate::alerts::{AlertEvent, Status, format_labels};
use crate::plugins::Evaluation;
use crate::runtime::{Health, Label, Metric};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Metrics shown on an evaluation's text line before "+N more".
const SHOWN_METRICS: usize = 8;

/// Writes a line per alert event, and per evaluation when attached with
/// evaluations on, to stdout (or any async writer, for tests).
///
/// The writes are asynchronous (tokio's stdout hands them to a blocking
/// thread), so a stdout pipe whose reader stalls holds up this sink's task
/// only.
pub struct StdoutSink {
    format: Format,
    out: Box<dyn AsyncWrite + Send + Unpin>,
}

impl StdoutSink {
    /// A sink writing to the process's stdout.
    pub fn new(format: Format) -> Self {
        Self::to_writer(format, Box::new(tokio::io::stdout()))
    }

    /// A sink writing to `out`.
    pub fn to_writer(format: Format, out: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        StdoutSink { format, out }
    }

    async fn write(&mut self, line: String) -> Result<(), SinkError> {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        // stdout closed (a pipe whose reader left) is not a reason to stop
        // monitoring: the sink reports the error and the log has the events.
        self.out
            .write_all(&bytes)
            .await
            .and(self.out.flush().await)
            .map_err(|error| SinkError(format!("cannot write to stdout: {error}")))
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        let line = match self.format {
            Format::Text => alert_text(event),
            Format::Json => alert_json(event).to_string(),
        };
        self.write(line).await
    }

    async fn evaluation(&mut self, evaluation: &Arc<Evaluation>) -> Result<(), SinkError> {
        let line = match self.format {
            Format::Text => evaluation_text(evaluation),
            Format::Json => evaluation_json(evaluation).to_string(),
        };
        self.write(line).await
    }
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn metric_text(metric: &Metric) -> String {
    let labels: Vec<String> = metric
        .labels
        .iter()
        .map(|l| format!("{}={}", l.name, l.value))
        .collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", labels.join(","))
    };
    format!("{}{labels}={:.1}", metric.name, metric.value)
}

fn evaluation_text(evaluation: &Evaluation) -> String {
    let sample = &evaluation.sample;
    let head = format!(
        "{} eval     {}/{}",
        time(sample.timestamp_ms),
        sample.target,
        evaluation.rule
    );
    let seen = match &sample.health {
        Health::Up => {
            let mut shown: Vec<String> = sample
                .metrics
                .iter()
                .take(SHOWN_METRICS)
                .map(metric_text)
                .collect();
            if sample.metrics.len() > SHOWN_METRICS {
                shown.push(format!("+{} more", sample.metrics.len() - SHOWN_METRICS));
            }
            format!("up: {}", shown.join(" "))
        }
        Health::Down(reason) => format!("down: {reason}"),
    };
    let said = match &evaluation.result {
        Ok(verdict) if verdict.alerts.is_empty() => "no alerts".to_string(),
        Ok(verdict) => format!("alerts: {}", verdict.alert_names().join(", ")),
        Err(error @ crate::runtime::CallError::Quarantined(_)) => format!("skipped, {error}"),
        Err(error) => format!("FAILED: {error}"),
    };
    // A panic message, a down reason or a label value is text a rule or a
    // target wrote: escaped, so the line stays one line.
    let line = format!("{head} {seen} -> {said} ({:?})", evaluation.duration);
    crate::text::one_line(&line).into_owned()
}

fn label_map(labels: &[Label]) -> Map<String, Value> {
    labels
        .iter()
        .map(|label| (label.name.clone(), Value::String(label.value.clone())))
        .collect()
}

fn evaluation_json(evaluation: &Evaluation) -> Value {
    let sample = &evaluation.sample;
    let metrics: Vec<Value> = sample
        .metrics
        .iter()
        .map(|metric| json!({"name": metric.name, "value": metric.value, "labels": label_map(&metric.labels)}))
        .collect();
    let mut line = json!({
        "type": "evaluation",
        "time": time(sample.timestamp_ms),
        "timestamp_ms": sample.timestamp_ms,
        "target": sample.target,
        "labels": label_map(&sample.labels),
        "rule": &*evaluation.rule,
        "rule_version": evaluation.version,
        "health": match &sample.health { Health::Up => "up", Health::Down(_) => "down" },
        "metrics": metrics,
        "duration_us": evaluation.duration.as_micros() as u64,
    });
    if let Health::Down(reason) = &sample.health {
        line["reason"] = json!(reason);
    }
    match &evaluation.result {
        Ok(verdict) => {
            line["alerts"] = json!(verdict.alert_names());
            line["actions"] = json!(verdict.action_names());
        }
        Err(error) => {
            line["error"] = json!(error.to_string());
            line["error_kind"] = json!(error.kind());
        }
    }
    line
}

fn alert_text(event: &AlertEvent) -> String {
    let alert = &event.alert;
    let (status, after) = match event.status {
        Status::Firing => ("FIRING  ", String::new()),
        Status::Resolved => {
            let lasted = Duration::from_millis(event.at_ms.saturating_sub(alert.active_since_ms));
            (
                "RESOLVED",
                format!(" after {}", humantime::format_duration(lasted)),
            )
        }
    };
    // The name, labels and summary are the rule's: escaped, so the line
    // stays one line.
    let line = format!(
        "{} {status} {}{} {} on {} (rule {}){after}: {}",
        time(event.at_ms),
        alert.name,
        format_labels(alert.labels.iter().map(|(k, v)| (k, v))),
        alert.severity,
        event.target,
        event.rule,
        alert.summary
    );
    crate::text::one_line(&line).into_owned()
}

pub(crate) fn alert_json(event: &AlertEvent) -> Value {
    let alert = &event.alert;
    let pairs = |pairs: &[(String, String)]| -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    };
    json!({
        "type": "alert",
        "status": event.status,
        "time": time(event.at_ms),
        "at_ms": event.at_ms,
        "fingerprint": alert.fingerprint.to_string(),
        "rule": event.rule,
        "target": event.target,
        "name": alert.name,
        "severity": alert.severity,
        "summary": alert.summary,
        "labels": pairs(&alert.labels),
        "annotations": pairs(&alert.annotations),
        "active_since_ms": alert.active_since_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Tracker;
    use crate::runtime::{Alert, Severity};

    #[test]
    fn an_alert_line_stays_one_line_whatever_the_rule_wrote() {
        let forged = "\n1999-01-01T00:00:00Z FIRING  Fake on web-01\r\x1b[2K";
        let alert = Alert {
            name: "CpuUsageHigh".into(),
            severity: Severity::Warning,
            summary: format!("cpu is high{forged}"),
            labels: vec![Label {
                name: "core".into(),
                value: format!("0{forged}"),
            }],
            annotations: vec![],
            for_ms: 0,
            keep_firing_for_ms: 0,
        };
        let events = Tracker::default()
            .observe(&"r".into(), &"web-01".into(), &[alert], 1_000)
            .unwrap();
        let line = alert_text(&events[0]);
        assert!(!line.contains(['\n', '\r', '\x1b']), "{line:?}");
        assert!(
            line.ends_with(
                "cpu is high\\n1999-01-01T00:00:00Z FIRING  Fake on web-01\\r\\u{1b}[2K"
            ),
            "{line}"
        );
        assert!(line.contains(r#"core="0\n1999"#), "{line}");
        // JSON keeps the rule's text exactly.
        let json = alert_json(&events[0]);
        assert_eq!(json["summary"], format!("cpu is high{forged}"));
    }

    #[test]
    fn an_evaluation_line_stays_one_line_whatever_the_rule_or_target_wrote() {
        let forged = "\n1999-01-01T00:00:00Z eval     web-01/r up: -> no alerts\r";
        let sample =
            crate::sources::make_sample("web-01", &[], Err(format!("bad page{forged}")), 1_000);
        let evaluation = Evaluation {
            rule: "r".into(),
            version: 1,
            sample: Arc::new(sample),
            result: Err(crate::runtime::CallError::Trap(format!("panicked{forged}"))),
            duration: Duration::ZERO,
            health: crate::plugins::RuleHealth::Healthy,
            log: crate::runtime::RuleLog::new("r", 100),
        };
        let line = evaluation_text(&evaluation);
        assert!(!line.contains(['\n', '\r']), "{line:?}");
        assert!(line.contains("down: bad page\\n1999"), "{line}");
        assert!(line.contains("FAILED: trap: panicked\\n1999"), "{line}");
    }
}
