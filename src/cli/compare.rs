//! `edco compare`: a budget-matched study of curriculum strategies over seeds, from one
//! training config (see `crate::compare`).

use crate::compare::{Arm, Study};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareArgs {
    /// The training config every arm starts from.
    #[arg(long)]
    pub config: PathBuf,
    /// The arms: strategies (edco, random, length, perplexity, entropy), or
    /// NAME:KEY=VALUE[,KEY=VALUE...] for one with its own settings, e.g.
    /// edco-drop:curriculum.drop_top_fraction=0.1. Comma-separated strategies, or repeat.
    #[arg(long = "arm", value_name = "ARM", default_value = "edco,random")]
    pub arms: Vec<String>,
    /// The seeds (run.seed) every arm runs with: a count N (seeds 1..=N) or a list (1,7,9).
    #[arg(long, default_value = "3")]
    pub seeds: String,
    /// Override a config value for every arm, e.g. --set curriculum.rounds=4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// The study's directory: runs/ARM/seed-S, report.md, report.json and pictures. Running the
    /// same study into it again finishes what is missing.
    #[arg(long)]
    pub out: PathBuf,
    /// Run nothing: write the report of the runs finished so far, of a study running or
    /// stopped (given with its own --config, --arm, --seeds and --set).
    #[arg(long)]
    pub report_only: bool,
}

pub fn run(a: CompareArgs) -> Result<()> {
    let mut arms = Vec::new();
    for spec in &a.arms {
        // A strategy list is comma-separated; an arm with settings is one spec.
        if spec.contains(':') {
            arms.push(Arm::parse(spec)?);
        } else {
            for s in spec.split(',').filter(|s| !s.is_empty()) {
                arms.push(Arm::parse(s)?);
            }
        }
    }
    // The path as given: a study is its config's text, wherever the config lies, so that a
    // study directory holds no path of the machine it ran on unless one was typed.
    std::fs::metadata(&a.config)
        .with_context(|| format!("reading config {}", a.config.display()))?;
    let study = Study {
        config: a.config,
        sets: a.overrides,
        arms,
        seeds: seeds(&a.seeds)?,
    };
    let report = if a.report_only {
        crate::compare::report_so_far(&study, &a.out)?
    } else {
        crate::compare::run(&study, &a.out)?
    };
    print!("{}", report.markdown());
    println!(
        "report: {} ({}), pictures: {}, {}",
        a.out.join("report.md").display(),
        a.out.join("report.json").display(),
        a.out.join("accuracy.svg").display(),
        a.out.join("accuracy_vs_time.svg").display()
    );
    Ok(())
}

/// `N` (seeds 1..=N) or a comma-separated list.
fn seeds(spec: &str) -> Result<Vec<u64>> {
    let parsed: Result<Vec<u64>, _> = spec.split(',').map(|s| s.trim().parse()).collect();
    match parsed {
        Ok(v) if v.len() == 1 && v[0] > crate::compare::MAX_SEEDS as u64 => bail!(
            "--seeds {spec}: a study runs at most {} seeds (every seed is a run per arm)",
            crate::compare::MAX_SEEDS
        ),
        Ok(v) if v.len() == 1 && v[0] > 0 => Ok((1..=v[0]).collect()),
        Ok(v) if v.len() > 1 => Ok(v),
        _ => bail!("--seeds `{spec}`: expected a count (3) or a list of seeds (1,7,9)"),
    }
}
