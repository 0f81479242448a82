//! Hot reload: watch rule files, load a changed one on the side, and hand
//! the app a ready-to-run new version, or the reason it was refused.
//!
//! The watch is on each rule file's directory, not the file (see
//! [`crate::watch`]). Events are debounced: after the last event in a burst
//! and a quiet period, every rule in an affected directory is re-read and
//! hashed. An unchanged hash is
//! a no-op. A changed one is compiled and configured off the evaluation path;
//! only a version that got that far is offered for the swap. A file that is
//! gone unloads its rule.
//!
//! One task does all the loading, one change after another, so versions only
//! ever go up.
//!
//! A rule whose trust requires a signature is identified by its bytes and
//! its `.minisig` together: a new signature for the same bytes is checked
//! again (and recorded, without a swap, when it passes), and a refused pair
//! is retried when either file changes, so deploying a file and then its
//! signature ends with the new version serving.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{FailurePolicy, LoadedRule, RuleBytes, Signer};
use crate::clock::now_ms;
use crate::config::{RuleDir, RuleSource, RuleSpec};
use crate::hash::Sha256;
use crate::names::RuleName;
use crate::runtime::Runtime;
use crate::state::StateDb;
use crate::watch::{DebouncedWatch, folder_of};

/// What the reloader asks the app to do.
pub enum Change {
    /// Install this version: a newer one of a running rule, or a rule that
    /// is new or whose file came back (then with its failure policy).
    Install(Box<LoadedRule>, FailurePolicy),
    /// The rule's file is gone, or the config dropped it: stop it and
    /// resolve its alerts.
    Remove(RuleName),
}

/// What the app asks the reloader to do.
pub enum Command {
    /// The config was reloaded: these are the rules (and rule folders) now.
    /// New ones load, changed ones (config, limits, file) reload, missing
    /// ones go.
    Reconcile(Vec<RuleSpec>, Vec<RuleDir>),
}

/// Where each rule stands, for operators and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStatus {
    /// The version serving samples (0: none, the file is gone).
    pub version: u64,
    /// sha256 of the component serving.
    pub hash: String,
    /// Why the last change to the file (or its signature) was refused, if
    /// it was; cleared by the next version (or signature) that passes.
    pub last_error: Option<String>,
    /// Who signed the version serving, when its trust required a signature.
    pub signer: Option<Signer>,
    /// When the last change (install, refusal, removal) happened.
    pub changed_at_ms: u64,
    /// Where the component comes from: its file, or `builtin:NAME`.
    pub source: String,
    /// When the version serving was loaded (0: none serves).
    pub loaded_at_ms: u64,
    /// Versions loaded after the first (hot reloads).
    pub reloads: u64,
    /// Changes refused (the running version stayed).
    pub refused: u64,
}

/// The status of every rule, shared between the reloader and readers.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<String, RuleStatus>>>);

impl StatusBoard {
    /// A copy of every rule's status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, RuleStatus> {
        self.0.lock().expect("status lock").clone()
    }

    /// Records that `rule` serves `version` of `hash`, from `source`,
    /// signed by `signer`.
    pub fn installed(
        &self,
        rule: &str,
        version: u64,
        hash: &str,
        source: &RuleSource,
        signer: Option<Signer>,
    ) {
        let now = now_ms();
        let mut board = self.0.lock().expect("status lock");
        let status = board.entry(rule.to_string()).or_default();
        if status.loaded_at_ms > 0 || status.version > 0 {
            status.reloads += 1;
        }
        *status = RuleStatus {
            version,
            hash: hash.to_string(),
            last_error: None,
            signer,
            changed_at_ms: now,
            source: source.to_string(),
            loaded_at_ms: now,
            reloads: status.reloads,
            refused: status.refused,
        };
    }

    /// Records that a new version (or signature) of `rule` was refused for
    /// `reason`; the running version stays.
    pub(crate) fn refused(&self, rule: &str, reason: String) {
        self.update(rule, |status| {
            status.last_error = Some(reason);
            status.refused += 1;
        });
    }

    pub(crate) fn remove(&self, rule: &str) {
        self.0.lock().expect("status lock").remove(rule);
    }

    fn update(&self, rule: &str, change: impl FnOnce(&mut RuleStatus)) {
        let mut board = self.0.lock().expect("status lock");
        let status = board.entry(rule.to_string()).or_default();
        change(status);
        status.changed_at_ms = now_ms();
    }
}

/// How many times a file that failed to load and changed meanwhile is read
/// again before its failure is reported.
const MAX_REREADS: u32 = 10;

/// What a version is known by: its bytes' hash, and its signature's when
/// one is required.
type Identity = (String, Option<Sha256>);

/// A rule the reloader looks after.
struct Watched {
    spec: RuleSpec,
    /// Hash of the version serving; `None` while nothing serves (the file is
    /// gone, or the rule never loaded).
    hash: Option<String>,
    /// The serving version's signature, as checked (`None` when none is
    /// required).
    signature: Option<Sha256>,
    /// Hash of the last content refused, with its signature: it is not
    /// tried again until the file or its signature changes (or the config
    /// gives the rule new settings), so a refused version costs nothing
    /// however often its folder is touched.
    refused: Option<Identity>,
    version: u64,
}

impl Watched {
    fn path(&self) -> Option<&Path> {
        spec_path(&self.spec)
    }
}

/// The reloader's task and the way to send it commands.
pub struct ReloaderHandle {
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl ReloaderHandle {
    /// Hands the reloader the rules of a reloaded config.
    pub fn reconcile(&self, specs: Vec<RuleSpec>, dirs: Vec<RuleDir>) {
        let _ = self.commands.send(Command::Reconcile(specs, dirs));
    }

    /// Stops watching.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Starts watching the rules of `specs`, those loaded at start (`rules`)
/// and those that could not be (loaded when their file changes), sending
/// [`Change`]s until `changes` closes.
#[allow(clippy::too_many_arguments)] // called once, by the app
pub fn spawn(
    rules: &[LoadedRule],
    specs: &[RuleSpec],
    dirs: Vec<RuleDir>,
    runtime: Runtime,
    state: StateDb,
    debounce: Duration,
    status: StatusBoard,
    changes: mpsc::UnboundedSender<Change>,
) -> anyhow::Result<ReloaderHandle> {
    let watched = specs
        .iter()
        .map(
            |spec| match rules.iter().find(|rule| rule.name == spec.name) {
                Some(rule) => {
                    status.installed(
                        &rule.name,
                        rule.version,
                        &rule.hash,
                        &spec.source,
                        rule.signer.clone(),
                    );
                    Watched {
                        spec: spec.clone(),
                        hash: Some(rule.hash.clone()),
                        signature: rule.signature,
                        refused: None,
                        version: rule.version,
                    }
                }
                // It could not be loaded at start (a tenant's rule: the host
                // started without it); it loads when its file changes.
                None => Watched {
                    spec: spec.clone(),
                    hash: None,
                    signature: None,
                    refused: None,
                    version: 0,
                },
            },
        )
        .collect();
    let watch = DebouncedWatch::new(debounce)?;
    let mut reloader = Reloader {
        watched,
        dirs,
        watch,
        debounce,
        runtime,
        state,
        status,
        changes,
    };
    reloader.watch_directories()?;
    let (commands, command_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(reloader.run(command_rx));
    Ok(ReloaderHandle { commands, task })
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

fn identity(read: &RuleBytes) -> Identity {
    (
        read.hash().to_string(),
        read.signature().and_then(super::SignatureFile::fingerprint),
    )
}

fn spec_path(spec: &RuleSpec) -> Option<&Path> {
    match &spec.source {
        RuleSource::File(path) => Some(path),
        RuleSource::Builtin(_) | RuleSource::Pushed { .. } => None,
    }
}

/// Whether two specs describe the same running rule (where the config
/// declares it does not matter).
fn same_rule(a: &RuleSpec, b: &RuleSpec) -> bool {
    let source = match (&a.source, &b.source) {
        (RuleSource::File(a), RuleSource::File(b)) => a == b,
        (RuleSource::Builtin(a), RuleSource::Builtin(b)) => a.name == b.name,
        _ => false,
    };
    source
        && a.config_json == b.config_json
        && a.limits == b.limits
        && a.failure_policy == b.failure_policy
        && a.targets == b.targets
        && a.trust == b.trust
}

struct Reloader {
    watched: Vec<Watched>,
    /// Folders whose new `.wasm` files become rules.
    dirs: Vec<RuleDir>,
    // Dropping the watch ends it: it lives as long as the task.
    watch: DebouncedWatch,
    debounce: Duration,
    runtime: Runtime,
    state: StateDb,
    status: StatusBoard,
    changes: mpsc::UnboundedSender<Change>,
}

/// The app stopped listening; the reloader stops too.
struct Closed;

impl Reloader {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let result = tokio::select! {
                touched = self.watch.next() => self.files_changed(&touched).await,
                Some(Command::Reconcile(specs, dirs)) = commands.recv() => {
                    self.dirs = dirs;
                    self.reconcile(specs).await
                }
                else => return,
            };
            if result.is_err() {
                return;
            }
        }
    }

    /// Watches the directory of every file rule and every rules folder
    /// (once each).
    fn watch_directories(&mut self) -> anyhow::Result<()> {
        let files = self
            .watched
            .iter()
            .filter_map(|rule| rule.path())
            .map(folder_of);
        let directories: Vec<PathBuf> = files
            .chain(self.dirs.iter().map(|dir| dir.dir.clone()))
            .collect();
        for directory in directories {
            self.watch
                .watch(&directory)
                .map_err(|error| anyhow::anyhow!("rule changes cannot be followed: {error}"))?;
        }
        Ok(())
    }

    async fn files_changed(&mut self, touched: &HashSet<PathBuf>) -> Result<(), Closed> {
        let affected: Vec<usize> = (0..self.watched.len())
            .filter(|&i| {
                let Some(path) = self.watched[i].path() else {
                    return false;
                };
                let directory = folder_of(path);
                touched
                    .iter()
                    .any(|path| path == &directory || path.parent() == Some(directory.as_path()))
            })
            .collect();
        for index in affected {
            self.check_file(index).await?;
        }
        // New files in a rules folder are new rules.
        let folders: Vec<RuleDir> = self
            .dirs
            .iter()
            .filter(|dir| {
                touched
                    .iter()
                    .any(|path| path == &dir.dir || path.parent() == Some(dir.dir.as_path()))
            })
            .cloned()
            .collect();
        for folder in folders {
            let specs = match folder.expand() {
                Ok(specs) => specs,
                Err(error) => {
                    tracing::warn!(dir = %folder.dir.display(), %error, "Cannot list the rules directory.");
                    continue;
                }
            };
            for spec in specs {
                if let Some(known) = self.watched.iter().find(|rule| rule.spec.name == spec.name) {
                    if known.path() != spec_path(&spec) {
                        tracing::error!(rule = %spec.name, dir = %folder.dir.display(), "A rule of this name exists already; the new file is not loaded.");
                    }
                    continue;
                }
                tracing::info!(rule = %spec.name, dir = %folder.dir.display(), "New rule file; loading it.");
                self.watched.push(Watched {
                    spec,
                    hash: None,
                    signature: None,
                    refused: None,
                    version: 0,
                });
                let index = self.watched.len() - 1;
                self.check_file(index).await?;
            }
        }
        Ok(())
    }

    /// Re-reads one rule's file and acts on what changed.
    async fn check_file(&mut self, index: usize) -> Result<(), Closed> {
        let rule = &mut self.watched[index];
        let name = rule.spec.name.clone();
        let Some(path) = rule.path().map(Path::to_path_buf) else {
            return Ok(());
        };
        settle(&path, self.debounce).await;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if rule.hash.take().is_some() {
                    tracing::info!(rule = %name, path = %path.display(), "Rule file removed; unloading the rule.");
                    self.status.update(&name, |status| {
                        status.version = 0;
                        status.hash.clear();
                        status.loaded_at_ms = 0;
                    });
                    self.changes
                        .send(Change::Remove(name.as_str().into()))
                        .map_err(|_| Closed)?;
                }
                return Ok(());
            }
            Err(error) => {
                tracing::warn!(rule = %name, path = %path.display(), %error, "Cannot read the rule file; the running version stays.");
                return Ok(());
            }
        };
        if bytes.is_empty() {
            // Truncated and not yet written: the write will send its own event.
            tracing::debug!(rule = %name, "Rule file is empty; waiting for its content.");
            return Ok(());
        }
        let read = match RuleBytes::with_signature(&rule.spec, &path, bytes) {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(rule = %name, %error, "Cannot read the rule's signature; the running version stays.");
                return Ok(());
            }
        };
        let identity = identity(&read);
        if rule.refused.as_ref() == Some(&identity) {
            return Ok(());
        }
        if rule.hash.as_ref() == Some(&identity.0) {
            if rule.signature != identity.1 {
                self.signature_changed(index, read, identity);
            }
            return Ok(());
        }
        self.install(index, read, Some(&path)).await
    }

    /// The serving version's bytes are unchanged but its signature is not:
    /// the new one is checked on the same bytes. One that passes is
    /// recorded (who signed, the trusted comment); one that does not is
    /// refused like a bad version, and the running version stays: it was
    /// checked when it loaded, and it is what runs either way.
    fn signature_changed(&mut self, index: usize, read: RuleBytes, identity: Identity) {
        let rule = &mut self.watched[index];
        let name = rule.spec.name.clone();
        match rule
            .spec
            .trust
            .check_hashed(read.bytes(), read.hash(), read.signature())
        {
            Ok(signer) => {
                rule.signature = identity.1;
                rule.refused = None;
                if let Some(signer) = &signer {
                    tracing::info!(rule = %name, key = %signer.key.display(), trusted_comment = %signer.trusted_comment, "Rule signature renewed; the same version serves.");
                }
                self.status.update(&name, |status| {
                    status.signer = signer;
                    status.last_error = None;
                });
            }
            Err(error) => {
                let reason = error.to_string();
                rule.refused = Some(identity);
                tracing::error!(rule = %name, error = %reason, "Rule reload refused; the running version stays.");
                self.status.refused(&name, reason);
            }
        }
    }

    /// Applies the rules of a reloaded config.
    async fn reconcile(&mut self, specs: Vec<RuleSpec>) -> Result<(), Closed> {
        let names: HashSet<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
        for rule in self
            .watched
            .iter()
            .filter(|rule| !names.contains(rule.spec.name.as_str()))
        {
            tracing::info!(rule = %rule.spec.name, "Rule dropped from the config; unloading it.");
            self.status.remove(&rule.spec.name);
            if rule.hash.is_some() {
                self.changes
                    .send(Change::Remove(rule.spec.name.as_str().into()))
                    .map_err(|_| Closed)?;
            }
        }
        self.watched
            .retain(|rule| names.contains(rule.spec.name.as_str()));
        for spec in specs {
            let index = match self
                .watched
                .iter()
                .position(|rule| rule.spec.name == spec.name)
            {
                Some(index) if same_rule(&self.watched[index].spec, &spec) => {
                    self.watched[index].spec = spec;
                    continue;
                }
                Some(index) => {
                    tracing::info!(rule = %spec.name, "Rule changed in the config; reloading it.");
                    self.watched[index].spec = spec;
                    self.watched[index].refused = None;
                    index
                }
                None => {
                    tracing::info!(rule = %spec.name, "Rule added to the config; loading it.");
                    self.watched.push(Watched {
                        spec,
                        hash: None,
                        signature: None,
                        refused: None,
                        version: 0,
                    });
                    self.watched.len() - 1
                }
            };
            let spec = &self.watched[index].spec;
            let read = match &spec.source {
                RuleSource::Builtin(builtin) => Ok(RuleBytes::builtin(builtin)),
                RuleSource::File(path) => std::fs::read(path)
                    .map_err(|error| format!("cannot read the file: {error}"))
                    .and_then(|bytes| {
                        RuleBytes::with_signature(spec, path, bytes).map_err(|error| error.reason)
                    }),
                // Never in a config: `cluster::rule_sync` loads these.
                RuleSource::Pushed { .. } => {
                    Err("a pushed rule cannot be declared in a config".into())
                }
            };
            match read {
                Ok(read) => self.install(index, read, None).await?,
                Err(reason) => {
                    let name = spec.name.clone();
                    tracing::error!(rule = %name, source = %spec.source, error = %reason, "Rule reload refused; the running version stays.");
                    self.status.refused(&name, reason);
                }
            }
        }
        if let Err(error) = self.watch_directories() {
            tracing::error!(%error, "Rule files added by the config are not watched.");
        }
        Ok(())
    }

    /// Loads `bytes` as the next version of rule `index` and offers it to
    /// the app; a failure is logged and recorded, and the running version
    /// stays. When the bytes were read from `file` and do not load, the file
    /// is read again after the debounce: content that changed meanwhile was
    /// caught mid-write (a busy machine can pause a writer for longer than
    /// the debounce), so the new content is tried instead of refusing a
    /// version nobody meant to deploy.
    async fn install(
        &mut self,
        index: usize,
        mut read: RuleBytes,
        file: Option<&Path>,
    ) -> Result<(), Closed> {
        let name = self.watched[index].spec.name.clone();
        let mut rereads = 0;
        let (loaded, (hash, signature)) = loop {
            let current = identity(&read);
            let (runtime, state) = (self.runtime.clone(), self.state.clone());
            let spec = self.watched[index].spec.clone();
            // Compiling can take seconds: off the async workers. The bytes
            // read are the ones checked and loaded, so the hash matches
            // what runs.
            let loaded = tokio::task::spawn_blocking(move || {
                super::load_bytes(&runtime, &state, &spec, read)
            })
            .await
            .map_err(|_| Closed)?;
            let Some(file) = file.filter(|_| loaded.is_err() && rereads < MAX_REREADS) else {
                break (loaded, current);
            };
            tokio::time::sleep(self.debounce).await;
            settle(file, self.debounce).await;
            let again = std::fs::read(file)
                .ok()
                .filter(|again| !again.is_empty())
                .and_then(|again| {
                    RuleBytes::with_signature(&self.watched[index].spec, file, again).ok()
                });
            match again {
                Some(again) if identity(&again) != current => {
                    tracing::debug!(rule = %name, "Rule file or signature changed while it was loaded; loading it again.");
                    read = again;
                    rereads += 1;
                }
                _ => break (loaded, current),
            }
        };
        let rule = &mut self.watched[index];
        match loaded {
            Ok(mut loaded) => {
                rule.version += 1;
                rule.hash = Some(hash.clone());
                rule.signature = signature;
                rule.refused = None;
                loaded.version = rule.version;
                tracing::info!(rule = %name, version = rule.version, hash = %&hash[..12], "Rule reloaded.");
                self.status.installed(
                    &name,
                    rule.version,
                    &hash,
                    &rule.spec.source,
                    loaded.signer.clone(),
                );
                let change = Change::Install(Box::new(loaded), rule.spec.failure_policy);
                self.changes.send(change).map_err(|_| Closed)?;
            }
            Err(error) => {
                let reason = error.reason.clone();
                rule.refused = Some((hash, signature));
                tracing::error!(rule = %name, %error, "Rule reload refused; the running version stays.");
                self.status.refused(&name, reason);
            }
        }
        Ok(())
    }
}
