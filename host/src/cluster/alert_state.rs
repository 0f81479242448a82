//! Alert state shared by the cluster: the alerts of each (rule, target)
//! live in the KV bucket `vigil_<name>_alerts` under one key,
//! `g.<rule>.<target>`, with the tick (the sample's timestamp) that last
//! changed them and the node that wrote it.
//!
//! **What it guarantees.** The node that owns a target loads the target's
//! alerts from the bucket before it evaluates its first sample after
//! gaining the partition (and again after any change of what it owns), so
//! a pending alert keeps its `active_since` across a handover and its
//! `for` ends when it would have on the node that started it. Every write
//! is refused, and the alert stage then announces nothing and takes the
//! bucket's state back, when:
//!
//! 1. this node no longer holds the target's partition (its lease deadline
//!    passed: a node paused past its lease wakes with samples in flight),
//!    or holds it again but the sample was polled before this tenure began
//!    (samples are stamped with the poll's start, see `sources`);
//! 2. the sample is older than the tick that last changed the group;
//! 3. the key moved on since this node read it (compare-and-set on the
//!    revision): another node wrote it meanwhile.
//!
//! So a target evaluated twice during a handover changes its alert state,
//! and announces the transition, once.
//!
//! **Why one key per (rule, target), not per alert.** A new owner must read
//! every alert of a target before it folds a sample in; with one key that
//! is one read and a transition is one compare-and-set, whereas keys per
//! alert would need a listing by prefix (which the client's KV API does
//! not offer) on every handover. Only a target's owner writes its key, so
//! a finer key would not let more writers through.
//!
//! **What it refuses to do.** Wait on NATS for long: every call is bounded
//! by [`CALL_TIMEOUT`], and the alert stage runs in the host's main loop,
//! so after a call fails (or while the client is disconnected) no call is
//! made for [`PAUSE`]: a NATS outage costs the loop one timeout per pause,
//! not one per sample. When NATS does not answer, the node still owns the
//! target until its lease deadline, so it keeps the change, announces it
//! (the notification waits in the local outbox) and reads the key again
//! before its next write: the owner's latest state is written once NATS
//! answers.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::nats::{AlertBucket, LeaseError};
use super::{NodeId, Ownership};
use crate::alerts::{TrackedAlert, Tracker};
use crate::names::{RuleName, TargetName};

/// The longest a read or write of the bucket may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long no call is tried after one failed.
pub const PAUSE: Duration = Duration::from_secs(5);

/// The key of (rule, target): `g.<rule>.<target>`, each name with every
/// byte other than a letter, digit, `_` or `-` written `=XX` (KV keys allow
/// few characters, and `.` separates the parts).
pub fn key(rule: &str, target: &str) -> String {
    let mut key = String::from("g.");
    escape(rule, &mut key);
    key.push('.');
    escape(target, &mut key);
    key
}

fn escape(name: &str, out: &mut String) {
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
}

/// A key's value.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// The timestamp of the sample that last changed the group.
    tick_ms: u64,
    /// The node that wrote it.
    node: NodeId,
    /// The group's alerts, pending and firing.
    alerts: Vec<TrackedAlert>,
}

/// What this node knows of a key.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// The revision last read or written; `None` when the key was absent.
    revision: Option<u64>,
    /// The tick it held.
    tick_ms: u64,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This node's lease on the target's partition has lapsed.
    NotOwner,
    /// The sample was polled under an earlier lease on the partition than
    /// the one this node holds now.
    EarlierLease,
    /// The sample is older than the one that last changed the group.
    OlderTick {
        /// The tick stored.
        stored_ms: u64,
        /// The sample's.
        sample_ms: u64,
    },
    /// The key changed since this node read it.
    Conflict,
}

impl Refusal {
    /// A short, stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NotOwner => "lease_lapsed",
            Refusal::EarlierLease => "earlier_lease",
            Refusal::OlderTick { .. } => "older_tick",
            Refusal::Conflict => "revision_moved",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotOwner => f.write_str("this node's lease on the target's partition lapsed"),
            Refusal::EarlierLease => f.write_str(
                "the sample was polled under an earlier lease on the target's partition than this node holds now",
            ),
            Refusal::OlderTick {
                stored_ms,
                sample_ms,
            } => write!(
                f,
                "the sample ({sample_ms}) is older than the one that last changed the alerts ({stored_ms})"
            ),
            Refusal::Conflict => {
                f.write_str("another node changed the alerts since this one read them")
            }
        }
    }
}

/// The cluster's alert state as this node reads and writes it. Owned by
/// the alert stage; not shared.
pub struct SharedAlerts {
    bucket: AlertBucket,
    ownership: Ownership,
    owned: watch::Receiver<u64>,
    node: NodeId,
    /// The keys read since the owned set last changed: bounded by the
    /// (rule, target) pairs this node evaluated meanwhile.
    known: HashMap<(RuleName, TargetName), Known>,
    /// The owned set's version `known` belongs to.
    epoch: u64,
    /// Writes refused since the start.
    refused: u64,
    /// Set when a call failed: no call until then.
    paused_until: Option<tokio::time::Instant>,
}

impl SharedAlerts {
    /// Reads and writes `bucket` as `node`, fenced by `ownership`.
    pub fn new(bucket: AlertBucket, ownership: Ownership, node: NodeId) -> Self {
        let owned = ownership.subscribe();
        let epoch = *owned.borrow();
        SharedAlerts {
            bucket,
            ownership,
            owned,
            node,
            known: HashMap::new(),
            epoch,
            refused: 0,
            paused_until: None,
        }
    }

    /// Whether to call NATS now: connected, and not in a pause after a
    /// failed call. The first call after a pause logs that NATS is back.
    fn reachable(&mut self) -> bool {
        if !self.bucket.connected() {
            self.unreachable("the connection to NATS is down");
            return false;
        }
        self.paused_until
            .is_none_or(|until| tokio::time::Instant::now() >= until)
    }

    /// A call failed: pause calls, logging it once per outage.
    fn unreachable(&mut self, error: &str) {
        let now = tokio::time::Instant::now();
        if self.paused_until.is_none_or(|until| now >= until) {
            if self.paused_until.is_none() {
                tracing::warn!(node = %self.node, error, pause = ?PAUSE, "Cannot reach the cluster's alert state; this node keeps its alert changes, announces them, and writes them when NATS answers.");
            }
            self.paused_until = Some(now + PAUSE);
        }
    }

    /// A call went through: the outage, if any, is over.
    fn reached(&mut self) {
        if self.paused_until.take().is_some() {
            tracing::info!(node = %self.node, "The cluster's alert state answers again.");
        }
    }

    /// Writes refused since the start.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Makes `tracker`'s group of (`rule`, `target`) the bucket's, unless
    /// this node read it since the owned set last changed. When NATS does
    /// not answer, the local group stands and the key is read again next
    /// time.
    pub async fn load(&mut self, tracker: &mut Tracker, rule: &RuleName, target: &TargetName) {
        let epoch = *self.owned.borrow();
        if epoch != self.epoch {
            self.known.clear();
            self.epoch = epoch;
        }
        let pair = (rule.clone(), target.clone());
        if self.known.contains_key(&pair) {
            return;
        }
        if !self.reachable() {
            return;
        }
        let key = key(rule, target);
        if let Ok((known, alerts)) = self.read(&key).await {
            tracker.replace_group(rule, target, alerts);
            self.known.insert(pair, known);
        }
    }

    /// Writes `tracker`'s group of (`rule`, `target`), changed by the
    /// sample taken at `tick_ms`. On a refusal the group is the bucket's
    /// again (or `before`, when the bucket cannot be read) and nothing
    /// must be announced.
    pub async fn commit(
        &mut self,
        tracker: &mut Tracker,
        rule: &RuleName,
        target: &TargetName,
        tick_ms: u64,
        before: Vec<TrackedAlert>,
    ) -> Result<(), Refusal> {
        let pair = (rule.clone(), target.clone());
        let result = self
            .write(&pair, tick_ms, tracker.group_snapshot(rule, target))
            .await;
        let Err(refusal) = result else {
            return Ok(());
        };
        self.refused += 1;
        tracing::warn!(
            rule = %rule,
            target = %target,
            reason = refusal.kind(),
            node = %self.node,
            refused = self.refused,
            "Stale alert state write refused: {refusal}; nothing is announced."
        );
        self.known.remove(&pair);
        let key = key(rule, target);
        let read = if self.reachable() {
            self.read(&key).await.ok()
        } else {
            None
        };
        match read {
            Some((known, alerts)) => {
                tracker.replace_group(rule, target, alerts);
                self.known.insert(pair, known);
            }
            None => tracker.replace_group(rule, target, before),
        }
        Err(refusal)
    }

    async fn write(
        &mut self,
        pair: &(RuleName, TargetName),
        tick_ms: u64,
        alerts: Vec<TrackedAlert>,
    ) -> Result<(), Refusal> {
        if !self.ownership.owns_target(&pair.1) {
            return Err(Refusal::NotOwner);
        }
        if !self.ownership.owned_target_since(&pair.1, tick_ms) {
            return Err(Refusal::EarlierLease);
        }
        if !self.reachable() {
            // Kept here and announced; written by the next change after
            // NATS answers (the key is read again first).
            self.known.remove(pair);
            return Ok(());
        }
        let key = key(&pair.0, &pair.1);
        let known = match self.known.get(pair) {
            Some(known) => *known,
            // Not read (NATS did not answer then): read it now.
            None => match self.read(&key).await {
                Ok((known, _)) => known,
                Err(_) => return Ok(()),
            },
        };
        if known.tick_ms > tick_ms {
            return Err(Refusal::OlderTick {
                stored_ms: known.tick_ms,
                sample_ms: tick_ms,
            });
        }
        let written = if alerts.is_empty() {
            match known.revision {
                None => Ok(None),
                Some(revision) => bounded(self.bucket.delete(&key, revision))
                    .await
                    .map(|()| None),
            }
        } else {
            let value = Stored {
                tick_ms,
                node: self.node.clone(),
                alerts,
            };
            let bytes = Bytes::from(serde_json::to_vec(&value).expect("alerts serialise"));
            bounded(self.bucket.put(&key, bytes, known.revision))
                .await
                .map(Some)
        };
        match written {
            Ok(revision) => {
                self.reached();
                // A delete leaves a marker at a new revision, which a
                // create accepts: absent is what a reader sees.
                self.known.insert(pair.clone(), Known { revision, tick_ms });
                Ok(())
            }
            Err(LeaseError::Conflict) => {
                self.reached();
                Err(Refusal::Conflict)
            }
            Err(LeaseError::Unavailable(error)) => {
                self.unreachable(&error);
                self.known.remove(pair);
                Ok(())
            }
        }
    }

    /// The key's state and alerts; a failure pauses calls.
    async fn read(&mut self, key: &str) -> Result<(Known, Vec<TrackedAlert>), LeaseError> {
        let found = bounded(self.bucket.get(key)).await;
        match &found {
            Ok(_) => self.reached(),
            Err(error) => self.unreachable(&error.to_string()),
        }
        match found? {
            None => Ok((
                Known {
                    revision: None,
                    tick_ms: 0,
                },
                Vec::new(),
            )),
            Some((revision, bytes)) => match serde_json::from_slice::<Stored>(&bytes) {
                Ok(stored) => Ok((
                    Known {
                        revision: Some(revision),
                        tick_ms: stored.tick_ms,
                    },
                    stored.alerts,
                )),
                Err(error) => {
                    // Written by a version that saved something else:
                    // overwritten by the next change.
                    tracing::warn!(key, %error, "Dropped an unreadable alert state from the cluster.");
                    Ok((
                        Known {
                            revision: Some(revision),
                            tick_ms: 0,
                        },
                        Vec::new(),
                    ))
                }
            },
        }
    }
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, LeaseError>>,
) -> Result<T, LeaseError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(LeaseError::Unavailable(
                "NATS did not answer in time".into(),
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_what_kv_keys_do_not_allow() {
        assert_eq!(key("threshold", "web-01"), "g.threshold.web-01");
        assert_eq!(key("a.b", "host:9100/x y"), "g.a=2Eb.host=3A9100=2Fx=20y");
        // Distinct pairs never share a key.
        assert_ne!(key("a.b", "c"), key("a", "b.c"));
    }
}
