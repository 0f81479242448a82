//! `/metrics` as Prometheus sees it: the page passes `promtool check
//! metrics` (Prometheus's own parser and its naming lints), carries the
//! series an operator looks for with sane values, and a real Prometheus
//! (Debian's `prometheus`, `.ci/run` installs it) scrapes it: `up == 1` for
//! the Vigil job and a Vigil series queried back through its HTTP API.

mod common;
mod live;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use live::Host;
use serde_json::Value;

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// The value of the series `name` whose labels include every one of
/// `labels`, from a page that promtool already accepted.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let metrics = vigil::sources::exposition::parse(page, 100_000).expect("the page parses");
    metrics
        .iter()
        .find(|metric| {
            metric.name == name
                && labels.iter().all(|(key, value)| {
                    metric
                        .labels
                        .iter()
                        .any(|label| label.name == *key && label.value == *value)
                })
        })
        .map(|metric| metric.value)
}

#[test]
fn metrics_pass_promtool_and_carry_the_series_an_operator_looks_for() {
    let promtool = common::require(PROMTOOL, "prometheus");
    let host = Host::start();
    let answer = host.get("/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        answer.content_type
    );
    let page = answer.body;

    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // promtool exits 0 with no output for a page it neither fails to parse
    // nor has a lint about.
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics refused /metrics ({}):\n{said}\n--- the page ---\n{page}",
        checked.status
    );

    let at_least = |name: &str, labels: &[(&str, &str)], floor: f64| {
        let found = value(&page, name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} on /metrics:\n{page}"));
        assert!(
            found >= floor,
            "{name}{labels:?} is {found}, expected at least {floor}"
        );
        found
    };
    assert_eq!(
        at_least(
            "vigil_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0
        ),
        1.0
    );
    at_least("vigil_target_polls_total", &[("target", "web-01")], 1.0);
    assert_eq!(
        at_least("vigil_target_up", &[("target", "web-01")], 1.0),
        1.0
    );
    at_least(
        "vigil_rule_evaluations_total",
        &[("rule", "threshold")],
        1.0,
    );
    at_least(
        "vigil_rule_evaluation_duration_seconds_count",
        &[("rule", "threshold")],
        1.0,
    );
    // Queue wait plus call: as many observations as calls, with the same
    // labels.
    at_least(
        "vigil_rule_evaluation_latency_seconds_count",
        &[("rule", "threshold")],
        1.0,
    );
    at_least(
        "vigil_poll_duration_seconds_count",
        &[("kind", "http-json")],
        1.0,
    );
    assert_eq!(
        at_least("vigil_rule_version", &[("rule", "threshold")], 1.0),
        1.0
    );
    // Started at 95 over a threshold of 80: CpuUsageHigh fired.
    at_least("vigil_alerts", &[("state", "firing")], 1.0);
    at_least("vigil_alert_events_total", &[("status", "firing")], 1.0);
    at_least(
        "vigil_actions_total",
        &[("action", "record"), ("outcome", "dry-run")],
        1.0,
    );
    assert_eq!(
        at_least(
            "vigil_rule_failures_total",
            &[("rule", "threshold"), ("kind", "trap")],
            0.0
        ),
        0.0,
        "the threshold rule trapped"
    );
}

/// A Prometheus on a free loopback port with its own storage, stopped by
/// its pid on drop (also when the test panics).
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (`HOST:PORT`) as job `vigil` every second.
    fn start(target: &str) -> Self {
        let program = common::require(PROMETHEUS, "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = common::free_port();
        let child = Command::new(program)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// An instant query's result vector, or `None` while Prometheus is not
    /// answering yet.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", promql)
            .finish();
        let url = format!("http://127.0.0.1:{}/api/v1/query?{query}", self.port);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = runtime.block_on(async {
            let response = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .ok()?;
            response.text().await.ok()
        })?;
        let value: Value = serde_json::from_str(&body).ok()?;
        assert_eq!(value["status"], "success", "{promql}: {body}");
        value["data"]["result"].as_array().cloned()
    }

    /// Queries until the result has a series whose value passes `ok`, for
    /// at most 60 s; panics with the last result and Prometheus's log.
    fn wait_for(&self, promql: &str, ok: impl Fn(f64) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            if let Some(result) = self.query(promql) {
                let passes = result.iter().any(|series| {
                    series["value"][1]
                        .as_str()
                        .and_then(|text| text.parse::<f64>().ok())
                        .is_some_and(&ok)
                });
                if passes {
                    return result;
                }
                last = Some(result);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self._dir.path().join("prometheus.log"))
                    .unwrap_or_default();
                panic!(
                    "Prometheus never answered `{promql}` as expected within 60s; last result: {last:?}\n--- prometheus log (tail) ---\n{}",
                    log.lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_vigil() {
    let host = Host::start();
    let target = host.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target);

    let up = prometheus.wait_for(r#"up{job="vigil"}"#, |value| value == 1.0);
    assert_eq!(up.len(), 1, "one Vigil target: {up:?}");
    assert_eq!(up[0]["metric"]["instance"], target.as_str());

    let evaluations = prometheus.wait_for(
        r#"vigil_rule_evaluations_total{rule="threshold"}"#,
        |value| value > 0.0,
    );
    assert_eq!(evaluations[0]["metric"]["job"], "vigil");
    prometheus.wait_for(r#"vigil_target_up{target="web-01"}"#, |value| value == 1.0);
}
