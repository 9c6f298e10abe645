"""A whole Katib experiment against `knas katib`, driven with Katib's own Python stubs.

Plays Katib's part: validates good and bad algorithm settings, asks for trials round by
round with the growing trial list Katib would send, trains each suggested trial with the
real `knas train --format katib` (tiny networks) and reports its metric as Katib's StdOut
collector would read it, fails one trial, restarts the service mid-experiment (keeping
its store, then again with an empty one) and checks it answers as before, throws bad
input at it, and prints a JSON summary with the final leaderboard.

Usage: simulate.py KNAS_BINARY POLICY_DIR WORK_DIR
(run by tests/integration/katib.rs with the venv scripts/install-test-tools.sh makes).
"""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kubeflow.katib import katib_api_pb2 as api
from kubeflow.katib import katib_api_pb2_grpc as api_grpc

KNAS, POLICY_DIR, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
TINY = ["--channels", "2", "--cells", "1", "--threads", "1", "--device", "cpu"]
EDGES = ["edge-0-1", "edge-0-2", "edge-1-2", "edge-0-3", "edge-1-3", "edge-2-3"]
OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]


def check(condition, message):
    if not condition:
        raise SystemExit(f"FAILED: {message}")


class Service:
    """One `knas katib` process on free ports."""

    def __init__(self, store):
        self.log = open(os.path.join(WORK, "katib.log"), "a")
        self.proc = subprocess.Popen(
            [KNAS, "katib", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--policy-dir", POLICY_DIR, "--store", store, "--device", "cpu", "--threads", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "KNAS_LOG": "info"})
        line = self.proc.stderr.readline()
        found = re.search(r"suggestion service on (\S+) \(gRPC\), metrics on http://(\S+)/metrics", line)
        if not found:
            # Not left running: it holds this script's stdout, and whoever waits for it.
            self.proc.kill()
            check(False, f"no address in {line!r}")
        self.address, self.metrics = found.group(1), found.group(2)
        # Keep draining stderr into the log so the service never blocks on it.
        self.drain = concurrent.futures.ThreadPoolExecutor(1)
        self.drain.submit(lambda: [self.log.write(l) for l in self.proc.stderr])
        self.channel = grpc.insecure_channel(self.address)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = api_grpc.SuggestionStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def stop(self):
        self.channel.close()
        self.proc.terminate()
        check(self.proc.wait(timeout=30) == 0, "the service did not stop cleanly on SIGTERM")
        self.drain.shutdown()
        self.log.close()


def experiment(name="nb201-tiny", settings=None, parameters=None, max_trials=6):
    settings = settings if settings is not None else {
        "policy": "random", "candidates-per-trial": "3", "seed": "3",
        "channels": "2", "cells": "1", "batch-size": "4", "score": "synflow",
    }
    parameters = parameters if parameters is not None else {edge: OPS for edge in EDGES}
    return api.Experiment(name=name, spec=api.ExperimentSpec(
        parameter_specs=api.ExperimentSpec.ParameterSpecs(parameters=[
            api.ParameterSpec(name=n, parameter_type=api.CATEGORICAL, feasible_space=api.FeasibleSpace(list=ops))
            for n, ops in parameters.items()]),
        objective=api.ObjectiveSpec(type=api.MAXIMIZE, objective_metric_name="accuracy"),
        algorithm=api.AlgorithmSpec(algorithm_name="knas", algorithm_settings=[
            api.AlgorithmSetting(name=k, value=v) for k, v in settings.items()]),
        parallel_trial_count=2, max_trial_count=max_trials))


def expect_error(call, code, fragment, what):
    try:
        call()
    except grpc.RpcError as error:
        check(error.code() == code, f"{what}: {error.code()} ({error.details()}), expected {code}")
        check(fragment in error.details(), f"{what}: {error.details()!r} does not say {fragment!r}")
        return error.details()
    raise SystemExit(f"FAILED: {what} was accepted")


def nb201(assignments):
    ops = {a.name: a.value for a in assignments}
    o = [ops[e] for e in EDGES]
    return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"


def train(arch):
    """What the trial's container does: `knas train` with Katib's StdOut metrics format."""
    out = subprocess.run([KNAS, "train", arch, "--format", "katib", "--limit", "200", "--epochs", "1"] + TINY,
                         capture_output=True, text=True, check=True).stdout
    metrics = dict(re.findall(r"([\w|-]+)\s*=\s*([+-]?\d*(?:\.\d+)?(?:[Ee][+-]?\d+)?)", out))
    check("accuracy" in metrics, f"no accuracy line in {out!r}")
    return metrics


def main():
    store = os.path.join(WORK, "knas.db")
    service = Service(store)
    summary = {"rounds": [], "bad_input": {}}

    # Health: the empty name and the suggestion service's names.
    for name in ["", "manager.v1beta1.Suggestion"]:
        status = service.health.Check(health_pb2.HealthCheckRequest(service=name)).status
        check(status == health_pb2.HealthCheckResponse.SERVING, f"health of {name!r}: {status}")

    # Validation: good settings pass, each bad one is named.
    service.stub.ValidateAlgorithmSettings(api.ValidateAlgorithmSettingsRequest(experiment=experiment()))
    bad = {
        "unknown setting": (experiment(settings={"population": "3"}), "population"),
        "bad JSON params": (experiment(settings={"params": "{oops"}), "params"),
        "missing policy": (experiment(settings={"policy": "nope"}), "nope.wasm"),
        "unknown op": (experiment(parameters={**{e: OPS for e in EDGES}, "edge-1-2": ["conv9x9"]}), "edge-1-2"),
        "missing edge": (experiment(parameters={e: OPS for e in EDGES[:5]}), "edge-2-3"),
        "no max trials": (experiment(max_trials=0), "maxTrialCount"),
    }
    for what, (exp, fragment) in bad.items():
        summary["bad_input"][what] = expect_error(
            lambda: service.stub.ValidateAlgorithmSettings(api.ValidateAlgorithmSettingsRequest(experiment=exp)),
            grpc.StatusCode.INVALID_ARGUMENT, fragment, what)
    non_categorical = experiment()
    non_categorical.spec.parameter_specs.parameters[0].parameter_type = api.DOUBLE
    summary["bad_input"]["non-categorical"] = expect_error(
        lambda: service.stub.ValidateAlgorithmSettings(api.ValidateAlgorithmSettingsRequest(experiment=non_categorical)),
        grpc.StatusCode.INVALID_ARGUMENT, "edge-0-1", "non-categorical")

    # The experiment: rounds of 2 trials, as parallelTrialCount 2 asks.
    exp = experiment()
    trials = []
    seen = set()
    replies = []

    def ask(n):
        request = api.GetSuggestionsRequest(experiment=exp, trials=trials, current_request_number=n, total_request_number=len(trials) + n)
        reply = service.stub.GetSuggestions(request, timeout=600)
        check(len(reply.parameter_assignments) == n, f"asked {n}, got {len(reply.parameter_assignments)}")
        replies.append((request, reply))
        return reply

    for round_number in range(3):
        if round_number == 2:
            # Restart mid-experiment (the store stays, as on Katib's suggestion volume):
            # the last request gets the same answer again.
            request, before = replies[-1]
            service.stop()
            service = Service(store)
            again = service.stub.GetSuggestions(request, timeout=600)
            check(again == before, "after a restart the service answered the same request differently")
            summary["restart_same_answer"] = True
        reply = ask(2)
        names = []
        for i, assignment in enumerate(reply.parameter_assignments):
            arch = nb201(assignment.assignments)
            check(arch not in seen, f"{arch} suggested twice")
            seen.add(arch)
            labels = dict(assignment.labels)
            check(re.fullmatch(r"\d+", labels.get("knas.io/nb201-index", "")), f"labels {labels}")
            name = f"trial-{len(trials)}"
            names.append(name)
            if round_number == 1 and i == 1:
                # A trial that fails: Katib reports it FAILED, knas tells the policy.
                status = api.TrialStatus(condition=api.TrialStatus.FAILED)
            else:
                metrics = train(arch)
                status = api.TrialStatus(condition=api.TrialStatus.SUCCEEDED, observation=api.Observation(
                    metrics=[api.Metric(name=k, value=v) for k, v in metrics.items()]))
            trials.append(api.Trial(name=name, spec=api.TrialSpec(
                objective=exp.spec.objective,
                parameter_assignments=api.TrialSpec.ParameterAssignments(assignments=assignment.assignments)), status=status))
        summary["rounds"].append([nb201(a.assignments) for a in reply.parameter_assignments])

    # Bad input on a live experiment: nothing recorded may be lost.
    def recorded():
        out = subprocess.run([KNAS, "runs", "katib-nb201-tiny", "--store", store, "--format", "json"],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)
    before = recorded()
    broken = api.Trial(name="broken", spec=api.TrialSpec(parameter_assignments=api.TrialSpec.ParameterAssignments(
        assignments=[api.ParameterAssignment(name=e, value="conv9x9" if e == "edge-0-3" else "none") for e in EDGES])))
    summary["bad_input"]["trial with unknown op"] = expect_error(
        lambda: service.stub.GetSuggestions(api.GetSuggestionsRequest(experiment=exp, trials=trials + [broken], current_request_number=1)),
        grpc.StatusCode.INVALID_ARGUMENT, "edge-0-3", "trial with unknown op")
    for n in [0, 100000]:
        summary["bad_input"][f"{n} trials"] = expect_error(
            lambda: service.stub.GetSuggestions(api.GetSuggestionsRequest(experiment=exp, trials=trials, current_request_number=n)),
            grpc.StatusCode.INVALID_ARGUMENT, "currentRequestNumber", f"{n} trials")
    whole = api.GetSuggestionsRequest(experiment=exp, trials=trials, current_request_number=1).SerializeToString()
    raw = service.channel.unary_unary("/api.v1.beta1.Suggestion/GetSuggestions",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        raw(whole[: len(whole) // 2 + 3])
        raise SystemExit("FAILED: a truncated message was accepted")
    except grpc.RpcError as error:
        check(error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), f"truncated: {error.code()}")
        summary["bad_input"]["truncated message"] = f"{error.code().name}: {error.details()}"
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        checks = [service.health.Check.future(health_pb2.HealthCheckRequest(service="manager.v1beta1.Suggestion"), timeout=30)
                  for _ in range(1000)]
        statuses = [f.result().status for f in checks]
    check(all(s == health_pb2.HealthCheckResponse.SERVING for s in statuses), "a concurrent health check failed")
    summary["bad_input"]["1000 concurrent health checks"] = "all SERVING"
    after = recorded()
    check(after["recorded"] == before["recorded"] and after["leaderboard"] == before["leaderboard"], "bad input changed what was recorded")

    # A restart with an empty store (no suggestion volume): recomputed, the same answer.
    request, expected = replies[-1]
    service.stop()
    fresh = Service(os.path.join(WORK, "fresh.db"))
    check(fresh.stub.GetSuggestions(request, timeout=600) == expected, "recomputation from scratch answered differently")
    summary["recomputed_same_answer"] = True
    metrics = __import__("urllib.request").request.urlopen(f"http://{fresh.metrics}/metrics").read().decode()
    check("knas_katib_trials_proposed_total" in metrics and "knas_katib_requests_total" in metrics, "katib metrics missing")
    fresh.stop()

    board = after["leaderboard"]
    summary["trained"] = len(board["trained"])
    summary["recorded"] = after["recorded"]
    summary["failed_trials"] = after["recorded"]["trainings"] - len(board["trained"])
    summary["winner"] = board["winner"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
