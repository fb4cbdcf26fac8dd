//! Properties of the model layer on the briefly trained tiny fixtures (their logits are far from
//! uniform, so a wrong mask, position or cache shows): cached generation equals the uncached
//! forward, batching does not change a row, gradients reach exactly the trainable parameters,
//! LoRA with B = 0 is the base, merged equals unmerged, and checkpoints round-trip bit-exactly.

use crate::common;

use candle_core::{D, DType, Device, Tensor};
use common::{fixture, max_abs_diff};
use edco::init_model::byte_tokenizer;
use edco::model::config::ModelConfig;
use edco::model::generate::{GenerateOptions, Prompt, generate};
use edco::model::io::safetensors::WeightSource;
use edco::model::io::save_hf_dir;
use edco::model::layers::Mode;
use edco::model::lora::{self, LoraConfig};
use edco::model::sampling::Sampling;
use edco::model::{Batch, Decoder, Trainable};

const ARCHS: [&str; 2] = ["tiny-qwen3", "tiny-llama3"];

fn load(name: &str, trainable: Trainable) -> Decoder {
    load_as(name, trainable, DType::F32)
}

fn load_as(name: &str, trainable: Trainable, dtype: DType) -> Decoder {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let w = WeightSource::from_hf_dir(&dir).unwrap();
    Decoder::new(cfg, &w, dtype, &Device::Cpu, trainable, 1).unwrap()
}

fn prompts() -> Vec<Prompt> {
    [
        vec![5u32, 17, 33, 2 + 40, 9],
        vec![100, 3, 7, 250, 11, 12, 13, 14, 15],
        vec![77, 78],
    ]
    .into_iter()
    .enumerate()
    .map(|(i, ids)| Prompt {
        ids,
        seed: 1000 + i as u64,
    })
    .collect()
}

fn opts(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 0,
        },
        eos_token_ids: vec![],
        pad_id: 0,
        keep_log_probs: false,
        keep_first_log_probs: false,
        samples_per_prompt: 1,
    }
}

/// Entropy and log p(next token) at every position of one unpadded sequence, uncached.
fn uncached_stats(model: &Decoder, ids: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let batch = Batch::right_padded(&[ids.to_vec()], 0, &Device::Cpu).unwrap();
    let logits = model
        .forward(&batch, Mode::Eval)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let entropy: Vec<f32> = (lsm.exp().unwrap() * &lsm)
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .neg()
        .unwrap()
        .to_vec1()
        .unwrap();
    let lsm: Vec<Vec<f32>> = lsm.to_vec2().unwrap();
    let next: Vec<f32> = (0..ids.len() - 1)
        .map(|t| lsm[t][ids[t + 1] as usize])
        .collect();
    (entropy, next)
}

#[test]
fn cached_generation_equals_uncached_forward() {
    for name in ARCHS {
        let model = load(name, Trainable::Frozen);
        let ps = prompts();
        let gens = generate(&model, &ps, &opts(10)).unwrap();
        for (p, g) in ps.iter().zip(&gens) {
            assert_eq!(g.tokens.len(), 10);
            let full: Vec<u32> = p.ids.iter().chain(&g.tokens).copied().collect();
            let (entropy, next) = uncached_stats(&model, &full);
            let n = p.ids.len();
            for k in 0..g.tokens.len() {
                let t = n - 1 + k;
                assert!(
                    (entropy[t] - g.entropies[k]).abs() < 1e-4,
                    "{name} step {k}: {} vs {}",
                    entropy[t],
                    g.entropies[k]
                );
                assert!(
                    (next[t] - g.token_log_probs[k]).abs() < 1e-4,
                    "{name} step {k}"
                );
            }
        }
        // The fixture is not near-uniform: entropies well below ln(320) = 5.77.
        let mean = gens.iter().flat_map(|g| &g.entropies).sum::<f32>() / 30.0;
        assert!(mean < 5.0, "{name}: mean entropy {mean}");
    }
}

#[test]
fn releasing_the_weights_packed_for_decoding_changes_no_result() {
    for name in ARCHS {
        let model = load(name, Trainable::Frozen);
        let first = generate(&model, &prompts(), &opts(6)).unwrap();
        model.release_packed();
        let again = generate(&model, &prompts(), &opts(6)).unwrap();
        for (a, b) in first.iter().zip(&again) {
            assert_eq!(a.tokens, b.tokens, "{name}");
            assert_eq!(a.entropies, b.entropies, "{name}");
        }
    }
}

#[test]
fn a_row_generates_the_same_alone_and_in_a_mixed_batch() {
    for name in ARCHS {
        let model = load(name, Trainable::Frozen);
        let ps = prompts();
        let together = generate(&model, &ps, &opts(8)).unwrap();
        for (i, p) in ps.iter().enumerate() {
            let alone = generate(&model, std::slice::from_ref(p), &opts(8)).unwrap();
            assert_eq!(alone[0].tokens, together[i].tokens, "{name} row {i}");
            for (a, b) in alone[0].entropies.iter().zip(&together[i].entropies) {
                assert!((a - b).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn a_batch_prefilled_in_several_chunks_generates_what_each_row_does_alone() {
    // 12 prompts of 200..420 tokens: more than one prefill chunk's worth of prompt tokens, so
    // the caches of several chunks are joined before decoding.
    let ps: Vec<Prompt> = (0..12u32)
        .map(|i| Prompt {
            ids: (0..200 + 20 * i)
                .map(|j| 3 + (i * 31 + j * 7) % 300)
                .collect(),
            seed: 50 + i as u64,
        })
        .collect();
    for name in ARCHS {
        let model = load(name, Trainable::Frozen);
        let together = generate(&model, &ps, &opts(6)).unwrap();
        for (i, p) in ps.iter().enumerate() {
            let alone = generate(&model, std::slice::from_ref(p), &opts(6)).unwrap();
            assert_eq!(alone[0].tokens, together[i].tokens, "{name} row {i}");
            for (a, b) in alone[0].entropies.iter().zip(&together[i].entropies) {
                assert!((a - b).abs() < 1e-4, "{name} row {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn generation_stops_at_eos_and_drops_finished_rows() {
    let model = load("tiny-qwen3", Trainable::Frozen);
    let ps = prompts();
    let free = generate(&model, &ps, &opts(6)).unwrap();
    // Make row 0's third token an EOS: it must stop there while the others go on unchanged.
    let eos = free[0].tokens[2];
    let mut o = opts(6);
    o.eos_token_ids = vec![eos];
    let stopped = generate(&model, &ps, &o).unwrap();
    let first = free[0].tokens.iter().position(|&t| t == eos).unwrap();
    assert_eq!(stopped[0].tokens, free[0].tokens[..=first]);
    assert!(stopped[0].finished);
    for i in 1..ps.len() {
        let cut = free[i]
            .tokens
            .iter()
            .position(|&t| t == eos)
            .map_or(6, |p| p + 1);
        assert_eq!(stopped[i].tokens, free[i].tokens[..cut], "row {i}");
    }
}

fn loss(model: &Decoder, mode: Mode) -> Tensor {
    loss_padded_with(model, mode, 0)
}

fn loss_padded_with(model: &Decoder, mode: Mode, pad: u32) -> Tensor {
    let rows = vec![vec![1u32, 2, 3, 4, 5, 6], vec![9u32, 8, 7]];
    let batch = Batch::left_padded(&rows, pad, &Device::Cpu).unwrap();
    let logits = model.forward(&batch, mode).unwrap();
    let (b, t, v) = logits.dims3().unwrap();
    let targets = Tensor::new(&[[2u32, 3, 4, 5, 6, 7], [0, 0, 0, 8, 7, 6]], &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(
        &logits.reshape((b * t, v)).unwrap(),
        &targets.flatten_all().unwrap(),
    )
    .unwrap()
}

fn grad_norm(grads: &candle_core::backprop::GradStore, t: &Tensor) -> Option<f32> {
    let g = grads.get(t)?.to_dtype(DType::F32).unwrap();
    Some(
        g.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    )
}

#[test]
fn gradients_reach_every_parameter_in_full_fine_tuning() {
    for name in ARCHS {
        let model = load(name, Trainable::Full);
        let n_params = model.named_parameters().len();
        assert_eq!(
            model.vars().len(),
            n_params,
            "{name}: every parameter is a variable"
        );
        let grads = loss(&model, Mode::Train { seed: 0 }).backward().unwrap();
        for (pname, var) in model.vars() {
            let g = grad_norm(&grads, var.as_tensor()).unwrap_or(0.0);
            assert!(g > 0.0, "{name}: `{pname}` got no gradient");
        }
    }
}

/// Fixed pseudo-random values in [-0.5, 0.5) of `shape`, a different set for each `stream`, so
/// that a check built on them is the same on every run.
fn fixed_values(stream: u64, shape: &candle_core::Shape) -> Tensor {
    let vals = (0..shape.elem_count() as u64)
        .map(|j| {
            let h = (stream << 32 | j).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            h as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
}

/// `<grad, v>` against `(L(w + eps v) - L(w - eps v)) / (2 eps)` along a fixed pseudo-random unit
/// direction `v` over the model's variables: the whole backward pass (hand-written ops and
/// candle's accumulation of gradients) checked against the forward alone. The padding token is
/// one with a nonzero embedding: tiny-llama3's token 0 embeds to zeros, where RMSNorm (eps 1e-6)
/// is far from linear over any step finite differences can take in f32.
fn check_directional_derivative(name: &str, model: &Decoder) {
    let vars = model.vars();
    let loss = |model| loss_padded_with(model, Mode::Train { seed: 0 }, 3);
    let grads = loss(model).backward().unwrap();
    let dirs: Vec<Tensor> = vars
        .iter()
        .enumerate()
        .map(|(i, (_, v))| fixed_values(i as u64, v.shape()))
        .collect();
    let norm: f32 = dirs
        .iter()
        .map(|d| {
            d.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .sum::<f32>()
        .sqrt();
    let mut analytic = 0f64;
    for ((pname, var), d) in vars.iter().zip(&dirs) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{pname}: no gradient"));
        analytic += (g * d)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
    }
    analytic /= norm as f64;
    let eps = 1e-2;
    let at = |sign: f64| {
        let originals: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        for ((_, var), (w, d)) in vars.iter().zip(originals.iter().zip(&dirs)) {
            var.set(&(w + (d * (sign * eps / norm as f64)).unwrap()).unwrap())
                .unwrap();
        }
        let l = loss(model).to_scalar::<f32>().unwrap() as f64;
        for ((_, var), w) in vars.iter().zip(&originals) {
            var.set(w).unwrap();
        }
        l
    };
    let numeric = (at(1.0) - at(-1.0)) / (2.0 * eps);
    assert!(
        analytic.abs() > 1e-3,
        "{name}: a degenerate direction ({analytic})"
    );
    assert!(
        (analytic - numeric).abs() <= 2e-2 * analytic.abs() + 2e-4,
        "{name}: backward gives {analytic}, finite differences {numeric}"
    );
}

#[test]
fn full_fine_tuning_gradients_match_finite_differences() {
    for name in ARCHS {
        check_directional_derivative(name, &load(name, Trainable::Full));
    }
}

/// A variable's gradient holds only its own values: the LoRA op returns dx, dA and dB as views
/// of one buffer, and keeping dA's view would keep the layer's whole dx alive with it.
#[test]
fn adapter_gradients_do_not_hold_the_input_gradient() {
    let model = load("tiny-qwen3", Trainable::Lora(lora_cfg()));
    random_b(&model);
    let grads = loss(&model, Mode::Train { seed: 0 }).backward().unwrap();
    for (pname, var) in model.vars() {
        let g = grads.get(var.as_tensor()).unwrap();
        let (storage, layout) = g.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(values)) = &*storage else {
            panic!("{pname}: not an f32 CPU gradient");
        };
        assert_eq!(
            (values.len(), layout.start_offset()),
            (var.elem_count(), 0),
            "{pname}: the gradient is a view of a larger buffer"
        );
    }
}

#[test]
fn lora_gradients_match_finite_differences() {
    for name in ARCHS {
        let model = load(name, Trainable::Lora(lora_cfg()));
        // B nonzero (it starts at zero), and the same on every run.
        for (i, (pname, var)) in model.vars().iter().enumerate() {
            if pname.contains("lora_B") {
                var.set(&fixed_values(1000 + i as u64, var.shape()))
                    .unwrap();
            }
        }
        check_directional_derivative(name, &model);
    }
}

/// The gradient store keeps a node's first gradient as it is; these are the cases where that
/// could go wrong: a tensor fed to one op twice (both gradients are the same tensor), several
/// consumers, a first gradient that is a transposed view, and a wrongly shaped gradient.
#[test]
fn backward_sums_every_consumer_and_stores_contiguous_gradients() {
    let x = candle_core::Var::new(&[[1f32, -2., 3.], [0.5, 4., -1.]], &Device::Cpu).unwrap();
    let xs = x.as_tensor();
    // d/dx [sum(x + x) + sum(x^2) + sum((x^T)^2)] = 2 + 4x
    let loss = ((xs + xs).unwrap().sum_all().unwrap()
        + xs.sqr().unwrap().sum_all().unwrap()
        + xs.t().unwrap().sqr().unwrap().sum_all().unwrap())
    .unwrap();
    let g = loss.backward().unwrap();
    let want = ((xs * 4.0).unwrap() + 2.0).unwrap();
    assert_eq!(
        g.get(xs).unwrap().to_vec2::<f32>().unwrap(),
        want.to_vec2::<f32>().unwrap()
    );

    // Reached only through a transpose: the stored gradient is laid out as x.
    let y = candle_core::Var::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu).unwrap();
    let w = Tensor::new(&[[1f32, 10., 100.], [-1., -10., -100.]], &Device::Cpu).unwrap();
    let g = (y.as_tensor().t().unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gy = g.get(y.as_tensor()).unwrap();
    assert!(gy.is_contiguous());
    assert_eq!(
        gy.to_vec2::<f32>().unwrap(),
        w.t().unwrap().to_vec2::<f32>().unwrap()
    );

    struct WrongGrad;
    impl candle_core::CustomOp1 for WrongGrad {
        fn name(&self) -> &'static str {
            "wrong-grad"
        }
        fn cpu_fwd(
            &self,
            s: &candle_core::CpuStorage,
            l: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            let v = s.as_slice::<f32>()?[l.start_offset()..][..l.shape().elem_count()].to_vec();
            Ok((candle_core::CpuStorage::F32(v), l.shape().clone()))
        }
        fn bwd(
            &self,
            arg: &Tensor,
            _res: &Tensor,
            _grad: &Tensor,
        ) -> candle_core::Result<Option<Tensor>> {
            Ok(Some(Tensor::zeros(
                arg.elem_count() + 1,
                DType::F32,
                arg.device(),
            )?))
        }
    }
    let z = candle_core::Var::new(&[1f32, 2.], &Device::Cpu).unwrap();
    let err = z
        .as_tensor()
        .apply_op1(WrongGrad)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward();
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains("shape mismatch"), "{msg}");
}

fn random_b(model: &Decoder) {
    for (i, (name, var)) in model.vars().iter().enumerate() {
        if name.contains("lora_B") {
            let t = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
            let t = (t * (1.0 + i as f64 * 1e-3)).unwrap();
            var.set(&t).unwrap();
        }
    }
}

fn lora_cfg() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    }
}

#[test]
fn lora_trains_only_adapters_and_starts_at_the_base() {
    for name in ARCHS {
        let base = load(name, Trainable::Frozen);
        let model = load(name, Trainable::Lora(lora_cfg()));
        // 7 projections x 2 layers x (A, B)
        assert_eq!(model.vars().len(), 28);
        let batch =
            Batch::left_padded(&[vec![3u32, 1, 4, 1, 5], vec![9, 2]], 0, &Device::Cpu).unwrap();
        let l0 = base.forward(&batch, Mode::Eval).unwrap();
        let l1 = model.forward(&batch, Mode::Eval).unwrap();
        assert_eq!(
            max_abs_diff(&l0, &l1),
            0.0,
            "{name}: B = 0 must equal the base"
        );

        random_b(&model);
        let grads = loss(&model, Mode::Train { seed: 0 }).backward().unwrap();
        for (pname, var) in model.vars() {
            assert!(
                grad_norm(&grads, var.as_tensor()).unwrap_or(0.0) > 0.0,
                "{name}: `{pname}` got no gradient"
            );
        }
        for (pname, t) in model.named_parameters() {
            assert!(
                grads.get(&t).is_none(),
                "{name}: frozen `{pname}` got a gradient"
            );
        }
        // Switching adapters off gives the base back.
        let off = model.forward(&batch, Mode::BaseOnly).unwrap();
        assert_eq!(max_abs_diff(&l0, &off), 0.0);
    }
}

#[test]
fn merged_lora_equals_unmerged() {
    for name in ARCHS {
        let mut model = load(name, Trainable::Lora(lora_cfg()));
        random_b(&model);
        let batch =
            Batch::right_padded(&[vec![3u32, 1, 4, 1, 5], vec![9, 2]], 0, &Device::Cpu).unwrap();
        let unmerged = model.forward(&batch, Mode::Eval).unwrap();
        let base = load(name, Trainable::Frozen)
            .forward(&batch, Mode::Eval)
            .unwrap();
        assert!(
            max_abs_diff(&unmerged, &base) > 1e-2,
            "{name}: the adapter must change the output"
        );
        lora::merge(&mut model).unwrap();
        let merged = model.forward(&batch, Mode::Eval).unwrap();
        assert!(max_abs_diff(&unmerged, &merged) < 1e-4, "{name}");
    }
}

#[test]
fn adapter_round_trips_bit_exactly_in_peft_layout() {
    let model = load("tiny-qwen3", Trainable::Lora(lora_cfg()));
    random_b(&model);
    let dir = tempfile::tempdir().unwrap();
    lora::save_adapter(&model, dir.path(), ("tiny-qwen3", None)).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let mut fresh = load("tiny-qwen3", Trainable::Frozen);
    lora::load_adapter(&mut fresh, dir.path()).unwrap();
    assert_eq!(fresh.vars().len(), model.vars().len());
    for ((n1, v1), (n2, v2)) in model.vars().iter().zip(fresh.vars()) {
        assert_eq!(n1, n2);
        assert!(n1.starts_with("base_model.model.model.layers."), "{n1}");
        assert_eq!(max_abs_diff(v1.as_tensor(), v2.as_tensor()), 0.0, "{n1}");
    }
}

#[test]
fn full_checkpoint_round_trips_bit_exactly() {
    for name in ARCHS {
        let model = load(name, Trainable::Full);
        // Change a weight so the check is not just the fixture read twice.
        let (_, v) = &model.vars()[3];
        v.set(&(v.as_tensor() * 1.5).unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ckpt");
        save_hf_dir(&model, &byte_tokenizer().unwrap(), &[2], &out).unwrap();
        let cfg = ModelConfig::from_file(&out.join("config.json")).unwrap();
        assert_eq!(cfg, model.config);
        let w = WeightSource::from_hf_dir(&out).unwrap();
        let back = Decoder::new(cfg, &w, DType::F32, &Device::Cpu, Trainable::Frozen, 0).unwrap();
        for ((n1, a), (n2, b)) in model.named_parameters().iter().zip(back.named_parameters()) {
            assert_eq!(n1, &n2);
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.flatten_all().unwrap().to_vec1().unwrap(),
                b.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: {n1}"
            );
        }
    }
}

#[test]
fn bf16_forward_is_close_to_f32_and_trains() {
    for name in ARCHS {
        let batch =
            Batch::left_padded(&[vec![3u32, 1, 4, 1, 5, 9], vec![2, 6]], 0, &Device::Cpu).unwrap();
        let f32_logits = load(name, Trainable::Frozen)
            .forward(&batch, Mode::Eval)
            .unwrap();
        let model = load_as(name, Trainable::Full, DType::BF16);
        let bf16_logits = model.forward(&batch, Mode::Eval).unwrap();
        assert_eq!(bf16_logits.dtype(), DType::BF16);
        let (mut worst, mut n) = (0f32, 0);
        for (b, len) in [(0usize, 6usize), (1, 2)] {
            for t in 6 - len..6 {
                let d = max_abs_diff(
                    &f32_logits.get(b).unwrap().get(t).unwrap(),
                    &bf16_logits.get(b).unwrap().get(t).unwrap(),
                );
                worst = worst.max(d);
                n += 1;
            }
        }
        // bf16 keeps ~3 significant digits; logits here are O(1-10).
        assert!(
            worst < 0.25,
            "{name}: bf16 differs from f32 by {worst} over {n} positions"
        );
        let grads = loss(&model, Mode::Train { seed: 0 }).backward().unwrap();
        assert!(
            model
                .vars()
                .iter()
                .all(|(_, v)| grad_norm(&grads, v.as_tensor()).is_some_and(|g| g > 0.0))
        );
    }
}

#[test]
fn several_samples_share_a_prefill_and_equal_separate_runs() {
    use edco::seed::of_sample as sample_seed;
    let model = load("tiny-llama3", Trainable::Frozen);
    let ps = prompts();
    let mut o = opts(6);
    o.samples_per_prompt = 3;
    let shared = generate(&model, &ps, &o).unwrap();
    assert_eq!(shared.len(), 9);
    for (i, p) in ps.iter().enumerate() {
        for k in 0..3 {
            let alone = Prompt {
                ids: p.ids.clone(),
                seed: sample_seed(p.seed, k),
            };
            let g = generate(&model, &[alone], &opts(6)).unwrap();
            assert_eq!(
                g[0].tokens,
                shared[i * 3 + k].tokens,
                "prompt {i} sample {k}"
            );
        }
    }
    // The samples of one prompt differ (temperature 1 on a non-degenerate model).
    assert!(shared[0].tokens != shared[1].tokens || shared[1].tokens != shared[2].tokens);
}
