//! `/metrics`: every stage's read model in the Prometheus text format, with
//! typed label sets. Nothing is counted twice: the stages keep their
//! counters (atomics and histograms they update anyway) and a
//! [`Collector`] reads them at scrape time, so a scrape costs the host a
//! walk over its targets and rules, and a poll or an evaluation costs it
//! nothing more.
//!
//! Series per target: 3 plus one per failure reason seen; per rule: 18
//! plus the two histograms' buckets; per sink: 4; per (action, outcome): 1;
//! for the compiled components: 2 (how many are in memory, not one per
//! component: their hashes would be unbounded label values).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Shared, Views};
use crate::names::tenant_of;
use crate::plugins::RuleCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    target: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// A rule's series carry its tenant (empty for the operator's rules), so
/// that `sum by (tenant)` gives each tenant's share.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
    tenant: String,
}

impl RuleLabels {
    fn of(rule: &str) -> Self {
        RuleLabels {
            rule: rule.to_string(),
            tenant: tenant_of(rule).unwrap_or_default().to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleFailureLabels {
    rule: String,
    tenant: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A rule's counters by name, as `/api/v1/rules` and `/metrics` show them.
pub fn rule_counts(counters: &RuleCounters) -> BTreeMap<&'static str, u64> {
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    BTreeMap::from([
        ("evaluations", read(&counters.evaluations)),
        ("timeouts", read(&counters.timeouts)),
        ("memory_limits", read(&counters.memory_limits)),
        ("traps", read(&counters.traps)),
        ("verdicts_too_large", read(&counters.verdicts_too_large)),
        ("invalid_verdicts", read(&counters.invalid_verdicts)),
        ("copy_limits", read(&counters.copy_limits)),
        ("quarantines", read(&counters.quarantines)),
        ("skipped", read(&counters.skipped)),
        ("dropped", read(&counters.dropped)),
        ("rate_limited", read(&counters.rate_limited)),
        ("abandoned", read(&counters.abandoned)),
        ("feedback_dropped", read(&counters.feedback_dropped)),
    ])
}

/// A histogram's cumulative buckets, `(upper bound, observations up to
/// it)`, `+Inf` last, as a scrape reads them: what a test or benchmark
/// reads a quantile from (the histogram has no reader of its own).
pub fn histogram_buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
    let mut registry = Registry::default();
    registry.register("h", "", histogram.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("encoding into a string cannot fail");
    text.lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix("h_bucket{le=\"")?.split_once("\"} ")?;
            let le = match le {
                "+Inf" => f64::INFINITY,
                finite => finite.parse().ok()?,
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The failure kinds of `vigil_rule_failures_total`, with the counter each
/// reads.
fn rule_failures(counters: &RuleCounters) -> [(&'static str, u64); 6] {
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    [
        ("timeout", read(&counters.timeouts)),
        ("memory-limit", read(&counters.memory_limits)),
        ("trap", read(&counters.traps)),
        ("verdict-too-large", read(&counters.verdicts_too_large)),
        ("invalid-verdict", read(&counters.invalid_verdicts)),
        ("copy-limit", read(&counters.copy_limits)),
    ]
}

/// Reads every stage's read model at scrape time.
#[derive(Clone)]
struct StageCollector(Views);

impl std::fmt::Debug for StageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StageCollector")
    }
}

/// One family: its descriptor, then a sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: i64) -> ConstGauge<i64> {
    ConstGauge::new(value)
}

impl Collector for StageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = &self.0;
        let e = &mut encoder;
        family(
            e,
            "vigil_build_info",
            "The running Vigil's version",
            MetricType::Gauge,
            [(
                BuildLabels {
                    version: env!("CARGO_PKG_VERSION"),
                },
                gauge(1),
            )],
        )?;

        // Sources.
        let targets = views.targets.snapshot();
        let target = |name: &crate::names::TargetName| TargetLabels {
            target: name.to_string(),
        };
        family(
            e,
            "vigil_target_polls",
            "Polls taken per target",
            MetricType::Counter,
            targets.iter().map(|t| (target(&t.name), counter(t.polls))),
        )?;
        family(
            e,
            "vigil_target_poll_failures",
            "Failed polls per target and reason",
            MetricType::Counter,
            targets.iter().flat_map(|t| {
                t.failures.iter().map(|(reason, count)| {
                    (
                        FailureLabels {
                            target: t.name.to_string(),
                            reason: reason.as_str(),
                        },
                        counter(*count),
                    )
                })
            }),
        )?;
        family(
            e,
            "vigil_target_up",
            "1 when the target's last poll read metrics, 0 when it failed (absent before the first poll)",
            MetricType::Gauge,
            targets.iter().filter(|t| t.polls > 0).map(|t| {
                let up = t.health == crate::sources::TargetHealth::Up;
                (target(&t.name), gauge(i64::from(up)))
            }),
        )?;
        let mut last = encoder.encode_descriptor(
            "vigil_target_last_poll_duration_seconds",
            "How long the target's last poll took",
            None,
            MetricType::Gauge,
        )?;
        for view in &targets {
            if let Some(took) = view.last_duration {
                ConstGauge::new(took.as_secs_f64())
                    .encode(last.encode_family(&target(&view.name))?)?;
            }
        }
        let e = &mut encoder;
        family(
            e,
            "vigil_poll_duration_seconds",
            "Poll durations by source kind",
            MetricType::Histogram,
            views
                .targets
                .durations()
                .into_iter()
                .map(|(kind, histogram)| (KindLabels { kind }, histogram)),
        )?;
        family(
            e,
            "vigil_samples",
            "Samples that reached the router",
            MetricType::Counter,
            [(
                Vec::<(String, String)>::new(),
                counter(views.router.samples.load(Ordering::Relaxed)),
            )],
        )?;

        // Rules.
        let status = views.status.snapshot();
        let rules = views.rules.snapshot();
        let refused = views.alert_stats.refused_verdicts();
        let rule = RuleLabels::of;
        let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        family(
            e,
            "vigil_rule_evaluations",
            "Rule calls made (successful or not)",
            MetricType::Counter,
            rules
                .iter()
                .map(|(name, c)| (rule(name), counter(read(&c.evaluations)))),
        )?;
        family(
            e,
            "vigil_rule_evaluation_duration_seconds",
            "How long rule calls take",
            MetricType::Histogram,
            rules
                .iter()
                .map(|(name, c)| (rule(name), c.durations.clone())),
        )?;
        family(
            e,
            "vigil_rule_evaluation_latency_seconds",
            "How long from a sample's offer to the rule to the end of its call (queue wait plus call)",
            MetricType::Histogram,
            rules
                .iter()
                .map(|(name, c)| (rule(name), c.latency.clone())),
        )?;
        family(
            e,
            "vigil_rule_failures",
            "Failed rule calls by kind",
            MetricType::Counter,
            rules.iter().flat_map(|(name, c)| {
                rule_failures(c).into_iter().map(move |(kind, count)| {
                    (
                        RuleFailureLabels {
                            rule: name.to_string(),
                            tenant: tenant_of(name).unwrap_or_default().to_string(),
                            kind,
                        },
                        counter(count),
                    )
                })
            }),
        )?;
        family(
            e,
            "vigil_rule_quarantines",
            "Times each rule was quarantined",
            MetricType::Counter,
            rules
                .iter()
                .map(|(name, c)| (rule(name), counter(read(&c.quarantines)))),
        )?;
        family(
            e,
            "vigil_rule_quarantined",
            "1 while the rule is quarantined",
            MetricType::Gauge,
            rules.iter().map(|(name, c)| {
                let quarantined = c.state().health == "quarantined";
                (rule(name), gauge(i64::from(quarantined)))
            }),
        )?;
        family(
            e,
            "vigil_rule_samples_dropped",
            "Samples dropped for the rule because its queue was full",
            MetricType::Counter,
            rules
                .iter()
                .map(|(name, c)| (rule(name), counter(read(&c.dropped)))),
        )?;
        family(
            e,
            "vigil_rule_samples_rate_limited",
            "Samples dropped for the rule because its tenant was past its evaluation rate",
            MetricType::Counter,
            rules
                .iter()
                .map(|(name, c)| (rule(name), counter(read(&c.rate_limited)))),
        )?;
        family(
            e,
            "vigil_rule_samples_skipped",
            "Samples not evaluated because the rule was quarantined",
            MetricType::Counter,
            rules
                .iter()
                .map(|(name, c)| (rule(name), counter(read(&c.skipped)))),
        )?;
        family(
            e,
            "vigil_rule_verdicts_refused",
            "Verdicts refused for taking the rule past its alert limits",
            MetricType::Counter,
            rules.iter().map(|(name, _)| {
                let count = refused.get(name).copied().unwrap_or(0);
                (rule(name), counter(count))
            }),
        )?;
        family(
            e,
            "vigil_rule_version",
            "The version of the rule serving (1 at start, +1 per reload; 0 while its file is gone)",
            MetricType::Gauge,
            status
                .iter()
                .map(|(name, s)| (rule(name), gauge(s.version as i64))),
        )?;
        family(
            e,
            "vigil_rule_reloads",
            "New versions of the rule loaded while running",
            MetricType::Counter,
            status
                .iter()
                .map(|(name, s)| (rule(name), counter(s.reloads))),
        )?;
        family(
            e,
            "vigil_rule_reloads_refused",
            "Changes to the rule refused (the running version stayed)",
            MetricType::Counter,
            status
                .iter()
                .map(|(name, s)| (rule(name), counter(s.refused))),
        )?;

        // Compiled components, shared by the rules loaded from the same
        // bytes.
        let no_labels = Vec::<(String, String)>::new;
        family(
            e,
            "vigil_components_loaded",
            "Distinct compiled rule components in memory (rules loaded from the same bytes share one)",
            MetricType::Gauge,
            [(no_labels(), gauge(views.components.in_memory() as i64))],
        )?;
        family(
            e,
            "vigil_component_compilations",
            "Rule components compiled from their bytes (neither shared from memory nor loaded from the compile cache)",
            MetricType::Counter,
            [(no_labels(), counter(views.components.compilations()))],
        )?;

        // Alerts.
        let (pending, firing) = views.alerts.counts();
        family(
            e,
            "vigil_alerts",
            "Alerts tracked now, by state",
            MetricType::Gauge,
            [
                (StateLabels { state: "pending" }, gauge(pending as i64)),
                (StateLabels { state: "firing" }, gauge(firing as i64)),
            ],
        )?;
        let (fired, resolved) = views.alerts.transitions();
        family(
            e,
            "vigil_alert_events",
            "Alert transitions announced, by status",
            MetricType::Counter,
            [
                (StatusLabels { status: "firing" }, counter(fired)),
                (StatusLabels { status: "resolved" }, counter(resolved)),
            ],
        )?;

        // Sinks.
        let sink = |name: &Arc<str>| SinkLabels {
            sink: name.to_string(),
        };
        family(
            e,
            "vigil_sink_delivered",
            "Alert events each sink took",
            MetricType::Counter,
            views
                .sinks
                .iter()
                .map(|(name, s)| (sink(name), counter(read(&s.delivered)))),
        )?;
        family(
            e,
            "vigil_sink_delivery_failures",
            "Attempts to deliver an alert event that failed (retried from the outbox for network sinks)",
            MetricType::Counter,
            views
                .sinks
                .iter()
                .map(|(name, s)| (sink(name), counter(read(&s.failed)))),
        )?;
        family(
            e,
            "vigil_sink_dropped",
            "Alert events dropped because the sink's queue or outbox was full",
            MetricType::Counter,
            views
                .sinks
                .iter()
                .map(|(name, s)| (sink(name), counter(read(&s.dropped_alerts)))),
        )?;
        family(
            e,
            "vigil_sink_outbox_depth",
            "Alert events waiting in the sink's outbox",
            MetricType::Gauge,
            views
                .sinks
                .iter()
                .map(|(name, s)| (sink(name), gauge(read(&s.queued) as i64))),
        )?;

        // Remediation.
        family(
            e,
            "vigil_actions",
            "Action requests handled, by action and outcome",
            MetricType::Counter,
            views
                .actions
                .snapshot()
                .into_iter()
                .map(|((action, outcome), count)| {
                    (
                        ActionLabels {
                            action: action.to_string(),
                            outcome,
                        },
                        counter(count),
                    )
                }),
        )?;
        Ok(())
    }
}

/// The registry a host serves: its stages' read models.
pub fn registry(views: Views) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StageCollector(views)));
    registry
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String does not fail");
    text
}

pub(super) async fn serve(State(shared): State<Arc<Shared>>) -> Response {
    let text = render(&shared.registry);
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}
