//! The running host: the stages, wired together. Each stage lives in its
//! own module; this one only builds them, connects their channels and hands
//! each message to the stage it is for.
//!
//! ```text
//! sources::Pollers ─Sample─▶ routing::Router ─▶ rule workers ─Evaluation─▶ alerts::Alerting ─AlertEvent─▶ sinks::Delivery
//!                                  ▲                               │ verdict.actions
//!                                  └──── action outcomes ◀── actions::Dispatch
//! config::ConfigWatch and plugins::reload change targets, rules and actions as files change.
//! ```
//!
//! [`App::build`] does everything that can fail at start (open the state
//! database, compile and configure every rule) before anything runs, so a
//! host either starts fully configured or not at all. [`App::run`] stops
//! within a bounded time: see [`Settings::shutdown_grace`].

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use tokio::sync::mpsc;

use crate::actions::ClaimStore;
use crate::actions::dispatch::Dispatch;
use crate::alerts::{AlertStats, Alerting};
use crate::api::{Api, Views};
use crate::clock::now_ms;
use crate::cluster::Leases;
use crate::cluster::alert_state::SharedAlerts;
use crate::cluster::nats::{AlertBucket, LeaseBucket, Nats, NotificationStream};
use crate::cluster::notify;
use crate::cluster::rule_store::RuleStore;
use crate::cluster::rule_sync::RuleSync;
use crate::config::ClusterSettings;
use crate::config::{ConfigWatch, ReloadRequest, Settings, TenantBoard};
use crate::names::RuleName;
use crate::plugins::reload::{self, Change, ReloaderHandle, StatusBoard};
use crate::plugins::{self, RuleBoard, Stopping, WorkerEvent};
use crate::routing::{Router, RouterStats};
use crate::runtime::{CompileCache, Runtime, Sample};
use crate::sinks::{Delivery, TenantRoutes};
use crate::sources::{Pollers, TargetBoard};
use crate::state::DataDir;

/// Samples in flight between the sources and the router.
const SAMPLE_QUEUE: usize = 1024;
/// Evaluations in flight between the rule workers and the alert stage.
const RESULT_QUEUE: usize = 4096;
/// How often the host checks on itself: samples dropped per rule,
/// breakers closed.
const TICK: Duration = Duration::from_secs(5);
/// Most samples, and most evaluations, the app's loop takes in one turn.
/// Targets due together are polled together (see `sources::pollers`), so
/// their samples, and then the rules' evaluations, arrive in bursts:
/// taking a burst whole costs one wake-up and one pass over the loop's
/// branches instead of one per item, and lets the alert stage save a
/// burst's transitions in one durable commit
/// ([`Alerting::evaluated_batch`]). Items wait in their bounded queues in
/// the meantime; none is dropped.
const BATCH: usize = 256;
/// How long a burst may gather once its first item has woken the loop.
/// A burst's samples come as their polls finish, over a millisecond or
/// two, and each one that finds the loop asleep wakes it (and then an
/// evaluation thread, whose every result wakes the loop again): most of
/// the host's CPU at 1,000 targets was the scheduler switching threads.
/// Waiting this long after the first item lets the rest of the burst
/// arrive without waking anybody; a sample is at most this much later
/// to its rules, and its evaluation this much later to the alert stage.
const GATHER: Duration = Duration::from_millis(2);

/// A host, configured and loaded, ready to run.
pub struct App {
    settings: Settings,
    router: Router,
    results: mpsc::Receiver<WorkerEvent>,
    alerting: Alerting<Delivery>,
    dispatch: Dispatch,
    reloader: ReloaderHandle,
    changes: mpsc::UnboundedReceiver<Change>,
    sample_tx: mpsc::Sender<Arc<Sample>>,
    samples: mpsc::Receiver<Arc<Sample>>,
    status: StatusBoard,
    board: RuleBoard,
    targets: TargetBoard,
    api: Option<Api>,
    running: Arc<AtomicBool>,
    reload_requests: mpsc::Receiver<ReloadRequest>,
    config_path: Option<PathBuf>,
    /// Which sinks each tenant's alerts go to, set again on every reload.
    tenant_routes: TenantRoutes,
    /// The tenants as the API shows them, published again on every reload.
    tenant_board: TenantBoard,
    /// In a cluster: the lease bucket, opened (and checked) at build.
    leases: Option<LeaseBucket>,
    /// In a cluster: the alert state bucket and the notification stream.
    shared: Option<Shared>,
    /// In a cluster: the task that runs the rules pushed to it.
    rule_sync: Option<RuleSync>,
}

/// What a node shares with the cluster besides leases (issue 16): alert
/// state and notifications.
struct Shared {
    alerts: AlertBucket,
    notifications: NotificationStream,
}

/// Opens the alert state bucket and the notification stream.
async fn join_shared(nats: &Nats, cluster: &ClusterSettings) -> anyhow::Result<Shared> {
    Ok(Shared {
        alerts: nats.alert_states(cluster).await?,
        notifications: nats.notifications(cluster, notify::ACK_WAIT).await?,
    })
}

/// In a cluster the console and files stay local; transitions go to the
/// notification stream through a local durable outbox named `nats`, and
/// the network sinks are driven by the notifier (see `cluster::notify`).
async fn attach_in_cluster(
    delivery: &mut Delivery,
    settings: &Settings,
    shared: &Shared,
    state: &crate::state::StateDb,
    console: crate::sinks::Console,
) -> anyhow::Result<()> {
    let local: Vec<_> = settings
        .sinks
        .iter()
        .filter(|spec| spec.is_local())
        .cloned()
        .collect();
    crate::sinks::spec::attach(delivery, &local, state, console).await?;
    delivery
        .add_durable(
            "nats",
            notify::StreamSink::new(shared.notifications.clone()),
            crate::sinks::Route::default(),
            crate::sinks::OutboxSettings::default(),
            state,
        )
        .map_err(|error| {
            anyhow::anyhow!("cannot open the outbox of the notification stream: {error}")
        })?;
    Ok(())
}

/// What a stop left undone, also logged.
#[derive(Debug, Default)]
pub struct Stopped {
    /// Per rule, samples that were queued but not evaluated because the
    /// grace period ran out (only rules that left some).
    pub abandoned: BTreeMap<RuleName, u64>,
    /// Per sink, events still queued when it was cut off.
    pub undelivered: Vec<(Arc<str>, usize)>,
}

impl App {
    /// Opens the state database in `data_dir`, loads every rule and starts
    /// the stages that hand alert events to `delivery`, plus the sinks the
    /// config declares (`[[sinks]]`, network ones behind their outbox in
    /// the state database). Any failure is returned with the culprit named;
    /// nothing is polled until [`App::run`].
    pub async fn build(
        settings: Settings,
        data_dir: &DataDir,
        mut delivery: Delivery,
    ) -> anyhow::Result<App> {
        data_dir.create()?;
        // Joining the cluster can fail (no server, a server too old, a
        // bucket made for another partition count): before anything runs.
        let (leases, shared, claims, rule_store) = match &settings.cluster {
            None => (None, None, None, None),
            Some(cluster) => {
                let nats = Nats::connect(cluster).await?;
                let leases = nats.leases(cluster, true).await?;
                let claims: Arc<dyn ClaimStore> = Arc::new(nats.claims(cluster).await?);
                (
                    Some(leases),
                    Some(join_shared(&nats, cluster).await?),
                    Some((claims, cluster.node.clone())),
                    Some(RuleStore::open(&nats, cluster).await?),
                )
            }
        };
        let state = data_dir.open_state()?;
        let console = delivery.console();
        match &shared {
            None => {
                crate::sinks::spec::attach(&mut delivery, &settings.sinks, &state, console).await?
            }
            Some(shared) => {
                attach_in_cluster(&mut delivery, &settings, shared, &state, console).await?
            }
        }
        let sink_stats = delivery.stats();
        let tenant_routes = delivery.tenant_routes();
        tenant_routes.set(settings.tenant_sinks());
        // Compiled rules are kept in the data directory's cache, so a
        // restart loads them in milliseconds instead of compiling them again.
        let runtime = Runtime::new()?.with_compile_cache(CompileCache::new(data_dir.cache_dir()));
        let dispatch = Dispatch::start(settings.actions.clone(), settings.audit, &state, claims)?;
        dispatch.reconfigure(settings.actions.clone(), settings.tenant_actions());
        let specs = settings.rules.clone();
        let (loader_runtime, loader_state) = (runtime.clone(), state.clone());
        // Compiling is CPU-heavy (seconds for big components): keep it off
        // the async workers. Each file is read and hashed once, and rules
        // load on up to one thread per core (`plugins::load_all`).
        let loaded = tokio::task::spawn_blocking(move || {
            plugins::load_all(&loader_runtime, &loader_state, &specs)
        })
        .await?;
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        // A tenant's rule that cannot load does not stop the host (nor the
        // other tenants): it is reported, and loads when its file changes.
        let mut set_aside = Vec::new();
        for (result, spec) in loaded.into_iter().zip(&settings.rules) {
            match result {
                Ok(rule) => rules.push(rule),
                Err(error) if spec.tenant.is_some() => {
                    tracing::error!(%error, "A tenant's rule cannot be loaded; the host starts without it and loads it when its file changes.");
                    set_aside.push((spec.name.clone(), error.to_string()));
                }
                Err(error) => errors.push(error.to_string()),
            }
        }
        if !errors.is_empty() {
            bail!(
                "cannot load {} of {} rules:\n{}",
                errors.len(),
                settings.rules.len(),
                errors.join("\n")
            );
        }

        let configured: HashSet<&str> = settings
            .rules
            .iter()
            .map(|spec| spec.name.as_str())
            .collect();
        let alerting = Alerting::start(
            state.clone(),
            &configured,
            settings.alert_limits.clone(),
            delivery,
            now_ms(),
        )?;
        let status = StatusBoard::default();
        for (rule, reason) in set_aside {
            status.refused(&rule, reason);
        }
        let components = runtime.component_stats();
        let (change_tx, changes) = mpsc::unbounded_channel();
        let rule_sync = rule_store.map(|store| {
            start_rule_sync(
                store,
                &settings,
                &runtime,
                &state,
                &status,
                change_tx.clone(),
            )
        });
        let reloader = reload::spawn(
            &rules,
            &settings.rules,
            settings.rule_dirs.clone(),
            runtime,
            state,
            settings.reload_debounce,
            status.clone(),
            change_tx,
        )?;
        let board = RuleBoard::default();
        let (result_tx, results) = mpsc::channel(RESULT_QUEUE);
        let pool = plugins::Pool::start(
            settings.evaluation_threads,
            plugins::Pool::queue_for(settings.polls_per_second()),
        );
        for tenant in &settings.tenants {
            pool.set_share(Some(tenant.name.clone()), tenant.share());
        }
        let mut router = Router::new(board.clone(), result_tx, pool);
        for rule in rules {
            let policy = settings
                .rules
                .iter()
                .find(|spec| spec.name == rule.name)
                .map(|spec| spec.failure_policy)
                .unwrap_or_default();
            router.install(rule, policy);
        }
        let (sample_tx, samples) = mpsc::channel(SAMPLE_QUEUE);
        let targets = TargetBoard::default();
        let running = Arc::new(AtomicBool::new(false));
        // One request waits at a time: more would only queue re-reads of
        // the same file.
        let (reload_tx, reload_requests) = mpsc::channel(1);
        let tenant_board = TenantBoard::default();
        tenant_board.publish(&settings);
        let views = Views {
            targets: targets.clone(),
            alerts: alerting.board(),
            alert_stats: alerting.stats(),
            status: status.clone(),
            rules: board.clone(),
            components,
            router: router.stats(),
            sinks: sink_stats,
            actions: dispatch.stats(),
            audit: dispatch.audit().clone(),
            running: running.clone(),
            reload: reload_tx,
            tenants: tenant_board.clone(),
        };
        let api = Api::bind(&settings.api, data_dir, views).await?;
        Ok(App {
            settings,
            router,
            results,
            alerting,
            dispatch,
            reloader,
            changes,
            sample_tx,
            samples,
            status,
            board,
            targets,
            api,
            running,
            reload_requests,
            config_path: None,
            tenant_routes,
            tenant_board,
            leases,
            shared,
            rule_sync,
        })
    }

    /// Watches `path` (the file `settings` came from) and reloads it on
    /// change or SIGHUP: validated first, then applied target by target and
    /// rule by rule.
    pub fn watch_config(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Each rule's version, hash and last refused reload, live while the
    /// host runs.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    /// Each rule's counters (evaluations, failures by kind, quarantines,
    /// drops), live while the host runs.
    pub fn rules(&self) -> RuleBoard {
        self.board.clone()
    }

    /// Verdicts the alert stage refused per rule (too many active alerts),
    /// live while the host runs.
    pub fn alert_stats(&self) -> AlertStats {
        self.alerting.stats()
    }

    /// Every target's last poll, live while the host runs.
    pub fn targets(&self) -> TargetBoard {
        self.targets.clone()
    }

    /// Where the API listens, when it is on.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().and_then(|api| api.local_addr().ok())
    }

    /// The router's totals, live while the host runs.
    pub fn router_stats(&self) -> Arc<RouterStats> {
        self.router.stats()
    }

    /// A way in for samples besides the configured targets: whatever is
    /// sent here is routed like a polled sample (an embedding program's own
    /// source, a test's scripted one).
    pub fn samples(&self) -> mpsc::Sender<Arc<Sample>> {
        self.sample_tx.clone()
    }

    /// Polls, evaluates and reports until `shutdown` completes, then stops
    /// in bounded time (see [`Settings::shutdown_grace`]) and says what it
    /// left undone.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Stopped> {
        let App {
            settings,
            mut router,
            mut results,
            mut alerting,
            mut dispatch,
            reloader,
            mut changes,
            sample_tx,
            mut samples,
            config_path,
            targets,
            api,
            running,
            reload_requests,
            tenant_routes,
            tenant_board,
            leases,
            shared,
            rule_sync,
            ..
        } = self;
        let mut pollers = Pollers::new(sample_tx, targets);
        // In a cluster the pollers follow what the lease keeper holds.
        let (leases, mut owned) = match (leases, &settings.cluster) {
            (Some(bucket), Some(cluster)) => {
                let leases = Leases::start(bucket, cluster);
                let owned = leases.ownership().subscribe();
                pollers = pollers.in_cluster(leases.ownership(), &cluster.node);
                (Some(leases), Some(owned))
            }
            _ => (None, None),
        };
        let (mut shared, notifier) = start_shared(shared, leases.as_ref(), &settings)?;
        pollers.apply(&settings.targets);
        let mut config = ConfigWatch::start(
            config_path.as_deref(),
            settings.reload_debounce,
            reload_requests,
            settings.clone(),
        )?;
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let api_task = api.map(|api| {
            tokio::spawn(api.serve(async {
                let _ = api_stopped.await;
            }))
        });
        running.store(true, Ordering::Release);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        tracing::info!(
            targets = pollers.len(),
            rules = router.rules(),
            "Vigil is running."
        );

        tokio::pin!(shutdown);
        let (mut sample_batch, mut event_batch) = (Vec::new(), Vec::new());
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // 0 only once closed: then, like a `None`, it disables the branch.
                1.. = samples.recv_many(&mut sample_batch, BATCH) => {
                    gather(&mut samples, &mut sample_batch).await;
                    let overloaded = router.route(sample_batch.drain(..));
                    if !overloaded.is_empty() {
                        alerting.rules_overloaded(overloaded, now_ms());
                    }
                }
                1.. = results.recv_many(&mut event_batch, BATCH) => {
                    gather(&mut results, &mut event_batch).await;
                    let events = event_batch.drain(..);
                    results_taken(events, &mut router, &mut alerting, &dispatch, shared.as_mut()).await;
                },
                Some(change) = changes.recv() => match change {
                    Change::Install(rule, policy) => router.install(*rule, policy),
                    Change::Remove(rule) => router.remove(&rule),
                },
                Some(feedback) = dispatch.next_outcome() => {
                    if let Some(trip) = &feedback.breaker_opened {
                        alerting.breaker_opened(trip, now_ms());
                    }
                    router.feedback(&feedback.rule, feedback.target, feedback.outcome);
                }
                Some(()) = changed(&mut owned) => router.forget_targets(&pollers.rescope()),
                _ = ticks.tick() => {
                    alerting.tick(&router.tick(), &dispatch.open_breakers(), now_ms());
                    dispatch.tick();
                }
                new = config.next() => {
                    for key in settings.start_only_changes(&new) {
                        tracing::warn!(key, "Config setting changed; it takes effect at the next start.");
                    }
                    // Grants first: they hold from this moment, for the
                    // rules running now as for those the reload brings.
                    tenant_routes.set(new.tenant_sinks());
                    tenant_board.publish(&new);
                    for tenant in &new.tenants {
                        router.pool().set_share(Some(tenant.name.clone()), tenant.share());
                    }
                    router.pool().set_queue(plugins::Pool::queue_for(new.polls_per_second()));
                    dispatch.reconfigure(new.actions.clone(), new.tenant_actions());
                    router.forget_targets(&pollers.apply(&new.targets));
                    reloader.reconcile(new.rules, new.rule_dirs);
                    alerting.set_limits(new.alert_limits);
                }
            }
        }

        tracing::info!("Shutting down.");
        running.store(false, Ordering::Release);
        let _ = stop_api.send(());
        if let Some(task) = api_task {
            let _ = task.await;
        }
        reloader.abort();
        if let Some(sync) = &rule_sync {
            sync.abort();
        }
        drop(pollers);
        // Polling stopped: the others may take this node's partitions now,
        // not a lease TTL from now.
        if let Some(leases) = leases {
            leases.release().await;
        }
        let stopped = stop(
            router,
            results,
            alerting,
            samples,
            settings.shutdown_grace,
            shared.as_mut(),
        )
        .await;
        if let Some(notifier) = notifier {
            notifier.abort();
        }
        Ok(stopped)
    }
}

/// Completes a burst `recv_many` started with what arrives within
/// [`GATHER`], up to [`BATCH`] items. It sleeps rather than waits on the
/// queue, so the items that arrive meanwhile wake nobody.
async fn gather<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    if batch.len() >= BATCH {
        return;
    }
    tokio::time::sleep(GATHER).await;
    while batch.len() < BATCH {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => return,
        }
    }
}

/// Hands a burst of the rule workers' events to the alert stage, in order:
/// each run of evaluations as one batch (one durable commit for all its
/// transitions), a rule's `Stopped` after the evaluations before it. In a
/// cluster each evaluation goes through the shared alert state on its own
/// (a compare-and-set per changed group, see `cluster::alert_state`).
async fn results_taken(
    events: impl Iterator<Item = WorkerEvent>,
    router: &mut Router,
    alerting: &mut Alerting<Delivery>,
    dispatch: &Dispatch,
    mut shared: Option<&mut SharedAlerts>,
) {
    let mut evaluations = Vec::new();
    for event in events {
        match event {
            WorkerEvent::Evaluated(evaluation) => {
                dispatch.requested(&evaluation);
                match shared.as_deref_mut() {
                    None => evaluations.push(evaluation),
                    Some(shared) => {
                        alerting
                            .evaluated_shared(evaluation, now_ms(), shared)
                            .await
                    }
                }
            }
            WorkerEvent::Stopped { rule, .. } => {
                alerting.evaluated_batch(evaluations.drain(..), now_ms());
                if router.stopped(&rule) {
                    alerting.rule_gone(&rule, now_ms());
                }
            }
        }
    }
    alerting.evaluated_batch(evaluations, now_ms());
}

/// In a cluster: the alert state as this node reads and writes it, and
/// the notifier that drives the network sinks.
fn start_shared(
    shared: Option<Shared>,
    leases: Option<&Leases>,
    settings: &Settings,
) -> anyhow::Result<(Option<SharedAlerts>, Option<tokio::task::JoinHandle<()>>)> {
    let (Some(shared), Some(leases), Some(cluster)) = (shared, leases, &settings.cluster) else {
        return Ok((None, None));
    };
    let alerts = SharedAlerts::new(shared.alerts, leases.ownership(), cluster.node.clone());
    let sinks = crate::sinks::spec::network(&settings.sinks, cluster.node.as_str())?;
    let notifier = notify::spawn(shared.notifications, sinks);
    Ok((Some(alerts), Some(notifier)))
}

/// Starts following the rules pushed to the cluster (`vigil rules push`):
/// they are installed and removed through `changes`, like rule files.
fn start_rule_sync(
    store: RuleStore,
    settings: &Settings,
    runtime: &Runtime,
    state: &crate::state::StateDb,
    status: &StatusBoard,
    changes: mpsc::UnboundedSender<Change>,
) -> RuleSync {
    let node = settings
        .cluster
        .as_ref()
        .map(|cluster| cluster.node.clone())
        .expect("a rule store only in a cluster");
    RuleSync::start(
        store,
        settings.clone(),
        node,
        runtime.clone(),
        state.clone(),
        status.clone(),
        changes,
    )
}

/// The next change of the owned partitions; never, outside a cluster (or
/// once the lease keeper is gone).
async fn changed(owned: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<()> {
    match owned {
        Some(receiver) => match receiver.changed().await {
            Ok(()) => Some(()),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Stops the pipeline in bounded time. Samples already taken are offered
/// to the rules; the rules get `grace` to evaluate what is queued (action
/// requests made now are not started), then what is left is counted per
/// rule and logged, not evaluated. The sinks then get `grace` to take what
/// waits for them.
async fn stop(
    mut router: Router,
    mut results: mpsc::Receiver<WorkerEvent>,
    mut alerting: Alerting<Delivery>,
    mut samples: mpsc::Receiver<Arc<Sample>>,
    grace: Duration,
    mut shared: Option<&mut SharedAlerts>,
) -> Stopped {
    samples.close();
    while let Some(sample) = samples.recv().await {
        router.route([sample]);
    }
    let stopping: Vec<Stopping> = router.close();
    let mut running: HashSet<RuleName> = stopping
        .iter()
        .map(|worker| worker.name().clone())
        .collect();
    let mut stopped = Stopped::default();
    let deadline = tokio::time::Instant::now() + grace;
    let mut abandoned = false;
    while !running.is_empty() {
        let event = if abandoned {
            results.recv().await
        } else {
            tokio::select! {
                event = results.recv() => event,
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(rules = running.len(), grace = %humantime::format_duration(grace), "Shutdown grace ran out; rules stop evaluating what is queued.");
                    for worker in stopping.iter().filter(|worker| running.contains(worker.name())) {
                        worker.abandon();
                    }
                    abandoned = true;
                    continue;
                }
            }
        };
        match event {
            Some(WorkerEvent::Evaluated(evaluation)) => match shared.as_deref_mut() {
                None => alerting.evaluated(evaluation, now_ms()),
                Some(shared) => {
                    alerting
                        .evaluated_shared(evaluation, now_ms(), shared)
                        .await
                }
            },
            Some(WorkerEvent::Stopped { rule, abandoned }) => {
                running.remove(&rule);
                if abandoned > 0 {
                    tracing::warn!(rule = %rule, abandoned, "Samples queued for this rule were not evaluated at shutdown.");
                    stopped.abandoned.insert(rule, abandoned);
                }
            }
            None => break,
        }
    }
    // Every rule has reported `Stopped`: joining waits for nothing more.
    let _ =
        tokio::task::spawn_blocking(move || stopping.into_iter().for_each(Stopping::join)).await;
    stopped.undelivered = alerting.into_delivery().close(grace).await;
    tracing::info!(
        abandoned = stopped.abandoned.values().sum::<u64>(),
        undelivered = stopped.undelivered.iter().map(|(_, n)| n).sum::<usize>(),
        "Stopped."
    );
    stopped
}
