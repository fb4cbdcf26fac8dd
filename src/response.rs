//! One teacher-forced pass over prompt + response pairs, and what the losses and scores are built
//! from: the logits at the positions that predict response tokens, and those tokens'
//! log-probabilities (SFT's NLL, GRPO's ratios and KL, perplexity, teacher-forced entropy).

use crate::data::tokenize::Tokenized;
use crate::model::kernels::token_log_probs::token_log_probs;
use crate::model::layers::Mode;
use crate::model::{Batch, Decoder};
use anyhow::Result;
use candle_core::{DType, Tensor};

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
