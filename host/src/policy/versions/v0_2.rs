//! Contract 0.2.0, the current one (`sdk/wit/policy.wit`): every measure, size, epochs,
//! checkpoints.

use crate::measures::Measure;
use crate::policy::runtime::PolicyState;
use crate::policy::{RawCandidate, RawProposal, Settings};
use crate::run::{Budget, Fidelity, Observation};
use crate::space::{EDGES, Op};

wasmtime::component::bindgen!({
    world: "search-policy",
    path: "../sdk/wit",
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
        score: s.score.clone(),
        measures: s
            .measures
            .iter()
            .map(|m| {
                let info = m.measure.info();
                wit::MeasureInfo {
                    name: info.name.to_owned(),
                    family: serde_json::to_value(info.family).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                    summary: info.summary.to_owned(),
                    weight: m.weight,
                }
            })
            .collect(),
        epochs: s.epochs,
        max_epochs: s.max_epochs,
    }
}

pub(super) fn budget(b: Budget) -> wit::Budget {
    wit::Budget { scores: b.scores, trainings: b.trainings }
}

fn measure_values(o: &Observation) -> Vec<wit::MeasureValue> {
    o.measures.iter().map(|(m, v): (&Measure, &Option<f64>)| wit::MeasureValue { name: m.name().to_owned(), value: *v }).collect()
}

pub(super) fn evaluation(o: &Observation) -> wit::Evaluation {
    wit::Evaluation {
        candidate: wit::Candidate {
            ops: o.candidate.edges().iter().map(|set| set.ops().map(|op| op.index() as u32).collect()).collect(),
            fidelity: match o.fidelity {
                Fidelity::Score => wit::Fidelity::Score,
                Fidelity::Train => wit::Fidelity::Train(wit::Training { epochs: o.epochs }),
            },
        },
        score: o.score,
        measures: measure_values(o),
        params: o.params.and_then(|p| u64::try_from(p).ok()),
        flops: o.flops.and_then(|f| u64::try_from(f).ok()),
        accuracy: o.accuracy,
        loss: o.loss,
        epochs: o.epochs,
        error: o.error.clone(),
    }
}

pub(super) fn proposal(p: wit::Proposal) -> RawProposal {
    match p {
        wit::Proposal::Done => RawProposal::Done,
        wit::Proposal::Evaluate(candidates) => RawProposal::Evaluate(
            candidates
                .into_iter()
                .map(|c| match c.fidelity {
                    wit::Fidelity::Score => RawCandidate { ops: c.ops, fidelity: Fidelity::Score, epochs: None },
                    wit::Fidelity::Train(t) => RawCandidate { ops: c.ops, fidelity: Fidelity::Train, epochs: t.epochs },
                })
                .collect(),
        ),
    }
}
