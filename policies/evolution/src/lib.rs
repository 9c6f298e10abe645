//! Regularized (aging) evolution (Real et al., AAAI 2019) with the gradient-kernel score as
//! fitness, then training of the fittest few.
//!
//! A population of `population` architectures is seeded at random. Each step samples
//! `sample` members uniformly, mutates the fittest of them (one edge gets a different
//! op) and scores the child; the child joins the population and the *oldest* member
//! leaves. When the score budget is spent, the `top_k` best-scored architectures seen are
//! trained.
//!
//! Parameters (NAS-Bench-201's defaults): `population` 10, `sample` 3, `top_k` (default:
//! the run's training budget), `children` per step 1.
//!
//! The population is the last `population` scored architectures in order, so a fresh
//! instance fed a run's history rebuilds it exactly.

use std::collections::VecDeque;

use knas_policy_sdk::nb201::{self, Arch, NUM_ARCHS, Scoreboard};
use knas_policy_sdk::{Budget, Evaluation, Fidelity, Policy, Proposal, Settings, info, random};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    population: u32,
    sample: u32,
    top_k: Option<u32>,
    children: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params { population: 10, sample: 3, top_k: None, children: 1 }
    }
}

struct Evolution {
    population_size: usize,
    sample_size: usize,
    children: usize,
    top_k: usize,
    max_batch: usize,
    /// Members, oldest first, with their fitness.
    population: VecDeque<(Arch, f64)>,
    /// Every score seen in the run.
    board: Scoreboard,
}

impl Evolution {
    /// Tournament selection of a parent and one mutation, retried until the child is new:
    /// a child already scored would be answered from the host's store for free, and a
    /// converged population could then loop forever without spending budget. After many
    /// failed tries (every neighbour of the population known) a random new architecture
    /// keeps the search moving.
    fn child(&self, taken: &[Arch]) -> Arch {
        let is_new = |arch: &Arch| self.board.score(arch).is_none() && !taken.contains(arch);
        for _ in 0..1000 {
            let parent = (0..self.sample_size)
                .map(|_| self.population[random::below(self.population.len() as u64) as usize])
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("sample size is at least 1");
            let child = parent.0.mutate();
            if is_new(&child) {
                return child;
            }
        }
        random_new(is_new)
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
        let top_k = p.top_k.unwrap_or(settings.budget.trainings) as usize;
        info(&format!("regularized evolution: population {}, sample {}, then train the top {top_k}", p.population, p.sample));
        Ok(Evolution {
            population_size: p.population as usize,
            sample_size: p.sample as usize,
            children: p.children as usize,
            top_k,
            max_batch: settings.max_batch.max(1) as usize,
            population: VecDeque::new(),
            board: Scoreboard::default(),
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        self.board.record(&results);
        for result in results.iter().filter(|r| r.candidate.fidelity == Fidelity::Score) {
            let Some(arch) = Arch::from_candidate(&result.candidate) else { continue };
            // A failed evaluation is the worst possible fitness.
            self.population.push_back((arch, result.score.unwrap_or(f64::NEG_INFINITY)));
            if self.population.len() > self.population_size {
                self.population.pop_front();
            }
        }
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        let room = (remaining.scores as usize).min(self.max_batch);
        // (Once every architecture is scored there is nothing new to propose.)
        if room > 0 && self.board.scored() < NUM_ARCHS as usize {
            let mut batch: Vec<Arch> = Vec::new();
            if self.population.len() < self.population_size {
                // Seed the population with random architectures not scored yet.
                let missing = (self.population_size - self.population.len()).min(room);
                while batch.len() < missing {
                    let arch = random_new(|a| self.board.score(a).is_none() && !batch.contains(a));
                    batch.push(arch);
                }
            } else {
                while batch.len() < self.children.min(room) {
                    let child = self.child(&batch);
                    batch.push(child);
                }
            }
            return Ok(Proposal::Evaluate(batch.into_iter().map(|a| a.candidate(Fidelity::Score)).collect()));
        }
        Ok(self.board.train_best(self.top_k, &remaining, self.max_batch))
    }
}

/// A uniformly random architecture satisfying `is_new`.
fn random_new(is_new: impl Fn(&Arch) -> bool) -> Arch {
    loop {
        let arch = Arch::random();
        if is_new(&arch) {
            return arch;
        }
    }
}

knas_policy_sdk::register_policy!(Evolution);
