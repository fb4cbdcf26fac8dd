//! What a finished run shows a person: its pictures in `plots/` (loss per step, GRPO's reward,
//! held-out accuracy per round, the pool's scores per round and their distribution before each
//! round), drawn from the run directory's own files, and the end-of-run summary on stdout.

use crate::checkpoint::TrainState;
use crate::run_dir::read_metrics;
use crate::{plot, stats};
use anyhow::{Context, Result};
use std::path::Path;

/// Loss per step, eval accuracy per round, and the pool's score distribution per round.
pub fn draw_plots(run_dir: &Path) -> Result<()> {
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

pub fn summarize(run_dir: &Path, state: &TrainState) -> Result<()> {
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
