//! Unit-test a policy with `cargo test`: a simulated knas host that runs in the test
//! process (native builds only; inside the wasm component the real host answers).
//!
//! ```no_run
//! # use knas_policy_sdk::{Budget, Candidate, Policy, Proposal, Settings};
//! # struct MyPolicy;
//! # impl Policy for MyPolicy {
//! #     fn new(_: Settings) -> Result<Self, String> { Ok(MyPolicy) }
//! #     fn propose(&mut self, _: Budget) -> Result<Proposal, String> { Ok(Proposal::Done) }
//! # }
//! use knas_policy_sdk::testing::{Host, scored, trained};
//!
//! // Score = the architecture's index; accuracy after training = the same, scaled.
//! let run = Host::nb201(100, 3)
//!     .run::<MyPolicy>(|candidate| match candidate.arch() {
//!         Some(arch) if candidate.fidelity.is_train() => trained(candidate, arch.index() as f64 / 15_625.0),
//!         Some(arch) => scored(candidate, arch.index() as f64, &[]),
//!         None => scored(candidate, 0.0, &[]),
//!     })
//!     .unwrap();
//! assert!(run.spent().scores <= 100);
//! ```
//!
//! [`Host`] drives a [`Policy`] the way the knas host does: `new`, then `propose` and
//! `observe` until the policy answers `done` or the budget is spent. A closure stands in
//! for the networks and the training: it answers each *new* evaluation. The host's rules
//! hold here too, and breaking one ends the run with an error that names it:
//!
//! - a batch holds 1 to `max-batch` candidates, each well formed (an op set per edge,
//!   valid and distinct op indices, one op per edge for a training, 1 to `max-epochs`
//!   epochs);
//! - the new evaluations a batch asks for fit in the remaining budget; re-proposing what
//!   the run already evaluated is free and answered from the record;
//! - [`NO_PROGRESS_LIMIT`] proposals in a row that tell the policy nothing new end the run.
//!
//! Answers are completed as the host completes them: a score that is not finite is an
//! error (its measures kept); a training's candidate and `epochs` say the epochs it ran
//! (none for a failed one); a trained architecture that was scored carries its score and
//! measures. Random numbers come from the host's own generator seeded the host's way
//! (ChaCha8, afresh for every instance: from the run's seed, and for an instance that takes
//! a run over by checkpoint or replay from the seed xor the run's length times
//! 0x9e3779b97f4a7c15), so a policy draws here what it draws in a real run with the same
//! seed and results. Log records are kept in
//! [`Run::logs`]. [`Host::resume`] takes a stopped run over with a fresh instance, by each
//! of the host's three routes (restart, hot swap with a checkpoint, hot swap without).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::nb201::{EDGES, NUM_EDGES, Op, Supernet};
use crate::{Budget, Candidate, Edge, Evaluation, Fidelity, Level, MeasureInfo, MeasureValue, Policy, Proposal, Settings, Space};

/// Proposals in a row that tell the policy nothing new before the host ends a run (the
/// host's own limit).
pub const NO_PROGRESS_LIMIT: usize = 100;

/// Results per `observe` call when a history is fed to a fresh instance (the host's).
pub const REPLAY_CHUNK: usize = 256;

/// New results between two checkpoints of a policy that keeps them (the host's; see
/// [`Host::checkpoint_every`]).
pub const CHECKPOINT_EVERY: usize = 256;

/// The largest checkpoint the host keeps; a larger one is ignored and the history replayed
/// instead (the host's).
pub const MAX_CHECKPOINT_BYTES: usize = 16 << 20;

/// What the host multiplies a run's length by to seed an instance that takes a run over
/// by checkpoint or replay (xor the run's seed): a stream of its own, not a retrace.
pub const TAKE_OVER_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

thread_local! {
    static RNG: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// The simulated `host.random`.
pub(crate) fn random() -> u64 {
    RNG.with(|rng| rng.borrow_mut().next_u64())
}

/// The simulated `host.log`.
pub(crate) fn log(level: Level, message: &str) {
    LOGS.with(|logs| logs.borrow_mut().push((level, message.to_owned())));
}

/// A successful score evaluation of `candidate`: the run's `score` and the named
/// `measures` (a value that is not finite becomes missing, as the host reports it).
pub fn scored(candidate: &Candidate, score: f64, measures: &[(&str, f64)]) -> Evaluation {
    Evaluation {
        score: Some(score).filter(|s| s.is_finite()),
        measures: measures.iter().map(|&(name, v)| MeasureValue { name: name.into(), value: Some(v).filter(|v| v.is_finite()) }).collect(),
        ..blank(candidate)
    }
}

/// A successful training of `candidate`: held-out `accuracy`, and loss `1 − accuracy`.
pub fn trained(candidate: &Candidate, accuracy: f64) -> Evaluation {
    Evaluation { accuracy: Some(accuracy), loss: Some(1.0 - accuracy), ..blank(candidate) }
}

/// An evaluation the host could not make (a training that diverged, a network that
/// could not be built).
pub fn failed(candidate: &Candidate, error: &str) -> Evaluation {
    Evaluation { error: Some(error.into()), ..blank(candidate) }
}

/// Answers as a real run may bring them, drawn from `seed`: scores and measures at random,
/// about 1 in 10 of them not finite (missing), about 1 in 20 evaluations failed, and
/// trainings with random accuracies. A policy should finish any run on them without
/// breaking a rule: see [`Host::run_noisy`].
pub fn noisy(seed: u64) -> impl FnMut(&Candidate) -> Evaluation {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    move |candidate| {
        let mut unit = || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if unit() < 0.05 {
            return failed(candidate, "a failure made up by testing::noisy");
        }
        if candidate.fidelity.is_train() {
            return trained(candidate, unit());
        }
        let mut value = || if unit() < 0.1 { f64::NAN } else { unit() * 100.0 - 50.0 };
        let score = value();
        // As on the host, a supernet's evaluation goes without the gradient norm.
        let single = candidate.arch().is_some();
        let measures: Vec<(&str, f64)> =
            DEFAULT_MEASURES.iter().filter(|&&(name, _, _)| single || name != "grad-norm").map(|&(name, _, _)| (name, value())).collect();
        let size = (unit() * 1e6) as u64;
        Evaluation { params: Some(size), flops: Some(size * 100), ..scored(candidate, score, &measures) }
    }
}

/// Cases a property test should run: `KNAS_FUZZ_CASES` when set (the project's fuzzing
/// runs set 10,000), else `default`. Every fuzz target of the project, host and SDK, reads
/// its case count here.
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("KNAS_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The property-test configuration of every knas fuzz target (feature `fuzz`): 200 cases,
/// or `KNAS_FUZZ_CASES`; failures are not persisted, so a test run writes nothing into
/// the source tree. Inside `proptest!`: `#![proptest_config(knas_policy_sdk::testing::fuzz_config())]`.
#[cfg(any(test, feature = "fuzz"))]
pub fn fuzz_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config { cases: fuzz_cases(200), failure_persistence: None, ..Default::default() }
}

fn blank(candidate: &Candidate) -> Evaluation {
    Evaluation {
        candidate: candidate.clone(),
        score: None,
        measures: Vec::new(),
        params: None,
        flops: None,
        accuracy: None,
        loss: None,
        epochs: None,
        error: None,
    }
}

/// The measures the knas host offers by default, with their weights in its default
/// aggregate score.
const DEFAULT_MEASURES: [(&str, &str, f64); 8] = [
    ("synflow", "saliency", 1.0),
    ("meco", "features", 1.0),
    ("expressivity", "features", 1.0),
    ("progressivity", "features", 1.0),
    ("trainability", "features", 1.0),
    ("params", "size", 1.0),
    ("flops", "size", 0.0),
    ("grad-norm", "saliency", 0.0),
];

/// A simulated host: the settings a run starts with, and its seed.
#[derive(Debug, Clone)]
pub struct Host {
    settings: Settings,
    seed: u64,
    checkpoint_every: usize,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The policy answered `done`.
    Done,
    /// Nothing was left of the budget.
    BudgetSpent,
}

/// How [`Host::resume`] hands a stopped run to a fresh instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// A restart with the same module: the fresh instance (the run's seed) proposes again
    /// and every proposal already answered comes from the record, until it proposes
    /// something new.
    Retrace,
    /// A hot swap to a module that keeps checkpoints: the fresh instance restores the
    /// run's latest checkpoint (taken every [`Host::checkpoint_every`] results) and is fed
    /// what was recorded after it; without one, the whole history, as [`Resume::Replay`].
    Checkpoint,
    /// A hot swap to a module without checkpoints: the fresh instance is fed the whole
    /// history, [`REPLAY_CHUNK`] results per `observe`.
    Replay,
}

/// A run, stopped or finished.
pub struct Run<P> {
    /// The instance that drove the run last.
    pub policy: P,
    /// Every evaluation recorded, in order (as the run store holds them).
    pub evaluations: Vec<Evaluation>,
    /// Why the run ended; `None` when it was stopped ([`Host::run_until`]).
    pub finish: Option<Finish>,
    /// `propose` calls, over every instance.
    pub proposals: usize,
    /// Proposals that brought nothing to evaluate and nothing the instance had not been
    /// told (a well-behaved policy makes none).
    pub idle_proposals: usize,
    /// What the policy logged, over every instance.
    pub logs: Vec<(Level, String)>,
    budget: Budget,
    /// Where each (cell, is-training) evaluation is in `evaluations`.
    recorded: HashMap<(Supernet, bool), usize>,
    /// Evaluations the current instance has been told.
    told: HashSet<usize>,
    /// The latest checkpoint: how many evaluations were recorded when it was taken, and
    /// the state.
    checkpoint: Option<(usize, Vec<u8>)>,
    /// Evaluations recorded when a checkpoint was last asked for.
    checkpoint_asked: usize,
    /// Whether the instance is retracing the run (a restart): until it proposes something
    /// not recorded, it is told the budget as it was when the run was there.
    retracing: bool,
}

impl<P> Run<P> {
    /// Evaluations recorded, per fidelity.
    pub fn spent(&self) -> Budget {
        let trainings = self.evaluations.iter().filter(|e| e.candidate.fidelity.is_train()).count() as u32;
        Budget { scores: self.evaluations.len() as u32 - trainings, trainings }
    }

    /// What is left of the budget.
    pub fn remaining(&self) -> Budget {
        let spent = self.spent();
        Budget { scores: self.budget.scores.saturating_sub(spent.scores), trainings: self.budget.trainings.saturating_sub(spent.trainings) }
    }

    /// The score evaluations, in order.
    pub fn scores(&self) -> impl Iterator<Item = &Evaluation> {
        self.evaluations.iter().filter(|e| e.candidate.fidelity == Fidelity::Score)
    }

    /// The trainings, in order.
    pub fn trainings(&self) -> impl Iterator<Item = &Evaluation> {
        self.evaluations.iter().filter(|e| e.candidate.fidelity.is_train())
    }

    /// The most accurate training (the run's winner), earliest first among equals.
    pub fn winner(&self) -> Option<&Evaluation> {
        self.trainings().filter(|e| e.accuracy.is_some()).fold(None, |best: Option<&Evaluation>, e| match best {
            Some(b) if b.accuracy >= e.accuracy => Some(b),
            _ => Some(e),
        })
    }

    /// The messages logged at `level`.
    pub fn logged(&self, level: Level) -> Vec<&str> {
        self.logs.iter().filter(|(l, _)| *l == level).map(|(_, m)| m.as_str()).collect()
    }

    /// Evaluation `at` as the policy is told it: a training carries its architecture's
    /// score and measures when the run holds them by then (scored later, or in the same
    /// batch), as the host completes it when it tells it, not when it records it.
    fn as_told(&self, at: usize) -> Evaluation {
        let mut told = self.evaluations[at].clone();
        if told.candidate.fidelity.is_train()
            && told.score.is_none()
            && let Some(cell) = told.candidate.supernet()
            && let Some(&scored) = self.recorded.get(&(cell, false))
        {
            carry_score(&mut told, &self.evaluations[scored]);
        }
        told
    }
}

/// A training's evaluation completed with its architecture's score evaluation.
fn carry_score(training: &mut Evaluation, score: &Evaluation) {
    training.score = score.score;
    training.measures = score.measures.clone();
    training.params = training.params.or(score.params);
    training.flops = training.flops.or(score.flops);
}

impl Host {
    /// A run over NAS-Bench-201 with the knas host's defaults (score: the default aggregate,
    /// with its measures; 16 candidates per batch; trainings of 1 epoch, at most 10; seed
    /// 0; no parameters), and this budget.
    pub fn nb201(scores: u32, trainings: u32) -> Host {
        let space = Space {
            name: "nas-bench-201".into(),
            ops: Op::ALL.iter().map(|op| op.name().to_owned()).collect(),
            edges: EDGES.iter().map(|&(src, dst)| Edge { src: src as u32, dst: dst as u32 }).collect(),
        };
        let measures = DEFAULT_MEASURES
            .iter()
            .map(|&(name, family, weight)| MeasureInfo { name: name.into(), family: family.into(), summary: String::new(), weight })
            .collect();
        let settings = Settings {
            space,
            budget: Budget { scores, trainings },
            max_batch: 16,
            params: "{}".into(),
            score: "aggregate".into(),
            measures,
            epochs: 1,
            max_epochs: 10,
        };
        Host { settings, seed: 0, checkpoint_every: CHECKPOINT_EVERY }
    }

    /// New results between two checkpoints ([`CHECKPOINT_EVERY`], as the host, unless
    /// set): a smaller value lets a short test run restore a checkpoint and then be told
    /// what came after it, as a long real run is.
    pub fn checkpoint_every(mut self, results: usize) -> Host {
        self.checkpoint_every = results.max(1);
        self
    }

    /// The policy's parameters (a JSON object).
    pub fn params(mut self, json: &str) -> Host {
        self.settings.params = json.into();
        self
    }

    /// Candidates one proposal may hold.
    pub fn max_batch(mut self, max_batch: u32) -> Host {
        self.settings.max_batch = max_batch;
        self
    }

    /// The run's seed (of the generator behind [`crate::random`]).
    pub fn seed(mut self, seed: u64) -> Host {
        self.seed = seed;
        self
    }

    /// The settings the policy receives.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The settings the policy receives, to change anything else.
    pub fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    /// Runs a fresh instance of `P` until it answers `done` or the budget is spent;
    /// `evaluate` answers every new evaluation. An error names the broken rule, or is the
    /// policy's own.
    pub fn run<P: Policy>(&self, evaluate: impl FnMut(&Candidate) -> Evaluation) -> Result<Run<P>, String> {
        self.run_until(usize::MAX, evaluate)
    }

    /// As [`Host::run`], but stops (between proposals, as a killed host does) once
    /// `evaluations` new evaluations are recorded.
    pub fn run_until<P: Policy>(&self, evaluations: usize, mut evaluate: impl FnMut(&Candidate) -> Evaluation) -> Result<Run<P>, String> {
        let policy = self.instance::<P>(self.seed)?;
        let mut run = Run {
            policy,
            evaluations: Vec::new(),
            finish: None,
            proposals: 0,
            idle_proposals: 0,
            logs: Vec::new(),
            budget: self.settings.budget,
            recorded: HashMap::new(),
            told: HashSet::new(),
            checkpoint: None,
            checkpoint_asked: 0,
            retracing: false,
        };
        let outcome = self.drive(&mut run, evaluations, &mut evaluate);
        run.logs.extend(take_logs());
        outcome.map(|()| run)
    }

    /// Runs a fresh instance of `P` on [`noisy`] answers (drawn from the run's seed) and
    /// checks what any policy owes the host on any input: the run ends, done or with the
    /// budget spent, without breaking a rule and without an idle proposal.
    pub fn run_noisy<P: Policy>(&self) -> Result<Run<P>, String> {
        let run = self.run::<P>(noisy(self.seed))?;
        if run.idle_proposals > 0 {
            return Err(format!("{} of {} proposals brought nothing new", run.idle_proposals, run.proposals));
        }
        Ok(run)
    }

    /// Hands a stopped run to a fresh instance of `P` (by `how`, seeded as the host seeds
    /// it) and continues it to the end, with the same settings. The result holds the whole
    /// run.
    ///
    /// Unlike the host, a `Retrace` here expects the policy to retrace its own run (the
    /// host replays whatever a policy that strays was not told, and drops its proposal):
    /// a policy that strays fails here on the budget or on progress.
    pub fn resume<P: Policy>(&self, stopped: Run<P>, how: Resume, mut evaluate: impl FnMut(&Candidate) -> Evaluation) -> Result<Run<P>, String> {
        let recorded = stopped.evaluations.len();
        // As the host seeds them: the run's seed to retrace it, else one of its own.
        let seed = match how {
            Resume::Retrace => self.seed,
            Resume::Checkpoint | Resume::Replay => self.seed ^ (recorded as u64).wrapping_mul(TAKE_OVER_SEED),
        };
        // As the host, which counts from the last saved checkpoint when it starts.
        let checkpoint_asked = stopped.checkpoint.as_ref().map_or(0, |(at, _)| *at);
        let mut run = Run { finish: None, told: HashSet::new(), retracing: how == Resume::Retrace, checkpoint_asked, ..stopped };
        let mut fresh = self.instance::<P>(seed)?;
        let mut replay_from = 0;
        if how == Resume::Checkpoint
            && let Some((at, state)) = &run.checkpoint
        {
            match fresh.restore(state) {
                Ok(()) => replay_from = *at,
                // Declined (another state format, say): the host starts afresh and replays.
                Err(_) => fresh = self.instance::<P>(seed)?,
            }
        }
        if how != Resume::Retrace {
            for chunk in (replay_from..recorded).collect::<Vec<_>>().chunks(REPLAY_CHUNK) {
                let told: Vec<Evaluation> = chunk.iter().map(|&at| run.as_told(at)).collect();
                fresh.observe(told).map_err(|e| format!("observe: {e}"))?;
            }
            run.told = (0..recorded).collect();
        }
        run.policy = fresh;
        let outcome = self.drive(&mut run, usize::MAX, &mut evaluate);
        run.logs.extend(take_logs());
        outcome.map(|()| run)
    }

    /// A fresh instance, with the generator reseeded (the host seeds every instance).
    fn instance<P: Policy>(&self, seed: u64) -> Result<P, String> {
        RNG.with(|rng| *rng.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
        // Logged outside a run (a policy created by hand): not this run's.
        take_logs();
        P::new(self.settings.clone()).map_err(|e| format!("init: {e}"))
    }

    fn drive<P: Policy>(&self, run: &mut Run<P>, stop_after: usize, evaluate: &mut dyn FnMut(&Candidate) -> Evaluation) -> Result<(), String> {
        let mut fresh = 0;
        let mut idle_in_a_row = 0;
        while fresh < stop_after {
            let remaining = run.remaining();
            // Retracing, the instance is told the budget left when the run was where it
            // is now: what it has been told is what was spent.
            let told = if run.retracing {
                let trainings = run.told.iter().filter(|&&at| run.evaluations[at].candidate.fidelity.is_train()).count() as u32;
                let spent = Budget { scores: run.told.len() as u32 - trainings, trainings };
                Budget { scores: run.budget.scores.saturating_sub(spent.scores), trainings: run.budget.trainings.saturating_sub(spent.trainings) }
            } else {
                remaining
            };
            if told == (Budget { scores: 0, trainings: 0 }) {
                run.finish = Some(Finish::BudgetSpent);
                return Ok(());
            }
            run.proposals += 1;
            let proposal = run.policy.propose(told).map_err(|e| format!("propose: {e}"))?;
            let Proposal::Evaluate(batch) = proposal else {
                run.finish = Some(Finish::Done);
                return Ok(());
            };
            let keys = self.check(&batch).map_err(|e| format!("proposal {}: {e}", run.proposals))?;
            let mut wanted = Budget { scores: 0, trainings: 0 };
            for (i, key) in keys.iter().enumerate() {
                if !run.recorded.contains_key(key) && !keys[..i].contains(key) {
                    if key.1 { wanted.trainings += 1 } else { wanted.scores += 1 }
                }
            }
            if wanted.scores > remaining.scores || wanted.trainings > remaining.trainings {
                return Err(format!(
                    "proposal {}: asks for {} new scores and {} new trainings, but only {} and {} remain in the budget",
                    run.proposals, wanted.scores, wanted.trainings, remaining.scores, remaining.trainings
                ));
            }
            // Something not recorded: the instance no longer retraces the run.
            if keys.iter().any(|key| !run.recorded.contains_key(key)) {
                run.retracing = false;
            }
            let mut answered = Vec::with_capacity(batch.len());
            let mut news = false;
            for (candidate, key) in batch.iter().zip(keys) {
                let at = match run.recorded.get(&key) {
                    Some(&at) => at,
                    None => {
                        let answer = self.answer(run, candidate, key, evaluate);
                        run.evaluations.push(answer);
                        run.recorded.insert(key, run.evaluations.len() - 1);
                        fresh += 1;
                        run.evaluations.len() - 1
                    }
                };
                news |= run.told.insert(at);
                answered.push(at);
            }
            // Told once the whole batch is recorded, as the host tells it.
            let answers: Vec<Evaluation> = answered.iter().map(|&at| run.as_told(at)).collect();
            if news {
                idle_in_a_row = 0;
            } else {
                run.idle_proposals += 1;
                idle_in_a_row += 1;
                if idle_in_a_row >= NO_PROGRESS_LIMIT {
                    return Err(format!("{NO_PROGRESS_LIMIT} proposals in a row brought nothing new"));
                }
            }
            run.policy.observe(answers).map_err(|e| format!("observe: {e}"))?;
            // As the host: asked again only after as many new results, whatever the answer;
            // a policy that cannot save its state now is resumed by replay instead.
            if run.evaluations.len() - run.checkpoint_asked >= self.checkpoint_every {
                run.checkpoint_asked = run.evaluations.len();
                // A checkpoint larger than the host keeps is ignored, as the host does.
                if let Ok(Some(state)) = run.policy.checkpoint()
                    && state.len() <= MAX_CHECKPOINT_BYTES
                {
                    run.checkpoint = Some((run.evaluations.len(), state));
                }
            }
        }
        Ok(())
    }

    /// The evaluation `evaluate` gives, completed as the host completes its answers.
    fn answer<P>(&self, run: &Run<P>, candidate: &Candidate, key: (Supernet, bool), evaluate: &mut dyn FnMut(&Candidate) -> Evaluation) -> Evaluation {
        let mut answer = Evaluation { candidate: candidate.clone(), ..evaluate(candidate) };
        // A score that is not finite is an error, its measures kept.
        if candidate.fidelity == Fidelity::Score && answer.score.is_none() && answer.error.is_none() {
            answer.error = Some(format!("the score ({}) is not finite for this network", self.settings.score));
        }
        if let Fidelity::Train(training) = &candidate.fidelity {
            // The epochs a training ran, in its candidate too; none for a failed one.
            let epochs = answer.error.is_none().then(|| training.epochs.unwrap_or(self.settings.epochs));
            answer.candidate.fidelity = Fidelity::Train(crate::Training { epochs });
            answer.epochs = epochs;
            if let Some(&at) = run.recorded.get(&(key.0, false)) {
                carry_score(&mut answer, &run.evaluations[at]);
            }
        }
        answer
    }

    /// Checks a batch as the host does; each candidate's key in the record.
    fn check(&self, batch: &[Candidate]) -> Result<Vec<(Supernet, bool)>, String> {
        if batch.is_empty() {
            return Err("an empty batch (a policy with nothing to propose answers `done`)".into());
        }
        if batch.len() > self.settings.max_batch as usize {
            return Err(format!("{} candidates in one batch, more than max-batch {}", batch.len(), self.settings.max_batch));
        }
        batch
            .iter()
            .enumerate()
            .map(|(i, candidate)| {
                let cell = candidate.supernet().filter(|_| candidate.ops.iter().all(|set| distinct(set))).ok_or_else(|| {
                    format!("candidate {i} is malformed: {NUM_EDGES} non-empty sets of distinct op indices below {} needed, got {:?}", Op::ALL.len(), candidate.ops)
                })?;
                if let Fidelity::Train(training) = &candidate.fidelity {
                    if !cell.is_single() {
                        return Err(format!("candidate {i}: training needs one op per edge"));
                    }
                    if let Some(epochs) = training.epochs.filter(|&e| e == 0 || e > self.settings.max_epochs) {
                        return Err(format!("candidate {i}: {epochs} epochs asked, outside 1..={}", self.settings.max_epochs));
                    }
                }
                Ok((cell, candidate.fidelity.is_train()))
            })
            .collect()
    }
}

fn distinct(set: &[u32]) -> bool {
    set.iter().enumerate().all(|(i, op)| !set[..i].contains(op))
}

fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb201::Arch;

    /// Proposes the batches it is given, in turn, then `done`.
    struct Scripted(Vec<Vec<Candidate>>);

    impl Policy for Scripted {
        fn new(settings: Settings) -> Result<Self, String> {
            let batches: Vec<Vec<u32>> = settings.parse_params()?;
            let arch = |i: &u32| Arch::from_index(*i as usize).map(Candidate::score).map_err(|e| e.to_string());
            let batches = batches.iter().map(|b| b.iter().map(arch).collect::<Result<Vec<_>, String>>()).collect::<Result<_, _>>()?;
            Ok(Scripted(batches))
        }

        fn propose(&mut self, _remaining: Budget) -> Result<Proposal, String> {
            crate::info("proposing");
            Ok(if self.0.is_empty() { Proposal::Done } else { Proposal::Evaluate(self.0.remove(0)) })
        }
    }

    fn score_by_index(candidate: &Candidate) -> Evaluation {
        scored(candidate, candidate.arch().map_or(f64::NAN, |a| a.index() as f64), &[("params", 7.0)])
    }

    #[test]
    fn answers_new_evaluations_and_repeats_from_the_record() {
        let mut asked = Vec::new();
        let run = Host::nb201(3, 0)
            .params("[[1, 2], [2, 1], [3]]")
            .run::<Scripted>(|c| {
                asked.push(c.arch().map(|a| a.index()));
                score_by_index(c)
            })
            .unwrap();
        assert_eq!(asked, [Some(1), Some(2), Some(3)], "a repeated candidate is answered from the record");
        assert_eq!(run.finish, Some(Finish::BudgetSpent));
        assert_eq!(run.spent(), Budget { scores: 3, trainings: 0 });
        assert_eq!(run.idle_proposals, 1);
        assert_eq!(run.logged(Level::Info), ["proposing"; 3]);
    }

    #[test]
    fn refuses_what_the_host_refuses() {
        let over = Host::nb201(2, 0).params("[[1, 2, 3]]").run::<Scripted>(score_by_index).err().unwrap();
        assert!(over.contains("asks for 3 new scores and 0 new trainings, but only 2 and 0 remain"), "{over}");
        let wide = Host::nb201(9, 0).max_batch(2).params("[[1, 2, 3]]").run::<Scripted>(score_by_index).err().unwrap();
        assert!(wide.contains("3 candidates in one batch, more than max-batch 2"), "{wide}");
        let empty = Host::nb201(9, 0).params("[[]]").run::<Scripted>(score_by_index).err().unwrap();
        assert!(empty.contains("an empty batch"), "{empty}");
        let stuck = Host::nb201(9, 0).params(&format!("[[5]{}]", ", [5]".repeat(NO_PROGRESS_LIMIT))).run::<Scripted>(score_by_index);
        assert!(stuck.err().unwrap().contains("100 proposals in a row brought nothing new"));
        let bad = Host::nb201(9, 0).params("{}").run::<Scripted>(score_by_index).err().unwrap();
        assert!(bad.starts_with("init: invalid policy parameters"), "{bad}");
    }

    #[test]
    fn noisy_answers_repeat_per_seed_and_hold_missing_values_and_failures() {
        let candidates: Vec<Candidate> = (0..400).map(|i| Candidate::score(Arch::from_index(i).unwrap())).collect();
        let answers = |seed| candidates.iter().map(noisy(seed)).collect::<Vec<_>>();
        let (a, b) = (answers(1), answers(1));
        assert_eq!(a, b);
        assert_ne!(a, answers(2));
        let failed = a.iter().filter(|e| e.error.is_some()).count();
        let missing = a.iter().filter(|e| e.error.is_none() && e.score.is_none()).count();
        assert!((5..40).contains(&failed) && (15..80).contains(&missing), "{failed} failed, {missing} missing of 400");
        assert!(a.iter().filter(|e| e.error.is_none()).all(|e| e.measures.len() == DEFAULT_MEASURES.len()));
        let supernet = Candidate { ops: vec![vec![0, 1]; 6], fidelity: Fidelity::Score };
        let answer = (0..20).map(|seed| noisy(seed)(&supernet)).find(|e| e.error.is_none()).unwrap();
        assert_eq!(answer.measures.len(), DEFAULT_MEASURES.len() - 1);
        assert!(answer.measures.iter().all(|m| m.name != "grad-norm"));
        // A policy that repeats itself does not pass.
        let idle = Host::nb201(9, 0).params("[[1], [1], [2]]").run_noisy::<Scripted>().err().unwrap();
        assert_eq!(idle, "1 of 4 proposals brought nothing new");
    }

    #[test]
    fn resumes_by_every_route() {
        let host = Host::nb201(5, 0).params("[[10], [11, 12], [13], [14]]");
        let whole = host.run::<Scripted>(score_by_index).unwrap();
        for how in [Resume::Retrace, Resume::Replay] {
            let stopped = host.run_until::<Scripted>(3, score_by_index).unwrap();
            assert_eq!((stopped.finish, stopped.evaluations.len()), (None, 3));
            let resumed = host.resume(stopped, how, score_by_index).unwrap();
            assert_eq!(resumed.evaluations, whole.evaluations, "{how:?}");
            assert_eq!(resumed.finish, Some(Finish::BudgetSpent));
        }
    }

    /// Scores architectures 0, 1, 2, … one per proposal, counting the results it is told;
    /// keeps the first number it drew. Checkpoints the count unless `{"checkpoints":
    /// false}`; declines every checkpoint it is handed with `{"decline": true}`.
    struct Counting {
        told: usize,
        restored: Option<usize>,
        draw: u64,
        params: CountingParams,
    }

    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct CountingParams {
        checkpoints: Option<bool>,
        decline: bool,
    }

    impl Policy for Counting {
        fn new(settings: Settings) -> Result<Self, String> {
            Ok(Counting { told: 0, restored: None, draw: crate::random::u64(), params: settings.parse_params()? })
        }

        fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
            self.told += results.len();
            Ok(())
        }

        fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
            // The budget it is told must agree with what it was told: a retrace sees the
            // run as it was.
            let expected = 10 - self.told as u32;
            if remaining.scores != expected {
                return Err(format!("told {} results but {} scores remain", self.told, remaining.scores));
            }
            Ok(Proposal::Evaluate(vec![Candidate::score(Arch::from_index(self.told).map_err(|e| e.to_string())?)]))
        }

        fn checkpoint(&self) -> Result<Option<Vec<u8>>, String> {
            Ok(self.params.checkpoints.unwrap_or(true).then(|| (self.told as u64).to_le_bytes().to_vec()))
        }

        fn restore(&mut self, state: &[u8]) -> Result<(), String> {
            if self.params.decline {
                return Err("another state format".into());
            }
            let told = u64::from_le_bytes(state.try_into().map_err(|_| "not 8 bytes")?) as usize;
            (self.told, self.restored) = (told, Some(told));
            Ok(())
        }
    }

    #[test]
    fn takes_a_run_over_as_the_host_does() {
        let first = ChaCha8Rng::seed_from_u64(5).next_u64();
        let take_over = ChaCha8Rng::seed_from_u64(5 ^ 7u64.wrapping_mul(TAKE_OVER_SEED)).next_u64();
        for params in [r#"{}"#, r#"{"checkpoints": false}"#, r#"{"decline": true}"#] {
            let host = Host::nb201(10, 0).seed(5).checkpoint_every(3).params(params);
            let whole = host.run::<Counting>(score_by_index).unwrap();
            assert_eq!(whole.policy.draw, first);
            for how in [Resume::Retrace, Resume::Checkpoint, Resume::Replay] {
                let resumed = host.resume(host.run_until::<Counting>(7, score_by_index).unwrap(), how, score_by_index).unwrap();
                assert_eq!(resumed.evaluations, whole.evaluations, "{params} {how:?}");
                assert_eq!(resumed.policy.told, 10, "{params} {how:?}");
                // A retrace is the run's own instance again; a take-over gets a stream of its own.
                assert_eq!(resumed.policy.draw, if how == Resume::Retrace { first } else { take_over }, "{params} {how:?}");
                // The checkpoint taken after 6 results, then the seventh replayed; a policy
                // without one, or declining it, is fed the whole history instead.
                let restored = (how == Resume::Checkpoint && params == "{}").then_some(6);
                assert_eq!(resumed.policy.restored, restored, "{params} {how:?}");
            }
        }
    }

    #[test]
    fn answers_are_completed_as_the_host_completes_them() {
        /// Scores 1, trains 1 and 2, then trains 3 and scores it in one batch; keeps what
        /// it is told.
        struct Trains(usize, Vec<Evaluation>);
        impl Policy for Trains {
            fn new(_: Settings) -> Result<Self, String> {
                Ok(Trains(0, Vec::new()))
            }
            fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
                self.1.extend(results);
                Ok(())
            }
            fn propose(&mut self, _: Budget) -> Result<Proposal, String> {
                let arch = |i| Arch::from_index(i).map_err(|e| e.to_string());
                self.0 += 1;
                Ok(match self.0 {
                    1 => Proposal::Evaluate(vec![Candidate::score(arch(1)?)]),
                    2 => Proposal::Evaluate(vec![Candidate::train(arch(1)?, None), Candidate::train(arch(2)?, Some(3))]),
                    3 => Proposal::Evaluate(vec![Candidate::train(arch(3)?, None), Candidate::score(arch(3)?)]),
                    _ => Proposal::Done,
                })
            }
        }
        let run = Host::nb201(2, 3)
            .run::<Trains>(|c| match c.arch().map(|a| a.index()) {
                Some(2) if c.fidelity.is_train() => failed(c, "diverged"),
                Some(_) if c.fidelity.is_train() => trained(c, 0.5),
                Some(3) => scored(c, 4.0, &[("params", 3.0)]),
                _ => scored(c, f64::NAN, &[("params", 7.0)]),
            })
            .unwrap();
        let told = &run.policy.1;
        let [score, ran, diverged, later, _] = &told[..] else { panic!("{told:?}") };
        assert_eq!(score.error.as_deref(), Some("the score (aggregate) is not finite for this network"));
        assert_eq!(score.measure("params"), Some(7.0), "the measures are kept");
        assert_eq!((&ran.candidate.fidelity, ran.epochs), (&Fidelity::Train(crate::Training { epochs: Some(1) }), Some(1)));
        assert_eq!((&diverged.candidate.fidelity, diverged.epochs), (&Fidelity::Train(crate::Training { epochs: None }), None));
        // Scored after its training, in the same batch: told with the score all the same.
        assert_eq!((later.score, later.measure("params")), (Some(4.0), Some(3.0)), "{later:?}");
    }
}
