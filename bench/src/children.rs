//! The processes under test: started with their output in a log file,
//! measured from `/proc`, killed by PID when dropped (also on an error or
//! an interrupt, so a run never leaves a server behind).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

use crate::proc;

/// Processes, each with the log its output goes to.
#[derive(Default)]
pub struct Children(Vec<(Child, PathBuf)>);

impl Children {
    /// Starts `command` with stdout and stderr in `log`.
    pub fn spawn(&mut self, command: &mut Command, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start `{}`", command.get_program().display()))?;
        self.0.push((child, log.to_path_buf()));
        Ok(())
    }

    /// Takes a child started elsewhere (e.g. with its stdout piped), to be
    /// measured and killed with the others; `log` names it in errors.
    pub fn adopt(&mut self, child: Child, log: PathBuf) {
        self.0.push((child, log));
    }

    /// An error with the end of its log if one has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (child, log) in &mut self.0 {
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                bail!(
                    "`{}` (pid {}) exited with {status}; its log ends:\n{}",
                    log.display(),
                    child.id(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// CPU seconds (user + system) of each, in the order started.
    pub fn cpu_seconds_each(&self) -> anyhow::Result<Vec<f64>> {
        self.0
            .iter()
            .map(|(child, _)| proc::cpu_seconds(child.id()))
            .collect()
    }

    /// CPU seconds (user + system) of all of them.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(self.cpu_seconds_each()?.iter().sum())
    }

    /// Peak RSS of each, in the order started.
    pub fn peak_rss_bytes_each(&self) -> anyhow::Result<Vec<u64>> {
        self.0
            .iter()
            .map(|(child, _)| proc::peak_rss_bytes(child.id()))
            .collect()
    }

    /// Peak RSS of all of them, summed.
    pub fn peak_rss_bytes(&self) -> anyhow::Result<u64> {
        Ok(self.peak_rss_bytes_each()?.iter().sum())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
