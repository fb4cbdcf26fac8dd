//! Which samples each round trains on. One interface for every strategy, the same budget per
//! round for all, so comparisons are fair:
//! - `edco`: the pool is scored with the current model (all of it, or a `rescore_fraction` of it
//!   with the others keeping their last score: first the samples trained on since they were
//!   scored, whose stale scores would otherwise select them again, then the least recently
//!   scored), the top `drop_top_fraction`
//!   is dropped as likely noise, then the N highest are kept (or N are drawn without
//!   replacement with probability ~ exp(score / soft_temperature));
//! - `random`: N drawn uniformly, anew each round;
//! - `length`, `perplexity`, `entropy`: the pool is ordered once before training (shortest
//!   prompt, lowest reference perplexity, highest entropy first) and rounds walk that order.

use crate::config::{CurriculumSection, Strategy};
use crate::seed;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// One selected sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    /// Index into the pool.
    pub index: usize,
    /// The score it was ranked by (entropy, perplexity, length; 0 for random).
    pub score: f64,
    /// 1-based rank in the round's ordering.
    pub rank: usize,
    /// Whether an earlier round had already selected it.
    pub seen: bool,
}

/// The curriculum's state across rounds; serialisable for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curriculum {
    pub cfg: CurriculumSection,
    pub per_round: usize,
    pub seed: u64,
    /// Latest score per pool sample (None: never scored).
    pub scores: Vec<Option<f64>>,
    /// Round in which each sample was last scored (0: never).
    pub scored_round: Vec<usize>,
    /// For static strategies, the pool order fixed before training.
    pub order: Vec<usize>,
    pub times_selected: Vec<usize>,
    /// Round in which each sample was last selected (0: never; empty in older checkpoints).
    #[serde(default)]
    pub selected_round: Vec<usize>,
}

impl Curriculum {
    pub fn new(cfg: CurriculumSection, pool: usize, per_round: usize, seed: u64) -> Self {
        Self {
            cfg,
            per_round,
            seed,
            scores: vec![None; pool],
            scored_round: vec![0; pool],
            order: Vec::new(),
            times_selected: vec![0; pool],
            selected_round: vec![0; pool],
        }
    }

    pub fn pool(&self) -> usize {
        self.scores.len()
    }

    /// Whether the strategy needs model scores before round `round` (1-based).
    pub fn needs_model_scores(&self, round: usize) -> bool {
        match self.cfg.strategy {
            Strategy::Edco => true,
            Strategy::Perplexity | Strategy::Entropy => round == 1 && self.order.is_empty(),
            Strategy::Random | Strategy::Length => false,
        }
    }

    /// Pool indices to score before round `round`: for `edco`, everything in round 1, then a
    /// `rescore_fraction` of the pool: the samples trained on since their last score first, then
    /// the least recently scored; for static model orders, all once.
    pub fn to_score(&self, round: usize) -> Vec<usize> {
        if !self.needs_model_scores(round) {
            return Vec::new();
        }
        let all: Vec<usize> = (0..self.pool()).collect();
        if self.cfg.strategy != Strategy::Edco || self.cfg.rescore_fraction >= 1.0 || round == 1 {
            return all;
        }
        let n = ((self.pool() as f64 * self.cfg.rescore_fraction).ceil() as usize)
            .clamp(1, self.pool());
        let trained_since_scored = |i: usize| {
            self.selected_round
                .get(i)
                .is_some_and(|&r| r > 0 && r >= self.scored_round[i])
        };
        let mut idx = all;
        idx.sort_by_key(|&i| (!trained_since_scored(i), self.scored_round[i], i));
        idx.truncate(n);
        idx.sort_unstable();
        idx
    }

    /// Records scores for `indices` obtained before round `round`.
    pub fn record(&mut self, round: usize, indices: &[usize], scores: &[f64]) {
        for (&i, &s) in indices.iter().zip(scores) {
            self.scores[i] = Some(s);
            self.scored_round[i] = round;
        }
        if matches!(self.cfg.strategy, Strategy::Perplexity | Strategy::Entropy)
            && self.order.is_empty()
        {
            let ascending = self.cfg.strategy == Strategy::Perplexity;
            self.order = self.ranked(ascending);
        }
    }

    /// Fixes the `length` order from prompt lengths (shortest first).
    pub fn set_lengths(&mut self, lengths: &[usize]) {
        for (i, &l) in lengths.iter().enumerate() {
            self.scores[i] = Some(l as f64);
        }
        self.order = self.ranked(true);
    }

    /// Pool indices by score (descending unless `ascending`), ties by index.
    fn ranked(&self, ascending: bool) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.pool()).collect();
        let key = |i: usize| self.scores[i].unwrap_or(f64::NEG_INFINITY);
        idx.sort_by(|&a, &b| {
            let o = key(a).total_cmp(&key(b));
            (if ascending { o } else { o.reverse() }).then(a.cmp(&b))
        });
        idx
    }

    /// The selection for round `round` (1-based).
    pub fn select(&mut self, round: usize) -> Vec<Pick> {
        let n = self.per_round.min(self.pool());
        let mut rng = StdRng::seed_from_u64(seed::mix(&[seed::SELECT, self.seed, round as u64]));
        let chosen: Vec<usize> = match self.cfg.strategy {
            Strategy::Edco => {
                let ranked = self.ranked(false);
                let drop = (self.pool() as f64 * self.cfg.drop_top_fraction).floor() as usize;
                let candidates = &ranked[drop.min(ranked.len().saturating_sub(n))..];
                if self.cfg.soft_temperature > 0.0 {
                    self.soft_sample(candidates, n, &mut rng)
                } else {
                    candidates[..n].to_vec()
                }
            }
            Strategy::Random => rand::seq::index::sample(&mut rng, self.pool(), n).into_vec(),
            Strategy::Length | Strategy::Perplexity | Strategy::Entropy => {
                let start = ((round - 1) * n) % self.pool();
                (0..n)
                    .map(|k| self.order[(start + k) % self.pool()])
                    .collect()
            }
        };
        let picks = chosen
            .iter()
            .enumerate()
            .map(|(r, &i)| Pick {
                index: i,
                score: self.scores[i].unwrap_or(0.0),
                rank: r + 1,
                seen: self.times_selected[i] > 0,
            })
            .collect();
        if self.selected_round.len() != self.pool() {
            self.selected_round = vec![0; self.pool()];
        }
        for &i in &chosen {
            self.times_selected[i] += 1;
            self.selected_round[i] = round;
        }
        picks
    }

    /// Draws `n` of `candidates` without replacement, weights exp(score / T) (Gumbel top-k).
    fn soft_sample(&self, candidates: &[usize], n: usize, rng: &mut StdRng) -> Vec<usize> {
        let t = self.cfg.soft_temperature;
        let mut keyed: Vec<(f64, usize)> = candidates
            .iter()
            .map(|&i| {
                let u: f64 = rng.random_range(1e-12..1.0);
                (self.scores[i].unwrap_or(0.0) / t - (-u.ln()).ln(), i)
            })
            .collect();
        keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        keyed.into_iter().take(n).map(|(_, i)| i).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(strategy: Strategy) -> CurriculumSection {
        CurriculumSection {
            strategy,
            ..Default::default()
        }
    }

    #[test]
    fn edco_keeps_the_highest_scores_and_can_drop_outliers() {
        let mut c = Curriculum::new(cfg(Strategy::Edco), 6, 2, 0);
        c.record(1, &[0, 1, 2, 3, 4, 5], &[0.1, 0.9, 0.5, 2.0, 0.7, 0.3]);
        let p = c.select(1);
        assert_eq!(p.iter().map(|p| p.index).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!((p[0].rank, p[0].seen, p[0].score), (1, false, 2.0));
        let mut c = Curriculum::new(
            CurriculumSection {
                drop_top_fraction: 0.2,
                ..cfg(Strategy::Edco)
            },
            6,
            2,
            0,
        );
        c.record(1, &[0, 1, 2, 3, 4, 5], &[0.1, 0.9, 0.5, 2.0, 0.7, 0.3]);
        assert_eq!(
            c.select(1).iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 4]
        );
        assert!(c.select(2).iter().all(|p| p.seen));
    }

    #[test]
    fn partial_rescoring_takes_the_stalest_first() {
        let mut c = Curriculum::new(
            CurriculumSection {
                rescore_fraction: 0.5,
                ..cfg(Strategy::Edco)
            },
            4,
            1,
            0,
        );
        assert_eq!(c.to_score(1), vec![0, 1, 2, 3]);
        c.record(1, &[0, 1, 2, 3], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(c.select(1)[0].index, 3);
        // The sample just trained on is re-scored first, then the stalest by index.
        assert_eq!(c.to_score(2), vec![0, 3]);
        c.record(2, &[0, 3], &[5.0, 0.0]);
        assert_eq!(c.select(2)[0].index, 0);
        assert_eq!(c.to_score(3), vec![0, 1]);
        c.record(3, &[0, 1], &[0.5, 0.0]);
        assert_eq!(c.to_score(4), vec![2, 3]);
        assert_eq!(c.select(3)[0].index, 2);
    }

    #[test]
    fn static_orders_walk_the_pool_and_random_is_seeded() {
        let mut c = Curriculum::new(cfg(Strategy::Length), 5, 2, 0);
        c.set_lengths(&[50, 10, 40, 20, 30]);
        assert_eq!(
            c.select(1).iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(
            c.select(2).iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![4, 2]
        );
        assert_eq!(
            c.select(3).iter().map(|p| p.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let mut p = Curriculum::new(cfg(Strategy::Perplexity), 3, 1, 0);
        assert!(p.needs_model_scores(1));
        p.record(1, &[0, 1, 2], &[3.0, 1.0, 2.0]);
        assert!(!p.needs_model_scores(2));
        assert_eq!(p.select(1)[0].index, 1);
        let mut a = Curriculum::new(cfg(Strategy::Random), 100, 10, 7);
        let mut b = Curriculum::new(cfg(Strategy::Random), 100, 10, 7);
        assert_eq!(a.select(1), b.select(1));
        assert_ne!(a.select(2), a.select(3));
    }

    #[test]
    fn soft_selection_prefers_high_scores_without_replacement() {
        let mut hits = 0;
        for seed in 0..200 {
            let mut c = Curriculum::new(
                CurriculumSection {
                    soft_temperature: 0.5,
                    ..cfg(Strategy::Edco)
                },
                4,
                2,
                seed,
            );
            c.record(1, &[0, 1, 2, 3], &[0.0, 0.0, 3.0, 0.0]);
            let p = c.select(1);
            assert_ne!(p[0].index, p[1].index);
            hits += usize::from(p.iter().any(|p| p.index == 2));
        }
        assert!(hits > 190, "{hits}");
    }
}
