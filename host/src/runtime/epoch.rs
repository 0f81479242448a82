//! The clock that stops a rule's call at its deadline, ticking only while
//! some call runs.
//!
//! Deadlines are counted in epoch ticks (wasmtime's epoch interruption), so
//! something has to advance the engine's epoch every [`EPOCH_TICK`]. A
//! thread doing that forever woke 200 times a second on an idle host, and
//! was 5 % of the host's CPU at 1,000 targets (BENCHMARKS.md, "Third
//! round"): most of the time no rule is running. The ticker here parks
//! after [`IDLE_TICKS`] ticks in which no call ran, and the next call
//! wakes it.
//!
//! Guarantees:
//! - **A call is never without a clock.** [`Ticker::call`] counts the call
//!   in before it starts, and wakes the ticker if it parked; the ticker parks
//!   only after seeing no call in flight *after* announcing that it will
//!   park, so one of the two always sees the other (both sides use
//!   sequentially consistent atomics, and an unpark before the park is not
//!   lost).
//! - **Deadlines are no shorter.** A woken ticker advances the epoch at
//!   once; deadlines already allow one tick for the tick under way
//!   (`deadline_ticks`), so a call still gets at least its timeout.
//! - **Cheap when busy.** A call costs three atomic adds; a wake-up is paid
//!   only by the first call after an idle spell of [`IDLE_TICKS`] ticks. A
//!   burst of calls keeps the ticker up from its first call to its last,
//!   however short each call is.
//! - **No leak.** The thread ends when the last [`Ticker`] handle is dropped
//!   (or the engine is), parked or not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::thread::Thread;

use wasmtime::Engine;

use super::EPOCH_TICK;

/// Ticks in which no call ran after which the ticker parks. One: a burst of
/// samples keeps the ticker up while it lasts (its calls come closer than
/// a tick), and a tick after it is the only one spent idle. Each tick is a
/// thread wake-up, and four idle ones after every burst were most of the
/// ticker's wake-ups at 1,000 targets (BENCHMARKS.md, "Fourth round").
pub const IDLE_TICKS: u32 = 1;

/// The handle to the engine's ticker; cloned with the runtime. When the last
/// handle goes, the thread ends.
#[derive(Clone)]
pub(super) struct Ticker(Arc<Handle>);

struct Handle {
    shared: Arc<Shared>,
    thread: Thread,
}

struct Shared {
    /// Calls running now.
    running: AtomicUsize,
    /// Calls started so far.
    started: AtomicU64,
    /// The ticker is parked, or about to park.
    parked: AtomicBool,
    /// Every handle is gone: the thread ends.
    closed: AtomicBool,
    /// Times the epoch advanced.
    ticks: AtomicU64,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closed.store(true, SeqCst);
        self.thread.unpark();
    }
}

/// A call in flight: the ticker keeps ticking until it is dropped.
#[must_use = "the call is counted only while this is held"]
pub(super) struct Ticking<'a>(&'a Shared);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl Ticker {
    /// Starts the thread that advances `engine`'s epoch.
    pub(super) fn start(engine: &Engine) -> Self {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        });
        let weak = engine.weak();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                let mut seen = 0;
                while !state.closed.load(SeqCst) {
                    let Some(engine) = weak.upgrade() else {
                        return;
                    };
                    engine.increment_epoch();
                    drop(engine);
                    state.ticks.fetch_add(1, SeqCst);
                    std::thread::sleep(EPOCH_TICK);
                    let started = state.started.load(SeqCst);
                    if state.running.load(SeqCst) > 0 || started != seen {
                        seen = started;
                        idle = 0;
                        continue;
                    }
                    idle += 1;
                    if idle < IDLE_TICKS {
                        continue;
                    }
                    idle = 0;
                    state.parked.store(true, SeqCst);
                    // A call counted in from here on sees `parked` and
                    // unparks; one counted in before is seen here.
                    if state.running.load(SeqCst) == 0 && !state.closed.load(SeqCst) {
                        std::thread::park();
                    }
                    state.parked.store(false, SeqCst);
                }
            })
            .expect("spawning the epoch thread")
            .thread()
            .clone();
        Ticker(Arc::new(Handle { shared, thread }))
    }

    /// Counts a call in for as long as the returned value is held, waking
    /// the ticker if it parked. Take it before arming the call's deadline.
    pub(super) fn call(&self) -> Ticking<'_> {
        let shared = &self.0.shared;
        shared.running.fetch_add(1, SeqCst);
        shared.started.fetch_add(1, SeqCst);
        if shared.parked.load(SeqCst) {
            self.0.thread.unpark();
        }
        Ticking(shared)
    }

    /// Times the epoch has advanced so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.0.shared.ticks.load(SeqCst)
    }

    /// Whether the ticker is parked (or about to), for tests.
    #[cfg(test)]
    pub(super) fn parked(&self) -> bool {
        self.0.shared.parked.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Waits, bounded, until `ticker` has parked.
    fn until_parked(ticker: &Ticker) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !ticker.parked() {
            assert!(Instant::now() < give_up, "the idle ticker never parked");
            std::thread::sleep(EPOCH_TICK);
        }
    }

    #[test]
    fn an_idle_ticker_parks_and_a_call_wakes_it_until_the_call_ends() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let ticker = Ticker::start(&engine);
        until_parked(&ticker);
        let parked_at = ticker.ticks();
        let call = ticker.call();
        // The woken ticker ticks for as long as the call runs.
        let give_up = Instant::now() + Duration::from_secs(10);
        while ticker.ticks() < parked_at + 3 * u64::from(IDLE_TICKS) {
            assert!(Instant::now() < give_up, "a call did not wake the ticker");
            std::thread::sleep(EPOCH_TICK);
        }
        assert!(!ticker.parked(), "parked with a call in flight");
        drop(call);
        until_parked(&ticker);
    }

    #[test]
    fn the_thread_ends_with_the_last_handle_even_when_parked() {
        let engine = Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let ticker = Ticker::start(&engine);
        let shared = Arc::downgrade(&ticker.0.shared);
        until_parked(&ticker);
        drop(ticker);
        // The thread holds the shared state until it returns.
        let give_up = Instant::now() + Duration::from_secs(10);
        while shared.upgrade().is_some() {
            assert!(
                Instant::now() < give_up,
                "the ticker thread outlived its handles"
            );
            std::thread::sleep(EPOCH_TICK);
        }
    }
}
