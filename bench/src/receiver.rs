//! A webhook receiver that stamps each notification's arrival.
//!
//! `POST /hook` takes Alertmanager's webhook payload (version 4), which both
//! Alertmanager and Vigil's `webhook` sink send; every alert in it is kept
//! with the instant the request arrived, its status and its `target` label.
//! The driver waits on these to time detection and resolution.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use tokio::sync::Notify;

use crate::unix_ns;

/// One alert as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the request carrying it arrived, in ns since the Unix epoch.
    pub at_unix_ns: u64,
    /// `firing` or `resolved`.
    pub status: String,
    /// Its `target` label (empty without one).
    pub target: String,
    /// Its `alertname` label.
    pub alertname: String,
}

/// What has arrived so far.
#[derive(Default)]
pub struct Receiver {
    arrivals: Mutex<Vec<Arrival>>,
    changed: Notify,
}

impl Receiver {
    /// An empty receiver.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// `POST /hook`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.clone())
    }

    /// Waits for the first alert of `target` with `status` that arrived at
    /// or after `after_unix_ns`; `None` after `timeout`.
    pub async fn wait_for(
        &self,
        target: &str,
        status: &str,
        after_unix_ns: u64,
        timeout: Duration,
    ) -> Option<Arrival> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = self.arrivals.lock().unwrap().iter().find(|arrival| {
                arrival.target == target
                    && arrival.status == status
                    && arrival.at_unix_ns >= after_unix_ns
            }) {
                return Some(found.clone());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Every alert received so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap().clone()
    }
}

async fn hook(State(receiver): State<Arc<Receiver>>, body: axum::body::Bytes) -> StatusCode {
    let at_unix_ns = unix_ns();
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let label = |alert: &Value, name: &str| {
        alert["labels"][name]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let alerts = payload["alerts"].as_array().cloned().unwrap_or_default();
    receiver
        .arrivals
        .lock()
        .unwrap()
        .extend(alerts.iter().map(|alert| Arrival {
            at_unix_ns,
            status: alert["status"].as_str().unwrap_or_default().to_string(),
            target: label(alert, "target"),
            alertname: label(alert, "alertname"),
        }));
    receiver.changed.notify_waiters();
    StatusCode::OK
}
