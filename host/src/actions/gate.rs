//! The gate: decides whether a rule's action request runs, as a pure function
//! of the declared actions, what ran before, and the time passed in.
//!
//! [`Gate::check`] applies these checks in this order and refuses with the
//! first that fails:
//!
//! 1. a tenant's rule asks for an action granted to its tenant (and chosen
//!    in the tenant's file): otherwise it is refused as not granted, whether
//!    or not the action exists, so a tenant learns nothing of others';
//! 2. the action is declared, and an operator's rule is in its
//!    `allowed_rules` (a tenant's rules are governed by the grant instead);
//! 3. the params are valid: each declared param given exactly once and
//!    accepted by its pattern or list, no undeclared param, no value over
//!    [`MAX_PARAM_BYTES`] or with a NUL byte (values are UTF-8 by type: WIT
//!    strings cannot be anything else);
//! 4. the cooldown of this (action, target) has passed (counted from the end
//!    of the last run, or its start while it is still running);
//! 5. the rate limit: fewer than `limit.count` runs of the action started
//!    within the last `limit.window`;
//! 6. the action's breaker is closed;
//! 7. no run of this action for this target is in flight.
//!
//! A request that passes becomes a [`Run`] with every placeholder filled in,
//! and counts at once as a run (for cooldown and limit) and as in flight.
//! Dry-run decisions count exactly like enforced ones, so a dry run shows
//! what enforce would do.
//!
//! Every `Run` must be closed with [`Gate::finished`]: that clears it from in
//! flight and feeds the breaker. A breaker opens when, within its window,
//! `failures` runs failed or timed out, or `runs` runs finished; it then
//! refuses every request for one window, and `finished` returns the trip
//! once, at the moment it opens, for the caller to alert on
//! ([`Gate::open_breakers`] gives the level for a level-triggered alert).
//! Cooldown is per (action, target); limit and breaker are per action, so a
//! fleet-wide storm of restarts is stopped too.
//!
//! The gate reads no clock and does no I/O: time comes in as milliseconds
//! since the Unix epoch, so every rule here is tested without waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use super::config::{ActionSpec, InvocationSpec, Mode};
use super::excerpt;
use crate::names::{ActionName, TargetName, TenantName, tenant_of};

/// What each tenant's rules may request: the actions granted to it and
/// chosen in its file.
pub type TenantActions = BTreeMap<TenantName, BTreeSet<ActionName>>;
use crate::runtime::{ActionRequest, ActionStatus};

/// Largest param value accepted, in bytes.
pub const MAX_PARAM_BYTES: usize = 4 * 1024;

/// How a request ended: what an executor reports, and what
/// [`Gate::finished`] counts (here, below the executors, so that the gate
/// does not depend on them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// It ran and reported success (exit status 0, HTTP 2xx).
    Succeeded,
    /// It ran and failed, or could not be started.
    Failed,
    /// It ran past its timeout and was stopped.
    TimedOut,
    /// Recorded, not run: the action is in dry-run mode.
    DryRun,
    /// The gate refused it.
    Refused,
}

impl Status {
    /// `succeeded`, `failed`, `timed-out`, `dry-run`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::TimedOut => "timed-out",
            Status::DryRun => "dry-run",
            Status::Refused => "refused",
        }
    }
}

impl From<Status> for ActionStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Succeeded => ActionStatus::Succeeded,
            Status::Failed => ActionStatus::Failed,
            Status::TimedOut => ActionStatus::TimedOut,
            Status::DryRun => ActionStatus::DryRun,
            Status::Refused => ActionStatus::Refused,
        }
    }
}

/// What the gate decided about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run it (or record it, in dry-run mode).
    Run(Run),
    /// Do not run it, for this reason.
    Refuse(Reason),
}

/// An approved request with its params substituted, ready for an executor.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// The action's name.
    pub action: ActionName,
    /// The target it acts on.
    pub target: String,
    /// The params as validated, by name.
    pub params: BTreeMap<String, String>,
    /// Dry-run or enforce.
    pub mode: Mode,
    /// What to execute.
    pub invocation: Invocation,
    /// When to stop it.
    pub timeout: Duration,
}

/// A command or request with nothing left to substitute.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// `argv[0]` is the program; each element reaches it as one argument.
    Command {
        /// The whole argv.
        argv: Vec<String>,
    },
    /// One HTTP request (boxed: it is ten times the size of an argv).
    Http(Box<HttpCall>),
}

/// An HTTP request ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    /// The method.
    pub method: reqwest::Method,
    /// The URL, params percent-encoded into it.
    pub url: reqwest::Url,
    /// Fixed headers from the config.
    pub headers: reqwest::header::HeaderMap,
    /// The body, params inserted as they are.
    pub body: Option<String>,
}

impl fmt::Display for Invocation {
    /// argv as a list of quoted strings, so element boundaries are visible:
    /// `["/usr/bin/systemctl", "restart", "nginx"]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invocation::Command { argv } => {
                let quoted: Vec<String> = argv
                    .iter()
                    .map(|arg| format!("{:?}", excerpt(arg, 256)))
                    .collect();
                write!(f, "[{}]", quoted.join(", "))
            }
            Invocation::Http(call) => write!(f, "{} {}", call.method, call.url),
        }
    }
}

/// Why the gate refused a request. `Display` is the message for the
/// operator and the rule; [`code`](Self::code) is a stable short name.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// No action of that name is declared.
    NotDeclared {
        /// The requested name.
        action: String,
    },
    /// A tenant's rule asked for an action its tenant was not granted.
    NotGranted {
        /// The tenant.
        tenant: String,
        /// The action.
        action: String,
    },
    /// The rule is not in the action's `allowed_rules`.
    RuleNotAllowed {
        /// The requesting rule.
        rule: String,
        /// The action.
        action: String,
    },
    /// A param is missing, unknown, repeated, too long or not accepted.
    InvalidParam {
        /// The action.
        action: String,
        /// The param's name.
        param: String,
        /// What is wrong with it.
        problem: ParamProblem,
    },
    /// The (action, target) ran too recently.
    Cooldown {
        /// The action.
        action: String,
        /// The target.
        target: String,
        /// The configured cooldown.
        cooldown: Duration,
        /// Time until it may run again.
        remaining: Duration,
    },
    /// The action ran `count` times within the window.
    RateLimited {
        /// The action.
        action: String,
        /// The limit.
        count: u32,
        /// Its window.
        window: Duration,
        /// Time until the oldest of those runs leaves the window.
        retry_in: Duration,
    },
    /// The action's breaker is open.
    BreakerOpen(BreakerTrip),
    /// The same action is already running for the same target.
    InFlight {
        /// The action.
        action: String,
        /// The target.
        target: String,
    },
    /// In a cluster: the last claimed run of this action on this target
    /// never reported an outcome (its node died or lost NATS mid-run), so
    /// it is not run again until an operator releases the claim.
    OutcomeUnknown {
        /// The action.
        action: String,
        /// The target.
        target: String,
        /// The node that claimed the earlier run.
        node: String,
        /// When it claimed it, ms since the Unix epoch.
        claimed_ms: u64,
    },
    /// In a cluster: the run could not be claimed (NATS unreachable), and
    /// nothing runs without a claim.
    ClaimUnavailable {
        /// The action.
        action: String,
        /// What went wrong.
        error: String,
    },
}

/// What is wrong with one param.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamProblem {
    /// Declared but not given.
    Missing,
    /// Given but not declared.
    Undeclared,
    /// Given more than once.
    Repeated,
    /// Longer than [`MAX_PARAM_BYTES`].
    TooLong {
        /// Its length in bytes.
        bytes: usize,
    },
    /// Holds a NUL byte, which no argv element can carry.
    Nul,
    /// Not accepted by the declared pattern or list.
    NotAccepted {
        /// The start of the value, for the message.
        value: String,
        /// What it should be (`the pattern `...``, `one of ...`).
        expected: String,
    },
    /// Accepted, but the URL it is put into does not parse.
    BreaksUrl {
        /// The URL parser's complaint.
        error: String,
    },
}

impl Reason {
    /// A stable short name: `not-granted`, `not-declared`, `rule-not-allowed`,
    /// `invalid-param`, `cooldown`, `rate-limited`, `breaker-open`,
    /// `in-flight`, `outcome-unknown`, `claim-unavailable`. For audit
    /// filters and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::NotGranted { .. } => "not-granted",
            Reason::NotDeclared { .. } => "not-declared",
            Reason::RuleNotAllowed { .. } => "rule-not-allowed",
            Reason::InvalidParam { .. } => "invalid-param",
            Reason::Cooldown { .. } => "cooldown",
            Reason::RateLimited { .. } => "rate-limited",
            Reason::BreakerOpen(_) => "breaker-open",
            Reason::InFlight { .. } => "in-flight",
            Reason::OutcomeUnknown { .. } => "outcome-unknown",
            Reason::ClaimUnavailable { .. } => "claim-unavailable",
        }
    }
}

fn human(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64))
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotGranted { tenant, action } => write!(
                f,
                "action `{}` is not granted to tenant `{tenant}`",
                excerpt(action, 64)
            ),
            Reason::NotDeclared { action } => {
                write!(f, "action `{}` is not declared", excerpt(action, 64))
            }
            Reason::RuleNotAllowed { rule, action } => write!(
                f,
                "rule `{rule}` may not request `{action}` (it is not in the action's allowed_rules)"
            ),
            Reason::InvalidParam {
                action,
                param,
                problem,
            } => {
                let param = excerpt(param, 64);
                write!(f, "`{action}` param `{param}` ")?;
                match problem {
                    ParamProblem::Missing => write!(f, "is missing"),
                    ParamProblem::Undeclared => write!(f, "is not declared"),
                    ParamProblem::Repeated => write!(f, "is given more than once"),
                    ParamProblem::TooLong { bytes } => {
                        write!(f, "is {bytes} bytes; the limit is {MAX_PARAM_BYTES}")
                    }
                    ParamProblem::Nul => write!(f, "holds a NUL byte"),
                    ParamProblem::NotAccepted { value, expected } => {
                        write!(f, "{value:?} is not {expected}")
                    }
                    ParamProblem::BreaksUrl { error } => {
                        write!(f, "makes the url invalid: {error}")
                    }
                }
            }
            Reason::Cooldown {
                action,
                target,
                cooldown,
                remaining,
            } => write!(
                f,
                "`{action}` ran for `{target}` less than its cooldown of {} ago; {} left",
                human(*cooldown),
                human(*remaining)
            ),
            Reason::RateLimited {
                action,
                count,
                window,
                retry_in,
            } => write!(
                f,
                "`{action}` ran {count} times within {} (its limit); next run possible in {}",
                human(*window),
                human(*retry_in)
            ),
            Reason::BreakerOpen(trip) => write!(f, "breaker open: {trip}"),
            Reason::InFlight { action, target } => {
                write!(f, "`{action}` is already running for `{target}`")
            }
            Reason::OutcomeUnknown {
                action,
                target,
                node,
                claimed_ms,
            } => write!(
                f,
                "outcome unknown: node `{node}` claimed `{action}` for `{target}` at {} and never reported how it ended; it is not run again until an operator releases the claim (`vigil cluster claims release {action} {target} --config ...`)",
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(*claimed_ms)
                )
            ),
            Reason::ClaimUnavailable { action, error } => write!(
                f,
                "`{action}` not run: it cannot be claimed in the cluster ({error}), and nothing runs unclaimed"
            ),
        }
    }
}

/// A breaker that opened: why, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerTrip {
    /// The action whose breaker it is.
    pub action: String,
    /// What opened it.
    pub cause: BreakerCause,
    /// The window the count was taken over (also how long it stays open).
    pub window: Duration,
    /// When it opened (ms since the Unix epoch).
    pub opened_ms: u64,
    /// When it closes again.
    pub until_ms: u64,
}

/// What opened a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerCause {
    /// This many runs failed or timed out.
    Failures(u32),
    /// This many runs finished.
    Runs(u32),
}

impl fmt::Display for BreakerTrip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.cause {
            BreakerCause::Failures(n) => format!("{n} failed runs"),
            BreakerCause::Runs(n) => format!("{n} runs"),
        };
        let until = std::time::UNIX_EPOCH + Duration::from_millis(self.until_ms);
        write!(
            f,
            "`{}` had {what} within {}; no run until {}",
            self.action,
            human(self.window),
            humantime::format_rfc3339_seconds(until)
        )
    }
}

/// The gate's memory: declared actions and what ran.
#[derive(Debug, Default)]
pub struct Gate {
    specs: BTreeMap<ActionName, ActionSpec>,
    /// What each tenant's rules may request.
    tenants: TenantActions,
    actions: HashMap<ActionName, History>,
    /// (action, target) -> the last run.
    last: HashMap<(ActionName, TargetName), LastRun>,
    in_flight: HashSet<(ActionName, TargetName)>,
}

/// Per action: start times (for the limit), finish times of runs and of
/// failures (for the breaker), and the breaker.
#[derive(Debug, Default)]
struct History {
    started: VecDeque<u64>,
    finished: VecDeque<u64>,
    failed: VecDeque<u64>,
    open: Option<BreakerTrip>,
    /// The breaker counts only what finished at or after this (when it last
    /// closed), so it does not reopen on the runs that opened it.
    counts_from_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct LastRun {
    started_ms: u64,
    finished_ms: Option<u64>,
}

impl Gate {
    /// A gate for these actions, with no history.
    pub fn new(specs: BTreeMap<ActionName, ActionSpec>) -> Self {
        Gate {
            specs,
            ..Gate::default()
        }
    }

    /// Replaces the declared actions (a config reload). History, breakers
    /// and in-flight runs of actions that keep their name are kept.
    pub fn reconfigure(&mut self, specs: BTreeMap<ActionName, ActionSpec>) {
        self.specs = specs;
    }

    /// Replaces what each tenant's rules may request (a config reload).
    pub fn set_tenant_actions(&mut self, tenants: TenantActions) {
        self.tenants = tenants;
    }

    /// The declared actions.
    pub fn specs(&self) -> &BTreeMap<ActionName, ActionSpec> {
        &self.specs
    }

    /// How far back history matters (the longest cooldown or window): what
    /// to [`replay`](Self::replay) after a restart.
    pub fn lookback(&self) -> Duration {
        self.specs
            .values()
            .flat_map(|spec| {
                [
                    spec.cooldown,
                    spec.limit.map_or(Duration::ZERO, |l| l.window),
                    spec.breaker.map_or(Duration::ZERO, |b| b.window),
                ]
            })
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Decides on `request`, made by `rule` for `target` at `now_ms`. A
    /// [`Decision::Run`] is already counted and in flight: close it with
    /// [`finished`](Self::finished).
    pub fn check(
        &mut self,
        rule: &str,
        target: &str,
        request: &ActionRequest,
        now_ms: u64,
    ) -> Decision {
        match self.admit(rule, target, request, now_ms) {
            Ok(run) => {
                self.record_start(&run.action, target, now_ms);
                self.in_flight
                    .insert((run.action.clone(), TargetName::from(target)));
                Decision::Run(run)
            }
            Err(reason) => Decision::Refuse(reason),
        }
    }

    fn admit(
        &mut self,
        rule: &str,
        target: &str,
        request: &ActionRequest,
        now_ms: u64,
    ) -> Result<Run, Reason> {
        let action = request.action.as_str();
        let tenant = tenant_of(rule);
        if let Some(tenant) = tenant
            && !self
                .tenants
                .get(tenant)
                .is_some_and(|granted| granted.contains(action))
        {
            return Err(Reason::NotGranted {
                tenant: tenant.to_string(),
                action: action.to_string(),
            });
        }
        let spec = self.specs.get(action).ok_or_else(|| Reason::NotDeclared {
            action: action.to_string(),
        })?;
        if tenant.is_none() && !spec.allowed_rules.contains(rule) {
            return Err(Reason::RuleNotAllowed {
                rule: rule.to_string(),
                action: action.to_string(),
            });
        }
        let params = check_params(spec, request)?;
        let invocation = build(spec, &params)?;

        let key = (spec.name.clone(), TargetName::from(target));
        if let Some(last) = self.last.get(&key) {
            let since = last.finished_ms.unwrap_or(last.started_ms);
            let ready = since.saturating_add(millis(spec.cooldown));
            if now_ms < ready && !spec.cooldown.is_zero() {
                return Err(Reason::Cooldown {
                    action: action.to_string(),
                    target: target.to_string(),
                    cooldown: spec.cooldown,
                    remaining: Duration::from_millis(ready - now_ms),
                });
            }
        }
        let history = self.actions.entry(spec.name.clone()).or_default();
        if let Some(limit) = spec.limit {
            let window = millis(limit.window);
            let recent: Vec<u64> = within(&history.started, window, now_ms).collect();
            if recent.len() >= limit.count as usize {
                let oldest = recent.iter().copied().min().unwrap_or(now_ms);
                return Err(Reason::RateLimited {
                    action: action.to_string(),
                    count: limit.count,
                    window: limit.window,
                    retry_in: Duration::from_millis(
                        oldest.saturating_add(window).saturating_sub(now_ms),
                    ),
                });
            }
        }
        if let Some(trip) = &history.open {
            if now_ms < trip.until_ms {
                return Err(Reason::BreakerOpen(trip.clone()));
            }
            history.counts_from_ms = trip.until_ms;
            history.open = None;
        }
        if self.in_flight.contains(&key) {
            return Err(Reason::InFlight {
                action: action.to_string(),
                target: target.to_string(),
            });
        }
        Ok(Run {
            action: spec.name.clone(),
            target: target.to_string(),
            params,
            mode: spec.mode,
            invocation,
            timeout: spec.timeout,
        })
    }

    /// Records how a run ended: clears it from in flight, starts the
    /// cooldown, and feeds the breaker. Returns the trip when this result
    /// opened the breaker (once; raise an alert). [`Status::Refused`] closes
    /// a run that never executed (say, its audit record could not be
    /// written): it counts for nothing but the start already recorded.
    pub fn finished(
        &mut self,
        action: &str,
        target: &str,
        status: Status,
        now_ms: u64,
    ) -> Option<BreakerTrip> {
        let action = ActionName::from(action);
        self.in_flight
            .remove(&(action.clone(), TargetName::from(target)));
        self.record_finish(&action, target, status, now_ms)
    }

    /// Feeds one past run (from the audit log, oldest first) into the
    /// history, so cooldowns, limits and breakers survive a restart.
    /// `finished` is `None` for a run that never finished (interrupted):
    /// it counts as started only. Nothing is put in flight.
    pub fn replay(
        &mut self,
        action: &str,
        target: &str,
        started_ms: u64,
        finished: Option<(Status, u64)>,
    ) {
        let action = ActionName::from(action);
        self.record_start(&action, target, started_ms);
        if let Some((status, finished_ms)) = finished {
            self.record_finish(&action, target, status, finished_ms);
        }
    }

    /// Breakers open at `now_ms`, by action: what a level-triggered
    /// "breaker open" alert reports.
    pub fn open_breakers(&self, now_ms: u64) -> Vec<&BreakerTrip> {
        let mut open: Vec<&BreakerTrip> = self
            .actions
            .values()
            .filter_map(|history| history.open.as_ref())
            .filter(|trip| now_ms < trip.until_ms)
            .collect();
        open.sort_by(|a, b| a.action.cmp(&b.action));
        open
    }

    /// Closes an action's breaker now (an operator's decision).
    pub fn reset_breaker(&mut self, action: &str, now_ms: u64) {
        if let Some(history) = self.actions.get_mut(action) {
            history.open = None;
            history.counts_from_ms = now_ms;
        }
    }

    /// Whether a run of `action` for `target` is in flight.
    pub fn is_in_flight(&self, action: &str, target: &str) -> bool {
        self.in_flight
            .contains(&(ActionName::from(action), TargetName::from(target)))
    }

    fn record_start(&mut self, action: &ActionName, target: &str, now_ms: u64) {
        let keep = self.keep_ms(action);
        let history = self.actions.entry(action.clone()).or_default();
        history.started.push_back(now_ms);
        prune(&mut history.started, keep, now_ms);
        self.last.insert(
            (action.clone(), TargetName::from(target)),
            LastRun {
                started_ms: now_ms,
                finished_ms: None,
            },
        );
    }

    fn record_finish(
        &mut self,
        action: &ActionName,
        target: &str,
        status: Status,
        now_ms: u64,
    ) -> Option<BreakerTrip> {
        let key = (action.clone(), TargetName::from(target));
        if let Some(last) = self.last.get_mut(&key) {
            last.finished_ms = Some(now_ms);
        }
        if status == Status::Refused {
            return None;
        }
        let keep = self.keep_ms(action);
        let policy = self.specs.get(action).and_then(|spec| spec.breaker);
        let history = self.actions.entry(action.clone()).or_default();
        history.finished.push_back(now_ms);
        prune(&mut history.finished, keep, now_ms);
        if matches!(status, Status::Failed | Status::TimedOut) {
            history.failed.push_back(now_ms);
            prune(&mut history.failed, keep, now_ms);
        }
        let policy = policy?;
        if history
            .open
            .as_ref()
            .is_some_and(|trip| now_ms < trip.until_ms)
        {
            return None;
        }
        let window = millis(policy.window);
        let from = history.counts_from_ms;
        let count =
            |times: &VecDeque<u64>| within(times, window, now_ms).filter(|&t| t >= from).count();
        let cause = match (policy.failures, policy.runs) {
            (Some(n), _) if count(&history.failed) >= n as usize => BreakerCause::Failures(n),
            (_, Some(n)) if count(&history.finished) >= n as usize => BreakerCause::Runs(n),
            _ => return None,
        };
        let trip = BreakerTrip {
            action: action.to_string(),
            cause,
            window: policy.window,
            opened_ms: now_ms,
            until_ms: now_ms.saturating_add(window),
        };
        history.open = Some(trip.clone());
        Some(trip)
    }

    /// How long an action's history must be kept.
    fn keep_ms(&self, action: &str) -> u64 {
        self.specs.get(action).map_or(0, |spec| {
            [
                spec.limit.map_or(Duration::ZERO, |l| l.window),
                spec.breaker.map_or(Duration::ZERO, |b| b.window),
            ]
            .into_iter()
            .max()
            .map_or(0, millis)
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The times in `times` that are within `window` before `now_ms`.
fn within(times: &VecDeque<u64>, window: u64, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
    times
        .iter()
        .copied()
        .filter(move |&t| t <= now_ms && now_ms - t < window)
}

/// Drops times older than `keep` ms before `now_ms`.
fn prune(times: &mut VecDeque<u64>, keep: u64, now_ms: u64) {
    times.retain(|&t| t > now_ms || now_ms - t < keep);
}

fn check_params(
    spec: &ActionSpec,
    request: &ActionRequest,
) -> Result<BTreeMap<String, String>, Reason> {
    let fail = |param: &str, problem| Reason::InvalidParam {
        action: spec.name.to_string(),
        param: param.to_string(),
        problem,
    };
    let mut params = BTreeMap::new();
    for label in &request.params {
        let (name, value) = (label.name.as_str(), label.value.as_str());
        let Some(rule) = spec.params.get(name) else {
            return Err(fail(name, ParamProblem::Undeclared));
        };
        if params.contains_key(name) {
            return Err(fail(name, ParamProblem::Repeated));
        }
        if value.len() > MAX_PARAM_BYTES {
            return Err(fail(name, ParamProblem::TooLong { bytes: value.len() }));
        }
        if value.contains('\0') {
            return Err(fail(name, ParamProblem::Nul));
        }
        if !rule.accepts(value) {
            return Err(fail(
                name,
                ParamProblem::NotAccepted {
                    value: excerpt(value, 64).into_owned(),
                    expected: rule.to_string(),
                },
            ));
        }
        params.insert(name.to_string(), value.to_string());
    }
    if let Some(missing) = spec.params.keys().find(|name| !params.contains_key(*name)) {
        return Err(fail(missing, ParamProblem::Missing));
    }
    Ok(params)
}

/// Fills the placeholders: argv elements as they are, URL values
/// percent-encoded, body values as they are.
fn build(spec: &ActionSpec, params: &BTreeMap<String, String>) -> Result<Invocation, Reason> {
    match &spec.invocation {
        InvocationSpec::Command { program, args } => {
            let mut argv = vec![program.clone()];
            argv.extend(args.iter().map(|arg| arg.render(params, str::to_string)));
            Ok(Invocation::Command { argv })
        }
        InvocationSpec::Http(http) => {
            let text = http.url.render(params, percent_encode);
            let url = reqwest::Url::parse(&text).map_err(|error| Reason::InvalidParam {
                action: spec.name.to_string(),
                param: http.url.params().next().unwrap_or("").to_string(),
                problem: ParamProblem::BreaksUrl {
                    error: error.to_string(),
                },
            })?;
            Ok(Invocation::Http(Box::new(HttpCall {
                method: http.method.clone(),
                url,
                headers: http.headers.clone(),
                body: http
                    .body
                    .as_ref()
                    .map(|body| body.render(params, str::to_string)),
            })))
        }
    }
}

/// Every byte but RFC 3986's unreserved characters as `%XX`, so a value
/// stays one path segment or query value (`a/../b?x` cannot add a segment or
/// a query).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::config::parse_actions;
    use crate::runtime::Label;

    const RESTART: &str = r#"
        [restart]
        command = ["/usr/bin/systemctl", "restart", "{service}"]
        params = { service = { pattern = "[a-z-]+" } }
        allowed_rules = ["threshold"]
        mode = "enforce"
    "#;

    fn gate(extra: &str) -> Gate {
        let text = format!("{RESTART}{extra}");
        let specs = parse_actions(&text.parse().unwrap(), Mode::DryRun).unwrap();
        Gate::new(specs)
    }

    fn request(action: &str, params: &[(&str, &str)]) -> ActionRequest {
        ActionRequest {
            action: action.into(),
            params: params
                .iter()
                .map(|(name, value)| Label {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
            reason: "cpu high".into(),
        }
    }

    fn restart(service: &str) -> ActionRequest {
        request("restart", &[("service", service)])
    }

    #[track_caller]
    fn refused(decision: Decision) -> Reason {
        match decision {
            Decision::Refuse(reason) => reason,
            Decision::Run(run) => panic!("expected a refusal, got {run:?}"),
        }
    }

    #[track_caller]
    fn ran(decision: Decision) -> Run {
        match decision {
            Decision::Run(run) => run,
            Decision::Refuse(reason) => panic!("expected a run, got `{reason}`"),
        }
    }

    #[test]
    fn an_allowed_valid_request_runs_with_params_substituted() {
        let mut gate = gate("");
        let run = ran(gate.check("threshold", "web-01", &restart("nginx"), 1_000));
        assert_eq!(run.mode, Mode::Enforce);
        assert_eq!(
            run.invocation,
            Invocation::Command {
                argv: vec![
                    "/usr/bin/systemctl".into(),
                    "restart".into(),
                    "nginx".into()
                ]
            }
        );
        assert_eq!(
            run.invocation.to_string(),
            r#"["/usr/bin/systemctl", "restart", "nginx"]"#
        );
        assert!(gate.is_in_flight("restart", "web-01"));
        assert_eq!(
            gate.finished("restart", "web-01", Status::Succeeded, 1_500),
            None
        );
        assert!(!gate.is_in_flight("restart", "web-01"));
    }

    #[test]
    fn each_refusal_reason_in_order() {
        let mut gate = gate(
            r#"
            cooldown = "1m"
            "#,
        );
        let reboot = request("reboot", &[("service", "x")]);
        let reason = refused(gate.check("threshold", "web-01", &reboot, 0));
        assert_eq!(reason.code(), "not-declared");
        assert_eq!(reason.to_string(), "action `reboot` is not declared");

        let reason = refused(gate.check("disk", "web-01", &restart("nginx"), 0));
        assert_eq!(reason.code(), "rule-not-allowed");
        assert!(
            reason
                .to_string()
                .starts_with("rule `disk` may not request `restart`")
        );

        let cases: [(ActionRequest, &str); 6] = [
            (
                request("restart", &[]),
                "`restart` param `service` is missing",
            ),
            (
                request("restart", &[("service", "nginx"), ("user", "root")]),
                "`restart` param `user` is not declared",
            ),
            (
                request("restart", &[("service", "nginx"), ("service", "web")]),
                "`restart` param `service` is given more than once",
            ),
            (
                restart("nginx; rm -rf /"),
                "`restart` param `service` \"nginx; rm -rf /\" is not the pattern `[a-z-]+`",
            ),
            (
                restart("a\0b"),
                "`restart` param `service` holds a NUL byte",
            ),
            (
                restart(&"a".repeat(MAX_PARAM_BYTES + 1)),
                "`restart` param `service` is 4097 bytes; the limit is 4096",
            ),
        ];
        for (request, message) in cases {
            let reason = refused(gate.check("threshold", "web-01", &request, 0));
            assert_eq!(reason.code(), "invalid-param");
            assert_eq!(reason.to_string(), message);
        }
        // Nothing refused so far counted as a run.
        assert!(!gate.is_in_flight("restart", "web-01"));

        ran(gate.check("threshold", "web-01", &restart("nginx"), 0));
        let reason = refused(gate.check("threshold", "web-01", &restart("nginx"), 10));
        assert_eq!(
            reason.code(),
            "cooldown",
            "cooldown is checked before in-flight"
        );
        gate.finished("restart", "web-01", Status::Succeeded, 1_000);
        let reason = refused(gate.check("threshold", "web-01", &restart("nginx"), 2_000));
        assert_eq!(
            reason.to_string(),
            "`restart` ran for `web-01` less than its cooldown of 1m ago; 59s left"
        );
    }

    #[test]
    fn injection_attempts_are_refused_or_kept_whole() {
        let mut gate = gate(
            r#"
            [echo]
            command = ["/usr/bin/printf", "%s\\0", "{value}", "--name={value}"]
            params = { value = { pattern = "(?s).*" } }
            allowed_rules = ["threshold"]
            "#,
        );
        let hostile = [
            "; rm -rf /",
            "$(id)",
            "`id`",
            "a\nb",
            "--flag",
            "-rf",
            "{value}",
            "' \" \\",
        ];
        for (i, value) in hostile.into_iter().enumerate() {
            let target = format!("t{i}");
            let run = ran(gate.check(
                "threshold",
                &target,
                &request("echo", &[("value", value)]),
                0,
            ));
            let Invocation::Command { argv } = run.invocation else {
                panic!("a command")
            };
            assert_eq!(
                argv,
                [
                    "/usr/bin/printf",
                    "%s\\0",
                    value,
                    &format!("--name={value}")
                ]
            );
        }
        // A 1 MB value never reaches an executor.
        let big = "x".repeat(1024 * 1024);
        let reason = refused(gate.check("threshold", "t", &request("echo", &[("value", &big)]), 0));
        assert_eq!(
            reason.to_string(),
            "`echo` param `value` is 1048576 bytes; the limit is 4096"
        );
    }

    #[test]
    fn url_params_are_percent_encoded_and_stay_one_segment() {
        let mut gate = gate(
            r#"
            [hook]
            http = { method = "POST", url = "http://127.0.0.1:9/restart/{service}?why={why}", body = '{"why": "{why}"}' }
            params = { service = { pattern = "(?s).*" }, why = { pattern = "(?s).*" } }
            allowed_rules = ["threshold"]
            "#,
        );
        let request = request("hook", &[("service", "a/../b?x=1#f"), ("why", "cpu & mem")]);
        let run = ran(gate.check("threshold", "web-01", &request, 0));
        let Invocation::Http(call) = run.invocation else {
            panic!("http")
        };
        assert_eq!(
            call.url.as_str(),
            "http://127.0.0.1:9/restart/a%2F..%2Fb%3Fx%3D1%23f?why=cpu%20%26%20mem"
        );
        assert_eq!(call.url.path_segments().unwrap().count(), 2);
        assert_eq!(call.body.as_deref(), Some(r#"{"why": "cpu & mem"}"#));
    }

    #[test]
    fn cooldown_is_per_target_and_expires() {
        let mut gate = gate("cooldown = \"30s\"\n");
        ran(gate.check("threshold", "web-01", &restart("nginx"), 0));
        gate.finished("restart", "web-01", Status::Succeeded, 1_000);
        // Another target is not affected.
        ran(gate.check("threshold", "web-02", &restart("nginx"), 2_000));
        // Counted from the end of the run: ready at 31 s, not 30 s.
        let reason = refused(gate.check("threshold", "web-01", &restart("nginx"), 30_500));
        assert_eq!(
            reason,
            Reason::Cooldown {
                action: "restart".into(),
                target: "web-01".into(),
                cooldown: Duration::from_secs(30),
                remaining: Duration::from_millis(500),
            }
        );
        ran(gate.check("threshold", "web-01", &restart("nginx"), 31_000));
    }

    #[test]
    fn the_rate_limit_window_slides() {
        let mut gate = gate("limit = { count = 2, window = \"10s\" }\n");
        fn run_at(gate: &mut Gate, target: &str, at: u64) -> Decision {
            let decision = gate.check("threshold", target, &restart("nginx"), at);
            if let Decision::Run(_) = decision {
                gate.finished("restart", target, Status::Succeeded, at);
            }
            decision
        }
        ran(run_at(&mut gate, "a", 0));
        ran(run_at(&mut gate, "b", 4_000));
        // Per action: a third target is limited too.
        let reason = refused(run_at(&mut gate, "c", 9_000));
        assert_eq!(
            reason.to_string(),
            "`restart` ran 2 times within 10s (its limit); next run possible in 1s"
        );
        // At 10 s the first run leaves the window; the one at 4 s has not.
        ran(run_at(&mut gate, "c", 10_000));
        assert_eq!(
            refused(run_at(&mut gate, "d", 13_999)).code(),
            "rate-limited"
        );
        ran(run_at(&mut gate, "d", 14_000));
    }

    #[test]
    fn the_breaker_opens_on_failures_then_closes_after_its_window() {
        let mut gate = gate("breaker = { failures = 2, window = \"1m\" }\n");
        ran(gate.check("threshold", "a", &restart("nginx"), 0));
        assert_eq!(gate.finished("restart", "a", Status::Failed, 1_000), None);
        ran(gate.check("threshold", "b", &restart("nginx"), 2_000));
        let trip = gate
            .finished("restart", "b", Status::TimedOut, 3_000)
            .expect("the second failure opens the breaker");
        assert_eq!(trip.cause, BreakerCause::Failures(2));
        assert_eq!((trip.opened_ms, trip.until_ms), (3_000, 63_000));
        assert_eq!(gate.open_breakers(4_000), vec![&trip]);

        let reason = refused(gate.check("threshold", "c", &restart("nginx"), 4_000));
        assert_eq!(reason, Reason::BreakerOpen(trip.clone()));
        assert_eq!(
            reason.to_string(),
            "breaker open: `restart` had 2 failed runs within 1m; no run until 1970-01-01T00:01:03Z"
        );

        // Closed after one window, and the failures that opened it no longer count.
        assert!(gate.open_breakers(63_000).is_empty());
        ran(gate.check("threshold", "c", &restart("nginx"), 63_000));
        assert_eq!(gate.finished("restart", "c", Status::Failed, 63_500), None);
    }

    #[test]
    fn the_breaker_opens_on_runs_whatever_their_result() {
        let mut gate = gate("breaker = { runs = 3, window = \"1h\" }\n");
        let mut trips = Vec::new();
        for (i, target) in ["a", "b", "c"].into_iter().enumerate() {
            let at = i as u64 * 1_000;
            let run = ran(gate.check("threshold", target, &restart("nginx"), at));
            trips.push(gate.finished(&run.action, target, Status::Succeeded, at + 100));
        }
        assert_eq!(trips[..2], [None, None]);
        let trip = trips[2].clone().expect("the third run opens it");
        assert_eq!(trip.cause, BreakerCause::Runs(3));
        assert_eq!(
            refused(gate.check("threshold", "d", &restart("nginx"), 5_000)).code(),
            "breaker-open"
        );
        gate.reset_breaker("restart", 6_000);
        ran(gate.check("threshold", "d", &restart("nginx"), 6_000));
    }

    #[test]
    fn a_run_in_flight_blocks_the_same_target_only() {
        let mut gate = gate("");
        ran(gate.check("threshold", "web-01", &restart("nginx"), 0));
        let reason = refused(gate.check("threshold", "web-01", &restart("web"), 100));
        assert_eq!(
            reason.to_string(),
            "`restart` is already running for `web-01`"
        );
        ran(gate.check("threshold", "web-02", &restart("nginx"), 100));
        gate.finished("restart", "web-01", Status::Failed, 200);
        ran(gate.check("threshold", "web-01", &restart("nginx"), 300));
    }

    #[test]
    fn dry_run_decisions_count_like_enforced_ones() {
        let mut gate = Gate::new(
            parse_actions(
                &r#"
                [restart]
                command = ["/usr/bin/systemctl", "restart", "{service}"]
                params = { service = { values = ["nginx"] } }
                allowed_rules = ["threshold"]
                limit = { count = 1, window = "1m" }
                "#
                .parse()
                .unwrap(),
                Mode::DryRun,
            )
            .unwrap(),
        );
        let run = ran(gate.check("threshold", "a", &restart("nginx"), 0));
        assert_eq!(run.mode, Mode::DryRun);
        gate.finished("restart", "a", Status::DryRun, 0);
        assert_eq!(
            refused(gate.check("threshold", "b", &restart("nginx"), 1)).code(),
            "rate-limited"
        );
        let reason = refused(gate.check("threshold", "b", &restart("apache"), 1));
        assert_eq!(
            reason.to_string(),
            "`restart` param `service` \"apache\" is not one of `nginx`"
        );
    }

    #[test]
    fn replayed_history_restores_limits_and_breakers() {
        let mut gate = gate(
            "limit = { count = 5, window = \"1h\" }\nbreaker = { failures = 2, window = \"1h\" }\ncooldown = \"10m\"\n",
        );
        assert_eq!(gate.lookback(), Duration::from_secs(3600));
        gate.replay("restart", "a", 0, Some((Status::Failed, 100)));
        gate.replay("restart", "b", 200, Some((Status::Failed, 300)));
        gate.replay("restart", "c", 400, None);
        assert!(!gate.is_in_flight("restart", "c"));
        assert_eq!(gate.open_breakers(1_000).len(), 1);
        assert_eq!(
            refused(gate.check("threshold", "d", &restart("nginx"), 1_000)).code(),
            "breaker-open"
        );
        // The interrupted run's cooldown counts from its start.
        assert_eq!(
            refused(gate.check("threshold", "c", &restart("nginx"), 1_000)).code(),
            "cooldown"
        );
    }
}
