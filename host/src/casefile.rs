//! `vigil test`: replay samples through a rule and check the alerts and
//! actions at given steps, as `promtool test rules` does for Prometheus.
//!
//! ```toml
//! rule = "threshold.wasm"          # or: builtin = "threshold"; relative to this file
//! config = { thresholds = { cpu_usage = { above = 80, for = "2m" } } }
//! interval = "1m"                  # time between samples (default 1m)
//! target = "web-01"                # default "test"
//!
//! [series]                         # one value per step
//! cpu_usage = "50+10x5"            # a+bxN: a, a+b, ... (N+1 values): 50 60 70 80 90 100
//! memory_usage = "40x5"            # aXN: a, N+1 times
//! 'disk_used_percent{mount="/"}' = "90 _ 95"   # `_`: no value at that step
//!
//! [[expect]]
//! at = "5m"                        # or: step = 5
//! alerts = ["CpuUsageHigh"]        # firing then (names, or tables with name/labels/severity)
//! actions = []                     # requested at that step (names)
//! ```
//!
//! The alerts checked are the ones the host would have announced as firing
//! (after `for`), not what the verdict said: the test covers the lifecycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::alerts::{State, Tracker, format_labels};
use crate::config::{FailurePolicy, RuleSource, RuleSpec};
use crate::names::{RuleName, TargetName};
use crate::plugins;
use crate::runtime::{Label, Limits, Metric, Runtime, builtin};
use crate::sources::make_sample;
use crate::state::StateDb;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    rule: Option<PathBuf>,
    builtin: Option<String>,
    #[serde(default)]
    config: toml::Table,
    interval: Option<String>,
    target: Option<String>,
    series: BTreeMap<String, String>,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    at: Option<String>,
    step: Option<usize>,
    #[serde(default)]
    alerts: Vec<ExpectedAlert>,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum ExpectedAlert {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        severity: Option<String>,
    },
}

impl ExpectedAlert {
    fn name(&self) -> &str {
        match self {
            ExpectedAlert::Name(name) | ExpectedAlert::Full { name, .. } => name,
        }
    }

    fn matches(&self, got: &Got) -> bool {
        match self {
            ExpectedAlert::Name(name) => *name == got.name,
            ExpectedAlert::Full {
                name,
                labels,
                severity,
            } => {
                *name == got.name
                    && labels.as_ref().is_none_or(|labels| *labels == got.labels)
                    && severity
                        .as_ref()
                        .is_none_or(|severity| *severity == got.severity)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            ExpectedAlert::Name(name) => name.clone(),
            ExpectedAlert::Full {
                name,
                labels,
                severity,
            } => {
                let labels = labels.as_ref().map(format_labels).unwrap_or_default();
                let severity = severity
                    .as_ref()
                    .map(|s| format!(" [{s}]"))
                    .unwrap_or_default();
                format!("{name}{labels}{severity}")
            }
        }
    }
}

/// A firing alert as the test saw it.
struct Got {
    name: String,
    labels: BTreeMap<String, String>,
    severity: String,
}

impl Got {
    fn describe(&self) -> String {
        format!(
            "{}{} [{}]",
            self.name,
            format_labels(&self.labels),
            self.severity
        )
    }
}

/// Expands promtool-style series notation into one value (or none) per step.
pub fn expand_series(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut values = Vec::new();
    for token in text.split_whitespace() {
        if token == "_" {
            values.push(None);
            continue;
        }
        let (start, rest) = match token.split_once('x') {
            Some((head, times)) => (head, Some(times)),
            None => (token, None),
        };
        let bad = || format!("`{token}` is not a value, `_`, `AxN` or `A+BxN`/`A-BxN`");
        // `a+b` / `a-b` (a sign at position 0 belongs to `a`).
        let split = start[1..].find(['+', '-']).map(|i| i + 1);
        let (first, step) = match split {
            Some(i) => (&start[..i], start[i..].parse::<f64>().map_err(|_| bad())?),
            None => (start, 0.0),
        };
        let first: f64 = first.parse().map_err(|_| bad())?;
        let times: usize = match rest {
            Some(times) => times.parse().map_err(|_| bad())?,
            None if split.is_some() => return Err(bad()),
            None => 0,
        };
        for i in 0..=times {
            values.push(Some(first + step * i as f64));
        }
    }
    Ok(values)
}

/// Splits `name{label="value", ...}` into the name and its labels.
fn parse_series_name(text: &str) -> Result<(String, Vec<Label>), String> {
    let Some((name, rest)) = text.split_once('{') else {
        return Ok((text.to_string(), Vec::new()));
    };
    let body = rest
        .strip_suffix('}')
        .ok_or_else(|| format!("series `{text}`: missing `}}`"))?;
    let mut labels = Vec::new();
    for pair in body
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("series `{text}`: `{pair}` is not name=\"value\""))?;
        let value = value.trim().trim_matches('"');
        labels.push(Label {
            name: key.trim().to_string(),
            value: value.to_string(),
        });
    }
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((name.to_string(), labels))
}

/// Runs a case file; `Ok(true)` when every expectation held. Mismatches
/// are written to `out` as a readable diff. The rule is loaded through
/// `runtime`, so with a compile cache a rule seen before loads in milliseconds.
pub fn run(path: &Path, runtime: &Runtime, out: &mut impl std::io::Write) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let file: CaseFile =
        toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let source = match (file.rule, file.builtin) {
        (Some(rule), None) => RuleSource::File(base.join(rule)),
        (None, Some(name)) => RuleSource::Builtin(
            builtin::find(&name).with_context(|| format!("no builtin rule `{name}`"))?,
        ),
        _ => bail!(
            "{}: give `rule` (a .wasm file) or `builtin`, one of them",
            path.display()
        ),
    };
    let interval = match &file.interval {
        Some(text) => {
            humantime::parse_duration(text).with_context(|| format!("invalid interval `{text}`"))?
        }
        None => Duration::from_secs(60),
    };
    let interval_ms = u64::try_from(interval.as_millis())?;
    let target = file.target.unwrap_or_else(|| "test".into());
    let (rule_name, target_name) = (RuleName::from("rule"), TargetName::from(target.as_str()));

    let mut series = Vec::new();
    for (name, values) in &file.series {
        let (metric, labels) = parse_series_name(name).map_err(anyhow::Error::msg)?;
        let values =
            expand_series(values).map_err(|error| anyhow::anyhow!("series `{name}`: {error}"))?;
        series.push((metric, labels, values));
    }
    let steps = series
        .iter()
        .map(|(_, _, values)| values.len())
        .max()
        .unwrap_or(0);

    let mut expectations: BTreeMap<usize, Vec<Expect>> = BTreeMap::new();
    for expect in file.expect {
        let step = match (&expect.at, expect.step) {
            (Some(at), None) => {
                let at = humantime::parse_duration(at)
                    .with_context(|| format!("invalid `at` `{at}`"))?;
                usize::try_from(u64::try_from(at.as_millis())? / interval_ms.max(1))?
            }
            (None, Some(step)) => step,
            _ => bail!("each [[expect]] needs `at` (a time) or `step` (a number), one of them"),
        };
        if step >= steps {
            bail!("an [[expect]] is at step {step}, but the series have {steps} steps");
        }
        expectations.entry(step).or_default().push(expect);
    }

    let spec = RuleSpec {
        targets: Default::default(),
        name: "rule".into(),
        source,
        config_json: serde_json::to_string(&file.config)?,
        limits: Limits::default(),
        failure_policy: FailurePolicy::default(),
        origin: path.display().to_string(),
        trust: Default::default(),
        tenant: None,
    };
    let state = StateDb::in_memory()?;
    let mut rule = plugins::load(runtime, &state, &spec)?;
    let mut tracker = Tracker::default();
    let mut failures = 0;
    for step in 0..steps {
        let metrics: Vec<Metric> = series
            .iter()
            .filter_map(|(name, labels, values)| {
                values.get(step).copied().flatten().map(|value| Metric {
                    name: name.clone(),
                    value,
                    labels: labels.clone(),
                })
            })
            .collect();
        let at_ms = step as u64 * interval_ms;
        let sample = make_sample(&target, &[], Ok(metrics), at_ms);
        let verdict = rule
            .instance
            .evaluate(&sample)
            .with_context(|| format!("step {step}: the rule failed"))?;
        tracker
            .observe(&rule_name, &target_name, &verdict.alerts, at_ms)
            .with_context(|| format!("step {step}: the verdict was refused"))?;
        let Some(expects) = expectations.get(&step) else {
            continue;
        };
        let firing: Vec<Got> = tracker
            .firing()
            .filter(|alert| alert.state == State::Firing)
            .map(|alert| Got {
                name: alert.name.clone(),
                labels: alert.labels.iter().cloned().collect(),
                severity: alert.severity.to_string(),
            })
            .collect();
        let requested = verdict.action_names();
        for expect in expects {
            let mut lines = Vec::new();
            for wanted in &expect.alerts {
                if !firing.iter().any(|got| wanted.matches(got)) {
                    lines.push(format!(
                        "  - {}   (expected, not firing)",
                        wanted.describe()
                    ));
                }
            }
            for got in &firing {
                if !expect.alerts.iter().any(|wanted| wanted.matches(got)) {
                    lines.push(format!("  + {}   (firing, not expected)", got.describe()));
                }
            }
            let mut wanted_actions = expect.actions.clone();
            wanted_actions.sort();
            let mut got_actions: Vec<String> = requested.iter().map(|a| a.to_string()).collect();
            got_actions.sort();
            if wanted_actions != got_actions {
                lines.push(format!(
                    "  actions: expected {wanted_actions:?}, requested {got_actions:?}"
                ));
            }
            if !lines.is_empty() {
                failures += 1;
                let names: Vec<&str> = expect.alerts.iter().map(ExpectedAlert::name).collect();
                writeln!(
                    out,
                    "FAIL step {step} ({}), expected alerts {names:?}:\n{}",
                    humantime::format_duration(Duration::from_millis(at_ms)),
                    lines.join("\n")
                )?;
            }
        }
    }
    let checked: usize = expectations.values().map(Vec::len).sum();
    if failures == 0 {
        writeln!(
            out,
            "ok: {checked} expectations over {steps} samples of `{}`",
            path.display()
        )?;
    } else {
        writeln!(
            out,
            "{failures} of {checked} expectations failed in `{}`",
            path.display()
        )?;
    }
    Ok(failures == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_notation_expands_like_promtool() {
        let values = |text| expand_series(text).unwrap();
        assert_eq!(
            values("50+10x3"),
            [Some(50.0), Some(60.0), Some(70.0), Some(80.0)]
        );
        assert_eq!(
            values("1x2 _ -3"),
            [Some(1.0), Some(1.0), Some(1.0), None, Some(-3.0)]
        );
        assert_eq!(values("10-2x2"), [Some(10.0), Some(8.0), Some(6.0)]);
        assert_eq!(values("-1+1x1"), [Some(-1.0), Some(0.0)]);
        assert!(
            expand_series("ten")
                .unwrap_err()
                .contains("`ten` is not a value")
        );
        assert!(expand_series("1+2").is_err(), "a step needs a count");
    }

    #[test]
    fn series_names_carry_labels() {
        let (name, labels) =
            parse_series_name(r#"disk_used_percent{mount="/", dev="sda"}"#).unwrap();
        assert_eq!(name, "disk_used_percent");
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(pairs, [("dev", "sda"), ("mount", "/")]);
    }
}
