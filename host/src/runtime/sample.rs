//! One poll of one target as the host handles it.
//!
//! Since contract 0.3.0 a sample no longer crosses the boundary whole: the
//! rule learns a target's name, labels and series once (`define-target`) and
//! each call carries the values (see [`targets`](super::targets)). The host
//! keeps the whole poll in one value anyway, because every stage after the
//! rule (alerts, sinks, the API) reads it that way.

use super::{ActionOutcome, Health, Label};

/// One numeric reading taken from a target.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Dotted path of the value in the source, e.g. `cpu_usage`,
    /// `disk.used_percent` or `queues.mail.depth`.
    pub name: String,
    /// The reading. Booleans arrive as 0 or 1.
    pub value: f64,
    /// Labels that tell readings of the same name apart, e.g. `mount=/var`.
    pub labels: Vec<Label>,
}

/// One poll of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The target's name from the host configuration, e.g. `web-01`.
    pub target: String,
    /// When the poll started, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Whether the poll succeeded.
    pub health: Health,
    /// The readings (none when the poll failed).
    pub metrics: Vec<Metric>,
    /// The target's labels from the host configuration.
    pub labels: Vec<Label>,
    /// Outcomes of actions the rule requested for this target since the
    /// previous sample. Empty in most samples.
    pub recent_actions: Vec<ActionOutcome>,
}
