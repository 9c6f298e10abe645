//! Supernet pruning with the gradient kernel: the TE-NAS procedure (Chen et al., ICLR
//! 2021, §3.3) with MGM as the measure of an operation's importance.
//!
//! Start from the supernet with every operation on every edge (an edge sums its ops).
//! Each round scores the current supernet and, for every op on every edge that still has
//! a choice, the supernet without that op. An op's importance is how much the score drops
//! without it; on each edge, the least important op is pruned. When one op per edge is
//! left, that architecture is trained.
//!
//! Parameters: none. The procedure is deterministic, so a fresh instance fed a run's
//! history retraces it exactly and re-proposes nothing the run already scored.

use std::collections::HashMap;

use knas_policy_sdk::nb201::{self, Arch, Supernet};
use knas_policy_sdk::{Budget, Candidate, Evaluation, Fidelity, Policy, Proposal, Settings, info, warn};

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {}

struct Pruning {
    max_batch: usize,
    /// The supernet being pruned.
    current: Supernet,
    round: usize,
    /// Every supernet score seen, by edge op sets.
    scores: HashMap<Vec<Vec<u32>>, f64>,
    trained: bool,
}

impl Pruning {
    /// Candidates this round needs: the current supernet and every one-op removal.
    fn round_candidates(&self) -> Vec<Supernet> {
        let mut nets = vec![self.current.clone()];
        for (edge, ops) in self.current.0.iter().enumerate() {
            if ops.len() > 1 {
                nets.extend(ops.iter().map(|&op| self.current.without(edge, op)));
            }
        }
        nets
    }

    fn score(&self, net: &Supernet) -> Option<f64> {
        self.scores.get(&net.0.to_vec()).copied()
    }

    /// Prunes, on every edge with a choice, the op whose removal lowers the score least.
    /// Unscored removals (budget ran out) count as the worst, so they are kept.
    fn prune(&mut self) {
        let base = self.score(&self.current).unwrap_or(0.0);
        let mut next = self.current.clone();
        for (edge, ops) in self.current.0.iter().enumerate() {
            if ops.len() <= 1 {
                continue;
            }
            let importance = |op: u32| base - self.score(&self.current.without(edge, op)).unwrap_or(f64::NEG_INFINITY);
            let least = ops
                .iter()
                .copied()
                .min_by(|&a, &b| importance(a).total_cmp(&importance(b)).then(a.cmp(&b)))
                .expect("edge has ops");
            next = next.without(edge, least);
        }
        self.current = next;
        self.round += 1;
        info(&format!("pruning round {}: {:?}", self.round, self.current.0.iter().map(Vec::len).collect::<Vec<_>>()));
    }

    fn finished(&self) -> Option<Arch> {
        self.current.to_arch()
    }
}

impl Policy for Pruning {
    fn new(settings: Settings) -> Result<Self, String> {
        nb201::check_space(&settings.space)?;
        let _: Params = settings.parse_params()?;
        Ok(Pruning {
            max_batch: settings.max_batch.max(1) as usize,
            current: Supernet::full(),
            round: 0,
            scores: HashMap::new(),
            trained: false,
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        for result in results {
            match result.candidate.fidelity {
                Fidelity::Score => {
                    self.scores.insert(result.candidate.ops, result.score.unwrap_or(0.0));
                }
                Fidelity::Train => self.trained = true,
            }
        }
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        loop {
            if let Some(arch) = self.finished() {
                if self.trained || remaining.trainings == 0 {
                    return Ok(Proposal::Done);
                }
                return Ok(Proposal::Evaluate(vec![arch.candidate(Fidelity::Train)]));
            }
            let missing: Vec<Candidate> = self
                .round_candidates()
                .into_iter()
                .filter(|net| self.score(net).is_none())
                .map(|net| net.candidate(Fidelity::Score))
                .collect();
            if missing.is_empty() {
                // Everything this round needs is known (also when replaying history).
                self.prune();
                continue;
            }
            if remaining.scores == 0 {
                warn("score budget spent before pruning finished: pruning on what was measured");
                self.prune();
                continue;
            }
            let take = missing.len().min(self.max_batch).min(remaining.scores as usize);
            return Ok(Proposal::Evaluate(missing.into_iter().take(take).collect()));
        }
    }
}

knas_policy_sdk::register_policy!(Pruning);
