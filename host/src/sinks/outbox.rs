//! The durable outbox in front of a network sink: at-least-once delivery
//! across outages and restarts.
//!
//! | guarantees | refuses to |
//! |---|---|
//! | a notification is in the database before its sink is tried, and leaves it only once the sink accepted it | lose a notification to a crash, a restart or an outage while the bound holds |
//! | a sink gets its notifications in the order they were made, one at a time, so an alert's firing comes before its resolved | send a later notification past one that failed |
//! | a failed attempt is retried after a capped exponential backoff with jitter ([`retry_delay`]) | hammer a sink that is down, or retry in lockstep with other hosts |
//! | at most `max_queue` notifications wait per sink; past it the oldest *resolved* one goes first, with the firing one of the same alert still waiting before it (the receiver never hears of an episode that began and ended while it was away), then the oldest firing ([`evict`]); every drop is counted | grow without bound |
//! | a sink that drops, or fails for `failing_after` without a success, is reported by [`Outbox::failing`], which the host raises as `DeliveryFailing{sink}` on the other sinks | fail silently |
//!
//! Delivery is at-least-once: a sink that took a notification but whose
//! answer was lost gets it again, with the same fingerprint and
//! timestamps, so the receiver can tell it is the same. So does a sink
//! after a crash, for up to [`SYNC_EVERY`] notifications: removing a
//! delivered row skips the disk sync but every [`SYNC_EVERY`]th (a sync
//! costs milliseconds; draining a backlog row by row must not).
//!
//! A notification is the [`AlertEvent`] as JSON, exactly as the alert
//! stage made it: a resend after an outage carries the times of the
//! transition, not of the send.
//!
//! The decisions are pure functions ([`evict`], [`retry_delay`],
//! [`Health::failing`]); [`Outbox`] holds the rows and [`drive`] does the
//! sending.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Sink, SinkStats};
use crate::alerts::{AlertEvent, Fingerprint, Status};
use crate::state::{OutboxTable, StateError};

/// Notifications waiting per sink when the config does not say.
pub const DEFAULT_MAX_QUEUE: usize = 10_000;
/// The first retry's wait when the config does not say.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts when the config does not say.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a sink fails without a success before `DeliveryFailing`.
pub const DEFAULT_FAILING_AFTER: Duration = Duration::from_secs(60);
/// One removal of a delivered notification in this many is synced to disk.
pub const SYNC_EVERY: u64 = 64;

/// How one sink's outbox behaves: the `[[sinks]]` settings of a network
/// sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// Notifications that may wait; past it the oldest are dropped.
    pub max_queue: usize,
    /// The wait after the first failure; doubles with each failure.
    pub retry_initial: Duration,
    /// The longest wait between two attempts.
    pub retry_max: Duration,
    /// Failing this long without a success raises `DeliveryFailing`.
    pub failing_after: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            max_queue: DEFAULT_MAX_QUEUE,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            failing_after: DEFAULT_FAILING_AFTER,
        }
    }
}

/// What the bound needs to know of a waiting notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// The alert it is about.
    pub fingerprint: Fingerprint,
    /// Firing or resolved.
    pub status: Status,
}

/// The rows to delete so that `incoming` more fit in `max_queue`: the
/// oldest resolved notifications first, each with the firing ones of the
/// same alert still waiting before it; then the oldest. Pure; no
/// allocation but the answer, and one pass over `queue` (by sequence) plus
/// one over what precedes each resolved notification dropped.
pub fn evict(queue: &BTreeMap<u64, Waiting>, max_queue: usize, incoming: usize) -> Vec<u64> {
    let over = (queue.len() + incoming).saturating_sub(max_queue.max(1));
    let mut gone = BTreeSet::new();
    if over == 0 {
        return Vec::new();
    }
    for (&seq, waiting) in queue {
        if gone.len() >= over {
            break;
        }
        if waiting.status == Status::Resolved {
            gone.insert(seq);
            let episode = queue.range(..seq).filter(|(_, before)| {
                before.status == Status::Firing && before.fingerprint == waiting.fingerprint
            });
            gone.extend(episode.map(|(before, _)| *before));
        }
    }
    for &seq in queue.keys() {
        if gone.len() >= over {
            break;
        }
        gone.insert(seq);
    }
    gone.into_iter().collect()
}

/// The wait before the next attempt after `failures` failures in a row
/// (at least 1): `initial` doubled per failure, at most `max`, then
/// between half and all of it (`jitter` in 0..1), so hosts that failed
/// together do not retry together. Pure.
pub fn retry_delay(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << doublings.min(31)).min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in 0..1 that differs from call to call (std's hasher keys
/// are random): jitter needs no more than that.
fn jitter() -> f64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// How a sink has been doing, for `DeliveryFailing`.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Since when every attempt failed (none since the last success).
    pub failing_since: Option<Instant>,
    /// The last failure's message.
    pub last_error: String,
    /// Notifications dropped by the bound since the last success.
    pub dropped: u64,
}

impl Health {
    /// Why the sink counts as failing at `now`, if it does: it dropped
    /// notifications, or failed for `after` without a success. Pure.
    pub fn failing(&self, sink: &str, now: Instant, after: Duration) -> Option<String> {
        if self.dropped > 0 {
            return Some(format!(
                "sink `{sink}` dropped {} notifications: its outbox is full; last error: {}",
                self.dropped, self.last_error
            ));
        }
        let since = self.failing_since?;
        let lasted = now.saturating_duration_since(since);
        (lasted >= after).then(|| {
            let lasted = Duration::from_secs(lasted.as_secs());
            format!(
                "sink `{sink}` has failed for {}: {}",
                humantime::format_duration(lasted),
                self.last_error
            )
        })
    }
}

/// One sink's outbox: its rows in the database, what the bound needs of
/// them in memory, and its health. Shared by the delivery stage (which
/// pushes) and the sink's task (which sends and removes).
pub struct Outbox {
    name: Arc<str>,
    table: OutboxTable,
    settings: OutboxSettings,
    queue: Mutex<BTreeMap<u64, Waiting>>,
    health: Mutex<Health>,
    stats: Arc<SinkStats>,
    wake: Notify,
    closing: AtomicBool,
    /// Rows removed so far, to sync every [`SYNC_EVERY`]th removal.
    removals: AtomicU64,
    /// Alerts firing when the host started, for sinks that re-send them.
    restored: Mutex<Option<Vec<AlertEvent>>>,
    /// Alerts whose resolve the bound dropped, for sinks that re-send what
    /// is firing: they must stop re-sending those ([`Sink::forget`]).
    forgotten: Mutex<Vec<Fingerprint>>,
}

impl Outbox {
    /// The outbox of sink `name`, starting from the rows it kept (a
    /// restart). Rows that no longer parse are deleted with a warning.
    pub fn open(
        name: Arc<str>,
        table: OutboxTable,
        settings: OutboxSettings,
        stats: Arc<SinkStats>,
    ) -> Result<Self, StateError> {
        let mut queue = BTreeMap::new();
        for (seq, bytes) in table.all()? {
            match serde_json::from_slice::<AlertEvent>(&bytes) {
                Ok(event) => {
                    queue.insert(seq, waiting(&event));
                }
                Err(error) => {
                    tracing::warn!(sink = %name, seq, %error, "Dropped an unreadable notification from the outbox.");
                    table.remove(seq, true)?;
                }
            }
        }
        if !queue.is_empty() {
            tracing::info!(sink = %name, waiting = queue.len(), "Notifications kept from the last run will be sent first.");
        }
        stats.queued.store(queue.len() as u64, Ordering::Relaxed);
        Ok(Outbox {
            name,
            table,
            settings,
            queue: Mutex::new(queue),
            health: Mutex::new(Health::default()),
            stats,
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            removals: AtomicU64::new(0),
            restored: Mutex::new(None),
            forgotten: Mutex::new(Vec::new()),
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Writes `events` to the database in one transaction (dropping the
    /// oldest past the bound) and wakes the sink's task. Never waits on the
    /// sink; the cost is one durable commit, whatever the number of events.
    pub fn push(&self, events: &[Arc<AlertEvent>]) {
        if events.is_empty() {
            return;
        }
        // More at once than the bound holds: the oldest of them go too.
        let skipped = events.len().saturating_sub(self.settings.max_queue.max(1));
        let events = &events[skipped..];
        let rows: Vec<Vec<u8>> = events
            .iter()
            .map(|event| serde_json::to_vec(&**event).expect("alert events serialise"))
            .collect();
        let mut queue = lock(&self.queue);
        let evicted = evict(&queue, self.settings.max_queue, events.len());
        match self.table.push(&rows, &evicted) {
            Ok(first) => {
                let mut forgotten = Vec::new();
                for old in &evicted {
                    if let Some(gone) = queue.remove(old)
                        && gone.status == Status::Resolved
                    {
                        forgotten.push(gone.fingerprint);
                    }
                }
                if !forgotten.is_empty() {
                    lock(&self.forgotten).extend(forgotten);
                }
                for (seq, event) in (first..).zip(events) {
                    queue.insert(seq, waiting(event));
                }
            }
            Err(error) => {
                // The database refused: the notifications cannot be kept,
                // and that is a drop like the bound's.
                tracing::error!(sink = %self.name, %error, "Cannot write notifications to the outbox; they are dropped.");
                self.dropped((skipped + events.len()) as u64, &error.to_string());
                return;
            }
        }
        self.stats
            .queued
            .store(queue.len() as u64, Ordering::Relaxed);
        drop(queue);
        let lost = (skipped + evicted.len()) as u64;
        if lost > 0 {
            let total = self.dropped(lost, "");
            // The first drop, then once per thousand: a sink down for
            // hours must not flood the log as well.
            if total == lost || (total - lost) / 1000 != total / 1000 {
                tracing::error!(sink = %self.name, dropped = total, max_queue = self.settings.max_queue, "Outbox full; the oldest notifications are dropped (resolved ones first).");
            }
        }
        self.wake.notify_one();
    }

    fn dropped(&self, count: u64, error: &str) -> u64 {
        let mut health = lock(&self.health);
        health.dropped += count;
        if !error.is_empty() {
            health.last_error = error.to_string();
        }
        self.stats
            .dropped_alerts
            .fetch_add(count, Ordering::Relaxed)
            + count
    }

    /// Notifications waiting now.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why the sink counts as failing now, if it does.
    pub fn failing(&self) -> Option<String> {
        lock(&self.health).failing(&self.name, Instant::now(), self.settings.failing_after)
    }

    /// Hands the alerts firing at start to the sink (before its first
    /// notification), for sinks that re-send what is firing.
    pub fn restore(&self, firing: Vec<AlertEvent>) {
        *lock(&self.restored) = Some(firing);
        self.wake.notify_one();
    }

    /// Asks the task to stop once nothing waits or the sink fails; what
    /// is left stays in the database for the next start.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The oldest waiting notification, if any.
    fn first(&self) -> Option<(u64, AlertEvent)> {
        loop {
            let (seq, bytes) = match self.table.first() {
                Ok(row) => row?,
                Err(error) => {
                    tracing::error!(sink = %self.name, %error, "Cannot read the outbox.");
                    return None;
                }
            };
            match serde_json::from_slice(&bytes) {
                Ok(event) => return Some((seq, event)),
                Err(_) => self.delivered(seq),
            }
        }
    }

    /// `seq` was accepted: its row goes. Only every
    /// [`SYNC_EVERY`]th removal, and the one that empties the outbox, is
    /// synced to disk (pushes always are): a crash may send up to that many
    /// notifications again, and draining a backlog does not cost a disk sync
    /// per notification.
    fn delivered(&self, seq: u64) {
        let mut queue = lock(&self.queue);
        let removals = self.removals.fetch_add(1, Ordering::Relaxed) + 1;
        let durable = removals.is_multiple_of(SYNC_EVERY) || queue.len() <= 1;
        if let Err(error) = self.table.remove(seq, durable) {
            tracing::error!(sink = %self.name, %error, "Cannot remove a delivered notification from the outbox; it will be sent again.");
            return;
        }
        queue.remove(&seq);
        self.stats
            .queued
            .store(queue.len() as u64, Ordering::Relaxed);
    }

    fn succeeded(&self) {
        let mut health = lock(&self.health);
        if health.failing_since.is_some() || health.dropped > 0 {
            tracing::info!(sink = %self.name, "Sink accepts notifications again.");
        }
        *health = Health::default();
    }

    /// Records the `failures`th failure in a row.
    fn failed(&self, error: &str, failures: u32) {
        let mut health = lock(&self.health);
        health.failing_since.get_or_insert_with(Instant::now);
        health.last_error = error.to_string();
        drop(health);
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        // The first failure of a spell and then every 100th.
        if failures % 100 == 1 {
            tracing::warn!(sink = %self.name, failures, error, "Sink failed; the notification stays in the outbox and is retried.");
        }
    }
}

fn waiting(event: &AlertEvent) -> Waiting {
    Waiting {
        fingerprint: event.alert.fingerprint,
        status: event.status,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data, no invariant a panic could break halfway.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sink's task: sends the oldest notification until the sink accepts
/// it, then the next; re-sends what is firing every
/// [`Sink::refresh_interval`] whenever nothing waits (counted from the
/// last re-send, not the last notification: a steady trickle of other
/// alerts must not starve the re-sends).
pub async fn drive(outbox: Arc<Outbox>, sink: impl Sink) {
    deliver(&outbox, sink).await;
    // The removals since the last sync were not synced: a clean stop
    // makes them durable, so a restart does not send them again.
    if let Err(error) = outbox.table.sync() {
        tracing::error!(sink = %outbox.name, %error, "Cannot sync the outbox; a restart may send some notifications again.");
    }
}

async fn deliver(outbox: &Outbox, mut sink: impl Sink) {
    let settings = outbox.settings;
    let mut failures = 0u32;
    let refresh = sink.refresh_interval();
    let mut refreshed = tokio::time::Instant::now();
    loop {
        if let Some(firing) = lock(&outbox.restored).take() {
            sink.restore(&firing);
        }
        let forgotten = std::mem::take(&mut *lock(&outbox.forgotten));
        if !forgotten.is_empty() {
            sink.forget(&forgotten);
        }
        let closing = outbox.closing.load(Ordering::SeqCst);
        let attempt = match outbox.first() {
            Some((seq, event)) => {
                let result = sink.alert(&event).await;
                if result.is_ok() {
                    outbox.delivered(seq);
                    outbox.stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                result
            }
            None if closing => return,
            None => {
                let due = refresh.map(|every| refreshed + every);
                let refresh_due = match due {
                    Some(due) => tokio::select! {
                        () = outbox.wake.notified() => false,
                        () = tokio::time::sleep_until(due) => true,
                    },
                    None => {
                        outbox.wake.notified().await;
                        false
                    }
                };
                if !refresh_due {
                    continue;
                }
                let result = sink.refresh().await;
                if result.is_ok() {
                    refreshed = tokio::time::Instant::now();
                }
                result
            }
        };
        match attempt {
            Ok(()) => {
                failures = 0;
                outbox.succeeded();
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                outbox.failed(&error.to_string(), failures);
                if outbox.closing.load(Ordering::SeqCst) {
                    return;
                }
                let wait = retry_delay(
                    failures,
                    settings.retry_initial,
                    settings.retry_max,
                    jitter(),
                );
                // A close cuts the wait short; new notifications do not:
                // they queue behind the one that failed.
                let sleep = tokio::time::sleep(wait);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        () = &mut sleep => break,
                        () = outbox.wake.notified() => {
                            if outbox.closing.load(Ordering::SeqCst) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{Severity, State, TrackedAlert};
    use crate::sinks::SinkError;
    use crate::state::StateDb;

    fn event(name: &str, status: Status, at_ms: u64) -> AlertEvent {
        let labels = vec![];
        AlertEvent {
            status,
            rule: "r".into(),
            target: "t".into(),
            alert: TrackedAlert {
                fingerprint: Fingerprint::of("r", "t", name, &labels),
                name: name.into(),
                severity: Severity::Warning,
                summary: String::new(),
                labels,
                annotations: vec![],
                for_ms: 0,
                keep_firing_for_ms: 0,
                state: State::Firing,
                active_since_ms: 0,
                last_seen_ms: at_ms,
            },
            at_ms,
        }
    }

    fn queue(items: &[(&str, Status)]) -> BTreeMap<u64, Waiting> {
        items
            .iter()
            .enumerate()
            .map(|(seq, (name, status))| (seq as u64, waiting(&event(name, *status, 0))))
            .collect()
    }

    use Status::{Firing as F, Resolved as R};

    #[test]
    fn the_bound_drops_the_oldest_resolved_episode_first_then_the_oldest_firing() {
        // Room left: nothing goes.
        assert!(evict(&queue(&[("a", F), ("a", R)]), 3, 1).is_empty());
        // a fired and resolved while the sink was away: both go, b's
        // firing (older than a's resolved) stays.
        let q = queue(&[("a", F), ("b", F), ("a", R), ("c", F)]);
        assert_eq!(evict(&q, 4, 1), [0, 2]);
        // No resolved: the oldest firing.
        assert_eq!(evict(&queue(&[("a", F), ("b", F), ("c", F)]), 3, 1), [0]);
        // A resolved whose firing was already sent goes alone.
        assert_eq!(evict(&queue(&[("b", F), ("a", R), ("c", F)]), 3, 1), [1]);
        // Several at once, down to the bound (a lowered bound).
        let q = queue(&[("a", F), ("a", R), ("b", F), ("b", R), ("c", F), ("d", F)]);
        assert_eq!(evict(&q, 2, 1), [0, 1, 2, 3, 4]);
        // Room for a batch of three.
        assert_eq!(evict(&queue(&[("a", F), ("b", F), ("b", R)]), 4, 3), [1, 2]);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let full: Vec<u128> = (1..=9)
            .map(|n| retry_delay(n, initial, max, 1.0).as_millis())
            .collect();
        assert_eq!(full, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(retry_delay(3, initial, max, 0.0).as_millis(), 200);
        assert_eq!(retry_delay(u32::MAX, initial, max, 0.5).as_millis(), 3750);
        let spread = (0..100).map(|_| jitter()).collect::<Vec<_>>();
        assert!(spread.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(spread.iter().any(|j| *j != spread[0]));
    }

    #[test]
    fn a_sink_is_failing_once_it_drops_or_after_failing_long_enough() {
        let now = Instant::now();
        let after = Duration::from_secs(60);
        let mut health = Health::default();
        assert_eq!(health.failing("s", now, after), None);
        health.failing_since = Some(now);
        health.last_error = "HTTP 503".into();
        assert_eq!(
            health.failing("s", now + Duration::from_secs(59), after),
            None
        );
        assert_eq!(
            health
                .failing("s", now + Duration::from_secs(61), after)
                .unwrap(),
            "sink `s` has failed for 1m 1s: HTTP 503"
        );
        let dropped = Health {
            dropped: 3,
            ..Health::default()
        };
        assert!(
            dropped
                .failing("s", now, after)
                .unwrap()
                .starts_with("sink `s` dropped 3 notifications")
        );
    }

    /// A sink that fails while `down` is set and records what it took,
    /// and the alerts it was told to forget.
    #[derive(Clone, Default)]
    struct Flaky {
        down: Arc<AtomicBool>,
        taken: Arc<Mutex<Vec<(String, Status)>>>,
        forgotten: Arc<Mutex<Vec<Fingerprint>>>,
    }

    #[async_trait::async_trait]
    impl Sink for Flaky {
        async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SinkError("HTTP 503".into()));
            }
            self.taken
                .lock()
                .unwrap()
                .push((event.alert.name.clone(), event.status));
            Ok(())
        }

        fn forget(&mut self, alerts: &[Fingerprint]) {
            self.forgotten.lock().unwrap().extend_from_slice(alerts);
        }
    }

    fn settings(max_queue: usize) -> OutboxSettings {
        OutboxSettings {
            max_queue,
            retry_initial: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            failing_after: Duration::from_secs(3600),
        }
    }

    fn open(db: &StateDb, max_queue: usize) -> Arc<Outbox> {
        let stats = Arc::new(SinkStats::default());
        Arc::new(Outbox::open("s".into(), db.outbox("s"), settings(max_queue), stats).unwrap())
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let wait = async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {what}"));
    }

    #[tokio::test]
    async fn notifications_wait_out_an_outage_and_a_restart_and_arrive_in_order() {
        let db = StateDb::in_memory().unwrap();
        let sink = Flaky::default();
        sink.down.store(true, Ordering::SeqCst);
        let outbox = open(&db, 100);
        let task = tokio::spawn(drive(outbox.clone(), sink.clone()));
        outbox.push(&[Arc::new(event("a", F, 1))]);
        outbox.push(&[Arc::new(event("b", F, 2))]);
        until("a failed attempt", || {
            outbox.stats.failed.load(Ordering::SeqCst) > 0
        })
        .await;
        // A restart in the middle of the outage: the task stops, the rows
        // stay, a new outbox on the same database finds them.
        outbox.close();
        task.await.unwrap();
        assert_eq!(outbox.len(), 2);
        let outbox = open(&db, 100);
        assert_eq!(outbox.len(), 2);
        outbox.push(&[Arc::new(event("a", R, 3))]);
        let task = tokio::spawn(drive(outbox.clone(), sink.clone()));
        sink.down.store(false, Ordering::SeqCst);
        until("everything delivered", || outbox.is_empty()).await;
        assert_eq!(
            *sink.taken.lock().unwrap(),
            [("a".into(), F), ("b".into(), F), ("a".into(), R)]
        );
        assert!(db.outbox("s").all().unwrap().is_empty());
        assert_eq!(outbox.failing(), None);
        outbox.close();
        task.await.unwrap();
    }

    /// Takes everything and counts its re-sends, asked for every 20 ms.
    #[derive(Clone, Default)]
    struct Resending {
        refreshes: Arc<std::sync::atomic::AtomicU32>,
    }

    #[async_trait::async_trait]
    impl Sink for Resending {
        async fn alert(&mut self, _: &AlertEvent) -> Result<(), SinkError> {
            Ok(())
        }
        fn refresh_interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(20))
        }
        async fn refresh(&mut self) -> Result<(), SinkError> {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_steady_trickle_of_notifications_does_not_starve_the_re_sends() {
        let db = StateDb::in_memory().unwrap();
        let outbox = open(&db, 100);
        let sink = Resending::default();
        let task = tokio::spawn(drive(outbox.clone(), sink.clone()));
        // A notification far more often than the re-send interval, until
        // a re-send happens.
        let mut n = 0;
        until("a re-send", || {
            n += 1;
            outbox.push(&[Arc::new(event("a", F, n))]);
            sink.refreshes.load(Ordering::SeqCst) > 0
        })
        .await;
        outbox.close();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_outbox_drops_counts_and_reports_the_sink_failing() {
        let db = StateDb::in_memory().unwrap();
        let sink = Flaky::default();
        sink.down.store(true, Ordering::SeqCst);
        let outbox = open(&db, 3);
        for (n, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            outbox.push(&[Arc::new(event(name, F, n as u64))]);
        }
        outbox.push(&[Arc::new(event("d", R, 9))]);
        // a and b made room for d and e; no resolved one waited when d's
        // came, so the oldest firing, c, made room for it.
        assert_eq!(outbox.len(), 3);
        assert_eq!(outbox.stats.dropped_alerts.load(Ordering::SeqCst), 3);
        assert!(
            outbox
                .failing()
                .unwrap()
                .contains("dropped 3 notifications")
        );
        let task = tokio::spawn(drive(outbox.clone(), sink.clone()));
        sink.down.store(false, Ordering::SeqCst);
        until("everything delivered", || outbox.is_empty()).await;
        assert_eq!(
            *sink.taken.lock().unwrap(),
            [("d".into(), F), ("e".into(), F), ("d".into(), R)]
        );
        // Delivering again ends the report.
        assert_eq!(outbox.failing(), None);
        outbox.close();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_sink_that_re_sends_hears_of_the_resolves_the_bound_dropped() {
        let db = StateDb::in_memory().unwrap();
        let sink = Flaky::default();
        sink.down.store(true, Ordering::SeqCst);
        let outbox = open(&db, 2);
        for item in [event("a", F, 1), event("a", R, 2), event("b", F, 3)] {
            outbox.push(&[Arc::new(item)]);
        }
        let task = tokio::spawn(drive(outbox.clone(), sink.clone()));
        sink.down.store(false, Ordering::SeqCst);
        until("everything delivered", || outbox.is_empty()).await;
        assert_eq!(*sink.taken.lock().unwrap(), [("b".into(), F)]);
        assert_eq!(
            *sink.forgotten.lock().unwrap(),
            [event("a", R, 0).alert.fingerprint]
        );
        outbox.close();
        task.await.unwrap();
    }
}
