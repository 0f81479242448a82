//! What remediation commands and `command` checks share: running a program
//! from its argv with bounded time and bounded output.
//!
//! - **No shell, no interpretation.** The program is started from its argv
//!   with `tokio::process::Command`; each element reaches it as exactly one
//!   argument.
//! - **Bounded time.** The program runs in a process group of its own. At
//!   the timeout the whole group is killed with SIGKILL (what it started
//!   too) and the program is reaped before [`run`] returns. A future
//!   dropped mid-run kills the group too. What a program leaves running
//!   after it exited on its own is not hunted down.
//! - **Bounded output.** At most `max_output_bytes` each of stdout and
//!   stderr are kept, read in chunks of at most 16 KiB, never buffered past
//!   the cap. Past it, [`Overflow`] says what happens: the rest is read and
//!   discarded (an action's output is only an excerpt), or the group is
//!   killed at once (a check that floods is broken). Once the program has
//!   exited, output still held open by a process it left behind is waited
//!   for [`OUTPUT_GRACE`] at most.
//! - **No stdin.** The environment is the host's, or cleared but for a
//!   minimal `PATH` and `LANG=C` ([`Environment`]).

use std::fmt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

/// How long output is still read after the process has exited (or was
/// killed), when something it started keeps the pipe open.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// `PATH` of a program run with [`Environment::Minimal`].
pub const MINIMAL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The limits of one run.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// The whole group is killed after this.
    pub timeout: Duration,
    /// Most bytes kept of stdout, and of stderr.
    pub max_output_bytes: usize,
    /// What output past the cap does.
    pub overflow: Overflow,
    /// What environment the program gets.
    pub environment: Environment,
}

/// What happens when a program prints more than the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Keep the start, read and discard the rest so the program never
    /// blocks on a full pipe.
    Drain,
    /// Kill the group: the run ends as [`End::Overflowed`].
    Kill,
}

/// The environment a program starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// The host's own (remediation: the operator's commands).
    Inherit,
    /// Nothing but `PATH` ([`MINIMAL_PATH`]) and `LANG=C`, so a check
    /// prints `0.72`, not a localized `0,72`, and sees no secret of the
    /// host's.
    Minimal,
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// It exited with this status.
    Exited(i32),
    /// A signal (not ours) ended it.
    Signaled(i32),
    /// It ran past the timeout; the group was killed.
    TimedOut,
    /// It printed more than the cap on this stream ([`Overflow::Kill`]);
    /// the group was killed.
    Overflowed(Stream),
    /// Waiting for it failed (the group was killed).
    WaitFailed(String),
}

/// How a run ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub end: End,
    /// What it printed on stdout (the start of it).
    pub stdout: Captured,
    /// What it printed on stderr (the start of it).
    pub stderr: Captured,
}

/// The start of one output stream.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// At most the cap.
    pub kept: Vec<u8>,
    /// Bytes read past the cap and discarded.
    pub dropped: u64,
    /// Whether more came than the cap.
    pub overflowed: bool,
    /// Whether the stream was read to its end.
    pub complete: bool,
}

impl Captured {
    /// The kept text (lossily decoded) with a note of what was not kept.
    pub fn excerpt(&self, stream: Stream) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!(
                "\n[{} more bytes of {stream} not kept]",
                self.dropped
            ));
        }
        if !self.complete {
            text.push_str(&format!(
                "\n[{stream} still open after the process ended; stopped reading]"
            ));
        }
        text
    }
}

/// Runs `argv` (no shell) within `bounds`. `spawned` gets the program's pid
/// (tests use it to check the group is gone). `Err` says why it could not
/// start.
pub async fn run(
    argv: &[String],
    bounds: &Bounds,
    spawned: impl FnOnce(u32),
) -> Result<Finished, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty argv".into());
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group, so a timeout kills what it started too.
        .process_group(0);
    if bounds.environment == Environment::Minimal {
        command
            .env_clear()
            .env("PATH", MINIMAL_PATH)
            .env("LANG", "C");
    }
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot start `{program}`: {error}"))?;
    let pid = child.id();
    if let Some(pid) = pid {
        spawned(pid);
    }
    // Dropped mid-run (a poller stopped, the host shutting down), the
    // future kills the whole group, not just the program.
    let mut guard = GroupGuard(group_of(pid));
    let overflowed = Arc::new(Notify::new());
    let (max, overflow) = (bounds.max_output_bytes, bounds.overflow);
    let stdout = Capture::start(child.stdout.take(), max, overflow, overflowed.clone());
    let stderr = Capture::start(child.stderr.take(), max, overflow, overflowed.clone());

    let kill_on_overflow = bounds.overflow == Overflow::Kill;
    let waited = tokio::time::timeout(bounds.timeout, async {
        tokio::select! {
            exit = child.wait() => Some(exit),
            () = overflowed.notified(), if kill_on_overflow => None,
        }
    })
    .await;
    let mut end = match waited {
        Ok(Some(Ok(exit))) => match exit.code() {
            Some(code) => End::Exited(code),
            None => {
                use std::os::unix::process::ExitStatusExt;
                End::Signaled(exit.signal().unwrap_or(0))
            }
        },
        Ok(Some(Err(error))) => {
            kill(&mut child, pid).await;
            End::WaitFailed(error.to_string())
        }
        // Overflowed: which stream is known once both captures are in.
        Ok(None) => {
            kill(&mut child, pid).await;
            End::Overflowed(Stream::Stdout)
        }
        Err(_) => {
            kill(&mut child, pid).await;
            End::TimedOut
        }
    };
    guard.0 = None;
    let stdout = stdout.finish().await;
    let stderr = stderr.finish().await;
    // A flood counts even when the program exited before the wait saw it.
    if kill_on_overflow && end != End::TimedOut {
        if stdout.overflowed {
            end = End::Overflowed(Stream::Stdout);
        } else if stderr.overflowed {
            end = End::Overflowed(Stream::Stderr);
        }
    }
    Ok(Finished {
        end,
        stdout,
        stderr,
    })
}

/// The process group a program started with `process_group(0)` leads.
/// Never 0 or 1: `kill(-1)` would signal every process we may signal.
fn group_of(pid: Option<u32>) -> Option<Pid> {
    pid.and_then(|pid| i32::try_from(pid).ok())
        .filter(|&pid| pid > 1)
        .and_then(Pid::from_raw)
}

/// Kills the group when dropped while armed.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
}

/// SIGKILL to the child's process group, then to the child itself, and
/// wait for it so no zombie is left.
async fn kill(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(group) = group_of(pid) {
        // The group may be gone already; the child itself is killed below.
        let _ = kill_process_group(group, Signal::KILL);
    }
    // Sends SIGKILL if it is still there, then reaps it.
    let _ = child.kill().await;
}

/// Reads a pipe in the background, keeping the first bytes up to the cap.
struct Capture {
    buffer: Arc<Mutex<Captured>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Capture {
    fn start(
        pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
        max: usize,
        overflow: Overflow,
        overflowed: Arc<Notify>,
    ) -> Self {
        let buffer = Arc::new(Mutex::new(Captured::default()));
        let task = pipe
            .map(|pipe| tokio::spawn(read_capped(pipe, buffer.clone(), max, overflow, overflowed)));
        Capture { buffer, task }
    }

    /// Waits for the end of the output ([`OUTPUT_GRACE`] at most).
    async fn finish(self) -> Captured {
        let mut complete = true;
        if let Some(mut task) = self.task
            && tokio::time::timeout(OUTPUT_GRACE, &mut task).await.is_err()
        {
            task.abort();
            complete = false;
        }
        let mut captured = self.buffer.lock().expect("capture lock").clone();
        captured.complete = complete;
        captured
    }
}

async fn read_capped(
    mut pipe: impl AsyncRead + Unpin,
    buffer: Arc<Mutex<Captured>>,
    max: usize,
    overflow: Overflow,
    overflowed: Arc<Notify>,
) {
    let mut chunk = vec![0; 16 * 1024];
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let mut captured = buffer.lock().expect("capture lock");
        let room = max - captured.kept.len();
        let kept = read.min(room);
        captured.kept.extend_from_slice(&chunk[..kept]);
        if read > kept {
            captured.dropped += (read - kept) as u64;
            captured.overflowed = true;
            if overflow == Overflow::Kill {
                // Stop reading: the group is about to be killed.
                overflowed.notify_one();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        ["/bin/sh", "-c", script].map(String::from).to_vec()
    }

    fn bounds(max_output_bytes: usize, overflow: Overflow) -> Bounds {
        Bounds {
            timeout: Duration::from_secs(30),
            max_output_bytes,
            overflow,
            environment: Environment::Minimal,
        }
    }

    #[tokio::test]
    async fn a_flood_kills_the_group_when_asked() {
        // `yes` never stops on its own: only the cap ends it.
        let argv = ["/usr/bin/yes".to_string()];
        let finished = run(&argv, &bounds(1000, Overflow::Kill), |_| {})
            .await
            .unwrap();
        assert_eq!(finished.end, End::Overflowed(Stream::Stdout));
        assert_eq!(finished.stdout.kept.len(), 1000);
        let finished = run(
            &sh("echo hi; /usr/bin/yes >&2"),
            &bounds(1000, Overflow::Kill),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(finished.end, End::Overflowed(Stream::Stderr));
        assert_eq!(finished.stdout.kept, b"hi\n");
    }

    #[tokio::test]
    async fn a_flood_is_drained_when_asked() {
        let argv = sh("/usr/bin/head -c 100000 /dev/zero");
        let finished = run(&argv, &bounds(1000, Overflow::Drain), |_| {})
            .await
            .unwrap();
        assert_eq!(finished.end, End::Exited(0));
        assert_eq!(
            (finished.stdout.kept.len(), finished.stdout.dropped),
            (1000, 99_000)
        );
    }

    #[tokio::test]
    async fn the_minimal_environment_is_path_and_lang_only() {
        let finished = run(
            &["/usr/bin/env".to_string()],
            &bounds(1000, Overflow::Kill),
            |_| {},
        )
        .await
        .unwrap();
        let mut lines: Vec<&str> = std::str::from_utf8(&finished.stdout.kept)
            .unwrap()
            .lines()
            .collect();
        lines.sort();
        assert_eq!(lines, ["LANG=C", &format!("PATH={MINIMAL_PATH}")]);
    }

    #[tokio::test]
    async fn exit_statuses_and_signals_are_told_apart() {
        let b = bounds(1000, Overflow::Kill);
        let end = |script: &'static str| {
            let b = b.clone();
            async move { run(&sh(script), &b, |_| {}).await.unwrap().end }
        };
        assert_eq!(end("exit 137").await, End::Exited(137));
        assert_eq!(end("kill -9 $$").await, End::Signaled(9));
        let missing = run(&["/nonexistent/check".to_string()], &b, |_| {}).await;
        assert_eq!(
            missing.unwrap_err(),
            "cannot start `/nonexistent/check`: No such file or directory (os error 2)"
        );
    }
}
