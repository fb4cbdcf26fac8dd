//! The command line: clap definitions resolved once into calls on the library. Each subcommand
//! owns its arguments; shared model options (source, dtype, device, adapter) live in [`ModelArgs`].

use crate::data::tokenize::Lengths;
use crate::data::{Format, MCQ_TEMPLATE, PromptTemplates, QA_TEMPLATE, ReadOptions, load_jsonl};
use crate::model::config::Arch;
use crate::model::generate::{GenerateOptions, Prompt, generate};
use crate::model::io::{LoadOptions, Loaded, load};
use crate::model::lora::load_adapter;
use crate::model::sampling::Sampling;
use crate::tokenizer::Message;
use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "edco",
    version,
    about = "Fine-tune LLMs with an entropy-driven dynamic curriculum"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train with the dynamic curriculum: score, select, fine-tune, evaluate, round after round.
    Train(TrainArgs),
    /// Generate completions for one or more prompts.
    Generate(GenerateArgs),
    /// Per-sample mean negative log-likelihood of each reference response (JSON lines).
    Perplexity(PerplexityArgs),
    /// Score a dataset by the model's inference entropy (EDCO's estimator), with summary and plots.
    EstimateEntropy(EstimateEntropyArgs),
    /// Write a small randomly initialised model in Hugging Face layout.
    InitModel(InitModelArgs),
    /// Check a device against the CPU (logits in f32 and bf16) and measure its speed.
    CheckDevice(CheckDeviceArgs),
}

#[derive(Args)]
pub struct ModelArgs {
    /// A Hugging Face model directory, a .gguf file, or a hub id such as Qwen/Qwen3-4B.
    #[arg(long)]
    pub model: String,
    /// A PEFT LoRA adapter directory to apply on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Attention of the inference passes: composed, or flash (FlashAttention-2: CUDA, bf16, a
    /// build with --features flash-attn).
    #[arg(long, default_value = "composed")]
    pub attention: String,
    /// Chat-template variables as key=value (JSON values), e.g. enable_thinking=false.
    #[arg(long = "template-arg", value_name = "KEY=VALUE")]
    pub template_args: Vec<String>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Loaded> {
        let opts = LoadOptions {
            dtype: parse_dtype(&self.dtype)?,
            device: parse_device(&self.device)?,
            attention: self.attention.clone(),
            ..Default::default()
        };
        let mut loaded = load(&self.model, &opts)?;
        if let Some(dir) = &self.adapter {
            load_adapter(&mut loaded.model, dir)?;
        }
        Ok(loaded)
    }

    pub fn template_args(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        parse_template_args(&self.template_args)
    }
}

pub fn parse_template_args(args: &[String]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("--template-arg `{a}`: expected KEY=VALUE"))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(map)
}

pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => bail!("unsupported dtype `{other}`: expected f32 or bf16"),
    }
}

pub fn parse_device(s: &str) -> Result<Device> {
    let ordinal = match s {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => bail!("unsupported device `{other}`: expected cpu, cuda or cuda:N"),
        },
    };
    cuda_libraries_present()?;
    Device::new_cuda(ordinal).with_context(|| {
        format!("opening CUDA device {ordinal} (was edco built with --features cuda?)")
    })
}

/// The CUDA build loads the driver and the CUDA libraries when a device is first opened, and the
/// loader panics on a missing one: look for them first, so that a missing library is an error
/// that names it.
#[cfg(feature = "cuda")]
fn cuda_libraries_present() -> Result<()> {
    use candle_core::cuda::cudarc::{cublas, cublaslt, curand, driver, nvrtc};
    // SAFETY: each check only tries to open the library by its candidate names.
    let found = unsafe {
        [
            (
                "the CUDA driver (libcuda.so.1)",
                driver::sys::is_culib_present(),
            ),
            ("cuBLAS (libcublas.so)", cublas::sys::is_culib_present()),
            (
                "cuBLASLt (libcublasLt.so)",
                cublaslt::sys::is_culib_present(),
            ),
            ("cuRAND (libcurand.so)", curand::sys::is_culib_present()),
            ("NVRTC (libnvrtc.so)", nvrtc::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        bail!(
            "cannot open a CUDA device: {} not found on the library path \
             (set LD_LIBRARY_PATH to the folders holding the CUDA 13 libraries)",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_libraries_present() -> Result<()> {
    Ok(())
}

#[derive(Args)]
pub struct TrainArgs {
    /// The run's TOML config (not with --resume, which reads the run's own copy; use --set there).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. --set sft.learning_rate=1e-5 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the resolved config and the plan, then exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A user message; repeat for a batch.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A JSON Lines file of prompts (any dataset shape edco reads).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// A system message put before every prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed prompts as raw text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Pick the most likely token at every step.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Print one JSON object per prompt (completion, tokens, entropies) instead of text.
    #[arg(long)]
    pub jsonl: bool,
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Write the scores here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Longest prompt + response in tokens; prompts are cut from the left beyond it.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
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
    /// Loads the dataset, telling the user how many lines `--skip-invalid` skipped.
    fn load(&self) -> Result<crate::data::Dataset> {
        let templates = PromptTemplates::new(
            self.mcq_template.as_deref().unwrap_or(MCQ_TEMPLATE),
            self.qa_template.as_deref().unwrap_or(QA_TEMPLATE),
        )
        .context("--mcq-template / --qa-template")?;
        let opts = ReadOptions {
            format: self.format,
            templates,
            skip_invalid: self.skip_invalid,
        };
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

#[derive(Args)]
pub struct EstimateEntropyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Score the first K generated tokens (EDCO's efficient estimator).
    #[arg(long, default_value_t = 128, conflicts_with_all = ["full", "teacher_forced"])]
    pub prefix_tokens: usize,
    /// Score the whole answer, up to EOS or --max-tokens.
    #[arg(long, conflicts_with = "teacher_forced")]
    pub full: bool,
    /// Score the reference answer in one teacher-forced pass (no generation).
    #[arg(long)]
    pub teacher_forced: bool,
    /// Cap on generated tokens for --full and --compare-full.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// mean, or top-fraction (mean of the highest --top-fraction of positions).
    #[arg(long, default_value = "mean")]
    pub aggregate: String,
    #[arg(long, default_value_t = 0.2)]
    pub top_fraction: f64,
    /// Completions per prompt; the score is their mean.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Decode greedily instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.7)]
    pub top_p: f64,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per batch (default: 16 on a CPU, 64 on a GPU).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// The instruction appended to the last user turn before scoring.
    #[arg(long, default_value = crate::entropy::QUICK_ANSWER)]
    pub quick_answer: String,
    /// Score the prompts as they are, without the quick-answer instruction.
    #[arg(long)]
    pub no_quick_answer: bool,
    /// Longest prompt in tokens (teacher-forced: prompt + answer); cut from the left beyond it.
    #[arg(long, default_value_t = 2048)]
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
}

#[derive(Args)]
pub struct InitModelArgs {
    /// qwen3 or llama.
    #[arg(long, default_value = "qwen3")]
    pub arch: String,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// A directory with tokenizer.json (and tokenizer_config.json) to use; default: a built-in
    /// byte-level tokenizer with a ChatML template.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = 128)]
    pub intermediate_size: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 2)]
    pub kv_heads: usize,
    /// Width of each attention head (Qwen3-4B: 128); default: hidden size / heads.
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// Give the model its own output head instead of sharing the embedding.
    #[arg(long)]
    pub untied: bool,
    /// Embedding rows (at least the tokenizer's vocabulary); default: the tokenizer's.
    #[arg(long)]
    pub vocab_size: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct CheckDeviceArgs {
    /// A Hugging Face model directory, a .gguf file, or a hub id.
    #[arg(long)]
    pub model: String,
    /// The device to check against the CPU: cuda or cuda:N (cpu checks the CPU's own bf16).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Rows of random token ids.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Also measure speed in this dtype (f32 or bf16); the logits check runs both regardless.
    #[arg(long)]
    pub speed: Option<String>,
    /// Rows and tokens per row of the speed measurements.
    #[arg(long, default_value_t = 8)]
    pub speed_batch: usize,
    #[arg(long, default_value_t = 512)]
    pub speed_seq_len: usize,
    /// Side of the square matrix product whose rate the utilisation is measured against.
    #[arg(long, default_value_t = 8192)]
    pub matmul_size: usize,
    /// Timed repetitions of each speed measurement (the best counts).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => run_train(a),
        Command::Generate(a) => run_generate(a),
        Command::Perplexity(a) => run_perplexity(a),
        Command::EstimateEntropy(a) => run_estimate_entropy(a),
        Command::InitModel(a) => run_init_model(a),
        Command::CheckDevice(a) => run_check_device(a),
    }
}

/// Prints one JSON line per logits comparison (and per speed measurement), and fails when a
/// comparison is out of tolerance.
fn run_check_device(a: CheckDeviceArgs) -> Result<()> {
    use crate::device_check::{
        CheckSpec, agreement, flash_attention_agreement, flash_model_agreement, speed,
    };
    if a.batch == 0 || a.seq_len == 0 || a.speed_batch == 0 || a.speed_seq_len == 0 {
        bail!("--batch, --seq-len, --speed-batch and --speed-seq-len must be at least 1");
    }
    let mut spec = CheckSpec {
        model: a.model,
        device: parse_device(&a.device)?,
        batch: a.batch,
        seq_len: a.seq_len,
        seed: a.seed,
        reps: a.reps,
    };
    let mut out = std::io::stdout().lock();
    let mut checks = Vec::new();
    // Each kind printed as soon as it is measured, so a later one that errors leaves the earlier
    // results on record.
    type Check = fn(&CheckSpec) -> Result<Vec<crate::device_check::Agreement>>;
    for (kind, check) in [
        ("logits", agreement as Check),
        ("flash-attn", flash_attention_agreement),
        ("flash-attn-model", flash_model_agreement),
    ] {
        let results = check(&spec)?;
        for c in &results {
            writeln!(
                out,
                "{}",
                serde_json::json!({ "check": kind, "device": a.device, "result": c })
            )?;
        }
        checks.extend(results);
    }
    if let Some(dtype) = &a.speed {
        spec.batch = a.speed_batch;
        spec.seq_len = a.speed_seq_len;
        let s = speed(&spec, parse_dtype(dtype)?, a.matmul_size)?;
        writeln!(
            out,
            "{}",
            serde_json::json!({ "check": "speed", "device": a.device, "result": s })
        )?;
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.pass).map(|c| c.dtype).collect();
    if !failed.is_empty() {
        bail!(
            "{} differs from the CPU beyond tolerance in {}",
            a.device,
            failed.join(", ")
        );
    }
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let path = match (&a.resume, &a.config) {
        (_, Some(p)) => p.clone(),
        (Some(run), None) => run.join("config.toml"),
        (None, None) => bail!("give --config FILE or --resume RUN_DIR"),
    };
    let cfg = crate::config::Config::load(&path, &a.overrides)?;
    crate::logging::apply_config_level(&cfg.run.log_level)?;
    crate::train::run(&cfg, a.resume.as_deref(), a.dry_run)?;
    Ok(())
}

fn run_estimate_entropy(a: EstimateEntropyArgs) -> Result<()> {
    use crate::entropy::{Aggregate, EntropyConfig, Horizon};
    let aggregate = match a.aggregate.as_str() {
        "mean" => Aggregate::Mean,
        "top-fraction" | "top_fraction" => Aggregate::TopFraction(a.top_fraction),
        other => bail!("--aggregate `{other}`: expected mean or top-fraction"),
    };
    let horizon = if a.teacher_forced {
        Horizon::TeacherForced
    } else if a.full {
        Horizon::Full(a.max_tokens)
    } else {
        Horizon::Prefix(a.prefix_tokens)
    };
    if a.compare_full && !matches!(horizon, Horizon::Prefix(_) | Horizon::TeacherForced) {
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
    let cfg = EntropyConfig {
        horizon,
        aggregate,
        sampling: Sampling::new(a.greedy, a.temperature, a.top_p, a.top_k),
        samples_per_prompt: a.samples,
        seed: a.seed,
        batch_size: 0,
        quick_answer: (!a.no_quick_answer).then(|| a.quick_answer.clone()),
        lengths: Lengths::total(a.max_length),
        template_args: a.model.template_args()?,
    };
    let data = a.data.load()?;
    let mut samples = data.samples;
    if let Some(n) = a.limit {
        samples.truncate(n);
    }
    if samples.is_empty() {
        bail!("{}: no samples to score", a.data.data.display());
    }
    let loaded = a.model.load()?;
    let default_batch = if loaded.model.device().is_cuda() {
        64
    } else {
        16
    };
    let cfg = EntropyConfig {
        batch_size: a.batch_size.unwrap_or(default_batch),
        ..cfg
    };
    let opts = crate::audit::AuditOptions {
        out: a.out.clone(),
        bits: a.bits,
        per_token: a.per_token,
        compare_full: a.compare_full.then_some(a.max_tokens),
        top_n_fraction: a.top_n_fraction,
    };
    crate::audit::run(&loaded, &samples, &cfg, &opts)
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let mut conversations: Vec<Vec<Message>> = a
        .prompt
        .iter()
        .map(|p| vec![Message::new("user", p)])
        .collect();
    if let Some(path) = &a.prompts_file {
        conversations.extend(
            load_jsonl(path, &ReadOptions::default())?
                .samples
                .into_iter()
                .map(|s| s.messages),
        );
    }
    if conversations.is_empty() {
        bail!("nothing to generate: give --prompt or --prompts-file");
    }
    if let Some(system) = &a.system {
        for c in conversations.iter_mut() {
            c.insert(0, Message::new("system", system));
        }
    }
    let loaded = a.model.load()?;
    let tok = &loaded.tokenizer;
    let template_args = a.model.template_args()?;
    let prompts = conversations
        .iter()
        .enumerate()
        .map(|(i, msgs)| {
            let ids = if a.raw {
                let text: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
                tok.encode(&text.join("\n"), true)?
            } else {
                tok.encode_chat(msgs, &template_args)?
            };
            Ok(Prompt {
                ids,
                seed: a.seed.wrapping_add(i as u64),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling::new(a.greedy, a.temperature, a.top_p, a.top_k),
        eos_token_ids: loaded.eos_token_ids.clone(),
        pad_id: tok.pad_id(),
        keep_log_probs: false,
        samples_per_prompt: 1,
    };
    let mut stdout = std::io::stdout().lock();
    for (chunk_i, chunk) in prompts.chunks(a.batch_size.max(1)).enumerate() {
        let gens = generate(&loaded.model, chunk, &opts)?;
        for (j, g) in gens.iter().enumerate() {
            let i = chunk_i * a.batch_size.max(1) + j;
            let text = tok.decode(&g.tokens, true)?;
            if a.jsonl {
                let mean_entropy =
                    g.entropies.iter().sum::<f32>() / g.entropies.len().max(1) as f32;
                let line = serde_json::json!({
                    "index": i,
                    "completion": text,
                    "tokens": g.tokens.len(),
                    "finished": g.finished,
                    "mean_entropy": mean_entropy,
                    "entropies": g.entropies,
                });
                writeln!(stdout, "{line}")?;
            } else {
                if i > 0 {
                    writeln!(stdout)?;
                }
                writeln!(stdout, "{}", text.trim_end())?;
            }
        }
    }
    Ok(())
}

fn run_perplexity(a: PerplexityArgs) -> Result<()> {
    let data = a.data.load()?;
    let loaded = a.model.load()?;
    let scores = crate::perplexity::score(
        &loaded.model,
        &loaded.tokenizer,
        &data.samples,
        &a.model.template_args()?,
        a.max_length,
        a.batch_size,
    )?;
    let mut text = String::new();
    for s in &scores {
        text.push_str(&serde_json::to_string(s)?);
        text.push('\n');
    }
    match &a.out {
        Some(path) => crate::atomic_file::write_atomic(path, text.as_bytes())?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}

fn run_init_model(a: InitModelArgs) -> Result<()> {
    let arch = match a.arch.as_str() {
        "qwen3" => Arch::Qwen3,
        "llama" => Arch::Llama,
        other => bail!("--arch `{other}`: expected qwen3 or llama"),
    };
    let spec = crate::init_model::InitSpec {
        arch,
        hidden_size: a.hidden_size,
        intermediate_size: a.intermediate_size,
        num_hidden_layers: a.layers,
        num_attention_heads: a.heads,
        num_key_value_heads: a.kv_heads,
        head_dim: a.head_dim,
        tie_word_embeddings: !a.untied,
        vocab_size: a.vocab_size,
        seed: a.seed,
    };
    let cfg = crate::init_model::init_model(&spec, a.tokenizer.as_deref(), &a.out)?;
    eprintln!(
        "wrote a random {} model ({} layers, hidden {}, vocab {}) to {}",
        arch.model_type(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size,
        a.out.display()
    );
    Ok(())
}
