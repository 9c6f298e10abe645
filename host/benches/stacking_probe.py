#!/usr/bin/env python3
"""Would stacking architectures into the same kernels speed up measuring on a GPU?

A probe, not part of knas: K NAS-Bench-201 networks (C=16, N=5, batch 64, 3×32×32 random
images, random cells) are stacked along the channel dimension — every convolution a
grouped one with K groups, each edge's op chosen per architecture by zeroed weights or
masks — and the aggregate's passes run on the stack, the way knas runs them on one
network:

- the batch-statistics forward pass, block by block, with random signs pushed back
  through each block and the C×C matrices whose spectra expressivity and trainability
  read;
- MeCo's one-image pass (per-image normalisation), with every layer's channel
  correlation spectrum;
- SynFlow: absolute weights in double precision, an all-ones input, eval-mode BN.

If the stack ran in about the time of one network, K architectures would cost one
network's kernel launches. It prints milliseconds per stack, the time of each pass, and
architectures per second, for each K:

    python3 host/benches/stacking_probe.py --device cuda --stacks 1,8,32,64,128
    python3 host/benches/stacking_probe.py --device cuda --stacks 1,32,128 --eig-on-host

The values are not knas's (other initialisation, no exact op semantics for dead nodes):
only the timing is the point.
"""
import argparse
import random
import time

import torch
import torch.nn.functional as F

EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def norm(x, mode):
    if mode == "batch":
        return F.batch_norm(x, None, None, training=True)
    if mode == "instance":
        return F.instance_norm(x)
    return x / (1 + 1e-5) ** 0.5  # eval mode at initialisation: running mean 0, variance 1


class Stack:
    """K networks in one: block tensors are [batch, K·C, H, W]."""

    def __init__(self, cells, device, channels=16, per_stage=5, seed=0):
        k = self.k = len(cells)
        gen = torch.Generator().manual_seed(seed)

        def uniform(shape, fan_in):
            return ((torch.rand(shape, generator=gen) * 2 - 1) / fan_in**0.5).to(device)

        def mask(ops, name, c):
            return torch.tensor([op == name for op in ops]).repeat_interleave(c).view(1, k * c, 1, 1).to(device)

        self.stem = uniform((k * channels, 3, 3, 3), 27)
        self.blocks = []
        c = channels
        for stage in range(3):
            if stage:
                self.blocks.append(("reduction", [uniform((k * 2 * c, c, 3, 3), 9 * c), uniform((k * 2 * c, 2 * c, 3, 3), 18 * c), uniform((k * 2 * c, c, 1, 1), c)]))
                c *= 2
            for _ in range(per_stage):
                edges = []
                for e in range(len(EDGES)):
                    ops = [cell[e] for cell in cells]
                    # An architecture without the op on this edge gets zero weights there.
                    w1 = uniform((k * c, c, 1, 1), c) * mask(ops, "nor_conv_1x1", c).view(-1, 1, 1, 1) if "nor_conv_1x1" in ops else None
                    w3 = uniform((k * c, c, 3, 3), 9 * c) * mask(ops, "nor_conv_3x3", c).view(-1, 1, 1, 1) if "nor_conv_3x3" in ops else None
                    skip = mask(ops, "skip_connect", c) if "skip_connect" in ops else None
                    pool = mask(ops, "avg_pool_3x3", c) if "avg_pool_3x3" in ops else None
                    edges.append({"w1": w1, "w3": w3, "skip": skip, "pool": pool})
                self.blocks.append(("cell", edges))
        self.head = uniform((k, c, 10), c)

    def weights(self):
        """Every weight tensor, in a fixed order."""
        out = [self.stem, self.head]
        for kind, block in self.blocks:
            if kind == "reduction":
                out += block
            else:
                out += [e[w] for e in block for w in ("w1", "w3") if e[w] is not None]
        return out

    def set_weights(self, tensors):
        it = iter(tensors)
        self.stem, self.head = next(it), next(it)
        for kind, block in self.blocks:
            if kind == "reduction":
                block[:] = [next(it) for _ in block]
            else:
                for e in block:
                    for w in ("w1", "w3"):
                        if e[w] is not None:
                            e[w] = next(it)

    def block(self, kind, block, x, mode, tap=None):
        k = self.k
        if kind == "reduction":
            a, b, shortcut = block
            y = norm(F.conv2d(F.relu(x), a, stride=2, padding=1, groups=k), mode)
            y = norm(F.conv2d(F.relu(y), b, padding=1, groups=k), mode)
            return F.conv2d(F.avg_pool2d(x, 2, 2), shortcut, groups=k) + y
        nodes = [x, None, None, None]
        for to in (1, 2, 3):
            total = None
            for e, (source, target) in enumerate(EDGES):
                if target != to:
                    continue
                edge, xi, outs = block[e], nodes[source], []
                if edge["w1"] is not None or edge["w3"] is not None:
                    r = F.relu(xi)
                    if tap:
                        tap(r)
                    if edge["w1"] is not None:
                        outs.append(norm(F.conv2d(r, edge["w1"], groups=k), mode))
                    if edge["w3"] is not None:
                        outs.append(norm(F.conv2d(r, edge["w3"], padding=1, groups=k), mode))
                if edge["skip"] is not None:
                    outs.append(torch.where(edge["skip"], xi, 0.0))
                if edge["pool"] is not None:
                    outs.append(torch.where(edge["pool"], F.avg_pool2d(xi, 3, 1, 1, count_include_pad=False), 0.0))
                for o in outs:
                    if tap:
                        tap(o)
                    total = o if total is None else total + o
            nodes[to] = total if total is not None else torch.zeros_like(x)
        return nodes[3]


class Probe:
    def __init__(self, device, eig_on_host):
        self.device, self.eig_on_host = device, eig_on_host
        self.signs = {}
        self.times = {}

    def eig(self, m):
        return torch.linalg.eigvalsh(m.cpu() if self.eig_on_host else m).cpu()

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def lap(self, name):
        self.sync()
        now = time.perf_counter()
        if name:
            self.times[name] = self.times.get(name, 0.0) + now - self.start
        self.start = now

    def spectra(self, stack, f):
        b, kc, h, w = f.shape
        rows = f.view(b, stack.k, kc // stack.k, h * w).permute(1, 0, 3, 2).reshape(stack.k, b * h * w, kc // stack.k)
        rows = rows - rows.mean(1, keepdim=True)
        return self.eig((rows.transpose(1, 2) @ rows).double() / rows.shape[1])

    def passes(self, stack, images):
        k, results = stack.k, []
        self.lap(None)
        x = norm(F.conv2d(images, stack.stem, padding=1), "batch")
        results.append(self.spectra(stack, x))
        for kind, block in stack.blocks:
            x_in = x.detach().requires_grad_(True)
            y = stack.block(kind, block, x_in, "batch")
            results.append(self.spectra(stack, y.detach()))
            if tuple(y.shape) not in self.signs:
                self.signs[tuple(y.shape)] = torch.randint(0, 2, y.shape, device=self.device).float() * 2 - 1
            s = self.signs[tuple(y.shape)]
            (g,) = torch.autograd.grad((y * s).sum(dtype=torch.float64), x_in)
            if g.shape[2] != y.shape[2]:
                g = F.pixel_unshuffle(g, 2)
            b, kc, h, w = g.shape
            gi = g.view(b, k, kc // k, h * w).permute(1, 0, 2, 3)
            go = s.view(b, k, -1, h * w).permute(1, 0, 2, 3)
            m = torch.einsum("kbih,kboh->kio", gi, go).double()
            results.append(self.eig(m @ m.transpose(1, 2)))
            x = y.detach()
        self.lap("batch pass + spectra")
        with torch.no_grad():
            maps = []
            x = norm(F.conv2d(images[:1], stack.stem, padding=1), "instance")
            for kind, block in stack.blocks:
                x = stack.block(kind, block, x, "instance", maps.append)
                maps.append(x)
            by_shape = {}
            for m in maps:
                _, kc, h, w = m.shape
                by_shape.setdefault((kc, h * w), []).append(m.view(k, kc // k, h * w))
            for group in by_shape.values():
                t = torch.stack(group).double()
                t = t - t.mean(-1, keepdim=True)
                cov = t @ t.transpose(-1, -2)
                sd = cov.diagonal(0, -2, -1).sqrt()
                results.append(self.eig(torch.nan_to_num(cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2)))).amin(-1))
        self.lap("meco")
        original = stack.weights()
        absolute = [w.detach().abs().double().requires_grad_(True) for w in original]
        stack.set_weights(absolute)
        x = norm(F.conv2d(torch.ones((1,) + images.shape[1:], device=self.device, dtype=torch.float64), stack.stem, padding=1), "eval")
        for kind, block in stack.blocks:
            x = stack.block(kind, block, x, "eval")
        h = F.relu(norm(x, "eval")).mean((2, 3)).view(1, k, -1)
        logits = torch.einsum("bkc,kco->bko", h, stack.head)
        grads = torch.autograd.grad(logits.sum(), absolute, allow_unused=True)
        results.append(sum((w * g).view(k, -1).sum(1) for w, g in zip(absolute, grads) if g is not None).cpu())
        stack.set_weights(original)
        self.lap("synflow")
        return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--stacks", default="1,8,32", help="architectures per stack, comma-separated")
    parser.add_argument("--eig-on-host", action="store_true", help="decompose the small matrices on the CPU")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    device = torch.device(args.device)
    rng = random.Random(0)
    images = torch.randn(64, 3, 32, 32, device=device)
    for k in [int(v) for v in args.stacks.split(",")]:
        cells = [[rng.choice(OPS) for _ in EDGES] for _ in range(k)]
        probe = Probe(device, args.eig_on_host)
        stacks = [Stack(cells, device, seed=i) for i in range(3)]
        probe.passes(stacks[0], images)  # warm-up
        probe.times.clear()
        probe.sync()
        start = time.perf_counter()
        for stack in stacks[1:]:
            probe.passes(stack, images)
        seconds = (time.perf_counter() - start) / 2
        passes = ", ".join(f"{name} {t / 2 * 1000:.0f} ms" for name, t in probe.times.items())
        print(f"K={k:3d}: {seconds * 1000:8.1f} ms per stack ({passes}) -> {k / seconds:6.1f} architectures/s", flush=True)


if __name__ == "__main__":
    main()
