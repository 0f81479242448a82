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
//!
//! **Retention.** The table keeps the total size of its records (in
//! [`META`], under `bytes`), so a size bound costs no scan: with
//! [`AuditTable::with_max_bytes`], an append that takes the total past the
//! bound deletes the oldest finished records, in the same transaction,
//! until the total is back under nine tenths of it (so that deletions come
//! in batches, not on every append). [`AuditTable::prune`] deletes by age,
//! scanning from the oldest record and stopping at the first young enough.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{StateDb, StateError};

/// id -> record (JSON, written by `actions::audit`).
pub(super) const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("action_audit");
/// ids of records still `started`.
pub(super) const UNFINISHED: TableDefinition<u64, ()> =
    TableDefinition::new("action_audit_unfinished");
/// [`NEXT_ID`] -> the id the next record gets.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("action_audit_meta");
const NEXT_ID: &str = "next_id";
/// [`BYTES`] -> the total size of the records, in bytes.
const BYTES: &str = "bytes";

/// The audit log's tables in the state database. Cheap to clone.
#[derive(Clone)]
pub struct AuditTable {
    db: Arc<Database>,
    /// The size bound on the records together, if any.
    max_bytes: Option<u64>,
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
            max_bytes: None,
        }
    }
}

/// Counts the records' bytes into [`META`] if an older version left the
/// total out: once, when the database opens.
pub(super) fn count_bytes(txn: &redb::WriteTransaction) -> Result<(), StateError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(BYTES)?.is_some() {
        return Ok(());
    }
    let records = txn.open_table(RECORDS)?;
    let mut total = 0u64;
    for entry in records.iter()? {
        total += entry?.1.value().len() as u64;
    }
    meta.insert(BYTES, total)?;
    Ok(())
}

/// Adds `added` and takes `removed` bytes off the stored total.
fn add_bytes(
    meta: &mut redb::Table<&'static str, u64>,
    added: usize,
    removed: usize,
) -> Result<u64, StateError> {
    let total = meta.get(BYTES)?.map_or(0, |total| total.value());
    let total = (total + added as u64).saturating_sub(removed as u64);
    meta.insert(BYTES, total)?;
    Ok(total)
}

impl AuditTable {
    /// Keeps the records together under `max_bytes`: see the module doc.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Deletes the oldest finished records while the total is past the
    /// bound (one lowered since they were written); returns how many.
    pub fn shrink_to_max(&self) -> Result<usize, StateError> {
        let Some(max) = self.max_bytes else {
            return Ok(0);
        };
        if self.total_bytes()? <= max {
            return Ok(0);
        }
        let txn = self.db.begin_write()?;
        let deleted;
        {
            let mut meta = txn.open_table(META)?;
            let total = meta.get(BYTES)?.map_or(0, |total| total.value());
            let mut records = txn.open_table(RECORDS)?;
            let unfinished = txn.open_table(UNFINISHED)?;
            let before = records.len()?;
            let freed = shrink(
                &mut records,
                &unfinished,
                0,
                total.saturating_sub(max) + max / 10,
            )?;
            deleted = (before - records.len()?) as usize;
            add_bytes(&mut meta, 0, freed)?;
        }
        txn.commit()?;
        Ok(deleted)
    }

    /// The records' total size in bytes.
    pub fn total_bytes(&self) -> Result<u64, StateError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(BYTES)?.map_or(0, |total| total.value()))
    }

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
            let bytes = encode(id);
            let mut records = txn.open_table(RECORDS)?;
            records.insert(id, bytes.as_slice())?;
            let total = add_bytes(&mut meta, bytes.len(), 0)?;
            let mut unfinished = txn.open_table(UNFINISHED)?;
            if let Some(max) = self.max_bytes.filter(|max| total > *max) {
                let removed = shrink(&mut records, &unfinished, id, total - max + max / 10)?;
                add_bytes(&mut meta, 0, removed)?;
            }
            if started {
                unfinished.insert(id, ())?;
            }
        }
        txn.commit()?;
        Ok(id)
    }

    /// Replaces the bytes of finished record `id` with what `rewrite` makes
    /// of them (a refusal's repeat count); returns whether there was such a
    /// record. An unfinished record is left alone (finish it instead).
    pub fn rewrite<E: From<StateError>>(
        &self,
        id: u64,
        rewrite: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<bool, E> {
        let txn = self.db.begin_write().map_err(StateError::from)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(StateError::from)?;
            let unfinished = txn.open_table(UNFINISHED).map_err(StateError::from)?;
            if unfinished.get(id).map_err(StateError::from)?.is_some() {
                return Ok(false);
            }
            let old = match records.get(id).map_err(StateError::from)? {
                Some(bytes) => bytes.value().to_vec(),
                None => return Ok(false),
            };
            let new = rewrite(&old)?;
            records
                .insert(id, new.as_slice())
                .map_err(StateError::from)?;
            let mut meta = txn.open_table(META).map_err(StateError::from)?;
            add_bytes(&mut meta, new.len(), old.len())?;
        }
        txn.commit().map_err(StateError::from)?;
        Ok(true)
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
            let new = rewrite(&bytes)?;
            records
                .insert(id, new.as_slice())
                .map_err(StateError::from)?;
            let mut meta = txn.open_table(META).map_err(StateError::from)?;
            add_bytes(&mut meta, new.len(), bytes.len())?;
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
    ///
    /// Ids are handed out in the order requests are decided, so the scan
    /// goes from the oldest and stops at the first record requested at or
    /// after `before_ms`: it reads only what it deletes, plus one. (Should
    /// the wall clock step back, a record behind a younger one waits for
    /// the next prune after it.)
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
            let mut freed = 0;
            for entry in records.iter().map_err(StateError::from)? {
                let (id, bytes) = entry.map_err(StateError::from)?;
                let id = id.value();
                if requested_ms(id, bytes.value())? >= before_ms {
                    break;
                }
                if unfinished.get(id).map_err(StateError::from)?.is_none() {
                    old.push(id);
                    freed += bytes.value().len();
                }
            }
            for &id in &old {
                records.remove(id).map_err(StateError::from)?;
            }
            let mut meta = txn.open_table(META).map_err(StateError::from)?;
            add_bytes(&mut meta, 0, freed)?;
        }
        txn.commit().map_err(StateError::from)?;
        Ok(old.len())
    }
}

/// Deletes the oldest finished records, except `keep`, until at least
/// `to_free` bytes are gone (or none is left to delete); returns the bytes
/// freed.
fn shrink(
    records: &mut redb::Table<u64, &'static [u8]>,
    unfinished: &redb::Table<u64, ()>,
    keep: u64,
    to_free: u64,
) -> Result<usize, StateError> {
    let mut victims = Vec::new();
    let mut freed = 0usize;
    for entry in records.iter()? {
        if freed as u64 >= to_free {
            break;
        }
        let (id, bytes) = entry?;
        let id = id.value();
        if id == keep || unfinished.get(id)?.is_some() {
            continue;
        }
        victims.push(id);
        freed += bytes.value().len();
    }
    for id in victims {
        records.remove(id)?;
    }
    Ok(freed)
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
        // The total follows appends, rewrites, finishes and prunes.
        assert_eq!(audit.total_bytes().unwrap(), 4);
    }

    #[test]
    fn the_size_bound_deletes_the_oldest_finished_records_in_batches() {
        let db = StateDb::in_memory().unwrap();
        let audit = db.audit().with_max_bytes(100);
        let record = |_| vec![b'x'; 10];
        audit.append(true, record).unwrap(); // 1: unfinished, never deleted
        for _ in 0..9 {
            audit.append(false, record).unwrap(); // 2..=10
        }
        assert_eq!(audit.total_bytes().unwrap(), 100);
        // 110 > 100: free 10 + 10 (a tenth) bytes, the oldest finished first.
        audit.append(false, record).unwrap();
        assert_eq!(audit.total_bytes().unwrap(), 90);
        let ids: Vec<u64> = audit
            .newest_first()
            .unwrap()
            .map(|e| e.unwrap().0)
            .collect();
        assert_eq!(ids, [11, 10, 9, 8, 7, 6, 5, 4, 1]);
        // A rewrite counts too, and leaves unfinished records alone.
        assert!(
            audit
                .rewrite(4, |_| Ok::<_, StateError>(vec![b'y'; 15]))
                .unwrap()
        );
        assert!(!audit.rewrite(1, |_| Ok::<_, StateError>(vec![])).unwrap());
        assert!(!audit.rewrite(2, |_| Ok::<_, StateError>(vec![])).unwrap());
        assert_eq!(audit.total_bytes().unwrap(), 95);
        // Reopened without a bound, nothing is deleted.
        let unbounded = db.audit();
        for _ in 0..10 {
            unbounded.append(false, record).unwrap();
        }
        assert_eq!(unbounded.total_bytes().unwrap(), 195);
    }
}
