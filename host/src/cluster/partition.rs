//! Targets to partitions, and partitions to nodes: pure functions, no I/O.
//!
//! A target belongs to partition `xxh3_64(name) mod P`. xxh3 is a
//! specified algorithm with fixed output (seed 0), so every node, of every
//! version, puts a target in the same partition; the tests pin a few values
//! so a change of hash cannot slip in. `P` is fixed for the life of a
//! cluster (it is written into the lease bucket), so adding or removing a
//! node never moves a target between partitions: only partitions move
//! between nodes, about P/N of them per node that comes or goes, because a
//! node only ever releases what it holds above its share and takes free
//! partitions ([`plan`]).

use std::collections::BTreeSet;

use xxhash_rust::xxh3::xxh3_64;

use super::NodeId;

/// How many partitions targets hash into: fixed for a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u32);

/// One partition, `0..P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub u32);

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Partitions {
    /// `count` partitions; at least one.
    pub fn new(count: u32) -> Self {
        Partitions(count.max(1))
    }

    /// How many.
    pub fn count(self) -> u32 {
        self.0
    }

    /// Every partition, in order.
    pub fn all(self) -> impl Iterator<Item = Partition> {
        (0..self.0).map(Partition)
    }

    /// The partition target `name` belongs to.
    pub fn of(self, name: &str) -> Partition {
        Partition((xxh3_64(name.as_bytes()) % u64::from(self.0)) as u32)
    }
}

/// How many partitions `me` should hold when `live` nodes share them:
/// `P / N`, plus one for the first `P mod N` nodes in id order, so the
/// shares add up to `P` exactly and differ by at most one. `me` counts as
/// live even when its membership is not visible yet.
pub fn fair_share(partitions: Partitions, live: &BTreeSet<NodeId>, me: &NodeId) -> u32 {
    let mut nodes = live.clone();
    nodes.insert(me.clone());
    let count = nodes.len() as u32;
    let index = nodes.iter().position(|node| node == me).unwrap_or(0) as u32;
    partitions.count() / count + u32::from(index < partitions.count() % count)
}

/// What a node does in one round of lease keeping.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Held above the share: stop polling them, then delete their leases.
    pub release: Vec<Partition>,
    /// Free partitions to try to create leases for, best first.
    pub take: Vec<Partition>,
}

/// One round's decision for `me`, holding `held`, when `taken` are the
/// partitions with a live lease (anyone's) and `live` the nodes with a live
/// membership: release what is above the fair share (the highest numbers,
/// so a node's set stays stable), or try to take up to the shortfall among
/// the free ones. Free partitions are tried in an order of `me`'s own
/// (rendezvous: by `xxh3(node, partition)`), so nodes joining together
/// reach for different partitions instead of racing for the same ones.
pub fn plan(
    partitions: Partitions,
    me: &NodeId,
    live: &BTreeSet<NodeId>,
    held: &BTreeSet<Partition>,
    taken: &BTreeSet<Partition>,
) -> Plan {
    let share = fair_share(partitions, live, me) as usize;
    if held.len() > share {
        let release = held
            .iter()
            .rev()
            .take(held.len() - share)
            .copied()
            .collect();
        return Plan {
            release,
            take: Vec::new(),
        };
    }
    let mut free: Vec<Partition> = partitions
        .all()
        .filter(|partition| !taken.contains(partition) && !held.contains(partition))
        .collect();
    free.sort_by_key(|partition| rendezvous(me, *partition));
    free.truncate(share - held.len());
    Plan {
        release: Vec::new(),
        take: free,
    }
}

fn rendezvous(node: &NodeId, partition: Partition) -> u64 {
    let mut key = node.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&partition.0.to_le_bytes());
    xxh3_64(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<NodeId> {
        names.iter().map(|name| NodeId::from(*name)).collect()
    }

    #[test]
    fn a_target_has_the_same_partition_everywhere_and_always() {
        // Pinned: a different hash or modulus would move targets between
        // partitions when nodes of two versions share a cluster. The value
        // is the reference implementation's (Python's `xxhash`,
        // `xxh3_64_intdigest(b"web-01")`).
        let p = Partitions::new(256);
        assert_eq!(xxh3_64(b"web-01"), 0x183e_ec40_fa99_f343);
        assert_eq!(p.of("web-01"), Partition(0x43));
        assert_eq!(p.of(""), Partition((xxh3_64(b"") % 256) as u32));
        assert_eq!(Partitions::new(1).of("anything"), Partition(0));
        // Spread: 10,000 names over 16 partitions, none far from 625.
        let p = Partitions::new(16);
        let mut counts = [0u32; 16];
        for index in 0..10_000 {
            counts[p.of(&format!("target-{index}")).0 as usize] += 1;
        }
        assert!(counts.iter().all(|n| (525..=725).contains(n)), "{counts:?}");
    }

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (p, n) in [(256, 3), (30, 3), (30, 4), (5, 7), (1, 2)] {
            let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
            let live: BTreeSet<NodeId> = names.iter().map(|n| NodeId::from(n.as_str())).collect();
            let shares: Vec<u32> = live
                .iter()
                .map(|me| fair_share(Partitions::new(p), &live, me))
                .collect();
            assert_eq!(shares.iter().sum::<u32>(), p, "{p} over {n}");
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "{p} over {n}: {shares:?}");
        }
        // A node not yet seen counts itself.
        assert_eq!(
            fair_share(Partitions::new(30), &nodes(&["a", "b"]), &"c".into()),
            10
        );
    }

    #[test]
    fn a_node_above_its_share_releases_and_below_it_takes_free_ones() {
        let p = Partitions::new(6);
        let me = NodeId::from("a");
        let held: BTreeSet<Partition> = p.all().collect();
        let plan1 = plan(p, &me, &nodes(&["a", "b"]), &held, &held);
        assert_eq!(plan1.release, [Partition(5), Partition(4), Partition(3)]);
        assert!(plan1.take.is_empty());

        let held: BTreeSet<Partition> = [Partition(0)].into();
        let taken: BTreeSet<Partition> = [0, 1, 2].map(Partition).into();
        let plan2 = plan(p, &me, &nodes(&["a", "b"]), &held, &taken);
        assert!(plan2.release.is_empty());
        assert_eq!(plan2.take.len(), 2);
        assert!(plan2.take.iter().all(|part| part.0 >= 3), "{plan2:?}");

        // At its share, it does nothing.
        let held: BTreeSet<Partition> = [0, 1, 2].map(Partition).into();
        assert_eq!(
            plan(p, &me, &nodes(&["a", "b"]), &held, &held),
            Plan::default()
        );
    }

    #[test]
    fn nodes_reach_for_different_free_partitions_first() {
        let p = Partitions::new(64);
        let none = BTreeSet::new();
        let live = nodes(&["a", "b", "c", "d"]);
        let a = plan(p, &"a".into(), &live, &none, &none).take;
        let b = plan(p, &"b".into(), &live, &none, &none).take;
        assert_eq!(a.len(), 16);
        let common = a.iter().filter(|part| b.contains(part)).count();
        assert!(common < 10, "{common} of 16 in common");
    }
}
