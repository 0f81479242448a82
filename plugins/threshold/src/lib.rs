//! `threshold`, Vigil's default rule: the classic "alert when a value passes
//! 80", generalised to any metric, plus an alert when a target is down.
//!
//! Configuration (JSON from the host config; every key optional):
//!
//! ```toml
//! [rules.config.thresholds]
//! cpu_usage = 80                                   # above 80 -> warning
//! memory_usage = { above = 90, severity = "critical", for = "2m" }
//! disk_used_percent = { above = 90, alert = "DiskFilling" }
//! "queues.mail.depth" = { below = 1, keep_firing_for = "5m" }
//!
//! [rules.config.target_down]                       # or `target_down = false`
//! severity = "critical"
//! for = "30s"
//! ```
//!
//! Without `thresholds` the rule watches `cpu_usage` and `memory_usage` above
//! 80 and `disk_used_percent` above 90. Given `thresholds` replaces that list.
//! A metric reported several times with different labels (one disk per mount)
//! gets one alert per label set. Alerts are named after the metric:
//! `cpu_usage` above its threshold is `CpuUsageHigh`, below is `CpuUsageLow`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use vigil_sdk::{Alert, Rule, RuleInfo, Sample, Severity, Verdict, parse_duration};

/// The configured rule: a list of checks and the target-down policy.
#[derive(Debug)]
pub struct Threshold {
    checks: Vec<Check>,
    target_down: Option<AlertPolicy>,
}

#[derive(Debug)]
struct Check {
    metric: String,
    bound: Bound,
    alert: String,
    policy: AlertPolicy,
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Above(f64),
    Below(f64),
}

#[derive(Debug, Clone, Copy)]
struct AlertPolicy {
    severity: Severity,
    for_ms: u64,
    keep_firing_for_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    thresholds: Option<BTreeMap<String, Value>>,
    target_down: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdSpec {
    above: Option<f64>,
    below: Option<f64>,
    alert: Option<String>,
    severity: Option<String>,
    #[serde(rename = "for")]
    for_duration: Option<String>,
    keep_firing_for: Option<String>,
}

/// `severity`, `for` and `keep_firing_for`, as given for `target_down`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    severity: Option<String>,
    #[serde(rename = "for")]
    for_duration: Option<String>,
    keep_firing_for: Option<String>,
}

const DEFAULT_THRESHOLDS: [(&str, f64); 3] = [
    ("cpu_usage", 80.0),
    ("memory_usage", 80.0),
    ("disk_used_percent", 90.0),
];

impl Rule for Threshold {
    fn configure(config: &str) -> Result<Self, String> {
        let file: ConfigFile = serde_json::from_str(config)
            .map_err(|error| format!("invalid threshold config: {error}"))?;
        let checks = match file.thresholds {
            None => DEFAULT_THRESHOLDS
                .iter()
                .map(|&(metric, above)| Check::new(metric, Bound::Above(above), None, warning()))
                .collect(),
            Some(specs) => {
                let mut checks = Vec::new();
                for (metric, spec) in specs {
                    checks.extend(
                        parse_threshold(&metric, spec)
                            .map_err(|error| format!("threshold `{metric}`: {error}"))?,
                    );
                }
                checks
            }
        };
        let target_down = match file.target_down {
            None | Some(Value::Bool(true)) => Some(AlertPolicy {
                severity: Severity::Critical,
                ..warning()
            }),
            Some(Value::Bool(false)) => None,
            Some(spec) => {
                let spec: PolicySpec = serde_json::from_value(spec)
                    .map_err(|error| format!("target_down: {error}"))?;
                Some(
                    spec.resolve(Severity::Critical)
                        .map_err(|e| format!("target_down: {e}"))?,
                )
            }
        };
        Ok(Threshold {
            checks,
            target_down,
        })
    }

    fn info(&self) -> RuleInfo {
        let description = if self.checks.is_empty() {
            "target down".to_string()
        } else {
            let metrics: Vec<&str> = self.checks.iter().map(|c| c.metric.as_str()).collect();
            format!("thresholds on {}", metrics.join(", "))
        };
        let mut info = RuleInfo::new("threshold", env!("CARGO_PKG_VERSION"), &description);
        for check in &self.checks {
            if !info.metrics.contains(&check.metric) {
                info = info.subscribe(check.metric.clone());
            }
        }
        if info.metrics.is_empty() {
            // Only target-down: no metric is needed. A name no source emits
            // keeps the subscription from meaning "everything".
            info = info.subscribe("vigil.none");
        }
        info
    }

    fn evaluate(&mut self, sample: &Sample) -> Verdict {
        let mut verdict = Verdict::default();
        if let Some(reason) = sample.down_reason() {
            if let Some(policy) = self.target_down {
                let summary = format!("target `{}` is down: {reason}", sample.target());
                verdict.push(policy.apply(Alert::new("TargetDown", policy.severity, summary)));
            }
            return verdict;
        }
        for check in &self.checks {
            for metric in sample.metrics_named(&check.metric) {
                let (breached, relation, limit) = match check.bound {
                    Bound::Above(limit) => (metric.value > limit, "above", limit),
                    Bound::Below(limit) => (metric.value < limit, "below", limit),
                };
                if !breached {
                    continue;
                }
                let summary = format!(
                    "{} is {:.1}, {relation} {limit}{}",
                    check.metric,
                    metric.value,
                    describe_labels(metric.labels)
                );
                let mut alert = Alert::new(check.alert.clone(), check.policy.severity, summary)
                    .label("metric", check.metric.clone());
                alert.labels.extend(metric.labels.iter().cloned());
                verdict.push(check.policy.apply(alert));
            }
        }
        verdict
    }
}

vigil_sdk::export_rule!(Threshold);

impl Check {
    fn new(metric: &str, bound: Bound, alert: Option<String>, policy: AlertPolicy) -> Self {
        let suffix = match bound {
            Bound::Above(_) => "High",
            Bound::Below(_) => "Low",
        };
        Check {
            metric: metric.to_string(),
            bound,
            alert: alert.unwrap_or_else(|| alert_name(metric, suffix)),
            policy,
        }
    }
}

impl AlertPolicy {
    fn apply(&self, mut alert: Alert) -> Alert {
        alert.for_ms = self.for_ms;
        alert.keep_firing_for_ms = self.keep_firing_for_ms;
        alert
    }
}

impl PolicySpec {
    fn resolve(self, default_severity: Severity) -> Result<AlertPolicy, String> {
        let ms = |text: &Option<String>| -> Result<u64, String> {
            match text {
                None => Ok(0),
                Some(text) => {
                    Ok(u64::try_from(parse_duration(text)?.as_millis()).unwrap_or(u64::MAX))
                }
            }
        };
        Ok(AlertPolicy {
            severity: match &self.severity {
                None => default_severity,
                Some(text) => Severity::parse(text)?,
            },
            for_ms: ms(&self.for_duration)?,
            keep_firing_for_ms: ms(&self.keep_firing_for)?,
        })
    }
}

fn warning() -> AlertPolicy {
    AlertPolicy {
        severity: Severity::Warning,
        for_ms: 0,
        keep_firing_for_ms: 0,
    }
}

fn parse_threshold(metric: &str, spec: Value) -> Result<Vec<Check>, String> {
    if let Some(above) = spec.as_f64() {
        return Ok(vec![Check::new(
            metric,
            Bound::Above(above),
            None,
            warning(),
        )]);
    }
    if !spec.is_object() {
        return Err(format!(
            "expected a number (the upper limit) or a table with `above` and/or `below`, got `{spec}`"
        ));
    }
    let spec: ThresholdSpec = serde_json::from_value(spec).map_err(|error| error.to_string())?;
    let policy = PolicySpec {
        severity: spec.severity,
        for_duration: spec.for_duration,
        keep_firing_for: spec.keep_firing_for,
    }
    .resolve(Severity::Warning)?;
    let bounds: Vec<Bound> = [spec.above.map(Bound::Above), spec.below.map(Bound::Below)]
        .into_iter()
        .flatten()
        .collect();
    if bounds.is_empty() {
        return Err("give `above`, `below` or both".to_string());
    }
    if bounds.len() > 1 && spec.alert.is_some() {
        return Err("`alert` names one alert; with both `above` and `below`, leave it out".into());
    }
    Ok(bounds
        .into_iter()
        .map(|bound| Check::new(metric, bound, spec.alert.clone(), policy))
        .collect())
}

/// `cpu_usage` + `High` -> `CpuUsageHigh`; `queues.mail.depth` -> `QueuesMailDepth...`.
fn alert_name(metric: &str, suffix: &str) -> String {
    let mut name = String::with_capacity(metric.len() + suffix.len());
    for word in metric.split(|c: char| !c.is_ascii_alphanumeric()) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.push(first.to_ascii_uppercase());
            name.extend(chars);
        }
    }
    name.push_str(suffix);
    name
}

fn describe_labels(labels: &[vigil_sdk::Label]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|label| format!("{}={}", label.name, label.value))
        .collect();
    format!(" ({})", pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(config: &str) -> Threshold {
        Threshold::configure(config).unwrap()
    }

    fn names(verdict: &Verdict) -> Vec<&str> {
        verdict.alerts.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn defaults_are_the_classic_monitor() {
        let mut rule = rule("{}");
        let calm = Sample::up("web", [("cpu_usage", 80.0), ("memory_usage", 42.0)]);
        assert!(rule.evaluate(&calm).alerts.is_empty(), "80 is not above 80");
        let hot = Sample::up("web", [("cpu_usage", 91.0), ("memory_usage", 95.5)]);
        let verdict = rule.evaluate(&hot);
        assert_eq!(names(&verdict), ["CpuUsageHigh", "MemoryUsageHigh"]);
        assert_eq!(verdict.alerts[1].summary, "memory_usage is 95.5, above 80");
        assert_eq!(verdict.alerts[0].severity, Severity::Warning);
    }

    #[test]
    fn target_down_alerts_with_the_reason() {
        let mut rule = rule("{}");
        let verdict = rule.evaluate(&Sample::down("web", "connection refused"));
        assert_eq!(names(&verdict), ["TargetDown"]);
        assert_eq!(verdict.alerts[0].severity, Severity::Critical);
        assert_eq!(
            verdict.alerts[0].summary,
            "target `web` is down: connection refused"
        );
        let mut quiet = Threshold::configure(r#"{"target_down": false}"#).unwrap();
        assert!(quiet.evaluate(&Sample::down("web", "x")).alerts.is_empty());
    }

    #[test]
    fn full_specs_set_severity_for_and_name() {
        let mut rule = rule(
            r#"{"thresholds": {"memory_usage": {"above": 90, "severity": "critical",
                "for": "2m", "alert": "MemoryFull"}, "free": {"below": 5}}}"#,
        );
        let verdict = rule.evaluate(&Sample::up("db", [("memory_usage", 95.0), ("free", 1.0)]));
        assert_eq!(names(&verdict), ["FreeLow", "MemoryFull"]);
        let memory = &verdict.alerts[1];
        assert_eq!(memory.severity, Severity::Critical);
        assert_eq!(memory.for_ms, 120_000);
        assert_eq!(rule.info().metrics, ["free", "memory_usage"]);
    }

    #[test]
    fn one_alert_per_label_set() {
        let mut rule = rule("{}");
        let mut sample = Sample::up("host", []);
        for (mount, used) in [("/", 95.0), ("/var", 50.0), ("/data", 99.0)] {
            sample = sample.with_metric("disk_used_percent", used, [("mount", mount)]);
        }
        let verdict = rule.evaluate(&sample);
        let mounts: Vec<&str> = verdict
            .alerts
            .iter()
            .map(|alert| {
                alert
                    .labels
                    .iter()
                    .find(|l| l.name == "mount")
                    .unwrap()
                    .value
                    .as_str()
            })
            .collect();
        assert_eq!(mounts, ["/", "/data"]);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let error = |config: &str| Threshold::configure(config).unwrap_err();
        assert!(
            error(r#"{"thresholds": {"cpu_usage": "high"}}"#).contains("threshold `cpu_usage`")
        );
        assert!(
            error(r#"{"thresholds": {"cpu_usage": {"severity": "warning"}}}"#)
                .contains("give `above`, `below` or both")
        );
        assert!(
            error(r#"{"thresholds": {"cpu_usage": {"above": 1, "severity": "loud"}}}"#)
                .contains("unknown severity `loud`")
        );
        assert!(
            error(r#"{"thresholds": {"cpu_usage": {"above": 1, "for": "soon"}}}"#)
                .contains("invalid duration `soon`")
        );
        assert!(error(r#"{"treshold": {}}"#).contains("unknown field `treshold`"));
    }

    #[test]
    fn alert_names_are_camel_case() {
        assert_eq!(alert_name("cpu_usage", "High"), "CpuUsageHigh");
        assert_eq!(alert_name("queues.mail.depth", "Low"), "QueuesMailDepthLow");
    }
}
