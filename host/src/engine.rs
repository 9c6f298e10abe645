//! The evaluation engine: one experiment's data on one device, ready to score candidates
//! with the gradient kernel and to train finalists. The CLI, the search loop and the
//! service all evaluate through it.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::data::{Augment, DataError, DatasetSpec, Holdout, Normalization, Split, TensorData};
use crate::kernel::{KernelScorer, Score, ScoreError, ScoreMode};
use crate::model::NetworkSpec;
use crate::space::{Arch, Candidate};
use crate::train::{TrainConfig, TrainError, TrainResult, Trainer};

/// Everything that determines an experiment's numbers (the device aside).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Experiment {
    /// Dataset (see [`DatasetSpec`]).
    pub dataset: DatasetSpec,
    /// Held-out images: a fraction of the training part, or `test` for the official test part.
    #[serde(with = "holdout_serde")]
    pub holdout: Holdout,
    /// Cap on training images (a seeded sample); none by default.
    pub limit: Option<usize>,
    /// Channels of the first stage, C.
    pub channels: i64,
    /// Cells per stage, N.
    pub cells: i64,
    /// Images in the kernel-scoring batch.
    pub score_batch: usize,
    /// What per-sample gradients mean under batch normalisation.
    pub score_mode: ScoreMode,
    /// Training of finalists.
    pub train: TrainConfig,
    /// Seed for the data split, the scoring batch and the network initialisation.
    pub seed: u64,
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
            score_mode: ScoreMode::PerSample,
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

/// Where tensors live: `auto` picks CUDA when libtorch sees a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<DeviceChoice, String> {
        match text {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("unknown device {text:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(choice: DeviceChoice) -> String {
        choice.to_string()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device, checking that a requested GPU exists.
    pub fn resolve(self) -> Result<Device, EngineError> {
        match self {
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = tch::Cuda::device_count() as usize;
                if n < count {
                    Ok(Device::Cuda(n))
                } else if count == 0 {
                    Err(EngineError::Device(format!("cuda:{n} requested, but libtorch sees no CUDA device")))
                } else {
                    Err(EngineError::Device(format!("cuda:{n} requested, but libtorch sees only {count} CUDA device(s)")))
                }
            }
        }
    }
}

/// Why the engine could not start or evaluate.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Device(String),
    #[error("invalid experiment: {0}")]
    Invalid(String),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// An experiment loaded onto a device.
pub struct Engine {
    experiment: Experiment,
    spec: NetworkSpec,
    scorer: KernelScorer,
    train: TensorData,
    heldout: TensorData,
    augment: Augment,
    device: Device,
}

impl Engine {
    /// Loads the experiment's data onto `device`.
    pub fn new(experiment: &Experiment, device: Device) -> Result<Engine, EngineError> {
        let e = experiment;
        if e.channels < 1 || e.cells < 0 || e.score_batch == 0 || e.train.batch_size == 0 {
            return Err(EngineError::Invalid(format!(
                "channels ({}) and batch sizes ({}, {}) must be positive, cells ({}) not negative",
                e.channels, e.score_batch, e.train.batch_size, e.cells
            )));
        }
        let split = Split::load(&e.dataset, e.holdout, e.limit, e.seed)?;
        let norm = Normalization::of(&split.train);
        let train = norm.apply(&split.train, device, Kind::Float);
        let heldout = norm.apply(&split.heldout, device, Kind::Float);
        let shape = split.train.shape;
        let spec = NetworkSpec {
            channels: e.channels,
            cells: e.cells,
            in_channels: shape.channels,
            image_size: (shape.height, shape.width),
            num_classes: split.train.num_classes as i64,
        };
        // The split is already a seeded shuffle: its first images are a seeded sample.
        let n = (e.score_batch as i64).min(split.train.len() as i64);
        let scorer = KernelScorer::new(
            spec,
            e.score_mode,
            train.images.narrow(0, 0, n),
            train.labels.narrow(0, 0, n),
            e.seed,
        );
        Ok(Engine { experiment: e.clone(), spec, scorer, train, heldout, augment: split.train.augment, device })
    }

    /// The experiment this engine runs.
    pub fn experiment(&self) -> &Experiment {
        &self.experiment
    }

    /// The network shape derived from the experiment and its dataset.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// The device tensors live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Number of (training, held-out) images.
    pub fn sizes(&self) -> (i64, i64) {
        (self.train.labels.size()[0], self.heldout.labels.size()[0])
    }

    /// Gradient-kernel score of a candidate.
    pub fn score(&self, candidate: &Candidate) -> Result<Score, ScoreError> {
        self.scorer.score(candidate)
    }

    /// A scorer on this engine's scoring batch in another mode (for comparing modes).
    pub fn scorer(&self, mode: ScoreMode) -> KernelScorer {
        self.scorer.with_mode(mode)
    }

    /// Trains `arch` from the same initial weights it was scored with; `train_seed` drives
    /// shuffling and augmentation.
    pub fn train(&self, arch: &Arch, train_seed: u64, on_step: &mut dyn FnMut(usize, usize)) -> Result<TrainResult, TrainError> {
        Trainer {
            spec: self.spec,
            config: self.experiment.train,
            train: &self.train,
            heldout: &self.heldout,
            augment: self.augment,
        }
        .run(arch, self.experiment.seed, train_seed, on_step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("gpu".parse::<DeviceChoice>().unwrap_err().contains("expected auto, cpu, cuda or cuda:N"));
        assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            let err = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
            assert!(err.contains("libtorch sees no CUDA device"), "{err}");
        }
    }

    #[test]
    fn experiments_read_from_yaml_reject_unknown_keys() {
        let e: Experiment = serde_yaml::from_str("channels: 8\nholdout: test\nscore-mode: batch\n").unwrap();
        assert_eq!((e.channels, e.holdout, e.score_mode), (8, Holdout::Official, ScoreMode::Batch));
        let e: Experiment = serde_yaml::from_str("holdout: 0.25\ntrain: {epochs: 3, batch-size: 32, learning-rate: 0.1, momentum: 0.9, weight-decay: 0.0005}").unwrap();
        assert_eq!(e.holdout, Holdout::Fraction(0.25));
        assert_eq!(e.train.epochs, 3);
        let err = serde_yaml::from_str::<Experiment>("chanels: 8\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `chanels`"), "{err}");
    }

    #[test]
    fn engine_rejects_nonsense_and_scores_tiny_networks() {
        let bad = Experiment { channels: 0, ..Experiment::default() };
        assert!(matches!(Engine::new(&bad, Device::Cpu), Err(EngineError::Invalid(_))));
        let tiny = Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(50), ..Experiment::default() };
        let engine = Engine::new(&tiny, Device::Cpu).unwrap();
        assert_eq!(engine.sizes(), (50, 1000));
        assert_eq!(engine.spec().image_size, (28, 28));
        let score = engine.score(&Candidate::full()).unwrap();
        assert!(score.mgm > 0.0 && score.info.params > 0);
    }
}
