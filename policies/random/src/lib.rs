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
            epochs: settings.check_epochs(params.epochs)?,
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

#[cfg(test)]
mod tests {
    use knas_policy_sdk::testing::{Finish, Host, Resume, scored, trained};
    use knas_policy_sdk::{Budget, Evaluation};

    use super::*;

    /// Score: the architecture's index; accuracy: the same, scaled to [0, 1).
    fn by_index(candidate: &Candidate) -> Evaluation {
        let index = candidate.arch().map_or(0, |a| a.index()) as f64;
        if candidate.fidelity.is_train() { trained(candidate, index / NUM_ARCHS as f64) } else { scored(candidate, index, &[]) }
    }

    fn top_scored(evaluations: &[Evaluation], k: usize) -> Vec<Arch> {
        let mut scored: Vec<(f64, Arch)> =
            evaluations.iter().filter(|e| e.is_score()).filter_map(|e| Some((e.score?, e.candidate.arch()?))).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, a)| a).collect()
    }

    #[test]
    fn scores_m_distinct_candidates_then_trains_the_k_best() {
        let run = Host::nb201(100, 3).run::<Knas>(by_index).unwrap();
        assert_eq!(run.finish, Some(Finish::BudgetSpent));
        assert_eq!(run.spent(), Budget { scores: 100, trainings: 3 });
        assert_eq!(run.idle_proposals, 0);
        let scored: std::collections::HashSet<Arch> = run.scores().filter_map(|e| e.candidate.arch()).collect();
        assert_eq!(scored.len(), 100, "every candidate scored once");
        let trained: Vec<Arch> = run.trainings().filter_map(|e| e.candidate.arch()).collect();
        assert_eq!(trained, top_scored(&run.evaluations, 3), "the finalists are the three best scores, best first");
        // All scores come before any training (coarse, then fine selection).
        let first_training = run.evaluations.iter().position(|e| e.candidate.fidelity.is_train()).unwrap();
        assert_eq!(first_training, 100);
    }

    #[test]
    fn params_set_m_k_and_the_ranking() {
        let run = Host::nb201(100, 3).params(r#"{"candidates": 20, "top_k": 2, "epochs": 4}"#).run::<Knas>(by_index).unwrap();
        assert_eq!(run.finish, Some(Finish::Done), "done with budget left");
        assert_eq!(run.spent(), Budget { scores: 20, trainings: 2 });
        assert!(run.trainings().all(|e| e.epochs == Some(4)));
        // Ranked by one measure: the finalists are that measure's best, not the score's.
        let reversed = |c: &Candidate| {
            let index = c.arch().map_or(0, |a| a.index()) as f64;
            if c.fidelity.is_train() { trained(c, 0.5) } else { scored(c, index, &[("meco", -index)]) }
        };
        let run = Host::nb201(30, 1).params(r#"{"rank_by": "meco"}"#).run::<Knas>(reversed).unwrap();
        let lowest = run.scores().filter_map(|e| e.candidate.arch()).min_by_key(|a| a.index()).unwrap();
        assert_eq!(run.trainings().filter_map(|e| e.candidate.arch()).collect::<Vec<_>>(), [lowest]);
    }

    #[test]
    fn bad_params_are_named() {
        let err = Host::nb201(10, 1).params(r#"{"top_k": "three"}"#).run::<Knas>(by_index).err().unwrap();
        assert!(err.contains("top_k: invalid type"), "{err}");
        let err = Host::nb201(10, 1).params(r#"{"rank_by": "nope"}"#).run::<Knas>(by_index).err().unwrap();
        assert!(err.contains("rank_by: unknown ranking \"nope\""), "{err}");
    }

    #[test]
    fn a_stopped_run_resumes_by_every_route_without_scoring_twice() {
        // A checkpoint every 20 results, so that the take-over by checkpoint has one to
        // restore before it is told the rest (the SDK's own tests check that route).
        let host = Host::nb201(60, 3).max_batch(8).seed(7).checkpoint_every(20);
        let whole = host.run::<Knas>(by_index).unwrap();
        let stopped = host.run_until::<Knas>(27, by_index).unwrap();
        let retraced = host.resume(stopped, Resume::Retrace, by_index).unwrap();
        assert_eq!(retraced.evaluations, whole.evaluations, "a restart continues as if never stopped");
        for how in [Resume::Checkpoint, Resume::Replay] {
            let stopped = host.run_until::<Knas>(27, by_index).unwrap();
            let kept = stopped.evaluations.clone();
            let resumed = host.resume(stopped, how, by_index).unwrap();
            assert_eq!(resumed.evaluations[..kept.len()], kept[..], "{how:?}");
            assert_eq!(resumed.spent(), Budget { scores: 60, trainings: 3 }, "{how:?}: nothing evaluated twice");
            let trained: Vec<Arch> = resumed.trainings().filter_map(|e| e.candidate.arch()).collect();
            assert_eq!(trained, top_scored(&resumed.evaluations, 3), "{how:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(knas_policy_sdk::testing::fuzz_config())]

        /// Any budget, batch size, seed and parameters, on answers with missing values and
        /// failures: see `Host::run_noisy`.
        #[test]
        fn fuzz_any_run_keeps_the_hosts_rules(
            scores in 0u32..250, trainings in 0u32..6, max_batch in 1u32..20, seed: u64, candidates in 0u32..300, top_k in 0u32..8
        ) {
            let host = Host::nb201(scores, trainings).max_batch(max_batch).seed(seed).params(&format!(r#"{{"candidates": {candidates}, "top_k": {top_k}}}"#));
            let run = host.run_noisy::<Knas>();
            proptest::prop_assert!(run.is_ok(), "{}", run.err().unwrap_or_default());
        }
    }
}
