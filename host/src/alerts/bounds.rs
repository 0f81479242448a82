//! How much alert state a rule may make the host keep.
//!
//! A verdict carries at most `max_alerts` alerts (the runtime checks that),
//! but nothing in one verdict stops a rule from reporting alerts under fresh
//! names on every sample: with `keep-firing-for`, each of them would stay
//! tracked, in memory and in the data directory, for as long as the rule
//! asked. So the tracker counts the alerts it keeps (pending and firing)
//! per (rule, target) and per rule, and refuses a verdict that would take
//! either count past its limit ([`TooManyAlerts`]). A refused verdict is
//! treated like a failed call: the alerts already tracked keep their state
//! and the new ones are not tracked.
//!
//! The durations a rule returns are capped too ([`MAX_HOLD`]): an alert
//! that waits 10 years for its `for`, or keeps firing for 10 years, is an
//! alert the host tracks for 10 years.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::names::{RuleName, TargetName};

/// Default for `max_active_alerts_per_target`.
pub const DEFAULT_MAX_PER_TARGET: usize = 1_000;
/// Default for `max_active_alerts`.
pub const DEFAULT_MAX_PER_RULE: usize = 10_000;
/// The longest `for` or `keep-firing-for` the host honours; longer ones are
/// cut to it. A day: a condition that must hold longer than that before
/// anyone hears of it is a report, not an alert.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// [`MAX_HOLD`] in milliseconds, as the lifecycle counts.
pub const MAX_HOLD_MS: u64 = MAX_HOLD.as_millis() as u64;

/// How many alerts (pending and firing) the host tracks for one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertLimits {
    /// Most alerts for one (rule, target): `max_active_alerts_per_target`.
    pub per_target: usize,
    /// Most alerts for the rule over all its targets: `max_active_alerts`.
    pub per_rule: usize,
}

impl Default for AlertLimits {
    fn default() -> Self {
        AlertLimits {
            per_target: DEFAULT_MAX_PER_TARGET,
            per_rule: DEFAULT_MAX_PER_RULE,
        }
    }
}

/// Why a verdict's alerts were not tracked. The message names the limit
/// and its config key, and hints at the usual cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooManyAlerts {
    /// One (rule, target) would have too many.
    #[error(
        "rule `{rule}` would have {would} active alerts for target `{target}`, more than its limit of {limit} (`max_active_alerts_per_target`); the verdict is refused: the alerts already tracked keep their state and the new ones are not tracked\nhint: does the rule put a changing value (a time, a counter, an id) in an alert's name or labels? if it really has that many, raise `max_active_alerts_per_target` in its [[rules]] table"
    )]
    PerTarget {
        /// The rule.
        rule: RuleName,
        /// The target.
        target: TargetName,
        /// How many it would have had.
        would: usize,
        /// The limit.
        limit: usize,
    },
    /// The rule would have too many over all its targets.
    #[error(
        "rule `{rule}` would have {would} active alerts over all its targets (this verdict for target `{target}`), more than its limit of {limit} (`max_active_alerts`); the verdict is refused: the alerts already tracked keep their state and the new ones are not tracked\nhint: does the rule put a changing value (a time, a counter, an id) in an alert's name or labels? if it really has that many, raise `max_active_alerts` in its [[rules]] table"
    )]
    PerRule {
        /// The rule.
        rule: RuleName,
        /// The target whose verdict was refused.
        target: TargetName,
        /// How many it would have had.
        would: usize,
        /// The limit.
        limit: usize,
    },
}

impl TooManyAlerts {
    /// The config key of the limit that was hit.
    pub fn key(&self) -> &'static str {
        match self {
            TooManyAlerts::PerTarget { .. } => "max_active_alerts_per_target",
            TooManyAlerts::PerRule { .. } => "max_active_alerts",
        }
    }
}

/// Each rule's [`AlertLimits`], as the config sets them. A rule the config
/// does not name (a file added to a rules folder since) gets its folder's
/// limits, else the defaults.
#[derive(Debug, Clone, Default)]
pub struct RuleAlertLimits {
    by_rule: HashMap<RuleName, AlertLimits>,
    dirs: Vec<(PathBuf, AlertLimits)>,
}

impl RuleAlertLimits {
    /// Sets `rule`'s limits.
    pub fn set(&mut self, rule: RuleName, limits: AlertLimits) {
        self.by_rule.insert(rule, limits);
    }

    /// Rules in `dir` (files `<rule>.wasm`) get `limits` unless set by name.
    pub fn set_dir(&mut self, dir: PathBuf, limits: AlertLimits) {
        self.dirs.push((dir, limits));
    }

    /// `rule`'s limits. A rule not known by name is looked up once in the
    /// rules folders and remembered.
    pub fn get(&mut self, rule: &RuleName) -> AlertLimits {
        if let Some(limits) = self.by_rule.get(rule) {
            return *limits;
        }
        let file = format!("{rule}.wasm");
        let limits = self
            .dirs
            .iter()
            .find(|(dir, _)| dir.join(&file).is_file())
            .map_or_else(AlertLimits::default, |(_, limits)| *limits);
        self.by_rule.insert(rule.clone(), limits);
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_gets_its_own_limits_else_its_folders_else_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("later.wasm"), b"").unwrap();
        let mut limits = RuleAlertLimits::default();
        let small = AlertLimits {
            per_target: 5,
            per_rule: 10,
        };
        let folder = AlertLimits {
            per_target: 7,
            per_rule: 70,
        };
        limits.set("named".into(), small);
        limits.set_dir(dir.path().to_path_buf(), folder);
        assert_eq!(limits.get(&"named".into()), small);
        assert_eq!(limits.get(&"later".into()), folder);
        assert_eq!(limits.get(&"other".into()), AlertLimits::default());
    }

    #[test]
    fn the_message_names_the_limit_and_its_key() {
        let error = TooManyAlerts::PerTarget {
            rule: "churn".into(),
            target: "web-01".into(),
            would: 1200,
            limit: 1000,
        };
        let text = error.to_string();
        assert!(text.starts_with("rule `churn` would have 1200 active alerts for target `web-01`, more than its limit of 1000 (`max_active_alerts_per_target`)"), "{text}");
        assert!(text.contains("\nhint: "), "{text}");
        assert_eq!(error.key(), "max_active_alerts_per_target");
    }
}
