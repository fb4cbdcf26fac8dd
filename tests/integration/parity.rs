//! Parity with Python transformers. Golden values in tests/fixtures were produced by
//! `scripts/parity.py make-fixtures` (versions in tests/fixtures/VERSIONS.json: torch 2.15.0,
//! transformers 5.24.0): briefly trained tiny Qwen3 and Llama-3 checkpoints (the latter with
//! llama3 rope scaling and an untied head), their logits on a batch with unpadded, left-padded
//! and right-padded rows, and tokenizer ids and chat-template renders of the real Qwen3 and
//! SmolLM2 tokenizers and the Llama 3.2 template.

use crate::common;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use common::{asset, fixture, max_abs_diff};
use edco::model::config::ModelConfig;
use edco::model::io::safetensors::WeightSource;
use edco::model::layers::Mode;
use edco::model::{Batch, Decoder, Trainable};
use edco::tokenizer::{Message, Tokenizer, TokenizerMeta, render_chat_template};
use serde_json::Value;

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn model(name: &str) -> Decoder {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    Decoder::new(
        cfg,
        &WeightSource::from_hf_dir(&dir).unwrap(),
        DType::F32,
        &Device::Cpu,
        Trainable::Frozen,
        0,
    )
    .unwrap()
}

fn rows_u32(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect()
}

#[test]
fn logits_match_transformers_with_left_and_right_padding() {
    for name in ["tiny-qwen3", "tiny-llama3"] {
        let r = reference(name);
        let ids = rows_u32(&r["input_ids"]);
        let mask: Vec<Vec<u8>> = rows_u32(&r["attention_mask"])
            .iter()
            .map(|m| m.iter().map(|&x| x as u8).collect())
            .collect();
        let batch = Batch::new(ids.clone(), mask.clone(), &Device::Cpu).unwrap();
        // Our position ids are the same as transformers' generate() makes them.
        assert_eq!(
            rows_u32(&batch.positions),
            rows_u32(&r["position_ids"]),
            "{name}"
        );
        let m = model(name);
        let logits = m.forward(&batch, Mode::Eval).unwrap();
        // The training path (composed, differentiable ops) computes the same logits as the
        // inference path (fused kernels).
        let train = m.forward(&batch, Mode::Train { seed: 0 }).unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let entropy = (lsm.exp().unwrap() * &lsm)
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .neg()
            .unwrap();
        let mut checked = 0;
        for (b, row) in mask.iter().enumerate() {
            for (t, &keep) in row.iter().enumerate() {
                if keep == 0 {
                    continue;
                }
                let at = |x: &Tensor| x.i((b, t)).unwrap();
                assert!(
                    max_abs_diff(&at(&logits), &at(&r["logits"])) < 1e-4,
                    "{name} logits row {b} pos {t}"
                );
                assert!(
                    max_abs_diff(&at(&train), &at(&r["logits"])) < 1e-4,
                    "{name} training-path logits row {b} pos {t}"
                );
                assert!(
                    max_abs_diff(&at(&lsm), &at(&r["log_softmax"])) < 1e-4,
                    "{name} log-softmax row {b} pos {t}"
                );
                assert!(
                    max_abs_diff(&at(&entropy), &at(&r["entropy"])) < 1e-4,
                    "{name} entropy row {b} pos {t}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "{name}: only {checked} positions compared");
        // Logits are far from zero, so the comparison has teeth.
        let std = r["logits"]
            .flatten_all()
            .unwrap()
            .var(0)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(std > 1.0, "{name}: reference logits std {std}");

        // Each row alone (no padding) gives what transformers gives for it alone.
        for (b, row) in ids.iter().enumerate() {
            let real: Vec<u32> = row
                .iter()
                .zip(&mask[b])
                .filter(|(_, m)| **m == 1)
                .map(|(i, _)| *i)
                .collect();
            let alone = m
                .forward(
                    &Batch::right_padded(&[real], 0, &Device::Cpu).unwrap(),
                    Mode::Eval,
                )
                .unwrap();
            let expected = &r[&format!("single_row_logits_{b}")];
            assert!(
                max_abs_diff(&alone.squeeze(0).unwrap(), expected) < 1e-4,
                "{name} row {b} alone"
            );
        }
    }
}

#[test]
fn legacy_and_new_rope_keys_resolve_alike() {
    let dir = fixture("tiny-llama3");
    let new = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let old = ModelConfig::from_file(&dir.join("config_legacy_keys.json")).unwrap();
    assert_eq!(new, old);
    assert_eq!(
        new.rope_scaling.unwrap().original_max_position_embeddings,
        64
    );
    assert!(!new.tie_word_embeddings);
}

fn references() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer_reference.json")).unwrap())
        .unwrap()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn messages(v: &Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Checks chat renders and their ids; `kwargs` holds add_generation_prompt and template variables.
fn check_chat(tok: &Tokenizer, cases: &Value, label: &str) {
    for case in cases.as_array().unwrap() {
        let mut extra = case["kwargs"].as_object().unwrap().clone();
        let add = extra
            .remove("add_generation_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let rendered = tok
            .apply_chat_template(&messages(&case["messages"]), add, &extra)
            .unwrap();
        assert_eq!(
            rendered,
            case["rendered"].as_str().unwrap(),
            "{label}: {}",
            case["kwargs"]
        );
        if let Some(ids) = case.get("ids") {
            assert_eq!(
                tok.encode(&rendered, false).unwrap(),
                ids_of(ids),
                "{label}: ids of {rendered:?}"
            );
        }
    }
}

#[test]
fn qwen3_tokenizer_and_chat_template_match_transformers() {
    let refs = references();
    let q = &refs["tokenizers"]["qwen3"];
    let tok = Tokenizer::from_dir(&asset("qwen3-tokenizer")).unwrap();
    for case in q["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "qwen3: {text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    // Thinking on and off, multi-turn with reasoning, no generation prompt.
    assert!(q["chat"].as_array().unwrap().len() >= 4);
    check_chat(&tok, &q["chat"], "qwen3");
}

#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    let refs = references();
    let s = &refs["tokenizers"]["smollm2_gguf"];
    let g = edco::model::io::gguf::load(
        &asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        DType::F32,
    )
    .unwrap();
    let tok = &g.tokenizer;
    for case in s["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
        assert_eq!(ids, ids_of(&case["ids"]), "smollm2: {text:?}");
    }
    check_chat(tok, &s["chat"], "smollm2");
}

#[test]
fn llama3_chat_template_matches_transformers() {
    let refs = references();
    let l = &refs["llama3_template"];
    let template = std::fs::read_to_string(fixture(l["template_file"].as_str().unwrap())).unwrap();
    let meta = TokenizerMeta {
        bos_token: Some(l["bos_token"].as_str().unwrap().into()),
        ..Default::default()
    };
    for case in l["chat"].as_array().unwrap() {
        let mut extra = case["kwargs"].as_object().unwrap().clone();
        let add = extra
            .remove("add_generation_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let out = render_chat_template(&template, &messages(&case["messages"]), add, &meta, &extra)
            .unwrap();
        assert_eq!(out, case["rendered"].as_str().unwrap());
    }
}

/// Greedy generation from transformers (`greedy.safetensors`, from `scripts/parity.py`): the same
/// tokens, and per generated position the entropy and chosen-token log-probability of the raw
/// logits, to 1e-4.
#[test]
fn greedy_generation_entropies_match_transformers() {
    use edco::model::generate::{GenerateOptions, Prompt, generate};
    use edco::model::sampling::Sampling;
    for name in ["tiny-qwen3", "tiny-llama3"] {
        let g =
            candle_core::safetensors::load(fixture(name).join("greedy.safetensors"), &Device::Cpu)
                .unwrap();
        let m = model(name);
        let vec_u32 = |t: &Tensor| -> Vec<u32> {
            t.to_vec1::<i64>()
                .unwrap()
                .iter()
                .map(|&x| x as u32)
                .collect()
        };
        let prompts: Vec<Prompt> = (0..3)
            .map(|i| Prompt {
                ids: vec_u32(&g[&format!("prompt_{i}")]),
                seed: 0,
            })
            .collect();
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Greedy,
            eos_token_ids: vec![],
            pad_id: 0,
            keep_log_probs: false,
            keep_first_log_probs: false,
            samples_per_prompt: 1,
        };
        // All three in one left-padded batch: padding must not change anything either.
        let gens = generate(&m, &prompts, &opts).unwrap();
        for (i, out) in gens.iter().enumerate() {
            assert_eq!(
                out.tokens,
                vec_u32(&g[&format!("tokens_{i}")]),
                "{name} prompt {i}"
            );
            let h: Vec<f32> = g[&format!("entropy_{i}")].to_vec1().unwrap();
            let lp: Vec<f32> = g[&format!("logprob_{i}")].to_vec1().unwrap();
            for k in 0..12 {
                assert!(
                    (out.entropies[k] - h[k]).abs() < 1e-4,
                    "{name} prompt {i} step {k}: {} vs {}",
                    out.entropies[k],
                    h[k]
                );
                assert!(
                    (out.token_log_probs[k] - lp[k]).abs() < 1e-4,
                    "{name} prompt {i} step {k}"
                );
            }
        }
    }
}
