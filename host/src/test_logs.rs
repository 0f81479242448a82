//! Capturing the host's log lines in unit tests.
//!
//! Tests run on many threads in one process, and `tracing` caches, per
//! log statement, whether any subscriber wants it. A statement first reached
//! on another thread while this test's subscriber was being installed can
//! keep a stale "nobody listens" (tracing-core computes it from the
//! subscribers it saw before ours, then stores it after ours rebuilt the
//! cache). [`logs_of`] rebuilds the cache once its subscriber is in place, so
//! every statement reached inside `body` sees it.

use std::io;
use std::sync::{Arc, Mutex};

/// Log lines written into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `body` with this thread's log lines captured: what it returned, and
/// the lines.
pub fn logs_of<T>(body: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let value = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        body()
    });
    let bytes = captured.0.lock().expect("log buffer").clone();
    (value, String::from_utf8(bytes).expect("utf-8 logs"))
}
