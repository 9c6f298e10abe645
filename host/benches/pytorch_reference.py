"""PyTorch eager reference for the scoring benchmark (`cargo bench -p knas --bench throughput`).

Builds the same NAS-Bench-201 network as knas (3x3 stem + BN, three stages of N cells with
C, 2C, 4C channels, ResNet reduction blocks, BN-ReLU, global pool, linear head) and times
the same batched MGM computation: one forward/backward of the batch-mean cross-entropy,
then the squared norm of the gradient. Model construction is excluded from the timing.

Two cell implementations are timed:
  - nb201: NAS-Bench-201's own InferCell semantics (every node computed, `none` = x*0);
  - pruned: `none` edges and dead nodes skipped, exact zeros carried through skip and pool,
    as knas's fast path does (same result as nb201, less work).

Architectures are the benchmark's fixed list: index (i * 7919) % 15625, the six op indices
read as base-5 digits with the first edge most significant (knas's dense index).

Usage: python pytorch_reference.py --archs 20 --threads 2 [--mode per-sample|batch] [--device cuda]
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


def arch_from_index(index):
    ops = []
    for _ in range(6):
        ops.append(index % 5)
        index //= 5
    return [OPS[i] for i in reversed(ops)]


class Norm(nn.BatchNorm2d):
    """BN whose statistics are the batch's, or each sample's own (per-sample mode)."""

    per_sample = False

    def forward(self, x):
        if Norm.per_sample:
            return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.1, self.eps)


class ReLUConvBN(nn.Module):
    def __init__(self, c_in, c_out, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
        self.bn = Norm(c_out)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


class Cell(nn.Module):
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
            return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return self.edges[e](x)

    def forward(self, x):
        nodes = [x, None, None, None]
        for to in (1, 2, 3):
            if self.pruned and not self.live[to]:
                continue
            total = None
            for e, (f, t) in enumerate(EDGES):
                if t != to:
                    continue
                op, source = self.ops[e], nodes[f]
                if self.pruned and (op == "none" or not self.live[f]):
                    continue
                if source is None:
                    # An exact zero: skip and pool keep it zero; a conv still yields BN's bias.
                    if op in ("skip_connect", "avg_pool_3x3", "none"):
                        continue
                    source = torch.zeros_like(x)
                y = self.apply(e, source)
                total = y if total is None else total + y
            nodes[to] = total
        return nodes[3] if nodes[3] is not None else torch.zeros_like(x)


class Reduction(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.a = ReLUConvBN(c_in, c_out, 3, 2)
        self.b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        return self.shortcut(x) + self.b(self.a(x))


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
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def mgm(net, x, y):
    params = [p for p in net.parameters()]
    loss = F.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(sum(g.double().square().sum() for g in grads if g is not None))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--mode", choices=["per-sample", "batch"], default="per-sample")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    Norm.per_sample = args.mode == "per-sample"
    device = torch.device(args.device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    archs = [arch_from_index((i * 7919) % 15625) for i in range(args.archs)]
    for impl in ("nb201", "pruned"):
        for ops in archs[:3]:  # warm-up (and, on CUDA, kernel selection)
            mgm(Network(ops, args.channels, args.cells, 3, 10, impl == "pruned").to(device), x, y)
        total = 0.0
        for ops in archs:
            net = Network(ops, args.channels, args.cells, 3, 10, impl == "pruned").to(device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            mgm(net, x, y)  # reads the result back: includes the device sync
            total += time.perf_counter() - start
        print(json.dumps({
            "implementation": f"pytorch-eager-{impl}",
            "mode": args.mode,
            "device": args.device,
            "torch": torch.__version__,
            "threads": args.threads,
            "archs": len(archs),
            "seconds_per_arch": total / len(archs),
            "archs_per_second": len(archs) / total,
        }), flush=True)


if __name__ == "__main__":
    main()
