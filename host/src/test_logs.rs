//! Capturing the host's log lines in unit tests.
//!
//! Tests run on many threads in one process, and `tracing` caches, per log
//! statement, whether any subscriber wants it, computed from the
//! subscribers it knows of. Two ways that cache went stale for a test's
//! scoped subscriber (CI failed on `the_host_logs_each_rule_loaded_in_config_order`
//! with nothing captured):
//! - while exactly one subscriber is registered, tracing-core takes it for
//!   the global default and asks only each thread's *own* default: a
//!   statement first reached on another test's thread (no subscriber there)
//!   is cached as "nobody listens", for this test's subscriber too. A second
//!   subscriber that is never dropped ([`KEEP_TWO`]) keeps tracing-core on
//!   its list of all subscribers.
//! - a statement whose interest another thread was computing while this
//!   subscriber was installed can be stored after the rebuild that
//!   installing it made; [`logs_of`] rebuilds once more, inside its scope.

use std::io;
use std::sync::{Arc, LazyLock, Mutex};

use tracing::Dispatch;
use tracing::subscriber::NoSubscriber;

/// A subscriber that wants nothing and is never dropped: with it, a test's
/// subscriber is never the only one registered (see the module doc).
static KEEP_TWO: LazyLock<Dispatch> = LazyLock::new(|| Dispatch::new(NoSubscriber::default()));

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
    LazyLock::force(&KEEP_TWO);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The race CI met, made certain: the statement's interest is first
    /// computed on a thread with no subscriber of its own, while the test's
    /// subscriber is installed.
    #[test]
    fn a_line_first_reached_on_another_thread_is_still_captured() {
        fn line() {
            tracing::info!("first reached elsewhere");
        }
        let ((), logs) = logs_of(|| {
            std::thread::spawn(line).join().expect("the other thread");
            line();
        });
        assert_eq!(logs.matches("first reached elsewhere").count(), 1, "{logs}");
    }
}
