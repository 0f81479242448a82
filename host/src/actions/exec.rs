//! Executors: what turns an approved [`Run`] into an [`Outcome`].
//!
//! [`RealExecutor`] runs commands and sends HTTP requests;
//! [`DryRunExecutor`] only says what would have run. Both sit behind the
//! [`Executor`] trait so the pipeline (and its tests) can swap them.
//!
//! Guarantees of the real executor (commands run through
//! [`crate::process`], which `command` checks share):
//! - **No shell, no interpretation.** A command is started from its argv
//!   with `tokio::process::Command`; each element (the gate filled the
//!   placeholders in) reaches the program as exactly one argument. `;`,
//!   `$(...)`, backticks, newlines and `--flags` are plain bytes.
//! - **Bounded time.** At its timeout the process is killed with SIGKILL,
//!   together with everything it started in its process group, and reaped
//!   before the outcome (`timed-out`) is returned. A future dropped mid-run
//!   kills the group too.
//! - **Bounded output.** At most [`MAX_OUTPUT_BYTES`] each of stdout and
//!   stderr are kept; the rest is read and discarded so the child never
//!   blocks on a full pipe. Once the process has exited, output still held
//!   open by a process it left behind is waited for [`OUTPUT_GRACE`] at most.
//! - **No stdin**; the environment and working directory are the host's
//!   (actions are the operator's own commands).
//! - HTTP requests follow no redirect and are bounded by the timeout, body
//!   included; a non-2xx status is a failure.
//!
//! It refuses nothing itself: deciding is the gate's job.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::gate::{HttpCall, Invocation, Reason, Run, Status};
use crate::clock::now_ms;
use crate::http::read_body_capped;
use crate::process::{self, Bounds, End, Environment, Overflow, Stream};
use crate::runtime::{ActionOutcome, Label};

/// Most bytes of stdout, and of stderr, (or of an HTTP response body) kept.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

pub use crate::process::OUTPUT_GRACE;

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// What it left behind: the part the audit log keeps.
    pub report: RunReport,
}

/// What a request left behind, whatever its status. An [`Outcome`] carries
/// one; an audit record keeps it as its `outcome` beside the record's own
/// status (which can also be `started` or `interrupted`, where no executor
/// said how it ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// One line for a human: the exit status, the HTTP status, the refusal.
    pub detail: String,
    /// The process's exit code; `None` for HTTP, a signal, or no process.
    pub exit_code: Option<i32>,
    /// Captured stdout, then stderr after a `--- stderr ---` line (each at
    /// most [`MAX_OUTPUT_BYTES`], lossily decoded), or the response body.
    pub output_excerpt: String,
    /// When it started, in ms since the Unix epoch.
    pub started_ms: u64,
    /// When it ended.
    pub finished_ms: u64,
}

impl RunReport {
    /// A report of `detail` alone: nothing ran, nothing was printed.
    pub fn note(detail: String, started_ms: u64, finished_ms: u64) -> Self {
        RunReport {
            detail,
            exit_code: None,
            output_excerpt: String::new(),
            started_ms,
            finished_ms,
        }
    }
}

impl Outcome {
    /// The outcome of a refused request.
    pub fn refused(reason: &Reason, now_ms: u64) -> Self {
        Outcome {
            status: Status::Refused,
            report: RunReport::note(reason.to_string(), now_ms, now_ms),
        }
    }

    /// The feedback a rule gets in its next samples of the target.
    pub fn to_action_outcome(&self, action: &str, params: Vec<Label>) -> ActionOutcome {
        ActionOutcome {
            action: action.to_string(),
            params,
            status: self.status.into(),
            detail: self.report.detail.clone(),
            timestamp_ms: self.report.finished_ms,
        }
    }
}

/// Runs an approved request.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Executes `run` within `run.timeout`; never fails, the outcome says
    /// what happened.
    async fn execute(&self, run: &Run) -> Outcome;
}

/// Records what would run, runs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct DryRunExecutor;

#[async_trait::async_trait]
impl Executor for DryRunExecutor {
    async fn execute(&self, run: &Run) -> Outcome {
        let now = now_ms();
        Outcome {
            status: Status::DryRun,
            report: RunReport::note(format!("dry-run: would run {}", run.invocation), now, now),
        }
    }
}

/// Runs commands and sends HTTP requests for real.
#[derive(Debug, Clone)]
pub struct RealExecutor {
    http: reqwest::Client,
}

impl RealExecutor {
    /// An executor with its own HTTP client (no redirects).
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(RealExecutor { http })
    }
}

#[async_trait::async_trait]
impl Executor for RealExecutor {
    async fn execute(&self, run: &Run) -> Outcome {
        match &run.invocation {
            Invocation::Command { argv } => run_command(argv, run.timeout, |_| {}).await,
            Invocation::Http(call) => run_http(&self.http, call, run.timeout).await,
        }
    }
}

/// Runs `argv` directly (no shell) for at most `timeout` (see
/// [`crate::process`]). `spawned` gets the child's pid (tests use it to
/// check the process is gone).
pub(crate) async fn run_command(
    argv: &[String],
    timeout: Duration,
    spawned: impl FnOnce(u32),
) -> Outcome {
    let started_ms = now_ms();
    let bounds = Bounds {
        timeout,
        max_output_bytes: MAX_OUTPUT_BYTES,
        overflow: Overflow::Drain,
        environment: Environment::Inherit,
    };
    let program = argv.first().map_or("", String::as_str);
    let (status, detail, exit_code, output) = match process::run(argv, &bounds, spawned).await {
        Err(reason) => (Status::Failed, reason, None, String::new()),
        Ok(finished) => {
            let (status, detail, exit_code) = match finished.end {
                End::Exited(0) => (
                    Status::Succeeded,
                    "exited with status 0".to_string(),
                    Some(0),
                ),
                End::Exited(code) => (
                    Status::Failed,
                    format!("exited with status {code}"),
                    Some(code),
                ),
                End::Signaled(signal) => {
                    (Status::Failed, format!("killed by signal {signal}"), None)
                }
                End::WaitFailed(error) => (
                    Status::Failed,
                    format!("waiting for `{program}` failed: {error}"),
                    None,
                ),
                End::TimedOut => {
                    let timeout = humantime::format_duration(timeout);
                    (
                        Status::TimedOut,
                        format!("did not finish within {timeout}; killed"),
                        None,
                    )
                }
                // Drained, never killed for it.
                End::Overflowed(stream) => (
                    Status::Failed,
                    format!("printed too much on {stream}"),
                    None,
                ),
            };
            let mut output = finished.stdout.excerpt(Stream::Stdout);
            let stderr = finished.stderr.excerpt(Stream::Stderr);
            if !stderr.is_empty() {
                if !output.is_empty() && !output.ends_with('\n') {
                    output.push('\n');
                }
                output.push_str("--- stderr ---\n");
                output.push_str(&stderr);
            }
            (status, detail, exit_code, output)
        }
    };
    Outcome {
        status,
        report: RunReport {
            detail,
            exit_code,
            output_excerpt: output,
            started_ms,
            finished_ms: now_ms(),
        },
    }
}

/// Sends one request; the timeout covers connecting, sending and reading
/// the (capped) body.
async fn run_http(client: &reqwest::Client, call: &HttpCall, timeout: Duration) -> Outcome {
    let started_ms = now_ms();
    let mut request = client
        .request(call.method.clone(), call.url.clone())
        .headers(call.headers.clone())
        .timeout(timeout);
    if let Some(body) = &call.body {
        request = request.body(body.clone());
    }
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status();
        // The start is the excerpt; the rest is not read.
        let body = read_body_capped(&mut response, MAX_OUTPUT_BYTES).await?;
        Ok::<_, reqwest::Error>((status, body.bytes))
    };
    let (status, detail, output) = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((code, body))) => {
            let status = if code.is_success() {
                Status::Succeeded
            } else {
                Status::Failed
            };
            let text = String::from_utf8_lossy(&body).into_owned();
            (status, format!("HTTP {code}"), text)
        }
        Ok(Err(error)) if !error.is_timeout() => (
            Status::Failed,
            format!(
                "{} {} failed: {}",
                call.method,
                call.url,
                error_chain(&error)
            ),
            String::new(),
        ),
        Ok(Err(_)) | Err(_) => (
            Status::TimedOut,
            format!(
                "no complete answer within {}",
                humantime::format_duration(timeout)
            ),
            String::new(),
        ),
    };
    Outcome {
        status,
        report: RunReport {
            detail,
            exit_code: None,
            output_excerpt: output,
            started_ms,
            finished_ms: now_ms(),
        },
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::actions::config::{Mode, parse_actions};
    use crate::actions::gate::{Decision, Gate};
    use crate::runtime::ActionRequest;

    /// The recorder: `printf '%s\0' ARG...` prints every argument it got,
    /// each followed by a NUL (which no param can hold), interpreting none.
    const PRINTF: &str = "/usr/bin/printf";

    fn argv_of(output: &str) -> Vec<&str> {
        let mut args: Vec<&str> = output.split('\0').collect();
        assert_eq!(args.pop(), Some(""), "every argument ends with a NUL");
        args
    }

    /// A run approved by a real gate for `value` as the param `p`.
    fn approved(command: &str, value: &str) -> Run {
        let text = format!(
            "[record]\ncommand = {command}\nparams = {{ p = {{ pattern = '(?s).*' }} }}\nallowed_rules = [\"r\"]\nmode = \"enforce\"\n"
        );
        approve(&text, Mode::DryRun, "record", value)
    }

    /// Parses `actions`, and asks its gate to run `action` with `value` as
    /// the param `p`; panics on a refusal.
    fn approve(actions: &str, mode: Mode, action: &str, value: &str) -> Run {
        let mut gate = Gate::new(parse_actions(&actions.parse().unwrap(), mode).unwrap());
        let request = ActionRequest {
            action: action.into(),
            params: vec![Label {
                name: "p".into(),
                value: value.into(),
            }],
            reason: String::new(),
        };
        match gate.check("r", "t", &request, 0) {
            Decision::Run(run) => run,
            Decision::Refuse(reason) => panic!("{reason}"),
        }
    }

    #[tokio::test]
    async fn hostile_params_arrive_as_exactly_one_literal_argument() {
        let executor = RealExecutor::new().unwrap();
        let hostile = [
            "; rm -rf /",
            "$(id)",
            "`id`",
            "a\nb\n",
            "--flag",
            "--format=%n",
            "-",
            "",
            "  spaced  out ",
            "'\"\\",
            "%s%s%s",
            "{p}",
            "é ✓",
        ];
        for value in hostile {
            let run = approved(
                &format!(r#"["{PRINTF}", '%s\0', "{{p}}", "--name={{p}}", "x{{p}}y{{p}}"]"#),
                value,
            );
            let outcome = executor.execute(&run).await;
            assert_eq!(outcome.status, Status::Succeeded, "{value:?}: {outcome:?}");
            assert_eq!(outcome.report.exit_code, Some(0));
            assert_eq!(
                argv_of(&outcome.report.output_excerpt),
                [
                    value,
                    &format!("--name={value}"),
                    &format!("x{value}y{value}")
                ],
                "{value:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_and_reaped() {
        let started = Instant::now();
        let mut pid = None;
        let argv = ["/bin/sleep".to_string(), "30".to_string()];
        let outcome = run_command(&argv, Duration::from_millis(200), |p| pid = Some(p)).await;
        assert_eq!(outcome.status, Status::TimedOut, "{outcome:?}");
        assert_eq!(outcome.report.detail, "did not finish within 200ms; killed");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Reaped: not even a zombie is left.
        let pid = pid.expect("spawned");
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_command_started_too() {
        // A grandchild holding stdout open must not keep the executor
        // waiting, nor survive the timeout. (A shell here is the command
        // under test, not a way of passing params.)
        let marker = "31.4159";
        let argv = [
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("/bin/sleep {marker} & /bin/sleep {marker}"),
        ];
        let started = Instant::now();
        let outcome = run_command(&argv, Duration::from_millis(200), |_| {}).await;
        assert_eq!(outcome.status, Status::TimedOut);
        // Well before the grandchild's 31 s sleep would end: it did not hold
        // the executor up.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        // SIGKILL takes effect asynchronously: wait for the group to be
        // gone (a killed zombie has no cmdline), however busy the machine.
        let survivors = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
                .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
                .filter(|cmdline| cmdline.contains(marker))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !survivors().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(survivors().is_empty(), "{:?}", survivors());
    }

    #[tokio::test]
    async fn output_is_capped_and_the_rest_drained() {
        let argv = [
            "/usr/bin/head".to_string(),
            "-c".to_string(),
            "1000000".to_string(),
            "/dev/zero".to_string(),
        ];
        let outcome = run_command(&argv, Duration::from_secs(5), |_| {}).await;
        assert_eq!(outcome.status, Status::Succeeded, "{outcome:?}");
        let (kept, note) = outcome.report.output_excerpt.split_at(MAX_OUTPUT_BYTES);
        assert!(kept.bytes().all(|b| b == 0));
        assert_eq!(
            note,
            format!(
                "\n[{} more bytes of stdout not kept]",
                1_000_000 - MAX_OUTPUT_BYTES
            )
        );
    }

    #[tokio::test]
    async fn exit_status_stderr_and_spawn_failures_are_reported() {
        let argv = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let outcome = run_command(
            &argv(&["/bin/ls", "/nonexistent-vigil"]),
            Duration::from_secs(5),
            |_| {},
        )
        .await;
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(outcome.report.exit_code, Some(2));
        assert_eq!(outcome.report.detail, "exited with status 2");
        assert!(
            outcome
                .report
                .output_excerpt
                .starts_with("--- stderr ---\n")
                && outcome.report.output_excerpt.contains("nonexistent-vigil"),
            "{}",
            outcome.report.output_excerpt
        );

        let outcome = run_command(
            &argv(&["/nonexistent/program"]),
            Duration::from_secs(5),
            |_| {},
        )
        .await;
        assert_eq!(outcome.status, Status::Failed);
        assert!(
            outcome
                .report
                .detail
                .starts_with("cannot start `/nonexistent/program`: "),
            "{}",
            outcome.report.detail
        );
    }

    #[tokio::test]
    async fn dry_run_runs_nothing_and_says_what_it_would_run() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("touched");
        let run = approved(r#"["/usr/bin/touch", "{p}"]"#, file.to_str().unwrap());
        let outcome = DryRunExecutor.execute(&run).await;
        assert_eq!(outcome.status, Status::DryRun);
        assert_eq!(
            outcome.report.detail,
            format!(
                "dry-run: would run [\"/usr/bin/touch\", {:?}]",
                file.to_str().unwrap()
            )
        );
        assert!(!file.exists());
    }

    /// A one-request HTTP server: answers `response` (or nothing) and sends
    /// back what it received.
    async fn serve_once(
        response: Option<&'static str>,
    ) -> (u16, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut chunk = [0; 4096];
            // Headers, then the body (its length is small and known here).
            loop {
                let n = socket.read(&mut chunk).await.unwrap();
                received.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&received);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length: "))
                        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                    if received.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&received).into_owned());
            match response {
                Some(response) => socket.write_all(response.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        });
        (port, rx)
    }

    fn http_run(port: u16, value: &str) -> Run {
        let text = format!(
            "[hook]\nhttp = {{ method = \"POST\", url = \"http://127.0.0.1:{port}/restart/{{p}}\", headers = {{ x-vigil = \"1\" }}, body = '{{\"p\": \"{{p}}\"}}' }}\nparams = {{ p = {{ pattern = '(?s).*' }} }}\nallowed_rules = [\"r\"]\ntimeout = \"300ms\"\n"
        );
        approve(&text, Mode::Enforce, "hook", value)
    }

    #[tokio::test]
    async fn http_actions_send_the_request_and_report_the_status() {
        let executor = RealExecutor::new().unwrap();
        let (port, received) =
            serve_once(Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
        let outcome = executor.execute(&http_run(port, "web 1/..")).await;
        assert_eq!(outcome.status, Status::Succeeded, "{outcome:?}");
        assert_eq!(
            (
                outcome.report.detail.as_str(),
                outcome.report.output_excerpt.as_str()
            ),
            ("HTTP 200 OK", "ok")
        );
        let received = received.await.unwrap();
        assert!(
            received.starts_with("POST /restart/web%201%2F.. HTTP/1.1\r\n"),
            "{received}"
        );
        assert!(received.contains("x-vigil: 1\r\n"), "{received}");
        assert!(
            received.ends_with("\r\n\r\n{\"p\": \"web 1/..\"}"),
            "{received}"
        );

        let (port, _) = serve_once(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
        ))
        .await;
        let outcome = executor.execute(&http_run(port, "x")).await;
        assert_eq!(outcome.status, Status::Failed);
        assert_eq!(outcome.report.detail, "HTTP 503 Service Unavailable");
    }

    #[tokio::test]
    async fn an_http_action_that_gets_no_answer_times_out() {
        let executor = RealExecutor::new().unwrap();
        let (port, _) = serve_once(None).await;
        let started = Instant::now();
        let outcome = executor.execute(&http_run(port, "x")).await;
        assert_eq!(outcome.status, Status::TimedOut, "{outcome:?}");
        assert_eq!(outcome.report.detail, "no complete answer within 300ms");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
