//! Supervised fine-tuning: token-level cross-entropy on the response tokens only (prompt tokens
//! are masked), averaged over all response tokens of the optimizer step, with gradients summed
//! over micro-batches, clipped by global norm, then one AdamW update.

use super::optim::{AdamW, GradAccumulator};
use crate::data::tokenize::Tokenized;
use crate::model::Decoder;
use crate::model::layers::Mode;
use crate::response::response_token_log_probs;
use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean NLL per response token before the update.
    pub loss: f64,
    pub tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

/// One optimizer step over `micro_batches` (each a slice of prompt/response pairs).
pub fn step(
    model: &Decoder,
    opt: &mut AdamW,
    micro_batches: &[&[Tokenized]],
    pad_id: u32,
    lr: f64,
    max_grad_norm: f64,
    dropout_seed: u64,
) -> Result<StepStats> {
    let total: usize = micro_batches
        .iter()
        .flat_map(|m| m.iter())
        .map(|p| p.response.len())
        .sum();
    if total == 0 {
        bail!("an SFT step with no response tokens");
    }
    let mut acc = GradAccumulator::new(model.vars().len());
    let mut nll = 0f64;
    for (k, mb) in micro_batches.iter().enumerate() {
        let mode = Mode::Train {
            seed: dropout_seed.wrapping_mul(1_000_003).wrapping_add(k as u64),
        };
        let lp = response_token_log_probs(model, mb, pad_id, mode)?;
        let loss = (lp.sum_all()?.neg()? / total as f64)?;
        nll += loss.to_scalar::<f32>()? as f64;
        acc.add(model.vars(), &loss.backward()?)?;
    }
    let (grads, grad_norm) = acc.finish(model.vars(), max_grad_norm)?;
    opt.apply(&grads, lr)?;
    Ok(StepStats {
        loss: nll,
        tokens: total,
        grad_norm,
        lr,
    })
}
