//! `edco check-device`: does a device compute what the CPU computes, and how fast?
//!
//! The same model and the same token ids run on the CPU in f32 (the reference) and on the device
//! in f32 and bf16; each device run's logits are compared with the reference's, relative to the
//! reference's largest magnitude. Then the device's speed: its measured matrix-product rate in
//! the working dtype, and the throughput of a forward pass and of a training forward and
//! backward on the model, each also as a fraction of that product rate (model FLOPs
//! utilisation, counting the projections' and the head's products: 2 FLOPs per weight and token
//! forward, 6 with the backward).
//!
//! A `flash-attn` build also checks FlashAttention's kernels on a CUDA device against the
//! composed attention computed on the CPU in f32, and the model attending through them (over
//! left-padded prompts of different lengths, then cached decoding steps) against the CPU's
//! model, beside the composed attention on the device on the same inputs.

use crate::model::device::Attention;
use crate::model::io::{LoadOptions, dtype_name, load};
use crate::model::layers::Mode;
use crate::model::{Batch, Trainable};
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    pub model: String,
    pub device: Device,
    pub batch: usize,
    pub seq_len: usize,
    pub seed: u64,
    /// Timed repetitions of each speed measurement (after one untimed).
    pub reps: usize,
}

/// One device run's logits against the CPU f32 reference.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub dtype: &'static str,
    /// max |device - reference| / max |reference|.
    pub relative_error: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// The device's speed in one dtype.
#[derive(Debug, Clone, Serialize)]
pub struct Speed {
    pub dtype: &'static str,
    /// Square product size used for the product rate.
    pub matmul_size: usize,
    pub matmul_tflops: f64,
    pub forward_tokens_per_s: f64,
    pub forward_mfu: f64,
    pub train_tokens_per_s: f64,
    pub train_mfu: f64,
    /// The forward pass attending through FlashAttention, where the build and device have it.
    pub forward_flash_tokens_per_s: Option<f64>,
    pub forward_flash_mfu: Option<f64>,
    /// Weights the model FLOPs count (projections and head).
    pub matmul_params: usize,
}

/// The tolerance the comparison of `dtype` must meet: f32 agrees to rounding, bf16 (8 bits of
/// mantissa) to about a percent.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-4,
        _ => 1e-2,
    }
}

/// max |a - b| / max |b|; inputs of different lengths, or a non-finite value in `a`, are an
/// error or infinity, never a pass.
pub fn relative_error(a: &[f32], reference: &[f32]) -> Result<f64> {
    if a.len() != reference.len() {
        bail!(
            "{} values against {} in the reference",
            a.len(),
            reference.len()
        );
    }
    let scale = reference
        .iter()
        .fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let mut diff = 0f64;
    for (&x, &r) in a.iter().zip(reference) {
        let d = (f64::from(x) - f64::from(r)).abs();
        if !d.is_finite() {
            return Ok(f64::INFINITY);
        }
        diff = diff.max(d);
    }
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// Random token ids (batch, seq_len) below `vocab`.
fn token_rows(batch: usize, seq_len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..batch)
        .map(|_| {
            (0..seq_len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

fn logits(model: &crate::model::Decoder, device: &Device, rows: &[Vec<u32>]) -> Result<Vec<f32>> {
    let batch = Batch::right_padded(rows, 0, device)?;
    Ok(model
        .forward(&batch, Mode::Eval)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

fn load_on(spec: &CheckSpec, device: &Device, dtype: DType) -> Result<crate::model::Decoder> {
    let opts = LoadOptions {
        dtype,
        device: device.clone(),
        ..LoadOptions::default()
    };
    let loaded = load(&spec.model, &opts).with_context(|| {
        format!(
            "loading {} on {device:?} in {}",
            spec.model,
            dtype_name(dtype)
        )
    })?;
    Ok(loaded.model)
}

/// The device's logits in f32 and bf16 against the CPU's in f32. One model is loaded at a time.
pub fn agreement(spec: &CheckSpec) -> Result<Vec<Agreement>> {
    let (rows, reference) = {
        let model = load_on(spec, &Device::Cpu, DType::F32)?;
        let rows = token_rows(spec.batch, spec.seq_len, model.config.vocab_size, spec.seed);
        let reference = logits(&model, &Device::Cpu, &rows)?;
        (rows, reference)
    };
    [DType::F32, DType::BF16]
        .into_iter()
        .map(|dtype| {
            let model = load_on(spec, &spec.device, dtype)?;
            let got = logits(&model, &spec.device, &rows)?;
            let relative_error = relative_error(&got, &reference)?;
            let tolerance = tolerance(dtype);
            Ok(Agreement {
                dtype: dtype_name(dtype),
                relative_error,
                tolerance,
                pass: relative_error <= tolerance,
            })
        })
        .collect()
}

/// FlashAttention's causal self-attention on a CUDA device against the composed attention on
/// the CPU in f32, from the same bf16 inputs (drawn from `spec.seed`; grouped key/value heads),
/// at head sizes 64 and 128 (the kernels a `flash-attn` build carries) and at 256 and 300 tokens:
/// several key blocks, whole and ragged, so the kernels' running softmax across blocks and their
/// skipping of masked blocks are exercised. Empty on other devices and in other builds.
pub fn flash_attention_agreement(spec: &CheckSpec) -> Result<Vec<Agreement>> {
    if !spec.device.is_cuda() || !cfg!(feature = "flash-attn") {
        return Ok(Vec::new());
    }
    let (b, heads, kv_heads) = (spec.batch, 8, 2);
    let cpu = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    [
        (64, 256, "bf16 flash-attn, head size 64, 256 tokens"),
        (64, 300, "bf16 flash-attn, head size 64, 300 tokens"),
        (128, 256, "bf16 flash-attn, head size 128, 256 tokens"),
        (128, 300, "bf16 flash-attn, head size 128, 300 tokens"),
    ]
    .into_iter()
    .map(|(d, t, what)| {
        // Standard normal values rounded to bf16, held in f32: both sides start from the same
        // numbers.
        let mut input = |h: usize| -> Result<Tensor> {
            let values: Vec<f32> = (0..b * t * h * d)
                .map(|_| half::bf16::from_f32(rng.sample(rand_distr::StandardNormal)).to_f32())
                .collect();
            Ok(Tensor::from_vec(values, (b, t, h, d), &cpu)?)
        };
        let (q, k, v) = (input(heads)?, input(kv_heads)?, input(kv_heads)?);
        let reference = composed_causal_attention(&q, &k, &v)?;
        let got = flash_attention(&q, &k, &v, &spec.device)?.reshape((b, t, heads * d))?;
        let flat = |x: &Tensor| -> Result<Vec<f32>> {
            Ok(x.to_device(&cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        let relative_error = relative_error(&flat(&got)?, &flat(&reference)?)?;
        let tolerance = tolerance(DType::BF16);
        Ok(Agreement {
            dtype: what,
            relative_error,
            tolerance,
            pass: relative_error <= tolerance,
        })
    })
    .collect()
}

/// Logits of `model` over `prompts` left-padded into one batch, at every real prompt position,
/// then over `steps` cached decoding steps (one token per row each), flattened in that order.
fn ragged_logits(
    model: &crate::model::Decoder,
    prompts: &[Vec<u32>],
    steps: &[Vec<u32>],
) -> Result<Vec<f32>> {
    let device = model.device().clone();
    let flat = |x: Tensor| -> Result<Vec<Vec<f32>>> {
        Ok(x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.to_vec2()?)
    };
    let batch = Batch::left_padded(prompts, 0, &device)?;
    let (b, t) = batch.ids.dims2()?;
    let mut caches = model.new_cache();
    let hidden = model.step(&batch.ids, &batch.positions, &batch.mask, &mut caches)?;
    let logits = flat(model.logits(&hidden.reshape((b * t, ()))?)?)?;
    let mut out = Vec::new();
    for (i, row) in logits.into_iter().enumerate() {
        if batch.mask[i / t][i % t] == 1 {
            out.extend(row);
        }
    }
    let mut key_mask = batch.mask.clone();
    let mut next: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    for tokens in steps {
        key_mask.iter_mut().for_each(|m| m.push(1));
        let ids = Tensor::from_vec(tokens.clone(), (b, 1), &device)?;
        let positions = Tensor::from_vec(next.clone(), (b, 1), &device)?;
        next.iter_mut().for_each(|p| *p += 1);
        let hidden = model.step(&ids, &positions, &key_mask, &mut caches)?;
        out.extend(flat(model.logits(&hidden.squeeze(1)?)?)?.concat());
    }
    Ok(out)
}

/// Prompts of different lengths (`seq_len`, half of it, one token, ...) and four decoding
/// steps' tokens, drawn from `seed`.
fn ragged_inputs(
    rows: usize,
    seq_len: usize,
    vocab: usize,
    seed: u64,
) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let rows = rows.max(3);
    let mut prompts = token_rows(rows, seq_len, vocab, seed);
    for (i, p) in prompts.iter_mut().enumerate() {
        p.truncate(match i % 3 {
            0 => seq_len,
            1 => seq_len.div_ceil(2),
            _ => 1 + i / 3,
        });
    }
    let steps = token_rows(4, rows, vocab, seed + 1);
    (prompts, steps)
}

/// The model on a CUDA device in bf16 over left-padded prompts of different lengths and four
/// cached decoding steps, attending through the composed ops and through FlashAttention, each
/// against the CPU's model in f32 on the same inputs. Empty on other devices, in other builds,
/// and (with a warning) for head sizes the kernels are not built for.
pub fn flash_model_agreement(spec: &CheckSpec) -> Result<Vec<Agreement>> {
    if !spec.device.is_cuda() || !cfg!(feature = "flash-attn") {
        return Ok(Vec::new());
    }
    let (prompts, steps, reference) = {
        let model = load_on(spec, &Device::Cpu, DType::F32)?;
        let head_dim = model.config.head_dim;
        if let Some(why) =
            crate::model::varlen::flash_unavailable(DType::BF16, &spec.device, head_dim)
        {
            tracing::warn!("the model's FlashAttention check is skipped: {why}");
            return Ok(Vec::new());
        }
        let (prompts, steps) =
            ragged_inputs(spec.batch, spec.seq_len, model.config.vocab_size, spec.seed);
        let reference = ragged_logits(&model, &prompts, &steps)?;
        (prompts, steps, reference)
    };
    let mut model = load_on(spec, &spec.device, DType::BF16)?;
    let mut out = Vec::new();
    for (attention, what) in [
        (
            Attention::Composed,
            "bf16 composed attention, ragged prompts and 4 decoding steps",
        ),
        (
            Attention::Flash,
            "bf16 flash-attn model, ragged prompts and 4 decoding steps",
        ),
    ] {
        model.set_attention(attention)?;
        let got = ragged_logits(&model, &prompts, &steps)?;
        let relative_error = relative_error(&got, &reference)?;
        let tolerance = tolerance(DType::BF16);
        out.push(Agreement {
            dtype: what,
            relative_error,
            tolerance,
            pass: relative_error <= tolerance,
        });
    }
    Ok(out)
}

/// The composed (candle ops) causal attention of `q` (B, T, H, D) over `k`, `v` (B, T, KVH, D),
/// every key visible: (B, T, H * D), on the inputs' device and dtype.
fn composed_causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, t, _, _) = q.dims4()?;
    let mask = crate::model::layers::causal_mask(&vec![vec![1u8; t]; b], t, q.device())?;
    let heads_first = |x: &Tensor| x.transpose(1, 2)?.contiguous();
    Ok(crate::model::layers::attention(
        &heads_first(q)?,
        &heads_first(k)?,
        &heads_first(v)?,
        &mask,
        true,
    )?)
}

/// Causal FlashAttention of (B, T, heads, D) inputs in bf16 on `device`.
#[cfg(feature = "flash-attn")]
fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, device: &Device) -> Result<Tensor> {
    let on = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::BF16)?.to_device(device)?) };
    let scale = 1.0 / (q.dim(3)? as f32).sqrt();
    Ok(candle_flash_attn::flash_attn(
        &on(q)?,
        &on(k)?,
        &on(v)?,
        scale,
        true,
    )?)
}

#[cfg(not(feature = "flash-attn"))]
fn flash_attention(_q: &Tensor, _k: &Tensor, _v: &Tensor, _device: &Device) -> Result<Tensor> {
    bail!("this build has no FlashAttention (build with --features flash-attn)")
}

/// Seconds per call of `f`, the best of `reps` after one untimed call, the device drained
/// before each clock read.
fn best_seconds(device: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Product rate, forward and training throughput on the device in `dtype`.
pub fn speed(spec: &CheckSpec, dtype: DType, matmul_size: usize) -> Result<Speed> {
    let dev = &spec.device;
    let a = Tensor::randn(0f32, 1.0, (matmul_size, matmul_size), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (matmul_size, matmul_size), dev)?.to_dtype(dtype)?;
    let s = best_seconds(dev, spec.reps, || {
        a.matmul(&b).map(drop).map_err(Into::into)
    })?;
    let matmul_flops = 2.0 * (matmul_size as f64).powi(3) / s;

    let opts = LoadOptions {
        dtype,
        device: dev.clone(),
        trainable: Trainable::Full,
        ..LoadOptions::default()
    };
    let loaded = load(&spec.model, &opts)?;
    let model = &loaded.model;
    let c = &model.config;
    let embedding = c.vocab_size * c.hidden_size;
    let all: usize = model
        .named_parameters()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    // Tied or not, the head is one (vocab, hidden) product; the embedding is a lookup.
    let matmul_params = all - if c.tie_word_embeddings { 0 } else { embedding };
    let rows = token_rows(spec.batch, spec.seq_len, c.vocab_size, spec.seed);
    let batch = Batch::right_padded(&rows, 0, dev)?;
    let tokens = (spec.batch * spec.seq_len) as f64;

    let forward = |model: &crate::model::Decoder| {
        best_seconds(dev, spec.reps, || {
            model
                .forward(&batch, Mode::Eval)
                .map(drop)
                .map_err(Into::into)
        })
    };
    let fwd = forward(model)?;
    let train = best_seconds(dev, spec.reps, || {
        let loss = model
            .forward(&batch, Mode::Train { seed: 0 })?
            .to_dtype(DType::F32)?
            .sqr()?
            .mean_all()?;
        loss.backward().map(drop).map_err(Into::into)
    })?;
    let per_token = 2.0 * matmul_params as f64;
    let mut loaded = loaded;
    let fwd_flash = match loaded.model.set_attention(Attention::Flash) {
        Ok(()) => Some(forward(&loaded.model)?),
        Err(_) => None,
    };
    Ok(Speed {
        dtype: dtype_name(dtype),
        matmul_size,
        matmul_tflops: matmul_flops / 1e12,
        forward_tokens_per_s: tokens / fwd,
        forward_mfu: per_token * tokens / fwd / matmul_flops,
        train_tokens_per_s: tokens / train,
        train_mfu: 3.0 * per_token * tokens / train / matmul_flops,
        forward_flash_tokens_per_s: fwd_flash.map(|s| tokens / s),
        forward_flash_mfu: fwd_flash.map(|s| per_token * tokens / s / matmul_flops),
        matmul_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference the FlashAttention check holds the GPU to is the CPU's own attention.
    #[test]
    fn composed_causal_attention_matches_the_cpu_attention_kernel() {
        let cpu = Device::Cpu;
        let (b, t, h, kvh, d) = (2, 37, 8, 2, 64);
        let q = Tensor::randn(0f32, 1.0, (b, t, h, d), &cpu).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, t, kvh, d), &cpu).unwrap();
        let composed = composed_causal_attention(&q, &k, &v).unwrap();
        let kernel =
            crate::model::kernels::attention::attention(&q, &k, &v, &vec![vec![1u8; t]; b])
                .unwrap();
        assert_eq!(composed.dims(), [b, t, h * d]);
        let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let e = relative_error(&flat(&composed), &flat(&kernel)).unwrap();
        assert!(e < 1e-5, "{e}");
        // Not causal would differ: the first query sees only the first key.
        let first = composed
            .narrow(1, 0, 1)
            .unwrap()
            .reshape((b, h, d))
            .unwrap();
        let v0 = v.narrow(1, 0, 1).unwrap().reshape((b, kvh, d)).unwrap();
        for head in 0..h {
            let got = first.narrow(1, head, 1).unwrap();
            let v_head = v0.narrow(1, head / (h / kvh), 1).unwrap();
            let diff = (got - v_head).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-5, "head {head}");
        }
    }

    #[test]
    fn relative_error_is_against_the_reference_scale() {
        let r = [1.0f32, -4.0, 2.0];
        assert_eq!(relative_error(&r, &r).unwrap(), 0.0);
        let e = relative_error(&[1.0, -4.0, 2.2], &r).unwrap();
        assert!((e - 0.05).abs() < 1e-6, "{e}");
        assert!(
            relative_error(&[1.0, f32::NAN, 2.0], &r)
                .unwrap()
                .is_infinite()
        );
        assert!(relative_error(&[1.0], &r).is_err());
    }

    /// The harness of the model-level FlashAttention check: on the CPU, the packed path through
    /// the reference kernel gives the masked kernel's logits, and every real prompt position
    /// and decoding step is compared.
    #[test]
    fn ragged_logits_agree_between_the_packed_reference_and_the_masked_kernel() {
        let (_dir, mut model) =
            crate::model::testing::tiny_model(crate::model::config::Arch::Qwen3, 3, DType::F32);
        let vocab = model.config.vocab_size;
        let (prompts, steps) = ragged_inputs(4, 9, vocab, 7);
        let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![9, 5, 1, 9]);
        let masked = ragged_logits(&model, &prompts, &steps).unwrap();
        assert_eq!(masked.len(), (24 + 4 * 4) * vocab);
        model.set_varlen_kernel(Some(crate::model::varlen::reference));
        let packed = ragged_logits(&model, &prompts, &steps).unwrap();
        let e = relative_error(&packed, &masked).unwrap();
        assert!(e < 1e-5, "{e}");
    }
}
