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
pub mod status;

use std::sync::Arc;

pub use lease::Leases;
pub use ownership::{Claim, Ownership};
pub use partition::{Partition, Partitions, Plan, fair_share, plan};

/// Defines a name type over an `Arc<str>`, checked where it is declared
/// (the config).
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                $name(text.into())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                $name(text.into())
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0.to_string()
            }
        }
    };
}

id_type! {
    /// A node's id in its cluster (`[cluster] node`): letters, digits, `_`
    /// and `-`, since it is a key in the lease bucket.
    NodeId
}

id_type! {
    /// A cluster's name (`[cluster] name`), which names its buckets.
    ClusterName
}
