#!/usr/bin/env python3
"""How well each field of a `knas score --format jsonl` output ranks a published table.

For a scoring run too large for `knas correlate` to hold in one report (e.g. every NB201
cell): Spearman's rho of every numeric field against the table's accuracy, matched by
architecture string (missing values rank lowest), Kendall's tau of the first measure on a
seeded subsample, and the table's accuracy of the best-scored architectures.

    python3 host/benches/scores_vs_table.py all.jsonl ../shared/data/nb201/nb201_cifar10.jsonl.gz

`--within-top N` adds the same rho among the N best by the first field only: what a
second measure would add to the choice among a search's finalists, where the first has
already done its work.

Standard library only.
"""

import argparse
import gzip
import json
import math
import random
import sys

from aggregate_choice import pearson, ranks


def kendall(x, y):
    """Kendall's tau-b: ties in either ranking (a missing value ties with another missing one)
    count against the denominator, as knas's own statistics count them."""
    concordant = discordant = tied_x = tied_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            same_x, same_y = x[i] == x[j], y[i] == y[j]
            if same_x and same_y:
                continue
            if same_x:
                tied_x += 1
            elif same_y:
                tied_y += 1
            elif (x[i] > x[j]) == (y[i] > y[j]):
                concordant += 1
            else:
                discordant += 1
    pairs = concordant + discordant
    return (concordant - discordant) / math.sqrt((pairs + tied_x) * (pairs + tied_y))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scores", help="knas score --format jsonl output")
    p.add_argument("table", help="published table: JSON lines with arch and an accuracy field")
    p.add_argument("--field", default="acc", help="the table's accuracy field")
    p.add_argument("--kendall-sample", type=int, default=3000)
    p.add_argument("--within-top", type=int, default=0, help="also rank every field among the N best by the first field")
    args = p.parse_args()

    opener = gzip.open if args.table.endswith(".gz") else open
    with opener(args.table, "rt") as f:
        accuracy = {row["arch"]: row[args.field] for row in map(json.loads, f)}
    rows = [json.loads(line) for line in open(args.scores)]
    unknown = [r["arch"] for r in rows if r["arch"] not in accuracy]
    if unknown:
        print(f"{len(unknown)} architectures are not in {args.table}, e.g. {unknown[0]}", file=sys.stderr)
        return 1
    truth = [accuracy[r["arch"]] for r in rows]
    fields = [k for k, v in rows[0].items() if k not in ("arch", "index", "seconds") and (v is None or isinstance(v, float))]
    print(f"{len(rows)} architectures")
    print("| field | Spearman rho | missing |")
    print("|---|---|---|")
    # Missing values rank lowest (as knas ranks them).
    def column(field):
        return [r.get(field) if r.get(field) is not None else -math.inf for r in rows]

    for field in fields:
        missing = sum(r.get(field) is None for r in rows)
        print(f"| {field} | {pearson(ranks(column(field)), ranks(truth)):.3f} | {missing} |")
    first = column(fields[0])
    sample = random.Random(0).sample(range(len(rows)), min(args.kendall_sample, len(rows)))
    tau = kendall([first[i] for i in sample], [truth[i] for i in sample])
    print(f"Kendall tau of {fields[0]} on {len(sample)} of them: {tau:.3f}")
    best = sorted(range(len(rows)), key=lambda i: -first[i])
    print(f"table accuracy of the 10 best by {fields[0]}: {', '.join(f'{truth[i]:.2f}' for i in best[:10])}")
    if args.within_top:
        top = best[: args.within_top]
        print(f"\nAmong the {len(top)} best by {fields[0]}:")
        print("| field | Spearman rho |")
        print("|---|---|")
        for field in fields:
            values = column(field)
            print(f"| {field} | {pearson(ranks([values[i] for i in top]), ranks([truth[i] for i in top])):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
