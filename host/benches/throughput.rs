//! Scoring and training throughput, and memory over a long scoring run.
//!
//! ```text
//! cargo bench -p knas --bench throughput -- [--archs 20] [--threads 2] [--memory-archs 3000]
//!     [--workers 1,2,4,8 --parallel-archs 200 [--shared-stream-too] [--parallel-measures M,…]] [--device cuda]
//! ```
//!
//! Settings match the PyTorch eager reference in `pytorch_reference.py`: C=16, N=5,
//! batch 64, random 3×32×32 inputs, 10 classes, and the fixed architecture list
//! index = (i · 7919) mod 15625. Each figure is printed as one JSON line.

use std::time::Instant;

use clap::Parser;
use knas::data::{Augment, TensorData};
use knas::measures::aggregate::AggregateSpec;
use knas::measures::{Measure, Suite};
use knas::model::NetworkSpec;
use knas::space::{Arch, Candidate, NUM_ARCHS};
use knas::train::{TrainConfig, Trainer};
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// Architectures timed per measure set; 0 skips.
    #[arg(long, default_value_t = 20)]
    archs: usize,
    /// Interleaved rounds over the measure sets; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also time every measure on its own.
    #[arg(long)]
    each: bool,
    /// Architectures timed on the per-sample reference loop; 0 skips.
    #[arg(long, default_value_t = 3)]
    reference_archs: usize,
    /// libtorch CPU threads.
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Architectures scored (on small networks) while watching resident memory; 0 skips.
    #[arg(long, default_value_t = 3000)]
    memory_archs: usize,
    /// Training images per architecture for the training figure; 0 skips.
    #[arg(long, default_value_t = 1024)]
    train_images: i64,
    /// Worker counts to time the aggregate's measures with, several architectures in
    /// flight at once (see `knas::measures::pool`); empty skips.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Also time each worker count with every worker on the device's default stream
    /// (`knas::measures::pool::set_own_cuda_streams(false)`), for comparison.
    #[arg(long)]
    shared_stream_too: bool,
    /// Architectures measured for each worker count.
    #[arg(long, default_value_t = 200)]
    parallel_archs: usize,
    /// Measures timed with several workers (comma-separated names); the aggregate's when
    /// empty. Timing one pass alone shows which of them limits the throughput.
    #[arg(long, value_delimiter = ',')]
    parallel_measures: Vec<Measure>,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn arch(i: usize) -> Arch {
    Arch::from_index((i * 7919) % NUM_ARCHS).expect("in range")
}

/// Resident set size in MiB, from /proc (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn median(values: &[f64]) -> f64 {
    knas::stats::median(values).unwrap_or(f64::NAN)
}

fn random_batch(n: i64, device: Device) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let x = Tensor::randn([n, 3, 32, 32], (Kind::Float, device));
    let y = Tensor::randint(10, [n], (Kind::Int64, device));
    (x, y)
}

fn main() {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let device = if args.device == "cuda" { Device::Cuda(0) } else { Device::Cpu };
    let spec = NetworkSpec::nb201(3, (32, 32), 10);
    let (x, y) = random_batch(64, device);

    // Measure sets timed: KNAS's MGM alone (both BN modes), the default aggregate's
    // measures, every measure; with --each, every measure on its own too.
    let aggregate = AggregateSpec::default().measures();
    let mut sets: Vec<(String, Vec<Measure>)> = vec![
        ("mgm".into(), vec![Measure::Mgm]),
        ("mgm-batch".into(), vec![Measure::MgmBatch]),
        ("aggregate".into(), aggregate),
        ("all".into(), Measure::ALL.to_vec()),
    ];
    if args.each {
        sets.extend(Measure::ALL.iter().map(|m| (m.name().to_owned(), vec![*m])));
    }
    let suite = Suite::new(spec, x.shallow_clone(), y.shallow_clone(), 0);
    if args.archs > 0 || !args.workers.is_empty() {
        suite.measure(&arch(0).into(), &Measure::ALL).expect("warm-up");
    }
    // Interleaved rounds, so that the machine's drift affects every set alike.
    let mut totals = vec![Vec::new(); sets.len()];
    for _round in 0..args.rounds.max(1) {
        for ((_, measures), total) in sets.iter().zip(&mut totals) {
            let mut seconds = 0.0;
            for i in 0..args.archs {
                seconds += suite.measure(&arch(i).into(), measures).expect("measure").seconds;
            }
            total.push(seconds / args.archs.max(1) as f64);
        }
    }
    let mgm = median(&totals[0]);
    for ((name, measures), total) in sets.iter().zip(&totals).filter(|_| args.archs > 0) {
        let per_arch = median(total);
        println!(
            "{}",
            json!({
                "benchmark": "measure", "set": name, "measures": measures, "device": args.device, "threads": args.threads,
                "archs": args.archs, "rounds": args.rounds, "seconds_per_arch": per_arch, "archs_per_second": 1.0 / per_arch,
                "relative_to_mgm": per_arch / mgm,
            })
        );
    }

    if !args.workers.is_empty() {
        parallel(&suite, &args);
    }

    if args.reference_archs > 0 {
        let mut total = 0.0;
        for i in 0..args.reference_archs {
            let start = Instant::now();
            let (_vs, mut net) = suite.network(&arch(i).into());
            net.set_exhaustive(true);
            knas::measures::kernel::reference_mgm(&net, &x, &y).expect("reference");
            total += start.elapsed().as_secs_f64();
        }
        let n = args.reference_archs as f64;
        println!(
            "{}",
            json!({
                "benchmark": "score-reference-loop", "mode": "per-sample", "device": args.device,
                "threads": args.threads, "archs": args.reference_archs,
                "seconds_per_arch": total / n, "archs_per_second": n / total,
            })
        );
    }

    if args.train_images > 0 {
        let (images, labels) = random_batch(args.train_images, device);
        let (hx, hy) = random_batch(256, device);
        let train = TensorData { images, labels };
        let heldout = TensorData { images: hx, labels: hy };
        let trainer = Trainer {
            spec,
            config: TrainConfig { epochs: 1, batch_size: 64, ..TrainConfig::default() },
            train: &train,
            heldout: &heldout,
            augment: Augment::CropFlip,
        };
        let mut rates = Vec::new();
        // Index 0 is the all-`none` cell, nearly free to train: start at 1.
        for i in 1..=2 {
            rates.push(trainer.run(&arch(i), 0, 0, &mut |_, _| {}, &|| false).expect("train").images_per_second);
        }
        println!(
            "{}",
            json!({
                "benchmark": "train", "device": args.device, "threads": args.threads, "batch_size": 64,
                "augment": "crop+flip", "images_per_second": rates.iter().sum::<f64>() / rates.len() as f64,
            })
        );
    }

    if args.memory_archs > 0 {
        // Small networks so thousands of scores take a minute; what matters is the trend.
        let small = NetworkSpec { channels: 4, cells: 1, ..spec };
        let (sx, sy) = random_batch(16, device);
        let small_suite = Suite::new(small, sx, sy, 0);
        let aggregate = AggregateSpec::default().measures();
        let mut samples = vec![];
        let start = Instant::now();
        for i in 0..args.memory_archs {
            let candidate: Candidate = arch(i).into();
            small_suite.measure(&candidate, &aggregate).expect("measure");
            if i % (args.memory_archs / 6).max(1) == 0 || i + 1 == args.memory_archs {
                samples.push(json!({"scored": i + 1, "rss_mib": rss_mib()}));
            }
        }
        println!(
            "{}",
            json!({
                "benchmark": "memory", "archs": args.memory_archs, "seconds": start.elapsed().as_secs_f64(),
                "rss": samples,
            })
        );
    }
}

/// The aggregate's measures with several architectures in flight: throughput per worker
/// count, and whether every value equals the one-worker value bit for bit.
fn parallel(suite: &Suite, args: &Args) {
    let measures = if args.parallel_measures.is_empty() { AggregateSpec::default().measures() } else { args.parallel_measures.clone() };
    let set = if args.parallel_measures.is_empty() { "aggregate".to_owned() } else { measures.iter().map(|m| m.name()).collect::<Vec<_>>().join(",") };
    let candidates: Vec<Candidate> = (0..args.parallel_archs).map(|i| arch(i).into()).collect();
    let mut first: Option<Vec<Vec<Option<u64>>>> = None;
    let streams = if args.shared_stream_too { vec![true, false] } else { vec![true] };
    for (&workers, own_streams) in args.workers.iter().flat_map(|w| streams.iter().map(move |s| (w, *s))) {
        knas::measures::pool::set_own_cuda_streams(own_streams);
        let start = Instant::now();
        let mut values = Vec::with_capacity(candidates.len());
        knas::measures::pool::measure_in_order::<knas::measures::MeasureError>(suite, &candidates, &measures, workers, &mut |_, m| {
            let m = m?;
            values.push(measures.iter().map(|k| m.get(*k).map(f64::to_bits)).collect::<Vec<_>>());
            Ok(())
        })
        .expect("measure");
        let seconds = start.elapsed().as_secs_f64();
        let identical = first.as_ref().map(|f| *f == values);
        let difference = first.as_ref().map(|f| largest_relative_difference(f, &values));
        if first.is_none() {
            first = Some(values);
        }
        println!(
            "{}",
            json!({
                "benchmark": "parallel", "set": set, "device": args.device, "threads": args.threads, "workers": workers,
                "own_cuda_streams": own_streams, "archs": candidates.len(), "seconds": seconds, "archs_per_second": candidates.len() as f64 / seconds,
                "identical_to_first": identical, "largest_relative_difference": difference, "first_workers": args.workers[0],
            })
        );
    }
}

/// The largest |a − b| / max(|a|, |b|) over values present in both (bit patterns of f64).
fn largest_relative_difference(a: &[Vec<Option<u64>>], b: &[Vec<Option<u64>>]) -> f64 {
    let pairs = a.iter().flatten().zip(b.iter().flatten());
    pairs
        .filter_map(|(x, y)| Some((f64::from_bits((*x)?), f64::from_bits((*y)?))))
        .map(|(x, y)| if x == y { 0.0 } else { (x - y).abs() / x.abs().max(y.abs()) })
        .fold(0.0, f64::max)
}
