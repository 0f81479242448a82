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
use crate::cluster::nats::{LeaseBucket, Nats};
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
        let (leases, claims) = match &settings.cluster {
            None => (None, None),
            Some(cluster) => {
                let nats = Nats::connect(cluster).await?;
                let leases = nats.leases(cluster, true).await?;
                let claims: Arc<dyn ClaimStore> = Arc::new(nats.claims(cluster).await?);
                (Some(leases), Some((claims, cluster.node.clone())))
            }
        };
        let state = data_dir.open_state()?;
        let console = delivery.console();
        crate::sinks::spec::attach(&mut delivery, &settings.sinks, &state, console).await?;
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
        // the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            specs
                .iter()
                .map(|spec| plugins::load(&loader_runtime, &loader_state, spec))
                .collect::<Vec<_>>()
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
        let pool = plugins::Pool::start(settings.evaluation_threads);
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
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(sample) = samples.recv() => {
                    let overloaded = router.route(sample);
                    if !overloaded.is_empty() {
                        alerting.rules_overloaded(overloaded, now_ms());
                    }
                }
                Some(event) = results.recv() => match event {
                    WorkerEvent::Evaluated(evaluation) => {
                        dispatch.requested(&evaluation);
                        alerting.evaluated(evaluation, now_ms());
                    }
                    WorkerEvent::Stopped { rule, .. } => {
                        if router.stopped(&rule) {
                            alerting.rule_gone(&rule, now_ms());
                        }
                    }
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
        drop(pollers);
        // Polling stopped: the others may take this node's partitions now,
        // not a lease TTL from now.
        if let Some(leases) = leases {
            leases.release().await;
        }
        Ok(stop(router, results, alerting, samples, settings.shutdown_grace).await)
    }
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
) -> Stopped {
    samples.close();
    while let Some(sample) = samples.recv().await {
        router.route(sample);
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
            Some(WorkerEvent::Evaluated(evaluation)) => alerting.evaluated(evaluation, now_ms()),
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
