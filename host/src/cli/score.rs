//! `knas score`: the gradient-kernel score of architectures.

use anyhow::{Context, Result};
use clap::Args;
use knas::kernel::ScoreMode;
use knas::space::Arch;

use super::output::{self, Format};
use super::{ArchSource, ComputeArgs, ExperimentArgs};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    source: ArchSource,
    #[command(flatten)]
    experiment: ExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Output: a table at the end, or one JSON object per architecture as it is scored.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One scored architecture, as printed.
#[derive(Debug, serde::Serialize)]
pub struct ScoreRow {
    pub arch: Arch,
    pub index: usize,
    pub score: f64,
    pub mode: ScoreMode,
    pub params: i64,
    pub flops: i64,
    pub seconds: f64,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let experiment = args.experiment.experiment();
    let archs = args.source.resolve(experiment.seed)?;
    let engine = args.compute.engine(&experiment)?;
    let bar = output::bar(archs.len() as u64, "scoring");
    let mut rows = Vec::with_capacity(archs.len());
    for arch in &archs {
        let score = engine.score(&(*arch).into()).with_context(|| format!("scoring {arch}"))?;
        let row = ScoreRow {
            arch: *arch,
            index: arch.index(),
            score: score.mgm,
            mode: experiment.score_mode,
            params: score.info.params,
            flops: score.info.flops,
            seconds: score.seconds,
        };
        if args.format == Format::Jsonl {
            bar.suspend(|| output::json_line(&row))?;
        }
        rows.push(row);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.format == Format::Table {
        let mut table = output::table(&["#", "architecture", "index", "MGM", "params", "MFLOPs", "seconds"]);
        for (i, row) in rows.iter().enumerate() {
            table.add_row(vec![
                (i + 1).to_string(),
                row.arch.to_string(),
                row.index.to_string(),
                output::sci(row.score),
                row.params.to_string(),
                format!("{:.1}", row.flops as f64 / 1e6),
                format!("{:.3}", row.seconds),
            ]);
        }
        println!("{table}");
    }
    Ok(())
}
