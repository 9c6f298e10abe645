//! `knas correlate`: how well does MGM rank architectures on this data?
//!
//! Scores a seeded sample of architectures, trains each under several training seeds, and
//! reports rank correlations between each measure and the mean held-out accuracy and loss,
//! with bootstrap intervals. Beside MGM stand the baselines any training-free score has to
//! beat: parameter count, FLOPs and the published measures of [`knas::baselines`]; and the
//! agreement between training seeds, the noise floor of the truth.
//!
//! Training is the expensive part, so a report can serve as the truth of a later run
//! (`--truth`): same architectures and trained results, measures recomputed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use knas::baselines::Baseline;
use knas::data::Holdout;
use knas::engine::Experiment;
use knas::kernel::ScoreMode;
use knas::space::Arch;
use knas::stats::{kendall, spearman, spearman_interval};
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
    /// Published training-free measures to compare against, comma-separated: snip,
    /// synflow, jacov (Jacobian covariance), naswot. Parameter count and FLOPs are always
    /// reported.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Baseline::ALL, conflicts_with = "no_baselines")]
    baselines: Vec<Baseline>,
    /// Compare MGM with parameter count and FLOPs only.
    #[arg(long)]
    no_baselines: bool,
    /// Take the architectures and their trained results from this earlier
    /// `knas correlate --format json` report instead of training (the measures are
    /// recomputed). Its data, split and networks (--dataset, --holdout, --limit,
    /// --channels, --cells, --seed) must match this run's.
    #[arg(long, value_name = "REPORT.json", conflicts_with_all = ["sample", "train_seeds"])]
    truth: Option<PathBuf>,
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
    /// MGM per mode, in the order of `CorrelationReport::modes`.
    scores: Vec<f64>,
    /// Each baseline's value, in the order of `CorrelationReport::baselines`; null where
    /// it could not be computed.
    baselines: Vec<Option<f64>>,
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
    /// 95% bootstrap interval of the Spearman ρ (architectures resampled).
    spearman_95: Option<(f64, f64)>,
    kendall: Option<f64>,
}

#[derive(Debug, serde::Serialize)]
struct CorrelationReport {
    /// Every setting of the run (a later `--truth` checks them).
    experiment: Experiment,
    archs: usize,
    train_seeds: u64,
    epochs: usize,
    modes: Vec<ScoreMode>,
    baselines: Vec<Baseline>,
    /// The report the trained results were taken from (`--truth`), if any.
    truth: Option<PathBuf>,
    correlations: Vec<Correlation>,
    measurements: Vec<Measured>,
}

/// Trained results read back from an earlier report (`--truth`).
#[derive(Debug, serde::Deserialize)]
struct TruthReport {
    experiment: Experiment,
    train_seeds: u64,
    measurements: Vec<TruthRow>,
}

#[derive(Debug, serde::Deserialize)]
struct TruthRow {
    arch: Arch,
    accuracy: Vec<f64>,
    loss: Vec<f64>,
}

/// The settings that decide what a trained result means: the data, its split, the
/// networks and their initial weights. A truth is only valid for the same ones.
fn trained_on(e: &Experiment) -> [(&'static str, String); 6] {
    let holdout = match e.holdout {
        Holdout::Fraction(f) => f.to_string(),
        Holdout::Official => "test".into(),
    };
    let limit = e.limit.map_or_else(|| "(none)".into(), |l| l.to_string());
    [
        ("--dataset", e.dataset.to_string()),
        ("--holdout", holdout),
        ("--limit", limit),
        ("--channels", e.channels.to_string()),
        ("--cells", e.cells.to_string()),
        ("--seed", e.seed.to_string()),
    ]
}

impl TruthReport {
    /// Reads `path` and checks that it can serve as the truth for `experiment`.
    fn load(path: &Path, experiment: &Experiment) -> Result<TruthReport> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let truth: TruthReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a `knas correlate --format json` report", path.display()))?;
        let differences: Vec<String> = trained_on(&truth.experiment)
            .into_iter()
            .zip(trained_on(experiment))
            .filter(|(there, here)| there != here)
            .map(|((flag, there), (_, here))| format!("trained with {flag} {there}, this run has {flag} {here}"))
            .collect();
        anyhow::ensure!(
            differences.is_empty(),
            "{}: {}; pass the same settings",
            path.display(),
            differences.join("; ")
        );
        anyhow::ensure!(truth.measurements.len() >= 2, "{}: needs at least 2 architectures", path.display());
        for row in &truth.measurements {
            let seeds = truth.train_seeds as usize;
            anyhow::ensure!(
                seeds >= 1 && row.accuracy.len() == seeds && row.loss.len() == seeds,
                "{}: {} should have {} accuracy and loss values (train_seeds)",
                path.display(),
                row.arch,
                truth.train_seeds
            );
            anyhow::ensure!(
                row.accuracy.iter().chain(&row.loss).all(|v| v.is_finite()),
                "{}: {} has a non-finite accuracy or loss",
                path.display(),
                row.arch
            );
        }
        Ok(truth)
    }
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
    let baselines = if args.no_baselines { vec![] } else { dedup(&args.baselines) };
    let truth = args.truth.as_deref().map(|path| TruthReport::load(path, &experiment)).transpose()?;
    let engine = args.compute.engine(&experiment)?;
    let archs = match &truth {
        Some(truth) => truth.measurements.iter().map(|row| row.arch).collect(),
        None => sample_archs(args.sample, experiment.seed)?,
    };

    let scorers: Vec<_> = modes.iter().map(|&mode| engine.scorer(mode)).collect();
    let bar = output::bar((archs.len() * (modes.len() + baselines.len())) as u64, "scoring");
    let mut measured = Vec::with_capacity(archs.len());
    for arch in &archs {
        let candidate = (*arch).into();
        let mut scores = Vec::new();
        let mut info = None;
        for scorer in &scorers {
            let score = scorer.score(&candidate).with_context(|| format!("scoring {arch}"))?;
            scores.push(score.mgm);
            info = Some(score.info);
            bar.inc(1);
        }
        let info = info.expect("at least one mode");
        let baseline_values = baselines
            .iter()
            .map(|baseline| {
                bar.inc(1);
                baseline
                    .measure(&scorers[0], &candidate)
                    .inspect_err(|e| tracing::warn!(%arch, baseline = baseline.name(), "no value: {e}"))
                    .ok()
            })
            .collect();
        measured.push(Measured {
            arch: *arch,
            scores,
            baselines: baseline_values,
            params: info.params,
            flops: info.flops,
            accuracy: vec![],
            loss: vec![],
        });
    }
    bar.finish_and_clear();

    // The training behind the results: the truth's, or this run's.
    let (train, train_seeds) = match &truth {
        Some(truth) => {
            for (m, row) in measured.iter_mut().zip(&truth.measurements) {
                m.accuracy.clone_from(&row.accuracy);
                m.loss.clone_from(&row.loss);
            }
            (truth.experiment.train, truth.train_seeds)
        }
        None => {
            train_all(&engine, &mut measured, args.train_seeds, experiment.seed)?;
            (experiment.train, args.train_seeds)
        }
    };

    let report = CorrelationReport {
        archs: archs.len(),
        train_seeds,
        epochs: train.epochs,
        correlations: correlations(&measured, &modes, &baselines),
        modes,
        baselines,
        truth: args.truth.clone(),
        experiment: Experiment { train, ..experiment },
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

/// `list` without repeats, first occurrence kept.
fn dedup(list: &[Baseline]) -> Vec<Baseline> {
    let mut out = Vec::new();
    for b in list {
        if !out.contains(b) {
            out.push(*b);
        }
    }
    out
}

fn train_all(engine: &knas::engine::Engine, measured: &mut [Measured], train_seeds: u64, seed: u64) -> Result<()> {
    let bar = output::bar(measured.len() as u64 * train_seeds, "training");
    for m in measured {
        for train_seed in 0..train_seeds {
            let result = engine
                .train(&m.arch, seed.wrapping_add(train_seed), &mut |_, _| {})
                .with_context(|| format!("training {} (seed {train_seed})", m.arch))?;
            m.accuracy.push(result.heldout_accuracy);
            m.loss.push(result.heldout_loss);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Bootstrap resamples behind each interval.
const RESAMPLES: usize = 2000;

fn correlations(measured: &[Measured], modes: &[ScoreMode], baselines: &[Baseline]) -> Vec<Correlation> {
    let accuracy: Vec<f64> = measured.iter().map(Measured::mean_accuracy).collect();
    let loss: Vec<f64> = measured.iter().map(Measured::mean_loss).collect();
    let mut measures: Vec<(String, Vec<f64>)> = modes
        .iter()
        .enumerate()
        .map(|(i, mode)| (format!("MGM ({})", mode.name()), measured.iter().map(|m| m.scores[i]).collect()))
        .collect();
    for (i, baseline) in baselines.iter().enumerate() {
        // A measure that could not be computed ranks last, as a failed network would.
        let values = measured.iter().map(|m| m.baselines[i].unwrap_or(f64::NEG_INFINITY)).collect();
        measures.push((format!("{} (baseline)", baseline.name()), values));
    }
    measures.push(("params (baseline)".into(), measured.iter().map(|m| m.params as f64).collect()));
    measures.push(("FLOPs (baseline)".into(), measured.iter().map(|m| m.flops as f64).collect()));
    let mut out = Vec::new();
    for (name, values) in &measures {
        for (against, truth) in [("accuracy", &accuracy), ("loss", &loss)] {
            out.push(Correlation {
                measure: name.clone(),
                against,
                spearman: spearman(values, truth),
                spearman_95: spearman_interval(values, truth, RESAMPLES, 0),
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
                spearman_95: spearman_interval(&series(0), &series(1), RESAMPLES, 0),
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
        r.archs, r.experiment.dataset, r.experiment.channels, r.experiment.cells, r.epochs, r.train_seeds
    );
    println!("A good score correlates positively with accuracy and negatively with loss.");
    if let Some(path) = &r.truth {
        println!("Trained results from {}.", path.display());
    }
    let mut table = output::table(&["measure", "against held-out", "Spearman ρ", "ρ 95% interval", "Kendall τ"]);
    for c in &r.correlations {
        let interval = c.spearman_95.map_or_else(|| "n/a".into(), |(lo, hi)| format!("[{lo:+.2}, {hi:+.2}]"));
        table.add_row(vec![
            c.measure.clone(),
            c.against.to_string(),
            fmt_corr(c.spearman),
            interval,
            fmt_corr(c.kendall),
        ]);
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
