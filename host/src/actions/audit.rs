//! The audit log: every action request, what the gate decided, and how the
//! run ended, in the host's state database (the same file as rule state;
//! the tables are `state::AuditTable`'s).
//!
//! Guarantees:
//! - **Written before and after.** [`AuditLog::record_decision`] commits
//!   (durably: redb's default fsync) before anything executes; a run is
//!   `started` until [`AuditLog::record_outcome`] commits its result. Never
//!   execute a run whose `record_decision` failed.
//! - **A crash shows.** A run the host did not see finish stays `started`;
//!   after a restart, [`AuditLog::unfinished`] lists it and
//!   [`AuditLog::interrupt_unfinished`] marks it `interrupted` (whether it
//!   took effect is unknown). Call that at start, before any new run.
//! - **Ids are monotonic**, across restarts and pruning.
//! - **Bounded records.** Names are cut to 256 bytes, param values and the
//!   rule's reason to 4 KiB (a cut value says its full length); output is
//!   what the executor kept (64 KiB each of stdout and stderr).
//! - **Bounded refusals.** A refusal repeated within a minute adds to its
//!   record's `repeats`, and a rule gets at most
//!   `refusal_records_per_minute` refusal records a minute, the rest counted
//!   in one summary record ([`super::refusals`] says why both).
//! - **Bounded size.** With [`AuditSettings`], the records together stay
//!   under `max_bytes` (the oldest finished ones go first, as soon as an
//!   append passes it) and [`AuditLog::enforce_retention`] deletes those
//!   older than `max_age`: call it at start and then now and again.
//!
//! Records are stored as JSON (table `action_audit`, key: the id) so new
//! optional fields can be added without migrating old records. The storage
//! keeps bytes and ids; what a record says, its JSON and the queries are
//! this module's.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::Mode;
use super::excerpt;
use super::exec::{Outcome, RunReport};
use super::gate::{Decision, MAX_PARAM_BYTES, Status};
use super::refusals::{self, RefusalKey, RefusalLedger, Write};
use crate::runtime::ActionRequest;
use crate::state::{AuditTable, Finish, StateDb, StateError};

const MAX_NAME_BYTES: usize = 256;
const MAX_REASON_BYTES: usize = 4 * 1024;
/// The refusal code of a summary record.
pub const SUMMARY_CODE: &str = "refusals-counted";

/// Default for `[audit] max_age`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default for `[audit] max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// The smallest `[audit] max_bytes`: a record can reach 130 KiB (two
/// output excerpts of 64 KiB), and a bound under a few of them would keep
/// hardly any history.
pub const MIN_MAX_BYTES: u64 = 1024 * 1024;

/// How much the audit log may keep: `[audit]` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    /// Finished records older than this are deleted (`max_age`).
    pub max_age: Duration,
    /// The records together stay under this many bytes (`max_bytes`).
    pub max_bytes: u64,
    /// Refusal records per rule per minute; the rest are counted in a
    /// summary (`refusal_records_per_minute`).
    pub refusal_records_per_minute: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            refusal_records_per_minute: refusals::DEFAULT_RECORDS_PER_MINUTE,
        }
    }
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// One request and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Monotonic, from 1.
    pub id: u64,
    /// When the gate decided, in ms since the Unix epoch.
    pub requested_ms: u64,
    /// The requesting rule.
    pub rule: String,
    /// The version of the rule that asked: its reload count from 1, or the
    /// manifest revision of a pushed rule (the same number on every node).
    /// 0 (and left out of the JSON) in records written before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rule_version: u64,
    /// The target the rule was evaluating.
    pub target: String,
    /// The requested action.
    pub action: String,
    /// The params as requested (name, value), in the rule's order.
    pub params: Vec<(String, String)>,
    /// The rule's reason for asking.
    pub reason: String,
    /// What the gate decided.
    pub decision: AuditDecision,
    /// Where the request stands.
    pub status: AuditStatus,
    /// How it ended; `None` while `started`. The executor's report, so the
    /// JSON has the same fields as before it was shared: `detail`,
    /// `exit_code`, `output_excerpt`, `started_ms`, `finished_ms`.
    pub outcome: Option<RunReport>,
    /// A refusal: how many more times the same request was refused (same
    /// rule, target, action, params and refusal code) within a minute of
    /// this record, counted here instead of recorded one by one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u64,
    /// When the last of those `repeats` was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_requested_ms: Option<u64>,
    /// A summary record (code [`SUMMARY_CODE`]): how many refusals of this
    /// rule it stands for, past its `refusal_records_per_minute`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub counted: u64,
}

/// The gate's decision, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AuditDecision {
    /// Approved.
    Run {
        /// Dry-run or enforce.
        mode: Mode,
        /// What runs, params substituted (`["/usr/bin/systemctl", "restart", "nginx"]`).
        invocation: String,
    },
    /// Refused.
    Refused {
        /// [`Reason::code`](super::gate::Reason::code).
        code: String,
        /// The reason in words.
        message: String,
    },
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditStatus {
    /// Approved and (possibly) running; no result recorded yet.
    Started,
    /// Found `started` after a restart: the host stopped before the result.
    Interrupted,
    /// Refused by the gate.
    Refused,
    /// Approved in dry-run mode: recorded, not run.
    DryRun,
    /// Ran and succeeded.
    Succeeded,
    /// Ran and failed.
    Failed,
    /// Ran past its timeout and was stopped.
    TimedOut,
}

impl AuditStatus {
    const ALL: [AuditStatus; 7] = [
        AuditStatus::Started,
        AuditStatus::Interrupted,
        AuditStatus::Refused,
        AuditStatus::DryRun,
        AuditStatus::Succeeded,
        AuditStatus::Failed,
        AuditStatus::TimedOut,
    ];

    /// `started`, `interrupted`, `refused`, `dry-run`, `succeeded`,
    /// `failed`, `timed-out`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Started => "started",
            AuditStatus::Interrupted => "interrupted",
            AuditStatus::Refused => "refused",
            AuditStatus::DryRun => "dry-run",
            AuditStatus::Succeeded => "succeeded",
            AuditStatus::Failed => "failed",
            AuditStatus::TimedOut => "timed-out",
        }
    }

    /// The executor's status, for replaying history into the gate; `None`
    /// for `started` and `interrupted`.
    pub fn finished_as(self) -> Option<Status> {
        match self {
            AuditStatus::Started | AuditStatus::Interrupted => None,
            AuditStatus::Refused => Some(Status::Refused),
            AuditStatus::DryRun => Some(Status::DryRun),
            AuditStatus::Succeeded => Some(Status::Succeeded),
            AuditStatus::Failed => Some(Status::Failed),
            AuditStatus::TimedOut => Some(Status::TimedOut),
        }
    }
}

impl From<Status> for AuditStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Succeeded => AuditStatus::Succeeded,
            Status::Failed => AuditStatus::Failed,
            Status::TimedOut => AuditStatus::TimedOut,
            Status::DryRun => AuditStatus::DryRun,
            Status::Refused => AuditStatus::Refused,
        }
    }
}

impl fmt::Display for AuditStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditStatus {
    type Err = String;

    /// Parses what [`as_str`](Self::as_str) prints (for `vigil audit --status`).
    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status `{text}`; use one of: {}", known.join(", "))
            })
    }
}

/// Which records [`AuditLog::list`] returns. Every filter set must match;
/// `Default` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this action.
    pub action: Option<String>,
    /// Only this target.
    pub target: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only requests made at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only records with this status.
    pub status: Option<AuditStatus>,
    /// At most this many (the newest); `None`: all.
    pub limit: Option<usize>,
}

impl AuditQuery {
    fn matches(&self, record: &AuditRecord) -> bool {
        self.action.as_ref().is_none_or(|a| *a == record.action)
            && self.target.as_ref().is_none_or(|t| *t == record.target)
            && self.rule.as_ref().is_none_or(|r| *r == record.rule)
            && self
                .since_ms
                .is_none_or(|since| record.requested_ms >= since)
            && self.status.is_none_or(|status| status == record.status)
    }
}

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The state database failed (disk full, corrupt file, ...).
    #[error("audit log: {0}")]
    State(StateError),
    /// A stored record does not decode.
    #[error("audit log: record {id} cannot be read: {error}")]
    Corrupt {
        /// The record's id.
        id: u64,
        /// The decoder's complaint.
        error: String,
    },
    /// No record has this id.
    #[error("audit log: there is no record {0}")]
    NotFound(u64),
    /// The record already has its outcome.
    #[error("audit log: record {0} is already finished")]
    AlreadyFinished(u64),
}

// Not `#[from]`: that would make the `StateError` the source as well, and
// a chain printed with `{:#}` would say it twice.
impl From<StateError> for AuditError {
    fn from(error: StateError) -> Self {
        AuditError::State(error)
    }
}

/// The audit log, in the host's state database. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    table: AuditTable,
    settings: AuditSettings,
    /// Where refusals go; locked across the write, so that two refusals
    /// of the same request cannot both start a record.
    refusals: Arc<Mutex<RefusalLedger>>,
}

impl AuditLog {
    /// The audit log in `state`'s database, with the default
    /// [`AuditSettings`]. Never fails today (the state database creates the
    /// tables when it opens); it returns a `Result` so callers need not
    /// change if opening grows a check.
    pub fn open(state: &StateDb) -> Result<Self, AuditError> {
        Self::open_with(state, AuditSettings::default())
    }

    /// The audit log in `state`'s database, kept within `settings`.
    pub fn open_with(state: &StateDb, settings: AuditSettings) -> Result<Self, AuditError> {
        Ok(AuditLog {
            table: state.audit().with_max_bytes(settings.max_bytes),
            settings,
            refusals: Arc::new(Mutex::new(RefusalLedger::new(
                settings.refusal_records_per_minute,
            ))),
        })
    }

    /// Deletes finished records older than `max_age` at `now_ms`, and the
    /// oldest ones past `max_bytes` (a bound lowered since they were
    /// written); returns how many. Cheap when there is nothing to do: the
    /// scan stops at the first record young enough.
    pub fn enforce_retention(&self, now_ms: u64) -> Result<usize, AuditError> {
        let max_age = u64::try_from(self.settings.max_age.as_millis()).unwrap_or(u64::MAX);
        let pruned = self.prune(now_ms.saturating_sub(max_age))?;
        Ok(pruned + self.table.shrink_to_max()?)
    }

    /// The records' total size in bytes.
    pub fn total_bytes(&self) -> Result<u64, AuditError> {
        Ok(self.table.total_bytes()?)
    }

    /// Records a request and the gate's decision; returns the record's id.
    /// A refusal is recorded as finished (`refused`); a run as `started`,
    /// to be closed with [`record_outcome`](Self::record_outcome). Commits
    /// before returning: only then may the run execute.
    pub fn record_decision(
        &self,
        rule: &str,
        rule_version: u64,
        target: &str,
        request: &ActionRequest,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<u64, AuditError> {
        let decision_in = decision;
        let (decision, status, outcome) = match decision {
            Decision::Run(run) => (
                AuditDecision::Run {
                    mode: run.mode,
                    invocation: run.invocation.to_string(),
                },
                AuditStatus::Started,
                None,
            ),
            Decision::Refuse(reason) => {
                let outcome = Outcome::refused(reason, now_ms);
                (
                    AuditDecision::Refused {
                        code: reason.code().into(),
                        message: outcome.report.detail.clone(),
                    },
                    AuditStatus::Refused,
                    Some(outcome.report),
                )
            }
        };
        let name = |text: &str| excerpt(text, MAX_NAME_BYTES).into_owned();
        let started = status == AuditStatus::Started;
        let mut record = AuditRecord {
            id: 0,
            requested_ms: now_ms,
            rule: name(rule),
            rule_version,
            target: name(target),
            action: name(&request.action),
            params: request
                .params
                .iter()
                .map(|label| {
                    (
                        name(&label.name),
                        excerpt(&label.value, MAX_PARAM_BYTES).into_owned(),
                    )
                })
                .collect(),
            reason: excerpt(&request.reason, MAX_REASON_BYTES).into_owned(),
            decision,
            status,
            outcome,
            repeats: 0,
            last_requested_ms: None,
            counted: 0,
        };
        let Decision::Refuse(reason) = decision_in else {
            return Ok(self.table.append(started, |id| {
                record.id = id;
                encode(&record)
            })?);
        };
        let key = RefusalKey::of(
            &record.rule,
            &record.target,
            &record.action,
            record.params.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            reason.code(),
        );
        let mut ledger = self.ledger();
        match ledger.plan(&record.rule, key, now_ms) {
            Write::Repeat(id) => {
                if self.count_again(id, now_ms, |old| old.repeats += 1)? {
                    return Ok(id);
                }
                ledger.lost(id);
            }
            Write::Summary(Some(id)) => {
                if self.count_again(id, now_ms, |old| old.counted += 1)? {
                    return Ok(id);
                }
                ledger.lost(id);
                return self.summarize(&mut ledger, record, now_ms);
            }
            Write::Summary(None) => return self.summarize(&mut ledger, record, now_ms),
            Write::Record => {}
        }
        let id = self.table.append(false, |id| {
            record.id = id;
            encode(&record)
        })?;
        ledger.recorded(key, id, now_ms);
        Ok(id)
    }

    /// Starts `rule`'s summary record for this minute with `first`, the
    /// first refusal it counts (kept as an example of them).
    /// Counts one more refusal on record `id` (`count` says which count)
    /// and stamps when it came; `false` if the record is gone (pruned).
    fn count_again(
        &self,
        id: u64,
        now_ms: u64,
        count: impl FnOnce(&mut AuditRecord),
    ) -> Result<bool, AuditError> {
        self.table.rewrite(id, |bytes| {
            let mut old = decode(id, bytes)?;
            count(&mut old);
            old.last_requested_ms = Some(now_ms);
            Ok::<_, AuditError>(encode(&old))
        })
    }

    fn summarize(
        &self,
        ledger: &mut RefusalLedger,
        first: AuditRecord,
        now_ms: u64,
    ) -> Result<u64, AuditError> {
        let message = format!(
            "rule `{}` had more than {} refusals recorded this minute (`[audit] refusal_records_per_minute`); the rest are counted here, and this one is the first of them",
            first.rule, self.settings.refusal_records_per_minute
        );
        let mut record = AuditRecord {
            decision: AuditDecision::Refused {
                code: SUMMARY_CODE.into(),
                message,
            },
            counted: 1,
            last_requested_ms: Some(now_ms),
            ..first
        };
        let id = self.table.append(false, |id| {
            record.id = id;
            encode(&record)
        })?;
        ledger.summarized(&record.rule, id);
        Ok(id)
    }

    fn ledger(&self) -> MutexGuard<'_, RefusalLedger> {
        // The ledger only steers records: a panic cannot make it lie.
        self.refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records how run `id` ended.
    pub fn record_outcome(&self, id: u64, outcome: &Outcome) -> Result<(), AuditError> {
        self.finish(id, |_| (outcome.status.into(), outcome.report.clone()))
    }

    /// Marks run `id`, found `started` after a restart, as `interrupted`.
    pub fn mark_interrupted(&self, id: u64, now_ms: u64) -> Result<(), AuditError> {
        self.finish(id, |record| {
            let report = RunReport::note(
                "interrupted: the host stopped before the run finished; whether it took effect \
                 is unknown"
                    .into(),
                record.requested_ms,
                now_ms,
            );
            (AuditStatus::Interrupted, report)
        })
    }

    /// Marks every `started` run `interrupted` and returns them as they
    /// are now. Only at start, before this process runs anything: it cannot
    /// tell its own runs in flight from a previous process's.
    pub fn interrupt_unfinished(&self, now_ms: u64) -> Result<Vec<AuditRecord>, AuditError> {
        let mut interrupted = Vec::new();
        for record in self.unfinished()? {
            self.mark_interrupted(record.id, now_ms)?;
            interrupted.extend(self.get(record.id)?);
        }
        Ok(interrupted)
    }

    /// Runs recorded `started` and not finished, oldest first.
    pub fn unfinished(&self) -> Result<Vec<AuditRecord>, AuditError> {
        self.table
            .unfinished()?
            .into_iter()
            .map(|(id, bytes)| decode(id, &bytes))
            .collect()
    }

    /// One record.
    pub fn get(&self, id: u64) -> Result<Option<AuditRecord>, AuditError> {
        self.table
            .get(id)?
            .map(|bytes| decode(id, &bytes))
            .transpose()
    }

    /// Records matching `query`, newest first.
    pub fn list(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let limit = query.limit.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        for entry in self.table.newest_first()? {
            if found.len() >= limit {
                break;
            }
            let (id, bytes) = entry?;
            let record = decode(id, &bytes)?;
            if query.matches(&record) {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Deletes finished records requested before `before_ms` (retention);
    /// returns how many. `started` records are kept whatever their age.
    pub fn prune(&self, before_ms: u64) -> Result<usize, AuditError> {
        self.table
            .prune(before_ms, |id, bytes| Ok(decode(id, bytes)?.requested_ms))
    }

    /// Gives `started` record `id` the status and report `end` makes of
    /// it, in one transaction (the storage knows which records are
    /// unfinished).
    fn finish(
        &self,
        id: u64,
        end: impl FnOnce(&AuditRecord) -> (AuditStatus, RunReport),
    ) -> Result<(), AuditError> {
        let finish = self.table.finish(id, |bytes| {
            let mut record = decode(id, bytes)?;
            let (status, report) = end(&record);
            record.status = status;
            record.outcome = Some(report);
            Ok::<_, AuditError>(encode(&record))
        })?;
        match finish {
            Finish::Done => Ok(()),
            Finish::NotFound => Err(AuditError::NotFound(id)),
            Finish::AlreadyFinished => Err(AuditError::AlreadyFinished(id)),
        }
    }
}

fn encode(record: &AuditRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("an audit record always serializes")
}

fn decode(id: u64, bytes: &[u8]) -> Result<AuditRecord, AuditError> {
    serde_json::from_slice(bytes).map_err(|error| AuditError::Corrupt {
        id,
        error: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::config::parse_actions;
    use crate::actions::gate::Gate;
    use crate::runtime::Label;

    fn gate() -> Gate {
        let text = r#"
            [restart]
            command = ["/usr/bin/systemctl", "restart", "{service}"]
            params = { service = { pattern = "[a-z]+" } }
            allowed_rules = ["threshold"]
        "#;
        Gate::new(parse_actions(&text.parse().unwrap(), Mode::Enforce).unwrap())
    }

    fn restart(service: &str) -> ActionRequest {
        ActionRequest {
            action: "restart".into(),
            params: vec![Label {
                name: "service".into(),
                value: service.into(),
            }],
            reason: "cpu_usage is 95".into(),
        }
    }

    fn outcome(status: Status, at: u64) -> Outcome {
        Outcome {
            status,
            report: RunReport {
                detail: "exited with status 0".into(),
                exit_code: Some(0),
                output_excerpt: "restarted\n".into(),
                started_ms: at,
                finished_ms: at + 10,
            },
        }
    }

    /// Decides and records; returns the id.
    fn request(
        log: &AuditLog,
        gate: &mut Gate,
        rule: &str,
        target: &str,
        service: &str,
        at: u64,
    ) -> u64 {
        let request = restart(service);
        let decision = gate.check(rule, target, &request, at);
        log.record_decision(rule, 1, target, &request, &decision, at)
            .unwrap()
    }

    #[test]
    fn the_log_survives_a_restart_and_shows_the_run_a_crash_left_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let log = AuditLog::open(&StateDb::open(&path).unwrap()).unwrap();
            let mut gate = gate();
            let done = request(&log, &mut gate, "threshold", "web-01", "nginx", 1_000);
            log.record_outcome(done, &outcome(Status::Succeeded, 1_000))
                .unwrap();
            let refused = request(&log, &mut gate, "disk", "web-01", "nginx", 2_000);
            // The "crash": started, never finished.
            let crashed = request(&log, &mut gate, "threshold", "web-02", "nginx", 3_000);
            assert_eq!((done, refused, crashed), (1, 2, 3));
            assert_eq!(log.unfinished().unwrap().len(), 1);
        }
        let log = AuditLog::open(&StateDb::open(&path).unwrap()).unwrap();
        let all = log.list(&AuditQuery::default()).unwrap();
        let statuses: Vec<AuditStatus> = all.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [
                AuditStatus::Started,
                AuditStatus::Refused,
                AuditStatus::Succeeded
            ]
        );
        let done = &all[2];
        assert_eq!(done.params, [("service".to_string(), "nginx".to_string())]);
        assert_eq!(done.reason, "cpu_usage is 95");
        assert_eq!(
            done.decision,
            AuditDecision::Run {
                mode: Mode::Enforce,
                invocation: r#"["/usr/bin/systemctl", "restart", "nginx"]"#.into()
            }
        );
        assert_eq!(done.outcome.as_ref().unwrap().output_excerpt, "restarted\n");
        let AuditDecision::Refused { code, message } = &all[1].decision else {
            panic!("refused")
        };
        assert_eq!(code, "rule-not-allowed");
        assert!(message.starts_with("rule `disk` may not request `restart`"));

        let unfinished = log.unfinished().unwrap();
        assert_eq!(unfinished.iter().map(|r| r.id).collect::<Vec<_>>(), [3]);
        let interrupted = log.interrupt_unfinished(9_000).unwrap();
        assert_eq!(interrupted[0].status, AuditStatus::Interrupted);
        let detail = &interrupted[0].outcome.as_ref().unwrap().detail;
        assert!(
            detail.starts_with("interrupted: the host stopped"),
            "{detail}"
        );
        assert!(log.unfinished().unwrap().is_empty());
        assert!(matches!(
            log.record_outcome(3, &outcome(Status::Succeeded, 9_500)),
            Err(AuditError::AlreadyFinished(3))
        ));
        assert!(matches!(
            log.mark_interrupted(42, 0),
            Err(AuditError::NotFound(42))
        ));

        // Ids go on from where they were, even after pruning everything.
        assert_eq!(log.prune(u64::MAX).unwrap(), 3);
        let mut gate = gate();
        assert_eq!(
            request(&log, &mut gate, "threshold", "web-03", "nginx", 10_000),
            4
        );
    }

    #[test]
    fn list_filters_and_returns_the_newest_first() {
        let log = AuditLog::open(&StateDb::in_memory().unwrap()).unwrap();
        let mut gate = gate();
        for (i, (rule, target, service)) in [
            ("threshold", "a", "nginx"),
            ("threshold", "b", "nginx"),
            ("disk", "a", "nginx"),
            ("threshold", "a", "BAD"),
            ("threshold", "c", "nginx"),
        ]
        .into_iter()
        .enumerate()
        {
            let at = 1_000 * (i as u64 + 1);
            let id = request(&log, &mut gate, rule, target, service, at);
            if log.get(id).unwrap().unwrap().status == AuditStatus::Started {
                log.record_outcome(id, &outcome(Status::Failed, at))
                    .unwrap();
                gate.finished("restart", target, Status::Failed, at);
            }
        }
        let ids = |query: AuditQuery| -> Vec<u64> {
            log.list(&query).unwrap().iter().map(|r| r.id).collect()
        };
        assert_eq!(ids(AuditQuery::default()), [5, 4, 3, 2, 1]);
        let target = |t: &str| Some(t.to_string());
        assert_eq!(
            ids(AuditQuery {
                target: target("a"),
                ..Default::default()
            }),
            [4, 3, 1]
        );
        assert_eq!(
            ids(AuditQuery {
                rule: Some("disk".into()),
                ..Default::default()
            }),
            [3]
        );
        assert_eq!(
            ids(AuditQuery {
                status: Some(AuditStatus::Refused),
                ..Default::default()
            }),
            [4, 3]
        );
        assert_eq!(
            ids(AuditQuery {
                since_ms: Some(3_000),
                ..Default::default()
            }),
            [5, 4, 3]
        );
        assert_eq!(
            ids(AuditQuery {
                limit: Some(2),
                ..Default::default()
            }),
            [5, 4]
        );
        assert_eq!(
            ids(AuditQuery {
                action: Some("restart".into()),
                target: target("a"),
                status: Some(AuditStatus::Failed),
                ..Default::default()
            }),
            [1]
        );
        assert_eq!(
            ids(AuditQuery {
                action: Some("other".into()),
                ..Default::default()
            }),
            Vec::<u64>::new()
        );
        assert_eq!("timed-out".parse(), Ok(AuditStatus::TimedOut));
        assert!(
            "done"
                .parse::<AuditStatus>()
                .unwrap_err()
                .contains("one of: started")
        );
    }

    #[test]
    fn records_keep_their_json_now_that_the_executor_report_is_shared() {
        let stored = r#"{"id":7,"requested_ms":1,"rule":"r","target":"t","action":"a","params":[],"reason":"","decision":{"kind":"refused","code":"cooldown","message":"m"},"status":"refused","outcome":{"detail":"m","exit_code":null,"output_excerpt":"","started_ms":1,"finished_ms":2}}"#;
        let record = decode(7, stored.as_bytes()).unwrap();
        assert_eq!(encode(&record), stored.as_bytes());
        assert_eq!(record.outcome, Some(RunReport::note("m".into(), 1, 2)));
    }

    #[test]
    fn oversized_request_text_is_cut_with_its_length() {
        let log = AuditLog::open(&StateDb::in_memory().unwrap()).unwrap();
        let mut gate = gate();
        let big = "x".repeat(1024 * 1024);
        let id = request(&log, &mut gate, "threshold", "a", &big, 0);
        let record = log.get(id).unwrap().unwrap();
        assert_eq!(record.status, AuditStatus::Refused);
        let value = &record.params[0].1;
        assert!(value.len() < MAX_PARAM_BYTES + 64, "{}", value.len());
        assert!(
            value.ends_with("… (1048576 bytes)"),
            "{}",
            &value[value.len() - 40..]
        );
    }

    #[test]
    fn repeated_refusals_are_counted_in_their_record_and_a_flood_in_a_summary() {
        let state = StateDb::in_memory().unwrap();
        let settings = AuditSettings {
            refusal_records_per_minute: 2,
            ..AuditSettings::default()
        };
        let log = AuditLog::open_with(&state, settings).unwrap();
        let mut gate = gate();
        // `disk` may not ask: refused every time, always the same request.
        let ids: Vec<u64> = (0..5)
            .map(|n| request(&log, &mut gate, "disk", "web-01", "nginx", 1_000 + n))
            .collect();
        assert_eq!(ids, [1, 1, 1, 1, 1]);
        let record = log.get(1).unwrap().unwrap();
        assert_eq!((record.repeats, record.last_requested_ms), (4, Some(1_004)));
        // Fresh params each time: the budget of two a minute has one left
        // (the first record took one), then one summary for the rest.
        let ids: Vec<u64> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|service| request(&log, &mut gate, "disk", "web-01", service, 2_000))
            .collect();
        assert_eq!(ids, [2, 3, 3, 3, 3]);
        let summary = log.get(3).unwrap().unwrap();
        assert_eq!(summary.counted, 4);
        assert_eq!(summary.params, [("service".to_string(), "b".to_string())]);
        let AuditDecision::Refused { code, message } = &summary.decision else {
            panic!("a summary is a refusal");
        };
        assert_eq!(code, SUMMARY_CODE);
        assert!(
            message.contains("`[audit] refusal_records_per_minute`"),
            "{message}"
        );
        // A minute on, the same refusal starts a new record.
        let again = request(&log, &mut gate, "disk", "web-01", "nginx", 61_000);
        assert_eq!(again, 4);
        // Runs are never aggregated.
        let run = request(&log, &mut gate, "threshold", "web-01", "nginx", 61_000);
        assert_eq!(run, 5);
        // Every refusal is accounted for: 5 + 5 + 1.
        let refused = log
            .list(&AuditQuery {
                status: Some(AuditStatus::Refused),
                ..AuditQuery::default()
            })
            .unwrap();
        let total: u64 = refused
            .iter()
            .map(|r| {
                if r.counted > 0 {
                    r.counted
                } else {
                    1 + r.repeats
                }
            })
            .sum();
        assert_eq!(total, 11);
        // Old records' JSON has no count fields, and still reads.
        let old = r#"{"id":9,"requested_ms":1,"rule":"r","target":"t","action":"a","params":[],"reason":"","decision":{"kind":"refused","code":"x","message":"m"},"status":"refused","outcome":null}"#;
        let parsed = decode(9, old.as_bytes()).unwrap();
        assert_eq!((parsed.repeats, parsed.counted), (0, 0));
        assert_eq!(encode(&parsed), old.as_bytes());
    }

    #[test]
    fn retention_prunes_by_age_and_keeps_unfinished_runs() {
        let state = StateDb::in_memory().unwrap();
        let settings = AuditSettings {
            max_age: std::time::Duration::from_secs(10),
            ..AuditSettings::default()
        };
        let log = AuditLog::open_with(&state, settings).unwrap();
        let mut gate = gate();
        request(&log, &mut gate, "disk", "a", "nginx", 1_000); // refused
        request(&log, &mut gate, "threshold", "b", "nginx", 2_000); // started
        request(&log, &mut gate, "disk", "c", "nginx", 15_000); // refused, young
        assert_eq!(log.enforce_retention(20_000).unwrap(), 1);
        let left: Vec<u64> = log
            .list(&AuditQuery::default())
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [3, 2]);
        assert_eq!(log.enforce_retention(20_000).unwrap(), 0);
    }
}
