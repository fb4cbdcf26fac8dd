//! Turning what a user names into a loaded model: a Hugging Face directory, a GGUF file, or a hub
//! id resolved through hf-hub (the local hub cache when offline), plus the tokenizer and
//! generation defaults that come with it; and saving a model back as a Hugging Face directory.
//! The formats: `safetensors` (HF weights), `gguf` (llama.cpp's files), `hub` (what a user names).

pub mod folder;
pub mod gguf;
pub mod hub;
pub mod safetensors;

use super::config::{ModelConfig, token_ids};
use super::device::Attention;
use super::{Decoder, Trainable};
use crate::atomic_file::{fresh_dir, replace_dir, staging_dir, write_atomic};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use hub::{ModelFiles, resolve};
use safetensors::{WeightSource, save_safetensors};
use std::path::Path;

/// How to load: numeric type, device, what is trainable, and the seed for fresh adapters.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    pub trainable: Trainable,
    pub seed: u64,
    /// The attention of inference passes (see `Decoder::set_attention`).
    pub attention: Attention,
    /// The revision (branch, tag or commit) of a hub id; `None`: its default branch.
    pub revision: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            trainable: Trainable::Frozen,
            seed: 0,
            attention: Attention::Composed,
            revision: None,
        }
    }
}

/// A model with everything needed to prompt it.
pub struct Loaded {
    pub model: Decoder,
    pub tokenizer: Tokenizer,
    /// Token ids that end a generation (generation config, model config and tokenizer, merged).
    pub eos_token_ids: Vec<u32>,
    /// Where it came from, for logs and adapter configs.
    pub origin: String,
}

/// Loads a model named by `spec` (directory, `.gguf` file or hub id).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Loaded> {
    let mut loaded = match resolve(spec, opts.revision.as_deref())? {
        ModelFiles::HfDir(dir) => load_hf_dir(&dir, opts),
        ModelFiles::Gguf(path) => {
            let g = gguf::load(&path, opts.dtype)?;
            let model = Decoder::new(
                g.config,
                &g.weights,
                opts.dtype,
                &opts.device,
                opts.trainable.clone(),
                opts.seed,
            )?;
            let eos = merge_eos(&model.config.eos_token_ids, &[], &g.tokenizer);
            Ok(Loaded {
                model,
                tokenizer: g.tokenizer,
                eos_token_ids: eos,
                origin: path.display().to_string(),
            })
        }
    }?;
    loaded.model.set_attention(opts.attention)?;
    Ok(loaded)
}

fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let config = ModelConfig::from_file(&folder::file(dir, "config.json")?)?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    let generation_eos = read_generation_eos(&folder::file(dir, "generation_config.json")?)?;
    let weights = WeightSource::from_hf_dir(dir)?;
    let model = Decoder::new(
        config,
        &weights,
        opts.dtype,
        &opts.device,
        opts.trainable.clone(),
        opts.seed,
    )?;
    let eos = merge_eos(&model.config.eos_token_ids, &generation_eos, &tokenizer);
    Ok(Loaded {
        model,
        tokenizer,
        eos_token_ids: eos,
        origin: dir.display().to_string(),
    })
}

fn read_generation_eos(path: &Path) -> Result<Vec<u32>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", path.display()))?;
    token_ids(&json.get("eos_token_id").cloned(), "eos_token_id")
        .with_context(|| format!("in {}", path.display()))
}

/// The generation config's EOS ids take precedence (as in transformers); the model config's and
/// the tokenizer's EOS token are added so a model never runs past its end-of-turn marker.
fn merge_eos(config: &[u32], generation: &[u32], tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = generation.iter().chain(config).copied().collect();
    if let Some(id) = tokenizer
        .meta
        .eos_token
        .as_deref()
        .and_then(|t| tokenizer.token_id(t))
    {
        ids.push(id);
    }
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    ids
}

/// Saves `model` (adapters must be merged first) with its tokenizer as a Hugging Face directory
/// that transformers loads. Files are staged in a sibling directory and moved into place, so an
/// interrupted save never leaves a half-written model where a good one was.
pub fn save_hf_dir(
    model: &Decoder,
    tokenizer: &Tokenizer,
    eos_token_ids: &[u32],
    dir: &Path,
) -> Result<()> {
    if matches!(model.trainable(), Trainable::Lora(_)) {
        bail!("save the adapter, or merge it into the base first, to save a LoRA model");
    }
    let stage = staging_dir(dir);
    fresh_dir(&stage)?;
    let mut config = model.config.to_hf_json();
    config["torch_dtype"] = dtype_name(model.dtype()).into();
    write_atomic(
        &stage.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let generation = serde_json::json!({
        "bos_token_id": model.config.bos_token_id,
        "eos_token_id": eos_token_ids,
    });
    write_atomic(
        &stage.join("generation_config.json"),
        serde_json::to_string_pretty(&generation)?.as_bytes(),
    )?;
    save_safetensors(&model.named_parameters(), &stage.join("model.safetensors"))?;
    tokenizer.save_dir(&stage)?;
    replace_dir(&stage, dir)
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}
