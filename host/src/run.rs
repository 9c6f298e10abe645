//! A run's own types: what a run is asked to do (the experiment, how it searches, the
//! limits of its policy) and what passes between its policy, its engine and its store
//! (requests, fidelities, budgets, observations).
//!
//! Everything that runs something depends on this module: the store, the policy runtime,
//! the search loop, the engine and the service. It names only plain values from the
//! modules below it (the space, dataset names, measure names, training settings) and
//! calls nothing that computes, so the store can read and write runs without knowing the
//! engine or the sandbox.

use crate::data::{DatasetSpec, Holdout};
use crate::measures::aggregate::AggregateSpec;
use crate::measures::{Measure, ScoreChoice, Values};
use crate::space::Candidate;
use crate::train::TrainConfig;

/// Everything that determines an experiment's numbers (the device aside).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Experiment {
    /// Dataset (see [`DatasetSpec`]).
    pub dataset: DatasetSpec,
    /// Held-out images: a fraction of the training part, or `test` for the official test part.
    #[serde(with = "holdout_serde")]
    pub holdout: Holdout,
    /// Cap on training images (a seeded sample); none by default. A limited experiment
    /// also holds out at most [`crate::data::LIMITED_HELDOUT`] images of a held-out
    /// fraction.
    pub limit: Option<usize>,
    /// Channels of the first stage, C (1 to [`MAX_CHANNELS`]).
    pub channels: i64,
    /// Cells per stage, N (0 to [`MAX_CELLS`]).
    pub cells: i64,
    /// Images in the scoring batch every measure reads.
    pub score_batch: usize,
    /// What a candidate's score is: the aggregate or one measure.
    pub score: ScoreChoice,
    /// The aggregate's measures and weights.
    pub aggregate: AggregateSpec,
    /// Architectures in the seeded reference sample that anchors the aggregate's ranks.
    pub reference: usize,
    /// Training of finalists.
    pub train: TrainConfig,
    /// Seed for the data split, the scoring batch and the network initialisation.
    pub seed: u64,
}

impl Experiment {
    /// The measures score evaluations compute and policies are offered: what the score
    /// reads, the network's size, and the gradient norm at initialisation. The last is for
    /// fine selection, so a supernet's evaluation leaves it out unless the score reads it
    /// (see [`Self::score_measures_for`]).
    pub fn score_measures(&self) -> Vec<Measure> {
        let mut measures = self.score_reads();
        for m in [Measure::Params, Measure::Flops, Measure::GradNorm] {
            if !measures.contains(&m) {
                measures.push(m);
            }
        }
        measures
    }

    /// The measures a score evaluation of `candidate` computes. A single architecture gets
    /// every measure of [`Self::score_measures`]. A supernet does without the gradient norm
    /// (unless the score reads it): it tells a policy which trainable cells start with
    /// exploding gradients, which a short training cannot tame (the pruning policy trains
    /// the tamest scored cell among its finalists; `host/benches/demo_task.md`), and it
    /// needs a backward pass through the whole network, which made a pruning search's
    /// scoring half as slow again when supernets paid for it too.
    pub fn score_measures_for(&self, candidate: &Candidate) -> Vec<Measure> {
        let mut measures = self.score_measures();
        if !candidate.is_single() && !self.score_reads().contains(&Measure::GradNorm) {
            measures.retain(|m| *m != Measure::GradNorm);
        }
        measures
    }

    /// The measures the score itself reads.
    fn score_reads(&self) -> Vec<Measure> {
        match self.score {
            ScoreChoice::Aggregate => self.aggregate.measures(),
            ScoreChoice::Measure(m) => vec![m],
        }
    }

    /// The weight of `measure` in the score: its aggregate weight, 1 for the score's own
    /// measure, 0 otherwise.
    pub fn score_weight(&self, measure: Measure) -> f64 {
        match self.score {
            ScoreChoice::Aggregate => self.aggregate.terms.iter().find(|t| t.measure == measure).map_or(0.0, |t| t.weight),
            ScoreChoice::Measure(m) => f64::from(u8::from(m == measure)),
        }
    }

    /// The held-out setting as written in files and on the command line.
    pub fn holdout_text(&self) -> String {
        match self.holdout {
            Holdout::Fraction(f) => f.to_string(),
            Holdout::Official => "test".into(),
        }
    }

    /// Checks every value without loading anything, so that a bad configuration is refused
    /// when it is read rather than when a run first needs the engine. The message names the
    /// key as it is written in configuration files.
    pub fn validate(&self) -> Result<(), String> {
        // The reference sample only anchors the aggregate.
        let reference_least = if self.score == ScoreChoice::Aggregate { 2 } else { 0 };
        // Sizes beyond i64 only need to compare as large.
        let large = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        // Two images at least: the gradient kernel compares the batch's halves, and Jacobian
        // correlations need two rows.
        let least = [("channels", self.channels, 1), ("score-batch", large(self.score_batch), 2), ("reference", large(self.reference), reference_least)];
        if let Some((key, value, least)) = least.iter().find(|(_, value, least)| value < least) {
            return Err(format!("{key} must be at least {least}, got {value}"));
        }
        // The reference is a sample of distinct architectures: the space holds no more.
        if self.reference > crate::space::NUM_ARCHS {
            return Err(format!("reference must be at most {} (the architectures in the space), got {}", crate::space::NUM_ARCHS, self.reference));
        }
        if self.cells < 0 {
            return Err(format!("cells must not be negative, got {}", self.cells));
        }
        // Far beyond any network worth searching, and small enough that building one can
        // neither overflow a tensor size nor take forever.
        let most = [("channels", self.channels, MAX_CHANNELS), ("cells", self.cells, MAX_CELLS)];
        if let Some((key, value, most)) = most.iter().find(|(_, value, most)| value > most) {
            return Err(format!("{key} must be at most {most}, got {value}"));
        }
        // The two bounds apart still admit networks no machine holds, and a weight tensor
        // larger than memory aborts the process while it is built rather than failing.
        let weights = most_weights(self.channels, self.cells);
        if weights > MAX_WEIGHTS {
            return Err(format!(
                "channels {} with cells {} admit networks of up to {weights} weights (the full supernet), more than the {MAX_WEIGHTS} knas builds: lower channels or cells",
                self.channels, self.cells
            ));
        }
        if self.limit == Some(0) {
            return Err("limit must be at least 1 training image".into());
        }
        if let Holdout::Fraction(f) = self.holdout
            && !(f > 0.0 && f < 1.0)
        {
            return Err(format!("holdout must be `test` or a fraction strictly between 0 and 1, got {f}"));
        }
        self.aggregate.validate().map_err(|problem| format!("aggregate: {problem}"))?;
        self.train.validate().map_err(|problem| format!("train.{problem}"))
    }
}

impl Default for Experiment {
    fn default() -> Experiment {
        Experiment {
            dataset: DatasetSpec::Mnist5k,
            holdout: Holdout::Fraction(0.2),
            limit: None,
            channels: 16,
            cells: 5,
            score_batch: 64,
            score: ScoreChoice::Aggregate,
            aggregate: AggregateSpec::default(),
            reference: DEFAULT_REFERENCE,
            train: TrainConfig::default(),
            seed: 0,
        }
    }
}

mod holdout_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::data::Holdout;

    pub fn serialize<S: Serializer>(holdout: &Holdout, s: S) -> Result<S::Ok, S::Error> {
        match holdout {
            Holdout::Fraction(f) => s.serialize_f64(*f),
            Holdout::Official => s.serialize_str("test"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Holdout, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Fraction(f64),
            Name(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Fraction(f) => f.to_string(),
            Raw::Name(name) => name,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Architectures in the reference sample by default.
pub const DEFAULT_REFERENCE: usize = 64;

/// How much to spend on a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fidelity {
    /// Training-free scoring.
    #[default]
    Score,
    /// A short training run.
    Train,
}

impl Fidelity {
    /// The name stores and metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Fidelity::Score => "score",
            Fidelity::Train => "train",
        }
    }

    /// Parses [`Fidelity::name`].
    pub fn from_name(name: &str) -> Option<Fidelity> {
        match name {
            "score" => Some(Fidelity::Score),
            "train" => Some(Fidelity::Train),
            _ => None,
        }
    }
}

/// Evaluations per fidelity: a run's budget, or what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub scores: u32,
    pub trainings: u32,
}

impl Budget {
    /// Scores and trainings together, widened so that no budget overflows.
    pub fn total(&self) -> u64 {
        u64::from(self.scores) + u64::from(self.trainings)
    }
}

/// A validated request to evaluate a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    pub candidate: Candidate,
    pub fidelity: Fidelity,
    /// Epochs asked for a training (`None`: the run's default).
    pub epochs: Option<u32>,
}

impl Request {
    /// Whether two requests ask for the same evaluation (a candidate is evaluated at most
    /// once per fidelity in a run, whatever epochs a training asks for).
    pub fn same_evaluation(&self, other: &Request) -> bool {
        self.candidate == other.candidate && self.fidelity == other.fidelity
    }
}

/// A result handed back to a policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub candidate: Candidate,
    pub fidelity: Fidelity,
    pub score: Option<f64>,
    /// Every measure computed for the candidate's score evaluation.
    pub measures: Values,
    pub params: Option<i64>,
    pub flops: Option<i64>,
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    /// Epochs trained.
    pub epochs: Option<u32>,
    pub error: Option<String>,
}

/// Limits applied to every policy instance.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PolicyLimits {
    /// Wall-clock deadline for one call, in milliseconds.
    pub call_timeout_ms: u64,
    /// Instructions (fuel units) one call may execute.
    pub fuel_per_call: u64,
    /// Memory one instance may hold, its linear memories and tables together, in MiB.
    pub memory_mib: usize,
    /// Log records one call may write; the rest are dropped.
    pub log_records_per_call: u32,
    /// Longest log record kept, in bytes; longer ones are truncated.
    pub log_record_bytes: usize,
    /// Log bytes one instance may write per minute, across calls (a token bucket that
    /// allows this much in a burst); the rest are dropped, with one notice per minute.
    pub log_bytes_per_minute: usize,
}

impl Default for PolicyLimits {
    fn default() -> PolicyLimits {
        PolicyLimits {
            call_timeout_ms: 2_000,
            fuel_per_call: 2_000_000_000,
            memory_mib: 64,
            log_records_per_call: 200,
            log_record_bytes: 4_096,
            log_bytes_per_minute: 1 << 20,
        }
    }
}

impl PolicyLimits {
    /// Checks the limits; the message starts with the offending key. Memory is capped at
    /// 4 GiB, all a 32-bit guest can address.
    pub fn validate(&self) -> Result<(), String> {
        let ranges = [
            ("call-timeout-ms", self.call_timeout_ms, 1, u64::MAX),
            ("fuel-per-call", self.fuel_per_call, 1, u64::MAX),
            ("memory-mib", self.memory_mib as u64, 1, 4096),
            ("log-record-bytes", self.log_record_bytes as u64, 16, u64::MAX),
            ("log-bytes-per-minute", self.log_bytes_per_minute as u64, 1, u64::MAX),
        ];
        match ranges.iter().find(|(_, value, least, most)| value < least || value > most) {
            Some((key, value, least, most)) if *most == u64::MAX => Err(format!("{key} must be at least {least}, got {value}")),
            Some((key, value, least, most)) => Err(format!("{key} must be between {least} and {most}, got {value}")),
            // Else a long record could never be written.
            None if self.log_bytes_per_minute < self.log_record_bytes => Err(format!(
                "log-bytes-per-minute ({}) must be at least log-record-bytes ({})",
                self.log_bytes_per_minute, self.log_record_bytes
            )),
            None => Ok(()),
        }
    }
}

/// How a run searches: everything besides the experiment and the policy's code.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SearchSpec {
    pub budget: Budget,
    pub max_batch: u32,
    /// The most epochs one training may ask for; a search raises it to the experiment's
    /// own epochs when those are more, so the default can always be asked for.
    #[serde(default = "default_max_epochs")]
    pub max_epochs: u32,
    /// The policy's parameters (a JSON object).
    pub params: serde_json::Value,
    pub limits: PolicyLimits,
}

/// The most channels (C) an experiment may ask for.
pub const MAX_CHANNELS: i64 = 4096;

/// The most cells per stage (N) an experiment may ask for.
pub const MAX_CELLS: i64 = 64;

/// The most weights the largest network of an experiment's space may have: 4 GB in single
/// precision before a gradient is taken. NB201's own networks (C 16, N 5) have at most 1.7
/// million (the full supernet); C 256 with N 5 stays below it.
pub const MAX_WEIGHTS: u128 = 1_000_000_000;

/// An upper bound of the weights of the largest network of the space at `channels` (C)
/// and `cells` (N), whatever the data (at most 3 image channels and 100 classes): the full
/// supernet, every edge holding both convolutions (1×1 and 3×3 with their batch norms:
/// 10c² + 4c at c channels), N cells of six edges at C, 2C and 4C; the two reductions (3×3
/// convolutions c→2c and 2c→2c with their norms, a 1×1 shortcut: 56c² + 12c); the stem
/// (3×3 from 3 channels, a norm: 29C); the last norm and the classifier (408C + 100).
/// Checked against the networks `model.rs` builds in its tests.
pub fn most_weights(channels: i64, cells: i64) -> u128 {
    let c = u128::from(channels.unsigned_abs());
    let n = u128::from(cells.unsigned_abs());
    let cells = n * 6 * (10 * (1 + 4 + 16) * c * c + 4 * (1 + 2 + 4) * c);
    let reductions = 56 * (1 + 4) * c * c + 12 * (1 + 2) * c;
    cells + reductions + 29 * c + 408 * c + 100
}

/// Epochs one training may ask for at most, by default.
pub const DEFAULT_MAX_EPOCHS: u32 = 10;

fn default_max_epochs() -> u32 {
    DEFAULT_MAX_EPOCHS
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_too_large_to_build_are_refused_by_their_size() {
        let sized = |channels, cells| Experiment { channels, cells, ..Experiment::default() }.validate();
        // (model.rs's tests check the bound against the networks it builds.)
        assert!(sized(256, 5).is_ok());
        let err = sized(4096, 5).unwrap_err();
        assert!(err.starts_with(&format!("channels 4096 with cells 5 admit networks of up to {} weights", most_weights(4096, 5))), "{err}");
        assert!(sized(512, 5).is_err() && sized(256, 32).is_err() && sized(64, 64).is_ok());
    }

    #[test]
    fn a_budget_total_does_not_overflow() {
        assert_eq!(Budget { scores: u32::MAX, trainings: u32::MAX }.total(), 2 * u64::from(u32::MAX));
    }

    #[test]
    fn supernets_are_scored_without_the_gradient_norm_unless_the_score_reads_it() {
        let single = Candidate::from(crate::space::Arch::from_index(0).unwrap());
        let supernet = Candidate::full();
        let aggregate = Experiment::default();
        let offered = aggregate.score_measures();
        assert!(offered.ends_with(&[Measure::Params, Measure::Flops, Measure::GradNorm]), "{offered:?}");
        assert_eq!(aggregate.score_measures_for(&single), offered);
        let for_supernet = aggregate.score_measures_for(&supernet);
        assert_eq!(for_supernet, offered[..offered.len() - 1], "everything else, in the same order");
        // A score that reads it needs it from every candidate.
        let read = Experiment { score: ScoreChoice::Measure(Measure::GradNorm), ..Experiment::default() };
        assert_eq!(read.score_measures_for(&supernet), [Measure::GradNorm, Measure::Params, Measure::Flops]);
        let weighted: Experiment = serde_yaml::from_str("aggregate: [{measure: grad-norm, weight: 1}]\n").unwrap();
        assert!(weighted.score_measures_for(&supernet).contains(&Measure::GradNorm));
    }

    #[test]
    fn experiments_read_from_yaml_reject_unknown_keys() {
        let e: Experiment = serde_yaml::from_str("channels: 8\nholdout: test\nscore: mgm-batch\n").unwrap();
        assert_eq!((e.channels, e.holdout, e.score), (8, Holdout::Official, ScoreChoice::Measure(Measure::MgmBatch)));
        let e: Experiment = serde_yaml::from_str("aggregate: [{measure: params, weight: 2}]\n").unwrap();
        assert_eq!(e.aggregate.terms[0].weight, 2.0);
        let err = serde_yaml::from_str::<Experiment>("score: mgn\n").unwrap_err().to_string();
        assert!(err.contains("unknown measure \"mgn\""), "{err}");
        let e: Experiment = serde_yaml::from_str("holdout: 0.25\ntrain: {epochs: 3, batch-size: 32, learning-rate: 0.1, momentum: 0.9, weight-decay: 0.0005}").unwrap();
        assert_eq!(e.holdout, Holdout::Fraction(0.25));
        assert_eq!(e.train.epochs, 3);
        let err = serde_yaml::from_str::<Experiment>("chanels: 8\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `chanels`"), "{err}");
    }
}
