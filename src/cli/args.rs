//! Options several commands share: the model to load (the `[model]` settings of a training
//! config, by flag) and a dataset with how to read it (the `[data]` keys of the same names).

use crate::config::{ModelSection, ModelSettings, Names, read_options};
use crate::data::{Dataset, Format, MCQ_TEMPLATE, QA_TEMPLATE, load_jsonl};
use crate::model::Trainable;
use crate::model::io::{Loaded, load};
use crate::model::lora::load_adapter;
use crate::outputs::Input;
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a .gguf file, or a hub id such as Qwen/Qwen3-4B.
    #[arg(long)]
    pub model: String,
    /// The revision of a hub id: a branch, tag or commit (default: its default branch).
    #[arg(long)]
    pub revision: Option<String>,
    /// A PEFT LoRA adapter directory to apply on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// f32 or bf16.
    #[arg(long, default_value_t = ModelSection::default().dtype)]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value_t = ModelSection::default().device)]
    pub device: String,
    /// Attention of the inference passes: composed, or flash (FlashAttention-2: CUDA, bf16, a
    /// build with --features flash-attn).
    #[arg(long, default_value_t = ModelSection::default().attention)]
    pub attention: String,
    /// Chat-template variables as key=value (JSON values), e.g. enable_thinking=false.
    #[arg(long = "template-arg", value_name = "KEY=VALUE")]
    pub template_args: Vec<String>,
}

impl ModelArgs {
    /// The model's settings, checked as the config's `[model]` is.
    pub fn settings(&self) -> Result<ModelSettings> {
        ModelSettings::resolve(
            (&self.model, self.revision.as_deref().unwrap_or_default()),
            (&self.dtype, &self.device, &self.attention),
            Names::Flags(&[("source", "model")]),
        )
    }

    /// Loads the model for inference, with its adapter when one is given.
    pub fn load(&self) -> Result<Loaded> {
        let settings = self.settings()?;
        let mut loaded = load(
            &settings.source,
            &settings.load_options(Trainable::Frozen, 0)?,
        )?;
        if let Some(dir) = &self.adapter {
            load_adapter(&mut loaded.model, dir)?;
        }
        Ok(loaded)
    }

    /// The files and directories the model is read from, for the output checks.
    pub fn inputs(&self) -> Vec<Input<'_>> {
        let mut inputs = vec![Input {
            name: "--model",
            path: Path::new(&self.model),
        }];
        if let Some(adapter) = &self.adapter {
            inputs.push(Input {
                name: "--adapter",
                path: adapter,
            });
        }
        inputs
    }

    pub fn template_args(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let mut map = serde_json::Map::new();
        for a in &self.template_args {
            let (k, v) = a
                .split_once('=')
                .with_context(|| format!("--template-arg `{a}`: expected KEY=VALUE"))?;
            let value = serde_json::from_str(v)
                .unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
            map.insert(k.to_string(), value);
        }
        Ok(map)
    }
}

/// A dataset and how to read it (the `[data]` keys of a training config of the same names).
#[derive(Args)]
pub struct DataArgs {
    /// A JSON Lines dataset.
    #[arg(long)]
    pub data: PathBuf,
    /// The records' shape; auto detects it per line.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Jinja template of a multiple-choice user turn (default: the built-in one).
    #[arg(long)]
    pub mcq_template: Option<String>,
    /// Jinja template of a short-answer user turn (default: the built-in one).
    #[arg(long)]
    pub qa_template: Option<String>,
    /// Count and skip malformed lines instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
}

impl DataArgs {
    pub fn input(&self) -> Input<'_> {
        Input {
            name: "--data",
            path: &self.data,
        }
    }

    /// Loads the dataset, telling the user how many lines `--skip-invalid` skipped.
    pub fn load(&self) -> Result<Dataset> {
        let opts = read_options(
            self.format,
            (
                self.mcq_template.as_deref().unwrap_or(MCQ_TEMPLATE),
                self.qa_template.as_deref().unwrap_or(QA_TEMPLATE),
            ),
            self.skip_invalid,
            Names::Flags(&[]),
        )?;
        let data = load_jsonl(&self.data, &opts)?;
        if data.skipped > 0 {
            eprintln!(
                "skipped {} invalid lines of {}",
                data.skipped,
                self.data.display()
            );
        }
        Ok(data)
    }
}
