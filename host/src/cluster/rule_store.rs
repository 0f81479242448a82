//! The pushed rules' two buckets, beside [`super::nats`] and like it the
//! only code that touches `async-nats` for them:
//!
//! - `vigil_<cluster>_rules`, an Object Store: each component under its
//!   sha256 (hex). Objects are never overwritten with other bytes by Vigil
//!   and never deleted by it (an old manifest revision may still name one);
//! - `vigil_<cluster>_manifests`, a KV bucket: `rule.<name>` holds the
//!   rule's [`Manifest`] (its last [`MANIFEST_HISTORY`] revisions are kept
//!   for `vigil rules list`), `node.<id>` what that node runs
//!   ([`NodeReport`]).
//!
//! Nothing here checks a digest or a signature: `rule_sync` does, on the
//! bytes it is about to compile.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{kv, object_store};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use super::NodeId;
use super::nats::Nats;
use super::rules::{Manifest, NodeReport};
use crate::config::ClusterSettings;
use crate::names::RuleName;

/// Revisions of each manifest the bucket keeps.
pub const MANIFEST_HISTORY: i64 = 16;

/// The largest component a node fetches: a rule is a few hundred KiB to a
/// few MiB; this bounds what a wrong manifest can make every node read.
pub const MAX_COMPONENT_BYTES: usize = 64 * 1024 * 1024;

/// `vigil_<name>_rules`.
pub fn objects_bucket(settings: &ClusterSettings) -> String {
    format!("vigil_{}_rules", settings.name)
}

/// `vigil_<name>_manifests`.
pub fn manifests_bucket(settings: &ClusterSettings) -> String {
    format!("vigil_{}_manifests", settings.name)
}

const RULE_PREFIX: &str = "rule.";
const NODE_PREFIX: &str = "node.";

/// The manifest key of `rule`.
fn rule_key(rule: &RuleName) -> String {
    format!("{RULE_PREFIX}{rule}")
}

/// A change to one rule's manifest, as the watch delivers it.
#[derive(Debug)]
pub enum ManifestChange {
    /// A new revision of the manifest; `Err` when it does not parse (the
    /// reason, to log and report).
    Put {
        /// The rule.
        rule: RuleName,
        /// The KV revision: what the rule's evaluations record.
        revision: u64,
        /// The manifest.
        manifest: Result<Manifest, String>,
    },
    /// The key was deleted or purged: the rule goes.
    Deleted {
        /// The rule.
        rule: RuleName,
        /// The revision of the deletion.
        revision: u64,
    },
}

/// One rule's manifest revisions, oldest first, for `vigil rules list`.
pub type History = Vec<(u64, Result<Manifest, String>)>;

/// The two buckets of pushed rules.
#[derive(Clone)]
pub struct RuleStore {
    objects: object_store::ObjectStore,
    manifests: kv::Store,
    objects_name: String,
}

impl RuleStore {
    /// Opens both buckets, creating them when missing (a push before any
    /// node ran, or a node before any push).
    pub async fn open(nats: &Nats, settings: &ClusterSettings) -> anyhow::Result<RuleStore> {
        let jetstream = nats.jetstream();
        let objects_name = objects_bucket(settings);
        let objects = match jetstream.get_object_store(&objects_name).await {
            Ok(store) => store,
            Err(_) => {
                let config = object_store::Config {
                    bucket: objects_name.clone(),
                    description: Some("vigil pushed rule components, by sha256".into()),
                    num_replicas: settings.replicas,
                    ..Default::default()
                };
                match jetstream.create_object_store(config).await {
                    Ok(store) => store,
                    // Another node or a push made it at the same moment.
                    Err(error) => jetstream.get_object_store(&objects_name).await.map_err(|_| {
                        anyhow::anyhow!(
                            "cannot create the rule bucket `{objects_name}`: {error}\nhint: is JetStream enabled on the server (`nats-server -js`), and may these credentials create streams?"
                        )
                    })?,
                }
            }
        };
        let manifests_name = manifests_bucket(settings);
        let manifests = match jetstream.get_key_value(&manifests_name).await {
            Ok(store) => store,
            Err(_) => {
                let config = kv::Config {
                    bucket: manifests_name.clone(),
                    description: "vigil pushed rule manifests and what each node runs".into(),
                    history: MANIFEST_HISTORY,
                    num_replicas: settings.replicas,
                    ..Default::default()
                };
                match jetstream.create_key_value(config).await {
                    Ok(store) => store,
                    Err(error) => jetstream.get_key_value(&manifests_name).await.map_err(|_| {
                        anyhow::anyhow!(
                            "cannot create the manifest bucket `{manifests_name}`: {error}\nhint: is JetStream enabled on the server (`nats-server -js`), and may these credentials create streams?"
                        )
                    })?,
                }
            }
        };
        Ok(RuleStore {
            objects,
            manifests,
            objects_name,
        })
    }

    /// The object store bucket's name.
    pub fn objects_name(&self) -> &str {
        &self.objects_name
    }

    /// Stores `bytes` under the name `digest`, unless an object of that
    /// name exists already. The caller vouches that `digest` is their
    /// sha256: the nodes check it again before compiling.
    pub async fn put_component(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if self
            .objects
            .info(digest)
            .await
            .is_ok_and(|info| !info.deleted)
        {
            return Ok(());
        }
        let mut reader = bytes;
        self.objects
            .put(digest, &mut reader)
            .await
            .with_context(|| format!("cannot store the component in `{}`", self.objects_name))?;
        Ok(())
    }

    /// The component stored under `digest`, at most
    /// [`MAX_COMPONENT_BYTES`].
    pub async fn component(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let mut object = match self.objects.get(digest).await {
            Ok(object) => object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => bail!(
                "no component `{digest}` in `{}`\nhint: push it again with `vigil rules push`",
                self.objects_name
            ),
            Err(error) => bail!(
                "cannot fetch `{digest}` from `{}`: {error}",
                self.objects_name
            ),
        };
        let size = object.info().size;
        if size > MAX_COMPONENT_BYTES {
            bail!(
                "component `{digest}` is {size} bytes, more than the {MAX_COMPONENT_BYTES} a rule may be"
            );
        }
        let mut bytes = Vec::with_capacity(size);
        object
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("cannot read `{digest}` from `{}`", self.objects_name))?;
        Ok(bytes)
    }

    /// Writes `rule`'s manifest: its new revision.
    pub async fn put_manifest(&self, rule: &RuleName, manifest: &Manifest) -> anyhow::Result<u64> {
        let value = serde_json::to_vec(manifest).expect("a manifest serializes");
        self.manifests
            .put(rule_key(rule), value.into())
            .await
            .with_context(|| format!("cannot write the manifest of rule `{rule}`"))
    }

    /// `rule`'s current manifest and its revision, if it has one.
    pub async fn manifest(&self, rule: &RuleName) -> anyhow::Result<Option<(u64, Manifest)>> {
        let entry = self
            .manifests
            .entry(rule_key(rule))
            .await
            .with_context(|| format!("cannot read the manifest of rule `{rule}`"))?;
        let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        let manifest = serde_json::from_slice(&entry.value)
            .with_context(|| format!("the manifest of rule `{rule}` is not a Vigil manifest"))?;
        Ok(Some((entry.revision, manifest)))
    }

    /// Deletes `rule`'s manifest: every node stops the rule.
    pub async fn delete_manifest(&self, rule: &RuleName) -> anyhow::Result<()> {
        self.manifests
            .delete(rule_key(rule))
            .await
            .with_context(|| format!("cannot delete the manifest of rule `{rule}`"))
    }

    /// Every rule's manifest as it is now, then each change as it is made.
    /// The stream ends when the connection is gone for good.
    pub async fn watch(
        &self,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<ManifestChange>> + use<>> {
        let watch = self
            .manifests
            .watch_with_history(format!("{RULE_PREFIX}>"))
            .await
            .context("cannot watch the manifest bucket")?;
        Ok(watch.map(|entry| {
            let entry = entry.context("the manifest watch failed")?;
            Ok(change_of(&entry))
        }))
    }

    /// Publishes what `node` runs.
    pub async fn report(&self, node: &NodeId, report: &NodeReport) -> anyhow::Result<()> {
        let value = serde_json::to_vec(report).expect("a report serializes");
        self.manifests
            .put(format!("{NODE_PREFIX}{node}"), value.into())
            .await
            .context("cannot publish what this node runs")?;
        Ok(())
    }

    /// What each node last published (stale for a node that is gone: the
    /// lease bucket says who is live).
    pub async fn reports(&self) -> anyhow::Result<BTreeMap<NodeId, NodeReport>> {
        let mut reports = BTreeMap::new();
        for key in self.keys(NODE_PREFIX).await? {
            let Some(entry) = self.manifests.entry(key.as_str()).await? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            if let Ok(report) = serde_json::from_slice::<NodeReport>(&entry.value) {
                reports.insert(report.node.clone(), report);
            }
        }
        Ok(reports)
    }

    /// Every pushed rule with its kept manifest revisions, by name.
    pub async fn histories(&self) -> anyhow::Result<BTreeMap<RuleName, History>> {
        let mut histories = BTreeMap::new();
        for key in self.keys(RULE_PREFIX).await? {
            let mut entries = self.manifests.history(key.as_str()).await?;
            let mut history = Vec::new();
            while let Some(entry) = entries.next().await {
                let entry = entry?;
                if let ManifestChange::Put {
                    revision, manifest, ..
                } = change_of(&entry)
                {
                    history.push((revision, manifest));
                }
            }
            let rule = RuleName::from(&key[RULE_PREFIX.len()..]);
            histories.insert(rule, history);
        }
        Ok(histories)
    }

    async fn keys(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = match self.manifests.keys().await {
            Ok(keys) => keys,
            Err(error) => bail!("cannot list the manifest bucket: {error}"),
        };
        let mut found = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.starts_with(prefix) {
                found.push(key);
            }
        }
        Ok(found)
    }
}

fn change_of(entry: &kv::Entry) -> ManifestChange {
    let rule = RuleName::from(entry.key.strip_prefix(RULE_PREFIX).unwrap_or(&entry.key));
    match entry.operation {
        kv::Operation::Put => ManifestChange::Put {
            rule,
            revision: entry.revision,
            manifest: serde_json::from_slice(&entry.value)
                .map_err(|error| format!("the manifest is not a Vigil manifest: {error}")),
        },
        kv::Operation::Delete | kv::Operation::Purge => ManifestChange::Deleted {
            rule,
            revision: entry.revision,
        },
    }
}
