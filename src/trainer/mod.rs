//! `edco train`: the EDCO loop in one process, as a story. Set up: the config resolved, the data
//! read and checked, the plan, the run directory claimed, the model loaded, the trainer (SFT or
//! GRPO, behind [`Method`]) prepared. Then every round: score the pool with the current model
//! and select from it, train on the selection, evaluate, log and checkpoint (`round`). The
//! pictures and the summary come at the end (`crate::report`). Every random choice derives from
//! (seed, round, step), which is what makes `--resume` exact.

pub mod eval;
pub mod grpo;
mod method;
pub mod optim;
mod round;
pub mod sft;

pub use method::{Method, StepInput, StepReport};

use crate::checkpoint;
use crate::config::{Config, Finetune, Method as MethodName, Settings};
use crate::data::tokenize::Tokenized;
use crate::data::{Sample, load_jsonl};
use crate::model::Trainable;
use crate::model::io::{LoadOptions, Loaded, load};
use crate::model::lora::load_adapter;
use crate::report;
use crate::run_dir::RunDir;
use anyhow::{Context, Result, bail};
use optim::AdamW;
use rayon::prelude::*;
use round::Rounds;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Runs (or resumes) training as configured; returns the run directory.
pub fn run(cfg: &Config, resume: Option<&Path>, dry_run: bool) -> Result<PathBuf> {
    let settings = cfg.resolve()?;
    let mut method = method_of(cfg)?;
    let (pool, eval) = read_data(cfg, &settings, method.as_ref())?;
    let plan = Plan::new(cfg, method.as_ref(), pool.len());
    if dry_run {
        println!("{}", toml::to_string(cfg)?);
        println!("# {}", plan.describe(cfg));
        println!("# eval: {} held-out samples", eval.len());
        return Ok(cfg.run.output_dir.clone());
    }
    let run_dir = RunDir::claim(&cfg.run.output_dir, resume)?;
    // The model (and its device) first: a model or device that cannot be opened leaves the
    // output directory untouched.
    let loaded = load_model(cfg, &settings, run_dir.checkpoint())?;
    let _lock = run_dir.open(cfg)?;
    eprintln!("{}", plan.describe(cfg));
    method.prepare(&settings, &loaded)?;
    let pairs = tokenize_pool(cfg, &settings, method.as_ref(), &loaded, &pool)?;
    let mut opt = AdamW::new(loaded.model.vars().to_vec(), (&settings.optimizer).into())?;

    let rounds = Rounds {
        cfg,
        settings: &settings,
        method: method.as_ref(),
        loaded: &loaded,
        pool: &pool,
        eval: &eval,
        pairs: &pairs,
        run_dir: &run_dir,
        plan: &plan,
    };
    let (mut state, mut metrics) = rounds.start(&mut opt)?;
    for round in state.next_round()..=cfg.curriculum.rounds {
        // 1. Score and select (skipped when resuming inside a round).
        let score_seconds = match state.step_in_round {
            None => rounds.select(&mut state, round, &mut opt)?,
            Some(_) => 0.0,
        };
        // 2. Train on the selection.
        let train_seconds = rounds.train(&mut state, &mut metrics, &mut opt, round)?;
        // 3. Evaluate, log the round, checkpoint.
        rounds.close(
            &mut state,
            &mut metrics,
            &opt,
            round,
            (score_seconds, train_seconds),
        )?;
    }
    report::draw_plots(&run_dir.path)?;
    report::summarize(&run_dir.path, &state)?;
    Ok(run_dir.path.clone())
}

/// The trainer of `cfg.method`: the one place the loop reads which it is.
fn method_of(cfg: &Config) -> Result<Box<dyn Method>> {
    Ok(match cfg.method {
        MethodName::Sft => Box::new(sft::Sft::new(&cfg.sft)),
        MethodName::Grpo => Box::new(grpo::Grpo::new(&cfg.grpo, cfg.data.answer_check)?),
    })
}

/// What a run will do, from the config and the pool size alone.
pub struct Plan {
    pub pool: usize,
    pub per_round: usize,
    pub steps_per_round: usize,
    /// The method's name and what one of its steps holds.
    method: (&'static str, String),
}

impl Plan {
    pub fn new(cfg: &Config, method: &dyn Method, pool: usize) -> Self {
        let per_round = cfg.per_round(pool);
        Self {
            pool,
            per_round,
            steps_per_round: method.steps_per_round(per_round),
            method: (method.section(), method.describe_step()),
        }
    }

    /// Optimizer steps over the whole run.
    pub fn total_steps(&self, rounds: usize) -> usize {
        self.steps_per_round * rounds
    }

    pub fn describe(&self, cfg: &Config) -> String {
        let c = &cfg.curriculum;
        format!(
            "plan: {} rounds of {} samples from a pool of {} ({} curriculum, {}), {} optimizer steps per round ({} in all), {}",
            c.rounds,
            self.per_round,
            self.pool,
            config_name(&c.strategy),
            self.method.0,
            self.steps_per_round,
            self.total_steps(c.rounds),
            self.method.1,
        )
    }
}

/// A config enum's value as it is written in the config (`edco`, `random`).
fn config_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

/// The pool and the held-out samples, checked for what the run needs of them.
fn read_data(
    cfg: &Config,
    settings: &Settings,
    method: &dyn Method,
) -> Result<(Vec<Sample>, Vec<Sample>)> {
    let pool = load_jsonl(&cfg.data.train, &settings.read)?.samples;
    if pool.is_empty() {
        bail!("{}: the training pool is empty", cfg.data.train.display());
    }
    method.check_pool(&pool, &cfg.data.train)?;
    let eval = if cfg.data.eval.as_os_str().is_empty() {
        Vec::new()
    } else {
        load_jsonl(&cfg.data.eval, &settings.read)?.samples
    };
    if cfg.curriculum.select_n > pool.len() {
        bail!(
            "`curriculum.select_n` = {} exceeds the {} samples of {}",
            cfg.curriculum.select_n,
            pool.len(),
            cfg.data.train.display()
        );
    }
    Ok((pool, eval))
}

/// The model to train: fresh from `model.source`, or from the checkpoint being resumed (its
/// adapter over the base, or its full weights).
fn load_model(cfg: &Config, settings: &Settings, resume_from: Option<&Path>) -> Result<Loaded> {
    let m = &settings.model;
    let opts = m.load_options(settings.trainable.clone(), cfg.run.seed)?;
    match (resume_from, cfg.model.finetune) {
        (None, _) => load(&m.source, &opts),
        (Some(ckpt), Finetune::Lora) => {
            let mut loaded = load(
                &m.source,
                &LoadOptions {
                    trainable: Trainable::Frozen,
                    ..opts
                },
            )?;
            load_adapter(&mut loaded.model, &ckpt.join(checkpoint::ADAPTER))?;
            Ok(loaded)
        }
        (Some(ckpt), Finetune::Full) => {
            let dir = ckpt.join(checkpoint::MODEL);
            load(dir.to_str().context("checkpoint path is not UTF-8")?, &opts)
        }
    }
}

/// The pool tokenized as the method trains on it. Over-long prompts are cut from the left and
/// over-long responses at the end, and the run says how many.
fn tokenize_pool(
    cfg: &Config,
    settings: &Settings,
    method: &dyn Method,
    loaded: &Loaded,
    pool: &[Sample],
) -> Result<Vec<Tokenized>> {
    let lengths = cfg
        .data
        .lengths()
        .within(loaded.model.config.max_position_embeddings);
    let pairs: Vec<Tokenized> = pool
        .par_iter()
        .map(|s| method.tokenize(&loaded.tokenizer, s, &settings.template_args, lengths))
        .collect::<Result<_>>()?;
    let response_cut = pairs.iter().filter(|p| p.response_cut > 0).count();
    if response_cut > 0 {
        eprintln!(
            "warning: {response_cut} of {} reference responses were cut at the end to {} tokens (data.max_response_length, data.max_length)",
            pairs.len(),
            lengths.max_response.min(lengths.max_length - 1)
        );
    }
    let cut = pairs.iter().filter(|p| p.cut > 0).count();
    if cut > 0 {
        eprintln!(
            "warning: {cut} of {} prompts were cut from the left to fit {} tokens (data.max_prompt_length, data.max_length)",
            pairs.len(),
            lengths.prompt_limit()
        );
    }
    Ok(pairs)
}
