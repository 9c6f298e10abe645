//! KNAS as the paper runs it (Xu et al., ICML 2021, Algorithm 1): sample M candidates
//! uniformly, score them all at initialisation (coarse selection), then train the k best
//! by score (fine selection); the host reports the most accurate.
//!
//! Parameters (all optional):
//! - `candidates`: M, architectures to score (default: the run's score budget);
//! - `top_k`: k, finalists to train (default: the run's training budget);
//! - `rank_by`: how finalists are chosen: `score` (the run's score, by default the rank
//!   aggregate anchored in the experiment's reference sample), `aggregate` (AZ-NAS's
//!   aggregate of the run's measures, ranked among the candidates), or a measure's name;
//! - `epochs`: epochs of each training (default: the run's).
//!
//! The policy's state is the archive of results, so a fresh instance fed a run's history
//! (or restored from its checkpoint) continues where the run stopped.

use knas_policy_sdk::archive::{Archive, Ranking};
use knas_policy_sdk::nb201::{self, Arch, NUM_ARCHS};
use knas_policy_sdk::{Budget, Candidate, Evaluation, Policy, Proposal, Settings, info, random};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {
    candidates: Option<u32>,
    top_k: Option<u32>,
    rank_by: Option<String>,
    epochs: Option<u32>,
}

struct Knas {
    candidates: usize,
    top_k: usize,
    ranking: Ranking,
    epochs: Option<u32>,
    max_batch: usize,
    archive: Archive,
    /// Proposed, not answered yet (so a batch never repeats itself).
    pending: Vec<Arch>,
}

impl Policy for Knas {
    fn new(settings: Settings) -> Result<Self, String> {
        nb201::check_space(&settings.space)?;
        let params: Params = settings.parse_params()?;
        let candidates = params.candidates.unwrap_or(settings.budget.scores).min(NUM_ARCHS as u32) as usize;
        let top_k = params.top_k.unwrap_or(settings.budget.trainings) as usize;
        let ranking = Ranking::named(params.rank_by.as_deref(), &settings).map_err(|e| format!("rank_by: {e}"))?;
        info(&format!("KNAS: score {candidates} random candidates, train the top {top_k} by {ranking:?}"));
        Ok(Knas {
            candidates,
            top_k,
            ranking,
            epochs: params.epochs,
            max_batch: settings.max_batch.max(1) as usize,
            archive: Archive::new(),
            pending: Vec::new(),
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        self.archive.record(&results);
        self.pending.clear();
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        // Coarse: score new random architectures until M have been seen.
        let wanted = self.candidates.saturating_sub(self.archive.scored()).min(remaining.scores as usize).min(self.max_batch);
        if wanted > 0 {
            while self.pending.len() < wanted {
                let arch = Arch::random(&mut random::rng());
                if !self.archive.is_scored(&arch) && !self.pending.contains(&arch) {
                    self.pending.push(arch);
                }
            }
            return Ok(Proposal::Evaluate(self.pending.iter().map(|&a| Candidate::score(a)).collect()));
        }
        // Fine: train the finalists not trained yet.
        Ok(self.archive.train_best(self.top_k, &self.ranking, &remaining, self.max_batch, self.epochs))
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(Some(self.archive.to_bytes()))
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.archive = Archive::from_bytes(state)?;
        Ok(())
    }
}

knas_policy_sdk::register_policy!(Knas);
