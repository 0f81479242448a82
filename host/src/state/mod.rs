//! Durable state, in one embedded database file: rule key-value state
//! ([`rules`]) and alert groups ([`alerts`]).
//!
//! Each rule sees only its own namespace. Writes a rule makes during a call
//! are buffered and committed in one transaction when the call returns, and
//! dropped when it fails, so what is stored always matches a sample that was
//! fully evaluated. Sizes are capped per key, per value and per rule.

mod alerts;
mod audit;
mod data_dir;
mod rules;

use std::path::Path;
use std::sync::Arc;

use redb::Database;

pub use audit::{AuditTable, Finish};
pub use data_dir::{DataDir, DataDirError};
pub use rules::{MAX_KEY_BYTES, MAX_RULE_BYTES, MAX_VALUE_BYTES, PendingWrites, RuleState};

/// Why the state store failed.
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

/// The database holding every rule's state.
#[derive(Clone)]
pub struct StateDb {
    db: Arc<Database>,
}

impl StateDb {
    /// Opens (or creates) the database file.
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
        txn.open_table(alerts::ALERT_GROUPS)?;
        txn.open_table(audit::RECORDS)?;
        txn.open_table(audit::UNFINISHED)?;
        txn.open_table(audit::META)?;
        txn.commit()?;
        Ok(StateDb { db: Arc::new(db) })
    }
}
