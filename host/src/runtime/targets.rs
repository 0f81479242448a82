//! What one live instance was told about each target: the host's half of
//! the interned series of contract 0.3.0.
//!
//! Why: sending the whole sample on every call cost one allocation in the
//! rule per string and list, 5 µs a call for 20 metrics (BENCHMARKS.md,
//! "Per-call cost"). Now a target's name, labels and series cross once, in
//! `define-target`, and each `evaluate` carries a `list<f64>`.
//!
//! Guarantees: a sample is evaluated exactly as if it had crossed whole. Its
//! target is (re)defined before the call whenever its labels, or its series
//! (names, labels, order), differ from the last definition this instance
//! got; the comparison is exact (no hash that could collide), and costs a
//! few string comparisons per metric on the steady path, where nothing is
//! allocated. The table lives and dies with the instance's store: a rebuilt
//! instance starts empty, so every target is defined again. It holds one
//! entry per target the instance has seen and not forgotten, and reuses the
//! ids of forgotten ones, so it is bounded by the targets the rule sees.

use std::collections::HashMap;

use super::bindings::vigil::rules::types::Series;
use super::{Health, Label, Sample};

/// A target as the rule last had it defined.
pub(super) struct Defined {
    pub(super) id: u32,
    pub(super) labels: Vec<Label>,
    pub(super) series: Vec<Series>,
}

/// Every target one instance has been told about, by name.
#[derive(Default)]
pub(super) struct Targets {
    by_name: HashMap<String, Defined>,
    /// Ids of forgotten targets, given out again before new ones.
    free: Vec<u32>,
    next: u32,
    /// The values of the call under way, kept to save an allocation a call.
    values: Vec<f64>,
}

/// What has to happen before `sample` can be evaluated.
pub(super) enum Lookup<'a> {
    /// The rule knows the target as it is: evaluate with this id.
    Known(u32),
    /// Call `define-target` with this definition first.
    Define(&'a Defined),
}

impl Targets {
    /// The id of `sample`'s target, and whether the rule must be told (again)
    /// what its labels and series are. The table records the new
    /// definition at once: if the call fails, the instance and this table
    /// are thrown away together.
    pub(super) fn lookup(&mut self, sample: &Sample) -> Lookup<'_> {
        let up = matches!(sample.health, Health::Up);
        let same = self.by_name.get(&sample.target).map(|defined| {
            // A down sample has no readings: it keeps the series it had.
            defined.labels == sample.labels && (!up || same_series(&defined.series, sample))
        });
        match same {
            Some(true) => Lookup::Known(self.by_name[&sample.target].id),
            Some(false) => {
                let defined = self
                    .by_name
                    .get_mut(&sample.target)
                    .expect("looked up above");
                defined.labels.clone_from(&sample.labels);
                if up {
                    defined.series = series_of(sample);
                }
                Lookup::Define(defined)
            }
            None => {
                let id = self.free.pop().unwrap_or_else(|| {
                    let id = self.next;
                    self.next += 1;
                    id
                });
                let defined = Defined {
                    id,
                    labels: sample.labels.clone(),
                    series: series_of(sample),
                };
                Lookup::Define(self.by_name.entry(sample.target.clone()).or_insert(defined))
            }
        }
    }

    /// The values of `sample` in the order of its target's series (none for
    /// a down sample).
    pub(super) fn values(&mut self, sample: &Sample) -> &[f64] {
        self.values.clear();
        if matches!(sample.health, Health::Up) {
            self.values
                .extend(sample.metrics.iter().map(|metric| metric.value));
        }
        &self.values
    }

    /// Removes `target`; returns the id the rule knew it by, if it knew it.
    pub(super) fn forget(&mut self, target: &str) -> Option<u32> {
        let defined = self.by_name.remove(target)?;
        self.free.push(defined.id);
        Some(defined.id)
    }

    /// Targets defined now.
    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }
}

fn same_series(series: &[Series], sample: &Sample) -> bool {
    series.len() == sample.metrics.len()
        && series
            .iter()
            .zip(&sample.metrics)
            .all(|(series, metric)| series.name == metric.name && series.labels == metric.labels)
}

fn series_of(sample: &Sample) -> Vec<Series> {
    sample
        .metrics
        .iter()
        .map(|metric| Series {
            name: metric.name.clone(),
            labels: metric.labels.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Metric;

    fn sample(target: &str, names: &[&str]) -> Sample {
        let metrics = names
            .iter()
            .map(|name| Metric {
                name: name.to_string(),
                value: 1.0,
                labels: vec![],
            })
            .collect();
        crate::sources::make_sample(target, &[], Ok(metrics), 1)
    }

    fn defined_id(lookup: Lookup<'_>) -> Option<u32> {
        match lookup {
            Lookup::Define(defined) => Some(defined.id),
            Lookup::Known(_) => None,
        }
    }

    #[test]
    fn a_target_is_defined_once_then_again_when_its_series_change() {
        let mut targets = Targets::default();
        let a = sample("a", &["cpu", "mem"]);
        assert_eq!(defined_id(targets.lookup(&a)), Some(0));
        assert!(matches!(targets.lookup(&a), Lookup::Known(0)));
        // Another order is another definition.
        assert_eq!(
            defined_id(targets.lookup(&sample("a", &["mem", "cpu"]))),
            Some(0)
        );
        // A down sample keeps the series it had.
        let down = crate::sources::make_sample("a", &[], Err("refused".into()), 2);
        assert!(matches!(targets.lookup(&down), Lookup::Known(0)));
        assert!(targets.values(&down).is_empty());
        // New target labels are a new definition too.
        let mut labelled = sample("a", &["mem", "cpu"]);
        labelled.labels.push(Label {
            name: "env".into(),
            value: "prod".into(),
        });
        assert_eq!(defined_id(targets.lookup(&labelled)), Some(0));
        assert_eq!(defined_id(targets.lookup(&sample("b", &[]))), Some(1));
        assert_eq!(targets.len(), 2);
    }

    #[test]
    fn forgotten_ids_are_reused_so_the_table_stays_as_large_as_the_targets() {
        let mut targets = Targets::default();
        for round in 0..100 {
            let name = format!("t{round}");
            assert_eq!(defined_id(targets.lookup(&sample(&name, &["x"]))), Some(0));
            assert_eq!(targets.forget(&name), Some(0));
        }
        assert_eq!(targets.len(), 0);
        assert_eq!(targets.forget("t0"), None);
    }
}
