//! Teacher-forced scoring of reference responses: per sample, the mean negative log-likelihood of
//! the response tokens given the chat-formatted prompt. Serves `edco perplexity` and the static
//! perplexity curriculum. The response is tokenized on its own and closed with the EOS token,
//! the same layout SFT trains on.

use crate::data::Sample;
use crate::model::layers::Mode;
use crate::model::token_log_probs::token_log_probs;
use crate::model::{Batch, Decoder};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use serde::Serialize;

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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    pub id: String,
    /// Mean negative log-likelihood (nats per response token).
    pub nll: f64,
    pub ppl: f64,
    pub tokens: usize,
}

/// Logits (N, V) at the positions that predict response tokens, with those tokens (N, 1), rows
/// concatenated (N = total response length). The right-padded batch runs once; the vocabulary
/// head is applied only at those positions (never the full (B, T, V) logits).
pub fn response_logits(
    model: &Decoder,
    pairs: &[Tokenized],
    pad_id: u32,
    mode: Mode,
) -> Result<(Tensor, Tensor)> {
    let rows: Vec<Vec<u32>> = pairs
        .iter()
        .map(|p| [p.prompt.as_slice(), &p.response].concat())
        .collect();
    let batch = Batch::right_padded(&rows, pad_id, model.device())?;
    let (b, t) = batch.ids.dims2()?;
    let hidden = model.hidden_states(&batch, mode)?;
    let hidden = hidden.reshape((b * t, hidden.dim(2)?))?;
    let mut at = Vec::new();
    let mut targets = Vec::new();
    for (r, p) in pairs.iter().enumerate() {
        // Position k predicts token k + 1: the response is predicted from prompt_len - 1 on.
        let start = r * t + p.prompt.len() - 1;
        at.extend((start..start + p.response.len()).map(|i| i as u32));
        targets.extend_from_slice(&p.response);
    }
    let n = at.len();
    let at = Tensor::from_vec(at, n, model.device())?;
    let targets = Tensor::from_vec(targets, (n, 1), model.device())?;
    Ok((
        model
            .logits(&hidden.index_select(&at, 0)?)?
            .to_dtype(DType::F32)?,
        targets,
    ))
}

/// log p(token) of every response token, rows concatenated: (N,).
pub fn response_token_log_probs(
    model: &Decoder,
    pairs: &[Tokenized],
    pad_id: u32,
    mode: Mode,
) -> Result<Tensor> {
    let (logits, targets) = response_logits(model, pairs, pad_id, mode)?;
    Ok(token_log_probs(&logits, &targets.squeeze(1)?)?)
}

/// Per-row log p(response token) lists, for scoring.
pub fn response_log_probs(
    model: &Decoder,
    pairs: &[Tokenized],
    pad_id: u32,
    mode: Mode,
) -> Result<Vec<Vec<f32>>> {
    let flat: Vec<f32> = response_token_log_probs(model, pairs, pad_id, mode)?.to_vec1()?;
    let mut out = Vec::with_capacity(pairs.len());
    let mut offset = 0;
    for p in pairs {
        out.push(flat[offset..offset + p.response.len()].to_vec());
        offset += p.response.len();
    }
    Ok(out)
}

/// Scores every sample, `batch_size` at a time.
pub fn score(
    model: &Decoder,
    tok: &Tokenizer,
    samples: &[Sample],
    template_args: &serde_json::Map<String, serde_json::Value>,
    lengths: impl Into<Lengths>,
    batch_size: usize,
) -> Result<Vec<Score>> {
    let lengths = lengths.into().within(model.config.max_position_embeddings);
    let pad = tok.pad_id();
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch_size.max(1)) {
        let pairs = chunk
            .iter()
            .map(|s| tokenize_pair(tok, s, template_args, lengths))
            .collect::<Result<Vec<_>>>()?;
        let lps = response_log_probs(model, &pairs, pad, Mode::Eval)?;
        for (s, lp) in chunk.iter().zip(lps) {
            let nll = -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len() as f64;
            out.push(Score {
                id: s.id.clone(),
                nll,
                ppl: nll.exp(),
                tokens: lp.len(),
            });
        }
    }
    Ok(out)
}
