//! Model-layer throughput on CPU, the loops users wait on: a fine-tuning step (forward +
//! cross-entropy + backward + the trainer's AdamW; full, or LoRA r = 16 on every projection) at batch 4 x 256,
//! the prefill of 16 MedQA-sized prompts, and batched greedy generation
//! with per-token entropy (16 left-padded prompts of 8..40 tokens, 128 new tokens each). The same
//! shapes as scripts/bench_torch.py, which scripts/bench_model.sh runs beside this for the ratio.
//!
//! `cargo bench --bench model -- --model GGUF_OR_HF_DIR --case train|train-lora|generate|prefill
//! [--warmup N] [--steps N] [--new-tokens N] [--dtype f32|bf16]` prints one JSON object, with the
//! process's peak resident memory (model loading included). `--dtype bf16` runs candle's composed
//! ops instead of the CPU's f32 kernels: the code path CUDA devices take.
//!
//! `--case machine` measures what bounds those loops on this CPU, for reading the ratios: the
//! rate of fused multiply-adds from registers, of reading memory, of the general matmul on the
//! model's layer shapes (1024 rows, as a training step has) and of the packed decoding product
//! (16 rows against the head's weight).

use anyhow::{Context, Result};
use candle_core::Device;
use candle_core::Tensor;
use edco::model::device::Precision;
use edco::model::generate::{GenerateOptions, Prompt, generate};
use edco::model::io::{LoadOptions, load};
use edco::model::kernels::decode::PackedCache;
use edco::model::kernels::token_log_probs::token_log_probs;
use edco::model::layers::Mode;
use edco::model::lora::LoraConfig;
use edco::model::sampling::Sampling;
use edco::model::{Batch, Trainable};
use edco::trainer::optim::{AdamW, AdamWParams, GradAccumulator};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Instant;

struct Args {
    model: String,
    case: String,
    warmup: usize,
    steps: usize,
    new_tokens: usize,
    /// f32 (the CPU's kernels) or bf16 (candle's composed ops, the path other devices take).
    dtype: candle_core::DType,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        model: String::new(),
        case: "train".into(),
        warmup: 1,
        steps: 3,
        new_tokens: 128,
        dtype: candle_core::DType::F32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" | "--gguf" => a.model = value()?,
            "--new-tokens" => a.new_tokens = value()?.parse()?,
            "--case" => a.case = value()?,
            "--warmup" => a.warmup = value()?.parse()?,
            "--steps" => a.steps = value()?.parse()?,
            "--dtype" => a.dtype = value()?.parse::<Precision>()?.dtype(),
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(!a.model.is_empty(), "--model GGUF_OR_HF_DIR is required");
    Ok(a)
}

/// The process's peak resident memory so far, in MiB.
fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

fn random_ids(rng: &mut StdRng, n: usize, first: u32, vocab: u32) -> Vec<u32> {
    (0..n).map(|_| rng.random_range(first..vocab)).collect()
}

fn main() -> Result<()> {
    // As the edco binary does.
    edco::alloc::tune_for_compute();
    edco::threads::run_on_pool(bench)
}

fn bench() -> Result<()> {
    let args = parse()?;
    let trainable = match args.case.as_str() {
        "train" => Trainable::Full,
        // PEFT's usual setting: every projection, r = 16, alpha = 32, no dropout.
        "train-lora" => Trainable::Lora(LoraConfig {
            dropout: 0.0,
            ..Default::default()
        }),
        _ => Trainable::Frozen,
    };
    let t0 = Instant::now();
    let m = load(
        &args.model,
        &LoadOptions {
            trainable,
            dtype: args.dtype,
            ..Default::default()
        },
    )?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let vocab = m.model.config.vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(0);
    // Ordinary tokens only, above SmolLM2's 17 special tokens.
    let first = 17;
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    let result = match args.case.as_str() {
        "train" | "train-lora" => {
            let (b, t) = (4, 256);
            let rows: Vec<Vec<u32>> = (0..b)
                .map(|_| random_ids(&mut rng, t, first, vocab))
                .collect();
            let batch = Batch::right_padded(&rows, 0, &Device::Cpu)?;
            let targets = batch.ids.narrow(1, 1, t - 1)?.flatten_all()?;
            // The trainer's optimizer, with PyTorch's AdamW defaults; no clipping, as in the
            // plain PyTorch loop (the global norm is still computed, as the trainer does).
            let vars = m.model.vars().to_vec();
            let mut opt = AdamW::new(
                vars.clone(),
                AdamWParams {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                },
            )?;
            let mut step = |seed: u64| -> Result<f32> {
                // As the trainer does: the positions that predict a token are picked from the
                // hidden states, and only they go through the head.
                let hidden = m.model.hidden_states(&batch, Mode::Train { seed })?;
                let hidden = hidden.narrow(1, 0, t - 1)?.reshape((b * (t - 1), ()))?;
                let logits = m.model.logits(&hidden)?;
                // The trainer's loss: mean NLL from the per-token log-probs.
                let loss = token_log_probs(&logits, &targets)?.mean_all()?.neg()?;
                let mut acc = GradAccumulator::new(vars.len());
                acc.add(&vars, &loss.backward()?)?;
                let (grads, _norm) = acc.finish(&vars, 0.0)?;
                opt.apply(&grads, 1e-5)?;
                Ok(loss.to_scalar::<f32>()?)
            };
            for i in 0..args.warmup {
                step(i as u64)?;
            }
            let start = Instant::now();
            let mut losses = Vec::new();
            for i in 0..args.steps {
                losses.push(step(1000 + i as u64)?);
            }
            let secs = start.elapsed().as_secs_f64();
            serde_json::json!({
                "tool": "edco", "case": args.case, "threads": threads, "load_seconds": load_seconds,
                "batch": b, "seq_len": t, "timed_steps": args.steps,
                "seconds_per_step": secs / args.steps as f64,
                "tokens_per_s": (b * t * args.steps) as f64 / secs, "losses": losses,
            })
        }
        "generate" => {
            let prompts: Vec<Prompt> = (0..16)
                .map(|i| {
                    let n = (8.0 + 32.0 * i as f64 / 15.0).round() as usize;
                    Prompt {
                        ids: random_ids(&mut rng, n, first, vocab),
                        seed: i,
                    }
                })
                .collect();
            let opts = GenerateOptions {
                max_new_tokens: args.new_tokens,
                sampling: Sampling::Greedy,
                eos_token_ids: vec![],
                pad_id: m.tokenizer.pad_id(),
                keep_log_probs: false,
                keep_first_log_probs: false,
                samples_per_prompt: 1,
            };
            for _ in 0..args.warmup {
                generate(&m.model, &prompts, &opts)?;
            }
            let start = Instant::now();
            let mut mean_entropy = 0f32;
            for _ in 0..args.steps {
                let gens = generate(&m.model, &prompts, &opts)?;
                let n = args.new_tokens;
                anyhow::ensure!(gens.iter().all(|g| g.tokens.len() == n));
                mean_entropy =
                    gens.iter().flat_map(|g| &g.entropies).sum::<f32>() / (16 * n) as f32;
            }
            let secs = start.elapsed().as_secs_f64();
            serde_json::json!({
                "tool": "edco", "case": "generate", "threads": threads, "load_seconds": load_seconds,
                "dtype": edco::model::io::dtype_name(args.dtype),
                "prompts": 16, "new_tokens_per_row": args.new_tokens, "timed_iters": args.steps,
                "seconds_per_iter": secs / args.steps as f64,
                "new_tokens_per_s": (16 * args.new_tokens * args.steps) as f64 / secs,
                "mean_entropy": mean_entropy,
            })
        }
        "prefill" => {
            // The entropy estimator's first step on MedQA-sized prompts: 16 left-padded prompts of
            // 300..450 tokens through the model, logits and entropy at the last position only.
            let prompts: Vec<Vec<u32>> = (0..16)
                .map(|i| {
                    let n = (300.0 + 150.0 * i as f64 / 15.0).round() as usize;
                    random_ids(&mut rng, n, first, vocab)
                })
                .collect();
            let prompts: Vec<Prompt> = prompts
                .into_iter()
                .enumerate()
                .map(|(i, ids)| Prompt {
                    ids,
                    seed: i as u64,
                })
                .collect();
            let opts = GenerateOptions {
                max_new_tokens: 1,
                sampling: Sampling::Greedy,
                eos_token_ids: vec![],
                pad_id: m.tokenizer.pad_id(),
                keep_log_probs: false,
                keep_first_log_probs: false,
                samples_per_prompt: 1,
            };
            let run = || generate(&m.model, &prompts, &opts);
            for _ in 0..args.warmup {
                run()?;
            }
            let start = Instant::now();
            for _ in 0..args.steps {
                run()?;
            }
            let secs = start.elapsed().as_secs_f64();
            let tokens: usize = prompts.iter().map(|p| p.ids.len()).sum();
            serde_json::json!({
                "tool": "edco", "case": "prefill", "threads": threads, "load_seconds": load_seconds,
                "prompts": 16, "prompt_tokens": tokens, "timed_iters": args.steps,
                "seconds_per_iter": secs / args.steps as f64,
                "prompt_tokens_per_s": (tokens * args.steps) as f64 / secs,
            })
        }
        "machine" => machine(&m.model.config)?,
        other => {
            anyhow::bail!("unknown case {other}: train, train-lora, generate, prefill or machine")
        }
    };
    let mut result = result;
    result["peak_rss_mb"] = peak_rss_mb().into();
    println!("{result}");
    Ok(())
}

/// The best of `reps` timings of `f`, in seconds, after one untimed call.
fn best_of(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// What bounds the loops above on this CPU, every figure over all the pool's threads.
fn machine(config: &edco::model::config::ModelConfig) -> Result<serde_json::Value> {
    let threads = rayon::current_num_threads();
    // Fused multiply-adds from registers: 12 independent chains per thread.
    let fma = fma_rate(threads);
    // Reading memory: a sum over 512 MiB, far past the last-level cache, a slice per thread.
    let data: Vec<f32> = (0..128 << 20).map(|i| (i % 1000) as f32).collect();
    let mut total = 0f32;
    let read = best_of(5, || {
        use rayon::prelude::*;
        let per = data.len().div_ceil(threads);
        total = data
            .par_chunks(per)
            .map(|part| {
                let mut lanes = [0f32; 16];
                for block in part.chunks_exact(16) {
                    lanes.iter_mut().zip(block).for_each(|(l, x)| *l += x);
                }
                lanes.iter().sum::<f32>()
            })
            .sum();
        Ok(())
    })?;
    std::hint::black_box(total);
    let read_gb_s = (data.len() * 4) as f64 / read / 1e9;
    drop(data);
    // The general matmul on a training step's shapes: 1024 rows through each projection.
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let mut matmul = serde_json::Map::new();
    for (k, n) in [(h, i), (i, h), (h, h), (h, v)] {
        let a = Tensor::randn(0f32, 1.0, (1024, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
        let secs = best_of(5, || {
            std::hint::black_box(a.matmul(&b)?);
            Ok(())
        })?;
        let gflops = 2.0 * (1024 * k * n) as f64 / secs / 1e9;
        matmul.insert(format!("1024x{k}x{n}"), gflops.into());
    }
    // The packed decoding product: 16 rows against the head's weight, which outgrows the cache.
    let w = Tensor::randn(0f32, 1.0, (v, h), &Device::Cpu)?;
    let packed = PackedCache::default().get(&w, 16)?;
    let decode = match packed {
        Some(p) => {
            let x: Vec<f32> = (0..16 * h).map(|j| (j % 7) as f32 * 0.1).collect();
            let mut out = vec![0f32; 16 * v];
            let secs = best_of(5, || Ok(p.matmul(&mut out, &x, 16)?))?;
            serde_json::json!({
                "shape": format!("16x{h}x{v}"),
                "weight_gb_s": (v * h * 4) as f64 / secs / 1e9,
                "gflops": 2.0 * (16 * h * v) as f64 / secs / 1e9,
            })
        }
        None => serde_json::Value::Null,
    };
    Ok(serde_json::json!({
        "tool": "edco", "case": "machine", "threads": threads,
        "fma_gflops": fma, "read_gb_s": read_gb_s, "matmul_gflops": matmul,
        "decode_product": decode,
    }))
}

/// GFLOP/s of fused multiply-adds kept in registers, over `threads` threads at once; `None` on
/// a CPU without AVX-512 or AVX2 with FMA.
fn fma_rate(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        let (width, run): (usize, unsafe fn(usize) -> f32) =
            if std::arch::is_x86_feature_detected!("avx512f") {
                (16, fma_avx512)
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                (8, fma_avx2)
            } else {
                return None;
            };
        let iters = 20_000_000;
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            // SAFETY: the instruction set was detected on this CPU.
            let sums = rayon::broadcast(|_| unsafe { run(iters) });
            std::hint::black_box(sums);
            best = best.min(start.elapsed().as_secs_f64());
        }
        Some((2 * 12 * width * iters * threads) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    let mut lanes = [0f32; 8];
    acc.iter().fold(0.0, |sum, &a| {
        // SAFETY: eight f32 lanes into eight f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        sum + lanes.iter().sum::<f32>()
    })
}
