//! KNAS as the paper runs it (Xu et al., ICML 2021, Algorithm 1): sample M candidates
//! uniformly, score them all with the gradient kernel (coarse selection), then train the
//! k with the highest score (fine selection); the host reports the most accurate.
//!
//! Parameters (all optional):
//! - `candidates`: M, architectures to score (default: the run's score budget);
//! - `top_k`: k, finalists to train (default: the run's training budget).
//!
//! The policy's state is just the set of results it has seen, so a fresh instance fed a
//! run's history continues where the run stopped.

use std::collections::HashSet;

use knas_policy_sdk::nb201::{self, Arch, NUM_ARCHS, Scoreboard};
use knas_policy_sdk::{Budget, Evaluation, Fidelity, Policy, Proposal, Settings, info};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {
    candidates: Option<u32>,
    top_k: Option<u32>,
}

struct Knas {
    candidates: usize,
    top_k: usize,
    max_batch: usize,
    /// Every architecture proposed or seen scored.
    seen: HashSet<Arch>,
    board: Scoreboard,
}

impl Policy for Knas {
    fn new(settings: Settings) -> Result<Self, String> {
        nb201::check_space(&settings.space)?;
        let params: Params = settings.parse_params()?;
        let candidates = params.candidates.unwrap_or(settings.budget.scores).min(NUM_ARCHS) as usize;
        let top_k = params.top_k.unwrap_or(settings.budget.trainings) as usize;
        info(&format!("KNAS: score {candidates} random candidates, train the top {top_k}"));
        Ok(Knas {
            candidates,
            top_k,
            max_batch: settings.max_batch.max(1) as usize,
            seen: HashSet::new(),
            board: Scoreboard::default(),
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        self.seen.extend(results.iter().filter_map(|r| Arch::from_candidate(&r.candidate)));
        self.board.record(&results);
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        // Coarse: score new random architectures until M have been seen.
        let wanted = self.candidates.saturating_sub(self.seen.len()).min(remaining.scores as usize).min(self.max_batch);
        if wanted > 0 {
            let mut batch = Vec::with_capacity(wanted);
            while batch.len() < wanted {
                let arch = Arch::random();
                if self.seen.insert(arch) {
                    batch.push(arch.candidate(Fidelity::Score));
                }
            }
            return Ok(Proposal::Evaluate(batch));
        }
        // Fine: train the finalists not trained yet.
        Ok(self.board.train_best(self.top_k, &remaining, self.max_batch))
    }
}

knas_policy_sdk::register_policy!(Knas);
