//! Config reload: the config file and the tenants' files are watched, and
//! re-read on `SIGHUP` or `POST /api/v1/reload`.
//!
//! A changed file is validated whole before anything is applied: a broken
//! edit is refused with file, line and reason, and the running config
//! stays. An event that leaves the text as it was is ignored; `SIGHUP` and
//! the API always reload (an operator asking for a reload gets one), and
//! the API's caller is told whether the config was taken or why not.
//!
//! A tenant's file is judged on its own: a broken one is refused (and
//! logged) while the rest of the config, other tenants included, is
//! applied, and the tenant keeps the file in force before
//! ([`Settings::reload`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use super::Settings;
use crate::hash::sha256_hex as content_hash;
use crate::watch::{DebouncedWatch, folder_of};

/// A reload someone asked for: the answer is `Ok` once the new config is
/// taken, or the reason it was refused.
pub struct ReloadRequest(pub oneshot::Sender<Result<(), String>>);

/// Where the next config comes from: the file (watched), `SIGHUP` and
/// reload requests.
pub struct ConfigWatch {
    path: Option<PathBuf>,
    watch: Option<DebouncedWatch>,
    hangups: tokio::signal::unix::Signal,
    requests: mpsc::Receiver<ReloadRequest>,
    /// Hash of the config text and the tenants' files read last, to ignore
    /// events that change nothing.
    loaded: String,
    /// The settings in force: what a refused tenant file falls back to.
    current: Settings,
}

impl ConfigWatch {
    /// Watches `path` (when vigil runs with a config file) and listens for
    /// `SIGHUP` and `requests` (always: without a file they are refused).
    /// `current` is the settings the host started with.
    pub fn start(
        path: Option<&Path>,
        debounce: Duration,
        requests: mpsc::Receiver<ReloadRequest>,
        current: Settings,
    ) -> anyhow::Result<Self> {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let Some(path) = path else {
            return Ok(ConfigWatch {
                path: None,
                watch: None,
                hangups,
                requests,
                loaded: String::new(),
                current,
            });
        };
        let mut watch = DebouncedWatch::new(debounce)?;
        watch
            .watch(&folder_of(path))
            .context("config changes cannot be followed")?;
        let mut config = ConfigWatch {
            path: Some(path.to_path_buf()),
            watch: Some(watch),
            hangups,
            requests,
            loaded: String::new(),
            current,
        };
        config.watch_tenants();
        config.loaded = config.fingerprint(path);
        Ok(config)
    }

    /// Watches the folder of every tenant's file (once each; watching a
    /// folder again is a no-op). A folder that cannot be watched is logged:
    /// that tenant's edits then take a `SIGHUP` or a reload request.
    fn watch_tenants(&mut self) {
        let Some(watch) = &mut self.watch else {
            return;
        };
        for tenant in &self.current.tenants {
            let folder = folder_of(&tenant.file);
            if let Err(error) = watch.watch(&folder) {
                tracing::warn!(tenant = %tenant.name, folder = %folder.display(), %error, "Cannot watch the tenant's folder; its changes take effect on SIGHUP or POST /api/v1/reload.");
            }
        }
    }

    /// A hash of the config text and every tenant file's (a missing file
    /// counts as empty), to tell a change from an event that changed
    /// nothing.
    fn fingerprint(&self, path: &Path) -> String {
        let mut all = std::fs::read(path).unwrap_or_default();
        for tenant in &self.current.tenants {
            all.extend_from_slice(b"\0");
            all.extend_from_slice(tenant.file.as_os_str().as_encoded_bytes());
            all.extend_from_slice(b"\0");
            all.extend(std::fs::read(&tenant.file).unwrap_or_default());
        }
        content_hash(&all)
    }

    /// Waits for the next config to apply: the file changed (and its text
    /// did), `SIGHUP`, or a request. A config that does not validate is
    /// logged (and the requester told) and skipped; this keeps waiting.
    pub async fn next(&mut self) -> Settings {
        loop {
            let (forced, reply) = tokio::select! {
                _ = async {
                    match &mut self.watch {
                        Some(watch) => watch.next().await,
                        None => std::future::pending().await,
                    }
                } => (false, None),
                Some(()) = self.hangups.recv() => (true, None),
                Some(ReloadRequest(reply)) = self.requests.recv() => (true, Some(reply)),
            };
            let result = self.reload(forced);
            let (answer, settings) = match result {
                Ok(settings) => (Ok(()), settings),
                Err(reason) => (Err(reason), None),
            };
            if let Some(reply) = reply {
                // The requester may have given up waiting: nothing to do.
                let _ = reply.send(answer);
            }
            if let Some(settings) = settings {
                return settings;
            }
        }
    }

    /// Reads and validates the config again: `Ok(None)` when nothing
    /// changed, `Err` with the reason when it is refused (file, line and
    /// reason; the running config stays).
    fn reload(&mut self, forced: bool) -> Result<Option<Settings>, String> {
        let Some(path) = self.path.clone() else {
            tracing::info!("Reload ignored: vigil runs without a config file.");
            return Err("vigil runs without a config file: there is nothing to reload\nhint: start it with --config FILE".into());
        };
        if let Err(error) = std::fs::metadata(&path) {
            tracing::error!(path = %path.display(), %error, "Config reload refused: cannot read the file; the running config stays.");
            return Err(format!("cannot read {}: {error}", path.display()));
        }
        let hash = self.fingerprint(&path);
        if !forced && self.loaded == hash {
            return Ok(None);
        }
        self.loaded = hash;
        match Settings::reload(&path, &self.current) {
            Ok(settings) => {
                tracing::info!(path = %path.display(), forced, "Config reloaded.");
                let files = |settings: &Settings| -> Vec<PathBuf> {
                    settings.tenants.iter().map(|t| t.file.clone()).collect()
                };
                let tenants_changed = files(&self.current) != files(&settings);
                self.current = settings.clone();
                if tenants_changed {
                    // Tenants came or went: watch their folders, and hash
                    // the files that count now.
                    self.watch_tenants();
                    self.loaded = self.fingerprint(&path);
                }
                Ok(Some(settings))
            }
            Err(error) => {
                tracing::error!(%error, "Config reload refused; the running config stays.");
                Err(error.to_string())
            }
        }
    }
}
