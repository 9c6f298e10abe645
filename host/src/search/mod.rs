//! The search loop: a policy proposes, the host validates, evaluates (or answers from the
//! run store), records and reports back.
//!
//! A [`Search`] advances one proposal per [`Search::step`], so a caller can interleave
//! several runs on one device, stop between steps, or swap the policy module under a run.
//! How a fresh policy instance (a restart, a hot swap) is brought up to date without
//! evaluating anything twice is `resume`'s part; a run's standings are `leaderboard`'s.

mod leaderboard;
mod resume;

pub use leaderboard::{Leaderboard, Standing, TOP_SCORES};
pub use resume::{CHECKPOINT_EVERY, MAX_CHECKPOINT_BYTES, REPLAY_CHUNK};

use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineError};
use crate::measures::{MeasureError, Measured};
use crate::policy::{OfferedMeasure, PolicyError, PolicyInstance, PolicyModule, PolicyRuntime, RawProposal, Settings, validate};
use crate::run::{Budget, Fidelity, Observation, Request, SearchSpec};
use crate::space::{Candidate, EDGES, NUM_EDGES, Op, OpSet};
use crate::store::{EvaluationRecord, NewEvaluation, RunLease, RunRecord, RunStatus, RunStore, StoreError};

/// Proposals in a row that ask only for known results before the run fails with
/// [`PolicyError::NoProgress`]: a policy that never spends budget would otherwise loop
/// forever.
pub const NO_PROGRESS_LIMIT: u32 = 100;

/// Why a search stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The host itself failed while stepping the run (a libtorch error that panicked, a
    /// bug): the run fails with the message, the process goes on.
    #[error("the host failed while stepping the run: {0}")]
    Crashed(String),
    /// The caller asked to stop (shutdown, the policy file changed): the evaluation in
    /// progress was abandoned, nothing of it recorded. Not a failure: the run goes on when
    /// stepped again.
    #[error("interrupted: the evaluation in progress was abandoned, nothing of it recorded")]
    Interrupted,
}

impl SearchError {
    /// A short, bounded name of the cause (metrics label).
    pub fn cause(&self) -> &'static str {
        match self {
            SearchError::Policy(e) => e.cause(),
            SearchError::Store(_) => "store",
            SearchError::Engine(_) => "engine",
            SearchError::Crashed(_) => "host-panic",
            SearchError::Interrupted => "interrupted",
        }
    }
}

/// Hooks for progress reporting and metrics; every method has a no-op default.
pub trait SearchObserver {
    /// An evaluation was recorded (`fresh`) or answered from the store.
    fn evaluated(&mut self, _record: &EvaluationRecord, _fresh: bool) {}
    /// A training run advanced by one optimiser step.
    fn training_step(&mut self, _done: usize, _total: usize) {}
    /// A policy call returned (successfully or not) after `seconds`.
    fn policy_called(&mut self, _call: &'static str, _seconds: f64) {}
    /// Whether to abandon the evaluation in progress (checked between training steps and
    /// between the evaluations of a batch).
    fn interrupted(&self) -> bool {
        false
    }
}

/// The no-op observer.
impl SearchObserver for () {}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finish {
    /// The policy answered `done`.
    PolicyDone,
    /// Both budgets are spent.
    BudgetSpent,
    /// The run was already complete in the store.
    AlreadyDone,
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More to do.
    Continue,
    /// The run is complete (recorded as done in the store).
    Finished(Finish),
    /// The policy waits for trainings that run elsewhere (see [`Search::train_elsewhere`]):
    /// these candidates, proposed for training, have no recorded result yet. Stepping
    /// again asks for them again until the results are recorded.
    Waiting(Vec<Candidate>),
}

/// A proposal the next step carries out instead of asking again: one a re-executed
/// instance made that the store could not answer, or one waiting on trainings run elsewhere.
#[derive(Debug)]
enum Pending {
    /// `checked`: the budget was found to cover it when it was first carried out (a
    /// proposal waiting on trainings); a re-executed one never was.
    Evaluate { requests: Vec<Request>, checked: bool },
    Done,
}

/// A run in progress, driven by one policy instance.
pub struct Search {
    run: RunRecord,
    /// Sandbox limits for the instances this process creates.
    limits: crate::run::PolicyLimits,
    instance: Option<PolicyInstance>,
    /// What the instance proposed while it was re-executed and is not recorded yet.
    pending: Option<Pending>,
    finished: Option<Finish>,
    stale_proposals: u32,
    /// Evaluations computed (not answered from the store) by this process.
    fresh: Budget,
    /// Time spent evaluating in this process.
    evaluation_time: Duration,
    /// Calls and time inside policy instances that have been replaced.
    retired_calls: (u64, Duration),
    /// The evaluation the run's latest checkpoint follows (0: none).
    checkpoint_seq: i64,
    /// The run's latest recorded evaluation.
    last_seq: i64,
    /// Where published accuracies beside the run's candidates come from, if anywhere.
    table: Option<std::sync::Arc<crate::table::BenchmarkTable>>,
    /// Trainings are carried out elsewhere and recorded by the caller (Katib trials).
    trains_elsewhere: bool,
    /// The ops each edge may use, when the run's space is narrower than the whole space.
    allowed: Option<[OpSet; NUM_EDGES]>,
    /// New scores of the current proposal measured together, not recorded yet (see
    /// [`Search::measure_ahead`]).
    measured_ahead: Vec<(Candidate, Result<Measured, MeasureError>)>,
    /// Scores recorded from [`Search::measure_ahead`]'s measurements.
    measured_together: u32,
    /// This process's right to drive the run, held as long as the search lives.
    _lease: RunLease,
}

impl Search {
    /// Starts run `name`, or resumes it if the store has it: a fresh instance of `module`
    /// is initialised and fed the run's history. A resumed run must have been started with
    /// the same experiment and search settings; `spec.limits` (operational, not part of a
    /// run's identity) apply to the instances this process creates. `lease` is the run's,
    /// from [`RunStore::lease`]: taken by the caller, before it loads anything for the run,
    /// so that a run another process drives is refused at once. `observer` is told of
    /// the policy calls this makes (instantiating, `init`, a resumed run's restore or replay).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: &RunStore,
        lease: RunLease,
        runtime: &PolicyRuntime,
        module: &PolicyModule,
        name: &str,
        experiment: &crate::run::Experiment,
        spec: &SearchSpec,
        observer: &mut dyn SearchObserver,
    ) -> Result<Search, SearchError> {
        let (run, resumed) = store.begin_run(name, &module.label(), experiment, spec)?;
        let checkpoint_seq = store.checkpoint(run.id)?.map_or(0, |c| c.0);
        let last_seq = store.last_seq(run.id)?;
        let mut search = Search {
            run,
            limits: spec.limits,
            instance: None,
            pending: None,
            finished: None,
            stale_proposals: 0,
            fresh: Budget::default(),
            evaluation_time: Duration::ZERO,
            retired_calls: (0, Duration::ZERO),
            checkpoint_seq,
            last_seq,
            table: None,
            trains_elsewhere: false,
            allowed: None,
            measured_ahead: Vec::new(),
            measured_together: 0,
            _lease: lease,
        };
        if search.run.status == RunStatus::Done {
            search.finished = Some(Finish::AlreadyDone);
            return Ok(search);
        }
        if resumed {
            if search.run.policy != module.label() {
                store.set_policy(search.run.id, &module.label())?;
                search.run.policy = module.label();
            }
            let spent = store.spent(search.run.id)?;
            let message = format!("resumed with {} scores and {} trainings recorded, policy {}", spent.scores, spent.trainings, module.label());
            store.add_event(search.run.id, "resume", &message)?;
            tracing::info!(run = %search.run.name, "{message}");
        }
        match search.fresh_instance(store, runtime, module, observer) {
            Ok((instance, pending)) => {
                search.instance = Some(instance);
                search.pending = pending;
            }
            Err(error) => {
                // A policy that cannot start leaves its run failed, not running.
                search.fail(store, &error)?;
                return Err(error);
            }
        }
        store.set_status(search.run.id, RunStatus::Running, None)?;
        Ok(search)
    }

    /// Shows each candidate's accuracy in `table` beside what the run measures (stored with
    /// the run, never shown to the policy).
    pub fn annotate_with(&mut self, store: &RunStore, table: std::sync::Arc<crate::table::BenchmarkTable>) -> Result<(), SearchError> {
        // Candidates recorded before the table was given get their accuracy now.
        let history = store.evaluations(self.run.id)?;
        let accuracies: Vec<(&Candidate, f64)> =
            history.iter().filter_map(|r| Some((&r.candidate, r.candidate.to_arch().ok().and_then(|arch| table.accuracy(&arch))?))).collect();
        store.record_published(self.run.id, &table.path().display().to_string(), &accuracies)?;
        self.table = Some(table);
        Ok(())
    }

    /// Records `candidate`'s published accuracy, if the table has it. A yardstick only: a
    /// failure to write it is logged, and the run goes on.
    fn annotate(&self, store: &RunStore, candidate: &Candidate, table: &crate::table::BenchmarkTable) {
        if let Some(accuracy) = candidate.to_arch().ok().and_then(|arch| table.accuracy(&arch))
            && let Err(error) = store.record_published(self.run.id, &table.path().display().to_string(), &[(candidate, accuracy)])
        {
            tracing::warn!(run = %self.run.name, %candidate, "cannot record the published accuracy: {error}");
        }
    }

    /// Leaves trainings to the caller: a proposal that asks to train a candidate with no
    /// recorded training makes [`Search::step`] answer [`Step::Waiting`] instead of training
    /// it here; the caller records the result (`RunStore::record`, fidelity train) when it
    /// has one, and the policy is told on the next step.
    pub fn train_elsewhere(&mut self) {
        self.trains_elsewhere = true;
    }

    /// Narrows the run's space to `allowed` ops per edge: a candidate that uses any other
    /// op is recorded with an error saying so (spending budget, so a policy that keeps
    /// proposing outside still ends), never measured or trained.
    pub fn restrict(&mut self, allowed: [OpSet; NUM_EDGES]) {
        self.allowed = (allowed != [OpSet::FULL; NUM_EDGES]).then_some(allowed);
    }

    /// Scores `candidate` for the run outside the policy's proposals (what the Katib service
    /// suggests when the policy has nothing to offer); answered from the store when it has
    /// the score. Recorded under the run's policy, and spends score budget like any other:
    /// `None` once the budget has no score left — counting the scores a proposal waiting on
    /// trainings elsewhere will make when it goes on, which the budget covered when it was
    /// made: spending them here would take the run past its budget then.
    pub fn score_extra(
        &mut self,
        engine: &Engine,
        store: &RunStore,
        candidate: &Candidate,
        observer: &mut dyn SearchObserver,
    ) -> Result<Option<EvaluationRecord>, SearchError> {
        if let Some(record) = store.find(self.run.id, candidate, Fidelity::Score)? {
            return Ok(Some(record));
        }
        let reserved = self.scores_waiting(store)?;
        let waits_for_this = self.waiting_scores().any(|waiting| waiting == candidate);
        let reserved_for_others = reserved.saturating_sub(u32::from(waits_for_this));
        if store.spent(self.run.id)?.scores.saturating_add(reserved_for_others) >= self.run.search.budget.scores {
            return Ok(None);
        }
        self.measured_ahead.clear();
        let label = self.policy_label().to_owned();
        let request = Request { candidate: *candidate, fidelity: Fidelity::Score, epochs: None };
        let record = self.evaluate(engine, store, &request, &label, observer)?;
        observer.evaluated(&record, true);
        Ok(Some(record))
    }

    /// The candidates the waiting proposal (if any) asks to score, repeats included.
    fn waiting_scores(&self) -> impl Iterator<Item = &Candidate> {
        let requests = match &self.pending {
            Some(Pending::Evaluate { requests, .. }) => requests.as_slice(),
            _ => &[],
        };
        requests.iter().filter(|r| r.fidelity == Fidelity::Score).map(|r| &r.candidate)
    }

    /// How many new scores the waiting proposal will spend when it goes on.
    fn scores_waiting(&self, store: &RunStore) -> Result<u32, StoreError> {
        let mut new: Vec<&Candidate> = Vec::new();
        for candidate in self.waiting_scores() {
            if !new.contains(&candidate) && store.find(self.run.id, candidate, Fidelity::Score)?.is_none() {
                new.push(candidate);
            }
        }
        Ok(new.len() as u32)
    }

    /// Why `candidate` is outside the run's space, if it is.
    fn outside(&self, candidate: &Candidate) -> Option<String> {
        let allowed = self.allowed.as_ref()?;
        candidate.edges().iter().zip(allowed).zip(EDGES).find_map(|((ops, allowed), (src, dst))| {
            let extra: Vec<&str> = ops.ops().filter(|op| !allowed.contains(*op)).map(Op::name).collect();
            (!extra.is_empty()).then(|| {
                let names: Vec<&str> = allowed.ops().map(Op::name).collect();
                format!("outside the run's space: edge {src}->{dst} allows only {}, not {}", names.join(", "), extra.join(", "))
            })
        })
    }

    /// What the policy is told at `init`.
    fn settings(&self) -> Settings {
        let e = &self.run.experiment;
        Settings {
            budget: self.run.search.budget,
            max_batch: self.run.search.max_batch,
            params: self.run.search.params.clone(),
            score: e.score.to_string(),
            measures: e.score_measures().into_iter().map(|measure| OfferedMeasure { measure, weight: e.score_weight(measure) }).collect(),
            epochs: u32::try_from(e.train.epochs).unwrap_or(u32::MAX),
            max_epochs: self.max_epochs(),
        }
    }

    /// The most epochs a training may ask for: the run's `max-epochs`, raised to the
    /// experiment's own epochs when those are more, so that asking for the default is
    /// always allowed (the contract promises `epochs <= max-epochs`).
    fn max_epochs(&self) -> u32 {
        let epochs = u32::try_from(self.run.experiment.train.epochs).unwrap_or(u32::MAX);
        self.run.search.max_epochs.max(epochs)
    }

    /// The run as it was when this search started.
    pub fn run(&self) -> &RunRecord {
        &self.run
    }

    /// The sandbox limits of the instances this process creates for the run.
    pub fn limits(&self) -> crate::run::PolicyLimits {
        self.limits
    }

    /// `name@hash` of the policy module driving the run.
    pub fn policy_label(&self) -> &str {
        self.instance.as_ref().map_or(&self.run.policy, PolicyInstance::label)
    }

    /// Whether the run is complete.
    pub fn finished(&self) -> Option<Finish> {
        self.finished
    }

    /// Evaluations this process computed itself.
    pub fn fresh(&self) -> Budget {
        self.fresh
    }

    /// Time spent evaluating in this process.
    pub fn evaluation_time(&self) -> Duration {
        self.evaluation_time
    }

    /// The live policy instance's instantiation time and peak memory (bytes).
    pub fn policy_footprint(&self) -> Option<(Duration, usize)> {
        self.instance.as_ref().map(PolicyInstance::footprint)
    }

    /// Policy calls made by this process and the time spent inside them.
    pub fn policy_calls(&self) -> (u64, Duration) {
        let (calls, time) = self.instance.as_ref().map_or((0, Duration::ZERO), PolicyInstance::call_stats);
        (calls + self.retired_calls.0, time + self.retired_calls.1)
    }

    /// Replaces the policy module driving the run. The new instance is initialised and fed
    /// the history first; if that fails the old instance stays in charge.
    pub fn swap(
        &mut self,
        store: &RunStore,
        runtime: &PolicyRuntime,
        module: &PolicyModule,
        observer: &mut dyn SearchObserver,
    ) -> Result<(), SearchError> {
        let (instance, pending) = self.fresh_instance(store, runtime, module, observer)?;
        self.pending = pending;
        if let Some(old) = self.instance.replace(instance) {
            let (calls, time) = old.call_stats();
            self.retired_calls = (self.retired_calls.0 + calls, self.retired_calls.1 + time);
        }
        store.set_policy(self.run.id, &module.label())?;
        store.add_event(self.run.id, "reload", &format!("policy replaced by {}", module.label()))?;
        self.stale_proposals = 0;
        Ok(())
    }

    /// Marks the run failed with `error` (its results stay).
    pub fn fail(&mut self, store: &RunStore, error: &SearchError) -> Result<(), StoreError> {
        let message = error.to_string();
        store.add_event(self.run.id, "error", &message)?;
        store.set_status(self.run.id, RunStatus::Failed, Some(&message))?;
        self.instance = None;
        Ok(())
    }

    /// Marks the run stopped on request (its results stay; it resumes when restarted).
    pub fn stop(&mut self, store: &RunStore, why: &str) -> Result<(), StoreError> {
        store.add_event(self.run.id, "stop", why)?;
        store.set_status(self.run.id, RunStatus::Stopped, None)?;
        self.instance = None;
        Ok(())
    }

    /// One proposal: ask, validate, evaluate what is new, record, report back.
    pub fn step(&mut self, engine: &Engine, store: &RunStore, observer: &mut dyn SearchObserver) -> Result<Step, SearchError> {
        if let Some(finish) = self.finished {
            return Ok(Step::Finished(finish));
        }
        // Left over only by a step that failed: never the answer to a later request.
        self.measured_ahead.clear();
        let run_id = self.run.id;
        let budget = self.run.search.budget;
        let spent = store.spent(run_id)?;
        let remaining =
            Budget { scores: budget.scores.saturating_sub(spent.scores), trainings: budget.trainings.saturating_sub(spent.trainings) };
        if remaining == Budget::default() {
            return self.finish(store, Finish::BudgetSpent);
        }
        let Some(instance) = self.instance.as_mut() else {
            return Err(PolicyError::Runtime(format!("run {} has no live policy instance", self.run.name)).into());
        };
        let label = instance.label().to_owned();
        // (the requests, whether the policy made them just now, whether the budget was
        // already found to cover them)
        let (requests, proposed_now, checked) = match self.pending.take() {
            Some(Pending::Done) => return self.finish(store, Finish::PolicyDone),
            Some(Pending::Evaluate { requests, checked }) => (requests, false, checked),
            None => match timed(observer, "propose", || instance.propose(remaining))? {
                RawProposal::Done => return self.finish(store, Finish::PolicyDone),
                RawProposal::Evaluate(raw) => (
                    validate(&raw, self.run.search.max_batch, self.max_epochs())
                        .map_err(|problem| PolicyError::InvalidProposal { policy: label.clone(), problem })?,
                    true,
                    false,
                ),
            },
        };

        // What is new, and does the budget cover it?
        let mut known: Vec<Option<EvaluationRecord>> = Vec::with_capacity(requests.len());
        let mut wanted = Budget::default();
        for (i, request) in requests.iter().enumerate() {
            let record = store.find(run_id, &request.candidate, request.fidelity)?;
            let first = !requests[..i].iter().any(|r| r.same_evaluation(request));
            if record.is_none() && first {
                match request.fidelity {
                    Fidelity::Score => wanted.scores += 1,
                    Fidelity::Train => wanted.trainings += 1,
                }
            }
            known.push(record);
        }
        // A proposal waiting on trainings run elsewhere was checked when it was made: the
        // trials the Katib service fills in itself may have spent trainings since, which is
        // not the policy's doing (the scores it will make are kept for it). A re-executed
        // one under Katib is held to the scores only, for the same reason: Katib itself
        // never runs more trials than the budget, but nothing else bounds the scores.
        let over_scores = wanted.scores > remaining.scores;
        let over_trainings = wanted.trainings > remaining.trainings;
        let refused = match (checked, self.trains_elsewhere) {
            (true, _) => false,
            (false, true) if !proposed_now => over_scores,
            (false, _) => over_scores || over_trainings,
        };
        if refused {
            return Err(PolicyError::InvalidProposal {
                policy: label,
                problem: format!(
                    "asks for {} new scores and {} new trainings, but only {} and {} remain in the budget",
                    wanted.scores, wanted.trainings, remaining.scores, remaining.trainings
                ),
            }
            .into());
        }

        // Trainings run elsewhere are handed out only once the budget is known to cover
        // them: a proposal beyond it is refused above as in a run that trains itself.
        if self.trains_elsewhere {
            let waiting: Vec<Candidate> = requests
                .iter()
                .filter(|r| r.fidelity == Fidelity::Train && self.outside(&r.candidate).is_none())
                .map(|r| store.find(run_id, &r.candidate, Fidelity::Train).map(|found| found.is_none().then_some(r.candidate)))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            if !waiting.is_empty() {
                self.pending = Some(Pending::Evaluate { requests, checked: true });
                return Ok(Step::Waiting(waiting));
            }
        }

        self.measure_ahead(engine, &requests, &known, observer);
        let mut records = Vec::with_capacity(requests.len());
        let mut interrupted = false;
        for (request, known) in requests.iter().zip(known) {
            // An interruption stops every computation still to come; what is known or was
            // measured ahead is already computed, so it is recorded, wherever it stands in
            // the batch.
            let computes = known.is_none() && !self.is_measured_ahead(request);
            if computes && (interrupted || observer.interrupted()) {
                interrupted = true;
                continue;
            }
            match self.record_one(engine, store, request, known, &label, observer) {
                Ok(record) => records.push(record),
                Err(SearchError::Interrupted) => interrupted = true,
                Err(error) => return Err(error),
            }
        }
        if interrupted {
            // What was recorded of this batch is told to the policy now: the same instance
            // may be asked to propose again, and a later checkpoint must not cover records
            // it never saw.
            self.tell(store, &records, observer)?;
            return Err(SearchError::Interrupted);
        }
        // A proposal that waited on trainings run elsewhere brought the policy news even
        // though the service, not this step, recorded it.
        if wanted == Budget::default() && !checked {
            self.stale_proposals += 1;
            if self.stale_proposals >= NO_PROGRESS_LIMIT {
                return Err(PolicyError::NoProgress { policy: label, proposals: self.stale_proposals }.into());
            }
        } else {
            self.stale_proposals = 0;
        }
        self.tell(store, &records, observer)?;
        self.checkpoint(store, observer)?;
        Ok(Step::Continue)
    }

    /// When the engine measures several architectures at once (on a GPU), measures the
    /// proposal's new scores together; they are then recorded one by one, in order, as
    /// they would be otherwise, and their values do not depend on it. An interruption
    /// stops the measuring at the next architecture; what was measured is still recorded.
    fn measure_ahead(&mut self, engine: &Engine, requests: &[Request], known: &[Option<EvaluationRecord>], observer: &mut dyn SearchObserver) {
        self.measured_ahead.clear();
        if engine.workers() < 2 || observer.interrupted() {
            return;
        }
        let mut fresh: Vec<Candidate> = Vec::new();
        for (request, known) in requests.iter().zip(known) {
            if request.fidelity == Fidelity::Score
                && known.is_none()
                && !fresh.contains(&request.candidate)
                && self.outside(&request.candidate).is_none()
            {
                fresh.push(request.candidate);
            }
        }
        if fresh.len() < 2 {
            return;
        }
        let start = Instant::now();
        let mut ahead = Vec::with_capacity(fresh.len());
        // Single architectures and supernets compute different measures
        // (`Experiment::score_measures_for`): one batch each.
        let (singles, supernets): (Vec<Candidate>, Vec<Candidate>) = fresh.iter().partition(|c| c.is_single());
        for batch in [singles, supernets] {
            let Some(first) = batch.first().filter(|_| !observer.interrupted()) else { continue };
            // The only error is the interruption, which the record loop reports.
            let _ = engine.measure_all(&batch, &engine.score_measures_for(first), &mut |i, measured| {
                ahead.push((batch[i], measured));
                if observer.interrupted() { Err(()) } else { Ok(()) }
            });
        }
        // Counted once here, as wall time; the records carry each architecture's own.
        self.evaluation_time += start.elapsed();
        tracing::debug!(run = %self.run.name, architectures = ahead.len(), workers = engine.workers(), "measured the proposal's new scores together");
        self.measured_ahead = ahead;
    }

    fn is_measured_ahead(&self, request: &Request) -> bool {
        request.fidelity == Fidelity::Score && self.measured_ahead.iter().any(|(c, _)| c == &request.candidate)
    }

    /// Scores of this process that were measured several at once.
    pub fn measured_together(&self) -> u32 {
        self.measured_together
    }

    /// One request of a proposal: answered from the store when already recorded, else
    /// evaluated and recorded.
    fn record_one(
        &mut self,
        engine: &Engine,
        store: &RunStore,
        request: &Request,
        known: Option<EvaluationRecord>,
        label: &str,
        observer: &mut dyn SearchObserver,
    ) -> Result<EvaluationRecord, SearchError> {
        Ok(match known {
            Some(record) => {
                observer.evaluated(&record, false);
                record
            }
            // A duplicate inside this batch was recorded a moment ago.
            None => match store.find(self.run.id, &request.candidate, request.fidelity)? {
                Some(record) => record,
                None => {
                    let record = self.evaluate(engine, store, request, label, observer)?;
                    observer.evaluated(&record, true);
                    record
                }
            },
        })
    }

    /// Reports `records` to the live policy instance in one `observe` call.
    fn tell(&mut self, store: &RunStore, records: &[EvaluationRecord], observer: &mut dyn SearchObserver) -> Result<(), SearchError> {
        if records.is_empty() {
            return Ok(());
        }
        let observations: Vec<Observation> = records.iter().map(|r| observation(store, self.run.id, r)).collect::<Result<_, _>>()?;
        let Some(instance) = self.instance.as_mut() else { return Ok(()) };
        timed(observer, "observe", || instance.observe(&observations))?;
        // Results recorded by someone else (Katib's trials) are the policy's now too: a
        // checkpoint taken next must not have them replayed.
        self.last_seq = records.iter().map(|r| r.seq).fold(self.last_seq, i64::max);
        Ok(())
    }

    fn finish(&mut self, store: &RunStore, finish: Finish) -> Result<Step, SearchError> {
        store.set_status(self.run.id, RunStatus::Done, None)?;
        store.add_event(self.run.id, "done", &format!("{finish:?}"))?;
        self.finished = Some(finish);
        Ok(Step::Finished(finish))
    }

    /// Measures one request and records it. Failures of the measurement itself are
    /// recorded too (and reported to the policy): they spend budget, they do not end the run.
    fn evaluate(
        &mut self,
        engine: &Engine,
        store: &RunStore,
        request: &Request,
        policy: &str,
        observer: &mut dyn SearchObserver,
    ) -> Result<EvaluationRecord, SearchError> {
        fail::fail_point!("search::evaluate");
        let start = Instant::now();
        let outside = self.outside(&request.candidate);
        let ahead = match request.fidelity {
            Fidelity::Score => self.measured_ahead.iter().position(|(c, _)| c == &request.candidate).map(|i| self.measured_ahead.swap_remove(i).1),
            Fidelity::Train => None,
        };
        // An architecture measured ahead ran beside others: its time is its own wall time.
        let ahead_seconds = ahead.as_ref().and_then(|m| m.as_ref().ok()).map(|m| m.seconds);
        if ahead.is_some() {
            self.measured_together += 1;
        }
        let measured = match request.fidelity {
            _ if outside.is_some() => Err(outside.unwrap_or_default()),
            Fidelity::Train if self.trains_elsewhere => {
                // Unreachable through `step` (it waits instead); kept an error, not a panic.
                Err("this run's trainings are carried out elsewhere".to_owned())
            }
            Fidelity::Score => match ahead {
                Some(measured) => measured.map_err(EngineError::from).and_then(|m| engine.score_measured(m)),
                None => engine.score(&request.candidate),
            }
            .map(|s| NewEvaluation {
                error: s.score.is_none().then(|| format!("the score ({}) is not finite for this network", engine.experiment().score)),
                score: s.score,
                params: Some(s.measured.info.params),
                flops: Some(s.measured.info.flops),
                measures: Some(s.measured.values),
                ..NewEvaluation::default()
            })
            .map_err(|e| e.to_string()),
            Fidelity::Train => {
                let arch = request.candidate.to_arch().map_err(|e| PolicyError::InvalidProposal { policy: policy.into(), problem: e.to_string() })?;
                let epochs = request.epochs.map_or(self.run.experiment.train.epochs, |e| e as usize);
                let interrupted = std::cell::Cell::new(false);
                let trained = engine.train_for(
                    &arch,
                    self.run.experiment.seed,
                    epochs,
                    &mut |done, total| {
                        observer.training_step(done, total);
                        interrupted.set(observer.interrupted());
                    },
                    &|| interrupted.get(),
                );
                if let Err(crate::train::TrainError::Cancelled(..)) = trained {
                    return Err(SearchError::Interrupted);
                }
                trained
                    .map(|t| NewEvaluation {
                        accuracy: Some(t.heldout_accuracy),
                        loss: Some(t.heldout_loss),
                        train_loss: Some(t.train_loss),
                        epochs: u32::try_from(epochs).ok(),
                        ..NewEvaluation::default()
                    })
                    .map_err(|e| e.to_string())
            }
        };
        let seconds = match ahead_seconds {
            Some(seconds) => Duration::from_secs_f64(seconds),
            None => {
                let elapsed = start.elapsed();
                self.evaluation_time += elapsed;
                elapsed
            }
        };
        let new = match measured {
            Ok(m) => {
                if let Some(problem) = &m.error {
                    tracing::warn!(run = %self.run.name, candidate = %request.candidate, "{problem}");
                }
                NewEvaluation { seconds: seconds.as_secs_f64(), ..m }
            }
            Err(e) => {
                tracing::warn!(run = %self.run.name, candidate = %request.candidate, "evaluation failed: {e}");
                NewEvaluation { seconds: seconds.as_secs_f64(), error: Some(e.to_string()), ..NewEvaluation::default() }
            }
        };
        let record = store.record(self.run.id, &request.candidate, request.fidelity, policy, &new)?;
        self.last_seq = record.seq;
        if let Some(table) = &self.table {
            self.annotate(store, &request.candidate, table);
        }
        match request.fidelity {
            Fidelity::Score => self.fresh.scores += 1,
            Fidelity::Train => self.fresh.trainings += 1,
        }
        Ok(record)
    }
}

/// Makes `engine` ready to score: when its score is the aggregate, anchors it in the
/// experiment's reference sample, read from the store's cache or measured now and cached.
/// `on_progress(done, total)` follows the measuring.
pub fn anchor(engine: &mut Engine, store: &RunStore, on_progress: &mut dyn FnMut(usize, usize)) -> Result<(), SearchError> {
    if !engine.needs_reference() {
        return Ok(());
    }
    let key = format!("reference {}", engine.reference_key());
    if let Some(json) = store.cached(&key)? {
        match serde_json::from_str(&json).map_err(|e| e.to_string()).and_then(|r| engine.set_reference(r).map_err(|e| e.to_string())) {
            Ok(()) => return Ok(()),
            Err(problem) => tracing::warn!("the cached reference sample is unusable ({problem}); measuring it again"),
        }
    }
    let started = Instant::now();
    let reference = engine.build_reference(on_progress).map_err(EngineError::from)?;
    tracing::info!(archs = reference.size, seconds = started.elapsed().as_secs_f64(), "reference sample measured");
    store.cache(&key, &serde_json::to_string(&reference).map_err(StoreError::from)?)?;
    engine.set_reference(reference)?;
    Ok(())
}

/// Calls into a policy, reporting the call's duration whether or not it succeeded.
fn timed<T>(observer: &mut dyn SearchObserver, call: &'static str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    observer.policy_called(call, start.elapsed().as_secs_f64());
    out
}

/// What a policy is told about a record: a training result carries the candidate's score
/// and measures too, when the run scored it.
fn observation(store: &RunStore, run: i64, record: &EvaluationRecord) -> Result<Observation, StoreError> {
    let scored = match record.fidelity {
        Fidelity::Train => store.find(run, &record.candidate, Fidelity::Score)?,
        Fidelity::Score => None,
    };
    let from = scored.as_ref().unwrap_or(record);
    Ok(Observation {
        candidate: record.candidate,
        fidelity: record.fidelity,
        score: from.score,
        measures: from.measures.clone().unwrap_or_default(),
        params: from.params,
        flops: from.flops,
        accuracy: record.accuracy,
        loss: record.loss,
        epochs: record.epochs,
        error: record.error.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Experiment, PolicyLimits};
    use crate::space::Arch;

    /// Policies' unit tests run against the SDK's simulated host
    /// (`knas_policy_sdk::testing`): it must keep this host's rules, defaults and random
    /// stream, or those tests would pass against a host that does not exist.
    #[test]
    fn the_sdks_simulated_host_keeps_this_hosts_rules_and_defaults() {
        use knas_policy_sdk::testing;
        assert_eq!(testing::NO_PROGRESS_LIMIT, NO_PROGRESS_LIMIT as usize);
        assert_eq!(testing::REPLAY_CHUNK, REPLAY_CHUNK);
        assert_eq!(testing::CHECKPOINT_EVERY as i64, CHECKPOINT_EVERY);
        assert_eq!(testing::TAKE_OVER_SEED, super::resume::TAKE_OVER_SEED);
        assert_eq!(testing::MAX_CHECKPOINT_BYTES, MAX_CHECKPOINT_BYTES);

        let simulated = testing::Host::nb201(7, 2).settings().clone();
        let experiment = Experiment::default();
        let search = crate::config::SearchSettings::default();
        assert_eq!(simulated.max_batch, search.max_batch);
        assert_eq!(simulated.max_epochs, crate::run::DEFAULT_MAX_EPOCHS);
        assert_eq!(simulated.epochs as usize, experiment.train.epochs);
        assert_eq!(simulated.score, experiment.score.to_string());
        let offered: Vec<(String, String, f64)> = experiment
            .score_measures()
            .into_iter()
            .map(|m| {
                let family = serde_json::to_value(m.info().family).unwrap().as_str().unwrap().to_owned();
                (m.to_string(), family, experiment.score_weight(m))
            })
            .collect();
        let simulated_measures: Vec<(String, String, f64)> =
            simulated.measures.iter().map(|m| (m.name.clone(), m.family.clone(), m.weight)).collect();
        assert_eq!(simulated_measures, offered);
        assert_eq!(simulated.space.ops, Op::ALL.iter().map(|op| op.name()).collect::<Vec<_>>());
        let edges: Vec<(usize, usize)> = simulated.space.edges.iter().map(|e| (e.src as usize, e.dst as usize)).collect();
        assert_eq!(edges, EDGES);

        /// Draws three numbers when created.
        struct Draws([u64; 3]);
        impl knas_policy_sdk::Policy for Draws {
            fn new(_: knas_policy_sdk::Settings) -> Result<Self, String> {
                Ok(Draws(std::array::from_fn(|_| knas_policy_sdk::random::u64())))
            }
            fn propose(&mut self, _: knas_policy_sdk::Budget) -> Result<knas_policy_sdk::Proposal, String> {
                Ok(knas_policy_sdk::Proposal::Done)
            }
        }
        let run = testing::Host::nb201(1, 0).seed(42).run::<Draws>(|c| testing::failed(c, "not asked")).unwrap();
        let mut host = crate::policy::runtime::generator(42);
        assert_eq!(run.policy.0, std::array::from_fn(|_| rand::RngCore::next_u64(&mut host)));
    }

    #[test]
    fn a_leaderboard_from_the_rows_the_store_picks_equals_one_from_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        let spec = SearchSpec {
            budget: Budget { scores: 100, trainings: 5 },
            max_batch: 4,
            max_epochs: 10,
            params: serde_json::json!({}),
            limits: PolicyLimits::default(),
        };
        let (run, _) = store.begin_run("r", "p@1", &Experiment::default(), &spec).unwrap();
        for i in 0..60 {
            let c: Candidate = Arch::from_index(i * 13).unwrap().into();
            // Eleven distinct scores over sixty candidates: ties at the cut; some missing.
            let score = (i % 5 != 4).then(|| ((i * 37) % 11) as f64);
            store.record(run.id, &c, Fidelity::Score, "p@1", &NewEvaluation { score, seconds: 0.1, ..Default::default() }).unwrap();
            // Trainings of candidates in and out of the top scores.
            if i % 20 == 3 || i == 59 {
                let trained = NewEvaluation { accuracy: Some(0.5 + i as f64 / 100.0), seconds: 1.0, ..Default::default() };
                store.record(run.id, &c, Fidelity::Train, "p@1", &trained).unwrap();
            }
        }
        let published = store.published(run.id).unwrap();
        let every = Leaderboard::of(&store.evaluations(run.id).unwrap(), &published);
        let picked = store.leaderboard_evaluations(run.id, TOP_SCORES).unwrap();
        let board = Leaderboard::of(&picked, &published);
        assert_eq!(serde_json::to_value(&board).unwrap(), serde_json::to_value(&every).unwrap());
        assert_eq!(every.trained.len(), 4);
        assert!(picked.len() <= TOP_SCORES + 2 * 4, "{} of 64 rows read", picked.len());
    }

    #[test]
    fn a_policy_may_always_ask_for_the_experiments_own_epochs() {
        let runtime = PolicyRuntime::new().unwrap();
        let module = crate::policy::builtin::load(&runtime, "random").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        let spec = crate::config::SearchSettings { score_budget: 10, top_k: 1, max_batch: 16 }.spec(serde_json::json!({}), PolicyLimits::default());
        assert_eq!(spec.max_epochs, crate::run::DEFAULT_MAX_EPOCHS);
        let mut experiment = Experiment::default();
        for (epochs, max_epochs) in [(1, crate::run::DEFAULT_MAX_EPOCHS), (20, 20)] {
            experiment.train.epochs = epochs as usize;
            let search = Search::start(&store, store.lease(&format!("e{epochs}")).unwrap(), &runtime, &module, &format!("e{epochs}"), &experiment, &spec, &mut ()).unwrap();
            let settings = search.settings();
            assert_eq!((settings.epochs, settings.max_epochs), (epochs, max_epochs));
            let ops = vec![vec![3], vec![1], vec![0], vec![2], vec![4], vec![3]];
            let asked = crate::policy::RawCandidate { ops, fidelity: Fidelity::Train, epochs: Some(epochs) };
            assert!(validate(&[asked], spec.max_batch, search.max_epochs()).is_ok(), "{epochs} epochs");
        }
    }

    #[test]
    fn trainings_run_elsewhere_one_at_a_time_are_progress() {
        // More single trainings, each waited for, than the no-progress limit allows
        // proposals that bring nothing new: each brought its result.
        let trainings = NO_PROGRESS_LIMIT + 5;
        let experiment = Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(64), reference: 6, ..Experiment::default() };
        let spec = crate::config::SearchSettings { score_budget: trainings, top_k: trainings, max_batch: 1 }.spec(serde_json::json!({}), PolicyLimits::default());
        let runtime = PolicyRuntime::new().unwrap();
        let module = crate::policy::builtin::load(&runtime, "random").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        let mut engine = Engine::new(&experiment, tch::Device::Cpu).unwrap();
        anchor(&mut engine, &store, &mut |_, _| {}).unwrap();
        let mut search = Search::start(&store, store.lease("k").unwrap(), &runtime, &module, "k", &experiment, &spec, &mut ()).unwrap();
        search.train_elsewhere();
        let finish = loop {
            match search.step(&engine, &store, &mut ()).unwrap() {
                Step::Continue => {}
                Step::Waiting(candidates) => {
                    for candidate in candidates {
                        let result = NewEvaluation { accuracy: Some(0.5), ..NewEvaluation::default() };
                        store.record(search.run().id, &candidate, Fidelity::Train, "elsewhere", &result).unwrap();
                    }
                }
                Step::Finished(finish) => break finish,
            }
        };
        assert_eq!(finish, Finish::BudgetSpent);
        assert_eq!(store.spent(search.run().id).unwrap(), Budget { scores: trainings, trainings });
    }

    /// Counts what it sees and asks to stop after `stop_after` evaluations.
    struct StopAfter {
        evaluated: usize,
        stop_after: usize,
    }

    impl SearchObserver for StopAfter {
        fn evaluated(&mut self, _record: &EvaluationRecord, _fresh: bool) {
            self.evaluated += 1;
        }
        fn interrupted(&self) -> bool {
            self.evaluated >= self.stop_after
        }
    }

    #[test]
    fn scores_measured_together_are_the_same_and_an_interruption_keeps_them() {
        let experiment = Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(64), reference: 6, ..Experiment::default() };
        let spec = crate::config::SearchSettings { score_budget: 10, top_k: 1, max_batch: 16 }.spec(serde_json::json!({}), PolicyLimits::default());
        let runtime = PolicyRuntime::new().unwrap();
        let module = crate::policy::builtin::load(&runtime, "random").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rows = |records: &[EvaluationRecord]| -> Vec<_> {
            records.iter().map(|r| (r.candidate, r.fidelity, r.score, r.accuracy, r.measures.clone())).collect()
        };
        let search = |workers: usize, name: &str, stop_after: Option<usize>| {
            let store = RunStore::open(&dir.path().join(format!("{name}.db"))).unwrap();
            let mut engine = Engine::new(&experiment, tch::Device::Cpu).unwrap();
            engine.set_workers(workers);
            anchor(&mut engine, &store, &mut |_, _| {}).unwrap();
            let mut search = Search::start(&store, store.lease("r").unwrap(), &runtime, &module, "r", &experiment, &spec, &mut ()).unwrap();
            let mut steps = Vec::new();
            match stop_after {
                Some(stop_after) => {
                    let mut observer = StopAfter { evaluated: 0, stop_after };
                    steps.push(search.step(&engine, &store, &mut observer).map(|_| ()));
                    steps.push(search.step(&engine, &store, &mut observer).map(|_| ()));
                }
                None => while !matches!(search.step(&engine, &store, &mut ()).unwrap(), Step::Finished(_)) {},
            }
            (rows(&store.evaluations(search.run().id).unwrap()), search.measured_together(), steps)
        };

        // Uninterrupted, one worker or two: the same candidates, order and values.
        let (one, together, _) = search(1, "one", None);
        assert_eq!((one.len(), together), (11, 0));
        let (two, together, _) = search(2, "two", None);
        assert_eq!(together, 10, "the proposal's ten scores were measured together");
        assert_eq!(one, two);

        // Asked to stop after the first result: one worker stops before its second score;
        // two workers have measured the whole proposal, and every score of it is recorded.
        let (stopped, _, steps) = search(1, "stop-one", Some(1));
        assert!(matches!(steps[0], Err(SearchError::Interrupted)), "{steps:?}");
        assert_eq!(stopped, one[..1]);
        let (stopped, together, steps) = search(2, "stop-two", Some(1));
        assert!(steps[0].is_ok() && matches!(steps[1], Err(SearchError::Interrupted)), "then the training waits: {steps:?}");
        assert_eq!((stopped.len(), together), (10, 10));
        assert_eq!(stopped, two[..10]);
    }
}
