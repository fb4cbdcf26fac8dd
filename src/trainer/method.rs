//! What the round loop asks of a trainer. The loop scores, selects, shuffles, schedules the
//! learning rate, logs and checkpoints; a trainer (SFT or GRPO) owns what differs: what it needs
//! of the pool, how it tokenizes it, how a round's selection becomes optimizer steps, the step
//! itself and what its metrics line says.

use super::optim::AdamW;
use crate::config::Settings;
use crate::data::Sample;
use crate::data::tokenize::{Lengths, Tokenized};
use crate::model::io::Loaded;
use crate::tokenizer::Tokenizer;
use anyhow::Result;
use std::path::Path;

/// What a step reads besides its own settings.
pub struct StepInput<'a> {
    pub loaded: &'a Loaded,
    pub pool: &'a [Sample],
    /// The pool tokenized by [`Method::tokenize`], index for index.
    pub pairs: &'a [Tokenized],
}

/// What a step reports.
pub struct StepReport {
    /// Its line of `metrics.jsonl` (the loop adds the step, round, learning rate and times).
    pub line: serde_json::Value,
    /// The loss; a value that is not finite stops the run.
    pub loss: f64,
    /// Tokens the step trained on, for its tokens/s.
    pub tokens: usize,
    /// What the progress bar shows of it.
    pub progress: String,
}

pub trait Method: Sync {
    /// The config section of its settings (`sft`, `grpo`), as messages name it.
    fn section(&self) -> &'static str;

    /// Refuses a pool that lacks what this method trains on (`path` names it).
    fn check_pool(&self, pool: &[Sample], path: &Path) -> Result<()>;

    /// Optimizer steps per round when each round selects `per_round` samples.
    fn steps_per_round(&self, per_round: usize) -> usize;

    /// What one step holds, for the plan.
    fn describe_step(&self) -> String;

    /// A pool sample as this method trains on it.
    fn tokenize(
        &self,
        tok: &Tokenizer,
        sample: &Sample,
        template_args: &serde_json::Map<String, serde_json::Value>,
        lengths: Lengths,
    ) -> Result<Tokenized>;

    /// Loads what the method needs beside the model, once the model is loaded.
    fn prepare(&mut self, _settings: &Settings, _loaded: &Loaded) -> Result<()> {
        Ok(())
    }

    /// Whether its steps generate (rollouts); if not, the weights packed for decoding are
    /// freed while it trains.
    fn generates(&self) -> bool;

    /// A round's selection as optimizer steps, each a list of pool indices; `shuffled(pass)` is
    /// the selection in the seeded order of pass `pass` over it.
    fn steps(&self, shuffled: &mut dyn FnMut(usize) -> Vec<usize>) -> Vec<Vec<usize>>;

    /// One optimizer step on the pool samples `items` at learning rate `lr`; `seed` draws its
    /// random streams (dropout, rollouts).
    fn step(
        &self,
        input: &StepInput,
        items: &[usize],
        opt: &mut AdamW,
        lr: f64,
        seed: u64,
    ) -> Result<StepReport>;
}
