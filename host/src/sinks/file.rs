//! The `file` sink: one JSON line per alert event appended to a file, the
//! same object `--format json` prints (`"type": "alert"`), for log
//! shippers that tail files (Vector, Fluent Bit, Filebeat).
//!
//! The file is opened in append mode, so several writers and a rotation by
//! copy-and-truncate (logrotate's `copytruncate`) keep every line whole.
//! Each line is appended (one buffer, `write_all`) before the next event is
//! taken, on tokio's blocking pool (std's file, not tokio's: a slow disk
//! holds up this sink's task only, and the host builds tokio without its
//! `fs` feature).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::stdout::alert_json;
use super::{Sink, SinkError};
use crate::alerts::AlertEvent;

/// Appends a JSON line per alert event to a file.
pub struct FileSink {
    path: PathBuf,
    file: Arc<std::fs::File>,
}

impl FileSink {
    /// Opens `path` for appending, creating it if needed.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        let path = path.to_path_buf();
        let opened = path.clone();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(opened)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(FileSink {
            path,
            file: Arc::new(file),
        })
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
        let mut line = alert_json(event).to_string().into_bytes();
        line.push(b'\n');
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || (&*file).write_all(&line))
            .await
            .map_err(std::io::Error::other)
            .and_then(|written| written);
        written.map_err(|error| {
            SinkError(format!(
                "cannot append to `{}`: {error}",
                self.path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Fingerprint, Severity, State, Status, TrackedAlert};

    #[tokio::test]
    async fn each_event_is_one_json_line_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        std::fs::write(&path, "kept\n").unwrap();
        let mut sink = FileSink::open(&path).await.unwrap();
        for (status, at_ms) in [(Status::Firing, 1_000), (Status::Resolved, 2_000)] {
            let event = AlertEvent {
                status,
                rule: "r".into(),
                target: "t".into(),
                alert: TrackedAlert {
                    fingerprint: Fingerprint::of("r", "t", "A", &[]),
                    name: "A".into(),
                    severity: Severity::Info,
                    summary: "two\nlines".into(),
                    labels: vec![],
                    annotations: vec![],
                    for_ms: 0,
                    keep_firing_for_ms: 0,
                    state: State::Firing,
                    active_since_ms: 1_000,
                    last_seen_ms: at_ms,
                },
                at_ms,
            };
            sink.alert(&event).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "kept");
        let resolved: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(resolved["status"], "resolved");
        assert_eq!(resolved["summary"], "two\nlines");
        assert_eq!(resolved["at_ms"], 2_000);
    }
}
