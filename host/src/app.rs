//! The running host: targets feed samples to rule workers, whose verdicts go
//! through the alert lifecycle to the sink.
//!
//! ```text
//! targets --poll--> samples --dispatch--> rule workers --evaluations--> alert tracker --> sink
//! ```
//!
//! [`App::build`] does everything that can fail at start (open the state
//! database, compile and configure every rule) before anything runs, so a host
//! either starts fully configured or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use crate::actions::{AuditLog, BreakerTrip, RealExecutor, Remediation};
use crate::alerts::Tracker;
use crate::clock;
use crate::config::{Settings, TargetSpec};
use crate::plugins::reload::{self, Change, StatusBoard};
use crate::plugins::{
    self, Evaluation, FailurePolicy, LoadedRule, RuleCounters, RuleHealth, RuleWorker, WorkerEvent,
};
use crate::runtime::{
    ActionRequest, Alert, CallError, CompileCache, Label, Runtime, Sample, Severity,
};
use crate::sinks::StdoutSink;
use crate::sources;
use crate::state::StateDb;

/// Samples in flight between the pollers and the dispatcher.
const SAMPLE_QUEUE: usize = 1024;

/// A host, configured and loaded, ready to run.
pub struct App {
    settings: Settings,
    rules: Vec<LoadedRule>,
    counters: Vec<(Arc<str>, Arc<RuleCounters>)>,
    sink: StdoutSink,
    runtime: Runtime,
    state: StateDb,
    status: StatusBoard,
    config_path: Option<PathBuf>,
    remediation: Arc<Remediation>,
}

/// The rule name the host's own alerts (such as `RuleFailing`) carry.
pub const HOST_RULE: &str = "vigil";

impl App {
    /// Opens the state database in `data_dir` and loads every rule. Any
    /// failure is returned with the culprit named; nothing is started.
    pub async fn build(
        settings: Settings,
        data_dir: &Path,
        sink: StdoutSink,
    ) -> anyhow::Result<App> {
        std::fs::create_dir_all(data_dir).with_context(|| {
            format!("cannot create the data directory `{}`", data_dir.display())
        })?;
        let db_path = data_dir.join("state.redb");
        let state = StateDb::open(&db_path).with_context(|| {
            format!(
                "cannot open the state database `{}`\nhint: is another vigil using this data directory? \
                 Give each its own with --data-dir",
                db_path.display()
            )
        })?;
        // Compiled rules are kept in `<data_dir>/cache`, so a restart loads
        // them in milliseconds instead of compiling them again.
        let runtime = Runtime::new()?.with_compile_cache(CompileCache::new(data_dir.join("cache")));
        let specs = settings.rules.clone();
        let (runtime_for_reloads, state_for_reloads) = (runtime.clone(), state.clone());
        let remediation = start_remediation(&settings, &state)?;
        // Compiling is CPU-heavy (seconds for big components): keep it off
        // the async workers.
        let loaded = tokio::task::spawn_blocking(move || {
            specs
                .iter()
                .map(|spec| plugins::load(&runtime, &state, spec))
                .collect::<Vec<_>>()
        })
        .await?;
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        for result in loaded {
            match result {
                Ok(rule) => rules.push(rule),
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
        let counters = rules
            .iter()
            .map(|rule| (rule.name.clone(), Arc::default()))
            .collect();
        Ok(App {
            settings,
            rules,
            counters,
            sink,
            runtime: runtime_for_reloads,
            state: state_for_reloads,
            status: StatusBoard::default(),
            config_path: None,
            remediation,
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

    /// Each rule's counters (evaluations, failures by kind, quarantines),
    /// live while the host runs.
    pub fn counters(&self) -> &[(Arc<str>, Arc<RuleCounters>)] {
        &self.counters
    }

    /// Polls, evaluates and reports until `shutdown` completes, then stops
    /// the pollers and finishes the samples already taken.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let App {
            settings,
            rules,
            counters,
            mut sink,
            runtime,
            state,
            status,
            config_path,
            remediation,
        } = self;
        let (outcome_tx, mut outcomes) = mpsc::unbounded_channel::<ActionFeedback>();
        let actions = Actions {
            remediation: remediation.clone(),
            feedback: outcome_tx,
        };
        // Breakers whose `RemediationBreakerOpen` alert is firing.
        let mut open_breakers: HashSet<String> = HashSet::new();
        let mut breaker_check = tokio::time::interval(std::time::Duration::from_secs(5));
        let (sample_tx, mut samples) = mpsc::channel::<Arc<Sample>>(SAMPLE_QUEUE);
        let (result_tx, mut results) = mpsc::unbounded_channel::<WorkerEvent>();
        let (change_tx, mut changes) = mpsc::unbounded_channel::<Change>();
        let mut tracker = Tracker::persistent(state.clone())?;
        // Alerts saved by rules that are no longer configured end now.
        let configured: HashSet<&str> = settings
            .rules
            .iter()
            .map(|spec| spec.name.as_str())
            .collect();
        let unconfigured = |rule: &str, target: &str| {
            let about = if rule == HOST_RULE { target } else { rule };
            !configured.contains(about)
        };
        for event in tracker.forget(unconfigured, clock::now_ms()) {
            sink.alert(&event);
        }
        let reloader = reload::spawn(
            &rules,
            &settings.rules,
            settings.rule_dirs.clone(),
            runtime,
            state,
            settings.reload_debounce,
            status,
            change_tx,
        )?;
        let mut counters: HashMap<Arc<str>, Arc<RuleCounters>> = counters.into_iter().collect();
        let mut spawn_worker = |rule: LoadedRule, policy: FailurePolicy| {
            let counters = counters.entry(rule.name.clone()).or_default().clone();
            RuleWorker::spawn(rule, policy, counters, result_tx.clone())
        };
        let mut workers: BTreeMap<Arc<str>, RuleWorker> = rules
            .into_iter()
            .zip(&settings.rules)
            .map(|(rule, spec)| (rule.name.clone(), spawn_worker(rule, spec.failure_policy)))
            .collect();
        let mut pollers = Pollers::default();
        pollers.apply(&settings.targets, &sample_tx);
        let mut config_changes = match &config_path {
            Some(path) => Some(ConfigWatch::start(path, settings.reload_debounce)?),
            None => None,
        };
        let mut hangups = hangups()?;
        tracing::info!(
            targets = settings.targets.len(),
            rules = workers.len(),
            "Vigil is running."
        );

        // Rules whose file was removed: their alerts resolve once their
        // worker has reported its last evaluation.
        let mut removed: HashSet<Arc<str>> = HashSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(sample) = samples.recv() => {
                    for worker in workers.values() {
                        worker.send(sample.clone()).await;
                    }
                }
                Some(event) = results.recv() => match event {
                    WorkerEvent::Evaluated(evaluation) => report(&mut sink, &mut tracker, &evaluation, Some(&actions)),
                    WorkerEvent::Stopped(rule) => {
                        if removed.remove(&rule) {
                            let now = clock::now_ms();
                            let gone = |r: &str, t: &str| r == &*rule || (r == HOST_RULE && t == &*rule);
                            for event in tracker.forget(gone, now) {
                                sink.alert(&event);
                            }
                        }
                    }
                },
                Some(change) = changes.recv() => match change {
                    Change::Install(rule, policy) => match workers.get(&rule.name) {
                        Some(worker) => worker.swap(*rule).await,
                        None => {
                            removed.remove(&rule.name);
                            workers.insert(rule.name.clone(), spawn_worker(*rule, policy));
                        }
                    },
                    Change::Remove(rule) => {
                        if let Some(worker) = workers.remove(&rule) {
                            removed.insert(rule);
                            worker.close();
                        }
                    }
                },
                Some(feedback) = outcomes.recv() => {
                    if let Some(worker) = workers.get(&feedback.rule) {
                        worker.feedback(feedback.target, feedback.outcome).await;
                    }
                    if let Some(trip) = feedback.breaker_opened {
                        open_breakers.insert(trip.action.clone());
                        let alert = breaker_alert(&trip);
                        for event in tracker.observe(HOST_RULE, &breaker_target(&trip.action), &[alert], clock::now_ms()) {
                            sink.alert(&event);
                        }
                    }
                }
                _ = breaker_check.tick() => {
                    let now = clock::now_ms();
                    let still_open: HashSet<String> = remediation.open_breakers(now).into_iter().map(|trip| trip.action).collect();
                    for action in open_breakers.iter().filter(|action| !still_open.contains(*action)) {
                        for event in tracker.observe(HOST_RULE, &breaker_target(action), &[], now) {
                            sink.alert(&event);
                        }
                    }
                    open_breakers.retain(|action| still_open.contains(action));
                }
                Some(forced) = next_config_change(&mut config_changes, &mut hangups) => {
                    let Some(path) = &config_path else {
                        tracing::info!("SIGHUP ignored: vigil runs without a config file.");
                        continue;
                    };
                    if let Some(new) = reload_config(path, forced, config_changes.as_mut()) {
                        pollers.apply(&new.targets, &sample_tx);
                        reloader.reconcile(new.rules, new.rule_dirs);
                        remediation.reconfigure(new.actions);
                    }
                }
            }
        }

        tracing::info!("Shutting down.");
        reloader.abort();
        pollers.stop();
        // Samples already taken are still evaluated and reported.
        while let Ok(sample) = samples.try_recv() {
            for worker in workers.values() {
                worker.send(sample.clone()).await;
            }
        }
        drop(result_tx);
        tokio::task::spawn_blocking(move || workers.into_values().for_each(RuleWorker::stop))
            .await?;
        while let Some(event) = results.recv().await {
            if let WorkerEvent::Evaluated(evaluation) = event {
                // Shutting down: requests made now are not started.
                report(&mut sink, &mut tracker, &evaluation, None);
            }
        }
        Ok(())
    }
}

/// The polling tasks, one per target, by name.
#[derive(Default)]
struct Pollers {
    running: HashMap<String, (TargetSpec, tokio::task::JoinHandle<()>)>,
}

impl Pollers {
    /// Makes the running pollers match `targets`: new targets start, gone
    /// ones stop, changed ones restart; the others are not touched.
    fn apply(&mut self, targets: &[TargetSpec], samples: &mpsc::Sender<Arc<Sample>>) {
        let names: HashSet<&str> = targets.iter().map(|target| target.name.as_str()).collect();
        self.running.retain(|name, (_, task)| {
            let keep = names.contains(name.as_str());
            if !keep {
                tracing::info!(target = %name, "Target removed; polling stops.");
                task.abort();
            }
            keep
        });
        for target in targets {
            match self.running.get(&target.name) {
                Some((running, _)) if running == target => continue,
                Some((_, task)) => {
                    tracing::info!(target = %target.name, "Target changed; polling restarts.");
                    task.abort();
                }
                None if !self.running.is_empty() => {
                    tracing::info!(target = %target.name, "Target added; polling starts.")
                }
                None => {}
            }
            let task = sources::spawn(target, samples.clone());
            self.running
                .insert(target.name.clone(), (target.clone(), task));
        }
    }

    fn stop(&self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Debounced changes to the config file's directory.
struct ConfigWatch {
    // Dropping the watcher ends the watch.
    _watcher: notify::RecommendedWatcher,
    changes: mpsc::UnboundedReceiver<()>,
    /// Hash of the config text in force, to ignore events that change nothing.
    loaded: String,
}

impl ConfigWatch {
    fn start(path: &Path, debounce: std::time::Duration) -> anyhow::Result<Self> {
        use notify::Watcher;
        let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = events_tx.send(());
                }
            })?;
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher
            .watch(&directory, notify::RecursiveMode::NonRecursive)
            .with_context(|| {
                format!("cannot watch `{}` for config changes", directory.display())
            })?;
        let (changes_tx, changes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while events.recv().await.is_some() {
                // Wait for a quiet spell, then report one change.
                while let Ok(Some(())) = tokio::time::timeout(debounce, events.recv()).await {}
                if changes_tx.send(()).is_err() {
                    return;
                }
            }
        });
        let loaded = std::fs::read(path)
            .map(|text| plugins::content_hash(&text))
            .unwrap_or_default();
        Ok(ConfigWatch {
            _watcher: watcher,
            changes,
            loaded,
        })
    }
}

#[cfg(unix)]
fn hangups() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")
}

/// The next reason to reload the config: `Some(false)` when its file
/// changed, `Some(true)` on SIGHUP (reload even if the text is the same).
async fn next_config_change(
    watch: &mut Option<ConfigWatch>,
    hangups: &mut tokio::signal::unix::Signal,
) -> Option<bool> {
    let file_changed = async {
        match watch {
            Some(watch) => watch.changes.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        Some(()) = file_changed => Some(false),
        Some(()) = hangups.recv() => Some(true),
    }
}

/// Reads and validates the config again. A broken one is refused with file,
/// line and reason, and the running config stays.
fn reload_config(path: &Path, forced: bool, watch: Option<&mut ConfigWatch>) -> Option<Settings> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "Config reload refused: cannot read the file; the running config stays.");
            return None;
        }
    };
    let hash = plugins::content_hash(&text);
    if let Some(watch) = watch {
        if !forced && watch.loaded == hash {
            return None;
        }
        watch.loaded = hash;
    }
    match Settings::load(path) {
        Ok(settings) => {
            tracing::info!(path = %path.display(), forced, "Config reloaded.");
            Some(settings)
        }
        Err(error) => {
            tracing::error!(%error, "Config reload refused; the running config stays.");
            None
        }
    }
}

/// What `report` needs to hand action requests to the remediation gate.
struct Actions {
    remediation: Arc<Remediation>,
    feedback: mpsc::UnboundedSender<ActionFeedback>,
}

/// The outcome of one request, on its way back to the rule.
struct ActionFeedback {
    rule: Arc<str>,
    target: String,
    outcome: crate::runtime::ActionOutcome,
    breaker_opened: Option<BreakerTrip>,
}

impl Actions {
    /// Decides, audits and (maybe) runs the request on a task of its own,
    /// so a slow action never holds up the pipeline, and sends the outcome
    /// back for the rule's next sample of this target.
    fn request(&self, rule: &Arc<str>, target: &str, request: &ActionRequest) {
        let (remediation, feedback) = (self.remediation.clone(), self.feedback.clone());
        let (rule, target, request) = (rule.clone(), target.to_string(), request.clone());
        tokio::spawn(async move {
            match remediation
                .handle(&rule, &target, &request, clock::now_ms())
                .await
            {
                Ok(handled) => {
                    tracing::info!(
                        rule = %rule,
                        target = %target,
                        action = %request.action,
                        audit_id = handled.audit_id,
                        status = ?handled.outcome.status,
                        detail = %handled.outcome.report.detail,
                        "Action request handled."
                    );
                    let outcome = handled
                        .outcome
                        .to_action_outcome(&request.action, request.params.clone());
                    let _ = feedback.send(ActionFeedback {
                        rule,
                        target,
                        outcome,
                        breaker_opened: handled.breaker_opened,
                    });
                }
                Err(error) => tracing::error!(
                    rule = %rule,
                    target = %target,
                    action = %request.action,
                    %error,
                    "Action request not handled: the audit log cannot be written, so nothing ran."
                ),
            }
        });
    }
}

fn start_remediation(settings: &Settings, state: &StateDb) -> anyhow::Result<Arc<Remediation>> {
    let audit = AuditLog::open(state).context("cannot open the audit log")?;
    let executor =
        Arc::new(RealExecutor::new().context("cannot build the HTTP client for actions")?);
    let (remediation, interrupted) =
        Remediation::start(settings.actions.clone(), audit, executor, clock::now_ms())
            .context("cannot read the audit log")?;
    for record in interrupted {
        tracing::warn!(
            audit_id = record.id,
            action = %record.action,
            target = %record.target,
            rule = %record.rule,
            "An action was running when vigil last stopped; it is recorded as interrupted."
        );
    }
    Ok(Arc::new(remediation))
}

fn breaker_target(action: &str) -> String {
    format!("action:{action}")
}

/// `RemediationBreakerOpen` while an action's circuit breaker is open.
fn breaker_alert(trip: &BreakerTrip) -> Alert {
    let label = |name: &str, value: String| Label {
        name: name.into(),
        value,
    };
    Alert {
        name: "RemediationBreakerOpen".into(),
        severity: Severity::Critical,
        summary: format!(
            "action `{}` is stopped: {:?} within {}; it runs again after the window",
            trip.action,
            trip.cause,
            humantime::format_duration(trip.window)
        ),
        labels: vec![label("action", trip.action.clone())],
        annotations: vec![],
        for_ms: 0,
        keep_firing_for_ms: 0,
    }
}

fn report(
    sink: &mut StdoutSink,
    tracker: &mut Tracker,
    evaluation: &Evaluation,
    actions: Option<&Actions>,
) {
    sink.evaluation(evaluation);
    let sample = &evaluation.sample;
    match &evaluation.result {
        Ok(verdict) => {
            for event in tracker.observe(
                &evaluation.rule,
                &sample.target,
                &verdict.alerts,
                sample.timestamp_ms,
            ) {
                sink.alert(&event);
            }
            if let Some(actions) = actions {
                for request in &verdict.actions {
                    actions.request(&evaluation.rule, &sample.target, request);
                }
            }
        }
        // A failed call says nothing about the alerts: they stay as they were.
        Err(CallError::Quarantined(_)) => {}
        Err(error) => tracing::warn!(
            rule = %evaluation.rule,
            target = %sample.target,
            kind = error.kind(),
            %error,
            "Rule evaluation failed; its instance will be rebuilt."
        ),
    }
    // The host's own alert about the rule goes through the same lifecycle:
    // announced once when the rule is quarantined, resolved once it
    // evaluates again.
    let failing: Vec<Alert> = rule_failing(&evaluation.rule, &evaluation.health)
        .into_iter()
        .collect();
    for event in tracker.observe(HOST_RULE, &evaluation.rule, &failing, sample.timestamp_ms) {
        sink.alert(&event);
    }
}

/// `RuleFailing` while a rule is quarantined.
fn rule_failing(rule: &str, health: &RuleHealth) -> Option<Alert> {
    let RuleHealth::Quarantined {
        consecutive,
        last_error,
        retry_in,
    } = health
    else {
        return None;
    };
    let label = |name: &str, value: String| Label {
        name: name.into(),
        value,
    };
    Some(Alert {
        name: "RuleFailing".into(),
        severity: Severity::Critical,
        summary: format!(
            "rule `{rule}` failed {consecutive} times in a row and is quarantined; last error: {last_error}"
        ),
        labels: vec![label("rule", rule.into())],
        annotations: vec![label(
            "next_try_in",
            humantime::format_duration(std::time::Duration::from_secs(retry_in.as_secs()))
                .to_string(),
        )],
        for_ms: 0,
        keep_firing_for_ms: 0,
    })
}

/// Where durable state goes when neither `--data-dir` nor the config says:
/// `$XDG_STATE_HOME/vigil`, else `~/.local/state/vigil`, else `./vigil-data`.
pub fn default_data_dir() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(state) = non_empty("XDG_STATE_HOME") {
        return PathBuf::from(state).join("vigil");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".local/state/vigil");
    }
    PathBuf::from("vigil-data")
}
