#!/usr/bin/env python3
"""The demo's yardstick: each policy's winner against random sampling's, seed by seed.

The demo (scripts/demo.sh) runs a search on the embedded MNIST data with `knas search`'s
defaults and judges its winner by its held-out accuracy after the short training. This
runs that search for each policy and run seed, then prints the winners side by side, each
policy's mean, and its paired difference from the baseline policy (random sampling, the
KNAS protocol) with a bootstrap 95 % interval over the seeds. The pseudo-policy `sampling`
is random sampling with no score at all: the same number of seeded random cells, trained
(`knas train --sample K`), which says whether training-free selection helps on this task.

    python3 host/benches/demo_seeds.py --policies pruning random --seeds 0 1 2 3 4 5 6 7 8 9
    python3 host/benches/demo_seeds.py --policies pruning random sampling --seeds 0 1 2 3 4 5 6 7 8 9

One short training is one draw: the same network trained with another shuffling order can
land several points away. `--retrain N` separates that noise from the choice of finalists:
every run's trained finalists are trained again under N more shuffling seeds (`knas train
--train-seed`; initial weights and data split stay the run's), and a run's winner is then
the best finalist under each order, averaged over the N + 1 orders.

    python3 host/benches/demo_seeds.py --policies pruning random --seeds 0 --retrain 2

Searches are resumable runs in --store and retrainings are cached in --cache, so an
interrupted benchmark continues where it stopped when rerun with the same arguments. Only
the standard library is used.
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_json(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return out.stdout


def finalists(args, policy: str, seed: int) -> list[dict]:
    """Runs (or resumes, or shows) one demo search; its trained finalists."""
    if policy == SAMPLING:
        return sampled(args, seed)
    name = f"demo-{policy}-s{seed}"
    start = time.time()
    search = [args.knas, "search", "--policy", str(Path(args.policies_dir) / f"{policy}.wasm"), "--name", name, "--store", args.store, "--seed", str(seed), "--threads", str(args.threads), "--format", "json"]
    run_json(search + args.search_args)
    shown = json.loads(run_json([args.knas, "runs", name, "--store", args.store, "--format", "json"]))
    trained = [t for t in shown["leaderboard"]["trained"] if t.get("accuracy") is not None]
    best = max((t["accuracy"] for t in trained), default=float("nan"))
    print(f"{name}: winner {best:.3f} of {len(trained)} trained ({time.time() - start:.0f} s)", file=sys.stderr)
    return trained


SAMPLING = "sampling"


def sampled(args, seed: int) -> list[dict]:
    """Random sampling without any score: `--sample-k` seeded random cells, all trained."""
    start = time.time()
    cmd = [args.knas, "train", "--sample", str(args.sample_k), "--seed", str(seed), "--train-seed", str(seed), "--threads", str(args.threads), "--format", "jsonl"]
    rows = [json.loads(line) for line in run_json(cmd + args.train_args).splitlines()]
    trained = [{"candidate": r["arch"], "accuracy": r["accuracy"]} for r in rows]
    best = max((t["accuracy"] for t in trained), default=float("nan"))
    print(f"sampling-s{seed}: winner {best:.3f} of {len(trained)} trained ({time.time() - start:.0f} s)", file=sys.stderr)
    return trained


def retrained(args, cache: dict, archs: list[str], seed: int, train_seed: int) -> dict[str, float]:
    """Held-out accuracy of each architecture trained under `train_seed` (cached)."""
    missing = [a for a in archs if json.dumps([a, seed, train_seed]) not in cache]
    if missing:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write("\n".join(missing) + "\n")
            f.flush()
            cmd = [args.knas, "train", "--archs", f.name, "--seed", str(seed), "--train-seed", str(train_seed), "--threads", str(args.threads), "--format", "jsonl"]
            for line in run_json(cmd + args.train_args).splitlines():
                row = json.loads(line)
                key = json.dumps([row["arch"], seed, train_seed])
                cache[key] = row["accuracy"]
                with open(args.cache, "a") as c:
                    c.write(json.dumps({"key": key, "accuracy": row["accuracy"]}) + "\n")
    return {a: cache[json.dumps([a, seed, train_seed])] for a in archs}


def bootstrap(diffs: list[float], draws: int = 10000) -> tuple[float, float]:
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(draws))
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--knas", default=str(root / "target/release/knas"), help="the knas binary")
    p.add_argument("--policies-dir", default=str(root / "policies"), help="folder of built policies (knas policy build --all)")
    p.add_argument("--policies", nargs="+", default=["pruning", "random"],
                   help=f"built policies to run; `{SAMPLING}` is random sampling without scores (train --sample-k random cells)")
    p.add_argument("--baseline", default="random", help="the policy every other is compared with")
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    p.add_argument("--sample-k", type=int, default=3, help=f"cells `{SAMPLING}` trains: the searches' --top-k")
    p.add_argument("--retrain", type=int, default=0, help="shuffling seeds to train every finalist again under")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", default="demo-seeds.db")
    p.add_argument("--cache", default="demo-seeds-trainings.jsonl", help="retrainings already done")
    p.add_argument("--search-args", default="", help="extra `knas search` arguments, e.g. '--budget 200 --top-k 5'")
    p.add_argument("--train-args", default="", help="extra `knas train` arguments matching --search-args (e.g. '--epochs 3')")
    p.add_argument("--out", default=None, help="write every winner here (JSON)")
    args = p.parse_args()
    args.search_args = args.search_args.split()
    args.train_args = args.train_args.split()

    cache = {}
    if Path(args.cache).exists():
        for line in Path(args.cache).read_text().splitlines():
            row = json.loads(line)
            cache[row["key"]] = row["accuracy"]

    # winners[policy][seed] = (the search's winner, the winner averaged over shuffling orders)
    winners: dict[str, dict[int, tuple[float, float]]] = {}
    for policy in args.policies:
        winners[policy] = {}
        for seed in args.seeds:
            trained = finalists(args, policy, seed)
            won = max((t["accuracy"] for t in trained), default=float("nan"))
            orders = [won]
            archs = [t["candidate"] for t in trained]
            for i in range(args.retrain):
                # The search trained under shuffling seed `seed`; the others are distinct from it.
                acc = retrained(args, cache, archs, seed, seed * 1000 + 1 + i)
                orders.append(max(acc.values()))
                print(f"  shuffling order {i + 1}: " + ", ".join(f"{acc[a]:.3f}" for a in archs), file=sys.stderr)
            winners[policy][seed] = (won, statistics.mean(orders))

    columns = [("winner", 0)] + ([(f"winner, mean of {args.retrain + 1} orders", 1)] if args.retrain else [])
    for title, col in columns:
        print(f"\n{title} (held-out accuracy)\n")
        print("| policy | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
        print("|---|" + "---|" * (len(args.seeds) + 1))
        for policy in args.policies:
            vals = [winners[policy][s][col] for s in args.seeds]
            print(f"| {policy} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {statistics.mean(vals):.4f} |")
        if args.baseline in winners:
            for policy in args.policies:
                if policy == args.baseline:
                    continue
                diffs = [winners[policy][s][col] - winners[args.baseline][s][col] for s in args.seeds]
                won = sum(d > 0 for d in diffs)
                lost = sum(d < 0 for d in diffs)
                lo, hi = bootstrap(diffs) if len(diffs) > 1 else (diffs[0], diffs[0])
                print(f"\n{policy} − {args.baseline}: mean {statistics.mean(diffs):+.4f} (95 % bootstrap {lo:+.4f} to {hi:+.4f}); {won} seeds won, {lost} lost")
    if args.out:
        Path(args.out).write_text(json.dumps({p: {str(s): {"winner": w[0], "winner_mean_over_orders": w[1]} for s, w in v.items()} for p, v in winners.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
