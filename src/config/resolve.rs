//! The one place settings are checked and turned into the values the program runs on: the
//! model's precision, device and attention, the estimator's settings, sampling, the optimizer's
//! settings (shared by SFT and GRPO), the data's templates and token limits. Every command goes
//! through it, the config's sections and the command line's flags alike (they name the same
//! settings), so a bad value is refused with the same message, naming the key or the flag.

use super::Config;
use super::sections::{
    AggregateKind, DataSection, EntropySection, GrpoSection, HorizonKind, Method, Schedule,
    SftSection,
};
use crate::data::tokenize::Lengths;
use crate::data::{PromptTemplates, ReadOptions};
use crate::entropy::{Aggregate, EntropyConfig, Horizon};
use crate::model::Trainable;
use crate::model::device::{Attention, DeviceSpec, Precision};
use crate::model::io::LoadOptions;
use crate::model::sampling::Sampling;
use anyhow::{Context, Result, bail};
use std::fmt::Display;

/// How messages name a setting: by its key in a config section, or by its command-line flag.
#[derive(Debug, Clone, Copy)]
pub enum Names {
    /// Keys of this config section (`entropy` names `entropy.prefix_tokens`).
    Section(&'static str),
    /// Flags named after the fields (`prefix_tokens` is `--prefix-tokens`), but for the
    /// (field, flag) pairs listed.
    Flags(&'static [(&'static str, &'static str)]),
}

impl Names {
    /// The setting `field` as a message names it, in backticks.
    pub fn of(&self, field: &str) -> String {
        match self {
            Names::Section(section) => format!("`{section}.{field}`"),
            Names::Flags(renamed) => match renamed.iter().find(|(f, _)| *f == field) {
                Some((_, flag)) => format!("`--{flag}`"),
                None => format!("`--{}`", field.replace('_', "-")),
            },
        }
    }

    fn fail<T>(&self, field: &str, why: impl Display) -> Result<T> {
        bail!("{}: {why}", self.of(field))
    }

    fn positive(&self, field: &str, v: usize) -> Result<()> {
        if v == 0 {
            return self.fail(field, "must be positive, got 0");
        }
        Ok(())
    }

    fn in_unit(&self, field: &str, v: f64) -> Result<()> {
        if !(v > 0.0 && v <= 1.0) {
            return self.fail(field, format!("must be in (0, 1], got {v}"));
        }
        Ok(())
    }

    fn at_least_zero(&self, field: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            return self.fail(field, format!("must be finite and >= 0, got {v}"));
        }
        Ok(())
    }

    fn finite_positive(&self, field: &str, v: f64) -> Result<()> {
        if !(v.is_finite() && v > 0.0) {
            return self.fail(field, format!("must be finite and positive, got {v}"));
        }
        Ok(())
    }

    /// A value the flag or key gives as text, parsed.
    fn parse<T: std::str::FromStr<Err = anyhow::Error>>(
        &self,
        field: &str,
        text: &str,
    ) -> Result<T> {
        text.parse()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", self.of(field)))
    }
}

/// How and where the model runs, as the config's `[model]` or a command's flags give it.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub source: String,
    /// The revision of a hub id (branch, tag or commit); `None`: its default branch.
    pub revision: Option<String>,
    pub precision: Precision,
    pub device: DeviceSpec,
    pub attention: Attention,
}

impl ModelSettings {
    /// Checks the model's source and revision (empty: none), precision, device and attention
    /// (`revision`, `dtype`, `device`, `attention` under `names`).
    pub fn resolve(
        (source, revision): (&str, &str),
        (dtype, device, attention): (&str, &str, &str),
        names: Names,
    ) -> Result<Self> {
        if source.is_empty() {
            return names.fail(
                "source",
                "is required (a model directory, a .gguf file or a hub id)",
            );
        }
        let revision = (!revision.is_empty()).then(|| revision.to_string());
        if let Some(rev) = &revision {
            if let Err(e) = crate::model::io::hub::check_revision(rev) {
                return names.fail("revision", format!("{e:#}"));
            }
            if std::path::Path::new(source).exists() {
                return names.fail(
                    "revision",
                    format!(
                        "`{rev}` names a commit of a hub id, and {} `{source}` is a path on \
                         this machine; leave the revision out for a local model",
                        names.of("source")
                    ),
                );
            }
        }
        let precision: Precision = names.parse("dtype", dtype)?;
        let device: DeviceSpec = names.parse("device", device)?;
        let attention: Attention = names.parse("attention", attention)?;
        if let Some(why) = attention.unavailable(precision, device) {
            return names.fail("attention", format!("{attention} is unavailable: {why}"));
        }
        Ok(Self {
            source: source.to_string(),
            revision,
            precision,
            device,
            attention,
        })
    }

    /// What loading needs: the device opened, `trainable`, and the seed of fresh adapters.
    pub fn load_options(&self, trainable: Trainable, seed: u64) -> Result<LoadOptions> {
        Ok(LoadOptions {
            dtype: self.precision.dtype(),
            device: self.device.open()?,
            trainable,
            seed,
            attention: self.attention,
            revision: self.revision.clone(),
        })
    }
}

/// Greedy decoding, or sampling with a temperature and top-p / top-k filters.
pub fn sampling(
    greedy: bool,
    (temperature, top_p, top_k): (f64, f64, usize),
    names: Names,
) -> Result<Sampling> {
    names.in_unit("top_p", top_p)?;
    names.at_least_zero("temperature", temperature)?;
    Ok(Sampling::new(greedy, temperature, top_p, top_k))
}

/// The longest prompt + response in tokens: room for at least a few of each.
pub fn max_length(v: usize, names: Names) -> Result<usize> {
    if v < 8 {
        return names.fail("max_length", "must be at least 8");
    }
    Ok(v)
}

/// A count that must be at least one (batch sizes, token caps).
pub fn positive(field: &str, v: usize, names: Names) -> Result<usize> {
    names.positive(field, v)?;
    Ok(v)
}

impl EntropySection {
    /// The estimator these settings describe. Its seed is 0, its token limits the default, and
    /// it sees no template variables: the caller sets those.
    pub fn resolve(&self, names: Names) -> Result<EntropyConfig> {
        names.positive("prefix_tokens", self.prefix_tokens)?;
        names.positive("max_tokens", self.max_tokens)?;
        names.positive("samples_per_prompt", self.samples_per_prompt)?;
        names.positive("batch_size", self.batch_size)?;
        names.in_unit("top_fraction", self.top_fraction)?;
        let sampling = sampling(
            self.greedy,
            (self.temperature, self.top_p, self.top_k),
            names,
        )?;
        Ok(EntropyConfig {
            horizon: match self.horizon {
                HorizonKind::Prefix => Horizon::Prefix(self.prefix_tokens),
                HorizonKind::Full => Horizon::Full(self.max_tokens),
                HorizonKind::TeacherForced => Horizon::TeacherForced,
            },
            aggregate: match self.aggregate {
                AggregateKind::Mean => Aggregate::Mean,
                AggregateKind::TopFraction => Aggregate::TopFraction(self.top_fraction),
            },
            sampling,
            samples_per_prompt: self.samples_per_prompt,
            batch_size: self.batch_size,
            quick_answer: (!self.quick_answer.is_empty()).then(|| self.quick_answer.clone()),
            ..Default::default()
        })
    }
}

impl DataSection {
    /// How the train and eval files are read: the prompt templates compiled.
    pub fn read_options(&self) -> Result<ReadOptions> {
        read_options(
            self.format,
            (&self.mcq_template, &self.qa_template),
            self.skip_invalid,
            Names::Section("data"),
        )
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

    fn check(&self) -> Result<()> {
        let names = Names::Section("data");
        if self.train.as_os_str().is_empty() {
            return names.fail("train", "is required");
        }
        max_length(self.max_length, names)?;
        self.read_options()?;
        if self.max_prompt_length >= self.max_length {
            return names.fail(
                "max_prompt_length",
                format!(
                    "must be below data.max_length ({}) to leave room for the response, or 0",
                    self.max_length
                ),
            );
        }
        if self.max_response_length >= self.max_length {
            return names.fail(
                "max_response_length",
                format!(
                    "must be below data.max_length ({}) to leave room for the prompt, or 0",
                    self.max_length
                ),
            );
        }
        Ok(())
    }
}

/// A dataset's reading options: its record shape, the prompt templates (`mcq_template`,
/// `qa_template` under `names`) compiled, and whether bad lines are skipped.
pub fn read_options(
    format: crate::data::Format,
    (mcq, qa): (&str, &str),
    skip_invalid: bool,
    names: Names,
) -> Result<ReadOptions> {
    let templates = PromptTemplates::new(mcq, qa)
        .with_context(|| format!("{} / {}", names.of("mcq_template"), names.of("qa_template")))?;
    Ok(ReadOptions {
        format,
        templates,
        skip_invalid,
    })
}

/// AdamW and its learning-rate schedule: the same keys in `[sft]` and `[grpo]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this; 0 disables.
    pub max_grad_norm: f64,
    /// Fresh moments every round.
    pub reset_optimizer: bool,
}

impl OptimizerSettings {
    fn check(&self, names: Names) -> Result<()> {
        let (lr, min_lr) = (self.learning_rate, self.min_learning_rate);
        names.finite_positive("learning_rate", lr)?;
        names.finite_positive("eps", self.eps)?;
        if !(min_lr >= 0.0 && min_lr <= lr) {
            return names.fail(
                "min_learning_rate",
                format!("must be in [0, learning_rate = {lr}], got {min_lr}"),
            );
        }
        for (k, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return names.fail(k, format!("must be in [0, 1), got {v}"));
            }
        }
        names.at_least_zero("weight_decay", self.weight_decay)?;
        names.at_least_zero("max_grad_norm", self.max_grad_norm)
    }
}

impl SftSection {
    pub fn optimizer(&self) -> OptimizerSettings {
        OptimizerSettings {
            learning_rate: self.learning_rate,
            min_learning_rate: self.min_learning_rate,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            max_grad_norm: self.max_grad_norm,
            reset_optimizer: self.reset_optimizer,
        }
    }
}

impl GrpoSection {
    pub fn optimizer(&self) -> OptimizerSettings {
        OptimizerSettings {
            learning_rate: self.learning_rate,
            min_learning_rate: self.min_learning_rate,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            max_grad_norm: self.max_grad_norm,
            reset_optimizer: self.reset_optimizer,
        }
    }

    /// How rollouts sample.
    pub fn sampling(&self) -> Result<Sampling> {
        sampling(
            false,
            (self.temperature, self.top_p, self.top_k),
            Names::Section("grpo"),
        )
    }

    fn check(&self) -> Result<()> {
        let names = Names::Section("grpo");
        if self.num_generations < 2 {
            return names.fail(
                "num_generations",
                "must be at least 2 (advantages compare completions of a prompt)",
            );
        }
        names.positive("prompts_per_step", self.prompts_per_step)?;
        names.positive("steps_per_round", self.steps_per_round)?;
        names.positive("max_completion_length", self.max_completion_length)?;
        names.positive("micro_batch", self.micro_batch)?;
        names.positive("num_iterations", self.num_iterations)?;
        self.optimizer().check(names)?;
        names.at_least_zero("beta", self.beta)?;
        names.finite_positive("epsilon", self.epsilon)?;
        names.finite_positive("epsilon_high", self.epsilon_high)?;
        self.sampling().map(drop)
    }
}

/// Refuses a NaN or infinite number anywhere in a config, naming its key: no setting means
/// anything with one, and each would turn a run's numbers into noise.
fn finite_everywhere(value: &toml::Value, key: &str) -> Result<()> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => {
            bail!("`{key}`: must be a finite number, got {f}")
        }
        toml::Value::Table(t) => t.iter().try_for_each(|(k, v)| {
            let key = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            finite_everywhere(v, &key)
        }),
        toml::Value::Array(items) => items.iter().try_for_each(|v| finite_everywhere(v, key)),
        _ => Ok(()),
    }
}

/// A config's values as the run uses them, checked: what needs parsing or more than its TOML
/// type. The rest of the config is read as it is.
pub struct Settings {
    pub model: ModelSettings,
    /// Fresh LoRA adapters, or every parameter, trainable.
    pub trainable: Trainable,
    pub template_args: serde_json::Map<String, serde_json::Value>,
    pub read: ReadOptions,
    /// The estimator of every round (its seed set per round).
    pub entropy: EntropyConfig,
    /// The optimizer of the configured method.
    pub optimizer: OptimizerSettings,
}

impl Config {
    /// Checks every setting and returns the values the run uses.
    pub fn resolve(&self) -> Result<Settings> {
        finite_everywhere(&toml::Value::try_from(self)?, "")?;
        let m = &self.model;
        let model = ModelSettings::resolve(
            (&m.source, &m.revision),
            (&m.dtype, &m.device, &m.attention),
            Names::Section("model"),
        )?;
        let trainable = match m.finetune {
            super::sections::Finetune::Full => Trainable::Full,
            super::sections::Finetune::Lora => {
                m.lora.validate().context("`model.lora`")?;
                Names::Section("model.lora").finite_positive("alpha", m.lora.alpha)?;
                Trainable::Lora(m.lora.clone())
            }
        };
        self.data.check()?;
        let template_args = self.template_args();
        let entropy = EntropyConfig {
            lengths: self.data.lengths(),
            template_args: template_args.clone(),
            ..self.entropy.resolve(Names::Section("entropy"))?
        };
        let names = Names::Section("curriculum");
        let c = &self.curriculum;
        names.positive("rounds", c.rounds)?;
        if c.select_n == 0 && !(c.select_fraction > 0.0 && c.select_fraction <= 1.0) {
            return names.fail(
                "select_fraction",
                format!(
                    "must be in (0, 1] (or set select_n), got {}",
                    c.select_fraction
                ),
            );
        }
        if !(0.0..1.0).contains(&c.drop_top_fraction) {
            return names.fail(
                "drop_top_fraction",
                format!("must be in [0, 1), got {}", c.drop_top_fraction),
            );
        }
        names.in_unit("rescore_fraction", c.rescore_fraction)?;
        names.at_least_zero("soft_temperature", c.soft_temperature)?;
        let names = Names::Section("sft");
        let s = &self.sft;
        s.optimizer().check(names)?;
        names.positive("batch_size", s.batch_size)?;
        names.positive("grad_accum", s.grad_accum)?;
        names.positive("epochs_per_round", s.epochs_per_round)?;
        if self.method == Method::Grpo {
            self.grpo.check()?;
        }
        let names = Names::Section("eval");
        if self.eval.generate {
            names.positive("max_new_tokens", self.eval.max_new_tokens)?;
        }
        names.positive("batch_size", self.eval.batch_size)?;
        let names = Names::Section("run");
        names.positive("keep_last", self.run.keep_last)?;
        crate::logging::parse_filter(&self.run.log_level).context("`run.log_level`")?;
        Ok(Settings {
            model,
            trainable,
            template_args,
            read: self.data.read_options()?,
            entropy,
            optimizer: match self.method {
                Method::Sft => self.sft.optimizer(),
                Method::Grpo => self.grpo.optimizer(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_flags_name_the_same_setting() {
        let keys = Names::Section("entropy");
        let flags = Names::Flags(&[("samples_per_prompt", "samples")]);
        assert_eq!(keys.of("prefix_tokens"), "`entropy.prefix_tokens`");
        assert_eq!(flags.of("prefix_tokens"), "`--prefix-tokens`");
        assert_eq!(flags.of("samples_per_prompt"), "`--samples`");
        let bad = EntropySection {
            top_p: 2.0,
            ..Default::default()
        };
        let by_key = bad.resolve(keys).unwrap_err().to_string();
        let by_flag = bad.resolve(flags).unwrap_err().to_string();
        assert_eq!(by_key, "`entropy.top_p`: must be in (0, 1], got 2");
        assert_eq!(by_flag, "`--top-p`: must be in (0, 1], got 2");
        let none = EntropySection {
            samples_per_prompt: 0,
            ..Default::default()
        };
        assert_eq!(
            none.resolve(flags).unwrap_err().to_string(),
            "`--samples`: must be positive, got 0"
        );
    }

    #[test]
    fn the_model_settings_name_the_flag_that_is_wrong() {
        let flags = Names::Flags(&[]);
        let err = |d: &str, dev: &str, a: &str| {
            ModelSettings::resolve(("m", ""), (d, dev, a), flags)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("f16", "cpu", "composed"),
            "`--dtype`: expected f32 or bf16, got `f16`"
        );
        assert_eq!(
            err("f32", "gpu", "composed"),
            "`--device`: expected cpu, cuda or cuda:N, got `gpu`"
        );
        assert!(err("f32", "cpu", "flash").starts_with("`--attention`: flash is unavailable: "));
        let ok = ModelSettings::resolve(("m", ""), ("bf16", "cuda:1", "composed"), flags).unwrap();
        assert_eq!(
            (ok.precision, ok.device),
            (Precision::Bf16, DeviceSpec::Cuda(1))
        );
    }
}
