//! `vigil status`: the running host's targets, rules and alerts, asked of
//! its API; when no host runs on the data directory, the alerts saved when
//! it stopped, read from the database.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::Value;

use super::client::Client;
use crate::alerts::TrackedAlert;
use crate::state::DataDir;
use crate::text::one_line;

/// Prints the status of the host running on `data_dir`, as text or JSON.
pub fn run(data_dir: &DataDir, json: bool) -> anyhow::Result<()> {
    let Some(client) = Client::find(data_dir) else {
        return stopped(data_dir, json);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (targets, rules, alerts) = runtime.block_on(async {
        anyhow::Ok((
            client.get::<Value>("/api/v1/targets").await?,
            client.get::<Value>("/api/v1/rules").await?,
            client.get::<Value>("/api/v1/alerts").await?,
        ))
    })?;
    if json {
        let all = serde_json::json!({
            "running": true,
            "api": client.base(),
            "targets": targets["targets"],
            "rules": rules["rules"],
            "alerts": alerts["alerts"],
        });
        println!("{all}");
        return Ok(());
    }
    print!("{}", render(client.base(), &targets, &rules, &alerts));
    Ok(())
}

fn list(value: &Value, key: &str) -> Vec<Value> {
    value[key].as_array().cloned().unwrap_or_default()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => one_line(text).into_owned(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn time(ms: &Value) -> String {
    ms.as_u64().map_or("-".into(), |ms| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        humantime::format_rfc3339_seconds(at).to_string()
    })
}

/// The text report. Every string that came from a target or a rule is
/// escaped onto one line.
fn render(base: &str, targets: &Value, rules: &Value, alerts: &Value) -> String {
    let mut out = String::new();
    let (targets, rules, alerts) = (
        list(targets, "targets"),
        list(rules, "rules"),
        list(alerts, "alerts"),
    );
    let _ = writeln!(out, "vigil is running; API at {base}");
    let down = targets.iter().filter(|t| t["health"] == "down").count();
    let _ = writeln!(out, "\ntargets: {} ({down} down)", targets.len());
    for target in &targets {
        let took = target["last_duration_ms"]
            .as_f64()
            .map_or("-".into(), |ms| format!("{ms:.1}ms"));
        let _ = writeln!(
            out,
            "  {:<20} {:<10} {:<7} last poll {} ({took}){}",
            text(&target["name"]),
            text(&target["kind"]),
            text(&target["health"]),
            time(&target["last_poll_ms"]),
            match &target["message"] {
                Value::String(message) => format!(": {}", one_line(message)),
                _ => String::new(),
            }
        );
    }
    let _ = writeln!(out, "\nrules: {}", rules.len());
    for rule in &rules {
        let _ = writeln!(
            out,
            "  {:<20} v{:<3} {:<11} {} evaluations{}",
            text(&rule["name"]),
            text(&rule["version"]),
            text(&rule["health"]),
            text(&rule["counters"]["evaluations"]),
            match &rule["last_reload_error"] {
                Value::String(error) => format!("; last reload refused: {}", one_line(error)),
                _ => String::new(),
            }
        );
    }
    let firing = alerts.iter().filter(|a| a["state"] == "firing").count();
    let _ = writeln!(
        out,
        "\nalerts: {firing} firing, {} pending",
        alerts.len() - firing
    );
    for alert in &alerts {
        let _ = writeln!(
            out,
            "  {:<8} {} on {} by {}: {} (since {})",
            text(&alert["state"]),
            text(&alert["name"]),
            text(&alert["target"]),
            text(&alert["rule"]),
            text(&alert["summary"]),
            time(&alert["active_since_ms"]),
        );
    }
    out
}

/// No host runs: say so and list what the database kept.
fn stopped(data_dir: &DataDir, json: bool) -> anyhow::Result<()> {
    let state = data_dir.open_existing_state()?;
    let mut saved: Vec<(String, String, TrackedAlert)> = state
        .saved_alerts()?
        .into_iter()
        .filter_map(|(rule, target, _, bytes)| {
            let alert = serde_json::from_slice::<TrackedAlert>(&bytes).ok()?;
            Some((rule, target, alert))
        })
        .collect();
    saved.sort_by(|a, b| (&a.0, &a.1, &a.2.name).cmp(&(&b.0, &b.1, &b.2.name)));
    if json {
        let alerts: Vec<Value> = saved
            .iter()
            .map(|(rule, target, alert)| {
                serde_json::json!({
                    "rule": rule, "target": target, "name": alert.name,
                    "state": alert.state, "summary": alert.summary,
                    "active_since_ms": alert.active_since_ms,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "running": false, "saved_alerts": alerts })
        );
    } else {
        println!(
            "vigil is not running on {} (no API answers there).",
            data_dir.path().display()
        );
        println!("alerts saved when it stopped: {}", saved.len());
        for (rule, target, alert) in &saved {
            let state = serde_json::to_value(alert.state).unwrap_or_default();
            println!(
                "  {:<8} {} on {} by {}: {}",
                text(&state),
                one_line(&alert.name),
                one_line(target),
                one_line(rule),
                one_line(&alert.summary)
            );
        }
    }
    anyhow::bail!("vigil is not running")
}
