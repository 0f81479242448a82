//! Sinks: where evaluation results and alert events go.
//!
//! For now the console ([`stdout`]); webhook and Alertmanager sinks, with a
//! durable outbox in front of them, come next.

pub mod stdout;

pub use stdout::{Format, StdoutSink};
