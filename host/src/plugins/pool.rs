//! A fixed set of evaluation threads shared by every rule, and the handles
//! ([`RuleWorker`], [`Stopping`]) through which the router reaches one
//! rule's queue.
//!
//! Rules are called synchronously (a wasm call is a few microseconds), so
//! they run on plain threads rather than on the async runtime, where a rule
//! spinning to its deadline would stall polls and the API. A thread per
//! rule did that too, but costs a thread (and its stack) per rule: 1,000
//! rules were 1,000 threads. Here `threads` threads (`evaluation_threads`,
//! by default the cores, at least 2) serve every rule; which rule a free
//! thread serves next is [`schedule`](super::schedule)'s decision, made
//! under one short lock:
//!
//! - each rule keeps its own bounded queue ([`Pool::queue_for`]): offering a sample
//!   ([`RuleWorker::offer`]) never waits, and fails at once when the queue
//!   is full or the rule's tenant is past its rate ([`Pool::set_share`]);
//! - a burst of samples is offered under one hold of the lock and wakes
//!   at most one thread, once ([`Pool::offering`]): signalling a thread is
//!   a system call, and offered one by one, every sample signalled again
//!   until the thread woken got the lock;
//! - a rule is on at most one thread at a time and sees its samples in the
//!   order they came; its state ([`RuleInstance`](crate::runtime::RuleInstance)
//!   and all) moves to whichever thread serves it;
//! - tenants take turns, and no tenant holds every thread while the pool
//!   has another, so one tenant's rules running to their deadline on every
//!   sample leave a thread for everybody else;
//! - idle threads sleep on a condition variable and are woken only when a
//!   rule has work: an idle host spends nothing.
//!
//! New versions and action outcomes wait beside the rule's queue and are
//! applied before its next sample, so neither waits behind (or blocks on)
//! a full queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

use super::LoadedRule;
use super::schedule::{Group, Refused, RuleKey, Schedule, TenantShare, Turn};
use super::worker::{Control, Worker};
use super::{FailurePolicy, RuleCounters, WorkerEvent};
use crate::names::{RuleName, TenantName};
use crate::runtime::{ActionOutcome, Sample};

/// The fewest samples a rule's queue holds (see [`Pool::queue_for`]).
pub const QUEUE: usize = 1024;
/// The most samples a rule's queue holds, whatever the poll rate: 24 MiB
/// of queued pointers for a rule that fell that far behind.
pub const MAX_QUEUE: usize = 1 << 20;
/// Most samples offered under one hold of the lock ([`Offering`]): the
/// threads wait for the lock meanwhile, so a burst for many rules lets
/// them in between every this many.
const OFFERS_PER_HOLD: usize = 256;
/// Action outcomes waiting to be handed to one rule; more are dropped.
const MAX_PENDING_FEEDBACK: usize = 1024;
/// The most evaluation threads a config may ask for.
pub const MAX_THREADS: usize = 256;

/// A sample waiting in a rule's queue, and when it was offered (for the
/// latency histogram).
pub(super) struct Queued {
    sample: Arc<Sample>,
    at: Instant,
}

type Rules = Schedule<Box<Worker>, Queued, Control>;

struct State {
    schedule: Rules,
    /// Threads waiting for work.
    idle: usize,
    /// No [`Pool`] handle is left: threads end once the last rule has.
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a rule has work (or the pool closes).
    work: Condvar,
    /// Signalled when a rule is gone (for [`Stopping::join`]).
    gone: Condvar,
    /// Times a waiting thread woke up.
    wakeups: AtomicU64,
    /// Times a waiting thread was signalled (a system call each).
    notifications: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside the lock leaves the schedule as it was between two
        // steps; every step is a few map updates that do not panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes one waiting thread if a turn is waiting for it. Each thread
    /// that takes a turn calls this again, so a burst of work wakes as
    /// many threads as it needs, one after the other.
    fn wake_one(&self, state: &State) {
        if state.idle > 0 && state.schedule.has_turn() {
            self.notifications.fetch_add(1, Ordering::Relaxed);
            self.work.notify_one();
        }
    }
}

/// The evaluation threads. Cloning is cheap (one pool, several handles);
/// when the last handle is dropped the threads end once every rule has
/// stopped.
#[derive(Clone)]
pub struct Pool(Arc<Owner>);

struct Owner {
    shared: Arc<Shared>,
    threads: usize,
    _handles: Vec<JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
    }
}

/// What the pool is doing, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Evaluation threads.
    pub threads: usize,
    /// Times a waiting thread woke up (work arrived, or the pool closed).
    pub wakeups: u64,
    /// Times a waiting thread was signalled because work arrived.
    pub notifications: u64,
}

impl Pool {
    /// The default number of threads: the cores, at least 2 (so one busy
    /// tenant can never hold them all, see the module doc).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2))
    }

    /// How many samples each rule's queue holds when the targets make
    /// `polls_per_second` polls a second: one second of them, at least
    /// [`QUEUE`], at most [`MAX_QUEUE`]. Past it a rule's samples are
    /// dropped (and `RuleOverloaded` raised).
    ///
    /// Why a second and not a fixed count: a rule's calls are one after the
    /// other on one thread, which shares the cores with the polls. On a
    /// loaded host the operating system can leave that thread waiting for
    /// tens of milliseconds, and a fixed 1,024 samples were 20 ms at 50,000
    /// polls a second: the bundled rule dropped samples at start (each
    /// target's first sample costs a `define-target`) while keeping up
    /// easily after (BENCHMARKS.md, "Fourth round"). A queued sample costs
    /// its rule 24 bytes; the sample itself is shared by every rule.
    pub fn queue_for(polls_per_second: f64) -> usize {
        let second = polls_per_second.ceil();
        if second >= MAX_QUEUE as f64 {
            return MAX_QUEUE;
        }
        (second as usize).max(QUEUE)
    }

    /// Starts `threads` evaluation threads (at least one, at most
    /// [`MAX_THREADS`]) for rules whose queues hold `queue` samples.
    pub fn start(threads: usize, queue: usize) -> Self {
        let threads = threads.clamp(1, MAX_THREADS);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                schedule: Schedule::new(threads, queue),
                idle: 0,
                closing: false,
            }),
            work: Condvar::new(),
            gone: Condvar::new(),
            wakeups: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
        });
        let handles = (0..threads)
            .map(|n| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("vigil-eval-{n}"))
                    .spawn(move || serve(&shared))
                    .expect("spawning an evaluation thread")
            })
            .collect();
        tracing::debug!(threads, "Evaluation threads started.");
        Pool(Arc::new(Owner {
            shared,
            threads,
            _handles: handles,
        }))
    }

    /// How many threads evaluate.
    pub fn threads(&self) -> usize {
        self.0.threads
    }

    /// What the pool has done so far.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            threads: self.0.threads,
            wakeups: self.0.shared.wakeups.load(Ordering::Relaxed),
            notifications: self.0.shared.notifications.load(Ordering::Relaxed),
        }
    }

    /// Sets how many samples each rule's queue holds from now on (see
    /// [`Pool::queue_for`]).
    pub fn set_queue(&self, queue: usize) {
        self.0.shared.lock().schedule.set_capacity(queue);
    }

    /// Takes the lock to offer a burst of samples (see [`Offering`]).
    pub fn offering(&self) -> Offering<'_> {
        Offering::new(&self.0.shared)
    }

    /// Sets what `tenant`'s rules (`None`: the operator's) may spend from
    /// now on, whether or not it has rules yet. Its rate starts afresh
    /// with a full second's burst.
    pub fn set_share(&self, tenant: Option<TenantName>, share: TenantShare) {
        self.0
            .shared
            .lock()
            .schedule
            .set_share(tenant, share, Instant::now());
    }
}

/// One evaluation thread: takes a turn, runs it without the lock, hands
/// the rule back, until the pool closes and no rule is left.
fn serve(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        let Some(turn) = state.schedule.take() else {
            if state.closing && state.schedule.is_empty() {
                shared.work.notify_all();
                return;
            }
            state.idle += 1;
            state = shared
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.idle -= 1;
            shared.wakeups.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        shared.wake_one(&state);
        drop(state);
        let gone = match turn {
            Turn::Evaluate {
                key,
                mut worker,
                item,
                orders,
            } => {
                worker.take_orders(orders);
                let evaluation = worker.evaluate(&item.sample, item.at);
                // Waits while the alert stage is behind: every rule reports
                // there, so nothing would be gained by serving another.
                match worker.report(WorkerEvent::Evaluated(evaluation)) {
                    true => {
                        state = shared.lock();
                        state.schedule.finish(key, worker);
                        continue;
                    }
                    // Nobody reads what this rule reports any more.
                    false => key,
                }
            }
            Turn::Stop {
                key,
                worker,
                orders,
                abandoned,
            } => {
                drop(orders);
                worker.stopped(abandoned);
                key
            }
        };
        state = shared.lock();
        state.schedule.done(gone);
        shared.gone.notify_all();
        if state.closing && state.schedule.is_empty() {
            shared.work.notify_all();
        }
    }
}

/// The way into one rule's queue on the pool.
pub struct RuleWorker {
    name: RuleName,
    key: RuleKey,
    shared: Arc<Shared>,
    counters: Arc<RuleCounters>,
}

impl RuleWorker {
    /// Adds `rule` to `pool`: every sample it is offered is evaluated in
    /// order on one of the pool's threads and reported on `results`,
    /// waiting when `results` is full.
    pub fn spawn(
        pool: &Pool,
        rule: LoadedRule,
        policy: FailurePolicy,
        counters: Arc<RuleCounters>,
        results: mpsc::Sender<WorkerEvent>,
    ) -> Self {
        let name = rule.name.clone();
        let group: Group = rule.tenant.clone();
        let worker = Box::new(Worker::new(rule, policy, counters.clone(), results));
        let shared = pool.0.shared.clone();
        let key = shared.lock().schedule.insert(group, worker, Instant::now());
        RuleWorker {
            name,
            key,
            shared,
            counters,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &RuleName {
        &self.name
    }

    /// The rule's counters.
    pub fn counters(&self) -> &Arc<RuleCounters> {
        &self.counters
    }

    /// Queues a sample if there is room and the rule's tenant is within its
    /// rate, never waiting. A sample over the rate is counted here
    /// (`rate_limited`); a full queue is the caller's to count.
    pub fn offer(&self, sample: Arc<Sample>) -> Result<(), Refused> {
        self.offer_in(&mut Offering::new(&self.shared), sample)
    }

    /// [`RuleWorker::offer`], as part of a burst `offering` holds the lock
    /// for. `offering` must come from the pool this rule runs on.
    pub fn offer_in(
        &self,
        offering: &mut Offering<'_>,
        sample: Arc<Sample>,
    ) -> Result<(), Refused> {
        assert!(
            std::ptr::eq(offering.shared, Arc::as_ptr(&self.shared)),
            "offered to rule {} through another pool's lock",
            self.name
        );
        let offered = offering.offer(self.key, sample);
        if offered == Err(Refused::RateLimited) {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        offered
    }

    /// Hands the rule the outcome of an action it requested, with its next
    /// sample of `target`. Past [`MAX_PENDING_FEEDBACK`] waiting outcomes
    /// (a rule asking faster than it evaluates) the outcome is dropped and
    /// counted.
    pub fn feedback(&self, target: String, outcome: ActionOutcome) {
        let mut state = self.shared.lock();
        match state.schedule.orders(self.key) {
            Some(orders) if orders.len() < MAX_PENDING_FEEDBACK => {
                orders.push(Control::Feedback(target, outcome));
            }
            Some(_) => {
                self.counters
                    .feedback_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            None => {
                drop(state);
                tracing::warn!(rule = %self.name, "Rule worker stopped; action feedback dropped.");
            }
        }
    }

    /// Tells the rule, before its next sample, that `targets` are no longer
    /// polled. One order per call, however many targets.
    pub fn forget_targets(&self, targets: &[crate::names::TargetName]) {
        let mut state = self.shared.lock();
        if let Some(orders) = state.schedule.orders(self.key) {
            orders.push(Control::Forget(targets.to_vec()));
        }
    }

    /// Hands over a new version of the rule; it takes over before the next
    /// sample. A version not newer than the running one is ignored, and of
    /// two versions waiting only the newer is kept.
    pub fn swap(&self, rule: LoadedRule) {
        let mut state = self.shared.lock();
        let Some(orders) = state.schedule.orders(self.key) else {
            drop(state);
            tracing::error!(rule = %self.name, "Rule worker stopped; new version not installed.");
            return;
        };
        let mut newest = Box::new(rule);
        let mut older = Vec::new();
        for order in std::mem::take(orders) {
            match order {
                Control::Swap(waiting) if waiting.version > newest.version => {
                    older.push(std::mem::replace(&mut newest, waiting));
                }
                Control::Swap(waiting) => older.push(waiting),
                feedback => orders.push(feedback),
            }
        }
        orders.push(Control::Swap(newest));
        drop(state);
        // Dropping a loaded rule frees its instance: not under the lock.
        drop(older);
    }

    /// Closes the queue: the rule evaluates the samples already queued,
    /// reports [`WorkerEvent::Stopped`] and leaves the pool. The returned
    /// handle can cut that short ([`Stopping::abandon`]) and wait for it.
    pub fn close(self) -> Stopping {
        Stopping {
            name: self.name.clone(),
            key: self.key,
            shared: self.shared.clone(),
        }
        // `self` drops here, which closes the queue.
    }
}

impl Drop for RuleWorker {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.schedule.close(self.key);
        self.shared.wake_one(&state);
    }
}

/// The pool's lock, held while a burst of samples is offered
/// ([`RuleWorker::offer_in`]). Threads are woken once, when it is dropped
/// (or every [`OFFERS_PER_HOLD`] samples, when it lets them in): the thread
/// woken takes a turn and wakes the next if more turns wait, so a burst
/// wakes as many threads as it has work for, each once. The lock is not
/// re-entrant: while an `Offering` is held, reach the pool's rules only
/// through it.
pub struct Offering<'a> {
    shared: &'a Shared,
    state: Option<MutexGuard<'a, State>>,
    /// Samples offered since the lock was taken.
    held: usize,
    /// Whether one of them was queued (and may need a thread).
    queued: bool,
}

impl<'a> Offering<'a> {
    fn new(shared: &'a Shared) -> Self {
        Offering {
            shared,
            state: Some(shared.lock()),
            held: 0,
            queued: false,
        }
    }

    fn offer(&mut self, key: RuleKey, sample: Arc<Sample>) -> Result<(), Refused> {
        if self.held == OFFERS_PER_HOLD {
            self.release();
            self.state = Some(self.shared.lock());
        }
        self.held += 1;
        let at = Instant::now();
        let state = self.state.as_mut().expect("held between offers");
        let offered = state.schedule.offer(key, Queued { sample, at }, at);
        self.queued |= offered.is_ok();
        offered
    }

    /// Wakes a thread if the samples offered made work for one, and lets
    /// go of the lock.
    fn release(&mut self) {
        // Taking the guard out lets go of the lock either way.
        if let Some(state) = self.state.take()
            && self.queued
        {
            self.shared.wake_one(&state);
        }
        self.held = 0;
        self.queued = false;
    }
}

impl Drop for Offering<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// A rule whose queue is closed, finishing what was queued.
pub struct Stopping {
    name: RuleName,
    key: RuleKey,
    shared: Arc<Shared>,
}

impl Stopping {
    /// The rule's name.
    pub fn name(&self) -> &RuleName {
        &self.name
    }

    /// Stops evaluating: samples still queued are counted as abandoned,
    /// not evaluated. A call in progress finishes first (it is bounded by
    /// the rule's deadline).
    pub fn abandon(&self) {
        self.shared.lock().schedule.abandon(self.key);
    }

    /// Waits until the rule has left the pool (call after its `Stopped`
    /// event, or after [`Stopping::abandon`], or it may wait for the whole
    /// queue).
    pub fn join(self) {
        let mut state = self.shared.lock();
        while !state.schedule.is_gone(self.key) {
            state = self
                .shared
                .gone
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::config::{RuleSource, RuleSpec, Settings};
    use crate::runtime::{Limits, Runtime};
    use crate::state::StateDb;

    /// Only reached when what is awaited never comes.
    const PATIENCE: Duration = Duration::from_secs(60);

    struct Rules {
        runtime: Runtime,
        state: StateDb,
    }

    impl Rules {
        fn new() -> Self {
            Rules {
                runtime: Runtime::new().unwrap(),
                state: StateDb::in_memory().unwrap(),
            }
        }

        /// The bundled threshold rule as `name` of `tenant`.
        fn threshold(&self, name: &str, tenant: Option<&str>) -> LoadedRule {
            let mut spec = Settings::local_default().rules.remove(0);
            spec.name = name.into();
            spec.tenant = tenant.map(TenantName::from);
            super::super::load(&self.runtime, &self.state, &spec).unwrap()
        }

        /// The bundled threshold rule as the operator's rule `name` on
        /// `pool`, reporting on `results`.
        fn operator_s(
            &self,
            pool: &Pool,
            name: &str,
            results: mpsc::Sender<WorkerEvent>,
        ) -> RuleWorker {
            let counters = Arc::new(RuleCounters::default());
            let rule = self.threshold(name, None);
            RuleWorker::spawn(pool, rule, never_quarantine(), counters, results)
        }

        /// The `spin` fixture, which runs to its deadline (`timeout`) on
        /// every sample.
        fn spin(&self, name: &str, tenant: Option<&str>, timeout: Duration) -> LoadedRule {
            let path = std::path::Path::new(env!("VIGIL_RULES_DIR")).join("fixture_spin.wasm");
            let spec = RuleSpec {
                targets: Default::default(),
                name: name.into(),
                source: RuleSource::File(path),
                config_json: "{}".into(),
                limits: Limits {
                    evaluate_timeout: timeout,
                    ..Limits::default()
                },
                failure_policy: never_quarantine(),
                origin: "test".into(),
                trust: Default::default(),
                tenant: tenant.map(TenantName::from),
            };
            super::super::load(&self.runtime, &self.state, &spec).unwrap()
        }
    }

    fn never_quarantine() -> FailurePolicy {
        FailurePolicy {
            quarantine_after: u32::MAX,
            ..FailurePolicy::default()
        }
    }

    fn sample(target: &str, timestamp_ms: u64) -> Arc<Sample> {
        Arc::new(crate::sources::make_sample(
            target,
            &[],
            Ok(vec![]),
            timestamp_ms,
        ))
    }

    /// The next event, or a panic after [`PATIENCE`].
    fn next(events: &mut mpsc::Receiver<WorkerEvent>) -> WorkerEvent {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match events.try_recv() {
                Ok(event) => return event,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(error) => panic!("no worker event within {PATIENCE:?}: {error}"),
            }
        }
    }

    /// Rule and sample timestamp of each evaluation, until `count` of them.
    fn evaluated(events: &mut mpsc::Receiver<WorkerEvent>, count: usize) -> Vec<(String, u64)> {
        let mut seen = Vec::new();
        while seen.len() < count {
            if let WorkerEvent::Evaluated(evaluation) = next(events) {
                seen.push((evaluation.rule.to_string(), evaluation.sample.timestamp_ms));
            }
        }
        seen
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < deadline, "{what} within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn running(pool: &Pool, tenant: &str) -> usize {
        pool.0
            .shared
            .lock()
            .schedule
            .running(&Some(TenantName::from(tenant)))
    }

    #[test]
    fn each_rule_sees_its_samples_in_order_while_it_moves_between_threads() {
        let rules = Rules::new();
        let pool = Pool::start(4, QUEUE);
        let (results, mut events) = mpsc::channel(64);
        let workers: Vec<RuleWorker> = (0..8)
            .map(|n| {
                let tenant = format!("t{}", n % 3);
                let rule = rules.threshold(&format!("r{n}"), Some(&tenant));
                let counters = Arc::new(RuleCounters::default());
                RuleWorker::spawn(&pool, rule, never_quarantine(), counters, results.clone())
            })
            .collect();
        const SAMPLES: u64 = 300;
        for at in 1..=SAMPLES {
            for worker in &workers {
                // The queue has room for more than every sample offered
                // before the first is taken.
                worker.offer(sample("web", at)).unwrap();
            }
        }
        let mut by_rule: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (rule, at) in evaluated(&mut events, workers.len() * SAMPLES as usize) {
            by_rule.entry(rule).or_default().push(at);
        }
        let in_order: Vec<u64> = (1..=SAMPLES).collect();
        assert_eq!(by_rule.len(), workers.len());
        for (rule, seen) in &by_rule {
            assert_eq!(seen, &in_order, "rule {rule}");
        }
        for worker in &workers {
            let counters = worker.counters();
            assert_eq!(counters.evaluations.load(Ordering::Relaxed), SAMPLES);
            let buckets = crate::api::metrics::histogram_buckets(&counters.latency);
            assert_eq!(buckets.last(), Some(&(f64::INFINITY, SAMPLES)));
        }
    }

    #[test]
    fn a_tenant_running_to_its_deadline_leaves_a_thread_for_the_others() {
        let rules = Rules::new();
        let pool = Pool::start(2, QUEUE);
        let (results, mut events) = mpsc::channel(1024);
        let spin = |name: &str| {
            let rule = rules.spin(name, Some("busy"), Duration::from_millis(50));
            let counters = Arc::new(RuleCounters::default());
            RuleWorker::spawn(&pool, rule, never_quarantine(), counters, results.clone())
        };
        let busy = [spin("s1"), spin("s2"), spin("s3")];
        let quiet = RuleWorker::spawn(
            &pool,
            rules.threshold("quiet", Some("quiet")),
            never_quarantine(),
            Arc::new(RuleCounters::default()),
            results.clone(),
        );
        for worker in &busy {
            for at in 1..=20 {
                worker.offer(sample("web", at)).unwrap();
            }
        }
        // The busy tenant takes one thread and leaves the other, though the
        // quiet tenant has nothing queued: two deadlines later it still
        // holds one (a wait, not a timing: the rule may not change).
        wait_until("the busy tenant on a thread", || {
            running(&pool, "busy") == 1
        });
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(running(&pool, "busy"), 1);
        const QUIET: usize = 20;
        for at in 1..=QUIET as u64 {
            quiet.offer(sample("web", at)).unwrap();
        }
        // The free thread evaluates the quiet rule's samples one after the
        // other, while busy calls end at most once a deadline on the other
        // thread. Without the cap, a busy call (50 ms) would come between
        // each two.
        let mut busy_between = 0;
        let mut quiet_seen = 0;
        while quiet_seen < QUIET {
            let (rule, _) = evaluated(&mut events, 1).remove(0);
            if rule == "quiet" {
                quiet_seen += 1;
            } else if quiet_seen > 0 {
                busy_between += 1;
            }
        }
        assert!(
            busy_between < QUIET / 2,
            "{busy_between} busy calls ended while the quiet rule had its {QUIET} samples"
        );
        assert_eq!(running(&pool, "busy"), 1);
    }

    #[test]
    fn the_operator_s_rules_alone_use_every_thread() {
        let rules = Rules::new();
        let pool = Pool::start(2, QUEUE);
        let (results, _events) = mpsc::channel(1024);
        let spin = |name: &str| {
            let rule = rules.spin(name, None, Duration::from_millis(50));
            let counters = Arc::new(RuleCounters::default());
            RuleWorker::spawn(&pool, rule, never_quarantine(), counters, results.clone())
        };
        let workers = [spin("s1"), spin("s2")];
        for worker in &workers {
            for at in 1..=20 {
                worker.offer(sample("web", at)).unwrap();
            }
        }
        let operator = || pool.0.shared.lock().schedule.running(&None);
        wait_until("the operator's rules on both threads", || operator() == 2);
    }

    #[test]
    fn samples_past_a_tenant_s_rate_are_dropped_and_counted_for_each_rule() {
        let rules = Rules::new();
        let pool = Pool::start(2, QUEUE);
        let share = TenantShare {
            evaluations_per_second: Some(5),
        };
        pool.set_share(Some(TenantName::from("limited")), share);
        let (results, mut events) = mpsc::channel(1024);
        let spawn = |name: &str, tenant: &str| {
            let rule = rules.threshold(name, Some(tenant));
            let counters = Arc::new(RuleCounters::default());
            RuleWorker::spawn(&pool, rule, never_quarantine(), counters, results.clone())
        };
        let limited = spawn("limited-rule", "limited");
        let free = spawn("free-rule", "free");
        const OFFERED: u64 = 50;
        let mut refused = 0;
        for at in 1..=OFFERED {
            if let Err(why) = limited.offer(sample("web", at)) {
                assert_eq!(why, Refused::RateLimited);
                refused += 1;
            }
            free.offer(sample("web", at)).unwrap();
        }
        let read = |worker: &RuleWorker| {
            let counters = worker.counters();
            (
                counters.evaluations.load(Ordering::Relaxed),
                counters.rate_limited.load(Ordering::Relaxed),
            )
        };
        // A burst of 5 passes, and a token every 200 ms after it: 50 offers
        // made within a few seconds leave most of them refused.
        assert!(refused >= OFFERED - 20, "only {refused} refused");
        let accepted = OFFERED - refused;
        evaluated(&mut events, (accepted + OFFERED) as usize);
        assert_eq!(read(&limited), (accepted, refused));
        assert_eq!(read(&free), (OFFERED, 0));
    }

    #[test]
    fn idle_threads_sleep_until_work_comes() {
        let rules = Rules::new();
        let pool = Pool::start(4, QUEUE);
        let (results, mut events) = mpsc::channel(64);
        let worker = rules.operator_s(&pool, "r", results);
        // A spinning or polling thread would wake up in the meantime.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pool.stats().wakeups, 0);
        for at in 1..=10 {
            worker.offer(sample("web", at)).unwrap();
        }
        evaluated(&mut events, 10);
        // Threads woken for that work may take a moment to get the lock
        // and count their wakeup.
        std::thread::sleep(Duration::from_millis(200));
        let after_work = pool.stats().wakeups;
        assert!(after_work >= 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pool.stats().wakeups, after_work);
    }

    #[test]
    fn a_rule_s_queue_holds_a_second_of_polls_within_its_bounds() {
        assert_eq!(Pool::queue_for(0.0), QUEUE);
        assert_eq!(Pool::queue_for(1_000.0), QUEUE);
        assert_eq!(Pool::queue_for(50_000.0), 50_000);
        assert_eq!(Pool::queue_for(50_000.2), 50_001);
        assert_eq!(Pool::queue_for(1e12), MAX_QUEUE);
        assert_eq!(Pool::queue_for(f64::INFINITY), MAX_QUEUE);
    }

    #[test]
    fn a_burst_offered_under_one_hold_signals_one_thread_once() {
        let rules = Rules::new();
        let pool = Pool::start(4, QUEUE);
        let (results, mut events) = mpsc::channel(1024);
        let worker = rules.operator_s(&pool, "r", results);
        wait_until("every thread waiting", || pool.0.shared.lock().idle == 4);
        const BURST: u64 = 200;
        let mut offering = pool.offering();
        for at in 1..=BURST {
            worker.offer_in(&mut offering, sample("web", at)).unwrap();
        }
        drop(offering);
        let seen: Vec<u64> = evaluated(&mut events, BURST as usize)
            .into_iter()
            .map(|(_, at)| at)
            .collect();
        assert_eq!(seen, (1..=BURST).collect::<Vec<_>>());
        // One rule is one turn at a time: the thread signalled serves the
        // whole burst, and nobody else is signalled. Offered one at a time,
        // each sample signalled again until that thread got the lock.
        assert_eq!(pool.stats().notifications, 1);
    }

    #[test]
    #[should_panic(expected = "through another pool's lock")]
    fn a_rule_cannot_be_offered_through_another_pool_s_lock() {
        let rules = Rules::new();
        let (pool, other) = (Pool::start(1, QUEUE), Pool::start(1, QUEUE));
        let (results, _events) = mpsc::channel(8);
        let worker = rules.operator_s(&pool, "r", results);
        let _ = worker.offer_in(&mut other.offering(), sample("web", 1));
    }

    #[test]
    fn a_closed_rule_evaluates_its_queue_then_stops_and_abandon_counts_the_rest() {
        let rules = Rules::new();
        let pool = Pool::start(2, QUEUE);
        let (results, mut events) = mpsc::channel(1024);
        let fast = RuleWorker::spawn(
            &pool,
            rules.threshold("fast", None),
            never_quarantine(),
            Arc::new(RuleCounters::default()),
            results.clone(),
        );
        let slow = RuleWorker::spawn(
            &pool,
            rules.spin("slow", None, Duration::from_millis(50)),
            never_quarantine(),
            Arc::new(RuleCounters::default()),
            results.clone(),
        );
        let slow_counters = slow.counters().clone();
        for at in 1..=30 {
            fast.offer(sample("web", at)).unwrap();
            slow.offer(sample("web", at)).unwrap();
        }
        let (fast, slow) = (fast.close(), slow.close());
        // Closed: no more samples are taken.
        let mut stopped = BTreeMap::new();
        let mut evaluations: BTreeMap<String, u64> = BTreeMap::new();
        slow.abandon();
        while stopped.len() < 2 {
            match next(&mut events) {
                WorkerEvent::Evaluated(evaluation) => {
                    *evaluations.entry(evaluation.rule.to_string()).or_default() += 1;
                }
                WorkerEvent::Stopped { rule, abandoned } => {
                    stopped.insert(rule.to_string(), abandoned);
                }
            }
        }
        fast.join();
        slow.join();
        // The fast rule was never told to abandon: it evaluated everything.
        assert_eq!(evaluations["fast"], 30);
        assert_eq!(stopped["fast"], 0);
        // The slow one stopped after the call in progress; the rest is
        // counted, and nothing is lost.
        let slow_evaluated = evaluations.get("slow").copied().unwrap_or(0);
        assert!(stopped["slow"] > 0);
        assert_eq!(slow_evaluated + stopped["slow"], 30);
        assert_eq!(
            slow_counters.abandoned.load(Ordering::Relaxed),
            stopped["slow"]
        );
        assert!(pool.0.shared.lock().schedule.is_empty());
    }
}
