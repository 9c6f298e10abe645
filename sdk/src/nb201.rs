//! The NAS-Bench-201 space, the space the knas host searches: the host's own
//! implementation (`knas-nb201`), plus the conversions to and from the contract's
//! [`Candidate`].
//!
//! A cell has 4 nodes and 6 edges, in this order: `1←0, 2←0, 2←1, 3←0, 3←1, 3←2` (the
//! order of the NB201 string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`). Each edge holds one of
//! five operations ([`Op`]). An [`Arch`] has one op per edge; a [`Supernet`] a set of ops
//! per edge, whose outputs are summed.
//!
//! Randomness comes from the host's seeded generator: `Arch::random(&mut random::rng())`,
//! `arch.mutate(&mut random::rng())`.

pub use knas_nb201::{ArchError, Candidate as Supernet, EDGES, NUM_ARCHS, NUM_EDGES, NUM_OPS, Op, OpSet};
pub use knas_nb201::Arch;

use crate::{Candidate, Fidelity, Space, Training};

/// Checks that the host's space is NAS-Bench-201 as this module knows it.
pub fn check_space(space: &Space) -> Result<(), String> {
    let ops: Vec<&str> = space.ops.iter().map(String::as_str).collect();
    let names: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
    let edges: Vec<(usize, usize)> = space.edges.iter().map(|e| (e.src as usize, e.dst as usize)).collect();
    if ops != names || edges != EDGES {
        return Err(format!("this policy searches NAS-Bench-201, but the host offers space {:?} with ops {ops:?}", space.name));
    }
    Ok(())
}

impl Candidate {
    /// Asks for the training-free score of an architecture or a supernet.
    pub fn score(cell: impl Into<Supernet>) -> Candidate {
        Candidate { ops: op_indices(&cell.into()), fidelity: Fidelity::Score }
    }

    /// Asks for a training of `arch`: `epochs` or, with `None`, the run's default.
    pub fn train(arch: Arch, epochs: Option<u32>) -> Candidate {
        Candidate { ops: op_indices(&arch.into()), fidelity: Fidelity::Train(Training { epochs }) }
    }

    /// The cell this candidate names, architecture or supernet; `None` if malformed.
    pub fn supernet(&self) -> Option<Supernet> {
        if self.ops.len() != NUM_EDGES {
            return None;
        }
        let mut edges = [OpSet::EMPTY; NUM_EDGES];
        for (set, ops) in edges.iter_mut().zip(&self.ops) {
            for &index in ops {
                *set = set.with(Op::from_index(index as usize)?);
            }
        }
        Supernet::new(edges).ok()
    }

    /// The architecture this candidate names, if it names a single one.
    pub fn arch(&self) -> Option<Arch> {
        self.supernet()?.to_arch().ok()
    }
}

fn op_indices(cell: &Supernet) -> Vec<Vec<u32>> {
    cell.edges().iter().map(|set| set.ops().map(|op| op.index() as u32).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_convert_both_ways() {
        let arch = Arch::from_index(4_242).unwrap();
        let score = Candidate::score(arch);
        assert_eq!(score.fidelity, Fidelity::Score);
        assert_eq!(score.arch(), Some(arch));
        let train = Candidate::train(arch, Some(3));
        assert_eq!(train.fidelity, Fidelity::Train(Training { epochs: Some(3) }));
        assert_eq!(train.ops[0], vec![arch.ops()[0].index() as u32]);
        let full = Candidate::score(Supernet::full());
        assert_eq!(full.arch(), None);
        assert_eq!(full.supernet(), Some(Supernet::full()));
        let bad = Candidate { ops: vec![vec![9]; 6], fidelity: Fidelity::Score };
        assert_eq!(bad.supernet(), None);
    }
}
