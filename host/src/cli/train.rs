//! `knas train`: brief training of architectures.

use anyhow::{Context, Result};
use clap::Args;
use knas::space::Arch;

use super::output;
use super::{ArchSource, ComputeArgs, TrainingExperimentArgs};

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    source: ArchSource,
    #[command(flatten)]
    experiment: TrainingExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Seed for shuffling and augmentation (initial weights come from --seed).
    #[arg(long, default_value_t = 0)]
    train_seed: u64,
    /// Output: a table at the end, one JSON object per architecture as it finishes, or
    /// `katib`: `NAME=VALUE` lines (accuracy, loss, train_loss, seconds) that Katib's StdOut
    /// metrics collector reads, so a Katib trial can run `knas train` as is.
    #[arg(long, value_enum, default_value_t = TrainFormat::Table)]
    format: TrainFormat,
}

/// How `knas train` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TrainFormat {
    Table,
    Jsonl,
    Katib,
}

#[derive(Debug, serde::Serialize)]
struct TrainRow {
    arch: Arch,
    index: usize,
    accuracy: f64,
    heldout_loss: f64,
    train_loss: f64,
    epochs: usize,
    seconds: f64,
    images_per_second: f64,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let experiment = args.experiment.experiment();
    let archs = args.source.resolve(experiment.seed)?;
    let engine = args.compute.engine(&experiment)?;
    let mut rows = Vec::with_capacity(archs.len());
    for (i, arch) in archs.iter().enumerate() {
        let bar = output::bar(0, format!("training {}/{}", i + 1, archs.len()));
        let result = engine
            .train(arch, args.train_seed, &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            })
            .with_context(|| format!("training {arch}"))?;
        bar.finish_and_clear();
        let row = TrainRow {
            arch: *arch,
            index: arch.index(),
            accuracy: result.heldout_accuracy,
            heldout_loss: result.heldout_loss,
            train_loss: result.train_loss,
            epochs: result.epochs,
            seconds: result.seconds,
            images_per_second: result.images_per_second,
        };
        match args.format {
            TrainFormat::Jsonl => output::json_line(&row)?,
            TrainFormat::Katib => {
                // Katib's collector reads every NAME=VALUE on stdout; one line each.
                println!("accuracy={}\nloss={}\ntrain_loss={}\nseconds={:.3}", row.accuracy, row.heldout_loss, row.train_loss, row.seconds);
            }
            TrainFormat::Table => {}
        }
        rows.push(row);
    }
    if args.format == TrainFormat::Table {
        let mut table = output::table(&["architecture", "accuracy", "held-out loss", "train loss", "epochs", "seconds"]);
        for row in &rows {
            table.add_row(vec![
                row.arch.to_string(),
                output::percent(row.accuracy),
                format!("{:.4}", row.heldout_loss),
                format!("{:.4}", row.train_loss),
                row.epochs.to_string(),
                format!("{:.1}", row.seconds),
            ]);
        }
        println!("{table}");
    }
    Ok(())
}
