//! What Vigil keeps on disk: the data directory's layout ([`DataDir`]) and
//! the one database file in it, `state.redb`, with its four kinds of
//! table. This is the only module that touches the database (redb); the
//! others get typed calls.
//!
//! ```text
//! <data dir>/
//!   state.redb                     one redb file, one process at a time
//!     rule_state                   (rule, key) -> value            rules.rs   RuleState, PendingWrites
//!     alerts                       (rule, target, fingerprint)     alerts.rs  StateDb::save_alerts, saved_alerts
//!                                  -> one tracked alert, JSON
//!     action_audit                 id -> record, JSON              audit.rs   AuditTable (actions::AuditLog on top)
//!     action_audit_unfinished      ids still `started`
//!     action_audit_meta            next_id, bytes (the records' total size)
//!     outbox                       (sink, sequence) -> a notification  outbox.rs  OutboxTable (sinks::outbox on top)
//!     outbox_next                  sink -> its next sequence
//!   cache/                         compiled rules                  data_dir.rs  DataDir::cache (runtime::CompileCache)
//! ```
//!
//! | module | guarantees | refuses to |
//! |---|---|---|
//! | [`StateDb`] (here) | every table exists once `open` or `in_memory` returns; each write below commits in one durable transaction; [`StateError`] is the one error for a failed database | let code outside `state/` use redb: other modules get typed calls |
//! | `rules` | each rule sees only its own namespace; a call's writes ([`PendingWrites`]) commit together when it returns and are dropped when it fails; sizes are capped per key, value and rule ([`MAX_KEY_BYTES`], [`MAX_VALUE_BYTES`], [`MAX_RULE_BYTES`]) | store a write that breaks a limit, or half a call |
//! | `alerts` | one row per tracked alert; what changed in a (rule, target) group is saved in one transaction; the old whole-group table is handed over once and dropped | interpret the JSON: it is `alerts::Tracker`'s |
//! | `audit` ([`AuditTable`]) | ids start at 1 and only go up, across restarts and pruning; a record and its unfinished mark are written together, and a finish clears the mark with the new record; the records' total size is kept with them, and a size bound is enforced in the append that breaks it; pruning keeps every unfinished record | finish a record twice; know what a record says (see below) |
//! | `outbox` ([`OutboxTable`]) | a sink's rows come back in the order they were pushed; sequences only go up per sink, across restarts; a push and the bound's evictions commit together | know what a notification says (the bytes are `sinks::outbox`'s) |
//! | `data_dir` ([`DataDir`]) | the layout above, in one place; errors name the path and hint at the fix | create an empty database for a command that only reads one ([`DataDir::open_existing_state`]) |
//!
//! **Why the audit storage deals in bytes.** `actions` is built on `state`,
//! so `state` does not import from `actions`: [`AuditTable`] stores records
//! as the bytes it is given, by id, and owns only what needs the
//! database (the next id, the unfinished index, which records pruning may
//! delete). Where it needs a record's content it asks the caller through a
//! closure that runs inside the transaction. The record type, its JSON and
//! the queries stay with their meaning in `actions::audit`.
//!
//! redb allows one process per file: a second host, or `vigil audit` while a
//! host runs, gets [`DataDirError`] with a hint rather than waiting.

mod alerts;
mod audit;
mod data_dir;
mod outbox;
mod rules;

use std::path::Path;
use std::sync::Arc;

use redb::Database;

pub use alerts::{AlertChanges, SavedAlert};
pub use audit::{AuditTable, Finish};
pub use data_dir::{DataDir, DataDirError};
pub use outbox::OutboxTable;
pub use rules::{MAX_KEY_BYTES, MAX_RULE_BYTES, MAX_VALUE_BYTES, PendingWrites, RuleState};

/// Why the state database failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database itself failed (disk full, corrupt file, ...).
    #[error("state database: {0}")]
    Database(String),
}

impl<E: Into<redb::Error>> From<E> for StateError {
    fn from(error: E) -> Self {
        StateError::Database(error.into().to_string())
    }
}

/// The state database: rule state, tracked alerts and the audit log's
/// tables. Cheap to clone (the handles share one open database).
#[derive(Clone)]
pub struct StateDb {
    db: Arc<Database>,
}

impl StateDb {
    /// Opens (or creates) the database file and every table in it. For a
    /// host, [`DataDir::open_state`] says which file and explains failures.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Self::init(Database::create(path)?)
    }

    /// A database that lives in memory only: for tests, benchmarks and
    /// one-off checks.
    pub fn in_memory() -> Result<Self, StateError> {
        let backend = redb::backends::InMemoryBackend::new();
        Self::init(redb::Builder::new().create_with_backend(backend)?)
    }

    fn init(db: Database) -> Result<Self, StateError> {
        let txn = db.begin_write()?;
        txn.open_table(rules::TABLE)?;
        txn.open_table(alerts::ALERTS)?;
        txn.open_table(audit::RECORDS)?;
        txn.open_table(audit::UNFINISHED)?;
        txn.open_table(audit::META)?;
        txn.open_table(outbox::ENTRIES)?;
        txn.open_table(outbox::NEXT)?;
        audit::count_bytes(&txn)?;
        txn.commit()?;
        Ok(StateDb { db: Arc::new(db) })
    }
}
