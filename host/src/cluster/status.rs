//! `vigil cluster status`: who is in the cluster and what each node holds,
//! read straight from the lease bucket (no node needs to run here).
//!
//! A lease's age is the time since the server stored its last renewal, by
//! this machine's clock against the server's: a few milliseconds off when
//! the clocks are synchronised, and only shown, never acted on.

use std::collections::BTreeMap;

use serde::Serialize;

use super::nats::{Key, Nats, lease_bucket};
use super::rule_store::RuleStore;
use super::rules::RunningRule;
use super::{NodeId, Partition};
use crate::config::ClusterSettings;
use crate::names::RuleName;

/// What the bucket says.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub cluster: String,
    /// The lease bucket.
    pub bucket: String,
    /// The server's version.
    pub server_version: String,
    /// How many partitions targets hash into.
    pub partitions: u32,
    /// Each live node, by id.
    pub nodes: Vec<NodeStatus>,
    /// Partitions nobody holds a live lease for.
    pub unowned: Vec<u32>,
}

/// One node.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Its id.
    pub node: NodeId,
    /// Whether its membership key is live (a node whose membership lapsed
    /// can still hold leases until they expire).
    pub member: bool,
    /// Time since it last wrote its membership, in ms.
    pub membership_age_ms: Option<i128>,
    /// The partitions it holds, with each lease's age in ms.
    pub leases: BTreeMap<u32, i128>,
    /// The pushed rules it runs (manifest revision and digest), as it
    /// last published them.
    pub rules: BTreeMap<RuleName, RunningRule>,
}

/// Reads the cluster's status.
pub async fn read(settings: &ClusterSettings) -> anyhow::Result<ClusterStatus> {
    let nats = Nats::connect(settings).await?;
    let bucket = nats.leases(settings, false).await?;
    let now_ms = i128::from(crate::clock::now_ms());
    let mut nodes: BTreeMap<NodeId, NodeStatus> = BTreeMap::new();
    let mut owned = vec![false; settings.partitions.count() as usize];
    for record in bucket.records().await? {
        let age = (now_ms - record.written_ms).max(0);
        let (node, partition) = match record.key {
            Key::Member(node) => (node, None),
            Key::Lease(partition) => match record.node {
                Some(node) => (node, Some(partition)),
                None => continue,
            },
        };
        let entry = nodes.entry(node.clone()).or_insert_with(|| NodeStatus {
            node,
            member: false,
            membership_age_ms: None,
            leases: BTreeMap::new(),
            rules: BTreeMap::new(),
        });
        match partition {
            None => {
                entry.member = true;
                entry.membership_age_ms = Some(age);
            }
            Some(Partition(number)) => {
                owned[number as usize] = true;
                entry.leases.insert(number, age);
            }
        }
    }
    add_rules(&nats, settings, &mut nodes).await?;
    Ok(ClusterStatus {
        cluster: settings.name.to_string(),
        bucket: lease_bucket(settings),
        server_version: nats.server_version(),
        partitions: settings.partitions.count(),
        nodes: nodes.into_values().collect(),
        unowned: (0..settings.partitions.count())
            .filter(|number| !owned[*number as usize])
            .collect(),
    })
}

/// Adds what each node (live or holding leases) last said it runs of the
/// pushed rules.
async fn add_rules(
    nats: &Nats,
    settings: &ClusterSettings,
    nodes: &mut BTreeMap<NodeId, NodeStatus>,
) -> anyhow::Result<()> {
    let reports = RuleStore::open(nats, settings).await?.reports().await?;
    for (node, report) in reports {
        if let Some(status) = nodes.get_mut(&node) {
            status.rules = report.rules;
        }
    }
    Ok(())
}

/// Prints the status for people.
pub fn print(status: &ClusterStatus, out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "cluster `{}` (bucket `{}`, nats-server {}): {} nodes, {} of {} partitions owned",
        status.cluster,
        status.bucket,
        status.server_version,
        status.nodes.len(),
        status.partitions as usize - status.unowned.len(),
        status.partitions
    )?;
    writeln!(
        out,
        "{:<32} {:>10} {:>14} {:>14}",
        "NODE", "PARTITIONS", "OLDEST LEASE", "MEMBERSHIP"
    )?;
    for node in &status.nodes {
        let oldest = node
            .leases
            .values()
            .max()
            .map_or("-".into(), |ms| format!("{:.1}s", *ms as f64 / 1000.0));
        let membership = match node.membership_age_ms {
            Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
            None => "lapsed".into(),
        };
        writeln!(
            out,
            "{:<32} {:>10} {:>14} {:>14}",
            node.node,
            node.leases.len(),
            oldest,
            membership
        )?;
        for (rule, running) in &node.rules {
            let serving = match running.revision {
                0 => "none".to_string(),
                revision => format!(
                    "revision {revision} ({})",
                    &running.digest[..running.digest.len().min(12)]
                ),
            };
            let refused = match &running.refused {
                Some((revision, _)) => format!(", revision {revision} refused"),
                None => String::new(),
            };
            writeln!(out, "  rule {rule}: {serving}{refused}")?;
        }
    }
    if !status.unowned.is_empty() {
        writeln!(out, "unowned partitions: {:?}", status.unowned)?;
    }
    Ok(())
}
