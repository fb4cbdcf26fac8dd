//! One decoder layer, as transformers' `Qwen3DecoderLayer` / `LlamaDecoderLayer`: pre-norm
//! self-attention (grouped KV heads, Qwen3's per-head q/k RMSNorm, RoPE) and a SwiGLU MLP, each
//! added to the residual stream. How a pass attends is chosen once per pass ([`Attend`]) and
//! every layer follows it.

use super::builder::Builder;
use super::cache::LayerCache;
use super::config::{Arch, ModelConfig};
use super::kernels;
use super::kernels::decode::PackedCache;
use super::layers::grouped_products;
use super::layers::{Linear, Mlp, Mode, RmsNorm, Rope, attention};
use super::varlen;
use candle_core::{Result, Tensor};

/// The attention every layer of one pass runs.
pub(super) enum Attend {
    /// A packed-rows kernel (FlashAttention) over the real tokens gathered end to end; inference
    /// passes only, in the (B, T, heads, D) layout.
    Packed(varlen::Packing, varlen::Kernel),
    /// The CPU's blocked f32 kernel in the (B, T, heads, D) layout, with its backward when
    /// training.
    Cpu,
    /// candle's composed ops in the (B, heads, T, D) layout under this additive mask
    /// (B, 1, Tq, Tk): other devices and dtypes.
    Composed(Tensor),
}

/// What every layer of a pass shares.
pub(super) struct Pass<'a> {
    pub mode: Mode,
    pub rope: Rope,
    pub attend: Attend,
    /// Per row, 0/1 over all keys so far (the new tokens' included).
    pub key_mask: &'a [Vec<u8>],
    /// Extend each layer's cache with the pass's keys and values (generation).
    pub keep_cache: bool,
}

pub(super) struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3 only: RMSNorm over each head's vector before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// The query, key and value weights packed together for decoding steps.
    pub qkv_packed: PackedCache,
}

pub(super) struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    /// Layer `i` from `model.layers.{i}.*`. Parameters are taken in the order the trainable
    /// variables keep: projections, q/k norms, the MLP, then the layer norms.
    pub fn new(p: &mut Builder, c: &ModelConfig, i: usize) -> anyhow::Result<Self> {
        let pre = format!("model.layers.{i}");
        let s = (i as u64) << 8;
        let (q_out, kv_out) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let (h, bias) = (c.hidden_size, c.attention_bias);
        let q_proj = p.linear(&format!("{pre}.self_attn.q_proj"), q_out, h, bias, s)?;
        let k_proj = p.linear(&format!("{pre}.self_attn.k_proj"), kv_out, h, bias, s + 1)?;
        let v_proj = p.linear(&format!("{pre}.self_attn.v_proj"), kv_out, h, bias, s + 2)?;
        let o_proj = p.linear(&format!("{pre}.self_attn.o_proj"), h, q_out, bias, s + 3)?;
        let mut head_norm = |name: &str| -> anyhow::Result<Option<RmsNorm>> {
            (c.arch == Arch::Qwen3)
                .then(|| {
                    p.norm(
                        &format!("{pre}.self_attn.{name}"),
                        c.head_dim,
                        c.rms_norm_eps,
                    )
                })
                .transpose()
        };
        let q_norm = head_norm("q_norm")?;
        let k_norm = head_norm("k_norm")?;
        let self_attn = Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            qkv_packed: Default::default(),
        };
        let (n, bias) = (c.intermediate_size, c.mlp_bias);
        let mlp = Mlp {
            gate_proj: p.linear(&format!("{pre}.mlp.gate_proj"), n, h, bias, s + 4)?,
            up_proj: p.linear(&format!("{pre}.mlp.up_proj"), n, h, bias, s + 5)?,
            down_proj: p.linear(&format!("{pre}.mlp.down_proj"), h, n, bias, s + 6)?,
            gate_up_packed: Default::default(),
        };
        let eps = c.rms_norm_eps;
        Ok(Self {
            input_layernorm: p.norm(&format!("{pre}.input_layernorm"), h, eps)?,
            self_attn,
            post_attention_layernorm: p.norm(&format!("{pre}.post_attention_layernorm"), h, eps)?,
            mlp,
        })
    }

    /// `x` (B, T, hidden) through the layer; extends `cache` when the pass keeps one.
    pub fn forward(
        &self,
        x: &Tensor,
        pass: &Pass,
        cache: &mut LayerCache,
        c: &ModelConfig,
    ) -> Result<Tensor> {
        let fused = pass.mode.fused();
        let h = self.input_layernorm.forward(x, fused)?;
        let x = (x + self.self_attn.forward(&h, pass, cache, c)?)?;
        let h = self.post_attention_layernorm.forward(&x, fused)?;
        &x + self.mlp.forward(&h, pass.mode)?
    }

    /// The layer's projections with their module paths under `model.layers.{i}`.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    /// [`Block::linears`], mutable.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }

    /// Drops every weight packed for decoding steps.
    pub fn release_packed(&self) {
        self.self_attn.qkv_packed.release();
        self.mlp.gate_up_packed.release();
        for (_, lin) in self.linears() {
            lin.packed.release();
        }
    }

    /// The layer's base parameters by their names under `pre` (`model.layers.{i}`).
    pub fn named_parameters(&self, pre: &str, out: &mut Vec<(String, Tensor)>) {
        for (name, lin) in self.linears() {
            out.push((format!("{pre}.{name}.weight"), lin.weight.clone()));
            if let Some(b) = &lin.bias {
                out.push((format!("{pre}.{name}.bias"), b.clone()));
            }
        }
        out.push((
            format!("{pre}.input_layernorm.weight"),
            self.input_layernorm.weight.clone(),
        ));
        out.push((
            format!("{pre}.post_attention_layernorm.weight"),
            self.post_attention_layernorm.weight.clone(),
        ));
        let a = &self.self_attn;
        if let Some(n) = &a.q_norm {
            out.push((format!("{pre}.self_attn.q_norm.weight"), n.weight.clone()));
        }
        if let Some(n) = &a.k_norm {
            out.push((format!("{pre}.self_attn.k_norm.weight"), n.weight.clone()));
        }
    }
}

impl Attention {
    /// `h` (B, T, hidden) normalised; returns the attention's output projected back to hidden.
    fn forward(
        &self,
        h: &Tensor,
        pass: &Pass,
        cache: &mut LayerCache,
        c: &ModelConfig,
    ) -> Result<Tensor> {
        let (b, t, _) = h.dims3()?;
        let (mode, fused) = (pass.mode, pass.mode.fused());
        // (B, T, n, D), normalised per head where the architecture does.
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let y = y.reshape((b, t, n, c.head_dim))?;
            match norm {
                Some(norm) => norm.forward(&y, fused),
                None => Ok(y),
            }
        };
        let projs = [&self.q_proj, &self.k_proj, &self.v_proj];
        let [q, k, v] = match grouped_products(h, &projs, &self.qkv_packed)? {
            Some(ys) => <[Tensor; 3]>::try_from(ys).expect("three products"),
            None => [
                self.q_proj.forward(h, mode)?,
                self.k_proj.forward(h, mode)?,
                self.v_proj.forward(h, mode)?,
            ],
        };
        let q = heads(q, c.num_attention_heads, &self.q_norm)?;
        let k = heads(k, c.num_key_value_heads, &self.k_norm)?;
        let v = heads(v, c.num_key_value_heads, &None)?;
        // Time is axis 1 in the kernels' layout, axis 2 in the composed one's (B, n, T, D).
        let rope = &pass.rope;
        let (q, k, v, time_axis) = match pass.attend {
            Attend::Packed(..) | Attend::Cpu => {
                (rope.apply_thd(&q, fused)?, rope.apply_thd(&k, fused)?, v, 1)
            }
            Attend::Composed(_) => {
                let (q, k, v) = (q.transpose(1, 2)?, k.transpose(1, 2)?, v.transpose(1, 2)?);
                (rope.apply(&q, fused)?, rope.apply(&k, fused)?, v, 2)
            }
        };
        let (k, v) = if pass.keep_cache {
            // Every attention here reads keys and values as views with room after each row's
            // (the CPU kernel row by row, the matrix products with a batch stride), so a
            // decoding step writes only its own keys.
            cache.append(k, v, time_axis, fused)?
        } else {
            (k, v)
        };
        let attn = match &pass.attend {
            Attend::Packed(packing, kernel) => packing.attention(&q, &k, &v, *kernel)?,
            Attend::Composed(mask) => attention(&q, &k, &v, mask, fused)?,
            Attend::Cpu if fused => {
                kernels::attention::attention(&q.contiguous()?, &k, &v, pass.key_mask)?
            }
            Attend::Cpu => kernels::attention::attention_with_grad(
                &q.contiguous()?,
                &k.contiguous()?,
                &v.contiguous()?,
                pass.key_mask,
            )?,
        };
        self.o_proj.forward(&attn, mode)
    }
}
