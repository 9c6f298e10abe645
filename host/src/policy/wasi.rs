//! The WASI a policy sees: the interfaces other languages' tool-chains import
//! (componentize-py, ComponentizeJS), linked so that they grant nothing.
//!
//! | interface | what a policy gets |
//! |---|---|
//! | `wasi:cli/environment` | no variables, no arguments, no working directory |
//! | `wasi:cli/stdin` | closed (end of stream) |
//! | `wasi:cli/stdout`, `stderr` | captured: each line becomes a log record of the policy (stdout at info, stderr at warn) under the same caps as `host.log`; at most [`STDIO_BYTES`] per call, after which writes fail (an unfinished line waits past a call up to [`PARTIAL_LINE_BYTES`]) |
//! | `wasi:cli/exit` | ends the instance: the call fails, naming the policy |
//! | `wasi:random/*` | streams seeded from the run's seed, so a run stays reproducible |
//! | `wasi:clocks/wall-clock` | frozen at 2000-01-01T00:00:00Z |
//! | `wasi:clocks/monotonic-clock` | advances 1 µs per reading; a sleep or timeout (`subscribe-duration`, `subscribe-instant`) is ready at once and moves the clock forward by its length — so nothing waits in real time (where the call deadline could not reach it) and nothing depends on the machine's speed |
//! | `wasi:filesystem/*` | no preopened directories: nothing to open |
//! | `wasi:sockets/*` | every address refused, no name lookup |
//!
//! Any other WASI interface (`wasi:http`, …) is refused when the file is loaded
//! (`contract.rs`), with its name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand10::SeedableRng;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError, subscribe};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView};

/// What one call may write to stdout and to stderr, each.
pub const STDIO_BYTES: usize = 4 << 20;

/// The longest unfinished line (no newline yet) that waits for its end past a call: a
/// longer one is a record at once, so text a policy never ends (`\r` progress) cannot fill
/// the next calls' room.
pub const PARTIAL_LINE_BYTES: usize = 64 << 10;

/// The most WASI resources (streams, pollables) an instance may hold at once: they live in
/// the host's memory, outside the policy's own limit. Far above what a language runtime
/// keeps open; a policy that leaks them traps instead of growing the host.
pub const MAX_RESOURCES: usize = 1 << 16;

/// The WASI packages a policy may import (every one of them linked to deny).
pub const ALLOWED_PACKAGES: [&str; 6] = ["wasi:io/", "wasi:clocks/", "wasi:random/", "wasi:cli/", "wasi:filesystem/", "wasi:sockets/"];

/// Whether `import` (`wasi:io/poll@0.2.9`) is a WASI 0.2 interface policies may import.
pub fn allowed_import(import: &str) -> bool {
    ALLOWED_PACKAGES.iter().any(|package| import.strip_prefix(package).is_some_and(|rest| rest.contains("@0.2.")))
}

/// One instance's WASI state.
pub struct PolicyWasi {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: Captured,
    stderr: Captured,
    /// The monotonic clock's reading (ns), shared with the clock WASI reads.
    clock: Arc<AtomicU64>,
}

impl PolicyWasi {
    /// A context granting nothing, with random streams derived from `seed`.
    pub fn new(seed: u64) -> PolicyWasi {
        let clock = Arc::new(AtomicU64::new(0));
        let stdout = Captured::default();
        let stderr = Captured::default();
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .secure_random(rand10::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_0f5e_c07e))
            .insecure_random(rand10::rngs::StdRng::seed_from_u64(seed ^ 0x105_ec0e))
            .insecure_random_seed(u128::from(seed) << 64 | 0x7a11)
            .wall_clock(FrozenClock)
            .monotonic_clock(StepClock(clock.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        PolicyWasi { ctx, table, stdout, stderr, clock }
    }

    /// A pollable that is ready at once, with the clock moved forward to `until` (ns).
    fn sleep_until(&mut self, until: u64) -> wasmtime::Result<Resource<DynPollable>> {
        self.clock.fetch_max(until, Ordering::Relaxed);
        let ready = self.table.push(Ready)?;
        subscribe(&mut self.table, ready)
    }

    /// WASI's view of this state.
    pub fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }

    /// What was written since the last call, per stream (stdout, then stderr, each only
    /// when it has something), taken out of the buffers; a last line without its newline
    /// is kept for later unless `all` (or it is longer than [`PARTIAL_LINE_BYTES`]).
    pub fn drain(&mut self, all: bool) -> Vec<(&'static str, Vec<u8>)> {
        let mut taken = Vec::new();
        for (name, stream) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let mut buffer = stream.lock();
            let ended = buffer.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            let end = if all || buffer.len() - ended > PARTIAL_LINE_BYTES { buffer.len() } else { ended };
            if end > 0 {
                taken.push((name, buffer.drain(..end).collect()));
            }
        }
        taken
    }
}

/// A stdout or stderr whose bytes wait in memory until the host turns them into log
/// records after each call; at most [`STDIO_BYTES`] may wait.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes as much of `bytes` as fits.
    fn take(&self, bytes: &[u8]) -> usize {
        let mut buffer = self.lock();
        let fits = bytes.len().min(STDIO_BYTES.saturating_sub(buffer.len()));
        buffer.extend_from_slice(&bytes[..fits]);
        fits
    }
}

#[async_trait::async_trait]
impl OutputStream for Captured {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        if self.take(&bytes) < bytes.len() {
            return Err(StreamError::Trap(wasmtime::format_err!("the policy wrote more than {STDIO_BYTES} bytes in one call")));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        match STDIO_BYTES.saturating_sub(self.lock().len()) {
            0 => Err(StreamError::Closed),
            room => Ok(room),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>, bytes: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Ok(self.take(bytes)))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Replaces wasmtime-wasi's `subscribe-duration` and `subscribe-instant` (which wait in
/// real time, out of the call deadline's reach: a policy's `sleep` would hold the host's
/// thread) with pollables that are ready at once, the step clock moved forward instead.
/// `wasi` projects a store's state to its [`PolicyWasi`].
pub fn link_virtual_sleep<T: 'static>(linker: &mut Linker<T>, wasi: fn(&mut T) -> &mut PolicyWasi) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-duration", move |mut store, (nanos,): (u64,)| {
        let wasi = wasi(store.data_mut());
        let now = wasi.clock.load(Ordering::Relaxed);
        Ok((wasi.sleep_until(now.saturating_add(nanos))?,))
    })?;
    clock.func_wrap("subscribe-instant", move |mut store, (when,): (u64,)| Ok((wasi(store.data_mut()).sleep_until(when)?,)))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Ready at once.
struct Ready;

#[async_trait::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

/// A wall clock that always reads 2000-01-01T00:00:00Z.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(946_684_800)
    }
}

/// A monotonic clock that advances one microsecond each time it is read (and by the length
/// of every sleep).
struct StepClock(Arc<AtomicU64>);

impl HostMonotonicClock for StepClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        // A policy can move the clock anywhere, up to u64::MAX (`subscribe-instant`): it
        // stops there rather than wrap around and run backwards.
        let step = |t: u64| Some(t.saturating_add(1_000));
        let before = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step).unwrap_or_else(|t| t);
        before.saturating_add(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_clock_never_runs_backwards() {
        for start in [0, u64::MAX - 10, u64::MAX] {
            let clock = StepClock(Arc::new(AtomicU64::new(start)));
            let (a, b) = (clock.now(), clock.now());
            assert!(a >= start && b >= a, "{start}: {a} then {b}");
        }
    }

    #[test]
    fn only_wasi_0_2_interfaces_that_grant_nothing_are_allowed() {
        for ok in ["wasi:io/poll@0.2.9", "wasi:cli/stdout@0.2.0", "wasi:filesystem/preopens@0.2.9", "wasi:sockets/tcp@0.2.3"] {
            assert!(allowed_import(ok), "{ok}");
        }
        for refused in ["wasi:http/outgoing-handler@0.2.0", "wasi:io/poll@0.3.0", "wasi:nn/graph@0.2.0", "wasix:io/poll@0.2.0", "wasi:io/poll"] {
            assert!(!allowed_import(refused), "{refused}");
        }
    }

    #[test]
    fn clocks_are_frozen_or_step_and_output_is_drained_by_line() {
        // 2000-01-01, whenever it is read.
        assert_eq!(FrozenClock.now(), Duration::from_secs(946_684_800));
        let clock = StepClock(Arc::new(AtomicU64::new(0)));
        assert_eq!((clock.now(), clock.now()), (1_000, 2_000));
        let mut wasi = PolicyWasi::new(7);
        let _ = wasi.stdout.clone().write(bytes::Bytes::from_static(b"one\ntw"));
        assert_eq!(wasi.drain(false), vec![("stdout", b"one\n".to_vec())]);
        let _ = wasi.stdout.clone().write(bytes::Bytes::from_static(b"o\n"));
        assert_eq!(wasi.drain(false), vec![("stdout", b"two\n".to_vec())]);
        // The cap is per call: what was drained no longer counts.
        let mut stdout = wasi.stdout.clone();
        for _ in 0..3 {
            assert!(stdout.write(bytes::Bytes::from(vec![b'x'; STDIO_BYTES])).is_ok());
            assert!(stdout.write(bytes::Bytes::from_static(b"y")).is_err());
            assert_eq!(wasi.drain(true).len(), 1);
        }
        assert!(wasi.drain(true).is_empty());
        // Nor does a long line left unfinished at the end of a call: it is a record then.
        assert!(stdout.write(bytes::Bytes::from(vec![b'x'; STDIO_BYTES - 1])).is_ok());
        assert_eq!(wasi.drain(false).len(), 1);
        assert!(stdout.write(bytes::Bytes::from_static(b"y")).is_ok());
        assert_eq!(wasi.drain(false), vec![]);
        assert_eq!(wasi.drain(true), vec![("stdout", b"y".to_vec())]);
    }

    #[test]
    fn an_instance_holds_a_bounded_number_of_resources() {
        let mut wasi = PolicyWasi::new(7);
        let held: Vec<_> = (0..MAX_RESOURCES).map(|_| wasi.table.push(Ready).expect("within the bound")).collect();
        assert!(wasi.table.push(Ready).is_err(), "one more is refused");
        drop(held);
    }
}
