//! Rule key-value state: each rule sees only its own namespace, a call's
//! writes are buffered ([`PendingWrites`]) and committed in one transaction
//! when it returns, and sizes are capped per key, per value and per rule.

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
/// Most bytes (keys and values) one rule may keep.
pub const MAX_RULE_BYTES: usize = 1024 * 1024;

/// Writes buffered during one call: `None` deletes the key.
pub type PendingWrites = BTreeMap<String, Option<Vec<u8>>>;

impl StateDb {
    /// The state of one rule.
    pub fn rule(&self, namespace: &str) -> Result<RuleState, StateError> {
        let state = RuleState {
            db: self.db.clone(),
            namespace: namespace.into(),
            used: Arc::new(Mutex::new(0)),
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
}

impl RuleState {
    /// Reads a key, looking at the call's pending writes first.
    pub fn get(&self, pending: &PendingWrites, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(value) = pending.get(key) {
            return Ok(value.clone());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TABLE)?;
        Ok(table
            .get((&*self.namespace, key))?
            .map(|value| value.value().to_vec()))
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
        let after = self
            .usage_after(pending)
            .map_err(|error| error.to_string())?
            .saturating_sub(self.stored_size(pending, key).unwrap_or(0))
            + key.len()
            + value.len();
        if after > MAX_RULE_BYTES {
            return Err(format!(
                "storing `{key}` would bring the rule's state to {after} bytes; the quota is \
                 {MAX_RULE_BYTES} (delete keys you no longer need)"
            ));
        }
        pending.insert(key.to_string(), Some(value.to_vec()));
        Ok(())
    }

    /// Commits a call's writes in one transaction.
    pub fn commit(&self, pending: &mut PendingWrites) -> Result<(), StateError> {
        if pending.is_empty() {
            return Ok(());
        }
        let usage = self.usage_after(pending)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            for (key, value) in pending.iter() {
                match value {
                    Some(value) => {
                        table.insert((&*self.namespace, key.as_str()), value.as_slice())?
                    }
                    None => table.remove((&*self.namespace, key.as_str()))?,
                };
            }
        }
        txn.commit()?;
        pending.clear();
        *self.used.lock().expect("usage lock") = usage;
        Ok(())
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

    /// The size `key` has now (pending or stored), if it exists.
    fn stored_size(&self, pending: &PendingWrites, key: &str) -> Option<usize> {
        self.get(pending, key)
            .ok()
            .flatten()
            .map(|value| key.len() + value.len())
    }

    /// Usage once `pending` is committed.
    fn usage_after(&self, pending: &PendingWrites) -> Result<usize, StateError> {
        let mut usage = *self.used.lock().expect("usage lock");
        for (key, value) in pending {
            let stored = self.get(&PendingWrites::new(), key)?;
            usage -= stored.map_or(0, |old| key.len() + old.len());
            usage += value.as_ref().map_or(0, |new| key.len() + new.len());
        }
        Ok(usage)
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
            let mut pending = PendingWrites::new();
            state.set(&mut pending, "n", b"41").unwrap();
            assert_eq!(
                state.get(&pending, "n").unwrap().as_deref(),
                Some(&b"41"[..])
            );
            assert_eq!(state.get(&PendingWrites::new(), "n").unwrap(), None);
            state.commit(&mut pending).unwrap();
            assert!(pending.is_empty());
        }
        let db = StateDb::open(&path).unwrap();
        let state = db.rule("counter").unwrap();
        let read = state.get(&PendingWrites::new(), "n").unwrap();
        assert_eq!(read.as_deref(), Some(&b"41"[..]));
        assert_eq!(db.rule("other").unwrap().entries().unwrap(), vec![]);
    }

    #[test]
    fn limits_are_enforced_with_a_reason() {
        let db = StateDb::in_memory().unwrap();
        let state = db.rule("big").unwrap();
        let mut pending = PendingWrites::new();
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
}
