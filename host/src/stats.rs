//! Rank correlations for judging how well a score ranks architectures.

/// Ranks of `values` (1-based), ties given the mean of the ranks they span.
fn ranks(values: &[f64]) -> Vec<f64> {
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

/// Spearman's ρ (Pearson correlation of the tie-averaged ranks). `None` when there are
/// fewer than two points, the lengths differ, or one side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// Kendall's τ-b, which corrects for ties on either side. `None` as for [`spearman`].
pub fn kendall(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_x, mut ties_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let dx = x[i].total_cmp(&x[j]) as i64;
            let dy = y[i].total_cmp(&y[j]) as i64;
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => ties_x += 1,
                (_, 0) => ties_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let denom = (((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) as f64).sqrt();
    (denom > 0.0).then(|| (concordant - discordant) as f64 / denom)
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
    fn degenerate_inputs_have_no_correlation() {
        assert_eq!(spearman(&[1.0], &[2.0]), None);
        assert_eq!(kendall(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(spearman(&[1.0, 2.0], &[1.0]), None);
    }
}
