"""PyTorch eager reference for the scoring benchmark (`cargo bench -p knas --bench throughput`).

Builds the same NAS-Bench-201 network as knas (3x3 stem + BN, three stages of N cells with
C, 2C, 4C channels, ResNet reduction blocks, BN-ReLU, global pool, linear head) and times
the same work as knas's benchmark. Model construction is excluded from the timing.

Modes:
  - per-sample, batch: the batched MGM computation, one forward/backward of the batch-mean
    cross-entropy, then the squared norm of the gradient (BN on each image's own statistics,
    or on the batch's);
  - aggregate: the measures of knas's default aggregate (the `measure` rows of the throughput
    benchmark, set "aggregate"), as host/src/measures computes them:
      * expressivity, progressivity (AZ-NAS): one forward of the batch with BN on batch
        statistics, the stem's and every block's output kept; per map the entropy of the
        normalised channel-covariance spectrum; sum, and smallest step between maps;
      * trainability (AZ-NAS): on that forward's graph, fixed random +-1 signs pushed back
        from each block's output to its input; sigma_max of G_in^T G_out / (B*H*W)
        (space-to-depth where the block halves the resolution); mean of -s - 1/s + 2;
      * meco: the batch's first image alone (BN on its own statistics), every node
        computed, every layer output as knas's `Tap` sees it (with its multiplicity); sum of
        the smallest eigenvalue of the channels' Pearson correlation;
      * synflow: weights made absolute in double precision, BN as identity (running
        statistics), an all-ones input; sum over conv/linear weights of w * dR/dw;
      * params: trainable parameters.
    Last: SynFlow converts the network to |w| in double precision, as knas does.

Two cell implementations are timed:
  - nb201: NAS-Bench-201's own InferCell semantics (every node computed, `none` = x*0);
  - pruned: `none` edges and dead nodes skipped, exact zeros carried through skip and pool,
    as knas's fast path does (same result as nb201, less work). For MeCo, dead nodes are
    still computed (knas computes every node for it: their outputs count), `none` skipped.

Architectures are the benchmark's fixed list: index (i * 7919) % 15625, the six op indices
read as base-5 digits with the first edge most significant (knas's dense index).

Usage: python pytorch_reference.py --archs 20 --threads 2 [--mode per-sample|batch|aggregate] [--device cuda]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]

# Layer outputs seen during a forward pass (MeCo), as (tensor, times); None when nobody
# watches. Mirrors knas's `Tap::layer_output` (host/src/model.rs), multiplicities included.
TAPS = None


def tap(x, times):
    if TAPS is not None:
        TAPS.append((x, times))


def arch_from_index(index):
    ops = []
    for _ in range(6):
        ops.append(index % 5)
        index //= 5
    return [OPS[i] for i in reversed(ops)]


class Norm(nn.BatchNorm2d):
    """BN whose statistics are the batch's, each sample's own (per-sample mode), or the
    running averages (`eval`: mean 0, variance 1, never updated here; SynFlow)."""

    mode = "batch"  # "batch", "instance" or "eval"

    def forward(self, x):
        if Norm.mode == "instance":
            return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)
        if Norm.mode == "eval":
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.1, self.eps)


class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = Norm(c_out)

    def forward(self, x):
        x = F.relu(x)
        tap(x, 1)
        y = self.conv(x)
        tap(y, 1)
        out = self.bn(y)
        tap(out, 3)  # the BN, its Sequential and the ReLUConvBN module return it
        return out


class Cell(nn.Module):
    # Compute nodes that cannot reach the output too (knas's `Pass::all_nodes`, for MeCo).
    all_nodes = False

    def __init__(self, ops, c, pruned):
        super().__init__()
        self.ops, self.pruned = ops, pruned
        self.edges = nn.ModuleList()
        for op in ops:
            if op == "nor_conv_1x1":
                self.edges.append(ReLUConvBN(c, c, 1, 1))
            elif op == "nor_conv_3x3":
                self.edges.append(ReLUConvBN(c, c, 3, 1))
            else:
                self.edges.append(nn.Identity())
        live = [False, False, False, True]
        for node in (2, 1, 0):
            live[node] = any(f == node and live[t] and ops[e] != "none" for e, (f, t) in enumerate(EDGES))
        self.live = live

    def apply(self, e, x):
        op = self.ops[e]
        if op == "none":
            return x.mul(0.0)
        if op == "avg_pool_3x3":
            y = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
            tap(y, 2)  # NB201's POOLING module and the pool inside it
            return y
        if op == "skip_connect":
            tap(x, 1)
        return self.edges[e](x)

    def forward(self, x):
        nodes = [x, None, None, None]
        skip_dead = self.pruned and not Cell.all_nodes
        for to in (1, 2, 3):
            if skip_dead and not self.live[to]:
                continue
            total = None
            for e, (f, t) in enumerate(EDGES):
                if t != to:
                    continue
                op, source = self.ops[e], nodes[f]
                if self.pruned and (op == "none" or (skip_dead and not self.live[f])):
                    continue
                if source is None:
                    # An exact zero: skip and pool keep it zero; a conv still yields BN's bias.
                    if op in ("skip_connect", "avg_pool_3x3", "none"):
                        continue
                    source = torch.zeros_like(x)
                y = self.apply(e, source)
                total = y if total is None else total + y
            nodes[to] = total
        out = nodes[3] if nodes[3] is not None else torch.zeros_like(x)
        tap(out, 1)
        return out


class Reduction(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.a = ReLUConvBN(c_in, c_out, 3, 2)
        self.b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        residual = self.b(self.a(x))
        pooled = self.shortcut[0](x)
        tap(pooled, 1)
        shortcut = self.shortcut[1](pooled)
        tap(shortcut, 2)  # the shortcut's conv and the Sequential holding it
        out = shortcut + residual
        tap(out, 1)
        return out


class Network(nn.Module):
    def __init__(self, ops, c, n, in_ch, classes, pruned):
        super().__init__()
        layers = [nn.Conv2d(in_ch, c, 3, 1, 1, bias=False), Norm(c)]
        ch = c
        for stage in range(3):
            if stage:
                layers.append(Reduction(ch, ch * 2))
                ch *= 2
            layers += [Cell(ops, ch, pruned) for _ in range(n)]
        layers += [Norm(ch), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(ch, classes)

    def forward(self, x):
        return self.run(x)[0]

    def run(self, x, features=False):
        """Logits, and with `features` the stem's and every block's output (on the graph)."""
        layers = list(self.body)
        kept = []
        h = layers[0](x)
        tap(h, 1)
        h = layers[1](h)
        tap(h, 2)  # the stem's BN and the stem's Sequential
        if features:
            kept.append(h)
        for block in layers[2:-2]:
            h = block(h)
            if features:
                kept.append(h)
        h = layers[-2](h)
        tap(h, 1)
        h = layers[-1](h)
        tap(h, 1)
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1)), kept

    def layer_weights(self):
        """Conv and linear weights: what SNIP, SynFlow and co. sum over."""
        return [m.weight for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def mgm(net, x, y):
    params = [p for p in net.parameters()]
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(sum(g.double().square().sum() for g in grads if g is not None))


# --- The default aggregate's measures (host/src/measures/{features,saliency}.rs) ---------

SIGNS = {}


def signs_like(t):
    """Random +-1 signs, one tensor per shape, drawn once (knas's `SignCache`)."""
    key = (tuple(t.shape), t.dtype, t.device)
    if key not in SIGNS:
        seed = 0x51675E75
        for d in t.shape:
            seed = (seed * 1000003 + d) % (2**63)
        g = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, tuple(t.shape), generator=g).float().mul_(2).sub_(1)
        SIGNS[key] = signs.to(dtype=t.dtype, device=t.device)
    return SIGNS[key]


def finite(v):
    return v if v is not None and math.isfinite(v) else None


def expressivity(features):
    """(expressivity, progressivity): spectral entropies of the feature maps."""
    entropies = []
    with torch.no_grad():
        for f in features:
            c = f.shape[1]
            rows = f.permute(0, 2, 3, 1).reshape(-1, c)
            centred = rows - rows.mean(0, keepdim=True)
            cov = (centred.t() @ centred).double() / rows.shape[0]
            s = torch.linalg.eigvalsh(cov).clamp_min(0.0)
            total = s.sum().item()
            if not (total > 0.0 and math.isfinite(total)):
                return None, None
            p = s / total
            entropy = finite((-p * (p + 1e-8).log()).sum().item())
            if entropy is None:
                return None, None
            entropies.append(entropy)
    steps = [b - a for a, b in zip(entropies, entropies[1:])]
    return finite(sum(entropies)), finite(min(steps)) if steps else None


def largest_singular_value(g_in, g_out):
    if g_in.shape[2] != g_out.shape[2]:
        g_in = F.pixel_unshuffle(g_in, g_in.shape[2] // max(g_out.shape[2], 1))

    def rows(g):
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]).double()

    gi, go = rows(g_in), rows(g_out)
    m = gi.t() @ go / go.shape[0]
    gram = m @ m.t() if m.shape[0] < m.shape[1] else m.t() @ m
    return max(torch.linalg.eigvalsh(gram).max().item(), 0.0) ** 0.5


def trainability(features):
    total, pairs = 0.0, 0
    for i in range(len(features) - 1, 0, -1):
        f_out, f_in = features[i], features[i - 1]
        g_out = signs_like(f_out)
        g_in = None
        if f_out.requires_grad and f_in.requires_grad:
            pushed = (f_out * g_out).sum(dtype=torch.float64)
            (g_in,) = torch.autograd.grad(pushed, f_in, retain_graph=True, allow_unused=True)
        if g_in is None:
            sigma = 0.0  # the block's output ignores its input
        else:
            if g_in.shape == g_out.shape and torch.equal(g_in, g_out.to(g_in.dtype)):
                return None  # an exact identity block
            sigma = largest_singular_value(g_in, g_out)
        total += -sigma - 1.0 / (sigma + 1e-6) + 2.0
        pairs += 1
    return finite(total / pairs) if pairs else None


def meco(net, images):
    global TAPS
    TAPS = []
    Norm.mode, Cell.all_nodes = "instance", True
    try:
        with torch.no_grad():
            net(images[:1])
            by_shape = {}
            for x, times in TAPS:
                if x.dim() != 4 or x.shape[2] * x.shape[3] < 2:
                    continue
                key = (x.shape[1], x.shape[2] * x.shape[3])
                maps, weights = by_shape.setdefault(key, ([], []))
                maps.append(x[0].reshape(key))
                weights.append(float(times))
            total = 0.0
            for key in sorted(by_shape):
                maps, weights = by_shape[key]
                # Pearson correlation of channels, batched over layers of the same shape.
                x = torch.stack(maps).double()
                centred = x - x.mean(2, keepdim=True)
                cov = centred @ centred.transpose(1, 2)
                sd = cov.diagonal(0, 1, 2).sqrt()
                corr = (cov / (sd.unsqueeze(2) * sd.unsqueeze(1))).nan_to_num(0.0, 0.0, 0.0)
                smallest = torch.linalg.eigvalsh(corr).amin(1).tolist()
                total += sum(v * w for v, w in zip(smallest, weights))
    finally:
        TAPS = None
        Norm.mode, Cell.all_nodes = "batch", False
    return finite(total)


def synflow(net, images):
    net.double()
    with torch.no_grad():
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point():
                t.abs_()
    ones = torch.ones(1, *images.shape[1:], dtype=torch.float64, device=images.device)
    Norm.mode = "eval"
    try:
        flow = net(ones).sum(dtype=torch.float64)
    finally:
        Norm.mode = "batch"
    params = list(net.parameters())
    grads = torch.autograd.grad(flow, params, allow_unused=True)
    weights = {id(w) for w in net.layer_weights()}
    terms = [(p * g).sum() for p, g in zip(params, grads) if id(p) in weights and g is not None]
    return finite(torch.stack(terms).sum().item()) if terms else None


def aggregate(net, x):
    """The default aggregate's measures, in knas's order (`Suite::measure`)."""
    values = {"params": float(sum(p.numel() for p in net.parameters()))}
    Norm.mode = "batch"
    _logits, features = net.run(x, features=True)
    values["expressivity"], values["progressivity"] = expressivity(features)
    values["trainability"] = trainability(features)
    del _logits, features
    values["meco"] = meco(net, x)
    values["synflow"] = synflow(net, x)  # last: rewrites the weights
    return values


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mode", choices=["per-sample", "batch", "aggregate"], default="per-sample")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    Norm.mode = "instance" if args.mode == "per-sample" else "batch"
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    archs = [arch_from_index((i * 7919) % 15625) for i in range(args.archs)]
    if args.mode == "aggregate":
        work = lambda net: aggregate(net, x)  # noqa: E731
    else:
        work = lambda net: mgm(net, x, y)  # noqa: E731
    for impl in ("nb201", "pruned"):
        for ops in archs[:3]:  # warm-up (and, on CUDA, kernel selection; draws the signs)
            work(Network(ops, args.channels, args.cells, 3, 10, impl == "pruned").to(device))
        total = 0.0
        measured = []
        for ops in archs:
            net = Network(ops, args.channels, args.cells, 3, 10, impl == "pruned").to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            measured.append(work(net))  # reads the result back: includes the device sync
            total += time.perf_counter() - start
        row = {
            "implementation": f"pytorch-eager-{impl}",
            "mode": args.mode,
            "device": args.device,
            "torch": torch.__version__,
            "threads": args.threads,
            "archs": len(archs),
            "seconds_per_arch": total / len(archs),
            "archs_per_second": len(archs) / total,
        }
        if args.mode == "aggregate":
            names = ["synflow", "meco", "expressivity", "progressivity", "trainability", "params"]
            means, missing = {}, {}
            for name in names:
                finite_values = [v[name] for v in measured if v[name] is not None]
                means[name] = sum(finite_values) / len(finite_values) if finite_values else None
                missing[name] = len(measured) - len(finite_values)
            row["measures"] = names
            row["timed"] = "every measure after model construction (construction excluded)"
            row["measure_means"] = means
            row["missing"] = missing
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
