//! Samples as token ids: a chat-formatted prompt, alone (generation, scoring, GRPO) or with its
//! reference response closed by the EOS token (SFT, perplexity, teacher forcing), within token
//! limits. Prompts are cut from the left, responses at the end, and the cut is counted so the
//! caller can report it.

use crate::data::Sample;
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{Context, Result, bail};

/// A prompt and its response as token ids.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    /// Prompt tokens cut from the left to fit the length limit (reported, never silent).
    pub cut: usize,
    /// Response tokens cut from the end (the response alone exceeded the limit).
    pub response_cut: usize,
}

/// Token limits of a prompt + response pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths {
    /// Prompt and response together.
    pub max_length: usize,
    /// The prompt alone; longer prompts are cut from the left.
    pub max_prompt: usize,
    /// The response alone; longer responses are cut at the end.
    pub max_response: usize,
}

impl Lengths {
    /// Limits that cap only the pair.
    pub fn total(max_length: usize) -> Self {
        Self {
            max_length,
            max_prompt: usize::MAX,
            max_response: usize::MAX,
        }
    }

    /// The longest prompt when there is no response (generation, scoring).
    pub fn prompt_limit(&self) -> usize {
        self.max_length.min(self.max_prompt)
    }

    /// The same limits within a context of `n` tokens.
    pub fn within(self, n: usize) -> Self {
        Self {
            max_length: self.max_length.min(n),
            ..self
        }
    }
}

impl From<usize> for Lengths {
    fn from(max_length: usize) -> Self {
        Self::total(max_length)
    }
}

/// Chat-formats the prompt and appends the EOS token to the response. A response longer than
/// `max_response` (or than the pair's limit less one prompt token) is cut at the end; then the
/// prompt is cut from the left to `max_prompt` and to what the pair's limit leaves it.
pub fn tokenize_pair(
    tok: &Tokenizer,
    sample: &Sample,
    template_args: &serde_json::Map<String, serde_json::Value>,
    lengths: impl Into<Lengths>,
) -> Result<Tokenized> {
    let Lengths {
        max_length,
        max_prompt,
        max_response,
    } = lengths.into();
    let response = sample
        .response
        .as_deref()
        .with_context(|| format!("sample `{}` has no response", sample.id))?;
    let mut prompt = tok
        .encode_chat(&sample.messages, template_args)
        .with_context(|| format!("sample `{}`", sample.id))?;
    let mut response = tok.encode(response, false)?;
    if let Some(eos) = tok.meta.eos_token.as_deref().and_then(|t| tok.token_id(t)) {
        response.push(eos);
    }
    let keep = max_length.saturating_sub(1).max(1).min(max_response);
    let response_cut = response.len().saturating_sub(keep);
    response.truncate(keep);
    let room = max_length.saturating_sub(response.len()).min(max_prompt);
    let cut = prompt.len().saturating_sub(room);
    prompt.drain(..cut);
    if prompt.is_empty() {
        bail!(
            "sample `{}`: no room for the prompt within max_length {max_length}",
            sample.id
        );
    }
    Ok(Tokenized {
        prompt,
        response,
        cut,
        response_cut,
    })
}

/// Chat-formats `messages` and cuts the ids from the left to `limit`; returns them and how many
/// were cut.
pub fn tokenize_prompt(
    tok: &Tokenizer,
    messages: &[Message],
    template_args: &serde_json::Map<String, serde_json::Value>,
    limit: usize,
) -> Result<(Vec<u32>, usize)> {
    let mut ids = tok.encode_chat(messages, template_args)?;
    let cut = ids.len().saturating_sub(limit);
    ids.drain(..cut);
    Ok((ids, cut))
}
