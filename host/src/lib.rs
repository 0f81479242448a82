//! Vigil: a monitoring rule host. It polls targets, hands each sample to
//! rules that run as sandboxed WebAssembly components, and turns their
//! verdicts into alerts that fire and resolve exactly once.
//!
//! Load the bundled `threshold` rule, feed it a sample, get an alert:
//!
//! ```
//! use vigil::alerts::{Status, Tracker};
//! use vigil::config::Settings;
//! use vigil::runtime::{Metric, Runtime};
//! use vigil::state::StateDb;
//! use vigil::{plugins, sources};
//!
//! # fn main() -> anyhow::Result<()> {
//! let settings = Settings::local_default(); // the bundled rule, default config
//! let runtime = Runtime::new()?;
//! let state = StateDb::in_memory()?;
//! let mut rule = plugins::load(&runtime, &state, &settings.rules[0])?;
//!
//! let cpu = Metric { name: "cpu_usage".into(), value: 91.0, labels: vec![] };
//! let sample = sources::make_sample("web-01", &[], Ok(vec![cpu]), 1_000);
//! let verdict = rule.instance.evaluate(&sample)?;
//!
//! let mut tracker = Tracker::default();
//! let (rule_name, target) = ("threshold".into(), "web-01".into());
//! let events = tracker.observe(&rule_name, &target, &verdict.alerts, sample.timestamp_ms)?;
//! assert_eq!(events[0].status, Status::Firing);
//! assert_eq!(events[0].alert.name, "CpuUsageHigh");
//! assert_eq!(events[0].alert.summary, "cpu_usage is 91.0, above 80");
//! # Ok(())
//! # }
//! ```
//!
//! The modules follow the data flow (see `docs/ARCHITECTURE.md`):
//!
//! - the pipeline: [`sources`] → [`routing`] → [`plugins`] (rule workers, on
//!   the [`runtime`]) → [`alerts`] → [`sinks`], wired together by [`app`];
//! - beside it: [`actions`] (remediation the rules ask for), [`state`] (the
//!   one database), [`config`] (settings and their reload), [`api`] (the
//!   HTTP API, `/metrics` and the page, over every stage's read model),
//!   [`cluster`] (targets partitioned across nodes through NATS KV leases);
//! - shared by all: [`allocator`], [`names`], [`clock`], [`duration`], [`size`],
//!   [`hash`], [`http`], [`process`], [`text`], [`watch`];
//! - the rule authors' tools: [`cli`], [`casefile`] (`vigil test`),
//!   [`scaffold`] (`vigil new`), [`signing`] (`vigil keygen`, `vigil sign`).

// The pipeline, in the order a sample travels.
pub mod alerts;
pub mod app;
pub mod plugins;
pub mod routing;
pub mod runtime;
pub mod sinks;
pub mod sources;

// Beside the pipeline.
pub mod actions;
pub mod api;
pub mod cluster;
pub mod config;
pub mod state;

// Shared by every stage.
pub mod allocator;
pub mod clock;
pub mod duration;
pub mod hash;
pub mod http;
pub mod names;
pub mod process;
pub mod size;
#[cfg(test)]
mod test_logs;
pub mod text;
pub mod watch;

// The command line and the rule authors' tools.
pub mod casefile;
pub mod cli;
pub mod scaffold;
pub mod signing;
