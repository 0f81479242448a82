//! Sinks: where alert events (and, for sinks that ask, evaluations) go.
//!
//! Every sink runs on a task of its own, so a slow or failing sink never
//! holds up evaluation or another sink: the alert stage only ever *offers*
//! an event ([`Delivery`]). A sink takes the alerts its [`Route`] matches.
//! Local sinks (stdout, file, a channel) wait behind a bounded queue in
//! memory; network sinks (webhook, Alertmanager) behind a durable
//! [`outbox`](outbox::Outbox) in the state database.
//!
//! | guarantees | refuses to |
//! |---|---|
//! | each sink sees alert events in the order they happened | block the pipeline on a sink |
//! | a network sink gets every event at least once, across outages and restarts, while its outbox bound holds (see [`outbox`]) | retry a failed sink without backoff |
//! | evaluations never crowd out alert events: one is queued only while the sink's queue is at most half full | grow a queue without bound |
//! | an event that finds a queue full is counted and logged per sink; a network sink that drops or keeps failing is raised as `DeliveryFailing{sink}` on the others | drop an event silently |
//!
//! | sink | file | takes |
//! |---|---|---|
//! | `stdout` | `stdout.rs` | a line per event (text or JSON), and evaluations when asked |
//! | `file` | `file.rs` | JSON lines appended to a file, for log shippers |
//! | `webhook` | `webhook.rs` | the Alertmanager webhook payload (version 4), one alert per POST |
//! | `alertmanager` | `alertmanager.rs` | Alertmanager's `POST /api/v2/alerts`, firing alerts re-sent on an interval |
//! | channel | `channel.rs` | everything, into a tokio channel (embedders, tests) |

pub mod alertmanager;
pub mod channel;
pub mod file;
pub mod outbox;
pub mod post;
pub mod route;
pub mod spec;
pub mod stdout;
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

pub use alertmanager::AlertmanagerSink;
pub use channel::{ChannelSink, Delivered};
pub use file::FileSink;
pub use outbox::{Outbox, OutboxSettings};
pub use post::{Endpoint, IDEMPOTENCY_HEADER, Poster, Secret};
pub use route::Route;
pub use spec::{Console, SinkKind, SinkSpec};
pub use stdout::{Format, StdoutSink};
pub use webhook::{WebhookSink, idempotency_key};

use crate::alerts::{AlertEvent, Outlet};
use crate::names::{RuleName, TenantName};
use crate::plugins::Evaluation;
use crate::state::{StateDb, StateError};

/// Events waiting for one sink before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 8192;

/// Why a sink could not take an event.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Something that takes alert events, one at a time, in order.
///
/// Implementations may take their time (a network round trip, a retry):
/// each sink has its own task and queue.
#[async_trait::async_trait]
pub trait Sink: Send + 'static {
    /// Delivers one alert event (firing or resolved).
    async fn alert(&mut self, event: &AlertEvent) -> Result<(), SinkError>;

    /// Takes one evaluation. Called only for sinks added with
    /// [`SinkOptions::evaluations`]; the default ignores it.
    async fn evaluation(&mut self, _evaluation: &Arc<Evaluation>) -> Result<(), SinkError> {
        Ok(())
    }

    /// How often the sink wants [`refresh`](Sink::refresh) called while no
    /// event waits for it (behind an outbox only); `None`, the default,
    /// for never.
    fn refresh_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// Sends again what the receiver must keep hearing about (Alertmanager
    /// forgets a firing alert that is not re-sent).
    async fn refresh(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The alerts firing when the host started, before the first event
    /// (behind an outbox only): what [`refresh`](Sink::refresh) starts from.
    fn restore(&mut self, _firing: &[AlertEvent]) {}

    /// Alerts whose resolve the outbox's bound dropped (behind an outbox
    /// only): a sink that re-sends what is firing must stop re-sending
    /// them, so that the receiver lets them expire.
    fn forget(&mut self, _alerts: &[crate::alerts::Fingerprint]) {}
}

/// How a sink is attached.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Whether it also receives every evaluation (a line per rule per
    /// sample: useful on a console, too much for a receiver of alerts).
    pub evaluations: bool,
    /// Events that may wait for it before new ones are dropped.
    pub queue: usize,
    /// Which alerts it takes.
    pub route: Route,
    /// Whether a tenant's alerts reach it only when the tenant was granted
    /// it (and chose it): true for every `[[sinks]]` sink. Only the console
    /// of a host without `[[sinks]]`, the operator's own view, shows all.
    pub tenant_grants: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            evaluations: false,
            queue: DEFAULT_QUEUE,
            route: Route::default(),
            tenant_grants: true,
        }
    }
}

/// Which sinks each tenant's alerts go to (granted and chosen), by tenant.
pub type TenantSinks = BTreeMap<TenantName, BTreeSet<String>>;

/// The tenants' sinks as [`Delivery`] reads them, replaced on a config
/// reload. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TenantRoutes(Arc<RwLock<TenantSinks>>);

impl TenantRoutes {
    /// Replaces the tenants' sinks.
    pub fn set(&self, sinks: TenantSinks) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = sinks;
    }

    /// Whether an alert of `rule` may go to `sink`: always for the
    /// operator's rules (and the host's), for a tenant's when its tenant
    /// has the sink.
    fn allows(&self, sink: &str, rule: &RuleName) -> bool {
        let Some(tenant) = rule.tenant() else {
            return true;
        };
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(tenant)
            .is_some_and(|sinks| sinks.contains(sink))
    }
}

/// What one sink has been through, readable while it runs.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Alert events it took.
    pub delivered: AtomicU64,
    /// Alert events it failed to take (the sink returned an error).
    pub failed: AtomicU64,
    /// Alert events dropped because its queue (or outbox) was full.
    pub dropped_alerts: AtomicU64,
    /// Alert events waiting in its outbox now (network sinks only).
    pub queued: AtomicU64,
    /// Evaluations not offered because its queue was half full or more.
    pub dropped_evaluations: AtomicU64,
}

enum Message {
    Alert(Arc<AlertEvent>),
    Evaluation(Arc<Evaluation>),
}

/// How events wait for a sink.
enum Waiting {
    /// In memory, `capacity` at most.
    Queue {
        queue: mpsc::Sender<Message>,
        capacity: usize,
    },
    /// In the state database.
    Outbox(Arc<Outbox>),
}

struct Attached {
    name: Arc<str>,
    waiting: Waiting,
    route: Route,
    /// See [`SinkOptions::tenant_grants`].
    tenant_grants: bool,
    evaluations: bool,
    stats: Arc<SinkStats>,
    task: tokio::task::JoinHandle<()>,
}

/// The delivery stage: every attached sink, each on its own task.
#[derive(Default)]
pub struct Delivery {
    sinks: Vec<Attached>,
    console: Console,
    tenants: TenantRoutes,
}

impl Delivery {
    /// No sinks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// How a `stdout` sink declared in the config writes (the command
    /// line's `--format` and `--evaluations`).
    pub fn with_console(mut self, console: Console) -> Self {
        self.console = console;
        self
    }

    /// How a `stdout` sink declared in the config writes.
    pub fn console(&self) -> Console {
        self.console
    }

    /// Attaches `sink` under `name` and starts its task (call inside a
    /// tokio runtime).
    pub fn add(&mut self, name: &str, sink: impl Sink, options: SinkOptions) -> Arc<SinkStats> {
        let capacity = options.queue.max(2);
        let (queue, messages) = mpsc::channel(capacity);
        let stats = Arc::new(SinkStats::default());
        let name: Arc<str> = name.into();
        let task = tokio::spawn(drive(name.clone(), sink, messages, stats.clone()));
        self.sinks.push(Attached {
            name,
            waiting: Waiting::Queue { queue, capacity },
            route: options.route,
            tenant_grants: options.tenant_grants,
            evaluations: options.evaluations,
            stats: stats.clone(),
            task,
        });
        stats
    }

    /// Every attached sink's counters, by name in the order attached: the
    /// read model of this stage.
    pub fn stats(&self) -> Vec<(Arc<str>, Arc<SinkStats>)> {
        self.sinks
            .iter()
            .map(|sink| (sink.name.clone(), sink.stats.clone()))
            .collect()
    }

    /// Attaches network sink `sink` under `name` behind a durable outbox in
    /// `state`, starting with what its outbox kept from the last run, and
    /// starts its task (call inside a tokio runtime). It never receives
    /// evaluations.
    pub fn add_durable(
        &mut self,
        name: &str,
        sink: impl Sink,
        route: Route,
        settings: OutboxSettings,
        state: &StateDb,
    ) -> Result<Arc<SinkStats>, StateError> {
        let stats = Arc::new(SinkStats::default());
        let name: Arc<str> = name.into();
        let outbox = Arc::new(Outbox::open(
            name.clone(),
            state.outbox(&name),
            settings,
            stats.clone(),
        )?);
        let task = tokio::spawn(outbox::drive(outbox.clone(), sink));
        self.sinks.push(Attached {
            name,
            waiting: Waiting::Outbox(outbox),
            route,
            tenant_grants: true,
            evaluations: false,
            stats: stats.clone(),
            task,
        });
        Ok(stats)
    }

    /// The tenants' sinks this delivery follows: set them at start and
    /// on every config reload.
    pub fn tenant_routes(&self) -> TenantRoutes {
        self.tenants.clone()
    }

    /// Whether `sink` takes `event`: its route, and the tenant's grant.
    fn takes(&self, sink: &Attached, event: &AlertEvent) -> bool {
        sink.route.matches(&sink.name, event)
            && (!sink.tenant_grants || self.tenants.allows(&sink.name, &event.rule))
    }

    /// Whether no sink is attached.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// The network sinks failing now (dropping, or failing for their
    /// `failing_after`), each with why: what the host raises as
    /// `DeliveryFailing{sink}`.
    pub fn failing(&self) -> Vec<(String, String)> {
        self.sinks
            .iter()
            .filter_map(|sink| match &sink.waiting {
                Waiting::Outbox(outbox) => Some((sink.name.to_string(), outbox.failing()?)),
                Waiting::Queue { .. } => None,
            })
            .collect()
    }

    /// Hands the alerts firing at start to the network sinks that re-send
    /// what is firing (Alertmanager's).
    pub fn restored(&self, firing: &[AlertEvent]) {
        for sink in &self.sinks {
            if let Waiting::Outbox(outbox) = &sink.waiting {
                let routed = firing
                    .iter()
                    .filter(|event| self.takes(sink, event))
                    .cloned()
                    .collect();
                outbox.restore(routed);
            }
        }
    }

    /// Whether any sink wants evaluations (so the caller can skip building
    /// them).
    pub fn wants_evaluations(&self) -> bool {
        self.sinks.iter().any(|sink| sink.evaluations)
    }

    /// Offers an alert event to every sink whose route takes it, never
    /// waiting.
    pub fn alert(&self, event: AlertEvent) {
        self.alerts(vec![event]);
    }

    /// Offers alert events, in order, to every sink whose route takes
    /// them, never waiting on a sink. A network sink's share is written to
    /// its outbox in one transaction (one durable commit per sink however
    /// many events a verdict caused).
    pub fn alerts(&self, events: Vec<AlertEvent>) {
        if events.is_empty() {
            return;
        }
        let events: Vec<Arc<AlertEvent>> = events.into_iter().map(Arc::new).collect();
        for sink in &self.sinks {
            let routed = events.iter().filter(|event| self.takes(sink, event));
            match &sink.waiting {
                Waiting::Outbox(outbox) => {
                    outbox.push(&routed.cloned().collect::<Vec<_>>());
                }
                Waiting::Queue { queue, .. } => {
                    for event in routed {
                        if queue.try_send(Message::Alert(event.clone())).is_err() {
                            queue_full(sink, event);
                        }
                    }
                }
            }
        }
    }

    /// Offers an evaluation to the sinks that want them, while their queue
    /// is at most half full.
    pub fn evaluation(&self, evaluation: &Arc<Evaluation>) {
        for sink in self.sinks.iter().filter(|sink| sink.evaluations) {
            let Waiting::Queue { queue, capacity } = &sink.waiting else {
                continue;
            };
            let has_room = queue.capacity() > capacity / 2;
            if !has_room
                || queue
                    .try_send(Message::Evaluation(evaluation.clone()))
                    .is_err()
            {
                sink.stats
                    .dropped_evaluations
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes every queue and waits up to `grace` for the sinks to take what
    /// is queued. Returns, per in-memory sink, the events still waiting
    /// when it was cut off (also logged). A network sink stops at its first
    /// failure after the close; what its outbox holds is kept for the next
    /// start, logged, and not counted here: it is not lost.
    pub async fn close(self, grace: Duration) -> Vec<(Arc<str>, usize)> {
        let deadline = tokio::time::Instant::now() + grace;
        let mut left = Vec::new();
        for sink in &self.sinks {
            if let Waiting::Outbox(outbox) = &sink.waiting {
                outbox.close();
            }
        }
        for sink in self.sinks {
            let Attached {
                name,
                waiting,
                task,
                ..
            } = sink;
            let (queued, outbox) = match waiting {
                Waiting::Queue { queue, .. } => (queue.max_capacity() - queue.capacity(), None),
                Waiting::Outbox(outbox) => (0, Some(outbox)),
            };
            let mut task = task;
            let finished = tokio::time::timeout_at(deadline, &mut task).await.is_ok();
            if !finished {
                task.abort();
            }
            match outbox {
                Some(outbox) if !outbox.is_empty() => {
                    tracing::warn!(sink = %name, waiting = outbox.len(), "Notifications wait in the outbox; they are sent after the next start.");
                }
                Some(_) => {}
                None if !finished => {
                    tracing::warn!(sink = %name, waiting = queued, "Sink did not finish within the shutdown grace; events still queued are not delivered.");
                    left.push((name, queued));
                }
                None => {}
            }
        }
        left
    }
}

impl Outlet for Delivery {
    fn alert(&self, event: AlertEvent) {
        Delivery::alert(self, event);
    }

    fn alerts(&self, events: Vec<AlertEvent>) {
        Delivery::alerts(self, events);
    }

    fn evaluation(&self, evaluation: &Arc<Evaluation>) {
        Delivery::evaluation(self, evaluation);
    }

    fn wants_evaluations(&self) -> bool {
        Delivery::wants_evaluations(self)
    }

    fn failing(&self) -> Vec<(String, String)> {
        Delivery::failing(self)
    }

    fn restored(&self, firing: &[AlertEvent]) {
        Delivery::restored(self, firing);
    }
}

/// Counts, and logs the first and every 1000th, an event an in-memory
/// queue had no room for: a stuck sink must not flood the log as well.
fn queue_full(sink: &Attached, event: &AlertEvent) {
    let dropped = sink.stats.dropped_alerts.fetch_add(1, Ordering::Relaxed) + 1;
    if dropped % 1000 == 1 {
        tracing::error!(
            sink = %sink.name,
            alert = %event.alert.name,
            status = ?event.status,
            dropped,
            "Sink is too far behind; alert event dropped."
        );
    }
}

async fn drive(
    name: Arc<str>,
    mut sink: impl Sink,
    mut messages: mpsc::Receiver<Message>,
    stats: Arc<SinkStats>,
) {
    while let Some(message) = messages.recv().await {
        let result = match &message {
            Message::Alert(event) => sink.alert(event).await,
            Message::Evaluation(evaluation) => {
                if let Err(error) = sink.evaluation(evaluation).await {
                    tracing::debug!(sink = %name, %error, "Sink refused an evaluation.");
                }
                continue;
            }
        };
        match result {
            Ok(()) => stats.delivered.fetch_add(1, Ordering::Relaxed),
            Err(error) => {
                tracing::error!(sink = %name, %error, "Sink failed to take an alert event.");
                stats.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}
