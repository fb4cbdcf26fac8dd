//! Writes checkpoints the way edco saves them, each with the logits edco computes for it, so that
//! `scripts/parity.py check-checkpoint` can load them in transformers / peft and compare:
//! - `full/`: tiny-llama3 fully "fine-tuned" (every weight perturbed), saved as a HF directory;
//! - `lora/`: tiny-qwen3 base + a PEFT adapter with non-zero B;
//! - `merged/`: that adapter merged into the base, saved as a HF directory;
//! - `trained-full/`, `trained-lora/`: the last checkpoint of a short `edco train` run (SFT on
//!   the shipped demo data, full fine-tuning and LoRA), exactly as the trainer wrote it, with
//!   the logits edco computes after loading it back.
//!
//! Usage: `cargo run --release --example export_checkpoints -- OUT_DIR` (see scripts/check_checkpoints.sh).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use edco::init_model::byte_tokenizer;
use edco::model::config::ModelConfig;
use edco::model::io::safetensors::{WeightSource, save_safetensors};
use edco::model::io::{LoadOptions, load as load_model, save_hf_dir};
use edco::model::layers::Mode;
use edco::model::lora::{self, LoraConfig};
use edco::model::{Batch, Decoder, Trainable};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str, trainable: Trainable) -> Result<Decoder> {
    let dir = fixture(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    Decoder::new(
        cfg,
        &WeightSource::from_hf_dir(&dir)?,
        DType::F32,
        &Device::Cpu,
        trainable,
        7,
    )
}

fn batch() -> Result<Batch> {
    let rows = vec![
        vec![1u32, 50, 60, 70, 80, 90, 100, 110],
        vec![1, 200, 210, 220],
        vec![1, 5, 6],
    ];
    Ok(Batch::left_padded(&rows, 0, &Device::Cpu)?)
}

/// `expected.safetensors` in the layout check-checkpoint reads (i64 ids as transformers uses).
fn write_expected(model: &Decoder, dir: &Path) -> Result<()> {
    let b = batch()?;
    let logits = model.forward(&b, Mode::Eval)?;
    let mask: Vec<u32> = b.mask.iter().flatten().map(|&m| m as u32).collect();
    let mask = Tensor::from_vec(mask, b.ids.dims(), &Device::Cpu)?;
    let tensors = vec![
        ("input_ids".to_string(), b.ids.to_dtype(DType::I64)?),
        ("attention_mask".to_string(), mask.to_dtype(DType::I64)?),
        (
            "position_ids".to_string(),
            b.positions.to_dtype(DType::I64)?,
        ),
        ("logits".to_string(), logits),
    ];
    save_safetensors(&tensors, &dir.join("expected.safetensors"))
}

fn perturb(model: &Decoder, scale: f64) -> Result<()> {
    for (_, var) in model.vars() {
        let noise = Tensor::randn(0f32, 1.0, var.shape(), &Device::Cpu)?;
        var.set(&(var.as_tensor() + (noise * scale)?)?)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: export_checkpoints OUT_DIR")?,
    );
    let tok = byte_tokenizer()?;

    let full = load("tiny-llama3", Trainable::Full)?;
    perturb(&full, 0.02)?;
    std::fs::create_dir_all(out.join("full"))?;
    save_hf_dir(&full, &tok, &[2], &out.join("full/model"))?;
    write_expected(&full, &out.join("full"))?;

    let lora_cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let mut adapted = load("tiny-qwen3", Trainable::Lora(lora_cfg))?;
    for (name, var) in adapted.vars() {
        if name.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu)?)?;
        }
    }
    let lora_dir = out.join("lora");
    std::fs::create_dir_all(lora_dir.join("base"))?;
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture("tiny-qwen3").join(f), lora_dir.join("base").join(f))?;
    }
    lora::save_adapter(&adapted, &lora_dir.join("adapter"), ("tiny-qwen3", None))?;
    write_expected(&adapted, &lora_dir)?;

    lora::merge(&mut adapted)?;
    std::fs::create_dir_all(out.join("merged"))?;
    save_hf_dir(&adapted, &tok, &[2], &out.join("merged/model"))?;
    write_expected(&adapted, &out.join("merged"))?;
    for finetune in ["full", "lora"] {
        trained(&out, finetune)?;
    }
    println!(
        "wrote full/, lora/, merged/, trained-full/ and trained-lora/ under {}",
        out.display()
    );
    Ok(())
}

/// Trains tiny-qwen3 for one short round with `finetune` and lays out its last checkpoint for
/// check-checkpoint, with the logits of that checkpoint as edco loads it.
fn trained(out: &Path, finetune: &str) -> Result<()> {
    let work = out.join(format!(".work-{finetune}"));
    let base = work.join("base");
    std::fs::create_dir_all(&base)?;
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture("tiny-qwen3").join(f), base.join(f))?;
    }
    byte_tokenizer()?.save_dir(&base)?;
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/demo_train.jsonl");
    let text = format!(
        r#"
[model]
source = "{base}"
finetune = "{finetune}"
lora = {{ r = 4, alpha = 8.0, dropout = 0.0 }}
[data]
train = "{data}"
max_length = 256
[entropy]
prefix_tokens = 4
[curriculum]
rounds = 1
select_n = 8
[sft]
learning_rate = 1e-2
min_learning_rate = 1e-2
batch_size = 4
[eval]
generate = false
[run]
output_dir = "{run}"
seed = 5
"#,
        base = base.display(),
        data = data.display(),
        run = work.join("run").display(),
    );
    let cfg = edco::config::Config::from_toml(&text, &[])?;
    let run = edco::trainer::run(&cfg, None, false)?;
    let (ckpt, _) = edco::checkpoint::latest(&run)?;
    let dir = out.join(format!("trained-{finetune}"));
    std::fs::create_dir_all(&dir)?;
    let opts = LoadOptions::default();
    let model = if finetune == "lora" {
        std::fs::rename(&base, dir.join("base"))?;
        std::fs::rename(ckpt.join("adapter"), dir.join("adapter"))?;
        let mut loaded = load_model(dir.join("base").to_str().context("utf-8 path")?, &opts)?;
        lora::load_adapter(&mut loaded.model, &dir.join("adapter"))?;
        loaded.model
    } else {
        std::fs::rename(ckpt.join("model"), dir.join("model"))?;
        load_model(dir.join("model").to_str().context("utf-8 path")?, &opts)?.model
    };
    // The check only means something if training moved the weights.
    let moved = (model.forward(&batch()?, Mode::Eval)?
        - load("tiny-qwen3", Trainable::Frozen)?.forward(&batch()?, Mode::Eval)?)?
    .abs()?
    .max_all()?
    .to_scalar::<f32>()?;
    anyhow::ensure!(
        moved > 1e-3,
        "{finetune}: training left the logits where they were"
    );
    write_expected(&model, &dir)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
