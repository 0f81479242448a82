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
//!
//! Records are stored as JSON (table `action_audit`, key: the id) so new
//! optional fields can be added without migrating old records. The storage
//! keeps bytes and ids; what a record says, its JSON and the queries are
//! this module's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::config::Mode;
use super::excerpt;
use super::exec::{Outcome, RunReport};
use super::gate::{Decision, MAX_PARAM_BYTES, Status};
use crate::runtime::ActionRequest;
use crate::state::{AuditTable, Finish, StateDb, StateError};

const MAX_NAME_BYTES: usize = 256;
const MAX_REASON_BYTES: usize = 4 * 1024;

/// One request and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Monotonic, from 1.
    pub id: u64,
    /// When the gate decided, in ms since the Unix epoch.
    pub requested_ms: u64,
    /// The requesting rule.
    pub rule: String,
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
}

impl AuditLog {
    /// The audit log in `state`'s database. Never fails today (the state
    /// database creates the tables when it opens); it returns a `Result` so
    /// callers need not change if opening grows a check.
    pub fn open(state: &StateDb) -> Result<Self, AuditError> {
        Ok(AuditLog {
            table: state.audit(),
        })
    }

    /// Records a request and the gate's decision; returns the record's id.
    /// A refusal is recorded as finished (`refused`); a run as `started`,
    /// to be closed with [`record_outcome`](Self::record_outcome). Commits
    /// before returning: only then may the run execute.
    pub fn record_decision(
        &self,
        rule: &str,
        target: &str,
        request: &ActionRequest,
        decision: &Decision,
        now_ms: u64,
    ) -> Result<u64, AuditError> {
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
        };
        Ok(self.table.append(started, |id| {
            record.id = id;
            encode(&record)
        })?)
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
        log.record_decision(rule, target, &request, &decision, at)
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
}
