//! Turning what a user names into a loaded model: a Hugging Face directory, a GGUF file, or a hub
//! id resolved through hf-hub (the local hub cache when offline), plus the tokenizer and
//! generation defaults that come with it; and saving a model back as a Hugging Face directory.

use super::config::{ModelConfig, token_ids};
use super::weights::{WeightSource, save_safetensors};
use super::{Decoder, Trainable, gguf};
use crate::atomic_file::{replace_dir, staging_dir, write_atomic};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// How to load: numeric type, device, what is trainable, and the seed for fresh adapters.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    pub trainable: Trainable,
    pub seed: u64,
    /// The attention of inference passes: `composed` or `flash` (see `Decoder::set_attention`).
    pub attention: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            trainable: Trainable::Frozen,
            seed: 0,
            attention: "composed".into(),
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

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

/// Resolves a user's model argument: an existing path (directory or `.gguf` file) or a hub id.
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "{}: not a Hugging Face model directory (no config.json)",
                path.display()
            );
        }
        return Ok(ModelFiles::HfDir(path.to_path_buf()));
    }
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        bail!(
            "{}: expected a model directory or a .gguf file",
            path.display()
        );
    }
    let is_hub_id = spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.contains("//");
    if !is_hub_id {
        bail!("model `{spec}`: no such file or directory, and not a hub id like `Qwen/Qwen3-4B`");
    }
    hub_snapshot(spec).map(ModelFiles::HfDir)
}

/// Fetches (or finds in the local cache) the files of hub model `id`; returns the snapshot dir.
fn hub_snapshot(id: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "ON"));
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_string());
    let from_cache = |file: &str| cached.get(file);
    let fetch = |file: &str| -> Result<PathBuf> {
        if let Some(p) = from_cache(file) {
            return Ok(p);
        }
        if offline {
            bail!("`{file}` is not in the local hub cache and HF_HUB_OFFLINE is set");
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()?;
        let path = api.model(id.to_string()).get(file)?;
        verify_hub_file(&path).with_context(|| format!("model `{id}`"))?;
        Ok(path)
    };
    let not_found = |e: anyhow::Error| {
        e.context(format!(
            "model `{id}`: not found in the local hub cache ({}) and could not be downloaded",
            cache.path().display()
        ))
    };
    let config = fetch("config.json").map_err(not_found)?;
    let dir = config
        .parent()
        .context("hub cache path has no parent")?
        .to_path_buf();
    fetch("tokenizer.json").map_err(not_found)?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        let _ = fetch(optional);
    }
    match fetch("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: malformed JSON", index.display()))?;
            let mut shards: Vec<String> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                fetch(&s).map_err(not_found)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors").map_err(not_found)?;
        }
    }
    Ok(dir)
}

/// Checks a freshly downloaded hub file against the checksum the hub gave for it. The hub cache
/// names each blob by the file's ETag, which for files kept in Git LFS (the weights) is the
/// SHA-256 of the content; other files (small JSON) are named by their Git object id and are
/// not checked here. A mismatch removes the blob, so the next run downloads it again.
pub fn verify_hub_file(path: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let blob = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let name = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut file =
        std::fs::File::open(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", blob.display()))?;
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !got.eq_ignore_ascii_case(name) {
        let _ = std::fs::remove_file(&blob);
        bail!(
            "{}: downloaded content has SHA-256 {got}, the hub announced {name}; the file was \
             removed, run again to download it anew",
            path.display()
        );
    }
    Ok(())
}

/// Loads a model named by `spec` (directory, `.gguf` file or hub id).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<Loaded> {
    let mut loaded = match resolve(spec)? {
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
    loaded.model.set_attention(&opts.attention)?;
    Ok(loaded)
}

fn load_hf_dir(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    let generation_eos = read_generation_eos(&dir.join("generation_config.json"))?;
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
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub cache entry as hf-hub lays it out: the blob named by its ETag, a snapshot symlink.
    fn entry(dir: &Path, etag: &str, content: &str) -> PathBuf {
        let blob = dir.join("blobs").join(etag);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, content).unwrap();
        let link = dir.join("snapshots/rev").join(etag);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
        link
    }

    #[test]
    fn hub_blobs_are_checked_against_their_sha256_etag() {
        let dir = tempfile::tempdir().unwrap();
        // sha256("hello"), as `printf hello | sha256sum` gives it.
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        verify_hub_file(&entry(dir.path(), good, "hello")).unwrap();
        let bad = entry(dir.path(), &good.replace('2', "3"), "hello");
        let msg = format!("{:#}", verify_hub_file(&bad).unwrap_err());
        assert!(msg.contains("has SHA-256 2cf24dba"), "{msg}");
        assert!(
            !dir.path()
                .join("blobs")
                .join(good.replace('2', "3"))
                .exists()
        );
        // A Git object id (a small non-LFS file) is not a content hash: left alone.
        let git = "6d34772f5ca361021038b404fb913ec8dc0b1a5a";
        verify_hub_file(&entry(dir.path(), git, "{}")).unwrap();
    }
}
