//! Supernet pruning: the TE-NAS procedure (Chen et al., ICLR 2021, §3.3) with knas's
//! training-free measures, then a short local search and fine selection.
//!
//! Start from the supernet with every operation on every edge (an edge sums its ops). Each
//! round scores, for every op on every edge that still has a choice, the supernet without
//! that op. The removals are ranked against each other by `rank_by` — by default the
//! aggregate of the host's measures' ranks within the round, as TE-NAS sums the ranks of
//! its two measures — and on each edge the op whose removal ranks best (the least
//! important op) is pruned. When one op per edge is left, that architecture is scored.
//!
//! With `refine` (default on), the rest of the score budget climbs from there: score the
//! best architecture's untried neighbours (one edge changed), move to the best, repeat.
//! Finally the `top_k` best-scored architectures are trained, except that with `hedge`
//! (default on) the last place goes to the scored architecture with the smallest gradient
//! norm at initialisation (the host's `grad-norm`), when it is not a finalist already. The
//! aggregate predicts accuracy after long training and leads the search to deep chains of
//! convolutions; some of those start with exploding gradients and train slowly in a short
//! fine-selection training, while the tamest cell of the neighbourhood (on the demo task,
//! the ResNet-like one) trains well. One place of `top_k` buys that hedge: on the demo's
//! seed 0 it trains the winner (0.960 against 0.878), on NAS-Bench-201 it costs one of five
//! seeds a slightly worse pick (93.82 against 93.99), because the cells with the smallest
//! gradients there are shallow ones that train fast for one epoch. The pick by score alone
//! stays the best-scored architecture (`host/benches/demo_task.md` has the measurements).
//!
//! Parameters: `rank_by` (`aggregate`, `score` or a measure's name), `refine` (true),
//! `hedge` (true), `top_k` (the run's training budget; 0 trains none), `epochs` (the run's).
//! The procedure is deterministic given the results, so a fresh instance fed a run's
//! history retraces it and re-proposes nothing the run already scored.

use std::collections::HashMap;

use knas_policy_sdk::archive::{self, Archive, Ranking};
use knas_policy_sdk::nb201::{self, Arch, NUM_EDGES, Supernet};
use knas_policy_sdk::{Budget, Candidate, Evaluation, Fidelity, Policy, Proposal, Settings, info, warn};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Params {
    rank_by: Option<String>,
    refine: bool,
    hedge: bool,
    top_k: Option<u32>,
    epochs: Option<u32>,
}

impl Default for Params {
    fn default() -> Params {
        Params { rank_by: None, refine: true, hedge: true, top_k: None, epochs: None }
    }
}

/// The host's measure of the gradient's size at initialisation (Σ of the layers' ‖∂L/∂W‖).
const GRAD_NORM: &str = "grad-norm";

/// What was measured for a supernet.
struct Measured {
    score: Option<f64>,
    measures: std::collections::BTreeMap<String, Option<f64>>,
}

struct Pruning {
    ranking: Ranking,
    refine: bool,
    hedge: bool,
    top_k: usize,
    epochs: Option<u32>,
    max_batch: usize,
    /// The supernet being pruned.
    current: Supernet,
    round: usize,
    /// Every supernet measured in the run.
    supernets: HashMap<Supernet, Measured>,
    /// For each edge, its ops' removal keys from the latest round that measured every
    /// removal on it: how the edge is pruned once the budget runs out mid-pruning.
    last_full: [Vec<(nb201::Op, f64)>; NUM_EDGES],
    /// Every single architecture scored or trained in the run.
    archive: Archive,
}

impl Pruning {
    /// Removals this round needs: every op of every edge that still has a choice.
    fn removals(&self) -> Vec<(usize, nb201::Op, Supernet)> {
        let mut out = Vec::new();
        for (edge, set) in self.current.edges().iter().enumerate() {
            if set.len() > 1 {
                for op in set.ops() {
                    if let Ok(net) = self.current.without(edge, op) {
                        out.push((edge, op, net));
                    }
                }
            }
        }
        out
    }

    /// Prunes, on every edge with a choice, the op whose removal ranks best. On an edge
    /// whose removals were not all measured (the budget ran out), the edge's latest fully
    /// measured round decides among the ops left; on one never fully measured, unmeasured
    /// removals rank worst, so those ops are kept. On an edge none of whose removals was
    /// measured yet (a budget below the first round's 30), each op's removal counts as its
    /// mean over the edges where it was (see [`Self::prior`]).
    fn prune(&mut self) {
        let removals = self.removals();
        let keys = self.keys(&removals.iter().map(|r| &r.2).collect::<Vec<_>>());
        let measured: Vec<bool> = removals.iter().map(|r| self.supernets.contains_key(&r.2)).collect();
        let mut next = self.current;
        for edge in 0..NUM_EDGES {
            let mut on_edge: Vec<(nb201::Op, f64)> = Vec::new();
            let (mut complete, mut any) = (true, false);
            for (((e, op, _), key), m) in removals.iter().zip(&keys).zip(&measured) {
                if *e == edge {
                    complete &= *m;
                    any |= *m;
                    on_edge.push((*op, *key));
                }
            }
            if complete && !on_edge.is_empty() {
                self.last_full[edge].clone_from(&on_edge);
            } else if !self.last_full[edge].is_empty() {
                on_edge = self.last_full[edge].iter().copied().filter(|(op, _)| self.current.edges()[edge].contains(*op)).collect();
            } else if !any {
                on_edge = on_edge.iter().map(|(op, _)| (*op, self.prior(*op))).collect();
            }
            let best = on_edge.iter().max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0))).map(|(op, _)| *op);
            if let Some(op) = best {
                next = next.without(edge, op).unwrap_or(next);
            }
        }
        self.current = next;
        self.round += 1;
        info(&format!("pruning round {}: ops per edge {:?}", self.round, self.current.edges().iter().map(|s| s.len()).collect::<Vec<_>>()));
    }

    /// What removing `op` is worth where nothing says so for an edge: its mean key over
    /// the other edges' latest fully measured rounds (an op whose removal cost little there
    /// is pruned first), −∞ where it was never measured. Keys of different rounds are
    /// mixed: a rough guide, for a budget too small for anything better.
    fn prior(&self, op: nb201::Op) -> f64 {
        let seen: Vec<f64> = self.last_full.iter().flatten().filter(|(o, _)| *o == op).map(|(_, key)| *key).collect();
        if seen.is_empty() { f64::NEG_INFINITY } else { seen.iter().sum::<f64>() / seen.len() as f64 }
    }

    /// The ranking's key of each supernet, ranks taken among `nets`.
    fn keys(&self, nets: &[&Supernet]) -> Vec<f64> {
        let missing = f64::NEG_INFINITY;
        let measured: Vec<Option<&Measured>> = nets.iter().map(|n| self.supernets.get(*n)).collect();
        match &self.ranking {
            Ranking::Score => measured.iter().map(|m| m.and_then(|m| m.score).unwrap_or(missing)).collect(),
            Ranking::Measure(name) => {
                measured.iter().map(|m| m.and_then(|m| m.measures.get(name).copied().flatten()).unwrap_or(missing)).collect()
            }
            Ranking::Aggregate(weights) => {
                let empty = std::collections::BTreeMap::new();
                let rows: Vec<&std::collections::BTreeMap<String, Option<f64>>> =
                    measured.iter().map(|m| m.map_or(&empty, |m| &m.measures)).collect();
                archive::aggregate(&rows, weights)
            }
        }
    }

    /// The architectures fine selection trains: the `top_k` best-scored, the last place
    /// given to the one with the smallest gradient norm when `hedge` is on (and `top_k` is
    /// at least 2, so that the best-scored is always trained).
    fn finalists(&self) -> Vec<Arch> {
        let mut finalists = self.archive.finalists(self.top_k, &Ranking::Score);
        if self.hedge && self.top_k >= 2 {
            let tame = self.archive.least(GRAD_NORM, |e| e.score.is_some_and(f64::is_finite));
            if let Some(tame) = tame.filter(|t| !finalists.contains(t)) {
                finalists.truncate(self.top_k - 1);
                finalists.push(tame);
            }
        }
        finalists
    }

    /// The next architectures of the local search: the untried neighbours of the best
    /// scored architecture that still has some, else of the `pruned` one (whose own score
    /// may have failed: its neighbours are then the search's only lead).
    fn climb(&self, room: usize, pruned: Arch) -> Vec<Arch> {
        let ranked = self.archive.top(self.archive.scored(), &Ranking::Score, |_| true);
        for arch in ranked.into_iter().chain([pruned]) {
            let fresh: Vec<Arch> = arch.neighbours().filter(|n| !self.archive.is_scored(n)).take(room).collect();
            if !fresh.is_empty() {
                return fresh;
            }
        }
        Vec::new()
    }
}

impl Policy for Pruning {
    fn new(settings: Settings) -> Result<Self, String> {
        nb201::check_space(&settings.space)?;
        let p: Params = settings.parse_params()?;
        let default = if settings.weights().is_empty() { "score" } else { "aggregate" };
        let ranking = Ranking::named(Some(p.rank_by.as_deref().unwrap_or(default)), &settings).map_err(|e| format!("rank_by: {e}"))?;
        Ok(Pruning {
            ranking,
            refine: p.refine,
            hedge: p.hedge,
            top_k: p.top_k.unwrap_or(settings.budget.trainings) as usize,
            epochs: settings.check_epochs(p.epochs)?,
            max_batch: settings.max_batch.max(1) as usize,
            current: Supernet::full(),
            round: 0,
            supernets: HashMap::new(),
            last_full: Default::default(),
            archive: Archive::new(),
        })
    }

    fn observe(&mut self, results: Vec<Evaluation>) -> Result<(), String> {
        for result in &results {
            if result.candidate.fidelity == Fidelity::Score
                && result.candidate.arch().is_none()
                && let Some(net) = result.candidate.supernet()
            {
                let measures = result.measures.iter().map(|m| (m.name.clone(), m.value)).collect();
                self.supernets.insert(net, Measured { score: result.score, measures });
            }
        }
        self.archive.record(&results);
        Ok(())
    }

    fn propose(&mut self, remaining: Budget) -> Result<Proposal, String> {
        let room = (remaining.scores as usize).min(self.max_batch);
        loop {
            let Ok(arch) = self.current.to_arch() else {
                let missing: Vec<Candidate> = self
                    .removals()
                    .into_iter()
                    .filter(|(_, _, net)| !self.supernets.contains_key(net))
                    .map(|(_, _, net)| Candidate::score(net))
                    .collect();
                if missing.is_empty() {
                    // Everything this round needs is known (also when replaying history).
                    self.prune();
                    continue;
                }
                if room == 0 {
                    warn("score budget spent before pruning finished: pruning on what was measured");
                    self.prune();
                    continue;
                }
                return Ok(Proposal::Evaluate(missing.into_iter().take(room).collect()));
            };
            // Trains the pruned architecture as it is: the procedure's answer, when no
            // score can rank it against others.
            let train_pruned = || {
                let trained = self.archive.get(&arch).is_some_and(|e| e.trained);
                if remaining.trainings > 0 && self.top_k > 0 && !trained {
                    Proposal::Evaluate(vec![Candidate::train(arch, self.epochs)])
                } else {
                    Proposal::Done
                }
            };
            if !self.archive.is_scored(&arch) {
                if room > 0 {
                    return Ok(Proposal::Evaluate(vec![Candidate::score(arch)]));
                }
                // No score left to spend on it.
                return Ok(train_pruned());
            }
            if room > 0 && self.refine {
                let next = self.climb(room, arch);
                if !next.is_empty() {
                    return Ok(Proposal::Evaluate(next.into_iter().map(Candidate::score).collect()));
                }
            }
            // Every single architecture's score failed (a network that could not be built
            // or measured): no ranking to pick finalists by.
            if self.archive.top(1, &Ranking::Score, |_| true).is_empty() {
                return Ok(train_pruned());
            }
            return Ok(self.archive.train(&self.finalists(), &remaining, self.max_batch, self.epochs));
        }
    }
}

knas_policy_sdk::register_policy!(Pruning);

#[cfg(test)]
mod tests {
    use knas_policy_sdk::nb201::Op;
    use knas_policy_sdk::testing::{Finish, Host, Resume, failed, scored, trained};
    use knas_policy_sdk::{Budget, Level};

    use super::*;

    /// An additive landscape: op `o` on edge `e` is worth `worth(e, o)` (distinct values),
    /// a cell is worth the sum over its edges of the ops it holds, and every measure of the
    /// aggregate reads that sum. Removing the least valuable op of an edge costs least.
    fn worth(edge: usize, op: Op) -> f64 {
        ((edge * 7 + op.index() * 3) % 11) as f64 + edge as f64 / 100.0
    }

    fn additive(candidate: &Candidate) -> Evaluation {
        let Some(cell) = candidate.supernet() else { return scored(candidate, f64::NAN, &[]) };
        let value: f64 = cell.edges().iter().enumerate().map(|(e, set)| set.ops().map(|op| worth(e, op)).sum::<f64>()).sum();
        if candidate.fidelity.is_train() {
            return trained(candidate, value / 100.0);
        }
        let names = ["synflow", "meco", "expressivity", "progressivity", "trainability", "params"];
        scored(candidate, value, &names.map(|n| (n, value)))
    }

    fn optimum() -> Arch {
        let mut ops = [Op::None; NUM_EDGES];
        for (e, op) in ops.iter_mut().enumerate() {
            *op = Op::ALL.into_iter().max_by(|a, b| worth(e, *a).total_cmp(&worth(e, *b))).unwrap();
        }
        Arch::new(ops)
    }

    #[test]
    fn prunes_an_additive_supernet_down_to_its_optimum() {
        let run = Host::nb201(100, 3).run::<Pruning>(additive).unwrap();
        assert_eq!(run.finish, Some(Finish::BudgetSpent));
        assert_eq!(run.spent(), Budget { scores: 100, trainings: 3 });
        assert_eq!(run.idle_proposals, 0);
        // Four rounds remove one op per edge each: 6·5 + 6·4 + 6·3 + 6·2 supernets.
        let supernets = run.scores().filter(|e| e.candidate.arch().is_none()).count();
        assert_eq!(supernets, 84);
        let first_arch = run.scores().find_map(|e| e.candidate.arch());
        assert_eq!(first_arch, Some(optimum()), "the pruned architecture comes first");
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Some(optimum()));
        assert_eq!(run.logged(Level::Info).len(), 4, "one line per round: {:?}", run.logs);
        // The local search spends the rest on the optimum's neighbours.
        let neighbours: Vec<Arch> = optimum().neighbours().collect();
        assert!(run.scores().filter_map(|e| e.candidate.arch()).skip(1).all(|a| neighbours.contains(&a)));
    }

    #[test]
    fn a_budget_too_small_to_finish_prunes_on_what_was_measured() {
        let run = Host::nb201(40, 1).run::<Pruning>(additive).unwrap();
        assert_eq!(run.spent(), Budget { scores: 40, trainings: 1 });
        assert_eq!(
            run.logged(Level::Warn),
            ["score budget spent before pruning finished: pruning on what was measured"; 3],
            "rounds 2, 3 and 4 prune on what was measured"
        );
        // Edges not measured in full in the later rounds are pruned as their last full
        // round ranked them: on this landscape, down to the optimum all the same.
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Some(optimum()), "the pruned architecture is still trained");
        // Below the first round's 30 removals, the edges never measured follow the ops'
        // removals on those that were: on a landscape where every edge values its ops in
        // the same order, that is the optimum, not the op listed last on those edges.
        let same_everywhere = |c: &Candidate| {
            let worth = |op: Op| [0.0, 2.0, 3.0, 5.0, 1.0][op.index()];
            let Some(cell) = c.supernet() else { return scored(c, f64::NAN, &[]) };
            let value: f64 = cell.edges().iter().map(|set| set.ops().map(worth).sum::<f64>()).sum();
            if c.fidelity.is_train() { trained(c, value / 100.0) } else { scored(c, value, &[("synflow", value), ("params", value)]) }
        };
        let run = Host::nb201(12, 1).run::<Pruning>(same_everywhere).unwrap();
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Some(Arch::new([Op::Conv3x3; NUM_EDGES])));
        // Asked to train none, it trains none.
        let run = Host::nb201(40, 1).params(r#"{"top_k": 0}"#).run::<Pruning>(additive).unwrap();
        assert_eq!(run.spent(), Budget { scores: 40, trainings: 0 });
    }

    #[test]
    fn a_failed_score_of_the_pruned_architecture_does_not_end_the_search() {
        let pruned = optimum();
        let failing = |with_neighbours: bool| {
            move |c: &Candidate| {
                let fails = c.arch().is_some_and(|a| a == pruned || (with_neighbours && a.neighbours().any(|n| n == pruned)));
                if fails && !c.fidelity.is_train() { failed(c, "out of memory") } else { additive(c) }
            }
        };
        // The local search climbs from its neighbours, and the best of them are trained.
        let run = Host::nb201(100, 3).run::<Pruning>(failing(false)).unwrap();
        assert_eq!(run.spent(), Budget { scores: 100, trainings: 3 }, "{:?}", run.finish);
        assert!(run.scores().filter_map(|e| e.candidate.arch()).skip(1).take(15).all(|a| a.neighbours().any(|n| n == pruned)));
        // With every single architecture's score failed, the pruned one is trained as it is.
        let run = Host::nb201(85, 3).params(r#"{"refine": false}"#).run::<Pruning>(failing(false)).unwrap();
        assert_eq!(run.spent(), Budget { scores: 85, trainings: 1 });
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Some(pruned));
        let run = Host::nb201(100, 3).run::<Pruning>(failing(true)).unwrap();
        assert_eq!(run.winner().and_then(|w| w.candidate.arch()), Some(pruned));
    }

    #[test]
    fn the_finalists_keep_the_cell_with_the_smallest_gradient() {
        let trained = |run: &knas_policy_sdk::testing::Run<Pruning>| run.trainings().filter_map(|e| e.candidate.arch()).collect::<Vec<_>>();
        let plain = Host::nb201(100, 3).run::<Pruning>(additive).unwrap();
        let by_score = trained(&plain);
        assert_eq!(by_score.len(), 3, "without a gradient norm, the three best-scored");
        // The worst-scored single architecture of the run gets the smallest gradient.
        let worst = plain.scores().filter(|e| e.candidate.arch().is_some()).min_by(|a, b| a.score.unwrap().total_cmp(&b.score.unwrap()));
        let tame = worst.and_then(|e| e.candidate.arch()).unwrap();
        assert!(!by_score.contains(&tame));
        let with_gradients = move |c: &Candidate| {
            let mut e = additive(c);
            if !c.fidelity.is_train() {
                let norm = if c.arch() == Some(tame) { 1.0 } else { 100.0 };
                e.measures.push(knas_policy_sdk::MeasureValue { name: GRAD_NORM.into(), value: Some(norm) });
            }
            e
        };
        // Scoring is unchanged; the last place goes to the tame cell, trained last.
        let hedged = Host::nb201(100, 3).run::<Pruning>(with_gradients).unwrap();
        assert_eq!(hedged.scores().count(), plain.scores().count());
        assert_eq!(trained(&hedged), [by_score[0], by_score[1], tame]);
        // The choice depends on the results alone: a run taken over in fine selection
        // trains the same.
        let host = Host::nb201(100, 3).max_batch(1);
        let whole = host.run::<Pruning>(with_gradients).unwrap();
        for how in [Resume::Retrace, Resume::Replay] {
            let stopped = host.run_until::<Pruning>(whole.scores().count() + 1, with_gradients).unwrap();
            assert_eq!(host.resume(stopped, how, with_gradients).unwrap().evaluations, whole.evaluations, "{how:?}");
        }
        // Off, or with one training (the best-scored is always trained), no hedge.
        let off = Host::nb201(100, 3).params(r#"{"hedge": false}"#).run::<Pruning>(with_gradients).unwrap();
        assert_eq!(trained(&off), by_score);
        let one = Host::nb201(100, 1).run::<Pruning>(with_gradients).unwrap();
        assert_eq!(trained(&one), [by_score[0]]);
        // A tame cell already among the finalists changes nothing.
        let second = by_score[1];
        let among = move |c: &Candidate| {
            let mut e = additive(c);
            if !c.fidelity.is_train() {
                let norm = if c.arch() == Some(second) { 1.0 } else { 100.0 };
                e.measures.push(knas_policy_sdk::MeasureValue { name: GRAD_NORM.into(), value: Some(norm) });
            }
            e
        };
        assert_eq!(trained(&Host::nb201(100, 3).run::<Pruning>(among).unwrap()), by_score);
    }

    #[test]
    fn a_stopped_run_resumes_as_if_never_stopped() {
        let host = Host::nb201(100, 3).max_batch(8);
        let whole = host.run::<Pruning>(additive).unwrap();
        // Stopped in the middle of a round (by a restart or a hot swap, which replays the
        // history: the procedure is deterministic given the results).
        for (stop, how) in [(20, Resume::Retrace), (61, Resume::Retrace), (20, Resume::Replay), (90, Resume::Replay)] {
            let stopped = host.run_until::<Pruning>(stop, additive).unwrap();
            let resumed = host.resume(stopped, how, additive).unwrap();
            assert_eq!(resumed.evaluations, whole.evaluations, "stopped after {stop}, {how:?}");
        }
    }

    #[test]
    fn bad_params_are_named() {
        let err = Host::nb201(10, 1).params(r#"{"rank_by": "accuracy"}"#).run::<Pruning>(additive).err().unwrap();
        assert!(err.contains("rank_by: unknown ranking \"accuracy\""), "{err}");
        let err = Host::nb201(10, 1).params(r#"{"refine": "yes"}"#).run::<Pruning>(additive).err().unwrap();
        assert!(err.contains("refine: invalid type"), "{err}");
        // Refused at once, not after the scores are spent.
        let err = Host::nb201(10, 1).params(r#"{"epochs": 11}"#).run::<Pruning>(additive).err().unwrap();
        assert!(err.starts_with("init: ") && err.contains("epochs: 11 is outside 1..=10"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(knas_policy_sdk::testing::fuzz_config())]

        /// Any budget, batch size, seed and parameters, on answers with missing values and
        /// failures: see `Host::run_noisy`.
        #[test]
        fn fuzz_any_run_keeps_the_hosts_rules(
            scores in 0u32..250, trainings in 0u32..6, max_batch in 1u32..20, seed: u64, refine: bool, top_k in 0u32..8
        ) {
            let host = Host::nb201(scores, trainings).max_batch(max_batch).seed(seed).params(&format!(r#"{{"refine": {refine}, "top_k": {top_k}}}"#));
            let run = host.run_noisy::<Pruning>();
            proptest::prop_assert!(run.is_ok(), "{}", run.err().unwrap_or_default());
        }
    }
}
