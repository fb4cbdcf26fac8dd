//! `edco estimate-entropy`: audit a dataset with a model. Scores every sample with the entropy
//! estimator, writes one JSON line per sample, a summary (stderr and `<stem>.summary.json`) and a
//! histogram (`<stem>.hist.svg`) next to the scores; with `--compare-full` it also runs the
//! full-sequence estimator on the same samples and seeds and reports how well the prefix score
//! agrees with it (time saved, Spearman rho, Kendall tau-b, top-N overlap, `<stem>.scatter.svg`).

use crate::atomic_file::write_atomic;
use crate::data::Sample;
use crate::entropy::{EntropyConfig, Horizon, SampleEntropy, estimate};
use crate::model::io::Loaded;
use crate::progress::progress_bar;
use crate::{plot, stats};
use anyhow::Result;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the user asked for beyond the estimator's settings.
pub struct AuditOptions {
    pub out: PathBuf,
    /// Report entropies in bits instead of nats.
    pub bits: bool,
    /// Include per-token entropies in every line.
    pub per_token: bool,
    /// Also run the full-sequence estimator with this cap and compare.
    pub compare_full: Option<usize>,
    /// N for the top-N overlap, as a fraction of the pool (EDCO's SFT keeps 25%).
    pub top_n_fraction: f64,
}

/// One scoring pass with its wall time.
struct Pass {
    scores: Vec<SampleEntropy>,
    seconds: f64,
}

fn run_pass(loaded: &Loaded, samples: &[Sample], cfg: &EntropyConfig, label: &str) -> Result<Pass> {
    let bar = progress_bar(samples.len(), label);
    let start = Instant::now();
    let scores = estimate(
        &loaded.model,
        &loaded.tokenizer,
        &loaded.eos_token_ids,
        samples,
        cfg,
        &mut |done, tokens| {
            bar.set_position(done as u64);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("{:.1} tokens/s", tokens as f64 / secs));
        },
    )?;
    bar.finish_and_clear();
    Ok(Pass {
        scores,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every file the audit writes: the scores, then the summary, the histogram and (comparing with
/// the full estimator) the scatter plot beside them.
pub fn output_files(opts: &AuditOptions) -> Vec<PathBuf> {
    let mut files = vec![
        opts.out.clone(),
        sibling(&opts.out, "summary.json"),
        sibling(&opts.out, "hist.svg"),
    ];
    if opts.compare_full.is_some() {
        files.push(sibling(&opts.out, "scatter.svg"));
    }
    files
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("entropy");
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// Summary statistics of one pass, in the reporting unit.
fn summary(pass: &Pass, unit_scale: f64) -> serde_json::Value {
    let s: Vec<f64> = pass
        .scores
        .iter()
        .map(|e| e.score as f64 * unit_scale)
        .collect();
    let tokens: usize = pass.scores.iter().map(SampleEntropy::tokens).sum();
    let completions: usize = pass.scores.iter().map(|e| e.eos.len()).sum();
    let eos: usize = pass
        .scores
        .iter()
        .map(|e| e.eos.iter().filter(|&&x| x).count())
        .sum();
    json!({
        "count": s.len(),
        "mean": stats::mean(&s),
        "std": stats::std_dev(&s),
        "min": stats::quantile(&s, 0.0),
        "p10": stats::quantile(&s, 0.1),
        "p25": stats::quantile(&s, 0.25),
        "median": stats::quantile(&s, 0.5),
        "p75": stats::quantile(&s, 0.75),
        "p90": stats::quantile(&s, 0.9),
        "max": stats::quantile(&s, 1.0),
        "seconds": pass.seconds,
        "seconds_per_sample": pass.seconds / s.len().max(1) as f64,
        "scored_tokens": tokens,
        "tokens_per_second": tokens as f64 / pass.seconds.max(1e-9),
        "eos_fraction": eos as f64 / completions.max(1) as f64,
        "prompts_cut": pass.scores.iter().filter(|e| e.prompt_cut > 0).count(),
    })
}

pub fn run(
    loaded: &Loaded,
    samples: &[Sample],
    cfg: &EntropyConfig,
    opts: &AuditOptions,
) -> Result<()> {
    let scale = if opts.bits {
        1.0 / std::f64::consts::LN_2
    } else {
        1.0
    };
    let unit = if opts.bits { "bits" } else { "nats" };
    let main = run_pass(loaded, samples, cfg, "scoring")?;
    let cut = main.scores.iter().filter(|e| e.prompt_cut > 0).count();
    if cut > 0 {
        eprintln!(
            "warning: {cut} prompts were cut from the left to fit --max-length / the model's context"
        );
    }
    let full = match opts.compare_full {
        Some(cap) => {
            let full_cfg = EntropyConfig {
                horizon: Horizon::Full(cap),
                ..cfg.clone()
            };
            Some(run_pass(loaded, samples, &full_cfg, "full")?)
        }
        None => None,
    };

    let mut lines = String::new();
    for (i, e) in main.scores.iter().enumerate() {
        let mut line = json!({
            "id": e.id,
            "score": e.score as f64 * scale,
            "unit": unit,
            "tokens": e.tokens(),
            "eos": e.eos.iter().all(|&x| x),
            "prompt_cut": e.prompt_cut,
        });
        if let Some(full) = &full {
            line["full_score"] = json!(full.scores[i].score as f64 * scale);
            line["full_tokens"] = json!(full.scores[i].tokens());
        }
        if opts.per_token {
            let per: Vec<Vec<f64>> = e
                .entropies
                .iter()
                .map(|h| h.iter().map(|&x| x as f64 * scale).collect())
                .collect();
            line["entropies"] = json!(per);
        }
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic(&opts.out, lines.as_bytes())?;

    let scores: Vec<f64> = main.scores.iter().map(|e| e.score as f64 * scale).collect();
    let hist = sibling(&opts.out, "hist.svg");
    plot::histogram(
        &hist,
        &scores,
        &format!("Entropy scores of {} samples", scores.len()),
        &format!("score ({unit})"),
        30,
    )?;
    let mut report = json!({ "unit": unit, "horizon": format!("{:?}", cfg.horizon), "scores": summary(&main, scale) });

    if let Some(full) = &full {
        let f: Vec<f64> = full.scores.iter().map(|e| e.score as f64 * scale).collect();
        let n = ((scores.len() as f64 * opts.top_n_fraction).round() as usize).max(1);
        let scatter = sibling(&opts.out, "scatter.svg");
        plot::scatter(
            &scatter,
            &f,
            &scores,
            "Prefix vs full-sequence entropy",
            &format!("full ({unit})"),
            &format!("prefix ({unit})"),
        )?;
        report["full"] = summary(full, scale);
        report["agreement"] = json!({
            "time_reduction": 1.0 - main.seconds / full.seconds.max(1e-9),
            "spearman_rho": stats::spearman(&scores, &f),
            "kendall_tau_b": stats::kendall_tau_b(&scores, &f),
            "top_n": n,
            "top_n_overlap": stats::top_n_overlap(&scores, &f, n),
        });
        eprintln!("scatter plot: {}", scatter.display());
    }
    let summary_path = sibling(&opts.out, "summary.json");
    write_atomic(
        &summary_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!(
        "scores: {}\nhistogram: {}\nsummary: {}",
        opts.out.display(),
        hist.display(),
        summary_path.display()
    );
    Ok(())
}
