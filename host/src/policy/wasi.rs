//! The WASI a policy sees: the interfaces other languages' tool-chains import
//! (componentize-py, ComponentizeJS), linked so that they grant nothing.
//!
//! | interface | what a policy gets |
//! |---|---|
//! | `wasi:cli/environment` | no variables, no arguments, no working directory |
//! | `wasi:cli/stdin` | closed (end of stream) |
//! | `wasi:cli/stdout`, `stderr` | captured: each line becomes a log record of the policy (stdout at info, stderr at warn) under the same caps as `host.log`; at most [`STDIO_BYTES`] per instance, after which writes fail |
//! | `wasi:cli/exit` | ends the instance: the call fails, naming the policy |
//! | `wasi:random/*` | streams seeded from the run's seed, so a run stays reproducible |
//! | `wasi:clocks/wall-clock` | frozen at 2000-01-01T00:00:00Z |
//! | `wasi:clocks/monotonic-clock` | advances 1 µs per reading, so timing loops end and nothing depends on the machine's speed |
//! | `wasi:filesystem/*` | no preopened directories: nothing to open |
//! | `wasi:sockets/*` | every address refused, no name lookup |
//!
//! Any other WASI interface (`wasi:http`, …) is refused when the file is loaded
//! (`contract.rs`), with its name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand10::SeedableRng;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView};

/// What one instance may write to stdout and to stderr, each, over its life.
pub const STDIO_BYTES: usize = 4 << 20;

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
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    /// Bytes of stdout and stderr already turned into log records.
    seen: [usize; 2],
}

impl PolicyWasi {
    /// A context granting nothing, with random streams derived from `seed`.
    pub fn new(seed: u64) -> PolicyWasi {
        let stdout = MemoryOutputPipe::new(STDIO_BYTES);
        let stderr = MemoryOutputPipe::new(STDIO_BYTES);
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .secure_random(rand10::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_0f_5ec0_7e))
            .insecure_random(rand10::rngs::StdRng::seed_from_u64(seed ^ 0x1_05ec_0e))
            .insecure_random_seed(u128::from(seed) << 64 | 0x7a11)
            .wall_clock(FrozenClock)
            .monotonic_clock(StepClock(AtomicU64::new(0)))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PolicyWasi { ctx, table: ResourceTable::new(), stdout, stderr, seen: [0, 0] }
    }

    /// WASI's view of this state.
    pub fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }

    /// What was written since the last call, as (stream, line) pairs; a last line without
    /// its newline is kept for later unless `all`.
    pub fn drain(&mut self, all: bool) -> Vec<(&'static str, String)> {
        let mut lines = Vec::new();
        for (i, (name, pipe)) in [("stdout", &self.stdout), ("stderr", &self.stderr)].into_iter().enumerate() {
            let contents = pipe.contents();
            let new = &contents[self.seen[i].min(contents.len())..];
            let end = if all { new.len() } else { new.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1) };
            for line in String::from_utf8_lossy(&new[..end]).lines() {
                lines.push((name, line.to_owned()));
            }
            self.seen[i] += end;
        }
        lines
    }
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

/// A monotonic clock that advances one microsecond each time it is read.
struct StepClock(AtomicU64);

impl HostMonotonicClock for StepClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(FrozenClock.now(), FrozenClock.now());
        let clock = StepClock(AtomicU64::new(0));
        assert_eq!((clock.now(), clock.now()), (1_000, 2_000));
        let mut wasi = PolicyWasi::new(7);
        use wasmtime_wasi::p2::OutputStream;
        let _ = <MemoryOutputPipe as OutputStream>::write(&mut wasi.stdout.clone(), bytes::Bytes::from_static(b"one\ntw"));
        assert_eq!(wasi.drain(false), vec![("stdout", "one".to_owned())]);
        let _ = <MemoryOutputPipe as OutputStream>::write(&mut wasi.stdout.clone(), bytes::Bytes::from_static(b"o\n"));
        assert_eq!(wasi.drain(false), vec![("stdout", "two".to_owned())]);
        assert!(wasi.drain(true).is_empty());
    }
}
