//! Batched generation for scoring and rollouts: left-padded prompts, a KV cache owned by the call,
//! greedy or temperature / top-k / top-p sampling with one seeded RNG per prompt (so a prompt's
//! result does not depend on its batch), EOS stopping with finished rows dropped from the batch,
//! and per generated position the exact full-vocabulary entropy and the chosen token's
//! log-probability, both from the raw logits (before temperature and top-p).

use super::{Batch, Decoder, LayerCache};
use candle_core::{DType, IndexOp, Result, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;

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

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub eos_token_ids: Vec<u32>,
    pub pad_id: u32,
    /// Also return the full log-softmax at every generated position (memory: V floats each).
    pub keep_log_probs: bool,
    /// Completions per prompt; they share the prompt's prefill and KV cache prefix.
    pub samples_per_prompt: usize,
}

/// A prompt and the seed of its own sampling stream.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub seed: u64,
}

/// One prompt's completion; all vectors have one entry per generated token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Shannon entropy (nats) of the next-token distribution from the raw logits.
    pub entropies: Vec<f32>,
    /// log p(chosen token) under the raw logits.
    pub token_log_probs: Vec<f32>,
    /// Whether an EOS token ended it (it is included in `tokens`).
    pub finished: bool,
    pub log_probs: Option<Vec<Vec<f32>>>,
}

/// Log-partition, entropy and log-softmax helpers over one row of raw logits.
pub struct RowStats {
    pub log_z: f32,
    pub entropy: f32,
}

pub fn row_stats(logits: &[f32]) -> RowStats {
    let max = super::cpu_exp::max(logits);
    let (sum, weighted) = super::cpu_exp::exp_moments(logits, max);
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

/// Generates `samples_per_prompt` completions for every prompt, prompt-major: completion `k` of
/// prompt `i` is at `i * samples_per_prompt + k` and samples with seed `seed::of_sample(seed_i, k)`.
pub fn generate(
    model: &Decoder,
    prompts: &[Prompt],
    opts: &GenerateOptions,
) -> Result<Vec<Generation>> {
    let n = opts.samples_per_prompt.max(1);
    let mut out: Vec<Generation> = vec![Generation::default(); prompts.len() * n];
    if prompts.is_empty() || opts.max_new_tokens == 0 {
        return Ok(out);
    }
    if let Some(p) = prompts.iter().position(|p| p.ids.is_empty()) {
        candle_core::bail!("prompt {p} is empty");
    }
    if opts.keep_log_probs {
        out.iter_mut().for_each(|g| g.log_probs = Some(Vec::new()));
    }
    let device = model.device().clone();
    let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let batch = Batch::left_padded(&rows, opts.pad_id, &device)?;
    let (mut logits, mut caches) = prefill(model, &batch)?;
    // The keys a row can reach: its padded prompt and every new token but the last (which is
    // sampled, never fed back).
    let steps = batch.ids.dim(1)? + opts.max_new_tokens - 1;
    caches.iter_mut().for_each(|c| c.reserve(steps));

    // Per batch row, for the rows still generating: output index, sampling stream, key mask and
    // next position.
    let mut active: Vec<usize> = (0..out.len()).collect();
    let mut rngs: Vec<StdRng> = active
        .iter()
        .map(|&o| StdRng::seed_from_u64(crate::seed::of_sample(prompts[o / n].seed, o % n)))
        .collect();
    let mut key_mask: Vec<Vec<u8>> = active.iter().map(|&o| batch.mask[o / n].clone()).collect();
    let mut next_pos: Vec<u32> = active.iter().map(|&o| rows[o / n].len() as u32).collect();
    if n > 1 {
        // Every completion of a prompt continues from the same prefill.
        let idx = Tensor::new(
            active.iter().map(|&o| (o / n) as u32).collect::<Vec<_>>(),
            &device,
        )?;
        logits = logits.index_select(&idx, 0)?;
        select_rows(&mut caches, &idx)?;
    }

    for step in 0..opts.max_new_tokens {
        let rows_logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let picks: Vec<(u32, f32, f32, Option<Vec<f32>>)> = rows_logits
            .into_par_iter()
            .zip(rngs.par_iter_mut())
            .map(|(row, rng)| {
                let stats = row_stats(&row);
                let token = sample(&row, opts.sampling, rng);
                let lp = row[token as usize] - stats.log_z;
                let full = opts
                    .keep_log_probs
                    .then(|| row.iter().map(|x| x - stats.log_z).collect());
                (token, stats.entropy, lp, full)
            })
            .collect();
        let mut keep = Vec::with_capacity(active.len());
        for (row, (token, entropy, lp, full)) in picks.into_iter().enumerate() {
            let g = &mut out[active[row]];
            g.tokens.push(token);
            g.entropies.push(entropy);
            g.token_log_probs.push(lp);
            if let (Some(all), Some(full)) = (g.log_probs.as_mut(), full) {
                all.push(full);
            }
            if opts.eos_token_ids.contains(&token) {
                g.finished = true;
            } else {
                keep.push(row);
            }
        }
        // Nothing left to generate: no forward pass for logits nobody reads.
        if keep.is_empty() || step + 1 == opts.max_new_tokens {
            break;
        }
        if keep.len() < active.len() {
            // Finished rows stop costing work.
            select_rows(
                &mut caches,
                &Tensor::new(keep.iter().map(|&r| r as u32).collect::<Vec<_>>(), &device)?,
            )?;
            active = keep.iter().map(|&r| active[r]).collect();
            key_mask = keep
                .iter()
                .map(|&r| std::mem::take(&mut key_mask[r]))
                .collect();
            next_pos = keep.iter().map(|&r| next_pos[r]).collect();
            let mut old: Vec<Option<StdRng>> = rngs.into_iter().map(Some).collect();
            rngs = keep.iter().filter_map(|&r| old[r].take()).collect();
        }
        let last: Vec<u32> = active
            .iter()
            .map(|&o| *out[o].tokens.last().unwrap_or(&0))
            .collect();
        let rows_left = active.len();
        key_mask.iter_mut().for_each(|m| m.push(1));
        let ids = Tensor::from_vec(last, (rows_left, 1), &device)?;
        let positions = Tensor::from_vec(next_pos.clone(), (rows_left, 1), &device)?;
        next_pos.iter_mut().for_each(|p| *p += 1);
        let hidden = model.step(&ids, &positions, &key_mask, &mut caches)?;
        logits = model.logits(&hidden.squeeze(1)?)?;
    }
    Ok(out)
}

/// Prompt tokens per prefill chunk: the batch's prompts go through the model a few rows at a
/// time, so the activations stay small enough for the allocator to reuse (and the caches to
/// hold) instead of being mapped and zeroed afresh by the kernel for every layer.
const PREFILL_CHUNK_TOKENS: usize = 2048;

/// Runs the prompts through the model: last-position logits (B, V) and the filled caches.
fn prefill(model: &Decoder, batch: &Batch) -> Result<(Tensor, Vec<LayerCache>)> {
    let (b, t) = batch.ids.dims2()?;
    let per_chunk = (PREFILL_CHUNK_TOKENS / t).clamp(1, b);
    let mut logits = Vec::new();
    let mut chunks: Vec<Vec<LayerCache>> = Vec::new();
    for start in (0..b).step_by(per_chunk) {
        let n = per_chunk.min(b - start);
        let mut caches = model.new_cache();
        let hidden = model.step(
            &batch.ids.narrow(0, start, n)?,
            &batch.positions.narrow(0, start, n)?,
            &batch.mask[start..start + n],
            &mut caches,
        )?;
        logits.push(model.logits(&hidden.i((.., t - 1, ..))?)?);
        chunks.push(caches);
    }
    if chunks.len() == 1 {
        return Ok((logits.remove(0), chunks.remove(0)));
    }
    let layers = chunks[0].len();
    let caches = (0..layers)
        .map(|layer| {
            let part = |f: fn(&LayerCache) -> Option<&Tensor>| -> Result<Tensor> {
                let parts = chunks
                    .iter()
                    .map(|c| {
                        f(&c[layer]).ok_or_else(|| {
                            candle_core::Error::Msg(format!("prefill left layer {layer} uncached"))
                        })
                    })
                    .collect::<Result<Vec<&Tensor>>>()?;
                Tensor::cat(&parts, 0)
            };
            Ok(LayerCache::new(part(LayerCache::k)?, part(LayerCache::v)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((Tensor::cat(&logits, 0)?, caches))
}

/// Keeps (or repeats) the batch rows `idx` of every layer's cache.
fn select_rows(caches: &mut [LayerCache], idx: &Tensor) -> Result<()> {
    caches.iter_mut().try_for_each(|c| c.select_rows(idx))
}

#[cfg(test)]
mod tests {
    use super::*;

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
