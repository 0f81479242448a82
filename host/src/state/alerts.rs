//! The tracked alerts: (rule, target, fingerprint) -> the alert as JSON,
//! written by `alerts::Tracker` when an alert appears, fires or ends, so a
//! restart neither re-fires nor forgets an alert. Each alert is its own
//! row, so a transition writes only the alerts it changed, not the whole
//! (rule, target) group: a group of a thousand alerts in which one fires
//! costs one row. The JSON is the tracker's; this table only keeps it.
//!
//! Data directories written before this layout keep whole groups in
//! `alert_groups`; [`StateDb::take_legacy_alert_groups`] hands them over
//! once, for the tracker to save in the new table.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{StateDb, StateError};

/// (rule, target, fingerprint) -> one tracked alert, as JSON.
pub(super) const ALERTS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("alerts");
/// The old layout: (rule, target) -> the whole group, as JSON. Read once
/// and dropped; never created.
const ALERT_GROUPS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("alert_groups");

/// A saved alert: (rule, target, fingerprint, JSON).
pub type SavedAlert = (String, String, u64, Vec<u8>);

/// What changed in one (rule, target) group, as [`StateDb::save_alerts`]
/// takes it: for saving several groups' changes in one transaction
/// ([`StateDb::save_alert_changes`]).
#[derive(Debug, Clone)]
pub struct AlertChanges {
    /// The rule.
    pub rule: String,
    /// The target.
    pub target: String,
    /// (fingerprint, JSON) to write.
    pub upserts: Vec<(u64, Vec<u8>)>,
    /// Fingerprints to delete.
    pub removed: Vec<u64>,
}

impl StateDb {
    /// Saves what changed in one (rule, target) group, in one transaction:
    /// `upserts` are (fingerprint, JSON) to write, `removed` fingerprints to
    /// delete.
    pub fn save_alerts(
        &self,
        rule: &str,
        target: &str,
        upserts: &[(u64, Vec<u8>)],
        removed: &[u64],
    ) -> Result<(), StateError> {
        if upserts.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ALERTS)?;
            for (fingerprint, bytes) in upserts {
                table.insert((rule, target, *fingerprint), bytes.as_slice())?;
            }
            for fingerprint in removed {
                table.remove((rule, target, *fingerprint))?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Saves the changes of several groups, in order, in one transaction:
    /// one durable commit for a whole batch of transitions instead of one
    /// each. All or nothing, like [`StateDb::save_alerts`].
    pub fn save_alert_changes(&self, changes: &[AlertChanges]) -> Result<(), StateError> {
        if changes
            .iter()
            .all(|group| group.upserts.is_empty() && group.removed.is_empty())
        {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ALERTS)?;
            for group in changes {
                let (rule, target) = (group.rule.as_str(), group.target.as_str());
                for (fingerprint, bytes) in &group.upserts {
                    table.insert((rule, target, *fingerprint), bytes.as_slice())?;
                }
                for fingerprint in &group.removed {
                    table.remove((rule, target, *fingerprint))?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every saved alert.
    pub fn saved_alerts(&self) -> Result<Vec<SavedAlert>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ALERTS)?;
        let mut alerts = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (rule, target, fingerprint) = key.value();
            alerts.push((
                rule.to_string(),
                target.to_string(),
                fingerprint,
                value.value().to_vec(),
            ));
        }
        Ok(alerts)
    }

    /// The whole groups an older version saved, (rule, target, JSON), with
    /// their table deleted; nothing when there is none. The caller saves
    /// them again with [`save_alerts`](Self::save_alerts); if it fails to,
    /// a restart forgets those alerts, as it did when a group did not parse.
    pub fn take_legacy_alert_groups(&self) -> Result<Vec<(String, String, Vec<u8>)>, StateError> {
        // Looked for in a read transaction: a write one would create it.
        let mut groups = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let table = match txn.open_table(ALERT_GROUPS) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(groups),
                Err(error) => return Err(error.into()),
            };
            for entry in table.iter()? {
                let (key, value) = entry?;
                let (rule, target) = key.value();
                groups.push((rule.to_string(), target.to_string(), value.value().to_vec()));
            }
        }
        let txn = self.db.begin_write()?;
        txn.delete_table(ALERT_GROUPS)?;
        txn.commit()?;
        Ok(groups)
    }

    #[cfg(test)]
    pub(crate) fn save_legacy_alert_group(
        &self,
        rule: &str,
        target: &str,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write()?;
        txn.open_table(ALERT_GROUPS)?
            .insert((rule, target), bytes)?;
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_saved_and_removed_one_by_one() {
        let db = StateDb::in_memory().unwrap();
        db.save_alerts("r", "a", &[(1, b"one".to_vec()), (2, b"two".to_vec())], &[])
            .unwrap();
        db.save_alerts("r", "b", &[(1, b"other".to_vec())], &[])
            .unwrap();
        db.save_alerts("r", "a", &[(2, b"TWO".to_vec())], &[1])
            .unwrap();
        let saved = db.saved_alerts().unwrap();
        assert_eq!(
            saved,
            [
                ("r".into(), "a".into(), 2, b"TWO".to_vec()),
                ("r".into(), "b".into(), 1, b"other".to_vec())
            ]
        );
    }

    #[test]
    fn legacy_groups_are_handed_over_once() {
        let db = StateDb::in_memory().unwrap();
        assert!(db.take_legacy_alert_groups().unwrap().is_empty());
        db.save_legacy_alert_group("r", "a", b"{}").unwrap();
        assert_eq!(
            db.take_legacy_alert_groups().unwrap(),
            [("r".into(), "a".into(), b"{}".to_vec())]
        );
        assert!(db.take_legacy_alert_groups().unwrap().is_empty());
    }
}
