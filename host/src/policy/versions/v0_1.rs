//! Contract 0.1.0 (frozen in `sdk/wit/past/0.1.0/`): one score per evaluation, no
//! measures, no epochs, no checkpoints. Its policies see the run's score as `score` and
//! train for the run's default epochs.

use crate::policy::runtime::PolicyState;
use crate::policy::{RawCandidate, RawProposal, Settings};
use crate::run::{Budget, Fidelity, Observation};
use crate::space::{EDGES, Op};

wasmtime::component::bindgen!({
    world: "search-policy",
    path: "../sdk/wit/past/0.1.0",
});

use self::knas::policy::types as wit;

host_imports!();

pub(super) fn settings(s: &Settings) -> wit::Settings {
    wit::Settings {
        space: wit::Space {
            name: "nas-bench-201".into(),
            ops: Op::ALL.iter().map(|op| op.name().to_owned()).collect(),
            edges: EDGES.iter().map(|&(src, dst)| wit::Edge { src: src as u32, dst: dst as u32 }).collect(),
        },
        budget: budget(s.budget),
        max_batch: s.max_batch,
        params: s.params.to_string(),
    }
}

pub(super) fn budget(b: Budget) -> wit::Budget {
    wit::Budget { scores: b.scores, trainings: b.trainings }
}

fn fidelity(f: Fidelity) -> wit::Fidelity {
    match f {
        Fidelity::Score => wit::Fidelity::Score,
        Fidelity::Train => wit::Fidelity::Train,
    }
}

pub(super) fn evaluation(o: &Observation) -> wit::Evaluation {
    wit::Evaluation {
        candidate: wit::Candidate {
            ops: o.candidate.edges().iter().map(|set| set.ops().map(|op| op.index() as u32).collect()).collect(),
            fidelity: fidelity(o.fidelity),
        },
        score: o.score,
        accuracy: o.accuracy,
        loss: o.loss,
        error: o.error.clone(),
    }
}

pub(super) fn proposal(p: wit::Proposal) -> RawProposal {
    match p {
        wit::Proposal::Done => RawProposal::Done,
        wit::Proposal::Evaluate(candidates) => RawProposal::Evaluate(
            candidates
                .into_iter()
                .map(|c| RawCandidate {
                    ops: c.ops,
                    fidelity: match c.fidelity {
                        wit::Fidelity::Score => Fidelity::Score,
                        wit::Fidelity::Train => Fidelity::Train,
                    },
                    epochs: None,
                })
                .collect(),
        ),
    }
}
