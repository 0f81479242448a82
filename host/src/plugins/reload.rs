//! Hot reload: watch rule files, load a changed one on the side, and hand
//! the app a ready-to-run new version, or the reason it was refused.
//!
//! The watch is on each rule file's directory, not the file: editors and
//! deploy tools replace files (write-then-rename, delete-then-create, a
//! symlink flipped to a new version directory as Kubernetes does with
//! ConfigMaps), and a watch on the old inode would miss all of them. Events
//! are debounced: after the last event in a burst and a quiet period, every
//! rule in an affected directory is re-read and hashed. An unchanged hash is
//! a no-op. A changed one is compiled and `init`ed off the evaluation path;
//! only a version that got that far is offered for the swap. A file that is
//! gone unloads its rule.
//!
//! One task does all the loading, one change after another, so versions only
//! ever go up.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{LoadedRule, content_hash};
use crate::config::{RuleSource, RuleSpec};
use crate::runtime::Runtime;
use crate::sources::now_ms;
use crate::state::StateDb;

/// What the reloader asks the app to do.
pub enum Change {
    /// Install this version (a newer one of a running rule, or a rule whose
    /// file came back).
    Install(Box<LoadedRule>),
    /// The rule's file is gone: stop it and resolve its alerts.
    Remove(Arc<str>),
}

/// Where each rule stands, for operators and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStatus {
    /// The version serving samples (0: none, the file is gone).
    pub version: u64,
    /// sha256 of the component serving.
    pub hash: String,
    /// Why the last change to the file was refused, if it was; cleared by
    /// the next version that loads.
    pub last_error: Option<String>,
    /// When the last change (install, refusal, removal) happened.
    pub changed_at_ms: u64,
}

/// The status of every rule, shared between the reloader and readers.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<String, RuleStatus>>>);

impl StatusBoard {
    /// A copy of every rule's status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, RuleStatus> {
        self.0.lock().expect("status lock").clone()
    }

    /// Records that `rule` serves `version` of `hash`.
    pub fn installed(&self, rule: &str, version: u64, hash: &str) {
        let mut board = self.0.lock().expect("status lock");
        board.insert(
            rule.to_string(),
            RuleStatus {
                version,
                hash: hash.to_string(),
                last_error: None,
                changed_at_ms: now_ms(),
            },
        );
    }

    fn update(&self, rule: &str, change: impl FnOnce(&mut RuleStatus)) {
        let mut board = self.0.lock().expect("status lock");
        let status = board.entry(rule.to_string()).or_default();
        change(status);
        status.changed_at_ms = now_ms();
    }
}

/// A rule the reloader looks after.
struct Watched {
    spec: RuleSpec,
    path: PathBuf,
    /// Hash of the version serving; `None` while the file is gone.
    hash: Option<String>,
    version: u64,
}

/// Watches the file-based rules and sends [`Change`]s until `changes`
/// closes. Returns the watcher's task; builtin rules are not watched.
pub fn spawn(
    rules: &[LoadedRule],
    specs: &[RuleSpec],
    runtime: Runtime,
    state: StateDb,
    debounce: Duration,
    status: StatusBoard,
    changes: mpsc::UnboundedSender<Change>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut watched = Vec::new();
    for (rule, spec) in rules.iter().zip(specs) {
        status.installed(&rule.name, rule.version, &rule.hash);
        if let RuleSource::File(path) = &spec.source {
            watched.push(Watched {
                spec: spec.clone(),
                path: path.clone(),
                hash: Some(rule.hash.clone()),
                version: rule.version,
            });
        }
    }
    let (events_tx, events) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                for path in event.paths {
                    let _ = events_tx.send(path);
                }
            }
            Err(error) => tracing::warn!(%error, "File watch error."),
        })?;
    let directories: HashSet<PathBuf> = watched
        .iter()
        .map(|rule| directory_of(&rule.path))
        .collect();
    for directory in &directories {
        watcher
            .watch(directory, RecursiveMode::NonRecursive)
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot watch `{}` for rule changes: {error}",
                    directory.display()
                )
            })?;
    }
    let reloader = Reloader {
        watched,
        debounce,
        runtime,
        state,
        status,
        changes,
    };
    Ok(tokio::spawn(reloader.run(watcher, events, debounce)))
}

/// Waits while the file is still being written: until its modification time
/// is at least `debounce` old, for at most 20 rounds (a file appended to for
/// ever is read as it is then). Catches slow copies whose pauses between
/// writes are longer than the debounce.
async fn settle(path: &Path, debounce: Duration) {
    for _ in 0..20 {
        let age = std::fs::metadata(path)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        match age {
            Some(age) if age < debounce => tokio::time::sleep(debounce - age).await,
            _ => return,
        }
    }
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

struct Reloader {
    watched: Vec<Watched>,
    debounce: Duration,
    runtime: Runtime,
    state: StateDb,
    status: StatusBoard,
    changes: mpsc::UnboundedSender<Change>,
}

impl Reloader {
    async fn run(
        mut self,
        // Dropping the watcher ends the watch: it lives as long as the task.
        _watcher: notify::RecommendedWatcher,
        mut events: mpsc::UnboundedReceiver<PathBuf>,
        debounce: Duration,
    ) {
        while let Some(first) = events.recv().await {
            let mut touched = HashSet::from([first]);
            let quiet = tokio::time::sleep(debounce);
            tokio::pin!(quiet);
            loop {
                tokio::select! {
                    Some(path) = events.recv() => {
                        touched.insert(path);
                        quiet.as_mut().reset(tokio::time::Instant::now() + debounce);
                    }
                    () = &mut quiet => break,
                }
            }
            let affected: Vec<usize> = (0..self.watched.len())
                .filter(|&i| {
                    let directory = directory_of(&self.watched[i].path);
                    touched.iter().any(|path| {
                        path == &directory || path.parent() == Some(directory.as_path())
                    })
                })
                .collect();
            for index in affected {
                if self.check(index).await.is_err() {
                    return; // the app stopped listening
                }
            }
        }
    }

    /// Re-reads one rule's file and acts on what changed.
    async fn check(&mut self, index: usize) -> Result<(), ()> {
        let rule = &mut self.watched[index];
        let name = rule.spec.name.clone();
        settle(&rule.path, self.debounce).await;
        let bytes = match std::fs::read(&rule.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if rule.hash.take().is_some() {
                    tracing::info!(rule = %name, path = %rule.path.display(), "Rule file removed; unloading the rule.");
                    self.status.update(&name, |status| {
                        status.version = 0;
                        status.hash.clear();
                    });
                    self.changes
                        .send(Change::Remove(name.as_str().into()))
                        .map_err(drop)?;
                }
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(rule = %name, path = %rule.path.display(), %error, "Cannot read the rule file; the running version stays.");
                return Ok(());
            }
        };
        if bytes.is_empty() {
            // Truncated and not yet written: the write will send its own event.
            tracing::debug!(rule = %name, "Rule file is empty; waiting for its content.");
            return Ok(());
        }
        let hash = content_hash(&bytes);
        if rule.hash.as_deref() == Some(hash.as_str()) {
            return Ok(());
        }
        let runtime = self.runtime.clone();
        let state = self.state.clone();
        let spec = rule.spec.clone();
        // Compiling can take seconds: off the async workers. The bytes read
        // above are the ones loaded, so the hash matches what runs.
        let loaded = tokio::task::spawn_blocking(move || {
            super::load_bytes(&runtime, &state, &spec, bytes.into())
        })
        .await
        .map_err(drop)?;
        match loaded {
            Ok(mut loaded) => {
                rule.version += 1;
                rule.hash = Some(hash.clone());
                loaded.version = rule.version;
                tracing::info!(rule = %name, version = rule.version, hash = %&hash[..12], "Rule reloaded.");
                self.status.installed(&name, rule.version, &hash);
                self.changes
                    .send(Change::Install(Box::new(loaded)))
                    .map_err(drop)?;
            }
            Err(error) => {
                let reason = error.reason.clone();
                tracing::error!(rule = %name, %error, "Rule reload refused; the running version stays.");
                self.status
                    .update(&name, |status| status.last_error = Some(reason));
            }
        }
        Ok(())
    }
}
