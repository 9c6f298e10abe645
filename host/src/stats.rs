//! Rank correlations for judging how well a score ranks architectures, and how far to
//! trust them: with tens of architectures, ρ's sampling error is ±0.3, so every
//! comparison between measures needs an interval.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The median of `values` (mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// Ranks of `values` (1-based), ties given the mean of the ranks they span.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = mean_rank;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Whether two series can be ranked against each other: equal lengths, at least two
/// points, no NaN. (Infinities rank: callers give a missing value −∞ to rank it last.)
fn rankable(x: &[f64], y: &[f64]) -> bool {
    x.len() == y.len() && x.len() >= 2 && !x.iter().chain(y).any(|v| v.is_nan())
}

/// Spearman's ρ (Pearson correlation of the tie-averaged ranks). `None` when there are
/// fewer than two points, the lengths differ, a value is NaN, or one side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if !rankable(x, y) {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// −1, 0 or 1 as `a` is below, equal to (−0 = +0, as in [`ranks`]) or above `b`.
fn sign_of_difference(a: f64, b: f64) -> i8 {
    (a > b) as i8 - (a < b) as i8
}

/// Kendall's τ-b, which corrects for ties on either side. `None` as for [`spearman`].
pub fn kendall(x: &[f64], y: &[f64]) -> Option<f64> {
    if !rankable(x, y) {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let dx = sign_of_difference(x[i], x[j]);
            let dy = sign_of_difference(y[i], y[j]);
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => ties_x += 1,
                (_, 0) => ties_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    tau_b(concordant, discordant, ties_x, ties_y)
}

/// τ-b from the pair counts. In f64: the product of pair counts overflows i64 from about
/// 78,000 points.
fn tau_b(concordant: i64, discordant: i64, ties_x: i64, ties_y: i64) -> Option<f64> {
    let denom = (((concordant + discordant + ties_x) as f64) * ((concordant + discordant + ties_y) as f64)).sqrt();
    (denom > 0.0).then(|| (concordant - discordant) as f64 / denom)
}

/// A 95% percentile-bootstrap interval for Spearman's ρ: architectures resampled with
/// replacement `resamples` times (seeded, so reports repeat). `None` when ρ itself is, and
/// when more than one resample in ten has no ρ (a side constant in it): with so few
/// distinct values, the remaining resamples would give a falsely narrow interval.
pub fn spearman_interval(x: &[f64], y: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    spearman(x, y)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = x.len();
    let mut estimates: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let picks: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            let xs: Vec<f64> = picks.iter().map(|&i| x[i]).collect();
            let ys: Vec<f64> = picks.iter().map(|&i| y[i]).collect();
            spearman(&xs, &ys)
        })
        .collect();
    if estimates.is_empty() || (resamples - estimates.len()) * 10 > resamples {
        return None;
    }
    estimates.sort_by(f64::total_cmp);
    let at = |q: f64| estimates[((estimates.len() - 1) as f64 * q).round() as usize];
    Some((at(0.025), at(0.975)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn perfect_and_reversed_orders() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!(close(spearman(&x, &[10.0, 20.0, 25.0, 100.0]), 1.0));
        assert!(close(kendall(&x, &[10.0, 20.0, 25.0, 100.0]), 1.0));
        assert!(close(spearman(&x, &[4.0, 3.0, 2.0, 1.0]), -1.0));
        assert!(close(kendall(&x, &[4.0, 3.0, 2.0, 1.0]), -1.0));
    }

    #[test]
    fn matches_scipy_with_ties() {
        // scipy.stats.spearmanr / kendalltau (tau-b) on these vectors:
        // spearman = 0.7631578947368421, kendall = 0.6666666666666666
        let x = [1.0, 2.0, 2.0, 3.0, 5.0];
        let y = [1.0, 3.0, 2.0, 2.0, 4.0];
        assert!(close(spearman(&x, &y), 0.7631578947368421), "{:?}", spearman(&x, &y));
        assert!(close(kendall(&x, &y), 0.6666666666666666), "{:?}", kendall(&x, &y));
    }

    #[test]
    fn bootstrap_interval_brackets_the_estimate_and_narrows_with_more_data() {
        let x: Vec<f64> = (0..40).map(f64::from).collect();
        // A noisy increasing relation: ρ clearly positive, not perfect.
        let y: Vec<f64> = x.iter().map(|v| v + 15.0 * ((v * 2.7).sin())).collect();
        let rho = spearman(&x, &y).unwrap();
        let (lo, hi) = spearman_interval(&x, &y, 1000, 0).unwrap();
        assert!(lo < rho && rho < hi && -1.0 <= lo && hi <= 1.0, "{lo} {rho} {hi}");
        assert_eq!(spearman_interval(&x, &y, 1000, 0), Some((lo, hi)), "seeded");
        let (x4, y4) = (&x[..10], &y[..10]);
        let (lo4, hi4) = spearman_interval(x4, y4, 1000, 0).unwrap();
        assert!(hi4 - lo4 > hi - lo, "10 points [{lo4}, {hi4}] should be wider than 40 [{lo}, {hi}]");
        let perfect = spearman_interval(&x, &x, 200, 0).unwrap();
        assert!((perfect.0 - 1.0).abs() < 1e-12 && (perfect.1 - 1.0).abs() < 1e-12);
        assert_eq!(spearman_interval(&[1.0], &[1.0], 10, 0), None);
        // Two or three points: a resample in two or nine is constant, and the rest agree
        // perfectly; no interval rather than a falsely certain [1, 1].
        assert_eq!(spearman_interval(&[1.0, 2.0], &[1.0, 2.0], 1000, 0), None);
        assert_eq!(spearman_interval(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 1000, 0), None);
        assert!(spearman_interval(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 4.0, 3.0], 1000, 0).is_some());
    }

    #[test]
    fn degenerate_inputs_have_no_correlation() {
        assert_eq!(spearman(&[1.0], &[2.0]), None);
        assert_eq!(kendall(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0]), None);
        // NaN is not a rank; −∞ is (a missing value ranked last), and −0 ties +0.
        assert_eq!(spearman(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(kendall(&[1.0, 2.0, 3.0], &[1.0, f64::NAN, 3.0]), None);
        assert!(close(spearman(&[f64::NEG_INFINITY, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0));
        assert!(close(kendall(&[-0.0, 0.0, 1.0], &[1.0, 1.0, 2.0]), 1.0));
        assert!(close(spearman(&[-0.0, 0.0, 1.0], &[1.0, 1.0, 2.0]), 1.0));
    }

    #[test]
    fn kendall_counts_pairs_without_overflow() {
        // The pair counts of 100,000 points in the same order: their product (≈2.5·10¹⁹)
        // is beyond i64.
        let pairs = 100_000i64 * 99_999 / 2;
        assert!(close(tau_b(pairs, 0, 0, 0), 1.0));
        assert!(close(tau_b(0, pairs, 0, 0), -1.0));
    }
}
