//! `http-json`: the classic `GET /status` returning `{"cpu_usage": 91, ...}`.
//!
//! Nested objects flatten to dotted names (`{"disk": {"root": 70}}` is
//! `disk.root`), array items to their index (`cores.0`), booleans to 0 or 1;
//! strings and nulls are skipped. A body that is not a JSON object, larger
//! than the target's cap, or that takes longer than its timeout marks the
//! target down with a reason that says which.

use std::time::Duration;

use serde_json::Value;

use super::fetch::CappedGet;
use super::{PollError, Reading, Source};
use crate::runtime::Metric;

/// Most metrics taken from one body; past this the body is refused, since a
/// status endpoint with more fields is almost surely not one.
pub const MAX_METRICS: usize = 10_000;

/// Polls one URL.
pub struct HttpJsonSource {
    get: CappedGet,
}

impl HttpJsonSource {
    /// A source for `url` with a whole-request `timeout` and a body cap,
    /// polled through `client` (shared by every HTTP target).
    pub fn new(
        client: super::fetch::HttpClient,
        url: reqwest::Url,
        timeout: Duration,
        max_body_bytes: usize,
    ) -> Self {
        HttpJsonSource {
            get: CappedGet::new(client, url, timeout, max_body_bytes),
        }
    }
}

impl Source for HttpJsonSource {
    async fn poll(&mut self) -> Result<Reading, PollError> {
        let body = self.get.fetch().await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|error| PollError::malformed(format!("invalid JSON: {error}")))?;
        if !value.is_object() {
            return Err(PollError::malformed(format!(
                "expected a JSON object of metrics, got {}",
                kind(&value)
            )));
        }
        let metrics = flatten(&value);
        if metrics.len() > MAX_METRICS {
            return Err(PollError::new(
                super::Reason::TooLarge,
                format!(
                    "{} numeric fields; at most {MAX_METRICS} are taken",
                    metrics.len()
                ),
            ));
        }
        Ok(metrics.into())
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Flattens a JSON document into metrics with dotted names.
pub fn flatten(value: &Value) -> Vec<Metric> {
    let mut metrics = Vec::new();
    let mut name = String::new();
    walk(value, &mut name, &mut metrics);
    metrics
}

fn walk(value: &Value, name: &mut String, out: &mut Vec<Metric>) {
    let descend = |key: &str, child: &Value, name: &mut String, out: &mut Vec<Metric>| {
        let mark = name.len();
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(key);
        walk(child, name, out);
        name.truncate(mark);
    };
    match value {
        Value::Number(number) => {
            if let Some(value) = number.as_f64() {
                out.push(metric(name, value));
            }
        }
        Value::Bool(flag) => out.push(metric(name, if *flag { 1.0 } else { 0.0 })),
        Value::Object(fields) => {
            for (key, child) in fields {
                descend(key, child, name, out);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                descend(&index.to_string(), child, name, out);
            }
        }
        Value::String(_) | Value::Null => {}
    }
}

fn metric(name: &str, value: f64) -> Metric {
    Metric {
        name: name.to_string(),
        value,
        labels: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flat(value: Value) -> Vec<(String, f64)> {
        flatten(&value)
            .into_iter()
            .map(|m| (m.name, m.value))
            .collect()
    }

    #[test]
    fn the_classic_body() {
        assert_eq!(
            flat(json!({"cpu_usage": 91, "memory_usage": 42.5})),
            [
                ("cpu_usage".to_string(), 91.0),
                ("memory_usage".to_string(), 42.5)
            ]
        );
    }

    #[test]
    fn nested_fields_become_dotted_names() {
        let body = json!({
            "disk": {"root": {"used": 70}, "data": {"used": 10.5}},
            "queues": [{"depth": 3}, {"depth": 4}],
        });
        assert_eq!(
            flat(body),
            [
                ("disk.data.used".to_string(), 10.5),
                ("disk.root.used".to_string(), 70.0),
                ("queues.0.depth".to_string(), 3.0),
                ("queues.1.depth".to_string(), 4.0),
            ]
        );
    }

    #[test]
    fn booleans_count_and_strings_do_not() {
        let body = json!({"healthy": true, "degraded": false, "version": "1.2", "owner": null});
        assert_eq!(
            flat(body),
            [("degraded".to_string(), 0.0), ("healthy".to_string(), 1.0)]
        );
    }

    #[test]
    fn extreme_numbers_survive() {
        let body = json!({"big": u64::MAX, "small": -1e-300, "neg": i64::MIN});
        let values: Vec<f64> = flat(body).into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, [u64::MAX as f64, i64::MIN as f64, -1e-300]);
    }
}
