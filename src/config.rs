//! The training run's configuration: one TOML file, typed, unknown keys rejected, every default
//! explicit here, `--set section.key=value` overrides applied before parsing, validated once by
//! [`Config::load`] and trusted afterwards. Each part of the program receives its own section.

use crate::data::tokenize::Lengths;
use crate::data::{Format, MCQ_TEMPLATE, PromptTemplates, QA_TEMPLATE, ReadOptions};
use crate::model::lora::LoraConfig;
use crate::reward::Rule;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The trainer: sft or grpo.
    pub method: Method,
    pub model: ModelSection,
    pub data: DataSection,
    pub entropy: EntropySection,
    pub curriculum: CurriculumSection,
    pub sft: SftSection,
    pub grpo: GrpoSection,
    pub eval: EvalSection,
    pub run: RunSection,
}

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

impl DataSection {
    /// How the train and eval files are read.
    pub fn read_options(&self) -> Result<ReadOptions> {
        Ok(ReadOptions {
            format: self.format,
            templates: PromptTemplates::new(&self.mcq_template, &self.qa_template)
                .context("`data.mcq_template` / `data.qa_template`")?,
            skip_invalid: self.skip_invalid,
        })
    }

    /// The token limits of prompts and responses.
    pub fn lengths(&self) -> Lengths {
        let cap = |n: usize| if n == 0 { usize::MAX } else { n };
        Lengths {
            max_length: self.max_length,
            max_prompt: cap(self.max_prompt_length),
            max_response: cap(self.max_response_length),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Mean,
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

/// Applies `section.key=value` overrides to a parsed TOML document. Values are read as TOML
/// (numbers, booleans, arrays, inline tables), falling back to a plain string.
fn apply_overrides(doc: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (key, raw) = o
            .split_once('=')
            .with_context(|| format!("--set `{o}`: expected section.key=value"))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let parts: Vec<&str> = key.trim().split('.').collect();
        let (last, path) = parts.split_last().context("--set: empty key")?;
        let mut table = &mut *doc;
        for p in path {
            table = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("--set `{o}`: `{p}` is not a section"))?;
        }
        table.insert(last.to_string(), value);
    }
    Ok(())
}

impl Config {
    /// Reads, overrides, parses and validates a config file; relative data paths are taken
    /// relative to the current directory, as a user types them.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        // Without overrides, parse the text itself so errors carry its line and column.
        let cfg: Config = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        } else {
            let mut doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            apply_overrides(&mut doc, overrides)?;
            toml::Value::Table(doc)
                .try_into()
                .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |field: &str, why: &str| -> Result<()> { bail!("`{field}`: {why}") };
        let positive = |field: &str, v: usize| -> Result<()> {
            if v == 0 {
                bail!("`{field}`: must be positive, got 0");
            }
            Ok(())
        };
        let in_unit = |field: &str, v: f64| -> Result<()> {
            if !(v > 0.0 && v <= 1.0) {
                bail!("`{field}`: must be in (0, 1], got {v}");
            }
            Ok(())
        };
        let at_least_zero = |field: &str, v: f64| -> Result<()> {
            if !(0.0..).contains(&v) {
                bail!("`{field}`: must be >= 0, got {v}");
            }
            Ok(())
        };
        let rates = |section: &str, lr: f64, min_lr: f64| -> Result<()> {
            if lr.is_nan() || lr <= 0.0 {
                bail!("`{section}.learning_rate`: must be positive, got {lr}");
            }
            if !(min_lr >= 0.0 && min_lr <= lr) {
                bail!(
                    "`{section}.min_learning_rate`: must be in [0, learning_rate = {lr}], got {min_lr}"
                );
            }
            Ok(())
        };
        let betas = |section: &str, beta1: f64, beta2: f64| -> Result<()> {
            for (k, v) in [("beta1", beta1), ("beta2", beta2)] {
                if !(0.0..1.0).contains(&v) {
                    bail!("`{section}.{k}`: must be in [0, 1), got {v}");
                }
            }
            Ok(())
        };
        if self.model.source.is_empty() {
            fail(
                "model.source",
                "is required (a model directory, a .gguf file or a hub id)",
            )?;
        }
        if !matches!(self.model.dtype.as_str(), "f32" | "bf16") {
            fail("model.dtype", "expected f32 or bf16")?;
        }
        let d = self.model.device.as_str();
        let cuda_n = d
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok());
        if !(d == "cpu" || d == "cuda" || cuda_n) {
            fail(
                "model.device",
                &format!("expected cpu, cuda or cuda:N, got `{d}`"),
            )?;
        }
        if !matches!(self.model.attention.as_str(), "composed" | "flash") {
            fail(
                "model.attention",
                &format!("expected composed or flash, got `{}`", self.model.attention),
            )?;
        }
        if self.model.attention == "flash" {
            if !cfg!(feature = "flash-attn") {
                fail(
                    "model.attention",
                    "flash needs a build with FlashAttention (scripts/cuda_build.sh --flash-attn)",
                )?;
            }
            if self.model.dtype != "bf16" || !self.model.device.starts_with("cuda") {
                fail(
                    "model.attention",
                    "flash runs with model.dtype = \"bf16\" on a CUDA model.device",
                )?;
            }
        }
        if self.model.finetune == Finetune::Lora {
            self.model.lora.validate().context("`model.lora`")?;
        }
        if self.data.train.as_os_str().is_empty() {
            fail("data.train", "is required")?;
        }
        if self.data.max_length < 8 {
            fail("data.max_length", "must be at least 8")?;
        }
        self.data.read_options()?;
        if self.data.max_prompt_length >= self.data.max_length {
            fail(
                "data.max_prompt_length",
                &format!(
                    "must be below data.max_length ({}) to leave room for the response, or 0",
                    self.data.max_length
                ),
            )?;
        }
        if self.data.max_response_length >= self.data.max_length {
            fail(
                "data.max_response_length",
                &format!(
                    "must be below data.max_length ({}) to leave room for the prompt, or 0",
                    self.data.max_length
                ),
            )?;
        }
        let e = &self.entropy;
        positive("entropy.prefix_tokens", e.prefix_tokens)?;
        positive("entropy.max_tokens", e.max_tokens)?;
        positive("entropy.samples_per_prompt", e.samples_per_prompt)?;
        positive("entropy.batch_size", e.batch_size)?;
        in_unit("entropy.top_fraction", e.top_fraction)?;
        in_unit("entropy.top_p", e.top_p)?;
        at_least_zero("entropy.temperature", e.temperature)?;
        let c = &self.curriculum;
        positive("curriculum.rounds", c.rounds)?;
        if c.select_n == 0 && !(c.select_fraction > 0.0 && c.select_fraction <= 1.0) {
            fail(
                "curriculum.select_fraction",
                &format!(
                    "must be in (0, 1] (or set select_n), got {}",
                    c.select_fraction
                ),
            )?;
        }
        if !(0.0..1.0).contains(&c.drop_top_fraction) {
            fail(
                "curriculum.drop_top_fraction",
                &format!("must be in [0, 1), got {}", c.drop_top_fraction),
            )?;
        }
        in_unit("curriculum.rescore_fraction", c.rescore_fraction)?;
        at_least_zero("curriculum.soft_temperature", c.soft_temperature)?;
        let s = &self.sft;
        rates("sft", s.learning_rate, s.min_learning_rate)?;
        positive("sft.batch_size", s.batch_size)?;
        positive("sft.grad_accum", s.grad_accum)?;
        positive("sft.epochs_per_round", s.epochs_per_round)?;
        betas("sft", s.beta1, s.beta2)?;
        at_least_zero("sft.weight_decay", s.weight_decay)?;
        at_least_zero("sft.max_grad_norm", s.max_grad_norm)?;
        let g = &self.grpo;
        if self.method == Method::Grpo {
            if g.num_generations < 2 {
                fail(
                    "grpo.num_generations",
                    "must be at least 2 (advantages compare completions of a prompt)",
                )?;
            }
            positive("grpo.prompts_per_step", g.prompts_per_step)?;
            positive("grpo.steps_per_round", g.steps_per_round)?;
            positive("grpo.max_completion_length", g.max_completion_length)?;
            positive("grpo.micro_batch", g.micro_batch)?;
            positive("grpo.num_iterations", g.num_iterations)?;
            rates("grpo", g.learning_rate, g.min_learning_rate)?;
            at_least_zero("grpo.beta", g.beta)?;
            for (k, v) in [("epsilon", g.epsilon), ("epsilon_high", g.epsilon_high)] {
                if v.is_nan() || v <= 0.0 {
                    fail(&format!("grpo.{k}"), &format!("must be positive, got {v}"))?;
                }
            }
            in_unit("grpo.top_p", g.top_p)?;
            at_least_zero("grpo.temperature", g.temperature)?;
            betas("grpo", g.beta1, g.beta2)?;
            at_least_zero("grpo.weight_decay", g.weight_decay)?;
            at_least_zero("grpo.max_grad_norm", g.max_grad_norm)?;
        }
        if self.eval.generate {
            positive("eval.max_new_tokens", self.eval.max_new_tokens)?;
        }
        positive("eval.batch_size", self.eval.batch_size)?;
        positive("run.keep_last", self.run.keep_last)?;
        crate::logging::parse_filter(&self.run.log_level).context("`run.log_level`")?;
        Ok(())
    }

    /// Samples per round for a pool of `pool` samples.
    pub fn per_round(&self, pool: usize) -> usize {
        let c = &self.curriculum;
        let n = if c.select_n > 0 {
            c.select_n
        } else {
            (pool as f64 * c.select_fraction).round() as usize
        };
        n.clamp(1, pool.max(1))
    }

    pub fn template_args(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::to_value(&self.model.template_args)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nsource = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = Config::from_toml(MINIMAL, &[]).unwrap();
        assert_eq!(c.sft, SftSection::default());
        assert_eq!(c.curriculum.rounds, 8);
        assert_eq!(c.per_round(7000), 1750);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e =
            Config::from_toml(&format!("{MINIMAL}[sft]\nlearning_rat = 1e-5\n"), &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("learning_rat"), "{msg}");
        let e = Config::from_toml(&format!("{MINIMAL}[sftt]\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("sftt"));
    }

    #[test]
    fn overrides_apply_before_validation() {
        let c = Config::from_toml(
            MINIMAL,
            &[
                "sft.learning_rate=1e-4".into(),
                "curriculum.strategy=random".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.sft.learning_rate, 1e-4);
        assert_eq!(c.curriculum.strategy, Strategy::Random);
        let e = Config::from_toml(MINIMAL, &["curriculum.rounds=0".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("curriculum.rounds"));
        let e = Config::from_toml(MINIMAL, &["sft.batch_size=\"eight\"".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("batch_size"), "{e:#}");
    }

    #[test]
    fn type_errors_name_the_line() {
        let e =
            Config::from_toml(&format!("{MINIMAL}[sft]\nbatch_size = \"x\"\n"), &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("batch_size") && msg.contains("line 6"),
            "{msg}"
        );
    }

    #[test]
    fn attention_is_checked_against_dtype_device_and_build() {
        let err = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            format!("{:#}", Config::from_toml(MINIMAL, &sets).unwrap_err())
        };
        let msg = err(&["model.attention=fast"]);
        assert!(
            msg.contains("`model.attention`: expected composed or flash"),
            "{msg}"
        );
        // On the CPU in f32 (the defaults), flash is refused whatever the build.
        let msg = err(&["model.attention=flash"]);
        assert!(msg.contains("`model.attention`: flash"), "{msg}");
        let msg = err(&["model.attention=flash", "model.device=cuda"]);
        assert!(msg.contains("`model.attention`: flash"), "{msg}");
        let with_flash = Config::from_toml(
            MINIMAL,
            &[
                "model.attention=flash".into(),
                "model.device=cuda".into(),
                "model.dtype=bf16".into(),
            ],
        );
        assert_eq!(with_flash.is_ok(), cfg!(feature = "flash-attn"));
    }
}
