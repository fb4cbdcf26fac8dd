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
    /// Each evaluated sample's result, in the order evaluated (the run writes them to
    /// `eval/round_NNN.jsonl`; the round line keeps only the totals).
    #[serde(skip)]
    pub items: Vec<ItemResult>,
}

/// One held-out sample's result: the greedy reply and whether the rule found it right, the
/// option whose letter was the most likely first answer token and whether it is the answer.
/// A check that does not apply to the sample (no verifiable answer, no options) leaves `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ItemResult {
    pub id: String,
    pub reply: Option<String>,
    pub correct: Option<bool>,
    pub option: Option<String>,
    pub option_correct: Option<bool>,
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
            items: samples
                .iter()
                .map(|s| ItemResult {
                    id: s.id.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        if samples.is_empty() {
            return Ok(report);
        }
        if cfg.generate {
            self.generate_answers(samples, cfg, &mut report.items)?;
        }
        if cfg.option_likelihood {
            self.pick_options(samples, cfg.batch_size, &mut report.items)?;
        }
        report.accuracy = share(&report.items, |i| i.correct);
        report.option_accuracy = share(&report.items, |i| i.option_correct);
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

    /// The greedy reply of every sample with a verifiable answer, and whether it is right,
    /// into `items` (one per sample). With option likelihood on, a multiple-choice sample's
    /// option is read from the same pass: the first generated position's distribution is the
    /// one after the prompt, so the prompt goes through the model once for both.
    fn generate_answers(
        &self,
        samples: &[Sample],
        cfg: &EvalSection,
        items: &mut [ItemResult],
    ) -> Result<()> {
        let gradable: Vec<usize> = (0..samples.len())
            .filter(|&i| check(self.answer_check, &samples[i], "").is_some())
            .collect();
        let prompts = gradable
            .iter()
            .map(|&i| self.prompt_ids(&samples[i], cfg.max_new_tokens))
            .collect::<Result<Vec<_>>>()?;
        let opts = GenerateOptions {
            max_new_tokens: cfg.max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: self.eos_token_ids.to_vec(),
            pad_id: self.tok.pad_id(),
            keep_log_probs: false,
            keep_first_log_probs: cfg.option_likelihood,
            samples_per_prompt: 1,
        };
        for chunk in by_length(&prompts).chunks(cfg.batch_size.max(1)) {
            let batch: Vec<Prompt> = chunk
                .iter()
                .map(|&k| Prompt {
                    ids: prompts[k].clone(),
                    seed: 0,
                })
                .collect();
            for (&k, g) in chunk.iter().zip(generate(self.model, &batch, &opts)?) {
                let (s, item) = (&samples[gradable[k]], &mut items[gradable[k]]);
                g.check(format_args!("eval sample `{}`", s.id))?;
                let reply = self.tok.decode(&g.tokens, true)?;
                item.correct = Some(check(self.answer_check, s, &reply) == Some(true));
                item.reply = Some(reply);
                if let Some(first) = g.log_probs.as_ref().and_then(|l| l.first())
                    && is_multiple_choice(s)
                {
                    self.pick_option(s, first, item)?;
                }
            }
        }
        Ok(())
    }

    /// Of every multiple-choice sample whose option the generation did not read, the option
    /// whose letter is the most likely first answer token, into `items` (one per sample).
    fn pick_options(
        &self,
        samples: &[Sample],
        batch_size: usize,
        items: &mut [ItemResult],
    ) -> Result<()> {
        let todo: Vec<usize> = (0..samples.len())
            .filter(|&i| is_multiple_choice(&samples[i]) && items[i].option_correct.is_none())
            .collect();
        let prompts = todo
            .iter()
            .map(|&i| self.prompt_ids(&samples[i], 0))
            .collect::<Result<Vec<_>>>()?;
        for chunk in by_length(&prompts).chunks(batch_size.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&k| prompts[k].clone()).collect();
            let batch = Batch::left_padded(&rows, self.tok.pad_id(), self.model.device())?;
            let t = batch.ids.dim(1)?;
            let hidden = self.model.hidden_states(&batch, Mode::Eval)?;
            let logits = self
                .model
                .logits(&hidden.i((.., t - 1, ..))?)?
                .to_dtype(DType::F32)?;
            let logp: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2()?;
            for (&k, lp) in chunk.iter().zip(&logp) {
                self.pick_option(&samples[todo[k]], lp, &mut items[todo[k]])?;
            }
        }
        Ok(())
    }

    /// The option of `s` whose letter's first token is the most likely under `log_probs`.
    fn pick_option(&self, s: &Sample, log_probs: &[f32], item: &mut ItemResult) -> Result<()> {
        let mut best: Option<(&str, f32)> = None;
        for letter in s.options.as_ref().into_iter().flat_map(|o| o.keys()) {
            let Some(&id) = self.tok.encode(letter, false)?.first() else {
                continue;
            };
            let Some(&lp) = log_probs.get(id as usize) else {
                continue;
            };
            if best.is_none_or(|(_, b)| lp > b) {
                best = Some((letter.as_str(), lp));
            }
        }
        item.option = best.map(|b| b.0.to_string());
        item.option_correct = Some(best.map(|b| b.0) == s.answer.as_deref());
        Ok(())
    }
}

fn is_multiple_choice(s: &Sample) -> bool {
    s.options.is_some() && s.answer.is_some()
}

/// Indices of `prompts`, shortest first, so that a batch pads its rows little.
fn by_length(prompts: &[Vec<u32>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&k| prompts[k].len());
    order
}

/// The share of `true` among the items a check applied to (`None` where it applied to none).
fn share(items: &[ItemResult], result: impl Fn(&ItemResult) -> Option<bool>) -> Option<f64> {
    let checked: Vec<bool> = items.iter().filter_map(result).collect();
    let right = checked.iter().filter(|&&r| r).count();
    (!checked.is_empty()).then(|| right as f64 / checked.len() as f64)
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
