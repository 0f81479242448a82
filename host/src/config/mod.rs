//! The host configuration: a TOML file parsed once, at start, into typed
//! values ([`Settings`]). Everything that can be checked without running is
//! checked here, and an error names the file, the line and the fix: the host
//! never starts half-configured.
//!
//! ```toml
//! data_dir = "/var/lib/vigil"          # optional
//! shutdown_grace = "5s"                # optional: how long a stop may take
//! evaluation_threads = 4               # optional: threads that run every rule (default: the cores, at least 2)
//! poll_threads = 2                     # optional: threads that poll and serve the API (default: one per 20,000 polls a second)
//!
//! [[targets]]
//! name = "web-01"
//! kind = "http-json"                   # see the kinds below
//! url = "http://127.0.0.1:8080/status"
//! interval = "5s"
//! timeout = "2s"
//! labels = { team = "payments" }
//!
//! [[targets]]
//! name = "web-01-node"
//! kind = "prometheus"
//! url = "http://127.0.0.1:9100/metrics"
//!
//! [[targets]]
//! name = "web-01-load"
//! kind = "command"
//! command = ["/usr/lib/nagios/plugins/check_load", "-w", "5,5,5", "-c", "10,10,10"]
//! timeout = "10s"
//!
//! [[rules]]
//! path = "rules/my_rule.wasm"          # or: builtin = "threshold"
//! config = { thresholds = { cpu_usage = 90 } }
//! timeout = "100ms"
//! max_memory_mib = 64
//! max_state_bytes = "1MiB"             # key-value state it may keep
//! max_active_alerts_per_target = 1000  # alerts tracked (pending + firing)
//! max_active_alerts = 10000
//! sha256 = "…"                         # optional: only this exact build loads
//! require_signature = true             # optional: overrides [trust] for this rule (or folder)
//!
//! [trust]                              # optional: who may sign rule files
//! keys = ["keys/ops.pub"]              # minisign public keys
//! require_signature = false            # the default for every rule file
//!
//! [[sinks]]                            # optional; without any, alerts go to stdout
//! name = "alertmanager"
//! kind = "alertmanager"                # stdout | file | webhook | alertmanager (see sinks.rs)
//! urls = ["http://127.0.0.1:9093"]
//! match_labels = { severity = "critical" }
//!
//! [audit]                              # optional: how much the audit log keeps
//! max_age = "30d"
//! max_bytes = "256MiB"
//! refusal_records_per_minute = 60      # per rule; the rest are counted
//!
//! [api]                                # optional: the HTTP API, /metrics and the page
//! listen = "127.0.0.1:9470"            # the default; "off" for none
//! token_file = "api.token"             # bearer token for POST /api/v1/reload
//!
//! [[tenants]]                          # optional: a team's grant; its rules are in
//! name = "payments"                    # tenants.d/payments.toml (see tenants.rs)
//! targets = ["pay-*"]
//! ```
//!
//! Target kinds ([`TargetKind`]):
//!
//! | kind | polls | settings |
//! |---|---|---|
//! | `http-json` | `GET url`, a JSON object of numbers | `url`, `timeout` (2s), `max_body_bytes` (1 MiB) |
//! | `prometheus` | `GET url`, a `/metrics` page (Prometheus text or OpenMetrics) | `url`, `timeout` (2s), `max_body_bytes` (1 MiB) |
//! | `command` | a check program, the Nagios plugin convention | `command` (argv), `timeout` (10s), `max_output_bytes` (64 KiB) |
//! | `local` | this machine | none |

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::routing::{NamePattern, TargetSelector};

mod api;
mod cluster;
mod sinks;
mod tenants;
mod watch;

pub use api::{ApiSettings, DEFAULT_LISTEN, Listen};
pub use cluster::ClusterSettings;
pub use tenants::{GrantView, TenantBoard, TenantGrant, TenantSpec, TenantView};

pub use sinks::DEFAULT_SINK_TIMEOUT;
pub use watch::{ConfigWatch, ReloadRequest};

use crate::actions::audit::MIN_MAX_BYTES;
use crate::actions::{ActionSpec, AuditSettings, Mode, parse_actions};
use crate::alerts::{AlertLimits, RuleAlertLimits};
use crate::duration::TextDuration;
use crate::hash::Sha256;
use crate::names::{ActionName, RuleName, Syntax, TENANT_SEPARATOR, TargetName, TenantName};
use crate::plugins::trust::{Keyring, Trust, TrustSettings, TrustedKey};
use crate::plugins::{MAX_THREADS, Pool};
use crate::runtime::{Limits, builtin};
use crate::sinks::SinkSpec;
use crate::size::TextSize;

/// Poll interval when a target does not set one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// HTTP timeout when a target does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Quiet time after a rule file changes before it is reloaded.
/// 20 ms: long enough for an editor's write or rename to finish, short
/// enough for a swap within 100 ms (BENCHMARKS.md); slow copies are caught
/// by waiting for the file's modification time to settle as well.
pub const DEFAULT_RELOAD_DEBOUNCE: Duration = Duration::from_millis(20);
/// How long shutdown waits for rules to evaluate what is queued and for
/// sinks to take what is waiting, when the config does not say.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Largest status body accepted when a target does not set a limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a `command` check may run when the target does not say: the
/// default of the Nagios plugins' own `-t`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a check's stdout, and of its stderr, when the target does
/// not say. A Nagios plugin prints a line or a few.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// The sample label that carries a `command` check's status text; a
/// `command` target may not set it itself.
pub const CHECK_OUTPUT_LABEL: &str = "check_output";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where durable state lives; `None` picks the default location.
    pub data_dir: Option<PathBuf>,
    /// What to poll.
    pub targets: Vec<TargetSpec>,
    /// What to run on each sample.
    pub rules: Vec<RuleSpec>,
    /// Quiet time after the last change to a rule file before it is reloaded.
    pub reload_debounce: Duration,
    /// Folders whose `.wasm` files are rules (already expanded into `rules`).
    pub rule_dirs: Vec<RuleDir>,
    /// Remediation the operator declared, by name. Rules can only ask.
    pub actions: BTreeMap<ActionName, ActionSpec>,
    /// At shutdown, how long rules may go on evaluating what is queued, and
    /// sinks delivering what waits, before the rest is counted and dropped.
    pub shutdown_grace: Duration,
    /// How many alerts the host tracks for each rule (kept apart from
    /// [`RuleSpec`]: the rule workers never need them).
    pub alert_limits: RuleAlertLimits,
    /// How much the audit log keeps. Takes effect at the next start.
    pub audit: AuditSettings,
    /// Where alerts go (`[[sinks]]`); empty for the console alone. Takes
    /// effect at the next start.
    pub sinks: Vec<SinkSpec>,
    /// The HTTP API (`[api]`). Takes effect at the next start.
    pub api: ApiSettings,
    /// The tenants (`[[tenants]]`), each with its grant and what its own
    /// file chose; their rules are in `rules`, named `tenant/rule`.
    pub tenants: Vec<TenantSpec>,
    /// The cluster this host joins (`[cluster]`); `None`: a single host
    /// polling every target. Takes effect at the next start.
    pub cluster: Option<ClusterSettings>,
    /// Threads that evaluate rules, shared by every rule (a busy tenant may
    /// hold all but one). Takes effect at the next start.
    pub evaluation_threads: usize,
    /// Threads that poll the targets and serve the API, as configured
    /// (`poll_threads`); `None`: sized from the targets (see
    /// [`Settings::poll_threads`]). Takes effect at the next start.
    pub poll_threads: Option<usize>,
    /// The operator's `[trust]`: what its rules pushed to the cluster
    /// (`vigil rules push`) must pass, as its rule files do.
    pub trust: TrustSettings,
}

impl Settings {
    /// The settings read only at start that differ in `new`, by config key:
    /// a reload cannot apply them, and says so. `poll_threads` is among them
    /// also when it is not set but the new targets ask for another count
    /// than runs (see [`Settings::poll_threads`]).
    pub fn start_only_changes(&self, new: &Settings) -> Vec<&'static str> {
        let changed = [
            ("data_dir", self.data_dir != new.data_dir),
            (
                "reload_debounce",
                self.reload_debounce != new.reload_debounce,
            ),
            ("shutdown_grace", self.shutdown_grace != new.shutdown_grace),
            ("sinks", self.sinks != new.sinks),
            ("api", self.api != new.api),
            ("cluster", self.cluster != new.cluster),
            (
                "evaluation_threads",
                self.evaluation_threads != new.evaluation_threads,
            ),
            // Set, or sized from targets that now ask for another count.
            ("poll_threads", self.poll_threads() != new.poll_threads()),
        ];
        changed
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect()
    }

    /// Threads for the async side (polls, the API, the cluster's client):
    /// `poll_threads` if set, else one per [`POLLS_PER_THREAD`] polls a
    /// second the targets ask for, at least one and at most the cores.
    ///
    /// Why not one per core, tokio's default: a poll is mostly waiting, and
    /// at 1,000 polls a second two workers cost 8 % more CPU than one
    /// (hand-offs and wake-ups between them; BENCHMARKS.md, "Third round"),
    /// while one worker at 10,000 polls a second used about a quarter of a
    /// core. Sized at start: a reload whose targets ask for another count
    /// keeps the running one until the next start, and says so (see
    /// [`Settings::start_only_changes`]).
    pub fn poll_threads(&self) -> usize {
        if let Some(threads) = self.poll_threads {
            return threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let wanted = (self.polls_per_second() / POLLS_PER_THREAD).ceil() as usize;
        wanted.clamp(1, cores)
    }

    /// How many polls a second the targets make together.
    pub fn polls_per_second(&self) -> f64 {
        self.targets
            .iter()
            .map(|target| 1.0 / target.interval.as_secs_f64().max(1e-3))
            .sum()
    }
}

/// Polls a second one async thread is given by default (see
/// [`Settings::poll_threads`]).
pub const POLLS_PER_THREAD: f64 = 20_000.0;

/// The most async threads a config may ask for.
pub const MAX_POLL_THREADS: u64 = 256;

/// A folder of rules: every `*.wasm` file in it is a rule named after the
/// file, with the same config and limits. Files added later are loaded,
/// files removed are unloaded.
#[derive(Debug, Clone)]
pub struct RuleDir {
    /// The folder.
    pub dir: PathBuf,
    /// What each rule in it gets; `name` and `source` are set per file.
    pub template: RuleSpec,
}

impl RuleDir {
    /// The rules in the folder now, by file name.
    pub fn expand(&self) -> std::io::Result<Vec<RuleSpec>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm") && path.is_file())
            .collect();
        files.sort();
        Ok(files
            .into_iter()
            .filter_map(|file| {
                let name = file.file_stem()?.to_string_lossy().into_owned();
                Some(RuleSpec {
                    name: name.into(),
                    source: RuleSource::File(file),
                    ..self.template.clone()
                })
            })
            .collect())
    }
}

/// One target to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetSpec {
    /// Unique name, sent to rules as `sample.target`.
    pub name: TargetName,
    /// Labels sent with every sample, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// Time between the starts of two polls.
    pub interval: Duration,
    /// How to poll it.
    pub kind: TargetKind,
}

/// How a target is polled.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    /// `GET url`, expecting a JSON object of numbers.
    HttpJson {
        /// The status endpoint.
        url: reqwest::Url,
        /// Deadline for the whole request, body included.
        timeout: Duration,
        /// Bodies larger than this are refused.
        max_body_bytes: usize,
    },
    /// `GET url`, expecting a Prometheus or OpenMetrics text page.
    Prometheus {
        /// The `/metrics` endpoint.
        url: reqwest::Url,
        /// Deadline for the whole request, body included.
        timeout: Duration,
        /// Pages larger than this are refused.
        max_body_bytes: usize,
    },
    /// A check program run on every poll (the Nagios plugin convention).
    Command {
        /// The program (an absolute path) and its arguments; no shell.
        argv: Vec<String>,
        /// It is killed, with its process group, after this.
        timeout: Duration,
        /// More than this on stdout or on stderr is refused.
        max_output_bytes: usize,
    },
    /// This machine: CPU, memory, load and disks.
    Local,
}

impl TargetKind {
    /// `http-json`, `prometheus`, `command` or `local`, as in the config.
    pub fn name(&self) -> &'static str {
        match self {
            TargetKind::HttpJson { .. } => "http-json",
            TargetKind::Prometheus { .. } => "prometheus",
            TargetKind::Command { .. } => "command",
            TargetKind::Local => "local",
        }
    }
}

/// One rule to load.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// Unique name: the rule's log tag and state namespace.
    pub name: RuleName,
    /// Where its component comes from.
    pub source: RuleSource,
    /// Its `config` table, as the JSON text `configure` receives.
    pub config_json: String,
    /// Its resource limits.
    pub limits: Limits,
    /// When it is quarantined after failing.
    pub failure_policy: FailurePolicy,
    /// The targets it sees (`targets`, `target_labels`); default: all.
    pub targets: TargetSelector,
    /// Where it was declared (`vigil.toml:12`), for error messages.
    pub origin: String,
    /// Its pin and the keys it must be signed by, checked on the bytes
    /// before they compile (`plugins::trust`).
    pub trust: Trust,
    /// The tenant whose file declares it; `None` for the operator's own
    /// rules. A tenant's rule is named `tenant/rule`.
    pub tenant: Option<TenantName>,
}

/// When a failing rule is set aside, and for how long: the
/// `quarantine_*` settings of a `[[rules]]` table. The rule's worker
/// (`plugins`) applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failures in a row that quarantine the rule.
    pub quarantine_after: u32,
    /// The first quarantine's length; each next one doubles it.
    pub initial_backoff: Duration,
    /// The longest quarantine.
    pub max_backoff: Duration,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            quarantine_after: 5,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
        }
    }
}

/// Where a rule's component comes from.
#[derive(Debug, Clone)]
pub enum RuleSource {
    /// A rule embedded in the binary.
    Builtin(&'static builtin::Builtin),
    /// A `.wasm` file.
    File(PathBuf),
    /// A component pushed to the cluster (`vigil rules push`): the object
    /// store bucket and the component's sha256. Such a rule is loaded by
    /// `cluster::rule_sync`, never read from disk.
    Pushed {
        /// `vigil_<cluster>_rules`.
        bucket: String,
        /// The component's sha256, hex.
        digest: String,
    },
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::Builtin(builtin) => write!(f, "builtin:{}", builtin.name),
            RuleSource::File(path) => write!(f, "{}", path.display()),
            RuleSource::Pushed { bucket, digest } => write!(f, "nats:{bucket}/{digest}"),
        }
    }
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// `file` or `file:line`.
    pub location: String,
    /// What is wrong, and the fix when there is an obvious one.
    pub message: String,
}

impl Settings {
    /// The embedded default: watch this machine every 5 s with the bundled
    /// `threshold` rule.
    pub fn local_default() -> Self {
        Settings {
            data_dir: None,
            targets: vec![TargetSpec {
                name: "local".into(),
                labels: BTreeMap::new(),
                interval: DEFAULT_INTERVAL,
                kind: TargetKind::Local,
            }],
            rules: vec![default_rule("embedded default")],
            reload_debounce: DEFAULT_RELOAD_DEBOUNCE,
            rule_dirs: Vec::new(),
            actions: BTreeMap::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            alert_limits: RuleAlertLimits::default(),
            audit: AuditSettings::default(),
            sinks: Vec::new(),
            api: ApiSettings::default(),
            tenants: Vec::new(),
            cluster: None,
            evaluation_threads: Pool::default_threads(),
            poll_threads: None,
            trust: TrustSettings::default(),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            location: path.display().to_string(),
            message: format!("cannot read the config file: {error}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text; `path` names it in errors and anchors relative
    /// rule paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_after(text, path, None)
    }

    /// Reads and validates a config file again while `previous` runs: a
    /// tenant whose file is refused now keeps the file `previous` accepted
    /// (see [`TenantSpec::refused`]).
    pub fn reload(path: &Path, previous: &Settings) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            location: path.display().to_string(),
            message: format!("cannot read the config file: {error}"),
        })?;
        Self::parse_after(&text, path, Some(previous))
    }

    fn parse_after(
        text: &str,
        path: &Path,
        previous: Option<&Settings>,
    ) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|error| ConfigError {
            location: path.display().to_string(),
            message: error.to_string().trim_end().to_string(),
        })?;
        let at = |span: std::ops::Range<usize>| {
            format!("{}:{}", path.display(), line_of(text, span.start))
        };
        let base = path.parent().unwrap_or(Path::new("."));

        if file.targets.is_empty() {
            return Err(ConfigError {
                location: path.display().to_string(),
                message: "no targets to poll\nhint: add a [[targets]] table, e.g. kind = \"local\" to watch this machine".into(),
            });
        }
        let mut names = HashSet::new();
        let mut targets = Vec::new();
        for spanned in file.targets {
            let location = at(spanned.span());
            let target = spanned.into_inner();
            let name = target.name.clone();
            let fail = |message: String| ConfigError {
                location: location.clone(),
                message: format!("target `{name}`: {message}"),
            };
            if !names.insert(name.clone()) {
                return Err(fail(
                    "the name is used twice; target names must be unique".into(),
                ));
            }
            targets.push(target.validate().map_err(fail)?);
        }

        let trust = section(file.trust, "trust", &at, |section| section.validate(base))?;
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        let mut rule_dirs = Vec::new();
        // A config with no rule of its own, and no tenant bringing some,
        // runs the bundled rule: the classic monitor.
        let declared = !file.rules.is_empty() || !file.tenants.is_empty();
        let mut specs = Vec::new();
        let mut alert_limits = RuleAlertLimits::default();
        for spanned in file.rules {
            let location = at(spanned.span());
            let rule = spanned.into_inner();
            let fail = |message: String| ConfigError {
                location: location.clone(),
                message,
            };
            let limits = rule.alert_limits().map_err(fail)?;
            match rule.dir.clone() {
                None => {
                    let spec = rule.validate(base, &location, &trust).map_err(fail)?;
                    alert_limits.set(spec.name.clone(), limits);
                    specs.push(spec);
                }
                Some(dir) => {
                    let rule_dir = rule.into_dir(base, &dir, &location, &trust).map_err(fail)?;
                    alert_limits.set_dir(rule_dir.dir.clone(), limits);
                    let expanded = rule_dir.expand().map_err(|error| {
                        fail(format!(
                            "cannot list the rules directory `{}`: {error}",
                            rule_dir.dir.display()
                        ))
                    })?;
                    for spec in &expanded {
                        alert_limits.set(spec.name.clone(), limits);
                    }
                    specs.extend(expanded);
                    rule_dirs.push(rule_dir);
                }
            }
        }
        for spec in specs {
            let location = spec.origin.clone();
            if spec.name.contains(TENANT_SEPARATOR) {
                return Err(ConfigError {
                    location,
                    message: format!(
                        "rule `{}`: `{TENANT_SEPARATOR}` is kept for tenants' rules (`tenant/rule`)\nhint: name it without `{TENANT_SEPARATOR}`, e.g. with `-`",
                        spec.name
                    ),
                });
            }
            if !names.insert(spec.name.clone()) {
                return Err(rule_named_twice(location, &spec.name));
            }
            rules.push(spec);
        }
        if !declared {
            rules.push(default_rule(&path.display().to_string()));
        }
        let audit = section(file.audit, "audit", &at, |section| section.validate())?;
        let api = section(file.api, "api", &at, |section| section.validate(base))?;
        let cluster = section(file.cluster, "cluster", &at, |section| {
            section.validate(base)
        })?;
        let mut sinks: Vec<SinkSpec> = Vec::new();
        for spanned in file.sinks {
            let location = at(spanned.span());
            let sink = spanned.into_inner();
            let name = sink.name().to_string();
            let fail = |message: String| ConfigError {
                location: location.clone(),
                message: format!("sink `{name}`: {message}"),
            };
            if sinks.iter().any(|other| other.name == name) {
                return Err(fail(
                    "the name is used twice; sink names must be unique".into(),
                ));
            }
            sinks.push(sink.validate(base).map_err(fail)?);
        }
        let actions = match &file.actions {
            None => BTreeMap::new(),
            Some(table) => {
                parse_actions(table.get_ref(), file.remediation_mode.unwrap_or_default()).map_err(
                    |message| ConfigError {
                        location: at(table.span()),
                        message,
                    },
                )?
            }
        };
        let mut tenants = Vec::new();
        for spanned in file.tenants {
            let location = at(spanned.span());
            let (name, tenant_file, grant) = spanned
                .into_inner()
                .validate(base, &actions, &sinks)
                .map_err(|message| ConfigError {
                    location: location.clone(),
                    message,
                })?;
            if tenants.iter().any(|other: &TenantSpec| other.name == name) {
                return Err(ConfigError {
                    location,
                    message: format!(
                        "tenant `{name}`: the name is used twice; tenant names must be unique"
                    ),
                });
            }
            let before =
                previous.and_then(|previous| previous.tenants.iter().find(|t| t.name == name));
            let (tenant, resolved) = TenantSpec::load(name, tenant_file, grant, before);
            if let Some(resolved) = resolved {
                for (rule, limits) in resolved.alert_limits {
                    alert_limits.set(rule, limits);
                }
                rules.extend(resolved.rules);
            }
            tenants.push(tenant);
        }
        for (name, action) in &actions {
            for rule in &action.allowed_rules {
                if !names.contains(rule.as_str()) && rule_dirs.is_empty() {
                    tracing::warn!(action = %name, rule, "An action allows a rule that is not configured.");
                }
            }
        }
        let evaluation_threads = match file.evaluation_threads {
            None => Pool::default_threads(),
            Some(threads) => {
                let location = at(threads.span());
                let threads = threads.into_inner();
                if !(1..=MAX_THREADS as u64).contains(&threads) {
                    return Err(ConfigError {
                        location,
                        message: format!(
                            "evaluation_threads = {threads}: must be between 1 and {MAX_THREADS}\nhint: leave it out for one thread per core (at least 2)"
                        ),
                    });
                }
                threads as usize
            }
        };
        let poll_threads = match file.poll_threads {
            None => None,
            Some(threads) => {
                let location = at(threads.span());
                let threads = threads.into_inner();
                if !(1..=MAX_POLL_THREADS).contains(&threads) {
                    return Err(ConfigError {
                        location,
                        message: format!(
                            "poll_threads = {threads}: must be between 1 and {MAX_POLL_THREADS}\nhint: leave it out for one thread per 20,000 polls a second"
                        ),
                    });
                }
                Some(threads as usize)
            }
        };
        Ok(Settings {
            data_dir: file.data_dir.map(|dir| base.join(dir)),
            targets,
            rules,
            reload_debounce: file
                .reload_debounce
                .map_or(DEFAULT_RELOAD_DEBOUNCE, |d| d.0),
            rule_dirs,
            actions,
            shutdown_grace: file.shutdown_grace.map_or(DEFAULT_SHUTDOWN_GRACE, |d| d.0),
            alert_limits,
            audit,
            sinks,
            api,
            tenants,
            cluster,
            evaluation_threads,
            poll_threads,
            trust,
        })
    }
}

fn default_rule(origin: &str) -> RuleSpec {
    RuleSpec {
        targets: TargetSelector::default(),
        name: builtin::THRESHOLD.name.into(),
        source: RuleSource::Builtin(&builtin::THRESHOLD),
        config_json: "{}".into(),
        limits: Limits::default(),
        failure_policy: FailurePolicy::default(),
        origin: origin.into(),
        trust: Trust::default(),
        tenant: None,
    }
}

/// An optional `[NAME]` table checked by `validate`: its defaults when it
/// is absent, else what `validate` makes of it, or the error at its line.
fn section<C, T: Default>(
    table: Option<Spanned<C>>,
    name: &str,
    at: &impl Fn(std::ops::Range<usize>) -> String,
    validate: impl FnOnce(C) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let Some(spanned) = table else {
        return Ok(T::default());
    };
    let location = at(spanned.span());
    validate(spanned.into_inner()).map_err(|message| ConfigError {
        location,
        message: format!("[{name}]: {message}"),
    })
}

/// Two rules of one config (or one tenant's file) with the same name.
fn rule_named_twice(location: String, name: &RuleName) -> ConfigError {
    ConfigError {
        location,
        message: format!(
            "rule `{name}`: the name is used twice\nhint: set `name` to tell the rules apart"
        ),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    remediation_mode: Option<Mode>,
    actions: Option<Spanned<toml::Table>>,
    reload_debounce: Option<ConfigDuration>,
    shutdown_grace: Option<ConfigDuration>,
    evaluation_threads: Option<Spanned<u64>>,
    poll_threads: Option<Spanned<u64>>,
    audit: Option<Spanned<AuditConfig>>,
    api: Option<Spanned<api::ApiConfig>>,
    cluster: Option<Spanned<cluster::ClusterConfig>>,
    trust: Option<Spanned<TrustConfig>>,
    #[serde(default)]
    targets: Vec<Spanned<TargetConfig>>,
    #[serde(default)]
    rules: Vec<Spanned<RuleConfig>>,
    #[serde(default)]
    sinks: Vec<Spanned<sinks::SinkConfig>>,
    #[serde(default)]
    tenants: Vec<Spanned<tenants::TenantConfig>>,
}

/// `[trust]`: whom the operator trusts to sign rule files. A tenant's own
/// section can take the same table for its rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustConfig {
    /// minisign public key files, relative to the config, e.g.
    /// `["keys/ops.pub"]`.
    #[serde(default)]
    keys: Vec<PathBuf>,
    /// Whether every rule file needs a signature by one of `keys` unless its
    /// `[[rules]]` table says `require_signature = false`.
    #[serde(default)]
    require_signature: bool,
}

impl TrustConfig {
    /// Reads the keys: a key that cannot be used is an error now, not at
    /// the first rule it should have verified.
    fn validate(self, base: &Path) -> Result<TrustSettings, String> {
        let keys = self
            .keys
            .iter()
            .map(|file| TrustedKey::read(&base.join(file)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustSettings {
            keys: Keyring::new(keys),
            require_signature: self.require_signature,
        })
    }
}

/// `[audit]`: how much the audit log keeps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditConfig {
    /// Finished records older than this are deleted: `"30d"`.
    max_age: Option<ConfigDuration>,
    /// The records together stay under this: `"256MiB"`.
    max_bytes: Option<TextSize>,
    /// Refusal records per rule per minute, the rest counted: `60`.
    refusal_records_per_minute: Option<u32>,
}

impl AuditConfig {
    fn validate(self) -> Result<AuditSettings, String> {
        let mut settings = AuditSettings::default();
        if let Some(age) = self.max_age {
            settings.max_age = age.0;
        }
        if let Some(size) = self.max_bytes {
            if size.bytes() < MIN_MAX_BYTES {
                return Err(format!(
                    "max_bytes is {} bytes, less than the smallest allowed, 1MiB\nhint: one record can take 130 KiB (the output a run keeps); write e.g. max_bytes = \"64MiB\"",
                    size.bytes()
                ));
            }
            settings.max_bytes = size.bytes();
        }
        if let Some(count) = self.refusal_records_per_minute {
            if count == 0 {
                return Err("refusal_records_per_minute must be at least 1\nhint: past it, refusals are counted in one summary record a minute; 1 keeps the fewest records".into());
            }
            settings.refusal_records_per_minute = count;
        }
        Ok(settings)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetConfig {
    name: String,
    kind: KindName,
    url: Option<String>,
    interval: Option<ConfigDuration>,
    timeout: Option<ConfigDuration>,
    max_body_bytes: Option<usize>,
    command: Option<Vec<String>>,
    max_output_bytes: Option<usize>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum KindName {
    HttpJson,
    Prometheus,
    Command,
    Local,
}

impl KindName {
    fn name(self) -> &'static str {
        match self {
            KindName::HttpJson => "http-json",
            KindName::Prometheus => "prometheus",
            KindName::Command => "command",
            KindName::Local => "local",
        }
    }

    /// The kind-specific settings it takes.
    fn settings(self) -> &'static [&'static str] {
        match self {
            KindName::HttpJson | KindName::Prometheus => &["url", "timeout", "max_body_bytes"],
            KindName::Command => &["command", "timeout", "max_output_bytes"],
            KindName::Local => &[],
        }
    }
}

impl TargetConfig {
    fn validate(self) -> Result<TargetSpec, String> {
        if self.name.is_empty() {
            return Err("the name is empty".into());
        }
        let interval = self.interval.map_or(DEFAULT_INTERVAL, |d| d.0);
        if interval < Duration::from_millis(1) {
            return Err(format!(
                "interval `{interval:?}` is too short; use 1ms or more"
            ));
        }
        for label in self.labels.keys() {
            check_label_name(label)?;
        }
        let kind_name = self.kind.name();
        for (field, set) in [
            ("url", self.url.is_some()),
            ("timeout", self.timeout.is_some()),
            ("max_body_bytes", self.max_body_bytes.is_some()),
            ("command", self.command.is_some()),
            ("max_output_bytes", self.max_output_bytes.is_some()),
        ] {
            if set && !self.kind.settings().contains(&field) {
                let owners: Vec<String> =
                    [KindName::HttpJson, KindName::Prometheus, KindName::Command]
                        .into_iter()
                        .filter(|kind| kind.settings().contains(&field))
                        .map(|kind| format!("`{}`", kind.name()))
                        .collect();
                let owners = match owners.split_last() {
                    Some((last, [])) => format!("kind {last}"),
                    Some((last, rest)) => format!("kinds {} and {last}", rest.join(", ")),
                    None => "no kind".into(),
                };
                return Err(format!(
                    "kind `{kind_name}` takes no `{field}`\nhint: `{field}` is a setting of {owners}"
                ));
            }
        }
        let kind = match self.kind {
            KindName::HttpJson | KindName::Prometheus => {
                let example = if self.kind == KindName::HttpJson {
                    "http://127.0.0.1:8080/status"
                } else {
                    "http://127.0.0.1:9100/metrics"
                };
                let url = self.url.ok_or_else(|| {
                    format!("kind `{kind_name}` needs a `url`, e.g. \"{example}\"")
                })?;
                let url = reqwest::Url::parse(&url)
                    .map_err(|error| format!("invalid url `{url}`: {error}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(format!("url `{url}` must be http:// or https://"));
                }
                let timeout = self.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
                let max_body_bytes = self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
                if self.kind == KindName::HttpJson {
                    TargetKind::HttpJson {
                        url,
                        timeout,
                        max_body_bytes,
                    }
                } else {
                    TargetKind::Prometheus {
                        url,
                        timeout,
                        max_body_bytes,
                    }
                }
            }
            KindName::Command => {
                const EXAMPLE: &str = "hint: e.g. command = [\"/usr/lib/nagios/plugins/check_load\", \"-w\", \"5,5,5\", \"-c\", \"10,10,10\"]";
                let argv = self.command.unwrap_or_default();
                let Some(program) = argv.first() else {
                    return Err(format!(
                        "kind `command` needs a `command`: the program and its arguments\n{EXAMPLE}"
                    ));
                };
                if !Path::new(program).is_absolute() {
                    return Err(format!(
                        "command `{program}` must be an absolute path: checks run with a minimal PATH and no shell\n{EXAMPLE}"
                    ));
                }
                if self.labels.contains_key(CHECK_OUTPUT_LABEL) {
                    return Err(format!(
                        "label `{CHECK_OUTPUT_LABEL}` is set by kind `command` (the check's status text)\nhint: rename the label"
                    ));
                }
                let max_output_bytes = self.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
                if max_output_bytes == 0 {
                    return Err(
                        "`max_output_bytes` of 0 refuses every check's output\nhint: leave it out for 64 KiB"
                            .into(),
                    );
                }
                TargetKind::Command {
                    argv,
                    timeout: self.timeout.map_or(DEFAULT_COMMAND_TIMEOUT, |d| d.0),
                    max_output_bytes,
                }
            }
            KindName::Local => TargetKind::Local,
        };
        Ok(TargetSpec {
            name: self.name.into(),
            labels: self.labels,
            interval,
            kind,
        })
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    if Syntax::Identifier.accepts(name) {
        Ok(())
    } else {
        Err(format!(
            "label name `{name}` is invalid; use letters, digits and `_`, not starting with a digit"
        ))
    }
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    path: Option<PathBuf>,
    dir: Option<PathBuf>,
    builtin: Option<String>,
    name: Option<String>,
    #[serde(default)]
    config: toml::Table,
    timeout: Option<ConfigDuration>,
    init_timeout: Option<ConfigDuration>,
    max_memory_mib: Option<usize>,
    max_alerts: Option<usize>,
    max_actions: Option<usize>,
    max_verdict_bytes: Option<usize>,
    log_lines_per_second: Option<u32>,
    /// Most bytes of key-value state: `"1MiB"`.
    max_state_bytes: Option<TextSize>,
    max_active_alerts_per_target: Option<usize>,
    max_active_alerts: Option<usize>,
    quarantine_after: Option<u32>,
    quarantine_backoff: Option<ConfigDuration>,
    quarantine_max_backoff: Option<ConfigDuration>,
    /// Names or globs of the targets the rule sees: `["web-*", "db-01"]`.
    targets: Option<Vec<String>>,
    /// Labels a target must carry for the rule to see it: `{ team = "web" }`.
    #[serde(default)]
    target_labels: BTreeMap<String, String>,
    /// Only the file with this sha256 loads (not for a folder or a builtin).
    sha256: Option<String>,
    /// Overrides `[trust] require_signature` for this rule (or folder).
    require_signature: Option<bool>,
}

impl RuleConfig {
    /// How many alerts the host tracks for this rule (or each rule in its
    /// folder).
    fn alert_limits(&self) -> Result<AlertLimits, String> {
        let mut limits = AlertLimits::default();
        if let Some(max) = self.max_active_alerts_per_target {
            limits.per_target = max;
        }
        if let Some(max) = self.max_active_alerts {
            limits.per_rule = max;
        }
        if limits.per_target == 0 || limits.per_rule == 0 {
            return Err("max_active_alerts_per_target and max_active_alerts must be at least 1\nhint: a rule that should never alert can simply report none".into());
        }
        if limits.per_rule < limits.per_target {
            return Err(format!(
                "max_active_alerts ({}) is smaller than max_active_alerts_per_target ({})\nhint: the first is for all the rule's targets together; raise it or lower the other",
                limits.per_rule, limits.per_target
            ));
        }
        Ok(limits)
    }

    /// A `[[rules]]` table with `dir`: the template for every rule in it.
    fn into_dir(
        self,
        base: &Path,
        dir: &Path,
        origin: &str,
        trust: &TrustSettings,
    ) -> Result<RuleDir, String> {
        for (field, set) in [
            ("path", self.path.is_some()),
            ("builtin", self.builtin.is_some()),
            ("name", self.name.is_some()),
        ] {
            if set {
                return Err(format!(
                    "a rules directory takes no `{field}`: each rule is named after its file"
                ));
            }
        }
        if self.sha256.is_some() {
            return Err("a rules directory takes no `sha256`: one pin cannot fit every file in it\nhint: pin a rule in a [[rules]] table of its own with `path`, or require signatures for the folder with `require_signature = true`".into());
        }
        let dir = base.join(dir);
        if !dir.is_dir() {
            return Err(format!(
                "the rules directory `{}` does not exist",
                dir.display()
            ));
        }
        let template = RuleConfig {
            dir: None,
            path: Some(dir.join("template.wasm")),
            ..self
        }
        .validate(base, origin, trust)?;
        Ok(RuleDir { dir, template })
    }

    fn validate(
        self,
        base: &Path,
        origin: &str,
        trust: &TrustSettings,
    ) -> Result<RuleSpec, String> {
        let source = match (self.path, self.builtin) {
            (Some(path), None) => RuleSource::File(base.join(path)),
            (None, Some(name)) => RuleSource::Builtin(builtin::find(&name).ok_or_else(|| {
                format!(
                    "there is no builtin rule `{name}`; builtins: {}",
                    builtin::names().join(", ")
                )
            })?),
            (Some(_), Some(_)) => return Err("a rule takes `path` or `builtin`, not both".into()),
            (None, None) => {
                return Err(
                    "a rule needs `path` (a .wasm file) or `builtin` (e.g. \"threshold\")".into(),
                );
            }
        };
        let name = match (self.name, &source) {
            (Some(name), _) => name,
            (None, RuleSource::Builtin(builtin)) => builtin.name.to_string(),
            (None, RuleSource::File(path)) => path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    format!(
                        "cannot name the rule after `{}`; set `name`",
                        path.display()
                    )
                })?,
            // A config names files and builtins only.
            (None, RuleSource::Pushed { digest, .. }) => digest.clone(),
        };
        let mut limits = Limits::default();
        if let Some(timeout) = self.timeout {
            limits.evaluate_timeout = timeout.0;
        }
        if let Some(timeout) = self.init_timeout {
            limits.init_timeout = timeout.0;
        }
        if let Some(mib) = self.max_memory_mib {
            if mib == 0 {
                return Err("max_memory_mib must be at least 1".into());
            }
            limits.max_memory_bytes = mib.saturating_mul(1024 * 1024);
        }
        if let Some(max) = self.max_alerts {
            limits.max_alerts = max;
        }
        if let Some(max) = self.max_actions {
            limits.max_actions = max;
        }
        if let Some(max) = self.max_verdict_bytes {
            limits.max_verdict_bytes = max;
        }
        if let Some(rate) = self.log_lines_per_second {
            limits.log_lines_per_second = rate;
        }
        if let Some(size) = self.max_state_bytes {
            limits.max_state_bytes = usize::try_from(size.bytes()).unwrap_or(usize::MAX);
        }
        let mut failure_policy = FailurePolicy::default();
        if let Some(after) = self.quarantine_after {
            if after == 0 {
                return Err("quarantine_after must be at least 1 failure".into());
            }
            failure_policy.quarantine_after = after;
        }
        if let Some(backoff) = self.quarantine_backoff {
            failure_policy.initial_backoff = backoff.0;
        }
        if let Some(backoff) = self.quarantine_max_backoff {
            failure_policy.max_backoff = backoff.0;
        }
        if failure_policy.max_backoff < failure_policy.initial_backoff {
            return Err("quarantine_max_backoff is shorter than quarantine_backoff".into());
        }
        let trust = match &source {
            // Builtins are part of the binary: trusting it is trusting them.
            RuleSource::Builtin(_) => {
                if self.sha256.is_some() || self.require_signature == Some(true) {
                    return Err(format!(
                        "rule `{name}`: `sha256` and `require_signature` apply to rule files; a builtin is part of the vigil binary\nhint: remove them, or use a `path` to a .wasm file"
                    ));
                }
                Trust::default()
            }
            RuleSource::File(_) | RuleSource::Pushed { .. } => {
                let pin = self
                    .sha256
                    .as_deref()
                    .map(str::parse::<Sha256>)
                    .transpose()
                    .map_err(|error| format!("rule `{name}`: sha256: {error}"))?;
                trust
                    .for_rule(pin, self.require_signature)
                    .map_err(|error| format!("rule `{name}`: {error}"))?
            }
        };
        let config_json = serde_json::to_string(&self.config).map_err(|error| {
            format!("rule `{name}`: its config cannot be passed as JSON: {error}")
        })?;
        let names = match self.targets {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err("targets = [] gives the rule no target at all\nhint: leave `targets` out for every target, or name some".into());
            }
            Some(list) => list
                .iter()
                .map(|text| NamePattern::new(text).map_err(|error| format!("targets: {error}")))
                .collect::<Result<_, _>>()?,
        };
        Ok(RuleSpec {
            name: name.into(),
            source,
            config_json,
            limits,
            failure_policy,
            targets: TargetSelector {
                names,
                labels: self.target_labels,
            },
            origin: origin.to_string(),
            trust,
            tenant: None,
        })
    }
}

/// A [`TextDuration`] that must be longer than zero: every duration of the
/// host's own settings (intervals, timeouts, backoffs) is one.
#[derive(Clone, Copy)]
struct ConfigDuration(Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let TextDuration(duration) = TextDuration::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of zero is not allowed here",
            ));
        }
        Ok(ConfigDuration(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/etc/vigil/vigil.toml"))
    }

    #[test]
    fn a_rule_selects_its_targets_by_name_glob_and_label() {
        let parse = |rules: &str| {
            parse(&format!(
                "[[targets]]\nname = \"local\"\nkind = \"local\"\n\n{rules}"
            ))
        };
        let settings = parse(
            "[[rules]]\nbuiltin = \"threshold\"\ntargets = [\"web-*\", \"db-01\"]\ntarget_labels = { team = \"web\" }\n",
        )
        .unwrap();
        let selector = &settings.rules[0].targets;
        let names: Vec<String> = selector.names.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["web-*", "db-01"]);
        assert_eq!(selector.labels["team"], "web");
        assert!(
            parse("[[rules]]\nbuiltin = \"threshold\"\n").unwrap().rules[0]
                .targets
                .is_all()
        );
        let none = parse("[[rules]]\nbuiltin = \"threshold\"\ntargets = []\n").unwrap_err();
        assert!(
            none.to_string()
                .contains("targets = [] gives the rule no target at all"),
            "{none}"
        );
        let empty = parse("[[rules]]\nbuiltin = \"threshold\"\ntargets = [\"\"]\n").unwrap_err();
        assert!(
            empty
                .to_string()
                .contains("targets: an empty target pattern matches nothing"),
            "{empty}"
        );
    }

    #[test]
    fn evaluation_threads_defaults_to_the_cores_is_checked_and_takes_effect_at_start() {
        let targets = "[[targets]]\nname = \"local\"\nkind = \"local\"\n";
        let parse = |head: &str| parse(&format!("{head}\n{targets}"));
        let default = parse("").unwrap();
        assert_eq!(default.evaluation_threads, Pool::default_threads());
        assert!(default.evaluation_threads >= 2);
        let four = parse("evaluation_threads = 4").unwrap();
        assert_eq!(four.evaluation_threads, 4);
        assert_eq!(default.start_only_changes(&four), ["evaluation_threads"]);
        for refused in ["evaluation_threads = 0", "evaluation_threads = 100000"] {
            let error = parse(refused).unwrap_err();
            assert!(error.location.ends_with(":1"), "{error}");
            assert!(
                error.message.contains("must be between 1 and 256")
                    && error.message.contains("hint:"),
                "{error}"
            );
        }
    }

    #[test]
    fn poll_threads_follow_the_poll_rate_unless_set_and_take_effect_at_start() {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let fleet = |count: usize, interval: &str| {
            (0..count)
                .map(|i| {
                    format!(
                        "[[targets]]\nname = \"t{i}\"\nkind = \"http-json\"\nurl = \"http://127.0.0.1:1/\"\ninterval = \"{interval}\"\n"
                    )
                })
                .collect::<String>()
        };
        // 1,000 polls a second: one thread.
        let small = parse(&fleet(1000, "1s")).unwrap();
        assert_eq!(small.poll_threads, None);
        assert_eq!(small.poll_threads(), 1);
        // 50,000 polls a second: three wanted, at most the cores.
        let large = parse(&fleet(500, "10ms")).unwrap();
        assert_eq!(large.poll_threads(), 3.min(cores));
        let set = parse(&format!("poll_threads = 4\n{}", fleet(1, "1s"))).unwrap();
        assert_eq!(set.poll_threads(), 4);
        let unset = parse(&fleet(1, "1s")).unwrap();
        assert_eq!(unset.start_only_changes(&set), ["poll_threads"]);
        // Targets that ask for more threads than run are told apart from a
        // reload that changes nothing the running host cannot follow.
        assert!(small.start_only_changes(&small).is_empty());
        let grown: &[&str] = if cores > 1 { &["poll_threads"] } else { &[] };
        assert_eq!(small.start_only_changes(&large), grown);
        for refused in ["poll_threads = 0", "poll_threads = 100000"] {
            let error = parse(&format!("{refused}\n{}", fleet(1, "1s"))).unwrap_err();
            assert!(error.location.ends_with(":1"), "{error}");
            assert!(
                error.message.contains("must be between 1 and 256")
                    && error.message.contains("hint:"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_full_config_becomes_typed_settings() {
        let settings = parse(
            r#"
data_dir = "state"

[[targets]]
name = "web-01"
kind = "http-json"
url = "http://127.0.0.1:8080/status"
interval = "1s"
timeout = "250ms"
labels = { team = "payments" }

[[rules]]
builtin = "threshold"
config = { thresholds = { cpu_usage = 90 } }
timeout = "50ms"
max_memory_mib = 32

[[rules]]
path = "rules/disk.wasm"
"#,
        )
        .unwrap();
        assert_eq!(settings.data_dir, Some(PathBuf::from("/etc/vigil/state")));
        let target = &settings.targets[0];
        assert_eq!(target.interval, Duration::from_secs(1));
        let TargetKind::HttpJson {
            url,
            timeout,
            max_body_bytes,
        } = &target.kind
        else {
            panic!("expected http-json");
        };
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/status");
        assert_eq!(*timeout, Duration::from_millis(250));
        assert_eq!(*max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let [threshold, disk] = &settings.rules[..] else {
            panic!("two rules")
        };
        assert_eq!(threshold.config_json, r#"{"thresholds":{"cpu_usage":90}}"#);
        assert_eq!(threshold.limits.evaluate_timeout, Duration::from_millis(50));
        assert_eq!(threshold.limits.max_memory_bytes, 32 << 20);
        assert_eq!(threshold.origin, "/etc/vigil/vigil.toml:12");
        assert_eq!(disk.name, "disk");
        assert!(
            matches!(&disk.source, RuleSource::File(p) if p == Path::new("/etc/vigil/rules/disk.wasm"))
        );
    }

    #[test]
    fn a_rules_directory_expands_to_one_rule_per_wasm_file() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.d");
        std::fs::create_dir(&rules).unwrap();
        for file in ["b.wasm", "a.wasm", "notes.txt"] {
            std::fs::write(rules.join(file), b"").unwrap();
        }
        let text = "[[targets]]\nname = \"me\"\nkind = \"local\"\n[[rules]]\ndir = \"rules.d\"\ntimeout = \"50ms\"\n";
        let settings = Settings::parse(text, &dir.path().join("vigil.toml")).unwrap();
        let names: Vec<&str> = settings
            .rules
            .iter()
            .map(|rule| rule.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(
            settings
                .rules
                .iter()
                .all(|rule| rule.limits.evaluate_timeout == Duration::from_millis(50))
        );
        assert_eq!(settings.rule_dirs.len(), 1);

        let error = |text: &str| {
            Settings::parse(text, &dir.path().join("vigil.toml"))
                .unwrap_err()
                .to_string()
        };
        let missing =
            error("[[targets]]\nname = \"me\"\nkind = \"local\"\n[[rules]]\ndir = \"nope\"\n");
        assert!(
            missing.contains(":4: the rules directory `")
                && missing.contains("nope` does not exist"),
            "{missing}"
        );
        let named = error(
            "[[targets]]\nname = \"me\"\nkind = \"local\"\n[[rules]]\ndir = \"rules.d\"\nname = \"x\"\n",
        );
        assert!(
            named.contains("a rules directory takes no `name`"),
            "{named}"
        );
    }

    #[test]
    fn alert_limits_are_per_rule_with_defaults_and_checked() {
        let head = "[[targets]]\nname = \"me\"\nkind = \"local\"\n";
        let settings = parse(&format!(
            "{head}[[rules]]\nbuiltin = \"threshold\"\nmax_active_alerts_per_target = 5\nmax_active_alerts = 50\n[[rules]]\nbuiltin = \"threshold\"\nname = \"other\"\n"
        ))
        .unwrap();
        let mut limits = settings.alert_limits;
        assert_eq!(
            limits.get(&"threshold".into()),
            AlertLimits {
                per_target: 5,
                per_rule: 50
            }
        );
        assert_eq!(limits.get(&"other".into()), AlertLimits::default());
        let error = parse(&format!(
            "{head}[[rules]]\nbuiltin = \"threshold\"\nmax_active_alerts_per_target = 5\nmax_active_alerts = 2\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("/etc/vigil/vigil.toml:4: max_active_alerts (2) is smaller than max_active_alerts_per_target (5)\nhint: "),
            "{error}"
        );
    }

    #[test]
    fn the_audit_section_sets_retention_with_defaults_and_checks() {
        let head = "[[targets]]\nname = \"me\"\nkind = \"local\"\n";
        assert_eq!(parse(head).unwrap().audit, AuditSettings::default());
        let settings = parse(&format!(
            "{head}[audit]\nmax_age = \"7d\"\nmax_bytes = \"64MiB\"\nrefusal_records_per_minute = 5\n"
        ))
        .unwrap();
        assert_eq!(
            settings.audit,
            AuditSettings {
                max_age: Duration::from_secs(7 * 24 * 3600),
                max_bytes: 64 << 20,
                refusal_records_per_minute: 5,
            }
        );
        let error = |text: &str| parse(&format!("{head}{text}")).unwrap_err().to_string();
        let small = error("[audit]\nmax_bytes = \"10KiB\"\n");
        assert!(
            small.starts_with("/etc/vigil/vigil.toml:4: [audit]: max_bytes is 10240 bytes, less than the smallest allowed, 1MiB\nhint: "),
            "{small}"
        );
        let unit = error("[audit]\nmax_bytes = \"10\"\n");
        assert!(
            unit.contains("invalid size `10`: the unit is missing"),
            "{unit}"
        );
        assert!(unit.contains("line 5"), "{unit}");
        let typo = error("[audit]\nmax_size = \"1GiB\"\n");
        assert!(typo.contains("unknown field `max_size`"), "{typo}");
    }

    #[test]
    fn prometheus_and_command_targets() {
        let settings = parse(
            r#"
[[targets]]
name = "node"
kind = "prometheus"
url = "http://127.0.0.1:9100/metrics"
max_body_bytes = 4194304

[[targets]]
name = "load"
kind = "command"
command = ["/usr/lib/nagios/plugins/check_load", "-w", "5,5,5", "-c", "10,10,10"]
max_output_bytes = 4096
"#,
        )
        .unwrap();
        assert_eq!(
            settings.targets[0].kind,
            TargetKind::Prometheus {
                url: "http://127.0.0.1:9100/metrics".parse().unwrap(),
                timeout: DEFAULT_TIMEOUT,
                max_body_bytes: 4 << 20,
            }
        );
        assert_eq!(
            settings.targets[1].kind,
            TargetKind::Command {
                argv: [
                    "/usr/lib/nagios/plugins/check_load",
                    "-w",
                    "5,5,5",
                    "-c",
                    "10,10,10"
                ]
                .map(String::from)
                .to_vec(),
                timeout: DEFAULT_COMMAND_TIMEOUT,
                max_output_bytes: 4096,
            }
        );
    }

    #[test]
    fn prometheus_and_command_errors_name_the_target_and_hint() {
        let error = |text: &str| parse(text).unwrap_err().to_string();
        let target = |kind: &str, rest: &str| {
            format!(
                "[[targets]]\nname = \"a\"\nkind = \"local\"\n\n[[targets]]\nname = \"t\"\nkind = \"{kind}\"\n{rest}"
            )
        };
        assert_eq!(
            error(&target("prometheus", "")),
            "/etc/vigil/vigil.toml:5: target `t`: kind `prometheus` needs a `url`, e.g. \"http://127.0.0.1:9100/metrics\""
        );
        assert_eq!(
            error(&target("command", "")),
            "/etc/vigil/vigil.toml:5: target `t`: kind `command` needs a `command`: the program and its arguments\nhint: e.g. command = [\"/usr/lib/nagios/plugins/check_load\", \"-w\", \"5,5,5\", \"-c\", \"10,10,10\"]"
        );
        assert!(error(&target("command", "command = []\n")).contains("needs a `command`"));
        let relative = error(&target("command", "command = [\"check_load\"]\n"));
        assert!(
            relative.starts_with("/etc/vigil/vigil.toml:5: target `t`: command `check_load` must be an absolute path: checks run with a minimal PATH and no shell\nhint: e.g."),
            "{relative}"
        );
        assert_eq!(
            error(&target(
                "command",
                "command = [\"/bin/true\"]\nurl = \"http://x/\"\n"
            )),
            "/etc/vigil/vigil.toml:5: target `t`: kind `command` takes no `url`\nhint: `url` is a setting of kinds `http-json` and `prometheus`"
        );
        assert_eq!(
            error(&target(
                "prometheus",
                "url = \"http://x/\"\nmax_output_bytes = 5\n"
            )),
            "/etc/vigil/vigil.toml:5: target `t`: kind `prometheus` takes no `max_output_bytes`\nhint: `max_output_bytes` is a setting of kind `command`"
        );
        assert_eq!(
            error(&target("local", "timeout = \"1s\"\n")),
            "/etc/vigil/vigil.toml:5: target `t`: kind `local` takes no `timeout`\nhint: `timeout` is a setting of kinds `http-json`, `prometheus` and `command`"
        );
        let reserved = error(&target(
            "command",
            "command = [\"/bin/true\"]\nlabels = { check_output = \"x\" }\n",
        ));
        assert!(
            reserved.contains("target `t`: label `check_output` is set by kind `command`"),
            "{reserved}"
        );
        let zero = error(&target(
            "command",
            "command = [\"/bin/true\"]\nmax_output_bytes = 0\n",
        ));
        assert!(zero.contains("`max_output_bytes` of 0"), "{zero}");
    }

    #[test]
    fn no_rules_means_the_default_rule() {
        let settings = parse("[[targets]]\nname = \"me\"\nkind = \"local\"\n").unwrap();
        assert_eq!(settings.rules.len(), 1);
        assert_eq!(settings.rules[0].name, "threshold");
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_fix() {
        let error = |text: &str| parse(text).unwrap_err().to_string();
        let bad_duration =
            error("[[targets]]\nname = \"a\"\nkind = \"local\"\ninterval = \"soon\"\n");
        assert!(
            bad_duration.contains("/etc/vigil/vigil.toml"),
            "{bad_duration}"
        );
        assert!(bad_duration.contains("line 4"), "{bad_duration}");
        assert!(
            bad_duration.contains("invalid duration `soon`"),
            "{bad_duration}"
        );

        let no_url = error(
            "[[targets]]\nname = \"a\"\nkind = \"local\"\n\n[[targets]]\nname = \"web\"\nkind = \"http-json\"\n",
        );
        assert_eq!(
            no_url,
            "/etc/vigil/vigil.toml:5: target `web`: kind `http-json` needs a `url`, e.g. \"http://127.0.0.1:8080/status\""
        );

        let typo = error("[[targets]]\nname = \"a\"\nkind = \"local\"\nintreval = \"5s\"\n");
        assert!(typo.contains("unknown field `intreval`"), "{typo}");

        let dup = error(
            "[[targets]]\nname = \"a\"\nkind = \"local\"\n[[targets]]\nname = \"a\"\nkind = \"local\"\n",
        );
        assert!(
            dup.contains(":4: target `a`: the name is used twice"),
            "{dup}"
        );

        let kind = error("[[targets]]\nname = \"a\"\nkind = \"snmp\"\n");
        assert!(kind.contains("unknown variant `snmp`"), "{kind}");

        assert!(error("").contains("no targets"));
        let rule =
            error("[[targets]]\nname = \"a\"\nkind = \"local\"\n[[rules]]\nbuiltin = \"nope\"\n");
        assert!(
            rule.contains(":4: there is no builtin rule `nope`"),
            "{rule}"
        );
    }

    /// A config in `dir` with a public key `ops.pub` and a rules folder.
    fn trust_config(dir: &Path, text: &str) -> Result<Settings, ConfigError> {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        std::fs::write(dir.join("ops.pub"), pair.pk.to_box().unwrap().into_string()).unwrap();
        std::fs::create_dir_all(dir.join("rules.d")).unwrap();
        std::fs::write(dir.join("rules.d/a.wasm"), b"").unwrap();
        let text = format!("[[targets]]\nname = \"a\"\nkind = \"local\"\n{text}");
        Settings::parse(&text, &dir.join("vigil.toml"))
    }

    #[test]
    fn trust_sets_a_default_that_rules_and_folders_override() {
        let dir = tempfile::tempdir().unwrap();
        let pin = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let settings = trust_config(
            dir.path(),
            &format!(
                r#"
[trust]
keys = ["ops.pub"]
require_signature = true

[[rules]]
path = "signed.wasm"

[[rules]]
path = "pinned.wasm"
sha256 = "{}"
require_signature = false

[[rules]]
dir = "rules.d"

[[rules]]
builtin = "threshold"
"#,
                pin.to_uppercase()
            ),
        )
        .unwrap();
        let trust = |name: &str| {
            let spec = settings.rules.iter().find(|rule| rule.name == name);
            spec.unwrap().trust.clone()
        };
        let signed = trust("signed");
        assert!(signed.requires_signature() && signed.sha256.is_none());
        let pinned = trust("pinned");
        assert!(!pinned.requires_signature());
        assert_eq!(pinned.sha256.unwrap().to_string(), pin);
        // A folder's rules take the default, and so do files added later.
        assert!(trust("a").requires_signature());
        assert!(settings.rule_dirs[0].template.trust.requires_signature());
        // The binary's own rule is trusted with the binary.
        assert_eq!(trust("threshold"), Trust::default());
    }

    #[test]
    fn trust_errors_name_the_rule_or_key_and_hint() {
        let dir = tempfile::tempdir().unwrap();
        let error = |text: &str| trust_config(dir.path(), text).unwrap_err().to_string();

        let no_key = error("[[rules]]\npath = \"a.wasm\"\nrequire_signature = true\n");
        assert!(
            no_key.contains(":4: rule `a`: a signature is required but no key is trusted to make it\nhint: list the signers' public keys in `[trust] keys"),
            "{no_key}"
        );
        let bad_pin = error("[[rules]]\npath = \"a.wasm\"\nsha256 = \"abc\"\n");
        assert!(
            bad_pin.contains("rule `a`: sha256: `abc` is not a sha256: it takes 64 hex digits\nhint: `sha256sum FILE` prints it"),
            "{bad_pin}"
        );
        let folder_pin = error(&format!(
            "[[rules]]\ndir = \"rules.d\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ));
        assert!(
            folder_pin.contains("a rules directory takes no `sha256`"),
            "{folder_pin}"
        );
        let builtin = error("[[rules]]\nbuiltin = \"threshold\"\nrequire_signature = true\n");
        assert!(
            builtin
                .contains("rule `threshold`: `sha256` and `require_signature` apply to rule files"),
            "{builtin}"
        );
        let missing_key = error("[trust]\nkeys = [\"nope.pub\"]\n");
        assert!(
            missing_key.contains(":4: [trust]: cannot read the public key `")
                && missing_key.contains("nope.pub`"),
            "{missing_key}"
        );
        std::fs::write(
            dir.path().join("junk.pub"),
            "untrusted comment: x\nnot a key\n",
        )
        .unwrap();
        let junk = error("[trust]\nkeys = [\"junk.pub\"]\n");
        assert!(
            junk.contains("junk.pub` is not a minisign public key"),
            "{junk}"
        );
        let typo = error("[trust]\nkey = [\"ops.pub\"]\n");
        assert!(typo.contains("unknown field `key`"), "{typo}");
    }
}
