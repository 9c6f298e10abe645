// Simulated annealing in JavaScript, as a knas search policy.
//
// A walk over NB201 cells: each step scores a neighbour of the current cell (one edge, one
// op changed) and moves to it if it scores better, or, if worse, with probability
// exp(Δ / T); the temperature T falls geometrically from `t0` to `t1` over the score budget,
// and the walk restarts from a random cell after `patience` steps without a new best. When
// the score budget is spent, the `top_k` best-scored cells are trained.
//
// Built into a component with ComponentizeJS (npm `@bytecodealliance/jco` and
// `@bytecodealliance/componentize-js`) against the contract (sdk/wit/policy.wit):
//
//     jco componentize app.js --wit sdk/wit -n search-policy -o js-annealing.wasm
//
// or `knas policy build examples/js-annealing`. Parameters (all optional): t0 (0.5),
// t1 (0.01), patience (30), top_k (the run's training budget).

import { log, random } from "knas:policy/host@0.2.0";

// A number in [0, n) from the run's seeded generator (u64: a BigInt).
const below = (n) => Number(random() % BigInt(n));
// A number in [0, 1).
const uniform = () => Number(random() >> 11n) / 2 ** 53;

let state = null;

const key = (cell) => cell.join(",");

function fail(message) {
  // An `err` of the export's result<_, string>.
  throw { payload: message };
}

export const policy = {
  init(settings) {
    let params;
    try {
      params = JSON.parse(settings.params || "{}");
    } catch (error) {
      fail(`params are not JSON: ${error}`);
    }
    const known = ["t0", "t1", "patience", "top_k"];
    const unknown = Object.keys(params).filter((k) => !known.includes(k));
    if (unknown.length > 0) fail(`unknown parameters: ${unknown.join(", ")}`);
    // Numbers, not strings: "10" <= "2" compares as text.
    for (const key of ["t0", "t1"]) {
      if (key in params && !(typeof params[key] === "number" && Number.isFinite(params[key]))) {
        fail(`${key}: expected a number, got ${JSON.stringify(params[key])}`);
      }
    }
    const t0 = params.t0 ?? 0.5;
    const t1 = params.t1 ?? 0.01;
    if (!(t0 > 0 && t1 > 0 && t1 <= t0)) fail("need 0 < t1 <= t0");
    // Counts: whole numbers, 0 or more (a negative top_k would slice from the end).
    for (const key of ["patience", "top_k"]) {
      if (key in params && !(Number.isInteger(params[key]) && params[key] >= 0)) {
        fail(`${key}: expected a whole number, 0 or more, got ${JSON.stringify(params[key])}`);
      }
    }
    state = {
      ops: settings.space.ops.length,
      edges: settings.space.edges.length,
      maxBatch: Math.max(1, settings.maxBatch),
      budget: settings.budget.scores,
      t0,
      t1,
      patience: params.patience ?? 30,
      topK: params.top_k ?? settings.budget.trainings,
      scores: new Map(), // key -> { cell, score }
      trained: new Set(),
      current: null, // { cell, score }
      best: -Infinity,
      stale: 0,
      pending: null,
    };
    log("info", `simulated annealing: T ${t0} -> ${t1}, restart after ${state.patience} steps without a new best`);
  },

  observe(results) {
    for (const result of results) {
      const sets = result.candidate.ops;
      if (sets.length !== state.edges || sets.some((s) => s.length !== 1)) continue;
      const cell = sets.map((s) => s[0]);
      if (result.candidate.fidelity.tag === "train") {
        state.trained.add(key(cell));
        continue;
      }
      const score = result.score ?? -Infinity;
      state.scores.set(key(cell), { cell, score });
      if (state.pending !== null && key(state.pending) === key(cell)) step(cell, score);
    }
    state.pending = null;
  },

  propose(remaining) {
    if (remaining.scores > 0) {
      for (let tries = 0; tries < 1000; tries++) {
        const cell = state.current === null || state.stale >= state.patience ? randomCell() : neighbour(state.current.cell);
        if (state.current !== null && state.stale >= state.patience) {
          state.current = null;
          state.stale = 0;
        }
        if (!state.scores.has(key(cell))) {
          state.pending = cell;
          return { tag: "evaluate", val: [{ ops: cell.map((op) => [op]), fidelity: { tag: "score" } }] };
        }
        // Already scored: a step without a new best, so a walk boxed in by scored
        // neighbours restarts after `patience` of them.
        state.stale += 1;
        if (state.current === null) state.current = state.scores.get(key(cell));
      }
    }
    // Fine selection: the best-scored cells not trained yet.
    const best = [...state.scores.values()].filter((s) => Number.isFinite(s.score)).sort((a, b) => b.score - a.score).slice(0, state.topK);
    const todo = best.filter((s) => !state.trained.has(key(s.cell))).slice(0, Math.min(state.maxBatch, remaining.trainings));
    if (todo.length === 0) return { tag: "done" };
    return { tag: "evaluate", val: todo.map((s) => ({ ops: s.cell.map((op) => [op]), fidelity: { tag: "train", val: { epochs: undefined } } })) };
  },

  checkpoint() {
    return undefined; // the host replays the history into a fresh instance instead
  },

  restore(_state) {
    fail("this policy keeps no checkpoints");
  },
};

function randomCell() {
  return Array.from({ length: state.edges }, () => below(state.ops));
}

function neighbour(cell) {
  const edge = below(state.edges);
  const op = below(state.ops - 1);
  const next = [...cell];
  next[edge] = op < cell[edge] ? op : op + 1;
  return next;
}

// The annealing move: accept `cell` (scored `score`) as the current cell or not.
function step(cell, score) {
  if (score > state.best) {
    state.best = score;
    state.stale = 0;
  } else {
    state.stale += 1;
  }
  const done = state.scores.size / Math.max(1, state.budget);
  const temperature = state.t0 * Math.pow(state.t1 / state.t0, Math.min(1, done));
  const current = state.current;
  if (current === null || score >= current.score || uniform() < Math.exp((score - current.score) / temperature)) {
    state.current = { cell, score };
  }
}
