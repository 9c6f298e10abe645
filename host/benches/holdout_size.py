#!/usr/bin/env python3
"""How many held-out images fine selection needs, from the finalists of real searches.

Reads the searches stored by `nb201_searches.py` (their finalists' 1-epoch held-out
accuracies, measured on N0 images, and the published accuracy annotated beside each) and
asks: had the held-out set been n images instead, how good would the pick be? Each
finalist's measured accuracy stands in for its true 1-epoch accuracy p; a held-out set of
n images measures it as Binomial(n, p)/n; the pick is the finalist with the highest
measurement. Over many draws and every search this gives the expected published accuracy
of the pick for each n, beside the pick with the accuracy as measured (n = N0).

    python3 host/benches/holdout_size.py --store nb201-searches.db --like '%-aggregate-s%'

Only the standard library is used.
"""

import argparse
import random
import sqlite3
import statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="the run store the searches were recorded in")
    p.add_argument("--like", default="%-aggregate-s%", help="SQL LIKE pattern of the run names")
    p.add_argument("--measured-on", type=int, default=2000, help="held-out images the stored accuracies were measured on")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2000, 5000, 10000])
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args()

    conn = sqlite3.connect(f"file:{args.store}?mode=ro", uri=True)
    runs = conn.execute("SELECT id, name FROM runs WHERE name LIKE ? ORDER BY name", (args.like,)).fetchall()
    finalists = []
    for run_id, name in runs:
        rows = conn.execute(
            "SELECT e.accuracy, p.accuracy FROM evaluations e JOIN published p ON p.run_id = e.run_id AND p.candidate = e.candidate "
            "WHERE e.run_id = ? AND e.fidelity <> 'score' AND e.accuracy IS NOT NULL",
            (run_id,),
        ).fetchall()
        if len(rows) >= 2:
            finalists.append((name, rows))
    print(f"{len(finalists)} searches, {sum(len(r) for _, r in finalists)} finalists")
    as_measured = statistics.mean(max(rows)[1] for _, rows in finalists)
    oracle = statistics.mean(max(pub for _, pub in rows) for _, rows in finalists)
    print(f"best finalist by the table (oracle): {oracle:.3f}; pick as measured on {args.measured_on}: {as_measured:.3f}")
    rng = random.Random(0)
    print("| held-out images | expected table accuracy of the pick | same pick as measured |")
    print("|---|---|---|")
    for n in args.sizes:
        picks, same = [], 0
        for _, rows in finalists:
            measured_pick = max(rows)[1]
            for _ in range(args.draws):
                # A normal approximation of the binomial: fast, and exact enough for n ≥ 100.
                noisy = [(acc + rng.gauss(0, (acc * (1 - acc) / n) ** 0.5), pub) for acc, pub in rows]
                pick = max(noisy)[1]
                picks.append(pick)
                same += pick == measured_pick
        print(f"| {n} | {statistics.mean(picks):.3f} | {same / len(picks):.0%} |")


if __name__ == "__main__":
    main()
