//! GRPO (group relative policy optimization), following TRL's `GRPOTrainer` where the meaning is
//! the same (names: num_generations, epsilon, epsilon_high, beta, scale_rewards, num_iterations):
//! G completions per prompt from the current policy; rule-based rewards; advantages normalised
//! within each group, (r - mean) / (std + 1e-4) with the unbiased std, or only centred; the
//! clipped surrogate max(-A r, -A clip(r, 1 - eps, 1 + eps_high)) plus beta times the k3
//! estimator of KL(policy || reference), averaged over every completion token of the step.
//! With LoRA the reference is the base with adapters off (no extra memory); with full
//! fine-tuning it is a frozen copy loaded at the start.
//! A round's selection is cycled through `prompts_per_step` prompts at a time for
//! `steps_per_round` steps, each a batch of rollouts and `num_iterations` updates on it.
//! Departure from the EDCO paper's runs: rewards are verifiable by rule, no LLM judge.

use super::method::{Method, StepInput, StepReport};
use super::optim::{AdamW, GradAccumulator};
use crate::config::{GrpoSection, Settings};
use crate::data::Sample;
use crate::data::tokenize::{Lengths, Tokenized, tokenize_prompt};
use crate::model::generate::{GenerateOptions, Prompt, generate};
use crate::model::io::{Loaded, load};
use crate::model::layers::Mode;
use crate::model::sampling::Sampling;
use crate::model::{Decoder, Trainable};
use crate::response::response_token_log_probs;
use crate::reward::{Rule, check};
use crate::seed;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoParams {
    pub num_generations: usize,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub epsilon: f64,
    pub epsilon_high: f64,
    pub beta: f64,
    pub scale_rewards: bool,
    pub num_iterations: usize,
    /// Sequences per forward/backward pass (memory bound).
    pub micro_batch: usize,
    pub max_grad_norm: f64,
    pub pad_id: u32,
}

/// One group's completions, rewards and advantages: the typed rollout record.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// (G) completions, each prompt + completion tokens.
    pub sequences: Vec<Tokenized>,
    /// (G) rewards.
    pub rewards: Vec<f64>,
    /// (G) group-normalised advantages.
    pub advantages: Vec<f64>,
    /// (G) mean policy entropy over each completion's positions (nats).
    pub entropies: Vec<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpoStats {
    pub loss: f64,
    pub reward_mean: f64,
    pub reward_std: f64,
    /// Share of groups whose rewards are all equal (no learning signal).
    pub zero_std_fraction: f64,
    pub kl: f64,
    pub clip_fraction: f64,
    pub completion_length: f64,
    pub entropy: f64,
    pub grad_norm: f64,
    pub tokens: usize,
}

/// Group advantages: (r - mean) / (std + 1e-4) with the unbiased std, or r - mean.
pub fn advantages(rewards: &[f64], scale: bool) -> Vec<f64> {
    let n = rewards.len() as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let var = if rewards.len() > 1 {
        rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let denom = if scale { var.sqrt() + 1e-4 } else { 1.0 };
    rewards.iter().map(|r| (r - mean) / denom).collect()
}

/// Generates G completions per prompt and rewards them; `reward(prompt_index, completion)`.
pub fn rollout(
    model: &Decoder,
    prompts: &[Prompt],
    eos_token_ids: &[u32],
    p: &GrpoParams,
    reward: &mut dyn FnMut(usize, &[u32]) -> Result<f64>,
) -> Result<Vec<Rollout>> {
    let opts = GenerateOptions {
        max_new_tokens: p.max_new_tokens,
        sampling: p.sampling,
        eos_token_ids: eos_token_ids.to_vec(),
        pad_id: p.pad_id,
        keep_log_probs: false,
        keep_first_log_probs: false,
        samples_per_prompt: p.num_generations,
    };
    let gens = generate(model, prompts, &opts)?;
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let group = &gens[i * p.num_generations..(i + 1) * p.num_generations];
        for g in group {
            g.check(format_args!("a rollout of prompt {} of the step", i + 1))?;
        }
        let rewards = group
            .iter()
            .map(|g| reward(i, &g.tokens))
            .collect::<Result<Vec<_>>>()?;
        out.push(Rollout {
            sequences: group
                .iter()
                .map(|g| Tokenized {
                    prompt: prompt.ids.clone(),
                    response: g.tokens.clone(),
                    ..Default::default()
                })
                .collect(),
            advantages: advantages(&rewards, p.scale_rewards),
            rewards,
            entropies: group
                .iter()
                .map(|g| {
                    g.entropies.iter().map(|&h| h as f64).sum::<f64>()
                        / g.entropies.len().max(1) as f64
                })
                .collect(),
        });
    }
    Ok(out)
}

/// Log-probabilities of the completion tokens under `model` in `mode`, without a graph.
fn detached_log_probs(
    model: &Decoder,
    seqs: &[Tokenized],
    pad_id: u32,
    mode: Mode,
    micro: usize,
) -> Result<Vec<Tensor>> {
    seqs.chunks(micro.max(1))
        .map(|c| Ok(response_token_log_probs(model, c, pad_id, mode)?.detach()))
        .collect()
}

/// The per-token loss of a micro-batch and what it logs.
pub struct TokenTerms {
    /// (n_tokens,): the clipped surrogate, plus beta times the k3 KL when there is a reference.
    pub per_token: Tensor,
    /// Tokens whose ratio left the trust region on the side where clipping binds (TRL's
    /// "region" clip ratio): r < 1 - epsilon with A < 0, or r > 1 + epsilon_high with A > 0.
    pub clipped: f64,
    /// Sum over tokens of the k3 estimate exp(ref - lp) - (ref - lp) - 1 (0 without a reference).
    pub kl_sum: f64,
}

/// GRPO's loss terms per completion token. `lp`: the policy's log-probabilities (with a graph),
/// `old_lp`: those the completions were sampled with, `ref_lp`: the reference's, `adv`: each
/// token's advantage (its sequence's).
pub fn token_terms(
    lp: &Tensor,
    old_lp: &Tensor,
    ref_lp: Option<&Tensor>,
    adv: &[f32],
    p: &GrpoParams,
) -> Result<TokenTerms> {
    let a = Tensor::from_slice(adv, lp.dims1()?, lp.device())?;
    let ratio = (lp - old_lp)?.exp()?;
    let clipped_ratio = ratio.clamp(1.0 - p.epsilon, 1.0 + p.epsilon_high)?;
    let mut per_token = ratio
        .broadcast_mul(&a)?
        .minimum(&clipped_ratio.broadcast_mul(&a)?)?
        .neg()?;
    let mut kl_sum = 0.0;
    if let Some(ref_lp) = ref_lp {
        let d = (ref_lp - lp)?;
        let kl = ((d.exp()? - &d)? - 1.0)?;
        kl_sum = kl.sum_all()?.to_scalar::<f32>()? as f64;
        per_token = (per_token + (kl * p.beta)?)?;
    }
    let ratio_v: Vec<f32> = ratio.to_vec1()?;
    let clipped = ratio_v
        .iter()
        .zip(adv)
        .filter(|&(&r, &a)| {
            let r = r as f64;
            (r < 1.0 - p.epsilon && a < 0.0) || (r > 1.0 + p.epsilon_high && a > 0.0)
        })
        .count() as f64;
    Ok(TokenTerms {
        per_token,
        clipped,
        kl_sum,
    })
}

/// Policy-gradient updates on one batch of rollouts: `num_iterations` optimizer steps against
/// the log-probabilities the rollouts were sampled with.
pub fn train_on(
    model: &Decoder,
    reference: Option<&Decoder>,
    opt: &mut AdamW,
    rollouts: &[Rollout],
    lr: f64,
    p: &GrpoParams,
    dropout_seed: u64,
) -> Result<GrpoStats> {
    // Sequences with empty completions carry no tokens to score.
    let mut seqs = Vec::new();
    let mut adv = Vec::new();
    for r in rollouts {
        for (s, a) in r.sequences.iter().zip(&r.advantages) {
            if !s.response.is_empty() {
                seqs.push(s.clone());
                adv.push(*a);
            }
        }
    }
    let rewards: Vec<f64> = rollouts
        .iter()
        .flat_map(|r| r.rewards.iter().copied())
        .collect();
    let n = rewards.len() as f64;
    let reward_mean = rewards.iter().sum::<f64>() / n.max(1.0);
    let mut stats = GrpoStats {
        reward_mean,
        reward_std: (rewards
            .iter()
            .map(|r| (r - reward_mean).powi(2))
            .sum::<f64>()
            / n.max(1.0))
        .sqrt(),
        zero_std_fraction: rollouts
            .iter()
            .filter(|r| r.rewards.iter().all(|&x| x == r.rewards[0]))
            .count() as f64
            / rollouts.len().max(1) as f64,
        completion_length: rollouts
            .iter()
            .flat_map(|r| r.sequences.iter().map(|s| s.response.len() as f64))
            .sum::<f64>()
            / n.max(1.0),
        entropy: rollouts
            .iter()
            .flat_map(|r| r.entropies.iter().copied())
            .sum::<f64>()
            / n.max(1.0),
        ..Default::default()
    };
    let total: usize = seqs.iter().map(|s| s.response.len()).sum();
    stats.tokens = total;
    if total == 0 {
        return Ok(stats);
    }
    let (micro, pad_id) = (p.micro_batch.max(1), p.pad_id);
    // With one iteration the sampling policy is the current one: TRL then uses the detached
    // log-probs of the same forward, so the ratio is exactly 1 (and dropout cannot bias it).
    let old = if p.num_iterations > 1 {
        Some(detached_log_probs(
            model,
            &seqs,
            pad_id,
            Mode::Detached,
            micro,
        )?)
    } else {
        None
    };
    let reference_lp = match (p.beta > 0.0, reference) {
        (false, _) => None,
        (true, Some(r)) => Some(detached_log_probs(r, &seqs, pad_id, Mode::Detached, micro)?),
        (true, None) => Some(detached_log_probs(
            model,
            &seqs,
            pad_id,
            Mode::BaseOnly,
            micro,
        )?),
    };
    let iterations = p.num_iterations.max(1);
    for it in 0..iterations {
        let mut acc = GradAccumulator::new(model.vars().len());
        let (mut loss_sum, mut kl_sum, mut clipped) = (0f64, 0f64, 0f64);
        for (k, chunk) in seqs.chunks(micro).enumerate() {
            let mode = Mode::Train {
                seed: dropout_seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((it * 10_000 + k) as u64),
            };
            let lp = response_token_log_probs(model, chunk, pad_id, mode)?; // (n_tokens,)
            // Per-token advantage of the sequence it belongs to.
            let a: Vec<f32> = chunk
                .iter()
                .zip(&adv[k * micro..])
                .flat_map(|(s, &a)| std::iter::repeat_n(a as f32, s.response.len()))
                .collect();
            let old_lp = match &old {
                Some(old) => old[k].clone(),
                None => lp.detach(),
            };
            let terms = token_terms(&lp, &old_lp, reference_lp.as_ref().map(|r| &r[k]), &a, p)?;
            kl_sum += terms.kl_sum;
            clipped += terms.clipped;
            let per_token = terms.per_token;
            let loss = (per_token.sum_all()? / total as f64)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            acc.add(model.vars(), &loss.backward()?)?;
        }
        let (grads, norm) = acc.finish(model.vars(), p.max_grad_norm)?;
        opt.apply(&grads, lr)?;
        // One line per rollout batch: the means over its updates (the first update's ratio is
        // exactly 1, so its clip fraction alone would always read 0).
        stats.loss += loss_sum / iterations as f64;
        stats.kl += kl_sum / total as f64 / iterations as f64;
        stats.clip_fraction += clipped / total as f64 / iterations as f64;
        stats.grad_norm += norm / iterations as f64;
    }
    Ok(stats)
}

/// The GRPO trainer of the round loop.
pub struct Grpo {
    cfg: GrpoSection,
    /// How a completion's reply is checked against its sample's answer (1 if right, else 0).
    answer_check: Rule,
    params: GrpoParams,
    /// The KL reference under full fine-tuning: a frozen copy of the starting model (under
    /// LoRA the reference is the base with its adapters off).
    reference: Option<Decoder>,
}

impl Grpo {
    pub fn new(cfg: &GrpoSection, answer_check: Rule) -> Result<Self> {
        let params = GrpoParams {
            num_generations: cfg.num_generations,
            max_new_tokens: cfg.max_completion_length,
            sampling: cfg.sampling()?,
            epsilon: cfg.epsilon,
            epsilon_high: cfg.epsilon_high,
            beta: cfg.beta,
            scale_rewards: cfg.scale_rewards,
            num_iterations: cfg.num_iterations,
            micro_batch: cfg.micro_batch,
            max_grad_norm: cfg.max_grad_norm,
            // The tokenizer's, set at each step.
            pad_id: 0,
        };
        Ok(Self {
            cfg: cfg.clone(),
            answer_check,
            params,
            reference: None,
        })
    }
}

impl Method for Grpo {
    fn section(&self) -> &'static str {
        "grpo"
    }

    fn check_pool(&self, pool: &[Sample], path: &Path) -> Result<()> {
        let rule = self.answer_check;
        if let Some(s) = pool.iter().find(|s| check(rule, s, "").is_none()) {
            bail!(
                "{}: sample `{}` has no `answer` that data.answer_check = {} can verify",
                path.display(),
                s.id,
                serde_json::to_string(&rule)?
            );
        }
        Ok(())
    }

    fn steps_per_round(&self, _per_round: usize) -> usize {
        self.cfg.steps_per_round
    }

    fn describe_step(&self) -> String {
        format!(
            "{} prompts x {} completions per step",
            self.cfg.prompts_per_step, self.cfg.num_generations
        )
    }

    /// The prompt only; completions come from the policy.
    fn tokenize(
        &self,
        tok: &Tokenizer,
        sample: &Sample,
        template_args: &serde_json::Map<String, serde_json::Value>,
        lengths: Lengths,
    ) -> Result<Tokenized> {
        // At least one token of room for the completion within `max_length` (the context).
        let limit = lengths
            .prompt_limit()
            .min(lengths.max_length.saturating_sub(1))
            .max(1);
        let (prompt, cut) = tokenize_prompt(tok, &sample.messages, template_args, limit)
            .with_context(|| format!("sample `{}`", sample.id))?;
        Ok(Tokenized {
            prompt,
            cut,
            ..Default::default()
        })
    }

    fn prepare(&mut self, settings: &Settings, _loaded: &Loaded) -> Result<()> {
        if self.cfg.beta > 0.0 && settings.trainable == Trainable::Full {
            let opts = settings.model.load_options(Trainable::Frozen, 0)?;
            self.reference = Some(load(&settings.model.source, &opts)?.model);
        }
        Ok(())
    }

    fn generates(&self) -> bool {
        true
    }

    fn steps(&self, shuffled: &mut dyn FnMut(usize) -> Vec<usize>) -> Vec<Vec<usize>> {
        let order = shuffled(0);
        let n = self.cfg.prompts_per_step;
        (0..self.cfg.steps_per_round)
            .map(|k| (0..n).map(|j| order[(k * n + j) % order.len()]).collect())
            .collect()
    }

    fn step(
        &self,
        input: &StepInput,
        items: &[usize],
        opt: &mut AdamW,
        lr: f64,
        step_seed: u64,
    ) -> Result<StepReport> {
        let (model, tok) = (&input.loaded.model, &input.loaded.tokenizer);
        let p = GrpoParams {
            pad_id: tok.pad_id(),
            ..self.params
        };
        let prompts: Vec<Prompt> = items
            .iter()
            .enumerate()
            .map(|(j, &i)| Prompt {
                ids: input.pairs[i].prompt.clone(),
                seed: seed::mix(&[step_seed, j as u64]),
            })
            .collect();
        let rollouts = rollout(
            model,
            &prompts,
            &input.loaded.eos_token_ids,
            &p,
            &mut |j, completion| {
                let reply = tok.decode(completion, true)?;
                let right = check(self.answer_check, &input.pool[items[j]], &reply) == Some(true);
                Ok(if right { 1.0 } else { 0.0 })
            },
        )?;
        let stats = train_on(
            model,
            self.reference.as_ref(),
            opt,
            &rollouts,
            lr,
            &p,
            step_seed,
        )?;
        Ok(StepReport {
            line: serde_json::to_value(&stats)?,
            loss: stats.loss,
            tokens: stats.tokens,
            progress: format!("reward {:.2}", stats.reward_mean),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_advantages_have_zero_mean_and_unit_scale() {
        let a = advantages(&[1.0, 0.0, 0.0, 1.0], true);
        assert!(a.iter().sum::<f64>().abs() < 1e-12);
        // unbiased std of [1, 0, 0, 1] is sqrt(1/3)
        let expected = 0.5 / (1.0f64 / 3.0).sqrt();
        assert!((a[0] - expected).abs() < 1e-3, "{}", a[0]);
        assert_eq!(advantages(&[1.0, 1.0, 1.0], true), vec![0.0, 0.0, 0.0]);
        assert_eq!(advantages(&[1.0, 0.0], false), vec![0.5, -0.5]);
    }

    /// The surrogate, the k3 KL, the clip count and their gradients on three tokens, by hand.
    #[test]
    fn token_terms_match_the_hand_computed_loss() {
        use candle_core::{Device, Var};
        let ln = |x: f32| x.ln();
        let dev = Device::Cpu;
        let lp = Var::from_slice(&[ln(0.5), ln(0.2), ln(0.9)], 3, &dev).unwrap();
        let old = Tensor::new(&[ln(0.4), ln(0.4), ln(0.9)], &dev).unwrap();
        let reference = Tensor::new(&[ln(0.5), ln(0.1), ln(0.45)], &dev).unwrap();
        let p = GrpoParams {
            num_generations: 2,
            max_new_tokens: 1,
            sampling: Sampling::Greedy,
            epsilon: 0.2,
            epsilon_high: 0.28,
            beta: 0.1,
            scale_rewards: true,
            num_iterations: 2,
            micro_batch: 1,
            max_grad_norm: 0.0,
            pad_id: 0,
        };
        let t = token_terms(
            lp.as_tensor(),
            &old,
            Some(&reference),
            &[1.0, -1.0, 2.0],
            &p,
        )
        .unwrap();
        // Ratios 1.25, 0.5, 1. Token 0 stays inside [0.8, 1.28]: -1.25. Token 1 (A < 0) is
        // clipped to 0.8: -min(-0.5, -0.8) = 0.8. Token 2: -2. The k3 KL is 0 for token 0 and
        // 0.5 - ln 0.5 - 1 = 0.19315 for tokens 1 and 2 (ref / policy = 0.5), times beta.
        let k3 = 0.5 - 0.5f64.ln() - 1.0;
        let want = [-1.25, 0.8 + 0.1 * k3, -2.0 + 0.1 * k3];
        let got: Vec<f32> = t.per_token.to_vec1().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        assert_eq!(t.clipped, 1.0);
        assert!((t.kl_sum - 2.0 * k3).abs() < 1e-5, "{}", t.kl_sum);
        // d/dlp: -A r where the ratio is inside (0 where the clip binds), plus
        // beta (1 - ref / policy) from the KL.
        let g = t.per_token.sum_all().unwrap().backward().unwrap();
        let g: Vec<f32> = g.get(&lp).unwrap().to_vec1().unwrap();
        let want = [-1.25, 0.05, -2.0 + 0.05];
        for (g1, w) in g.iter().zip(want) {
            assert!((*g1 as f64 - w).abs() < 1e-5, "{g:?} vs {want:?}");
        }
        // A ratio above 1 + epsilon_high counts only with a positive advantage.
        let far = Tensor::new(&[ln(0.9), ln(0.9)], &dev).unwrap();
        let base = Tensor::new(&[ln(0.5), ln(0.5)], &dev).unwrap();
        let t = token_terms(&far, &base, None, &[1.0, -1.0], &p).unwrap();
        assert_eq!((t.clipped, t.kl_sum), (1.0, 0.0));
    }
}
