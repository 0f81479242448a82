//! Cluster mode (issue 16): three `vigil` processes share 24 targets
//! through partition leases in a real nats-server (2.15, from
//! `tests/cluster/requirements.txt`) on loopback. One status server logs
//! every poll with the node that made it (the `vigil-node` header), so the
//! tests read who polled what and when.
//!
//! Settings: 30 partitions, `lease_ttl` 6 s, `renew_every` 1 s, targets
//! polled every 500 ms. Bounds are stated in each test and kept generous:
//! the machine is a noisy 2-core box; the tests assert who polled, in what
//! order, and gaps against bounds several times the expected value.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use common::{NatsServer, Vigil, serve};
use serde_json::Value;
use vigil::cluster::Partitions;

const PARTITIONS: u32 = 30;
const TARGETS: usize = 24;
const INTERVAL: Duration = Duration::from_millis(500);
const LEASE_TTL: Duration = Duration::from_secs(6);
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The tests start three hosts each; run one at a time on a 2-core box.
static SERIAL: Mutex<()> = Mutex::new(());

/// One poll the status server saw.
#[derive(Debug, Clone)]
struct Poll {
    at: Instant,
    target: String,
    node: String,
}

/// A status server that answers every `/NAME` with `{"up": 1}` (or what
/// [`PollLog::set_up`] said) and logs who polled it.
struct PollLog {
    addr: std::net::SocketAddr,
    polls: Arc<Mutex<Vec<Poll>>>,
    control: Arc<Mutex<Control>>,
    _runtime: tokio::runtime::Runtime,
}

/// The status server's state: its log and what it answers.
type LogState = (Arc<Mutex<Vec<Poll>>>, Arc<Mutex<Control>>);

/// Builds a node's config from (NATS URL, poll log, node).
type MakeConfig = Box<dyn Fn(&str, &PollLog, &str) -> String>;

/// What the status server answers.
#[derive(Default)]
struct Control {
    /// `up` per target; 1 when not set.
    up: BTreeMap<String, u32>,
    /// The next poll of (node, target) is held until `released`, then
    /// answered `{"up": 0}`; cleared once it arrives.
    hold: Option<(String, String)>,
    /// Polls held so far.
    held: usize,
    /// Lets the held poll be answered.
    released: bool,
}

async fn answer(
    State((polls, control)): State<LogState>,
    UrlPath(target): UrlPath<String>,
    headers: HeaderMap,
) -> String {
    let node = headers
        .get(vigil::sources::NODE_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (up, hold) = {
        let mut control = control.lock().unwrap();
        let up = control.up.get(&target).copied().unwrap_or(1);
        let hold = matches!(&control.hold, Some((n, t)) if *n == node && *t == target);
        if hold {
            control.hold = None;
            control.held += 1;
        }
        (up, hold)
    };
    polls.lock().unwrap().push(Poll {
        at: Instant::now(),
        target,
        node,
    });
    if hold {
        while !control.lock().unwrap().released {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return "{\"up\": 0}".into();
    }
    format!("{{\"up\": {up}}}")
}

impl PollLog {
    fn start() -> Self {
        let polls: Arc<Mutex<Vec<Poll>>> = Arc::default();
        let control: Arc<Mutex<Control>> = Arc::default();
        let app = Router::new()
            .route("/{target}", axum::routing::get(answer))
            .with_state((polls.clone(), control.clone()));
        let (runtime, addr) = serve(app, 0);
        PollLog {
            addr,
            polls,
            control,
            _runtime: runtime,
        }
    }

    fn set_up(&self, target: &str, up: u32) {
        self.control.lock().unwrap().up.insert(target.into(), up);
    }

    /// The polls between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> Vec<Poll> {
        let polls = self.polls.lock().unwrap();
        polls
            .iter()
            .filter(|poll| poll.at >= from && poll.at <= to)
            .cloned()
            .collect()
    }
}

fn target_name(index: usize) -> String {
    format!("t{index:02}")
}

/// The config of node `node`.
fn config(nats: &str, log: &PollLog, node: &str) -> String {
    let mut text = format!(
        "[api]\nlisten = \"off\"\n\n[cluster]\nurls = [\"{nats}\"]\nname = \"test\"\nnode = \"{node}\"\npartitions = {PARTITIONS}\nlease_ttl = \"{}s\"\nrenew_every = \"{}s\"\n",
        LEASE_TTL.as_secs(),
        RENEW_EVERY.as_secs()
    );
    for index in 0..TARGETS {
        let name = target_name(index);
        text.push_str(&format!(
            "\n[[targets]]\nname = \"{name}\"\nkind = \"http-json\"\nurl = \"http://{}/{name}\"\ninterval = \"{}ms\"\n",
            log.addr,
            INTERVAL.as_millis()
        ));
    }
    text
}

/// A cluster under test: the servers, the poll log and the nodes by id.
struct Fleet {
    /// The URL the nodes started by [`Fleet::add`] join.
    url: String,
    _nats: Vec<NatsServer>,
    log: PollLog,
    nodes: BTreeMap<String, Vigil>,
    /// Each node's config from (NATS URL, poll log, node).
    make: MakeConfig,
}

impl Fleet {
    fn start(nodes: &[&str]) -> Self {
        Self::start_with(nodes, Box::new(config))
    }

    fn start_with(nodes: &[&str], make: MakeConfig) -> Self {
        let nats = NatsServer::start();
        let log = PollLog::start();
        let mut fleet = Fleet {
            url: nats.url(),
            _nats: vec![nats],
            log,
            nodes: BTreeMap::new(),
            make,
        };
        for node in nodes {
            fleet.add(node);
        }
        fleet
    }

    fn add(&mut self, node: &str) {
        let vigil = Vigil::start(&(self.make)(&self.url, &self.log, node));
        self.nodes.insert(node.to_string(), vigil);
    }

    /// `vigil cluster status --format json`, through any node's config;
    /// retried for up to 30 s while no node has made the bucket yet.
    fn status(&self) -> Value {
        let config = self.nodes.values().next().expect("a node").config_path();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
                .args(["cluster", "status", "--format", "json", "--config"])
                .arg(&config)
                .output()
                .unwrap();
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).unwrap();
            }
            let error = String::from_utf8_lossy(&output.stderr).to_string();
            assert!(
                Instant::now() < deadline && error.contains("has no lease bucket"),
                "vigil cluster status failed: {error}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (at most 60 s) until exactly `members` hold every partition,
    /// each within one of the others, and says who holds which.
    fn wait_balanced(&mut self, members: &[&str]) -> BTreeMap<u32, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.status();
            let owners = owners(&status);
            let mut counts: BTreeMap<String, usize> = members
                .iter()
                .map(|member| (member.to_string(), 0))
                .collect();
            let mut strangers = false;
            for owner in owners.values() {
                match counts.get_mut(owner) {
                    Some(count) => *count += 1,
                    None => strangers = true,
                }
            }
            let live: BTreeSet<String> = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|node| node["member"] == true)
                .map(|node| node["node"].as_str().unwrap().to_string())
                .collect();
            let (min, max) = (
                counts.values().min().copied().unwrap_or(0),
                counts.values().max().copied().unwrap_or(0),
            );
            let wanted: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
            if owners.len() == PARTITIONS as usize && !strangers && max - min <= 1 && live == wanted
            {
                return owners;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|(name, node)| format!("--- {name} ---\n{}", node.stderr()))
                    .collect();
                panic!(
                    "the partitions were not balanced over {members:?} within 60s: {counts:?}, live {live:?}\nstatus: {status}\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Each target's polls in the window, in order: (time, node).
    fn polls_by_target(
        &self,
        from: Instant,
        to: Instant,
    ) -> BTreeMap<String, Vec<(Instant, String)>> {
        let mut by_target: BTreeMap<String, Vec<(Instant, String)>> = (0..TARGETS)
            .map(|index| (target_name(index), Vec::new()))
            .collect();
        for poll in self.log.between(from, to) {
            by_target
                .entry(poll.target)
                .or_default()
                .push((poll.at, poll.node));
        }
        for polls in by_target.values_mut() {
            polls.sort();
        }
        by_target
    }
}

/// Partition → owner, from `vigil cluster status --format json`.
fn owners(status: &Value) -> BTreeMap<u32, String> {
    let mut owners = BTreeMap::new();
    for node in status["nodes"].as_array().unwrap() {
        let name = node["node"].as_str().unwrap();
        for partition in node["leases"].as_object().unwrap().keys() {
            owners.insert(partition.parse().unwrap(), name.to_string());
        }
    }
    owners
}

fn partition_of(target: &str) -> u32 {
    Partitions::new(PARTITIONS).of(target).0
}

/// The targets whose partition `node` holds.
fn targets_of(owners: &BTreeMap<u32, String>, node: &str) -> Vec<String> {
    (0..TARGETS)
        .map(target_name)
        .filter(|target| owners.get(&partition_of(target)).map(String::as_str) == Some(node))
        .collect()
}

/// Over a quiet window: every target polled by exactly its partition's
/// owner, about once per interval, never twice within half an interval.
fn assert_each_target_polled_by_its_owner(fleet: &Fleet, owners: &BTreeMap<u32, String>) {
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let to = Instant::now();
    for (target, polls) in fleet.polls_by_target(from, to) {
        let nodes: BTreeSet<&str> = polls.iter().map(|(_, node)| node.as_str()).collect();
        let owner = owners[&partition_of(&target)].as_str();
        assert_eq!(
            nodes,
            BTreeSet::from([owner]),
            "target {target} (partition {}) was polled by {nodes:?}, its owner is {owner}",
            partition_of(&target)
        );
        // Ten intervals in the window: at least 6 polls, at most 12.
        assert!(
            (6..=12).contains(&polls.len()),
            "target {target}: {} polls in 5s at a 500ms interval",
            polls.len()
        );
        for pair in polls.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= INTERVAL / 2,
                "target {target} polled twice within {:?}",
                pair[1].0 - pair[0].0
            );
        }
    }
}

/// The longest time a target went unpolled across `event`: from its last
/// poll before, to its first poll after (by any node), per target.
fn gaps_across(
    fleet: &Fleet,
    start: Instant,
    event: Instant,
    end: Instant,
) -> BTreeMap<String, Duration> {
    fleet
        .polls_by_target(start, end)
        .into_iter()
        .map(|(target, polls)| {
            let before = polls
                .iter()
                .rev()
                .find(|(at, _)| *at <= event)
                .map(|(at, _)| *at);
            let after = polls.iter().find(|(at, _)| *at > event).map(|(at, _)| *at);
            let gap = match (before, after) {
                (Some(before), Some(after)) => after - before,
                _ => panic!("target {target} was not polled on both sides of the event: {polls:?}"),
            };
            (target, gap)
        })
        .collect()
}

#[test]
fn steady_state_every_target_is_polled_by_exactly_one_node_and_partitions_are_balanced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]);
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    for node in ["n1", "n2", "n3"] {
        let held = owners.values().filter(|owner| *owner == node).count();
        assert_eq!(held, 10, "{node} holds {held} of 30: {owners:?}");
    }
    // Pollers start when their partition is gained; give them an interval.
    std::thread::sleep(INTERVAL * 2);
    assert_each_target_polled_by_its_owner(&fleet, &owners);
}

#[test]
fn a_node_killed_with_sigkill_has_its_partitions_taken_over_within_the_lease_ttl() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]);
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    let orphans = targets_of(&owners, "n1");
    assert!(
        !orphans.is_empty(),
        "n1 polls none of the targets: {owners:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now() - Duration::from_secs(2);
    let mut victim = fleet.nodes.remove("n1").unwrap();
    let killed = Instant::now();
    drop(victim.seen.drain(..));
    // `Drop` kills it with SIGKILL, by its PID.
    drop(victim);
    let after = fleet.wait_balanced(&["n2", "n3"]);
    assert!(
        after.values().all(|owner| owner != "n1"),
        "n1's leases outlived it: {after:?}"
    );
    // Let the new owners poll a few times.
    std::thread::sleep(Duration::from_secs(2));
    let end = Instant::now();
    // The bound: one interval (0.5 s) + the lease TTL (6 s) + 3 s of slack
    // for the others' next round (1 s) and a loaded machine.
    let bound = INTERVAL + LEASE_TTL + Duration::from_secs(3);
    let gaps = gaps_across(&fleet, start, killed, end);
    let worst = orphans.iter().map(|target| gaps[target]).max().unwrap();
    eprintln!(
        "SIGKILL handover: the longest gap of n1's {} targets was {worst:?} (bound {bound:?})",
        orphans.len()
    );
    for target in &orphans {
        assert!(
            gaps[target] <= bound,
            "target {target} went unpolled for {:?} after n1 was killed (bound {bound:?})",
            gaps[target]
        );
    }
    // Nothing is left unpolled, and nobody polls what it does not own.
    assert_each_target_polled_by_its_owner(&fleet, &after);
}

#[test]
fn a_node_stopped_with_sigterm_releases_its_leases_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]);
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    let orphans = targets_of(&owners, "n1");
    assert!(
        !orphans.is_empty(),
        "n1 polls none of the targets: {owners:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now() - Duration::from_secs(2);
    let mut leaving = fleet.nodes.remove("n1").unwrap();
    let stopped = Instant::now();
    leaving.terminate();
    assert!(
        leaving
            .stderr()
            .contains("Left the cluster; partition leases released."),
        "{}",
        leaving.stderr()
    );
    let after = fleet.wait_balanced(&["n2", "n3"]);
    std::thread::sleep(Duration::from_secs(2));
    let end = Instant::now();
    // The bound: one interval (0.5 s) + one renew period (1 s, when the
    // others next look) + 2 s of slack; a lease left to expire would take
    // the TTL (6 s) instead.
    let bound = INTERVAL + RENEW_EVERY + Duration::from_secs(2);
    let gaps = gaps_across(&fleet, start, stopped, end);
    let worst = orphans.iter().map(|target| gaps[target]).max().unwrap();
    eprintln!(
        "SIGTERM handover: the longest gap of n1's {} targets was {worst:?} (bound {bound:?})",
        orphans.len()
    );
    for target in &orphans {
        assert!(
            gaps[target] <= bound,
            "target {target} went unpolled for {:?} after n1 stopped (bound {bound:?})",
            gaps[target]
        );
    }
    assert_each_target_polled_by_its_owner(&fleet, &after);
}

#[test]
fn a_node_joining_takes_about_its_share_and_only_from_the_others_surplus() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1", "n2"]);
    let before = fleet.wait_balanced(&["n1", "n2"]);
    fleet.add("n3");
    let after = fleet.wait_balanced(&["n1", "n2", "n3"]);
    let moved: Vec<u32> = (0..PARTITIONS)
        .filter(|partition| before[partition] != after[partition])
        .collect();
    // P/N = 10 partitions move, all of them to the new node: none between
    // the old ones.
    assert_eq!(
        moved.len(),
        10,
        "moved: {moved:?}\nbefore {before:?}\nafter {after:?}"
    );
    assert!(
        moved.iter().all(|partition| after[partition] == "n3"),
        "a partition moved between the old nodes: before {before:?}\nafter {after:?}"
    );
    std::thread::sleep(INTERVAL * 2);
    assert_each_target_polled_by_its_owner(&fleet, &after);
}

#[test]
fn a_node_paused_past_its_lease_polls_nothing_when_it_resumes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]);
    let before = fleet.wait_balanced(&["n1", "n2", "n3"]);
    assert!(!targets_of(&before, "n1").is_empty(), "{before:?}");
    std::thread::sleep(Duration::from_secs(1));
    fleet.nodes["n1"].signal("STOP");
    // Past the lease: the others take n1's partitions while it sleeps.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = owners(&fleet.status());
        if now.len() == PARTITIONS as usize && now.values().all(|owner| owner != "n1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1's partitions were not taken over: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(1));
    let resumed = Instant::now();
    fleet.nodes["n1"].signal("CONT");
    // Every timer of n1 is overdue now; none of its leases is valid. It
    // rejoins and takes its share back from the others' surplus, which they
    // release (stopping their polls) before it can take it: so for every
    // target, once n1 polls it, nobody else does. A poll on an expired
    // lease would be followed by the real owner's next poll.
    let after = fleet.wait_balanced(&["n1", "n2", "n3"]);
    std::thread::sleep(Duration::from_secs(1));
    for (target, polls) in fleet.polls_by_target(resumed, Instant::now()) {
        if let Some(first) = polls.iter().position(|(_, node)| node == "n1") {
            let others: Vec<&(Instant, String)> = polls[first..]
                .iter()
                .filter(|(_, node)| node != "n1")
                .collect();
            assert!(
                others.is_empty(),
                "target {target} was polled by n1 {:?} after it woke, then by {:?}: n1 polled without a lease",
                polls[first].0 - resumed,
                others
                    .iter()
                    .map(|(at, node)| (node, *at - resumed))
                    .collect::<Vec<_>>()
            );
        }
    }
    // Then each target has one poller.
    std::thread::sleep(INTERVAL * 2);
    assert_each_target_polled_by_its_owner(&fleet, &after);
}

#[test]
fn a_node_whose_partition_count_differs_from_the_clusters_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1"]);
    fleet.wait_balanced(&["n1"]);
    let other = config(&fleet.url, &fleet.log, "n2")
        .replace(&format!("partitions = {PARTITIONS}"), "partitions = 16");
    let mut refused = Vigil::start(&other);
    let status = refused.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let error = refused.stderr();
    assert!(
        error.contains(&format!(
            "error: cluster `test` was made with partitions = {PARTITIONS}, lease_ttl = \"6s\" (bucket `vigil_test_leases`), but this config says partitions = 16"
        )) && error.contains("\nhint: every node must say the same"),
        "{error}"
    );
    // The running node is untouched.
    assert_eq!(fleet.wait_balanced(&["n1"]).len(), PARTITIONS as usize);
    // The same status for people.
    let config = fleet.nodes["n1"].config_path();
    let text = common::run_vigil([
        "cluster".as_ref(),
        "status".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(
        text.starts_with("cluster `test` (bucket `vigil_test_leases`, nats-server 2.15.1): 1 nodes, 30 of 30 partitions owned\n"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|line| line.starts_with("n1 "))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("30"),
        "n1's row: {text}"
    );
}

#[test]
fn nodes_share_the_partitions_through_a_three_server_nats_cluster() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let servers = common::NatsCluster::start();
    let log = PollLog::start();
    // Each node talks to a different server; the bucket has a copy on each.
    let urls = servers.urls();
    let mut fleet = Fleet {
        url: urls[0].clone(),
        _nats: servers.servers,
        log,
        nodes: BTreeMap::new(),
        make: Box::new(config),
    };
    for (index, node) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let text = config(&urls[index], &fleet.log, node)
            .replace("renew_every = ", "replicas = 3\nrenew_every = ");
        fleet.nodes.insert(node.into(), Vigil::start(&text));
    }
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    std::thread::sleep(INTERVAL * 2);
    assert_each_target_polled_by_its_owner(&fleet, &owners);
}

#[test]
fn a_lost_nats_connection_is_not_a_lost_lease_until_its_deadline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fleet = Fleet::start(&["n1", "n2", "n3"]);
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    std::thread::sleep(INTERVAL * 2);
    fleet._nats[0].kill();
    let killed = Instant::now();
    // Within the lease (deadline: last renewal + 6 s - 0.6 s, so at least
    // 4.4 s after the kill) every owner polls on.
    std::thread::sleep(Duration::from_secs(3));
    let cut_off = fleet.polls_by_target(killed + Duration::from_millis(500), Instant::now());
    for (target, polls) in &cut_off {
        let owner = &owners[&partition_of(target)];
        assert!(
            !polls.is_empty() && polls.iter().all(|(_, node)| node == owner),
            "target {target} while NATS is down: {polls:?} (owner {owner})"
        );
    }
    // Past every deadline (the TTL after the kill, plus 1.5 s) nobody polls:
    // nothing proves the leases are still theirs.
    std::thread::sleep(
        (killed + LEASE_TTL + Duration::from_millis(1500))
            .saturating_duration_since(Instant::now()),
    );
    let quiet_from = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let late = fleet.log.between(quiet_from, Instant::now());
    assert!(
        late.is_empty(),
        "{} polls after every lease's deadline passed with NATS down, e.g. {:?}",
        late.len(),
        late.first()
    );
    // Each owner polled its targets until close to the deadline, and not
    // past it. The last renewal went out at most a renew period (1 s) before
    // the kill, so the deadline is at least 6 - 0.6 - 1 = 4.4 s after it,
    // and a 500 ms interval puts the last poll at 3.9 s or later: 3.5 s is
    // the bound. Dropping a lease at the first failed renewal would stop
    // polling within about 3 s (two calls timing out after 1 s each).
    for (target, polls) in fleet.polls_by_target(killed, quiet_from) {
        let last = polls.last().map(|(at, _)| *at - killed).unwrap_or_default();
        assert!(
            last >= Duration::from_millis(3500) && last <= LEASE_TTL,
            "target {target} was last polled {last:?} after NATS went down (expected 3.5 s to 6 s)"
        );
    }
    // NATS back (same port and store): the nodes share the partitions again.
    fleet._nats[0].restart();
    let after = fleet.wait_balanced(&["n1", "n2", "n3"]);
    std::thread::sleep(INTERVAL * 2);
    assert_each_target_polled_by_its_owner(&fleet, &after);
}

// Alert state in KV and notifications once (issue 16 items 3, 6, 8).
// Settings: `lease_ttl` 2 s, `renew_every` 500 ms, targets polled every
// 500 ms (HTTP timeout 30 s, so a poll held across a pause still answers),
// the `threshold` rule alerting `Down` when `up` is below 1, and a
// webhook receiver that logs every POST with its `vigil-node` and
// `Idempotency-Key` headers.

const ALERT_TTL: Duration = Duration::from_secs(2);

/// One POST the webhook receiver got.
#[derive(Debug, Clone)]
struct Notice {
    at: Instant,
    node: String,
    key: String,
    status: String,
    target: String,
    starts_at: String,
}

/// A webhook receiver; when `hold_first` is set, the first POST is
/// logged and then held open (answered after two minutes).
struct Hook {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Notice>>>,
    hold_first: Arc<std::sync::atomic::AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

type HookState = (Arc<Mutex<Vec<Notice>>>, Arc<std::sync::atomic::AtomicBool>);

async fn hook(
    State((got, hold)): State<HookState>,
    headers: HeaderMap,
    body: String,
) -> &'static str {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let payload: Value = serde_json::from_str(&body).unwrap();
    let alert = &payload["alerts"][0];
    got.lock().unwrap().push(Notice {
        at: Instant::now(),
        node: header(vigil::sources::NODE_HEADER),
        key: header(vigil::sinks::IDEMPOTENCY_HEADER),
        status: payload["status"].as_str().unwrap_or("").into(),
        target: alert["labels"]["target"].as_str().unwrap_or("").into(),
        starts_at: alert["startsAt"].as_str().unwrap_or("").into(),
    });
    if hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    "ok"
}

impl Hook {
    fn start() -> Self {
        let got: Arc<Mutex<Vec<Notice>>> = Arc::default();
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let app = Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state((got.clone(), hold.clone()));
        let (runtime, addr) = serve(app, 0);
        Hook {
            addr,
            got,
            hold_first: hold,
            _runtime: runtime,
        }
    }

    /// The notices about `target`.
    fn about(&self, target: &str) -> Vec<Notice> {
        let got = self.got.lock().unwrap();
        got.iter().filter(|n| n.target == target).cloned().collect()
    }

    /// Waits (at most 60 s) until `count` notices about `target` came.
    fn wait(&self, target: &str, count: usize, fleet: &Fleet) -> Vec<Notice> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let about = self.about(target);
            if about.len() >= count {
                return about;
            }
            if Instant::now() > deadline {
                panic!(
                    "{count} notifications about {target} expected within 60s, got {about:?}\n{}",
                    fleet.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Fleet {
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(name, node)| format!("--- {name} ---\n{}", node.stderr()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A node's config for the alerting tests: `for` as given.
fn alerting_config(hook: std::net::SocketAddr, for_: &'static str) -> MakeConfig {
    Box::new(move |nats, log, node| {
        let text = config(nats, log, node)
            .replace(
                &format!("lease_ttl = \"{}s\"", LEASE_TTL.as_secs()),
                &format!("lease_ttl = \"{}s\"", ALERT_TTL.as_secs()),
            )
            .replace(
                &format!("renew_every = \"{}s\"", RENEW_EVERY.as_secs()),
                "renew_every = \"500ms\"",
            )
            .replace(
                "kind = \"http-json\"\n",
                "kind = \"http-json\"\ntimeout = \"30s\"\n",
            );
        // The cluster section ends before the first target.
        let (head, targets) = text.split_once("\n[[targets]]").unwrap();
        format!(
            "{head}\n[[rules]]\nbuiltin = \"threshold\"\nconfig = {{ thresholds = {{ up = {{ below = 1, for = \"{for_}\", alert = \"Down\" }} }}, target_down = false }}\n\n[[sinks]]\nname = \"console\"\nkind = \"stdout\"\n\n[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{hook}/hook\"\ntimeout = \"60s\"\nretry_initial = \"200ms\"\nretry_max = \"1s\"\n\n[[targets]]{targets}"
        )
    })
}

fn parse_time(text: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(text).unwrap_or_else(|_| panic!("not a time: {text}"))
}

#[test]
fn a_pending_alert_fires_at_its_original_time_after_its_owner_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const FOR: Duration = Duration::from_secs(8);
    let hook = Hook::start();
    let mut fleet = Fleet::start_with(&["n1", "n2", "n3"], alerting_config(hook.addr, "8s"));
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    let target = target_name(0);
    let owner = owners[&partition_of(&target)].clone();
    let down = std::time::SystemTime::now();
    let down_at = Instant::now();
    fleet.log.set_up(&target, 0);
    // Its owner sees it down (the alert is pending from then), and is
    // killed halfway through the `for`.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet
        .log
        .between(down_at, Instant::now())
        .iter()
        .any(|poll| poll.target == target && poll.node == owner)
    {
        assert!(Instant::now() < deadline, "{owner} did not poll {target}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(FOR / 2);
    let killed = std::time::SystemTime::now();
    fleet.nodes.remove(&owner);
    let firing = hook.wait(&target, 1, &fleet).remove(0);
    assert_eq!(firing.status, "firing", "{firing:?}");
    assert_ne!(firing.node, owner);
    // It became active when its first owner saw it down, not when the new
    // owner took over: the `for` timer survived the owner.
    let starts = parse_time(&firing.starts_at);
    assert!(
        starts >= down - Duration::from_secs(1) && starts < killed,
        "startsAt {} is not between the target going down and the kill: the pending alert restarted",
        firing.starts_at
    );
    let after_for = firing.at.duration_since(down_at).saturating_sub(FOR);
    eprintln!(
        "MEASURE for_deadline_to_firing_ms={}",
        after_for.as_millis()
    );
    fleet.log.set_up(&target, 1);
    hook.wait(&target, 2, &fleet);
    std::thread::sleep(Duration::from_secs(3));
    let notices: Vec<_> = hook
        .about(&target)
        .into_iter()
        .map(|n| (n.status, n.starts_at, n.key))
        .collect();
    assert_eq!(
        notices.len(),
        2,
        "one firing and one resolved expected: {notices:?}"
    );
    assert_eq!(
        (notices[0].0.as_str(), notices[1].0.as_str()),
        ("firing", "resolved")
    );
    assert_eq!(notices[0].1, notices[1].1);
    assert_ne!(notices[0].2, notices[1].2);
    drop(notices);
    // Nothing else alerted.
    let others = hook
        .got
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n.target != target)
        .count();
    assert_eq!(others, 0);
}

#[test]
fn a_node_paused_past_its_lease_announces_nothing_from_its_late_sample() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hook = Hook::start();
    let mut fleet = Fleet::start_with(&["n1", "n2", "n3"], alerting_config(hook.addr, "0s"));
    let owners = fleet.wait_balanced(&["n1", "n2", "n3"]);
    let target = target_name(1);
    let owner = owners[&partition_of(&target)].clone();
    // The owner's next poll of the target is held until the owner is
    // paused, then answered "down": the answer waits for it across the
    // pause, a sample polled under the lease it is about to lose.
    fleet.log.control.lock().unwrap().hold = Some((owner.clone(), target.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.log.control.lock().unwrap().held == 0 {
        assert!(Instant::now() < deadline, "{owner} did not poll {target}");
        std::thread::sleep(Duration::from_millis(5));
    }
    fleet.nodes[&owner].signal("STOP");
    let stat = format!("/proc/{}/stat", fleet.nodes[&owner].pid());
    while !std::fs::read_to_string(&stat)
        .unwrap()
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('T'))
    {
        assert!(Instant::now() < deadline, "{owner} did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    fleet.log.control.lock().unwrap().released = true;
    // Past the lease: another node polls the target (up) meanwhile.
    std::thread::sleep(ALERT_TTL * 3);
    let others: BTreeSet<String> = fleet
        .log
        .between(Instant::now() - ALERT_TTL, Instant::now())
        .into_iter()
        .filter(|poll| poll.target == target)
        .map(|poll| poll.node)
        .collect();
    assert!(!others.is_empty() && !others.contains(&owner), "{others:?}");
    fleet.nodes[&owner].signal("CONT");
    // On waking, the node finds its leases behind it. The held answer
    // ("down") either lost the race with the node stopping the target's
    // poll, or became a late sample whose alert write is refused (the
    // refusal itself is shown deterministically by
    // `an_alert_write_for_a_sample_polled_under_a_lost_or_earlier_lease_is_refused`).
    // Either way, nobody hears of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.nodes[&owner].stderr().contains("lapsed unrenewed") {
        assert!(
            Instant::now() < deadline,
            "{owner} did not notice its leases lapsed\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = fleet.nodes[&owner].stderr();
    if stderr.contains("Stale alert state write refused") {
        assert!(
            stderr.contains("reason=\"lease_lapsed\"")
                || stderr.contains("reason=\"earlier_lease\"")
                || stderr.contains("reason=lease_lapsed")
                || stderr.contains("reason=earlier_lease"),
            "{stderr}"
        );
    }
    // Nobody was told the target is down: no doubled or reverted alert.
    assert!(hook.about(&target).is_empty(), "{:?}", hook.about(&target));
}

/// The fencing of alert writes, step by step against a real server: a
/// sample's changes are written only if this node held the target's
/// partition without a break since the sample's poll started.
#[test]
fn an_alert_write_for_a_sample_polled_under_a_lost_or_earlier_lease_is_refused() {
    use vigil::alerts::Tracker;
    use vigil::cluster::alert_state::{Refusal, SharedAlerts};
    use vigil::cluster::{Ownership, Partition};
    use vigil::names::{RuleName, TargetName};
    use vigil::runtime::{Alert, Severity};

    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = NatsServer::start();
    let text = format!(
        "[cluster]\nurls = [\"nats://127.0.0.1:{}\"]\nname = \"fence\"\nnode = \"n1\"\npartitions = 1\n\n[[targets]]\nname = \"t01\"\nkind = \"local\"\n",
        server.port
    );
    let settings =
        vigil::config::Settings::parse(&text, std::path::Path::new("fence.toml")).unwrap();
    let cluster = settings.cluster.unwrap();
    let (rule, target) = (RuleName::from("threshold"), TargetName::from("t01"));
    let down = [Alert {
        name: "Down".into(),
        severity: Severity::Critical,
        summary: String::new(),
        labels: vec![],
        annotations: vec![],
        for_ms: 0,
        keep_firing_for_ms: 0,
    }];
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let nats = vigil::cluster::nats::Nats::connect(&cluster).await.unwrap();
        let bucket = nats.alert_states(&cluster).await.unwrap();
        let ownership = Ownership::new(Partitions::new(1));
        let mut shared = SharedAlerts::new(bucket, ownership.clone(), cluster.node.clone());
        let mut tracker = Tracker::default();
        // One sample, polled at `tick`, whose verdict is `alerts`.
        let mut fold = async |tick: u64, alerts: &[Alert]| {
            shared.load(&mut tracker, &rule, &target).await;
            let before = tracker.group_snapshot(&rule, &target);
            tracker.observe(&rule, &target, alerts, tick).unwrap();
            shared
                .commit(&mut tracker, &rule, &target, tick, before)
                .await
        };
        ownership.grant(Partition(0), Instant::now() + Duration::from_secs(60));
        let polled = now_ms();
        assert_eq!(fold(polled, &down).await, Ok(()));
        // The lease lapsed (a pause): the node's changes are refused.
        ownership.grant(Partition(0), Instant::now() - Duration::from_millis(1));
        assert_eq!(fold(polled + 1, &[]).await, Err(Refusal::NotOwner));
        // Held again, under a new lease: a sample polled before it began
        // is refused; one polled under it is written.
        std::thread::sleep(Duration::from_millis(5));
        ownership.grant(Partition(0), Instant::now() + Duration::from_secs(60));
        assert_eq!(fold(polled + 2, &[]).await, Err(Refusal::EarlierLease));
        assert_eq!(fold(now_ms(), &[]).await, Ok(()));
    });
}

#[test]
fn a_notifier_killed_before_its_ack_has_the_notification_delivered_again_with_the_same_key() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hook = Hook::start();
    let mut fleet = Fleet::start_with(&["n1", "n2", "n3"], alerting_config(hook.addr, "0s"));
    fleet.wait_balanced(&["n1", "n2", "n3"]);
    let target = target_name(2);
    hook.hold_first
        .store(true, std::sync::atomic::Ordering::SeqCst);
    fleet.log.set_up(&target, 0);
    // The first delivery is held open by the receiver: its notifier has
    // sent and not acknowledged. Kill it there.
    let first = hook.wait(&target, 1, &fleet).remove(0);
    assert!(fleet.nodes.contains_key(&first.node), "{first:?}");
    fleet.nodes.remove(&first.node);
    let again = hook.wait(&target, 2, &fleet).remove(1);
    assert_eq!(again.status, "firing");
    assert_eq!(again.key, first.key, "the repeat must carry the same key");
    assert_ne!(again.node, first.node);
    assert_eq!(again.starts_at, first.starts_at);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.about(&target).len(), 2, "{:?}", hook.about(&target));
}
