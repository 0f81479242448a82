//! Refusals are counted, not written one by one.
//!
//! A rule may ask for an action on every sample, and the gate may refuse it
//! on every sample: without a bound, each refusal is one more audit record,
//! and a rule alone decides how fast the audit log grows. Two rules, in
//! this order, decide where a refusal goes ([`RefusalLedger::plan`]):
//!
//! 1. **The same refusal again** (same rule, target, action, params, and
//!    the same refusal reason) within [`WINDOW`] of its record adds one to
//!    that record's `repeats` ([`Write::Repeat`]). This is the common case
//!    (a rule asking again while a cooldown runs, or for an action it may
//!    not use), and it keeps every distinct refusal visible with its count.
//! 2. **Otherwise**, at most `refusal_records_per_minute` new refusal
//!    records per rule per [`WINDOW`] ([`Write::Record`]); past that, the
//!    refusals of that rule in that window are counted in one summary
//!    record ([`Write::Summary`]). This bounds a rule that varies its params
//!    on every request, which the first rule alone would not.
//!
//! So a rule costs at most `refusal_records_per_minute + 1` refusal records
//! a minute however it asks, and every refusal is still counted. Decisions
//! to run are never aggregated: each run has its own record.
//!
//! No clock and no I/O: the time is passed in, and the caller writes. The
//! ledger lives in memory: after a restart, the next refusal starts a new
//! record (a restart a minute would cost one record a minute more).

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long a refusal record collects repeats, and the period of the
/// per-rule budget.
pub const WINDOW: Duration = Duration::from_secs(60);
const WINDOW_MS: u64 = WINDOW.as_millis() as u64;
/// Default for `[audit] refusal_records_per_minute`.
pub const DEFAULT_RECORDS_PER_MINUTE: u32 = 60;

/// What makes two refusals the same: a hash of rule, target, action,
/// params and the refusal's code. Not its message (a cooldown's says how
/// long is left) nor the rule's reason (free text a rule may vary): the
/// record keeps the first of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefusalKey([u8; 16]);

impl RefusalKey {
    /// Hashes the fields; each is delimited, so ("ab", "") is not ("a", "b").
    pub fn of<'a>(
        rule: &str,
        target: &str,
        action: &str,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        code: &str,
    ) -> Self {
        let mut hasher = Sha256::new();
        for part in [rule, target, action] {
            hasher.update(part.len().to_le_bytes());
            hasher.update(part.as_bytes());
        }
        for (name, value) in params {
            for part in [name, value] {
                hasher.update(part.len().to_le_bytes());
                hasher.update(part.as_bytes());
            }
        }
        hasher.update(code.len().to_le_bytes());
        hasher.update(code.as_bytes());
        let digest = hasher.finalize();
        RefusalKey(digest[..16].try_into().expect("16 bytes"))
    }
}

/// Where one refusal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A record of its own; then tell [`RefusalLedger::recorded`] its id.
    Record,
    /// One more repeat of this record.
    Repeat(u64),
    /// Counted in the rule's summary record for this window: this one, or
    /// (`None`) a new one; then tell [`RefusalLedger::summarized`] its id.
    Summary(Option<u64>),
}

/// The refusals of the last [`WINDOW`]: which record each went to, and
/// each rule's budget. Bounded: at most `per_minute` keys per rule per
/// window, dropped once their window is over.
#[derive(Debug)]
pub struct RefusalLedger {
    per_minute: u32,
    /// Refusal -> (its record, when that was written).
    records: HashMap<RefusalKey, (u64, u64)>,
    windows: HashMap<String, RuleWindow>,
    swept_ms: u64,
}

#[derive(Debug)]
struct RuleWindow {
    start_ms: u64,
    records: u32,
    summary: Option<u64>,
}

impl RefusalLedger {
    /// At most `per_minute` refusal records per rule per [`WINDOW`].
    pub fn new(per_minute: u32) -> Self {
        RefusalLedger {
            per_minute,
            records: HashMap::new(),
            windows: HashMap::new(),
            swept_ms: 0,
        }
    }

    /// Where a refusal of `rule`'s request, `key`, at `now_ms` goes.
    pub fn plan(&mut self, rule: &str, key: RefusalKey, now_ms: u64) -> Write {
        self.sweep(now_ms);
        if let Some(&(id, since_ms)) = self.records.get(&key)
            && now_ms < since_ms.saturating_add(WINDOW_MS)
        {
            return Write::Repeat(id);
        }
        let window = self.windows.entry(rule.to_string()).or_insert(RuleWindow {
            start_ms: now_ms,
            records: 0,
            summary: None,
        });
        if now_ms >= window.start_ms.saturating_add(WINDOW_MS) {
            *window = RuleWindow {
                start_ms: now_ms,
                records: 0,
                summary: None,
            };
        }
        if window.records < self.per_minute {
            window.records += 1;
            Write::Record
        } else {
            Write::Summary(window.summary)
        }
    }

    /// The refusal `key` was written as record `id` at `now_ms`: repeats
    /// within [`WINDOW`] go there.
    pub fn recorded(&mut self, key: RefusalKey, id: u64, now_ms: u64) {
        self.records.insert(key, (id, now_ms));
    }

    /// `rule`'s summary record for this window is `id`.
    pub fn summarized(&mut self, rule: &str, id: u64) {
        if let Some(window) = self.windows.get_mut(rule) {
            window.summary = Some(id);
        }
    }

    /// Record `id` is gone (retention deleted it): nothing more goes to it.
    pub fn lost(&mut self, id: u64) {
        self.records.retain(|_, (record, _)| *record != id);
        for window in self.windows.values_mut() {
            if window.summary == Some(id) {
                window.summary = None;
            }
        }
    }

    /// Drops what no longer matters, at most once a window.
    fn sweep(&mut self, now_ms: u64) {
        if now_ms < self.swept_ms.saturating_add(WINDOW_MS) {
            return;
        }
        let live = |since_ms: u64| now_ms < since_ms.saturating_add(WINDOW_MS);
        self.records.retain(|_, (_, since_ms)| live(*since_ms));
        self.windows.retain(|_, window| live(window.start_ms));
        self.swept_ms = now_ms;
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(target: &str, value: &str) -> RefusalKey {
        RefusalKey::of("r", target, "restart", [("service", value)], "cooldown")
    }

    /// Plays refusals through a ledger the way the audit log does, with
    /// ids from 1; returns each one's write.
    fn play(ledger: &mut RefusalLedger, refusals: &[(&str, RefusalKey, u64)]) -> Vec<Write> {
        let mut next = 1;
        let mut writes = Vec::new();
        for &(rule, key, now) in refusals {
            let write = ledger.plan(rule, key, now);
            match write {
                Write::Record => {
                    ledger.recorded(key, next, now);
                    next += 1;
                }
                Write::Summary(None) => {
                    ledger.summarized(rule, next);
                    next += 1;
                }
                Write::Repeat(_) | Write::Summary(Some(_)) => {}
            }
            writes.push(write);
        }
        writes
    }

    #[test]
    fn the_same_refusal_repeats_its_record_within_the_window() {
        let mut ledger = RefusalLedger::new(60);
        let same = key("a", "nginx");
        let writes = play(
            &mut ledger,
            &[
                ("r", same, 0),
                ("r", same, 1_000),
                ("r", same, 59_999),
                ("r", same, 60_000),
                ("r", same, 60_001),
            ],
        );
        assert_eq!(
            writes,
            [
                Write::Record,
                Write::Repeat(1),
                Write::Repeat(1),
                Write::Record,
                Write::Repeat(2)
            ]
        );
    }

    #[test]
    fn every_field_of_the_request_and_the_reason_tells_refusals_apart() {
        let base = key("a", "nginx");
        assert_ne!(base, key("b", "nginx"));
        assert_ne!(base, key("a", "web"));
        assert_ne!(
            base,
            RefusalKey::of("r", "a", "restart", [("service", "nginx")], "limit")
        );
        assert_ne!(
            base,
            RefusalKey::of("q", "a", "restart", [("service", "nginx")], "cooldown")
        );
        assert_ne!(
            RefusalKey::of("ab", "", "x", [], ""),
            RefusalKey::of("a", "b", "x", [], "")
        );
    }

    #[test]
    fn past_the_budget_a_rule_s_refusals_go_to_one_summary_a_window() {
        let mut ledger = RefusalLedger::new(2);
        let fresh: Vec<RefusalKey> = (0..6).map(|n| key("a", &n.to_string())).collect();
        let writes = play(
            &mut ledger,
            &[
                ("r", fresh[0], 0),
                ("r", fresh[1], 1),
                ("r", fresh[2], 2),
                ("r", fresh[3], 3),
                ("other", fresh[4], 4),  // another rule has its own budget
                ("r", fresh[0], 5),      // a repeat costs no budget
                ("r", fresh[5], 60_000), // a new window
            ],
        );
        assert_eq!(
            writes,
            [
                Write::Record,
                Write::Record,
                Write::Summary(None),
                Write::Summary(Some(3)),
                Write::Record,
                Write::Repeat(1),
                Write::Record,
            ]
        );
    }

    #[test]
    fn the_ledger_forgets_what_is_past_its_window_and_lost_records() {
        let mut ledger = RefusalLedger::new(1_000);
        for n in 0..100 {
            let write = ledger.plan("r", key("a", &n.to_string()), n);
            assert_eq!(write, Write::Record);
            ledger.recorded(key("a", &n.to_string()), n + 1, n);
        }
        assert_eq!(ledger.keys(), 100);
        ledger.lost(1);
        assert_eq!(ledger.plan("r", key("a", "0"), 200), Write::Record);
        ledger.plan("r", key("a", "new"), 60_100);
        assert_eq!(ledger.keys(), 0);
    }
}
