//! The training-free measure suite: every way knas judges a randomly initialised network.
//!
//! One module per family of measures, and one shared step. [`Suite::measure`] builds the
//! network once from the experiment's seed, runs only the passes the requested measures
//! need — each pass once — and hands each family what it reads:
//!
//! | pass | what it yields | read by |
//! |---|---|---|
//! | per-sample gradients (BN per image, the batch in two halves) | one mean gradient per half | [`kernel`]: MGM, kernel alignment, ZiCo |
//! | batch forward (BN on batch statistics, every node computed) | ReLU codes, block outputs | [`activation`]: NASWOT, SWAP; [`features`]: expressivity, progressivity |
//! | … its backward from the loss | parameter gradients | [`kernel`]: MGM (batch); [`saliency`]: SNIP, gradient norm |
//! | … its backward from the logits' sum | input Jacobian | [`jacobian`]: Jacobian covariance |
//! | … block-to-block backward of random signs | block Jacobian products | [`features`]: trainability |
//! | one image alone | every layer's output | [`features`]: MeCo |
//! | the same weights made absolute, in double precision | synaptic flow | [`saliency`]: SynFlow |
//!
//! Every measure is oriented so that **higher predicts better** by its own rationale (kernel
//! alignment is measured to rank NAS-Bench-201 in reverse; it is kept as defined). A value
//! that is not finite (a network with no path from input to output, an overflow) is
//! *missing*, never a number in a ranking: [`aggregate`] ranks missing values last.

pub mod activation;
pub mod aggregate;
mod cuda_stream;
pub mod features;
pub mod jacobian;
pub mod kernel;
pub mod pool;
pub mod saliency;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use tch::{Kind, Tensor, nn};

use crate::model::{Network, NetworkInfo, NetworkSpec};
use crate::space::Candidate;

/// Version of the measures' definitions: bumped whenever a measure's numbers change, so
/// that cached reference samples are not mixed with new values.
pub const VERSION: u32 = 4;

/// A training-free measure. Names are the CLI's and the stores' (kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// KNAS's gradient kernel, per-sample BN.
    Mgm,
    /// KNAS's gradient kernel, batch BN.
    MgmBatch,
    /// Cosine between the mean gradients of the batch's two halves.
    KernelAlignment,
    /// ZiCo: per-layer log of mean |g| over std g.
    Zico,
    /// Σ of the layers' gradient norms.
    GradNorm,
    /// Σ |θ ⊙ g|.
    Snip,
    /// Synaptic flow of the absolute-valued network.
    Synflow,
    /// Jacobian covariance.
    Jacov,
    /// log-determinant of the ReLU-code Hamming kernel.
    Naswot,
    /// Distinct sample-wise activation patterns.
    Swap,
    /// Σ of the layers' smallest channel-correlation eigenvalue.
    Meco,
    /// AZ-NAS expressivity.
    Expressivity,
    /// AZ-NAS progressivity.
    Progressivity,
    /// AZ-NAS trainability.
    Trainability,
    /// Trainable parameters.
    Params,
    /// Multiply–accumulates of a forward pass.
    Flops,
}

/// A family of measures: what part of the network they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Statistics of parameter gradients across samples (KNAS's own line).
    Kernel,
    /// Parameter saliency.
    Saliency,
    /// Activation patterns.
    Activation,
    /// Input Jacobians.
    Jacobian,
    /// Feature maps and block-to-block Jacobians.
    Features,
    /// Size of the network.
    Size,
}

/// What a measure is, for `--help`, reports and the README.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MeasureInfo {
    pub measure: Measure,
    pub name: &'static str,
    pub family: Family,
    /// The paper it comes from.
    pub paper: &'static str,
    /// What is computed (higher predicts better).
    pub summary: &'static str,
}

impl Measure {
    /// Every measure, in the order reports list them.
    pub const ALL: [Measure; 16] = [
        Measure::Mgm,
        Measure::MgmBatch,
        Measure::KernelAlignment,
        Measure::Zico,
        Measure::GradNorm,
        Measure::Snip,
        Measure::Synflow,
        Measure::Jacov,
        Measure::Naswot,
        Measure::Swap,
        Measure::Meco,
        Measure::Expressivity,
        Measure::Progressivity,
        Measure::Trainability,
        Measure::Params,
        Measure::Flops,
    ];

    /// The measure's description.
    pub fn info(self) -> MeasureInfo {
        use Family::*;
        let (family, paper, summary) = match self {
            Measure::Mgm => (
                Kernel,
                "Xu et al., KNAS: Green Neural Architecture Search, ICML 2021",
                "mean of the Gram matrix of per-sample gradients, ‖mean g_i‖², BN on each image alone (the KNAS protocol)",
            ),
            Measure::MgmBatch => (Kernel, "Xu et al., ICML 2021", "MGM with BN on the batch's statistics: ‖∇ mean loss‖²"),
            Measure::KernelAlignment => (
                Kernel,
                "after Xu et al., ICML 2021 (scale-free gradient kernel)",
                "cosine between the mean gradients of the scoring batch's two halves: agreement of the gradient kernel, immune to gradient scale",
            ),
            Measure::Zico => (
                Kernel,
                "Li et al., ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients, ICLR 2023",
                "Σ over conv/linear layers of ln Σ_θ mean|g_θ| / std g_θ, over the batch's two halves",
            ),
            Measure::GradNorm => (
                Saliency,
                "Abdelfattah et al., Zero-Cost Proxies for Lightweight NAS, ICLR 2021",
                "Σ over conv/linear layers of ‖∂L/∂W‖, BN on batch statistics",
            ),
            Measure::Snip => (
                Saliency,
                "Lee et al., SNIP, ICLR 2019; as a NAS proxy, Abdelfattah et al., ICLR 2021",
                "Σ over conv/linear weights of |W ⊙ ∂L/∂W|, BN on batch statistics",
            ),
            Measure::Synflow => (
                Saliency,
                "Tanaka et al., Pruning neural networks without any data, NeurIPS 2020; Abdelfattah et al., ICLR 2021",
                "Σ over conv/linear weights of θ ⊙ ∂R/∂θ, R = Σ logits of the absolute-valued network on an all-ones input, BN as identity, double precision",
            ),
            Measure::Jacov => (
                Jacobian,
                "Mellor et al., Neural Architecture Search without Training, arXiv v1, 2020",
                "−Σ [ln(λ+k) + 1/(λ+k)] over the eigenvalues of the correlation matrix of per-image input gradients of the logits' sum, k = 1e-5",
            ),
            Measure::Naswot => (
                Activation,
                "Mellor et al., Neural Architecture Search without Training, ICML 2021",
                "ln |det K_H|, K_H[i,j] = number of ReLUs on whose sign images i and j agree",
            ),
            Measure::Swap => (
                Activation,
                "Peng et al., SWAP-NAS: Sample-Wise Activation Patterns, ICLR 2024",
                "number of distinct activation patterns of the ReLU units across 16 images",
            ),
            Measure::Meco => (
                Features,
                "Jiang et al., MeCo: Zero-Shot NAS with One Data and Single Forward Pass via Minimum Eigenvalue of Correlation, NeurIPS 2023",
                "Σ over layer outputs of the smallest eigenvalue of the channels' Pearson correlation, one image",
            ),
            Measure::Expressivity => (
                Features,
                "Lee & Ham, AZ-NAS: Assembling Zero-Cost Proxies for Network Architecture Search, CVPR 2024",
                "Σ over the stem's and every block's output of the entropy of the normalised channel-covariance spectrum",
            ),
            Measure::Progressivity => (
                Features,
                "Lee & Ham, CVPR 2024",
                "smallest increase of expressivity from one block's output to the next",
            ),
            Measure::Trainability => (
                Features,
                "Lee & Ham, CVPR 2024",
                "mean over consecutive blocks of −σ − 1/σ + 2, σ the largest singular value of the block's Jacobian seen through random signs: penalises exploding and vanishing gradients",
            ),
            Measure::Params => (Size, "—", "trainable parameters"),
            Measure::Flops => (Size, "—", "multiply–accumulates of one forward pass on one image"),
        };
        MeasureInfo { measure: self, name: self.name(), family, paper, summary }
    }

    /// The measure's name (kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            Measure::Mgm => "mgm",
            Measure::MgmBatch => "mgm-batch",
            Measure::KernelAlignment => "kernel-alignment",
            Measure::Zico => "zico",
            Measure::GradNorm => "grad-norm",
            Measure::Snip => "snip",
            Measure::Synflow => "synflow",
            Measure::Jacov => "jacov",
            Measure::Naswot => "naswot",
            Measure::Swap => "swap",
            Measure::Meco => "meco",
            Measure::Expressivity => "expressivity",
            Measure::Progressivity => "progressivity",
            Measure::Trainability => "trainability",
            Measure::Params => "params",
            Measure::Flops => "flops",
        }
    }

    /// The measure with this name.
    pub fn from_name(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The names of every measure, comma-separated (for error messages).
    pub fn known_names() -> String {
        Measure::ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
    }
}

/// Every measure with its family, what it computes and its paper: the list `--help` shows.
pub fn help_text() -> String {
    let mut text = String::from("Measures (each oriented so that higher predicts better):\n");
    for m in Measure::ALL {
        let info = m.info();
        let family = serde_json::to_value(info.family).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        text.push_str(&format!("\n  {} ({family}): {}.\n      {}\n", info.name, info.summary, info.paper));
    }
    text.push_str(&format!(
        "\nThe aggregate (default score): {} with equal weights, each as ln of its percentile within the experiment's reference sample.",
        aggregate::DEFAULT_MEASURES.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
    ));
    text
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Measure {
    type Err = String;
    fn from_str(text: &str) -> Result<Measure, String> {
        Measure::from_name(text).ok_or_else(|| format!("unknown measure {text:?}; known: {}", Measure::known_names()))
    }
}

/// What a candidate's score is: the rank aggregate of several measures (the default) or
/// one measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ScoreChoice {
    /// [`aggregate`]: measures' percentiles within the experiment's reference sample.
    #[default]
    Aggregate,
    /// One measure's value.
    Measure(Measure),
}

impl FromStr for ScoreChoice {
    type Err = String;
    fn from_str(text: &str) -> Result<ScoreChoice, String> {
        if text == "aggregate" {
            return Ok(ScoreChoice::Aggregate);
        }
        text.parse().map(ScoreChoice::Measure).map_err(|e: String| format!("{e}, or aggregate"))
    }
}

impl fmt::Display for ScoreChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScoreChoice::Aggregate => f.write_str("aggregate"),
            ScoreChoice::Measure(m) => f.write_str(m.name()),
        }
    }
}

impl TryFrom<String> for ScoreChoice {
    type Error = String;
    fn try_from(text: String) -> Result<ScoreChoice, String> {
        text.parse()
    }
}

impl From<ScoreChoice> for String {
    fn from(choice: ScoreChoice) -> String {
        choice.to_string()
    }
}

/// Measured values: every requested measure, `None` where it is not finite for this
/// network. A measure that was not requested has no entry.
pub type Values = BTreeMap<Measure, Option<f64>>;

/// One candidate, measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub values: Values,
    /// Size of the network measured.
    pub info: NetworkInfo,
    /// Wall time of construction and every pass.
    pub seconds: f64,
}

impl Measured {
    /// The value of `measure`, if it was computed and is finite.
    pub fn get(&self, measure: Measure) -> Option<f64> {
        self.values.get(&measure).copied().flatten()
    }
}

/// Why a candidate could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("libtorch failed while measuring: {0}")]
    Torch(#[from] tch::TchError),
    /// A panic while measuring (a libtorch error in the network's forward pass), caught by
    /// [`Suite::measure`].
    #[error("measuring panicked: {0}")]
    Panicked(String),
}

/// `Some(value)` when finite.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// Whether every entry of `t` is finite.
fn all_finite(t: &Tensor) -> Result<bool, tch::TchError> {
    Ok(t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0)
}

/// Eigenvalues of a symmetric positive semi-definite matrix, or of a batch of them (in no
/// particular order); `None` when an entry is not finite — a network whose features or
/// gradients overflowed — so that the measure is recorded as missing.
///
/// LAPACK's solver behind `eigvalsh` can also fail to converge on a finite matrix with many
/// repeated eigenvalues; then the singular values, which equal the eigenvalues of a
/// positive semi-definite matrix and come from a different algorithm, are the answer. If
/// that fails too, the solver's own error is returned.
///
/// The matrices are small (channels × channels, at most a few hundred), and they are
/// decomposed on the host, whatever device they come from: on a GPU the solver launches
/// dozens of small kernels per matrix and waits on the device between them. The
/// eigenvalues come back on the host.
fn psd_eigenvalues(m: &Tensor) -> Result<Option<Tensor>, tch::TchError> {
    let m = &m.f_to_device(tch::Device::Cpu)?;
    if !all_finite(m)? {
        return Ok(None);
    }
    match m.f_linalg_eigvalsh("L") {
        Ok(eigenvalues) => Ok(Some(eigenvalues)),
        Err(error) => psd_eigenvalues_by_svd(m).map(Some).map_err(|_| error),
    }
}

/// Each tensor of `tensors` on the host, in order, brought over in as few transfers as
/// there are distinct shapes: on a GPU every transfer waits until the device has caught
/// up with the thread's stream, so a measure that needs one small matrix per block
/// gathers them and transfers once.
fn to_host(tensors: &[Tensor]) -> Result<Vec<Tensor>, tch::TchError> {
    let mut host: Vec<Option<Tensor>> = tensors.iter().map(|_| None).collect();
    let mut shapes: Vec<Vec<i64>> = Vec::new();
    for t in tensors {
        if !shapes.contains(&t.size()) {
            shapes.push(t.size());
        }
    }
    for shape in shapes {
        let indices: Vec<usize> = (0..tensors.len()).filter(|&i| tensors[i].size() == shape).collect();
        let same: Vec<&Tensor> = indices.iter().map(|&i| &tensors[i]).collect();
        let moved = Tensor::f_stack(&same, 0)?.f_to_device(tch::Device::Cpu)?;
        for (k, i) in indices.into_iter().enumerate() {
            host[i] = Some(moved.f_get(k as i64)?);
        }
    }
    Ok(host.into_iter().flatten().collect())
}

/// The eigenvalues of positive semi-definite matrices as their singular values (descending).
fn psd_eigenvalues_by_svd(m: &Tensor) -> Result<Tensor, tch::TchError> {
    let (_, singular_values, _) = m.f_svd(true, false)?;
    Ok(singular_values)
}

/// Measures candidates on one fixed batch of images, with networks initialised from one
/// seed, so that values compare architectures rather than draws of data or weights.
#[derive(Debug)]
pub struct Suite {
    spec: NetworkSpec,
    seed: u64,
    images: Tensor,
    labels: Tensor,
    /// Random ±1 signs pushed back through each block (trainability), one tensor per
    /// feature shape, drawn once from the seed so every candidate sees the same ones.
    signs: features::SignCache,
}

impl Suite {
    /// A suite for networks of `spec` on the batch (`images [n, C, H, W]`, int64 `labels`),
    /// whose device and float kind decide where and in which precision measuring runs.
    pub fn new(spec: NetworkSpec, images: Tensor, labels: Tensor, seed: u64) -> Suite {
        Suite { spec, seed, images, labels, signs: features::SignCache::new(seed) }
    }

    /// Another suite on the same batch and seed, for a worker thread (see [`pool`]): it
    /// measures every architecture exactly as this one does.
    pub fn replica(&self) -> Suite {
        Suite::new(self.spec, self.images.shallow_clone(), self.labels.shallow_clone(), self.seed)
    }

    /// Loads what libtorch loads lazily on first use on this suite's device: its linear
    /// algebra (on CUDA a separate library, whose loading fails when two threads race to
    /// it). Every decomposition the measures call is run once on a small matrix.
    pub fn warm_up(&self) -> Result<(), MeasureError> {
        let spd = Tensor::f_eye(2, (Kind::Double, self.images.device()))?;
        let _eigenvalues = spd.f_linalg_eigvalsh("L")?;
        let _sign_and_log = Tensor::f_linalg_slogdet(&spd)?;
        Ok(())
    }

    /// Number of images in the batch.
    pub fn batch_size(&self) -> i64 {
        self.images.size()[0]
    }

    /// The batch: images `[n, C, H, W]` and their int64 labels.
    pub fn batch(&self) -> (&Tensor, &Tensor) {
        (&self.images, &self.labels)
    }

    /// The shape of the networks measured.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// Builds a freshly initialised network on the batch's device and kind.
    pub fn network(&self, candidate: &Candidate) -> (nn::VarStore, Network) {
        let mut vs = nn::VarStore::new(self.images.device());
        let net = Network::new(&vs.root(), &self.spec, candidate, self.seed);
        if self.images.kind() != Kind::Float {
            vs.set_kind(self.images.kind());
        }
        (vs, net)
    }

    /// Measures `candidate` with each of `wanted` (every pass at most once). The network's
    /// forward pass calls tch's infallible API, which panics on a libtorch error (a device
    /// out of memory, say): such a panic is caught here and is this candidate's error, not
    /// the end of the process.
    pub fn measure(&self, candidate: &Candidate, wanted: &[Measure]) -> Result<Measured, MeasureError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.measure_unguarded(candidate, wanted)))
            .unwrap_or_else(|panic| Err(MeasureError::Panicked(crate::panic_message(&*panic))))
    }

    fn measure_unguarded(&self, candidate: &Candidate, wanted: &[Measure]) -> Result<Measured, MeasureError> {
        fail::fail_point!("measures::measure");
        let start = Instant::now();
        let (mut vs, net) = self.network(candidate);
        let want = |m: Measure| wanted.contains(&m);
        let mut values = Values::new();
        let info = net.info();
        if want(Measure::Params) {
            values.insert(Measure::Params, Some(info.params as f64));
        }
        if want(Measure::Flops) {
            values.insert(Measure::Flops, Some(info.flops as f64));
        }
        kernel::per_sample(&net, &self.images, &self.labels, wanted, &mut values)?;
        self.batch_pass(&net, wanted, &mut values)?;
        if want(Measure::Meco) {
            values.insert(Measure::Meco, features::meco(&net, &self.images)?);
        }
        // Last: SynFlow rewrites the network's weights in place.
        if want(Measure::Synflow) {
            values.insert(Measure::Synflow, saliency::synflow(&mut vs, &net, &self.images)?);
        }
        Ok(Measured { values, info, seconds: start.elapsed().as_secs_f64() })
    }

    /// The batch-statistics forward pass and the backward passes that share it.
    fn batch_pass(&self, net: &Network, wanted: &[Measure], values: &mut Values) -> Result<(), MeasureError> {
        let want = |m: Measure| wanted.contains(&m);
        let param_grads = want(Measure::MgmBatch) || want(Measure::Snip) || want(Measure::GradNorm);
        let jacobian = want(Measure::Jacov);
        let blocks = want(Measure::Trainability);
        let features = blocks || want(Measure::Expressivity) || want(Measure::Progressivity);
        let codes = activation::Codes::new(want(Measure::Naswot), want(Measure::Swap), self.batch_size(), self.images.device());
        if !(param_grads || jacobian || features || codes.active()) {
            return Ok(());
        }
        let x = if jacobian { self.images.f_detach()?.f_set_requires_grad(true)? } else { self.images.shallow_clone() };
        let pass = crate::model::Pass {
            all_nodes: codes.active(),
            tap: codes.active().then_some(&codes as &dyn crate::model::Tap),
            ..crate::model::Pass::measuring(crate::model::NormMode::Batch)
        };
        // Without a backward through the whole network, trainability's block Jacobians are
        // taken block by block as the forward pass goes: one block's graph in memory at a
        // time instead of the network's (the aggregate's case).
        let whole_graph = param_grads || jacobian;
        let mut block_sigmas = (blocks && !whole_graph).then(|| features::BlockSigmas::new(&self.signs));
        let forward = match block_sigmas.as_mut() {
            Some(sigmas) => net.run_block_by_block(&x, pass, &mut |input, output| sigmas.visit(input, output)),
            None if whole_graph => net.run(&x, pass, features),
            None => tch::no_grad(|| net.run(&x, pass, features)),
        };
        codes.finish(values)?;
        if want(Measure::Expressivity) || want(Measure::Progressivity) {
            let (expressivity, progressivity) = features::expressivity(&forward.features)?;
            if want(Measure::Expressivity) {
                values.insert(Measure::Expressivity, expressivity);
            }
            if want(Measure::Progressivity) {
                values.insert(Measure::Progressivity, progressivity);
            }
        }
        // Every backward but the last keeps the graph for the next.
        if param_grads {
            let loss = kernel::cross_entropy(&forward.logits, &self.labels)?;
            let params: Vec<&Tensor> = net.params().iter().map(|p| &p.tensor).collect();
            let grads = Tensor::f_run_backward(&[&loss], &params, jacobian || blocks, false)?;
            if want(Measure::MgmBatch) {
                values.insert(Measure::MgmBatch, finite(kernel::squared_norm(&grads)?));
            }
            if want(Measure::Snip) {
                values.insert(Measure::Snip, finite(saliency::snip(net, &grads)?));
            }
            if want(Measure::GradNorm) {
                values.insert(Measure::GradNorm, finite(saliency::grad_norm(net, &grads)?));
            }
        }
        if jacobian {
            values.insert(Measure::Jacov, jacobian::jacov(&forward.logits, &x, blocks)?);
        }
        if blocks {
            let trainability = match block_sigmas {
                Some(sigmas) => sigmas.finish()?,
                None => features::trainability(&forward.features, &self.signs)?,
            };
            values.insert(Measure::Trainability, trainability);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tch::Device;

    use super::*;
    use crate::data::{DatasetSpec, Normalization, Part};

    /// A suite on `n` embedded MNIST digits with tiny networks.
    pub(crate) fn tiny_suite(n: usize, kind: Kind, seed: u64) -> Suite {
        let data = DatasetSpec::Mnist5k.load(Part::Train).unwrap();
        let picked = data.subset(&(0..n).map(|i| i * 97).collect::<Vec<_>>());
        let t = Normalization::of(&data).apply(&picked, Device::Cpu, kind).unwrap();
        let spec = NetworkSpec { channels: 4, cells: 1, in_channels: 1, image_size: (28, 28), num_classes: 10 };
        Suite::new(spec, t.images, t.labels, seed)
    }

    pub(crate) const CONVS: &str = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|";
    pub(crate) const NONES: &str = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|";

    #[test]
    fn to_host_keeps_order_and_values_across_shapes() {
        let cpu = (Kind::Double, Device::Cpu);
        let tensors = [Tensor::eye(2, cpu), Tensor::ones([3], cpu), Tensor::eye(2, cpu) * 2.0, Tensor::zeros([], cpu)];
        let host = to_host(&tensors).unwrap();
        assert_eq!(host.len(), tensors.len());
        for (h, t) in host.iter().zip(&tensors) {
            assert_eq!(h.device(), Device::Cpu);
            assert!(h.equal(t), "{h} vs {t}");
        }
        assert!(to_host(&[]).unwrap().is_empty());
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for m in Measure::ALL {
            assert_eq!(m.name().parse::<Measure>(), Ok(m));
            assert!(!m.info().summary.is_empty());
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        let err = "mgn".parse::<Measure>().unwrap_err();
        assert!(err.contains("unknown measure \"mgn\"") && err.contains("mgm, mgm-batch"), "{err}");
    }

    #[test]
    fn every_measure_is_finite_and_deterministic_for_a_working_cell() {
        let (a, b) = (tiny_suite(16, Kind::Float, 1), tiny_suite(16, Kind::Float, 1));
        let cell: Candidate = CONVS.parse().unwrap();
        let first = a.measure(&cell, &Measure::ALL).unwrap();
        let second = b.measure(&cell, &Measure::ALL).unwrap();
        assert_eq!(first.values.len(), Measure::ALL.len());
        for m in Measure::ALL {
            let value = first.get(m).unwrap_or_else(|| panic!("{m} is missing: {:?}", first.values));
            assert_eq!(Some(value.to_bits()), second.get(m).map(f64::to_bits), "{m} repeats exactly");
        }
        // Computing a subset gives the same numbers as computing everything.
        for m in Measure::ALL {
            assert_eq!(a.measure(&cell, &[m]).unwrap().get(m).map(f64::to_bits), first.get(m).map(f64::to_bits), "{m} alone");
        }
    }

    #[test]
    fn trainability_block_by_block_equals_trainability_from_the_whole_graph() {
        // Alone (or with the other feature measures, as in the aggregate), trainability is
        // taken block by block; with a measure that needs the whole graph, from that graph.
        let mut s = tiny_suite(8, Kind::Float, 4);
        s.spec.cells = 2;
        for arch in [CONVS, NONES, "|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|", "|avg_pool_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|nor_conv_3x3~2|"] {
            let cell: Candidate = arch.parse().unwrap();
            let alone = s.measure(&cell, &[Measure::Trainability, Measure::Expressivity]).unwrap().get(Measure::Trainability);
            let whole = s.measure(&cell, &[Measure::Trainability, Measure::Jacov, Measure::Snip]).unwrap().get(Measure::Trainability);
            assert_eq!(alone.map(f64::to_bits), whole.map(f64::to_bits), "{arch}: {alone:?} vs {whole:?}");
        }
    }

    #[test]
    fn a_cell_that_cuts_the_input_off_is_missing_or_ranks_below_a_working_one() {
        let s = tiny_suite(16, Kind::Float, 2);
        let good = s.measure(&CONVS.parse().unwrap(), &Measure::ALL).unwrap();
        let dead = s.measure(&NONES.parse().unwrap(), &Measure::ALL).unwrap();
        // No information reaches the output: the Jacobian is zero.
        assert_eq!(dead.get(Measure::Jacov), None, "{:?}", dead.values);
        // Vanishing block Jacobians (σ = 0) score about −10⁶, as in AZ-NAS.
        assert!(dead.get(Measure::Trainability).unwrap() < -1e5, "{:?}", dead.values);
        // Size is never missing: the dead cell still has its stem, reductions and head.
        assert!(dead.get(Measure::Params).is_some() && dead.get(Measure::Flops).is_some(), "{:?}", dead.values);
        for m in [
            Measure::Synflow,
            Measure::Naswot,
            Measure::Swap,
            Measure::Params,
            Measure::Flops,
            Measure::Expressivity,
            Measure::Trainability,
        ] {
            let (g, d) = (good.get(m).unwrap(), dead.get(m).unwrap_or(f64::NEG_INFINITY));
            assert!(g > d, "{m}: working {g} vs cut off {d}");
        }
    }
}
