//! `knas runs`: what the run store holds.

use anyhow::{Context, Result};
use clap::Args;
use knas::search::Leaderboard;
use knas::store::{Event, RunRecord, RunSummary};

use super::StoreArgs;
use super::output::{self, Report};

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Show this run in detail (leaderboard, events) instead of listing all runs.
    name: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Output: tables, or one JSON document.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

/// A run with its standings, as listed: the store's summary (the one the API shows too)
/// and the leaderboard.
#[derive(Debug, serde::Serialize)]
struct RunStanding {
    #[serde(flatten)]
    run: RunRecord,
    #[serde(flatten)]
    summary: RunSummary,
    leaderboard: Leaderboard,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<Event>>,
}

pub fn run(args: &RunsArgs) -> Result<()> {
    let store = args.store.open_existing()?;
    let runs = match &args.name {
        Some(name) => vec![store.run(name)?.with_context(|| format!("no run named {name:?} in {}", store.path().display()))?],
        None => store.runs()?,
    };
    let mut summaries = Vec::with_capacity(runs.len());
    for run in runs {
        let evaluations = store.evaluations(run.id)?;
        summaries.push(RunStanding {
            summary: store.summary(run.id)?,
            leaderboard: Leaderboard::of(&evaluations, &store.published(run.id)?),
            events: if args.name.is_some() { Some(store.events(run.id)?) } else { None },
            run,
        });
    }
    match (args.format, &args.name) {
        (Report::Json, Some(_)) => output::json(&summaries[0])?,
        (Report::Json, None) => output::json(&summaries)?,
        (Report::Table, _) => print_tables(&summaries, args.name.is_some()),
    }
    Ok(())
}

fn print_tables(summaries: &[RunStanding], detailed: bool) {
    let mut table = output::table(&["run", "policy", "status", "scores", "trainings", "best score", "best accuracy", "updated"]);
    for s in summaries {
        table.add_row(vec![
            s.run.name.clone(),
            s.run.policy.clone(),
            format!("{:?}", s.run.status).to_lowercase(),
            format!("{}/{}", s.summary.recorded.scores, s.run.search.budget.scores),
            format!("{}/{}", s.summary.recorded.trainings, s.run.search.budget.trainings),
            s.summary.best_score.map_or("–".into(), output::score),
            s.summary.best_accuracy.map_or("–".into(), output::percent),
            s.run.updated_at.clone(),
        ]);
    }
    println!("{table}");
    if detailed {
        for s in summaries {
            print_leaderboard(&s.leaderboard);
            if let Some(error) = &s.run.error {
                println!("Error: {error}");
            }
            for event in s.events.iter().flatten() {
                println!("{}  {:<7} {}", event.at, event.kind, event.message);
            }
        }
    }
}

/// Prints the trained finalists (or, without any, the best scores); with a published
/// column when the run was annotated with a benchmark table.
pub fn print_leaderboard(board: &Leaderboard) {
    let published = board.trained.iter().chain(&board.top_scores).any(|s| s.published_accuracy.is_some());
    let (title, rows, mut header) = if board.trained.is_empty() {
        ("Best scores (nothing trained)", &board.top_scores, vec!["#", "architecture", "score"])
    } else {
        ("Leaderboard (trained candidates)", &board.trained, vec!["#", "architecture", "accuracy", "held-out loss", "score"])
    };
    if published {
        header.push("published accuracy");
    }
    let mut table = output::table(&header);
    for (i, s) in rows.iter().enumerate() {
        let mut cells = vec![(i + 1).to_string(), s.candidate.to_string()];
        if !board.trained.is_empty() {
            cells.push(s.accuracy.map_or("–".into(), output::percent));
            cells.push(s.loss.map_or("–".into(), |l| format!("{l:.4}")));
        }
        cells.push(s.score.map_or("–".into(), output::score));
        if published {
            cells.push(s.published_accuracy.map_or("–".into(), |a| format!("{a:.2}")));
        }
        table.add_row(cells);
    }
    println!("{title}:\n{table}");
}
