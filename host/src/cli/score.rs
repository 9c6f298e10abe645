//! `knas score`: training-free measures of architectures at initialisation.

use anyhow::{Context, Result};
use clap::Args;
use knas::measures::{Measure, ScoreChoice};
use knas::space::Candidate;

use super::output::{self, Format};
use super::{ArchSource, ComputeArgs, ScoringExperimentArgs, StoreArgs};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    source: ArchSource,
    /// What to print: `aggregate` (the experiment's rank aggregate, anchored in its
    /// reference sample), measure names (comma-separated), or `all` (every measure and
    /// the aggregate). Measures: mgm, mgm-batch, kernel-alignment, zico, grad-norm, snip,
    /// synflow, jacov, naswot, swap, meco, expressivity, progressivity, trainability,
    /// params, flops (each with its paper in the README). [default: aggregate, or the
    /// measure `--score` names]
    #[arg(long, value_delimiter = ',', value_name = "aggregate|all|MEASURE,…")]
    measure: Option<Vec<Selection>>,
    #[command(flatten)]
    experiment: ScoringExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// The aggregate's reference sample is cached here.
    #[command(flatten)]
    store: StoreArgs,
    /// Output: a table at the end, or one JSON object per architecture as it is measured
    /// (one field per measure).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One item of `--measure`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Selection {
    Aggregate,
    All,
    One(Measure),
}

impl std::str::FromStr for Selection {
    type Err = String;
    fn from_str(text: &str) -> Result<Selection, String> {
        match text {
            "aggregate" => Ok(Selection::Aggregate),
            "all" => Ok(Selection::All),
            _ => text.parse().map(Selection::One).map_err(|e: String| format!("{e}, aggregate or all")),
        }
    }
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let experiment = args.experiment.experiment();
    let archs = args.source.resolve(experiment.seed)?;
    let selections = args.measure.clone().unwrap_or_else(|| match experiment.score {
        ScoreChoice::Measure(m) => vec![Selection::One(m)],
        ScoreChoice::Aggregate => vec![Selection::Aggregate],
    });
    let aggregate = selections.iter().any(|s| matches!(s, Selection::Aggregate | Selection::All));
    // Checked before any data is loaded.
    anyhow::ensure!(
        !aggregate || experiment.score == ScoreChoice::Aggregate,
        "--measure aggregate (and all, which includes it) needs the experiment's score to be the aggregate: drop --score, or name measures only"
    );
    let mut measures: Vec<Measure> = Vec::new();
    for selection in &selections {
        let add: Vec<Measure> = match selection {
            Selection::All => Measure::ALL.to_vec(),
            Selection::Aggregate => vec![],
            Selection::One(m) => vec![*m],
        };
        for m in add {
            if !measures.contains(&m) {
                measures.push(m);
            }
        }
    }
    let mut engine = args.compute.engine(&experiment)?;
    let mut computed = measures.clone();
    if aggregate {
        let store = args.store.open()?;
        let bar = output::bar(experiment.reference as u64, "reference sample");
        knas::search::anchor(&mut engine, &store, &mut |done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        for m in experiment.aggregate.measures() {
            if !computed.contains(&m) {
                computed.push(m);
            }
        }
    }

    let bar = output::bar(archs.len() as u64, "measuring");
    let mut rows = Vec::with_capacity(archs.len());
    let candidates: Vec<Candidate> = archs.iter().map(|a| (*a).into()).collect();
    engine.measure_all(&candidates, &computed, &mut |i, measured| -> Result<()> {
        let arch = archs[i];
        let measured = measured.with_context(|| format!("measuring {arch}"))?;
        let mut row = serde_json::Map::new();
        row.insert("arch".into(), arch.to_string().into());
        row.insert("index".into(), arch.index().into());
        if aggregate {
            row.insert("aggregate".into(), engine.score_of(&measured.values)?.into());
        }
        for m in &measures {
            row.insert(m.name().into(), measured.get(*m).into());
        }
        row.insert("seconds".into(), measured.seconds.into());
        if args.format == Format::Jsonl {
            bar.suspend(|| output::json_line(&row))?;
        }
        rows.push((arch, row));
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    if args.format == Format::Table {
        let mut columns: Vec<String> = vec!["#".into(), "architecture".into(), "index".into()];
        if aggregate {
            columns.push("aggregate".into());
        }
        columns.extend(measures.iter().map(|m| m.name().to_owned()));
        columns.push("seconds".into());
        let header: Vec<&str> = columns.iter().map(String::as_str).collect();
        let mut table = output::table(&header);
        for (i, (arch, row)) in rows.iter().enumerate() {
            let mut cells = vec![(i + 1).to_string(), arch.to_string(), arch.index().to_string()];
            for column in &columns[3..] {
                cells.push(match &row[column.as_str()] {
                    serde_json::Value::Null => "missing".into(),
                    serde_json::Value::Number(n) => format_number(column, n.as_f64().unwrap_or(f64::NAN)),
                    other => other.to_string(),
                });
            }
            table.add_row(cells);
        }
        println!("{table}");
    }
    Ok(())
}

fn format_number(column: &str, value: f64) -> String {
    match column {
        "params" | "flops" | "swap" => format!("{value:.0}"),
        "seconds" => format!("{value:.3}"),
        _ if value != 0.0 && (value.abs() >= 1e5 || value.abs() < 1e-3) => output::sci(value),
        _ => format!("{value:.4}"),
    }
}
