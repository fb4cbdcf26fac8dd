//! `edco train`: the EDCO loop in one process. Setup (config, data, model, run
//! directory), then per round: score the pool with the current model, select, train on the
//! selection with SFT, evaluate, checkpoint; metrics go to `metrics.jsonl` with the time spent
//! scoring kept apart from the time spent training, and the pictures are drawn at the end.
//! Every random choice derives from (seed, round, step), which is what makes `--resume` exact.

use crate::atomic_file::write_atomic;
use crate::checkpoint::{self, TrainState};
use crate::config::{Config, Finetune, Method, Settings, Strategy};
use crate::curriculum::Curriculum;
use crate::data::tokenize::{Tokenized, tokenize_pair, tokenize_prompt};
use crate::data::{Sample, load_jsonl};
use crate::entropy::{EntropyConfig, estimate};
use crate::eval::{EvalReport, Evaluator};
use crate::model::Trainable;
use crate::model::generate::Prompt;
use crate::model::io::{LoadOptions, Loaded, load};
use crate::model::lora::load_adapter;
use crate::progress::progress_bar;
use crate::reward::check;
use crate::seed;
use crate::trainer::grpo::{self, GrpoParams};
use crate::trainer::optim::{AdamW, AdamWParams, learning_rate};
use crate::trainer::sft;
use crate::{plot, stats};
use anyhow::{Context, Result, bail};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a run will do, from the config and the pool size alone.
pub struct Plan {
    pub pool: usize,
    pub per_round: usize,
    pub steps_per_round: usize,
}

impl Plan {
    pub fn new(cfg: &Config, pool: usize) -> Self {
        let per_round = cfg.per_round(pool);
        let steps_per_round = match cfg.method {
            Method::Sft => (per_round * cfg.sft.epochs_per_round)
                .div_ceil(cfg.sft.batch_size * cfg.sft.grad_accum),
            Method::Grpo => cfg.grpo.steps_per_round,
        };
        Self {
            pool,
            per_round,
            steps_per_round,
        }
    }

    pub fn describe(&self, cfg: &Config) -> String {
        let c = &cfg.curriculum;
        format!(
            "plan: {} rounds of {} samples from a pool of {} ({} curriculum, {}), {} optimizer steps per round ({} in all), {}",
            c.rounds,
            self.per_round,
            self.pool,
            config_name(&c.strategy),
            config_name(&cfg.method),
            self.steps_per_round,
            self.steps_per_round * c.rounds,
            match cfg.method {
                Method::Sft => format!(
                    "{} sequences per step",
                    cfg.sft.batch_size * cfg.sft.grad_accum
                ),
                Method::Grpo => format!(
                    "{} prompts x {} completions per step",
                    cfg.grpo.prompts_per_step, cfg.grpo.num_generations
                ),
            }
        )
    }
}

/// A config enum's value as it is written in the config (`edco`, `sft`).
fn config_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::from("?"),
    }
}

fn entropy_config(cfg: &Config, settings: &Settings, round: usize) -> EntropyConfig {
    EntropyConfig {
        seed: seed::mix(&[seed::SCORE, cfg.run.seed, round as u64]),
        ..settings.entropy.clone()
    }
}

/// Appends JSON lines to `metrics.jsonl`, counting them for checkpoints.
struct Metrics {
    file: std::fs::File,
    path: PathBuf,
    lines: usize,
}

impl Metrics {
    fn open(path: &Path, keep_lines: Option<usize>) -> Result<Self> {
        let existing = match keep_lines {
            Some(n) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {} to resume", path.display()))?
                .lines()
                .take(n)
                .map(|l| format!("{l}\n"))
                .collect(),
            None => String::new(),
        };
        write_atomic(path, existing.as_bytes())?;
        let lines = existing.lines().count();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            lines,
            path: path.to_path_buf(),
        })
    }

    fn log(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.lines += 1;
        Ok(())
    }
}

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
            load_adapter(&mut loaded.model, &ckpt.join("adapter"))?;
            Ok(loaded)
        }
        (Some(ckpt), Finetune::Full) => {
            let dir = ckpt.join("model");
            load(dir.to_str().context("checkpoint path is not UTF-8")?, &opts)
        }
    }
}

fn pool_scores_json(picks_of_pool: &[Option<f64>]) -> serde_json::Value {
    let s: Vec<f64> = picks_of_pool.iter().flatten().copied().collect();
    if s.is_empty() {
        return serde_json::Value::Null;
    }
    json!({
        "count": s.len(), "mean": stats::mean(&s), "p10": stats::quantile(&s, 0.1),
        "median": stats::quantile(&s, 0.5), "p90": stats::quantile(&s, 0.9),
    })
}

fn eval_json(r: &EvalReport) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

/// Holds an exclusive lock on `run_dir/.lock` for as long as the returned file lives, so that two
/// runs never write one directory.
fn lock_run_dir(run_dir: &Path) -> Result<std::fs::File> {
    let path = run_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another edco train is writing this run directory",
            run_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::from(e).context(format!("locking {}", path.display())))
        }
    }
}

/// Runs (or resumes) training as configured; returns the run directory.
pub fn run(cfg: &Config, resume: Option<&Path>, dry_run: bool) -> Result<PathBuf> {
    let settings = cfg.resolve()?;
    let read = &settings.read;
    let pool_data = load_jsonl(&cfg.data.train, read)?;
    let pool: Vec<Sample> = pool_data.samples;
    if pool.is_empty() {
        bail!("{}: the training pool is empty", cfg.data.train.display());
    }
    match cfg.method {
        Method::Sft => {
            if let Some(s) = pool.iter().find(|s| s.response.is_none()) {
                bail!(
                    "{}: sample `{}` has no reference response to train on",
                    cfg.data.train.display(),
                    s.id
                );
            }
        }
        Method::Grpo => {
            let rule = cfg.data.answer_check;
            if let Some(s) = pool.iter().find(|s| check(rule, s, "").is_none()) {
                bail!(
                    "{}: sample `{}` has no `answer` that data.answer_check = {} can verify",
                    cfg.data.train.display(),
                    s.id,
                    serde_json::to_string(&rule)?
                );
            }
        }
    }
    let eval: Vec<Sample> = if cfg.data.eval.as_os_str().is_empty() {
        Vec::new()
    } else {
        load_jsonl(&cfg.data.eval, read)?.samples
    };
    if cfg.curriculum.select_n > pool.len() {
        bail!(
            "`curriculum.select_n` = {} exceeds the {} samples of {}",
            cfg.curriculum.select_n,
            pool.len(),
            cfg.data.train.display()
        );
    }
    let plan = Plan::new(cfg, pool.len());
    if dry_run {
        println!("{}", toml::to_string(cfg)?);
        println!("# {}", plan.describe(cfg));
        println!("# eval: {} held-out samples", eval.len());
        return Ok(cfg.run.output_dir.clone());
    }
    let run_dir = resume
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cfg.run.output_dir.clone());
    let started =
        |dir: &Path| dir.join("metrics.jsonl").exists() || dir.join("config.toml").exists();
    let resumed = match resume {
        // A run that stopped before its first checkpoint has nothing to resume: it starts again.
        Some(dir) if checkpoint::list(dir)?.is_empty() => {
            if !started(dir) {
                bail!(
                    "{}: not a run directory (no checkpoint, config.toml or metrics.jsonl)",
                    dir.display()
                );
            }
            eprintln!(
                "{}: no checkpoint yet; the run starts again from the beginning",
                dir.display()
            );
            None
        }
        Some(dir) => Some(checkpoint::latest(dir)?),
        None => {
            if checkpoint::list(&run_dir)?.last().is_some() {
                bail!(
                    "{}: already holds a run; resume it with --resume {0} or choose another run.output_dir",
                    run_dir.display()
                );
            }
            if started(&run_dir) {
                bail!(
                    "{}: holds a run that stopped before its first checkpoint; start it again with \
                     --resume {0} or choose another run.output_dir",
                    run_dir.display()
                );
            }
            None
        }
    };
    // The model (and its device) first: a model or device that cannot be opened leaves the
    // output directory untouched.
    let loaded = load_model(cfg, &settings, resumed.as_ref().map(|(d, _)| d.as_path()))?;
    for sub in ["curriculum", "scores", "plots"] {
        let d = run_dir.join(sub);
        std::fs::create_dir_all(&d).with_context(|| {
            format!(
                "creating {} (run.output_dir is {})",
                d.display(),
                run_dir.display()
            )
        })?;
    }
    let _lock = lock_run_dir(&run_dir)?;
    write_atomic(
        &run_dir.join("config.toml"),
        toml::to_string(cfg)?.as_bytes(),
    )?;
    eprintln!("{}", plan.describe(cfg));

    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let template_args = &settings.template_args;
    // SFT trains on prompt + reference; GRPO needs the prompts only. Over-long prompts are cut
    // from the left and over-long responses at the end, and the run says how many.
    let lengths = cfg
        .data
        .lengths()
        .within(model.config.max_position_embeddings);
    let pairs: Vec<Tokenized> = pool
        .par_iter()
        .map(|s| match cfg.method {
            Method::Sft => tokenize_pair(tok, s, template_args, lengths),
            Method::Grpo => {
                let (prompt, cut) =
                    tokenize_prompt(tok, &s.messages, template_args, lengths.prompt_limit())
                        .with_context(|| format!("sample `{}`", s.id))?;
                Ok(Tokenized {
                    prompt,
                    cut,
                    ..Default::default()
                })
            }
        })
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
    let s = &cfg.sft;
    let g = &cfg.grpo;
    let o = settings.optimizer;
    let adam = AdamWParams {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
    };
    let mut opt = AdamW::new(model.vars().to_vec(), adam)?;
    // GRPO's KL reference: a frozen copy for full fine-tuning; under LoRA, the base itself.
    let reference =
        if cfg.method == Method::Grpo && g.beta > 0.0 && cfg.model.finetune == Finetune::Full {
            let opts = settings.model.load_options(Trainable::Frozen, 0)?;
            Some(load(&settings.model.source, &opts)?.model)
        } else {
            None
        };
    let grpo_params = GrpoParams {
        num_generations: g.num_generations,
        max_new_tokens: g.max_completion_length,
        sampling: g.sampling()?,
        epsilon: g.epsilon,
        epsilon_high: g.epsilon_high,
        beta: g.beta,
        scale_rewards: g.scale_rewards,
        num_iterations: g.num_iterations,
        micro_batch: g.micro_batch,
        max_grad_norm: g.max_grad_norm,
        pad_id: tok.pad_id(),
    };
    let total_steps = plan.steps_per_round * cfg.curriculum.rounds;
    let evaluator = Evaluator {
        model,
        tok,
        eos_token_ids: &loaded.eos_token_ids,
        template_args,
        lengths: cfg.data.lengths(),
        answer_check: cfg.data.answer_check,
    };

    let (mut state, mut metrics) = match resumed {
        Some((dir, state)) => {
            opt.load(&dir.join(checkpoint::OPTIMIZER))?;
            eprintln!(
                "resuming from {} (round {}, step {})",
                dir.display(),
                state.round,
                state.global_step
            );
            let metrics = Metrics::open(&run_dir.join("metrics.jsonl"), Some(state.metrics_lines))?;
            (state, metrics)
        }
        None => {
            let mut metrics = Metrics::open(&run_dir.join("metrics.jsonl"), None)?;
            let mut curriculum = Curriculum::new(
                cfg.curriculum.clone(),
                pool.len(),
                plan.per_round,
                cfg.run.seed,
            );
            if cfg.curriculum.strategy == Strategy::Length {
                curriculum.set_lengths(&pairs.iter().map(|p| p.prompt.len()).collect::<Vec<_>>());
            }
            if !eval.is_empty() {
                let r = evaluator.run(&eval, &cfg.eval)?;
                eprintln!("eval before training: {}", serde_json::to_string(&r)?);
                metrics.log(json!({"kind": "eval", "round": 0, "eval": eval_json(&r)}))?;
            }
            let state = TrainState {
                round: 0,
                step_in_round: None,
                global_step: 0,
                curriculum,
                picks: Vec::new(),
                metrics_lines: metrics.lines,
                score_seconds: 0.0,
                train_seconds: 0.0,
            };
            (state, metrics)
        }
    };

    // Checkpoints record how many metrics lines belong to them, so a resume can drop the rest.
    let save = |state: &mut TrainState, metrics: &Metrics, opt: &AdamW| -> Result<PathBuf> {
        state.metrics_lines = metrics.lines;
        let dir = checkpoint::save(
            &run_dir,
            &loaded,
            &cfg.model.source,
            opt,
            state,
            cfg.run.keep_last,
        )?;
        tracing::info!(
            step = state.global_step,
            "checkpoint written to {}",
            dir.display()
        );
        Ok(dir)
    };
    let first_round = if state.step_in_round.is_some() {
        state.round
    } else {
        state.round + 1
    };
    for round in first_round..=cfg.curriculum.rounds {
        // 1. Score and select (skipped when resuming inside a round).
        let mut score_seconds = 0.0;
        if state.step_in_round.is_none() {
            let t = Instant::now();
            if state.curriculum.needs_model_scores(round) {
                let idx = state.curriculum.to_score(round);
                let subset: Vec<Sample> = idx.iter().map(|&i| pool[i].clone()).collect();
                let scores: Vec<f64> = if cfg.curriculum.strategy == Strategy::Perplexity {
                    crate::perplexity::score(
                        model,
                        tok,
                        &subset,
                        template_args,
                        cfg.data.lengths(),
                        cfg.eval.batch_size,
                    )?
                    .iter()
                    .map(|s| s.nll)
                    .collect()
                } else {
                    let bar = progress_bar(subset.len(), &format!("round {round} scoring"));
                    let e = estimate(
                        model,
                        tok,
                        &loaded.eos_token_ids,
                        &subset,
                        &entropy_config(cfg, &settings, round),
                        &mut |d, _| bar.set_position(d as u64),
                    )?;
                    bar.finish_and_clear();
                    e.iter().map(|e| e.score as f64).collect()
                };
                state.curriculum.record(round, &idx, &scores);
                let lines: String = idx
                    .iter()
                    .zip(&scores)
                    .map(|(&i, s)| {
                        format!("{}\n", json!({"id": pool[i].id, "index": i, "score": s}))
                    })
                    .collect();
                write_atomic(
                    &run_dir.join(format!("scores/round_{round:03}.jsonl")),
                    lines.as_bytes(),
                )?;
            }
            state.picks = state.curriculum.select(round);
            let lines: String = state
                .picks
                .iter()
                .map(|p| format!("{}\n", json!({"id": pool[p.index].id, "index": p.index, "score": p.score, "rank": p.rank, "seen": p.seen})))
                .collect();
            write_atomic(
                &run_dir.join(format!("curriculum/round_{round:03}.jsonl")),
                lines.as_bytes(),
            )?;
            score_seconds = t.elapsed().as_secs_f64();
            state.score_seconds += score_seconds;
            tracing::info!(
                round,
                selected = state.picks.len(),
                seconds = score_seconds,
                "curriculum written"
            );
            state.round = round;
            state.step_in_round = Some(0);
            if o.reset_optimizer {
                opt.reset()?;
            }
        }

        // 2. Train on the selection: seeded shuffle, then SFT micro-batches or GRPO prompt groups.
        if cfg.method == Method::Sft {
            // SFT decodes nothing until the evaluation: free the weights packed for decoding.
            model.release_packed();
        }
        let t = Instant::now();
        let mut order: Vec<usize> = Vec::new();
        let passes = if cfg.method == Method::Sft {
            cfg.sft.epochs_per_round
        } else {
            1
        };
        for epoch in 0..passes {
            let mut e: Vec<usize> = state.picks.iter().map(|p| p.index).collect();
            let mut rng = StdRng::seed_from_u64(seed::mix(&[
                seed::SHUFFLE,
                cfg.run.seed,
                round as u64,
                epoch as u64,
            ]));
            e.shuffle(&mut rng);
            order.extend(e);
        }
        let steps: Vec<Vec<usize>> = match cfg.method {
            Method::Sft => order
                .chunks(s.batch_size * s.grad_accum)
                .map(<[usize]>::to_vec)
                .collect(),
            Method::Grpo => (0..g.steps_per_round)
                .map(|k| {
                    (0..g.prompts_per_step)
                        .map(|j| order[(k * g.prompts_per_step + j) % order.len()])
                        .collect()
                })
                .collect(),
        };
        let bar = progress_bar(steps.len(), &format!("round {round} training"));
        let done = state.step_in_round.unwrap_or(0);
        bar.set_position(done as u64);
        for (k, step_idx) in steps.iter().enumerate().skip(done) {
            let lr = learning_rate(
                o.schedule,
                o.learning_rate,
                o.min_learning_rate,
                o.warmup_steps,
                state.global_step,
                total_steps,
            );
            let seed = seed::mix(&[seed::STEP, cfg.run.seed, state.global_step as u64]);
            let st = Instant::now();
            let mut line = match cfg.method {
                Method::Sft => {
                    let step_pairs: Vec<Tokenized> =
                        step_idx.iter().map(|&i| pairs[i].clone()).collect();
                    let micro: Vec<&[Tokenized]> = step_pairs.chunks(s.batch_size).collect();
                    let stats = sft::step(
                        model,
                        &mut opt,
                        &micro,
                        tok.pad_id(),
                        lr,
                        s.max_grad_norm,
                        seed,
                    )?;
                    json!({"loss": stats.loss, "grad_norm": stats.grad_norm, "tokens": stats.tokens})
                }
                Method::Grpo => {
                    let prompts: Vec<Prompt> = step_idx
                        .iter()
                        .enumerate()
                        .map(|(j, &i)| Prompt {
                            ids: pairs[i].prompt.clone(),
                            seed: seed::mix(&[seed, j as u64]),
                        })
                        .collect();
                    let rollouts = grpo::rollout(
                        model,
                        &prompts,
                        &loaded.eos_token_ids,
                        &grpo_params,
                        &mut |j, completion| {
                            let reply = tok.decode(completion, true)?;
                            let sample = &pool[step_idx[j]];
                            Ok(
                                if check(cfg.data.answer_check, sample, &reply) == Some(true) {
                                    1.0
                                } else {
                                    0.0
                                },
                            )
                        },
                    )?;
                    let stats = grpo::train_on(
                        model,
                        reference.as_ref(),
                        &mut opt,
                        &rollouts,
                        lr,
                        &grpo_params,
                        seed,
                    )?;
                    serde_json::to_value(&stats)?
                }
            };
            let secs = st.elapsed().as_secs_f64();
            state.global_step += 1;
            state.step_in_round = Some(k + 1);
            let tokens = line["tokens"].as_f64().unwrap_or(0.0);
            line["kind"] = json!("step");
            line["round"] = json!(round);
            line["step"] = json!(state.global_step);
            line["lr"] = json!(lr);
            line["seconds"] = json!(secs);
            line["tokens_per_second"] = json!(tokens / secs.max(1e-9));
            let progress = match cfg.method {
                Method::Sft => format!("loss {:.3}", line["loss"].as_f64().unwrap_or(f64::NAN)),
                Method::Grpo => format!(
                    "reward {:.2}",
                    line["reward_mean"].as_f64().unwrap_or(f64::NAN)
                ),
            };
            bar.set_message(format!(
                "{progress}, {:.0} tokens/s",
                tokens / secs.max(1e-9)
            ));
            let finite = line["loss"].as_f64().is_some_and(f64::is_finite);
            tracing::debug!("{line}");
            metrics.log(line)?;
            if !finite {
                // The update is already poisoned; stop before anything overwrites a checkpoint.
                let section = match cfg.method {
                    Method::Sft => "sft",
                    Method::Grpo => "grpo",
                };
                let advice = match checkpoint::list(&run_dir)?.pop() {
                    Some(last) => format!(
                        "The last good checkpoint is {}; resume from it with --resume {} \
                         --set {}.learning_rate=<lower>",
                        last.display(),
                        run_dir.display(),
                        section
                    ),
                    None => format!(
                        "There is no checkpoint yet; start again with --resume {} \
                         --set {}.learning_rate=<lower>",
                        run_dir.display(),
                        section
                    ),
                };
                bail!(
                    "step {} (round {round}): the loss is not finite; stopping. {advice}",
                    state.global_step
                );
            }
            bar.inc(1);
            let mid = cfg.run.checkpoint_every_steps > 0
                && state.global_step % cfg.run.checkpoint_every_steps == 0
                && k + 1 < steps.len();
            if mid {
                save(&mut state, &metrics, &opt)?;
            }
        }
        bar.finish_and_clear();
        let train_seconds = t.elapsed().as_secs_f64();
        state.train_seconds += train_seconds;

        // 3. Evaluate, log the round, checkpoint.
        let report = if eval.is_empty() {
            EvalReport::default()
        } else {
            evaluator.run(&eval, &cfg.eval)?
        };
        let new = state.picks.iter().filter(|p| !p.seen).count();
        metrics.log(json!({
            "kind": "round", "round": round, "selected": state.picks.len(), "new": new,
            "score_seconds": score_seconds, "train_seconds": train_seconds,
            "pool_scores": pool_scores_json(&state.curriculum.scores), "eval": eval_json(&report),
        }))?;
        eprintln!(
            "round {round}/{}: {} selected ({new} new), scoring {score_seconds:.1} s, training {train_seconds:.1} s, eval {}",
            cfg.curriculum.rounds,
            state.picks.len(),
            serde_json::to_string(&report)?
        );
        state.step_in_round = None;
        state.picks.clear();
        save(&mut state, &metrics, &opt)?;
    }
    draw_plots(&run_dir)?;
    summarize(&run_dir, &state)?;
    Ok(run_dir)
}

fn read_metrics(run_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = run_dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: malformed metrics line", path.display(), i + 1))
        })
        .collect()
}

/// Loss per step, eval accuracy per round, and the pool's score distribution per round.
fn draw_plots(run_dir: &Path) -> Result<()> {
    let m = read_metrics(run_dir)?;
    fn of<'a>(
        m: &'a [serde_json::Value],
        kind: &'a str,
    ) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
        m.iter().filter(move |l| l["kind"] == kind)
    }
    let series = |key: &str| -> Vec<(f64, f64)> {
        of(&m, "step")
            .filter_map(|l| Some((l["step"].as_f64()?, l[key].as_f64()?)))
            .collect()
    };
    plot::lines(
        &run_dir.join("plots/loss.svg"),
        "Training loss",
        "optimizer step",
        "loss",
        &[("loss", series("loss"))],
    )?;
    let rewards = series("reward_mean");
    if !rewards.is_empty() {
        plot::lines(
            &run_dir.join("plots/reward.svg"),
            "GRPO reward",
            "optimizer step",
            "mean reward",
            &[("reward", rewards)],
        )?;
    }
    let mut acc = Vec::new();
    let mut opt_acc = Vec::new();
    for l in of(&m, "eval").chain(of(&m, "round")) {
        let r = l["round"].as_f64().unwrap_or(0.0);
        if let Some(a) = l["eval"]["accuracy"].as_f64() {
            acc.push((r, a));
        }
        if let Some(a) = l["eval"]["option_accuracy"].as_f64() {
            opt_acc.push((r, a));
        }
    }
    plot::lines(
        &run_dir.join("plots/eval_accuracy.svg"),
        "Held-out accuracy",
        "round (0 = before training)",
        "accuracy",
        &[("greedy answer", acc), ("option likelihood", opt_acc)],
    )?;
    let mut mean = Vec::new();
    let mut p10 = Vec::new();
    let mut p90 = Vec::new();
    for l in of(&m, "round") {
        let r = l["round"].as_f64().unwrap_or(0.0);
        if let (Some(a), Some(b), Some(c)) = (
            l["pool_scores"]["mean"].as_f64(),
            l["pool_scores"]["p10"].as_f64(),
            l["pool_scores"]["p90"].as_f64(),
        ) {
            mean.push((r, a));
            p10.push((r, b));
            p90.push((r, c));
        }
    }
    plot::lines(
        &run_dir.join("plots/pool_scores.svg"),
        "Pool scores per round (curriculum signal)",
        "round",
        "score",
        &[("p90", p90), ("mean", mean), ("p10", p10)],
    )?;
    draw_pool_distributions(run_dir)
}

/// The pool's score distribution before each round, as one frequency polygon per round over
/// shared bins: each round's scores file updates the previous round's pool (a partial re-score
/// keeps the last score of the rest).
fn draw_pool_distributions(run_dir: &Path) -> Result<()> {
    let mut pool: std::collections::HashMap<String, f64> = Default::default();
    let mut rounds: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 1.. {
        let path = run_dir.join(format!("scores/round_{round:03}.jsonl"));
        if !path.exists() {
            break;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: malformed scores line", path.display(), i + 1))?;
            if let (Some(id), Some(score)) = (v["id"].as_str(), v["score"].as_f64()) {
                pool.insert(id.to_string(), score);
            }
        }
        rounds.push((
            format!("before round {round}"),
            pool.values().copied().collect(),
        ));
    }
    if rounds.is_empty() {
        return Ok(());
    }
    let all: Vec<f64> = rounds.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let (lo, hi) = (stats::quantile(&all, 0.0), stats::quantile(&all, 1.0));
    const BINS: usize = 20;
    let width = ((hi - lo) / BINS as f64).max(1e-9);
    let series: Vec<(String, Vec<(f64, f64)>)> = rounds
        .iter()
        .map(|(name, values)| {
            let mut counts = [0usize; BINS];
            for &v in values {
                counts[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
            }
            let points = counts
                .iter()
                .enumerate()
                .map(|(b, &c)| (lo + (b as f64 + 0.5) * width, c as f64))
                .collect();
            (name.clone(), points)
        })
        .collect();
    let named: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    plot::lines(
        &run_dir.join("plots/pool_distribution.svg"),
        "Pool score distribution per round",
        "score (entropy, nats, for edco)",
        "samples",
        &named,
    )
}

fn summarize(run_dir: &Path, state: &TrainState) -> Result<()> {
    let m = read_metrics(run_dir)?;
    let first = m.iter().find(|l| l["kind"] == "eval");
    let last = m.iter().rev().find(|l| l["kind"] == "round");
    let show = |l: Option<&serde_json::Value>, key: &str| {
        l.and_then(|l| l["eval"][key].as_f64())
            .map_or("n/a".to_string(), |v| format!("{:.1}%", 100.0 * v))
    };
    println!(
        "eval accuracy (greedy answer): {} before, {} after",
        show(first, "accuracy"),
        show(last, "accuracy")
    );
    println!(
        "eval accuracy (option likelihood): {} before, {} after",
        show(first, "option_accuracy"),
        show(last, "option_accuracy")
    );
    println!(
        "time scoring: {:.1} s, time training: {:.1} s",
        state.score_seconds, state.train_seconds
    );
    println!("run directory: {}", run_dir.display());
    let pictures: Vec<String> = [
        "loss",
        "reward",
        "eval_accuracy",
        "pool_scores",
        "pool_distribution",
    ]
    .iter()
    .map(|name| run_dir.join(format!("plots/{name}.svg")))
    .filter(|p| p.exists())
    .map(|p| p.display().to_string())
    .collect();
    println!("pictures: {}", pictures.join(", "));
    Ok(())
}
