//! The sections of a training config as the TOML file spells them, each with its defaults: the
//! file format, every key documented in the README's config reference. Values that need parsing
//! (dtype, device, attention, templates) stay text here and are checked and typed in `resolve`.
//! `[sft]` and `[grpo]` repeat the optimizer's keys: serde's `flatten` would share them but lose
//! the key and line of a mistyped value, so both resolve into one `OptimizerSettings` instead.

use crate::data::{Format, MCQ_TEMPLATE, QA_TEMPLATE};
use crate::model::lora::LoraConfig;
use crate::reward::Rule;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Sft,
    Grpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    Full,
    Lora,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A Hugging Face directory, a .gguf file, or a hub id.
    pub source: String,
    /// A hub id's revision: a branch, tag or commit (empty: the default branch).
    pub revision: String,
    /// f32 or bf16.
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    pub device: String,
    /// Attention of the inference passes (scoring, generation, evaluation): composed, or flash
    /// (FlashAttention-2: CUDA, bf16, a `flash-attn` build). Training passes, and GRPO's
    /// old-policy and reference log-probs, always take the composed attention.
    pub attention: String,
    pub finetune: Finetune,
    pub lora: LoraConfig,
    /// Chat-template variables, e.g. { enable_thinking = false } for Qwen3.
    pub template_args: toml::Table,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            source: String::new(),
            revision: String::new(),
            dtype: "f32".into(),
            device: "cpu".into(),
            attention: "composed".into(),
            finetune: Finetune::Lora,
            lora: LoraConfig::default(),
            template_args: toml::Table::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// The pool the curriculum selects from (JSON Lines, any documented shape).
    pub train: PathBuf,
    /// Held-out samples for evaluation; empty for none.
    pub eval: PathBuf,
    /// The records' shape in both files: auto (detected per line), chat, prompt_completion or
    /// question.
    pub format: Format,
    /// Jinja template of a multiple-choice user turn; sees `context`, `question` and `options`
    /// (a list of `{letter, text}`).
    pub mcq_template: String,
    /// Jinja template of a short-answer user turn; sees `context` and `question`.
    pub qa_template: String,
    /// Longest prompt + response in tokens; prompts are cut from the left.
    pub max_length: usize,
    /// Longest prompt in tokens, cut from the left (0: only max_length bounds it).
    pub max_prompt_length: usize,
    /// Longest reference response in tokens, cut at the end (0: only max_length bounds it).
    pub max_response_length: usize,
    /// How a reply is checked against an item's `answer`, for GRPO rewards and eval accuracy:
    /// auto, choice, yes_no, numeric or exact.
    pub answer_check: Rule,
    /// Skip (and count) malformed lines instead of failing.
    pub skip_invalid: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            eval: PathBuf::new(),
            format: Format::Auto,
            mcq_template: MCQ_TEMPLATE.to_string(),
            qa_template: QA_TEMPLATE.to_string(),
            max_length: 1024,
            max_prompt_length: 0,
            max_response_length: 0,
            answer_check: Rule::Auto,
            skip_invalid: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HorizonKind {
    Prefix,
    Full,
    TeacherForced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Mean,
    /// The mean of the highest `top_fraction` of positions.
    #[value(alias = "top_fraction")]
    TopFraction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntropySection {
    pub horizon: HorizonKind,
    /// K of the prefix estimator.
    pub prefix_tokens: usize,
    /// Cap of the full estimator.
    pub max_tokens: usize,
    pub aggregate: AggregateKind,
    pub top_fraction: f64,
    pub samples_per_prompt: usize,
    pub greedy: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    /// Prompts per scoring batch.
    pub batch_size: usize,
    /// Appended to the last user turn when scoring; empty to score the prompt as it is.
    pub quick_answer: String,
}

impl Default for EntropySection {
    fn default() -> Self {
        Self {
            horizon: HorizonKind::Prefix,
            prefix_tokens: 128,
            max_tokens: 512,
            aggregate: AggregateKind::Mean,
            top_fraction: 0.2,
            samples_per_prompt: 1,
            greedy: false,
            temperature: 0.7,
            top_p: 0.7,
            top_k: 0,
            batch_size: 16,
            quick_answer: crate::entropy::QUICK_ANSWER.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Score the pool with the current model every round; keep the most uncertain.
    Edco,
    /// A fresh random selection every round.
    Random,
    /// Static: shortest prompts first, scored once.
    Length,
    /// Static: lowest perplexity of the reference answer first, scored once before training.
    Perplexity,
    /// Static: highest entropy first, scored once before training.
    Entropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CurriculumSection {
    pub strategy: Strategy,
    pub rounds: usize,
    /// Samples per round as a fraction of the pool (used when `select_n` is 0).
    pub select_fraction: f64,
    /// Samples per round; 0 means use `select_fraction`.
    pub select_n: usize,
    /// Drop this fraction of the highest-scored samples as likely noise before selecting (edco).
    pub drop_top_fraction: f64,
    /// Re-score only this fraction of the pool per round, least recently scored first; the others
    /// keep their last score (edco).
    pub rescore_fraction: f64,
    /// 0: keep the top N. > 0: sample N without replacement with probability ~ exp(score / T).
    pub soft_temperature: f64,
}

impl Default for CurriculumSection {
    fn default() -> Self {
        Self {
            strategy: Strategy::Edco,
            rounds: 8,
            select_fraction: 0.25,
            select_n: 0,
            drop_top_fraction: 0.0,
            rescore_fraction: 1.0,
            soft_temperature: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    pub learning_rate: f64,
    /// The schedule decays to this rate.
    pub min_learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this; 0 disables.
    pub max_grad_norm: f64,
    /// Passes over each round's selection.
    pub epochs_per_round: usize,
    /// Fresh AdamW moments every round (the EDCO paper's behaviour) or carried over.
    pub reset_optimizer: bool,
}

impl Default for SftSection {
    fn default() -> Self {
        Self {
            learning_rate: 2.5e-6,
            min_learning_rate: 1.25e-7,
            schedule: Schedule::Cosine,
            warmup_steps: 0,
            batch_size: 8,
            grad_accum: 1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            max_grad_norm: 1.0,
            epochs_per_round: 1,
            reset_optimizer: true,
        }
    }
}

/// GRPO, with TRL's names where the meaning is the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSection {
    /// Completions per prompt (G).
    pub num_generations: usize,
    pub prompts_per_step: usize,
    /// Optimizer steps per round; prompts cycle through the round's selection.
    pub steps_per_round: usize,
    /// Longest completion in tokens (the rollout's generation cap).
    #[serde(alias = "max_new_tokens")]
    pub max_completion_length: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    /// KL coefficient against the reference (the base with adapters off under LoRA).
    pub beta: f64,
    pub epsilon: f64,
    pub epsilon_high: f64,
    /// Divide advantages by the group's std (false: only centre them).
    pub scale_rewards: bool,
    /// Optimizer steps on each batch of rollouts (TRL's mu).
    pub num_iterations: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub reset_optimizer: bool,
}

impl Default for GrpoSection {
    fn default() -> Self {
        Self {
            num_generations: 8,
            prompts_per_step: 8,
            steps_per_round: 100,
            max_completion_length: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            learning_rate: 1e-6,
            min_learning_rate: 1e-6,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            beta: 0.01,
            epsilon: 0.2,
            epsilon_high: 0.2,
            scale_rewards: true,
            num_iterations: 1,
            micro_batch: 8,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            reset_optimizer: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate at most this many held-out samples (0: all).
    pub max_samples: usize,
    /// Greedy generation + answer extraction accuracy.
    pub generate: bool,
    /// Multiple choice by the likelihood of each option's letter.
    pub option_likelihood: bool,
    /// Held-out mean NLL of the reference responses.
    pub loss: bool,
    pub max_new_tokens: usize,
    pub batch_size: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            max_samples: 0,
            generate: true,
            option_likelihood: true,
            loss: true,
            max_new_tokens: 32,
            batch_size: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub output_dir: PathBuf,
    pub seed: u64,
    /// Also checkpoint every N optimizer steps within a round (0: at round ends only).
    pub checkpoint_every_steps: usize,
    /// Checkpoints kept; older ones are removed.
    pub keep_last: usize,
    /// What the run logs to standard error: error, warn, info, debug or trace, or a `tracing`
    /// filter such as `edco=debug`. `RUST_LOG`, when set, takes precedence.
    pub log_level: String,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("runs/edco"),
            seed: 0,
            checkpoint_every_steps: 0,
            keep_last: 2,
            log_level: "warn".into(),
        }
    }
}
