//! The command line: one file per command, each with its arguments and a thin `run` that turns
//! them into calls on the library. Flags that name a config setting are checked by the same
//! code as the config (`config::resolve`), so both refuse a bad value with the same message.
//! Options several commands share (the model, a dataset) live in `args`.

mod args;
mod check_device;
mod compare;
mod estimate_entropy;
mod generate;
mod init_model;
mod perplexity;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Train(train::TrainArgs),
    /// Compare curriculum strategies at the same budget over seeds: a study of normal runs,
    /// with a report of held-out accuracy, its spread, the difference to random, and time.
    Compare(compare::CompareArgs),
    /// Generate completions for one or more prompts.
    Generate(generate::GenerateArgs),
    /// Per-sample mean negative log-likelihood of each reference response (JSON lines).
    Perplexity(perplexity::PerplexityArgs),
    /// Score a dataset by the model's inference entropy (EDCO's estimator), with summary and plots.
    EstimateEntropy(estimate_entropy::EstimateEntropyArgs),
    /// Write a small randomly initialised model in Hugging Face layout.
    InitModel(init_model::InitModelArgs),
    /// Check a device against the CPU (logits in f32 and bf16) and measure its speed.
    CheckDevice(check_device::CheckDeviceArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::EstimateEntropy(a) => estimate_entropy::run(a),
        Command::InitModel(a) => init_model::run(a),
        Command::CheckDevice(a) => check_device::run(a),
    }
}
