//! The three phases of a round: score the pool with the current model and select from it
//! (`select`), train on the selection (`train`), then evaluate, log the round and checkpoint
//! (`close`); and the state a run starts from (`start`): fresh, with the evaluation before
//! training, or a checkpoint's.

use super::Plan;
use super::eval::{EvalReport, Evaluator};
use super::method::{Method, StepInput};
use super::optim::{AdamW, learning_rate};
use crate::checkpoint::{self, TrainState};
use crate::config::{Config, Settings, Strategy};
use crate::curriculum::Curriculum;
use crate::data::Sample;
use crate::data::tokenize::Tokenized;
use crate::entropy::{EntropyConfig, estimate};
use crate::model::Trainable;
use crate::model::generate::NonFinite;
use crate::model::io::{Loaded, save_hf_dir};
use crate::model::lora::save_adapter;
use crate::progress::progress_bar;
use crate::run_dir::{Metrics, RunDir};
use crate::{perplexity, seed, stats};
use anyhow::{Result, anyhow};
use rand::seq::SliceRandom;
use rand::{SeedableRng, rngs::StdRng};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything every round uses, set up once.
pub(super) struct Rounds<'a> {
    pub cfg: &'a Config,
    pub settings: &'a Settings,
    pub method: &'a dyn Method,
    pub loaded: &'a Loaded,
    pub pool: &'a [Sample],
    pub eval: &'a [Sample],
    /// The pool as the method trains on it.
    pub pairs: &'a [Tokenized],
    pub run_dir: &'a RunDir,
    pub plan: &'a Plan,
}

impl Rounds<'_> {
    /// The state the run starts from and its metrics file: the checkpoint's (with the
    /// optimizer's moments) when resuming, else a fresh curriculum after the evaluation before
    /// training.
    pub fn start(&self, opt: &mut AdamW) -> Result<(TrainState, Metrics)> {
        if let Some((dir, state)) = &self.run_dir.resumed {
            opt.load(&dir.join(checkpoint::OPTIMIZER))?;
            eprintln!(
                "resuming from {} (round {}, step {})",
                dir.display(),
                state.round,
                state.global_step
            );
            let metrics = self.run_dir.metrics(Some(state.metrics_lines))?;
            self.kept(dir, state);
            return Ok((state.clone(), metrics));
        }
        let cfg = self.cfg;
        let mut metrics = self.run_dir.metrics(None)?;
        let mut curriculum = Curriculum::new(
            cfg.curriculum.clone(),
            self.pool.len(),
            self.plan.per_round,
            cfg.run.seed,
        );
        if cfg.curriculum.strategy == Strategy::Length {
            curriculum.set_lengths(
                &self
                    .pairs
                    .iter()
                    .map(|p| p.prompt.len())
                    .collect::<Vec<_>>(),
            );
        }
        if !self.eval.is_empty() {
            let r = self.evaluator().run(self.eval, &cfg.eval)?;
            self.write_eval(0, &r)?;
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
        Ok((state, metrics))
    }

    /// The round's first phase: scores what the curriculum asks to be scored, selects the
    /// round's samples and writes both down; returns the seconds it took.
    pub fn select(&self, state: &mut TrainState, round: usize, opt: &mut AdamW) -> Result<f64> {
        let t = Instant::now();
        if state.curriculum.needs_model_scores(round) {
            let idx = state.curriculum.to_score(round);
            let scores = self
                .scores(&idx, round)
                .map_err(|e| self.if_diverged(e, state.global_step, round))?;
            state.curriculum.record(round, &idx, &scores);
            let lines: Vec<serde_json::Value> = idx
                .iter()
                .zip(&scores)
                .map(|(&i, s)| json!({"id": self.pool[i].id, "index": i, "score": s}))
                .collect();
            self.run_dir.write_round("scores", round, &lines)?;
        }
        state.picks = state.curriculum.select(round);
        let lines: Vec<serde_json::Value> = state
            .picks
            .iter()
            .map(|p| json!({"id": self.pool[p.index].id, "index": p.index, "score": p.score, "rank": p.rank, "seen": p.seen}))
            .collect();
        self.run_dir.write_round("curriculum", round, &lines)?;
        let score_seconds = t.elapsed().as_secs_f64();
        state.score_seconds += score_seconds;
        tracing::info!(
            round,
            selected = state.picks.len(),
            seconds = score_seconds,
            "curriculum written"
        );
        state.round = round;
        state.step_in_round = Some(0);
        if self.settings.optimizer.reset_optimizer {
            opt.reset()?;
        }
        Ok(score_seconds)
    }

    /// The current model's scores of the pool samples `idx`: the reference answer's perplexity
    /// for the perplexity curriculum, the inference entropy for the others.
    fn scores(&self, idx: &[usize], round: usize) -> Result<Vec<f64>> {
        let (cfg, model, tok) = (self.cfg, &self.loaded.model, &self.loaded.tokenizer);
        let subset: Vec<Sample> = idx.iter().map(|&i| self.pool[i].clone()).collect();
        if cfg.curriculum.strategy == Strategy::Perplexity {
            let scores = perplexity::score(
                model,
                tok,
                &subset,
                &self.settings.template_args,
                cfg.data.lengths(),
                cfg.eval.batch_size,
            )?;
            return Ok(scores.iter().map(|s| s.nll).collect());
        }
        let estimator = EntropyConfig {
            seed: seed::mix(&[seed::SCORE, cfg.run.seed, round as u64]),
            ..self.settings.entropy.clone()
        };
        let bar = progress_bar(subset.len(), &format!("round {round} scoring"));
        let e = estimate(
            model,
            tok,
            &self.loaded.eos_token_ids,
            &subset,
            &estimator,
            &mut |d, _| bar.set_position(d as u64),
        )?;
        bar.finish_and_clear();
        Ok(e.iter().map(|e| e.score as f64).collect())
    }

    /// The second phase: trains on the round's selection, from the step a resumed round stopped
    /// at; returns the seconds it took. A loss that is not finite stops the run before anything
    /// overwrites a checkpoint.
    pub fn train(
        &self,
        state: &mut TrainState,
        metrics: &mut Metrics,
        opt: &mut AdamW,
        round: usize,
    ) -> Result<f64> {
        let (cfg, o) = (self.cfg, &self.settings.optimizer);
        if !self.method.generates() {
            // Nothing decodes until the evaluation: free the weights packed for decoding.
            self.loaded.model.release_packed();
        }
        let t = Instant::now();
        let picks: Vec<usize> = state.picks.iter().map(|p| p.index).collect();
        let steps = self.method.steps(&mut |pass| {
            let mut order = picks.clone();
            let parts = [seed::SHUFFLE, cfg.run.seed, round as u64, pass as u64];
            order.shuffle(&mut StdRng::seed_from_u64(seed::mix(&parts)));
            order
        });
        let input = StepInput {
            loaded: self.loaded,
            pool: self.pool,
            pairs: self.pairs,
        };
        let total_steps = self.plan.total_steps(cfg.curriculum.rounds);
        let bar = progress_bar(steps.len(), &format!("round {round} training"));
        let done = state.step_in_round.unwrap_or(0);
        bar.set_position(done as u64);
        for (k, items) in steps.iter().enumerate().skip(done) {
            let lr = learning_rate(
                o.schedule,
                o.learning_rate,
                o.min_learning_rate,
                o.warmup_steps,
                state.global_step,
                total_steps,
            );
            let step_seed = seed::mix(&[seed::STEP, cfg.run.seed, state.global_step as u64]);
            let st = Instant::now();
            // A rollout that meets non-finite logits after training began: the run diverged.
            let report = self
                .method
                .step(&input, items, opt, lr, step_seed)
                .map_err(|e| self.if_diverged(e, state.global_step, round))?;
            let secs = st.elapsed().as_secs_f64();
            state.global_step += 1;
            state.step_in_round = Some(k + 1);
            let tokens_per_second = report.tokens as f64 / secs.max(1e-9);
            let mut line = report.line;
            line["kind"] = json!("step");
            line["round"] = json!(round);
            line["step"] = json!(state.global_step);
            line["lr"] = json!(lr);
            line["seconds"] = json!(secs);
            line["tokens_per_second"] = json!(tokens_per_second);
            bar.set_message(format!(
                "{}, {tokens_per_second:.0} tokens/s",
                report.progress
            ));
            tracing::debug!("{line}");
            metrics.log(line)?;
            if !report.loss.is_finite() {
                return Err(self.loss_diverged(state.global_step, round)?);
            }
            bar.inc(1);
            let every = cfg.run.checkpoint_every_steps;
            if every > 0 && state.global_step.is_multiple_of(every) && k + 1 < steps.len() {
                self.save(state, metrics, opt)?;
            }
        }
        bar.finish_and_clear();
        let train_seconds = t.elapsed().as_secs_f64();
        state.train_seconds += train_seconds;
        Ok(train_seconds)
    }

    /// A scoring or evaluation error from non-finite logits after training began means the run
    /// diverged: said so, with the step and what to do. Other errors pass as they are.
    fn if_diverged(&self, e: anyhow::Error, step: usize, round: usize) -> anyhow::Error {
        if step == 0 || e.downcast_ref::<NonFinite>().is_none() {
            return e;
        }
        let what = format!("after step {step} (round {round}), {e}");
        self.diverged(&what).unwrap_or_else(|io| io)
    }

    /// The error of a step whose loss is not finite, with what to do about it.
    fn loss_diverged(&self, step: usize, round: usize) -> Result<anyhow::Error> {
        if step == 1 && self.run_dir.resumed.is_none() {
            // No update has been made: the learning rate is not the cause.
            return Ok(anyhow!(
                "step 1 (round {round}): the loss is not finite before any update: the model \
                 ({}) or the data give NaN or infinity; check them with `edco perplexity \
                 --model {0} --data {}`, or try model.dtype = \"f32\"",
                self.cfg.model.source,
                self.cfg.data.train.display()
            ));
        }
        self.diverged(&format!(
            "step {step} (round {round}): the loss is not finite"
        ))
    }

    /// A diverged run's error: `what` was not finite; stopping, and how to go on.
    fn diverged(&self, what: &str) -> Result<anyhow::Error> {
        let (run, section) = (self.run_dir.path.display(), self.method.section());
        let advice = match checkpoint::list(&self.run_dir.path)?.pop() {
            Some(last) => format!(
                "The last good checkpoint is {}; resume from it with --resume {run} \
                 --set {section}.learning_rate=<lower>",
                last.display(),
            ),
            None => format!(
                "There is no checkpoint yet; start again with --resume {run} \
                 --set {section}.learning_rate=<lower>"
            ),
        };
        Ok(anyhow!("{what}; the run diverged, stopping. {advice}"))
    }

    /// The third phase: evaluates, logs the round and checkpoints it.
    pub fn close(
        &self,
        state: &mut TrainState,
        metrics: &mut Metrics,
        opt: &AdamW,
        round: usize,
        (score_seconds, train_seconds): (f64, f64),
    ) -> Result<()> {
        let report = if self.eval.is_empty() {
            EvalReport::default()
        } else {
            self.evaluator()
                .run(self.eval, &self.cfg.eval)
                .map_err(|e| self.if_diverged(e, state.global_step, round))?
        };
        if !self.eval.is_empty() {
            self.write_eval(round, &report)?;
        }
        let new = state.picks.iter().filter(|p| !p.seen).count();
        metrics.log(json!({
            "kind": "round", "round": round, "selected": state.picks.len(), "new": new,
            "score_seconds": score_seconds, "train_seconds": train_seconds,
            "machine": crate::threads::machine(), "device": self.cfg.model.device,
            "pool_scores": pool_scores_json(&state.curriculum.scores), "eval": eval_json(&report),
        }))?;
        eprintln!(
            "round {round}/{}: {} selected ({new} new), scoring {score_seconds:.1} s, training {train_seconds:.1} s, eval {}",
            self.cfg.curriculum.rounds,
            state.picks.len(),
            serde_json::to_string(&report)?
        );
        state.step_in_round = None;
        state.picks.clear();
        self.save(state, metrics, opt)?;
        Ok(())
    }

    /// Each held-out sample's result of the evaluation after `round` (0: before training).
    fn write_eval(&self, round: usize, report: &EvalReport) -> Result<()> {
        let lines: Vec<serde_json::Value> = report
            .items
            .iter()
            .map(serde_json::to_value)
            .collect::<serde_json::Result<_>>()?;
        self.run_dir.write_round("eval", round, &lines)
    }

    /// A checkpoint of the run as it stands. It records how many metrics lines belong to it, so
    /// a resume can drop the rest.
    fn save(&self, state: &mut TrainState, metrics: &Metrics, opt: &AdamW) -> Result<PathBuf> {
        state.metrics_lines = metrics.lines;
        let (model, loaded) = (&self.loaded.model, self.loaded);
        let dir = checkpoint::save(&self.run_dir.path, state, self.cfg.run.keep_last, |stage| {
            match model.trainable() {
                Trainable::Lora(_) => save_adapter(
                    model,
                    &stage.join(checkpoint::ADAPTER),
                    (
                        &self.settings.model.source,
                        self.settings.model.revision.as_deref(),
                    ),
                )?,
                _ => save_hf_dir(
                    model,
                    &loaded.tokenizer,
                    &loaded.eos_token_ids,
                    &stage.join(checkpoint::MODEL),
                )?,
            }
            opt.save(&stage.join(checkpoint::OPTIMIZER))
        })?;
        tracing::info!(
            step = state.global_step,
            "checkpoint written to {}",
            dir.display()
        );
        self.kept(&dir, state);
        Ok(dir)
    }

    /// Tells an interruption what it keeps: the newest checkpoint, and how to go on from it.
    fn kept(&self, checkpoint: &Path, state: &TrainState) {
        let run = self.run_dir.path.display();
        crate::interrupt::keep(format!(
            "the run in {run} keeps checkpoint {} (round {}, step {}); continue it with \
             `edco train --resume {run}`",
            checkpoint.display(),
            state.round,
            state.global_step
        ));
    }

    fn evaluator(&self) -> Evaluator<'_> {
        Evaluator {
            model: &self.loaded.model,
            tok: &self.loaded.tokenizer,
            eos_token_ids: &self.loaded.eos_token_ids,
            template_args: &self.settings.template_args,
            lengths: self
                .cfg
                .data
                .lengths()
                .within(self.loaded.model.config.max_position_embeddings),
            answer_check: self.cfg.data.answer_check,
        }
    }
}

/// The pool's latest scores in summary (count, mean, 10th, 50th and 90th percentiles).
fn pool_scores_json(scores: &[Option<f64>]) -> serde_json::Value {
    let s: Vec<f64> = scores.iter().flatten().copied().collect();
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
