//! `edco estimate-entropy`: audit a dataset with a model (`crate::audit`). The estimator's flags
//! are the `[entropy]` settings of a training config, checked by the same code.

use super::args::{DataArgs, ModelArgs};
use crate::config::{AggregateKind, EntropySection, HorizonKind, Names, max_length};
use crate::data::tokenize::Lengths;
use crate::entropy::{EntropyConfig, Horizon};
use crate::outputs::{check_file, refuse_inputs};
use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;

/// The flags of `[entropy]` settings whose names differ from the keys'.
const FLAGS: Names = Names::Flags(&[("samples_per_prompt", "samples")]);

#[derive(Args)]
pub struct EstimateEntropyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Score the first K generated tokens (EDCO's efficient estimator).
    #[arg(long, default_value_t = EntropySection::default().prefix_tokens,
        conflicts_with_all = ["full", "teacher_forced"])]
    pub prefix_tokens: usize,
    /// Score the whole answer, up to EOS or --max-tokens.
    #[arg(long, conflicts_with = "teacher_forced")]
    pub full: bool,
    /// Score the reference answer in one teacher-forced pass (no generation).
    #[arg(long)]
    pub teacher_forced: bool,
    /// Cap on generated tokens for --full and --compare-full.
    #[arg(long, default_value_t = EntropySection::default().max_tokens)]
    pub max_tokens: usize,
    /// How positions' entropies become a score: their mean, or the mean of the highest
    /// --top-fraction of them.
    #[arg(long, value_enum, default_value_t = EntropySection::default().aggregate)]
    pub aggregate: AggregateKind,
    #[arg(long, default_value_t = EntropySection::default().top_fraction)]
    pub top_fraction: f64,
    /// Completions per prompt; the score is their mean.
    #[arg(long, default_value_t = EntropySection::default().samples_per_prompt)]
    pub samples: usize,
    /// Decode greedily instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = EntropySection::default().temperature)]
    pub temperature: f64,
    #[arg(long, default_value_t = EntropySection::default().top_p)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = EntropySection::default().top_k)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per batch (default: 16 on a CPU, 64 on a GPU).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// The instruction appended to the last user turn before scoring.
    #[arg(long, default_value_t = EntropySection::default().quick_answer)]
    pub quick_answer: String,
    /// Score the prompts as they are, without the quick-answer instruction.
    #[arg(long)]
    pub no_quick_answer: bool,
    /// Longest prompt in tokens (teacher-forced: prompt + answer); cut from the left beyond it.
    #[arg(long, default_value_t = EntropyConfig::default().lengths.max_length)]
    pub max_length: usize,
    /// Report entropies in bits instead of nats.
    #[arg(long)]
    pub bits: bool,
    /// Include every position's entropy in the output lines.
    #[arg(long)]
    pub per_token: bool,
    /// Also run the full-sequence estimator on the same samples and seeds, and compare.
    #[arg(long)]
    pub compare_full: bool,
    /// N of the top-N overlap in --compare-full, as a fraction of the pool.
    #[arg(long, default_value_t = 0.25)]
    pub top_n_fraction: f64,
    /// Score only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Scores file; the summary and pictures are written beside it.
    #[arg(long, default_value = "entropy_scores.jsonl")]
    pub out: PathBuf,
    /// Replace the scores, summary and pictures if they already exist.
    #[arg(long)]
    pub force: bool,
}

impl EstimateEntropyArgs {
    fn inputs(&self) -> Vec<crate::outputs::Input<'_>> {
        let mut inputs = self.model.inputs();
        inputs.push(self.data.input());
        inputs
    }

    /// The estimator the flags describe, checked as a config's `[entropy]` is.
    fn estimator(&self) -> Result<EntropyConfig> {
        let device = self.model.settings()?.device;
        let section = EntropySection {
            horizon: if self.teacher_forced {
                HorizonKind::TeacherForced
            } else if self.full {
                HorizonKind::Full
            } else {
                HorizonKind::Prefix
            },
            prefix_tokens: self.prefix_tokens,
            max_tokens: self.max_tokens,
            aggregate: self.aggregate,
            top_fraction: self.top_fraction,
            samples_per_prompt: self.samples,
            greedy: self.greedy,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            batch_size: self
                .batch_size
                .unwrap_or(if device.is_cuda() { 64 } else { 16 }),
            quick_answer: if self.no_quick_answer {
                String::new()
            } else {
                self.quick_answer.clone()
            },
        };
        Ok(EntropyConfig {
            seed: self.seed,
            lengths: Lengths::total(max_length(self.max_length, FLAGS)?),
            template_args: self.model.template_args()?,
            ..section.resolve(FLAGS)?
        })
    }
}

pub fn run(a: EstimateEntropyArgs) -> Result<()> {
    let cfg = a.estimator()?;
    if a.compare_full && !matches!(cfg.horizon, Horizon::Prefix(_) | Horizon::TeacherForced) {
        bail!(
            "--compare-full compares a prefix or teacher-forced score with the full one; drop --full"
        );
    }
    if !(a.top_n_fraction > 0.0 && a.top_n_fraction <= 1.0) {
        bail!(
            "--top-n-fraction must be in (0, 1], got {}",
            a.top_n_fraction
        );
    }
    let data = a.data.load()?;
    let mut samples = data.samples;
    if let Some(n) = a.limit {
        samples.truncate(n);
    }
    if samples.is_empty() {
        bail!("{}: no samples to score", a.data.data.display());
    }
    let opts = crate::audit::AuditOptions {
        out: a.out.clone(),
        bits: a.bits,
        per_token: a.per_token,
        compare_full: a.compare_full.then_some(a.max_tokens),
        top_n_fraction: a.top_n_fraction,
    };
    // Every output checked before the model loads and the pool is scored.
    for file in crate::audit::output_files(&opts) {
        refuse_inputs("--out", &file, &a.inputs())?;
        check_file("--out", &file, a.force)?;
    }
    let loaded = a.model.load()?;
    crate::audit::run(&loaded, &samples, &cfg, &opts)
}
