//! Write [Vigil](../../README.md) rules in Rust.
//!
//! A rule is a type that implements [`Rule`] and is exported with
//! [`export_rule!`]. Build it with `cargo build --target wasm32-wasip2
//! --release` and the output `.wasm` is a component the Vigil host loads.
//!
//! ```
//! use vigil_sdk::{Alert, Rule, RuleInfo, Sample, Severity, Verdict};
//!
//! struct CpuHot;
//!
//! impl Rule for CpuHot {
//!     fn configure(_config: &str) -> Result<Self, String> {
//!         Ok(CpuHot)
//!     }
//!     fn info(&self) -> RuleInfo {
//!         RuleInfo::new("cpu-hot", "0.1.0", "cpu_usage above 80").subscribe("cpu_usage")
//!     }
//!     fn evaluate(&mut self, sample: &Sample) -> Verdict {
//!         let mut verdict = Verdict::default();
//!         if let Some(cpu) = sample.metric("cpu_usage").filter(|cpu| *cpu > 80.0) {
//!             verdict.push(Alert::new("CpuHot", Severity::Warning, format!("cpu at {cpu}%")));
//!         }
//!         verdict
//!     }
//! }
//! vigil_sdk::export_rule!(CpuHot);
//!
//! // The same rule runs natively, which makes it easy to unit-test.
//! let mut rule = CpuHot::configure("{}").unwrap();
//! let verdict = rule.evaluate(&Sample::up("web-01", [("cpu_usage", 91.0)]));
//! assert_eq!(verdict.alerts[0].name, "CpuHot");
//! ```
//!
//! The contract (`vigil:rules@0.3.0`) sends a target's name, labels and
//! series (metric names and labels) once, in `define-target`, and each
//! `evaluate` carries only the values. The SDK keeps each target's
//! definition and hands the rule a [`Sample`] that borrows the names and
//! labels from it: a call allocates nothing for them, and the rule reads a
//! whole poll as before.
//!
//! In wasm the SDK installs the component's `#[global_allocator]` and its
//! `cabi_realloc`: the host copies each call's arguments into an arena that
//! is reset after the call, instead of one `malloc` and `free` per string
//! and list (see `arena.rs`). A rule built with the SDK therefore cannot
//! install an allocator of its own.
//!
//! Outside wasm (unit tests, benchmarks) [`log`] writes to stderr and
//! [`state`] is an in-memory map per thread, so rule logic can be tested with
//! plain `cargo test`.

use std::borrow::Cow;
use std::time::Duration;

extern crate self as vigil_sdk;

/// The bindings generated from `wit/vigil.wit`. Prefer the re-exports at the
/// crate root; this module is public for the export macro.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rule",
        pub_export_macro: true,
        export_macro_name: "__export_rule_world",
        default_bindings_module: "vigil_sdk::bindings",
        runtime_path: "vigil_sdk::__private::wit_bindgen::rt",
    });
}

pub use bindings::vigil::rules::host::Level;
pub use bindings::vigil::rules::types::{
    ActionOutcome, ActionRequest, ActionStatus, Alert, Health, Label, RuleInfo, Series, Severity,
    Verdict,
};

#[doc(hidden)]
pub mod arena;
pub mod log;
pub mod state;

/// A monitoring rule.
///
/// The host creates one instance per rule and keeps it across samples, so
/// fields are a cache that lives until the next reload or restart. Anything
/// that must outlive the instance belongs in [`state`].
pub trait Rule: Sized + 'static {
    /// Builds the rule from its configuration (JSON text from the host
    /// config, `{}` when none is given). Return a message that says what is
    /// wrong and how to fix it; the operator sees it verbatim.
    fn configure(config: &str) -> Result<Self, String>;

    /// Describes the rule, including which metrics it wants to receive.
    fn info(&self) -> RuleInfo;

    /// Evaluates one sample and returns every alert that holds now.
    fn evaluate(&mut self, sample: &Sample<'_>) -> Verdict;
}

/// Exports a [`Rule`] as the component's `configure` and `evaluate`.
///
/// Use it once per crate. On targets other than wasm it expands to nothing,
/// so the same crate can be unit-tested and benchmarked natively.
#[macro_export]
macro_rules! export_rule {
    ($rule:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct VigilExport;
            impl $crate::bindings::Guest for VigilExport {
                fn configure(config: String) -> Result<$crate::RuleInfo, String> {
                    $crate::__private::configure::<$rule>(config)
                }
                fn define_target(
                    target: u32,
                    name: String,
                    labels: Vec<$crate::Label>,
                    series: Vec<$crate::Series>,
                ) {
                    $crate::__private::define_target(target, name, labels, series)
                }
                fn evaluate(
                    target: u32,
                    timestamp_ms: u64,
                    health: $crate::Health,
                    values: Vec<f64>,
                    recent_actions: Vec<$crate::ActionOutcome>,
                ) -> $crate::Verdict {
                    $crate::__private::evaluate::<$rule>(
                        target,
                        timestamp_ms,
                        health,
                        values,
                        recent_actions,
                    )
                }
                fn forget_target(target: u32) {
                    $crate::__private::forget_target(target)
                }
            }
    $crate::bindings::__export_rule_world!(VigilExport with_types_in $crate::bindings);
        };
    };
}

/// Support for [`export_rule!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::{ActionOutcome, Health, Label, Rule, RuleInfo, Sample, Series, Verdict};
    use std::any::Any;
    use std::borrow::Cow;
    use std::cell::RefCell;

    pub use super::arena;
    pub use wit_bindgen;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
        /// Each target's last definition, by id (the host keeps ids small
        /// and reuses forgotten ones, so a vector indexed by id stays as
        /// large as the targets the rule sees).
        static TARGETS: RefCell<Vec<Option<Target>>> = const { RefCell::new(Vec::new()) };
    }

    /// What `define-target` said about a target.
    struct Target {
        name: String,
        labels: Vec<Label>,
        series: Vec<Series>,
    }

    /// The export's arguments are owned here and dropped before
    /// [`arena::end_call`], so the rule never holds a pointer into the arena.
    pub fn configure<R: Rule>(config: String) -> Result<RuleInfo, String> {
        arena::begin_call();
        let configured = R::configure(&config).map(|rule| {
            let info = rule.info();
            INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(rule)));
            info
        });
        drop(config);
        arena::end_call();
        configured
    }

    /// Keeps a target's definition. The arguments live in the arena, which
    /// the next call reuses, so what is kept is copied out of it first.
    pub fn define_target(target: u32, name: String, labels: Vec<Label>, series: Vec<Series>) {
        arena::begin_call();
        let kept = Target {
            name: name.as_str().to_owned(),
            labels: labels.clone(),
            series: series.clone(),
        };
        TARGETS.with(|targets| {
            let mut targets = targets.borrow_mut();
            let index = target as usize;
            if targets.len() <= index {
                targets.resize_with(index + 1, || None);
            }
            targets[index] = Some(kept);
        });
        drop((name, labels, series));
        arena::end_call();
    }

    /// Drops a target's definition.
    pub fn forget_target(target: u32) {
        TARGETS.with(|targets| {
            let mut targets = targets.borrow_mut();
            if let Some(slot) = targets.get_mut(target as usize) {
                *slot = None;
            }
            while targets.last().is_some_and(Option::is_none) {
                targets.pop();
            }
        });
    }

    /// Rebuilds the sample from the target's definition and the call's
    /// values, and evaluates it. See [`configure`]: the arguments are
    /// dropped before the arena is reset.
    pub fn evaluate<R: Rule>(
        target: u32,
        timestamp_ms: u64,
        health: Health,
        values: Vec<f64>,
        recent_actions: Vec<ActionOutcome>,
    ) -> Verdict {
        arena::begin_call();
        let verdict = TARGETS.with(|targets| {
            let targets = targets.borrow();
            let defined = targets
                .get(target as usize)
                .and_then(Option::as_ref)
                .expect("the host defines a target before evaluating it");
            let sample = Sample {
                target: Cow::Borrowed(&defined.name),
                timestamp_ms,
                health: Cow::Borrowed(&health),
                labels: Cow::Borrowed(&defined.labels),
                series: Cow::Borrowed(&defined.series),
                values: Cow::Borrowed(&values),
                recent_actions: Cow::Borrowed(&recent_actions),
            };
            INSTANCE.with(|slot| {
                let mut slot = slot.borrow_mut();
                let rule = slot
                    .as_mut()
                    .and_then(|rule| rule.downcast_mut::<R>())
                    .expect("the host calls `configure` before `evaluate`");
                rule.evaluate(&sample)
            })
        });
        drop((health, values, recent_actions));
        arena::end_call();
        verdict
    }
}

impl Label {
    /// A label from anything string-like.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// One poll of one target, as a rule reads it.
///
/// In wasm the target's name, labels and series are borrowed from what the
/// host defined for the target, and the values from the call: building it
/// allocates nothing. [`Sample::up`] and [`Sample::down`] build one that owns
/// its data, for tests.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    target: Cow<'a, str>,
    timestamp_ms: u64,
    health: Cow<'a, Health>,
    labels: Cow<'a, [Label]>,
    series: Cow<'a, [Series]>,
    values: Cow<'a, [f64]>,
    recent_actions: Cow<'a, [ActionOutcome]>,
}

/// One reading of a sample: a metric's name, its value and its labels.
#[derive(Debug, Clone, Copy)]
pub struct Metric<'a> {
    /// Dotted path of the value in the source, e.g. `cpu_usage` or
    /// `queues.mail.depth`.
    pub name: &'a str,
    /// The reading. Booleans arrive as 0 or 1.
    pub value: f64,
    /// Labels that tell readings of the same name apart, e.g. `mount=/var`.
    pub labels: &'a [Label],
}

impl Sample<'static> {
    /// A healthy sample with unlabelled metrics; handy in tests.
    pub fn up<'m>(target: &str, metrics: impl IntoIterator<Item = (&'m str, f64)>) -> Self {
        let (series, values) = metrics
            .into_iter()
            .map(|(name, value)| {
                let series = Series {
                    name: name.to_string(),
                    labels: Vec::new(),
                };
                (series, value)
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        Sample {
            target: Cow::Owned(target.to_string()),
            timestamp_ms: 0,
            health: Cow::Owned(Health::Up),
            labels: Cow::Owned(Vec::new()),
            series: Cow::Owned(series),
            values: Cow::Owned(values),
            recent_actions: Cow::Owned(Vec::new()),
        }
    }

    /// A sample from a failed poll; handy in tests.
    pub fn down(target: &str, reason: &str) -> Self {
        Sample {
            health: Cow::Owned(Health::Down(reason.to_string())),
            ..Sample::up(target, [])
        }
    }
}

impl<'a> Sample<'a> {
    /// Adds a reading with labels (`[("mount", "/var")]`); handy in tests.
    pub fn with_metric<'l>(
        mut self,
        name: &str,
        value: f64,
        labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    ) -> Self {
        self.series.to_mut().push(Series {
            name: name.to_string(),
            labels: labels
                .into_iter()
                .map(|(name, value)| Label::new(name, value))
                .collect(),
        });
        self.values.to_mut().push(value);
        self
    }

    /// Sets the target's labels; handy in tests.
    pub fn with_labels<'l>(mut self, labels: impl IntoIterator<Item = (&'l str, &'l str)>) -> Self {
        self.labels = Cow::Owned(
            labels
                .into_iter()
                .map(|(name, value)| Label::new(name, value))
                .collect(),
        );
        self
    }

    /// Sets when the poll started; handy in tests.
    pub fn with_timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = timestamp_ms;
        self
    }

    /// Adds the outcome of an earlier action request; handy in tests.
    pub fn with_recent_action(mut self, outcome: ActionOutcome) -> Self {
        self.recent_actions.to_mut().push(outcome);
        self
    }

    /// The target's name from the host configuration, e.g. `web-01`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// When the poll started, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    /// Whether the poll succeeded.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The readings, in the order the target reported them (none when the
    /// poll failed). Only those the rule subscribed to (see
    /// [`RuleInfo::subscribe`]).
    pub fn metrics(&self) -> impl Iterator<Item = Metric<'_>> + '_ {
        self.series
            .iter()
            .zip(self.values.iter())
            .map(|(series, &value)| Metric {
                name: &series.name,
                value,
                labels: &series.labels,
            })
    }

    /// The value of the first metric called `name`, if any.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics_named(name).next().map(|metric| metric.value)
    }

    /// Every metric called `name` (several when they differ in labels).
    pub fn metrics_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = Metric<'s>> + 's {
        self.metrics().filter(move |metric| metric.name == name)
    }

    /// Why the poll failed, or `None` when the target is up.
    pub fn down_reason(&self) -> Option<&str> {
        match &*self.health {
            Health::Up => None,
            Health::Down(reason) => Some(reason),
        }
    }

    /// The target's labels from the host configuration.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The value of one of the target's labels.
    pub fn label(&self, name: &str) -> Option<&str> {
        find_label(&self.labels, name)
    }

    /// Outcomes of actions this rule requested for this target since the
    /// previous sample. Empty in most samples.
    pub fn recent_actions(&self) -> &[ActionOutcome] {
        &self.recent_actions
    }
}

impl<'a> Metric<'a> {
    /// The value of one of this metric's labels.
    pub fn label(&self, name: &str) -> Option<&'a str> {
        find_label(self.labels, name)
    }
}

fn find_label<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|label| label.name == name)
        .map(|label| label.value.as_str())
}

impl Alert {
    /// An alert that fires on the first sample that reports it.
    pub fn new(name: impl Into<String>, severity: Severity, summary: impl Into<String>) -> Self {
        Alert {
            name: name.into(),
            severity,
            summary: summary.into(),
            labels: Vec::new(),
            annotations: Vec::new(),
            for_ms: 0,
            keep_firing_for_ms: 0,
        }
    }

    /// Adds an identity label: alerts that differ in labels are different alerts.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(name, value));
        self
    }

    /// Adds an annotation: extra detail that is not part of the identity.
    pub fn annotation(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.push(Label::new(name, value));
        self
    }

    /// Fire only once the condition has held for `duration`.
    pub fn for_duration(mut self, duration: Duration) -> Self {
        self.for_ms = saturating_ms(duration);
        self
    }

    /// Keep firing for `duration` after the condition stops being reported.
    pub fn keep_firing_for(mut self, duration: Duration) -> Self {
        self.keep_firing_for_ms = saturating_ms(duration);
        self
    }
}

fn saturating_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

// The type is generated by wit-bindgen, so a derive is not an option.
#[allow(clippy::derivable_impls)]
impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            alerts: Vec::new(),
            actions: Vec::new(),
        }
    }
}

impl Verdict {
    /// Reports an alert as holding for this sample.
    pub fn push(&mut self, alert: Alert) {
        self.alerts.push(alert);
    }

    /// Asks the host to run a declared remediation action.
    pub fn request_action<'a>(
        &mut self,
        action: impl Into<String>,
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        reason: impl Into<String>,
    ) {
        self.actions.push(ActionRequest {
            action: action.into(),
            params: params
                .into_iter()
                .map(|(name, value)| Label::new(name, value))
                .collect(),
            reason: reason.into(),
        });
    }
}

impl RuleInfo {
    /// Describes a rule that receives every metric until [`RuleInfo::subscribe`] narrows it.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        RuleInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            metrics: Vec::new(),
        }
    }

    /// Receive metrics called `pattern` (a trailing `*` makes it a prefix).
    pub fn subscribe(mut self, pattern: impl Into<String>) -> Self {
        self.metrics.push(pattern.into());
        self
    }
}

impl Severity {
    /// Parses `info`, `warning` or `critical`, as written in configs.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity `{other}`: use `info`, `warning` or `critical`"
            )),
        }
    }
}

/// Parses a duration as written in configs: `500ms`, `30s`, `5m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("invalid duration `{text}`: {error} (write e.g. `30s` or `5m`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reads_its_readings_in_order_with_their_labels() {
        let sample = Sample::up("web-01", [("cpu_usage", 91.0)])
            .with_metric("disk_used_percent", 95.0, [("mount", "/var")])
            .with_metric("disk_used_percent", 40.0, [("mount", "/")])
            .with_labels([("env", "prod")])
            .with_timestamp_ms(7);
        assert_eq!(sample.target(), "web-01");
        assert_eq!(sample.timestamp_ms(), 7);
        assert_eq!(sample.label("env"), Some("prod"));
        assert_eq!(sample.metric("cpu_usage"), Some(91.0));
        let disks: Vec<(Option<&str>, f64)> = sample
            .metrics_named("disk_used_percent")
            .map(|disk| (disk.label("mount"), disk.value))
            .collect();
        assert_eq!(disks, [(Some("/var"), 95.0), (Some("/"), 40.0)]);
        assert_eq!(sample.metrics().count(), 3);
        assert_eq!(sample.down_reason(), None);
    }

    #[test]
    fn a_down_sample_has_a_reason_and_no_readings() {
        let sample = Sample::down("web-01", "connection refused");
        assert_eq!(sample.down_reason(), Some("connection refused"));
        assert_eq!(sample.metrics().count(), 0);
    }
}
