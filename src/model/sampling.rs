//! Choosing the next token from raw logits: greedy, or temperature / top-k / top-p sampling from
//! a seeded stream; and each position's exact entropy and log-partition, from the raw logits
//! (before temperature and top-p), in one pass of the vectorised exponential.

use super::kernels::exp;
use rand::{Rng, rngs::StdRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// `top_k = 0` and `top_p = 1.0` disable those filters.
    Sample {
        temperature: f64,
        top_p: f64,
        top_k: usize,
    },
}

impl Sampling {
    /// Greedy, or sampling with these settings: how configs and flags spell it.
    pub fn new(greedy: bool, temperature: f64, top_p: f64, top_k: usize) -> Self {
        if greedy {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature,
                top_p,
                top_k,
            }
        }
    }
}

/// Log-partition, entropy and log-softmax helpers over one row of raw logits.
pub struct RowStats {
    pub log_z: f32,
    pub entropy: f32,
}

/// Both NaN when a logit is NaN or +inf (or every one is -inf): no distribution to describe.
pub fn row_stats(logits: &[f32]) -> RowStats {
    let max = exp::max(logits);
    // A NaN logit is skipped by the maximum but makes the sums NaN.
    let (sum, weighted) = exp::exp_moments(logits, max);
    if !(max.is_finite() && sum.is_finite() && weighted.is_finite()) {
        return RowStats {
            log_z: f32::NAN,
            entropy: f32::NAN,
        };
    }
    let log_z = max as f64 + sum.ln();
    // H = log Z - E_p[x]
    let entropy = sum.ln() - weighted / sum;
    RowStats {
        log_z: log_z as f32,
        entropy: entropy.max(0.0) as f32,
    }
}

/// Picks the next token from raw logits.
pub fn sample(logits: &[f32], sampling: Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        best as u32
    };
    let (temperature, top_p, top_k) = match sampling {
        Sampling::Greedy => return argmax(),
        Sampling::Sample { temperature, .. } if temperature <= 0.0 => return argmax(),
        Sampling::Sample {
            temperature,
            top_p,
            top_k,
        } => (temperature as f32, top_p as f32, top_k),
    };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Unnormalised probabilities after temperature.
    let mut cand: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, ((x - max) / temperature).exp()))
        .collect();
    let by_prob = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, by_prob);
        cand.truncate(top_k);
    }
    if top_p < 1.0 {
        let total: f32 = cand.iter().map(|c| c.1).sum();
        // Most of the mass usually sits in a few hundred tokens: sort those first.
        let head = 512.min(cand.len());
        cand.select_nth_unstable_by(head - 1, by_prob);
        cand[..head].sort_unstable_by(by_prob);
        if cand[..head].iter().map(|c| c.1).sum::<f32>() < top_p * total {
            cand.sort_unstable_by(by_prob);
        }
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut acc = 0f32;
        let mut keep = cand.len();
        for (i, c) in cand.iter().enumerate() {
            if acc >= top_p * total {
                keep = i;
                break;
            }
            acc += c.1;
        }
        cand.truncate(keep.max(1));
    }
    // Walk the kept tokens in id order, so the pick depends on the probabilities, not on how
    // near-equal ones happened to sort.
    cand.sort_unstable_by_key(|c| c.0);
    let total: f32 = cand.iter().map(|c| c.1).sum();
    let mut u = rng.random::<f32>() * total;
    for &(id, p) in &cand {
        if u < p {
            return id;
        }
        u -= p;
    }
    cand.last().map_or(0, |c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn entropy_of_uniform_is_ln_v_and_of_one_hot_is_zero() {
        let v = 1000;
        let s = row_stats(&vec![0.5f32; v]);
        assert!((s.entropy - (v as f32).ln()).abs() < 1e-4, "{}", s.entropy);
        let mut one_hot = vec![-1e4f32; v];
        one_hot[3] = 0.0;
        assert!(row_stats(&one_hot).entropy.abs() < 1e-6);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(sample(&[0.0, 2.0, 2.0, 1.0], Sampling::Greedy, &mut rng), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let mut rng = StdRng::seed_from_u64(0);
        let logits: Vec<f32> = (0..2000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let best = sample(&logits, Sampling::Greedy, &mut rng);
        for _ in 0..20 {
            let k1 = Sampling::Sample {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 1,
            };
            assert_eq!(sample(&logits, k1, &mut rng), best);
            let p0 = Sampling::Sample {
                temperature: 1.0,
                top_p: 1e-6,
                top_k: 0,
            };
            assert_eq!(sample(&logits, p0, &mut rng), best);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75]
        let logits = [0f32, 3f32.ln()];
        let mut rng = StdRng::seed_from_u64(42);
        let s = Sampling::Sample {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        let ones = (0..20_000)
            .filter(|_| sample(&logits, s, &mut rng) == 1)
            .count();
        let frac = ones as f64 / 20_000.0;
        assert!((frac - 0.75).abs() < 0.015, "{frac}");
        // top_p 0.7 keeps only the 0.75 token.
        let s = Sampling::Sample {
            temperature: 1.0,
            top_p: 0.7,
            top_k: 0,
        };
        assert!((0..200).all(|_| sample(&logits, s, &mut rng) == 1));
    }
}
