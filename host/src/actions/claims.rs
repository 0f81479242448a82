//! Claims: in a cluster, a run is claimed in a store every node shares
//! before it starts, so that remediation fails closed.
//!
//! When a node dies in the middle of an action, its targets move to another
//! node, whose rule asks for the same action again with the next sample. The
//! old node's audit log is on a machine that is gone; nobody knows whether
//! the action did its work, half of it, or nothing. Running it again could
//! be exactly wrong (a second restart, a second failover), so the new node
//! finds the claim the old one left and reports **outcome unknown** instead,
//! every time, until an operator looks and releases it
//! (`vigil cluster claims release`). A claim whose run finished is simply
//! taken over by the next run.
//!
//! | guarantees | refuses to |
//! |---|---|
//! | one claim per (action, target): the first writer creates it, a later run takes over only a *finished* claim at the revision it read | run an action whose last claimed run never reported an outcome |
//! | a store that cannot be reached refuses the run (`claim-unavailable`) | run without a claim |
//! | a finished run settles its claim at the revision it created; a settle that fails leaves the claim `running`, which is the safe side | mark someone else's claim finished |
//!
//! This module holds the pure part (keys, values, what a found claim
//! means); the store is `cluster::claims` on a NATS KV bucket.

use serde::{Deserialize, Serialize};

use super::gate::Status;
use crate::names::NodeId;

/// The store's key for runs of `action` on `target`: `run.` and 32 hex
/// digits of a sha256, since target names may hold characters a KV key
/// cannot. The value repeats both in clear.
pub fn key(action: &str, target: &str) -> String {
    // The action's length first, so no two (action, target) pairs hash the
    // same text.
    let digest = crate::hash::sha256_hex(format!("{}:{action}{target}", action.len()).as_bytes());
    format!("run.{}", &digest[..32])
}

/// What a claim says: who runs (or ran) which action on which target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The action.
    pub action: String,
    /// The target it acts on.
    pub target: String,
    /// The rule that asked.
    pub rule: String,
    /// The node that claimed it.
    pub node: NodeId,
    /// When it was claimed, ms since the Unix epoch (the claiming node's clock).
    pub claimed_ms: u64,
    /// `None` while it runs; how it ended once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
}

/// How a claimed run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// `succeeded`, `failed`, `timed-out` (see [`Status::as_str`]).
    pub status: String,
    /// When, ms since the Unix epoch.
    pub finished_ms: u64,
}

impl Claim {
    /// A claim for a run starting now.
    pub fn running(action: &str, target: &str, rule: &str, node: &NodeId, now_ms: u64) -> Self {
        Claim {
            action: action.to_string(),
            target: target.to_string(),
            rule: rule.to_string(),
            node: node.clone(),
            claimed_ms: now_ms,
            finished: None,
        }
    }

    /// The same claim, settled with `status` at `now_ms`.
    pub fn settled(&self, status: Status, now_ms: u64) -> Self {
        Claim {
            finished: Some(Finished {
                status: status.as_str().to_string(),
                finished_ms: now_ms,
            }),
            ..self.clone()
        }
    }
}

/// What trying to claim a run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The claim is ours at this revision: run, then settle at it.
    Ours(u64),
    /// A claim that never finished: its run's outcome is unknown.
    Unknown(Claim),
    /// Another node claimed it between our read and our write.
    Taken,
}

/// The store could not be asked: the run is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClaimError(pub String);

/// Where claims are kept (a NATS KV bucket in a cluster).
#[async_trait::async_trait]
pub trait ClaimStore: Send + Sync {
    /// Claims the run `claim` describes: creates its key, or takes over a
    /// finished claim at the revision it was read at.
    async fn claim(&self, claim: &Claim) -> Result<Claimed, ClaimError>;

    /// Marks the claim held at `revision` as finished (`claim` says how).
    async fn settle(&self, claim: &Claim, revision: u64) -> Result<(), ClaimError>;
}

/// What a claim found under the key means for a new run: `None` when it
/// finished and may be taken over, [`Claimed::Unknown`] when it never did
/// (whoever wrote it).
pub fn blocking(existing: Claim) -> Option<Claimed> {
    match existing.finished {
        Some(_) => None,
        None => Some(Claimed::Unknown(existing)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_kv_safe_and_differ_by_action_and_target() {
        let key = key("restart", "web 01/ä");
        assert_eq!(key.len(), 4 + 32);
        assert!(
            key[4..].bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{key}"
        );
        assert_eq!(key, super::key("restart", "web 01/ä"));
        assert_ne!(key, super::key("restart", "web 02/ä"));
        assert_ne!(super::key("a", "b\0c"), super::key("a\0b", "c"));
    }

    #[test]
    fn a_running_claim_is_an_unknown_outcome_and_a_finished_one_can_be_taken() {
        let running = Claim::running("restart", "web", "threshold", &"a".into(), 1_000);
        assert_eq!(
            blocking(running.clone()),
            Some(Claimed::Unknown(running.clone()))
        );
        let done = running.settled(Status::Succeeded, 2_000);
        assert_eq!(
            done.finished,
            Some(Finished {
                status: "succeeded".into(),
                finished_ms: 2_000
            })
        );
        assert_eq!(blocking(done.clone()), None);
        let text = serde_json::to_string(&running).unwrap();
        assert!(!text.contains("finished"), "{text}");
        assert_eq!(serde_json::from_str::<Claim>(&text).unwrap(), running);
    }
}
