//! `command`: runs a check program on every poll, following the Nagios
//! plugin convention, so the monitoring-plugins (`check_load`,
//! `check_disk`, `check_http`, ...) and any script written for Nagios,
//! Icinga or Sensu work unchanged.
//!
//! | the check | becomes |
//! |---|---|
//! | exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN | metric `check_status` (0..3) |
//! | first line of stdout, up to `\|` | sample label `check_output` (at most [`MAX_STATUS_TEXT`] bytes) |
//! | perfdata `'label'=value[UOM];warn;crit;min;max` | metric `label` with the label `unit` when there is one; `label_warn`, `label_crit`, `label_min`, `label_max` when given |
//!
//! Labels and units ride as metric labels, as the `prometheus` source does
//! with a series' labels: `load1=0.72;5;10;0;` is the metric `load1` (no
//! unit) plus `load1_warn` 5, `load1_crit` 10 and `load1_min` 0;
//! `/=22405971968B` of `check_disk` is the metric `/` with `unit=B`.
//!
//! Down, with the reason, instead of a status: an exit status outside
//! 0..3, death by a signal, the timeout (the check's whole process group
//! is killed), more than `max_output_bytes` on stdout or stderr (killed at
//! once), output that is not the plugin format (see [`super::perfdata`]),
//! or a program that cannot start. The program runs from its argv, never
//! through a shell, with no stdin and an environment of only a minimal
//! `PATH` and `LANG=C` ([`crate::process`]).

use std::time::Duration;

use super::perfdata::{self, PerfValue};
use super::{PollError, Reading, Reason, Source, describe};
use crate::config::CHECK_OUTPUT_LABEL;
use crate::process::{self, Bounds, Captured, End, Environment, Overflow};
use crate::runtime::{Label, Metric};

/// Most bytes of the status text passed on as the `check_output` label.
pub const MAX_STATUS_TEXT: usize = 1024;

/// Runs one check program.
pub struct CommandSource {
    argv: Vec<String>,
    bounds: Bounds,
}

impl CommandSource {
    /// A source running `argv` for at most `timeout`, refusing more than
    /// `max_output_bytes` on stdout or stderr.
    pub fn new(argv: Vec<String>, timeout: Duration, max_output_bytes: usize) -> Self {
        CommandSource {
            argv,
            bounds: Bounds {
                timeout,
                max_output_bytes,
                overflow: Overflow::Kill,
                environment: Environment::Minimal,
            },
        }
    }

    fn down(&self, end: End, finished: &process::Finished) -> String {
        match end {
            End::Exited(code) => {
                let mut reason = format!(
                    "exited with status {code}; a check exits 0 (OK), 1 (WARNING), 2 (CRITICAL) or 3 (UNKNOWN)"
                );
                if (129..=192).contains(&code) {
                    reason.push_str(&format!(
                        "; {code} is 128+{}, as a shell reports death by signal {}",
                        code - 128,
                        code - 128
                    ));
                }
                reason + &said(finished)
            }
            End::Signaled(signal) => format!("killed by signal {signal}{}", said(finished)),
            End::TimedOut => format!(
                "did not finish within {} (timeout); killed with its process group",
                describe(self.bounds.timeout)
            ),
            End::Overflowed(stream) => format!(
                "printed more than {} bytes on {stream} (max_output_bytes); killed",
                self.bounds.max_output_bytes
            ),
            End::WaitFailed(error) => format!("waiting for the check failed: {error}"),
        }
    }
}

/// `: <first line>` of what the check printed, to say what it said before
/// it failed; stdout first, else stderr.
fn said(finished: &process::Finished) -> String {
    let first = |captured: &Captured| {
        String::from_utf8_lossy(&captured.kept)
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(|line| crate::text::prefix(line, 200).to_string())
    };
    match first(&finished.stdout).or_else(|| first(&finished.stderr)) {
        Some(line) => format!(": {line}"),
        None => String::new(),
    }
}

impl Source for CommandSource {
    async fn poll(&mut self) -> Result<Reading, PollError> {
        let finished = process::run(&self.argv, &self.bounds, |_| {}).await?;
        let status = match finished.end {
            End::Exited(code @ 0..=3) => code,
            ref end => {
                return Err(PollError::new(
                    Reason::Check,
                    self.down(end.clone(), &finished),
                ));
            }
        };
        let stdout = String::from_utf8_lossy(&finished.stdout.kept);
        let output = perfdata::parse_output(&stdout).map_err(PollError::malformed)?;
        Ok(Reading {
            metrics: metrics(status, &output.perfdata),
            labels: vec![Label {
                name: CHECK_OUTPUT_LABEL.into(),
                value: crate::text::prefix(output.text, MAX_STATUS_TEXT).to_string(),
            }],
        })
    }
}

/// `check_status`, then each perfdata value and its thresholds.
pub fn metrics(status: i32, perfdata: &[PerfValue]) -> Vec<Metric> {
    let mut metrics = vec![Metric {
        name: "check_status".into(),
        value: f64::from(status),
        labels: Vec::new(),
    }];
    for item in perfdata {
        let labels = if item.unit.is_empty() {
            Vec::new()
        } else {
            vec![Label {
                name: "unit".into(),
                value: item.unit.clone(),
            }]
        };
        let mut push = |suffix: &str, value: Option<f64>| {
            if let Some(value) = value {
                metrics.push(Metric {
                    name: format!("{}{suffix}", item.label),
                    value,
                    labels: labels.clone(),
                });
            }
        };
        push("", Some(item.value));
        push("_warn", item.warn);
        push("_crit", item.crit);
        push("_min", item.min);
        push("_max", item.max);
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check script, run by `/bin/sh` rather than executed itself: a
    /// file just written can be "busy" (ETXTBSY) for `exec` while another
    /// test's fork still holds the writing descriptor.
    fn script(body: &str) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("check");
        std::fs::write(&path, format!("{body}\n")).unwrap();
        (dir, vec!["/bin/sh".into(), path.display().to_string()])
    }

    async fn poll(body: &str) -> Result<Reading, String> {
        let (_dir, argv) = script(body);
        CommandSource::new(argv, Duration::from_secs(20), 1000)
            .poll()
            .await
            .map_err(|error| error.message)
    }

    fn names(reading: &Reading) -> Vec<String> {
        reading
            .metrics
            .iter()
            .map(|m| {
                let unit: Vec<String> = m.labels.iter().map(|l| l.value.clone()).collect();
                format!("{}[{}]={}", m.name, unit.join(","), m.value)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_warning_with_perfdata() {
        let reading = poll("echo 'DISK WARNING - 91% | /=91%;80;90;0;100 time=5ms'; exit 1")
            .await
            .unwrap();
        assert_eq!(
            names(&reading),
            [
                "check_status[]=1",
                "/[%]=91",
                "/_warn[%]=80",
                "/_crit[%]=90",
                "/_min[%]=0",
                "/_max[%]=100",
                "time[ms]=5",
            ]
        );
        assert_eq!(reading.labels[0].name, "check_output");
        assert_eq!(reading.labels[0].value, "DISK WARNING - 91%");
    }

    #[tokio::test]
    async fn every_failure_says_which() {
        let reason = |body| async move { poll(body).await.unwrap_err() };
        assert_eq!(
            reason("echo 'oops'; exit 4").await,
            "exited with status 4; a check exits 0 (OK), 1 (WARNING), 2 (CRITICAL) or 3 (UNKNOWN): oops"
        );
        assert_eq!(
            reason("exit 137").await,
            "exited with status 137; a check exits 0 (OK), 1 (WARNING), 2 (CRITICAL) or 3 (UNKNOWN); 137 is 128+9, as a shell reports death by signal 9"
        );
        assert_eq!(
            reason("echo bye >&2; kill -9 $$").await,
            "killed by signal 9: bye"
        );
        assert_eq!(
            reason("head -c 5000 /dev/zero; exit 0").await,
            "printed more than 1000 bytes on stdout (max_output_bytes); killed"
        );
        assert_eq!(
            reason("echo 'OK | load=0,5'").await,
            "performance data `load=0,5`: invalid unit `,5`"
        );
    }
}
