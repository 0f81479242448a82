//! On every node: follow the manifest bucket and run what it says.
//!
//! One task watches `rule.>` (each manifest as it is, then every change).
//! For a new revision it fetches the object the manifest names, refuses it
//! unless its sha256 is the manifest's digest, checks it against the trust
//! of the rule's owner, compiles it (through the compile cache) and
//! configures it off the async workers, and only then offers it to the app
//! as [`Change::Install`]: the same validate-then-swap path a changed rule
//! file takes. A revision refused for any reason is logged with the reason,
//! recorded on the status board and in this node's report, and the version
//! serving stays. Revisions are handled one after another, so the version
//! serving only goes up.
//!
//! After each change the node publishes what it runs under `node.<id>`
//! ([`NodeReport`]) for `vigil cluster status`.
//!
//! Config reloads do not reach this task: a pushed rule is checked against
//! the tenants and `[trust]` the host started with.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::NodeId;
use super::rule_store::{ManifestChange, RuleStore};
use super::rules::{Manifest, NodeReport, RunningRule, check_digest, signature_of, spec_for};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::names::RuleName;
use crate::plugins::reload::{Change, StatusBoard};
use crate::plugins::{self, RuleBytes};
use crate::runtime::Runtime;
use crate::state::StateDb;

/// How long to wait before watching again after the watch failed.
const REWATCH_AFTER: Duration = Duration::from_secs(1);

/// The task that keeps this node's pushed rules in step with the bucket.
pub struct RuleSync {
    task: tokio::task::JoinHandle<()>,
}

impl RuleSync {
    /// Starts following `store`, sending installs and removals to
    /// `changes` and recording each on `status`.
    pub fn start(
        store: RuleStore,
        settings: Settings,
        node: NodeId,
        runtime: Runtime,
        state: StateDb,
        status: StatusBoard,
        changes: mpsc::UnboundedSender<Change>,
    ) -> RuleSync {
        let sync = Sync {
            store,
            settings,
            node,
            runtime,
            state,
            status,
            changes,
            rules: BTreeMap::new(),
        };
        RuleSync {
            task: tokio::spawn(sync.run()),
        }
    }

    /// Stops following.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// One pushed rule as this node knows it.
#[derive(Default)]
struct Known {
    /// The last revision handled (loaded, refused or removed).
    handled: u64,
    running: RunningRule,
}

struct Sync {
    store: RuleStore,
    settings: Settings,
    node: NodeId,
    runtime: Runtime,
    state: StateDb,
    status: StatusBoard,
    changes: mpsc::UnboundedSender<Change>,
    /// Every pushed rule in the bucket: bounded by the bucket's keys.
    rules: BTreeMap<RuleName, Known>,
}

/// The app stopped listening.
struct Closed;

impl Sync {
    async fn run(mut self) {
        self.report().await;
        loop {
            let mut changes = match self.store.watch().await {
                Ok(changes) => changes,
                Err(error) => {
                    tracing::warn!(%error, "Cannot follow the pushed rules; trying again.");
                    tokio::time::sleep(REWATCH_AFTER).await;
                    continue;
                }
            };
            while let Some(change) = changes.next().await {
                let result = match change {
                    Ok(change) => self.apply(change).await,
                    Err(error) => {
                        tracing::warn!(%error, "The pushed rules' watch failed; watching again.");
                        break;
                    }
                };
                if result.is_err() {
                    return;
                }
                self.report().await;
            }
            tokio::time::sleep(REWATCH_AFTER).await;
        }
    }

    async fn apply(&mut self, change: ManifestChange) -> Result<(), Closed> {
        let (rule, revision) = match &change {
            ManifestChange::Put { rule, revision, .. }
            | ManifestChange::Deleted { rule, revision } => (rule.clone(), *revision),
        };
        let known = self.rules.entry(rule.clone()).or_default();
        // A watch started again delivers the current revisions again.
        if revision <= known.handled {
            return Ok(());
        }
        known.handled = revision;
        match change {
            ManifestChange::Deleted { .. } => {
                tracing::info!(rule = %rule, revision, "Pushed rule deleted; unloading it.");
                self.unload(&rule)
            }
            ManifestChange::Put {
                manifest: Err(reason),
                ..
            } => {
                self.refuse(&rule, revision, reason);
                Ok(())
            }
            ManifestChange::Put {
                manifest: Ok(manifest),
                ..
            } if !manifest.enabled => {
                tracing::info!(rule = %rule, revision, "Pushed rule disabled; unloading it.");
                self.unload(&rule)
            }
            ManifestChange::Put {
                manifest: Ok(manifest),
                ..
            } => self.install(&rule, revision, manifest).await,
        }
    }

    /// Stops `rule` if a revision of it serves.
    fn unload(&mut self, rule: &RuleName) -> Result<(), Closed> {
        let known = self.rules.get_mut(rule).expect("known");
        let serving = known.running.revision > 0;
        known.running = RunningRule::default();
        if serving {
            self.status.remove(rule);
            self.changes
                .send(Change::Remove(rule.clone()))
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    fn refuse(&mut self, rule: &RuleName, revision: u64, reason: String) {
        tracing::error!(rule = %rule, revision, error = %reason, "Pushed rule refused; the running version stays.");
        self.status.refused(rule, reason.clone());
        if let Some(known) = self.rules.get_mut(rule) {
            known.running.refused = Some((revision, reason));
        }
    }

    async fn install(
        &mut self,
        rule: &RuleName,
        revision: u64,
        manifest: Manifest,
    ) -> Result<(), Closed> {
        let spec = match spec_for(
            rule,
            revision,
            &manifest,
            self.store.objects_name(),
            &self.settings,
        ) {
            Ok(spec) => spec,
            Err(reason) => {
                self.refuse(rule, revision, reason);
                return Ok(());
            }
        };
        let bytes = match self.store.component(&manifest.digest).await {
            Ok(bytes) => bytes,
            Err(error) => {
                self.refuse(rule, revision, format!("{error:#}"));
                return Ok(());
            }
        };
        if let Err(reason) = check_digest(&manifest, &bytes) {
            self.refuse(rule, revision, reason);
            return Ok(());
        }
        // As for a rule file: a signature is read only when one is required.
        let signature = spec
            .trust
            .requires_signature()
            .then(|| signature_of(rule, revision, &manifest));
        let read = RuleBytes::fetched(bytes, signature);
        let (runtime, state, load_spec) = (self.runtime.clone(), self.state.clone(), spec.clone());
        // Compiling can take seconds: off the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            plugins::load_bytes(&runtime, &state, &load_spec, read)
        })
        .await
        .map_err(|_| Closed)?;
        match loaded {
            Ok(mut loaded) => {
                loaded.version = revision;
                tracing::info!(rule = %rule, revision, digest = %&manifest.digest[..12], pushed_by = %manifest.pushed_by, "Pushed rule installed.");
                self.status.installed(
                    rule,
                    revision,
                    &loaded.hash,
                    &spec.source,
                    loaded.signer.clone(),
                );
                let known = self.rules.get_mut(rule).expect("known");
                known.running = RunningRule {
                    revision,
                    digest: manifest.digest,
                    refused: None,
                };
                self.changes
                    .send(Change::Install(Box::new(loaded), spec.failure_policy))
                    .map_err(|_| Closed)
            }
            Err(error) => {
                self.refuse(rule, revision, error.reason);
                Ok(())
            }
        }
    }

    /// Publishes what this node runs; a failure is logged (the next change
    /// publishes again).
    async fn report(&self) {
        let report = NodeReport {
            node: self.node.clone(),
            at_ms: now_ms(),
            rules: self
                .rules
                .iter()
                .map(|(rule, known)| (rule.clone(), known.running.clone()))
                .collect(),
        };
        if let Err(error) = self.store.report(&self.node, &report).await {
            tracing::warn!(error = %format!("{error:#}"), "Cannot publish the pushed rules this node runs.");
        }
    }
}
