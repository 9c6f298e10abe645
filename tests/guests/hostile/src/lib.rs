//! Test fixture: a policy that misbehaves exactly as its parameters ask, once, at a chosen
//! call, and otherwise scores random architectures until the budget is spent. Each limit
//! the host enforces is tested twice with it: once staying inside (obeyed), once breaking
//! it (violated).
//!
//! Parameters: `{"act": "<what>", "at": "init" | "propose" | "observe" | "restore" |
//! "checkpoint", ...}` (with `restore`, the policy keeps a checkpoint and misbehaves when
//! restoring it; `checkpoint` takes only `error`, returned by every checkpoint) with
//! - `spin` `{iterations}`: burn CPU (`u64::MAX`: forever);
//! - `allocate` `{mib}`: allocate and touch that much memory;
//! - `panic` `{message}` / `trap` / `error` `{message}`;
//! - `propose` `{candidates: [{ops, train}]}`: propose exactly these raw candidates;
//! - `script` `{proposals: [[{ops, train}]]}`: propose these raw batches, one per call;
//! - `batch` `{count}`: propose that many distinct random candidates at once;
//! - `log` `{count, bytes}`: write that many log records of that size;
//! - `repeat`: propose the same architecture forever (makes no progress);
//! - `nothing`: behave.

use std::collections::HashSet;

use knas_policy_sdk::nb201::Arch;
use knas_policy_sdk::{Budget, Candidate, Evaluation, Fidelity, Level, Policy, Proposal, Settings, Training, log, random};

#[derive(serde::Deserialize, Clone)]
#[serde(tag = "act", rename_all = "kebab-case")]
enum Act {
    Spin { iterations: u64 },
    Allocate { mib: u32 },
    Panic { message: String },
    Trap,
    Error { message: String },
    Propose { candidates: Vec<Raw> },
    Script { proposals: Vec<Vec<Raw>> },
    Batch { count: u32 },
    Log {
        count: u32,
        bytes: u32,
        #[serde(default)]
        text: Option<String>,
    },
    Repeat,
    Nothing,
}

#[derive(serde::Deserialize, Clone)]
struct Raw {
    ops: Vec<Vec<u32>>,
    #[serde(default)]
    train: bool,
    #[serde(default)]
    epochs: Option<u32>,
}

#[derive(serde::Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum At {
    Init,
    Propose,
    Observe,
    Restore,
    /// Only `error`: every `checkpoint` returns it.
    Checkpoint,
}

#[derive(serde::Deserialize)]
struct Params {
    #[serde(flatten)]
    act: Act,
    #[serde(default = "default_at")]
    at: At,
}

fn default_at() -> At {
    At::Propose
}

struct Hostile {
    act: Option<Act>,
    at: At,
    seen: HashSet<Arch>,
    /// Keeps allocations alive so the memory stays in use.
    hoard: Vec<Vec<u8>>,
}

impl Hostile {
    /// Performs the act if it is due at `now`; `Some` is a proposal to return instead of
    /// the normal one.
    fn act(&mut self, now: At) -> Result<Option<Proposal>, String> {
        if now != self.at {
            return Ok(None);
        }
        if let Some(Act::Script { proposals }) = &mut self.act {
            if proposals.is_empty() {
                self.act = None;
                return Ok(None);
            }
            return Ok(Some(raw_proposal(proposals.remove(0))));
        }
        let act = match &self.act {
            Some(Act::Repeat) => Act::Repeat,
            _ => match self.act.take() {
                Some(act) => act,
                None => return Ok(None),
            },
        };
        match act {
            Act::Spin { iterations } => {
                let mut x = 0u64;
                for i in 0..iterations {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                std::hint::black_box(x);
            }
            Act::Allocate { mib } => {
                for _ in 0..mib {
                    self.hoard.push(vec![1u8; 1 << 20]);
                }
            }
            Act::Panic { message } => panic!("{message}"),
            Act::Trap => core::arch::wasm32::unreachable(),
            Act::Error { message } => return Err(message),
            Act::Propose { candidates } => return Ok(Some(raw_proposal(candidates))),
            // Proposed one batch per call, above.
            Act::Script { .. } => {}
            Act::Batch { count } => {
                let mut batch = Vec::new();
                while batch.len() < count as usize {
                    let arch = Arch::random(&mut random::rng());
                    if self.seen.insert(arch) {
                        batch.push(Candidate::score(arch));
                    }
                }
                return Ok(Some(Proposal::Evaluate(batch)));
            }
            Act::Log { count, bytes, text } => {
                let line = text.unwrap_or_else(|| "x".repeat(bytes as usize));
                for _ in 0..count {
                    log(Level::Info, &line);
                }
            }
            Act::Repeat => {
                return Ok(Some(Proposal::Evaluate(vec![Candidate::score(Arch::from_index(1).expect("valid"))])));
            }
            Act::Nothing => {}
        }
        Ok(None)
    }
}

/// A proposal of exactly these raw candidates.
fn raw_proposal(candidates: Vec<Raw>) -> Proposal {
    let fidelity = |raw: &Raw| if raw.train { Fidelity::Train(Training { epochs: raw.epochs }) } else { Fidelity::Score };
    Proposal::Evaluate(candidates.into_iter().map(|raw| Candidate { fidelity: fidelity(&raw), ops: raw.ops }).collect())
}

impl Policy for Hostile {
    fn new(settings: Settings) -> Result<Self, String> {
        let params: Params = settings.parse_params()?;
        let mut policy = Hostile { act: Some(params.act), at: params.at, seen: HashSet::new(), hoard: Vec::new() };
        policy.act(At::Init)?;
        Ok(policy)
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        for result in &results {
            if let Some(arch) = result.candidate.arch() {
                self.seen.insert(arch);
            }
        }
        self.act(At::Observe).map(|_| ())
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, String> {
        if let (At::Checkpoint, Some(Act::Error { message })) = (self.at, &self.act) {
            return Err(message.clone());
        }
        Ok((self.at == At::Restore).then(|| b"hostile".to_vec()))
    }

    fn restore(&mut self, _state: &[u8]) -> Result<(), String> {
        self.act(At::Restore).map(|_| ())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        if let Some(proposal) = self.act(At::Propose)? {
            return Ok(proposal);
        }
        if remaining.scores == 0 {
            return Ok(Proposal::Done);
        }
        loop {
            let arch = Arch::random(&mut random::rng());
            if self.seen.insert(arch) {
                return Ok(Proposal::Evaluate(vec![Candidate::score(arch)]));
            }
        }
    }
}

knas_policy_sdk::register_policy!(Hostile);
