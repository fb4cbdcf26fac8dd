//! `edco compare` end to end on a tiny model: every arm trains at the same budget, a study
//! interrupted mid-way and run again finishes only what is missing and reports what an
//! uninterrupted study reports, the report's statistics are those of the runs' own metrics,
//! and arms that would train at another budget are refused before anything runs.

use crate::common::fixture_with_tokenizer;
use crate::train::config_text;
use std::path::Path;
use std::process::{Command, Output};

fn compare(cfg: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edco"));
    c.args(["compare", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(["--arm", "edco,random"])
        .args(extra);
    if !extra.contains(&"--seeds") {
        c.args(["--seeds", "2"]);
    }
    c
}

fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

fn report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// Accuracy after each round of one run, read straight from its metrics.jsonl.
fn accuracies(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["kind"] == "eval" || l["kind"] == "round")
        .map(|l| l["eval"]["accuracy"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_study_is_budget_matched_resumable_and_computed_from_its_runs() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config_text(model.path(), dir.path(), "checkpoint_every_steps = 1"),
    )
    .unwrap();

    // Uninterrupted.
    let whole = dir.path().join("whole");
    let err = ok(compare(&cfg, &whole, &[]).output().unwrap());
    assert!(err.contains("study: 4/4 random seed 2"), "{err}");
    let r = report(&whole);
    let arms = r["arms"].as_array().unwrap();
    assert_eq!(arms.len(), 2);
    // The same optimizer steps in every run (2 rounds of 4 samples in steps of 2).
    for a in arms {
        for run in a["runs"].as_array().unwrap() {
            assert_eq!(run["steps"], 4, "{}", a["name"]);
            assert!(run["tokens"].as_u64().unwrap() > 0);
        }
    }
    // The statistics are those of the runs' metrics: mean and sample sd over the two seeds,
    // and the final difference to random paired by seed.
    let acc = |arm: &str, seed: u64| accuracies(&whole.join(format!("runs/{arm}/seed-{seed}")));
    for (i, name) in ["edco", "random"].iter().enumerate() {
        let (a, b) = (acc(name, 1), acc(name, 2));
        assert_eq!(a.len(), 3);
        for k in 0..3 {
            let s = &arms[i]["accuracy"][k];
            let mean = (a[k] + b[k]) / 2.0;
            let sd = ((a[k] - mean).powi(2) + (b[k] - mean).powi(2)).sqrt();
            assert!(
                (s["mean"].as_f64().unwrap() - mean).abs() < 1e-12,
                "{name} {k}"
            );
            assert!(
                (s["std"].as_f64().unwrap() - sd).abs() < 1e-12,
                "{name} {k}"
            );
        }
    }
    let d: Vec<f64> = [1, 2]
        .iter()
        .map(|&s| acc("edco", s)[2] - acc("random", s)[2])
        .collect();
    let paired = &arms[0]["vs_random"];
    assert!((paired["mean"].as_f64().unwrap() - (d[0] + d[1]) / 2.0).abs() < 1e-12);
    assert!(arms[1]["vs_random"].is_null());
    // Resampling seeds and held-out samples keeps the difference and widens its interval.
    let items = &arms[0]["vs_random_items"];
    assert_eq!(items["seeds"], 2);
    assert_eq!(items["items"], 6);
    assert!((items["mean"].as_f64().unwrap() - paired["mean"].as_f64().unwrap()).abs() < 1e-12);
    assert!(items["low"].as_f64().unwrap() <= items["mean"].as_f64().unwrap());
    // What the curriculum selected: in round 1 every pick is new, and the mean score of the
    // picks is that of the scores in the runs' curriculum files.
    let picked = |seed: u64| {
        let path = whole.join(format!("runs/edco/seed-{seed}/curriculum/round_001.jsonl"));
        let scores: Vec<f64> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["score"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        scores.iter().sum::<f64>() / scores.len() as f64
    };
    let edco = &arms[0];
    assert_eq!(edco["new"][0]["mean"], 4.0);
    // The base model's result on each pool sample, once per study: the report's share of the
    // picks it got right is read from it.
    let base: std::collections::HashMap<String, bool> =
        std::fs::read_to_string(whole.join("base/pool.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["correct"].as_bool().unwrap(),
                )
            })
            .collect();
    assert_eq!(base.len(), 16);
    let right = base.values().filter(|&&r| r).count() as f64 / 16.0;
    assert!((r["pool_base_accuracy"].as_f64().unwrap() - right).abs() < 1e-12);
    let picked_right = |seed: u64| {
        let path = whole.join(format!("runs/edco/seed-{seed}/curriculum/round_001.jsonl"));
        let text = std::fs::read_to_string(path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["id"].as_str().unwrap().to_string()
            })
            .collect();
        ids.iter().filter(|id| base[*id]).count() as f64 / ids.len() as f64
    };
    let want = (picked_right(1) + picked_right(2)) / 2.0;
    let got = edco["picked_base_accuracy"][0]["mean"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} {want}");
    let want = (picked(1) + picked(2)) / 2.0;
    assert!((edco["picked_score"][0]["mean"].as_f64().unwrap() - want).abs() < 1e-9);
    assert!(
        edco["pool_score"][0]["mean"].as_f64().unwrap() < want,
        "the most uncertain are picked"
    );
    let md = std::fs::read_to_string(whole.join("report.md")).unwrap();
    assert!(
        md.contains("| edco |") && md.contains("final vs random (95% CI)"),
        "{md}"
    );
    assert!(whole.join("accuracy.svg").is_file() && whole.join("accuracy_vs_time.svg").is_file());
    // The times say which machine they were taken on.
    let machine = edco::threads::machine();
    assert_eq!(arms[0]["runs"][0]["machines"], serde_json::json!([machine]));
    assert!(
        md.contains(&format!("Timed on: {machine} (4 runs).")),
        "{md}"
    );

    // Interrupted once the first run has finished, in the middle of the second: run again, it
    // leaves the first alone, resumes the second and runs the rest; the accuracies are the
    // uninterrupted study's.
    let parted = dir.path().join("parted");
    let mut child = compare(&cfg, &parted, &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = parted.join("runs/edco/seed-1/metrics.jsonl");
    let second = parted.join("runs/random/seed-1/checkpoints");
    let start = std::time::Instant::now();
    while !(first.is_file() && accuracies(first.parent().unwrap()).len() == 3 && second.is_dir()) {
        assert!(
            start.elapsed().as_secs() < 120,
            "the study did not get going"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    child.wait().unwrap();
    let kept = std::fs::read(&first).unwrap();
    // What the stopped study says so far: the one finished run, nothing run meanwhile.
    let err = ok(compare(&cfg, &parted, &["--report-only"]).output().unwrap());
    assert!(!err.contains("study: "), "{err}");
    let so_far = report(&parted);
    assert_eq!(
        (so_far["finished"].as_u64(), so_far["planned"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(so_far["arms"][0]["runs"].as_array().unwrap().len(), 1);
    let edco_1 = &so_far["arms"][0]["runs"][0];
    assert_eq!(edco_1["seed"], 1);
    assert_eq!(edco_1["accuracy"], arms[0]["runs"][0]["accuracy"]);
    assert!(so_far["arms"][1]["runs"].as_array().unwrap().is_empty());
    let md = std::fs::read_to_string(parted.join("report.md")).unwrap();
    assert!(md.contains("**1 of 4 runs finished**"), "{md}");
    assert_eq!(std::fs::read(&first).unwrap(), kept);
    let err = ok(compare(&cfg, &parted, &[]).output().unwrap());
    assert!(err.contains("study: 1/4 edco seed 1: done"), "{err}");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        kept,
        "a finished run is not rerun"
    );
    let again = report(&parted);
    for (a, b) in arms.iter().zip(again["arms"].as_array().unwrap()) {
        assert_eq!(a["accuracy"], b["accuracy"], "{}", a["name"]);
        assert_eq!(a["steps"], b["steps"]);
    }
    // Its checkpoints removed (a study kept for its records, without the weights), the
    // finished study reruns nothing and reports the same; so with its config at another path
    // (a study is its config's text).
    for arm in ["edco", "random"] {
        for seed in [1, 2] {
            let run = parted.join(format!("runs/{arm}/seed-{seed}"));
            std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
        }
    }
    let moved = dir.path().join("moved.toml");
    std::fs::copy(&cfg, &moved).unwrap();
    let err = ok(compare(&moved, &parted, &[]).output().unwrap());
    assert!(err.contains("study: 4/4 random seed 2: done"), "{err}");
    assert_eq!(std::fs::read(&first).unwrap(), kept);
    assert_eq!(report(&parted)["arms"], again["arms"]);
    // Another study is not run into this one's directory.
    let o = compare(&cfg, &parted, &["--set", "curriculum.rounds=2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("was started with other arms, seeds or settings"),
        "{err}"
    );

    // An arm at another budget is refused before any run starts.
    let other = dir.path().join("other");
    let o = compare(
        &cfg,
        &other,
        &[
            "--arm",
            "short:curriculum.strategy=\"random\",curriculum.select_fraction=0.5",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("a study compares arms at the same budget"),
        "{err}"
    );
    assert!(!other.exists(), "a refused study leaves nothing behind");

    // A data file that changed while the study ran (here, a run done again after its
    // directory was removed): the study stops at the first run that read it, naming it.
    let changed = dir.path().join("changed");
    ok(compare(&cfg, &changed, &["--seeds", "1"]).output().unwrap());
    std::fs::remove_dir_all(changed.join("runs/random")).unwrap();
    let eval = dir.path().join("eval.jsonl");
    let text = std::fs::read_to_string(&eval).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&eval, lines[1..].join("\n") + "\n").unwrap();
    let o = compare(&cfg, &changed, &["--seeds", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(&format!(
                "data.eval {}: not the file the study's runs read",
                eval.display()
            )),
        "{err}"
    );
    assert!(
        !changed.join("runs/random").exists(),
        "the run is refused before it starts"
    );
}

/// What a study cannot be: arms that change what every arm shares, seeds given twice, an arm
/// name that is not a folder's, settings the study makes itself.
#[test]
fn a_study_that_would_not_compare_like_with_like_is_refused() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config_text(model.path(), dir.path(), "")).unwrap();
    let out = dir.path().join("study");
    for (args, expected) in [
        (
            vec!["--arm", "other:data.eval=\"x.jsonl\""],
            "sets `data.eval`; an arm may change only what is selected",
        ),
        (
            vec!["--arm", "big:model.lora.r=16"],
            "sets `model.lora.r`; an arm may change only what is selected",
        ),
        (
            vec!["--arm", "long:eval={max_new_tokens=256}"],
            "sets `eval`; an arm may change only what is selected",
        ),
        (
            vec!["--arm", "fast:sft.learning_rate=1e-2"],
            "sets `sft.learning_rate`; an arm may change only what is selected",
        ),
        (
            vec!["--set", "run={seed=4}"],
            "the study sets `run` for each run itself",
        ),
        (
            vec!["--arm", ".."],
            "its name must start with a letter or digit",
        ),
        (vec!["--seeds", "3,3"], "seed 3 is given twice"),
        (
            vec!["--seeds", "100000000000"],
            "a study runs at most 1000 seeds",
        ),
        (
            vec!["--set", "run.seed=4"],
            "the study sets `run.seed` for each run itself",
        ),
    ] {
        let o = compare(&cfg, &out, &args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(expected),
            "{args:?}: {err}"
        );
        assert!(
            !out.exists(),
            "{args:?}: a refused study leaves nothing behind"
        );
    }
}
