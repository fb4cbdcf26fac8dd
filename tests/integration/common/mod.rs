//! Helpers shared by the integration tests: tiny models made by edco's own `init-model` code,
//! the asset cache filled by `scripts/fetch_assets.sh`, and tensor comparisons.

use candle_core::Tensor;
use edco::init_model::{InitSpec, init_model};
use edco::model::config::Arch;
use std::path::PathBuf;

/// Where `scripts/fetch_assets.sh` puts SmolLM2 and the Qwen3 tokenizer.
pub fn asset(relative: &str) -> PathBuf {
    let cache = std::env::var_os("EDCO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/edco")
        });
    let path = cache.join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch_assets.sh first",
        path.display()
    );
    path
}

pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// A random tiny model in Hugging Face layout with the built-in byte tokenizer.
pub fn tiny_model(arch: Arch, tied: bool, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = InitSpec {
        arch,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: None,
        tie_word_embeddings: tied,
        vocab_size: None,
        seed,
    };
    init_model(&spec, None, &dir.path().join("model")).unwrap();
    dir
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(candle_core::DType::F32).unwrap()
        - b.to_dtype(candle_core::DType::F32).unwrap())
    .unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A copy of a trained tiny fixture with edco's byte-level tokenizer beside it, so it can be
/// prompted through the chat template (the byte ids are a subset of its 320-token vocabulary).
pub fn fixture_with_tokenizer(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    edco::init_model::byte_tokenizer()
        .unwrap()
        .save_dir(dir.path())
        .unwrap();
    dir
}
