//! `knas select`: KNAS as the paper runs it. Coarse: sample M candidates and rank them by
//! the experiment's score (the aggregate, or `--score mgm` for the paper's). Fine: train
//! the top k briefly and keep the most accurate.
//!
//! It is a run of the random policy built into knas (`policies/random`), recorded in the
//! store like any `knas search` run: rerunning the same selection answers from the store,
//! and an interrupted one resumes.

use anyhow::{Context, Result};
use clap::Args;
use knas::config::SearchSettings;
use knas::policy::{PolicyRuntime, builtin};
use knas::run::{Experiment, Fidelity, PolicyLimits, SearchSpec};
use knas::space::Candidate as Cell;
use knas::search::Leaderboard;
use knas::store::{EvaluationRecord, Published};

use super::output::{self, Report};
use super::{ComputeArgs, ExperimentArgs, StoreArgs, search};

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Candidates sampled and scored (M).
    #[arg(long, default_value_t = 100)]
    candidates: u32,
    /// Finalists trained (k).
    #[arg(long, default_value_t = 3)]
    top_k: u32,
    /// Run name in the store [default: `select-` and a hash of the settings, so the same
    /// selection is answered from the store and a different one is a new run]
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    experiment: ExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// The run, and the aggregate's reference sample, are kept here.
    #[command(flatten)]
    store: StoreArgs,
    /// Output: tables, or one JSON document.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

#[derive(Debug, serde::Serialize)]
struct Candidate {
    rank: usize,
    arch: Cell,
    score: Option<f64>,
    params: Option<i64>,
    /// Why the candidate has no score (a network whose score is not finite).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct Finalist {
    /// The finalist's rank by score among the candidates.
    rank: usize,
    arch: Cell,
    score: Option<f64>,
    heldout_accuracy: Option<f64>,
    heldout_loss: Option<f64>,
    train_loss: Option<f64>,
    epochs: Option<u32>,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct Selection {
    /// The run in the store.
    run: String,
    candidates: Vec<Candidate>,
    finalists: Vec<Finalist>,
    /// The most accurate finalist (ties: the lower held-out loss), as `knas runs` shows it.
    winner: Option<Cell>,
    /// Sums of the times recorded with each evaluation (several architectures measured at
    /// once each count their own wall time).
    scoring_seconds: f64,
    training_seconds: f64,
    /// Wall time of this command's search (the reference sample and loading excluded).
    wall_seconds: f64,
}

pub fn run(args: &SelectArgs) -> Result<()> {
    anyhow::ensure!(args.candidates >= 1, "--candidates must be at least 1, got 0");
    anyhow::ensure!(
        args.top_k >= 1 && args.top_k <= args.candidates,
        "--top-k must be between 1 and --candidates ({}), got {}",
        args.candidates,
        args.top_k
    );
    let experiment = args.experiment.experiment();
    experiment.validate().map_err(|problem| super::invalid_experiment(&problem, None))?;
    let settings = SearchSettings { score_budget: args.candidates, top_k: args.top_k, ..SearchSettings::default() };
    settings.validate().map_err(|problem| anyhow::anyhow!("invalid selection: {problem}"))?;
    // The random policy's defaults are the protocol: M = the score budget, k = the training
    // budget, finalists ranked by the run's score.
    let spec = settings.spec(serde_json::json!({}), PolicyLimits::default());

    let runtime = PolicyRuntime::new()?;
    let module = builtin::load(&runtime, "random").context("the random policy is not built in")??;
    let name = args.name.clone().unwrap_or_else(|| default_name(&experiment, &spec, &module.label()));
    let store = args.store.open()?;
    let done = search::execute(&runtime, &module, &name, &experiment, &spec, None, &store, &args.compute)?;
    let selection = Selection::of(name, &done.evaluations, done.wall_seconds);
    match args.format {
        Report::Json => output::json(&selection)?,
        Report::Table => print_tables(&selection),
    }
    search::ensure_a_training_succeeded(&selection.run, &done.evaluations)
}

/// `select-` and the first 8 hex digits of the SHA-256 of what decides the run's numbers:
/// the experiment, the budget, the policy's build, the measures' and knas's versions.
fn default_name(experiment: &Experiment, spec: &SearchSpec, policy: &str) -> String {
    let identity = serde_json::json!({
        "experiment": experiment,
        "budget": spec.budget,
        "max-batch": spec.max_batch,
        "policy": policy,
        "measures-version": knas::measures::VERSION,
        "knas": env!("CARGO_PKG_VERSION"),
    });
    format!("select-{}", &knas::policy::contract::sha256_hex(identity.to_string().as_bytes())[..8])
}

impl Selection {
    fn of(run: String, evaluations: &[EvaluationRecord], wall_seconds: f64) -> Selection {
        let mut scored: Vec<&EvaluationRecord> = evaluations.iter().filter(|e| e.fidelity == Fidelity::Score).collect();
        // Highest score first; candidates without one last, in the order they were scored.
        scored.sort_by(|a, b| b.score.unwrap_or(f64::NEG_INFINITY).total_cmp(&a.score.unwrap_or(f64::NEG_INFINITY)));
        let candidates: Vec<Candidate> = scored
            .iter()
            .enumerate()
            .map(|(i, e)| Candidate { rank: i + 1, arch: e.candidate, score: e.score, params: e.params, error: e.error.clone() })
            .collect();
        let rank_of = |cell: &Cell| candidates.iter().find(|c| c.arch == *cell).map_or(0, |c| c.rank);
        let finalists: Vec<Finalist> = evaluations
            .iter()
            .filter(|e| e.fidelity == Fidelity::Train)
            .map(|e| Finalist {
                rank: rank_of(&e.candidate),
                arch: e.candidate,
                score: candidates.iter().find(|c| c.arch == e.candidate).and_then(|c| c.score),
                heldout_accuracy: e.accuracy,
                heldout_loss: e.loss,
                train_loss: e.train_loss,
                epochs: e.epochs,
                seconds: e.seconds,
                error: e.error.clone(),
            })
            .collect();
        let winner = Leaderboard::of(evaluations, &Published::default()).winner.filter(|w| w.accuracy.is_some()).map(|w| w.candidate);
        let seconds = |fidelity| evaluations.iter().filter(|e| e.fidelity == fidelity).map(|e| e.seconds).sum();
        Selection {
            run,
            candidates,
            finalists,
            winner,
            scoring_seconds: seconds(Fidelity::Score),
            training_seconds: seconds(Fidelity::Train),
            wall_seconds,
        }
    }
}

fn print_tables(s: &Selection) {
    let mut table = output::table(&["score rank", "architecture", "score", "accuracy", "held-out loss", "train s"]);
    for f in &s.finalists {
        table.add_row(vec![
            f.rank.to_string(),
            f.arch.to_string(),
            f.score.map_or_else(|| "missing".into(), |v| format!("{v:.4}")),
            f.heldout_accuracy.map_or_else(|| f.error.clone().unwrap_or_else(|| "–".into()), output::percent),
            f.heldout_loss.map_or_else(|| "–".into(), |v| format!("{v:.4}")),
            format!("{:.1}", f.seconds),
        ]);
    }
    let m = s.candidates.len();
    println!("Leaderboard: top {} of {m} candidates by score, after brief training (run {:?})", s.finalists.len(), s.run);
    println!("{table}");
    println!(
        "Scored {m} candidates ({:.1}s of scoring) and trained {} ({:.1}s); wall time {:.1}s.",
        s.scoring_seconds,
        s.finalists.len(),
        s.training_seconds,
        s.wall_seconds
    );
    match &s.winner {
        Some(winner) => println!("Winner: {winner}"),
        None => println!("No finalist trained successfully."),
    }
}
