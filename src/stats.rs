//! Summary and agreement statistics for score lists: quantiles, Spearman's rho (Pearson on
//! average ranks), Kendall's tau-b (tie-corrected), and the overlap of two top-N selections,
//! which is what matters for a curriculum that keeps the top N.

/// Linear-interpolation quantile (numpy's default) of an unsorted list; `q` in [0, 1].
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

pub fn std_dev(values: &[f64]) -> f64 {
    let m = mean(values);
    (values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / values.len().max(1) as f64).sqrt()
}

/// The sample standard deviation (divided by n - 1): the spread of a few seeds' results, and
/// the one Student's t interval takes. 0 for fewer than two values.
pub fn sample_std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    (values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// 1-based ranks with ties sharing their average rank.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut r = vec![0.0; values.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && values[idx[j + 1]] == values[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Spearman's rank correlation; NaN when a side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Kendall's tau-b, O(n^2) (pools here are thousands of items at most).
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> f64 {
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let da = a[i].total_cmp(&a[j]) as i64;
            let db = b[i].total_cmp(&b[j]) as i64;
            match (da, db) {
                (0, 0) => {}
                (0, _) => ties_a += 1,
                (_, 0) => ties_b += 1,
                _ if da == db => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n0 = (concordant + discordant) as f64;
    ((concordant - discordant) as f64) / ((n0 + ties_a as f64) * (n0 + ties_b as f64)).sqrt()
}

/// Indices of the `n` highest values (ties broken by index).
pub fn top_n(values: &[f64], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&x, &y| values[y].total_cmp(&values[x]).then(x.cmp(&y)));
    idx.truncate(n);
    idx
}

/// Share of the top `n` by `a` that is also in the top `n` by `b`.
pub fn top_n_overlap(a: &[f64], b: &[f64], n: usize) -> f64 {
    if n == 0 {
        return f64::NAN;
    }
    let ta: std::collections::HashSet<usize> = top_n(a, n).into_iter().collect();
    top_n(b, n).iter().filter(|i| ta.contains(i)).count() as f64 / n.min(a.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy.stats (spearmanr, kendalltau with variant "b") on these lists.
    const A: [f64; 8] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    const B: [f64; 8] = [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0];

    #[test]
    fn rank_correlations_match_hand_values() {
        // Spearman: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 8 / 504
        assert!((spearman(&A, &B) - (1.0 - 48.0 / 504.0)).abs() < 1e-12);
        // Kendall: 4 discordant of 28 pairs -> (24 - 4) / 28
        assert!((kendall_tau_b(&A, &B) - 20.0 / 28.0).abs() < 1e-12);
        let rev: Vec<f64> = A.iter().rev().copied().collect();
        assert!((spearman(&A, &rev) + 1.0).abs() < 1e-12);
        assert!((kendall_tau_b(&A, &rev) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn ties_get_average_ranks_and_tau_b_correction() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 30.0]), vec![1.5, 3.0, 1.5, 4.0]);
        // scipy.stats.kendalltau([1, 1, 2, 3], [1, 2, 2, 3]) = 0.8
        let t = kendall_tau_b(&[1.0, 1.0, 2.0, 3.0], &[1.0, 2.0, 2.0, 3.0]);
        assert!((t - 0.8).abs() < 1e-12, "{t}");
    }

    #[test]
    fn top_n_overlap_and_quantiles() {
        assert_eq!(top_n(&B, 3), vec![6, 7, 4]);
        assert!((top_n_overlap(&A, &B, 2) - 1.0).abs() < 1e-12);
        assert!((top_n_overlap(&A, &B, 3) - 2.0 / 3.0).abs() < 1e-12);
        assert!((top_n_overlap(&A, &B, 5) - 0.8).abs() < 1e-12);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.0), 1.0);
        assert!((quantile(&A, 0.9) - 7.3).abs() < 1e-12);
    }
}
