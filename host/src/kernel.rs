//! The gradient-kernel score of KNAS (Xu et al., "KNAS: Green Neural Architecture Search",
//! ICML 2021, §3): the mean of the Gram matrix of per-sample gradients at initialisation,
//!
//! ```text
//! MGM = 1/n² Σ_ij ⟨g_i, g_j⟩ = ‖(1/n) Σ_i g_i‖²,   g_i = ∇_θ ℓ(x_i, y_i) at θ₀.
//! ```
//!
//! The identity on the right turns n backward passes into one: the gradient of the batch's
//! mean loss *is* the mean per-sample gradient — provided samples do not interact. Batch
//! normalisation is where they would, hence the two [`ScoreMode`]s.

use std::time::Instant;

use tch::{Kind, Reduction, Tensor, nn};

use crate::model::{Network, NetworkInfo, NetworkSpec, NormMode};
use crate::space::Candidate;

/// What "per-sample gradient" means under batch normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreMode {
    /// BN normalises with the statistics of the whole scoring batch, as in training.
    /// g_i is then the gradient of sample i's loss through the batch-coupled network and
    /// MGM is the squared norm of the batch-mean gradient.
    Batch,
    /// Each sample is normalised by its own statistics — exactly what BN computes on a
    /// batch of one, the protocol of the official KNAS code — so samples are independent
    /// and one batched pass gives the same MGM as n single-sample passes.
    PerSample,
}

impl ScoreMode {
    fn norm(self) -> NormMode {
        match self {
            ScoreMode::Batch => NormMode::Batch,
            ScoreMode::PerSample => NormMode::Instance,
        }
    }

    /// The mode's name as the CLI and stores write it.
    pub fn name(self) -> &'static str {
        match self {
            ScoreMode::Batch => "batch",
            ScoreMode::PerSample => "per-sample",
        }
    }
}

/// A scored candidate.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Score {
    /// The mean of the gradient Gram matrix.
    pub mgm: f64,
    /// Size of the network scored.
    pub info: NetworkInfo,
    /// Wall time of construction and scoring.
    pub seconds: f64,
    /// Wall time of the forward/backward pass and the reduction alone.
    pub compute_seconds: f64,
}

/// Why a candidate could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("libtorch failed while scoring: {0}")]
    Torch(#[from] tch::TchError),
    #[error("the score is not finite ({0}): the network's gradients overflowed")]
    NotFinite(f64),
}

/// Scores candidates on one fixed batch of images.
#[derive(Debug)]
pub struct KernelScorer {
    spec: NetworkSpec,
    mode: ScoreMode,
    seed: u64,
    images: Tensor,
    labels: Tensor,
}

impl KernelScorer {
    /// A scorer for networks of `spec` on the batch (`images [n, C, H, W]`, int64 `labels`),
    /// whose device and float kind decide where and in which precision scoring runs.
    /// Networks are initialised from `seed`, the same for every candidate, so that scores
    /// compare architectures rather than draws of weights.
    pub fn new(spec: NetworkSpec, mode: ScoreMode, images: Tensor, labels: Tensor, seed: u64) -> KernelScorer {
        KernelScorer { spec, mode, seed, images, labels }
    }

    /// The same scorer (batch, seed, spec) in another mode.
    pub fn with_mode(&self, mode: ScoreMode) -> KernelScorer {
        KernelScorer { mode, images: self.images.shallow_clone(), labels: self.labels.shallow_clone(), ..*self }
    }

    /// The scoring mode.
    pub fn mode(&self) -> ScoreMode {
        self.mode
    }

    /// Number of images in the scoring batch.
    pub fn batch_size(&self) -> i64 {
        self.images.size()[0]
    }

    /// The scoring batch: images `[n, C, H, W]` and their int64 labels.
    pub fn batch(&self) -> (&Tensor, &Tensor) {
        (&self.images, &self.labels)
    }

    /// The shape of the networks scored.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// Builds a freshly initialised network on the batch's device and kind.
    pub(crate) fn network(&self, candidate: &Candidate) -> (nn::VarStore, Network) {
        let mut vs = nn::VarStore::new(self.images.device());
        let net = Network::new(&vs.root(), &self.spec, candidate, self.seed);
        if self.images.kind() != Kind::Float {
            vs.set_kind(self.images.kind());
        }
        (vs, net)
    }

    /// MGM from one batched forward/backward pass (the fast path).
    pub fn score(&self, candidate: &Candidate) -> Result<Score, ScoreError> {
        let start = Instant::now();
        let (vs, net) = self.network(candidate);
        let vars = vs.trainable_variables();
        let compute_start = Instant::now();
        let logits = net.forward(&self.images, self.mode.norm());
        let loss = cross_entropy(&logits, &self.labels)?;
        let grads = Tensor::f_run_backward(&[&loss], &vars, false, false)?;
        // Σ over parameters of ‖mean gradient‖², summed in double precision on the device
        // and read back once.
        let squares: Vec<Tensor> = grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| g.f_square().and_then(|s| s.f_sum(Kind::Double)))
            .collect::<Result<_, _>>()?;
        let mgm = if squares.is_empty() { 0.0 } else { Tensor::f_stack(&squares, 0)?.f_sum(Kind::Double)?.f_double_value(&[])? };
        finite(mgm)?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(Score { mgm, info: net.info(), seconds, compute_seconds: compute_start.elapsed().as_secs_f64() })
    }

    /// MGM by its definition, for `per-sample` mode: one forward/backward per sample (BN
    /// on a batch of one), every node computed as NB201 does, the n×n Gram matrix of the
    /// flattened gradients formed explicitly and averaged. Slow; it checks [`Self::score`].
    pub fn score_reference(&self, candidate: &Candidate) -> Result<Score, ScoreError> {
        assert_eq!(self.mode, ScoreMode::PerSample, "the reference loop defines per-sample MGM");
        let start = Instant::now();
        let (vs, mut net) = self.network(candidate);
        net.set_exhaustive(true);
        let vars = vs.trainable_variables();
        let compute_start = Instant::now();
        let mut rows = Vec::new();
        for i in 0..self.batch_size() {
            let x = self.images.f_narrow(0, i, 1)?;
            let y = self.labels.f_narrow(0, i, 1)?;
            let loss = cross_entropy(&net.forward(&x, NormMode::Batch), &y)?;
            let grads = Tensor::f_run_backward(&[&loss], &vars, false, false)?;
            let flat: Vec<Tensor> = grads
                .iter()
                .zip(&vars)
                .map(|(g, v)| if g.defined() { g.flatten(0, -1) } else { v.zeros_like().flatten(0, -1) })
                .collect();
            rows.push(Tensor::f_cat(&flat, 0)?.f_to_kind(Kind::Double)?);
        }
        let g = Tensor::f_stack(&rows, 0)?;
        let gram = g.f_mm(&g.f_transpose(0, 1)?)?;
        let mgm = gram.f_mean(Kind::Double)?.f_double_value(&[])?;
        finite(mgm)?;
        let seconds = start.elapsed().as_secs_f64();
        Ok(Score { mgm, info: net.info(), seconds, compute_seconds: compute_start.elapsed().as_secs_f64() })
    }
}

pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_cross_entropy_loss::<&Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

fn finite(mgm: f64) -> Result<(), ScoreError> {
    if mgm.is_finite() { Ok(()) } else { Err(ScoreError::NotFinite(mgm)) }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::data::{DatasetSpec, Normalization, Part};
    use crate::space::Arch;

    fn batch(n: usize, kind: Kind) -> (Tensor, Tensor) {
        let data = DatasetSpec::Mnist5k.load(Part::Train).unwrap();
        let picked = data.subset(&(0..n).map(|i| i * 97).collect::<Vec<_>>());
        let t = Normalization::of(&data).apply(&picked, Device::Cpu, kind);
        (t.images, t.labels)
    }

    fn tiny() -> NetworkSpec {
        NetworkSpec { channels: 4, cells: 1, in_channels: 1, image_size: (28, 28), num_classes: 10 }
    }

    #[test]
    fn batched_per_sample_mgm_equals_the_reference_loop() {
        let (images, labels) = batch(6, Kind::Double);
        let scorer = KernelScorer::new(tiny(), ScoreMode::PerSample, images, labels, 3);
        let candidates: Vec<Candidate> = vec![
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
                .parse()
                .unwrap(),
            // Dead node 1 and a `none` into the output: the fast path skips both.
            "|nor_conv_1x1~0|+|avg_pool_3x3~0|none~1|+|nor_conv_3x3~0|none~1|skip_connect~2|".parse().unwrap(),
            "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|".parse().unwrap(),
            "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|".parse().unwrap(),
            Candidate::full(),
        ];
        for candidate in &candidates {
            let fast = scorer.score(candidate).unwrap().mgm;
            let reference = scorer.score_reference(candidate).unwrap().mgm;
            let rel = (fast - reference).abs() / reference.abs().max(1e-300);
            assert!(rel <= 1e-4, "{candidate}: fast {fast} vs reference {reference} (rel {rel:e})");
            assert!(fast > 0.0, "{candidate}: {fast}");
        }
    }

    #[test]
    fn scores_are_deterministic_and_depend_on_the_seed() {
        let (images, labels) = batch(8, Kind::Float);
        let arch: Candidate = Arch::from_index(9_876).unwrap().into();
        for mode in [ScoreMode::Batch, ScoreMode::PerSample] {
            let scorer = KernelScorer::new(tiny(), mode, images.shallow_clone(), labels.shallow_clone(), 1);
            let a = scorer.score(&arch).unwrap().mgm;
            let b = scorer.score(&arch).unwrap().mgm;
            assert_eq!(a.to_bits(), b.to_bits(), "{mode:?}");
            let other = KernelScorer::new(tiny(), mode, images.shallow_clone(), labels.shallow_clone(), 2);
            assert_ne!(a, other.score(&arch).unwrap().mgm, "{mode:?}");
        }
    }

    #[test]
    fn modes_differ_and_architectures_differ() {
        let (images, labels) = batch(8, Kind::Float);
        let batch_mode = KernelScorer::new(tiny(), ScoreMode::Batch, images.shallow_clone(), labels.shallow_clone(), 0);
        let per_sample = KernelScorer::new(tiny(), ScoreMode::PerSample, images, labels, 0);
        let a: Candidate = Arch::from_index(100).unwrap().into();
        let b: Candidate = Arch::from_index(15_000).unwrap().into();
        assert_ne!(batch_mode.score(&a).unwrap().mgm, per_sample.score(&a).unwrap().mgm);
        assert_ne!(batch_mode.score(&a).unwrap().mgm, batch_mode.score(&b).unwrap().mgm);
    }
}
