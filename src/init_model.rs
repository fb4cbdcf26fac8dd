//! `edco init-model`: a small randomly initialised Qwen3 or Llama model in Hugging Face layout
//! (transformers' init: normal(0, 0.02) weights, unit norms), with either a copied tokenizer or a
//! built-in byte-level one (256 byte tokens plus ChatML specials and template), for tests and
//! smoke runs that must not download anything.

use crate::model::config::{Arch, ModelConfig};
use crate::model::io::safetensors::WeightSource;
use crate::model::io::save_hf_dir;
use crate::model::{Decoder, Trainable};
use crate::tokenizer::{Tokenizer, TokenizerMeta};
use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};
use std::collections::HashMap;
use std::path::Path;

/// Shapes of the model to create; the vocabulary is the tokenizer's unless `vocab_size` asks for
/// more rows (as real checkpoints pad theirs).
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Width of each attention head; None: hidden_size / num_attention_heads.
    pub head_dim: Option<usize>,
    pub tie_word_embeddings: bool,
    /// Embedding rows, at least the tokenizer's vocabulary; None: exactly that.
    pub vocab_size: Option<usize>,
    pub seed: u64,
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GPT-2's byte-to-character map, so every byte is a printable vocabulary entry.
fn byte_tokens() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut by_byte = vec![String::new(); 256];
    for (b, c) in printable.iter().zip(chars) {
        by_byte[*b as usize] = char::from_u32(c).map(String::from).unwrap_or_default();
    }
    by_byte
}

/// A byte-level tokenizer with `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` and a ChatML template.
pub fn byte_tokenizer() -> Result<Tokenizer> {
    let mut tokens = byte_tokens();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let special: Vec<(u32, String)> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| ((256 + i) as u32, s.to_string()))
        .collect();
    tokens.extend(specials.iter().map(|s| s.to_string()));
    let meta = TokenizerMeta {
        chat_template: Some(CHATML.to_string()),
        bos_token: None,
        eos_token: Some("<|im_end|>".into()),
        pad_token: Some("<|endoftext|>".into()),
        add_bos_token: false,
    };
    Tokenizer::byte_level_bpe(
        tokens,
        Vec::new(),
        &special,
        None,
        meta,
        "the built-in byte tokenizer".into(),
    )
}

/// Writes a random model to `out` with `tokenizer` (or the built-in byte tokenizer).
pub fn init_model(spec: &InitSpec, tokenizer: Option<&Path>, out: &Path) -> Result<ModelConfig> {
    let tok = match tokenizer {
        Some(dir) => Tokenizer::from_dir(dir)?,
        None => byte_tokenizer()?,
    };
    if let Some(d) = spec.head_dim
        && (d == 0 || !d.is_multiple_of(2))
    {
        bail!("--head-dim {d}: expected an even number of at least 2 (rotary pairs)");
    }
    if spec.num_attention_heads == 0
        || (spec.head_dim.is_none() && !spec.hidden_size.is_multiple_of(spec.num_attention_heads))
    {
        bail!(
            "--hidden-size {} is not a multiple of --heads {}",
            spec.hidden_size,
            spec.num_attention_heads
        );
    }
    let vocab_size = match spec.vocab_size {
        None => tok.vocab_size(),
        Some(n) if n >= tok.vocab_size() => n,
        Some(n) => bail!(
            "--vocab-size {n} is smaller than the tokenizer's vocabulary of {}",
            tok.vocab_size()
        ),
    };
    let eos: Vec<u32> = tok
        .meta
        .eos_token
        .as_deref()
        .and_then(|t| tok.token_id(t))
        .into_iter()
        .collect();
    let config = ModelConfig {
        arch: spec.arch,
        vocab_size,
        hidden_size: spec.hidden_size,
        intermediate_size: spec.intermediate_size,
        num_hidden_layers: spec.num_hidden_layers,
        num_attention_heads: spec.num_attention_heads,
        num_key_value_heads: spec.num_key_value_heads,
        head_dim: spec
            .head_dim
            .unwrap_or(spec.hidden_size / spec.num_attention_heads),
        rms_norm_eps: 1e-6,
        rope_theta: if spec.arch == Arch::Qwen3 {
            1_000_000.0
        } else {
            500_000.0
        },
        rope_scaling: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: spec.tie_word_embeddings,
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: tok.meta.bos_token.as_deref().and_then(|t| tok.token_id(t)),
        eos_token_ids: eos.clone(),
    };
    let weights = random_weights(&config, spec.seed)?;
    let model = Decoder::new(
        config.clone(),
        &weights,
        DType::F32,
        &Device::Cpu,
        Trainable::Frozen,
        spec.seed,
    )?;
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    save_hf_dir(&model, &tok, &eos, out)?;
    Ok(config)
}

/// Every tensor the config implies: normal(0, 0.02) for matrices, ones for norms.
pub fn random_weights(c: &ModelConfig, seed: u64) -> Result<WeightSource> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0f32, 0.02)?;
    let mut tensors = HashMap::new();
    let mut matrix = |name: String, rows: usize, cols: usize, rng: &mut StdRng| -> Result<()> {
        let v: Vec<f32> = (0..rows * cols).map(|_| normal.sample(rng)).collect();
        tensors.insert(name, Tensor::from_vec(v, (rows, cols), &Device::Cpu)?);
        Ok(())
    };
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    matrix(
        "model.embed_tokens.weight".into(),
        c.vocab_size,
        c.hidden_size,
        &mut rng,
    )?;
    if !c.tie_word_embeddings {
        matrix(
            "lm_head.weight".into(),
            c.vocab_size,
            c.hidden_size,
            &mut rng,
        )?;
    }
    let mut norms = vec![("model.norm.weight".to_string(), c.hidden_size)];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, r, k) in [
            ("self_attn.q_proj", q, c.hidden_size),
            ("self_attn.k_proj", kv, c.hidden_size),
            ("self_attn.v_proj", kv, c.hidden_size),
            ("self_attn.o_proj", c.hidden_size, q),
            ("mlp.gate_proj", c.intermediate_size, c.hidden_size),
            ("mlp.up_proj", c.intermediate_size, c.hidden_size),
            ("mlp.down_proj", c.hidden_size, c.intermediate_size),
        ] {
            matrix(format!("{p}.{n}.weight"), r, k, &mut rng)?;
        }
        norms.push((format!("{p}.input_layernorm.weight"), c.hidden_size));
        norms.push((
            format!("{p}.post_attention_layernorm.weight"),
            c.hidden_size,
        ));
        if c.arch == Arch::Qwen3 {
            norms.push((format!("{p}.self_attn.q_norm.weight"), c.head_dim));
            norms.push((format!("{p}.self_attn.k_norm.weight"), c.head_dim));
        }
    }
    for (name, n) in norms {
        tensors.insert(name, Tensor::ones(n, DType::F32, &Device::Cpu)?);
    }
    Ok(WeightSource::Memory {
        origin: "random init".into(),
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips_any_text_and_keeps_specials_whole() {
        let tok = byte_tokenizer().unwrap();
        let text = "héllo, wörld! 12 \t\n😀";
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(ids[0], 257);
        assert_eq!(*ids.last().unwrap(), 258);
        assert_eq!(tok.vocab_size(), 259);
    }

    #[test]
    fn vocab_size_pads_the_embedding_and_refuses_less_than_the_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = InitSpec {
            arch: Arch::Qwen3,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: None,
            tie_word_embeddings: true,
            vocab_size: Some(300),
            seed: 0,
        };
        let out = dir.path().join("m");
        assert_eq!(init_model(&spec, None, &out).unwrap().vocab_size, 300);
        let loaded = crate::model::io::load(out.to_str().unwrap(), &Default::default()).unwrap();
        assert_eq!(loaded.model.config.vocab_size, 300);
        spec.vocab_size = Some(100);
        let err = init_model(&spec, None, &dir.path().join("n")).unwrap_err();
        assert!(err.to_string().contains("--vocab-size 100"), "{err}");
    }
}
