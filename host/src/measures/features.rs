//! Measures read from feature maps and from the Jacobians between them.
//!
//! **AZ-NAS** (Lee & Ham, "AZ-NAS: Assembling Zero-Cost Proxies for Network Architecture
//! Search", CVPR 2024), on the stem's output and every block's (cells and reductions), in
//! the batch-statistics forward pass:
//!
//! - **expressivity**: per map, reshape to (B·H·W) × C, centre, take the eigenvalues of the
//!   channel covariance, normalise them to a distribution and take its entropy; sum over
//!   the maps. Features spread over many directions score higher.
//! - **progressivity**: the smallest increase of that entropy from one map to the next.
//! - **trainability**: for each block, push random ±1 signs from its output back to its
//!   input (space-to-depth when the block halves the resolution); σ is the largest
//!   singular value of G_inᵀ G_out / (B·H·W) and the block scores −σ − 1/σ + 2, which is 0
//!   at σ = 1 and falls for exploding (σ > 1) and vanishing (σ < 1) gradients alike. A
//!   block that passes the signs back unchanged (an identity cell) fails the measure, as
//!   in the paper. The mean over blocks is the score.
//!
//! **MeCo** (Jiang et al., NeurIPS 2023): one image alone (BN on its own statistics, as a
//! batch of one in training mode), every layer's output reshaped to C × (H·W); the score
//! is the sum over layers of the smallest eigenvalue of the channels' Pearson correlation
//! matrix, each layer counted as often as NB201's PyTorch modules return it. Channels that
//! carry different information score higher.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::{MeasureError, all_finite, finite, psd_eigenvalues};
use crate::model::{Network, NormMode, Pass, Tap};

/// The entropy of each feature map's normalised covariance spectrum; `None` for a map with
/// no variance at all.
fn spectral_entropies(features: &[Tensor]) -> Result<Vec<Option<f64>>, tch::TchError> {
    let _no_grad = tch::no_grad_guard();
    // Channels-last rows; centred, the product is accurate in the features' own precision,
    // and only the small C×C covariance goes to double.
    let rows = |f: &Tensor| -> Result<Tensor, tch::TchError> { f.f_permute([0, 2, 3, 1])?.f_reshape([-1, f.size()[1]]) };
    let covariance = |rows: &Tensor| -> Result<Tensor, tch::TchError> {
        let centred = rows.f_sub(&rows.f_mean_dim(0, true, rows.kind())?)?;
        centred.f_transpose(0, 1)?.f_mm(&centred)?.f_to_kind(Kind::Double)?.f_div_scalar(rows.size()[0] as f64)
    };
    // Every map's covariance first, then all of them to the host at once.
    let covariances = features.iter().map(|f| covariance(&rows(f)?)).collect::<Result<Vec<_>, _>>()?;
    let covariances = super::to_host(&covariances)?;
    let mut out = Vec::with_capacity(features.len());
    for (f, mut cov) in features.iter().zip(covariances) {
        if !all_finite(&cov)? {
            // Features so large that their products overflow (a supernet summing every
            // op through many cells): the spectrum's entropy does not depend on the
            // features' scale, so it is taken from the features scaled to at most 1
            // (scaled before centring: the mean itself may overflow).
            let rows = rows(f)?;
            let largest = rows.f_abs()?.f_max()?.f_double_value(&[])?;
            if largest.is_finite() && largest > 0.0 {
                cov = covariance(&rows.f_div_scalar(largest)?)?;
            }
        }
        // Covariances are positive semi-definite: negative eigenvalues are rounding.
        let Some(s) = psd_eigenvalues(&cov)? else {
            out.push(None);
            continue;
        };
        let s = s.f_clamp_min(0.0)?;
        let total = s.f_sum(Kind::Double)?.f_double_value(&[])?;
        if !(total > 0.0 && total.is_finite()) {
            out.push(None);
            continue;
        }
        let p = s.f_div_scalar(total)?;
        let entropy = p.f_neg()?.f_mul(&p.f_add_scalar(1e-8)?.f_log()?)?.f_sum(Kind::Double)?.f_double_value(&[])?;
        out.push(finite(entropy));
    }
    Ok(out)
}

/// Expressivity and progressivity from the block outputs; both missing when a map has no
/// variance.
pub(super) fn expressivity(features: &[Tensor]) -> Result<(Option<f64>, Option<f64>), MeasureError> {
    let Some(entropies) = spectral_entropies(features)?.into_iter().collect::<Option<Vec<f64>>>() else {
        return Ok((None, None));
    };
    let progressivity = entropies.windows(2).map(|w| w[1] - w[0]).min_by(f64::total_cmp);
    Ok((finite(entropies.iter().sum()), progressivity.and_then(finite)))
}

/// What a sign tensor is drawn for: a shape, an element kind and a device.
type SignKey = (Vec<i64>, Kind, tch::Device);

/// Random ±1 tensors, one per shape, each drawn from the seed and the shape alone.
#[derive(Debug)]
pub struct SignCache {
    seed: u64,
    cache: RefCell<HashMap<SignKey, Tensor>>,
}

impl SignCache {
    pub(super) fn new(seed: u64) -> SignCache {
        SignCache { seed, cache: RefCell::new(HashMap::new()) }
    }

    fn like(&self, t: &Tensor) -> Tensor {
        let key = (t.size(), t.kind(), t.device());
        let mut cache = self.cache.borrow_mut();
        cache
            .entry(key)
            .or_insert_with(|| {
                let shape_seed = t.size().iter().fold(self.seed ^ 0x5167_5e75, |h, &d| h.rotate_left(13) ^ d as u64);
                let mut rng = ChaCha8Rng::seed_from_u64(shape_seed);
                let signs: Vec<f32> = (0..t.numel()).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
                Tensor::from_slice(&signs).view(t.size().as_slice()).to_kind(t.kind()).to_device(t.device())
            })
            .shallow_clone()
    }
}

/// Trainability from the block outputs of a pass that kept its whole graph (see the
/// module documentation). Missing when some block is an exact identity.
pub(super) fn trainability(features: &[Tensor], signs: &SignCache) -> Result<Option<f64>, MeasureError> {
    let mut pending = Vec::with_capacity(features.len());
    for i in (1..features.len()).rev() {
        let (f_in, f_out) = (&features[i - 1], &features[i]);
        pending.push(block_sigma(f_in, f_in.requires_grad(), f_out, signs, true)?);
    }
    pending.reverse();
    Ok(trainability_from(resolve(pending)?))
}

/// Each block's σ, gathered as a pass that cuts its graph between blocks computes them
/// ([`Network::run_block_by_block`](crate::model::Network::run_block_by_block)), so that
/// only one block's graph is alive at a time.
pub(super) struct BlockSigmas<'s> {
    signs: &'s SignCache,
    sigmas: Result<Vec<PendingSigma>, MeasureError>,
    /// Whether the last block's output was computed from anything that requires grad: in
    /// the whole graph, a block after a cell that outputs constant zeros (every edge into
    /// its output `none`) has an input with no graph, and its σ is taken as 0. Here each
    /// block's input requires grad, so an output that requires grad stands for "had a graph":
    /// the same in NB201 networks, where every cell repeats one genotype (a constant
    /// cell is followed by a constant cell or by a reduction, which has weights).
    last_output_had_graph: bool,
}

impl<'s> BlockSigmas<'s> {
    pub(super) fn new(signs: &'s SignCache) -> BlockSigmas<'s> {
        // The stem's output depends on the stem's weights.
        BlockSigmas { signs, sigmas: Ok(Vec::new()), last_output_had_graph: true }
    }

    /// Called with each block's input and output, in order; the first error is kept.
    pub(super) fn visit(&mut self, input: &Tensor, output: &Tensor) {
        if let Ok(sigmas) = &mut self.sigmas {
            let input_had_graph = std::mem::replace(&mut self.last_output_had_graph, output.requires_grad());
            match block_sigma(input, input_had_graph, output, self.signs, false) {
                Ok(sigma) => sigmas.push(sigma),
                Err(error) => self.sigmas = Err(error),
            }
        }
    }

    /// Trainability, exactly as [`trainability`] computes it from the whole graph.
    pub(super) fn finish(self) -> Result<Option<f64>, MeasureError> {
        Ok(trainability_from(resolve(self.sigmas?)?))
    }
}

/// One block's σ, or that the block passes the signs back unchanged.
#[derive(Debug, Clone, Copy)]
enum BlockSigma {
    Sigma(f64),
    Identity,
}

/// One block's σ as the backward pass leaves it: still on the network's device, so that a
/// GPU is not waited for block by block (see [`resolve`]).
enum PendingSigma {
    /// Nothing flows back: the block's output ignores its input (σ = 0).
    Zero,
    Computed {
        /// A boolean scalar: whether the gradient at the input equals the signs at the
        /// output (an identity block).
        identity: Tensor,
        /// The Gram matrix whose largest eigenvalue is σ² ([`block_gram`]).
        gram: Tensor,
    },
}

/// The blocks' σ on the host: every block's flag and Gram matrix brought over in a few
/// transfers, then decomposed there.
fn resolve(pending: Vec<PendingSigma>) -> Result<Vec<BlockSigma>, MeasureError> {
    let (flags, grams): (Vec<Tensor>, Vec<Tensor>) = pending
        .iter()
        .filter_map(|p| match p {
            PendingSigma::Computed { identity, gram } => Some((identity.shallow_clone(), gram.shallow_clone())),
            PendingSigma::Zero => None,
        })
        .unzip();
    let (flags, grams) = (super::to_host(&flags)?, super::to_host(&grams)?);
    let mut computed = 0;
    let mut sigmas = Vec::with_capacity(pending.len());
    for p in &pending {
        sigmas.push(match p {
            PendingSigma::Zero => BlockSigma::Sigma(0.0),
            PendingSigma::Computed { .. } => {
                let (flag, gram) = (&flags[computed], &grams[computed]);
                computed += 1;
                if flag.f_int64_value(&[])? != 0 { BlockSigma::Identity } else { BlockSigma::Sigma(sigma_from_gram(gram)?) }
            }
        });
    }
    Ok(sigmas)
}

/// The mean of the blocks' −σ − 1/σ + 2 (given in block order, summed from the last block
/// back, the order the score has always been summed in); missing when a block is an
/// identity, or when there is no block.
fn trainability_from(sigmas: Vec<BlockSigma>) -> Option<f64> {
    let mut total = 0.0;
    let mut pairs = 0;
    for sigma in sigmas.into_iter().rev() {
        let BlockSigma::Sigma(sigma) = sigma else { return None };
        total += -sigma - 1.0 / (sigma + 1e-6) + 2.0;
        pairs += 1;
    }
    if pairs == 0 { None } else { finite(total / pairs as f64) }
}

/// σ of the block from `f_in` to `f_out`, still pending: random signs pushed back from its
/// output to its input (`keep_graph` when a later backward shares the graph). `in_graph`:
/// whether the input is part of the network's graph (not the constant output of a dead
/// cell).
fn block_sigma(f_in: &Tensor, in_graph: bool, f_out: &Tensor, signs: &SignCache, keep_graph: bool) -> Result<PendingSigma, MeasureError> {
    let g_out = signs.like(f_out);
    let g_in = if f_out.requires_grad() && in_graph {
        let pushed = f_out.f_mul(&g_out)?.f_sum(Kind::Double)?;
        Tensor::f_run_backward(&[&pushed], &[f_in], keep_graph, false)?.into_iter().next().filter(Tensor::defined)
    } else {
        None
    };
    let Some(g_in) = g_in else { return Ok(PendingSigma::Zero) };
    let identity = match g_in.size() == g_out.size() {
        true => g_in.f_eq_tensor(&g_out.f_to_kind(g_in.kind())?)?.f_all()?,
        false => Tensor::f_zeros([], (Kind::Bool, g_in.device()))?,
    };
    Ok(PendingSigma::Computed { identity, gram: block_gram(&g_in, &g_out)? })
}

/// σ_max of G_inᵀ G_out / (B·H·W), G the (B·H·W) × C rows of each gradient; a larger
/// input is folded space-to-depth to the output's resolution first.
#[cfg(test)]
fn largest_singular_value(g_in: &Tensor, g_out: &Tensor) -> Result<f64, tch::TchError> {
    sigma_from_gram(&block_gram(g_in, g_out)?)
}

/// The Gram matrix of M = G_inᵀ G_out / (B·H·W) (the smaller of MᵀM and MMᵀ), in double
/// precision, on the gradients' device: σ_max² is its largest eigenvalue.
///
/// The C × C product is summed image by image from the NCHW layout as it is (a batched
/// C × HW by HW × C product in the gradients' precision, then summed over images): no
/// channels-last copy and no double-precision copy of the whole gradient, which took a
/// fifth of the aggregate's time on a CPU. Only the small matrix goes to double.
fn block_gram(g_in: &Tensor, g_out: &Tensor) -> Result<Tensor, tch::TchError> {
    let (si, so) = (g_in.size(), g_out.size());
    let g_in = if si[2] != so[2] { g_in.f_pixel_unshuffle(si[2] / so[2].max(1))? } else { g_in.shallow_clone() };
    let per_image = |g: &Tensor| -> Result<Tensor, tch::TchError> {
        let s = g.size();
        g.f_reshape([s[0], s[1], s[2] * s[3]])
    };
    let (gi, go) = (per_image(&g_in)?, per_image(g_out)?);
    let n = (so[0] * so[2] * so[3]) as f64;
    let m = gi.f_bmm(&go.f_transpose(1, 2)?)?.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?.f_div_scalar(n)?;
    if m.size()[0] < m.size()[1] { m.f_mm(&m.f_transpose(0, 1)?) } else { m.f_transpose(0, 1)?.f_mm(&m) }
}

/// σ from [`block_gram`]'s matrix: the square root of its largest eigenvalue.
fn sigma_from_gram(gram: &Tensor) -> Result<f64, tch::TchError> {
    Ok(match psd_eigenvalues(gram)? {
        Some(eigenvalues) => eigenvalues.f_max()?.f_double_value(&[])?.max(0.0).sqrt(),
        None => f64::NAN,
    })
}

/// Collects every layer's output for one image (a [`Tap`]), grouped by shape.
#[derive(Default)]
struct LayerOutputs {
    /// (channels, positions) → the layers of that shape. Ordered, so the sum is taken in
    /// the same order every time.
    by_shape: RefCell<BTreeMap<(i64, i64), ShapeGroup>>,
}

/// The layers of one shape: their C × H·W matrices, and how often each counts.
type ShapeGroup = (Vec<Tensor>, Vec<f64>);

impl Tap for LayerOutputs {
    fn layer_output(&self, x: &Tensor, times: u32) {
        let size = x.size();
        // Spatial maps only; a 1×1 map has no correlation (MeCo counts it as 0).
        if size.len() != 4 || size[2] * size[3] < 2 {
            return;
        }
        let mut groups = self.by_shape.borrow_mut();
        let (maps, weights) = groups.entry((size[1], size[2] * size[3])).or_default();
        maps.push(x.get(0).reshape([size[1], size[2] * size[3]]));
        weights.push(f64::from(times));
    }
}

/// MeCo on the batch's first image.
pub(super) fn meco(net: &Network, images: &Tensor) -> Result<Option<f64>, MeasureError> {
    let _no_grad = tch::no_grad_guard();
    let outputs = LayerOutputs::default();
    let first = images.f_narrow(0, 0, 1)?;
    net.run(&first, Pass { all_nodes: true, tap: Some(&outputs), ..Pass::measuring(NormMode::Instance) }, false);
    let mut total = 0.0;
    for (maps, weights) in outputs.by_shape.into_inner().into_values() {
        // Pearson correlation of channels, batched over layers of the same shape.
        let x = Tensor::f_stack(&maps, 0)?.f_to_kind(Kind::Double)?;
        if !all_finite(&x)? {
            // Overflowed features have no correlation to speak of: missing, rather than
            // their channels silently counted as constant below.
            return Ok(None);
        }
        let centred = x.f_sub(&x.f_mean_dim(2, true, Kind::Double)?)?;
        let cov = centred.f_bmm(&centred.f_transpose(1, 2)?)?;
        let sd = cov.f_diagonal(0, 1, 2)?.f_sqrt()?;
        let corr = cov.f_div(&sd.f_unsqueeze(2)?.f_mul(&sd.f_unsqueeze(1)?)?)?;
        // Constant channels have no correlation: their rows become 0, as in the paper.
        let corr = corr.f_nan_to_num(0.0, 0.0, 0.0)?;
        let Some(eigenvalues) = psd_eigenvalues(&corr)? else { return Ok(None) };
        let smallest = eigenvalues.f_amin([1i64].as_slice(), false)?;
        let smallest = Vec::<f64>::try_from(smallest.f_to_device(tch::Device::Cpu)?)?;
        total += smallest.iter().zip(&weights).map(|(v, w)| v * w).sum::<f64>();
    }
    Ok(finite(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measures::Measure;
    use crate::measures::tests::{CONVS, tiny_suite};

    #[test]
    fn sigma_is_that_of_the_channels_last_product_in_double() {
        // The formula as first written: (B·H·W) × C rows in double, Mᵀ-side Gram matrix.
        let reference = |g_in: &Tensor, g_out: &Tensor| -> f64 {
            let (si, so) = (g_in.size(), g_out.size());
            let g_in = if si[2] != so[2] { g_in.pixel_unshuffle(si[2] / so[2]) } else { g_in.shallow_clone() };
            let rows = |g: &Tensor| g.permute([0, 2, 3, 1]).reshape([-1, g.size()[1]]).to_kind(Kind::Double);
            let (gi, go) = (rows(&g_in), rows(g_out));
            let m = gi.transpose(0, 1).mm(&go) / go.size()[0] as f64;
            m.transpose(0, 1).mm(&m).linalg_eigvalsh("L").max().double_value(&[]).sqrt()
        };
        tch::manual_seed(7);
        let float = (Kind::Float, tch::Device::Cpu);
        // Same resolution, and an input at twice the output's resolution with other channels.
        for (shape_in, shape_out) in [([4i64, 6, 5, 5], [4i64, 6, 5, 5]), ([4, 3, 8, 8], [4, 5, 4, 4])] {
            let (g_in, g_out) = (Tensor::randn(shape_in, float), Tensor::randn(shape_out, float));
            let (fast, slow) = (largest_singular_value(&g_in, &g_out).unwrap(), reference(&g_in, &g_out));
            assert!((fast - slow).abs() <= 1e-5 * slow, "{fast} vs {slow} for {shape_in:?} → {shape_out:?}");
        }
    }

    #[test]
    fn entropy_is_highest_for_spread_features() {
        // Four channels that vary independently vs. four copies of one channel.
        let spread = Tensor::randn([8, 4, 5, 5], (Kind::Double, tch::Device::Cpu));
        let copy = spread.narrow(1, 0, 1).repeat([1, 4, 1, 1]);
        let e = spectral_entropies(&[spread, copy, Tensor::zeros([2, 3, 4, 4], (Kind::Double, tch::Device::Cpu))]).unwrap();
        assert!(e[0].unwrap() > 1.2 && e[0].unwrap() <= 4f64.ln() + 1e-9, "{e:?}");
        assert!(e[1].unwrap() < 0.01, "one direction only: {e:?}");
        assert_eq!(e[2], None, "no variance");
    }

    #[test]
    fn entropy_of_features_too_large_to_square_is_that_of_the_same_features_scaled() {
        // float32 features of 1e25: their products overflow, as a supernet's did on MNIST.
        let features = Tensor::randn([8, 4, 5, 5], (Kind::Float, tch::Device::Cpu));
        let huge = &features * 1e25;
        let e = spectral_entropies(&[features, huge.shallow_clone()]).unwrap();
        let (plain, scaled) = (e[0].unwrap(), e[1].unwrap());
        assert!((plain - scaled).abs() <= 1e-5 * plain, "{plain} vs {scaled}");
        // Infinite features have no spectrum: missing, not an error.
        let infinite = huge.f_mul_scalar(1e20).unwrap();
        assert_eq!(spectral_entropies(&[infinite]).unwrap(), vec![None]);
    }

    #[test]
    fn eigenvalues_of_non_finite_matrices_are_missing_and_of_finite_ones_right() {
        let m = Tensor::from_slice(&[2.0f64, 1.0, 1.0, 2.0]).view([2, 2]);
        let mut e = Vec::<f64>::try_from(psd_eigenvalues(&m).unwrap().unwrap()).unwrap();
        e.sort_by(f64::total_cmp);
        assert!((e[0] - 1.0).abs() < 1e-12 && (e[1] - 3.0).abs() < 1e-12, "{e:?}");
        let nan = Tensor::from_slice(&[f64::NAN, 1.0, 1.0, 2.0]).view([2, 2]);
        assert!(psd_eigenvalues(&nan).unwrap().is_none());
    }

    #[test]
    fn the_fallback_spectrum_of_psd_matrices_is_their_eigenvalues() {
        // A batch of three 5×5 positive semi-definite matrices (MeCo's shape), one of rank 2.
        tch::manual_seed(3);
        let a = Tensor::randn([3, 5, 5], (Kind::Double, tch::Device::Cpu));
        let mut psd = a.bmm(&a.transpose(1, 2));
        let low_rank = a.narrow(2, 0, 2);
        psd = Tensor::cat(&[psd.narrow(0, 0, 2), low_rank.narrow(0, 2, 1).bmm(&low_rank.narrow(0, 2, 1).transpose(1, 2))], 0);
        let by_svd = crate::measures::psd_eigenvalues_by_svd(&psd).unwrap().sort(1, false).0;
        let exact = psd.linalg_eigvalsh("L").clamp_min(0.0).sort(1, false).0;
        let worst = (&by_svd - &exact).abs().max().double_value(&[]);
        assert!(worst < 1e-9, "{by_svd} vs {exact}");
    }

    #[test]
    fn singular_value_of_an_identity_block_is_one_and_a_scaled_block_more() {
        let g = Tensor::from_slice(&[1.0f64, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, -1.0]).view([2, 1, 2, 2]);
        assert!((largest_singular_value(&g, &g).unwrap() - 1.0).abs() < 1e-12);
        assert!((largest_singular_value(&(&g * 3.0), &g).unwrap() - 3.0).abs() < 1e-12);
        // A 2×2 map folded into 4 channels of a 1×1 map.
        let out = Tensor::from_slice(&[1.0f64, -1.0]).view([2, 1, 1, 1]);
        assert!(largest_singular_value(&g, &out).unwrap() > 0.0);
    }

    #[test]
    fn an_identity_cell_fails_trainability_and_convolutions_pass_it() {
        let s = tiny_suite(8, Kind::Float, 6);
        let identity = "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|";
        let value = |arch: &str| s.measure(&arch.parse().unwrap(), &[Measure::Trainability]).unwrap().get(Measure::Trainability);
        assert_eq!(value(identity), None);
        let convs = value(CONVS).unwrap();
        assert!(convs < 0.0 && convs > -100.0, "{convs}");
    }

    #[test]
    fn meco_is_a_sum_of_eigenvalues_in_range() {
        let s = tiny_suite(4, Kind::Float, 7);
        let m = s.measure(&CONVS.parse().unwrap(), &[Measure::Meco]).unwrap().get(Measure::Meco).unwrap();
        assert!(m > 0.0 && m < 200.0, "{m}");
    }
}
