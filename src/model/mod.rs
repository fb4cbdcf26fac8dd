//! The trainable decoder shared by Qwen3 and Llama 3.x: plain structs built from named tensors
//! (Hugging Face names, so checkpoints load without renaming), a pure training forward over a
//! padded batch, and a cached step for generation whose cache the caller owns.
//! Reference: transformers' `modeling_qwen3.py` / `modeling_llama.py` (eager attention).

pub mod config;
pub mod cpu_attention;
pub mod cpu_decode;
pub mod cpu_exp;
pub mod cpu_lora;
pub mod cpu_norm_rope;
pub mod cpu_swiglu;
pub mod generate;
pub mod gguf;
pub mod layers;
pub mod load;
pub mod lora;
pub mod token_log_probs;
pub mod varlen;
pub mod weights;

use anyhow::Result as AnyResult;
use candle_core::{DType, Device, Result, Tensor, Var};
use config::{Arch, ModelConfig};
use layers::{Linear, Mlp, Mode, RmsNorm, Rope, attention, causal_mask};
use lora::LoraConfig;
use weights::WeightSource;

/// What of the model an optimiser may change.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Nothing: inference only.
    Frozen,
    /// Every parameter (full fine-tuning).
    Full,
    /// LoRA adapters over a frozen base.
    Lora(LoraConfig),
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3 only: RMSNorm over each head's vector before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// The query, key and value weights packed together for decoding steps.
    qkv_packed: layers::PackedCache,
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// One layer's keys and values so far: (B, T, KVH, D) each for the CPU's f32 kernel and the
/// packed (FlashAttention) path, (B, KVH, T, D) for the composed attention. During generation
/// they are views of buffers with room along the time axis, and a step writes its keys into the
/// room instead of copying the whole cache into a new tensor, which made a long generation
/// quadratic in its length. The room doubles whenever it fills, up to what
/// [`LayerCache::reserve`] asked for.
#[derive(Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// The buffers `k` and `v` are the first time steps of; only `append` sets it, so a cache
    /// built any other way never writes into a buffer that something else still reads.
    room: Option<(Tensor, Tensor, usize)>,
    /// Time steps the cache is expected to reach (0: unknown).
    expected: usize,
}

impl LayerCache {
    /// A cache holding `k` and `v` as they are.
    pub fn new(k: Tensor, v: Tensor) -> Self {
        Self {
            k: Some(k),
            v: Some(v),
            room: None,
            expected: 0,
        }
    }

    /// Expects the cache to reach `steps` time steps in all: its room then never grows past
    /// that many, where doubling what is needed could keep up to twice the memory to the end
    /// of the generation.
    pub fn reserve(&mut self, steps: usize) {
        self.expected = steps;
    }

    pub fn k(&self) -> Option<&Tensor> {
        self.k.as_ref()
    }

    pub fn v(&self) -> Option<&Tensor> {
        self.v.as_ref()
    }

    /// Keeps (or repeats) the batch rows `idx`, and the room after them.
    pub fn select_rows(&mut self, idx: &Tensor) -> Result<()> {
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            return Ok(());
        };
        let expected = self.expected;
        *self = match &self.room {
            Some((rk, rv, axis)) => {
                let len = k.dim(*axis)?;
                let (rk, rv) = (rk.index_select(idx, 0)?, rv.index_select(idx, 0)?);
                Self {
                    k: Some(rk.narrow(*axis, 0, len)?),
                    v: Some(rv.narrow(*axis, 0, len)?),
                    room: Some((rk, rv, *axis)),
                    expected,
                }
            }
            None => Self::new(k.index_select(idx, 0)?, v.index_select(idx, 0)?),
        };
        self.expected = expected;
        Ok(())
    }

    /// Extends the cache by `k` and `v` along `axis` and returns all keys and values so far.
    /// With `in_room`, they are written into the buffers' room (the result is then a view that
    /// is not contiguous across the batch); otherwise concatenated.
    fn append(
        &mut self,
        k: Tensor,
        v: Tensor,
        axis: usize,
        in_room: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (self.k.take(), self.v.take()) {
            (Some(pk), Some(pv)) if in_room => {
                let (len, t) = (pk.dim(axis)?, k.dim(axis)?);
                let (rk, rv) = match self.room.take() {
                    Some((rk, rv, a)) if a == axis && rk.dim(axis)? >= len + t => (rk, rv),
                    _ => {
                        // Twice what is needed, so that the copies below happen a logarithmic
                        // number of times over a generation, but never past what was reserved.
                        let room = if self.expected >= len + t {
                            self.expected.min(2 * (len + t))
                        } else {
                            2 * (len + t)
                        };
                        let grow = |p: &Tensor| -> Result<Tensor> {
                            let mut dims = p.dims().to_vec();
                            dims[axis] = room;
                            let buf = Tensor::zeros(dims, p.dtype(), p.device())?;
                            buf.slice_set(&p.contiguous()?, axis, 0)?;
                            Ok(buf)
                        };
                        (grow(&pk)?, grow(&pv)?)
                    }
                };
                rk.slice_set(&k.contiguous()?, axis, len)?;
                rv.slice_set(&v.contiguous()?, axis, len)?;
                let out = (rk.narrow(axis, 0, len + t)?, rv.narrow(axis, 0, len + t)?);
                self.room = Some((rk, rv, axis));
                out
            }
            (Some(pk), Some(pv)) => (
                Tensor::cat(&[&pk, &k], axis)?.contiguous()?,
                Tensor::cat(&[&pv, &v], axis)?.contiguous()?,
            ),
            _ => (k.contiguous()?, v.contiguous()?),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

/// A padded batch: token ids (B, T) u32, 0/1 attention mask per row, position ids (B, T) u32.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Vec<Vec<u8>>,
    pub positions: Tensor,
}

impl Batch {
    /// Builds a batch from rows of ids and masks, with position ids from the mask
    /// (cumulative sum - 1, as transformers' `generate` does), so left and right padding both work.
    pub fn new(ids: Vec<Vec<u32>>, mask: Vec<Vec<u8>>, device: &Device) -> Result<Self> {
        let b = ids.len();
        let t = ids.first().map_or(0, |r| r.len());
        let positions: Vec<u32> = mask
            .iter()
            .flat_map(|row| {
                let mut seen = 0u32;
                row.iter()
                    .map(move |&m| {
                        seen += m as u32;
                        if m == 0 { 1 } else { seen - 1 }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Self {
            ids: Tensor::from_vec(ids.concat(), (b, t), device)?,
            mask,
            positions: Tensor::from_vec(positions, (b, t), device)?,
        })
    }

    /// Left-pads `rows` to a common length with `pad_id`.
    pub fn left_padded(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let ids = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(pad_id, t - r.len())
                    .chain(r.iter().copied())
                    .collect()
            })
            .collect();
        let mask = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(0u8, t - r.len())
                    .chain(std::iter::repeat_n(1u8, r.len()))
                    .collect()
            })
            .collect();
        Self::new(ids, mask, device)
    }

    /// Right-pads `rows` to a common length with `pad_id`.
    pub fn right_padded(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let ids = rows
            .iter()
            .map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, t - r.len()))
                    .collect()
            })
            .collect();
        let mask = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(1u8, r.len())
                    .chain(std::iter::repeat_n(0u8, t - r.len()))
                    .collect()
            })
            .collect();
        Self::new(ids, mask, device)
    }
}

/// A Qwen3 or Llama 3.x causal LM.
pub struct Decoder {
    pub config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    /// The frozen head packed for decoding steps, made on first use.
    lm_head_packed: layers::PackedCache,
    inv_freq: Tensor,
    dtype: DType,
    device: Device,
    trainable: Trainable,
    /// Trainable variables with their checkpoint names (HF names, or PEFT's for adapters).
    vars: Vec<(String, Var)>,
    /// The kernel inference passes attend with over packed rows; `None`: the composed
    /// attention (or the CPU's kernel). See `Mode::packed_attention`.
    varlen: Option<varlen::Kernel>,
}

/// Hands out parameters: loaded from the source, wrapped in a `Var` when fully trainable.
struct Builder<'a> {
    source: &'a WeightSource,
    dtype: DType,
    device: &'a Device,
    full: bool,
    vars: Vec<(String, Var)>,
}

impl Builder<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> AnyResult<Tensor> {
        let t = self.source.get(name, shape, self.dtype, self.device)?;
        if !self.full {
            return Ok(t);
        }
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        self.vars.push((name.to_string(), var));
        Ok(t)
    }

    fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        stream: u64,
    ) -> AnyResult<Linear> {
        let weight = self.get(&format!("{name}.weight"), &[out, inp])?;
        let weight = if self.full {
            weight
        } else {
            layers::matmul_layout(&weight)?
        };
        let bias = if bias {
            Some(self.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
            stream,
            packed: Default::default(),
        })
    }

    fn norm(&mut self, name: &str, dim: usize, eps: f64) -> AnyResult<RmsNorm> {
        Ok(RmsNorm {
            weight: self.get(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }
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
        let (q_out, kv_out) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let pre = format!("model.layers.{i}");
            let s = (i as u64) << 8;
            let qk_norm = c.arch == Arch::Qwen3;
            let self_attn = Attention {
                q_proj: p.linear(
                    &format!("{pre}.self_attn.q_proj"),
                    q_out,
                    c.hidden_size,
                    c.attention_bias,
                    s,
                )?,
                k_proj: p.linear(
                    &format!("{pre}.self_attn.k_proj"),
                    kv_out,
                    c.hidden_size,
                    c.attention_bias,
                    s + 1,
                )?,
                v_proj: p.linear(
                    &format!("{pre}.self_attn.v_proj"),
                    kv_out,
                    c.hidden_size,
                    c.attention_bias,
                    s + 2,
                )?,
                o_proj: p.linear(
                    &format!("{pre}.self_attn.o_proj"),
                    c.hidden_size,
                    q_out,
                    c.attention_bias,
                    s + 3,
                )?,
                q_norm: qk_norm
                    .then(|| {
                        p.norm(
                            &format!("{pre}.self_attn.q_norm"),
                            c.head_dim,
                            c.rms_norm_eps,
                        )
                    })
                    .transpose()?,
                k_norm: qk_norm
                    .then(|| {
                        p.norm(
                            &format!("{pre}.self_attn.k_norm"),
                            c.head_dim,
                            c.rms_norm_eps,
                        )
                    })
                    .transpose()?,
                qkv_packed: Default::default(),
            };
            let mlp = Mlp {
                gate_proj: p.linear(
                    &format!("{pre}.mlp.gate_proj"),
                    c.intermediate_size,
                    c.hidden_size,
                    c.mlp_bias,
                    s + 4,
                )?,
                up_proj: p.linear(
                    &format!("{pre}.mlp.up_proj"),
                    c.intermediate_size,
                    c.hidden_size,
                    c.mlp_bias,
                    s + 5,
                )?,
                down_proj: p.linear(
                    &format!("{pre}.mlp.down_proj"),
                    c.hidden_size,
                    c.intermediate_size,
                    c.mlp_bias,
                    s + 6,
                )?,
                gate_up_packed: Default::default(),
            };
            layers.push(Block {
                input_layernorm: p.norm(
                    &format!("{pre}.input_layernorm"),
                    c.hidden_size,
                    c.rms_norm_eps,
                )?,
                self_attn,
                post_attention_layernorm: p.norm(
                    &format!("{pre}.post_attention_layernorm"),
                    c.hidden_size,
                    c.rms_norm_eps,
                )?,
                mlp,
            });
        }
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
            layers::matmul_layout(&lm_head)?
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
    pub fn set_attention(&mut self, name: &str) -> AnyResult<()> {
        self.varlen = match name {
            "composed" => None,
            "flash" => {
                if let Some(why) =
                    varlen::flash_unavailable(self.dtype, &self.device, self.config.head_dim)
                {
                    anyhow::bail!("attention `flash`: {why}");
                }
                varlen::flash_kernel()
            }
            other => anyhow::bail!("attention `{other}`: expected composed or flash"),
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
            let (a, m) = (&l.self_attn, &l.mlp);
            a.qkv_packed.release();
            m.gate_up_packed.release();
            for lin in [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &m.gate_proj,
                &m.up_proj,
                &m.down_proj,
            ] {
                lin.packed.release();
            }
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
        layers::linear(hidden, &self.lm_head, None, &self.lm_head_packed)
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
        let c = &self.config;
        let fused = mode.fused();
        // Inference passes with a packed-rows kernel gather the real tokens and attend over
        // them; in f32 on the CPU the blocked attention kernel runs (with its backward when
        // training); elsewhere the composed ops do. The first two keep the (B, T, heads, D)
        // layout throughout, caches included.
        let packed_kernel = self.varlen.filter(|_| mode.packed_attention());
        let cpu_kernel =
            packed_kernel.is_none() && self.device.is_cpu() && self.dtype == DType::F32;
        let packing = match packed_kernel {
            Some(_) => Some(varlen::Packing::new(key_mask, t, &self.device)?),
            None => None,
        };
        let rope = Rope::new(&self.inv_freq, positions, self.dtype)?;
        let mask = if cpu_kernel || packed_kernel.is_some() {
            None
        } else {
            Some(causal_mask(key_mask, t, &self.device)?)
        };
        let mut x = self
            .embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden_size))?;
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            let h = layer.input_layernorm.forward(&x, fused)?;
            let a = &layer.self_attn;
            // (B, T, n, D), normalised per head where the architecture does.
            let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
                let y = y.reshape((b, t, n, c.head_dim))?;
                match norm {
                    Some(norm) => norm.forward(&y, fused),
                    None => Ok(y),
                }
            };
            let projs = [&a.q_proj, &a.k_proj, &a.v_proj];
            let [q, k, v] = match layers::grouped_products(&h, &projs, &a.qkv_packed)? {
                Some(ys) => <[Tensor; 3]>::try_from(ys).expect("three products"),
                None => [
                    a.q_proj.forward(&h, mode)?,
                    a.k_proj.forward(&h, mode)?,
                    a.v_proj.forward(&h, mode)?,
                ],
            };
            let q = heads(q, c.num_attention_heads, &a.q_norm)?;
            let k = heads(k, c.num_key_value_heads, &a.k_norm)?;
            let v = heads(v, c.num_key_value_heads, &None)?;
            // Time is axis 1 in the kernels' layout, axis 2 in the composed one's (B, n, T, D).
            let (q, k, v, time_axis) = if cpu_kernel || packed_kernel.is_some() {
                (rope.apply_thd(&q, fused)?, rope.apply_thd(&k, fused)?, v, 1)
            } else {
                let (q, k, v) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
                (rope.apply(&q, fused)?, rope.apply(&k, fused)?, v, 2)
            };
            let (k, v) = if keep_cache {
                // Every attention here reads keys and values as views with room after each
                // row's (the CPU kernel row by row, the matrix products with a batch stride),
                // so a decoding step writes only its own keys.
                cache.append(k, v, time_axis, fused)?
            } else {
                (k, v)
            };
            let attn = match (&packing, packed_kernel, &mask) {
                (Some(packing), Some(kernel), _) => packing.attention(&q, &k, &v, kernel)?,
                (_, _, Some(mask)) => attention(&q, &k, &v, mask, fused)?,
                _ if fused => cpu_attention::attention(&q.contiguous()?, &k, &v, key_mask)?,
                _ => cpu_attention::attention_with_grad(
                    &q.contiguous()?,
                    &k.contiguous()?,
                    &v.contiguous()?,
                    key_mask,
                )?,
            };
            x = (x + a.o_proj.forward(&attn, mode)?)?;
            let h = layer.post_attention_layernorm.forward(&x, fused)?;
            x = (&x + layer.mlp.forward(&h, mode)?)?;
        }
        self.norm.forward(&x, fused)
    }

    /// Every projection, with its HF module path, for adapters and merging.
    fn linears_mut(&mut self) -> impl Iterator<Item = (String, &mut Linear)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, l)| {
            let pre = format!("model.layers.{i}");
            let a = &mut l.self_attn;
            let m = &mut l.mlp;
            [
                (format!("{pre}.self_attn.q_proj"), &mut a.q_proj),
                (format!("{pre}.self_attn.k_proj"), &mut a.k_proj),
                (format!("{pre}.self_attn.v_proj"), &mut a.v_proj),
                (format!("{pre}.self_attn.o_proj"), &mut a.o_proj),
                (format!("{pre}.mlp.gate_proj"), &mut m.gate_proj),
                (format!("{pre}.mlp.up_proj"), &mut m.up_proj),
                (format!("{pre}.mlp.down_proj"), &mut m.down_proj),
            ]
        })
    }

    /// All base parameters by Hugging Face name (the head only when untied), for saving.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let pre = format!("model.layers.{i}");
            let a = &l.self_attn;
            let m = &l.mlp;
            let mut push_linear = |name: &str, lin: &Linear| {
                out.push((format!("{pre}.{name}.weight"), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{pre}.{name}.bias"), b.clone()));
                }
            };
            push_linear("self_attn.q_proj", &a.q_proj);
            push_linear("self_attn.k_proj", &a.k_proj);
            push_linear("self_attn.v_proj", &a.v_proj);
            push_linear("self_attn.o_proj", &a.o_proj);
            push_linear("mlp.gate_proj", &m.gate_proj);
            push_linear("mlp.up_proj", &m.up_proj);
            push_linear("mlp.down_proj", &m.down_proj);
            out.push((
                format!("{pre}.input_layernorm.weight"),
                l.input_layernorm.weight.clone(),
            ));
            out.push((
                format!("{pre}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.clone(),
            ));
            if let Some(n) = &a.q_norm {
                out.push((format!("{pre}.self_attn.q_norm.weight"), n.weight.clone()));
            }
            if let Some(n) = &a.k_norm {
                out.push((format!("{pre}.self_attn.k_norm.weight"), n.weight.clone()));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        out
    }
}

/// Checks shared by the tests of the CPU ops against their composed references.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{D, DType, Tensor};

    /// A random tiny model (hidden 64, two layers, 4 query heads over 2 KV heads) written to a
    /// temporary directory, loaded on the CPU in `dtype`; the directory lives as long as the
    /// first value.
    pub fn tiny_model(
        arch: super::config::Arch,
        seed: u64,
        dtype: DType,
    ) -> (tempfile::TempDir, super::Decoder) {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::init_model::InitSpec {
            arch,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: None,
            tie_word_embeddings: false,
            vocab_size: None,
            seed,
        };
        let path = dir.path().join("model");
        crate::init_model::init_model(&spec, None, &path).unwrap();
        let opts = super::load::LoadOptions {
            dtype,
            ..Default::default()
        };
        let model = super::load::load(path.to_str().unwrap(), &opts)
            .unwrap()
            .model;
        (dir, model)
    }

    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The largest difference between `ours` and `theirs`, then between their gradients with
    /// respect to each of `wrt` under the loss sum(out * g).
    pub fn value_and_grad_diffs(
        ours: &Tensor,
        theirs: &Tensor,
        g: &Tensor,
        wrt: &[&Tensor],
    ) -> (f32, Vec<f32>) {
        let grads = |out: &Tensor| (out * g).unwrap().sum_all().unwrap().backward().unwrap();
        let (go, gt) = (grads(ours), grads(theirs));
        let diffs = wrt
            .iter()
            .map(|v| max_diff(go.get(v).unwrap(), gt.get(v).unwrap()))
            .collect();
        (max_diff(ours, theirs), diffs)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    #[test]
    fn room_grows_no_further_than_reserved_and_is_kept_through_row_selection() {
        let dev = Device::Cpu;
        // One step of keys and values for `rows` rows.
        let append = |cache: &mut LayerCache, rows: usize, t: usize| {
            let step = || Tensor::randn(0f32, 1.0, (rows, t, 2, 4), &dev).unwrap();
            cache.append(step(), step(), 1, true).unwrap();
        };
        let room = |c: &LayerCache| c.room.as_ref().map(|(k, _, _)| k.dim(1).unwrap());
        let mut cache = LayerCache::default();
        append(&mut cache, 3, 5);
        cache.reserve(9);
        // 12 would be twice what is needed; 9 were reserved.
        append(&mut cache, 3, 1);
        assert_eq!(room(&cache), Some(9));
        cache
            .select_rows(&Tensor::new(&[2u32, 0], &dev).unwrap())
            .unwrap();
        for _ in 0..3 {
            append(&mut cache, 2, 1);
        }
        assert_eq!(room(&cache), Some(9));
        assert_eq!(cache.k().unwrap().dims(), [2, 9, 2, 4]);
        // Past what was reserved, the room doubles.
        append(&mut cache, 2, 1);
        assert_eq!(room(&cache), Some(20));
    }

    #[test]
    fn appending_in_room_keeps_what_concatenation_keeps() {
        // A prefill of 5 steps, then steps of 1 and 3 past several regrowths of the room.
        let dev = Device::Cpu;
        let step = |t: usize, x: f32| Tensor::randn(x, 1.0, (2, t, 3, 4), &dev).unwrap();
        let (mut roomy, mut plain) = (LayerCache::default(), LayerCache::default());
        for (i, t) in [5, 1, 1, 3, 1, 1, 1, 3, 3, 1, 1, 3].into_iter().enumerate() {
            let (k, v) = (step(t, i as f32), step(t, -(i as f32)));
            let (rk, rv) = roomy.append(k.clone(), v.clone(), 1, true).unwrap();
            let (pk, pv) = plain.append(k, v, 1, false).unwrap();
            assert!(pk.is_contiguous());
            for (a, b) in [(&rk, &pk), (&rv, &pv)] {
                assert_eq!(a.dims(), b.dims());
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "after append {i}");
            }
        }
        // The room outgrew the first buffer and the views kept the first steps.
        assert_eq!(roomy.k().unwrap().dim(1).unwrap(), 24);
        assert!(!roomy.k().unwrap().is_contiguous());
        // Dropping a row keeps the room; the next step appends into it.
        let idx = Tensor::new(&[1u32], &dev).unwrap();
        roomy.select_rows(&idx).unwrap();
        plain.select_rows(&idx).unwrap();
        let (k, v) = (step(1, 7.0), step(1, 8.0));
        let (k, v) = (k.narrow(0, 0, 1).unwrap(), v.narrow(0, 0, 1).unwrap());
        let (rk, rv) = roomy.append(k.clone(), v.clone(), 1, true).unwrap();
        let (pk, pv) = plain.append(k, v, 1, false).unwrap();
        assert_eq!(rk.dims(), &[1, 25, 3, 4]);
        for (a, b) in [(&rk, &pk), (&rv, &pv)] {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "after dropping a row");
        }
    }
}

#[cfg(test)]
mod attention_path_tests {
    use super::generate::{GenerateOptions, Prompt, Sampling, generate};
    use super::testing::{max_diff, tiny_model};
    use super::*;

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
                let log_z = generate::row_stats(&logits).log_z;
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
        let err = model.set_attention("flash").unwrap_err().to_string();
        assert!(err.starts_with("attention `flash`: "), "{err}");
        let err = model.set_attention("fast").unwrap_err().to_string();
        assert!(err.contains("expected composed or flash"), "{err}");
        model.set_attention("composed").unwrap();
    }
}
