//! The evaluation engine: one experiment's data on one device, ready to score candidates
//! with the gradient kernel and to train finalists. The CLI, the search loop and the
//! service all evaluate through it.

use std::fmt;
use std::str::FromStr;

use tch::{Device, Kind};

use crate::data::{Augment, DataError, DatasetSpec, ImageShape, Normalization, Split, TensorData};
use crate::measures::aggregate::Reference;
use crate::measures::{Measure, MeasureError, Measured, ScoreChoice, Suite};
use crate::model::NetworkSpec;
use crate::run::Experiment;
use crate::space::{Arch, Candidate};
use crate::train::{TrainConfig, TrainError, TrainResult, Trainer};

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

/// Architectures measured at once unless told otherwise: one on a CPU, where libtorch's
/// threads already share the cores within a network; several on a GPU, where one small
/// network leaves the device waiting on kernel launches (see [`crate::measures::pool`]).
pub fn default_workers(device: Device) -> usize {
    if device.is_cuda() { CUDA_WORKERS } else { 1 }
}

/// Workers on a GPU by default. Measured on an H200, each worker on a CUDA stream of its
/// own (`throughput --device cuda --workers 1,4,8,16,24`, host/benches/speed.md): 11.7, 35.4,
/// 48.1, 48.2 and 50.7 architectures a second; past 8 more threads buy next to nothing.
pub const CUDA_WORKERS: usize = 8;

/// Refuses images no network can take before any network is built: each of the two
/// reduction blocks halves the size with a stride-2 convolution (rounding up) beside a
/// 2×2 average pool (rounding down), so both sides must be multiples of 4 (and 8 at least:
/// see below). Otherwise every
/// score and training would fail alike, naming a tensor size instead of the dataset.
fn check_image_shapes(dataset: &DatasetSpec, split: &Split) -> Result<(), EngineError> {
    let (train, heldout) = (split.train.shape, split.heldout.shape);
    let (h, w) = (train.height, train.width);
    // 8 at least: at 4 the last stage would see 1×1 maps, where normalising each image on
    // its own leaves nothing but the bias, and every gradient before it is zero.
    if h < 8 || w < 8 || h % 4 != 0 || w % 4 != 0 {
        return Err(EngineError::Invalid(format!(
            "dataset {dataset}: its images are {h}×{w} pixels; the networks halve the size twice, so height and width must be multiples of 4, and at least 8"
        )));
    }
    if heldout != train {
        let size = |s: ImageShape| format!("{}×{}×{}", s.channels, s.height, s.width);
        let names = |files: &[std::path::PathBuf]| {
            let names: Vec<String> = files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            if names.is_empty() { String::new() } else { format!(" (read from {})", names.join(", ")) }
        };
        return Err(EngineError::Invalid(format!(
            "dataset {dataset}: its held-out images{} are {} (channels×height×width), its training images{} {}",
            names(&split.heldout.files),
            size(heldout),
            names(&split.train.files),
            size(train)
        )));
    }
    Ok(())
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
    Measure(#[from] MeasureError),
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// A candidate's score and the measures behind it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    /// The experiment's score (missing when its measure is).
    pub score: Option<f64>,
    pub measured: Measured,
}

/// An experiment loaded onto a device.
pub struct Engine {
    /// Anchors the aggregate's ranks (see [`crate::measures::aggregate`]).
    reference: Option<Reference>,
    experiment: Experiment,
    spec: NetworkSpec,
    suite: Suite,
    train: TensorData,
    heldout: TensorData,
    augment: Augment,
    device: Device,
    /// Architectures measured at once by [`Self::measure_all`] (see [`crate::measures::pool`]).
    workers: usize,
    /// The files the images came from.
    files: Vec<std::path::PathBuf>,
}

impl Engine {
    /// Loads the experiment's data onto `device`.
    pub fn new(experiment: &Experiment, device: Device) -> Result<Engine, EngineError> {
        let e = experiment;
        e.validate().map_err(EngineError::Invalid)?;
        let split = Split::load(&e.dataset, e.holdout, e.limit, e.seed)?;
        check_image_shapes(&e.dataset, &split)?;
        let norm = Normalization::of(&split.train);
        let place = |part: &crate::data::Dataset, which: &str| {
            norm.apply(part, device, Kind::Float).map_err(|err| {
                EngineError::Device(format!("dataset {}: its {} {which} images could not be placed on {device:?}: {err}", e.dataset, part.len()))
            })
        };
        let (train, heldout) = (place(&split.train, "training")?, place(&split.heldout, "held-out")?);
        let shape = split.train.shape;
        let spec = NetworkSpec {
            channels: e.channels,
            cells: e.cells,
            in_channels: shape.channels,
            image_size: (shape.height, shape.width),
            num_classes: split.train.num_classes as i64,
        };
        // The split is already a seeded shuffle: its first images are a seeded sample.
        let n = e.score_batch.min(split.train.len()) as i64;
        if n < 2 {
            return Err(EngineError::Invalid(format!(
                "dataset {}: the training split holds {} image(s); scoring needs a batch of at least 2 (raise the image limit, --limit)",
                e.dataset,
                split.train.len()
            )));
        }
        let suite = Suite::new(spec, train.images.narrow(0, 0, n), train.labels.narrow(0, 0, n), e.seed);
        let mut files = split.train.files.clone();
        files.extend(split.heldout.files.iter().filter(|f| !files.contains(f)).cloned().collect::<Vec<_>>());
        let workers = default_workers(device);
        Ok(Engine { reference: None, experiment: e.clone(), spec, suite, train, heldout, augment: split.train.augment, device, workers, files })
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

    /// The data files read (empty for the embedded dataset).
    pub fn files(&self) -> &[std::path::PathBuf] {
        &self.files
    }

    /// Number of (training, held-out) images.
    pub fn sizes(&self) -> (i64, i64) {
        (self.train.labels.size()[0], self.heldout.labels.size()[0])
    }

    /// The measure suite on this engine's scoring batch.
    pub fn suite(&self) -> &Suite {
        &self.suite
    }

    /// Sets how many architectures [`Self::measure_all`] measures at once (at least 1).
    pub fn set_workers(&mut self, workers: usize) {
        self.workers = workers.max(1);
    }

    /// How many architectures [`Self::measure_all`] measures at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Measures every candidate, [`Self::workers`] at a time, calling `on_done(index,
    /// result)` in the candidates' order; an error from `on_done` stops the work.
    pub fn measure_all<E>(
        &self,
        candidates: &[Candidate],
        measures: &[Measure],
        on_done: &mut dyn FnMut(usize, Result<Measured, MeasureError>) -> Result<(), E>,
    ) -> Result<(), E> {
        crate::measures::pool::measure_in_order(&self.suite, candidates, measures, self.workers, on_done)
    }

    /// Measures a candidate.
    pub fn measure(&self, candidate: &Candidate, measures: &[Measure]) -> Result<Measured, MeasureError> {
        self.suite.measure(candidate, measures)
    }

    /// The measures a score evaluation of `candidate` computes (see
    /// [`Experiment::score_measures_for`]).
    pub fn score_measures_for(&self, candidate: &Candidate) -> Vec<Measure> {
        self.experiment.score_measures_for(candidate)
    }

    /// Whether the score needs a reference sample that is not set yet.
    pub fn needs_reference(&self) -> bool {
        self.experiment.score == ScoreChoice::Aggregate && self.reference.is_none()
    }

    /// Identifies the reference sample: everything its values depend on. Equal keys mean
    /// equal references, so a cached one can be reused.
    pub fn reference_key(&self) -> String {
        let e = &self.experiment;
        serde_json::json!({
            "measures-version": crate::measures::VERSION,
            "dataset": e.dataset,
            "holdout": e.holdout_text(),
            "limit": e.limit,
            "channels": e.channels,
            "cells": e.cells,
            "score-batch": e.score_batch,
            "seed": e.seed,
            "reference": e.reference,
            "measures": e.aggregate.measures(),
        })
        .to_string()
    }

    /// The architectures of the reference sample: seeded, distinct, independent of any
    /// sample a command draws with the experiment's seed.
    pub fn reference_archs(&self) -> Vec<Arch> {
        Arch::sample(self.experiment.reference, self.experiment.seed ^ 0x7e7e_7e7e)
    }

    /// Measures the reference sample; `on_arch(done, total)` after each architecture.
    pub fn build_reference(&self, on_arch: &mut dyn FnMut(usize, usize)) -> Result<Reference, MeasureError> {
        let measures = self.experiment.aggregate.measures();
        let candidates: Vec<Candidate> = self.reference_archs().into_iter().map(Candidate::from).collect();
        let mut rows = Vec::with_capacity(candidates.len());
        self.measure_all::<MeasureError>(&candidates, &measures, &mut |i, measured| {
            rows.push(measured?.values);
            on_arch(i + 1, candidates.len());
            Ok(())
        })?;
        Ok(Reference::new(&measures, &rows))
    }

    /// Anchors the aggregate in `reference` (built by [`Self::build_reference`], perhaps
    /// read back from a cache).
    pub fn set_reference(&mut self, reference: Reference) -> Result<(), EngineError> {
        reference.check().map_err(|problem| EngineError::Invalid(format!("the reference sample is damaged: {problem}")))?;
        if !reference.covers(&self.experiment.aggregate) || reference.size != self.experiment.reference {
            return Err(EngineError::Invalid(format!(
                "the reference sample ({} architectures, measures {:?}) does not match the experiment's aggregate",
                reference.size,
                reference.sorted.keys().map(|m| m.name()).collect::<Vec<_>>()
            )));
        }
        self.reference = Some(reference);
        Ok(())
    }

    /// The reference sample anchoring the aggregate, once set.
    pub fn reference(&self) -> Option<&Reference> {
        self.reference.as_ref()
    }

    /// The score of `values` (measured by this engine): the aggregate or the chosen
    /// measure; `None` when the measure is missing. Panics never: an aggregate without a
    /// reference is an error the caller sees first through [`Self::needs_reference`].
    pub fn score_of(&self, values: &crate::measures::Values) -> Result<Option<f64>, EngineError> {
        match self.experiment.score {
            ScoreChoice::Measure(m) => Ok(values.get(&m).copied().flatten()),
            ScoreChoice::Aggregate => self.aggregate_of(values).map(Some),
        }
    }

    /// The rank aggregate of measured values, whatever the experiment's score is.
    pub fn aggregate_of(&self, values: &crate::measures::Values) -> Result<f64, EngineError> {
        let reference = self.reference.as_ref().ok_or_else(|| {
            EngineError::Invalid("the aggregate score needs the experiment's reference sample, which is not built yet".into())
        })?;
        Ok(self.experiment.aggregate.score(reference, values))
    }

    /// Measures a candidate and scores it.
    pub fn score(&self, candidate: &Candidate) -> Result<Scored, EngineError> {
        self.score_measured(self.suite.measure(candidate, &self.score_measures_for(candidate))?)
    }

    /// Scores a candidate measured (with [`Self::score_measures_for`]) beforehand, for example
    /// by [`Self::measure_all`].
    pub fn score_measured(&self, measured: Measured) -> Result<Scored, EngineError> {
        let score = self.score_of(&measured.values)?;
        Ok(Scored { score, measured })
    }

    /// Trains `arch` from the same initial weights it was scored with, for the
    /// experiment's epochs; `train_seed` drives shuffling and augmentation.
    pub fn train(&self, arch: &Arch, train_seed: u64, on_step: &mut dyn FnMut(usize, usize)) -> Result<TrainResult, TrainError> {
        self.train_for(arch, train_seed, self.experiment.train.epochs, on_step, &|| false)
    }

    /// Trains `arch` as [`Self::train`] does, for `epochs` epochs, stopping between steps
    /// once `cancelled()` holds.
    pub fn train_for(
        &self,
        arch: &Arch,
        train_seed: u64,
        epochs: usize,
        on_step: &mut dyn FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<TrainResult, TrainError> {
        // As for measuring (`Suite::measure`): a panic inside is this training's error.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            fail::fail_point!("engine::train");
            Trainer {
                spec: self.spec,
                config: TrainConfig { epochs, ..self.experiment.train },
                train: &self.train,
                heldout: &self.heldout,
                augment: self.augment,
            }
            .run(arch, self.experiment.seed, train_seed, on_step, cancelled)
        }))
        .unwrap_or_else(|panic| Err(TrainError::Panicked(crate::panic_message(&*panic))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_no_network_can_take_are_refused_naming_the_dataset() {
        use crate::data::Holdout;
        let dir = tempfile::tempdir().unwrap();
        let write = |part: &str, n: u32, side: u32| {
            let pixels = vec![7u8; (n * side * side) as usize];
            std::fs::write(dir.path().join(format!("{part}-images-idx3-ubyte")), crate::data::encode_idx(&[n, side, side], &pixels)).unwrap();
            let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            std::fs::write(dir.path().join(format!("{part}-labels-idx1-ubyte")), crate::data::encode_idx(&[n], &labels)).unwrap();
        };
        let experiment = |holdout| Experiment {
            dataset: DatasetSpec::Mnist(dir.path().to_owned()),
            holdout,
            channels: 2,
            cells: 1,
            score: ScoreChoice::Measure(Measure::Params),
            ..Experiment::default()
        };
        let folder = dir.path().display().to_string();
        write("train", 20, 30);
        let err = Engine::new(&experiment(Holdout::Fraction(0.5)), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains(&folder) && err.contains("30×30 pixels") && err.contains("multiples of 4"), "{err}");
        write("train", 20, 4);
        let err = Engine::new(&experiment(Holdout::Fraction(0.5)), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("4×4 pixels") && err.contains("at least 8"), "{err}");
        write("train", 20, 0);
        let err = Engine::new(&experiment(Holdout::Fraction(0.5)), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("images of 0×0 pixels"), "{err}");
        write("train", 20, 8);
        write("t10k", 10, 12);
        let err = Engine::new(&experiment(Holdout::Official), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("held-out images (read from t10k-images-idx3-ubyte") && err.contains("are 1×12×12"), "{err}");
        assert!(err.contains("training images (read from train-images-idx3-ubyte") && err.contains(") 1×8×8"), "{err}");
        write("t10k", 10, 8);
        let engine = Engine::new(&experiment(Holdout::Official), Device::Cpu).unwrap();
        assert_eq!(engine.sizes(), (20, 10));
        // Scoring compares two halves of a batch: a split of one image cannot be scored.
        write("train", 1, 8);
        let err = Engine::new(&experiment(Holdout::Official), Device::Cpu).err().unwrap().to_string();
        assert!(err.contains(&folder) && err.contains("holds 1 image(s)") && err.contains("at least 2"), "{err}");
    }

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
    fn engine_rejects_nonsense_and_scores_tiny_networks() {
        let bad = Experiment { channels: 0, ..Experiment::default() };
        assert!(matches!(Engine::new(&bad, Device::Cpu), Err(EngineError::Invalid(_))));
        let tiny = Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(50), ..Experiment::default() };
        let engine = Engine::new(&tiny, Device::Cpu).unwrap();
        assert_eq!(engine.sizes(), (50, 1000));
        assert_eq!(engine.spec().image_size, (28, 28));
        let measured = engine.measure(&Candidate::full(), &[Measure::Mgm]).unwrap();
        assert!(measured.get(Measure::Mgm).unwrap() > 0.0 && measured.info.params > 0);
    }
}
