//! What the lease keeper tells the pollers: which partitions this node may
//! poll, and until when.
//!
//! Each partition has a deadline (the send time of its last acknowledged
//! renewal, plus the TTL, less a safety margin), kept as an atomic so a
//! polling task can check it right before each poll without a lock: a node
//! paused past its lease (SIGSTOP, a long GC-like stall, a suspended VM)
//! wakes with every deadline behind it and polls nothing, whatever order its
//! timers fire in. The set changing (a partition gained, released or lost)
//! is announced on a `watch`, on which `sources::Pollers` starts and stops
//! the targets' tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::watch;

use super::{Partition, Partitions};

/// The partitions this node owns, shared by the lease keeper (who grants
/// and revokes) and the pollers (who check). Cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    inner: Arc<Inner>,
}

struct Inner {
    partitions: Partitions,
    /// The instant deadlines count from.
    epoch: Instant,
    /// Per partition: its deadline in microseconds after `epoch`; 0 when
    /// not owned.
    deadlines: Box<[AtomicU64]>,
    /// Per partition: when its current tenure began (Unix ms, the clock
    /// samples are stamped with), set when it is granted after not being
    /// owned (never held, revoked, or its deadline passed).
    since_ms: Box<[AtomicU64]>,
    /// Bumped whenever a partition is granted or taken away.
    changed: watch::Sender<u64>,
}

impl Ownership {
    /// Owning nothing yet.
    pub fn new(partitions: Partitions) -> Self {
        let (changed, _) = watch::channel(0);
        Ownership {
            inner: Arc::new(Inner {
                partitions,
                epoch: Instant::now(),
                deadlines: partitions.all().map(|_| AtomicU64::new(0)).collect(),
                since_ms: partitions.all().map(|_| AtomicU64::new(0)).collect(),
                changed,
            }),
        }
    }

    /// How many partitions targets hash into.
    pub fn partitions(&self) -> Partitions {
        self.inner.partitions
    }

    /// Whether this node may poll partition `partition` now: it holds its
    /// lease and the deadline has not passed.
    pub fn owns(&self, partition: Partition) -> bool {
        let deadline = self.inner.deadlines[partition.0 as usize].load(Ordering::Acquire);
        deadline > self.micros(Instant::now())
    }

    /// Whether this node may poll target `name` now.
    pub fn owns_target(&self, name: &str) -> bool {
        self.owns(self.inner.partitions.of(name))
    }

    /// Whether this node owns target `name` now and has owned it without a
    /// break since `at_ms` (Unix ms): what a sample taken at `at_ms` needs
    /// for its effects to be written. A sample polled under an earlier
    /// tenure (before a pause that let another node in, say) fails this
    /// even when the partition came back.
    pub fn owned_target_since(&self, name: &str, at_ms: u64) -> bool {
        let partition = self.inner.partitions.of(name);
        self.owns(partition)
            && self.inner.since_ms[partition.0 as usize].load(Ordering::Acquire) <= at_ms
    }

    /// The partitions owned now.
    pub fn owned(&self) -> Vec<Partition> {
        self.inner
            .partitions
            .all()
            .filter(|partition| self.owns(*partition))
            .collect()
    }

    /// Owns `partition` until `deadline` (a renewal moves it later).
    pub fn grant(&self, partition: Partition, deadline: Instant) {
        let index = partition.0 as usize;
        let now = self.micros(Instant::now());
        // A new tenure starts now unless the partition is held now: its
        // start is set before the deadline that makes it owned is.
        if self.inner.deadlines[index].load(Ordering::Acquire) <= now {
            self.inner.since_ms[index].store(crate::clock::now_ms(), Ordering::Release);
        }
        let micros = self.micros(deadline).max(1);
        let old = self.inner.deadlines[index].swap(micros, Ordering::AcqRel);
        if old == 0 {
            self.inner.changed.send_modify(|version| *version += 1);
        }
    }

    /// No longer owns `partition`, from now on.
    pub fn revoke(&self, partition: Partition) {
        let old = self.inner.deadlines[partition.0 as usize].swap(0, Ordering::AcqRel);
        if old != 0 {
            self.inner.changed.send_modify(|version| *version += 1);
        }
    }

    /// Announces each change of the owned set (a version number).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.inner.epoch).as_micros() as u64 + 1
    }
}

/// A target's claim to be polled: the check a polling task makes before
/// each poll.
#[derive(Clone)]
pub struct Claim {
    ownership: Ownership,
    partition: Partition,
}

impl Claim {
    /// The claim of target `name`.
    pub fn new(ownership: &Ownership, name: &str) -> Self {
        Claim {
            partition: ownership.partitions().of(name),
            ownership: ownership.clone(),
        }
    }

    /// Whether the target may be polled now.
    pub fn holds(&self) -> bool {
        self.ownership.owns(self.partition)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_grant_holds_until_its_deadline_and_changes_are_announced() {
        let ownership = Ownership::new(Partitions::new(4));
        let mut changes = ownership.subscribe();
        assert!(ownership.owned().is_empty());
        ownership.grant(Partition(1), Instant::now() + Duration::from_secs(60));
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert_eq!(ownership.owned(), [Partition(1)]);
        // A renewal is no change of the set.
        ownership.grant(Partition(1), Instant::now() + Duration::from_secs(90));
        assert!(!changes.has_changed().unwrap());
        ownership.revoke(Partition(1));
        assert!(changes.has_changed().unwrap());
        assert!(!ownership.owns(Partition(1)));
        // A deadline in the past owns nothing.
        ownership.grant(Partition(2), Instant::now() - Duration::from_millis(1));
        assert!(!ownership.owns(Partition(2)));
        ownership.grant(Partition(3), Instant::now() + Duration::from_millis(30));
        let claim = Claim {
            ownership: ownership.clone(),
            partition: Partition(3),
        };
        assert!(claim.holds());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!claim.holds());
    }

    #[test]
    fn a_sample_from_before_the_current_tenure_is_not_covered_by_it() {
        let ownership = Ownership::new(Partitions::new(1));
        let before = crate::clock::now_ms();
        std::thread::sleep(Duration::from_millis(5));
        ownership.grant(Partition(0), Instant::now() + Duration::from_secs(60));
        assert!(!ownership.owned_target_since("t", before));
        let during = crate::clock::now_ms();
        assert!(ownership.owned_target_since("t", during));
        // A renewal keeps the tenure.
        ownership.grant(Partition(0), Instant::now() + Duration::from_secs(90));
        assert!(ownership.owned_target_since("t", during));
        // Lapsed, then granted again: a new tenure, which a sample taken
        // under the old one does not belong to.
        ownership.grant(Partition(0), Instant::now() - Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        ownership.grant(Partition(0), Instant::now() + Duration::from_secs(60));
        assert!(!ownership.owned_target_since("t", during));
        ownership.revoke(Partition(0));
        assert!(!ownership.owned_target_since("t", crate::clock::now_ms()));
    }
}
