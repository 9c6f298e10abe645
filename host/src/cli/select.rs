//! `knas select`: KNAS as the paper runs it. Coarse: sample M candidates and rank them by
//! the experiment's score (the aggregate, or `--score mgm` for the paper's). Fine: train
//! the top k briefly and keep the most accurate.

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use knas::space::Arch;
use knas::train::TrainResult;

use super::output::{self, Report};
use super::{ComputeArgs, ExperimentArgs, StoreArgs, sample_archs};

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Candidates sampled and scored (M).
    #[arg(long, default_value_t = 100)]
    candidates: usize,
    /// Finalists trained (k).
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    #[command(flatten)]
    experiment: ExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// The aggregate's reference sample is cached here.
    #[command(flatten)]
    store: StoreArgs,
    /// Output: tables, or one JSON document.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

#[derive(Debug, serde::Serialize)]
struct Candidate {
    rank: usize,
    arch: Arch,
    score: f64,
    params: i64,
}

#[derive(Debug, serde::Serialize)]
struct Finalist {
    rank: usize,
    arch: Arch,
    score: f64,
    result: TrainResult,
}

#[derive(Debug, serde::Serialize)]
struct Selection {
    candidates: Vec<Candidate>,
    finalists: Vec<Finalist>,
    winner: Arch,
    scoring_seconds: f64,
    training_seconds: f64,
}

pub fn run(args: &SelectArgs) -> Result<()> {
    anyhow::ensure!(args.top_k >= 1 && args.top_k <= args.candidates, "--top-k must be between 1 and --candidates");
    let experiment = args.experiment.experiment();
    let mut engine = args.compute.engine(&experiment)?;
    let archs = sample_archs(args.candidates, experiment.seed)?;
    let bar = output::bar(experiment.reference as u64, "reference sample");
    knas::search::anchor(&mut engine, &args.store.open()?, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();

    let start = Instant::now();
    let bar = output::bar(archs.len() as u64, "coarse: scoring");
    let mut candidates = Vec::with_capacity(archs.len());
    let sampled: Vec<knas::space::Candidate> = archs.iter().map(|a| (*a).into()).collect();
    engine.measure_all(&sampled, &engine.score_measures(), &mut |i, measured| -> Result<()> {
        let arch = archs[i];
        let measured = measured.with_context(|| format!("scoring {arch}"))?;
        let score = engine.score_of(&measured.values)?.unwrap_or(f64::NEG_INFINITY);
        candidates.push(Candidate { rank: 0, arch, score, params: measured.info.params });
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    for (i, c) in candidates.iter_mut().enumerate() {
        c.rank = i + 1;
    }
    let scoring_seconds = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut finalists = Vec::with_capacity(args.top_k);
    for c in &candidates[..args.top_k] {
        let bar = output::bar(0, format!("fine: training #{}", c.rank));
        let result = engine
            .train(&c.arch, experiment.seed, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("training {}", c.arch))?;
        bar.finish_and_clear();
        finalists.push(Finalist { rank: c.rank, arch: c.arch, score: c.score, result });
    }
    let training_seconds = start.elapsed().as_secs_f64();
    let winner = finalists
        .iter()
        .max_by(|a, b| a.result.heldout_accuracy.total_cmp(&b.result.heldout_accuracy))
        .expect("top_k >= 1")
        .arch;

    let selection = Selection { candidates, finalists, winner, scoring_seconds, training_seconds };
    match args.format {
        Report::Json => output::json(&selection)?,
        Report::Table => print_tables(&selection, args.candidates),
    }
    Ok(())
}

fn print_tables(s: &Selection, m: usize) {
    let mut table = output::table(&["score rank", "architecture", "score", "accuracy", "held-out loss", "train s"]);
    for f in &s.finalists {
        table.add_row(vec![
            f.rank.to_string(),
            f.arch.to_string(),
            format!("{:.4}", f.score),
            output::percent(f.result.heldout_accuracy),
            format!("{:.4}", f.result.heldout_loss),
            format!("{:.1}", f.result.seconds),
        ]);
    }
    println!("Leaderboard: top {} of {m} candidates by score, after brief training", s.finalists.len());
    println!("{table}");
    println!("Scored {m} candidates in {:.1}s; trained {} in {:.1}s.", s.scoring_seconds, s.finalists.len(), s.training_seconds);
    println!("Winner: {}", s.winner);
}
