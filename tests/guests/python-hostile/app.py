"""A misbehaving Python policy for the tests: `params` says what it does in `propose`.

{"act": "spin"}                 loops forever
{"act": "allocate", "mib": N}   keeps N MiB alive
{"act": "raise", "message": M}  raises an uncaught ValueError(M)
{"act": "print", "lines": N}    prints N lines to stdout, then proposes normally
{"act": "open", "path": P}      opens P (there is no filesystem: it fails, uncaught)
{"act": "time"}                 proposes one candidate whose op on each edge is picked by
                                fresh readings of the clocks and random
{"act": "sleep", "seconds": S}  sleeps S seconds, then proposes op 4 on every edge if the
                                monotonic clock moved by S (op 0 if not)
"""

import json
import random
import time

from wit_world import exports
from wit_world.imports.types import Candidate, Fidelity_Score, Proposal_Done, Proposal_Evaluate

kept = []
# componentize-py calls each export on a fresh `Policy`: the state lives here.
state = {}


class Policy(exports.Policy):
    def init(self, settings) -> None:
        state["params"] = json.loads(settings.params or "{}")
        state["edges"] = len(settings.space.edges)
        state["done"] = False

    def observe(self, results) -> None:
        state["done"] = True

    def propose(self, remaining):
        self.params, self.edges, self.done = state["params"], state["edges"], state["done"]
        if self.done:
            return Proposal_Done()
        act = self.params.get("act")
        if act == "spin":
            n = 0
            while True:
                n += 1
        elif act == "allocate":
            kept.append(bytearray(self.params["mib"] << 20))
        elif act == "raise":
            raise ValueError(self.params["message"])
        elif act == "print":
            for i in range(self.params["lines"]):
                print(f"line {i}")
        elif act == "open":
            with open(self.params["path"]) as f:
                f.read()
        elif act == "sleep":
            before = time.monotonic()
            time.sleep(self.params["seconds"])
            op = 4 if time.monotonic() - before >= self.params["seconds"] else 0
            return Proposal_Evaluate([Candidate([[op]] * self.edges, Fidelity_Score())])
        elif act == "time":
            # Frozen wall clock, stepping monotonic clock, seeded random: the same every run.
            # One reading per edge, so that a real clock or an unseeded random would give
            # two runs the same candidate only once in 5^edges, not once in 5.
            ops = [[(int(time.time()) + time.monotonic_ns() + random.randrange(5)) % 5] for _ in range(self.edges)]
            return Proposal_Evaluate([Candidate(ops, Fidelity_Score())])
        return Proposal_Evaluate([Candidate([[3]] * self.edges, Fidelity_Score())])

    def checkpoint(self):
        return None

    def restore(self, state: bytes) -> None:
        pass
