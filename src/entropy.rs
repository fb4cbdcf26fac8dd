//! EDCO's inference-entropy estimator (the EDCO paper's first component): score each sample by the exact
//! Shannon entropy of the model's full-vocabulary next-token distribution along a generated
//! answer (its first K tokens, or up to EOS / a cap), or along the reference answer in one
//! teacher-forced pass. Per-position entropies come from the raw logits, before temperature and
//! top-p; a sample's score is their mean, or the mean of the top fraction (the EDCO release's
//! "forking tokens"), averaged over `samples_per_prompt` completions.
//! Deviations from the EDCO paper: exact entropy instead of top-20 log-probs, the training chat
//! template for scoring, several samples or greedy decoding on request.

use crate::data::Sample;
use crate::data::tokenize::{Lengths, Tokenized, tokenize_pair, tokenize_prompt};
use crate::model::Decoder;
use crate::model::generate::{GenerateOptions, NonFinite, Prompt, generate};
use crate::model::layers::Mode;
use crate::model::sampling::Sampling;
use crate::response::response_logits;
use crate::tokenizer::{Message, Tokenizer};
use anyhow::{Context, Result, bail};
use candle_core::D;
use rayon::prelude::*;

/// The quick-answer instruction, appended to the last user turn so that the first tokens
/// of an answer already carry the model's uncertainty.
pub const QUICK_ANSWER: &str = "Answer in at most three sentences; keep any reasoning short.";

/// How per-position entropies become one score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Aggregate {
    Mean,
    /// Mean of the highest `fraction` of positions (at least one).
    TopFraction(f64),
}

impl Aggregate {
    pub fn apply(&self, h: &[f32]) -> f32 {
        if h.is_empty() {
            return 0.0;
        }
        match *self {
            Aggregate::Mean => h.iter().sum::<f32>() / h.len() as f32,
            Aggregate::TopFraction(f) => {
                let mut v = h.to_vec();
                v.sort_unstable_by(|a, b| b.total_cmp(a));
                let k = ((v.len() as f64 * f).ceil() as usize).clamp(1, v.len());
                v[..k].iter().sum::<f32>() / k as f32
            }
        }
    }
}

/// How much of an answer is scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Horizon {
    /// The first K generated tokens (EDCO's efficient estimator).
    Prefix(usize),
    /// Generate to EOS or the cap (the full-sequence score).
    Full(usize),
    /// The reference answer, teacher-forced, no generation.
    TeacherForced,
}

#[derive(Debug, Clone)]
pub struct EntropyConfig {
    pub horizon: Horizon,
    pub aggregate: Aggregate,
    pub sampling: Sampling,
    pub samples_per_prompt: usize,
    pub seed: u64,
    /// Prompts per generation batch (each carries `samples_per_prompt` rows).
    pub batch_size: usize,
    pub quick_answer: Option<String>,
    /// Token limits: generation uses the prompt's, teacher forcing the pair's. Prompts are cut
    /// from the left.
    pub lengths: Lengths,
    pub template_args: serde_json::Map<String, serde_json::Value>,
}

impl Default for EntropyConfig {
    fn default() -> Self {
        Self {
            horizon: Horizon::Prefix(128),
            aggregate: Aggregate::Mean,
            sampling: Sampling::Sample {
                temperature: 0.7,
                top_p: 0.7,
                top_k: 0,
            },
            samples_per_prompt: 1,
            seed: 0,
            batch_size: 16,
            quick_answer: Some(QUICK_ANSWER.to_string()),
            lengths: Lengths::total(2048),
            template_args: Default::default(),
        }
    }
}

/// One sample's score and what it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleEntropy {
    pub id: String,
    /// Mean over completions of the aggregated entropy (nats).
    pub score: f32,
    /// Per completion, the entropy at every scored position (nats).
    pub entropies: Vec<Vec<f32>>,
    /// Per completion, whether it ended with EOS (teacher-forced: always true).
    pub eos: Vec<bool>,
    /// Prompt tokens cut from the left to fit the prompt limit (and the model's context).
    pub prompt_cut: usize,
}

impl SampleEntropy {
    pub fn tokens(&self) -> usize {
        self.entropies.iter().map(Vec::len).sum()
    }
}

/// The scoring prompt: the sample's turns with the quick-answer instruction after the last user turn.
pub fn scoring_messages(sample: &Sample, quick_answer: Option<&str>) -> Vec<Message> {
    let mut msgs = sample.messages.clone();
    if let Some(q) = quick_answer.filter(|q| !q.is_empty())
        && let Some(last) = msgs.iter_mut().rev().find(|m| m.role == "user")
    {
        last.content = format!("{}\n\n{q}", last.content.trim_end());
    }
    msgs
}

/// Scores every sample. `progress(done_samples, scored_tokens)` is called after each batch.
/// Results come back in input order; prompts are batched by length to limit padding.
pub fn estimate(
    model: &Decoder,
    tok: &Tokenizer,
    eos_token_ids: &[u32],
    samples: &[Sample],
    cfg: &EntropyConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SampleEntropy>> {
    if cfg.samples_per_prompt == 0 || cfg.batch_size == 0 {
        bail!("samples_per_prompt and batch_size must be positive");
    }
    if let Aggregate::TopFraction(f) = cfg.aggregate
        && !(f > 0.0 && f <= 1.0)
    {
        bail!("top fraction must be in (0, 1], got {f}");
    }
    match cfg.horizon {
        Horizon::TeacherForced => teacher_forced(model, tok, samples, cfg, progress),
        Horizon::Prefix(k) | Horizon::Full(k) => {
            generated(model, tok, eos_token_ids, samples, cfg, k, progress)
        }
    }
}

fn generated(
    model: &Decoder,
    tok: &Tokenizer,
    eos_token_ids: &[u32],
    samples: &[Sample],
    cfg: &EntropyConfig,
    max_new_tokens: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SampleEntropy>> {
    // Room for the prompt: the configured limit, within the model's context after generation.
    let limit = cfg
        .lengths
        .prompt_limit()
        .min(
            model
                .config
                .max_position_embeddings
                .saturating_sub(max_new_tokens),
        )
        .max(1);
    let mut cuts = vec![0usize; samples.len()];
    let prompts = samples
        .par_iter()
        .zip(cuts.par_iter_mut())
        .map(|(s, cut)| {
            let messages = scoring_messages(s, cfg.quick_answer.as_deref());
            let ids;
            (ids, *cut) = tokenize_prompt(tok, &messages, &cfg.template_args, limit)
                .with_context(|| format!("sample `{}`", s.id))?;
            Ok(Prompt {
                ids,
                seed: crate::seed::of_id(cfg.seed, &s.id),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = GenerateOptions {
        max_new_tokens,
        sampling: cfg.sampling,
        eos_token_ids: eos_token_ids.to_vec(),
        pad_id: tok.pad_id(),
        keep_log_probs: false,
        keep_first_log_probs: false,
        samples_per_prompt: cfg.samples_per_prompt,
    };
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].ids.len()));
    let mut out: Vec<Option<SampleEntropy>> = vec![None; samples.len()];
    let (mut done, mut tokens) = (0, 0);
    for chunk in order.chunks(cfg.batch_size) {
        let batch: Vec<Prompt> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let gens = generate(model, &batch, &opts)?;
        for (j, &i) in chunk.iter().enumerate() {
            let mine = &gens[j * cfg.samples_per_prompt..(j + 1) * cfg.samples_per_prompt];
            for g in mine {
                g.check(format_args!("sample `{}`", samples[i].id))?;
            }
            let entropies: Vec<Vec<f32>> = mine.iter().map(|g| g.entropies.clone()).collect();
            let score = entropies
                .iter()
                .map(|h| cfg.aggregate.apply(h))
                .sum::<f32>()
                / mine.len() as f32;
            tokens += entropies.iter().map(Vec::len).sum::<usize>();
            out[i] = Some(SampleEntropy {
                id: samples[i].id.clone(),
                score,
                entropies,
                eos: mine.iter().map(|g| g.finished).collect(),
                prompt_cut: cuts[i],
            });
        }
        done += chunk.len();
        progress(done, tokens);
    }
    Ok(out.into_iter().flatten().collect())
}

fn teacher_forced(
    model: &Decoder,
    tok: &Tokenizer,
    samples: &[Sample],
    cfg: &EntropyConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<SampleEntropy>> {
    let lengths = cfg.lengths.within(model.config.max_position_embeddings);
    let pairs: Vec<Tokenized> = samples
        .par_iter()
        .map(|s| tokenize_pair(tok, s, &cfg.template_args, lengths))
        .collect::<Result<_>>()?;
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].prompt.len() + pairs[i].response.len()));
    let mut out: Vec<Option<SampleEntropy>> = vec![None; samples.len()];
    let (mut done, mut tokens) = (0, 0);
    for chunk in order.chunks(cfg.batch_size) {
        let batch: Vec<Tokenized> = chunk.iter().map(|&i| pairs[i].clone()).collect();
        let (logits, _) = response_logits(model, &batch, tok.pad_id(), Mode::Eval)?;
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let h: Vec<f32> = (lsm.exp()? * &lsm)?.sum(D::Minus1)?.neg()?.to_vec1()?; // (N,)
        let mut offset = 0;
        for &i in chunk {
            let row = h[offset..offset + pairs[i].response.len()].to_vec();
            offset += row.len();
            if row.iter().any(|x| !x.is_finite()) {
                return Err(NonFinite {
                    what: format!("sample `{}`", samples[i].id),
                    token: None,
                }
                .into());
            }
            tokens += row.len();
            out[i] = Some(SampleEntropy {
                id: samples[i].id.clone(),
                score: cfg.aggregate.apply(&row),
                entropies: vec![row],
                eos: vec![true],
                prompt_cut: pairs[i].cut,
            });
        }
        done += chunk.len();
        progress(done, tokens);
    }
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_fraction_averages_the_highest_positions() {
        let h = [0.1, 5.0, 0.2, 3.0, 0.3, 0.0, 1.0, 2.0, 0.4, 0.5];
        assert!((Aggregate::TopFraction(0.2).apply(&h) - 4.0).abs() < 1e-6);
        assert!((Aggregate::TopFraction(0.25).apply(&h) - 10.0 / 3.0).abs() < 1e-6);
        assert!((Aggregate::Mean.apply(&h) - 1.25).abs() < 1e-6);
        assert_eq!(Aggregate::TopFraction(0.01).apply(&h), 5.0);
        assert_eq!(Aggregate::Mean.apply(&[]), 0.0);
    }

    #[test]
    fn quick_answer_goes_after_the_last_user_turn() {
        let s = crate::data::parse_record(
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"Q?\n"}]}"#,
            1,
        )
        .unwrap();
        let m = scoring_messages(&s, Some("Be brief."));
        assert_eq!(m[1].content, "Q?\n\nBe brief.");
        assert_eq!(m[0].content, "s");
        assert_eq!(scoring_messages(&s, None)[1].content, "Q?\n");
    }
}
