//! Search policies: sandboxed WebAssembly components that decide what to evaluate next.
//!
//! The contract is `sdk/wit/policy.wit` (its package version is the contract version);
//! [`versions`] generates the host side of it and of every frozen older version, and is
//! the one place that converts between their records and the host's types below. This
//! module holds the host's view of the contract's values and the errors a policy can
//! cause, each naming the policy (`name@hash`) and the cause.

pub mod builtin;
pub mod contract;
pub mod package;
pub mod runtime;
mod validate;
pub mod versions;
pub mod wasi;

pub use contract::{CONTRACT_VERSION, ContractInfo, LoadError};
pub use runtime::{PolicyInstance, PolicyModule, PolicyRuntime, escape_controls};
pub use validate::validate;

use crate::measures::Measure;
use crate::run::{Budget, Fidelity};

/// A measure the host computes for score evaluations, as a policy is told of it (see
/// [`crate::run::Experiment::score_measures_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedMeasure {
    pub measure: Measure,
    /// Its weight in the aggregate score (0 when not part of it).
    pub weight: f64,
}

/// What a policy is told at `init`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub budget: Budget,
    pub max_batch: u32,
    /// The policy's parameters (a JSON object).
    pub params: serde_json::Value,
    /// What a score is: `aggregate` or a measure's name.
    pub score: String,
    /// The measures score evaluations carry.
    pub measures: Vec<OfferedMeasure>,
    /// Epochs of a training whose request names none.
    pub epochs: u32,
    /// The most epochs a training may ask for.
    pub max_epochs: u32,
}

/// A candidate as a policy proposed it, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawCandidate {
    pub ops: Vec<Vec<u32>>,
    pub fidelity: Fidelity,
    /// Epochs asked for a training (`None`: the run's default).
    pub epochs: Option<u32>,
}

/// A policy's answer to `propose`, before validation.
#[derive(Debug, Clone, PartialEq)]
pub enum RawProposal {
    Evaluate(Vec<RawCandidate>),
    Done,
}

/// Everything that can go wrong with a policy. Every variant names the policy, except
/// `Runtime`: a failure of the host's own WebAssembly runtime, not of any policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy} cannot be loaded: {source}")]
    Load { policy: String, source: LoadError },
    #[error("policy {policy} ran past its {limit_ms} ms deadline in `{call}`")]
    Timeout { policy: String, call: &'static str, limit_ms: u64 },
    #[error("policy {policy} ran out of fuel ({fuel} instructions) in `{call}`: an endless loop?")]
    Fuel { policy: String, call: &'static str, fuel: u64 },
    #[error("policy {policy} exceeded its {limit_mib} MiB memory limit in `{call}` (it asked for {requested_mib} MiB)")]
    Memory { policy: String, call: &'static str, limit_mib: usize, requested_mib: usize },
    #[error("policy {policy} panicked in `{call}`: {message}")]
    Panic { policy: String, call: &'static str, message: String },
    #[error("policy {policy} trapped in `{call}`: {message}")]
    Trap { policy: String, call: &'static str, message: String },
    #[error("policy {policy} returned an error from `{call}`: {message}")]
    Guest { policy: String, call: &'static str, message: String },
    #[error("policy {policy} proposed an invalid batch: {problem}")]
    InvalidProposal { policy: String, problem: String },
    #[error("policy {policy} made no progress: {proposals} proposals in a row asked only for results it already had")]
    NoProgress { policy: String, proposals: u32 },
    #[error("the policy runtime failed: {0}")]
    Runtime(String),
}

impl PolicyError {
    /// A short, bounded name for the cause (a metrics label).
    pub fn cause(&self) -> &'static str {
        match self {
            PolicyError::Load { .. } => "load",
            PolicyError::Timeout { .. } => "timeout",
            PolicyError::Fuel { .. } => "fuel",
            PolicyError::Memory { .. } => "memory",
            PolicyError::Panic { .. } => "panic",
            PolicyError::Trap { .. } => "trap",
            PolicyError::Guest { .. } => "guest-error",
            PolicyError::InvalidProposal { .. } => "invalid-proposal",
            PolicyError::NoProgress { .. } => "no-progress",
            PolicyError::Runtime(_) => "runtime",
        }
    }

    /// Whether the same module would fail the same way again: a fault of its own code
    /// (not a wall-clock deadline on a busy machine, not the host's runtime).
    pub fn repeats(&self) -> bool {
        !matches!(self, PolicyError::Timeout { .. } | PolicyError::Runtime(_))
    }
}
