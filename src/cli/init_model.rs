//! `edco init-model`: a small randomly initialised model in Hugging Face layout
//! (`crate::init_model`), for tests, smoke runs and benches.

use crate::init_model::{InitSpec, init_model};
use crate::model::config::Arch;
use crate::outputs::{Input, refuse_inputs};
use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct InitModelArgs {
    /// qwen3 or llama.
    #[arg(long, default_value = "qwen3")]
    pub arch: String,
    /// Output directory (new, or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it already exists, with everything in it.
    #[arg(long)]
    pub force: bool,
    /// A directory with tokenizer.json (and tokenizer_config.json) to use; default: a built-in
    /// byte-level tokenizer with a ChatML template.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = 128)]
    pub intermediate_size: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    /// Width of each attention head (Qwen3-4B: 128); default: hidden size / heads.
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// Give the model its own output head instead of sharing the embedding.
    #[arg(long)]
    pub untied: bool,
    /// Embedding rows (at least the tokenizer's vocabulary); default: the tokenizer's.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: InitModelArgs) -> Result<()> {
    let arch = match a.arch.as_str() {
        "qwen3" => Arch::Qwen3,
        "llama" => Arch::Llama,
        other => bail!("--arch `{other}`: expected qwen3 or llama"),
    };
    crate::outputs::check_dir("--out", &a.out, a.force)?;
    if let Some(tokenizer) = &a.tokenizer {
        let input = Input {
            name: "--tokenizer",
            path: tokenizer,
        };
        refuse_inputs("--out", &a.out, &[input])?;
    }
    let spec = InitSpec {
        arch,
        hidden_size: a.hidden_size,
        intermediate_size: a.intermediate_size,
        num_hidden_layers: a.layers,
        num_attention_heads: a.heads,
        num_key_value_heads: a.kv_heads,
        head_dim: a.head_dim,
        tie_word_embeddings: !a.untied,
        vocab_size: a.vocab_size,
        seed: a.seed,
    };
    let cfg = init_model(&spec, a.tokenizer.as_deref(), &a.out)?;
    eprintln!(
        "wrote a random {} model ({} layers, hidden {}, vocab {}) to {}",
        arch.model_type(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        a.out.display()
    );
    Ok(())
}
