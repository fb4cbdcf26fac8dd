//! Teacher-forced scoring of reference responses: per sample, the mean negative log-likelihood of
//! the response tokens given the chat-formatted prompt. Serves `edco perplexity`, the static
//! perplexity curriculum and the held-out loss. The response is tokenized on its own and closed
//! with the EOS token, the same layout SFT trains on (`data::tokenize`).

use crate::data::Sample;
use crate::data::tokenize::{Lengths, tokenize_pair};
use crate::model::Decoder;
use crate::model::generate::NonFinite;
use crate::model::layers::Mode;
use crate::response::response_log_probs;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    pub id: String,
    /// Mean negative log-likelihood (nats per response token).
    pub nll: f64,
    pub ppl: f64,
    pub tokens: usize,
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
            if !nll.is_finite() {
                return Err(NonFinite {
                    what: format!("sample `{}`", s.id),
                    token: None,
                }
                .into());
            }
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
