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
use crate::outputs::{Input, refuse_inputs};
use crate::report;
use crate::resume::{self, Fingerprint};
use crate::run_dir::RunDir;
use anyhow::{Context, Result, bail};
use optim::AdamW;
use rayon::prelude::*;
use round::Rounds;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Runs (or resumes) training as configured; returns the run directory.
pub fn run(cfg: &Config, resume: Option<&Path>, dry_run: bool) -> Result<PathBuf> {
    let mut settings = cfg.resolve()?;
    let mut method = method_of(cfg)?;
    let (pool, eval) = read_data(cfg, &settings, method.as_ref())?;
    let plan = Plan::new(cfg, method.as_ref(), pool.len());
    // Everything that can be checked without the model's weights, before any is read (and all
    // of it in a dry run too): the run directory may be used, it is none of the inputs, a
    // resume keeps what the run's state means, the model can be found.
    let run_dir = RunDir::claim(&cfg.run.output_dir, resume)?;
    if run_dir.resumed.is_none() && resume.is_none() {
        refuse_inputs("run.output_dir", &run_dir.path, &inputs(cfg, &settings))?;
    }
    let changes = check_resume(cfg, &run_dir, pool.len())?;
    let recorded = match &run_dir.resumed {
        Some(_) => Fingerprint::load(&run_dir.path)?,
        None => None,
    };
    pin_recorded_commit(&mut settings, recorded.as_ref());
    let base = base_model(cfg, &settings, &run_dir)?;
    if dry_run {
        println!("{}", toml::to_string(cfg)?);
        println!("# {}", plan.describe(cfg));
        println!(
            "# model: {}",
            base.as_deref().unwrap_or("(not needed: the checkpoint's)")
        );
        println!("# eval: {} held-out samples", eval.len());
        match run_dir.checkpoint() {
            Some(ckpt) => println!("# resumes from {}", ckpt.display()),
            None => println!("# writes the run to {}", run_dir.path.display()),
        }
        return Ok(run_dir.path.clone());
    }
    // The model's and the data's fingerprint (which may download a hub model, as loading it
    // would): a resume refuses other ones.
    let m = &settings.model;
    let model = base
        .is_some()
        .then_some((m.source.as_str(), m.revision.as_deref()));
    let fingerprint = Fingerprint::of(cfg, model, (pool.len(), eval.len()))?;
    if let Some(then) = &recorded {
        then.check_unchanged(&fingerprint, cfg, &run_dir.path)?;
    }
    // The rest of the run (the load, GRPO's reference, the adapters' config) reads the commit
    // that was fingerprinted, even if the branch moves meanwhile.
    if let Some(commit) = &fingerprint.model_commit {
        settings.model.revision = Some(commit.clone());
    }
    // The model (and its device) first: a model or device that cannot be opened leaves the
    // output directory untouched.
    let loaded = load_model(cfg, &settings, run_dir.checkpoint())?;
    let _lock = run_dir.open()?;
    start_or_resume(&run_dir, cfg, &fingerprint, recorded.is_some(), &changes)?;
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

/// A resume of a hub model that names no revision goes on with the commit the run started
/// with (its fingerprint records it), not with whatever the branch points to now. Only for
/// the hub id the commit is of: a resume that names another source (a local copy, another
/// repository) reads that one, and the fingerprint then tells whether it holds the same files.
fn pin_recorded_commit(settings: &mut Settings, recorded: Option<&Fingerprint>) {
    let m = &mut settings.model;
    if let Some(f) = recorded
        && let Some(commit) = &f.model_commit
        // A fingerprint from before the source was recorded: the commit is the source's.
        && f.model_source.as_deref().is_none_or(|s| s == m.source)
        && m.revision.is_none()
        && !Path::new(&m.source).exists()
    {
        eprintln!(
            "resuming on commit {commit} of `{}`, the one the run started with ({})",
            m.source,
            resume::FINGERPRINT
        );
        m.revision = Some(commit.clone());
    }
}

/// The base model, described, when the run reads it: always, except a resumed full fine-tune
/// (its weights are the checkpoint's) without a GRPO reference, which only warns if it is gone.
fn base_model(cfg: &Config, settings: &Settings, run_dir: &RunDir) -> Result<Option<String>> {
    let needed = run_dir.resumed.is_none()
        || cfg.model.finetune == Finetune::Lora
        || (cfg.method == MethodName::Grpo && cfg.grpo.beta > 0.0);
    let m = &settings.model;
    let revision = m.revision.as_deref();
    match crate::model::io::hub::check(&m.source, revision).context("`model.source`") {
        Ok(described) if needed || hub_cached(&m.source, revision) => Ok(Some(described)),
        Ok(_) => Ok(None),
        Err(e) if needed => Err(e),
        Err(e) => {
            eprintln!(
                "warning: {e:#}; the resume reads the checkpoint's weights, so it goes on \
                 without checking the base model"
            );
            Ok(None)
        }
    }
}

/// Whether `source` is on this machine (a path, or a hub id in the local cache): a resume
/// that does not read the base model never downloads it just to fingerprint it.
fn hub_cached(source: &str, revision: Option<&str>) -> bool {
    Path::new(source).exists() || crate::model::io::hub::in_local_cache(source, revision)
}

/// Writes what a run keeps of its start, once its lock is held: the config (first, so that the
/// directory is a run's from here on), the fingerprint of a new run (or of an older run that
/// had none), and the overrides a resume applied.
fn start_or_resume(
    run_dir: &RunDir,
    cfg: &Config,
    fingerprint: &Fingerprint,
    had_fingerprint: bool,
    changes: &[resume::Change],
) -> Result<()> {
    let run = run_dir.path.display();
    if let Some(ckpt) = run_dir.checkpoint() {
        for c in changes {
            eprintln!("resuming with {} = {} (was {})", c.key, c.now, c.was);
        }
        resume::record(&run_dir.path, Some(ckpt), changes)?;
    }
    run_dir.write_config(cfg)?;
    match (run_dir.checkpoint(), had_fingerprint) {
        (None, _) => {
            crate::interrupt::keep(format!(
                "the run in {run} has no checkpoint yet; `edco train --resume {run}` starts it \
                 again"
            ));
            fingerprint.save(&run_dir.path)
        }
        (Some(_), true) => Ok(()),
        (Some(_), false) => {
            eprintln!(
                "warning: {run} has no {} (started by an earlier edco): the model and data are \
                 not checked against the ones the run began with; they are recorded now for \
                 the resumes to come",
                resume::FINGERPRINT
            );
            fingerprint.save(&run_dir.path)
        }
    }
}

/// A resume goes on only with overrides that keep its state meaningful, and a pool of the size
/// its curriculum has; returns the overrides. Checked before anything is written (the model's
/// and data's fingerprints are checked once a dry run has returned).
fn check_resume(cfg: &Config, run_dir: &RunDir, pool: usize) -> Result<Vec<resume::Change>> {
    let Some((_, state)) = &run_dir.resumed else {
        return Ok(Vec::new());
    };
    let dir = &run_dir.path;
    let stored = Config::load(&dir.join("config.toml"), &[])?;
    let changes = resume::changes(&stored, cfg)?;
    // Even without a fingerprint, the pool's size tells a changed pool from the run's.
    if state.curriculum.scores.len() != pool {
        bail!(
            "cannot resume {}: data.train {} has {pool} samples, the run's curriculum {}; \
             restore the pool the run began with, or start a new run",
            dir.display(),
            cfg.data.train.display(),
            state.curriculum.scores.len()
        );
    }
    Ok(changes)
}

/// What the run reads, for the check that it writes none of it.
fn inputs<'a>(cfg: &'a Config, settings: &'a Settings) -> Vec<Input<'a>> {
    let mut inputs = vec![
        Input {
            name: "model.source",
            path: Path::new(&settings.model.source),
        },
        Input {
            name: "data.train",
            path: &cfg.data.train,
        },
    ];
    if !cfg.data.eval.as_os_str().is_empty() {
        inputs.push(Input {
            name: "data.eval",
            path: &cfg.data.eval,
        });
    }
    inputs
}

/// The base model's result on every sample of the pool, evaluated as the held-out set is (the
/// `[eval]` settings, over the whole pool): what a study compares its selections with.
pub fn evaluate_pool(cfg: &Config) -> Result<Vec<eval::ItemResult>> {
    let settings = cfg.resolve()?;
    let method = method_of(cfg)?;
    let (pool, _) = read_data(cfg, &settings, method.as_ref())?;
    let m = &settings.model;
    let loaded = load(&m.source, &m.load_options(Trainable::Frozen, cfg.run.seed)?)?;
    let evaluator = eval::Evaluator {
        model: &loaded.model,
        tok: &loaded.tokenizer,
        eos_token_ids: &loaded.eos_token_ids,
        template_args: &settings.template_args,
        lengths: cfg
            .data
            .lengths()
            .within(loaded.model.config.max_position_embeddings),
        answer_check: cfg.data.answer_check,
    };
    let whole = crate::config::EvalSection {
        max_samples: 0,
        loss: false,
        ..cfg.eval.clone()
    };
    Ok(evaluator.run(&pool, &whole)?.items)
}

/// What a run of `cfg` would do (its pool read and checked), without loading the model.
pub fn plan(cfg: &Config) -> Result<Plan> {
    let settings = cfg.resolve()?;
    let method = method_of(cfg)?;
    let (pool, _) = read_data(cfg, &settings, method.as_ref())?;
    Ok(Plan::new(cfg, method.as_ref(), pool.len()))
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
            let opts = LoadOptions {
                revision: None,
                ..opts
            };
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
