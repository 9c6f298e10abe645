//! Rank aggregation: one number per architecture from several measures' ranks.
//!
//! AZ-NAS (Lee & Ham, CVPR 2024) sums ln(rank_k / N) over its measures, ranks taken among
//! the N candidates being compared. That number changes whenever another candidate is
//! scored, which a search that stores scores cannot live with. knas anchors the ranks
//! instead: each measure's value is placed within a **reference sample** — a seeded sample
//! of the space measured once per experiment (and cached in the run store) — as a
//! continuous percentile p ∈ (0, 1), and the aggregate is
//!
//! ```text
//! aggregate = Σ_k w_k · ln p_k
//! ```
//!
//! Higher is better; 0 would be above every reference architecture on every measure.
//! Between reference values the percentile is interpolated linearly, beyond them it
//! approaches the ends of the range hyperbolically, so the order of two candidates never depends on which
//! reference values happen to lie between them, and candidates beyond the reference still
//! keep their order. A missing value ranks below every finite one.

use std::collections::BTreeMap;

use super::{Measure, Values};

/// One measure's part in the aggregate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Term {
    pub measure: Measure,
    pub weight: f64,
}

/// Which measures the aggregate combines, and with which weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AggregateSpec {
    pub terms: Vec<Term>,
}

impl Default for AggregateSpec {
    /// The default, chosen by measurement on NAS-Bench-201 (see the README's table).
    fn default() -> AggregateSpec {
        AggregateSpec::equal(&DEFAULT_MEASURES)
    }
}

/// The default aggregate's measures, with equal weights: AZ-NAS's expressivity,
/// progressivity and trainability with the parameter count as its complexity term, MeCo and
/// SynFlow. Chosen on one seeded sample of 1,000 NAS-Bench-201 architectures among every
/// combination of up to seven measures — for rank correlation with the published CIFAR-10
/// accuracies and for the accuracy of the best-scored of 200 candidates — and confirmed on
/// a second sample; the README has the tables.
pub const DEFAULT_MEASURES: [Measure; 6] =
    [Measure::Synflow, Measure::Meco, Measure::Expressivity, Measure::Progressivity, Measure::Trainability, Measure::Params];

impl AggregateSpec {
    /// Equal weights for `measures`.
    pub fn equal(measures: &[Measure]) -> AggregateSpec {
        AggregateSpec { terms: measures.iter().map(|&measure| Term { measure, weight: 1.0 }).collect() }
    }

    /// The measures it reads.
    pub fn measures(&self) -> Vec<Measure> {
        self.terms.iter().map(|t| t.measure).collect()
    }

    /// Checks weights: finite, positive, at least one term, no measure twice.
    pub fn validate(&self) -> Result<(), String> {
        if self.terms.is_empty() {
            return Err("the aggregate needs at least one measure".into());
        }
        for (i, term) in self.terms.iter().enumerate() {
            if !(term.weight.is_finite() && term.weight > 0.0) {
                return Err(format!("weight of {} must be a positive number, got {}", term.measure, term.weight));
            }
            if self.terms[..i].iter().any(|t| t.measure == term.measure) {
                return Err(format!("{} appears twice in the aggregate", term.measure));
            }
        }
        Ok(())
    }

    /// The aggregate of `values` anchored in `reference`.
    pub fn score(&self, reference: &Reference, values: &Values) -> f64 {
        self.terms
            .iter()
            .map(|t| t.weight * reference.percentile(t.measure, values.get(&t.measure).copied().flatten()).ln())
            .sum()
    }
}

/// The reference sample's values per measure: what percentiles are taken within.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    /// Architectures in the sample.
    pub size: usize,
    /// Per measure, the finite values, sorted ascending (the rest were missing).
    pub sorted: BTreeMap<Measure, Vec<f64>>,
}

impl Reference {
    /// The reference built from the sample's measured values.
    pub fn new<'a>(measures: &[Measure], rows: impl IntoIterator<Item = &'a Values>) -> Reference {
        let mut sorted: BTreeMap<Measure, Vec<f64>> = measures.iter().map(|&m| (m, Vec::new())).collect();
        let mut size = 0;
        for row in rows {
            size += 1;
            for (m, list) in sorted.iter_mut() {
                if let Some(v) = row.get(m).copied().flatten().filter(|v| v.is_finite()) {
                    list.push(v);
                }
            }
        }
        for list in sorted.values_mut() {
            list.sort_by(f64::total_cmp);
        }
        Reference { size, sorted }
    }

    /// Whether the reference has values for every measure of `spec`.
    pub fn covers(&self, spec: &AggregateSpec) -> bool {
        spec.terms.iter().all(|t| self.sorted.contains_key(&t.measure))
    }

    /// Checks what a cached reference claims: per measure, at most `size` values, finite
    /// and ascending. A damaged cache would skew every percentile instead.
    pub fn check(&self) -> Result<(), String> {
        for (measure, values) in &self.sorted {
            if values.len() > self.size {
                return Err(format!("{} has {} values for a sample of {}", measure.name(), values.len(), self.size));
            }
            if values.iter().any(|v| !v.is_finite()) || values.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!("the values of {} are not finite and ascending", measure.name()));
            }
        }
        Ok(())
    }

    /// The continuous percentile of `value` for `measure` in (0, 1) (see the module
    /// documentation). A measure the reference lacks gives 1/2.
    pub fn percentile(&self, measure: Measure, value: Option<f64>) -> f64 {
        let total = self.size as f64;
        let Some(sorted) = self.sorted.get(&measure) else { return 0.5 };
        let missing = (self.size - sorted.len()) as f64;
        let position = match value.filter(|v| v.is_finite()) {
            // Missing values tie among themselves, below everything finite.
            None => missing / 2.0,
            Some(v) => missing + finite_position(sorted, v),
        };
        (position + 0.5) / (total + 1.0)
    }
}

/// The position of `v` among `sorted` finite values: its mid-rank at a reference value
/// (0.5 at the smallest when unique, n − 0.5 at the largest), linear between values, and
/// tails towards 0 and n beyond them.
fn finite_position(sorted: &[f64], v: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        // Above every missing reference value, and p stays below 1.
        return 0.0;
    }
    let (lo, hi) = (sorted[0], sorted[n - 1]);
    let scale = if hi > lo { (hi - lo) / n as f64 } else { 1.0 };
    let midrank = |x: f64| {
        let below = sorted.partition_point(|&r| r < x);
        let equal = sorted[below..].partition_point(|&r| r <= x);
        below as f64 + equal as f64 / 2.0
    };
    // Hyperbolic tails: slow enough that values far beyond the reference keep their
    // order in floating point.
    if v < lo {
        return midrank(lo) * scale / (scale + (lo - v));
    }
    if v > hi {
        let top = midrank(hi);
        let d = v - hi;
        return top + (n as f64 - top) * d / (d + scale);
    }
    let below = sorted.partition_point(|&r| r < v);
    if sorted[below] == v {
        return midrank(v);
    }
    // Strictly between sorted[below - 1] and sorted[below].
    let (a, b) = (sorted[below - 1], sorted[below]);
    let (pa, pb) = (midrank(a), midrank(b));
    pa + (pb - pa) * (v - a) / (b - a)
}

/// AZ-NAS's own aggregate, ranks taken within the compared set: Σ_k w_k ln(rank_k / N),
/// ascending ranks with ties averaged and missing values lowest. For comparing against
/// the anchored aggregate in reports; a search does not use it.
pub fn in_sample(spec: &AggregateSpec, rows: &[Values]) -> Vec<f64> {
    let n = rows.len() as f64;
    let mut total = vec![0.0; rows.len()];
    for term in &spec.terms {
        let column: Vec<f64> =
            rows.iter().map(|r| r.get(&term.measure).copied().flatten().filter(|v| v.is_finite()).unwrap_or(f64::NEG_INFINITY)).collect();
        for (t, rank) in total.iter_mut().zip(crate::stats::ranks(&column)) {
            *t += term.weight * (rank / n).ln();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(Measure, Option<f64>)]) -> Values {
        pairs.iter().copied().collect()
    }

    #[test]
    fn percentiles_are_continuous_monotone_and_bounded() {
        let rows: Vec<Values> = [1.0, 2.0, 2.0, 4.0].iter().map(|&v| values(&[(Measure::Params, Some(v))])).chain(
            std::iter::once(values(&[(Measure::Params, None)])),
        ).collect();
        let r = Reference::new(&[Measure::Params], &rows);
        assert_eq!(r.size, 5);
        let p = |v: Option<f64>| r.percentile(Measure::Params, v);
        let grid: Vec<f64> = (-40..=120).map(|i| f64::from(i) / 10.0).collect();
        let ps: Vec<f64> = grid.iter().map(|&v| p(Some(v))).collect();
        assert!(ps.windows(2).all(|w| w[0] <= w[1]), "monotone");
        assert!(ps.iter().all(|&x| x > p(None) && x < 1.0), "bounded, above missing");
        // Continuous: no jump larger than the grid step allows.
        assert!(ps.windows(2).all(|w| w[1] - w[0] < 0.1), "{ps:?}");
        // At a reference value: (missing + mid-rank) positions. 2.0 ties ranks 2–3.
        assert!((p(Some(2.0)) - (1.0 + 2.0 + 0.5) / 6.0).abs() < 1e-12);
        assert!(p(Some(1e9)) > p(Some(100.0)), "order kept beyond the reference");
        assert!(p(None) < p(Some(-1e9)) && p(Some(-1e9)) < p(Some(-100.0)), "order kept below the reference, above missing");
    }

    #[test]
    fn the_aggregate_sums_weighted_log_percentiles_and_is_stable() {
        let rows: Vec<Values> = (0..10)
            .map(|i| values(&[(Measure::Params, Some(f64::from(i))), (Measure::Flops, Some(f64::from(10 - i)))]))
            .collect();
        let r = Reference::new(&[Measure::Params, Measure::Flops], &rows);
        let spec = AggregateSpec { terms: vec![Term { measure: Measure::Params, weight: 2.0 }, Term { measure: Measure::Flops, weight: 1.0 }] };
        spec.validate().unwrap();
        let v = values(&[(Measure::Params, Some(9.5)), (Measure::Flops, Some(0.5))]);
        let expected = 2.0 * r.percentile(Measure::Params, Some(9.5)).ln() + r.percentile(Measure::Flops, Some(0.5)).ln();
        assert!((spec.score(&r, &v) - expected).abs() < 1e-12);
        // Better on both measures → higher; a missing measure → lower.
        let better = values(&[(Measure::Params, Some(9.6)), (Measure::Flops, Some(0.6))]);
        assert!(spec.score(&r, &better) > spec.score(&r, &v));
        let missing = values(&[(Measure::Params, Some(9.5))]);
        assert!(spec.score(&r, &missing) < spec.score(&r, &v));
        assert!(AggregateSpec::equal(&[]).validate().is_err());
        let twice = AggregateSpec::equal(&[Measure::Params, Measure::Params]);
        assert!(twice.validate().unwrap_err().contains("params appears twice"));
    }

    #[test]
    fn damaged_references_are_refused_and_empty_measures_stay_below_one() {
        let rows: Vec<Values> = [1.0, 2.0, 3.0].iter().map(|&v| values(&[(Measure::Params, Some(v))])).collect();
        let good = Reference::new(&[Measure::Params], &rows);
        assert_eq!(good.check(), Ok(()));
        let with = |list: Vec<f64>| Reference { size: 3, sorted: [(Measure::Params, list)].into_iter().collect() };
        assert!(with(vec![1.0, 2.0, 3.0, 4.0]).check().unwrap_err().contains("params has 4 values for a sample of 3"));
        assert!(with(vec![2.0, 1.0]).check().unwrap_err().contains("not finite and ascending"));
        assert!(with(vec![1.0, f64::INFINITY]).check().is_err());
        // Every reference value missing: a finite value ranks above them, below 1.
        let none = with(vec![]);
        let p = none.percentile(Measure::Params, Some(5.0));
        assert!(p > none.percentile(Measure::Params, None) && p < 1.0, "{p}");
    }

    #[test]
    fn in_sample_ranks_match_az_nas() {
        let spec = AggregateSpec::equal(&[Measure::Params]);
        let rows: Vec<Values> = [3.0, 1.0, 2.0].iter().map(|&v| values(&[(Measure::Params, Some(v))])).collect();
        let got = in_sample(&spec, &rows);
        let want = [(3.0f64 / 3.0).ln(), (1.0f64 / 3.0).ln(), (2.0f64 / 3.0).ln()];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12);
        }
    }
}
