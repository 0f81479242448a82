//! The rule's durable key-value state.
//!
//! Instance memory is lost when the rule is reloaded or the host restarts;
//! this store is not. It is private to the rule. Writes made while evaluating
//! a sample are committed when `evaluate` returns and dropped if it traps, so
//! the state always matches a sample that was fully evaluated.
//!
//! Outside wasm it is an in-memory map per thread, for unit tests.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reads the text stored under `key`.
pub fn get(key: &str) -> Option<String> {
    imp::get(key)
}

/// Stores `value` under `key`. Fails when the key, the value or the rule's
/// total state is larger than the host allows.
pub fn set(key: &str, value: &str) -> Result<(), String> {
    imp::set(key, value)
}

/// Removes `key`; removing a missing key is fine.
pub fn delete(key: &str) {
    imp::delete(key)
}

/// Reads a JSON value stored with [`set_json`]. A value that no longer
/// parses (say, after the rule changed its format) reads as `None`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Option<T> {
    get(key).and_then(|text| serde_json::from_str(&text).ok())
}

/// Stores a value as JSON.
pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|error| error.to_string())?;
    set(key, &text)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::vigil::rules::host;

    pub fn get(key: &str) -> Option<String> {
        host::state_get(key)
    }
    pub fn set(key: &str, value: &str) -> Result<(), String> {
        host::state_set(key, value)
    }
    pub fn delete(key: &str) {
        host::state_delete(key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        static STATE: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
    }

    pub fn get(key: &str) -> Option<String> {
        STATE.with(|state| state.borrow().get(key).cloned())
    }
    pub fn set(key: &str, value: &str) -> Result<(), String> {
        STATE.with(|state| {
            state
                .borrow_mut()
                .insert(key.to_string(), value.to_string())
        });
        Ok(())
    }
    pub fn delete(key: &str) {
        STATE.with(|state| state.borrow_mut().remove(key));
    }
}
