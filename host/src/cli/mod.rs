//! The `knas` command line.

mod correlate;
mod katib;
mod output;
mod policy;
mod runs;
mod score;
mod search;
mod select;
mod serve;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use knas::data::{DatasetSpec, Holdout};
use knas::engine::{DeviceChoice, Engine};
use knas::measures::ScoreChoice;
use knas::run::Experiment;
use knas::space::{Arch, NUM_ARCHS};
use tracing_subscriber::EnvFilter;

/// Training-free neural architecture search (KNAS and beyond).
///
/// knas judges a randomly initialised network without training it: by its gradient kernel
/// (KNAS's MGM) and a suite of published training-free measures, combined into one rank
/// aggregate. Scoring takes a fraction of a second per architecture, so knas ranks many
/// candidates (coarse selection) and trains only the best few briefly to pick the winner
/// (fine selection).
///
/// Architectures are NAS-Bench-201 cells, written in NB201's string form
/// (`|nor_conv_3x3~0|+|none~0|skip_connect~1|+|…~0|…~1|…~2|`) or as an index in 0..15624.
/// Every command runs on the embedded MNIST subset unless `--dataset` says otherwise.
#[derive(Debug, Parser)]
#[command(name = "knas", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive). Also KNAS_LOG.
    #[arg(long, global = true, env = "KNAS_LOG", default_value = "warn", value_parser = parse_log_filter)]
    log: String,

    /// Log records as JSON lines on stderr instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure architectures at initialisation: the rank aggregate (default), any measure
    /// of the suite, or all of them.
    ///
    /// Example: knas score --sample 20 --measure all --format jsonl
    #[command(after_long_help = knas::measures::help_text())]
    Score(score::ScoreArgs),
    /// Train architectures briefly and report held-out accuracy and loss.
    ///
    /// Example: knas train '|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|nor_conv_3x3~0|nor_conv_1x1~1|skip_connect~2|'
    Train(train::TrainArgs),
    /// Measure how well every measure and the aggregate rank architectures: against a
    /// published benchmark table, or by training a sample under several seeds. Spearman ρ
    /// (with a 95% bootstrap interval) and Kendall τ for each.
    ///
    /// Against NAS-Bench-201's table: knas correlate --table nb201_cifar10.jsonl.gz --dataset cifar10:DIR --sample 1000
    ///
    /// By training: knas correlate --sample 30 --train-seeds 2 --plot corr.svg --format json > corr.json
    ///
    /// Re-measure on the same trained results without training: knas correlate --truth corr.json
    Correlate(correlate::CorrelateArgs),
    /// Run a complete KNAS selection: sample candidates, rank them by score (coarse),
    /// train the top k (fine) and report the winner. Exits with status 1, after the report,
    /// when every training failed.
    ///
    /// Example: knas select --candidates 100 --top-k 3
    Select(select::SelectArgs),
    /// Run a search policy (a WebAssembly component) end to end. Results go to the run
    /// store as they are measured; rerunning a run resumes it where it stopped. Exits with
    /// status 1, after the report, when the run trained and every training failed (no
    /// winner, only a best score).
    ///
    /// Example: knas search --policy policies/evolution.wasm --budget 200 --top-k 5
    Search(search::SearchArgs),
    /// List the runs in the store, or show one run's leaderboard and events.
    ///
    /// Example: knas runs evolution --format json
    Runs(runs::RunsArgs),
    /// Build policy crates into components, or inspect policy files.
    Policy(policy::PolicyArgs),
    /// Run the service: watch a policy folder (each NAME.wasm drives run NAME, hot-swapped
    /// when the file changes), serve /metrics and a JSON API.
    ///
    /// Example: knas serve --config examples/knas.yaml
    Serve(serve::ServeArgs),
    /// Run the Kubeflow Katib suggestion service: Katib asks over gRPC for the next trials;
    /// knas scores candidates here (coarse selection) and proposes the best for Katib to
    /// train as trials (fine selection). See examples/katib/.
    ///
    /// Example: knas katib --policy-dir policies --store /opt/katib/data/knas.db
    #[command(after_long_help = knas::katib::mapping::help_text())]
    Katib(katib::KatibArgs),
}

/// Where runs are stored.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Run store")]
pub struct StoreArgs {
    /// The run store (an SQLite file; commands that write to it create it if missing).
    #[arg(long = "store", env = "KNAS_STORE", default_value = "knas-runs.db", value_name = "FILE")]
    path: PathBuf,
}

impl StoreArgs {
    fn open(&self) -> Result<knas::store::RunStore> {
        Ok(knas::store::RunStore::open(&self.path)?)
    }

    /// Opens a store that must exist: commands that only read it do not create one for a
    /// mistyped path.
    fn open_existing(&self) -> Result<knas::store::RunStore> {
        anyhow::ensure!(self.path.is_file(), "no run store at {} (--store names the SQLite file a search wrote)", self.path.display());
        // Opening creates the schema in an empty file: a command that only reads must not
        // turn a file that is not a store (an empty one, a typo'd path) into one.
        let mut header = [0u8; 16];
        let read = std::fs::File::open(&self.path).and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header));
        anyhow::ensure!(
            read.is_ok() && &header == b"SQLite format 3\0",
            "{} is not a run store: not an SQLite database (--store names the SQLite file a search wrote)",
            self.path.display()
        );
        self.open()
    }
}

/// Settings that decide an experiment's numbers. Each flag overrides the default (or the
/// config file, for commands that read one). Commands that both score and train take all
/// of them; `score` and `katib` take no training flags, `train` no scoring flags.
#[derive(Debug, Args, Clone, Default)]
pub struct ExperimentArgs {
    #[command(flatten)]
    setup: SetupArgs,
    #[command(flatten)]
    scoring: ScoringArgs,
    #[command(flatten)]
    training: TrainingArgs,
}

/// The experiment flags of a command that only scores.
#[derive(Debug, Args, Clone, Default)]
pub struct ScoringExperimentArgs {
    #[command(flatten)]
    setup: SetupArgs,
    #[command(flatten)]
    scoring: ScoringArgs,
}

/// The experiment flags of a command that only trains.
#[derive(Debug, Args, Clone, Default)]
pub struct TrainingExperimentArgs {
    #[command(flatten)]
    setup: SetupArgs,
    #[command(flatten)]
    training: TrainingArgs,
}

/// Data and network: what every command reads.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Experiment")]
struct SetupArgs {
    /// Dataset: mnist5k (embedded, 5,000 real MNIST digits), mnist:DIR, fashion-mnist:DIR
    /// (IDX files, gzipped or not; image sides multiples of 4, at least 8), cifar10:DIR, cifar100:DIR
    /// (binary versions) [default: mnist5k]
    #[arg(long, value_parser = parse_dataset)]
    dataset: Option<DatasetSpec>,
    /// Held-out images: a fraction of the training part (seeded), or `test` for the
    /// dataset's official test part [default: 0.2]
    #[arg(long)]
    holdout: Option<Holdout>,
    /// Use at most this many training images (a seeded sample), and at most 10,000
    /// held-out ones when they are a fraction of the training part; of IDX files only the
    /// images used are read into memory
    #[arg(long)]
    limit: Option<usize>,
    /// Channels of the first stage, C (at most 4096; with --cells, the space's largest network
    /// must stay within 10⁹ weights: C 256 at N 5 does); the later stages have 2C and 4C
    /// [default: 16]
    #[arg(long)]
    channels: Option<i64>,
    /// Cells per stage, N (at most 64) [default: 5]
    #[arg(long)]
    cells: Option<i64>,
    /// Seed for the data split, the scoring batch, network initialisation and policies
    /// [default: 0]
    #[arg(long)]
    seed: Option<u64>,
}

/// How candidates are scored without training.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Scoring")]
struct ScoringArgs {
    /// Images in the scoring batch every measure reads [default: 64]
    #[arg(long)]
    batch_size: Option<usize>,
    /// A candidate's score: `aggregate` (the rank aggregate of several measures, anchored
    /// in a reference sample) or one measure's name (`mgm` is KNAS's gradient kernel; see
    /// `knas score --help` for the list) [default: aggregate]
    #[arg(long, value_name = "aggregate|MEASURE")]
    score: Option<ScoreChoice>,
    /// Architectures in the seeded reference sample that anchors the aggregate's ranks
    /// (measured once per experiment; cached in the run store by the commands that have
    /// --store) [default: 64]
    #[arg(long, value_name = "N")]
    reference: Option<usize>,
}

/// How finalists are trained.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Training")]
struct TrainingArgs {
    /// Training epochs for finalists (at most 10,000) [default: 1]
    #[arg(long)]
    epochs: Option<usize>,
    /// Training mini-batch size [default: 64]
    #[arg(long)]
    train_batch_size: Option<usize>,
    /// Initial learning rate, cosine-decayed to zero [default: 0.1]
    #[arg(long)]
    lr: Option<f64>,
}

fn parse_dataset(text: &str) -> Result<DatasetSpec, String> {
    text.parse().map_err(|e: knas::data::DataError| e.to_string())
}

/// A group of experiment flags.
trait ExperimentFlags {
    /// Sets the fields of `e` that these flags give.
    fn apply_to(&self, e: &mut Experiment);
}

/// `base` with every given flag of `groups` applied.
fn with_flags(mut base: Experiment, groups: &[&dyn ExperimentFlags]) -> Experiment {
    for group in groups {
        group.apply_to(&mut base);
    }
    base
}

impl ExperimentFlags for SetupArgs {
    fn apply_to(&self, e: &mut Experiment) {
        if let Some(dataset) = &self.dataset {
            e.dataset = dataset.clone();
        }
        e.holdout = self.holdout.unwrap_or(e.holdout);
        e.limit = self.limit.or(e.limit);
        e.channels = self.channels.unwrap_or(e.channels);
        e.cells = self.cells.unwrap_or(e.cells);
        e.seed = self.seed.unwrap_or(e.seed);
    }
}

impl ExperimentFlags for ScoringArgs {
    fn apply_to(&self, e: &mut Experiment) {
        e.score_batch = self.batch_size.unwrap_or(e.score_batch);
        e.score = self.score.unwrap_or(e.score);
        e.reference = self.reference.unwrap_or(e.reference);
    }
}

impl ExperimentFlags for TrainingArgs {
    fn apply_to(&self, e: &mut Experiment) {
        e.train.epochs = self.epochs.unwrap_or(e.train.epochs);
        e.train.batch_size = self.train_batch_size.unwrap_or(e.train.batch_size);
        e.train.learning_rate = self.lr.unwrap_or(e.train.learning_rate);
    }
}

impl ExperimentArgs {
    /// The default experiment with these flags applied.
    fn experiment(&self) -> Experiment {
        self.apply(Experiment::default())
    }

    /// `base` with every given flag applied.
    fn apply(&self, base: Experiment) -> Experiment {
        with_flags(base, &[&self.setup, &self.scoring, &self.training])
    }
}

impl ScoringExperimentArgs {
    /// The default experiment with these flags applied.
    fn experiment(&self) -> Experiment {
        with_flags(Experiment::default(), &[&self.setup, &self.scoring])
    }
}

impl TrainingExperimentArgs {
    /// The default experiment with these flags applied.
    fn experiment(&self) -> Experiment {
        with_flags(Experiment::default(), &[&self.setup, &self.training])
    }
}

/// Where and how compute runs.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Compute")]
pub struct ComputeArgs {
    /// Device: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// CPU threads for libtorch (0: libtorch's default, one per core).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    threads: i32,
    /// Architectures measured at once, each on its own thread, when a command measures
    /// many (`score`, `correlate`, an aggregate's reference sample, the new scores of one
    /// proposal in `select` and `search`; `train` measures nothing and ignores it). 0: one on
    /// a CPU (libtorch's threads already share the cores), 8 on a GPU. Values do not
    /// depend on it (on a GPU, beyond the last-bit noise CUDA has from run to run); each
    /// architecture's `seconds` is then its wall time while the others run. At most 256:
    /// each worker builds its own networks, so memory grows with them.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    workers: u16,
}

impl ComputeArgs {
    /// Applies the thread setting and loads `experiment` onto the chosen device.
    fn engine(&self, experiment: &Experiment) -> Result<Engine> {
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        // Refused before the device or the data is touched, naming the flag.
        experiment.validate().map_err(|problem| invalid_experiment(&problem, None))?;
        let device = self.device.resolve()?;
        let spinner = output::spinner(format!("loading {} onto {device:?}", experiment.dataset));
        let mut engine = Engine::new(experiment, device).with_context(|| format!("cannot start on {}", experiment.dataset))?;
        if self.workers > 0 {
            engine.set_workers(usize::from(self.workers));
        }
        spinner.finish_and_clear();
        let (train, heldout) = engine.sizes();
        let names: Vec<String> =
            engine.files().iter().map(|f| f.file_name().map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
        let files = names.join(", ");
        tracing::info!(dataset = %experiment.dataset, train, heldout, device = ?device, files, "engine ready");
        // Which files were read, said by default; with JSON logs the record above says it.
        if !names.is_empty() && !LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("{}: {train} training and {heldout} held-out images, read from {files}", experiment.dataset);
        }
        Ok(engine)
    }
}

/// An invalid experiment's error. The problem names the key as configuration files write
/// it (`Experiment::validate`); this adds the flag that sets it and, when the values came
/// from a `--config` file too, that file, so that a bad value can be found where it was
/// written.
pub(crate) fn invalid_experiment(problem: &str, config: Option<&std::path::Path>) -> anyhow::Error {
    let key = problem.split_whitespace().next().unwrap_or_default().trim_end_matches(':');
    // The network-size bound is the two keys' together (`channels C with cells N admit …`).
    let key = if key == "channels" && problem.contains(" with cells ") { "channels and cells" } else { key };
    let flag = match key {
        "channels" | "cells" | "reference" | "limit" | "holdout" => Some(format!("--{key}")),
        "channels and cells" => Some("--channels and --cells".to_owned()),
        "score-batch" => Some("--batch-size".to_owned()),
        "train.epochs" => Some("--epochs".to_owned()),
        "train.batch-size" => Some("--train-batch-size".to_owned()),
        "train.learning-rate" => Some("--lr".to_owned()),
        _ => None,
    };
    let file = config.map(|path| match key {
        "channels and cells" => format!("experiment.channels and experiment.cells in {}", path.display()),
        key => format!("experiment.{key} in {}", path.display()),
    });
    set_by("invalid experiment", problem, flag, file)
}

/// `WHAT: PROBLEM (set by FLAG or FILE KEY)`: a bad value's error, naming where it can have
/// been written.
pub(crate) fn set_by(what: &str, problem: &str, flag: Option<String>, file: Option<String>) -> anyhow::Error {
    let sources: Vec<String> = flag.into_iter().chain(file).collect();
    if sources.is_empty() {
        anyhow::anyhow!("{what}: {problem}")
    } else {
        anyhow::anyhow!("{what}: {problem} (set by {})", sources.join(" or "))
    }
}

/// Where architectures come from.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Architectures")]
pub struct ArchSource {
    /// Architectures in NB201 string form or as indices.
    #[arg(value_name = "ARCH")]
    archs: Vec<String>,
    /// Read architectures from a file, one per line (blank lines and # comments skipped).
    #[arg(long = "archs", value_name = "FILE")]
    archs_file: Option<PathBuf>,
    /// Draw this many distinct architectures at random (seeded by --seed).
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
}

impl ArchSource {
    fn resolve(&self, seed: u64) -> Result<Vec<Arch>> {
        let mut archs = Vec::new();
        for (i, text) in self.archs.iter().enumerate() {
            archs.push(text.parse().with_context(|| format!("architecture argument {}", i + 1))?);
        }
        if let Some(path) = &self.archs_file {
            archs.extend(read_arch_file(path)?);
        }
        if let Some(n) = self.sample {
            archs.extend(sample_archs(n, seed)?);
        }
        anyhow::ensure!(!archs.is_empty(), "no architectures given: pass ARCH arguments, --archs FILE or --sample N");
        Ok(archs)
    }
}

/// Reads one architecture per line; errors name the file and line.
pub fn read_arch_file(path: &std::path::Path) -> Result<Vec<Arch>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut archs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let arch = line.parse().with_context(|| format!("{}:{}", path.display(), number + 1))?;
        archs.push(arch);
    }
    Ok(archs)
}

/// `n` distinct architectures drawn uniformly, reproducibly from `seed`.
pub fn sample_archs(n: usize, seed: u64) -> Result<Vec<Arch>> {
    anyhow::ensure!(n >= 1, "--sample must be at least 1, got 0");
    anyhow::ensure!(n <= NUM_ARCHS, "cannot sample {n} distinct architectures: the space has {NUM_ARCHS}");
    Ok(Arch::sample(n, seed))
}

/// A `--log` value tracing accepts: refused when read, not silently replaced.
fn parse_log_filter(value: &str) -> Result<String, String> {
    EnvFilter::try_new(value).map(|_| value.to_owned()).map_err(|e| format!("not a log level or tracing directive: {e}"))
}

/// Whether log records go to stderr as JSON lines (`--log-json`): then no plain-text line
/// may go there besides them.
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init_logging(cli: &Cli) {
    LOG_JSON.store(cli.log_json, std::sync::atomic::Ordering::Relaxed);
    // Checked when the command line was parsed.
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command line; errors are printed with their whole cause chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    if !matches!(cli.command, Command::Serve(_) | Command::Katib(_)) {
        // A reader that stops reading (`knas score … | head`) ends the command quietly, as
        // it ends other Unix tools, instead of an error (or a panic inside `println!`).
        // Not for the service, whose sockets must never kill it.
        // SAFETY: called before any other thread exists; restores the default action.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = knas::configure_failpoints().and_then(|()| match &cli.command {
        Command::Score(args) => score::run(args),
        Command::Train(args) => train::run(args),
        Command::Correlate(args) => correlate::run(args),
        Command::Select(args) => select::run(args),
        Command::Search(args) => search::run(args),
        Command::Runs(args) => runs::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Katib(args) => katib::run(args),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: many errors already include their source's
/// text in their own message (`{path}: {source}`), so a cause whose text is already there
/// is not repeated.
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let error = knas::config::ConfigError::Io { path: "knas.yaml".into(), source: missing };
        assert_eq!(describe(&anyhow::Error::new(error)), "knas.yaml: No such file or directory");
        let wrapped = anyhow::anyhow!("disk on fire").context("writing the store");
        assert_eq!(describe(&wrapped), "writing the store: disk on fire");
    }
}
