//! The running host: targets feed samples to rule workers, whose verdicts go
//! through the alert lifecycle to the sink.
//!
//! ```text
//! targets --poll--> samples --dispatch--> rule workers --evaluations--> alert tracker --> sink
//! ```
//!
//! [`App::build`] does everything that can fail at start (open the state
//! database, compile and `init` every rule) before anything runs, so a host
//! either starts fully configured or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::sync::mpsc;

use crate::alerts::Tracker;
use crate::config::Settings;
use crate::plugins::reload::{self, Change, StatusBoard};
use crate::plugins::{
    self, Evaluation, FailurePolicy, LoadedRule, RuleCounters, RuleHealth, RuleWorker, WorkerEvent,
};
use crate::runtime::{Alert, CallError, CompileCache, Label, Runtime, Sample, Severity};
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
        })
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
        } = self;
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
        for event in tracker.forget(unconfigured, sources::now_ms()) {
            sink.alert(&event);
        }
        let reloader = reload::spawn(
            &rules,
            &settings.rules,
            runtime,
            state,
            settings.reload_debounce,
            status,
            change_tx,
        )?;
        let policies: HashMap<Arc<str>, FailurePolicy> = settings
            .rules
            .iter()
            .map(|spec| (Arc::from(spec.name.as_str()), spec.failure_policy))
            .collect();
        let counters: HashMap<Arc<str>, Arc<RuleCounters>> = counters.into_iter().collect();
        let spawn_worker = |rule: LoadedRule| {
            let name = rule.name.clone();
            RuleWorker::spawn(
                rule,
                policies[&name],
                counters[&name].clone(),
                result_tx.clone(),
            )
        };
        let mut workers: BTreeMap<Arc<str>, RuleWorker> = rules
            .into_iter()
            .map(|rule| (rule.name.clone(), spawn_worker(rule)))
            .collect();
        let pollers: Vec<_> = settings
            .targets
            .iter()
            .map(|target| sources::spawn(target, sample_tx.clone()))
            .collect();
        drop(sample_tx);
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
                    WorkerEvent::Evaluated(evaluation) => report(&mut sink, &mut tracker, &evaluation),
                    WorkerEvent::Stopped(rule) => {
                        if removed.remove(&rule) {
                            let now = sources::now_ms();
                            let gone = |r: &str, t: &str| r == &*rule || (r == HOST_RULE && t == &*rule);
                            for event in tracker.forget(gone, now) {
                                sink.alert(&event);
                            }
                        }
                    }
                },
                Some(change) = changes.recv() => match change {
                    Change::Install(rule) => match workers.get(&rule.name) {
                        Some(worker) => worker.swap(*rule).await,
                        None => {
                            removed.remove(&rule.name);
                            workers.insert(rule.name.clone(), spawn_worker(*rule));
                        }
                    },
                    Change::Remove(rule) => {
                        if let Some(worker) = workers.remove(&rule) {
                            removed.insert(rule);
                            worker.close();
                        }
                    }
                },
            }
        }

        tracing::info!("Shutting down.");
        reloader.abort();
        for poller in &pollers {
            poller.abort();
        }
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
                report(&mut sink, &mut tracker, &evaluation);
            }
        }
        Ok(())
    }
}

fn report(sink: &mut StdoutSink, tracker: &mut Tracker, evaluation: &Evaluation) {
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
            for action in &verdict.actions {
                tracing::info!(
                    rule = %evaluation.rule,
                    target = %sample.target,
                    action = %action.action,
                    "Action requested; remediation is not enabled in this build, so nothing runs."
                );
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
