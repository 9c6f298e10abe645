#!/usr/bin/env python3
"""How the default aggregate's measures were chosen: every combination of measures, judged
on `knas correlate --table` reports (every measure of every architecture is in them).

For each combination of 2 to `--max-size` measures (equal weights), on each report:
  - rho: Spearman's rho between the aggregate (sum of ln(rank/N), ranks within the sample,
    missing values lowest) and the published accuracy;
  - pick200: the mean published accuracy of the best-scored of 200 architectures drawn
    from the sample (500 seeded draws): what a search that scores 200 candidates keeps.

The selection rule: among combinations with rho >= 0.93 on the *selection* report, the
best pick200 (to 0.01 points; closer is noise), ties broken by rho; the chosen
combination is then shown, unchanged, on the *confirmation* report(s).

    python3 host/benches/aggregate_choice.py corr-s0.json corr-s1.json

Standard library only.
"""

import argparse
import itertools
import json
import math
import random
import sys


def ranks(values):
    """1-based ranks, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


class Report:
    def __init__(self, path):
        report = json.load(open(path))
        rows = report["measurements"]
        self.name = path
        self.accuracy = [sum(r["accuracy"]) / len(r["accuracy"]) for r in rows]
        self.accuracy_ranks = ranks(self.accuracy)
        self.measures = [m for m in rows[0]["values"]]
        n = len(rows)
        # ln(rank / N) per measure, missing values lowest.
        self.log_ranks = {}
        for m in self.measures:
            column = [r["values"][m] if r["values"][m] is not None else -math.inf for r in rows]
            self.log_ranks[m] = [math.log(r / n) for r in ranks(column)]
        rng = random.Random(1)
        self.draws = [rng.sample(range(n), min(200, n)) for _ in range(500)]

    def judge(self, combo):
        total = [sum(self.log_ranks[m][i] for m in combo) for i in range(len(self.accuracy))]
        rho = pearson(ranks(total), self.accuracy_ranks)
        picks = [self.accuracy[max(draw, key=lambda i: total[i])] for draw in self.draws]
        return rho, sum(picks) / len(picks)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("selection", help="the report the combination is chosen on")
    p.add_argument("confirmation", nargs="+", help="reports it is confirmed on")
    p.add_argument("--max-size", type=int, default=7)
    p.add_argument("--min-rho", type=float, default=0.93)
    p.add_argument("--show", type=int, default=10, help="combinations listed")
    p.add_argument("--exclude", nargs="*", default=["kernel-alignment", "mgm-batch", "grad-norm", "snip"],
                   help="measures left out of the search (those dominated by others of their family)")
    args = p.parse_args()

    selection = Report(args.selection)
    others = [Report(path) for path in args.confirmation]
    pool = [m for m in selection.measures if m not in args.exclude]
    judged = []
    for size in range(2, args.max_size + 1):
        for combo in itertools.combinations(pool, size):
            judged.append((combo, *selection.judge(combo)))
    eligible = [j for j in judged if j[1] >= args.min_rho]
    eligible.sort(key=lambda j: (-round(j[2], 2), -j[1]))
    print(f"{len(judged)} combinations of {', '.join(pool)}; {len(eligible)} with rho >= {args.min_rho} on {selection.name}")
    header = "| measures | " + " | ".join(f"ρ / pick200, {r.name}" for r in [selection] + others) + " |"
    print(header)
    print("|---" * (1 + 1 + len(others)) + "|")
    for combo, rho, pick in eligible[: args.show]:
        cells = [f"{rho:.3f} / {pick:.2f}"] + ["{:.3f} / {:.2f}".format(*r.judge(combo)) for r in others]
        print(f"| {', '.join(combo)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
