//! Config reload: the config file is watched, and re-read on `SIGHUP`.
//!
//! A changed file is validated whole before anything is applied: a broken
//! edit is refused with file, line and reason, and the running config
//! stays. An event that leaves the text as it was is ignored; `SIGHUP`
//! always reloads (an operator asking for a reload gets one).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::Settings;
use crate::hash::sha256_hex as content_hash;
use crate::watch::{DebouncedWatch, folder_of};

/// Where the next config comes from: the file (watched) and `SIGHUP`.
pub struct ConfigWatch {
    path: Option<PathBuf>,
    watch: Option<DebouncedWatch>,
    hangups: tokio::signal::unix::Signal,
    /// Hash of the config text in force, to ignore events that change nothing.
    loaded: String,
}

impl ConfigWatch {
    /// Watches `path` (when vigil runs with a config file) and listens for
    /// `SIGHUP` (always: without a file it is logged and ignored).
    pub fn start(path: Option<&Path>, debounce: Duration) -> anyhow::Result<Self> {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let Some(path) = path else {
            return Ok(ConfigWatch {
                path: None,
                watch: None,
                hangups,
                loaded: String::new(),
            });
        };
        let mut watch = DebouncedWatch::new(debounce)?;
        watch
            .watch(&folder_of(path))
            .context("config changes cannot be followed")?;
        let loaded = std::fs::read(path)
            .map(|text| content_hash(&text))
            .unwrap_or_default();
        Ok(ConfigWatch {
            path: Some(path.to_path_buf()),
            watch: Some(watch),
            hangups,
            loaded,
        })
    }

    /// Waits for the next config to apply: the file changed (and its text
    /// did), or `SIGHUP`. A config that does not validate is logged and
    /// skipped; this keeps waiting.
    pub async fn next(&mut self) -> Settings {
        loop {
            let forced = tokio::select! {
                _ = async {
                    match &mut self.watch {
                        Some(watch) => watch.next().await,
                        None => std::future::pending().await,
                    }
                } => false,
                Some(()) = self.hangups.recv() => true,
            };
            if let Some(settings) = self.reload(forced) {
                return settings;
            }
        }
    }

    /// Reads and validates the config again. A broken one is refused with
    /// file, line and reason, and the running config stays.
    fn reload(&mut self, forced: bool) -> Option<Settings> {
        let Some(path) = &self.path else {
            tracing::info!("SIGHUP ignored: vigil runs without a config file.");
            return None;
        };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "Config reload refused: cannot read the file; the running config stays.");
                return None;
            }
        };
        let hash = content_hash(&text);
        if !forced && self.loaded == hash {
            return None;
        }
        self.loaded = hash;
        match Settings::load(path) {
            Ok(settings) => {
                tracing::info!(path = %path.display(), forced, "Config reloaded.");
                Some(settings)
            }
            Err(error) => {
                tracing::error!(%error, "Config reload refused; the running config stays.");
                None
            }
        }
    }
}
