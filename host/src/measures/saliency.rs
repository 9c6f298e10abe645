//! Parameter saliency, as the zero-cost proxies paper computes it (Abdelfattah et al.,
//! "Zero-Cost Proxies for Lightweight NAS", ICLR 2021): sums over the convolution and
//! linear *weights* (not BN parameters or biases).
//!
//! - **SNIP** (Lee et al., ICLR 2019): Σ |W ⊙ ∂L/∂W| for the batch loss, BN on batch
//!   statistics.
//! - **Gradient norm**: Σ over layers of ‖∂L/∂W‖ — a sum of per-layer norms, not the norm
//!   of the whole gradient.
//! - **SynFlow** (Tanaka et al., NeurIPS 2020): every parameter replaced by its absolute
//!   value, BN the identity it is at initialisation (running statistics: mean 0, variance
//!   1), one all-ones input in double precision; R = Σ logits and the score is
//!   Σ W ⊙ ∂R/∂W. Data-free.

use tch::{Kind, Tensor, nn};

use super::{MeasureError, finite};
use crate::model::{Network, NormMode};

/// `term(W, g)` (a scalar in double precision) for each layer weight `W` with a gradient
/// `g`, brought to the host in one transfer, in the order of `net.params()`. One transfer
/// rather than one per layer: on a GPU each waits until the device has caught up.
fn layer_terms(
    net: &Network,
    grads: &[Tensor],
    term: impl Fn(&Tensor, &Tensor) -> Result<Tensor, tch::TchError>,
) -> Result<Vec<f64>, tch::TchError> {
    let mut terms = Vec::new();
    for (param, g) in net.params().iter().zip(grads) {
        if param.kind.is_layer_weight() && g.defined() {
            terms.push(term(&param.tensor, g)?);
        }
    }
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    Vec::<f64>::try_from(Tensor::f_stack(&terms, 0)?.f_to_device(tch::Device::Cpu)?)
}

/// Σ |W ⊙ g| over layer weights; `grads` aligned with `net.params()`.
pub(super) fn snip(net: &Network, grads: &[Tensor]) -> Result<f64, tch::TchError> {
    let terms = layer_terms(net, grads, |w, g| w.f_mul(g)?.f_abs()?.f_sum(Kind::Double))?;
    Ok(terms.iter().fold(0.0, |total, t| total + t))
}

/// Σ ‖g_W‖ over layer weights; `grads` aligned with `net.params()`.
pub(super) fn grad_norm(net: &Network, grads: &[Tensor]) -> Result<f64, tch::TchError> {
    let terms = layer_terms(net, grads, |_, g| g.f_to_kind(Kind::Double)?.f_square()?.f_sum(Kind::Double))?;
    Ok(terms.iter().fold(0.0, |total, t| total + t.sqrt()))
}

/// SynFlow. Rewrites the network's weights (absolute values, double precision): call it
/// last. `images` gives the input's shape and device only.
pub(super) fn synflow(vs: &mut nn::VarStore, net: &Network, images: &Tensor) -> Result<Option<f64>, MeasureError> {
    // Double precision: the product of absolute weights over 17+ layers overflows float32.
    vs.set_kind(Kind::Double);
    tch::no_grad(|| -> Result<(), tch::TchError> {
        for (_, mut v) in vs.variables() {
            let _in_place = v.f_abs_()?;
        }
        Ok(())
    })?;
    let size = images.size();
    let ones = Tensor::f_ones([1, size[1], size[2], size[3]], (Kind::Double, images.device()))?;
    // Eval mode reads the running statistics, so BN is the identity SynFlow assumes.
    let flow = net.forward(&ones, NormMode::Eval).f_sum(Kind::Double)?;
    let params: Vec<&Tensor> = net.params().iter().map(|p| &p.tensor).collect();
    let grads = Tensor::f_run_backward(&[&flow], &params, false, false)?;
    let terms = layer_terms(net, &grads, |w, g| w.f_mul(g)?.f_sum(Kind::Double))?;
    Ok(finite(terms.iter().fold(0.0, |total, t| total + t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measures::Measure;
    use crate::measures::tests::{CONVS, tiny_suite};

    #[test]
    fn snip_and_grad_norm_count_layer_weights_only() {
        let suite = tiny_suite(8, Kind::Double, 4);
        let (_vs, net) = suite.network(&CONVS.parse().unwrap());
        let params: Vec<&Tensor> = net.params().iter().map(|p| &p.tensor).collect();
        // Gradients of ones: SNIP is then Σ|W| over layer weights, gradient norm Σ √size.
        let ones: Vec<Tensor> = params.iter().map(|p| p.ones_like()).collect();
        let (mut abs_sum, mut norms) = (0.0, 0.0);
        for p in net.params().iter().filter(|p| p.kind.is_layer_weight()) {
            abs_sum += p.tensor.abs().sum(Kind::Double).double_value(&[]);
            norms += (p.tensor.numel() as f64).sqrt();
        }
        assert!((snip(&net, &ones).unwrap() - abs_sum).abs() < 1e-9 * abs_sum);
        assert!((grad_norm(&net, &ones).unwrap() - norms).abs() < 1e-9 * norms);
        assert!(net.params().iter().any(|p| !p.kind.is_layer_weight()), "BN parameters exist and are left out");
    }

    #[test]
    fn synflow_is_positive_and_grows_with_paths() {
        let suite = tiny_suite(4, Kind::Float, 5);
        let one_conv = "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|";
        let a = suite.measure(&one_conv.parse().unwrap(), &[Measure::Synflow]).unwrap().get(Measure::Synflow).unwrap();
        let b = suite.measure(&CONVS.parse().unwrap(), &[Measure::Synflow]).unwrap().get(Measure::Synflow).unwrap();
        assert!(a > 0.0 && b > a, "{a} {b}");
    }
}
