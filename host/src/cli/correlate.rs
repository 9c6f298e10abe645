//! `knas correlate`: how well does each measure, and the aggregate, rank architectures?
//!
//! The truth is one of three things:
//! - a published benchmark table (`--table`, e.g. NAS-Bench-201's CIFAR-10 results): the
//!   yardstick the field reports on, no training needed;
//! - this run's own training of every architecture under several seeds, with the agreement
//!   between seeds as the noise floor;
//! - an earlier report's trained results (`--truth`), re-measured without training.
//!
//! Every measure is computed on the same networks, initial weights and batch; Spearman's ρ
//! (with a 95 % bootstrap interval) and Kendall's τ are reported for each, for the
//! aggregate anchored in the experiment's reference sample (what a search ranks by), and
//! for AZ-NAS's in-sample rank aggregate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use knas::engine::Engine;
use knas::measures::aggregate::{self, AggregateSpec};
use knas::measures::{Measure, Values};
use knas::run::Experiment;
use knas::space::{Arch, Candidate};
use knas::stats::{kendall, spearman, spearman_interval};
use knas::table::BenchmarkTable;
use plotters::prelude::*;

use super::output::{self, Report};
use super::{ComputeArgs, ExperimentArgs, read_arch_file, sample_archs};

#[derive(Debug, Args)]
pub struct CorrelateArgs {
    /// Architectures sampled (seeded by --seed): from the table with --table, else from the
    /// whole space.
    #[arg(long, default_value_t = 20)]
    sample: usize,
    /// Take the architectures from this file instead (one per line).
    #[arg(long = "archs", value_name = "FILE", conflicts_with_all = ["sample", "truth"])]
    archs_file: Option<PathBuf>,
    /// Judge against a published benchmark table instead of training: one JSON object per
    /// line with `arch` and an accuracy (e.g. NAS-Bench-201's CIFAR-10 test accuracies),
    /// gzipped or not.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["train_seeds", "truth"])]
    table: Option<PathBuf>,
    /// The table's accuracy field [default: the first of acc, accuracy, test_accuracy, …]
    #[arg(long, value_name = "NAME", requires = "table")]
    table_field: Option<String>,
    /// Training seeds per architecture when training; metrics are averaged over them.
    #[arg(long, default_value_t = 2)]
    train_seeds: u64,
    /// Take the architectures and their trained results from this earlier
    /// `knas correlate --format json` report instead of training (the measures are
    /// recomputed). Its data, split and networks (--dataset, --holdout, --limit,
    /// --channels, --cells, --seed) must match this run's.
    #[arg(long, value_name = "REPORT.json", conflicts_with = "sample")]
    truth: Option<PathBuf>,
    /// Measures to compute, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all", value_parser = parse_measures)]
    measures: Vec<Vec<Measure>>,
    /// Write a rank-vs-accuracy scatter plot of the aggregate and every measure (SVG).
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

/// A measure name or `all`.
pub fn parse_measures(text: &str) -> Result<Vec<Measure>, String> {
    if text == "all" {
        return Ok(Measure::ALL.to_vec());
    }
    Ok(vec![text.parse::<Measure>().map_err(|e| format!("{e}, or all"))?])
}

#[derive(Debug, serde::Serialize)]
struct Row {
    arch: Arch,
    /// Every measure's value (null where it is not finite for this network).
    values: Values,
    /// The aggregate anchored in the reference sample.
    aggregate: f64,
    /// AZ-NAS's aggregate with ranks taken within this sample.
    aggregate_in_sample: f64,
    /// The truth: the table's accuracy, or held-out accuracy per training seed.
    accuracy: Vec<f64>,
    /// Held-out loss per training seed (empty with a table).
    loss: Vec<f64>,
}

impl Row {
    fn mean(values: &[f64]) -> f64 {
        values.iter().sum::<f64>() / values.len().max(1) as f64
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
    /// Architectures for which the measure is missing (ranked last).
    missing: usize,
}

/// What the measures were judged against.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum TruthSource {
    /// A published table.
    Table { file: PathBuf, field: String, rows: usize },
    /// This run's training.
    Training { epochs: usize, train_seeds: u64 },
    /// An earlier report's training.
    Report { file: PathBuf, epochs: usize, train_seeds: u64 },
}

#[derive(Debug, serde::Serialize)]
struct CorrelationReport {
    /// Every setting of the run (a later `--truth` checks them).
    experiment: Experiment,
    truth: TruthSource,
    archs: usize,
    measures: Vec<Measure>,
    aggregate: AggregateSpec,
    reference: usize,
    /// Seconds per architecture to compute every measure (construction included).
    seconds_per_arch: f64,
    correlations: Vec<Correlation>,
    measurements: Vec<Row>,
    /// Architectures left out because a training of theirs failed (it diverged, say):
    /// they have no accuracy to rank against.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed_trainings: Vec<FailedTraining>,
}

/// An architecture whose training failed, and why.
#[derive(Debug, serde::Serialize)]
struct FailedTraining {
    arch: Arch,
    error: String,
}

/// Trained results read back from an earlier report (`--truth`).
#[derive(Debug, serde::Deserialize)]
struct TruthReport {
    /// Kept as JSON: reports of older versions carry settings this one no longer has.
    experiment: serde_json::Value,
    #[serde(default)]
    train_seeds: Option<u64>,
    #[serde(default)]
    truth: Option<serde_json::Value>,
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
fn trained_on(e: &serde_json::Value) -> [(&'static str, String); 6] {
    let field = |key: &str| match &e[key] {
        serde_json::Value::Null => "(none)".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    [
        ("--dataset", field("dataset")),
        ("--holdout", field("holdout")),
        ("--limit", field("limit")),
        ("--channels", field("channels")),
        ("--cells", field("cells")),
        ("--seed", field("seed")),
    ]
}

impl TruthReport {
    /// Reads `path` and checks that it can serve as the truth for `experiment`.
    fn load(path: &Path, experiment: &Experiment) -> Result<(TruthReport, u64, usize)> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let truth: TruthReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a `knas correlate --format json` report", path.display()))?;
        let here = serde_json::to_value(experiment)?;
        let differences: Vec<String> = trained_on(&truth.experiment)
            .into_iter()
            .zip(trained_on(&here))
            .filter(|(there, here)| there != here)
            .map(|((flag, there), (_, here))| format!("trained with {flag} {there}, this run has {flag} {here}"))
            .collect();
        anyhow::ensure!(differences.is_empty(), "{}: {}; pass the same settings", path.display(), differences.join("; "));
        // Older reports kept the training seeds at the top, newer ones in `truth`.
        let seeds = truth
            .train_seeds
            .or_else(|| truth.truth.as_ref().and_then(|t| t["train_seeds"].as_u64()))
            .with_context(|| format!("{}: the report has no trained results (a --table report?)", path.display()))?;
        let epochs = truth.experiment["train"]["epochs"].as_u64().unwrap_or(0) as usize;
        anyhow::ensure!(truth.measurements.len() >= 2, "{}: needs at least 2 architectures", path.display());
        for row in &truth.measurements {
            anyhow::ensure!(
                seeds >= 1 && row.accuracy.len() == seeds as usize && row.loss.len() == seeds as usize,
                "{}: {} should have {seeds} accuracy and loss values (train_seeds)",
                path.display(),
                row.arch
            );
            anyhow::ensure!(
                row.accuracy.iter().chain(&row.loss).all(|v| v.is_finite()),
                "{}: {} has a non-finite accuracy or loss",
                path.display(),
                row.arch
            );
        }
        Ok((truth, seeds, epochs))
    }
}

pub fn run(args: &CorrelateArgs) -> Result<()> {
    anyhow::ensure!(args.sample >= 2, "--sample needs at least 2 architectures to correlate");
    anyhow::ensure!(args.train_seeds >= 1, "--train-seeds must be at least 1");
    let experiment = args.experiment.experiment();
    // `--score MEASURE` lets a search go without the reference sample, but this report
    // always has the aggregate's row, which would be a constant without one.
    anyhow::ensure!(
        experiment.reference >= 2,
        "--reference must be at least 2 here, got {}: correlate always reports the aggregate, which ranks each measure within the reference sample",
        experiment.reference
    );
    let measures = dedup(&args.measures.concat());
    let table = args.table.as_deref().map(|path| BenchmarkTable::load(path, args.table_field.as_deref())).transpose()?;
    let truth = args.truth.as_deref().map(|path| TruthReport::load(path, &experiment)).transpose()?;
    let archs: Vec<Arch> = match (&truth, &table, &args.archs_file) {
        (Some((report, _, _)), _, _) => report.measurements.iter().map(|row| row.arch).collect(),
        (None, _, Some(file)) => read_arch_file(file)?,
        (None, Some(table), None) => table.sample(args.sample, experiment.seed)?,
        (None, None, None) => sample_archs(args.sample, experiment.seed)?,
    };
    anyhow::ensure!(archs.len() >= 2, "needs at least 2 architectures to correlate, got {}", archs.len());
    if let Some(table) = &table
        && let Some(missing) = archs.iter().find(|a| table.accuracy(a).is_none())
    {
        anyhow::bail!("{}: has no row for {missing}", table.path().display());
    }

    let mut engine = args.compute.engine(&experiment)?;
    // The aggregate is anchored in the reference sample: its measures must be computed too.
    let mut computed = measures.clone();
    for m in experiment.aggregate.measures() {
        if !computed.contains(&m) {
            computed.push(m);
        }
    }
    let bar = output::bar(experiment.reference as u64, "reference sample");
    let reference = engine.build_reference(&mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    engine.set_reference(reference)?;

    let bar = output::bar(archs.len() as u64, "measuring");
    let start = Instant::now();
    let mut rows = Vec::with_capacity(archs.len());
    let candidates: Vec<Candidate> = archs.iter().map(|a| (*a).into()).collect();
    engine.measure_all(&candidates, &computed, &mut |i, measured| -> Result<()> {
        let arch = archs[i];
        let measured = measured.with_context(|| format!("measuring {arch}"))?;
        for (m, v) in &measured.values {
            if v.is_none() {
                tracing::debug!(%arch, measure = m.name(), "not finite: recorded as missing");
            }
        }
        // The report's aggregate row is the aggregate even when `--score` picks a measure.
        let aggregate = engine.aggregate_of(&measured.values)?;
        rows.push(Row { arch, values: measured.values, aggregate, aggregate_in_sample: 0.0, accuracy: vec![], loss: vec![] });
        bar.inc(1);
        Ok(())
    })?;
    let seconds_per_arch = start.elapsed().as_secs_f64() / archs.len() as f64;
    bar.finish_and_clear();
    let values: Vec<Values> = rows.iter().map(|r| r.values.clone()).collect();
    for (row, v) in rows.iter_mut().zip(aggregate::in_sample(&experiment.aggregate, &values)) {
        row.aggregate_in_sample = v;
    }

    let mut failed_trainings = Vec::new();
    let source = match (&table, &truth) {
        (Some(table), _) => {
            for row in &mut rows {
                row.accuracy = vec![table.accuracy(&row.arch).expect("checked above")];
            }
            TruthSource::Table { file: table.path().to_owned(), field: table.field().to_owned(), rows: table.len() }
        }
        (None, Some((report, seeds, epochs))) => {
            for (row, truth) in rows.iter_mut().zip(&report.measurements) {
                row.accuracy.clone_from(&truth.accuracy);
                row.loss.clone_from(&truth.loss);
            }
            TruthSource::Report { file: args.truth.clone().unwrap_or_default(), epochs: *epochs, train_seeds: *seeds }
        }
        (None, None) => {
            failed_trainings = train_all(&engine, &mut rows, args.train_seeds, experiment.seed);
            rows.retain(|row| !failed_trainings.iter().any(|f| f.arch == row.arch));
            anyhow::ensure!(
                rows.len() >= 2,
                "only {} of the {} architectures trained (needs 2 to correlate); the failures: {}",
                rows.len(),
                archs.len(),
                failed_trainings.iter().map(|f| format!("{}: {}", f.arch, f.error)).collect::<Vec<_>>().join("; ")
            );
            TruthSource::Training { epochs: experiment.train.epochs, train_seeds: args.train_seeds }
        }
    };

    let report = CorrelationReport {
        correlations: correlations(&rows, &measures),
        truth: source,
        archs: rows.len(),
        aggregate: experiment.aggregate.clone(),
        reference: experiment.reference,
        measures,
        seconds_per_arch,
        experiment,
        measurements: rows,
        failed_trainings,
    };
    // The report first: a plot that cannot be written must not take the measurements (and
    // trainings) with it.
    match args.format {
        Report::Json => output::json(&report)?,
        Report::Table => print_report(&report),
    }
    if let Some(path) = &args.plot {
        plot(&report, path).with_context(|| format!("cannot write the plot to {} (the report is on standard output)", path.display()))?;
    }
    Ok(())
}

/// `list` without repeats, first occurrence kept.
fn dedup(list: &[Measure]) -> Vec<Measure> {
    let mut out = Vec::new();
    for m in list {
        if !out.contains(m) {
            out.push(*m);
        }
    }
    out
}

/// Trains every row under each seed; a failed training (a network that diverges, say)
/// does not lose the others' work: it is returned, and the rest of its seeds skipped.
fn train_all(engine: &Engine, rows: &mut [Row], train_seeds: u64, seed: u64) -> Vec<FailedTraining> {
    let bar = output::bar(rows.len() as u64 * train_seeds, "training");
    let mut failed = Vec::new();
    for row in rows {
        for train_seed in 0..train_seeds {
            match engine.train(&row.arch, seed.wrapping_add(train_seed), &mut |_, _| {}) {
                Ok(result) => {
                    row.accuracy.push(result.heldout_accuracy);
                    row.loss.push(result.heldout_loss);
                    bar.inc(1);
                }
                Err(error) => {
                    let error = format!("training seed {train_seed}: {error}");
                    bar.suspend(|| tracing::warn!(arch = %row.arch, "left out of the correlations: {error}"));
                    failed.push(FailedTraining { arch: row.arch, error });
                    bar.inc(train_seeds - train_seed);
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    failed
}

/// Bootstrap resamples behind each interval.
const RESAMPLES: usize = 2000;

fn correlation(measure: String, against: &'static str, values: &[f64], truth: &[f64], missing: usize) -> Correlation {
    Correlation {
        measure,
        against,
        spearman: spearman(values, truth),
        spearman_95: spearman_interval(values, truth, RESAMPLES, 0),
        kendall: kendall(values, truth),
        missing,
    }
}

fn correlations(rows: &[Row], measures: &[Measure]) -> Vec<Correlation> {
    let accuracy: Vec<f64> = rows.iter().map(|r| Row::mean(&r.accuracy)).collect();
    let loss: Vec<f64> = rows.iter().map(|r| Row::mean(&r.loss)).collect();
    let trained = rows.iter().all(|r| !r.loss.is_empty());
    let mut series: Vec<(String, Vec<f64>, usize)> = vec![
        ("aggregate".into(), rows.iter().map(|r| r.aggregate).collect(), 0),
        ("aggregate, in-sample ranks (AZ-NAS)".into(), rows.iter().map(|r| r.aggregate_in_sample).collect(), 0),
    ];
    for m in measures {
        // A missing value ranks last, as a failed network would.
        let values: Vec<Option<f64>> = rows.iter().map(|r| r.values.get(m).copied().flatten()).collect();
        let missing = values.iter().filter(|v| v.is_none()).count();
        series.push((m.name().into(), values.into_iter().map(|v| v.unwrap_or(f64::NEG_INFINITY)).collect(), missing));
    }
    let mut out = Vec::new();
    for (name, values, missing) in &series {
        out.push(correlation(name.clone(), "accuracy", values, &accuracy, *missing));
        if trained {
            out.push(correlation(name.clone(), "loss", values, &loss, *missing));
        }
    }
    // How much two training seeds agree: the ceiling any predictor can reach.
    if rows.first().is_some_and(|r| r.accuracy.len() >= 2 && r.loss.len() >= 2) {
        for (against, pick_loss) in [("accuracy", false), ("loss", true)] {
            let seed = |s: usize| -> Vec<f64> { rows.iter().map(|r| if pick_loss { r.loss[s] } else { r.accuracy[s] }).collect() };
            out.push(correlation("seed 0 vs seed 1 (noise floor)".into(), against, &seed(0), &seed(1), 0));
        }
    }
    out
}

fn fmt_corr(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".into(), |v| format!("{v:+.3}"))
}

fn print_report(r: &CorrelationReport) {
    let e = &r.experiment;
    println!("{} architectures on {}, C={} N={}, batch {}", r.archs, e.dataset, e.channels, e.cells, e.score_batch);
    match &r.truth {
        TruthSource::Table { file, field, rows } => {
            println!("Truth: `{field}` of the published table {} ({rows} rows).", file.display());
        }
        TruthSource::Training { epochs, train_seeds } => println!("Truth: {epochs} epoch(s) × {train_seeds} training seed(s)."),
        TruthSource::Report { file, epochs, train_seeds } => {
            println!("Truth: trained results of {} ({epochs} epoch(s) × {train_seeds} seed(s)).", file.display());
        }
    }
    println!(
        "Aggregate: {} over a reference sample of {}. {:.3} s per architecture for every measure.",
        r.aggregate.terms.iter().map(|t| format!("{}×{}", t.weight, t.measure)).collect::<Vec<_>>().join(" + "),
        r.reference,
        r.seconds_per_arch
    );
    if !r.failed_trainings.is_empty() {
        println!("Left out, their training failed ({}):", r.failed_trainings.len());
        for f in &r.failed_trainings {
            println!("  {}: {}", f.arch, f.error);
        }
    }
    println!("A good measure correlates positively with accuracy (and negatively with loss).");
    let mut table = output::table(&["measure", "against", "Spearman ρ", "ρ 95% interval", "Kendall τ", "missing"]);
    for c in &r.correlations {
        let interval = c.spearman_95.map_or_else(|| "n/a".into(), |(lo, hi)| format!("[{lo:+.3}, {hi:+.3}]"));
        table.add_row(vec![
            c.measure.clone(),
            c.against.to_string(),
            fmt_corr(c.spearman),
            interval,
            fmt_corr(c.kendall),
            c.missing.to_string(),
        ]);
    }
    println!("{table}");
}

/// One scatter panel per measure: the architecture's rank under the measure (as a fraction
/// of the sample; missing values share the lowest ranks) against its accuracy.
fn plot(r: &CorrelationReport, path: &Path) -> Result<()> {
    let accuracy: Vec<f64> = r.measurements.iter().map(|m| Row::mean(&m.accuracy)).collect();
    let mut panels: Vec<(String, Vec<f64>)> = vec![("aggregate".into(), r.measurements.iter().map(|m| m.aggregate).collect())];
    for m in &r.measures {
        panels.push((m.name().into(), r.measurements.iter().map(|row| row.values.get(m).copied().flatten().unwrap_or(f64::NEG_INFINITY)).collect()));
    }
    let columns = 4usize;
    let lines = panels.len().div_ceil(columns);
    let root = SVGBackend::new(path, (360 * columns as u32, 300 * lines as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((lines, columns));
    let (y_min, y_max) = bounds(accuracy.iter().copied());
    let n = accuracy.len() as f64;
    for (area, (name, values)) in areas.iter().zip(&panels) {
        let ranks = knas::stats::ranks(values);
        let rho = spearman(values, &accuracy).map_or("n/a".into(), |v| format!("{v:.3}"));
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name}: ρ {rho}"), ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0.0..1.0, y_min..y_max)?;
        chart.configure_mesh().x_desc("rank / N").y_desc("accuracy").draw()?;
        chart.draw_series(ranks.iter().zip(&accuracy).map(|(&rank, &acc)| Circle::new((rank / n, acc), 2, BLUE.filled())))?;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// A value a damaged report may hold where it should not: a number (finite or not,
    /// which JSON writes as null), text, null, or a list of numbers — most often plausible
    /// ones of another length.
    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            1 => any::<f64>().prop_map(|v| json!(v)),
            1 => "[a-z|~_0-9+]{0,12}".prop_map(Value::String),
            1 => Just(Value::Null),
            1 => prop::collection::vec(any::<f64>(), 0..4).prop_map(|v| json!(v)),
            4 => prop::collection::vec(0.0..2.0f64, 0..5).prop_map(|v| json!(v)),
        ]
    }

    /// A report `knas correlate` could have written for `experiment`: `seeds` training seeds
    /// (at the top as older versions wrote it, or under `truth`), one row per architecture.
    fn valid_report(experiment: &Experiment, seeds: u64, archs: &[usize], at_top: bool) -> Value {
        let rows: Vec<Value> = archs
            .iter()
            .map(|&i| json!({ "arch": i.to_string(), "accuracy": vec![0.5; seeds as usize], "loss": vec![1.0; seeds as usize] }))
            .collect();
        let mut report = json!({ "experiment": experiment, "measurements": rows });
        if at_top {
            report["train_seeds"] = json!(seeds);
        } else {
            report["truth"] = json!({ "kind": "training", "train_seeds": seeds });
        }
        report
    }

    /// One damage: a path into the report (object keys, or row indices for the rows) and
    /// what to put there (`None` removes it).
    fn damage() -> impl Strategy<Value = (Vec<String>, Option<Value>)> {
        let key = prop_oneof![
            1 => Just(vec!["experiment".to_owned()]),
            1 => "dataset|holdout|limit|channels|cells|seed|train|other".prop_map(|k| vec!["experiment".to_owned(), k]),
            1 => Just(vec!["train_seeds".to_owned()]),
            1 => Just(vec!["truth".to_owned(), "train_seeds".to_owned()]),
            1 => Just(vec!["measurements".to_owned()]),
            4 => (0usize..5, "arch|accuracy|loss").prop_map(|(i, k)| vec!["measurements".to_owned(), i.to_string(), k]),
        ];
        (key, prop::option::of(any_value()))
    }

    /// Puts the damage's value at its path, or removes what is there. A missing key on the
    /// way is added as null (itself a damage); a path through a row that does not exist, or
    /// through a value that is not an object, changes nothing more.
    fn apply(report: &mut Value, (path, value): &(Vec<String>, Option<Value>)) {
        let Some((last, parents)) = path.split_last() else { return };
        let mut at = report;
        for key in parents {
            at = match at {
                Value::Array(items) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return,
                },
                Value::Object(map) => map.entry(key.clone()).or_insert(Value::Null),
                _ => return,
            };
        }
        match (at, value) {
            (Value::Object(map), Some(v)) => {
                map.insert(last.clone(), v.clone());
            }
            (Value::Object(map), None) => {
                map.remove(last);
            }
            _ => {}
        }
    }

    proptest::proptest! {
        #![proptest_config(knas_policy_sdk::testing::fuzz_config())]

        /// A `--truth` report, valid or damaged in up to three places: read and fit for this
        /// run, or refused with a message that names the file. Never a panic.
        #[test]
        fn fuzz_truth_reports_are_read_or_refused_by_name(
            seeds in 1u64..4,
            archs in prop::collection::vec(0usize..15_625, 0..5),
            at_top: bool,
            damages in prop::collection::vec(damage(), 0..3),
        ) {
            let experiment = Experiment::default();
            let mut report = valid_report(&experiment, seeds, &archs, at_top);
            for d in &damages {
                apply(&mut report, d);
            }
            let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let path = dir.path().join("truth.json");
            std::fs::write(&path, report.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            match TruthReport::load(&path, &experiment) {
                Ok((truth, seeds, _)) => {
                    let here = serde_json::to_value(&experiment).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(trained_on(&truth.experiment), trained_on(&here));
                    prop_assert!(truth.measurements.len() >= 2);
                    for row in &truth.measurements {
                        prop_assert_eq!(row.accuracy.len() as u64, seeds);
                        prop_assert_eq!(row.loss.len() as u64, seeds);
                        prop_assert!(row.accuracy.iter().chain(&row.loss).all(|v| v.is_finite()));
                    }
                }
                Err(error) => prop_assert!(format!("{error:#}").contains("truth.json"), "{error:#}"),
            }
            // An undamaged report with two or more rows is always taken.
            if damages.is_empty() && archs.len() >= 2 {
                prop_assert!(TruthReport::load(&path, &experiment).is_ok());
            }
        }
    }
}
