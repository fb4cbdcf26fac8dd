//! `edco check-device`: one JSON line per comparison of a device with the CPU (and per speed
//! measurement), failing when a comparison is out of tolerance (`crate::device_check`).

use crate::config::{Names, positive};
use crate::device_check::{
    Agreement, CheckSpec, agreement, flash_attention_agreement, flash_model_agreement, speed,
};
use crate::model::device::{DeviceSpec, Precision};
use anyhow::{Result, bail};
use clap::Args;
use std::io::Write;

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

pub fn run(a: CheckDeviceArgs) -> Result<()> {
    let flags = Names::Flags(&[]);
    for (flag, v) in [
        ("batch", a.batch),
        ("seq_len", a.seq_len),
        ("speed_batch", a.speed_batch),
        ("speed_seq_len", a.speed_seq_len),
    ] {
        positive(flag, v, flags)?;
    }
    let speed_precision = match &a.speed {
        Some(name) => Some(
            name.parse::<Precision>()
                .map_err(|e| anyhow::anyhow!("`--speed`: {e}"))?,
        ),
        None => None,
    };
    let device: DeviceSpec = a
        .device
        .parse()
        .map_err(|e| anyhow::anyhow!("`--device`: {e}"))?;
    let mut spec = CheckSpec {
        model: a.model,
        device: device.open()?,
        batch: a.batch,
        seq_len: a.seq_len,
        seed: a.seed,
        reps: a.reps,
    };
    let mut out = std::io::stdout().lock();
    let mut checks = Vec::new();
    // Each kind printed as soon as it is measured, so a later one that errors leaves the earlier
    // results on record.
    type Check = fn(&CheckSpec) -> Result<Vec<Agreement>>;
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
    if let Some(precision) = speed_precision {
        spec.batch = a.speed_batch;
        spec.seq_len = a.speed_seq_len;
        let s = speed(&spec, precision.dtype(), a.matmul_size)?;
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
