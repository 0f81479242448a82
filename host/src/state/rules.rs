//! Rule key-value state: each rule sees only its own namespace, a call's
//! writes are buffered ([`PendingWrites`]) and committed in one transaction
//! when it returns, and sizes are capped per key, per value and per rule.
//!
//! The buffer is bounded too: at most [`MAX_CHANGES_PER_CALL`] keys per call,
//! and its bytes can never pass the rule's quota, since every write is
//! checked against the quota as if the buffer were already committed. What
//! one call makes the host hold, and later write, is therefore small.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{StateDb, StateError};

/// (rule namespace, key) -> value.
pub(super) const TABLE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("rule_state");

/// Longest key a rule may use, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value a rule may store under one key.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most bytes (keys and values) one rule may keep, unless its limits say
/// otherwise (`max_state_bytes`).
pub const MAX_RULE_BYTES: usize = 1024 * 1024;

/// Most keys one call (`configure` or `evaluate`) may set or delete.
pub const MAX_CHANGES_PER_CALL: usize = 1_000;

/// The writes and deletes buffered during one call, committed together when
/// it returns.
#[derive(Default)]
pub struct PendingWrites {
    changes: BTreeMap<String, Change>,
    /// How much the rule's stored bytes change once this is committed.
    growth: isize,
}

struct Change {
    /// The new value; `None` deletes the key.
    value: Option<Vec<u8>>,
    /// Bytes (key and value) the key held in the database before the call.
    stored: usize,
}

impl Change {
    fn size(key: &str, value: Option<&[u8]>) -> usize {
        value.map_or(0, |value| key.len() + value.len())
    }

    /// How much this change grows the stored bytes.
    fn growth(&self, key: &str) -> isize {
        Change::size(key, self.value.as_deref()) as isize - self.stored as isize
    }
}

impl PendingWrites {
    /// Forgets every buffered change.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.growth = 0;
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many keys are changed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }
}

impl StateDb {
    /// The state of one rule, with the default quota ([`MAX_RULE_BYTES`]).
    pub fn rule(&self, namespace: &str) -> Result<RuleState, StateError> {
        self.rule_with_quota(namespace, MAX_RULE_BYTES)
    }

    /// The state of one rule, which may keep at most `quota` bytes of keys
    /// and values. A quota lowered below what is stored already refuses
    /// every write that does not bring the rule back under it.
    pub fn rule_with_quota(&self, namespace: &str, quota: usize) -> Result<RuleState, StateError> {
        let state = RuleState {
            db: self.db.clone(),
            namespace: namespace.into(),
            used: Arc::new(Mutex::new(0)),
            quota,
        };
        let used = state.scan_usage()?;
        *state.used.lock().expect("usage lock") = used;
        Ok(state)
    }
}

/// One rule's namespace in the state database.
#[derive(Clone)]
pub struct RuleState {
    db: Arc<Database>,
    namespace: Arc<str>,
    /// Bytes of keys and values stored, kept in step with commits.
    used: Arc<Mutex<usize>>,
    /// Most bytes of keys and values the rule may keep.
    quota: usize,
}

impl RuleState {
    /// Reads a key, looking at the call's pending writes first.
    pub fn get(&self, pending: &PendingWrites, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(change) = pending.changes.get(key) {
            return Ok(change.value.clone());
        }
        self.stored(key)
    }

    /// Checks a write against the size limits and buffers it.
    pub fn set(&self, pending: &mut PendingWrites, key: &str, value: &[u8]) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "state key is {} bytes; the limit is {MAX_KEY_BYTES}",
                key.len()
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "state value for `{key}` is {} bytes; the limit is {MAX_VALUE_BYTES}",
                value.len()
            ));
        }
        self.buffer(pending, key, Some(value))
    }

    /// Buffers the deletion of a key. A key longer than any stored key
    /// cannot exist, so deleting it changes nothing and buffers nothing.
    pub fn delete(&self, pending: &mut PendingWrites, key: &str) -> Result<(), String> {
        if key.len() > MAX_KEY_BYTES {
            return Ok(());
        }
        self.buffer(pending, key, None)
    }

    /// Buffers one change if the call's changes stay under the per-call
    /// count and the rule's quota.
    fn buffer(
        &self,
        pending: &mut PendingWrites,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), String> {
        let (stored, before) = match pending.changes.get(key) {
            Some(change) => (change.stored, change.growth(key)),
            None if pending.changes.len() >= MAX_CHANGES_PER_CALL => {
                return Err(format!(
                    "one call may change at most {MAX_CHANGES_PER_CALL} state keys (a fixed \
                     limit); `{key}` would be one more: keep fewer keys, e.g. one JSON value"
                ));
            }
            None => {
                let stored = self.stored(key).map_err(|error| error.to_string())?;
                (stored.map_or(0, |old| key.len() + old.len()), 0)
            }
        };
        let change = Change {
            value: value.map(<[u8]>::to_vec),
            stored,
        };
        let growth = pending.growth - before + change.growth(key);
        let after = (*self.used.lock().expect("usage lock") as isize + growth).max(0) as usize;
        if value.is_some() && after > self.quota {
            return Err(format!(
                "storing `{key}` would bring the rule's state to {after} bytes; the quota is \
                 {} (delete keys you no longer need)",
                self.quota
            ));
        }
        pending.growth = growth;
        pending.changes.insert(key.to_string(), change);
        Ok(())
    }

    /// Commits a call's writes in one transaction.
    pub fn commit(&self, pending: &mut PendingWrites) -> Result<(), StateError> {
        if pending.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            for (key, change) in &pending.changes {
                match &change.value {
                    Some(value) => {
                        table.insert((&*self.namespace, key.as_str()), value.as_slice())?
                    }
                    None => table.remove((&*self.namespace, key.as_str()))?,
                };
            }
        }
        txn.commit()?;
        let mut used = self.used.lock().expect("usage lock");
        *used = (*used as isize + pending.growth).max(0) as usize;
        pending.clear();
        Ok(())
    }

    /// The committed value of a key.
    fn stored(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        Ok(table
            .get((&*self.namespace, key))?
            .map(|value| value.value().to_vec()))
    }

    /// Every key and value of this rule, in key order.
    pub fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        let mut entries = Vec::new();
        for entry in table.range((&*self.namespace, "")..)? {
            let (key, value) = entry?;
            let (namespace, key) = key.value();
            if namespace != &*self.namespace {
                break;
            }
            entries.push((key.to_string(), value.value().to_vec()));
        }
        Ok(entries)
    }

    fn scan_usage(&self) -> Result<usize, StateError> {
        Ok(self
            .entries()?
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_visible_to_the_call_then_durable_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = StateDb::open(&path).unwrap();
            let state = db.rule("counter").unwrap();
            let mut pending = PendingWrites::default();
            state.set(&mut pending, "n", b"41").unwrap();
            assert_eq!(
                state.get(&pending, "n").unwrap().as_deref(),
                Some(&b"41"[..])
            );
            assert_eq!(state.get(&PendingWrites::default(), "n").unwrap(), None);
            state.commit(&mut pending).unwrap();
            assert!(pending.is_empty());
        }
        let db = StateDb::open(&path).unwrap();
        let state = db.rule("counter").unwrap();
        let read = state.get(&PendingWrites::default(), "n").unwrap();
        assert_eq!(read.as_deref(), Some(&b"41"[..]));
        assert_eq!(db.rule("other").unwrap().entries().unwrap(), vec![]);
    }

    #[test]
    fn limits_are_enforced_with_a_reason() {
        let db = StateDb::in_memory().unwrap();
        let state = db.rule("big").unwrap();
        let mut pending = PendingWrites::default();
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(
            state
                .set(&mut pending, &long_key, b"")
                .unwrap_err()
                .contains("limit is 256")
        );
        let big = vec![0; MAX_VALUE_BYTES];
        for i in 0..(MAX_RULE_BYTES / MAX_VALUE_BYTES) - 1 {
            state.set(&mut pending, &format!("k{i}"), &big).unwrap();
        }
        state.commit(&mut pending).unwrap();
        let error = state.set(&mut pending, "one-more", &big).unwrap_err();
        assert!(error.contains("quota"), "{error}");
        // Overwriting a key in place does not count twice.
        state.set(&mut pending, "k0", &big).unwrap();
    }

    #[test]
    fn one_call_buffers_a_bounded_number_of_changes() {
        let db = StateDb::in_memory().unwrap();
        let state = db.rule("busy").unwrap();
        let mut pending = PendingWrites::default();
        for i in 0..MAX_CHANGES_PER_CALL {
            if i % 2 == 0 {
                state.set(&mut pending, &format!("k{i}"), b"v").unwrap();
            } else {
                state.delete(&mut pending, &format!("k{i}")).unwrap();
            }
        }
        // Changing a key already buffered is not one more.
        state.set(&mut pending, "k0", b"again").unwrap();
        state.delete(&mut pending, "k2").unwrap();
        let set = state.set(&mut pending, "new", b"v").unwrap_err();
        assert!(set.contains("at most 1000 state keys"), "{set}");
        let delete = state.delete(&mut pending, "new").unwrap_err();
        assert!(delete.contains("at most 1000 state keys"), "{delete}");
        assert_eq!(pending.len(), MAX_CHANGES_PER_CALL);
        // The next call starts from an empty buffer.
        state.commit(&mut pending).unwrap();
        state.set(&mut pending, "new", b"v").unwrap();
    }

    #[test]
    fn deleting_a_key_too_long_to_exist_buffers_nothing() {
        let db = StateDb::in_memory().unwrap();
        let state = db.rule("r").unwrap();
        let mut pending = PendingWrites::default();
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        state.delete(&mut pending, &long_key).unwrap();
        assert!(pending.is_empty());
    }

    #[test]
    fn the_quota_counts_buffered_writes_and_deletes() {
        let db = StateDb::in_memory().unwrap();
        let state = db.rule("r").unwrap();
        let mut pending = PendingWrites::default();
        let big = vec![0; MAX_VALUE_BYTES];
        let fit = MAX_RULE_BYTES / (MAX_VALUE_BYTES + 3);
        for i in 0..fit {
            state.set(&mut pending, &format!("k{i:02}"), &big).unwrap();
        }
        assert!(state.set(&mut pending, "one-more", &big).is_err());
        // Deleting a buffered write makes room within the same call.
        state.delete(&mut pending, "k00").unwrap();
        state.set(&mut pending, "one-more", &big).unwrap();
        state.commit(&mut pending).unwrap();
        // After the commit the quota is still exact.
        assert!(state.set(&mut pending, "k00", &big).is_err());
        state.delete(&mut pending, "k01").unwrap();
        state.set(&mut pending, "k00", &big).unwrap();
        state.commit(&mut pending).unwrap();
        assert_eq!(state.entries().unwrap().len(), fit);
        // The usage kept in step with commits is what a fresh scan finds.
        let scanned = db.rule("r").unwrap().scan_usage().unwrap();
        assert_eq!(
            scanned,
            (fit - 1) * (3 + MAX_VALUE_BYTES) + "one-more".len() + MAX_VALUE_BYTES
        );
        assert_eq!(*state.used.lock().unwrap(), scanned);
    }
}
