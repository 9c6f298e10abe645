//! The gradient-kernel family: statistics of parameter gradients across samples, KNAS's
//! own line of thought.
//!
//! **MGM** (Xu et al., "KNAS: Green Neural Architecture Search", ICML 2021, §3): the mean
//! of the Gram matrix of per-sample gradients at initialisation,
//!
//! ```text
//! MGM = 1/n² Σ_ij ⟨g_i, g_j⟩ = ‖(1/n) Σ_i g_i‖²,   g_i = ∇_θ ℓ(x_i, y_i) at θ₀.
//! ```
//!
//! The identity on the right turns n backward passes into one: the gradient of the batch's
//! mean loss *is* the mean per-sample gradient — provided samples do not interact. Batch
//! normalisation is where they would: [`Measure::Mgm`] normalises each image by its own
//! statistics (BN on a batch of one, the protocol of the official KNAS code), so samples
//! are independent; [`Measure::MgmBatch`] uses the batch's statistics, as in training.
//!
//! MGM grows with the gradients' scale, and BN networks' gradients explode with depth at
//! initialisation, so the scale-free members of the family look at *agreement* instead:
//!
//! - **kernel alignment**: the batch is split in two halves; the cosine between their mean
//!   gradients is the off-diagonal of the normalised 2×2 gradient kernel.
//! - **ZiCo** (Li et al., ICLR 2023): per conv/linear layer, Σ_θ mean|g_θ| / std g_θ over
//!   the two halves' gradients (entries with zero spread left out), and the score is the
//!   sum of the layers' logarithms. A scale shared by a layer cancels.

use tch::{Kind, Reduction, Tensor};

use super::{Measure, MeasureError, Values, finite};
use crate::model::{Network, NormMode, Pass};

/// Mean cross-entropy of `logits` against `labels`.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_cross_entropy_loss::<&Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

/// Σ over tensors of the squared entries, in double precision (undefined gradients, of
/// parameters the loss does not reach, count as zero).
pub(crate) fn squared_norm(grads: &[Tensor]) -> Result<f64, tch::TchError> {
    let squares: Vec<Tensor> =
        // Squared in double too: a float32 square overflows past 1.8e19, which exploding
        // networks reach, and the measure would go missing while the gradient norm is finite.
        grads.iter().filter(|g| g.defined()).map(|g| g.f_to_kind(Kind::Double)?.f_square()?.f_sum(Kind::Double)).collect::<Result<_, _>>()?;
    if squares.is_empty() {
        return Ok(0.0);
    }
    Tensor::f_stack(&squares, 0)?.f_sum(Kind::Double)?.f_double_value(&[])
}

/// The per-sample-BN pass: mean gradients of the batch's two halves, and the kernel
/// measures read from them. (Always two halves, even for MGM alone, so that a measure's
/// value never depends on which other measures were asked for.)
pub(super) fn per_sample(
    net: &Network,
    images: &Tensor,
    labels: &Tensor,
    wanted: &[Measure],
    values: &mut Values,
) -> Result<(), MeasureError> {
    let want = |m: Measure| wanted.contains(&m);
    let halves = want(Measure::KernelAlignment) || want(Measure::Zico);
    if !(halves || want(Measure::Mgm)) {
        return Ok(());
    }
    let n = images.size()[0];
    let groups = if n >= 2 { 2 } else { 1 };
    let params: Vec<&Tensor> = net.params().iter().map(|p| &p.tensor).collect();
    // Gradient of each group's mean loss: with BN per image, the mean of its per-sample
    // gradients.
    let mut group_grads: Vec<(f64, Vec<Tensor>)> = Vec::with_capacity(groups);
    for g in 0..groups {
        let (start, end) = (n * g as i64 / groups as i64, n * (g as i64 + 1) / groups as i64);
        let x = images.f_narrow(0, start, end - start)?;
        let y = labels.f_narrow(0, start, end - start)?;
        let logits = net.run(&x, Pass::measuring(NormMode::Instance), false).logits;
        let loss = cross_entropy(&logits, &y)?;
        let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        group_grads.push(((end - start) as f64 / n as f64, grads));
    }
    if want(Measure::Mgm) {
        // The batch's mean gradient is the size-weighted mean of the groups' means.
        let mean: Vec<Tensor> = (0..params.len())
            .map(|i| {
                let parts: Vec<Tensor> = group_grads
                    .iter()
                    .filter(|(_, g)| g[i].defined())
                    .map(|(w, g)| g[i].f_mul_scalar(*w))
                    .collect::<Result<_, _>>()?;
                parts.into_iter().try_fold(Tensor::new(), |acc, p| if acc.defined() { acc.f_add(&p) } else { Ok(p) })
            })
            .collect::<Result<_, tch::TchError>>()?;
        values.insert(Measure::Mgm, finite(squared_norm(&mean)?));
    }
    if groups == 2 {
        let (a, b) = (&group_grads[0].1, &group_grads[1].1);
        if want(Measure::KernelAlignment) {
            values.insert(Measure::KernelAlignment, alignment(a, b)?);
        }
        if want(Measure::Zico) {
            let layers: Vec<usize> = (0..params.len()).filter(|&i| net.params()[i].kind.is_layer_weight()).collect();
            values.insert(Measure::Zico, zico(&layers, a, b)?);
        }
    }
    Ok(())
}

/// ⟨a, b⟩ / (‖a‖ ‖b‖) over all parameters; missing when either side is zero.
fn alignment(a: &[Tensor], b: &[Tensor]) -> Result<Option<f64>, tch::TchError> {
    let (mut dot, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        if !(x.defined() && y.defined()) {
            continue;
        }
        let (x, y) = (x.f_to_kind(Kind::Double)?, y.f_to_kind(Kind::Double)?);
        dot += x.f_mul(&y)?.f_sum(Kind::Double)?.f_double_value(&[])?;
        aa += x.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        bb += y.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
    }
    Ok(finite(dot / (aa * bb).sqrt()))
}

/// ZiCo with two gradient samples per entry: mean|g| = (|a|+|b|)/2 and the population
/// standard deviation is |a−b|/2, so each kept entry contributes (|a|+|b|) / |a−b|.
fn zico(layers: &[usize], a: &[Tensor], b: &[Tensor]) -> Result<Option<f64>, tch::TchError> {
    let mut score = 0.0;
    for &i in layers {
        let (x, y) = (&a[i], &b[i]);
        if !(x.defined() && y.defined()) {
            continue;
        }
        let (x, y) = (x.f_to_kind(Kind::Double)?, y.f_to_kind(Kind::Double)?);
        // An overflowed gradient would drop out of the ratio below (NaN compares false),
        // leaving a finite score; the measure is missing instead.
        if !(super::all_finite(&x)? && super::all_finite(&y)?) {
            return Ok(None);
        }
        let spread = x.f_sub(&y)?.f_abs()?;
        let keep = spread.f_gt(0.0)?;
        let ratio = x.f_abs()?.f_add(&y.f_abs()?)?.f_div(&spread.f_where_scalarother(&keep, 1.0)?)?;
        let total = ratio.f_where_scalarother(&keep, 0.0)?.f_sum(Kind::Double)?.f_double_value(&[])?;
        if total > 0.0 {
            score += total.ln();
        }
    }
    Ok(finite(score))
}

/// MGM by its definition, for checking the fast path: one forward/backward per sample (BN
/// on a batch of one), every node computed as NB201 does, the n×n Gram matrix of the
/// flattened gradients formed explicitly and averaged. Slow.
pub fn reference_mgm(net: &Network, images: &Tensor, labels: &Tensor) -> Result<f64, MeasureError> {
    let params: Vec<&Tensor> = net.params().iter().map(|p| &p.tensor).collect();
    let mut rows = Vec::new();
    for i in 0..images.size()[0] {
        let x = images.f_narrow(0, i, 1)?;
        let y = labels.f_narrow(0, i, 1)?;
        let loss = cross_entropy(&net.forward(&x, NormMode::Batch), &y)?;
        let grads = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        let flat: Vec<Tensor> = grads
            .iter()
            .zip(&params)
            .map(|(g, v)| if g.defined() { g.flatten(0, -1) } else { v.zeros_like().flatten(0, -1) })
            .collect();
        rows.push(Tensor::f_cat(&flat, 0)?.f_to_kind(Kind::Double)?);
    }
    let g = Tensor::f_stack(&rows, 0)?;
    let gram = g.f_mm(&g.f_transpose(0, 1)?)?;
    Ok(gram.f_mean(Kind::Double)?.f_double_value(&[])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measures::tests::tiny_suite;
    use crate::space::{Arch, Candidate};

    #[test]
    fn zico_of_gradients_that_overflowed_is_missing() {
        let t = |v: &[f64]| Tensor::from_slice(v);
        assert!(zico(&[0], &[t(&[2.0, 1.0])], &[t(&[1.0, 2.0])]).unwrap().is_some_and(f64::is_finite));
        assert_eq!(zico(&[0], &[t(&[f64::NAN, 1.0])], &[t(&[1.0, 2.0])]).unwrap(), None);
        assert_eq!(zico(&[0], &[t(&[f64::INFINITY, 1.0])], &[t(&[1.0, 2.0])]).unwrap(), None);
        assert_eq!(zico(&[0], &[t(&[f64::NAN; 2])], &[t(&[f64::NAN; 2])]).unwrap(), None);
    }

    #[test]
    fn squared_norms_of_float32_gradients_past_the_float32_square_stay_finite() {
        // 2e19² = 4e38 overflows float32 (max 3.4e38); the norm is taken in double.
        let grads = [Tensor::from_slice(&[2e19f32, 1.0]), Tensor::new()];
        let norm = squared_norm(&grads).unwrap();
        assert!((norm / 4e38 - 1.0).abs() < 1e-6, "{norm}");
    }

    #[test]
    fn fast_per_sample_mgm_equals_the_reference_loop() {
        let suite = tiny_suite(6, Kind::Double, 3);
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
        let (images, labels) = suite.batch();
        for candidate in &candidates {
            let fast = suite.measure(candidate, &[Measure::Mgm]).unwrap().get(Measure::Mgm).unwrap();
            let (_vs, mut net) = suite.network(candidate);
            net.set_exhaustive(true);
            let reference = reference_mgm(&net, images, labels).unwrap();
            let rel = (fast - reference).abs() / reference.abs().max(1e-300);
            assert!(rel <= 1e-4, "{candidate}: fast {fast} vs reference {reference} (rel {rel:e})");
            assert!(fast > 0.0, "{candidate}: {fast}");
        }
    }

    #[test]
    fn modes_differ_and_architectures_differ() {
        let suite = tiny_suite(8, Kind::Float, 0);
        let both = [Measure::Mgm, Measure::MgmBatch];
        let a = suite.measure(&Arch::from_index(100).unwrap().into(), &both).unwrap();
        let b = suite.measure(&Arch::from_index(15_000).unwrap().into(), &both).unwrap();
        assert_ne!(a.get(Measure::Mgm), a.get(Measure::MgmBatch));
        assert_ne!(a.get(Measure::MgmBatch), b.get(Measure::MgmBatch));
    }

    #[test]
    fn scale_free_measures_ignore_a_gradient_scale() {
        let t = |v: &[f64]| Tensor::from_slice(v);
        let a = vec![t(&[1.0, -2.0, 3.0]), t(&[0.5])];
        let b = vec![t(&[2.0, -1.0, 3.0]), t(&[0.5])];
        let scaled = |g: &[Tensor]| g.iter().map(|x| x * 1e6).collect::<Vec<_>>();
        let before = alignment(&a, &b).unwrap().unwrap();
        let after = alignment(&scaled(&a), &scaled(&b)).unwrap().unwrap();
        assert!((before - after).abs() < 1e-12 && before > 0.0 && before < 1.0, "{before} {after}");
        // ZiCo by hand: layer 0 keeps entries 0 and 1 ((1+2)/1 twice), entry 2 has no spread.
        let z = zico(&[0], &a, &b).unwrap().unwrap();
        assert!((z - 6f64.ln()).abs() < 1e-12, "{z}");
        assert!((zico(&[0], &scaled(&a), &scaled(&b)).unwrap().unwrap() - z).abs() < 1e-9);
        // Identical halves have no spread at all: ZiCo is 0, not a log of 0.
        assert_eq!(zico(&[0, 1], &a, &a).unwrap(), Some(0.0));
    }
}
