//! The metrics a rule asked for in `configure`, and the sample view it gets.

use std::sync::Arc;

use crate::runtime::Sample;

/// Metric-name patterns: exact names, or prefixes ending in `*`. No pattern
/// means every metric.
#[derive(Debug, Clone, Default)]
pub struct Subscription {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Subscription {
    /// Parses the patterns a rule returned from `configure`.
    pub fn new(patterns: &[String]) -> Self {
        let mut subscription = Subscription::default();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some(prefix) => subscription.prefixes.push(prefix.to_string()),
                None => subscription.exact.push(pattern.clone()),
            }
        }
        subscription
    }

    /// True when the rule wants every metric.
    pub fn is_all(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether the rule wants metrics called `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.is_all()
            || self.exact.iter().any(|exact| exact == name)
            || self
                .prefixes
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()))
    }

    /// The sample as this rule sees it: only the metrics it asked for.
    /// Shares the sample when nothing needs dropping.
    pub fn view(&self, sample: &Arc<Sample>) -> Arc<Sample> {
        if sample
            .metrics
            .iter()
            .all(|metric| self.matches(&metric.name))
        {
            return sample.clone();
        }
        Arc::new(Sample {
            target: sample.target.clone(),
            timestamp_ms: sample.timestamp_ms,
            health: sample.health.clone(),
            metrics: sample
                .metrics
                .iter()
                .filter(|metric| self.matches(&metric.name))
                .cloned()
                .collect(),
            labels: sample.labels.clone(),
            recent_actions: sample.recent_actions.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Health, Metric};

    fn sample(names: &[&str]) -> Arc<Sample> {
        Arc::new(Sample {
            target: "t".into(),
            timestamp_ms: 1,
            health: Health::Up,
            metrics: names
                .iter()
                .map(|name| Metric {
                    name: name.to_string(),
                    value: 1.0,
                    labels: vec![],
                })
                .collect(),
            labels: vec![],
            recent_actions: vec![],
        })
    }

    #[test]
    fn rules_see_only_what_they_asked_for() {
        let subscription = Subscription::new(&["cpu_usage".into(), "disk.*".into()]);
        let view = subscription.view(&sample(&[
            "cpu_usage",
            "cpu_usage_max",
            "disk.root",
            "memory_usage",
        ]));
        let names: Vec<&str> = view.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["cpu_usage", "disk.root"]);
    }

    #[test]
    fn no_patterns_share_the_sample() {
        let all = Subscription::new(&[]);
        let original = sample(&["a", "b"]);
        assert!(Arc::ptr_eq(&all.view(&original), &original));
    }
}
