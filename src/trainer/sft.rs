//! Supervised fine-tuning: token-level cross-entropy on the response tokens only (prompt tokens
//! are masked), averaged over all response tokens of the optimizer step, with gradients summed
//! over micro-batches, clipped by global norm, then one AdamW update. A round's selection is
//! shuffled anew for each of `epochs_per_round` passes and cut into steps of
//! `batch_size * grad_accum` sequences.

use super::method::{Method, StepInput, StepReport};
use super::optim::{AdamW, GradAccumulator};
use crate::config::SftSection;
use crate::data::Sample;
use crate::data::tokenize::{Lengths, Tokenized, tokenize_pair};
use crate::model::Decoder;
use crate::model::layers::Mode;
use crate::response::response_token_log_probs;
use crate::tokenizer::Tokenizer;
use anyhow::{Result, bail};
use serde_json::json;
use std::path::Path;

/// The SFT trainer of the round loop.
pub struct Sft {
    cfg: SftSection,
}

impl Sft {
    pub fn new(cfg: &SftSection) -> Self {
        Self { cfg: cfg.clone() }
    }

    /// Sequences per optimizer step.
    fn per_step(&self) -> usize {
        self.cfg.batch_size * self.cfg.grad_accum
    }
}

impl Method for Sft {
    fn section(&self) -> &'static str {
        "sft"
    }

    fn check_pool(&self, pool: &[Sample], path: &Path) -> Result<()> {
        if let Some(s) = pool.iter().find(|s| s.response.is_none()) {
            bail!(
                "{}: sample `{}` has no reference response to train on",
                path.display(),
                s.id
            );
        }
        Ok(())
    }

    fn steps_per_round(&self, per_round: usize) -> usize {
        (per_round * self.cfg.epochs_per_round).div_ceil(self.per_step())
    }

    fn describe_step(&self) -> String {
        format!("{} sequences per step", self.per_step())
    }

    fn tokenize(
        &self,
        tok: &Tokenizer,
        sample: &Sample,
        template_args: &serde_json::Map<String, serde_json::Value>,
        lengths: Lengths,
    ) -> Result<Tokenized> {
        tokenize_pair(tok, sample, template_args, lengths)
    }

    fn generates(&self) -> bool {
        false
    }

    fn steps(&self, shuffled: &mut dyn FnMut(usize) -> Vec<usize>) -> Vec<Vec<usize>> {
        let order: Vec<usize> = (0..self.cfg.epochs_per_round).flat_map(shuffled).collect();
        order
            .chunks(self.per_step())
            .map(<[usize]>::to_vec)
            .collect()
    }

    fn step(
        &self,
        input: &StepInput,
        items: &[usize],
        opt: &mut AdamW,
        lr: f64,
        seed: u64,
    ) -> Result<StepReport> {
        let pairs: Vec<Tokenized> = items.iter().map(|&i| input.pairs[i].clone()).collect();
        let micro: Vec<&[Tokenized]> = pairs.chunks(self.cfg.batch_size).collect();
        let (model, pad_id) = (&input.loaded.model, input.loaded.tokenizer.pad_id());
        let stats = step(model, opt, &micro, pad_id, lr, self.cfg.max_grad_norm, seed)?;
        Ok(StepReport {
            line: json!({"loss": stats.loss, "grad_norm": stats.grad_norm, "tokens": stats.tokens}),
            loss: stats.loss,
            tokens: stats.tokens,
            progress: format!("loss {:.3}", stats.loss),
        })
    }
}

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
