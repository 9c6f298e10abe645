//! A worked example of a knas policy: steepest-ascent hill climbing on the run's score.
//!
//! Start from a random architecture; score all 24 neighbours (each of the 6 edges set to
//! each of the 4 other ops); move to the best neighbour if it beats the current one,
//! otherwise restart from a new random architecture. When the score budget is spent (or
//! every architecture of the space is scored), train the best architecture found.
//!
//! Build it and run it:
//!
//! ```text
//! knas policy build examples/hill-climb --out-dir policies
//! knas search --policy policies/hill-climb.wasm --budget 100 --top-k 1
//! ```
//!
//! Parameters: `restarts_log` (bool, default true) logs each restart.

use knas_policy_sdk::archive::{Archive, Ranking};
use knas_policy_sdk::nb201::{self, Arch};
use knas_policy_sdk::{Budget, Candidate, Evaluation, Policy, Proposal, Settings, info, random};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    restarts_log: bool,
}

impl Default for Params {
    fn default() -> Params {
        Params { restarts_log: true }
    }
}

struct HillClimb {
    params: Params,
    max_batch: usize,
    /// Where the climb stands; `None` until the first start is scored.
    current: Option<Arch>,
    /// Every result seen in the run (including a replayed history).
    archive: Archive,
}

impl HillClimb {
    /// The run's score of `arch`, once scored (−∞ when its score is missing).
    fn score(&self, arch: &Arch) -> Option<f64> {
        self.archive.get(arch).filter(|e| e.scored).map(|e| e.score.unwrap_or(f64::NEG_INFINITY))
    }

    /// A fresh start that has not been scored yet: random, or the first unscored
    /// architecture once random draws keep finding scored ones; `None` when the whole space
    /// is scored.
    fn restart(&mut self) -> Option<Arch> {
        let unscored = |arch: &Arch| !self.archive.is_scored(arch);
        let start = (0..1_000)
            .map(|_| Arch::random(&mut random::rng()))
            .find(unscored)
            .or_else(|| (0..nb201::NUM_ARCHS).filter_map(|i| Arch::from_index(i).ok()).find(unscored))?;
        if self.params.restarts_log {
            info(&format!("restarting from {start}"));
        }
        self.current = Some(start);
        Some(start)
    }
}

impl Policy for HillClimb {
    fn new(settings: Settings) -> Result<Self, String> {
        nb201::check_space(&settings.space)?;
        Ok(HillClimb {
            params: settings.parse_params()?,
            max_batch: settings.max_batch.max(1) as usize,
            current: None,
            archive: Archive::new(),
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        self.archive.record(&results);
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        if remaining.scores > 0 {
            let current = match self.current {
                Some(arch) if self.archive.is_scored(&arch) => arch,
                Some(arch) => return Ok(Proposal::Evaluate(vec![Candidate::score(arch)])),
                None => match self.restart() {
                    Some(start) => return Ok(Proposal::Evaluate(vec![Candidate::score(start)])),
                    None => return self.train(&remaining),
                },
            };
            let unscored: Vec<Arch> = current.neighbours().filter(|n| !self.archive.is_scored(n)).collect();
            if !unscored.is_empty() {
                let take = unscored.len().min(self.max_batch).min(remaining.scores as usize);
                return Ok(Proposal::Evaluate(unscored[..take].iter().map(|&a| Candidate::score(a)).collect()));
            }
            // Every neighbour is known: climb, or restart at a local optimum.
            let here = self.score(&current).unwrap_or(f64::NEG_INFINITY);
            let (best, best_score) = current
                .neighbours()
                .map(|n| (n, self.score(&n).unwrap_or(f64::NEG_INFINITY)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("24 neighbours");
            let next = if best_score > here { Some(best) } else { self.restart() };
            let Some(next) = next else { return self.train(&remaining) };
            self.current = Some(next);
            return self.propose(remaining);
        }
        self.train(&remaining)
    }
}

impl HillClimb {
    /// Trains the best architecture found.
    fn train(&self, remaining: &Budget) -> Result<Proposal, String> {
        Ok(self.archive.train_best(1, &Ranking::Score, remaining, self.max_batch, None))
    }
}

knas_policy_sdk::register_policy!(HillClimb);

/// Unit tests run natively (`cargo test`) against the SDK's simulated host: no wasm
/// build, no networks, a landscape made up for the test.
#[cfg(test)]
mod tests {
    use knas_policy_sdk::testing::{Host, scored, trained};
    use knas_policy_sdk::{Budget, Level};

    use super::*;

    /// The score counts the edges that hold `target`'s op: one peak, no plateau traps.
    fn towards(target: Arch) -> impl Fn(&Candidate) -> Evaluation {
        move |candidate| {
            let arch = candidate.arch().expect("hill climbing proposes single architectures");
            let hits = arch.ops().iter().zip(target.ops()).filter(|(a, b)| a == b).count() as f64;
            if candidate.fidelity.is_train() { trained(candidate, hits / 6.0) } else { scored(candidate, hits, &[]) }
        }
    }

    #[test]
    fn climbs_to_the_peak_and_trains_it() {
        let target = Arch::from_index(9_818).unwrap();
        // At most 6 moves of 24 neighbours each, plus the start.
        let run = Host::nb201(150, 1).run::<HillClimb>(towards(target)).unwrap();
        assert_eq!(run.spent(), Budget { scores: 150, trainings: 1 });
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Some(target));
        assert_eq!(run.idle_proposals, 0);
        // Past the peak every neighbour is worse: it restarts, and says so.
        assert!(run.logged(Level::Info).len() >= 2, "{:?}", run.logs);
    }

    /// Answers with missing values and failed evaluations, on twenty seeds: every run ends
    /// within the host's rules, without an idle proposal.
    #[test]
    fn survives_noisy_answers() {
        for seed in 0..20 {
            Host::nb201(100, 1).max_batch(8).seed(seed).run_noisy::<HillClimb>().unwrap();
        }
    }

    #[test]
    fn restarts_are_logged_only_when_asked() {
        let run = Host::nb201(60, 0).params(r#"{"restarts_log": false}"#).run::<HillClimb>(towards(Arch::from_index(0).unwrap())).unwrap();
        assert!(run.logs.is_empty(), "{:?}", run.logs);
        // A misspelt parameter is named, not ignored.
        let err = Host::nb201(60, 0).params(r#"{"restart_log": false}"#).run::<HillClimb>(towards(Arch::from_index(0).unwrap())).err().unwrap();
        assert!(err.contains("unknown field `restart_log`"), "{err}");
    }

    /// A budget larger than the space: once every architecture is scored, it trains
    /// instead of looking for a new start forever.
    #[test]
    fn a_budget_beyond_the_space_ends_with_the_training() {
        let run = Host::nb201(20_000, 1).max_batch(64).params(r#"{"restarts_log": false}"#).run::<HillClimb>(towards(Arch::from_index(77).unwrap())).unwrap();
        assert_eq!(run.spent(), Budget { scores: nb201::NUM_ARCHS as u32, trainings: 1 });
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Arch::from_index(77).ok());
    }
}
