//! Test fixture: a policy written against the frozen contract 0.1.0 with wit-bindgen alone,
//! as a policy built before contract 0.2.0 was. It scores random architectures until the
//! score budget is spent, then trains the best one; the host must run it unchanged.

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../../sdk/wit/past/0.1.0",
    world: "search-policy",
});

use exports::knas::policy::policy::Guest;
use knas::policy::host;
use knas::policy::types::{Budget, Candidate, Evaluation, Fidelity, Proposal, Settings};

/// Scores seen so far, by op indices.
struct State {
    scores: Vec<(Vec<u32>, f64)>,
    trained: bool,
    max_batch: u32,
}

thread_local! {
    static STATE: RefCell<State> = const { RefCell::new(State { scores: Vec::new(), trained: false, max_batch: 1 }) };
}

fn random_ops() -> Vec<u32> {
    (0..6).map(|_| (host::random() % 5) as u32).collect()
}

struct Contract01;

impl Guest for Contract01 {
    fn init(settings: Settings) -> Result<(), String> {
        if settings.space.edges.len() != 6 {
            return Err(format!("expected 6 edges, got {}", settings.space.edges.len()));
        }
        STATE.with(|s| s.borrow_mut().max_batch = settings.max_batch.max(1));
        host::log(knas::policy::types::Level::Info, "contract 0.1.0 policy started");
        Ok(())
    }

    fn observe(results: Vec<Evaluation>) -> Result<(), String> {
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            for r in results {
                let ops: Vec<u32> = r.candidate.ops.iter().map(|set| set[0]).collect();
                match r.candidate.fidelity {
                    Fidelity::Score => s.scores.push((ops, r.score.unwrap_or(f64::NEG_INFINITY))),
                    Fidelity::Train => s.trained = true,
                }
            }
        });
        Ok(())
    }

    fn propose(remaining: Budget) -> Result<Proposal, String> {
        STATE.with(|s| {
            let s = s.borrow();
            if remaining.scores > 0 {
                let ops = random_ops();
                return Ok(Proposal::Evaluate(vec![Candidate { ops: ops.iter().map(|&o| vec![o]).collect(), fidelity: Fidelity::Score }]));
            }
            if s.trained || remaining.trainings == 0 {
                return Ok(Proposal::Done);
            }
            let best = s.scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|b| b.0.clone());
            Ok(match best {
                Some(ops) => Proposal::Evaluate(vec![Candidate { ops: ops.iter().map(|&o| vec![o]).collect(), fidelity: Fidelity::Train }]),
                None => Proposal::Done,
            })
        })
    }
}

export!(Contract01);
