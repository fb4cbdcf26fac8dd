//! Held-out evaluation, before training and after every round: accuracy of greedy answers
//! checked by rule (`crate::reward`), accuracy of multiple choice by the likelihood of each
//! option's letter as the first answer token, and the mean NLL of the reference responses.

use crate::config::EvalSection;
use crate::data::Sample;
use crate::data::tokenize::{Lengths, tokenize_prompt};
use crate::model::generate::{GenerateOptions, Prompt, generate};
use crate::model::layers::Mode;
use crate::model::sampling::Sampling;
use crate::model::{Batch, Decoder};
use crate::perplexity::score;
use crate::reward::{Rule, check};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use candle_core::{D, DType, IndexOp};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalReport {
    pub samples: usize,
    /// Greedy generation + answer extraction, over samples with a verifiable answer.
    pub accuracy: Option<f64>,
    /// Multiple choice by option-letter likelihood, over multiple-choice samples.
    pub option_accuracy: Option<f64>,
    /// Mean NLL per response token of the reference responses.
    pub loss: Option<f64>,
    pub seconds: f64,
}

/// `n` of `samples` spread evenly over the file (a file grouped by domain keeps its mix).
pub fn spread_evenly(samples: &[Sample], n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| samples[i * samples.len() / n].clone())
        .collect()
}

pub struct Evaluator<'a> {
    pub model: &'a Decoder,
    pub tok: &'a Tokenizer,
    pub eos_token_ids: &'a [u32],
    pub template_args: &'a serde_json::Map<String, serde_json::Value>,
    pub lengths: Lengths,
    /// How replies are checked for generation accuracy.
    pub answer_check: Rule,
}

impl Evaluator<'_> {
    pub fn run(&self, samples: &[Sample], cfg: &EvalSection) -> Result<EvalReport> {
        let start = Instant::now();
        let spread;
        let samples = if cfg.max_samples > 0 && samples.len() > cfg.max_samples {
            spread = spread_evenly(samples, cfg.max_samples);
            &spread[..]
        } else {
            samples
        };
        let mut report = EvalReport {
            samples: samples.len(),
            ..Default::default()
        };
        if samples.is_empty() {
            return Ok(report);
        }
        if cfg.generate {
            report.accuracy = self.generation_accuracy(samples, cfg)?;
        }
        if cfg.option_likelihood {
            report.option_accuracy = self.option_accuracy(samples, cfg.batch_size)?;
        }
        if cfg.loss {
            let with_response: Vec<Sample> = samples
                .iter()
                .filter(|s| s.response.is_some())
                .cloned()
                .collect();
            if !with_response.is_empty() {
                let scores = score(
                    self.model,
                    self.tok,
                    &with_response,
                    self.template_args,
                    self.lengths,
                    cfg.batch_size,
                )?;
                let tokens: usize = scores.iter().map(|s| s.tokens).sum();
                report.loss = Some(
                    scores.iter().map(|s| s.nll * s.tokens as f64).sum::<f64>()
                        / tokens.max(1) as f64,
                );
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// A prompt for a generated answer of up to `answer` tokens, cut to leave it room.
    fn prompt_ids(&self, s: &Sample, answer: usize) -> Result<Vec<u32>> {
        let context = self.model.config.max_position_embeddings;
        let limit = self
            .lengths
            .prompt_limit()
            .min(context.saturating_sub(answer))
            .max(1);
        let (ids, _) = tokenize_prompt(self.tok, &s.messages, self.template_args, limit)
            .with_context(|| format!("sample `{}`", s.id))?;
        Ok(ids)
    }

    fn generation_accuracy(&self, samples: &[Sample], cfg: &EvalSection) -> Result<Option<f64>> {
        let gradable: Vec<&Sample> = samples
            .iter()
            .filter(|s| check(self.answer_check, s, "").is_some())
            .collect();
        if gradable.is_empty() {
            return Ok(None);
        }
        let opts = GenerateOptions {
            max_new_tokens: cfg.max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: self.eos_token_ids.to_vec(),
            pad_id: self.tok.pad_id(),
            keep_log_probs: false,
            samples_per_prompt: 1,
        };
        let mut correct = 0;
        for chunk in gradable.chunks(cfg.batch_size.max(1)) {
            let prompts = chunk
                .iter()
                .map(|s| {
                    Ok(Prompt {
                        ids: self.prompt_ids(s, cfg.max_new_tokens)?,
                        seed: 0,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            for (s, g) in chunk.iter().zip(generate(self.model, &prompts, &opts)?) {
                g.check(format_args!("eval sample `{}`", s.id))?;
                let reply = self.tok.decode(&g.tokens, true)?;
                correct += usize::from(check(self.answer_check, s, &reply) == Some(true));
            }
        }
        Ok(Some(correct as f64 / gradable.len() as f64))
    }

    fn option_accuracy(&self, samples: &[Sample], batch_size: usize) -> Result<Option<f64>> {
        let mcq: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.options.is_some() && s.answer.is_some())
            .collect();
        if mcq.is_empty() {
            return Ok(None);
        }
        let mut correct = 0;
        for chunk in mcq.chunks(batch_size.max(1)) {
            let rows = chunk
                .iter()
                .map(|s| self.prompt_ids(s, 0))
                .collect::<Result<Vec<_>>>()?;
            let batch = Batch::left_padded(&rows, self.tok.pad_id(), self.model.device())?;
            let t = batch.ids.dim(1)?;
            let hidden = self.model.hidden_states(&batch, Mode::Eval)?;
            let logits = self
                .model
                .logits(&hidden.i((.., t - 1, ..))?)?
                .to_dtype(DType::F32)?;
            let logp: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2()?;
            for (s, lp) in chunk.iter().zip(&logp) {
                let mut best: Option<(&str, f32)> = None;
                for letter in s.options.as_ref().into_iter().flat_map(|o| o.keys()) {
                    let Some(&id) = self.tok.encode(letter, false)?.first() else {
                        continue;
                    };
                    if best.is_none_or(|(_, b)| lp[id as usize] > b) {
                        best = Some((letter.as_str(), lp[id as usize]));
                    }
                }
                correct += usize::from(best.map(|b| b.0) == s.answer.as_deref());
            }
        }
        Ok(Some(correct as f64 / mcq.len() as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_eval_set_keeps_the_mix_of_a_grouped_file() {
        let samples: Vec<Sample> = ["med", "law", "tel"]
            .iter()
            .flat_map(|d| (0..30).map(move |i| format!("{d}-{i}")))
            .map(|id| Sample {
                id,
                messages: Vec::new(),
                response: None,
                answer: None,
                options: None,
            })
            .collect();
        let picked = spread_evenly(&samples, 40);
        assert_eq!(picked.len(), 40);
        assert_eq!(picked[0].id, "med-0");
        for d in ["med", "law", "tel"] {
            let n = picked.iter().filter(|s| s.id.starts_with(d)).count();
            assert!((13..=14).contains(&n), "{d}: {n}");
        }
        let mut ids: Vec<&str> = picked.iter().map(|s| s.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 40);
    }
}
