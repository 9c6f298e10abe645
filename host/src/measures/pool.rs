//! Several architectures in flight at once.
//!
//! At C=16 and batch 64 one network keeps a GPU mostly idle: each of its thousands of
//! small kernels costs more to launch from the CPU than to run. Measuring several
//! architectures on worker threads overlaps those launches, since libtorch dispatches
//! from every thread at once. On a CPU libtorch's own threads already share the cores
//! among the operations of one network, so one worker is the default there.
//!
//! Every worker measures with its own replica of the suite (the same batch, seed and
//! random signs), so on a CPU an architecture's values depend neither on which worker
//! measured it nor on how many there were (bit for bit, tested); on a GPU they differ in
//! the last bit at most, as two one-worker CUDA runs already do. On a GPU each worker
//! launches on a CUDA stream of its own (`cuda_stream.rs`): on the shared default stream
//! the GPU would run the kernels of all architectures one after another. Results are
//! handed on in the candidates' order. A panic on a worker is caught and handed on, in its turn, as
//! that architecture's error, so the caller sees it instead of waiting on a result that
//! would never come.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use tch::Device;

use super::{Measure, MeasureError, Measured, Suite};
use crate::space::Candidate;

/// Measures every candidate with `wanted` on `workers` threads (1: on this thread) and
/// calls `on_done(index, result)` for each, in the candidates' order. An error returned
/// by `on_done` stops the work: the workers finish the architecture in hand and take no
/// other, and the error is returned.
pub fn measure_in_order<E>(
    suite: &Suite,
    candidates: &[Candidate],
    wanted: &[Measure],
    workers: usize,
    on_done: &mut dyn FnMut(usize, Result<Measured, MeasureError>) -> Result<(), E>,
) -> Result<(), E> {
    // The first candidate is measured on this thread; the rest need at most one worker each.
    let workers = workers.clamp(1, candidates.len().saturating_sub(1).max(1));
    // libtorch initialises some libraries lazily on first use, and not every such
    // initialisation is safe to race (CUDA's linear algebra library fails with "lazy
    // wrapper should be called at most once"): the linear algebra explicitly, then the
    // first architecture, on this thread. Should the warm-up fail, every candidate is
    // measured here, one by one, and says why it failed.
    if workers == 1 || suite.warm_up().is_err() {
        for (i, candidate) in candidates.iter().enumerate() {
            on_done(i, suite.measure(candidate, wanted))?;
        }
        return Ok(());
    }
    on_done(0, suite.measure(&candidates[0], wanted))?;
    let next = AtomicUsize::new(1);
    let stop = AtomicBool::new(false);
    let (sender, results) = mpsc::channel();
    // The batch was written on the default stream, which the workers' streams do not wait
    // for: everything queued so far finishes first.
    if let Device::Cuda(index) = suite.batch().0.device() {
        tch::Cuda::synchronize(index as i64);
    }
    std::thread::scope(|scope| {
        for slot in 0..workers {
            let replica = suite.replica();
            let sender = sender.clone();
            let (next, stop) = (&next, &stop);
            scope.spawn(move || {
                own_cuda_stream(&replica, slot);
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(candidate) = candidates.get(i) else { break };
                    // A panic inside is this candidate's error (see `Suite::measure`).
                    let result = replica.measure(candidate, wanted);
                    if sender.send((i, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        // Results arrive in completion order; hold each until those before it are out.
        let mut waiting = BTreeMap::new();
        let mut due = 1;
        for (i, result) in results {
            waiting.insert(i, result);
            while let Some(result) = waiting.remove(&due) {
                if let Err(e) = on_done(due, result) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                due += 1;
            }
        }
        Ok(())
    })
}

/// Whether workers on a GPU launch on streams of their own (the default). Only a benchmark
/// comparing the two has reason to turn it off (`set_own_cuda_streams`).
static OWN_CUDA_STREAMS: AtomicBool = AtomicBool::new(true);

/// Workers started from now on launch on streams of their own (`true`, the default) or all
/// on the device's default stream (`false`, as knas did before it had streams): for
/// benchmarks that measure what the streams are worth on the same machine.
pub fn set_own_cuda_streams(own: bool) {
    OWN_CUDA_STREAMS.store(own, Ordering::Relaxed);
}

/// On a GPU, moves this worker's kernels off the default stream onto the stream of its
/// slot (the same one in every batch: libtorch keeps memory per stream), so that the GPU
/// can run the small kernels of several architectures side by side instead of one after
/// another. Without it (an old driver, a refused pool) the worker goes on, on
/// the shared default stream, where it is only slower: the same kernels compute the same
/// values either way.
fn own_cuda_stream(replica: &Suite, slot: usize) {
    let Device::Cuda(index) = replica.batch().0.device() else { return };
    if !OWN_CUDA_STREAMS.load(Ordering::Relaxed) {
        return;
    }
    if let Err(reason) = super::cuda_stream::use_own_stream(index, slot) {
        tracing::warn!(%reason, "a measuring worker stays on the default CUDA stream");
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;
    use crate::measures::tests::tiny_suite;
    use crate::space::Arch;

    fn candidates(n: usize) -> Vec<Candidate> {
        (0..n).map(|i| Arch::from_index((i * 7919 + 11) % crate::space::NUM_ARCHS).unwrap().into()).collect()
    }

    fn run(workers: usize, n: usize) -> Vec<(usize, Vec<Option<u64>>)> {
        let suite = tiny_suite(8, Kind::Double, 3);
        let mut seen = Vec::new();
        measure_in_order::<MeasureError>(&suite, &candidates(n), &Measure::ALL, workers, &mut |i, result| {
            let measured = result?;
            seen.push((i, Measure::ALL.iter().map(|m| measured.get(*m).map(f64::to_bits)).collect()));
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn several_workers_give_the_sequential_values_in_the_same_order() {
        let sequential = run(1, 7);
        assert_eq!(sequential.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
        // Bit for bit: every measure of every architecture, whichever worker measured it.
        assert_eq!(run(3, 7), sequential);
        assert_eq!(run(16, 7), sequential, "more workers than candidates");
    }

    #[test]
    fn an_error_from_the_caller_stops_the_work() {
        let suite = tiny_suite(4, Kind::Float, 0);
        let mut handed = 0;
        let outcome = measure_in_order(&suite, &candidates(40), &[Measure::Params], 2, &mut |i, _| {
            handed += 1;
            if i == 2 { Err("enough") } else { Ok(()) }
        });
        assert_eq!(outcome, Err("enough"));
        assert_eq!(handed, 3, "nothing is handed on after the error");
    }
}
