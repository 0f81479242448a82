//! The lease keeper: one task per node that holds this node's share of the
//! partitions and tells the pollers what it holds ([`Ownership`]).
//!
//! Every `renew_every` it:
//!
//! 1. drops every lease whose deadline passed (the renewals failed for a
//!    whole TTL: NATS was unreachable or too slow; until then a lost
//!    connection is not a lost lease, and polling goes on);
//! 2. writes its membership key (`node.<id>`, which lives one TTL);
//! 3. renews each lease with a compare-and-set on its revision: success
//!    moves the deadline to *the send time of that renewal* + TTL - margin,
//!    so no clock of another machine is read; a revision conflict means
//!    the lease expired and someone else took it, and it is dropped at once;
//! 4. lists the bucket's live keys and asks [`plan`](super::plan) what to
//!    do: release what it holds above its fair share (stop polling first,
//!    then delete the lease with the revision it holds), or create leases
//!    for free partitions, up to the share.
//!
//! **A write that timed out may still land.** The client buffers what it
//! sends while the connection is down and sends it once it is back, so a
//! renewal (or a create) given up on here can reach the server later and
//! move the key's revision. The next compare-and-set then conflicts with a
//! write of this very node. Before dropping a lease on a conflict, and for
//! every partition whose create timed out, the keeper therefore reads the
//! key: if it names this node, the keeper renews it at the revision it
//! found (the deadline moves only when that renewal is acknowledged).
//! Without this, a NATS restart of a second made every node drop every
//! lease and left every target unpolled for a whole TTL.
//!
//! The deadline is earlier than the server's expiry of the same write,
//! which counts `max_age` from when the server stored it (after the send),
//! by a safety margin of a tenth of the TTL for clock rate differences and
//! scheduling. Pollers check the deadline before every poll, so a node that
//! was paused wakes up owning nothing. On shutdown the keeper stops
//! polling, deletes its leases and its membership at once, so the others
//! take its partitions in their next round instead of a TTL later.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::nats::{LeaseBucket, LeaseError};
use super::{NodeId, Ownership, Partition, Partitions, plan};
use crate::config::ClusterSettings;

/// Leases created or renewed at once.
const IN_FLIGHT: usize = 64;
/// The most a release at shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// The running lease keeper.
pub struct Leases {
    ownership: Ownership,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Leases {
    /// Starts keeping this node's share of the partitions of `bucket`.
    pub fn start(bucket: LeaseBucket, settings: &ClusterSettings) -> Leases {
        let ownership = Ownership::new(settings.partitions);
        let keeper = Keeper {
            bucket,
            node: settings.node.clone(),
            partitions: settings.partitions,
            ttl: settings.lease_ttl,
            renew_every: settings.renew_every,
            margin: settings.lease_ttl / 10,
            ownership: ownership.clone(),
            held: BTreeMap::new(),
            doubtful: BTreeSet::new(),
        };
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keeper.run(stopped));
        Leases {
            ownership,
            stop,
            task,
        }
    }

    /// What this node may poll.
    pub fn ownership(&self) -> Ownership {
        self.ownership.clone()
    }

    /// Stops keeping: polling of every partition stops now, and the leases
    /// and the membership are deleted (within a few seconds; whatever is
    /// not deleted then expires with its TTL).
    pub async fn release(self) {
        for partition in self.ownership.owned() {
            self.ownership.revoke(partition);
        }
        let _ = self.stop.send(());
        if tokio::time::timeout(RELEASE_TIMEOUT, self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "Releasing the partition leases took too long; the rest expire with their TTL."
            );
        }
    }
}

struct Held {
    revision: u64,
    deadline: Instant,
}

struct Keeper {
    bucket: LeaseBucket,
    node: NodeId,
    partitions: Partitions,
    ttl: Duration,
    renew_every: Duration,
    margin: Duration,
    ownership: Ownership,
    held: BTreeMap<Partition, Held>,
    /// Partitions whose create timed out: perhaps taken by this node.
    doubtful: BTreeSet<Partition>,
}

impl Keeper {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        tracing::info!(node = %self.node, partitions = self.partitions.count(), lease_ttl = %humantime::format_duration(self.ttl), "Joined the cluster.");
        loop {
            let started = Instant::now();
            tokio::select! {
                _ = &mut stop => break,
                () = self.round() => {}
            }
            let next = self
                .held
                .values()
                .map(|held| held.deadline)
                .fold(started + self.renew_every, Instant::min);
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep_until(next.into()) => {}
            }
        }
        self.release_all().await;
    }

    /// Bounds one call to NATS: a round never waits longer than its period
    /// on one.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, LeaseError>>,
    ) -> Result<T, LeaseError> {
        tokio::time::timeout(self.renew_every, call)
            .await
            .unwrap_or_else(|_| Err(LeaseError::Unavailable("timed out".into())))
    }

    async fn round(&mut self) {
        self.lapse();
        if let Err(error) = self.bounded(self.bucket.join(&self.node)).await {
            tracing::warn!(node = %self.node, %error, "Cannot renew this node's cluster membership; leases hold until their deadline.");
        }
        self.renew().await;
        self.settle_doubts().await;
        let scan = match self.bounded(self.bucket.scan()).await {
            Ok(scan) => scan,
            Err(error) => {
                tracing::warn!(%error, "Cannot list the partition leases; trying again next round.");
                return;
            }
        };
        let held: BTreeSet<Partition> = self.held.keys().copied().collect();
        let plan = plan(
            self.partitions,
            &self.node,
            &scan.members,
            &held,
            &scan.taken,
        );
        let before = self.held.len();
        for partition in &plan.release {
            self.release(*partition).await;
        }
        self.take(&plan.take).await;
        if self.held.len() != before || !plan.release.is_empty() {
            tracing::info!(
                node = %self.node,
                held = self.held.len(),
                released = plan.release.len(),
                nodes = scan.members.len(),
                "Partitions changed hands."
            );
        }
    }

    /// Drops the leases whose deadline passed.
    fn lapse(&mut self) {
        let now = Instant::now();
        let lapsed: Vec<Partition> = self
            .held
            .iter()
            .filter(|(_, held)| held.deadline <= now)
            .map(|(partition, _)| *partition)
            .collect();
        for partition in &lapsed {
            self.ownership.revoke(*partition);
            self.held.remove(partition);
        }
        if !lapsed.is_empty() {
            tracing::warn!(node = %self.node, lapsed = lapsed.len(), "Partition leases lapsed unrenewed; their targets are no longer polled here.");
        }
    }

    async fn renew(&mut self) {
        let calls: Vec<(Partition, u64)> = self
            .held
            .iter()
            .map(|(partition, held)| (*partition, held.revision))
            .collect();
        let this = &*self;
        let results: Vec<(Partition, Instant, Result<u64, LeaseError>)> =
            futures_util::stream::iter(calls)
                .map(|(partition, revision)| async move {
                    let sent = Instant::now();
                    let result = this
                        .bounded(this.bucket.renew(partition, &this.node, revision))
                        .await;
                    (partition, sent, result)
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
        let mut lost = 0;
        for (partition, sent, result) in results {
            match result {
                Ok(revision) => self.hold(partition, sent, revision),
                // Perhaps an earlier renewal of ours that timed out here
                // and landed later.
                Err(LeaseError::Conflict) if self.reclaim(partition).await => {}
                Err(LeaseError::Conflict) => {
                    self.ownership.revoke(partition);
                    self.held.remove(&partition);
                    lost += 1;
                }
                Err(LeaseError::Unavailable(error)) => {
                    tracing::debug!(%partition, %error, "A lease renewal failed; it holds until its deadline.");
                }
            }
        }
        if lost > 0 {
            tracing::warn!(node = %self.node, lost, "Partition leases were taken over by another node; their targets are no longer polled here.");
        }
    }

    /// Stops polling `partition`, then deletes its lease.
    async fn release(&mut self, partition: Partition) {
        self.ownership.revoke(partition);
        if let Some(held) = self.held.remove(&partition)
            && let Err(error) = self
                .bounded(self.bucket.release(partition, held.revision))
                .await
        {
            tracing::debug!(%partition, %error, "Cannot delete a released lease; it expires with its TTL.");
        }
    }

    async fn take(&mut self, free: &[Partition]) {
        let this = &*self;
        let results: Vec<(Partition, Instant, Result<u64, LeaseError>)> =
            futures_util::stream::iter(free.iter().copied())
                .map(|partition| async move {
                    let sent = Instant::now();
                    let result = this.bounded(this.bucket.take(partition, &this.node)).await;
                    (partition, sent, result)
                })
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
        for (partition, sent, result) in results {
            match result {
                Ok(revision) => self.hold(partition, sent, revision),
                Err(LeaseError::Unavailable(_)) => {
                    self.doubtful.insert(partition);
                }
                Err(LeaseError::Conflict) => {}
            }
        }
    }

    /// Holds `partition` at `revision`, polled until the deadline that a
    /// write sent at `sent` gives.
    fn hold(&mut self, partition: Partition, sent: Instant, revision: u64) {
        let deadline = sent + self.ttl - self.margin;
        self.ownership.grant(partition, deadline);
        self.held.insert(partition, Held { revision, deadline });
    }

    /// If the lease of `partition` names this node (a write of ours that
    /// landed after it timed out here), renews it at the revision found:
    /// whether this node still holds it. If NATS cannot tell, a held lease
    /// is kept until its deadline, as for any renewal that fails (before
    /// that deadline the server has not let it expire, so no other node
    /// can have taken it), and a doubtful create stays in doubt.
    async fn reclaim(&mut self, partition: Partition) -> bool {
        let held = self.held.contains_key(&partition);
        let (node, revision) = match self.bounded(self.bucket.holder(partition)).await {
            Ok(Some(found)) => found,
            Ok(None) => return false,
            Err(_) => {
                if !held {
                    self.doubtful.insert(partition);
                }
                return held;
            }
        };
        if node != self.node {
            return false;
        }
        let sent = Instant::now();
        match self
            .bounded(self.bucket.renew(partition, &self.node, revision))
            .await
        {
            Ok(revision) => {
                self.hold(partition, sent, revision);
                tracing::debug!(%partition, "A lease write that had timed out had landed; the lease is kept.");
                true
            }
            Err(LeaseError::Unavailable(_)) => {
                match self.held.get_mut(&partition) {
                    Some(held) => held.revision = revision,
                    None => {
                        self.doubtful.insert(partition);
                    }
                }
                held
            }
            Err(LeaseError::Conflict) => false,
        }
    }

    /// The partitions whose create timed out: those that name this node
    /// are held (renewed), the others forgotten.
    async fn settle_doubts(&mut self) {
        for partition in std::mem::take(&mut self.doubtful) {
            if !self.held.contains_key(&partition) {
                self.reclaim(partition).await;
            }
        }
    }

    /// At shutdown: every lease and the membership deleted, concurrently.
    async fn release_all(mut self) {
        let held = std::mem::take(&mut self.held);
        for partition in held.keys() {
            self.ownership.revoke(*partition);
        }
        let count = held.len();
        let this = &self;
        futures_util::stream::iter(held)
            .map(|(partition, held)| async move {
                let _ = this
                    .bounded(this.bucket.release(partition, held.revision))
                    .await;
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<()>>()
            .await;
        let _ = self.bounded(self.bucket.leave(&self.node)).await;
        tracing::info!(node = %self.node, released = count, "Left the cluster; partition leases released.");
    }
}
