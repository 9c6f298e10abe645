//! Scoring and training throughput, and memory over a long scoring run.
//!
//! ```text
//! cargo bench -p knas --bench throughput -- [--archs 20] [--threads 2] [--memory-archs 3000]
//! ```
//!
//! Settings match the PyTorch eager reference in `pytorch_reference.py`: C=16, N=5,
//! batch 64, random 3×32×32 inputs, 10 classes, and the fixed architecture list
//! index = (i · 7919) mod 15625. Each figure is printed as one JSON line.

use std::time::Instant;

use clap::Parser;
use knas::data::{Augment, TensorData};
use knas::kernel::{KernelScorer, ScoreMode};
use knas::model::NetworkSpec;
use knas::space::{Arch, Candidate, NUM_ARCHS};
use knas::train::{TrainConfig, Trainer};
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// Architectures timed on the fast path, per mode; 0 skips.
    #[arg(long, default_value_t = 20)]
    archs: usize,
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

    for mode in [ScoreMode::PerSample, ScoreMode::Batch].into_iter().filter(|_| args.archs > 0) {
        let scorer = KernelScorer::new(spec, mode, x.shallow_clone(), y.shallow_clone(), 0);
        scorer.score(&arch(0).into()).expect("warm-up");
        let (mut total, mut compute) = (0.0, 0.0);
        for i in 0..args.archs {
            let score = scorer.score(&arch(i).into()).expect("score");
            total += score.seconds;
            compute += score.compute_seconds;
        }
        let n = args.archs as f64;
        println!(
            "{}",
            json!({
                "benchmark": "score-fast", "mode": mode.name(), "device": args.device, "threads": args.threads,
                "archs": args.archs, "seconds_per_arch": total / n, "compute_seconds_per_arch": compute / n,
                "archs_per_second": n / total, "compute_archs_per_second": n / compute,
            })
        );
    }

    if args.reference_archs > 0 {
        let scorer = KernelScorer::new(spec, ScoreMode::PerSample, x.shallow_clone(), y.shallow_clone(), 0);
        let mut total = 0.0;
        for i in 0..args.reference_archs {
            total += scorer.score_reference(&arch(i).into()).expect("reference").seconds;
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
            rates.push(trainer.run(&arch(i), 0, 0, &mut |_, _| {}).expect("train").images_per_second);
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
        let scorer = KernelScorer::new(small, ScoreMode::PerSample, sx, sy, 0);
        let mut samples = vec![];
        let start = Instant::now();
        for i in 0..args.memory_archs {
            let candidate: Candidate = arch(i).into();
            scorer.score(&candidate).expect("score");
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
