//! Regularized (aging) evolution (Real et al., AAAI 2019) on training-free fitness, then
//! training of the fittest few.
//!
//! A population of `population` architectures is seeded at random. Each step samples
//! `sample` members uniformly, mutates the fittest of them (one edge gets a different op)
//! and scores the child; the child joins the population and the *oldest* member leaves.
//! When the score budget is spent, the `top_k` fittest architectures of the whole archive
//! are trained.
//!
//! Fitness is `rank_by`: the run's `score` (default: the rank aggregate, anchored in the
//! experiment's reference sample, so a member's fitness never changes), `aggregate`
//! (AZ-NAS's aggregate of the measures' ranks among every architecture scored so far,
//! recomputed as the archive grows) or one measure. Architectures over `max_params` or
//! `max_flops` (known once scored) are never parents or finalists.
//!
//! Parameters: `population` (20), `sample` (5), `children` per step (1), `top_k`
//! (default: the run's training budget), `rank_by` (`score`), `max_params`, `max_flops`,
//! `epochs` (the run's). The population is the last `population` scored architectures in
//! order, so a fresh instance fed a run's history rebuilds it exactly.

use std::collections::VecDeque;

use knas_policy_sdk::archive::{Archive, Entry, Ranking};
use knas_policy_sdk::nb201::{self, Arch, NUM_ARCHS};
use knas_policy_sdk::{Budget, Candidate, Evaluation, Fidelity, Policy, Proposal, Settings, info, random};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    population: u32,
    sample: u32,
    children: u32,
    top_k: Option<u32>,
    rank_by: Option<String>,
    max_params: Option<u64>,
    max_flops: Option<u64>,
    epochs: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            population: 20,
            sample: 5,
            children: 1,
            top_k: None,
            rank_by: None,
            max_params: None,
            max_flops: None,
            epochs: None,
        }
    }
}

/// The parts of the state a checkpoint keeps.
#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    archive: Archive,
    population: VecDeque<Arch>,
}

struct Evolution {
    population_size: usize,
    sample_size: usize,
    children: usize,
    top_k: usize,
    ranking: Ranking,
    max_params: Option<u64>,
    max_flops: Option<u64>,
    epochs: Option<u32>,
    max_batch: usize,
    /// Members, oldest first.
    population: VecDeque<Arch>,
    archive: Archive,
}

impl Evolution {
    fn within_limits(&self, entry: &Entry) -> bool {
        self.max_params.is_none_or(|max| entry.params.is_none_or(|p| p <= max))
            && self.max_flops.is_none_or(|max| entry.flops.is_none_or(|f| f <= max))
    }

    /// Tournament selection of a parent and one mutation, retried until the child is new:
    /// a child already scored would be answered from the host's store for free, and a
    /// converged population could then loop forever without spending budget. After many
    /// failed tries (every neighbour of the population known, or no member within the
    /// limits) a random new architecture keeps the search moving.
    fn children(&self, count: usize) -> Vec<Arch> {
        let keys = self.archive.keys(&self.ranking);
        let fitness = |arch: &Arch| {
            let entry = self.archive.get(arch);
            match entry {
                Some(e) if self.within_limits(e) => keys[e.order],
                _ => f64::NEG_INFINITY,
            }
        };
        let members: Vec<Arch> = self.population.iter().copied().collect();
        let mut batch: Vec<Arch> = Vec::with_capacity(count);
        let is_new = |arch: &Arch, batch: &[Arch]| !self.archive.is_scored(arch) && !batch.contains(arch);
        while batch.len() < count {
            let child = (0..1000)
                .filter_map(|_| {
                    let parent = (0..self.sample_size)
                        .map(|_| members[random::below(members.len() as u64) as usize])
                        .max_by(|a, b| fitness(a).total_cmp(&fitness(b)))
                        .expect("sample size is at least 1");
                    // The fittest of a sample that is all over the limits is no parent.
                    let eligible = self.archive.get(&parent).is_none_or(|e| self.within_limits(e));
                    eligible.then(|| parent.mutate(&mut random::rng()))
                })
                .find(|child| is_new(child, &batch))
                .unwrap_or_else(|| random_new(|a| is_new(a, &batch)));
            batch.push(child);
        }
        batch
    }
}

impl Policy for Evolution {
    fn new(settings: Settings) -> Result<Self, String> {
        nb201::check_space(&settings.space)?;
        let p: Params = settings.parse_params()?;
        if p.population == 0 || p.sample == 0 || p.sample > p.population || p.children == 0 {
            return Err(format!(
                "need 1 <= sample ({}) <= population ({}) and children ({}) >= 1",
                p.sample, p.population, p.children
            ));
        }
        let ranking = Ranking::named(p.rank_by.as_deref(), &settings).map_err(|e| format!("rank_by: {e}"))?;
        let top_k = p.top_k.unwrap_or(settings.budget.trainings) as usize;
        info(&format!(
            "regularized evolution: population {}, sample {}, fitness {ranking:?}, then train the top {top_k}",
            p.population, p.sample
        ));
        Ok(Evolution {
            population_size: p.population as usize,
            sample_size: p.sample as usize,
            children: p.children as usize,
            top_k,
            ranking,
            max_params: p.max_params,
            max_flops: p.max_flops,
            epochs: settings.check_epochs(p.epochs)?,
            max_batch: settings.max_batch.max(1) as usize,
            population: VecDeque::new(),
            archive: Archive::new(),
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        for result in &results {
            let Some(arch) = result.candidate.arch() else { continue };
            if result.candidate.fidelity == Fidelity::Score && !self.archive.is_scored(&arch) {
                self.population.push_back(arch);
                if self.population.len() > self.population_size {
                    self.population.pop_front();
                }
            }
        }
        self.archive.record(&results);
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        // Never more new architectures than are left unscored: the draws below look for new
        // ones until they find them.
        let room = (remaining.scores as usize).min(self.max_batch).min(NUM_ARCHS.saturating_sub(self.archive.scored()));
        if room > 0 {
            let batch = if self.population.len() < self.population_size {
                // Seed the population with random architectures not scored yet.
                let missing = (self.population_size - self.population.len()).min(room);
                let mut batch = Vec::with_capacity(missing);
                while batch.len() < missing {
                    let arch = random_new(|a| !self.archive.is_scored(a) && !batch.contains(a));
                    batch.push(arch);
                }
                batch
            } else {
                self.children(self.children.min(room))
            };
            return Ok(Proposal::Evaluate(batch.into_iter().map(Candidate::score).collect()));
        }
        // As `Archive::train_best`, within the limits: a finalist needs a value to rank by.
        let keys = self.archive.keys(&self.ranking);
        let finalists: Vec<Arch> = self.archive.top(self.top_k, &self.ranking, |e| self.within_limits(e) && keys[e.order] > f64::NEG_INFINITY);
        let batch: Vec<Candidate> = finalists
            .into_iter()
            .filter(|a| !self.archive.get(a).is_some_and(|e| e.trained))
            .take((remaining.trainings as usize).min(self.max_batch))
            .map(|a| Candidate::train(a, self.epochs))
            .collect();
        Ok(if batch.is_empty() { Proposal::Done } else { Proposal::Evaluate(batch) })
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, String> {
        let state = State { archive: self.archive.clone(), population: self.population.clone() };
        serde_json::to_vec(&state).map(Some).map_err(|e| e.to_string())
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let state: State = serde_json::from_slice(state).map_err(|e| format!("unreadable checkpoint: {e}"))?;
        self.archive = state.archive;
        self.population = state.population;
        Ok(())
    }
}

/// A uniformly random architecture satisfying `is_new`.
fn random_new(is_new: impl Fn(&Arch) -> bool) -> Arch {
    loop {
        let arch = Arch::random(&mut random::rng());
        if is_new(&arch) {
            return arch;
        }
    }
}

knas_policy_sdk::register_policy!(Evolution);

#[cfg(test)]
mod tests {
    use knas_policy_sdk::nb201::Op;
    use knas_policy_sdk::testing::{Finish, Host, Resume, scored, trained};

    use super::*;

    /// A smooth landscape: the score counts the edges that hold `target`'s op; size grows
    /// with the convolutions; accuracy follows the score.
    fn matches(target: Arch) -> impl Fn(&Candidate) -> Evaluation {
        move |candidate| {
            let Some(arch) = candidate.arch() else { return scored(candidate, f64::NAN, &[]) };
            let hits = arch.ops().iter().zip(target.ops()).filter(|(a, b)| a == b).count() as f64;
            if candidate.fidelity.is_train() {
                return trained(candidate, 0.9 + hits / 100.0);
            }
            let convs = arch.ops().iter().filter(|op| matches!(op, Op::Conv1x1 | Op::Conv3x3)).count() as u64;
            Evaluation { params: Some(1_000 * convs), ..scored(candidate, hits, &[]) }
        }
    }

    fn best_score(evaluations: &[Evaluation]) -> f64 {
        evaluations.iter().filter_map(|e| e.score).fold(f64::NEG_INFINITY, f64::max)
    }

    #[test]
    fn climbs_a_smooth_landscape_that_random_sampling_does_not() {
        let target = Arch::from_index(11_318).unwrap();
        let mut found = 0;
        for seed in 0..5 {
            let host = Host::nb201(150, 3).seed(seed);
            let run = host.run::<Evolution>(matches(target)).unwrap();
            assert_eq!(run.finish, Some(Finish::BudgetSpent), "seed {seed}");
            assert_eq!(run.spent(), knas_policy_sdk::Budget { scores: 150, trainings: 3 }, "seed {seed}");
            assert_eq!(run.idle_proposals, 0, "seed {seed}: no proposal without something new");
            // The first 20 scores seed the population at random; a random architecture
            // matches 5 of 6 edges once in 625 draws.
            assert!(best_score(&run.evaluations[..20]) < 5.0, "seed {seed}");
            let best = best_score(&run.evaluations);
            assert!(best >= 5.0, "seed {seed}: best {best}");
            found += usize::from(best == 6.0);
            assert_eq!(run.winner().and_then(|w| w.score), Some(best), "seed {seed}: a finalist holds the best score");
        }
        assert!(found >= 4, "the optimum found on {found} of 5 seeds");
    }

    #[test]
    fn limits_keep_large_networks_out_of_parents_and_finalists() {
        // The target has four convolutions; at most two are allowed.
        let target = Arch::from_index(11_318).unwrap();
        let run = Host::nb201(150, 3).params(r#"{"max_params": 2000}"#).run::<Evolution>(matches(target)).unwrap();
        let trained: Vec<&Evaluation> = run.trainings().collect();
        assert_eq!(trained.len(), 3);
        assert!(trained.iter().all(|e| e.params.is_some_and(|p| p <= 2_000)), "{trained:?}");
        let best_within = run.scores().filter(|e| e.params.is_some_and(|p| p <= 2_000)).filter_map(|e| e.score).fold(0.0, f64::max);
        assert_eq!(trained[0].score, Some(best_within), "the first finalist is the best within the limit");
        // Parents come from within the limit, and a child differs from its parent on one
        // edge: no child has more than three convolutions.
        let children: Vec<Option<u64>> = run.scores().skip(20).map(|e| e.params).collect();
        assert!(children.iter().all(|p| p.is_some_and(|p| p <= 3_000)), "{children:?}");
    }

    #[test]
    fn a_history_rebuilds_the_population_and_a_stopped_run_resumes_by_every_route() {
        let target = Arch::from_index(4_242).unwrap();
        // A checkpoint every 20 results, so that the take-over by checkpoint has one to
        // restore before it is told the rest (the SDK's own tests check that route).
        let host = Host::nb201(80, 2).max_batch(4).seed(3).checkpoint_every(20);
        let whole = host.run::<Evolution>(matches(target)).unwrap();

        let stopped = host.run_until::<Evolution>(45, matches(target)).unwrap();
        let mut fed = Evolution::new(host.settings().clone()).unwrap();
        fed.observe(stopped.evaluations.clone()).unwrap();
        assert_eq!(fed.population, stopped.policy.population, "the last 20 scored, oldest first");
        assert_eq!(fed.archive, stopped.policy.archive);

        let retraced = host.resume(stopped, Resume::Retrace, matches(target)).unwrap();
        assert_eq!(retraced.evaluations, whole.evaluations, "a restart continues as if never stopped");
        for how in [Resume::Checkpoint, Resume::Replay] {
            let stopped = host.run_until::<Evolution>(45, matches(target)).unwrap();
            let resumed = host.resume(stopped, how, matches(target)).unwrap();
            assert_eq!(resumed.spent(), knas_policy_sdk::Budget { scores: 80, trainings: 2 }, "{how:?}: nothing evaluated twice");
            assert_eq!(resumed.idle_proposals, 0, "{how:?}");
        }
    }

    #[test]
    fn ranked_by_a_measure_only_architectures_with_a_value_are_finalists() {
        // Only one architecture in seven has the measure: the rest rank nowhere.
        let with_meco = |c: &Candidate| {
            let Some(arch) = c.arch() else { return scored(c, f64::NAN, &[]) };
            if c.fidelity.is_train() {
                return trained(c, 0.5);
            }
            let meco = if arch.index() % 7 == 0 { arch.index() as f64 } else { f64::NAN };
            scored(c, 1.0, &[("meco", meco)])
        };
        let run = Host::nb201(5, 3).params(r#"{"population": 5, "sample": 2, "rank_by": "meco"}"#).run::<Evolution>(with_meco).unwrap();
        let valued = run.scores().filter(|e| e.measure("meco").is_some()).count();
        let trained: Vec<usize> = run.trainings().filter_map(|e| e.candidate.arch()).map(|a| a.index()).collect();
        assert_eq!(trained.len(), valued.min(3), "{trained:?}");
        assert!(trained.iter().all(|i| i % 7 == 0), "{trained:?}");
    }

    #[test]
    fn bad_params_are_named() {
        let err = Host::nb201(10, 1).params(r#"{"population": 4, "sample": 5}"#).run::<Evolution>(matches(Arch::from_index(0).unwrap()));
        assert!(err.err().unwrap().contains("need 1 <= sample (5) <= population (4)"));
        let err = Host::nb201(10, 1).params(r#"{"max_params": -1}"#).run::<Evolution>(matches(Arch::from_index(0).unwrap()));
        assert!(err.err().unwrap().contains("max_params: invalid value"));
    }

    proptest::proptest! {
        #![proptest_config(knas_policy_sdk::testing::fuzz_config())]

        /// Any budget, batch size, seed and parameters, on answers with missing values and
        /// failures: see `Host::run_noisy`.
        #[test]
        fn fuzz_any_run_keeps_the_hosts_rules(
            scores in 0u32..250, trainings in 0u32..6, max_batch in 1u32..20, seed: u64, population in 1u32..30, sample in 1u32..30, children in 1u32..4
        ) {
            let host = Host::nb201(scores, trainings).max_batch(max_batch).seed(seed).params(&format!(r#"{{"population": {population}, "sample": {}, "children": {children}}}"#, sample.min(population)));
            let run = host.run_noisy::<Evolution>();
            proptest::prop_assert!(run.is_ok(), "{}", run.err().unwrap_or_default());
        }
    }
}
