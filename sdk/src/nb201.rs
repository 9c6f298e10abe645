//! Typed helpers for the NAS-Bench-201 space, the space the knas host searches.
//!
//! A cell has 4 nodes and 6 edges, in this order: `1←0, 2←0, 2←1, 3←0, 3←1, 3←2` (the
//! order of the NB201 string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`). Each edge holds one of
//! five operations, by index: see [`OPS`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use crate::{Budget, Candidate, Evaluation, Fidelity, Proposal, Space, random};

/// Operation names, by op index.
pub const OPS: [&str; 5] = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"];
/// Edges as `(from, to)` node pairs, in candidate order.
pub const EDGES: [(u32, u32); 6] = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)];
/// Number of edges.
pub const NUM_EDGES: usize = 6;
/// Number of operations.
pub const NUM_OPS: u32 = 5;
/// Number of single-op cells: 5⁶.
pub const NUM_ARCHS: u32 = 15_625;

/// Checks that the host's space is NAS-Bench-201 as this module knows it.
pub fn check_space(space: &Space) -> Result<(), String> {
    let ops: Vec<&str> = space.ops.iter().map(String::as_str).collect();
    let edges: Vec<(u32, u32)> = space.edges.iter().map(|e| (e.src, e.dst)).collect();
    if ops != OPS || edges != EDGES {
        return Err(format!("this policy searches NAS-Bench-201, but the host offers space {:?} with ops {ops:?}", space.name));
    }
    Ok(())
}

/// A single architecture: an op index per edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch([u32; NUM_EDGES]);

impl Arch {
    /// The architecture with these op indices, if all are valid.
    pub fn new(ops: [u32; NUM_EDGES]) -> Option<Arch> {
        ops.iter().all(|&op| op < NUM_OPS).then_some(Arch(ops))
    }

    /// Op index per edge.
    pub fn ops(&self) -> [u32; NUM_EDGES] {
        self.0
    }

    /// Dense index in `0..15625`: the op indices as base-5 digits, first edge most
    /// significant (the host's numbering).
    pub fn index(&self) -> u32 {
        self.0.iter().fold(0, |acc, &op| acc * NUM_OPS + op)
    }

    /// The architecture with this dense index.
    pub fn from_index(index: u32) -> Option<Arch> {
        if index >= NUM_ARCHS {
            return None;
        }
        let mut ops = [0; NUM_EDGES];
        let mut rest = index;
        for slot in ops.iter_mut().rev() {
            *slot = rest % NUM_OPS;
            rest /= NUM_OPS;
        }
        Some(Arch(ops))
    }

    /// A uniformly random architecture (from the host's seeded generator).
    pub fn random() -> Arch {
        Arch::from_index(random::below(u64::from(NUM_ARCHS)) as u32).expect("below NUM_ARCHS")
    }

    /// This architecture with one uniformly chosen edge set to a different op: the
    /// mutation of NB201's regularized evolution baseline.
    pub fn mutate(&self) -> Arch {
        let edge = random::below(NUM_EDGES as u64) as usize;
        let shift = 1 + random::below(u64::from(NUM_OPS) - 1) as u32;
        self.with_op(edge, (self.0[edge] + shift) % NUM_OPS)
    }

    /// This architecture with edge `edge` set to op `op`.
    pub fn with_op(&self, edge: usize, op: u32) -> Arch {
        let mut ops = self.0;
        ops[edge] = op;
        Arch(ops)
    }

    /// The candidate asking for this architecture at `fidelity`.
    pub fn candidate(&self, fidelity: Fidelity) -> Candidate {
        Candidate { ops: self.0.iter().map(|&op| vec![op]).collect(), fidelity }
    }

    /// The architecture a candidate names, if it names a single one.
    pub fn from_candidate(candidate: &Candidate) -> Option<Arch> {
        if candidate.ops.len() != NUM_EDGES {
            return None;
        }
        let mut ops = [0; NUM_EDGES];
        for (slot, set) in ops.iter_mut().zip(&candidate.ops) {
            match set.as_slice() {
                [op] if *op < NUM_OPS => *slot = *op,
                _ => return None,
            }
        }
        Some(Arch(ops))
    }
}

impl fmt::Display for Arch {
    /// The NB201 string form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("|")?;
        for (e, &(from, to)) in EDGES.iter().enumerate() {
            if e > 0 && EDGES[e - 1].1 != to {
                f.write_str("+|")?;
            }
            write!(f, "{}~{from}|", OPS[self.0[e] as usize])?;
        }
        Ok(())
    }
}

impl FromStr for Arch {
    type Err = String;

    /// Parses the NB201 string form.
    fn from_str(text: &str) -> Result<Arch, String> {
        let mut ops = Vec::with_capacity(NUM_EDGES);
        for token in text.trim().split(['|', '+']).filter(|t| !t.is_empty()) {
            let (name, from) = token.split_once('~').ok_or_else(|| format!("{token:?} is not op~node"))?;
            let op = OPS.iter().position(|o| *o == name).ok_or_else(|| format!("unknown operation {name:?}"))?;
            let e = ops.len();
            if e >= NUM_EDGES || from != EDGES[e].0.to_string() {
                return Err(format!("edge {e} of {text:?} is malformed"));
            }
            ops.push(op as u32);
        }
        let ops: [u32; NUM_EDGES] = ops.try_into().map_err(|_| format!("{text:?} does not have 6 edges"))?;
        Ok(Arch(ops))
    }
}

/// What a run has measured, per architecture: the bookkeeping most NB201 policies need,
/// and KNAS's fine-selection step ([`Scoreboard::train_best`]).
#[derive(Debug, Clone, Default)]
pub struct Scoreboard {
    scores: HashMap<Arch, f64>,
    trained: HashSet<Arch>,
}

impl Scoreboard {
    /// Records results (fresh ones or a replayed history). A score that failed counts as
    /// the worst possible; a training counts as done whatever its outcome, so it is not
    /// retried. Supernets are not architectures and are skipped.
    pub fn record(&mut self, results: &[Evaluation]) {
        for result in results {
            let Some(arch) = Arch::from_candidate(&result.candidate) else { continue };
            match result.candidate.fidelity {
                Fidelity::Score => {
                    self.scores.insert(arch, result.score.unwrap_or(f64::NEG_INFINITY));
                }
                Fidelity::Train => {
                    self.trained.insert(arch);
                }
            }
        }
    }

    /// The architecture's score, if it was scored.
    pub fn score(&self, arch: &Arch) -> Option<f64> {
        self.scores.get(arch).copied()
    }

    /// Number of architectures scored.
    pub fn scored(&self) -> usize {
        self.scores.len()
    }

    /// Whether the architecture was trained.
    pub fn is_trained(&self, arch: &Arch) -> bool {
        self.trained.contains(arch)
    }

    /// The `k` best-scored architectures, best first (ties broken by index).
    pub fn best(&self, k: usize) -> Vec<Arch> {
        let mut ranked: Vec<(&Arch, &f64)> = self.scores.iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        ranked.into_iter().take(k).map(|(arch, _)| *arch).collect()
    }

    /// Fine selection: train those of the `k` best-scored architectures not trained yet, as
    /// many as the training budget and `max_batch` allow; `Done` once none is left.
    pub fn train_best(&self, k: usize, remaining: &Budget, max_batch: usize) -> Proposal {
        let batch: Vec<Candidate> = self
            .best(k)
            .into_iter()
            .filter(|arch| !self.trained.contains(arch))
            .take((remaining.trainings as usize).min(max_batch))
            .map(|arch| arch.candidate(Fidelity::Train))
            .collect();
        if batch.is_empty() { Proposal::Done } else { Proposal::Evaluate(batch) }
    }
}

/// A supernet: a set of op indices per edge (edge outputs summed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Supernet(pub [Vec<u32>; NUM_EDGES]);

impl Supernet {
    /// All five ops on every edge.
    pub fn full() -> Supernet {
        Supernet(std::array::from_fn(|_| (0..NUM_OPS).collect()))
    }

    /// This supernet without `op` on `edge`.
    pub fn without(&self, edge: usize, op: u32) -> Supernet {
        let mut sets = self.0.clone();
        sets[edge].retain(|&o| o != op);
        Supernet(sets)
    }

    /// The candidate asking for this supernet at `fidelity`.
    pub fn candidate(&self, fidelity: Fidelity) -> Candidate {
        Candidate { ops: self.0.to_vec(), fidelity }
    }

    /// The single architecture, once every edge has one op left.
    pub fn to_arch(&self) -> Option<Arch> {
        Arch::from_candidate(&self.candidate(Fidelity::Score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_string_round_trip() {
        for index in [0, 1, 4_242, NUM_ARCHS - 1] {
            let arch = Arch::from_index(index).unwrap();
            assert_eq!(arch.index(), index);
            assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch);
        }
        assert_eq!(Arch::from_index(NUM_ARCHS), None);
        assert_eq!(
            Arch::new([3, 3, 3, 1, 3, 3]).unwrap().to_string(),
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
        );
        assert!("|bogus~0|+|none~0|none~1|+|none~0|none~1|none~2|".parse::<Arch>().is_err());
    }

    #[test]
    fn candidates_convert_both_ways() {
        let arch = Arch::new([0, 1, 2, 3, 4, 0]).unwrap();
        let candidate = arch.candidate(Fidelity::Train);
        assert_eq!(candidate.ops[3], vec![3]);
        assert_eq!(Arch::from_candidate(&candidate), Some(arch));
        let full = Supernet::full();
        assert_eq!(full.to_arch(), None);
        let mut net = full;
        for edge in 0..NUM_EDGES {
            for op in 1..NUM_OPS {
                net = net.without(edge, op);
            }
        }
        assert_eq!(net.to_arch(), Some(Arch::new([0; 6]).unwrap()));
    }

    fn scored(index: u32, score: Option<f64>) -> Evaluation {
        let candidate = Arch::from_index(index).unwrap().candidate(Fidelity::Score);
        Evaluation { candidate, score, accuracy: None, loss: None, error: score.is_none().then(|| "overflow".into()) }
    }

    #[test]
    fn the_scoreboard_trains_the_best_untrained() {
        let mut board = Scoreboard::default();
        board.record(&[scored(1, Some(2.0)), scored(2, Some(9.0)), scored(3, None), scored(4, Some(5.0))]);
        board.record(&[Evaluation { candidate: Supernet::full().candidate(Fidelity::Score), score: Some(99.0), accuracy: None, loss: None, error: None }]);
        assert_eq!(board.scored(), 4);
        let best: Vec<u32> = board.best(3).iter().map(Arch::index).collect();
        assert_eq!(best, vec![2, 4, 1]);
        let remaining = Budget { scores: 0, trainings: 5 };
        let Proposal::Evaluate(batch) = board.train_best(2, &remaining, 8) else { panic!("expected trainings") };
        assert_eq!(batch.iter().map(|c| Arch::from_candidate(c).unwrap().index()).collect::<Vec<_>>(), vec![2, 4]);
        board.record(&[Evaluation { candidate: batch[0].clone(), score: None, accuracy: Some(0.9), loss: Some(0.3), error: None }]);
        assert!(board.is_trained(&Arch::from_index(2).unwrap()));
        let Proposal::Evaluate(rest) = board.train_best(2, &remaining, 8) else { panic!("one left") };
        assert_eq!(rest.len(), 1);
        assert_eq!(board.train_best(2, &Budget { scores: 0, trainings: 0 }, 8), Proposal::Done);
    }
}
