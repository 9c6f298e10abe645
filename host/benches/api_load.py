#!/usr/bin/env python3
"""Load on `knas serve`'s HTTP API while a run is searching.

Builds a store with many recorded evaluations (default 300,000, in 100 runs), starts the
service on it with one live run searching (tiny networks, so that scores are frequent and
any slowdown shows), measures the live run's scores per second with the API idle, then
with CLIENTS clients calling `GET /api/runs?limit=100` as fast as they are answered for
SECONDS, and reports the requests' latency (p50, p99, max), errors, and the search's
throughput under load as a share of idle. Finally it times the exit after SIGTERM.

    python3 host/benches/api_load.py --clients 200 --seconds 30 --evaluations 300000

The clients are `--generator rust` (default: `host/benches/http_load.rs`, one keep-alive
connection per client on a one-thread runtime, as dashboards and scrapers connect) or
`python` (a thread per client, a new connection per request: the generator then takes
most of a core of the machine it shares with the service).

Needs the release binary, a built random policy (knas policy build --all) and, for the
Rust generator, cargo (it builds the bench first). The script itself uses only Python's
standard library.
"""

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def arch(index: int) -> str:
    """The NB201 string of dense index `index` (edge 0 is the most significant digit)."""
    ops = []
    for _ in range(6):
        ops.append(OPS[index % 5])
        index //= 5
    o = ops[::-1]
    return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"


def metric(address: str, series: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(series):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--knas", default=str(root / "target/release/knas"))
    p.add_argument("--policy", default=str(root / "policies/random.wasm"))
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--idle-seconds", type=float, default=15)
    p.add_argument("--evaluations", type=int, default=300_000)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--generator", choices=["rust", "python"], default="rust")
    args = p.parse_args()

    generator = None
    if args.generator == "rust":
        # Built before anything is measured.
        built = subprocess.run(["cargo", "bench", "--locked", "-p", "knas", "--bench", "http_load", "--no-run", "--message-format=json"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
        generator = next(m["executable"] for m in map(json.loads, built.splitlines())
                         if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "http_load" and m.get("executable"))

    work = Path(tempfile.mkdtemp(prefix="knas-load-"))
    db = work / "runs.db"
    small = ["--channels", "2", "--cells", "1", "--batch-size", "4", "--limit", "64", "--reference", "6"]
    # A store of the current schema with one real run, whose settings the synthetic runs copy.
    subprocess.run([args.knas, "search", "--policy", args.policy, "--name", "seed", "--store", str(db), "--budget", "2",
                    "--top-k", "0", "--threads", "1", "--format", "json", *small], check=True, capture_output=True)
    conn = sqlite3.connect(db)
    experiment, search = conn.execute("SELECT experiment, search FROM runs WHERE name = 'seed'").fetchone()
    per_run = args.evaluations // args.runs
    start = time.time()
    with conn:
        for r in range(args.runs):
            cur = conn.execute("INSERT INTO runs (name, policy, status, experiment, search) VALUES (?, 'random@0', 'done', ?, ?)",
                               (f"load-{r:04d}", experiment, search))
            run_id = cur.lastrowid
            conn.executemany(
                "INSERT INTO evaluations (run_id, seq, candidate, fidelity, score, seconds, policy, measures) "
                "VALUES (?, ?, ?, 'score', ?, 0.1, 'random@0', '{}')",
                ((run_id, i + 1, arch(i % 15625), -((i * 7919) % 1000) / 100.0) for i in range(per_run)),
            )
    total = conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    conn.close()
    print(f"store: {total} evaluations in {args.runs + 1} runs, built in {time.time() - start:.0f} s", file=sys.stderr)

    policies = work / "policies"
    policies.mkdir()
    config = work / "knas.yaml"
    config.write_text(
        f"listen: 127.0.0.1:0\npolicy-dir: policies\nstore: runs.db\ndevice: cpu\nthreads: 1\ndebounce-ms: 100\n"
        f"experiment: {{ channels: 2, cells: 1, score-batch: 4, limit: 64, reference: 6 }}\n"
        f"search: {{ budget: 1000000, top-k: 0, max-batch: 16 }}\n"
    )
    service = subprocess.Popen([args.knas, "serve", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = json.loads(service.stdout.readline())["listening"]
    (policies / "live.wasm").write_bytes(Path(args.policy).read_bytes())
    series = 'knas_evaluations_total{kind="score",outcome="ok",run="live"}'
    while metric(address, series) < 20:
        time.sleep(0.2)

    def throughput(seconds: float) -> float:
        before, t0 = metric(address, series), time.time()
        time.sleep(seconds)
        return (metric(address, series) - before) / (time.time() - t0)

    idle = throughput(args.idle_seconds)

    url = f"http://{address}/api/runs?limit=100"
    try:
        if generator:
            load = subprocess.Popen([generator, "--url", url, "--clients", str(args.clients), "--seconds", str(args.seconds),
                                     "--expect-prefix", '{"runs":'], stdout=subprocess.PIPE, text=True)
            loaded = throughput(args.seconds)
            out = load.communicate()[0]
            if load.returncode != 0:
                raise SystemExit(f"the load generator failed (exit {load.returncode})")
            generated = json.loads(out)
        else:
            generated = python_load(url, args.clients, args.seconds, throughput)
            loaded = generated.pop("scores_per_second")
    except BaseException:
        service.kill()
        raise

    asked = time.time()
    service.send_signal(signal.SIGTERM)
    code = service.wait(timeout=120)
    exit_seconds = time.time() - asked

    report = {
        "evaluations_in_store": total,
        "generator": args.generator,
        **generated,
        "scores_per_second": {"idle": idle, "under_load": loaded, "share": loaded / idle if idle else None},
        "exit_after_sigterm_seconds": exit_seconds,
        "exit_code": code,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=1))
    return 0


def python_load(url: str, clients: int, seconds: float, throughput) -> dict:
    """A thread per client, a new connection per request; also measures the search's
    throughput (via `throughput`) while the load lasts."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + seconds

    def client() -> None:
        while time.time() < deadline:
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    body = response.read()
                    ok = response.status == 200 and body.startswith(b'{"runs":')
                    problem = None if ok else f"status {response.status}"
            except (urllib.error.URLError, OSError) as e:
                problem = str(e)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if problem:
                    errors.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    loaded = throughput(seconds)
    for t in threads:
        t.join()
    latencies.sort()
    q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1000 if latencies else None  # noqa: E731
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "requests_per_second": len(latencies) / seconds,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "latency_ms": {"p50": q(0.50), "p99": q(0.99), "max": latencies[-1] * 1000 if latencies else None,
                       "mean": statistics.mean(latencies) * 1000 if latencies else None},
        "scores_per_second": loaded,
    }


if __name__ == "__main__":
    sys.exit(main())
