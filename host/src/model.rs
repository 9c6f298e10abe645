//! NAS-Bench-201 networks in tch.
//!
//! The macro skeleton follows NB201's `TinyNetwork` (Dong & Yang, ICLR 2020):
//!
//! ```text
//! stem: 3×3 conv (C) → BN
//! stage 1: N cells at C          ─┐
//! reduction: ResNet block C→2C    │ each reduction halves the resolution
//! stage 2: N cells at 2C          │
//! reduction: ResNet block 2C→4C   │
//! stage 3: N cells at 4C         ─┘
//! BN → ReLU → global average pool → linear
//! ```
//!
//! Weights are drawn from our own seeded generator with PyTorch's default initialisation
//! (uniform ±1/√fan_in for convolutions and the linear layer, BN weight 1 and bias 0), so a
//! network is a pure function of (candidate, spec, seed): the same on CPU and CUDA, and
//! independent of libtorch's global RNG state and of anything else running in the process.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor, nn};

use crate::space::{Candidate, EDGES, NUM_EDGES, Op};

/// BN momentum and epsilon: PyTorch's defaults, as NB201 uses.
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Shape of a network: the searched cell aside, everything else is fixed by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkSpec {
    /// Channels of the first stage (C); the later stages have 2C and 4C.
    pub channels: i64,
    /// Cells per stage (N).
    pub cells: i64,
    /// Image channels of the input.
    pub in_channels: i64,
    /// Input height and width.
    pub image_size: (i64, i64),
    /// Number of classes of the linear head.
    pub num_classes: i64,
}

impl NetworkSpec {
    /// NB201's defaults (C=16, N=5) for images of the given shape.
    pub fn nb201(in_channels: i64, image_size: (i64, i64), num_classes: i64) -> NetworkSpec {
        NetworkSpec { channels: 16, cells: 5, in_channels, image_size, num_classes }
    }
}

/// How batch normalisation computes its statistics in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormMode {
    /// Training: statistics of the batch, running averages updated.
    Train,
    /// Evaluation: the running averages.
    Eval,
    /// Statistics of the batch, running averages left alone (kernel scoring, `batch` mode).
    Batch,
    /// Statistics of each sample on its own, i.e. what BN computes on a batch of one
    /// (kernel scoring, `per-sample` mode). Samples stay independent inside a batch.
    Instance,
}

/// A 2-D convolution in full float32 precision, with deterministic algorithms.
///
/// libtorch lets cuDNN use TF32 for convolutions by default: on Ampere and newer GPUs the
/// inputs are rounded to a 10-bit mantissa. Measured on an H200, that moved MGM by 1–4%
/// against the CPU for the same weights, and by 41% for a deep plain chain whose gradients
/// explode. Deterministic algorithms keep cuDNN from choosing convolutions that add in a
/// varying order. (They do not make every CUDA score repeat to the bit: on the embedded
/// MNIST data, measures read from gradients still vary from run to run, by up to 2·10⁻⁴
/// relative for MGM, even with one worker; host/benches/speed.md has what was ruled
/// out.) On the CPU neither flag changes anything.
fn conv2d(x: &Tensor, weight: &Tensor, stride: i64, padding: i64) -> Tensor {
    grouped_conv2d(x, weight, stride, padding, 1)
}

/// [`conv2d`] in `groups` independent groups of channels.
fn grouped_conv2d(x: &Tensor, weight: &Tensor, stride: i64, padding: i64, groups: i64) -> Tensor {
    let (benchmark, deterministic, cudnn_enabled, allow_tf32) = (false, true, true, false);
    x.internal_convolution(
        weight,
        None::<&Tensor>,
        [stride, stride],
        [padding, padding],
        [1, 1],
        false,
        [0, 0],
        groups,
        benchmark,
        deterministic,
        cudnn_enabled,
        allow_tf32,
    )
}

/// Which implementations of average pooling and batch normalisation a pass uses. Both
/// compute the same functions (NB201's pool: stride 1, padding 1, padded positions not
/// counted in the mean); their sums may differ in the last bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// libtorch's defaults: `avg_pool2d`, and cuDNN's batch norm on CUDA. Training keeps
    /// them, so that trained accuracies repeat those of earlier releases to the bit.
    Standard,
    /// The faster ones for measuring at initialisation, where a network is run once:
    ///
    /// - On the CPU, the cells' 3×3 pool as the window's sum (a depthwise convolution with
    ///   a kernel of ones) divided by the number of the window's positions inside the map:
    ///   libtorch's CPU pooling kernel is a scalar loop, and its forward and backward
    ///   passes took about a quarter of trainability's time; the convolution took 15 % off
    ///   the aggregate's mean time per architecture (host/benches/speed.md). On CUDA the
    ///   native pool, one launch, is kept.
    /// - On CUDA, libtorch's own batch-norm kernels rather than cuDNN's: with sixteen
    ///   architectures in flight on one H200 they measured about a quarter more
    ///   architectures a second (host/benches/speed.md). On the CPU the two are the same.
    Fast,
}

/// NB201's average pool: 3×3, stride 1, padding 1, `count_include_pad=False`.
fn avg_pool_3x3(x: &Tensor, kernels: Kernels) -> Tensor {
    if kernels == Kernels::Standard || x.device() != Device::Cpu {
        return x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None);
    }
    let size = x.size();
    let (channels, height, width) = (size[1], size[2], size[3]);
    let ones = Tensor::ones([channels, 1, 3, 3], (x.kind(), x.device()));
    let sums = grouped_conv2d(x, &ones, 1, 1, channels);
    // Positions of each 3×3 window inside the map: 9 inside, 6 on an edge, 4 in a corner
    // (fewer on maps narrower than 3).
    let inside = |n: i64| -> Vec<f64> { (0..n).map(|i| (i.min(1) + 1 + (n - 1 - i).min(1)) as f64).collect() };
    let (rows, columns) = (inside(height), inside(width));
    let counts: Vec<f64> = rows.iter().flat_map(|r| columns.iter().map(move |c| r * c)).collect();
    let counts = Tensor::from_slice(&counts).view([1, 1, height, width]).to_kind(x.kind());
    sums / counts
}

/// Size figures of a built network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetworkInfo {
    /// Trainable parameters (BN affine parameters included, running statistics not).
    pub params: i64,
    /// Multiply–accumulates of one forward pass on one image: convolutions, the linear head,
    /// and for average pooling one per window element of each output (kernel² per output
    /// for the cells' 3×3 pools, one per input for the reductions' 2×2 pools: NB201's
    /// counting convention).
    pub flops: i64,
}

/// Deterministic weight initialisation (see the module documentation).
struct Init {
    rng: ChaCha8Rng,
}

impl Init {
    fn uniform(&mut self, shape: &[i64], bound: f64) -> Tensor {
        let count: i64 = shape.iter().product();
        let bound = bound as f32;
        let values: Vec<f32> = (0..count).map(|_| self.rng.random_range(-bound..=bound)).collect();
        Tensor::from_slice(&values).view(shape)
    }
}

/// What a trainable tensor is. Published measures differ in which parameters they count:
/// the zero-cost literature sums over convolution and linear *weights* only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// A convolution's kernel.
    ConvWeight,
    /// The classifier's weight matrix.
    LinearWeight,
    /// The classifier's bias.
    LinearBias,
    /// A batch norm's scale.
    NormWeight,
    /// A batch norm's shift.
    NormBias,
}

impl ParamKind {
    /// Whether this is a layer's weight in the zero-cost sense (a convolution or linear
    /// weight), which SNIP, gradient norm, SynFlow and ZiCo sum over.
    pub fn is_layer_weight(self) -> bool {
        matches!(self, ParamKind::ConvWeight | ParamKind::LinearWeight)
    }
}

/// A trainable tensor of a network and its kind, in construction order.
#[derive(Debug)]
pub struct Param {
    pub tensor: Tensor,
    pub kind: ParamKind,
}

/// Running totals while a network is built.
struct Builder<'a> {
    init: Init,
    path: &'a nn::Path<'a>,
    info: NetworkInfo,
    params: Vec<Param>,
    /// Each variable with its initial value on the host, copied in by [`upload`](Self::upload).
    pending: Vec<(Tensor, Tensor)>,
}

impl Builder<'_> {
    /// A trainable variable that will hold `value` (on the store's device and kind) once
    /// [`upload`](Self::upload) has run.
    fn var(&mut self, path: &nn::Path, name: &str, value: &Tensor, kind: ParamKind) -> Tensor {
        self.info.params += value.numel() as i64;
        let tensor = path.zeros(name, &value.size());
        self.pending.push((tensor.shallow_clone(), value.shallow_clone()));
        self.params.push(Param { tensor: tensor.shallow_clone(), kind });
        tensor
    }

    /// Copies every variable's initial value in. On the CPU one by one; on a GPU as one
    /// transfer of them all, then copies on the device: a transfer from pageable host
    /// memory waits until the device has caught up with the thread's stream, and a
    /// network has over a hundred parameter tensors, each of which used to wait.
    fn upload(&mut self) {
        let _no_grad = tch::no_grad_guard();
        match self.pending.first().map(|(var, _)| var.device()) {
            None => {}
            Some(Device::Cpu) => {
                for (mut var, value) in self.pending.drain(..) {
                    var.copy_(&value);
                }
            }
            Some(device) => self.upload_at_once(device),
        }
    }

    /// [`upload`](Self::upload)'s way for a GPU.
    fn upload_at_once(&mut self, device: Device) {
        let _no_grad = tch::no_grad_guard();
        let flat: Vec<Tensor> = self.pending.iter().map(|(_, value)| value.reshape([-1])).collect();
        let all = Tensor::cat(&flat, 0).to_device(device);
        let mut offset = 0;
        for (mut var, value) in self.pending.drain(..) {
            let count = value.numel() as i64;
            var.copy_(&all.narrow(0, offset, count).view(value.size().as_slice()));
            offset += count;
        }
    }

    fn conv(&mut self, path: &nn::Path, c_in: i64, c_out: i64, k: i64, out_hw: (i64, i64)) -> Tensor {
        let fan_in = (c_in * k * k) as f64;
        let weight = self.init.uniform(&[c_out, c_in, k, k], 1.0 / fan_in.sqrt());
        self.info.flops += c_out * c_in * k * k * out_hw.0 * out_hw.1;
        self.var(path, "weight", &weight, ParamKind::ConvWeight)
    }

    fn norm(&mut self, path: &nn::Path, channels: i64) -> Norm {
        Norm {
            weight: self.var(path, "weight", &Tensor::ones([channels], (Kind::Float, Device::Cpu)), ParamKind::NormWeight),
            bias: self.var(path, "bias", &Tensor::zeros([channels], (Kind::Float, Device::Cpu)), ParamKind::NormBias),
            running_mean: path.zeros_no_train("running_mean", &[channels]),
            running_var: path.ones_no_train("running_var", &[channels]),
        }
    }
}

/// Watches a forward pass: shown intermediate tensors as they are computed. Measures that
/// read activations (NASWOT's codes, MeCo's layer correlations) are taps.
pub trait Tap {
    /// The input of a ReLU, the network's only nonlinearity: its sign pattern is the
    /// activation code.
    fn relu_input(&self, _x: &Tensor) {}

    /// The output of a layer. `times` is how many modules of NB201's PyTorch code return
    /// this same tensor (a BN's output is also its `Sequential`'s and its op's), for
    /// measures defined as a sum over every module's output.
    fn layer_output(&self, _x: &Tensor, _times: u32) {}
}

/// How one forward pass runs.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    /// Where batch norm takes its statistics from.
    pub mode: NormMode,
    /// Also compute nodes that cannot reach their cell's output, as NB201's own code does.
    /// Their parameters get no gradient either way; only activation measures see them.
    pub all_nodes: bool,
    /// Shown the pass's intermediate tensors.
    pub tap: Option<&'a dyn Tap>,
    /// Which pooling and batch-norm implementations run.
    pub kernels: Kernels,
}

impl<'a> Pass<'a> {
    /// A plain pass in `mode`: live nodes only, nothing watching, libtorch's standard
    /// kernels.
    pub fn new(mode: NormMode) -> Pass<'a> {
        Pass { mode, all_nodes: false, tap: None, kernels: Kernels::Standard }
    }

    /// A pass for measuring at initialisation: as [`new`](Self::new), with the fast kernels.
    pub fn measuring(mode: NormMode) -> Pass<'a> {
        Pass { kernels: Kernels::Fast, ..Pass::new(mode) }
    }

    fn relu(&self, x: &Tensor) -> Tensor {
        if let Some(tap) = self.tap {
            tap.relu_input(x);
        }
        let y = x.relu();
        self.layer(&y, 1);
        y
    }

    fn layer(&self, x: &Tensor, times: u32) {
        if let Some(tap) = self.tap {
            tap.layer_output(x, times);
        }
    }
}

/// Batch normalisation with the statistics chosen per call ([`NormMode`]).
#[derive(Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl Norm {
    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let (w, b) = (Some(&self.weight), Some(&self.bias));
        let cudnn = x.device().is_cuda() && pass.kernels == Kernels::Standard;
        match pass.mode {
            NormMode::Train => x.batch_norm(
                w,
                b,
                Some(&self.running_mean),
                Some(&self.running_var),
                true,
                BN_MOMENTUM,
                BN_EPS,
                cudnn,
            ),
            NormMode::Eval => x.batch_norm(
                w,
                b,
                Some(&self.running_mean),
                Some(&self.running_var),
                false,
                BN_MOMENTUM,
                BN_EPS,
                cudnn,
            ),
            NormMode::Batch => x.batch_norm(w, b, None, None, true, BN_MOMENTUM, BN_EPS, cudnn),
            NormMode::Instance => x.instance_norm(w, b, None, None, true, BN_MOMENTUM, BN_EPS, cudnn),
        }
    }
}

/// ReLU → convolution (no bias) → BN: NB201's `ReLUConvBN`.
#[derive(Debug)]
struct ReluConvBn {
    weight: Tensor,
    norm: Norm,
    stride: i64,
    padding: i64,
}

impl ReluConvBn {
    fn new(b: &mut Builder, path: &nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, in_hw: (i64, i64)) -> Self {
        // Padding k/2 keeps the size at stride 1 and halves it (rounding up) at stride 2.
        let out_hw = ((in_hw.0 + stride - 1) / stride, (in_hw.1 + stride - 1) / stride);
        ReluConvBn {
            weight: b.conv(&(path / "conv"), c_in, c_out, k, out_hw),
            norm: b.norm(&(path / "bn"), c_out),
            stride,
            padding: k / 2,
        }
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let y = conv2d(&pass.relu(x), &self.weight, self.stride, self.padding);
        pass.layer(&y, 1);
        let out = self.norm.forward(&y, pass);
        // The BN, its `Sequential` and the `ReLUConvBN` module all return this tensor.
        pass.layer(&out, 3);
        out
    }
}

/// One operation instance on a cell edge (`none` has no instance: it adds nothing).
#[derive(Debug)]
enum EdgeOp {
    Skip,
    Conv(ReluConvBn),
    Pool,
}

impl EdgeOp {
    /// Applies the op; `None` input stands for an exact zero tensor and stays `None` through
    /// ops that map zero to zero with no parameters (skip, pool).
    fn forward(&self, x: Option<&Tensor>, zeros: &dyn Fn() -> Tensor, pass: Pass) -> Option<Tensor> {
        match self {
            EdgeOp::Skip => x.map(|x| {
                pass.layer(x, 1);
                x.shallow_clone()
            }),
            EdgeOp::Pool => x.map(|x| {
                let y = avg_pool_3x3(x, pass.kernels);
                // NB201's `POOLING` module and the average pool inside it.
                pass.layer(&y, 2);
                y
            }),
            // A conv on zeros still yields BN's bias, which has a gradient: compute it.
            EdgeOp::Conv(conv) => Some(match x {
                Some(x) => conv.forward(x, pass),
                None => conv.forward(&zeros(), pass),
            }),
        }
    }
}

/// A searched cell: node `j` is the sum over edges `i→j` of each op on the edge applied to
/// node `i`.
#[derive(Debug)]
struct Cell {
    /// The op instances of each edge (empty for an edge holding only `none`).
    edges: Vec<Vec<EdgeOp>>,
    /// Whether node j can reach the output through some op other than `none`. Dead nodes
    /// are skipped: their parameters get zero gradient either way, so skipping is exact.
    live: [bool; 4],
    /// When set, every node is computed and `none` is applied as `x·0`, like NB201's own
    /// implementation: the slow path the reference scorer uses to check the fast one.
    exhaustive: bool,
}

impl Cell {
    fn new(b: &mut Builder, path: &nn::Path, candidate: &Candidate, channels: i64, hw: (i64, i64)) -> Cell {
        let mut edges = Vec::with_capacity(NUM_EDGES);
        for (e, set) in candidate.edges().iter().enumerate() {
            let edge_path = path / format!("edge{e}");
            let ops: Vec<EdgeOp> = set
                .ops()
                .filter_map(|op| match op {
                    Op::None => None,
                    Op::SkipConnect => Some(EdgeOp::Skip),
                    Op::AvgPool3x3 => {
                        b.info.flops += channels * hw.0 * hw.1 * 9;
                        Some(EdgeOp::Pool)
                    }
                    Op::Conv1x1 | Op::Conv3x3 => {
                        let k = if op == Op::Conv1x1 { 1 } else { 3 };
                        Some(EdgeOp::Conv(ReluConvBn::new(b, &(&edge_path / op.name()), channels, channels, k, 1, hw)))
                    }
                })
                .collect();
            edges.push(ops);
        }
        let mut live = [false, false, false, true];
        for node in (0..3).rev() {
            live[node] = EDGES
                .iter()
                .enumerate()
                .any(|(e, &(from, to))| from == node && live[to] && !edges[e].is_empty());
        }
        Cell { edges, live, exhaustive: false }
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let zeros = || x.zeros_like();
        let mut nodes: [Option<Tensor>; 4] = [Some(x.shallow_clone()), None, None, None];
        let every_node = self.exhaustive || pass.all_nodes;
        for to in 1..4 {
            if !self.live[to] && !every_node {
                continue;
            }
            let mut sum: Option<Tensor> = None;
            for (e, &(from, edge_to)) in EDGES.iter().enumerate() {
                if edge_to != to || (!self.live[from] && !every_node) {
                    continue;
                }
                let input = nodes[from].as_ref();
                let mut outputs: Vec<Tensor> = self.edges[e]
                    .iter()
                    .filter_map(|op| op.forward(input, &zeros, pass))
                    .collect();
                if self.exhaustive {
                    // `none` as NB201 writes it: the input times zero.
                    outputs.push(input.map_or_else(zeros, |x| x * 0.0));
                }
                for y in outputs {
                    sum = Some(match sum {
                        Some(acc) => acc + y,
                        None => y,
                    });
                }
            }
            nodes[to] = sum;
        }
        let [_, _, _, out] = nodes;
        let out = out.unwrap_or_else(zeros);
        pass.layer(&out, 1);
        out
    }
}

/// NB201's `ResNetBasicblock` with stride 2: the fixed reduction between stages.
#[derive(Debug)]
struct Reduction {
    conv_a: ReluConvBn,
    conv_b: ReluConvBn,
    /// 1×1 convolution after a 2×2 average pool, on the shortcut.
    shortcut: Tensor,
}

impl Reduction {
    fn new(b: &mut Builder, path: &nn::Path, c_in: i64, c_out: i64, hw: (i64, i64)) -> Reduction {
        let out_hw = (hw.0 / 2, hw.1 / 2);
        let conv_a = ReluConvBn::new(b, &(path / "conv_a"), c_in, c_out, 3, 2, hw);
        let conv_b = ReluConvBn::new(b, &(path / "conv_b"), c_out, c_out, 3, 1, out_hw);
        b.info.flops += c_in * out_hw.0 * out_hw.1 * 4;
        let shortcut = b.conv(&(path / "shortcut"), c_in, c_out, 1, out_hw);
        Reduction { conv_a, conv_b, shortcut }
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Tensor {
        let residual = self.conv_b.forward(&self.conv_a.forward(x, pass), pass);
        let pooled = x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None);
        pass.layer(&pooled, 1);
        let shortcut = conv2d(&pooled, &self.shortcut, 1, 0);
        // The shortcut's convolution and the `Sequential` holding it.
        pass.layer(&shortcut, 2);
        let out = shortcut + residual;
        pass.layer(&out, 1);
        out
    }
}

#[derive(Debug)]
enum Block {
    Cell(Cell),
    Reduction(Reduction),
}

/// A complete NB201 network for one candidate cell, repeated throughout.
#[derive(Debug)]
pub struct Network {
    stem_conv: Tensor,
    stem_norm: Norm,
    blocks: Vec<Block>,
    last_norm: Norm,
    head_weight: Tensor,
    head_bias: Tensor,
    info: NetworkInfo,
    params: Vec<Param>,
}

/// Called with each block's (input, output) by [`Network::run_block_by_block`].
pub type VisitBlock<'a> = &'a mut dyn FnMut(&Tensor, &Tensor);

/// What a forward pass returns.
#[derive(Debug)]
pub struct Forward {
    /// `[batch, classes]`.
    pub logits: Tensor,
    /// The stem's output, then every block's (cells and reductions) in order: the feature
    /// maps AZ-NAS reads. Empty unless asked for.
    pub features: Vec<Tensor>,
}

impl Network {
    /// Builds the network's variables under `path`, initialised from `seed`.
    pub fn new(path: &nn::Path, spec: &NetworkSpec, candidate: &Candidate, seed: u64) -> Network {
        let mut b = Builder {
            init: Init { rng: ChaCha8Rng::seed_from_u64(seed) },
            path,
            info: NetworkInfo { params: 0, flops: 0 },
            params: Vec::new(),
            pending: Vec::new(),
        };
        let root = b.path;
        let mut hw = spec.image_size;
        let c = spec.channels;
        let stem_conv = b.conv(&(root / "stem" / "conv"), spec.in_channels, c, 3, hw);
        let stem_norm = b.norm(&(root / "stem" / "bn"), c);
        let mut blocks = Vec::new();
        let mut channels = c;
        for stage in 0..3 {
            if stage > 0 {
                let path = root / format!("reduce{stage}");
                blocks.push(Block::Reduction(Reduction::new(&mut b, &path, channels, channels * 2, hw)));
                channels *= 2;
                hw = (hw.0 / 2, hw.1 / 2);
            }
            for index in 0..spec.cells {
                let path = root / format!("stage{stage}") / format!("cell{index}");
                blocks.push(Block::Cell(Cell::new(&mut b, &path, candidate, channels, hw)));
            }
        }
        let last_norm = b.norm(&(root / "last_bn"), channels);
        let bound = 1.0 / (channels as f64).sqrt();
        let head = root / "head";
        let weight = b.init.uniform(&[spec.num_classes, channels], bound);
        let bias = b.init.uniform(&[spec.num_classes], bound);
        let head_weight = b.var(&head, "weight", &weight, ParamKind::LinearWeight);
        let head_bias = b.var(&head, "bias", &bias, ParamKind::LinearBias);
        b.info.flops += channels * spec.num_classes;
        b.upload();
        Network { stem_conv, stem_norm, blocks, last_norm, head_weight, head_bias, info: b.info, params: b.params }
    }

    /// Parameter count and FLOPs.
    pub fn info(&self) -> NetworkInfo {
        self.info
    }

    /// Every trainable tensor with its kind, in construction order (the same tensors as
    /// the variable store's).
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Computes every node and applies `none` as `x·0`, as NB201's own code does, instead
    /// of skipping work whose result is exactly zero. Slow; for checking the fast path.
    pub fn set_exhaustive(&mut self, exhaustive: bool) {
        for block in &mut self.blocks {
            if let Block::Cell(cell) = block {
                cell.exhaustive = exhaustive;
            }
        }
    }

    /// Logits for a batch of images `[batch, channels, height, width]`.
    pub fn forward(&self, x: &Tensor, mode: NormMode) -> Tensor {
        self.run(x, Pass::new(mode), false).logits
    }

    /// A forward pass as `pass` says; with `features`, the stem's and every block's output
    /// are returned too (still attached to the graph, so gradients can flow between them).
    pub fn run(&self, x: &Tensor, pass: Pass, features: bool) -> Forward {
        self.run_with(x, pass, features, None)
    }

    /// A forward pass that cuts the graph between blocks, for measures that need each
    /// block's own Jacobian but no gradient through the whole network (AZ-NAS
    /// trainability): every block runs on its input detached from the graph (an alias,
    /// not a copy) and made to require grad, and `visit(input, output)` is called while
    /// that block's graph is the only one alive. Peak memory is then one block's graph
    /// rather than the network's — for the all-convolution cell at C=16 and batch 64 on
    /// CIFAR-10, the aggregate's peak resident memory fell by about 450 MiB (README). The
    /// values are those of [`run`](Self::run); the returned features are detached. Grad
    /// mode is on inside, whatever the caller's.
    pub fn run_block_by_block(&self, x: &Tensor, pass: Pass, visit: VisitBlock) -> Forward {
        tch::with_grad(|| self.run_with(x, pass, true, Some(visit)))
    }

    fn run_with(&self, x: &Tensor, pass: Pass, features: bool, mut visit: Option<VisitBlock>) -> Forward {
        let mut kept = Vec::new();
        let cut = visit.is_some();
        let stem = || {
            let stem = conv2d(x, &self.stem_conv, 1, 1);
            pass.layer(&stem, 1);
            let h = self.stem_norm.forward(&stem, pass);
            // The stem's BN and the stem's `Sequential`.
            pass.layer(&h, 2);
            h
        };
        // Cut: no block's Jacobian reaches back into the stem, so it keeps no graph.
        let mut h = if cut { tch::no_grad(stem) } else { stem() };
        if features {
            kept.push(h.shallow_clone());
        }
        for block in &self.blocks {
            let input = if cut { h.detach().set_requires_grad(true) } else { h };
            let output = match block {
                Block::Cell(cell) => cell.forward(&input, pass),
                Block::Reduction(reduction) => reduction.forward(&input, pass),
            };
            h = match visit.as_mut() {
                Some(visit) => {
                    visit(&input, &output);
                    output.detach()
                }
                None => output,
            };
            if features {
                kept.push(h.shallow_clone());
            }
        }
        if cut {
            return tch::no_grad(|| self.head(&h, pass, kept));
        }
        self.head(&h, pass, kept)
    }

    /// The last BN, ReLU, pooling and linear layer.
    fn head(&self, h: &Tensor, pass: Pass, kept: Vec<Tensor>) -> Forward {
        let h = self.last_norm.forward(h, pass);
        pass.layer(&h, 1);
        let h = pass.relu(&h);
        // Global average pooling as a mean: adaptive_avg_pool2d's CUDA backward uses atomic
        // adds, which made repeated CUDA scores differ in the 5th digit.
        let kind = h.kind();
        let logits = h.mean_dim(&[2i64, 3][..], false, kind).linear(&self.head_weight, Some(&self.head_bias));
        Forward { logits, features: kept }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Arch, Candidate};

    fn cifar_spec() -> NetworkSpec {
        NetworkSpec::nb201(3, (32, 32), 10)
    }

    fn build(arch: &str, spec: &NetworkSpec) -> (nn::VarStore, Network) {
        let vs = nn::VarStore::new(Device::Cpu);
        let arch: Arch = arch.parse().unwrap();
        let net = Network::new(&vs.root(), spec, &arch.into(), 0);
        (vs, net)
    }

    /// Parameters counted by hand from the NB201 skeleton, independently of the builder.
    fn expected_params(spec: &NetworkSpec, arch: &Arch) -> i64 {
        let conv_bn = |c_in: i64, c_out: i64, k: i64| c_in * c_out * k * k + 2 * c_out;
        let c = spec.channels;
        let mut total = conv_bn(spec.in_channels, c, 3);
        for (stage, ch) in [c, 2 * c, 4 * c].into_iter().enumerate() {
            if stage > 0 {
                let c_in = ch / 2;
                total += conv_bn(c_in, ch, 3) + conv_bn(ch, ch, 3) + c_in * ch;
            }
            let per_cell: i64 = arch
                .ops()
                .iter()
                .map(|op| match op {
                    Op::Conv1x1 => conv_bn(ch, ch, 1),
                    Op::Conv3x3 => conv_bn(ch, ch, 3),
                    _ => 0,
                })
                .sum();
            total += per_cell * spec.cells;
        }
        total + 2 * 4 * c + 4 * c * spec.num_classes + spec.num_classes
    }

    #[test]
    fn initial_values_uploaded_at_once_land_in_their_own_variables() {
        // The GPU's way, run on the CPU: one transfer, then each variable's slice.
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let mut b = Builder { init: Init { rng: ChaCha8Rng::seed_from_u64(3) }, path: &root, info: NetworkInfo { params: 0, flops: 0 }, params: Vec::new(), pending: Vec::new() };
        let conv = b.conv(&(&root / "a"), 2, 3, 3, (4, 4));
        let norm = b.norm(&(&root / "n"), 3);
        let head = b.init.uniform(&[5], 1.0);
        let bias = b.var(&root, "bias", &head, ParamKind::LinearBias);
        let expected: Vec<Tensor> = b.pending.iter().map(|(_, value)| value.copy()).collect();
        b.upload_at_once(Device::Cpu);
        assert!(b.pending.is_empty());
        for (var, value) in [&conv, &norm.weight, &norm.bias, &bias].into_iter().zip(&expected) {
            assert_eq!(var.size(), value.size());
            assert!(var.equal(value), "{var} vs {value}");
        }
        assert!(conv.abs().sum(Kind::Double).double_value(&[]) > 0.0, "drawn, not left at zero");
    }

    #[test]
    fn parameter_counts_match_the_nb201_skeleton() {
        let spec = cifar_spec();
        for text in [
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
            "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|",
            "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
        ] {
            let (vs, net) = build(text, &spec);
            let arch: Arch = text.parse().unwrap();
            let counted: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
            assert_eq!(net.info().params, counted, "{text}");
            assert_eq!(net.info().params, expected_params(&spec, &arch), "{text}");
        }
        // NB201's CIFAR-10 networks range from 0.0733 M parameters (no convolution in the
        // cell) to 1.5315 M (all 3×3 convolutions).
        let (_, all_conv) = build(
            "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
            &spec,
        );
        assert_eq!(all_conv.info().params, 1_531_546);
        // The bound experiments are held to: above every network, the largest included,
        // and close to it.
        for spec in [NetworkSpec::nb201(3, (32, 32), 100), NetworkSpec { channels: 4, cells: 2, ..NetworkSpec::nb201(1, (28, 28), 10) }] {
            let vs = nn::VarStore::new(Device::Cpu);
            let full = Network::new(&vs.root(), &spec, &Candidate::full(), 0).info().params as u128;
            let bound = crate::run::most_weights(spec.channels, spec.cells);
            assert!(full <= bound && full * 100 >= bound * 95, "{full} weights, bound {bound}");
        }
        assert!(all_conv.info().params as u128 <= crate::run::most_weights(16, 5));
        let (_, empty) = build("|skip_connect~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|", &spec);
        assert_eq!(empty.info().params, 73_306);
    }

    #[test]
    fn output_shapes_follow_the_dataset() {
        let spec = NetworkSpec { channels: 4, cells: 1, in_channels: 1, image_size: (28, 28), num_classes: 7 };
        let (_, net) = build("|nor_conv_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_1x1~1|skip_connect~2|", &spec);
        let x = Tensor::zeros([5, 1, 28, 28], (Kind::Float, Device::Cpu));
        for mode in [NormMode::Train, NormMode::Eval, NormMode::Batch, NormMode::Instance] {
            assert_eq!(net.forward(&x, mode).size(), vec![5, 7]);
        }
    }

    #[test]
    fn the_fast_pooling_computes_libtorchs_pool_forward_and_backward() {
        tch::manual_seed(5);
        // Maps of every size class: one position, narrower than the window, odd, NB201's.
        for (kind, tolerance) in [(Kind::Float, 1e-6), (Kind::Double, 1e-14)] {
            for side in [1i64, 2, 3, 7, 8, 32] {
                let x = Tensor::randn([4, 3, side, side + 1], (kind, Device::Cpu));
                let upstream = Tensor::randn([4, 3, side, side + 1], (kind, Device::Cpu));
                let pooled = |kernels: Kernels| {
                    let leaf = x.detach().set_requires_grad(true);
                    let y = avg_pool_3x3(&leaf, kernels);
                    let grad = Tensor::run_backward(&[&(&y * &upstream).sum(kind)], &[&leaf], false, false).remove(0);
                    (y.detach(), grad)
                };
                let ((native, native_grad), (fast, fast_grad)) = (pooled(Kernels::Standard), pooled(Kernels::Fast));
                let worst = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
                assert!(worst(&fast, &native) <= tolerance, "{kind:?} {side}: forward off by {}", worst(&fast, &native));
                assert!(worst(&fast_grad, &native_grad) <= tolerance, "{kind:?} {side}: backward off by {}", worst(&fast_grad, &native_grad));
            }
        }
        // A constant map stays that constant: every window's sum is divided by its own size.
        let constant = avg_pool_3x3(&Tensor::full([1, 2, 5, 5], 3.0, (Kind::Float, Device::Cpu)), Kernels::Fast);
        assert!(constant.equal(&Tensor::full([1, 2, 5, 5], 3.0, (Kind::Float, Device::Cpu))), "{constant}");
    }

    #[test]
    fn construction_is_deterministic_per_seed() {
        let spec = NetworkSpec { channels: 4, cells: 1, in_channels: 3, image_size: (8, 8), num_classes: 3 };
        let candidate: Candidate = Candidate::full();
        let weights = |seed| {
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = Network::new(&vs.root(), &spec, &candidate, seed);
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            Tensor::cat(&vars.iter().map(|(_, t)| t.flatten(0, -1)).collect::<Vec<_>>(), 0)
        };
        assert!(weights(1).equal(&weights(1)));
        assert!(!weights(1).equal(&weights(2)));
    }

    #[test]
    fn a_pass_cut_between_blocks_visits_each_block_on_a_leaf_and_computes_the_same_values() {
        let spec = NetworkSpec { channels: 4, cells: 2, in_channels: 3, image_size: (8, 8), num_classes: 3 };
        let (_, net) = build("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|", &spec);
        tch::manual_seed(3);
        let x = Tensor::randn([5, 3, 8, 8], (Kind::Float, Device::Cpu));
        let whole = net.run(&x, Pass::new(NormMode::Batch), true);
        let mut visits = Vec::new();
        let cut = net.run_block_by_block(&x, Pass::new(NormMode::Batch), &mut |input, output| {
            // The block's graph starts at its input and nothing before it.
            visits.push((input.is_leaf() && input.requires_grad(), output.requires_grad(), input.size(), output.size()));
        });
        // Two cells per stage and two reductions.
        assert_eq!(visits.len(), 3 * 2 + 2);
        assert!(visits.iter().all(|v| v.0 && v.1), "{visits:?}");
        assert_eq!(visits[2].3, vec![5, 8, 4, 4], "the first reduction halves the resolution");
        assert_eq!(cut.features.len(), whole.features.len());
        for (a, b) in cut.features.iter().zip(&whole.features) {
            assert!(a.equal(b) && !a.requires_grad());
        }
        assert!(cut.logits.equal(&whole.logits) && !cut.logits.requires_grad());
        // Called where gradients are off, the blocks still keep their graphs.
        let mut graphs = 0;
        tch::no_grad(|| net.run_block_by_block(&x, Pass::new(NormMode::Batch), &mut |_, output| graphs += usize::from(output.requires_grad())));
        assert_eq!(graphs, visits.len());
    }

    #[test]
    fn flops_grow_with_convolutions() {
        let spec = cifar_spec();
        let (_, none) = build("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", &spec);
        let (_, conv1) = build("|nor_conv_1x1~0|+|none~0|none~1|+|none~0|none~1|none~2|", &spec);
        let (_, conv3) = build("|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", &spec);
        assert!(none.info().flops < conv1.info().flops);
        assert!(conv1.info().flops < conv3.info().flops);
        // One 3×3 conv at C=16 over 32×32, five cells: 16·16·9·1024·5 MACs in stage 1 alone.
        assert!(conv3.info().flops - none.info().flops > 16 * 16 * 9 * 1024 * 5);
    }
}
