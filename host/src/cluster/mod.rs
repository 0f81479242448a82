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
//! | `nats::ClaimBucket` | remediation claims (`actions::claims`): create-only per (action, target), taken over only when finished, settled at the revision created; every call bounded (5 s) | let a run go ahead unclaimed, or take over a claim that never finished |
//! | `status` | `vigil cluster status`: nodes, partitions per node and lease ages, and the pushed rules each node runs (revision, digest, last refusal), read straight from the buckets | need a running node on this machine |
//! | `rules` | `vigil rules push/list/disable/enable`; what a manifest holds; a node's spec for a pushed rule has its owner's trust, targets and limits (the operator's `[trust]`, or the tenant's file and grant); bytes are refused unless their sha256 is the manifest's digest (pure, no I/O but the commands) | let a push replace a rule the config declares, or a tenant's rule skip its signature |
//! | `rule_store` | the two buckets of pushed rules (beside `nats`, the only other code touching `async-nats`): components in the object store `vigil_<name>_rules` by sha256, manifests in the KV bucket `vigil_<name>_manifests` under `rule.<name>` (16 revisions kept), each node's report under `node.<id>` | read a component larger than 64 MiB |
//! | `rule_sync` | one task per node: watches `rule.>`, fetches, checks the digest and trust, compiles off the async workers and sends `Change::Install` (the reloader's validate-then-swap path); the manifest revision is the rule's version; refusals are logged, on the status board and in the report | swap in a version that failed any check: the one serving stays |
//! | `alert_state` | the alerts of a (rule, target) in `vigil_<name>_alerts`, key `g.<rule>.<target>`: read before a new owner's first sample; written only by the partition's lease holder, by compare-and-set on the revision, never with an older tick; a refused write announces nothing | let a node paused past its lease, or evaluating an old sample, change or announce an alert |
//! | `notify` | transitions published to the work-queue stream `vigil_<name>_notifications` from a local durable outbox, message id `<fingerprint>:<status>:<active_since_ms>`; every node's notifier acks after its sinks answered 2xx (at-least-once, same `Idempotency-Key` on every attempt) | lose a transition while NATS is away, or ack before delivery |
//!
//! ```text
//! vigil rules push ─put object (sha256)─▶ vigil_<name>_rules
//!                  └put manifest────────▶ vigil_<name>_manifests rule.<name> (revision R)
//!                                            │ watch (every node)
//!      rule_sync: fetch ─▶ sha256 == digest? ─▶ trust ─▶ compile (cache) ─▶ Change::Install (version R) ─▶ router swap
//!                 └──────▶ put node.<id> {rule: revision, digest, refused}  ─▶ vigil cluster status
//! ```
//!
//! ```text
//! alerts::Alerting::evaluated_shared ─load/commit─▶ alert_state::SharedAlerts ─▶ nats::AlertBucket
//!        └ events ─▶ sinks::Delivery: outbox "nats" ─notify::StreamSink─▶ nats::NotificationStream
//! NotificationStream ─consumer `notifier`─▶ notify (one per node) ─▶ webhook / Alertmanager ─2xx─▶ ack
//! ```

pub mod alert_state;
mod lease;
pub mod nats;
pub mod notify;
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
