//! The run as a policy sees it, and the rank tools a strategy needs: every architecture
//! evaluated with what the host measured, ranked by the host's score, by one measure, or
//! by an aggregate of measures' ranks computed over the archive itself (AZ-NAS's Σ
//! w·ln(rank/N), recomputed as the archive grows), and "the top k".
//!
//! The archive is serde-serialisable, so a policy can keep it in its checkpoint.

use std::collections::{BTreeMap, HashMap};

use crate::nb201::Arch;
use crate::{Budget, Candidate, Evaluation, Fidelity, Proposal, Settings};

/// What the host measured for one architecture.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The architecture (single: one op per edge).
    pub arch: Arch,
    /// Order of first appearance in the run.
    pub order: usize,
    /// Whether its score evaluation is recorded (successful or not).
    pub scored: bool,
    /// Whether that evaluation failed (the host's error): such an architecture has no
    /// measures to rank by, and is never among [`Archive::top`].
    #[serde(default)]
    pub score_failed: bool,
    /// The run's score.
    pub score: Option<f64>,
    /// Every measure of its score evaluation, by name (`None`: not finite).
    pub measures: BTreeMap<String, Option<f64>>,
    /// Its parameter count and FLOPs, as the host counted them when it scored it.
    pub params: Option<u64>,
    /// See `params`.
    pub flops: Option<u64>,
    /// Whether its training is recorded (successful or not): it is not trained again.
    pub trained: bool,
    /// Held-out accuracy (0–1) after training.
    pub accuracy: Option<f64>,
    /// Held-out loss after training.
    pub loss: Option<f64>,
}

impl Entry {
    /// The value of measure `name`, if computed and finite.
    pub fn measure(&self, name: &str) -> Option<f64> {
        self.measures.get(name).copied().flatten()
    }
}

/// How to order architectures (higher is better in every case).
#[derive(Debug, Clone, PartialEq)]
pub enum Ranking {
    /// The host's score (the experiment's aggregate, anchored in its reference sample, or
    /// the measure it names): absolute, so it never changes as the archive grows.
    Score,
    /// One measure's value.
    Measure(String),
    /// Σ weight · ln(rank / N) over these measures, ranks taken among the archive's scored
    /// architectures (AZ-NAS's aggregate): relative, recomputed as the archive grows.
    Aggregate(Vec<(String, f64)>),
}

impl Ranking {
    /// The ranking a policy parameter names: `score` (the default, for `None`),
    /// `aggregate` (the measures and weights of the host's score, ranked within the archive:
    /// for a score that is one measure, that measure's rank) or one of the measures the
    /// host offers.
    pub fn named(name: Option<&str>, settings: &Settings) -> Result<Ranking, String> {
        match name.unwrap_or("score") {
            "score" => Ok(Ranking::Score),
            "aggregate" => Ok(Ranking::Aggregate(settings.weights())),
            measure if settings.measures.iter().any(|m| m.name == measure) => Ok(Ranking::Measure(measure.into())),
            other => Err(format!(
                "unknown ranking {other:?}: expected score, aggregate or one of the host's measures ({})",
                settings.measures.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// Every architecture a run has evaluated (supernets are not kept).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Stored", into = "Stored")]
pub struct Archive {
    entries: Vec<Entry>,
    /// Where each architecture's entry is (derived from `entries`).
    index: HashMap<Arch, usize>,
}

/// What a serialised archive holds: the entries (the index is rebuilt from them).
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    entries: Vec<Entry>,
}

/// A stored archive comes from a checkpoint, which the host keeps outside the policy: it is
/// checked, not trusted, because ranking code indexes by `order` (an entry's position).
impl TryFrom<Stored> for Archive {
    type Error = String;

    fn try_from(stored: Stored) -> Result<Archive, String> {
        let mut index = HashMap::with_capacity(stored.entries.len());
        for (i, entry) in stored.entries.iter().enumerate() {
            if entry.order != i {
                return Err(format!("archive entry {i} ({}) says it is entry {}", entry.arch, entry.order));
            }
            if index.insert(entry.arch, i).is_some() {
                return Err(format!("archive holds {} twice", entry.arch));
            }
        }
        Ok(Archive { entries: stored.entries, index })
    }
}

impl From<Archive> for Stored {
    fn from(archive: Archive) -> Stored {
        Stored { entries: archive.entries }
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Restores an archive from [`Archive::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Archive, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("unreadable archive: {e}"))
    }

    /// The archive as bytes (for a checkpoint).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Records results (fresh ones or a replayed history).
    pub fn record(&mut self, results: &[Evaluation]) {
        for result in results {
            let Some(arch) = result.candidate.arch() else { continue };
            let order = self.entries.len();
            let i = *self.index.entry(arch).or_insert(order);
            if i == order {
                self.entries.push(Entry {
                    arch,
                    order,
                    scored: false,
                    score_failed: false,
                    score: None,
                    measures: BTreeMap::new(),
                    params: None,
                    flops: None,
                    trained: false,
                    accuracy: None,
                    loss: None,
                });
            }
            let entry = &mut self.entries[i];
            // A training result repeats its candidate's score and measures; take them when
            // they are new to the archive (a history can hold a training before its score).
            if result.score.is_some() || result.candidate.fidelity == Fidelity::Score {
                entry.score = entry.score.or(result.score);
            }
            for m in &result.measures {
                entry.measures.entry(m.name.clone()).or_insert(m.value);
            }
            entry.params = entry.params.or(result.params);
            entry.flops = entry.flops.or(result.flops);
            match result.candidate.fidelity {
                Fidelity::Score => {
                    entry.scored = true;
                    entry.score_failed = result.error.is_some();
                }
                Fidelity::Train(_) => {
                    entry.trained = true;
                    entry.accuracy = result.accuracy;
                    entry.loss = result.loss;
                }
            }
        }
    }

    /// Number of architectures.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no architecture has been evaluated.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in order of first appearance.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry of `arch`.
    pub fn get(&self, arch: &Arch) -> Option<&Entry> {
        self.index.get(arch).map(|&i| &self.entries[i])
    }

    /// Whether `arch` has a recorded score evaluation.
    pub fn is_scored(&self, arch: &Arch) -> bool {
        self.get(arch).is_some_and(|e| e.scored)
    }

    /// Number of scored architectures.
    pub fn scored(&self) -> usize {
        self.entries.iter().filter(|e| e.scored).count()
    }

    /// The sort key of every entry under `ranking` (entries order; higher is better;
    /// unscored entries and missing or non-finite values are −∞).
    pub fn keys(&self, ranking: &Ranking) -> Vec<f64> {
        let missing = f64::NEG_INFINITY;
        let key = |e: &Entry, value: Option<f64>| if e.scored { value.filter(|v| v.is_finite()).unwrap_or(missing) } else { missing };
        match ranking {
            Ranking::Score => self.entries.iter().map(|e| key(e, e.score)).collect(),
            Ranking::Measure(name) => self.entries.iter().map(|e| key(e, e.measure(name))).collect(),
            Ranking::Aggregate(weights) => {
                let scored: Vec<usize> = (0..self.entries.len()).filter(|&i| self.entries[i].scored).collect();
                let rows: Vec<&BTreeMap<String, Option<f64>>> = scored.iter().map(|&i| &self.entries[i].measures).collect();
                let mut keys = vec![missing; self.entries.len()];
                for (&i, value) in scored.iter().zip(aggregate(&rows, weights)) {
                    keys[i] = value;
                }
                keys
            }
        }
    }

    /// The `k` best scored architectures under `ranking` that pass `keep`, best first
    /// (ties broken by order of appearance); those whose score failed are left out.
    pub fn top(&self, k: usize, ranking: &Ranking, keep: impl Fn(&Entry) -> bool) -> Vec<Arch> {
        let keys = self.keys(ranking);
        let mut order: Vec<usize> =
            (0..self.entries.len()).filter(|&i| self.entries[i].scored && !self.entries[i].score_failed && keep(&self.entries[i])).collect();
        order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
        order.into_iter().take(k).map(|i| self.entries[i].arch).collect()
    }

    /// The most accurate trained architecture.
    pub fn best_trained(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.accuracy.is_some())
            .max_by(|a, b| a.accuracy.unwrap_or(0.0).total_cmp(&b.accuracy.unwrap_or(0.0)).then(b.order.cmp(&a.order)))
    }

    /// The architecture with the smallest value of measure `name` among the scored ones
    /// that pass `keep` (ties to the earliest); `None` when none has a finite value.
    pub fn least(&self, name: &str, keep: impl Fn(&Entry) -> bool) -> Option<Arch> {
        self.entries
            .iter()
            .filter(|e| e.scored && !e.score_failed && keep(e))
            .filter_map(|e| e.measure(name).filter(|v| v.is_finite()).map(|v| (v, e.order, e.arch)))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, _, arch)| arch)
    }

    /// The finalists of a fine selection: the `k` best under `ranking`, only architectures
    /// the ranking has a value for (one whose score or measure is missing is not worth a
    /// training on that evidence; under the aggregate every scored architecture has one:
    /// its missing measures rank lowest).
    pub fn finalists(&self, k: usize, ranking: &Ranking) -> Vec<Arch> {
        let keys = self.keys(ranking);
        self.top(k, ranking, |e| keys[e.order] > f64::NEG_INFINITY)
    }

    /// Fine selection of `finalists`: train those not trained yet, in their order, as many
    /// as the training budget and `max_batch` allow; `Done` once none is left.
    pub fn train(&self, finalists: &[Arch], remaining: &Budget, max_batch: usize, epochs: Option<u32>) -> Proposal {
        let batch: Vec<Candidate> = finalists
            .iter()
            .filter(|arch| !self.get(arch).is_some_and(|e| e.trained))
            .take((remaining.trainings as usize).min(max_batch))
            .map(|&arch| Candidate::train(arch, epochs))
            .collect();
        if batch.is_empty() { Proposal::Done } else { Proposal::Evaluate(batch) }
    }

    /// Fine selection: train the [`Self::finalists`] (the `k` best under `ranking`) not
    /// trained yet; see [`Self::train`].
    pub fn train_best(&self, k: usize, ranking: &Ranking, remaining: &Budget, max_batch: usize, epochs: Option<u32>) -> Proposal {
        self.train(&self.finalists(k, ranking), remaining, max_batch, epochs)
    }
}

/// Ranks of `values` (1 = lowest), ties given the mean of the ranks they span; NaN counts
/// as −∞.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let clean: Vec<f64> = values.iter().map(|v| if v.is_nan() { f64::NEG_INFINITY } else { *v }).collect();
    let mut order: Vec<usize> = (0..clean.len()).collect();
    order.sort_by(|&a, &b| clean[a].total_cmp(&clean[b]));
    let mut out = vec![0.0; clean.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && clean[order[j + 1]] == clean[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            out[k] = (i + j) as f64 / 2.0 + 1.0;
        }
        i = j + 1;
    }
    out
}

/// Σ weight · ln(rank / N) per row over the named measures, ranks taken among `rows`
/// (missing and non-finite values lowest, as the host's aggregate has them). Higher is
/// better; 0 is the best on every measure.
pub fn aggregate(rows: &[&BTreeMap<String, Option<f64>>], weights: &[(String, f64)]) -> Vec<f64> {
    let n = rows.len() as f64;
    let mut total = vec![0.0; rows.len()];
    for (name, weight) in weights {
        let column: Vec<f64> =
            rows.iter().map(|r| r.get(name).copied().flatten().filter(|v| v.is_finite()).unwrap_or(f64::NEG_INFINITY)).collect();
        for (t, rank) in total.iter_mut().zip(ranks(&column)) {
            *t += weight * (rank / n).ln();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MeasureValue, Training};

    fn scored(index: usize, score: f64, measures: &[(&str, Option<f64>)]) -> Evaluation {
        Evaluation {
            candidate: Candidate::score(Arch::from_index(index).unwrap()),
            score: Some(score),
            measures: measures.iter().map(|(n, v)| MeasureValue { name: (*n).into(), value: *v }).collect(),
            params: Some(1000 + index as u64),
            flops: None,
            accuracy: None,
            loss: None,
            epochs: None,
            error: None,
        }
    }

    fn trained(index: usize, accuracy: f64) -> Evaluation {
        Evaluation {
            candidate: Candidate { fidelity: Fidelity::Train(Training { epochs: None }), ..Candidate::score(Arch::from_index(index).unwrap()) },
            accuracy: Some(accuracy),
            loss: Some(1.0 - accuracy),
            epochs: Some(1),
            ..scored(index, 0.0, &[])
        }
    }

    #[test]
    fn ranks_match_scipy_with_ties_and_missing_values() {
        assert_eq!(ranks(&[3.0, 1.0, 3.0, f64::NAN]), vec![3.5, 2.0, 3.5, 1.0]);
    }

    #[test]
    fn the_archive_ranks_by_score_measure_and_aggregate() {
        let mut archive = Archive::new();
        archive.record(&[
            scored(1, -1.0, &[("a", Some(3.0)), ("b", Some(1.0))]),
            scored(2, -2.0, &[("a", Some(2.0)), ("b", Some(3.0))]),
            scored(3, -3.0, &[("a", Some(1.0)), ("b", None)]),
        ]);
        let arch = |i| Arch::from_index(i).unwrap();
        assert_eq!(archive.top(2, &Ranking::Score, |_| true), vec![arch(1), arch(2)]);
        assert_eq!(archive.top(1, &Ranking::Measure("b".into()), |_| true), vec![arch(2)]);
        // a ranks 3,2,1; b ranks 2,3,1: aggregate ln(3/3)+ln(2/3), ln(2/3)+ln(3/3), …
        let keys = archive.keys(&Ranking::Aggregate(vec![("a".into(), 1.0), ("b".into(), 1.0)]));
        assert!((keys[0] - keys[1]).abs() < 1e-12 && keys[2] < keys[0]);
        assert_eq!(archive.top(3, &Ranking::Score, |e| e.params.unwrap() > 1001), vec![arch(2), arch(3)]);
        // Fine selection trains the best untrained, then the best trained one is known.
        let Proposal::Evaluate(batch) = archive.train_best(2, &Ranking::Score, &Budget { scores: 0, trainings: 5 }, 8, Some(2)) else {
            panic!("expected trainings")
        };
        assert_eq!(batch.iter().map(|c| c.arch().unwrap()).collect::<Vec<_>>(), vec![arch(1), arch(2)]);
        assert_eq!(batch[0].fidelity, Fidelity::Train(Training { epochs: Some(2) }));
        archive.record(&[trained(1, 0.8), trained(2, 0.9)]);
        assert_eq!(archive.best_trained().unwrap().arch, arch(2));
        assert_eq!(archive.train_best(2, &Ranking::Score, &Budget { scores: 0, trainings: 5 }, 8, None), Proposal::Done);
        // Survives a checkpoint.
        let back = Archive::from_bytes(&archive.to_bytes()).unwrap();
        assert_eq!(back, archive);
        assert_eq!(back.get(&arch(3)).unwrap().measure("b"), None);
    }

    #[test]
    fn failed_scores_and_values_that_are_not_finite_are_never_finalists() {
        let mut archive = Archive::new();
        let failed = Evaluation { score: None, error: Some("out of memory".into()), ..scored(3, 0.0, &[]) };
        archive.record(&[
            scored(1, f64::NAN, &[("a", Some(f64::INFINITY))]),
            scored(2, -2.0, &[("a", Some(1.0))]),
            failed,
            scored(4, -4.0, &[("a", Some(2.0))]),
        ]);
        let arch = |i| Arch::from_index(i).unwrap();
        // NaN and +∞ rank as missing (lowest), as the host's aggregate has them.
        assert_eq!(archive.top(4, &Ranking::Score, |_| true), vec![arch(2), arch(4), arch(1)]);
        assert_eq!(archive.top(1, &Ranking::Measure("a".into()), |_| true), vec![arch(4)]);
        let keys = archive.keys(&Ranking::Aggregate(vec![("a".into(), 1.0)]));
        assert!(keys[0] < keys[1] && keys[1] < keys[3], "{keys:?}");
        assert!(archive.get(&arch(3)).unwrap().score_failed && !archive.get(&arch(2)).unwrap().score_failed);
        // Five trainings on offer: only the two with a score are trained, the failed one
        // never (though its aggregate key, the lowest ranks, is finite).
        let budget = Budget { scores: 0, trainings: 5 };
        let trained = |proposal: Proposal| match proposal {
            Proposal::Evaluate(batch) => batch.iter().map(|c| c.arch().unwrap()).collect::<Vec<_>>(),
            Proposal::Done => vec![],
        };
        assert_eq!(trained(archive.train_best(5, &Ranking::Score, &budget, 8, None)), vec![arch(2), arch(4)]);
        let by_aggregate = trained(archive.train_best(5, &Ranking::Aggregate(vec![("a".into(), 1.0)]), &budget, 8, None));
        assert_eq!(by_aggregate, vec![arch(4), arch(2), arch(1)]);
        // The smallest value of a measure: never a failed score, never a missing value.
        assert_eq!(archive.least("a", |_| true), Some(arch(2)));
        assert_eq!(archive.least("a", |e| e.arch != arch(2)), Some(arch(4)));
        assert_eq!(archive.least("b", |_| true), None);
        // Fine selection of given finalists: in their order, the trained ones skipped,
        // within the training budget.
        assert_eq!(trained(archive.train(&[arch(4), arch(1), arch(2)], &Budget { scores: 0, trainings: 2 }, 8, None)), vec![arch(4), arch(1)]);
        // An archive checkpointed before `score_failed` existed still reads.
        let mut stored: serde_json::Value = serde_json::from_slice(&archive.to_bytes()).unwrap();
        for entry in stored["entries"].as_array_mut().unwrap() {
            entry.as_object_mut().unwrap().remove("score_failed");
        }
        assert_eq!(Archive::from_bytes(&serde_json::to_vec(&stored).unwrap()).unwrap().len(), 4);
    }

    #[test]
    fn a_checkpoint_whose_entries_disagree_with_their_positions_is_refused() {
        let mut archive = Archive::new();
        archive.record(&[scored(1, -1.0, &[]), scored(2, -2.0, &[])]);
        let mut stored: serde_json::Value = serde_json::from_slice(&archive.to_bytes()).unwrap();
        // An order past the end: ranking code indexes by it.
        stored["entries"][1]["order"] = 99.into();
        let error = Archive::from_bytes(&serde_json::to_vec(&stored).unwrap()).unwrap_err();
        assert!(error.contains("unreadable archive: archive entry 1 (") && error.contains("says it is entry 99"), "{error}");
        // The same architecture twice.
        stored["entries"][1] = stored["entries"][0].clone();
        stored["entries"][1]["order"] = 1.into();
        let error = Archive::from_bytes(&serde_json::to_vec(&stored).unwrap()).unwrap_err();
        assert!(error.contains("twice"), "{error}");
    }
}
