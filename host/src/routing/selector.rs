//! Which targets a rule sees: target names or `*` globs, and labels that
//! must all match. The router offers a rule only the samples its selector
//! takes, so a rule never receives a target it was not given (the base a
//! tenant's grant will build on).

use std::collections::BTreeMap;
use std::fmt;

use crate::runtime::Sample;

/// A target name, or a pattern where `*` stands for any run of characters
/// (`web-*`, `*-db`, `eu-*-01`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    /// Checks the pattern: not empty, printable.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty target pattern matches nothing\nhint: write a target name, or a glob such as \"web-*\"".into());
        }
        if text.chars().any(char::is_control) {
            return Err(format!("target pattern {text:?} holds a control character"));
        }
        Ok(NamePattern(text.to_string()))
    }

    /// Whether `name` matches: `*` is any run of characters (none too),
    /// everything else matches itself.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*`: the whole name.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl NamePattern {
    /// Whether every name `other` matches is matched by this pattern too,
    /// as far as can be told without enumerating names: this pattern
    /// matches `other`'s text with its `*`s taken literally. That is sound
    /// (each `*` of `other` then falls inside a `*` of this pattern, which
    /// can take whatever it stands for) but not complete: `a*` is not seen
    /// to cover `ab*` ∪ … across several patterns. A tenant's rule is held
    /// to its grant with it, so a doubt refuses.
    pub fn covers(&self, other: &NamePattern) -> bool {
        self.matches(&other.0)
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The targets a rule sees. The default sees every target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSelector {
    /// Any of these names; none: any name.
    pub names: Vec<NamePattern>,
    /// All of these labels, with these values.
    pub labels: BTreeMap<String, String>,
}

impl TargetSelector {
    /// Whether the rule sees every target.
    pub fn is_all(&self) -> bool {
        self.names.is_empty() && self.labels.is_empty()
    }

    /// Whether the rule sees `sample`'s target.
    pub fn selects(&self, sample: &Sample) -> bool {
        (self.names.is_empty() || self.names.iter().any(|p| p.matches(&sample.target)))
            && self.labels.iter().all(|(name, value)| {
                sample
                    .labels
                    .iter()
                    .any(|label| label.name == *name && label.value == *value)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_covers_the_narrower_ones_only() {
        let p = |text: &str| NamePattern::new(text).unwrap();
        for (wide, narrow, covers) in [
            ("web-*", "web-01", true),
            ("web-*", "web-*-01", true),
            ("web-*", "web-*", true),
            ("*", "db-*", true),
            ("web-*", "*", false),
            ("web-*", "db-01", false),
            ("*-01", "web-*", false),
            ("web-01", "web-*", false),
            ("a*b", "a*", false),
        ] {
            assert_eq!(p(wide).covers(&p(narrow)), covers, "{wide} covers {narrow}");
        }
    }
    use crate::runtime::Label;

    fn pattern(text: &str) -> NamePattern {
        NamePattern::new(text).unwrap()
    }

    #[test]
    fn a_glob_matches_runs_of_any_characters() {
        let cases = [
            ("web-01", "web-01", true),
            ("web-01", "web-010", false),
            ("web-*", "web-01", true),
            ("web-*", "web-", true),
            ("web-*", "db-01", false),
            ("*-db", "eu-db", true),
            ("*-db", "eu-db-2", false),
            ("eu-*-01", "eu-web-01", true),
            ("eu-*-01", "eu-01", false),
            ("*", "anything", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("*a*", "bab", true),
        ];
        for (glob, name, expected) in cases {
            assert_eq!(pattern(glob).matches(name), expected, "{glob} ~ {name}");
        }
        assert!(NamePattern::new("").is_err());
    }

    #[test]
    fn a_selector_takes_any_name_and_every_label() {
        let sample = |target: &str, team: &str| Sample {
            target: target.into(),
            timestamp_ms: 0,
            health: crate::runtime::Health::Up,
            metrics: vec![],
            labels: vec![Label {
                name: "team".into(),
                value: team.into(),
            }],
            recent_actions: vec![],
        };
        assert!(TargetSelector::default().selects(&sample("x", "y")));
        let selector = TargetSelector {
            names: vec![pattern("web-*"), pattern("db-01")],
            labels: BTreeMap::from([("team".to_string(), "payments".to_string())]),
        };
        assert!(selector.selects(&sample("web-07", "payments")));
        assert!(selector.selects(&sample("db-01", "payments")));
        assert!(!selector.selects(&sample("db-02", "payments")));
        assert!(!selector.selects(&sample("web-07", "search")));
    }
}
