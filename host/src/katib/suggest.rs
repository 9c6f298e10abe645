//! The suggestion logic: Katib's trial list in, the next architectures to train out.
//!
//! Each experiment is a run in the store (`katib-NAME`) driven by its policy, with two
//! differences from `knas search`: its space may be narrowed by the experiment's
//! parameters, and its trainings happen elsewhere — as Katib trials. A call records the
//! results of the trials Katib reports, steps the policy (scoring what it asks for, here)
//! until it asks to train candidates that have no result, and returns those that have no
//! trial yet. When that is fewer than Katib asks for (the policy waits on running trials,
//! or has finished), the best-scored candidates without a trial fill the request, and when
//! none is left, new random candidates of the space are scored and the best taken.
//!
//! Everything is recomputed from the store and the trial list: after a restart, the run is
//! re-executed from its seed (see `search/resume.rs`), so the service answers as it would have —
//! exactly so while the policy's own proposals fill the requests. Candidates the service
//! filled in itself are recorded under the run's policy but told to a fresh instance only
//! when it is brought up to date, so after a restart later fills may differ (never with an
//! architecture that has a trial).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::{Rng, SeedableRng};
use tch::Device;

use super::mapping::{Outcome, Plan, Trial};
use crate::engine::Engine;
use crate::policy::{PolicyModule, PolicyRuntime};
use crate::run::{Budget, Experiment, Fidelity, PolicyLimits, SearchSpec};
use crate::search::{Search, SearchError, Step, anchor};
use crate::service::metrics::Metrics;
use crate::space::{Arch, Candidate, NUM_ARCHS};
use crate::store::{NewEvaluation, RunStore};

/// Candidates one policy proposal may hold.
const MAX_BATCH: u32 = 16;

/// Why a call could not be answered; each maps to a gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    /// The request itself is wrong (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// Fewer architectures than asked for can be suggested: the space has fewer without a
    /// trial, or the policy proposes fewer (`OUT_OF_RANGE`).
    #[error("{0}")]
    Exhausted(String),
    /// The policy or the data failed (`FAILED_PRECONDITION`); nothing recorded is lost.
    #[error("{0}")]
    Failed(String),
    /// The run store failed (`INTERNAL`).
    #[error("{0}")]
    Internal(String),
    /// The service is shutting down (`UNAVAILABLE`): Katib asks again, of the next pod.
    #[error("{0}")]
    Unavailable(String),
}

/// The state the service keeps between calls: all of it can be rebuilt from the store.
pub struct Suggester {
    store: RunStore,
    runtime: PolicyRuntime,
    policy_dir: PathBuf,
    device: Device,
    limits: PolicyLimits,
    metrics: Arc<Metrics>,
    /// Compiled policies by name, with the file's (modified time, length) when compiled.
    modules: HashMap<String, (Option<std::time::SystemTime>, u64, PolicyModule)>,
    /// The engine of the last experiment scored (the data stays loaded between calls).
    engine: Option<(String, Engine)>,
    /// Architectures measured at once (`None`: the device's default).
    workers: Option<usize>,
    /// Live runs by name.
    searches: HashMap<String, Search>,
    /// Set at shutdown: the work in progress stops at the next candidate, and no request
    /// is taken after it.
    stopping: Arc<AtomicBool>,
}

impl Suggester {
    pub fn new(store: RunStore, policy_dir: PathBuf, device: Device, limits: PolicyLimits, metrics: Arc<Metrics>) -> Result<Suggester, String> {
        let runtime = PolicyRuntime::new().map_err(|e| e.to_string())?;
        Ok(Suggester {
            store,
            runtime,
            policy_dir,
            device,
            limits,
            metrics,
            modules: HashMap::new(),
            engine: None,
            workers: None,
            searches: HashMap::new(),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The flag that, once set, stops the work in progress at the next candidate and
    /// refuses further requests: set it at shutdown, without waiting for the suggester.
    pub fn stopping(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    fn refuse_when_stopping(&self) -> Result<(), SuggestError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(SuggestError::Unavailable("the suggestion service is shutting down; ask again".to_owned()));
        }
        Ok(())
    }

    /// Measures this many architectures at once (see [`crate::measures::pool`]).
    pub fn with_workers(mut self, workers: usize) -> Suggester {
        self.workers = Some(workers);
        self
    }

    /// Checks what `ValidateAlgorithmSettings` can check beyond the plan: the policy loads.
    pub fn validate(&mut self, plan: &Plan) -> Result<(), SuggestError> {
        self.module(&plan.policy).map(|_| ())
    }

    /// The policy `name`, compiled again only when its file changed.
    fn module(&mut self, name: &str) -> Result<PolicyModule, SuggestError> {
        let path = self.policy_dir.join(format!("{name}.wasm"));
        let meta = std::fs::metadata(&path).map_err(|e| {
            SuggestError::Invalid(format!("algorithm setting policy={name:?}: cannot read {}: {e}", path.display()))
        })?;
        let key = (meta.modified().ok(), meta.len());
        if let Some((modified, len, module)) = self.modules.get(name)
            && (*modified, *len) == key
        {
            return Ok(module.clone());
        }
        let module = self
            .runtime
            .load_file(&path)
            .map_err(|e| SuggestError::Invalid(format!("algorithm setting policy={name:?}: {e}")))?;
        self.modules.insert(name.to_owned(), (key.0, key.1, module.clone()));
        Ok(module)
    }

    /// The engine for `experiment`, anchored (the reference sample comes from the store's
    /// cache or is measured once).
    fn engine(&mut self, experiment: &Experiment) -> Result<&Engine, SuggestError> {
        let key = serde_json::to_string(experiment).map_err(|e| SuggestError::Failed(e.to_string()))?;
        if self.engine.as_ref().is_none_or(|(k, _)| *k != key) {
            self.engine = None;
            let mut engine = Engine::new(experiment, self.device)
                .map_err(|e| SuggestError::Failed(format!("cannot load the scoring data {}: {e}", experiment.dataset)))?;
            if let Some(workers) = self.workers {
                engine.set_workers(workers);
            }
            anchor(&mut engine, &self.store, &mut |_, _| {}).map_err(|e| SuggestError::Failed(format!("cannot anchor the score: {e}")))?;
            self.engine = Some((key, engine));
        }
        match &self.engine {
            Some((_, engine)) => Ok(engine),
            None => Err(SuggestError::Failed("no engine".to_owned())),
        }
    }

    /// Records every run this process drives and has not finished as stopped (at
    /// shutdown): not left marked running with nothing driving it. Katib's next request
    /// resumes it.
    pub fn stop_all(&mut self, why: &str) {
        // A request waiting for the suggester behind this call is refused, not a run
        // started again.
        self.stopping.store(true, Ordering::Relaxed);
        for (run, mut search) in self.searches.drain() {
            if search.finished().is_none()
                && let Err(error) = search.stop(&self.store, why)
            {
                tracing::error!(run = %run, "cannot record the stop: {error}");
            }
        }
    }

    /// The next `wanted` architectures to train, none of which has a trial.
    pub fn suggest(&mut self, plan: &Plan, trials: &[Trial], wanted: usize) -> Result<Vec<Arch>, SuggestError> {
        self.refuse_when_stopping()?;
        let trialled: HashSet<Arch> = trials.iter().map(|t| t.arch).collect();
        let free = plan.space_size() - trialled.iter().filter(|a| plan.contains(a)).count();
        if wanted > free {
            return Err(SuggestError::Exhausted(format!(
                "{wanted} trials asked for, but only {free} of the experiment's {} architectures have no trial yet",
                plan.space_size()
            )));
        }
        let module = self.module(&plan.policy)?;
        self.engine(&plan.experiment)?;
        let run = plan.run_name();
        let failed = |e: &dyn std::fmt::Display| SuggestError::Failed(format!("run {run}: {e}"));
        let internal = |e: &dyn std::fmt::Display| SuggestError::Internal(format!("run {run}: the run store failed: {e}"));
        let spec = SearchSpec {
            budget: Budget { scores: plan.candidates_per_trial.saturating_mul(plan.max_trials), trainings: plan.max_trials },
            max_batch: MAX_BATCH,
            max_epochs: crate::run::DEFAULT_MAX_EPOCHS,
            params: plan.params.clone(),
            limits: self.limits,
        };
        // The objective and the space are not in the run's record: kept beside it, and
        // refused when they change, as the settings in the record are.
        let terms_key = format!("katib-terms:{run}");
        let terms = plan.trial_terms();
        match self.store.cached(&terms_key).map_err(|e| internal(&e))? {
            Some(first) if first != terms => {
                return Err(SuggestError::Failed(format!(
                    "experiment {} was first suggested with another objective or parameter space ({first}; now {terms}): its parameters and algorithm settings cannot change, and maxTrialCount can only grow",
                    plan.name
                )));
            }
            Some(_) => {}
            None => self.store.cache(&terms_key, &terms).map_err(|e| internal(&e))?,
        }
        // Raising maxTrialCount is how a Katib experiment is resumed: the run's budget grows
        // with it, at the same candidates per trial. Any other change of settings (the
        // budget included) is refused below, naming what changed.
        if let Some(stored) = self.store.run(&run).map_err(|e| internal(&e))? {
            let (old, new) = (stored.search.budget, spec.budget);
            let grown = new.trainings > old.trainings && u64::from(new.scores) * u64::from(old.trainings) == u64::from(old.scores) * u64::from(new.trainings);
            if grown && stored.experiment == plan.experiment && stored.search.params == spec.params {
                self.store.set_budget(stored.id, spec.budget).map_err(|e| internal(&e))?;
                // A run that had spent its old budget goes on with the new one.
                if stored.status == crate::store::RunStatus::Done {
                    self.store.set_status(stored.id, crate::store::RunStatus::Running, None).map_err(|e| internal(&e))?;
                }
                let message = format!("budget now {} scores and {} trainings (maxTrialCount {})", spec.budget.scores, spec.budget.trainings, plan.max_trials);
                self.store.add_event(stored.id, "budget", &message).map_err(|e| internal(&e))?;
                tracing::info!(run = %run, "{message}");
            }
        }
        let mut search = match self.searches.remove(&run) {
            // The live run, while nothing about the experiment changed.
            Some(search)
                if search.policy_label() == module.label()
                    && search.run().search.budget == spec.budget
                    && search.run().search.params == spec.params
                    && search.run().experiment == plan.experiment =>
            {
                search
            }
            stale => {
                // The run's earlier search, if any, lets go of the run's lease first.
                drop(stale);
                let lease = self.store.lease(&run).map_err(|e| failed(&e))?;
                let mut search = Search::start(&self.store, lease, &self.runtime, &module, &run, &plan.experiment, &spec, &mut ()).map_err(|e| match e {
                    crate::search::SearchError::Store(crate::store::StoreError::Mismatch { what, .. }) => SuggestError::Failed(format!(
                        "experiment {} was first suggested with another {what} (run {run} in the store): its parameters and algorithm settings cannot change, and maxTrialCount can only grow",
                        plan.name
                    )),
                    e => failed(&e),
                })?;
                search.train_elsewhere();
                search.restrict(plan.allowed);
                // The gauges say what the run found, before this process too.
                self.metrics.for_run(&run).restore_best(&self.store.evaluations(search.run().id).map_err(|e| internal(&e))?);
                search
            }
        };
        let result = self.advance(plan, &mut search, trials, &trialled, wanted);
        // The dashboard lists runs by their budget gauge: a Katib run is one too.
        if let Ok(spent) = self.store.spent(search.run().id) {
            self.metrics.set_budget(&run, search.run().search.budget, spent);
        }
        // Kept live unless it failed; one cut short at shutdown is then recorded as stopped
        // with the others (`stop_all`).
        if matches!(result, Ok(_) | Err(SuggestError::Unavailable(_))) {
            self.searches.insert(run.clone(), search);
        }
        let chosen = result?;
        // Fewer than asked for (the policy finished early, or architectures trained before
        // an experiment was recreated fill part of the space): nothing is suggested, nothing
        // counted.
        if chosen.len() != wanted {
            return Err(SuggestError::Exhausted(format!("only {} of the {wanted} trials asked for could be suggested", chosen.len())));
        }
        self.metrics.katib_trials_proposed.with_label_values(&[&run]).inc_by(chosen.len() as u64);
        Ok(chosen)
    }

    /// Records the trials' results, steps the policy and picks the architectures.
    fn advance(
        &mut self,
        plan: &Plan,
        search: &mut Search,
        trials: &[Trial],
        trialled: &HashSet<Arch>,
        wanted: usize,
    ) -> Result<Vec<Arch>, SuggestError> {
        let run = plan.run_name();
        let failed = |e: &dyn std::fmt::Display| SuggestError::Failed(format!("run {run}: {e}"));
        let internal = |e: &dyn std::fmt::Display| SuggestError::Internal(format!("run {run}: the run store failed: {e}"));
        let run_id = search.run().id;
        let label = search.policy_label().to_owned();
        for trial in trials {
            let candidate = Candidate::from(trial.arch);
            let new = match &trial.outcome {
                Outcome::Running => continue,
                Outcome::Measured(value) => NewEvaluation {
                    accuracy: plan.maximize.then_some(*value),
                    loss: (!plan.maximize).then_some(*value),
                    ..NewEvaluation::default()
                },
                Outcome::Failed(why) => NewEvaluation { error: Some(why.clone()), ..NewEvaluation::default() },
            };
            if self.store.find(run_id, &candidate, Fidelity::Train).map_err(|e| internal(&e))?.is_none() {
                let record = self.store.record(run_id, &candidate, Fidelity::Train, &label, &new).map_err(|e| internal(&e))?;
                self.metrics.for_run(&run).measured_elsewhere(&record);
            }
        }

        let Some((_, engine)) = &self.engine else { return Err(SuggestError::Failed("no engine".to_owned())) };
        let scored_before = search.fresh().scores;
        let mut observer = self.metrics.for_run(&run).stopped_by(&self.stopping);
        // Cut short at shutdown: what was scored is recorded, the run is not failed, and
        // Katib asks again.
        let cut_short = || SuggestError::Unavailable(format!("run {run}: the suggestion service is shutting down; what was scored is kept"));
        let waiting = loop {
            match search.step(engine, &self.store, &mut observer) {
                Ok(Step::Continue) => {}
                Ok(Step::Waiting(candidates)) => break candidates,
                Ok(Step::Finished(_)) => break Vec::new(),
                Err(SearchError::Interrupted) => return Err(cut_short()),
                Err(error) => {
                    let _ = search.fail(&self.store, &error);
                    return Err(failed(&error));
                }
            }
        };
        // One read of the run's records after stepping: what is never proposed again and
        // what fills a request come from it.
        let evaluations = self.store.evaluations(run_id).map_err(|e| internal(&e))?;
        // Never proposed again: architectures with a trial now, and those with a training
        // recorded (an experiment deleted and created again resumes its run).
        let mut unavailable = trialled.clone();
        unavailable.extend(evaluations.iter().filter(|r| r.fidelity == Fidelity::Train).filter_map(|r| r.candidate.to_arch().ok()));
        let mut chosen: Vec<Arch> = Vec::with_capacity(wanted);
        let take = |arch: Arch, chosen: &mut Vec<Arch>| {
            if chosen.len() < wanted && plan.contains(&arch) && !unavailable.contains(&arch) && !chosen.contains(&arch) {
                chosen.push(arch);
            }
        };
        for candidate in waiting {
            if let Ok(arch) = candidate.to_arch() {
                take(arch, &mut chosen);
            }
        }
        // Fill: the best-scored candidates without a trial.
        if chosen.len() < wanted {
            let mut scored: Vec<(f64, i64, Arch)> = evaluations
                .iter()
                .filter(|r| r.fidelity == Fidelity::Score)
                .filter_map(|r| Some((r.score?, r.seq, r.candidate.to_arch().ok()?)))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, _, arch) in scored {
                take(arch, &mut chosen);
            }
        }
        // Then new random candidates of the space, scored here, the best of each draw.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(plan.experiment.seed ^ (trials.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        while chosen.len() < wanted {
            let mut best: Option<(f64, Arch)> = None;
            let mut unscored: Option<Arch> = None;
            let draws = plan.candidates_per_trial as usize;
            let mut drawn = 0;
            for _ in 0..draws.saturating_mul(20) {
                if drawn >= draws {
                    break;
                }
                let ops = std::array::from_fn(|edge| {
                    let allowed: Vec<_> = plan.allowed[edge].ops().collect();
                    allowed[rng.random_range(0..allowed.len())]
                });
                let arch = Arch::new(ops);
                if unavailable.contains(&arch) || chosen.contains(&arch) {
                    continue;
                }
                // The score budget spent: this draw, unscored.
                let scored = match search.score_extra(engine, &self.store, &Candidate::from(arch), &mut observer) {
                    Err(SearchError::Interrupted) => return Err(cut_short()),
                    other => other.map_err(|e| failed(&e))?,
                };
                let Some(record) = scored else {
                    unscored = Some(arch);
                    break;
                };
                drawn += 1;
                if let Some(score) = record.score
                    && best.is_none_or(|(b, _)| score > b)
                {
                    best = Some((score, arch));
                }
            }
            // Nothing scored (the budget spent, a tiny space, or scores not finite): a
            // random draw, else the first free architecture.
            let pick = best.map(|(_, arch)| arch).or(unscored).or_else(|| {
                (0..NUM_ARCHS)
                    .filter_map(|i| Arch::from_index(i).ok())
                    .find(|a| plan.contains(a) && !unavailable.contains(a) && !chosen.contains(a))
            });
            match pick {
                Some(arch) => take(arch, &mut chosen),
                None => break,
            }
        }
        let scored = search.fresh().scores - scored_before;
        self.metrics.katib_candidates_scored.with_label_values(&[&run]).inc_by(u64::from(scored));
        Ok(chosen)
    }
}
