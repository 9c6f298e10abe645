#!/usr/bin/env python3
"""Where knas's searches land in NAS-Bench-201's published CIFAR-10 table.

Runs `knas search` for each policy and run seed on CIFAR-10 images (C=16, N=5), with the
published table as annotation only (the policy never sees it), and prints, per policy,
the table's accuracy of the final pick (the most accurate after the short trainings) and
of the pick by score alone, over the seeds.

    python3 host/benches/nb201_searches.py --data ../shared/data --seeds 0 1 2 3 4 \
        --policies random evolution pruning --out nb201-searches.json

Every search is resumable (its own run in --store), so an interrupted benchmark continues
where it stopped when rerun with the same arguments. Only the standard library is used.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--knas", default=str(root / "target/release/knas"), help="the knas binary")
    p.add_argument("--policies-dir", default=str(root / "policies"), help="folder of built policies (knas policy build --all)")
    p.add_argument("--data", required=True, help="folder with cifar10/ and nb201/ (the shared data)")
    p.add_argument("--policies", nargs="+", default=["random", "evolution", "pruning"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--budget", type=int, default=200, help="training-free scores per search")
    p.add_argument("--top-k", type=int, default=5, help="short trainings per search")
    p.add_argument("--limit", type=int, default=4000, help="training images for the short trainings")
    p.add_argument("--holdout", default="0.2", help="held-out share of the training batch, or 'test'")
    p.add_argument("--score", default="aggregate", help="the experiment's score: aggregate or a measure (e.g. mgm)")
    p.add_argument("--params", default=None, help="policy parameters (JSON), same for every policy")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", default="nb201-searches.db")
    p.add_argument("--out", default=None, help="write every report here (JSON)")
    args = p.parse_args()

    data = Path(args.data)
    table = data / "nb201" / "nb201_cifar10.jsonl.gz"
    results = []
    for policy in args.policies:
        for seed in args.seeds:
            name = f"{policy}-{args.score}-s{seed}"
            cmd = [
                args.knas, "search", "--policy", str(Path(args.policies_dir) / f"{policy}.wasm"), "--name", name,
                "--store", args.store, "--dataset", f"cifar10:{data / 'cifar10'}", "--holdout", args.holdout,
                "--limit", str(args.limit), "--seed", str(seed), "--score", args.score,
                "--budget", str(args.budget), "--top-k", str(args.top_k), "--threads", str(args.threads),
                "--table", str(table), "--format", "json",
            ]
            if args.params:
                cmd += ["--params", args.params]
            start = time.time()
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr}", file=sys.stderr)
                return 1
            report = json.loads(out.stdout)
            report["benchmark_seconds"] = time.time() - start
            results.append({"policy": policy, "seed": seed, "report": report})
            pub = report["published"]
            print(
                f"{name}: pick {pub['winner']['accuracy']:.2f} (top {pub['winner']['top_percent']:.2f}%), "
                f"by score alone {pub['best_by_score']['accuracy']:.2f}, {report['wall_seconds']:.0f} s, "
                f"policy {report['policy_overhead_percent']:.3f}% of evaluation time",
                file=sys.stderr,
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))

    print(f"| policy ({args.score}) | pick: mean | min | max | by score alone: mean | min | wall time (mean) | in policy calls |")
    print("|---|---|---|---|---|---|---|---|")
    for policy in args.policies:
        rows = [r["report"] for r in results if r["policy"] == policy]
        picks = [r["published"]["winner"]["accuracy"] for r in rows]
        alone = [r["published"]["best_by_score"]["accuracy"] for r in rows]
        wall = statistics.mean(r["wall_seconds"] for r in rows)
        overhead = statistics.mean(r["policy_overhead_percent"] for r in rows)
        print(
            f"| {policy} | {statistics.mean(picks):.2f} | {min(picks):.2f} | {max(picks):.2f} | "
            f"{statistics.mean(alone):.2f} | {min(alone):.2f} | {wall:.0f} s | {overhead:.3f} % |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
