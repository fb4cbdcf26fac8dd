//! The decoder's building blocks. The training path uses only ops candle can differentiate
//! (candle's fused `rms_norm`, `rope` and `softmax_last_dim` cut gradients silently); inference
//! uses those fused kernels, which agree with the composed ops to ~1e-6.
//! Maths and parameter names follow transformers' `modeling_llama.py` / `modeling_qwen3.py`.

use super::kernels::decode::PackedCache;
use super::products::{linear, matmul, on_cpu_f32, project};
use candle_core::{D, DType, Result, Tensor};
use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Where a forward pass runs. Only `Train` builds a graph that gradients flow through: the
/// other modes use candle's fused RMSNorm, RoPE and softmax kernels, which are faster and carry
/// no gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    /// Training, with LoRA dropout drawn from `seed` (so a step is reproducible on resume).
    Train {
        seed: u64,
    },
    /// LoRA adapters switched off: the frozen base, used as the GRPO reference policy. Its
    /// values are compared with a training pass's, so it attends as training does.
    BaseOnly,
    /// Like `Eval`, for values compared with a training pass's (GRPO's old-policy and
    /// reference log-probs): it attends as training does, never through a packed kernel such
    /// as FlashAttention, so the two differ only by the fused kernels' rounding.
    Detached,
}

impl Mode {
    pub fn fused(self) -> bool {
        !matches!(self, Mode::Train { .. })
    }

    /// Whether a packed attention kernel (`model.attention = "flash"`) may serve the pass.
    pub fn packed_attention(self) -> bool {
        self == Mode::Eval
    }
}

/// A LoRA adapter on one projection: `y += scale * B(A(dropout(x)))`, PEFT's layout
/// (`lora_A`: (r, in), `lora_B`: (out, r)).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
}

/// A projection with an optional bias and an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<LoraAdapter>,
    /// Distinguishes this projection's dropout stream from the others' in the same step.
    pub stream: u64,
    /// The frozen weight packed for decoding steps, made on first use.
    pub packed: PackedCache,
}

impl Linear {
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if let Some(lora) = &self.lora
            && mode != Mode::BaseOnly
            && on_cpu_f32(x)
            && self.weight.dtype() == DType::F32
            && !self.weight.track_op()
            // Frozen CPU weights are stored for `x @ W^T` (see `matmul_layout`).
            && self.weight.t()?.is_contiguous()
        {
            let mask = match mode {
                Mode::Train { seed } if lora.dropout > 0.0 => Some(dropout_mask(
                    x.elem_count(),
                    lora.dropout,
                    self.dropout_seed(seed),
                )),
                _ => None,
            };
            let wt = self.weight.t()?;
            let k = self.weight.dim(1)?;
            let packed = self.packed.get(&self.weight, x.elem_count() / k.max(1))?;
            let y = super::kernels::lora::lora_linear(
                x, &wt, &lora.a, &lora.b, lora.scale, mask, packed,
            )?;
            return match &self.bias {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            };
        }
        self.composed(x, mode)
    }

    /// The projection composed of candle's ops: the reference for the CPU op, and the path on
    /// other devices and dtypes.
    pub fn composed(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let base = linear(x, &self.weight, self.bias.as_ref(), &self.packed)?;
        let Some(lora) = &self.lora else {
            return Ok(base);
        };
        let x = match mode {
            Mode::BaseOnly => return Ok(base),
            Mode::Train { seed } if lora.dropout > 0.0 => {
                dropout(x, lora.dropout, self.dropout_seed(seed))?
            }
            _ => x.clone(),
        };
        base + (project(&project(&x, &lora.a)?, &lora.b)? * lora.scale)?
    }

    /// This projection's dropout stream in the step drawn from `seed`.
    fn dropout_seed(&self, seed: u64) -> u64 {
        seed ^ self.stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// The weight with the adapter folded in: `W + scale * B A`.
    pub fn merged_weight(&self) -> Result<Tensor> {
        match &self.lora {
            None => Ok(self.weight.clone()),
            Some(l) => {
                let delta = (l.b.matmul(&l.a)? * l.scale)?;
                self.weight.detach() + delta.to_dtype(self.weight.dtype())?.detach()
            }
        }
    }
}

/// Inverted dropout with a seeded mask, so a training step can be replayed exactly.
fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let mask = dropout_mask(x.elem_count(), p, seed);
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

/// The mask of [`dropout`]: 0 with probability `p`, else 1 / (1 - p).
fn dropout_mask(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect()
}

/// RMSNorm as transformers computes it, in f32: `w * (x / sqrt(mean(x^2) + eps))`. Training on
/// the CPU in f32 uses one op with its own backward; elsewhere it is composed.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            return candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32);
        }
        if on_cpu_f32(x) && self.weight.dtype() == DType::F32 {
            return super::kernels::norm_rope::rms_norm(x, &self.weight, self.eps);
        }
        self.composed(x)
    }

    /// The composed ops: the reference, and the training path off the CPU.
    pub fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let rms = (xf.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        xf.broadcast_div(&rms)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

/// Rotary embedding tables for one batch: `cos`/`sin` of shape (B, 1, T, head_dim), duplicated
/// halves as in transformers' `rotate_half` convention.
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
    /// (B, T, head_dim / 2) halves for candle's fused kernel.
    cos_half: Tensor,
    sin_half: Tensor,
}

impl Rope {
    /// `inv_freq`: (head_dim / 2,) f32; `positions`: (B, T) u32.
    pub fn new(inv_freq: &Tensor, positions: &Tensor, dtype: DType) -> Result<Self> {
        let (b, t) = positions.dims2()?;
        let pos = positions
            .flatten_all()?
            .to_dtype(DType::F32)?
            .unsqueeze(1)?; // (B*T, 1)
        let freqs = pos.broadcast_mul(&inv_freq.unsqueeze(0)?)?; // (B*T, D/2)
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?; // (B*T, D)
        let d = emb.dim(1)?;
        let shape = (b, 1, t, d);
        let half = (b, t, d / 2);
        Ok(Self {
            cos: emb.cos()?.to_dtype(dtype)?.reshape(shape)?,
            sin: emb.sin()?.to_dtype(dtype)?.reshape(shape)?,
            cos_half: freqs.cos()?.to_dtype(dtype)?.reshape(half)?,
            sin_half: freqs.sin()?.to_dtype(dtype)?.reshape(half)?,
        })
    }

    /// The (B, T, D / 2) cos and sin halves.
    pub fn halves(&self) -> (&Tensor, &Tensor) {
        (&self.cos_half, &self.sin_half)
    }

    /// `x`: (B, T, H, D); candle's fused kernel (no gradient) when `fused`; for training, one
    /// op with a backward on the CPU in f32, else composed ops.
    pub fn apply_thd(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            return candle_nn::rotary_emb::rope_thd(
                &x.contiguous()?,
                &self.cos_half,
                &self.sin_half,
            );
        }
        if on_cpu_f32(x) && self.cos_half.dtype() == DType::F32 {
            return super::kernels::norm_rope::rope_thd(x, &self.cos_half, &self.sin_half);
        }
        self.apply_thd_composed(x)
    }

    /// The (B, T, H, D) rotation composed from differentiable ops: the reference, and the
    /// training path off the CPU.
    pub fn apply_thd_composed(&self, x: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        // cos, sin: (B, 1, T, D) -> (B, T, 1, D)
        x.broadcast_mul(&self.cos.transpose(1, 2)?)?
            + rotated.broadcast_mul(&self.sin.transpose(1, 2)?)?
    }

    /// `x`: (B, H, T, D).
    pub fn apply(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            return candle_nn::rotary_emb::rope(&x.contiguous()?, &self.cos_half, &self.sin_half);
        }
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?
    }
}

/// Scaled dot-product attention with grouped KV heads, without copying K/V per group:
/// the G query heads of a KV head are stacked along the time axis instead.
/// `q`: (B, H, Tq, D); `k`, `v`: (B, KVH, Tk, D); `mask`: additive f32 (B, 1, Tq, Tk).
/// Returns (B, Tq, H * D). Softmax runs in f32, as transformers' eager attention does.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, fused: bool) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, kvh, tk, _) = k.dims4()?;
    let g = h / kvh;
    let dtype = q.dtype();
    let q = (q.contiguous()?.reshape((b, kvh, g * tq, d))? * (1.0 / (d as f64).sqrt()))?;
    let scores = matmul(&q, &batched_rows(k)?.t()?)?.reshape((b, h, tq, tk))?; // (B, H, Tq, Tk)
    let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
    let probs = if fused {
        candle_nn::ops::softmax_last_dim(&scores)?
    } else {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    };
    let probs = probs.to_dtype(dtype)?;
    let out = matmul(&probs.reshape((b, kvh, g * tq, tk))?, &batched_rows(v)?)?; // (B, KVH, G*Tq, D)
    out.reshape((b, h, tq, d))?
        .transpose(1, 2)?
        .reshape((b, tq, h * d))
}

/// `x` (B, H, T, D) as an operand of a batched matrix product: as it is where each (B, H)
/// matrix is row-major and the matrices lie one stride apart (as in a view of a cache with room
/// after each row, which then is read in place), else copied into a contiguous tensor.
fn batched_rows(x: &Tensor) -> Result<Tensor> {
    let (_, h, _, d) = x.dims4()?;
    let s = x.stride();
    if s[3] == 1 && s[2] == d && s[0] == s[1] * h {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

/// Additive mask (B, 1, Tq, Tk) in f32: query i (at absolute index `offset + i`) may see key j
/// when j <= offset + i and key j is not padding. `key_mask`: (B, Tk) of 0/1.
pub fn causal_mask(
    key_mask: &[Vec<u8>],
    tq: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let b = key_mask.len();
    let tk = key_mask.first().map_or(0, |r| r.len());
    let offset = tk - tq;
    let mut data = vec![0f32; b * tq * tk];
    for (row, keys) in key_mask.iter().enumerate() {
        for i in 0..tq {
            let line = &mut data[(row * tq + i) * tk..(row * tq + i + 1) * tk];
            for (j, v) in line.iter_mut().enumerate() {
                if j > offset + i || keys[j] == 0 {
                    *v = f32::MIN;
                }
            }
        }
    }
    Tensor::from_vec(data, (b, 1, tq, tk), device)
}

/// The products of a few rows against projections that read the same input (a layer's query,
/// key and value; gate and up), as one call on their weights packed together in `packed`: one
/// parallel dispatch and one stream through the weights instead of one per projection. `None`
/// where that does not apply, and the caller runs each projection: a graph to differentiate,
/// adapters, a weight that is trainable or not CPU f32, more rows than the packed kernel takes,
/// a CPU without it. Each output is what [`linear`] gives for its projection, bit for bit
/// (the same kernel, the same order of additions).
pub fn grouped_products(
    x: &Tensor,
    linears: &[&Linear],
    packed: &PackedCache,
) -> Result<Option<Vec<Tensor>>> {
    // With adapters, even switched off (`BaseOnly`), the projections keep their own packed
    // weights: a second, grouped copy would double that memory.
    if x.track_op() || !on_cpu_f32(x) || linears.iter().any(|l| l.lora.is_some()) {
        return Ok(None);
    }
    let k = x.dim(D::Minus1)?;
    let rows = x.elem_count() / k.max(1);
    let weights: Vec<&Tensor> = linears.iter().map(|l| &l.weight).collect();
    let Some(p) = packed.get_group(&weights, rows)? else {
        return Ok(None);
    };
    let n = p.out_features();
    let x = x.contiguous()?;
    let mut out = vec![0f32; rows * n];
    super::kernels::storage::with_f32(&x, ("grouped products", "the input"), |xs| {
        p.matmul(&mut out, xs, rows)
    })?;
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("an input axis") = n;
    let y = Tensor::from_vec(out, dims, x.device())?;
    let mut start = 0;
    linears
        .iter()
        .map(|l| {
            let width = l.weight.dim(0)?;
            let part = y.narrow(D::Minus1, start, width)?;
            start += width;
            match &l.bias {
                Some(b) => part.broadcast_add(b),
                None => part.contiguous(),
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
    /// The gate and up weights packed together for decoding steps (see [`grouped_products`]).
    pub gate_up_packed: PackedCache,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let pair = [&self.gate_proj, &self.up_proj];
        let [gate, up] = match grouped_products(x, &pair, &self.gate_up_packed)? {
            Some(ys) => <[Tensor; 2]>::try_from(ys).expect("two products"),
            None => [
                self.gate_proj.forward(x, mode)?,
                self.up_proj.forward(x, mode)?,
            ],
        };
        // On the CPU in f32 the product is one op (one pass each way).
        let h = if on_cpu_f32(&gate) {
            super::kernels::swiglu::swiglu(&gate, &up)?
        } else {
            (gate.silu()? * up)?
        };
        self.down_proj.forward(&h, mode)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::decode::{MAX_ROWS, kernel_available};
    use crate::model::products::matmul_layout;
    use candle_core::{Device, Var};

    #[test]
    fn composed_rms_norm_matches_candle_fused_op() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 16), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, 16, &dev).unwrap();
        let ours = RmsNorm {
            weight: w.clone(),
            eps: 1e-6,
        }
        .forward(&x, false)
        .unwrap();
        let fused = candle_nn::ops::rms_norm(&x, &w, 1e-6).unwrap();
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn composed_rope_matches_candle_fused_op() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
        let inv_freq = Tensor::new(&[1.0f32, 0.1, 0.01, 0.001], &dev).unwrap();
        let pos = Tensor::arange(0u32, t as u32, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let pos = pos.repeat((b, 1)).unwrap();
        let rope = Rope::new(&inv_freq, &pos, DType::F32).unwrap();
        let ours = rope.apply(&x, false).unwrap();
        // candle's fused op takes the (T, D/2) half-tables of row 0 (all rows share positions).
        let half = |t: &Tensor| t.get(0)?.squeeze(0)?.narrow(1, 0, d / 2)?.contiguous();
        let (cos, sin) = (half(&rope.cos).unwrap(), half(&rope.sin).unwrap());
        let fused = candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
        // The fused path of `apply` (per-row tables) must agree too.
        let per_row = rope.apply(&x, true).unwrap();
        let d = (&per_row - &fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let diff = (ours - fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn attention_reads_cache_views_in_place_and_copies_other_layouts() {
        let dev = candle_core::Device::Cpu;
        let (b, h, kvh, t, room, d) = (2, 4, 2, 5, 9, 8);
        let q = Tensor::randn(0f32, 1.0, (b, h, 1, d), &dev).unwrap();
        let kb = Tensor::randn(0f32, 1.0, (b, kvh, room, d), &dev).unwrap();
        let vb = Tensor::randn(0f32, 1.0, (b, kvh, room, d), &dev).unwrap();
        let (k, v) = (kb.narrow(2, 0, t).unwrap(), vb.narrow(2, 0, t).unwrap());
        assert!(!batched_rows(&k).unwrap().is_contiguous());
        let transposed = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        assert!(batched_rows(&transposed).unwrap().is_contiguous());
        let mask = causal_mask(&vec![vec![1u8; t]; b], 1, &dev).unwrap();
        let in_place = attention(&q, &k, &v, &mask, true).unwrap();
        let copied = attention(
            &q,
            &k.contiguous().unwrap(),
            &v.contiguous().unwrap(),
            &mask,
            true,
        )
        .unwrap();
        let diff = (in_place - copied)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn grouped_attention_equals_repeated_kv_heads() {
        let dev = Device::Cpu;
        let (b, h, kvh, t, d) = (2, 4, 2, 5, 8);
        let q = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, kvh, t, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, kvh, t, d), &dev).unwrap();
        let mask = causal_mask(&[vec![1; t], vec![0, 0, 1, 1, 1]], t, &dev).unwrap();
        let ours = attention(&q, &k, &v, &mask, false).unwrap();
        let fused = attention(&q, &k, &v, &mask, true).unwrap();
        let fused_diff = (&ours - &fused).unwrap().abs().unwrap().max_all().unwrap();
        assert!(fused_diff.to_scalar::<f32>().unwrap() < 1e-5);
        // Reference: transformers' repeat_kv (head h uses KV head h / G), then plain attention.
        let rep = |x: &Tensor| {
            let x = x
                .unsqueeze(2)
                .unwrap()
                .repeat((1, 1, h / kvh, 1, 1))
                .unwrap();
            x.reshape((b, h, t, d)).unwrap()
        };
        let (k, v) = (rep(&k), rep(&v));
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let p = candle_nn::ops::softmax(&s.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let reference = p
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, h * d))
            .unwrap();
        let diff = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn grouped_products_equal_each_projection_and_stand_aside_where_they_do_not_apply() {
        let dev = Device::Cpu;
        let k = 24;
        let proj = |out: usize, bias: bool, stream: u64| Linear {
            weight: matmul_layout(&Tensor::randn(0f32, 1.0, (out, k), &dev).unwrap()).unwrap(),
            bias: bias.then(|| Tensor::randn(0f32, 1.0, out, &dev).unwrap()),
            lora: None,
            stream,
            packed: PackedCache::default(),
        };
        // Widths that are not multiples of a panel; one projection with a bias.
        let (q, kp, v) = (proj(40, false, 0), proj(20, true, 1), proj(8, false, 2));
        let group = [&q, &kp, &v];
        let cache = PackedCache::default();
        for rows in [1, 5, MAX_ROWS] {
            let x = Tensor::randn(0f32, 1.0, (rows, 1, k), &dev).unwrap();
            let ys = grouped_products(&x, &group, &cache).unwrap();
            if !kernel_available() {
                assert!(ys.is_none());
                continue;
            }
            let ys = ys.expect("grouped");
            for (y, l) in ys.iter().zip(group) {
                let alone = l.forward(&x, Mode::Eval).unwrap();
                assert_eq!(y.dims(), alone.dims());
                let (y, alone) = (y.flatten_all().unwrap(), alone.flatten_all().unwrap());
                assert_eq!(
                    y.to_vec1::<f32>().unwrap(),
                    alone.to_vec1::<f32>().unwrap(),
                    "{rows} rows: the grouped product differs from the projection's own"
                );
            }
        }
        // More rows than the packed kernel takes, a graph to differentiate, an adapter.
        let many = Tensor::randn(0f32, 1.0, (MAX_ROWS + 1, k), &dev).unwrap();
        assert!(grouped_products(&many, &group, &cache).unwrap().is_none());
        let tracked = Var::randn(0f32, 1.0, (2, k), &dev).unwrap();
        assert!(
            grouped_products(tracked.as_tensor(), &group, &cache)
                .unwrap()
                .is_none()
        );
        let mut adapted = proj(8, false, 3);
        adapted.lora = Some(LoraAdapter {
            a: Tensor::zeros((2, k), DType::F32, &dev).unwrap(),
            b: Tensor::zeros((8, 2), DType::F32, &dev).unwrap(),
            scale: 1.0,
            dropout: 0.0,
        });
        let x = Tensor::randn(0f32, 1.0, (2, k), &dev).unwrap();
        assert!(
            grouped_products(&x, &[&q, &adapted], &PackedCache::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn causal_mask_blocks_future_and_padding() {
        let m = causal_mask(&[vec![0, 1, 1]], 2, &Device::Cpu).unwrap();
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        // Queries at absolute 1 and 2; key 0 is padding.
        assert_eq!(v, vec![f32::MIN, 0.0, f32::MIN, f32::MIN, 0.0, 0.0]);
    }

    #[test]
    fn seeded_dropout_is_reproducible_and_unbiased() {
        let x = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
        let a = dropout(&x, 0.25, 7).unwrap();
        let b = dropout(&x, 0.25, 7).unwrap();
        let c = dropout(&x, 0.25, 8).unwrap();
        let same = |x: &Tensor, y: &Tensor| {
            let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
            d.to_scalar::<f32>().unwrap() == 0.0
        };
        assert!(same(&a, &b));
        assert!(!same(&a, &c));
        let mean = a.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
    }
}
