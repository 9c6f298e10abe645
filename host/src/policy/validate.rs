//! Validation of proposals, before any compute is spent on them.

use super::RawCandidate;
use crate::run::{Fidelity, Request};
use crate::space::{Candidate, EDGES, NUM_EDGES, NUM_OPS, Op, OpSet};

/// Checks a proposal against the space, the batch limit and the epochs limit; the error
/// says which candidate and edge are wrong, and how.
pub fn validate(raw: &[RawCandidate], max_batch: u32, max_epochs: u32) -> Result<Vec<Request>, String> {
    if raw.is_empty() {
        return Err("an empty batch (a policy with nothing to propose answers `done`)".into());
    }
    if raw.len() > max_batch as usize {
        return Err(format!("{} candidates in one batch, more than max-batch {max_batch}", raw.len()));
    }
    raw.iter().enumerate().map(|(i, c)| request(i, c, max_epochs)).collect()
}

fn request(i: usize, raw: &RawCandidate, max_epochs: u32) -> Result<Request, String> {
    match raw.epochs {
        Some(0) => return Err(format!("candidate {i}: a training of 0 epochs")),
        Some(epochs) if epochs > max_epochs => {
            return Err(format!("candidate {i}: {epochs} epochs asked, more than max-epochs {max_epochs}"));
        }
        _ => {}
    }
    if raw.ops.len() != NUM_EDGES {
        return Err(format!("candidate {i} lists {} edges; the space has {NUM_EDGES}", raw.ops.len()));
    }
    let mut edges = [OpSet::EMPTY; NUM_EDGES];
    for (e, ops) in raw.ops.iter().enumerate() {
        let (from, to) = EDGES[e];
        let at = || format!("candidate {i}, edge {e} ({from}→{to})");
        if ops.is_empty() {
            return Err(format!("{}: empty op set (every edge needs at least one op)", at()));
        }
        for &index in ops {
            let op = Op::from_index(index as usize)
                .ok_or_else(|| format!("{}: op index {index} is out of range 0..{NUM_OPS}", at()))?;
            if edges[e].contains(op) {
                return Err(format!("{}: op {index} ({op}) listed twice", at()));
            }
            edges[e] = edges[e].with(op);
        }
        if raw.fidelity == Fidelity::Train && ops.len() > 1 {
            return Err(format!("{}: training needs one op per edge, this edge has {}", at(), ops.len()));
        }
    }
    let candidate = Candidate::new(edges).map_err(|e| format!("candidate {i}: {e}"))?;
    let epochs = if raw.fidelity == Fidelity::Train { raw.epochs } else { None };
    Ok(Request { candidate, fidelity: raw.fidelity, epochs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ops: Vec<Vec<u32>>, fidelity: Fidelity) -> RawCandidate {
        RawCandidate { ops, fidelity, epochs: None }
    }

    fn single() -> Vec<Vec<u32>> {
        vec![vec![3], vec![1], vec![0], vec![2], vec![4], vec![3]]
    }

    #[test]
    fn accepts_architectures_and_supernets() {
        let full: Vec<Vec<u32>> = (0..6).map(|_| (0..5).collect()).collect();
        let ok = validate(&[raw(single(), Fidelity::Train), raw(full, Fidelity::Score)], 2, 10).unwrap();
        assert_eq!(ok[0].candidate.to_string(), "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|nor_conv_1x1~0|avg_pool_3x3~1|nor_conv_3x3~2|");
        assert!(!ok[1].candidate.is_single());
    }

    #[test]
    fn says_what_is_wrong_and_where() {
        let err = |c: RawCandidate, max| validate(&[raw(single(), Fidelity::Score), c], max, 10).unwrap_err();
        let mut bad = single();
        bad[4] = vec![9];
        assert_eq!(err(raw(bad, Fidelity::Score), 8), "candidate 1, edge 4 (1→3): op index 9 is out of range 0..5");
        let mut empty = single();
        empty[2] = vec![];
        assert_eq!(err(raw(empty, Fidelity::Score), 8), "candidate 1, edge 2 (1→2): empty op set (every edge needs at least one op)");
        assert_eq!(err(raw(single()[..5].to_vec(), Fidelity::Score), 8), "candidate 1 lists 5 edges; the space has 6");
        let mut twice = single();
        twice[0] = vec![3, 3];
        assert_eq!(err(raw(twice, Fidelity::Score), 8), "candidate 1, edge 0 (0→1): op 3 (nor_conv_3x3) listed twice");
        let mut supernet = single();
        supernet[5] = vec![0, 1];
        assert_eq!(
            err(raw(supernet, Fidelity::Train), 8),
            "candidate 1, edge 5 (2→3): training needs one op per edge, this edge has 2"
        );
        assert_eq!(err(raw(single(), Fidelity::Score), 1), "2 candidates in one batch, more than max-batch 1");
        assert!(validate(&[], 4, 10).unwrap_err().contains("empty batch"));
        let long = RawCandidate { epochs: Some(11), ..raw(single(), Fidelity::Train) };
        assert_eq!(err(long, 8), "candidate 1: 11 epochs asked, more than max-epochs 10");
        let none = RawCandidate { epochs: Some(0), ..raw(single(), Fidelity::Train) };
        assert_eq!(err(none, 8), "candidate 1: a training of 0 epochs");
        let ok = validate(&[RawCandidate { epochs: Some(3), ..raw(single(), Fidelity::Train) }], 1, 10).unwrap();
        assert_eq!(ok[0].epochs, Some(3));
    }
}
