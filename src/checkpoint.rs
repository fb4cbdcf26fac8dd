//! Training checkpoints: the weights (a PEFT adapter, or a full Hugging Face directory) and the
//! optimizer's moments, which the trainer writes, and the loop's state (round, step, curriculum,
//! the round's selection, how many metrics lines belong to it), staged in a hidden directory and
//! renamed into place so an interrupted save never replaces a good checkpoint; only the newest
//! `keep_last` are kept.
//! Every random choice in the loop is derived from (seed, round, step), so this is all a resume
//! needs to end where an uninterrupted run would.

use crate::atomic_file::{fresh_dir, replace_dir, staging_dir, write_atomic};
use crate::curriculum::{Curriculum, Pick};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE: &str = "state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// The trained weights: a PEFT adapter (LoRA) or a Hugging Face model directory (full).
pub const ADAPTER: &str = "adapter";
pub const MODEL: &str = "model";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The round in progress (1-based), or the last finished one when `step_in_round` is None.
    pub round: usize,
    /// Steps done in `round`; None when the round (training and evaluation) is complete.
    pub step_in_round: Option<usize>,
    pub global_step: usize,
    pub curriculum: Curriculum,
    /// The selection of `round`, while it is in progress.
    pub picks: Vec<Pick>,
    /// Lines of metrics.jsonl written up to this checkpoint.
    pub metrics_lines: usize,
    /// Seconds spent so far scoring and training (for the end-of-run accounting).
    pub score_seconds: f64,
    pub train_seconds: f64,
}

impl TrainState {
    /// The round to run next: the one in progress, or the one after the last finished.
    pub fn next_round(&self) -> usize {
        match self.step_in_round {
            Some(_) => self.round,
            None => self.round + 1,
        }
    }
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Saves a checkpoint named after its round and step; returns its directory. `write` puts the
/// weights and the optimizer's state into the staging directory it is given; the loop's state
/// follows, then the directory is renamed into place and the oldest beyond `keep_last` removed.
pub fn save(
    run: &Path,
    state: &TrainState,
    keep_last: usize,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("round_{:03}_step_{:06}", state.round, state.global_step);
    let dir = root.join(&name);
    let stage = staging_dir(&dir);
    let staged = (|| -> Result<()> {
        fresh_dir(&stage)?;
        write(&stage)?;
        write_atomic(
            &stage.join(STATE),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        replace_dir(&stage, &dir)
    })();
    if let Err(e) = staged {
        // Leave no half-written checkpoint behind; the older ones are untouched.
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e.context(format!("saving checkpoint {}", dir.display())));
    }
    prune(&root, keep_last)?;
    Ok(dir)
}

/// Finished checkpoints, oldest first.
pub fn list(run: &Path) -> Result<Vec<PathBuf>> {
    let root = checkpoints_dir(run);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("round_"))
        })
        .filter(|p| p.join(STATE).is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn prune(root: &Path, keep_last: usize) -> Result<()> {
    let all = list(root.parent().unwrap_or(root))?;
    for old in all.iter().take(all.len().saturating_sub(keep_last)) {
        std::fs::remove_dir_all(old)
            .with_context(|| format!("removing old checkpoint {}", old.display()))?;
    }
    Ok(())
}

/// The newest intact checkpoint of a run and its state.
pub fn latest(run: &Path) -> Result<(PathBuf, TrainState)> {
    latest_intact(run).map(|(dir, state, _)| (dir, state))
}

/// Damaged checkpoints, each with what is wrong with it.
pub type Damaged = Vec<(PathBuf, String)>;

/// The newest intact checkpoint of a run, its state, and the damaged newer ones (a disk error,
/// a hand edit) passed over, each with what is wrong with it. Reads only.
pub fn latest_intact(run: &Path) -> Result<(PathBuf, TrainState, Damaged)> {
    let all = list(run)?;
    if all.is_empty() {
        bail!(
            "{}: no checkpoint to resume from",
            checkpoints_dir(run).display()
        );
    }
    let mut damaged = Damaged::new();
    for dir in all.iter().rev() {
        match read(dir) {
            Ok(state) => return Ok((dir.clone(), state, damaged)),
            Err(e) => damaged.push((dir.clone(), format!("{e:#}"))),
        }
    }
    let list: Vec<String> = damaged
        .iter()
        .map(|(d, why)| format!("{}: {why}", d.display()))
        .collect();
    bail!(
        "no intact checkpoint to resume from; remove the damaged ones to start the run again \
         (`--resume` then starts it from the beginning):\n  {}",
        list.join("\n  ")
    )
}

/// Where a damaged checkpoint is moved, out of the way of rotation and resumes but kept.
pub fn set_aside(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let mut to = dir.with_file_name(format!("damaged_{name}"));
    let mut k = 1;
    while to.exists() {
        k += 1;
        to = dir.with_file_name(format!("damaged_{name}.{k}"));
    }
    std::fs::rename(dir, &to)
        .with_context(|| format!("moving damaged checkpoint {} aside", dir.display()))?;
    Ok(to)
}

/// A checkpoint's state, once its files are checked: the state parses and every safetensors
/// file has a well-formed header whose tensors lie inside the file.
fn read(dir: &Path) -> Result<TrainState> {
    let path = dir.join(STATE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let state = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed checkpoint state", path.display()))?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                pending.push(p);
            } else if p.extension().is_some_and(|e| e == "safetensors") {
                crate::model::io::safetensors::check_safetensors_header(&p)?;
            }
        }
    }
    Ok(state)
}
