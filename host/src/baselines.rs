//! Published training-free measures, implemented on knas's own networks so that
//! `knas correlate` can put MGM next to them on the same architectures, data, batch and
//! initial weights. A claim that MGM ranks well means nothing without these beside it.
//!
//! Each is computed as its paper defines it (higher = predicted better):
//!
//! - **SNIP** (Lee et al., ICLR 2019; as a NAS proxy, Abdelfattah et al., ICLR 2021):
//!   Σ |θ ⊙ ∂ℓ/∂θ| for the batch loss, BN on batch statistics.
//! - **SynFlow** (Tanaka et al., NeurIPS 2020; Abdelfattah et al.): the network with every
//!   parameter replaced by its absolute value, BN as the identity it is at initialisation
//!   (running statistics), one all-ones input in double precision; R = Σ logits and the
//!   score is Σ θ ⊙ ∂R/∂θ. Data-free.
//! - **Jacobian covariance** (Mellor et al., "Neural Architecture Search without Training",
//!   arXiv v1, 2020): the correlation matrix Σ_J of the per-image input gradients of the
//!   summed logits, scored −Σ_i [log(λ_i + k) + 1/(λ_i + k)] over its eigenvalues, k = 1e-5.
//! - **NASWOT** (Mellor et al., ICML 2021): the binary code of every ReLU's input sign per
//!   image; K_H[i,j] = number of units on which images i and j agree; score log |det K_H|.
//!   Computed on the exhaustive network (every node, as NB201 builds it), as published.
//!
//! Gradient norm (Abdelfattah et al.) needs no entry: it is √MGM in `batch` mode, so it
//! ranks exactly as that mode does.

use std::cell::RefCell;

use tch::{Kind, Tensor};

use crate::kernel::{KernelScorer, ScoreError, cross_entropy};
use crate::model::NormMode;
use crate::space::Candidate;

/// A published training-free measure (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// Σ|θ ⊙ g| of the batch loss (Lee et al. 2019).
    Snip,
    /// Data-free synaptic flow of the absolute-valued network (Tanaka et al. 2020).
    Synflow,
    /// Correlation of input Jacobians (Mellor et al. 2020, v1).
    Jacov,
    /// log-determinant of the ReLU-code Hamming kernel (Mellor et al. 2021).
    Naswot,
}

impl Baseline {
    /// Every baseline, in the order reports list them.
    pub const ALL: [Baseline; 4] = [Baseline::Snip, Baseline::Synflow, Baseline::Jacov, Baseline::Naswot];

    /// The name reports and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Snip => "snip",
            Baseline::Synflow => "synflow",
            Baseline::Jacov => "jacov",
            Baseline::Naswot => "naswot",
        }
    }

    /// The measure's value for `candidate`, on `scorer`'s batch, spec and initial weights.
    /// −∞ where the measure is defined to fail (Jacobian covariance of a network whose
    /// output does not depend on its input).
    pub fn measure(self, scorer: &KernelScorer, candidate: &Candidate) -> Result<f64, ScoreError> {
        let value = match self {
            Baseline::Snip => snip(scorer, candidate)?,
            Baseline::Synflow => synflow(scorer, candidate)?,
            Baseline::Jacov => jacov(scorer, candidate)?,
            Baseline::Naswot => naswot(scorer, candidate)?,
        };
        if value.is_nan() || value == f64::INFINITY { Err(ScoreError::NotFinite(value)) } else { Ok(value) }
    }
}

/// Σ over parameters of Σ|θ ⊙ g|, summed in double precision.
fn saliency(vars: &[Tensor], grads: &[Tensor]) -> Result<f64, ScoreError> {
    let mut total = 0.0;
    for (v, g) in vars.iter().zip(grads) {
        if g.defined() {
            total += v.f_mul(g)?.f_abs()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        }
    }
    Ok(total)
}

fn snip(scorer: &KernelScorer, candidate: &Candidate) -> Result<f64, ScoreError> {
    let (images, labels) = scorer.batch();
    let (vs, net) = scorer.network(candidate);
    let vars = vs.trainable_variables();
    let loss = cross_entropy(&net.forward(images, NormMode::Batch), labels)?;
    let grads = Tensor::f_run_backward(&[&loss], &vars, false, false)?;
    saliency(&vars, &grads)
}

fn synflow(scorer: &KernelScorer, candidate: &Candidate) -> Result<f64, ScoreError> {
    let (images, _) = scorer.batch();
    let (mut vs, net) = scorer.network(candidate);
    // Double precision: the product of absolute weights over 17+ layers overflows float32.
    vs.set_kind(Kind::Double);
    tch::no_grad(|| -> Result<(), tch::TchError> {
        for (_, mut v) in vs.variables() {
            let _in_place = v.f_abs_()?;
        }
        Ok(())
    })?;
    let vars = vs.trainable_variables();
    let size = images.size();
    let ones = Tensor::f_ones([1, size[1], size[2], size[3]], (Kind::Double, images.device()))?;
    // Eval mode reads the running statistics (mean 0, variance 1 at initialisation), so BN
    // is the identity SynFlow assumes.
    let flow = net.forward(&ones, NormMode::Eval).f_sum(Kind::Double)?;
    let grads = Tensor::f_run_backward(&[&flow], &vars, false, false)?;
    saliency(&vars, &grads)
}

fn jacov(scorer: &KernelScorer, candidate: &Candidate) -> Result<f64, ScoreError> {
    let (images, _) = scorer.batch();
    let (_vs, net) = scorer.network(candidate);
    let x = images.f_detach()?.f_set_requires_grad(true)?;
    let total = net.forward(&x, NormMode::Batch).f_sum(Kind::Double)?;
    let grads = Tensor::f_run_backward(&[&total], &[&x], false, false)?;
    let Some(jacobian) = grads.first().filter(|g| g.defined()) else {
        // The output ignores the input (a cell of `none`s): no information flows at all.
        return Ok(f64::NEG_INFINITY);
    };
    let corr = jacobian.f_flatten(1, -1)?.f_to_kind(Kind::Double)?.f_corrcoef()?;
    if corr.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0 {
        // An image whose gradient is constant has no correlation: the same verdict.
        return Ok(f64::NEG_INFINITY);
    }
    const K: f64 = 1e-5;
    let eig = corr.f_linalg_eigvalsh("L")?.f_clamp_min(0.0)?.f_add_scalar(K)?;
    let score = eig.f_log()?.f_add(&eig.f_reciprocal()?)?.f_sum(Kind::Double)?.f_double_value(&[])?;
    Ok(-score)
}

fn naswot(scorer: &KernelScorer, candidate: &Candidate) -> Result<f64, ScoreError> {
    let (images, _) = scorer.batch();
    let (_vs, mut net) = scorer.network(candidate);
    net.set_exhaustive(true);
    let n = images.size()[0];
    // K_H, summed over every ReLU as the pass runs; the first libtorch error is kept.
    let kernel = RefCell::new(Tensor::f_zeros([n, n], (Kind::Double, images.device())));
    let add_codes = |x: &Tensor| {
        let mut kernel = kernel.borrow_mut();
        if let Ok(k) = &*kernel {
            *kernel = agreements(x).and_then(|a| k.f_add(&a));
        }
    };
    // Only the codes matter; the logits are dropped.
    let _logits = tch::no_grad(|| net.forward_probed(images, NormMode::Batch, &add_codes));
    let kernel = kernel.into_inner()?;
    let (_sign, log_abs_det) = Tensor::f_linalg_slogdet(&kernel)?;
    Ok(log_abs_det.f_double_value(&[])?)
}

/// Per pair of images, the number of units of this ReLU input on which their codes
/// (x > 0) agree: c_i·c_j + (1−c_i)·(1−c_j) = D − |c_i| − |c_j| + 2 c_i·c_j.
fn agreements(x: &Tensor) -> Result<Tensor, tch::TchError> {
    let codes = x.f_gt(0.0)?.f_flatten(1, -1)?.f_to_kind(Kind::Double)?;
    let units = codes.size()[1] as f64;
    let ones = codes.f_sum_dim_intlist(1, false, Kind::Double)?;
    codes
        .f_mm(&codes.f_transpose(0, 1)?)?
        .f_mul_scalar(2.0)?
        .f_sub(&ones.f_unsqueeze(1)?)?
        .f_sub(&ones.f_unsqueeze(0)?)?
        .f_add_scalar(units)
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::data::{DatasetSpec, Normalization, Part};
    use crate::kernel::ScoreMode;
    use crate::model::NetworkSpec;

    fn scorer(seed: u64) -> KernelScorer {
        let data = DatasetSpec::Mnist5k.load(Part::Train).unwrap();
        let picked = data.subset(&(0..8).map(|i| i * 97).collect::<Vec<_>>());
        let t = Normalization::of(&data).apply(&picked, Device::Cpu, Kind::Float);
        let spec = NetworkSpec { channels: 4, cells: 1, in_channels: 1, image_size: (28, 28), num_classes: 10 };
        KernelScorer::new(spec, ScoreMode::PerSample, t.images, t.labels, seed)
    }

    const CONVS: &str = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|";
    const NONES: &str = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|";

    #[test]
    fn every_baseline_is_finite_and_deterministic_for_a_working_cell() {
        let (a, b) = (scorer(1), scorer(1));
        let cell: Candidate = CONVS.parse().unwrap();
        for baseline in Baseline::ALL {
            let first = baseline.measure(&a, &cell).unwrap();
            assert!(first.is_finite(), "{}: {first}", baseline.name());
            assert_eq!(first.to_bits(), baseline.measure(&b, &cell).unwrap().to_bits(), "{}", baseline.name());
        }
    }

    #[test]
    fn a_cell_that_cuts_the_input_off_ranks_below_a_working_one() {
        let s = scorer(2);
        let (convs, nones): (Candidate, Candidate) = (CONVS.parse().unwrap(), NONES.parse().unwrap());
        assert_eq!(Baseline::Jacov.measure(&s, &nones).unwrap(), f64::NEG_INFINITY);
        // SynFlow: no path from input to output carries no flow through the cell's parameters.
        for baseline in [Baseline::Synflow, Baseline::Jacov, Baseline::Naswot] {
            let (good, dead) = (baseline.measure(&s, &convs).unwrap(), baseline.measure(&s, &nones).unwrap());
            assert!(good > dead, "{}: working {good} vs cut off {dead}", baseline.name());
        }
    }

    #[test]
    fn naswot_counts_agreeing_units_so_identical_images_make_the_kernel_singular() {
        let s = scorer(3);
        let (images, labels) = s.batch();
        let twice = Tensor::cat(&[images.narrow(0, 0, 1), images.narrow(0, 0, 1)], 0);
        let same = KernelScorer::new(*s.spec(), ScoreMode::Batch, twice, labels.narrow(0, 0, 2), 3);
        // Two equal images agree on every unit: K_H is D·[[1,1],[1,1]], determinant zero.
        let value = Baseline::Naswot.measure(&same, &CONVS.parse().unwrap()).unwrap();
        assert!(value < -20.0, "log|det| of a singular kernel should be hugely negative, got {value}");
        let distinct = Baseline::Naswot.measure(&s, &CONVS.parse().unwrap()).unwrap();
        assert!(distinct > 10.0, "distinct images: {distinct}");
    }
}
