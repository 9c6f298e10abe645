//! Running policies under wasmtime's component model, inside limits.
//!
//! Every call into a policy runs with a wall-clock deadline (epoch interruption, driven by
//! a ticker thread), a fuel allowance (a deterministic bound on instructions) and a memory
//! limit; logging is capped per call. Besides the contract worlds' imports, only WASI
//! linked to grant nothing (`wasi.rs`: no files, network, environment or real clocks) is
//! there, so a policy has no way to reach the machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wasmtime::component::{Component, Linker};
// wasmtime's compiler and code cache, named apart from knas's own (compute) `engine::Engine`.
use wasmtime::{Config, Engine as WasmEngine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};

use super::contract::{self, ContractInfo, LoadError};
use super::wasi::PolicyWasi;

/// Lines of stderr kept to explain a failed call (an uncaught exception's traceback ends
/// with its type and message).
const STDERR_TAIL_LINES: usize = 6;
use super::versions::{self, Bindings, Call};
use super::{PolicyError, RawProposal, Settings};
use crate::run::{Budget, Observation, PolicyLimits};

/// How often the epoch ticker advances; deadlines are multiples of it.
const TICK: Duration = Duration::from_millis(5);

/// The shared wasmtime engine and its epoch ticker.
pub struct PolicyRuntime {
    engine: WasmEngine,
    linker: Linker<PolicyState>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PolicyRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// `name@hash`: how logs, metrics and the store name the module `name` whose content
/// version ([`ContractInfo::short_hash`]) is `short_hash`.
pub fn module_label(name: &str, short_hash: &str) -> String {
    format!("{name}@{short_hash}")
}

/// The name a policy file goes by: its file name without the extension.
fn file_policy_name(path: &std::path::Path) -> String {
    path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
}

/// A compiled, contract-checked policy, ready to instantiate any number of times.
#[derive(Clone)]
pub struct PolicyModule {
    name: String,
    info: ContractInfo,
    component: Component,
}

impl PolicyModule {
    /// The policy's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name@hash`: the name and content version used in every message about it.
    pub fn label(&self) -> String {
        module_label(&self.name, self.info.short_hash())
    }

    /// What the file declares.
    pub fn info(&self) -> &ContractInfo {
        &self.info
    }
}

impl PolicyRuntime {
    /// An engine with fuel and epoch interruption enabled.
    pub fn new() -> Result<PolicyRuntime, PolicyError> {
        let mut config = Config::new();
        config.wasm_component_model(true).consume_fuel(true).epoch_interruption(true).max_wasm_stack(1 << 20);
        let engine = WasmEngine::new(&config).map_err(|e| PolicyError::Runtime(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        versions::add_to_linker(&mut linker).map_err(|e| PolicyError::Runtime(format!("{e:#}")))?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PolicyError::Runtime(format!("{e:#}")))?;
        super::wasi::link_virtual_sleep(&mut linker, |state: &mut PolicyState| &mut state.wasi)
            .map_err(|e| PolicyError::Runtime(format!("{e:#}")))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak_engine, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("knas-policy-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PolicyError::Runtime(format!("cannot start the epoch ticker: {e}")))?;
        Ok(PolicyRuntime { engine, linker, ticker_stop })
    }

    /// Checks and compiles a policy file; `name` is used in every message about it.
    pub fn load_file(&self, path: &std::path::Path) -> Result<PolicyModule, PolicyError> {
        let name = file_policy_name(path);
        let bytes =
            read_policy_file(path).map_err(|problem| PolicyError::Load { policy: path.display().to_string(), source: LoadError::Io(problem) })?;
        self.load_bytes(&name, &bytes).map_err(|e| match e {
            PolicyError::Load { source, .. } => PolicyError::Load { policy: path.display().to_string(), source },
            other => other,
        })
    }

    /// The label the file at `path` would load under, read without compiling it: whether
    /// a changed file is the running module again costs a hash, not seconds of compiling.
    /// `None` when the file cannot be read.
    pub fn label_of_file(path: &std::path::Path) -> Option<String> {
        let name = file_policy_name(path);
        let bytes = read_policy_file(path).ok()?;
        Some(module_label(&name, contract::short_hash(&contract::sha256_hex(&bytes))))
    }

    /// Checks and compiles policy bytes.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<PolicyModule, PolicyError> {
        let load_error = |source| PolicyError::Load { policy: name.to_owned(), source };
        let info = contract::inspect(bytes).map_err(load_error)?;
        let component =
            Component::from_binary(&self.engine, bytes).map_err(|e| load_error(LoadError::Compile(format!("{e:#}"))))?;
        Ok(PolicyModule { name: name.to_owned(), info, component })
    }

    /// A fresh instance of `module` with its own store, `limits` and random stream.
    pub fn instantiate(&self, module: &PolicyModule, seed: u64, limits: PolicyLimits) -> Result<PolicyInstance, PolicyError> {
        let label = module.label();
        let state = PolicyState {
            policy: label.clone(),
            limiter: Limiter::new(limits.memory_mib << 20),
            rng: generator(seed),
            logs_this_call: 0,
            dropped_logs: 0,
            log_limits: (limits.log_records_per_call, limits.log_record_bytes),
            log_budget: LogBudget::new(limits.log_bytes_per_minute, Instant::now()),
            panic_message: None,
            wasi: PolicyWasi::new(seed),
            stderr_tail: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        let mut instance =
            PolicyInstance { store, bindings: None, label, limits, calls: 0, call_time: Duration::ZERO, instantiate_time: Duration::ZERO };
        instance.arm();
        let start = Instant::now();
        let instantiated = Bindings::instantiate(&mut instance.store, &module.component, &self.linker, &module.info.contract_version);
        instance.instantiate_time = start.elapsed();
        // What a start function printed is logged like any call's output, and on a failure
        // its stderr tells a panic from a bare trap.
        instance.store.data_mut().drain_output(instantiated.is_err());
        match instantiated {
            Ok(bindings) => instance.bindings = Some(bindings),
            Err(e) => {
                return Err(match instance.classify("instantiate", e) {
                    PolicyError::Trap { policy, message, .. } => {
                        PolicyError::Load { policy, source: LoadError::Instantiate(message) }
                    }
                    other => other,
                });
            }
        }
        Ok(instance)
    }
}

/// The largest policy file read: a Python component is about 18 MiB, a JavaScript one 12.
pub const MAX_POLICY_BYTES: u64 = 256 << 20;

/// Reads a policy file. Only a regular file of at most [`MAX_POLICY_BYTES`] is read: a FIFO
/// dropped into the watched folder would block the reader, a link to a device would never
/// end.
pub fn read_policy_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".into());
    }
    let too_big = |len: u64| format!("{len} bytes, more than the {} MiB a policy may have", MAX_POLICY_BYTES >> 20);
    if metadata.len() > MAX_POLICY_BYTES {
        return Err(too_big(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    std::fs::File::open(path).and_then(|file| file.take(MAX_POLICY_BYTES + 1).read_to_end(&mut bytes)).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Bytes of host memory one element of a table costs (wasmtime keeps a pointer per
/// element), charged against the policy's memory limit.
const TABLE_ELEMENT_BYTES: usize = 8;

/// The policy's memory limit, over all its linear memories and tables together: a
/// component holds several of each, and a limit per memory or none on tables would let
/// it take several times its limit, or gigabytes with one `table.grow`. Remembers that a
/// growth was refused, so the trap it causes is reported as what it is.
struct Limiter {
    /// Counts of instances, tables and memories.
    inner: StoreLimits,
    /// Bytes the policy may hold.
    limit: usize,
    /// Bytes it holds: its memories' sizes and its tables' elements.
    held: usize,
    /// What the refused growth would have brought the total to (bytes).
    denied: Option<usize>,
    /// The most it has held (bytes).
    peak: usize,
}

impl Limiter {
    fn new(limit: usize) -> Limiter {
        let inner = StoreLimitsBuilder::new().instances(16).tables(16).memories(4).build();
        Limiter { inner, limit, held: 0, denied: None, peak: 0 }
    }

    /// Grants a growth from `current` to `desired` bytes of one memory or table, if the
    /// total stays within the limit; otherwise traps (the policy cannot go on without it).
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let held = self.held.saturating_sub(current).saturating_add(desired);
        if held > self.limit {
            self.denied = Some(held);
            return Err(wasmtime::Error::msg(format!("memory limit of {} bytes reached", self.limit)));
        }
        self.held = held;
        self.peak = self.peak.max(held);
        Ok(true)
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        self.grow(current, desired)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Per-instance host state: what the imports need (each contract version's adapter in
/// [`versions`] implements its imports with these methods).
pub struct PolicyState {
    policy: String,
    limiter: Limiter,
    rng: ChaCha8Rng,
    logs_this_call: u32,
    dropped_logs: u32,
    /// (records per call, bytes per record)
    log_limits: (u32, usize),
    log_budget: LogBudget,
    /// The SDK logs a panic's message before the instance aborts.
    panic_message: Option<String>,
    /// WASI, granting nothing; stdout and stderr become log records.
    wasi: PolicyWasi,
    /// The last lines the current call wrote to stderr (an interpreter's traceback).
    stderr_tail: Vec<String>,
}

impl wasmtime_wasi::WasiView for PolicyState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        self.wasi.view()
    }
}

impl PolicyState {
    /// Turns what the policy wrote to stdout and stderr into its log records; `all` also
    /// takes a last line without a newline (the call failed: nothing more will follow).
    fn drain_output(&mut self, all: bool) {
        // Line by line from the bytes taken, never all the lines at once: a call may write
        // millions of empty ones.
        for (stream, bytes) in self.wasi.drain(all) {
            for line in String::from_utf8_lossy(&bytes).lines() {
                if stream == "stderr" {
                    self.stderr_tail.push(line.to_owned());
                    if self.stderr_tail.len() > STDERR_TAIL_LINES {
                        self.stderr_tail.remove(0);
                    }
                    self.log(tracing::Level::WARN, format!("stderr: {line}"));
                } else {
                    self.log(tracing::Level::INFO, format!("stdout: {line}"));
                }
            }
        }
    }
}

impl PolicyState {
    /// A log record from the policy: attributed to it, capped per call and in length.
    pub(super) fn log(&mut self, level: tracing::Level, message: String) {
        if let Some(panic) = message.strip_prefix("policy panicked: ") {
            // Kept only as far as the error will show it (and a character more, so that it
            // still reads as cut).
            self.panic_message = Some(char_prefix(panic, self.log_limits.1.saturating_add(4)).to_owned());
        }
        // Saturating: a policy given a large fuel budget could log more than 2³² times in
        // one call, and a wrapped count would reopen the cap.
        self.logs_this_call = self.logs_this_call.saturating_add(1);
        if self.logs_this_call > self.log_limits.0 {
            self.dropped_logs = self.dropped_logs.saturating_add(1);
            return;
        }
        let message = log_record(&message, self.log_limits.1);
        if !self.log_budget.take(message.len(), Instant::now()) {
            return;
        }
        let policy = self.policy.as_str();
        match level {
            tracing::Level::TRACE => tracing::trace!(policy, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(policy, "{message}"),
            tracing::Level::INFO => tracing::info!(policy, "{message}"),
            tracing::Level::WARN => tracing::warn!(policy, "{message}"),
            tracing::Level::ERROR => tracing::error!(policy, "{message}"),
        }
    }

    /// 64 bits from the run's seeded generator.
    pub(super) fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// The random stream (`host.random`) of an instance of a run with `seed`: every instance
/// starts it afresh, so a fresh instance draws what the first one drew. (The SDK's
/// simulated host, `knas_policy_sdk::testing`, draws the same stream.)
pub fn generator(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A token bucket over the bytes an instance logs: it holds at most a minute's allowance
/// and refills continuously.
#[derive(Debug)]
struct LogBudget {
    per_minute: f64,
    tokens: f64,
    refilled: Instant,
    /// Records dropped since the last notice, and when that notice was given.
    dropped: u64,
    noticed: Option<Instant>,
}

impl LogBudget {
    fn new(per_minute: usize, now: Instant) -> LogBudget {
        LogBudget { per_minute: per_minute as f64, tokens: per_minute as f64, refilled: now, dropped: 0, noticed: None }
    }

    /// Spends `bytes` if the budget has them; otherwise counts a dropped record.
    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        self.refilled = now;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The number of records dropped since the last notice, at most once a minute.
    fn notice(&mut self, now: Instant) -> Option<u64> {
        let due = self.noticed.is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(60));
        (self.dropped > 0 && due).then(|| {
            self.noticed = Some(now);
            std::mem::take(&mut self.dropped)
        })
    }
}

/// What a failed call's stderr says went wrong: the last lines before the guest runtime's
/// own abort notice (Rust's `thread '…' panicked`, SpiderMonkey's `Redirecting call to
/// abort()`), leaving out stack frames (indented lines) and their headers — for an
/// interpreter's uncaught exception, `Type: message`.
fn uncaught(stderr: &[String]) -> String {
    let notice = |l: &str| l.starts_with("thread '") || l.starts_with("Redirecting call to abort()");
    let header = |l: &str| l == "Traceback (most recent call last):" || l == "Stack:";
    let before_notice: Vec<&str> = stderr
        .iter()
        .map(String::as_str)
        .take_while(|l| !notice(l))
        .filter(|l| !l.trim().is_empty() && !l.starts_with(char::is_whitespace) && !header(l))
        .collect();
    let lines = if before_notice.is_empty() { stderr.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect() } else { before_notice };
    lines[lines.len().saturating_sub(2)..].join(" / ")
}

/// Untrusted `text` cut to `max_bytes` (at a character boundary) and escaped.
pub(super) fn printable(text: &str, max_bytes: usize) -> String {
    let kept = char_prefix(text, max_bytes);
    let shown = escape_controls(kept).into_owned();
    if kept.len() < text.len() { shown + "… [truncated]" } else { shown }
}

/// The longest prefix of `text` of at most `max_bytes` that ends on a character boundary.
fn char_prefix(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A policy's log message as its record: escaped, so that the policy's text cannot start a
/// log line of its own, and capped at `limit` bytes as written, escapes and the mark
/// included, so that a budget of one record's length (the least the limits allow) always
/// has room for one.
fn log_record(message: &str, limit: usize) -> String {
    // Escaping never shortens text, so only a prefix a character longer than the cap is
    // escaped: escaping the whole of a message of many MiB would cost the host memory and
    // time that no limit of the policy's sees.
    let mut record = escape_controls(char_prefix(message, limit.saturating_add(4))).into_owned();
    if record.len() > limit {
        const MARK: &str = "… [truncated]";
        let cut = char_prefix(&record, limit.saturating_sub(MARK.len())).len();
        record.truncate(cut);
        record.push_str(MARK);
    }
    record
}

/// `text` with newlines and other control characters written as escapes (`\n`, `\u{1b}`),
/// so that untrusted text (a policy's messages, a file name) stays on its log line.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    // Control characters, and the Unicode line/paragraph separators and bidirectional
    // overrides that can make a terminal show text other than what is there.
    let hidden = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars().map(|c| if hidden(c) { c.escape_debug().to_string() } else { c.to_string() }).collect::<String>().into()
}

/// One live policy instance. After a trap, a deadline, or running out of fuel or memory
/// it refuses further calls; an error the policy returns leaves it usable.
pub struct PolicyInstance {
    store: Store<PolicyState>,
    bindings: Option<Bindings>,
    label: String,
    limits: PolicyLimits,
    calls: u64,
    call_time: Duration,
    /// How long instantiating took (start functions included).
    instantiate_time: Duration,
}

impl PolicyInstance {
    /// How long instantiating took, and the most memory (linear memories and tables) the
    /// instance has held.
    pub fn footprint(&self) -> (Duration, usize) {
        (self.instantiate_time, self.store.data().limiter.peak)
    }

    /// `name@hash` of the module this instance runs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Calls made and total time spent inside the policy.
    pub fn call_stats(&self) -> (u64, Duration) {
        (self.calls, self.call_time)
    }

    /// Resets the per-call allowances before a call.
    fn arm(&mut self) {
        let ticks = (self.limits.call_timeout_ms.max(1) as u128).div_ceil(TICK.as_millis()) as u64;
        self.store.set_epoch_deadline(ticks);
        self.store.epoch_deadline_trap();
        // Fuel is only refused when consumption is disabled, which it never is here.
        let _ = self.store.set_fuel(self.limits.fuel_per_call);
        let state = self.store.data_mut();
        state.logs_this_call = 0;
        state.dropped_logs = 0;
        state.limiter.denied = None;
        state.panic_message = None;
        state.stderr_tail.clear();
    }

    /// Runs one export call with the limits armed, mapping every failure to its cause.
    fn call<T>(&mut self, name: &'static str, f: impl FnOnce(&Bindings, &mut Store<PolicyState>) -> Call<T>) -> Result<T, PolicyError> {
        let Some(bindings) = self.bindings.take() else {
            return Err(PolicyError::Trap {
                policy: self.label.clone(),
                call: name,
                message: "the instance already failed and cannot be called again".into(),
            });
        };
        self.arm();
        let start = Instant::now();
        let outcome = f(&bindings, &mut self.store);
        self.call_time += start.elapsed();
        self.calls += 1;
        self.store.data_mut().drain_output(!matches!(outcome, Ok(Ok(_))));
        let dropped = self.store.data().dropped_logs;
        if dropped > 0 {
            tracing::warn!(policy = %self.label, dropped, "policy logged more than {} records in `{name}`; the rest were dropped", self.limits.log_records_per_call);
        }
        if let Some(dropped) = self.store.data_mut().log_budget.notice(Instant::now()) {
            tracing::warn!(
                policy = %self.label,
                dropped,
                "policy logged more than {} bytes in a minute; {dropped} records were dropped since the last notice",
                self.limits.log_bytes_per_minute
            );
        }
        match outcome {
            Ok(Ok(value)) => {
                self.bindings = Some(bindings);
                Ok(value)
            }
            Ok(Err(message)) => {
                self.bindings = Some(bindings);
                Err(PolicyError::Guest { policy: self.label.clone(), call: name, message: self.printable(&message) })
            }
            Err(error) => Err(self.classify(name, error)),
        }
    }

    /// A policy's own text (an error it returned) as it may appear in logs and events.
    fn printable(&self, message: &str) -> String {
        printable(message, self.limits.log_record_bytes)
    }

    /// Names the cause of a trap.
    fn classify(&mut self, call: &'static str, error: wasmtime::Error) -> PolicyError {
        let policy = self.label.clone();
        let state = self.store.data_mut();
        if let Some(requested) = state.limiter.denied.take() {
            return PolicyError::Memory { policy, call, limit_mib: self.limits.memory_mib, requested_mib: requested.div_ceil(1 << 20) };
        }
        let trap = error.downcast_ref::<Trap>();
        // How an interpreter ends on an uncaught exception, after printing its traceback:
        // it aborts, or exits. Any other fault (an overflowed stack, the output cap) is
        // not told by whatever the policy last printed.
        let aborted = matches!(trap, Some(Trap::UnreachableCodeReached)) || error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some();
        match trap {
            Some(Trap::OutOfFuel) => PolicyError::Fuel { policy, call, fuel: self.limits.fuel_per_call },
            Some(Trap::Interrupt) => PolicyError::Timeout { policy, call, limit_ms: self.limits.call_timeout_ms },
            _ => match state.panic_message.take() {
                Some(message) => PolicyError::Panic { policy, call, message: printable(&message, self.limits.log_record_bytes) },
                // An interpreter's uncaught exception: its traceback went to stderr.
                None if aborted && !state.stderr_tail.is_empty() => PolicyError::Panic {
                    policy,
                    call,
                    message: printable(&uncaught(&std::mem::take(&mut state.stderr_tail)), self.limits.log_record_bytes),
                },
                // wasmtime's message carries a backtrace that names the guest's functions
                // as the file writes them: the policy's own text, on one line and capped.
                None => PolicyError::Trap { policy, call, message: printable(&format!("{error:#}"), self.limits.log_record_bytes) },
            },
        }
    }

    /// `init`: hands the policy its settings.
    pub fn init(&mut self, settings: &Settings) -> Result<(), PolicyError> {
        self.call("init", |b, store| b.init(store, settings))
    }

    /// `observe`: results, in proposal order.
    pub fn observe(&mut self, results: &[Observation]) -> Result<(), PolicyError> {
        self.call("observe", |b, store| b.observe(store, results))
    }

    /// `propose`: the policy's next move, not yet validated.
    pub fn propose(&mut self, remaining: Budget) -> Result<RawProposal, PolicyError> {
        self.call("propose", |b, store| b.propose(store, remaining))
    }

    /// `checkpoint`: the policy's state (`None` when it keeps none, or its contract has no
    /// checkpoints).
    pub fn checkpoint(&mut self) -> Result<Option<Vec<u8>>, PolicyError> {
        if !self.checkpoints() {
            return Ok(None);
        }
        self.call("checkpoint", |b, store| b.checkpoint(store))
    }

    /// `restore`: resumes from a checkpoint.
    pub fn restore(&mut self, state: &[u8]) -> Result<(), PolicyError> {
        self.call("restore", |b, store| b.restore(store, state))
    }

    /// Whether the policy's contract has checkpoints.
    pub fn checkpoints(&self) -> bool {
        self.bindings.as_ref().is_some_and(Bindings::checkpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read_as_policies() {
        // A device never ends, a folder is not a file.
        assert_eq!(read_policy_file(std::path::Path::new("/dev/zero")).unwrap_err(), "not a regular file");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_policy_file(dir.path()).unwrap_err(), "not a regular file");
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big).unwrap().set_len(MAX_POLICY_BYTES + 1).unwrap();
        assert_eq!(read_policy_file(&big).unwrap_err(), "268435457 bytes, more than the 256 MiB a policy may have");
        std::fs::write(&big, b"\0asm").unwrap();
        assert_eq!(read_policy_file(&big).unwrap(), b"\0asm");
    }

    #[test]
    fn a_files_label_read_without_compiling_is_the_one_it_loads_under() {
        let runtime = PolicyRuntime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.wasm");
        std::fs::write(&path, crate::policy::builtin::component("random").unwrap().unwrap()).unwrap();
        let label = PolicyRuntime::label_of_file(&path).unwrap();
        assert!(label.starts_with("mine@"), "{label}");
        assert_eq!(label, runtime.load_file(&path).unwrap().label());
        assert_eq!(PolicyRuntime::label_of_file(&dir.path().join("missing.wasm")), None);
    }

    #[test]
    fn the_memory_limit_covers_every_memory_and_table_together() {
        const MIB: usize = 1 << 20;
        // Two memories of 40 MiB: each within 64 MiB, together not.
        let mut limiter = Limiter::new(64 * MIB);
        assert!(limiter.memory_growing(0, 40 * MIB, None).unwrap());
        assert!(limiter.memory_growing(0, 40 * MIB, None).is_err(), "the refusal traps");
        assert_eq!(limiter.denied, Some(80 * MIB));
        // One `table.grow` to 2^32 elements would take 32 GiB of the host's memory.
        let mut limiter = Limiter::new(64 * MIB);
        assert!(limiter.table_growing(0, 1000, None).unwrap());
        assert!(limiter.table_growing(1000, u32::MAX as usize, None).is_err());
        assert_eq!(limiter.held, 8000, "a refused growth takes nothing");
        // Growing a memory counts its new size once.
        let mut limiter = Limiter::new(64 * MIB);
        assert!(limiter.memory_growing(0, 10 * MIB, None).unwrap());
        assert!(limiter.memory_growing(10 * MIB, 60 * MIB, None).unwrap());
        assert_eq!((limiter.held, limiter.peak), (60 * MIB, 60 * MIB));
        // A memory's own declared maximum is wasm's business: memory.grow returns -1.
        assert!(!limiter.memory_growing(60 * MIB, 62 * MIB, Some(61 * MIB)).unwrap());
        assert_eq!(limiter.denied, None);
    }

    #[test]
    fn the_log_budget_refills_over_a_minute_and_notices_once_a_minute() {
        let start = Instant::now();
        let mut budget = LogBudget::new(600, start);
        assert!(budget.take(600, start), "a full minute's allowance in a burst");
        assert!(!budget.take(1, start));
        assert!(!budget.take(1, start));
        assert_eq!(budget.notice(start), Some(2));
        // 10 s refill 100 bytes.
        let later = start + Duration::from_secs(10);
        assert!(budget.take(100, later));
        assert!(!budget.take(1, later));
        assert_eq!(budget.notice(later), None, "at most one notice a minute");
        assert_eq!(budget.notice(start + Duration::from_secs(61)), Some(1));
        // Never more than a minute's worth, however long it was quiet.
        let much_later = start + Duration::from_secs(3600);
        assert!(budget.take(600, much_later));
        assert!(!budget.take(1, much_later));
    }

    #[test]
    fn an_uncaught_exception_is_told_by_its_last_lines_before_the_runtime_notice() {
        let stderr: Vec<String> = [
            "Traceback (most recent call last):",
            "  File \"/0/app.py\", line 44, in propose",
            "ValueError: out of ideas",
            "",
            "thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:",
            "Python function threw an unexpected exception",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(uncaught(&stderr), "ValueError: out of ideas");
        let spidermonkey: Vec<String> =
            ["expected a string, received [object]", "Stack:", "  propose@app.js:5:11", "", "Redirecting call to abort() to mozalloc_abort"]
                .map(String::from)
                .to_vec();
        assert_eq!(uncaught(&spidermonkey), "expected a string, received [object]");
        assert_eq!(uncaught(&["only a runtime notice".to_owned()]), "only a runtime notice");
    }

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        assert!(matches!(escape_controls("plain ünïcode"), std::borrow::Cow::Borrowed("plain ünïcode")));
        assert_eq!(escape_controls("a\nb\r\tc\u{1b}[0m"), r"a\nb\r\tc\u{1b}[0m");
        assert_eq!(escape_controls("x\u{2028}y\u{202e}z"), r"x\u{2028}y\u{202e}z");
        assert_eq!(printable("ab\ncd", 3), r"ab\n… [truncated]");
    }

    #[test]
    fn a_log_record_escapes_only_what_it_keeps_and_reads_as_if_all_were_escaped() {
        // What escaping all of the message, then cutting it, gives.
        let whole = |message: &str, limit: usize| {
            let mut record = escape_controls(message).into_owned();
            if record.len() > limit {
                let mut cut = limit.saturating_sub("… [truncated]".len());
                while !record.is_char_boundary(cut) {
                    cut -= 1;
                }
                record.truncate(cut);
                record.push_str("… [truncated]");
            }
            record
        };
        for unit in ["x", "\u{1}", "é", "\u{2028}", "🦀", "ab\n"] {
            for repeats in [0, 1, 15, 16, 17, 40, 41, 42, 100] {
                let message = unit.repeat(repeats);
                for limit in [0, 1, 13, 14, 16, 20, 40, 64] {
                    assert_eq!(log_record(&message, limit), whole(&message, limit), "{message:?} at {limit}");
                }
            }
        }
        // 64 MiB of control characters: one capped record.
        let huge = "\u{1}".repeat(64 << 20);
        let record = log_record(&huge, 4096);
        assert!(record.len() <= 4096 && record.starts_with(r"\u{1}\u{1}") && record.ends_with("… [truncated]"), "{}", record.len());
    }
}
