//! The alert groups: (rule, target) -> the group as JSON, written by
//! `alerts::Tracker` whenever an alert in it starts, fires or ends, so a
//! restart neither re-fires nor forgets an alert. The JSON is the tracker's;
//! this table only keeps it.

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{StateDb, StateError};

/// (rule, target) -> the alert group, as JSON.
pub(super) const ALERT_GROUPS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("alert_groups");

impl StateDb {
    /// Stores one (rule, target) alert group; `None` removes it.
    pub fn save_alert_group(
        &self,
        rule: &str,
        target: &str,
        group: Option<&[u8]>,
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ALERT_GROUPS)?;
            match group {
                Some(bytes) => table.insert((rule, target), bytes)?,
                None => table.remove((rule, target))?,
            };
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored alert group: (rule, target, JSON).
    pub fn alert_groups(&self) -> Result<Vec<(String, String, Vec<u8>)>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ALERT_GROUPS)?;
        let mut groups = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (rule, target) = key.value();
            groups.push((rule.to_string(), target.to_string(), value.value().to_vec()));
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_group_is_listed_until_removed() {
        let db = StateDb::in_memory().unwrap();
        db.save_alert_group("threshold", "web-01", Some(b"{}"))
            .unwrap();
        assert_eq!(
            db.alert_groups().unwrap(),
            [("threshold".into(), "web-01".into(), b"{}".to_vec())]
        );
        db.save_alert_group("threshold", "web-01", None).unwrap();
        assert!(db.alert_groups().unwrap().is_empty());
    }
}
