"""Regularised (aging) evolution in Python, as a knas search policy.

Real et al., "Regularized Evolution for Image Classifier Architecture Search" (AAAI 2019):
keep a population of the most recent `population` scored architectures; each step samples
`sample` of them, mutates the best (one edge, one op) and scores the child; the oldest
member leaves. When the score budget is spent, the `top_k` best-scored architectures are
trained and the run ends.

Built into a component with componentize-py against the contract (sdk/wit/policy.wit):

    componentize-py -d sdk/wit -w search-policy componentize app -p examples/python-evolution -o python-evolution.wasm

Parameters (the run's `params`, all optional): population (default 20), sample (5),
top_k (default: the run's training budget).
"""

import json
from collections import deque

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Budget, Candidate, Evaluation, Fidelity_Score, Fidelity_Train, Level, Proposal, Proposal_Done,
    Proposal_Evaluate, Settings, Training,
)


def rand_below(n):
    """A number in [0, n) from the run's seeded generator (reproducible from the seed)."""
    return host.random() % n


def count(params, key, default):
    """A whole-number parameter, 0 or more; anything else is refused naming the key
    (a negative top_k would slice from the end)."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Err(f"{key}: expected a whole number, 0 or more, got {json.dumps(value)}")
    return value


class Evolution:
    """The search's state. componentize-py calls each export on a fresh `Policy`, so the
    state lives in the module (`STATE`), not in the `Policy` object."""

    def __init__(self, settings: Settings) -> None:
        try:
            params = json.loads(settings.params or "{}")
        except ValueError as error:
            raise Err(f"params are not JSON: {error}")
        unknown = set(params) - {"population", "sample", "top_k"}
        if unknown:
            raise Err(f"unknown parameters: {', '.join(sorted(unknown))}")
        self.ops = len(settings.space.ops)
        self.edges = len(settings.space.edges)
        self.population_size = count(params, "population", 20)
        self.sample = count(params, "sample", 5)
        if self.population_size < 2 or not 1 <= self.sample <= self.population_size:
            raise Err("need population >= 2 and 1 <= sample <= population")
        self.top_k = count(params, "top_k", settings.budget.trainings)
        self.max_batch = max(1, settings.max_batch)
        self.population = deque()  # (arch, score), oldest first
        self.scores = {}  # arch -> score (None: not finite)
        self.trained = set()
        self.pending = []
        host.log(Level.INFO, f"regularised evolution: population {self.population_size}, sample {self.sample}, top {self.top_k}")

    def observe(self, results) -> None:
        for result in results:
            arch = tuple(ops[0] for ops in result.candidate.ops)
            if len(arch) != self.edges or any(len(ops) != 1 for ops in result.candidate.ops):
                continue  # a supernet another policy asked for: nothing to learn here
            if isinstance(result.candidate.fidelity, Fidelity_Train):
                self.trained.add(arch)
                continue
            self.scores[arch] = result.score
            if result.score is not None:
                self.population.append((arch, result.score))
                while len(self.population) > self.population_size:
                    self.population.popleft()
        self.pending = []

    def random_arch(self):
        return tuple(rand_below(self.ops) for _ in range(self.edges))

    def mutate(self, arch):
        edge = rand_below(self.edges)
        op = rand_below(self.ops - 1)
        child = list(arch)
        child[edge] = op if op < arch[edge] else op + 1  # a different op on that edge
        return tuple(child)

    def child(self):
        if len(self.population) < self.population_size:
            return self.random_arch()
        members = [self.population[rand_below(len(self.population))] for _ in range(self.sample)]
        parent = max(members, key=lambda member: member[1])[0]
        return self.mutate(parent)

    def propose(self, remaining: Budget) -> Proposal:
        if remaining.scores > 0:
            wanted = min(remaining.scores, self.max_batch)
            for _ in range(wanted * 100):
                if len(self.pending) >= wanted:
                    break
                arch = self.child()
                if arch not in self.scores and arch not in self.pending:
                    self.pending.append(arch)
            if self.pending:
                return Proposal_Evaluate([Candidate([[op] for op in arch], Fidelity_Score()) for arch in self.pending])
        # Fine selection: train the best-scored that are not trained yet.
        ranked = sorted((s, a) for a, s in self.scores.items() if s is not None)
        best = [a for _, a in reversed(ranked)][: self.top_k]
        todo = [a for a in best if a not in self.trained][: min(self.max_batch, remaining.trainings)]
        if not todo:
            return Proposal_Done()
        return Proposal_Evaluate([Candidate([[op] for op in arch], Fidelity_Train(Training(None))) for arch in todo])


STATE = None


class Policy(exports.Policy):
    def init(self, settings: Settings) -> None:
        global STATE
        STATE = Evolution(settings)

    def observe(self, results) -> None:
        STATE.observe(results)

    def propose(self, remaining: Budget) -> Proposal:
        return STATE.propose(remaining)

    def checkpoint(self):
        return None  # the host replays the history into a fresh instance instead

    def restore(self, state: bytes) -> None:
        raise Err("this policy keeps no checkpoints")
