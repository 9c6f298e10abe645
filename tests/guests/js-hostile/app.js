// A misbehaving JavaScript policy for the tests: `params` says what it does in `propose`.
//
// {"act": "spin"}                 loops forever
// {"act": "allocate", "mib": N}   keeps N MiB alive
// {"act": "throw", "message": M}  throws an Error(M) it does not catch
// {"act": "print", "lines": N}    console.log()s N lines, then proposes normally
// {"act": "time"}                 proposes one candidate whose op on each edge is picked by fresh
//                                 readings of Date, performance and Math.random

const kept = [];
let state = null;

export const policy = {
  init(settings) {
    state = { params: JSON.parse(settings.params || "{}"), edges: settings.space.edges.length, done: false };
  },
  observe(_results) {
    state.done = true;
  },
  propose(_remaining) {
    if (state.done) return { tag: "done" };
    const { act } = state.params;
    let op = () => 3;
    if (act === "spin") {
      for (;;) {}
    } else if (act === "allocate") {
      const buffer = new Uint8Array(state.params.mib << 20);
      buffer.fill(1);
      kept.push(buffer);
    } else if (act === "throw") {
      throw new Error(state.params.message);
    } else if (act === "print") {
      for (let i = 0; i < state.params.lines; i++) console.log(`line ${i}`);
    } else if (act === "time") {
      // One reading per edge, so that a real clock or an unseeded random would give two
      // runs the same candidate only once in 5^edges, not once in 5.
      op = () => (Math.floor(Date.now() / 1000) + Math.floor(performance.now()) + Math.floor(Math.random() * 5)) % 5;
    }
    return { tag: "evaluate", val: [{ ops: Array.from({ length: state.edges }, () => [op()]), fidelity: { tag: "score" } }] };
  },
  checkpoint() {
    return undefined;
  },
  restore(_state) {},
};
