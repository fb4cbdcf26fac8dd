//! Batched generation for scoring and rollouts: left-padded prompts, a KV cache owned by the call,
//! greedy or temperature / top-k / top-p sampling with one seeded RNG per prompt (so a prompt's
//! result does not depend on its batch), EOS stopping with finished rows dropped from the batch,
//! and per generated position the exact full-vocabulary entropy and the chosen token's
//! log-probability, both from the raw logits (before temperature and top-p).

use super::sampling::{Sampling, row_stats, sample};
use super::{Batch, Decoder, LayerCache};
use candle_core::{DType, IndexOp, Result, Tensor};
use rand::{SeedableRng, rngs::StdRng};
use rayon::prelude::*;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub eos_token_ids: Vec<u32>,
    pub pad_id: u32,
    /// Also return the full log-softmax at every generated position (memory: V floats each).
    pub keep_log_probs: bool,
    /// Only the first of them: the next-token distribution right after the prompt (a
    /// multiple-choice letter's likelihood is read from it), V floats per row. Implied by
    /// `keep_log_probs`.
    pub keep_first_log_probs: bool,
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
    /// Whether it stopped because the model's logits were not finite (NaN or +inf) at its last
    /// position; callers refuse such a result ([`Generation::check`]).
    pub non_finite: bool,
    /// The full log-softmax per generated position (`keep_log_probs`), or of the first only
    /// (`keep_first_log_probs`).
    pub log_probs: Option<Vec<Vec<f32>>>,
}

/// The error of a result computed from non-finite logits: `what` names the sample or prompt,
/// `token` the generated position. A trainer tells it apart (by type) to report a diverged run.
#[derive(Debug)]
pub struct NonFinite {
    pub what: String,
    pub token: Option<usize>,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: the model's logits are not finite (NaN or infinity)",
            self.what
        )?;
        if let Some(t) = self.token {
            write!(f, " at generated token {t}")?;
        }
        write!(
            f,
            ": its weights hold NaN or infinity, or bf16 overflowed (try the f32 dtype)"
        )
    }
}

impl std::error::Error for NonFinite {}

impl Generation {
    /// Refuses a generation that stopped at non-finite logits, naming `what` was generated.
    pub fn check(&self, what: impl std::fmt::Display) -> anyhow::Result<()> {
        if self.non_finite {
            return Err(NonFinite {
                what: what.to_string(),
                token: Some(self.tokens.len()),
            }
            .into());
        }
        Ok(())
    }
}

/// Generates `samples_per_prompt` completions for every prompt, prompt-major: completion `k` of
/// prompt `i` is at `i * samples_per_prompt + k` and samples with seed `seed::of_sample(seed_i, k)`.
pub fn generate(
    model: &Decoder,
    prompts: &[Prompt],
    opts: &GenerateOptions,
) -> Result<Vec<Generation>> {
    generate_with_progress(model, prompts, opts, &mut |_| {})
}

/// New tokens a prompt of `len` tokens may generate within a context of `context`: `wanted`,
/// or fewer when the prompt leaves less room.
pub fn room(context: usize, len: usize, wanted: usize) -> usize {
    wanted.min(context.saturating_sub(len))
}

/// [`generate`], calling `progress(step)` after every generated position. No row goes past the
/// model's context (`max_position_embeddings`): each stops there, unfinished ([`room`]); a
/// prompt that fills the context is an error.
pub fn generate_with_progress(
    model: &Decoder,
    prompts: &[Prompt],
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Generation>> {
    let n = opts.samples_per_prompt.max(1);
    let mut out: Vec<Generation> = vec![Generation::default(); prompts.len() * n];
    if prompts.is_empty() || opts.max_new_tokens == 0 {
        return Ok(out);
    }
    if let Some(p) = prompts.iter().position(|p| p.ids.is_empty()) {
        candle_core::bail!("prompt {p} is empty");
    }
    if opts.keep_log_probs || opts.keep_first_log_probs {
        out.iter_mut().for_each(|g| g.log_probs = Some(Vec::new()));
    }
    let context = model.config.max_position_embeddings;
    if let Some(p) = prompts.iter().position(|p| p.ids.len() >= context) {
        candle_core::bail!(
            "prompt {} of the batch is {} tokens: the model's context ({context} tokens, \
             max_position_embeddings) leaves no room to generate",
            p + 1,
            prompts[p].ids.len()
        );
    }
    // Each row's own limit, and the longest of them for the loop.
    let limits: Vec<usize> = prompts
        .iter()
        .map(|p| room(context, p.ids.len(), opts.max_new_tokens))
        .collect();
    let max_new_tokens = limits.iter().copied().max().unwrap_or(0);
    let device = model.device().clone();
    let rows: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
    let batch = Batch::left_padded(&rows, opts.pad_id, &device)?;
    let (mut logits, mut caches) = prefill(model, &batch)?;
    // The keys a row can reach: its padded prompt and every new token but the last (which is
    // sampled, never fed back).
    let steps = batch.ids.dim(1)? + max_new_tokens - 1;
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

    for step in 0..max_new_tokens {
        let keep_full = opts.keep_log_probs || (opts.keep_first_log_probs && step == 0);
        let rows_logits: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        let picks: Vec<(u32, f32, f32, Option<Vec<f32>>)> = rows_logits
            .into_par_iter()
            .zip(rngs.par_iter_mut())
            .map(|(row, rng)| {
                let stats = row_stats(&row);
                let token = sample(&row, opts.sampling, rng);
                let lp = row[token as usize] - stats.log_z;
                let full = keep_full.then(|| row.iter().map(|x| x - stats.log_z).collect());
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
            if entropy.is_nan() {
                g.non_finite = true;
            } else if opts.eos_token_ids.contains(&token) {
                g.finished = true;
            } else if g.tokens.len() < limits[active[row] / n] {
                keep.push(row);
            }
        }
        progress(step + 1);
        // Nothing left to generate: no forward pass for logits nobody reads.
        if keep.is_empty() || step + 1 == max_new_tokens {
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
