//! The audit log's storage: records by id, the index of those still
//! unfinished, and the next id, in three tables. What a record says, its
//! JSON and what a query matches are `actions::audit`'s; this module keeps
//! the bytes it is given and owns what needs a transaction: ids, the
//! unfinished index, and which records pruning may delete.
//!
//! The API deals in ids and serialized records (`&[u8]`) rather than in
//! `actions::audit::AuditRecord`, so `state` never imports from `actions`
//! (which is built on top of it): where a decision needs a record's content
//! (its id inside the JSON, a finished record's new text, its request time
//! for pruning), the caller passes a closure that runs inside the
//! transaction.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{StateDb, StateError};

/// id -> record (JSON, written by `actions::audit`).
pub(super) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("action_audit");
/// ids of records still `started`.
pub(super) const UNFINISHED: TableDefinition<u64, ()> =
    TableDefinition::new("action_audit_unfinished");
/// [`NEXT_ID`] -> the id the next record gets.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("action_audit_meta");
const NEXT_ID: &str = "next_id";

/// The audit log's tables in the state database. Cheap to clone.
#[derive(Clone)]
pub struct AuditTable {
    db: Arc<Database>,
}

/// What [`AuditTable::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The record was unfinished; it now has its new bytes and is not.
    Done,
    /// There is no record with this id.
    NotFound,
    /// The record is already finished; nothing was written.
    AlreadyFinished,
}

impl StateDb {
    /// The audit log's tables (used by `actions::AuditLog`).
    pub fn audit(&self) -> AuditTable {
        AuditTable {
            db: self.db.clone(),
        }
    }
}

impl AuditTable {
    /// Stores a new record under the next id, and marks it unfinished if
    /// `started`, in one durable transaction; returns the id. `encode` gets
    /// the id (records carry it) and returns the record's bytes. Ids start
    /// at 1 and only go up, across restarts and pruning.
    pub fn append(
        &self,
        started: bool,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, StateError> {
        let txn = self.db.begin_write()?;
        let id;
        {
            let mut meta = txn.open_table(META)?;
            id = meta.get(NEXT_ID)?.map_or(1, |next| next.value());
            meta.insert(NEXT_ID, id + 1)?;
            txn.open_table(RECORDS)?.insert(id, encode(id).as_slice())?;
            if started {
                txn.open_table(UNFINISHED)?.insert(id, ())?;
            }
        }
        txn.commit()?;
        Ok(id)
    }

    /// Finishes record `id`: if it is unfinished, replaces its bytes with
    /// what `rewrite` makes of them and drops it from the unfinished index,
    /// in one transaction. An error from `rewrite` writes nothing.
    pub fn finish<E: From<StateError>>(
        &self,
        id: u64,
        rewrite: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Finish, E> {
        let txn = self.db.begin_write().map_err(StateError::from)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(StateError::from)?;
            let mut unfinished = txn.open_table(UNFINISHED).map_err(StateError::from)?;
            let bytes = match records.get(id).map_err(StateError::from)? {
                Some(bytes) => bytes.value().to_vec(),
                None => return Ok(Finish::NotFound),
            };
            if unfinished.remove(id).map_err(StateError::from)?.is_none() {
                return Ok(Finish::AlreadyFinished);
            }
            records
                .insert(id, rewrite(&bytes)?.as_slice())
                .map_err(StateError::from)?;
        }
        txn.commit().map_err(StateError::from)?;
        Ok(Finish::Done)
    }

    /// Unfinished records (id, bytes), oldest first.
    pub fn unfinished(&self) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        let txn = self.db.begin_read()?;
        let open = txn.open_table(UNFINISHED)?;
        let records = txn.open_table(RECORDS)?;
        let mut unfinished = Vec::new();
        for entry in open.iter()? {
            let id = entry?.0.value();
            let bytes = records.get(id)?.ok_or_else(|| {
                StateError::Database(format!(
                    "audit record {id} is marked unfinished but missing"
                ))
            })?;
            unfinished.push((id, bytes.value().to_vec()));
        }
        Ok(unfinished)
    }

    /// The bytes of record `id`.
    pub fn get(&self, id: u64) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(RECORDS)?;
        Ok(records.get(id)?.map(|bytes| bytes.value().to_vec()))
    }

    /// Every record (id, bytes), newest first, read lazily from one
    /// snapshot: stop early to read only the newest.
    pub fn newest_first(
        &self,
    ) -> Result<impl Iterator<Item = Result<(u64, Vec<u8>), StateError>> + use<>, StateError> {
        let txn = self.db.begin_read()?;
        // `ReadOnlyTable::range` keeps the read transaction alive for as
        // long as the iterator lives.
        let records = txn.open_table(RECORDS)?.range::<u64>(..)?;
        Ok(records.rev().map(|entry| {
            let (id, bytes) = entry?;
            Ok((id.value(), bytes.value().to_vec()))
        }))
    }

    /// Deletes the finished records requested before `before_ms`, in one
    /// transaction; returns how many. `requested_ms` reads a record's
    /// request time from its (id, bytes). Unfinished records are kept
    /// whatever their age.
    pub fn prune<E: From<StateError>>(
        &self,
        before_ms: u64,
        mut requested_ms: impl FnMut(u64, &[u8]) -> Result<u64, E>,
    ) -> Result<usize, E> {
        let txn = self.db.begin_write().map_err(StateError::from)?;
        let mut old = Vec::new();
        {
            let mut records = txn.open_table(RECORDS).map_err(StateError::from)?;
            let unfinished = txn.open_table(UNFINISHED).map_err(StateError::from)?;
            for entry in records.iter().map_err(StateError::from)? {
                let (id, bytes) = entry.map_err(StateError::from)?;
                let id = id.value();
                if requested_ms(id, bytes.value())? < before_ms
                    && unfinished.get(id).map_err(StateError::from)?.is_none()
                {
                    old.push(id);
                }
            }
            for &id in &old {
                records.remove(id).map_err(StateError::from)?;
            }
        }
        txn.commit().map_err(StateError::from)?;
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record that is its request time, as text.
    fn ms(_id: u64, bytes: &[u8]) -> Result<u64, StateError> {
        Ok(std::str::from_utf8(bytes).unwrap().parse().unwrap())
    }

    #[test]
    fn ids_go_up_unfinished_records_are_indexed_and_finished_once() {
        let audit = StateDb::in_memory().unwrap().audit();
        assert_eq!(audit.append(false, |_| b"10".to_vec()).unwrap(), 1);
        assert_eq!(audit.append(true, |_| b"20".to_vec()).unwrap(), 2);
        assert_eq!(audit.append(true, |id| format!("{id}0").into()).unwrap(), 3);
        assert_eq!(
            audit.unfinished().unwrap(),
            [(2, b"20".to_vec()), (3, b"30".to_vec())]
        );

        let done = audit.finish(2, |old| Ok::<_, StateError>([old, b"5"].concat()));
        assert_eq!(done.unwrap(), Finish::Done);
        assert_eq!(audit.get(2).unwrap().as_deref(), Some(&b"205"[..]));
        let again = audit.finish(2, |_| -> Result<_, StateError> { panic!("finished") });
        assert_eq!(again.unwrap(), Finish::AlreadyFinished);
        let missing = audit.finish(9, |_| -> Result<_, StateError> { panic!("missing") });
        assert_eq!(missing.unwrap(), Finish::NotFound);
        // A rewrite that fails leaves the record unfinished.
        let failed = audit.finish(3, |_| Err(StateError::Database("no".into())));
        assert!(failed.is_err());
        assert_eq!(audit.unfinished().unwrap(), [(3, b"30".to_vec())]);

        let newest: Vec<u64> = audit
            .newest_first()
            .unwrap()
            .map(|e| e.unwrap().0)
            .collect();
        assert_eq!(newest, [3, 2, 1]);
        // Record 3 is old enough but unfinished: kept.
        assert_eq!(audit.prune(u64::MAX, ms).unwrap(), 2);
        assert_eq!(audit.get(1).unwrap(), None);
        assert_eq!(audit.append(false, |_| b"40".to_vec()).unwrap(), 4);
        assert_eq!(audit.prune(35, ms).unwrap(), 0);
    }
}
