//! `{{name}}`: a Vigil rule that raises `<Metric>High` while a metric is
//! above a limit, e.g. `CpuUsageHigh` while `cpu_usage` is above 80.
//!
//! Config (JSON, from the `config` of the rule's `[[rules]]` table in the
//! host config; both keys optional): `{"metric": "cpu_usage", "above": 80}`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Deserialize;

/// Rust types and functions for the contract in `wit/vigil.wit`: the `Guest`
/// trait this rule implements, the records it receives and returns, and the
/// `host` functions it may call.
mod bindings {
    // Generated code, not ours to lint (e.g. clippy's too_many_arguments).
    #![allow(clippy::all)]
    wit_bindgen::generate!({ path: "wit", world: "rule" });
}

use bindings::vigil::rules::host::{self, Level};
use bindings::vigil::rules::types::{ActionOutcome, Alert, Health, Label, Series, Severity};
use bindings::{Guest, RuleInfo, Verdict};

/// What to watch, from the JSON config.
#[derive(Deserialize)]
// A misspelt key is an error the operator sees, not a silently ignored limit.
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The metric's name as the host reports it, e.g. `memory_usage`.
    metric: String,
    /// Alert while the value is above this.
    above: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            metric: "cpu_usage".into(),
            above: 80.0,
        }
    }
}

// The exports are plain functions, so the config lives in a global. The host
// calls `configure` once per instance, before any sample.
static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

// The host tells the rule a target's series (metric names and labels) once,
// in `define_target`, and each `evaluate` carries only the values, in that
// order: much cheaper than the whole sample on every call. This is what the
// rule keeps of each target, by the id the host gave it.
static SERIES: Mutex<BTreeMap<u32, Vec<Series>>> = Mutex::new(BTreeMap::new());

struct Rule;

impl Guest for Rule {
    fn configure(config: String) -> Result<RuleInfo, String> {
        // An error refuses the rule and is shown to the operator as is.
        let config: Config =
            serde_json::from_str(&config).map_err(|error| format!("invalid config: {error}"))?;
        host::log(
            Level::Info,
            &format!("watching {} above {}", config.metric, config.above),
        );
        let info = RuleInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: format!("alerts while {} is above {}", config.metric, config.above),
            // The host sends only these metrics: smaller samples, cheaper calls.
            metrics: vec![config.metric.clone()],
        };
        *CONFIG.lock().unwrap() = Some(config);
        Ok(info)
    }

    fn define_target(target: u32, _name: String, _labels: Vec<Label>, series: Vec<Series>) {
        // Sent before a target's first sample and again whenever its series
        // change; this rule needs neither the target's name nor its labels.
        SERIES.lock().unwrap().insert(target, series);
    }

    fn forget_target(target: u32) {
        SERIES.lock().unwrap().remove(&target);
    }

    fn evaluate(
        target: u32,
        _timestamp_ms: u64,
        _health: Health,
        values: Vec<f64>,
        _recent_actions: Vec<ActionOutcome>,
    ) -> Verdict {
        let config = CONFIG.lock().unwrap();
        let config = config.as_ref().expect("the host calls `configure` first");
        let series = SERIES.lock().unwrap();
        let series = series.get(&target).map_or(&[][..], Vec::as_slice);
        // Level-triggered: return every alert that holds now, every time; the
        // host works out when it starts firing and when it resolves. A failed
        // poll (`health` is `down`) has no values, so raises nothing.
        let alerts = series
            .iter()
            .zip(values)
            .filter(|(metric, value)| metric.name == config.metric && *value > config.above)
            .map(|(metric, value)| Alert {
                name: alert_name(&metric.name),
                severity: Severity::Warning,
                summary: format!("{} is {value:.1}, above {}", metric.name, config.above),
                // One metric can come several times with different labels (a
                // disk per mount); labels keep their alerts apart.
                labels: metric.labels.clone(),
                annotations: Vec::new(),
                // Fire on the first sample above the limit, resolve on the first below.
                for_ms: 0,
                keep_firing_for_ms: 0,
            })
            .collect();
        Verdict {
            alerts,
            actions: Vec::new(),
        }
    }
}

/// `cpu_usage` -> `CpuUsageHigh`, `disk.used` -> `DiskUsedHigh`.
fn alert_name(metric: &str) -> String {
    let mut name = String::new();
    for word in metric.split(['_', '.']) {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name + "High"
}

bindings::export!(Rule with_types_in bindings);
