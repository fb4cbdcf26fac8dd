//! `edco generate`: completions for prompts given on the command line or in a dataset file, as
//! text or as JSON lines with every position's entropy.

use super::args::ModelArgs;
use crate::config::{Names, positive, sampling};
use crate::data::{ReadOptions, load_jsonl};
use crate::model::generate::{GenerateOptions, Prompt, generate_with_progress, room};
use crate::progress::progress_bar;
use crate::tokenizer::Message;
use anyhow::{Result, bail};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A user message; repeat for a batch.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A JSON Lines file of prompts (any dataset shape edco reads).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// A system message put before every prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed prompts as raw text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Pick the most likely token at every step.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Print one JSON object per prompt (completion, tokens, entropies) instead of text.
    #[arg(long)]
    pub jsonl: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let flags = Names::Flags(&[]);
    let sampling = sampling(a.greedy, (a.temperature, a.top_p, a.top_k), flags)?;
    let max_new_tokens = positive("max_new_tokens", a.max_new_tokens, flags)?;
    let batch_size = positive("batch_size", a.batch_size, flags)?;
    let mut conversations: Vec<Vec<Message>> = a
        .prompt
        .iter()
        .map(|p| vec![Message::new("user", p)])
        .collect();
    if let Some(path) = &a.prompts_file {
        conversations.extend(
            load_jsonl(path, &ReadOptions::default())?
                .samples
                .into_iter()
                .map(|s| s.messages),
        );
    }
    if conversations.is_empty() {
        bail!("nothing to generate: give --prompt or --prompts-file");
    }
    if let Some(system) = &a.system {
        for c in conversations.iter_mut() {
            c.insert(0, Message::new("system", system));
        }
    }
    let loaded = a.model.load()?;
    let tok = &loaded.tokenizer;
    let template_args = a.model.template_args()?;
    let prompts = conversations
        .iter()
        .enumerate()
        .map(|(i, msgs)| {
            let ids = if a.raw {
                let text: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
                tok.encode(&text.join("\n"), true)?
            } else {
                tok.encode_chat(msgs, &template_args)?
            };
            Ok(Prompt {
                ids,
                seed: a.seed.wrapping_add(i as u64),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let context = loaded.model.config.max_position_embeddings;
    if let Some((i, p)) = prompts
        .iter()
        .enumerate()
        .find(|(_, p)| p.ids.len() >= context)
    {
        bail!(
            "prompt {} is {} tokens: the model's context ({context} tokens, \
             max_position_embeddings) leaves no room to generate",
            i + 1,
            p.ids.len()
        );
    }
    let short: Vec<String> = prompts
        .iter()
        .enumerate()
        .filter(|(_, p)| room(context, p.ids.len(), max_new_tokens) < max_new_tokens)
        .map(|(i, p)| format!("{} ({} new tokens)", i + 1, context - p.ids.len()))
        .collect();
    if !short.is_empty() {
        eprintln!(
            "warning: --max-new-tokens {max_new_tokens} goes past the model's context of \
             {context} tokens; generation stops there for prompt {}",
            short.join(", ")
        );
    }
    let opts = GenerateOptions {
        max_new_tokens,
        sampling,
        eos_token_ids: loaded.eos_token_ids.clone(),
        pad_id: tok.pad_id(),
        keep_log_probs: false,
        keep_first_log_probs: false,
        samples_per_prompt: 1,
    };
    let mut stdout = std::io::stdout().lock();
    for (chunk_i, chunk) in prompts.chunks(batch_size).enumerate() {
        let bar = progress_bar(
            max_new_tokens,
            &format!("generating {} of {}", chunk.len(), prompts.len()),
        );
        let gens = generate_with_progress(&loaded.model, chunk, &opts, &mut |step| {
            bar.set_position(step as u64)
        })?;
        bar.finish_and_clear();
        for (j, g) in gens.iter().enumerate() {
            let i = chunk_i * batch_size + j;
            g.check(format_args!("prompt {}", i + 1))?;
            let text = tok.decode(&g.tokens, true)?;
            if a.jsonl {
                let mean_entropy =
                    g.entropies.iter().sum::<f32>() / g.entropies.len().max(1) as f32;
                let line = serde_json::json!({
                    "index": i,
                    "completion": text,
                    "tokens": g.tokens.len(),
                    "finished": g.finished,
                    "mean_entropy": mean_entropy,
                    "entropies": g.entropies,
                });
                writeln!(stdout, "{line}")?;
            } else {
                if i > 0 {
                    writeln!(stdout)?;
                }
                writeln!(stdout, "{}", text.trim_end())?;
            }
        }
    }
    Ok(())
}
