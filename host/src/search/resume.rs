//! Bringing a fresh policy instance up to date with a run, in bounded calls.
//!
//! On a restart of a run whose whole history this very module wrote, the instance is
//! *re-executed*: initialised with the run's seed and asked to propose again, each proposal
//! answered from the store, until it proposes something new — so a resumed run goes on
//! exactly as an uninterrupted one would (same seed, same answers, same proposals).
//! Otherwise (a hot swap, a history written by other modules) it is restored from its
//! checkpoint, if it keeps one, and fed the rest of the history through `observe` in
//! chunks of [`REPLAY_CHUNK`]. Either way, candidates already in the store are never
//! evaluated again.

use super::{NO_PROGRESS_LIMIT, Pending, Search, SearchError, SearchObserver, observation, timed};
use crate::policy::{PolicyError, PolicyInstance, PolicyModule, PolicyRuntime, RawProposal, validate};
use crate::run::{Budget, Fidelity, Observation};
use crate::store::{EvaluationRecord, RunStore};

/// Results per `observe` call when a fresh instance is fed a run's history: each call
/// stays well inside the per-call limits however long the history.
pub const REPLAY_CHUNK: usize = 256;

/// New results between two checkpoints of a policy that keeps them.
pub const CHECKPOINT_EVERY: i64 = 256;

/// What a run's length is multiplied by, then xored with the run's seed, to seed an
/// instance that takes the run over by checkpoint or replay.
pub const TAKE_OVER_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The largest checkpoint kept; a bigger one is ignored (with a warning), and the history
/// is replayed instead.
pub const MAX_CHECKPOINT_BYTES: usize = 16 << 20;

impl Search {
    /// A new instance of `module`, initialised and brought up to date (see the module
    /// documentation): re-executed over a history it wrote itself, or restored from the
    /// run's checkpoint and fed what was recorded since, or fed the whole history — in
    /// bounded calls every way. Also what a re-executed instance proposed that is not
    /// recorded yet.
    pub(super) fn fresh_instance(
        &self,
        store: &RunStore,
        runtime: &PolicyRuntime,
        module: &PolicyModule,
        observer: &mut dyn SearchObserver,
    ) -> Result<(PolicyInstance, Option<Pending>), SearchError> {
        let history = store.evaluations(self.run.id)?;
        let settings = self.settings();
        let label = module.label();
        if history.iter().all(|r| r.policy == label) {
            // The seed the run started with: the instance retraces the run's own steps.
            let mut instance = timed(observer, "instantiate", || runtime.instantiate(module, self.run.experiment.seed, self.limits))?;
            timed(observer, "init", || instance.init(&settings))?;
            let pending = if history.is_empty() { None } else { self.reexecute(store, &mut instance, &history, observer)? };
            return Ok((instance, pending));
        }
        // Seeded by the run's seed and how far the run got: a history written by other
        // modules cannot be retraced, so the new instance gets a stream of its own.
        let seed = self.run.experiment.seed ^ (history.len() as u64).wrapping_mul(TAKE_OVER_SEED);
        if let Some((seq, written_by, state)) = store.checkpoint(self.run.id)? {
            let mut instance = timed(observer, "instantiate", || runtime.instantiate(module, seed, self.limits))?;
            timed(observer, "init", || instance.init(&settings))?;
            if instance.checkpoints() {
                match timed(observer, "restore", || instance.restore(&state)) {
                    Ok(()) => {
                        let since: Vec<&EvaluationRecord> = history.iter().filter(|r| r.seq > seq).collect();
                        tracing::info!(run = %self.run.name, seq, %written_by, replayed = since.len(), "policy restored from its checkpoint");
                        self.replay(store, &mut instance, &since, observer)?;
                        return Ok((instance, None));
                    }
                    // The policy declined (e.g. a new version with another state format).
                    Err(PolicyError::Guest { message, .. }) => {
                        tracing::warn!(run = %self.run.name, "the policy declined its checkpoint ({message}); replaying the whole history");
                    }
                    // A trap, a panic or a limit: the checkpoint may be another module's
                    // state. Failing here would fail the run on every restart, while the
                    // history can still bring a fresh instance up to date.
                    Err(error) => {
                        tracing::warn!(run = %self.run.name, %written_by, "restoring the checkpoint failed ({error}); replaying the whole history");
                    }
                }
            }
        }
        let mut instance = timed(observer, "instantiate", || runtime.instantiate(module, seed, self.limits))?;
        timed(observer, "init", || instance.init(&settings))?;
        self.replay(store, &mut instance, &history.iter().collect::<Vec<_>>(), observer)?;
        Ok((instance, None))
    }

    /// Asks a fresh instance to propose again over a history it wrote, answering each
    /// proposal from the store and telling it the answers as the run once did, until it
    /// proposes something not recorded (returned, to be carried out by the next step) or
    /// answers `done`. Should it stop retracing the history (it was resumed differently
    /// once), whatever it was not told is fed to it in bounded chunks first.
    fn reexecute(
        &self,
        store: &RunStore,
        instance: &mut PolicyInstance,
        history: &[EvaluationRecord],
        observer: &mut dyn SearchObserver,
    ) -> Result<Option<Pending>, SearchError> {
        let budget = self.run.search.budget;
        let mut told = std::collections::HashSet::new();
        let mut spent = Budget::default();
        // A run never made more proposals than this: each brought something new, or was
        // one of fewer than NO_PROGRESS_LIMIT in a row that did not.
        let most = (history.len() + 1) * NO_PROGRESS_LIMIT as usize;
        let mut pending = None;
        // Proposals in a row that told the policy nothing new: a live run would have been
        // ended after NO_PROGRESS_LIMIT of them, so more means it no longer retraces the run.
        let mut stale = 0;
        for _ in 0..most {
            if stale >= NO_PROGRESS_LIMIT {
                break;
            }
            let remaining = Budget { scores: budget.scores.saturating_sub(spent.scores), trainings: budget.trainings.saturating_sub(spent.trainings) };
            if remaining == Budget::default() {
                break;
            }
            let requests = match timed(observer, "propose", || instance.propose(remaining))? {
                RawProposal::Done => {
                    pending = Some(Pending::Done);
                    break;
                }
                RawProposal::Evaluate(raw) => validate(&raw, self.run.search.max_batch, self.max_epochs())
                    .map_err(|problem| PolicyError::InvalidProposal { policy: instance.label().to_owned(), problem })?,
            };
            let answers: Option<Vec<EvaluationRecord>> =
                requests.iter().map(|r| store.find(self.run.id, &r.candidate, r.fidelity)).collect::<Result<_, _>>()?;
            let Some(answers) = answers else {
                pending = Some(Pending::Evaluate { requests, checked: false });
                break;
            };
            stale += 1;
            for record in &answers {
                if told.insert(record.seq) {
                    stale = 0;
                    match record.fidelity {
                        Fidelity::Score => spent.scores += 1,
                        Fidelity::Train => spent.trainings += 1,
                    }
                }
            }
            let observations: Vec<Observation> = answers.iter().map(|r| observation(store, self.run.id, r)).collect::<Result<_, _>>()?;
            timed(observer, "observe", || instance.observe(&observations))?;
        }
        // Recorded but never told, leaving out what the pending proposal will report (a batch
        // the run was stopped in the middle of).
        let in_pending = |r: &EvaluationRecord| match &pending {
            Some(Pending::Evaluate { requests, .. }) => requests.iter().any(|q| q.candidate == r.candidate && q.fidelity == r.fidelity),
            _ => false,
        };
        if history.iter().all(|r| told.contains(&r.seq) || in_pending(r)) {
            return Ok(pending);
        }
        // It did not retrace the run (resumed differently once): its proposal was made
        // without knowing everything recorded, so it is dropped and asked for again.
        let untold: Vec<&EvaluationRecord> = history.iter().filter(|r| !told.contains(&r.seq)).collect();
        tracing::info!(run = %self.run.name, untold = untold.len(), "the policy did not retrace the whole history; the rest is replayed");
        self.replay(store, instance, &untold, observer)?;
        Ok(None)
    }

    /// Feeds `records` to `instance`, oldest first, [`REPLAY_CHUNK`] per call.
    fn replay(
        &self,
        store: &RunStore,
        instance: &mut PolicyInstance,
        records: &[&EvaluationRecord],
        observer: &mut dyn SearchObserver,
    ) -> Result<(), SearchError> {
        for chunk in records.chunks(REPLAY_CHUNK) {
            let observations: Vec<Observation> = chunk.iter().map(|r| observation(store, self.run.id, r)).collect::<Result<_, _>>()?;
            timed(observer, "observe", || instance.observe(&observations))?;
        }
        Ok(())
    }

    /// Saves the policy's state when enough has been recorded since its last checkpoint.
    pub(super) fn checkpoint(&mut self, store: &RunStore, observer: &mut dyn SearchObserver) -> Result<(), SearchError> {
        let Some(instance) = self.instance.as_mut() else { return Ok(()) };
        // The last checkpoint's seq comes from the store file: no overflow on a corrupt one.
        if !instance.checkpoints() || self.last_seq.saturating_sub(self.checkpoint_seq) < CHECKPOINT_EVERY {
            return Ok(());
        }
        let label = instance.label().to_owned();
        let answer = match timed(observer, "checkpoint", || instance.checkpoint()) {
            Ok(answer) => answer,
            // A policy that cannot save its state now (it said so) is resumed by replay
            // instead: no reason to end its run. A trap or a limit leaves the instance
            // unusable, and ends it as in any other call.
            Err(error @ PolicyError::Guest { .. }) => {
                tracing::warn!(run = %self.run.name, "{error}; a restart replays the history instead");
                None
            }
            Err(error) => return Err(error.into()),
        };
        match answer {
            Some(state) if state.len() <= MAX_CHECKPOINT_BYTES => {
                store.save_checkpoint(self.run.id, self.last_seq, &label, &state)?;
            }
            Some(state) => tracing::warn!(
                run = %self.run.name, bytes = state.len(), "checkpoint larger than {MAX_CHECKPOINT_BYTES} bytes ignored; a restart replays the history"
            ),
            None => {}
        }
        // Asked again only after as many new results, whatever the answer.
        self.checkpoint_seq = self.last_seq;
        Ok(())
    }
}
