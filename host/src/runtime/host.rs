//! The `vigil:rules/host` imports: logging and the rule's key-value state.

use super::bindings::vigil::rules::{host, types};
use super::sandbox::StoreData;

/// Longest log message kept from a rule; the rest is cut.
const MAX_LOG_MESSAGE: usize = 4096;

impl types::Host for StoreData {}

impl host::Host for StoreData {
    fn log(&mut self, level: host::Level, message: String) {
        if !self
            .host
            .log_budget
            .lock()
            .expect("log budget lock")
            .allow()
        {
            return;
        }
        let rule = &self.host.rule;
        let message = crate::text::prefix(&message, MAX_LOG_MESSAGE);
        match level {
            host::Level::Trace => tracing::trace!(rule = %rule, "{message}"),
            host::Level::Debug => tracing::debug!(rule = %rule, "{message}"),
            host::Level::Info => tracing::info!(rule = %rule, "{message}"),
            host::Level::Warn => tracing::warn!(rule = %rule, "{message}"),
            host::Level::Error => tracing::error!(rule = %rule, "{message}"),
        }
    }

    fn state_get(&mut self, key: String) -> Option<String> {
        let data = &self.host;
        match data.state.get(&data.pending, &key) {
            Ok(value) => value.and_then(|bytes| match String::from_utf8(bytes) {
                Ok(text) => Some(text),
                Err(_) => {
                    // Only written from WIT strings since contract 0.2.0;
                    // bytes from an older rule read as missing.
                    tracing::warn!(rule = %data.rule, key, "Stored value is not UTF-8 text; read as missing.");
                    None
                }
            }),
            Err(error) => {
                // The rule cannot fix a broken database; it sees a missing
                // key and the operator sees why.
                tracing::error!(rule = %data.rule, key, %error, "Reading rule state failed.");
                None
            }
        }
    }

    fn state_set(&mut self, key: String, value: String) -> Result<(), String> {
        let data = &mut self.host;
        data.state.set(&mut data.pending, &key, value.as_bytes())
    }

    fn state_delete(&mut self, key: String) -> wasmtime::Result<()> {
        let data = &mut self.host;
        data.state
            .delete(&mut data.pending, &key)
            .map_err(|reason| wasmtime::format_err!("state-delete: {reason}"))
    }
}
