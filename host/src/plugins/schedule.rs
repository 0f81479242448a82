//! Which rule the next free evaluation thread serves: a pure scheduler
//! (no threads, no clock of its own), so its turn order can be tested step
//! by step. `pool.rs` runs it under one lock.
//!
//! | guarantees | refuses to |
//! |---|---|
//! | a rule is handed to at most one thread at a time, with its samples in arrival order | queue past a rule's bound, or past its tenant's rate |
//! | turns go round-robin over the tenants with ready work, then round-robin over that tenant's ready rules, one sample a turn | let one deep queue starve its siblings, or one busy tenant starve the others |
//! | a group holds at most `threads - 1` threads while the pool has another group; a group alone in the pool uses them all | let one group's calls, however long, take the last thread from the others |
//!
//! A *group* is a tenant, or the operator's own rules (`None`), which is
//! one more group.
//!
//! Why the cap holds even while the other groups have nothing queued: a
//! call cannot be pre-empted, it runs to its end (at most its deadline), so
//! handing a busy tenant the last thread because nobody else was waiting
//! *at that instant* makes the next sample of every other tenant wait up
//! to a deadline. Measured (`benches/tenants.rs`, BENCHMARKS.md): with the
//! cap applied only while another tenant had ready work, one tenant
//! spinning to its 100 ms deadline took both threads between bursts and
//! pushed the quiet tenants' p99 from under a millisecond to 240 ms. The
//! price is one thread a busy group cannot use while others are idle;
//! the operator's rules alone (no tenants) use every thread.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::names::TenantName;

/// Whose rules these are: a tenant's, or (`None`) the operator's.
pub type Group = Option<TenantName>;

/// A rule's place in the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey(u64);

/// What a tenant may spend on evaluation, set by whoever grants tenants
/// their share (the tenancy config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantShare {
    /// Samples its rules may evaluate per second, together (a token bucket
    /// holding one second's worth, so a burst of that size passes). Past
    /// it a sample is dropped for the rule it was offered to and counted
    /// as `rate_limited`. `None`: no limit; `Some(0)`: nothing evaluates.
    pub evaluations_per_second: Option<u32>,
}

/// Why an item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The rule's queue is full: it is not keeping up.
    Full,
    /// The rule's tenant is past its evaluation rate.
    RateLimited,
    /// The rule has stopped (or is stopping).
    Closed,
}

/// One turn handed to a thread. The thread owns the rule's `worker` until
/// it calls [`Schedule::finish`] (after `Evaluate`) or [`Schedule::done`]
/// (after `Stop`).
#[derive(Debug)]
pub enum Turn<W, S, O> {
    /// Evaluate `item` with `worker`, after applying `orders`.
    Evaluate {
        /// The rule.
        key: RuleKey,
        /// The rule's state, moved to the thread for this turn.
        worker: W,
        /// The oldest queued item.
        item: S,
        /// Orders given since the rule's last turn, oldest first.
        orders: Vec<O>,
    },
    /// The rule was closed and its queue is done: report it stopped.
    Stop {
        /// The rule.
        key: RuleKey,
        /// The rule's state, to be dropped.
        worker: W,
        /// Orders nobody will apply.
        orders: Vec<O>,
        /// Items dropped, not evaluated, because the rule was told to
        /// abandon its queue.
        abandoned: u64,
    },
}

/// A token bucket: `rate` tokens a second, holding at most one second's
/// worth. Time is passed in.
#[derive(Debug, Clone)]
struct Bucket {
    rate: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: f64::from(rate),
            at: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.rate);
        let elapsed = now.saturating_duration_since(self.at);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate).min(rate);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Slot<W, S, O> {
    group: Group,
    queue: VecDeque<S>,
    orders: Vec<O>,
    /// `None` while a thread holds it.
    worker: Option<W>,
    /// In its group's ready queue.
    ready: bool,
    closed: bool,
    abandon: bool,
}

#[derive(Default)]
struct GroupState {
    /// Rules with work, in turn order.
    ready: VecDeque<RuleKey>,
    /// Threads serving this group now.
    running: usize,
    /// Rules in the group (a group goes when its last rule does).
    rules: usize,
    /// In the ring of groups with ready work.
    in_ring: bool,
    bucket: Option<Bucket>,
}

/// The scheduler's whole state: every rule's queue and worker, and the
/// groups' turn order. `W` is a rule's state, `S` a queued item, `O` an
/// order applied before its next item.
pub struct Schedule<W, S, O> {
    /// Most threads one group may hold while another has ready work.
    cap: usize,
    /// Items one rule may have queued.
    capacity: usize,
    slots: HashMap<RuleKey, Slot<W, S, O>>,
    groups: HashMap<Group, GroupState>,
    /// Groups with ready rules, in turn order.
    ring: VecDeque<Group>,
    /// Shares set per tenant, kept while the tenant has no rules.
    shares: HashMap<Group, TenantShare>,
    next_key: u64,
}

impl<W, S, O> Schedule<W, S, O> {
    /// Queues hold `capacity` items from now on; items already queued past
    /// a smaller capacity stay and are evaluated.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// A schedule for `threads` threads and queues of `capacity` items.
    pub fn new(threads: usize, capacity: usize) -> Self {
        Schedule {
            // With one thread the cap would be zero and two groups would
            // each wait for the other: one thread is shared, not capped.
            cap: threads.saturating_sub(1).max(1),
            capacity,
            slots: HashMap::new(),
            groups: HashMap::new(),
            ring: VecDeque::new(),
            shares: HashMap::new(),
            next_key: 0,
        }
    }

    /// Adds a rule of `group`, idle until its first item.
    pub fn insert(&mut self, group: Group, worker: W, now: Instant) -> RuleKey {
        let key = RuleKey(self.next_key);
        self.next_key += 1;
        let share = self.shares.get(&group).copied().unwrap_or_default();
        let state = self
            .groups
            .entry(group.clone())
            .or_insert_with(|| GroupState {
                bucket: share
                    .evaluations_per_second
                    .map(|rate| Bucket::new(rate, now)),
                ..GroupState::default()
            });
        state.rules += 1;
        self.slots.insert(
            key,
            Slot {
                group,
                queue: VecDeque::new(),
                orders: Vec::new(),
                worker: Some(worker),
                ready: false,
                closed: false,
                abandon: false,
            },
        );
        key
    }

    /// Sets what `group` may spend from now on (its bucket starts full).
    pub fn set_share(&mut self, group: Group, share: TenantShare, now: Instant) {
        if let Some(state) = self.groups.get_mut(&group) {
            state.bucket = share
                .evaluations_per_second
                .map(|rate| Bucket::new(rate, now));
        }
        if share == TenantShare::default() {
            self.shares.remove(&group);
        } else {
            self.shares.insert(group, share);
        }
    }

    /// Queues `item` for `key` if its queue has room and its group is
    /// within its rate, never waiting.
    pub fn offer(&mut self, key: RuleKey, item: S, now: Instant) -> Result<(), Refused> {
        let slot = match self.slots.get_mut(&key) {
            Some(slot) if !slot.closed => slot,
            _ => return Err(Refused::Closed),
        };
        if slot.queue.len() >= self.capacity {
            return Err(Refused::Full);
        }
        let group = self.groups.get_mut(&slot.group).expect("a rule's group");
        if let Some(bucket) = &mut group.bucket
            && !bucket.take(now)
        {
            return Err(Refused::RateLimited);
        }
        slot.queue.push_back(item);
        if !slot.ready && slot.worker.is_some() {
            self.make_ready(key);
        }
        Ok(())
    }

    /// The orders waiting for `key`'s next turn (to add one, or replace
    /// one), unless the rule is closed.
    pub fn orders(&mut self, key: RuleKey) -> Option<&mut Vec<O>> {
        self.slots
            .get_mut(&key)
            .filter(|slot| !slot.closed)
            .map(|slot| &mut slot.orders)
    }

    /// Closes `key`: no more items; it gets a last turn to report that it
    /// stopped once its queue is done.
    pub fn close(&mut self, key: RuleKey) {
        let Some(slot) = self.slots.get_mut(&key).filter(|slot| !slot.closed) else {
            return;
        };
        slot.closed = true;
        if !slot.ready && slot.worker.is_some() {
            self.make_ready(key);
        }
    }

    /// Tells a closed `key` to drop what is queued instead of evaluating
    /// it (an item being evaluated finishes first).
    pub fn abandon(&mut self, key: RuleKey) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.abandon = true;
        }
    }

    /// Whether `key` is gone: it reported that it stopped, or was dropped.
    pub fn is_gone(&self, key: RuleKey) -> bool {
        !self.slots.contains_key(&key)
    }

    /// Whether no rule is left.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether a free thread could take a turn now.
    pub fn has_turn(&self) -> bool {
        self.ring.iter().any(|group| self.may_take(group))
    }

    /// Whether `group` may have one more thread: it is alone in the pool,
    /// or under the cap.
    fn may_take(&self, group: &Group) -> bool {
        self.groups.len() == 1 || self.groups[group].running < self.cap
    }

    /// Threads serving `group` now.
    #[cfg(test)]
    pub fn running(&self, group: &Group) -> usize {
        self.groups.get(group).map_or(0, |state| state.running)
    }

    /// The next turn for a free thread: the first group in turn order that
    /// may take a thread, its first ready rule, that rule's oldest item.
    /// The group and the rule go to the back of their queues if they have
    /// more; a group skipped for the cap keeps its place.
    pub fn take(&mut self) -> Option<Turn<W, S, O>> {
        let at = self.ring.iter().position(|group| self.may_take(group))?;
        let group = self.ring.remove(at).expect("a position in the ring");
        let state = self.groups.get_mut(&group).expect("a group in the ring");
        let key = state
            .ready
            .pop_front()
            .expect("a group in the ring has work");
        state.running += 1;
        if state.ready.is_empty() {
            state.in_ring = false;
        } else {
            self.ring.push_back(group);
        }
        let slot = self.slots.get_mut(&key).expect("a ready rule");
        slot.ready = false;
        let worker = slot.worker.take().expect("a ready rule is not running");
        let orders = std::mem::take(&mut slot.orders);
        let mut abandoned = 0;
        if slot.abandon {
            abandoned = slot.queue.len() as u64;
            slot.queue.clear();
        }
        Some(match slot.queue.pop_front() {
            Some(item) => Turn::Evaluate {
                key,
                worker,
                item,
                orders,
            },
            None => Turn::Stop {
                key,
                worker,
                orders,
                abandoned,
            },
        })
    }

    /// Gives `key`'s worker back after an `Evaluate` turn; the rule is
    /// ready again if it has more to do.
    pub fn finish(&mut self, key: RuleKey, worker: W) {
        let slot = self.slots.get_mut(&key).expect("a running rule");
        slot.worker = Some(worker);
        let more = !slot.queue.is_empty() || slot.closed;
        let group = slot.group.clone();
        self.groups.get_mut(&group).expect("a rule's group").running -= 1;
        if more {
            self.make_ready(key);
        }
    }

    /// Removes `key` after its `Stop` turn (or after a turn whose results
    /// nobody reads any more).
    pub fn done(&mut self, key: RuleKey) {
        let Some(slot) = self.slots.remove(&key) else {
            return;
        };
        let state = self.groups.get_mut(&slot.group).expect("a rule's group");
        state.running -= 1;
        state.rules -= 1;
        if state.rules == 0 {
            // Its last rule was running, so it cannot be in the ring.
            debug_assert!(!state.in_ring);
            self.groups.remove(&slot.group);
        }
    }

    fn make_ready(&mut self, key: RuleKey) {
        let slot = self.slots.get_mut(&key).expect("a rule");
        slot.ready = true;
        let state = self.groups.get_mut(&slot.group).expect("a rule's group");
        state.ready.push_back(key);
        if !state.in_ring {
            state.in_ring = true;
            self.ring.push_back(slot.group.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    type Test = Schedule<&'static str, u32, ()>;

    fn tenant(name: &str) -> Group {
        Some(TenantName::from(name))
    }

    /// Takes a turn, reports it as `rule:item`, and (unless `hold`) hands
    /// the rule back as a thread would once the call is done.
    fn step(schedule: &mut Test, hold: bool) -> Option<String> {
        match schedule.take()? {
            Turn::Evaluate {
                key, worker, item, ..
            } => {
                if !hold {
                    schedule.finish(key, worker);
                }
                Some(format!("{worker}:{item}"))
            }
            Turn::Stop { key, worker, .. } => {
                if !hold {
                    schedule.done(key);
                }
                Some(format!("{worker}:stop"))
            }
        }
    }

    fn drain(schedule: &mut Test) -> Vec<String> {
        std::iter::from_fn(|| step(schedule, false)).collect()
    }

    #[test]
    fn turns_go_round_robin_over_tenants_then_over_each_tenant_s_rules() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 16);
        // Tenant a has two rules, one with a deep queue; b has one rule;
        // the operator's own rules (None) are one more group.
        let a1 = schedule.insert(tenant("a"), "a1", now);
        let a2 = schedule.insert(tenant("a"), "a2", now);
        let b1 = schedule.insert(tenant("b"), "b1", now);
        let op = schedule.insert(None, "op", now);
        for item in 1..=4 {
            schedule.offer(a1, item, now).unwrap();
        }
        schedule.offer(b1, 1, now).unwrap();
        schedule.offer(b1, 2, now).unwrap();
        schedule.offer(a2, 1, now).unwrap();
        schedule.offer(op, 1, now).unwrap();
        assert_eq!(
            drain(&mut schedule),
            [
                "a1:1", "b1:1", "op:1", // one turn per group, in arrival order
                "a2:1", "b1:2", // a's second rule before a1 again
                "a1:2", "a1:3", "a1:4", // alone, a1 takes every turn
            ]
        );
        assert!(!schedule.has_turn());
    }

    #[test]
    fn a_rule_is_on_one_thread_at_a_time_and_sees_its_items_in_order() {
        let now = Instant::now();
        let mut schedule = Test::new(4, 16);
        let rule = schedule.insert(None, "r", now);
        for item in 1..=3 {
            schedule.offer(rule, item, now).unwrap();
        }
        // The first turn is held (a thread is evaluating it): no other
        // thread may take the same rule, though it has two more items.
        assert_eq!(step(&mut schedule, true).as_deref(), Some("r:1"));
        assert!(schedule.take().is_none());
        schedule.finish(rule, "r");
        assert_eq!(drain(&mut schedule), ["r:2", "r:3"]);
    }

    #[test]
    fn a_busy_tenant_never_holds_every_thread_while_the_pool_has_another() {
        let now = Instant::now();
        let mut schedule = Test::new(3, 16);
        let busy: Vec<RuleKey> = ["s1", "s2", "s3"]
            .into_iter()
            .map(|name| schedule.insert(tenant("busy"), name, now))
            .collect();
        let quiet = schedule.insert(tenant("quiet"), "q", now);
        for &rule in &busy {
            schedule.offer(rule, 1, now).unwrap();
        }
        assert_eq!(step(&mut schedule, true).as_deref(), Some("s1:1"));
        assert_eq!(step(&mut schedule, true).as_deref(), Some("s2:1"));
        // The third thread stays free although the quiet tenant has nothing
        // queued yet: its next sample must not wait for a busy call.
        assert_eq!(schedule.running(&tenant("busy")), 2);
        assert!(!schedule.has_turn());
        assert!(schedule.take().is_none());
        schedule.offer(quiet, 1, now).unwrap();
        assert!(schedule.has_turn());
        assert_eq!(step(&mut schedule, false).as_deref(), Some("q:1"));
        // Once the quiet tenant has left the pool, the busy one is alone and
        // may use every thread.
        schedule.close(quiet);
        assert_eq!(step(&mut schedule, false).as_deref(), Some("q:stop"));
        assert_eq!(step(&mut schedule, true).as_deref(), Some("s3:1"));
        assert_eq!(schedule.running(&tenant("busy")), 3);
    }

    #[test]
    fn a_group_alone_in_the_pool_uses_every_thread() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 16);
        let r1 = schedule.insert(None, "r1", now);
        let r2 = schedule.insert(None, "r2", now);
        schedule.offer(r1, 1, now).unwrap();
        schedule.offer(r2, 1, now).unwrap();
        assert_eq!(step(&mut schedule, true).as_deref(), Some("r1:1"));
        assert_eq!(step(&mut schedule, true).as_deref(), Some("r2:1"));
        assert_eq!(schedule.running(&None), 2);
    }

    #[test]
    fn a_tenant_at_the_cap_keeps_its_place_for_the_next_free_thread() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 16);
        let s1 = schedule.insert(tenant("busy"), "s1", now);
        let s2 = schedule.insert(tenant("busy"), "s2", now);
        let q = schedule.insert(tenant("quiet"), "q", now);
        let c = schedule.insert(tenant("c"), "c", now);
        schedule.offer(s1, 1, now).unwrap();
        schedule.offer(s2, 1, now).unwrap();
        for item in 1..=3 {
            schedule.offer(q, item, now).unwrap();
        }
        for item in 1..=2 {
            schedule.offer(c, item, now).unwrap();
        }
        // s1 holds one of the two threads, the busy tenant's cap: the other
        // thread serves the others in turn.
        assert_eq!(step(&mut schedule, true).as_deref(), Some("s1:1"));
        let mut turns: Vec<String> = (0..3).filter_map(|_| step(&mut schedule, false)).collect();
        // Once s1 is done, the busy tenant, skipped while at the cap, is
        // first in line again.
        schedule.finish(s1, "s1");
        turns.extend(drain(&mut schedule));
        assert_eq!(turns, ["q:1", "c:1", "q:2", "s2:1", "c:2", "q:3"]);
    }

    #[test]
    fn with_one_thread_two_tenants_take_turns() {
        let now = Instant::now();
        let mut schedule = Test::new(1, 16);
        let a = schedule.insert(tenant("a"), "a", now);
        let b = schedule.insert(tenant("b"), "b", now);
        for item in 1..=2 {
            schedule.offer(a, item, now).unwrap();
            schedule.offer(b, item, now).unwrap();
        }
        assert_eq!(drain(&mut schedule), ["a:1", "b:1", "a:2", "b:2"]);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 2);
        let rule = schedule.insert(None, "r", now);
        assert_eq!(schedule.offer(rule, 1, now), Ok(()));
        assert_eq!(schedule.offer(rule, 2, now), Ok(()));
        assert_eq!(schedule.offer(rule, 3, now), Err(Refused::Full));
        assert_eq!(drain(&mut schedule), ["r:1", "r:2"]);
    }

    #[test]
    fn a_new_capacity_applies_to_the_next_offer_and_keeps_what_is_queued() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 2);
        let rule = schedule.insert(None, "r", now);
        assert_eq!(schedule.offer(rule, 1, now), Ok(()));
        assert_eq!(schedule.offer(rule, 2, now), Ok(()));
        schedule.set_capacity(3);
        assert_eq!(schedule.offer(rule, 3, now), Ok(()));
        assert_eq!(schedule.offer(rule, 4, now), Err(Refused::Full));
        schedule.set_capacity(1);
        assert_eq!(schedule.offer(rule, 5, now), Err(Refused::Full));
        assert_eq!(drain(&mut schedule), ["r:1", "r:2", "r:3"]);
        assert_eq!(schedule.offer(rule, 6, now), Ok(()));
        assert_eq!(schedule.offer(rule, 7, now), Err(Refused::Full));
    }

    #[test]
    fn a_tenant_past_its_rate_is_refused_and_refills_with_time() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 64);
        let limited = schedule.insert(tenant("a"), "a1", now);
        let sibling = schedule.insert(tenant("a"), "a2", now);
        let other = schedule.insert(tenant("b"), "b", now);
        let share = TenantShare {
            evaluations_per_second: Some(3),
        };
        schedule.set_share(tenant("a"), share, now);
        // A burst of one second's worth passes, shared by the tenant's rules.
        let offered: Vec<_> = [limited, sibling, limited, sibling, limited]
            .into_iter()
            .map(|rule| schedule.offer(rule, 1, now))
            .collect();
        assert_eq!(
            offered,
            [
                Ok(()),
                Ok(()),
                Ok(()),
                Err(Refused::RateLimited),
                Err(Refused::RateLimited)
            ]
        );
        // Another tenant is not limited.
        for _ in 0..10 {
            schedule.offer(other, 1, now).unwrap();
        }
        // A third of a second later one more token is there, not two.
        let later = now + Duration::from_millis(334);
        assert_eq!(schedule.offer(limited, 2, later), Ok(()));
        assert_eq!(schedule.offer(limited, 3, later), Err(Refused::RateLimited));
        // Lifting the limit lets everything through again.
        schedule.set_share(tenant("a"), TenantShare::default(), later);
        for _ in 0..10 {
            schedule.offer(sibling, 1, later).unwrap();
        }
    }

    #[test]
    fn a_share_set_before_the_tenant_has_rules_applies_to_its_first_rule() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 64);
        let share = TenantShare {
            evaluations_per_second: Some(1),
        };
        schedule.set_share(tenant("a"), share, now);
        let rule = schedule.insert(tenant("a"), "a", now);
        assert_eq!(schedule.offer(rule, 1, now), Ok(()));
        assert_eq!(schedule.offer(rule, 2, now), Err(Refused::RateLimited));
    }

    #[test]
    fn a_closed_rule_finishes_its_queue_then_stops_and_leaves() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 16);
        let rule = schedule.insert(tenant("a"), "r", now);
        let idle = schedule.insert(tenant("a"), "idle", now);
        schedule.offer(rule, 1, now).unwrap();
        schedule.offer(rule, 2, now).unwrap();
        schedule.close(rule);
        schedule.close(idle);
        assert_eq!(schedule.offer(rule, 3, now), Err(Refused::Closed));
        assert_eq!(drain(&mut schedule), ["r:1", "idle:stop", "r:2", "r:stop"]);
        assert!(schedule.is_gone(rule) && schedule.is_gone(idle));
        assert!(schedule.is_empty());
        assert!(schedule.groups.is_empty(), "the tenant left with its rules");
    }

    #[test]
    fn an_abandoned_rule_counts_its_queue_instead_of_evaluating_it() {
        let now = Instant::now();
        let mut schedule = Test::new(2, 16);
        let rule = schedule.insert(None, "r", now);
        for item in 1..=5 {
            schedule.offer(rule, item, now).unwrap();
        }
        assert_eq!(step(&mut schedule, true).as_deref(), Some("r:1"));
        schedule.close(rule);
        schedule.abandon(rule);
        schedule.finish(rule, "r");
        match schedule.take() {
            Some(Turn::Stop { abandoned, key, .. }) => {
                assert_eq!(abandoned, 4);
                schedule.done(key);
            }
            other => panic!("expected the stop turn, got {other:?}"),
        }
        assert!(schedule.is_empty());
    }
}
