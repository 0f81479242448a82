//! What a rule's store holds, and everything that makes it a sandbox.
//!
//! Deny by default: the WASI context grants no preopened directory, no
//! environment variable, no argument, no stdin, no socket and no name lookup
//! (wasmtime denies socket *addresses* by default but not the calls, so they
//! are switched off explicitly). Clocks and random numbers stay available.
//! A rule's stdout and stderr go to the host's log, one event per line,
//! tagged with the rule's name.
//!
//! What the host allocates for a rule is bounded by the rule's limits: one
//! cap covers all its linear memories and tables together, the resources it
//! can hold (streams, pollables) are few, and a request for random bytes is
//! small, since such host calls run where no deadline can stop them.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result as WasmResult};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::state::RuleState;

/// The data a rule's `Store` carries.
pub struct StoreData {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) host: HostData,
}

/// What the `vigil:rules/host` imports work with.
pub struct HostData {
    /// The rule's name, for log lines.
    pub(crate) rule: Arc<str>,
    pub(crate) state: RuleState,
    /// Writes made during the current call, committed when it returns.
    pub(crate) pending: crate::state::PendingWrites,
    /// Shared with stdout and stderr: one budget for all the rule's logging.
    pub(crate) log_budget: Arc<Mutex<LogBudget>>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl StoreData {
    pub(crate) fn new(
        rule: Arc<str>,
        max_memory: usize,
        max_copy: usize,
        state: RuleState,
        output: &Output,
    ) -> Self {
        let wasi = WasiCtx::builder()
            .stdout(output.stdout.clone())
            .stderr(output.stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        StoreData {
            wasi,
            table,
            limiter: MemoryLimiter {
                max_memory,
                hit: false,
                max_copy,
                memory_bytes: 0,
                table_bytes: 0,
            },
            host: HostData {
                rule,
                state,
                pending: Default::default(),
                log_budget: output.budget.clone(),
            },
        }
    }
}

/// Most bytes one `wasi:random` call may ask for. The host fills the buffer
/// inside the call, where the deadline cannot interrupt it; a rule needs a
/// seed or an id, not megabytes.
pub const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Most WASI resources (streams, pollables, sockets) a rule may hold at
/// once. Each costs host memory, and a rule needs a handful.
pub const MAX_RESOURCES: usize = 1_000;

/// What one table element is counted as: more than wasmtime stores for a
/// function or extern reference, so the count is an upper bound.
const TABLE_ELEMENT_BYTES: usize = 16;

/// Caps the linear memory and tables of one instance, all of them together,
/// and remembers whether the cap was hit so a failure can be reported as
/// `memory limit` rather than a bare trap.
///
/// The cap is a total, not per memory: a component holds several core
/// instances, each may declare memories and tables, and a per-memory cap
/// would let it multiply the limit.
pub struct MemoryLimiter {
    pub(crate) max_memory: usize,
    pub(crate) hit: bool,
    /// The hostcall fuel the store was given, for error messages.
    pub(crate) max_copy: usize,
    /// Linear memory the instance holds now, over all its memories.
    pub(crate) memory_bytes: usize,
    /// Tables the instance holds now, over all its tables.
    pub(crate) table_bytes: usize,
}

impl MemoryLimiter {
    /// Whether `more` bytes fit under the cap next to what is held already.
    fn fits(&mut self, more: usize) -> bool {
        let after = (self.memory_bytes + self.table_bytes).saturating_add(more);
        let fits = after <= self.max_memory;
        self.hit |= !fits;
        fits
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> WasmResult<bool> {
        // Also called for each memory's initial size, with `current` 0.
        let more = desired.saturating_sub(current);
        let fits = self.fits(more);
        if fits {
            self.memory_bytes += more;
        }
        Ok(fits)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> WasmResult<bool> {
        let more = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        let fits = self.fits(more);
        if fits {
            self.table_bytes += more;
        }
        Ok(fits)
    }

    fn instances(&self) -> usize {
        // A component instantiates a handful of core modules (the rule, the
        // WASI adapter, shims); a thousand only comes from something odd.
        1_000
    }

    fn memories(&self) -> usize {
        100
    }

    fn tables(&self) -> usize {
        100
    }
}

/// A rule's stdout and stderr, turned into log lines as they are written.
#[derive(Clone)]
pub(crate) struct Output {
    pub(crate) stdout: LogPipe,
    pub(crate) stderr: LogPipe,
    budget: Arc<Mutex<LogBudget>>,
}

impl Output {
    pub(crate) fn new(rule: &Arc<str>, lines_per_second: u32) -> Self {
        let budget = Arc::new(Mutex::new(LogBudget::new(rule.clone(), lines_per_second)));
        Output {
            stdout: LogPipe::new(rule.clone(), Stream::Stdout, budget.clone()),
            stderr: LogPipe::new(rule.clone(), Stream::Stderr, budget.clone()),
            budget,
        }
    }

    /// The rule's log budget, for the host's own lines about the rule.
    pub(crate) fn log_budget(&self) -> RuleLog {
        RuleLog(self.budget.clone())
    }
}

/// One rule's log budget, shared by everything that logs because of the
/// rule: its `log` calls, its stdout and stderr, and the host's own lines
/// about what the rule did (failed evaluations, action requests handled).
/// A rule cannot make the host log faster than the rule itself may.
#[derive(Clone)]
pub struct RuleLog(Arc<Mutex<LogBudget>>);

impl RuleLog {
    /// A budget of `lines_per_second` (bursts of twice that) for `rule`'s
    /// lines; a rule instance makes its own.
    pub fn new(rule: &str, lines_per_second: u32) -> Self {
        RuleLog(Arc::new(Mutex::new(LogBudget::new(
            rule.into(),
            lines_per_second,
        ))))
    }

    /// Takes one line from the budget; `false` means leave the line out.
    pub fn allow(&self) -> bool {
        self.0.lock().expect("log budget lock").allow()
    }
}

impl fmt::Debug for RuleLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuleLog")
    }
}

/// A token bucket of log lines: `rate` per second, bursts of twice that.
/// Lines over budget are dropped and counted, and the count is logged once
/// the rule may log again, so a flood shows up as one line, not a million.
pub(crate) struct LogBudget {
    rule: Arc<str>,
    rate: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl LogBudget {
    fn new(rule: Arc<str>, lines_per_second: u32) -> Self {
        let rate = f64::from(lines_per_second);
        LogBudget {
            rule,
            rate,
            tokens: 2.0 * rate,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Takes one line from the budget; `false` means drop the line.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(2.0 * self.rate);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1.0;
        if self.dropped > 0 {
            tracing::warn!(
                rule = %self.rule,
                dropped = self.dropped,
                limit = self.rate,
                "Rule log lines dropped: the rule logs faster than its limit of lines per second (raise `log_lines_per_second`)."
            );
            self.dropped = 0;
        }
        true
    }
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// Longest line kept before it is logged in pieces.
const MAX_LINE: usize = 4096;

/// A WASI output stream that logs each complete line with the rule's name.
#[derive(Clone)]
pub(crate) struct LogPipe {
    rule: Arc<str>,
    stream: Stream,
    inner: Arc<Mutex<PipeState>>,
    budget: Arc<Mutex<LogBudget>>,
}

#[derive(Default)]
struct PipeState {
    partial: Vec<u8>,
    last_line: Option<String>,
}

impl LogPipe {
    fn new(rule: Arc<str>, stream: Stream, budget: Arc<Mutex<LogBudget>>) -> Self {
        LogPipe {
            rule,
            stream,
            inner: Default::default(),
            budget,
        }
    }

    /// The last line written, including an unterminated one. A Rust guest's
    /// panic message is the last line on its stderr before the trap.
    pub(crate) fn last_line(&self) -> Option<String> {
        let state = self.inner.lock().expect("log pipe lock");
        if state.partial.is_empty() {
            state.last_line.clone()
        } else {
            Some(String::from_utf8_lossy(&state.partial).into_owned())
        }
    }

    /// Forgets the last line, before a new call.
    pub(crate) fn clear_last_line(&self) {
        let mut state = self.inner.lock().expect("log pipe lock");
        state.last_line = None;
    }

    fn push(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().expect("log pipe lock");
        for &byte in bytes {
            if byte == b'\n' || state.partial.len() >= MAX_LINE {
                let line = String::from_utf8_lossy(&state.partial).into_owned();
                state.partial.clear();
                self.emit(&line);
                // Rust's hint about backtraces follows the panic message;
                // the message is the line worth reporting.
                if !line.trim().is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE") {
                    state.last_line = Some(line);
                }
                if byte == b'\n' {
                    continue;
                }
            }
            state.partial.push(byte);
        }
    }

    fn emit(&self, line: &str) {
        if line.trim().is_empty() || !self.budget.lock().expect("log budget lock").allow() {
            return;
        }
        match self.stream {
            Stream::Stdout => tracing::info!(rule = %self.rule, stream = "stdout", "{line}"),
            Stream::Stderr => tracing::warn!(rule = %self.rule, stream = "stderr", "{line}"),
        }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_mib: usize) -> MemoryLimiter {
        MemoryLimiter {
            max_memory: max_mib << 20,
            hit: false,
            max_copy: 0,
            memory_bytes: 0,
            table_bytes: 0,
        }
    }

    #[test]
    fn the_cap_covers_all_memories_and_tables_together() {
        let mut limits = limiter(100);
        assert!(limits.memory_growing(0, 60 << 20, None).unwrap());
        // A second memory under the cap on its own, but not beside the first.
        assert!(!limits.memory_growing(0, 60 << 20, None).unwrap());
        assert!(limits.hit);
        // Table elements count too: 3 Mi elements would be 48 MiB.
        assert!(!limits.table_growing(0, 3 << 20, None).unwrap());
        assert!(limits.table_growing(0, 1 << 20, None).unwrap());
        assert_eq!(limits.memory_bytes + limits.table_bytes, 76 << 20);
        // Growing an existing memory counts only the growth.
        assert!(limits.memory_growing(60 << 20, 84 << 20, None).unwrap());
        assert!(!limits.memory_growing(84 << 20, 85 << 20, None).unwrap());
    }
}
