//! `edco train`: a config file (or the run directory's own copy, to resume) with `--set`
//! overrides, handed to the trainer.

use crate::config::Config;
use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;

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

pub fn run(a: TrainArgs) -> Result<()> {
    let path = match (&a.resume, &a.config) {
        (_, Some(p)) => p.clone(),
        (Some(run), None) => run.join("config.toml"),
        (None, None) => bail!("give --config FILE or --resume RUN_DIR"),
    };
    let cfg = Config::load(&path, &a.overrides)?;
    crate::logging::apply_config_level(&cfg.run.log_level)?;
    crate::trainer::run(&cfg, a.resume.as_deref(), a.dry_run)?;
    Ok(())
}
