//! Cluster mode: several Vigil nodes share the targets through NATS
//! JetStream, each polling the targets of the partitions it holds a lease
//! for. Without `[cluster]` none of this runs.
//!
//! ```text
//! config [cluster] ─▶ nats::Nats::connect (refuses servers < 2.11)
//!                      └▶ nats::LeaseBucket (vigil_<name>_leases; max_age = lease_ttl)
//!                           ▲ create / CAS renew / delete     ▲ membership key per node
//!                     lease::Leases (one task) ──Ownership (deadline per partition, watch)──▶ sources::Pollers
//! target name ─xxh3 mod P─▶ Partition (partition.rs)                    polls a target only while its
//!                                                                       partition's deadline is ahead
//! ```
//!
//! | module | guarantees | refuses to |
//! |---|---|---|
//! | `partition` | a target's partition is `xxh3_64(name) mod P`, the same on every node and version; shares differ by at most one and add up to `P`; a node releases only what it holds above its share and takes only free partitions (pure, no I/O) | move a target between partitions when nodes come and go |
//! | `ownership` | a partition is polled only before the deadline of its last acknowledged renewal (checked before every poll, lock-free); each change of the owned set is announced | let a node that was paused, or cut off from NATS for a whole TTL, poll on |
//! | `lease` | one task keeps the leases: renewal by compare-and-set on the revision (a conflict drops the lease at once), membership per node, release above the share, take free ones up to it, release everything at shutdown; every NATS call bounded by `renew_every` | treat a lost connection as a lost lease before its deadline |
//! | `nats` | the only code that touches `async-nats`; a server older than 2.11 and a bucket made for another partition count or TTL are refused with the fix | start on a cluster whose nodes disagree about `partitions` |
//! | `status` | `vigil cluster status`: nodes, partitions per node and lease ages, read straight from the bucket | need a running node on this machine |
//!
//! Later: alert state per key (compare-and-set guarded by the sample's
//! tick), a work-queue stream for notifications, remediation claims and
//! pushed rules get their buckets in `nats` and a module each here.

mod lease;
pub mod nats;
mod ownership;
mod partition;
pub mod rule_store;
pub mod rule_sync;
pub mod rules;
pub mod status;

pub use lease::Leases;
pub use ownership::{Claim, Ownership};
pub use partition::{Partition, Partitions, Plan, fair_share, plan};

pub use crate::names::{ClusterName, NodeId};
