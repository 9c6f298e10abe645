//! `knas search`: run a policy end to end, resumably.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use knas::config::{RunConfig, SearchSettings};
use knas::policy::{PolicyModule, PolicyRuntime, builtin};
use knas::run::{Budget, Experiment, Fidelity, PolicyLimits, SearchSpec};
use knas::search::{Finish, Leaderboard, Search, SearchObserver, Step};
use knas::store::{EvaluationRecord, RunRecord, RunStore};
use knas::table::BenchmarkTable;

use super::output::{self, Report};
use super::{ComputeArgs, ExperimentArgs, StoreArgs};

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The policy: a WebAssembly component (build one with `knas policy build`), or
    /// `random`, the policy built into knas (KNAS's protocol: score random candidates,
    /// train the best k).
    #[arg(long, value_name = "FILE.wasm|random")]
    policy: PathBuf,
    /// Run name in the store (default: the policy's file name). Rerunning a name resumes
    /// that run where it stopped.
    #[arg(long)]
    name: Option<String>,
    /// A YAML run description (experiment, search, params, limits; examples/run.yaml); flags
    /// override it. A relative data folder in it is relative to the file's folder.
    #[arg(long, value_name = "FILE.yaml")]
    config: Option<PathBuf>,
    /// Training-free scores the run may compute (of --score: the aggregate by default)
    /// [default: 100]
    #[arg(long)]
    budget: Option<u32>,
    /// Architectures the run may train (KNAS's k) [default: 3]
    #[arg(long)]
    top_k: Option<u32>,
    /// Candidates one proposal may hold [default: 16]
    #[arg(long)]
    max_batch: Option<u32>,
    /// The policy's parameters, as a JSON object (e.g. '{"population": 20}').
    #[arg(long, value_name = "JSON")]
    params: Option<String>,
    /// Annotate the run with a published benchmark table (one JSON object per line with
    /// `arch` and an accuracy, e.g. NAS-Bench-201's): each candidate's published accuracy
    /// is stored and shown beside what knas measured, and the report says where the pick
    /// stands in the table. The policy never sees it.
    #[arg(long, value_name = "FILE.jsonl")]
    table: Option<PathBuf>,
    /// The table's accuracy field [default: the first of acc, accuracy, test_accuracy, …]
    #[arg(long, value_name = "NAME", requires = "table")]
    table_field: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    experiment: ExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Output: tables, or one JSON document.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

/// Sandbox limits for policies.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Policy sandbox")]
pub struct LimitArgs {
    /// Wall-clock deadline of one policy call, in ms [default: 2000]
    #[arg(long)]
    policy_timeout_ms: Option<u64>,
    /// Instructions one policy call may execute [default: 2000000000]
    #[arg(long)]
    policy_fuel: Option<u64>,
    /// Memory one policy instance may use, in MiB [default: 64]
    #[arg(long)]
    policy_memory_mib: Option<usize>,
    /// Log bytes one policy instance may write per minute, across calls [default: 1048576]
    #[arg(long)]
    policy_log_bytes_per_minute: Option<usize>,
}

impl LimitArgs {
    /// An invalid limit's error: the problem (from [`PolicyLimits::validate`], naming the
    /// key as a configuration file's `limits` writes it) with the flag that sets the key
    /// and, when the values came from a `--config` file too, that file.
    pub fn invalid(problem: &str, config: Option<&std::path::Path>) -> anyhow::Error {
        let key = problem.split_whitespace().next().unwrap_or_default();
        let flag = match key {
            "call-timeout-ms" => Some("--policy-timeout-ms"),
            "fuel-per-call" => Some("--policy-fuel"),
            "memory-mib" => Some("--policy-memory-mib"),
            "log-bytes-per-minute" => Some("--policy-log-bytes-per-minute"),
            // log-record-bytes has no flag: only a configuration file sets it.
            _ => None,
        };
        let file = config.map(|path| format!("limits.{key} in {}", path.display()));
        super::set_by("invalid policy limits", problem, flag.map(str::to_owned), file)
    }

    pub fn apply(&self, base: PolicyLimits) -> PolicyLimits {
        PolicyLimits {
            call_timeout_ms: self.policy_timeout_ms.unwrap_or(base.call_timeout_ms),
            fuel_per_call: self.policy_fuel.unwrap_or(base.fuel_per_call),
            memory_mib: self.policy_memory_mib.unwrap_or(base.memory_mib),
            log_bytes_per_minute: self.policy_log_bytes_per_minute.unwrap_or(base.log_bytes_per_minute),
            ..base
        }
    }
}

/// What `knas search` reports.
#[derive(Debug, serde::Serialize)]
struct SearchReport {
    run: String,
    policy: String,
    store: PathBuf,
    finish: Finish,
    budget: Budget,
    /// Evaluations recorded in the run.
    recorded: Budget,
    /// Evaluations this process computed (the rest came from the store).
    computed_now: Budget,
    leaderboard: Leaderboard,
    /// Where the picks stand in the published table (with --table).
    #[serde(skip_serializing_if = "Option::is_none")]
    published: Option<PublishedStanding>,
    wall_seconds: f64,
    evaluation_seconds: f64,
    policy_calls: u64,
    policy_seconds: f64,
    /// Time inside the policy relative to time evaluating, in percent.
    policy_overhead_percent: f64,
    /// Checking and compiling the policy file.
    policy_load_seconds: f64,
    /// Instantiating the policy (its start functions included), apart from its calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_instantiate_seconds: Option<f64>,
    /// The most memory (linear memories and tables) the policy instance held.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_peak_memory_mib: Option<f64>,
}

/// Where a run's picks stand in a published table: the yardstick, not what knas measured.
#[derive(Debug, serde::Serialize)]
struct PublishedStanding {
    table: PathBuf,
    field: String,
    /// The table's best and median accuracy.
    best: f64,
    median: f64,
    /// The run's winner (most accurate after training; without training, best score).
    winner: Option<Pick>,
    /// The best candidate by score alone, before any training.
    best_by_score: Option<Pick>,
}

#[derive(Debug, serde::Serialize)]
struct Pick {
    candidate: knas::space::Candidate,
    accuracy: f64,
    #[serde(flatten)]
    standing: knas::table::Standing,
}

impl Pick {
    fn of(table: &BenchmarkTable, candidate: Option<&knas::space::Candidate>) -> Option<Pick> {
        let candidate = *candidate?;
        let accuracy = table.accuracy(&candidate.to_arch().ok()?)?;
        Some(Pick { candidate, accuracy, standing: table.standing(accuracy) })
    }
}

/// Progress bar and best-so-far, fed by the search loop.
struct Progress {
    bar: ProgressBar,
    best_score: f64,
    best_accuracy: f64,
}

impl SearchObserver for Progress {
    fn evaluated(&mut self, record: &EvaluationRecord, _fresh: bool) {
        self.bar.inc(1);
        if let Some(score) = record.score {
            self.best_score = self.best_score.max(score);
        }
        if let Some(accuracy) = record.accuracy {
            self.best_accuracy = self.best_accuracy.max(accuracy);
        }
        let accuracy = if self.best_accuracy >= 0.0 { output::percent(self.best_accuracy) } else { "–".into() };
        self.bar.set_message(format!("best score {:.4} acc {accuracy}", self.best_score));
    }

    fn training_step(&mut self, done: usize, total: usize) {
        if done == 1 || done == total {
            self.bar.set_message(format!("training ({total} steps)"));
        }
    }
}

pub fn run(args: &SearchArgs) -> Result<()> {
    let config: RunConfig = match &args.config {
        Some(path) => RunConfig::load(path)?,
        None => RunConfig::default(),
    };
    let experiment = args.experiment.apply(config.experiment.clone());
    let settings = SearchSettings {
        score_budget: args.budget.unwrap_or(config.search.score_budget),
        top_k: args.top_k.unwrap_or(config.search.top_k),
        max_batch: args.max_batch.unwrap_or(config.search.max_batch),
    };
    let params = match &args.params {
        Some(text) => serde_json::from_str(text).context("--params is not valid JSON")?,
        None => config.params.clone().unwrap_or_else(|| serde_json::json!({})),
    };
    anyhow::ensure!(params.is_object(), "policy parameters must be a JSON object, got {params}");
    let limits = args.limits.apply(config.limits);
    // Refused before any data is loaded or any run is recorded.
    // Values come from the flags, else from the file: a problem names the file too.
    let from = args.config.as_ref().map(|path| format!(" (from the flags or {})", path.display())).unwrap_or_default();
    settings.validate().map_err(|problem| anyhow::anyhow!("invalid search settings{from}: {problem}"))?;
    limits.validate().map_err(|problem| LimitArgs::invalid(&problem, args.config.as_deref()))?;
    experiment.validate().map_err(|problem| super::invalid_experiment(&problem, args.config.as_deref()))?;
    let spec = settings.spec(params, limits);

    let table = args.table.as_deref().map(|path| BenchmarkTable::load(path, args.table_field.as_deref())).transpose()?.map(std::sync::Arc::new);
    let runtime = PolicyRuntime::new()?;
    let loading = Instant::now();
    let module = load_policy(&runtime, &args.policy)?;
    let policy_load_seconds = loading.elapsed().as_secs_f64();
    let name = args.name.clone().unwrap_or_else(|| module.name().to_owned());
    let store = args.store.open()?;
    let done = execute(&runtime, &module, &name, &experiment, &spec, table.clone(), &store, &args.compute)?;

    let leaderboard = Leaderboard::of(&done.evaluations, &store.published(done.run.id)?);
    let published = table.as_deref().map(|t| PublishedStanding {
        table: t.path().to_owned(),
        field: t.field().to_owned(),
        best: t.best(),
        median: t.median(),
        winner: Pick::of(t, leaderboard.winner.as_ref().map(|w| &w.candidate)),
        best_by_score: Pick::of(
            t,
            done.evaluations
                .iter()
                .filter(|e| e.fidelity == Fidelity::Score && e.candidate.is_single() && e.score.is_some())
                .max_by(|a, b| a.score.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.score.unwrap_or(f64::NEG_INFINITY)))
                .map(|e| &e.candidate),
        ),
    });
    let report = SearchReport {
        run: name,
        policy: done.run.policy.clone(),
        store: store.path().to_owned(),
        finish: done.finish,
        budget: spec.budget,
        recorded: store.spent(done.run.id)?,
        computed_now: done.fresh,
        leaderboard,
        published,
        wall_seconds: done.wall_seconds,
        evaluation_seconds: done.evaluation_time.as_secs_f64(),
        policy_calls: done.policy_calls,
        policy_seconds: done.policy_time.as_secs_f64(),
        policy_overhead_percent: 100.0 * done.policy_time.as_secs_f64() / done.evaluation_time.max(Duration::from_nanos(1)).as_secs_f64(),
        policy_load_seconds,
        policy_instantiate_seconds: done.policy_footprint.map(|(time, _)| time.as_secs_f64()),
        policy_peak_memory_mib: done.policy_footprint.map(|(_, bytes)| bytes as f64 / f64::from(1 << 20)),
    };
    match args.format {
        Report::Json => output::json(&report)?,
        Report::Table => print_report(&report),
    }
    ensure_a_training_succeeded(&report.run, &done.evaluations)
}

/// A run whose trainings all failed has no winner, only a best score: after the report,
/// the command fails, so that a script sees it. Everything stays recorded in the store. A
/// run that trains nothing (`--top-k 0`) is not a failure.
pub(super) fn ensure_a_training_succeeded(run: &str, evaluations: &[EvaluationRecord]) -> Result<()> {
    let trainings: Vec<&EvaluationRecord> = evaluations.iter().filter(|e| e.fidelity == Fidelity::Train).collect();
    if trainings.is_empty() || trainings.iter().any(|e| e.accuracy.is_some()) {
        return Ok(());
    }
    let first = trainings.iter().find_map(|e| e.error.as_deref()).unwrap_or("no accuracy recorded");
    anyhow::bail!(
        "no training succeeded in run {run:?}: all {} failed (the first: {first}); the report above is by score alone",
        trainings.len()
    )
}

/// Loads `--policy`: a component file, or the name of a policy built into the binary
/// (`random`) when no file has that name.
pub(super) fn load_policy(runtime: &PolicyRuntime, policy: &Path) -> Result<PolicyModule> {
    if !policy.is_file()
        && let Some(builtin) = policy.to_str().and_then(|name| builtin::load(runtime, name))
    {
        return Ok(builtin?);
    }
    match runtime.load_file(policy) {
        Ok(module) => Ok(module),
        Err(error) if !policy.is_file() => Err(anyhow::Error::new(error).context(format!(
            "no policy file {} and no built-in policy of that name (built in: {})",
            policy.display(),
            builtin::NAMES.join(", ")
        ))),
        Err(error) => Err(error.into()),
    }
}

/// What carrying out a run did.
pub(super) struct Executed {
    /// The run as the store has it at the end.
    pub run: RunRecord,
    /// Every evaluation the run recorded, in order.
    pub evaluations: Vec<EvaluationRecord>,
    pub finish: Finish,
    pub wall_seconds: f64,
    /// Evaluations this process computed (the rest came from the store), and the time.
    pub fresh: Budget,
    pub evaluation_time: Duration,
    pub policy_calls: u64,
    pub policy_time: Duration,
    /// The live instance's instantiation time and peak memory.
    pub policy_footprint: Option<(Duration, usize)>,
}

/// Starts or resumes run `name` of `module` and drives it to its end with a progress bar:
/// what `knas search` and `knas select` share. A run that fails is recorded as failed,
/// with what it recorded before kept.
#[allow(clippy::too_many_arguments)]
pub(super) fn execute(
    runtime: &PolicyRuntime,
    module: &PolicyModule,
    name: &str,
    experiment: &Experiment,
    spec: &SearchSpec,
    table: Option<std::sync::Arc<BenchmarkTable>>,
    store: &RunStore,
    compute: &ComputeArgs,
) -> Result<Executed> {
    // A rerun with changed settings is refused before the data and the reference sample.
    // So is a run another process is driving.
    let lease = store.lease(name)?;
    store.resumable(name, experiment, spec)?;
    let mut engine = compute.engine(experiment)?;
    let bar = output::bar(experiment.reference as u64, "reference sample");
    knas::search::anchor(&mut engine, store, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();

    let start = Instant::now();
    let mut search = Search::start(store, lease, runtime, module, name, experiment, spec, &mut ())?;
    if let Some(table) = table {
        search.annotate_with(store, table)?;
    }
    let total = spec.budget.total();
    let spent = store.spent(search.run().id)?;
    let mut progress = Progress { bar: output::bar(total, "searching"), best_score: f64::NEG_INFINITY, best_accuracy: -1.0 };
    progress.bar.set_position(spent.total());
    let finish = loop {
        match search.step(&engine, store, &mut progress) {
            Ok(Step::Continue) => {}
            Ok(Step::Finished(finish)) => break finish,
            // Only a run that trains elsewhere waits (`knas katib`); this command never sets that.
            Ok(Step::Waiting(_)) => anyhow::bail!("run {name:?} waits for trainings done elsewhere"),
            Err(error) => {
                progress.bar.finish_and_clear();
                search.fail(store, &error)?;
                let recorded = store.spent(search.run().id)?;
                return Err(anyhow::Error::new(error).context(format!(
                    "run {name:?} failed; its {} scores and {} trainings are kept in {}",
                    recorded.scores,
                    recorded.trainings,
                    store.path().display()
                )));
            }
        }
    };
    progress.bar.finish_and_clear();

    let run = store.run(name)?.context("the run vanished from the store")?;
    let evaluations = store.evaluations(run.id)?;
    let (policy_calls, policy_time) = search.policy_calls();
    Ok(Executed {
        run,
        evaluations,
        finish,
        wall_seconds: start.elapsed().as_secs_f64(),
        fresh: search.fresh(),
        evaluation_time: search.evaluation_time(),
        policy_calls,
        policy_time,
        policy_footprint: search.policy_footprint(),
    })
}

fn print_report(r: &SearchReport) {
    let how = match r.finish {
        Finish::PolicyDone => "the policy finished",
        Finish::BudgetSpent => "the budget is spent",
        Finish::AlreadyDone => "already complete in the store",
    };
    println!("Run {:?} with policy {}: {how}.", r.run, r.policy);
    super::runs::print_leaderboard(&r.leaderboard);
    println!(
        "Recorded {} scores and {} trainings (budget {} and {}); {} and {} computed now, the rest from {}.",
        r.recorded.scores,
        r.recorded.trainings,
        r.budget.scores,
        r.budget.trainings,
        r.computed_now.scores,
        r.computed_now.trainings,
        r.store.display()
    );
    println!(
        "Wall time {:.1}s; {} policy calls took {:.1} ms, {:.3}% of the {:.1}s spent evaluating.",
        r.wall_seconds,
        r.policy_calls,
        r.policy_seconds * 1e3,
        r.policy_overhead_percent,
        r.evaluation_seconds
    );
    match &r.leaderboard.winner {
        Some(w) if w.accuracy.is_some() => println!("Winner: {}", w.candidate),
        Some(w) if r.recorded.trainings == 0 => println!("Best by score (nothing was trained): {}", w.candidate),
        Some(w) => println!("Best by score (no training succeeded): {}", w.candidate),
        None => println!("No candidate was evaluated."),
    }
    if let Some(p) = &r.published {
        println!("In the published table {} (`{}`; best {:.2}, median {:.2}):", p.table.display(), p.field, p.best, p.median);
        for (what, pick) in [("winner", &p.winner), ("best by score alone", &p.best_by_score)] {
            if let Some(pick) = pick {
                println!(
                    "  {what}: {:.2} — rank {} of {} (top {:.2}%)",
                    pick.accuracy, pick.standing.rank, pick.standing.of, pick.standing.top_percent
                );
            }
        }
    }
}

