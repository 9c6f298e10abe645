#!/usr/bin/env python3
"""Latency of `knas katib`'s GetSuggestions, measured with Katib's own Python stubs.

Starts the release binary's suggestion service on a fresh store and times, for the whole
NB201 space at C=16, N=5 (the defaults) on the CPU:

- `warm-up`: one trial, one candidate per trial. The first call of an experiment loads the
  data and measures the aggregate's reference sample (cached in the store afterwards, for
  every experiment with the same scoring settings);
- `1 trial` and `10 trials`: GetSuggestions asking for 1 (maxTrialCount 1) and for 10
  (maxTrialCount 10) trials with `candidates-per-trial` candidates scored per trial — the
  random policy scores them all, then proposes its best;
- `next trial`: the call after the 10 trials were reported done (answered from the store:
  what every later call of an experiment costs).

    .tools/bin/katib-python host/benches/katib_latency.py --candidates-per-trial 200

Needs the venv `scripts/install-test-tools.sh` makes (.tools/bin/katib-python) and
`cargo build --release --bin knas` and `knas policy build --all --out-dir policies`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeflow.katib import katib_api_pb2 as api
from kubeflow.katib import katib_api_pb2_grpc as api_grpc

EDGES = ["edge-0-1", "edge-0-2", "edge-1-2", "edge-0-3", "edge-1-3", "edge-2-3"]
OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def experiment(name, per_trial, max_trials, extra):
    settings = {"policy": "random", "candidates-per-trial": str(per_trial), **extra}
    return api.Experiment(name=name, spec=api.ExperimentSpec(
        parameter_specs=api.ExperimentSpec.ParameterSpecs(parameters=[
            api.ParameterSpec(name=e, parameter_type=api.CATEGORICAL, feasible_space=api.FeasibleSpace(list=OPS)) for e in EDGES]),
        objective=api.ObjectiveSpec(type=api.MAXIMIZE, objective_metric_name="accuracy"),
        algorithm=api.AlgorithmSpec(algorithm_name="knas", algorithm_settings=[api.AlgorithmSetting(name=k, value=v) for k, v in settings.items()]),
        parallel_trial_count=max_trials, max_trial_count=max_trials))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--knas", default="target/release/knas")
    p.add_argument("--policy-dir", default="policies")
    p.add_argument("--candidates-per-trial", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="libtorch threads (0: one per core)")
    p.add_argument("--setting", action="append", default=[], help="extra algorithm setting NAME=VALUE (e.g. dataset=cifar10:DIR)")
    args = p.parse_args()
    extra = dict(s.split("=", 1) for s in args.setting)
    work = tempfile.mkdtemp(prefix="knas-katib-bench-")
    proc = subprocess.Popen([args.knas, "katib", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--device", "cpu",
                             "--threads", str(args.threads), "--policy-dir", args.policy_dir, "--store", os.path.join(work, "knas.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = json.loads(proc.stdout.readline())["grpc"]
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = api_grpc.SuggestionStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    results = {"candidates_per_trial": args.candidates_per_trial, "settings": extra, "cores": os.cpu_count()}

    def timed(label, exp, trials, n):
        start = time.perf_counter()
        reply = stub.GetSuggestions(api.GetSuggestionsRequest(experiment=exp, trials=trials, current_request_number=n), timeout=7200)
        seconds = time.perf_counter() - start
        assert len(reply.parameter_assignments) == n
        results[label] = round(seconds, 2)
        print(f"{label}: {seconds:.2f} s", file=sys.stderr)
        return reply

    try:
        timed("warm-up (data + reference sample)", experiment("warm", 1, 1, extra), [], 1)
        timed("1 trial", experiment("one", args.candidates_per_trial, 1, extra), [], 1)
        # Health checks during a long request answer at once (the scoring runs on its own thread).
        ten = experiment("ten", args.candidates_per_trial, 10, extra)
        start = time.perf_counter()
        future = stub.GetSuggestions.future(api.GetSuggestionsRequest(experiment=ten, current_request_number=10), timeout=7200)
        probes = []
        while not future.done():
            time.sleep(0.5)
            t = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(service="manager.v1beta1.Suggestion"), timeout=5)
            probes.append(time.perf_counter() - t)
        reply = future.result()
        results["10 trials"] = round(time.perf_counter() - start, 2)
        results["health check during scoring, slowest (s)"] = round(max(probes), 4) if probes else None
        results["health checks during scoring"] = len(probes)
        print(f"10 trials: {results['10 trials']:.2f} s", file=sys.stderr)
        trials = [api.Trial(name=f"t{i}", spec=api.TrialSpec(parameter_assignments=api.TrialSpec.ParameterAssignments(assignments=a.assignments)),
                            status=api.TrialStatus(condition=api.TrialStatus.SUCCEEDED, observation=api.Observation(
                                metrics=[api.Metric(name="accuracy", value=str(0.5 + i / 100))])))
                  for i, a in enumerate(reply.parameter_assignments)]
        timed("next trial", ten, trials, 1)
    finally:
        proc.terminate()
        proc.wait()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
