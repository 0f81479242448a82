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
//! In wasm the SDK installs the component's `#[global_allocator]` and its
//! `cabi_realloc`: the host copies each sample into an arena that is reset
//! after the call, instead of one `malloc` and `free` per string and list
//! (see `arena.rs`). A rule built with the SDK therefore cannot install an
//! allocator of its own.
//!
//! Outside wasm (unit tests, benchmarks) [`log`] writes to stderr and
//! [`state`] is an in-memory map per thread, so rule logic can be tested with
//! plain `cargo test`.

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
    ActionOutcome, ActionRequest, ActionStatus, Alert, Health, Label, Metric, RuleInfo, Sample,
    Severity, Verdict,
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
    fn evaluate(&mut self, sample: &Sample) -> Verdict;
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
                fn evaluate(sample: $crate::Sample) -> $crate::Verdict {
                    $crate::__private::evaluate::<$rule>(sample)
                }
            }
    $crate::bindings::__export_rule_world!(VigilExport with_types_in $crate::bindings);
        };
    };
}

/// Support for [`export_rule!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::{Rule, RuleInfo, Sample, Verdict};
    use std::any::Any;
    use std::cell::RefCell;

    pub use super::arena;
    pub use wit_bindgen;

    thread_local! {
        static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
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

    /// See [`configure`]: the sample is dropped before the arena is reset.
    pub fn evaluate<R: Rule>(sample: Sample) -> Verdict {
        arena::begin_call();
        let verdict = INSTANCE.with(|slot| {
            let mut slot = slot.borrow_mut();
            let rule = slot
                .as_mut()
                .and_then(|rule| rule.downcast_mut::<R>())
                .expect("the host calls `configure` before `evaluate`");
            rule.evaluate(&sample)
        });
        drop(sample);
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

impl Sample {
    /// A healthy sample with unlabelled metrics; handy in tests.
    pub fn up<'a>(target: &str, metrics: impl IntoIterator<Item = (&'a str, f64)>) -> Self {
        Sample {
            target: target.to_string(),
            timestamp_ms: 0,
            health: Health::Up,
            metrics: metrics
                .into_iter()
                .map(|(name, value)| Metric {
                    name: name.to_string(),
                    value,
                    labels: Vec::new(),
                })
                .collect(),
            labels: Vec::new(),
            recent_actions: Vec::new(),
        }
    }

    /// A sample from a failed poll; handy in tests.
    pub fn down(target: &str, reason: &str) -> Self {
        Sample {
            health: Health::Down(reason.to_string()),
            ..Sample::up(target, [])
        }
    }

    /// The value of the first metric called `name`, if any.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics_named(name).next().map(|metric| metric.value)
    }

    /// Every metric called `name` (several when they differ in labels).
    pub fn metrics_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Metric> + 'a {
        self.metrics
            .iter()
            .filter(move |metric| metric.name == name)
    }

    /// Why the poll failed, or `None` when the target is up.
    pub fn down_reason(&self) -> Option<&str> {
        match &self.health {
            Health::Up => None,
            Health::Down(reason) => Some(reason),
        }
    }

    /// The value of one of the target's labels.
    pub fn label(&self, name: &str) -> Option<&str> {
        find_label(&self.labels, name)
    }
}

impl Metric {
    /// The value of one of this metric's labels.
    pub fn label(&self, name: &str) -> Option<&str> {
        find_label(&self.labels, name)
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
