//! The trainable decoder shared by Qwen3 and Llama 3.x: plain structs built from named tensors
//! (Hugging Face names, so checkpoints load without renaming), a pure training forward over a
//! padded batch, and a cached step for generation whose cache the caller owns.
//! Reference: transformers' `modeling_qwen3.py` / `modeling_llama.py` (eager attention).

use super::Trainable;
use super::batch::Batch;
use super::block::{Attend, Block, Pass};
use super::builder::Builder;
use super::cache::LayerCache;
use super::config::ModelConfig;
use super::device::Attention;
use super::io::safetensors::WeightSource;
use super::kernels::decode::PackedCache;
use super::layers::{Linear, Mode, RmsNorm, Rope, causal_mask};
use super::products::{linear, matmul_layout};
use super::{lora, varlen};
use anyhow::Result as AnyResult;
use candle_core::{DType, Device, Result, Tensor, Var};

/// A Qwen3 or Llama 3.x causal LM.
pub struct Decoder {
    pub config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    /// The frozen head packed for decoding steps, made on first use.
    lm_head_packed: PackedCache,
    inv_freq: Tensor,
    pub(super) dtype: DType,
    pub(super) device: Device,
    pub(super) trainable: Trainable,
    /// Trainable variables with their checkpoint names (HF names, or PEFT's for adapters).
    pub(super) vars: Vec<(String, Var)>,
    /// The kernel inference passes attend with over packed rows; `None`: the composed
    /// attention (or the CPU's kernel). See `Mode::packed_attention`.
    varlen: Option<varlen::Kernel>,
}

/// `inv_freq` (head_dim / 2,) in f32, with Llama 3 frequency scaling when configured
/// (transformers' `_compute_llama3_parameters`).
fn inv_freq(cfg: &ModelConfig, device: &Device) -> Result<Tensor> {
    let d = cfg.head_dim;
    let mut freqs: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
        .collect();
    if let Some(s) = cfg.rope_scaling {
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor as f32;
        let high_wavelen = old / s.high_freq_factor as f32;
        let factor = s.factor as f32;
        for f in freqs.iter_mut() {
            let wavelen = 2.0 * std::f32::consts::PI / *f;
            if wavelen > low_wavelen {
                *f /= factor;
            } else if wavelen >= high_wavelen {
                let smooth = (old / wavelen - s.low_freq_factor as f32)
                    / (s.high_freq_factor - s.low_freq_factor) as f32;
                *f = (1.0 - smooth) * *f / factor + smooth * *f;
            }
        }
    }
    Tensor::new(freqs, device)
}

impl Decoder {
    /// Builds the model from named tensors. With `Trainable::Full` every parameter becomes a
    /// variable; with `Trainable::Lora` fresh adapters (A random, B zero) sit over a frozen base.
    pub fn new(
        config: ModelConfig,
        source: &WeightSource,
        dtype: DType,
        device: &Device,
        trainable: Trainable,
        seed: u64,
    ) -> AnyResult<Self> {
        let c = &config;
        let mut p = Builder {
            source,
            dtype,
            device,
            full: trainable == Trainable::Full,
            vars: Vec::new(),
        };
        let embed_tokens = p.get("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Block::new(&mut p, c, i))
            .collect::<AnyResult<Vec<_>>>()?;
        let norm = p.norm("model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            p.get("lm_head.weight", &[c.vocab_size, c.hidden_size])?
        };
        // A frozen head gets the matmul-friendly layout too (a second copy when tied: the
        // embedding lookup wants rows).
        let lm_head = if p.full {
            lm_head
        } else {
            matmul_layout(&lm_head)?
        };
        let vars = p.vars;
        let mut model = Self {
            inv_freq: inv_freq(c, device)?,
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_packed: Default::default(),
            dtype,
            device: device.clone(),
            trainable: Trainable::Frozen,
            vars,
            varlen: None,
        };
        model.trainable = trainable.clone();
        if let Trainable::Lora(lora) = trainable {
            lora::attach_fresh(&mut model, &lora, seed)?;
        }
        Ok(model)
    }

    /// Chooses the attention of inference passes (`Mode::Eval`: scoring, generation,
    /// evaluation, perplexity): `composed` (candle's ops, or the CPU's kernel in f32) or `flash`
    /// (FlashAttention-2 over packed rows, CUDA and bf16 in a `flash-attn` build). Training
    /// passes keep the composed attention (FlashAttention here has no backward), and so do the
    /// passes compared with them (`Mode::Detached`, `Mode::BaseOnly`).
    pub fn set_attention(&mut self, attention: Attention) -> AnyResult<()> {
        self.varlen = match attention {
            Attention::Composed => None,
            Attention::Flash => {
                if let Some(why) =
                    varlen::flash_unavailable(self.dtype, &self.device, self.config.head_dim)
                {
                    anyhow::bail!("attention `flash`: {why}");
                }
                varlen::flash_kernel()
            }
        };
        Ok(())
    }

    /// Sets the packed-rows kernel directly (tests hold the packed path to the others through
    /// the reference kernel on the CPU).
    #[cfg(test)]
    pub(crate) fn set_varlen_kernel(&mut self, kernel: Option<varlen::Kernel>) {
        self.varlen = kernel;
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn trainable(&self) -> &Trainable {
        &self.trainable
    }

    /// Drops the weights packed for decoding steps (one copy of each frozen weight), to free
    /// their memory while only training runs; the next decoding step packs them again.
    pub fn release_packed(&self) {
        self.lm_head_packed.release();
        for l in &self.layers {
            l.release_packed();
        }
    }

    /// Trainable variables with their checkpoint names.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Final hidden states (B, T, hidden) for a whole padded batch; no cache.
    pub fn hidden_states(&self, batch: &Batch, mode: Mode) -> Result<Tensor> {
        let mut caches: Vec<LayerCache> = (0..self.layers.len())
            .map(|_| LayerCache::default())
            .collect();
        self.run(
            &batch.ids,
            &batch.positions,
            &batch.mask,
            &mut caches,
            mode,
            false,
        )
    }

    /// Logits (B, T, V) at every position: the training forward.
    pub fn forward(&self, batch: &Batch, mode: Mode) -> Result<Tensor> {
        self.logits(&self.hidden_states(batch, mode)?)
    }

    /// Projects hidden states (..., hidden) onto the vocabulary.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear(hidden, &self.lm_head, None, &self.lm_head_packed)
    }

    /// One cached step of generation. `ids`, `positions`: (B, t) for the new tokens;
    /// `key_mask`: per row, 0/1 over all keys so far including the new ones.
    /// Returns final hidden states (B, t, hidden) and extends `caches`.
    pub fn step(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &[Vec<u8>],
        caches: &mut [LayerCache],
    ) -> Result<Tensor> {
        self.run(ids, positions, key_mask, caches, Mode::Eval, true)
    }

    pub fn new_cache(&self) -> Vec<LayerCache> {
        (0..self.layers.len())
            .map(|_| LayerCache::default())
            .collect()
    }

    /// The layers over `ids`, `positions` (B, T) with `key_mask` over all keys so far; returns
    /// the final hidden states (B, T, hidden).
    fn run(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &[Vec<u8>],
        caches: &mut [LayerCache],
        mode: Mode,
        keep_cache: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        // Inference passes with a packed-rows kernel gather the real tokens and attend over
        // them; in f32 on the CPU the blocked attention kernel runs (with its backward when
        // training); elsewhere the composed ops do.
        let attend = match self.varlen.filter(|_| mode.packed_attention()) {
            Some(kernel) => {
                Attend::Packed(varlen::Packing::new(key_mask, t, &self.device)?, kernel)
            }
            None if self.device.is_cpu() && self.dtype == DType::F32 => Attend::Cpu,
            None => Attend::Composed(causal_mask(key_mask, t, &self.device)?),
        };
        let pass = Pass {
            mode,
            rope: Rope::new(&self.inv_freq, positions, self.dtype)?,
            attend,
            key_mask,
            keep_cache,
        };
        let mut x = self
            .embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))?;
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            x = layer.forward(&x, &pass, cache, &self.config)?;
        }
        self.norm.forward(&x, mode.fused())
    }

    /// Every projection, with its HF module path, for adapters and merging.
    pub(super) fn linears_mut(&mut self) -> impl Iterator<Item = (String, &mut Linear)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, l)| {
            l.linears_mut()
                .map(|(name, lin)| (format!("model.layers.{i}.{name}"), lin))
        })
    }

    /// All base parameters by Hugging Face name (the head only when untied), for saving.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            l.named_parameters(&format!("model.layers.{i}"), &mut out);
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use crate::model::generate::{GenerateOptions, Prompt, generate};
    use crate::model::sampling::{self, Sampling};
    use crate::model::testing::{max_diff, tiny_model};

    fn tiny(arch: Arch) -> (tempfile::TempDir, Decoder) {
        tiny_model(arch, 5, DType::F32)
    }

    /// Generation over ragged prompts (left-padded; several samples per prompt sharing a
    /// prefill; rows ending at different steps and leaving the batch) attends through packed
    /// rows exactly as through the CPU's masked kernel: the packed path's gathers, scatter,
    /// cache layout and causal alignment are the CPU kernel's maths.
    #[test]
    fn packed_rows_generate_what_the_masked_kernel_generates() {
        for arch in [Arch::Qwen3, Arch::Llama] {
            let (_dir, mut model) = tiny(arch);
            let vocab = model.config.vocab_size as u32;
            // 700 tokens: the prefill goes two prompts at a time (`PREFILL_CHUNK_TOKENS`).
            let prompts: Vec<Prompt> = [3usize, 700, 1, 6]
                .iter()
                .enumerate()
                .map(|(i, &n)| Prompt {
                    ids: (0..n)
                        .map(|j| (7 + 31 * i as u32 + 13 * j as u32) % vocab)
                        .collect(),
                    seed: i as u64,
                })
                .collect();
            let opts = GenerateOptions {
                max_new_tokens: 12,
                sampling: Sampling::new(false, 1.0, 1.0, 0),
                eos_token_ids: (0..vocab / 5).collect(),
                pad_id: 0,
                keep_log_probs: false,
                keep_first_log_probs: false,
                samples_per_prompt: 2,
            };
            let masked = generate(&model, &prompts, &opts).unwrap();
            model.set_varlen_kernel(Some(varlen::reference));
            let packed = generate(&model, &prompts, &opts).unwrap();
            let lengths: Vec<usize> = masked.iter().map(|g| g.tokens.len()).collect();
            assert!(
                lengths.iter().any(|&n| n < 12) && lengths.iter().any(|&n| n > 2),
                "{arch:?}: rows should end at different steps: {lengths:?}"
            );
            for (i, (m, p)) in masked.iter().zip(&packed).enumerate() {
                assert_eq!(m.tokens, p.tokens, "{arch:?} completion {i}");
                for (a, b) in m.entropies.iter().zip(&p.entropies) {
                    assert!((a - b).abs() < 1e-4, "{arch:?} completion {i}: {a} vs {b}");
                }
            }
        }
    }

    /// A kernel that attends to nothing, to see which passes take the packed path.
    fn attends_to_nothing(
        q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _p: &varlen::Packing,
    ) -> Result<Tensor> {
        q.zeros_like()
    }

    /// A whole padded batch without a cache (evaluation, perplexity): the same hidden states at
    /// real positions. Training passes, and the passes compared with them (GRPO's old-policy
    /// and reference log-probs), never take the packed kernel.
    #[test]
    fn packed_rows_score_a_padded_batch_as_the_masked_kernel_does() {
        let (_dir, mut model) = tiny(Arch::Qwen3);
        let rows = vec![vec![5u32, 9, 2], vec![1, 2, 3, 4, 5, 6], vec![8]];
        let batch = Batch::left_padded(&rows, 0, &Device::Cpu).unwrap();
        let masked = model.hidden_states(&batch, Mode::Eval).unwrap();
        model.set_varlen_kernel(Some(varlen::reference));
        let packed = model.hidden_states(&batch, Mode::Eval).unwrap();
        let apart = [Mode::Train { seed: 0 }, Mode::Detached, Mode::BaseOnly];
        model.set_varlen_kernel(None);
        let without: Vec<Tensor> = apart
            .iter()
            .map(|&m| model.hidden_states(&batch, m).unwrap())
            .collect();
        model.set_varlen_kernel(Some(attends_to_nothing));
        let nothing = model.hidden_states(&batch, Mode::Eval).unwrap();
        assert!(
            max_diff(&nothing, &masked) > 1e-2,
            "Eval takes the packed kernel"
        );
        for (&m, w) in apart.iter().zip(&without) {
            let with = model.hidden_states(&batch, m).unwrap();
            assert_eq!(max_diff(&with, w), 0.0, "{m:?} took the packed kernel");
        }
        let m: Vec<Vec<Vec<f32>>> = masked.to_vec3().unwrap();
        let p: Vec<Vec<Vec<f32>>> = packed.to_vec3().unwrap();
        for (r, row) in batch.mask.iter().enumerate() {
            for (t, &real) in row.iter().enumerate() {
                if real == 1 {
                    let d = m[r][t]
                        .iter()
                        .zip(&p[r][t])
                        .fold(0f32, |d, (a, b)| d.max((a - b).abs()));
                    assert!(d < 1e-4, "row {r} position {t}: {d}");
                }
            }
        }
    }

    /// Generation on candle's composed ops (bf16 on the CPU: the path CUDA devices take), whose
    /// cached keys and values are views with room after each row, gives at every step the
    /// log-probabilities of recomputing the whole sequence without a cache: through ragged
    /// prompts, shared prefills, rows that finish early and regrowths of the room.
    #[test]
    fn composed_generation_from_the_cache_matches_recomputing_the_sequence() {
        let (_dir, model) = tiny_model(Arch::Qwen3, 9, DType::BF16);
        let vocab = model.config.vocab_size as u32;
        let prompts: Vec<Prompt> = [5usize, 1, 11]
            .iter()
            .enumerate()
            .map(|(i, &n)| Prompt {
                ids: (0..n)
                    .map(|j| (3 + 17 * i as u32 + 7 * j as u32) % vocab)
                    .collect(),
                seed: 10 + i as u64,
            })
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: 20,
            sampling: Sampling::new(false, 1.0, 1.0, 0),
            eos_token_ids: (0..vocab / 8).collect(),
            pad_id: 0,
            keep_log_probs: true,
            keep_first_log_probs: false,
            samples_per_prompt: 2,
        };
        let gens = generate(&model, &prompts, &opts).unwrap();
        let lengths: Vec<usize> = gens.iter().map(|g| g.tokens.len()).collect();
        assert!(
            lengths.iter().any(|&n| n < 20) && lengths.iter().any(|&n| n > 8),
            "rows should end at different steps: {lengths:?}"
        );
        let mut worst = 0f32;
        for (o, g) in gens.iter().enumerate() {
            let mut seq = prompts[o / 2].ids.clone();
            for (step, cached) in g.log_probs.as_ref().unwrap().iter().enumerate() {
                let batch =
                    Batch::left_padded(std::slice::from_ref(&seq), 0, &Device::Cpu).unwrap();
                let hidden = model.hidden_states(&batch, Mode::Eval).unwrap();
                let last = hidden
                    .narrow(1, seq.len() - 1, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap();
                let logits: Vec<f32> = model
                    .logits(&last)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let log_z = sampling::row_stats(&logits).log_z;
                for (a, b) in cached.iter().zip(&logits) {
                    worst = worst.max((a - (b - log_z)).abs());
                }
                seq.push(g.tokens[step]);
            }
        }
        // The same bf16 products on the same values: equal here to the last bit.
        assert!(worst < 1e-3, "largest log-probability difference {worst}");
    }

    #[test]
    fn flash_attention_is_refused_with_the_reason() {
        let (_dir, mut model) = tiny(Arch::Llama);
        let err = model
            .set_attention(Attention::Flash)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("attention `flash`: "), "{err}");
        let err = "fast".parse::<Attention>().unwrap_err().to_string();
        assert!(err.contains("expected composed or flash"), "{err}");
        model.set_attention(Attention::Composed).unwrap();
    }
}
