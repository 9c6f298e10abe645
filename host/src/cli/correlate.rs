//! `knas correlate`: how well does MGM rank architectures on this data?
//!
//! Scores a seeded sample of architectures, trains each under several training seeds, and
//! reports rank correlations between each measure and the mean held-out accuracy and loss.
//! Parameter count and FLOPs are reported too, as the baselines any training-free score
//! has to beat; so is the agreement between training seeds, the noise floor of the truth.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use knas::kernel::ScoreMode;
use knas::space::Arch;
use knas::stats::{kendall, spearman};
use plotters::prelude::*;

use super::output::{self, Report};
use super::{ComputeArgs, ExperimentArgs, sample_archs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Modes {
    Batch,
    PerSample,
    Both,
}

#[derive(Debug, Args)]
pub struct CorrelateArgs {
    /// Architectures sampled (seeded by --seed).
    #[arg(long, default_value_t = 20)]
    sample: usize,
    /// Training seeds per architecture; metrics are averaged over them.
    #[arg(long, default_value_t = 2)]
    train_seeds: u64,
    /// Which MGM modes to evaluate (overrides --mode).
    #[arg(long = "modes", value_enum, default_value_t = Modes::Both)]
    modes: Modes,
    /// Write a score-vs-accuracy scatter plot (SVG) here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    experiment: ExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Output: tables, or one JSON document with every measurement.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

#[derive(Debug, serde::Serialize)]
struct Measured {
    arch: Arch,
    /// MGM per mode, in the order of `Report::modes`.
    scores: Vec<f64>,
    params: i64,
    flops: i64,
    /// Held-out accuracy per training seed.
    accuracy: Vec<f64>,
    /// Held-out loss per training seed.
    loss: Vec<f64>,
}

impl Measured {
    fn mean_accuracy(&self) -> f64 {
        self.accuracy.iter().sum::<f64>() / self.accuracy.len() as f64
    }
    fn mean_loss(&self) -> f64 {
        self.loss.iter().sum::<f64>() / self.loss.len() as f64
    }
}

#[derive(Debug, serde::Serialize)]
struct Correlation {
    measure: String,
    against: &'static str,
    spearman: Option<f64>,
    kendall: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
struct CorrelationReport {
    archs: usize,
    train_seeds: u64,
    epochs: usize,
    channels: i64,
    cells: i64,
    dataset: String,
    modes: Vec<ScoreMode>,
    correlations: Vec<Correlation>,
    measurements: Vec<Measured>,
}

pub fn run(args: &CorrelateArgs) -> Result<()> {
    anyhow::ensure!(args.sample >= 2, "--sample needs at least 2 architectures to correlate");
    anyhow::ensure!(args.train_seeds >= 1, "--train-seeds must be at least 1");
    let experiment = args.experiment.experiment();
    let modes = match args.modes {
        Modes::Batch => vec![ScoreMode::Batch],
        Modes::PerSample => vec![ScoreMode::PerSample],
        Modes::Both => vec![ScoreMode::PerSample, ScoreMode::Batch],
    };
    let engine = args.compute.engine(&experiment)?;
    let archs = sample_archs(args.sample, experiment.seed)?;

    let scorers: Vec<_> = modes.iter().map(|&mode| engine.scorer(mode)).collect();
    let bar = output::bar((archs.len() * modes.len()) as u64, "scoring");
    let mut measured = Vec::with_capacity(archs.len());
    for arch in &archs {
        let mut scores = Vec::new();
        let mut info = None;
        for scorer in &scorers {
            let score = scorer.score(&(*arch).into()).with_context(|| format!("scoring {arch}"))?;
            scores.push(score.mgm);
            info = Some(score.info);
            bar.inc(1);
        }
        let info = info.expect("at least one mode");
        measured.push(Measured { arch: *arch, scores, params: info.params, flops: info.flops, accuracy: vec![], loss: vec![] });
    }
    bar.finish_and_clear();

    let runs = archs.len() as u64 * args.train_seeds;
    let bar = output::bar(runs, "training");
    for m in &mut measured {
        for seed in 0..args.train_seeds {
            let result = engine
                .train(&m.arch, experiment.seed.wrapping_add(seed), &mut |_, _| {})
                .with_context(|| format!("training {} (seed {seed})", m.arch))?;
            m.accuracy.push(result.heldout_accuracy);
            m.loss.push(result.heldout_loss);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let report = CorrelationReport {
        archs: archs.len(),
        train_seeds: args.train_seeds,
        epochs: experiment.train.epochs,
        channels: experiment.channels,
        cells: experiment.cells,
        dataset: experiment.dataset.to_string(),
        correlations: correlations(&measured, &modes),
        modes,
        measurements: measured,
    };
    if let Some(path) = &args.plot {
        plot(&report, path).with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }
    match args.format {
        Report::Json => output::json(&report)?,
        Report::Table => print_report(&report),
    }
    Ok(())
}

fn correlations(measured: &[Measured], modes: &[ScoreMode]) -> Vec<Correlation> {
    let accuracy: Vec<f64> = measured.iter().map(Measured::mean_accuracy).collect();
    let loss: Vec<f64> = measured.iter().map(Measured::mean_loss).collect();
    let mut measures: Vec<(String, Vec<f64>)> = modes
        .iter()
        .enumerate()
        .map(|(i, mode)| (format!("MGM ({})", mode.name()), measured.iter().map(|m| m.scores[i]).collect()))
        .collect();
    measures.push(("params (baseline)".into(), measured.iter().map(|m| m.params as f64).collect()));
    measures.push(("FLOPs (baseline)".into(), measured.iter().map(|m| m.flops as f64).collect()));
    let mut out = Vec::new();
    for (name, values) in &measures {
        for (against, truth) in [("accuracy", &accuracy), ("loss", &loss)] {
            out.push(Correlation {
                measure: name.clone(),
                against,
                spearman: spearman(values, truth),
                kendall: kendall(values, truth),
            });
        }
    }
    // How much two training seeds agree: the ceiling any predictor can reach.
    if measured.first().is_some_and(|m| m.accuracy.len() >= 2) {
        for (against, pick) in [("accuracy", 0), ("loss", 1)] {
            let series = |seed: usize| -> Vec<f64> {
                measured.iter().map(|m| if pick == 0 { m.accuracy[seed] } else { m.loss[seed] }).collect()
            };
            out.push(Correlation {
                measure: "seed 0 vs seed 1 (noise floor)".into(),
                against,
                spearman: spearman(&series(0), &series(1)),
                kendall: kendall(&series(0), &series(1)),
            });
        }
    }
    out
}

fn fmt_corr(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:+.3}"))
}

fn print_report(r: &CorrelationReport) {
    println!(
        "{} architectures on {}, C={} N={}, {} epoch(s) × {} training seed(s)",
        r.archs, r.dataset, r.channels, r.cells, r.epochs, r.train_seeds
    );
    println!("A good score correlates positively with accuracy and negatively with loss.");
    let mut table = output::table(&["measure", "against held-out", "Spearman ρ", "Kendall τ"]);
    for c in &r.correlations {
        table.add_row(vec![c.measure.clone(), c.against.to_string(), fmt_corr(c.spearman), fmt_corr(c.kendall)]);
    }
    println!("{table}");
}

/// One scatter panel per mode: log10 MGM against mean held-out accuracy.
fn plot(r: &CorrelationReport, path: &Path) -> Result<()> {
    let width = 480 * r.modes.len() as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, r.modes.len()));
    for (i, (panel, mode)) in panels.iter().zip(&r.modes).enumerate() {
        let points: Vec<(f64, f64)> =
            r.measurements.iter().map(|m| (m.scores[i].max(f64::MIN_POSITIVE).log10(), 100.0 * m.mean_accuracy())).collect();
        let (x_min, x_max) = bounds(points.iter().map(|p| p.0));
        let (y_min, y_max) = bounds(points.iter().map(|p| p.1));
        let rho = r.correlations[2 * i].spearman.map_or("n/a".into(), |v| format!("{v:.3}"));
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("MGM ({}) vs accuracy, Spearman {rho}", mode.name()), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)?;
        chart.configure_mesh().x_desc("log10 MGM").y_desc("held-out accuracy (%)").draw()?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    }
    root.present()?;
    Ok(())
}

/// A padded range covering `values`.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}
