//! `edco perplexity`: per sample, the mean negative log-likelihood of its reference response
//! (JSON lines, to standard output or a file written atomically).

use super::args::{DataArgs, ModelArgs};
use crate::atomic_file::write_atomic;
use crate::config::{DataSection, Names, max_length, positive};
use crate::outputs::{check_file, refuse_inputs};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Write the scores here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace --out if it already exists.
    #[arg(long)]
    pub force: bool,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Longest prompt + response in tokens; prompts are cut from the left beyond it.
    #[arg(long, default_value_t = DataSection::default().max_length)]
    pub max_length: usize,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let flags = Names::Flags(&[]);
    let batch_size = positive("batch_size", a.batch_size, flags)?;
    let max_length = max_length(a.max_length, flags)?;
    let data = a.data.load()?;
    if let Some(out) = &a.out {
        let mut inputs = a.model.inputs();
        inputs.push(a.data.input());
        refuse_inputs("--out", out, &inputs)?;
        check_file("--out", out, a.force)?;
    }
    let loaded = a.model.load()?;
    let scores = crate::perplexity::score(
        &loaded.model,
        &loaded.tokenizer,
        &data.samples,
        &a.model.template_args()?,
        max_length,
        batch_size,
    )?;
    let mut text = String::new();
    for s in &scores {
        text.push_str(&serde_json::to_string(s)?);
        text.push('\n');
    }
    match &a.out {
        Some(path) => write_atomic(path, text.as_bytes())?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}
