//! `edco train` end to end on tiny models: the run directory's contents, every curriculum
//! strategy's ordering, both trainers on the shipped data, learning (one small set overfits),
//! training options, interrupted runs (SFT LoRA and full, GRPO) resumed mid-round ending
//! bit-for-bit where the uninterrupted ones do, GRPO's rollouts, rewards and KL, GRPO learning a
//! toy task, and bad settings, diverging runs, an unwritable output directory and a full disk.

use crate::common;

use common::fixture_with_tokenizer;
use edco::config::Config;
use std::path::Path;

/// A pool of multiple-choice items the byte-level tiny models can be prompted with.
pub(crate) fn write_pool(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let answer = ["A", "B", "C"][i % 3];
            serde_json::json!({
                "id": format!("item-{i:03}"),
                "question": format!("Item {i}: which letter is {answer}?{}", " Think.".repeat(i % 4)),
                "options": {"A": "first", "B": "second", "C": "third"},
                "answer": answer,
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn config(model: &Path, dir: &Path, extra: &str) -> Config {
    Config::from_toml(&config_text(model, dir, extra), &[]).unwrap()
}

/// The TOML of a small run over a fresh pool in `dir`; `extra` is appended (later keys win only
/// in tables it opens itself).
pub(crate) fn config_text(model: &Path, dir: &Path, extra: &str) -> String {
    write_pool(&dir.join("train.jsonl"), 16);
    write_pool(&dir.join("eval.jsonl"), 6);
    format!(
        r#"
[model]
source = "{model}"
finetune = "lora"
lora = {{ r = 4, alpha = 8.0, dropout = 0.1, target_modules = ["q_proj", "v_proj", "down_proj"] }}
[data]
train = "{train}"
eval = "{eval}"
max_length = 256
[entropy]
prefix_tokens = 6
batch_size = 8
[curriculum]
rounds = 2
select_fraction = 0.25
[sft]
learning_rate = 1e-3
min_learning_rate = 1e-4
batch_size = 2
[eval]
max_new_tokens = 4
[run]
output_dir = "{out}"
seed = 3
{extra}
"#,
        model = model.display(),
        train = dir.join("train.jsonl").display(),
        eval = dir.join("eval.jsonl").display(),
        out = dir.join("run").display(),
    )
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sft_run_writes_the_run_directory() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(model.path(), dir.path(), "");
    let run = edco::trainer::run(&cfg, None, false).unwrap();

    let m = lines(&run.join("metrics.jsonl"));
    let kinds: Vec<&str> = m.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    // eval before training, then per round: 2 steps (4 samples / batch 2) and the round line.
    assert_eq!(
        kinds,
        ["eval", "step", "step", "round", "step", "step", "round"]
    );
    for r in m.iter().filter(|l| l["kind"] == "round") {
        assert!(
            r["score_seconds"].as_f64().unwrap() > 0.0
                && r["train_seconds"].as_f64().unwrap() > 0.0
        );
        assert_eq!(r["selected"], 4);
        assert!(
            r["eval"]["accuracy"].is_number()
                && r["eval"]["option_accuracy"].is_number()
                && r["eval"]["loss"].is_number()
        );
        assert_eq!(r["pool_scores"]["count"], 16);
    }
    // Each held-out sample's result, before training and after each round, adds up to the
    // accuracies of the metrics.
    let evals = m
        .iter()
        .filter(|l| l["kind"] == "eval" || l["kind"] == "round");
    for (round, l) in evals.enumerate() {
        let items = lines(&run.join(format!("eval/round_{round:03}.jsonl")));
        assert_eq!(items.len(), 6, "round {round}");
        for (key, total) in [
            ("correct", "accuracy"),
            ("option_correct", "option_accuracy"),
        ] {
            let right = items.iter().filter(|i| i[key] == true).count();
            let want = l["eval"][total].as_f64().unwrap();
            assert!(
                (right as f64 / 6.0 - want).abs() < 1e-12,
                "{key} round {round}"
            );
        }
        assert!(
            items
                .iter()
                .all(|i| i["reply"].is_string() && i["option"].is_string())
        );
    }
    // The edco curriculum keeps the 4 highest-entropy samples of the round's scores.
    let scores = lines(&run.join("scores/round_001.jsonl"));
    assert_eq!(scores.len(), 16);
    let mut by_score: Vec<(f64, String)> = scores
        .iter()
        .map(|l| {
            (
                l["score"].as_f64().unwrap(),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_score.sort_by(|a, b| b.0.total_cmp(&a.0));
    let picked: Vec<String> = lines(&run.join("curriculum/round_001.jsonl"))
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        picked,
        by_score
            .iter()
            .take(4)
            .map(|x| x.1.clone())
            .collect::<Vec<_>>()
    );
    // Round 2 re-scores the whole pool with the model trained in round 1 and keeps its top 4.
    assert_eq!(
        ids(&run.join("curriculum/round_002.jsonl")),
        top_ids(&run.join("scores/round_002.jsonl"), 4, true)
    );

    let ckpts = edco::checkpoint::list(&run).unwrap();
    assert_eq!(ckpts.len(), 2);
    let last = ckpts.last().unwrap();
    assert!(
        last.join("adapter/adapter_model.safetensors").is_file()
            && last.join("optimizer.safetensors").is_file()
    );
    for p in [
        "loss.svg",
        "eval_accuracy.svg",
        "pool_scores.svg",
        "pool_distribution.svg",
    ] {
        assert!(run.join("plots").join(p).is_file(), "{p}");
    }
    let dist = std::fs::read_to_string(run.join("plots/pool_distribution.svg")).unwrap();
    assert!(
        dist.contains("before round 1") && dist.contains("before round 2"),
        "one polygon per round"
    );
    assert_eq!(Config::load(&run.join("config.toml"), &[]).unwrap(), cfg);

    // A second run into the same directory is refused rather than mixed in.
    let e = edco::trainer::run(&cfg, None, false).unwrap_err();
    assert!(format!("{e:#}").contains("already holds a run"));
}

fn ids(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

/// The ids of a scores file ordered by score (highest first when `descending`), ties by line,
/// the first `n` of them.
fn top_ids(path: &Path, n: usize, descending: bool) -> Vec<String> {
    let mut by_score: Vec<(f64, usize, String)> = lines(path)
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let s = l["score"].as_f64().unwrap();
            (
                if descending { -s } else { s },
                k,
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_score.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    by_score.into_iter().take(n).map(|x| x.2).collect()
}

/// The static orders and random selection pick what they claim, end to end through
/// `edco train`: `length` the shortest prompts by token count, `perplexity` the lowest reference
/// NLL (checked against scoring the pool directly with the untrained model), `entropy` the
/// highest scores of its single scoring pass, each round the next 4 of the same order; `random`
/// 4 distinct items per round, drawn anew.
#[test]
fn static_and_random_strategies_select_what_they_claim() {
    use edco::config::Strategy;
    let model = fixture_with_tokenizer("tiny-qwen3");
    let loaded = edco::model::io::load(
        model.path().to_str().unwrap(),
        &edco::model::io::LoadOptions::default(),
    )
    .unwrap();
    let run_with = |strategy: Strategy, dir: &Path| {
        let mut cfg = config(model.path(), dir, "");
        cfg.curriculum.strategy = strategy;
        cfg.data.eval = Default::default();
        edco::trainer::run(&cfg, None, false).unwrap()
    };
    let pool = |dir: &Path| -> Vec<edco::data::Sample> {
        edco::data::load_jsonl(&dir.join("train.jsonl"), &Default::default())
            .unwrap()
            .samples
    };
    let rounds = |run: &Path| {
        (
            ids(&run.join("curriculum/round_001.jsonl")),
            ids(&run.join("curriculum/round_002.jsonl")),
        )
    };

    let dir = tempfile::tempdir().unwrap();
    let run = run_with(Strategy::Length, dir.path());
    let mut by_length: Vec<(usize, usize, String)> = pool(dir.path())
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = loaded
                .tokenizer
                .encode_chat(&s.messages, &Default::default())
                .unwrap()
                .len();
            (n, i, s.id.clone())
        })
        .collect();
    by_length.sort();
    let order: Vec<String> = by_length.into_iter().map(|x| x.2).collect();
    assert_eq!(rounds(&run), (order[..4].to_vec(), order[4..8].to_vec()));

    let dir = tempfile::tempdir().unwrap();
    let run = run_with(Strategy::Perplexity, dir.path());
    let scores = dir.path().join("run/scores/round_001.jsonl");
    assert!(!dir.path().join("run/scores/round_002.jsonl").exists());
    let order = top_ids(&scores, 8, false);
    assert_eq!(rounds(&run), (order[..4].to_vec(), order[4..8].to_vec()));
    let direct = edco::perplexity::score(
        &loaded.model,
        &loaded.tokenizer,
        &pool(dir.path()),
        &Default::default(),
        256,
        16,
    )
    .unwrap();
    for (line, d) in lines(&scores).iter().zip(&direct) {
        assert_eq!(line["id"].as_str().unwrap(), d.id);
        let s = line["score"].as_f64().unwrap();
        assert!((s - d.nll).abs() < 1e-4, "{}: {s} vs {}", d.id, d.nll);
    }

    let dir = tempfile::tempdir().unwrap();
    let run = run_with(Strategy::Entropy, dir.path());
    assert!(!dir.path().join("run/scores/round_002.jsonl").exists());
    let order = top_ids(&dir.path().join("run/scores/round_001.jsonl"), 8, true);
    assert_eq!(rounds(&run), (order[..4].to_vec(), order[4..8].to_vec()));

    let dir = tempfile::tempdir().unwrap();
    let run = run_with(Strategy::Random, dir.path());
    let (r1, r2) = rounds(&run);
    for r in [&r1, &r2] {
        let mut distinct = r.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{r:?}");
    }
    assert_ne!(r1, r2);
    assert!(
        !dir.path()
            .join("run/scores")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
}

/// The options that change how training runs take effect: gradient accumulation halves the
/// optimizer steps, keep_last prunes old checkpoints, and keeping the AdamW moments across rounds
/// (reset_optimizer = false) changes round 2 but not round 1.
#[test]
fn accumulation_pruning_and_optimizer_carry_over_take_effect() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let run_with = |reset: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(model.path(), dir.path(), "");
        cfg.data.eval = Default::default();
        cfg.sft.grad_accum = 2;
        cfg.sft.batch_size = 1;
        cfg.sft.reset_optimizer = reset;
        cfg.run.keep_last = 1;
        let run = edco::trainer::run(&cfg, None, false).unwrap();
        let losses: Vec<(u64, f64)> = lines(&run.join("metrics.jsonl"))
            .iter()
            .filter(|l| l["kind"] == "step")
            .map(|l| (l["round"].as_u64().unwrap(), l["loss"].as_f64().unwrap()))
            .collect();
        let ckpts = edco::checkpoint::list(&run).unwrap();
        (dir, losses, ckpts.len(), adapter_bytes(&run))
    };
    let (_a, reset, kept, reset_weights) = run_with(true);
    let (_b, carried, _, carried_weights) = run_with(false);
    // 4 picks per round in micro-batches of 1, two per optimizer step: 2 steps per round.
    assert_eq!(
        reset.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![1, 1, 2, 2]
    );
    assert_eq!(kept, 1);
    assert_eq!(reset[..2], carried[..2]);
    assert_ne!(reset[2..], carried[2..]);
    assert_ne!(reset_weights, carried_weights);
}

/// SFT and GRPO each run two rounds end to end on the project's own demo data (300 medicine, law
/// and telecom items, multiple choice and short answer), scoring the whole pool each round.
#[test]
fn sft_and_grpo_run_two_rounds_on_the_shipped_data() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for method in [edco::config::Method::Sft, edco::config::Method::Grpo] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(model.path(), dir.path(), "");
        cfg.method = method;
        cfg.data.train = data.join("demo_train.jsonl");
        cfg.data.eval = data.join("demo_eval.jsonl");
        cfg.data.max_length = 160;
        cfg.entropy.batch_size = 64;
        cfg.curriculum.select_n = 8;
        cfg.eval.max_samples = 12;
        cfg.grpo.steps_per_round = 1;
        cfg.grpo.prompts_per_step = 2;
        cfg.grpo.num_generations = 2;
        cfg.grpo.max_completion_length = 4;
        let run = edco::trainer::run(&cfg, None, false).unwrap();
        let m = lines(&run.join("metrics.jsonl"));
        let rounds: Vec<&serde_json::Value> = m.iter().filter(|l| l["kind"] == "round").collect();
        assert_eq!(rounds.len(), 2, "{method:?}");
        for r in rounds {
            assert_eq!(r["selected"], 8);
            assert_eq!(r["pool_scores"]["count"], 300);
            assert_eq!(r["eval"]["samples"], 12);
        }
        for round in ["round_001", "round_002"] {
            assert_eq!(
                ids(&run.join(format!("curriculum/{round}.jsonl"))),
                top_ids(&run.join(format!("scores/{round}.jsonl")), 8, true),
                "{method:?} {round}"
            );
        }
        assert_eq!(edco::checkpoint::list(&run).unwrap().len(), 2);
    }
}

#[test]
fn one_small_set_overfits_with_full_fine_tuning() {
    let model = fixture_with_tokenizer("tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let extra = "";
    let mut cfg = config(model.path(), dir.path(), extra);
    cfg.model.finetune = edco::config::Finetune::Full;
    cfg.curriculum.strategy = edco::config::Strategy::Random;
    cfg.curriculum.rounds = 1;
    cfg.sft.epochs_per_round = 25;
    cfg.sft.batch_size = 4;
    cfg.sft.schedule = edco::config::Schedule::Constant;
    cfg.sft.weight_decay = 0.0;
    cfg.eval.generate = false;
    let run = edco::trainer::run(&cfg, None, false).unwrap();
    let steps: Vec<f64> = lines(&run.join("metrics.jsonl"))
        .iter()
        .filter(|l| l["kind"] == "step")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(steps.len(), 25);
    let (first, last) = (steps[0], *steps.last().unwrap());
    assert!(last < 0.3 * first, "loss {first} -> {last}");
}

fn adapter_bytes(run: &Path) -> Vec<u8> {
    let last = edco::checkpoint::list(run).unwrap().pop().unwrap();
    std::fs::read(last.join("adapter/adapter_model.safetensors")).unwrap()
}

/// The trained weights of the last checkpoint: the adapter, or the full model.
fn weights_bytes(run: &Path) -> Vec<u8> {
    let last = edco::checkpoint::list(run).unwrap().pop().unwrap();
    let adapter = last.join("adapter/adapter_model.safetensors");
    std::fs::read(if adapter.exists() {
        adapter
    } else {
        last.join("model/model.safetensors")
    })
    .unwrap()
}

/// A GRPO run of `steps` steps a round, 2 prompts x `generations` completions of up to `length`
/// tokens, lr 1e-3, no generation in eval.
fn grpo_config(model: &Path, dir: &Path, extra: &str, generations: usize, length: usize) -> Config {
    let mut cfg = config(model, dir, extra);
    cfg.method = edco::config::Method::Grpo;
    cfg.grpo.steps_per_round = 2;
    cfg.grpo.prompts_per_step = 2;
    cfg.grpo.num_generations = generations;
    cfg.grpo.max_completion_length = length;
    cfg.grpo.learning_rate = 1e-3;
    cfg.eval.generate = false;
    cfg
}

/// Runs `cfg` (checkpointing every step) to the end, then again from its checkpoint in the middle
/// of round 2, as if it had died there; the final weights and metrics must agree.
fn assert_resume_matches(cfg: &Config) {
    let run = edco::trainer::run(cfg, None, false).unwrap();
    let all = edco::checkpoint::list(&run).unwrap();
    // Round 2's first step is checkpointed mid-round: steps 1, 2 (end of round 1), 3, 4 (end).
    assert_eq!(all.len(), 4);
    let expected = weights_bytes(&run);
    let expected_metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();

    // Interrupt: keep only the checkpoints up to the middle of round 2, as if it died there.
    for later in &all[3..] {
        std::fs::remove_dir_all(later).unwrap();
    }
    edco::trainer::run(cfg, Some(&run), false).unwrap();
    assert_eq!(
        weights_bytes(&run),
        expected,
        "final weights differ after resume"
    );
    let resumed_metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let strip = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for k in [
                    "seconds",
                    "tokens_per_second",
                    "score_seconds",
                    "train_seconds",
                ] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v["eval"].as_object_mut().map(|e| e.remove("seconds"));
                v
            })
            .collect()
    };
    assert_eq!(strip(&resumed_metrics), strip(&expected_metrics));
}

#[test]
fn a_run_resumed_mid_round_ends_where_the_uninterrupted_one_does() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let extra = "checkpoint_every_steps = 1\nkeep_last = 100";
    // LoRA SFT with the edco curriculum.
    let dir = tempfile::tempdir().unwrap();
    assert_resume_matches(&config(model.path(), dir.path(), extra));
    // Full fine-tuning.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(model.path(), dir.path(), extra);
    cfg.model.finetune = edco::config::Finetune::Full;
    cfg.eval.generate = false;
    assert_resume_matches(&cfg);
    // GRPO (LoRA): sampled rollouts, two updates per rollout batch.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = grpo_config(model.path(), dir.path(), extra, 3, 5);
    cfg.grpo.num_iterations = 2;
    assert_resume_matches(&cfg);
}

#[test]
fn grpo_rolls_out_rewards_and_updates_adapters() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = grpo_config(model.path(), dir.path(), "", 4, 6);
    cfg.grpo.min_learning_rate = 1e-3;
    let run = edco::trainer::run(&cfg, None, false).unwrap();
    let steps: Vec<serde_json::Value> = lines(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|l| l["kind"] == "step")
        .collect();
    assert_eq!(steps.len(), 4);
    for s in &steps {
        for k in [
            "reward_mean",
            "reward_std",
            "zero_std_fraction",
            "kl",
            "clip_fraction",
            "completion_length",
            "entropy",
        ] {
            assert!(s[k].is_number(), "{k} missing in {s}");
        }
        assert!(s["completion_length"].as_f64().unwrap() <= 6.0);
    }
    // LoRA starts at the base: the first step's KL to the reference is zero.
    assert!(steps[0]["kl"].as_f64().unwrap().abs() < 1e-6);
    assert!(run.join("plots/reward.svg").is_file());
}

#[test]
fn dry_run_prints_the_plan_without_touching_the_output_dir() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(model.path(), dir.path(), "");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &text).unwrap();
    let o = edco_under(
        "true",
        &[
            "train",
            "--config",
            path.to_str().unwrap(),
            "--dry-run",
            "--set",
            "sft.grad_accum=2",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The resolved config (defaults included, the override applied) parses back to what a load
    // gives, and the plan follows it: 4 of 16 per round, batches of 2 x 2 = one step per round.
    let resolved = Config::from_toml(&out, &[]).unwrap();
    assert_eq!(
        resolved,
        Config::from_toml(&text, &["sft.grad_accum=2".into()]).unwrap()
    );
    assert!(
        out.contains(
            "# plan: 2 rounds of 4 samples from a pool of 16 (edco curriculum, sft), 1 optimizer \
             steps per round (2 in all), 4 sequences per step"
        ),
        "{out}"
    );
    assert!(out.contains("# eval: 6 held-out samples"), "{out}");
    assert!(!dir.path().join("run").exists());
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_keeps_its_checkpoint() {
    let model = fixture_with_tokenizer("tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(model.path(), dir.path(), "");
    cfg.model.finetune = edco::config::Finetune::Full;
    cfg.curriculum.strategy = edco::config::Strategy::Random;
    cfg.eval.generate = false;
    // Round 1 trains sanely and checkpoints; round 2 gets an absurd learning rate.
    let run = edco::trainer::run(&cfg, None, false).unwrap();
    let before = edco::checkpoint::list(&run).unwrap();
    let first = before[0].clone();
    std::fs::remove_dir_all(&before[1]).unwrap();
    let mut wild = cfg.clone();
    // An absurd rate turns the weights into huge values, inf and NaN: round 2's loss or its
    // evaluation is not finite.
    wild.sft.learning_rate = 1e30;
    wild.sft.min_learning_rate = 1e30;
    wild.sft.max_grad_norm = 0.0;
    let e = edco::trainer::run(&wild, Some(&run), false).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("(round 2)")
            && msg.contains("the run diverged, stopping")
            && msg.contains(&first.display().to_string()),
        "{msg}"
    );
    assert_eq!(edco::checkpoint::list(&run).unwrap(), vec![first]);

    // Diverging before the first checkpoint: the message says so, a plain rerun is refused, and
    // --resume starts the run again from the beginning (with a sane rate here).
    let fresh = tempfile::tempdir().unwrap();
    let mut wild = config(model.path(), fresh.path(), "");
    wild.model.finetune = edco::config::Finetune::Full;
    wild.eval.generate = false;
    wild.sft.learning_rate = 1e30;
    wild.sft.min_learning_rate = 1e30;
    wild.sft.max_grad_norm = 0.0;
    let msg = format!("{:#}", edco::trainer::run(&wild, None, false).unwrap_err());
    assert!(
        msg.contains("(round 1)")
            && msg.contains("the run diverged, stopping")
            && msg.contains("There is no checkpoint yet; start again with --resume"),
        "{msg}"
    );
    let again = edco::trainer::run(&wild, None, false).unwrap_err();
    assert!(
        format!("{again:#}").contains("stopped before its first checkpoint"),
        "{again:#}"
    );
    let mut sane = wild.clone();
    sane.sft = cfg.sft.clone();
    let run = edco::trainer::run(&sane, Some(&wild.run.output_dir), false).unwrap();
    let kinds: Vec<String> = lines(&run.join("metrics.jsonl"))
        .iter()
        .map(|l| l["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "round").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds[0], "eval",
        "the failed attempt's lines are gone: {kinds:?}"
    );
}

#[test]
fn a_selection_larger_than_the_pool_is_refused() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(model.path(), dir.path(), "");
    cfg.curriculum.select_n = 17;
    let e = edco::trainer::run(&cfg, None, false).unwrap_err();
    assert!(
        format!("{e:#}").contains("`curriculum.select_n` = 17 exceeds the 16 samples"),
        "{e:#}"
    );
    let e = Config::from_toml(
        "[model]\nsource = \"m\"\n[data]\ntrain = \"t\"\n[sft]\nbatch_size = 0\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("batch_size"), "{e:#}");
    let e = Config::from_toml(
        "[model]\nsource = \"m\"\n[data]\ntrain = \"t\"\n[sft]\nbatch_size = -2\n",
        &[],
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("batch_size"), "{e:#}");
}

/// GRPO learns a task a tiny random model can learn: open the reply with a lowercase ASCII
/// letter. The reward is a plain function of the completion (the pluggable reward hook); at the
/// start 26 of the 259 byte tokens earn it, so groups of 8 usually disagree and carry a signal.
/// With this seed the reward per step goes from about 0.1 to 1.0 within 15 steps.
#[test]
fn grpo_raises_reward_on_a_toy_task() {
    use candle_core::{DType, Device};
    use edco::model::generate::Prompt;
    use edco::model::io::safetensors::WeightSource;
    use edco::model::sampling::Sampling;
    use edco::model::{Decoder, Trainable, config::ModelConfig};
    use edco::trainer::grpo::{GrpoParams, rollout, train_on};
    use edco::trainer::optim::{AdamW, AdamWParams};

    let dir = common::tiny_model(edco::model::config::Arch::Qwen3, true, 11);
    let model_dir = dir.path().join("model");
    let cfg = ModelConfig::from_file(&model_dir.join("config.json")).unwrap();
    let weights = WeightSource::from_hf_dir(&model_dir).unwrap();
    let load = |trainable| {
        Decoder::new(
            cfg.clone(),
            &weights,
            DType::F32,
            &Device::Cpu,
            trainable,
            1,
        )
        .unwrap()
    };
    // Full fine-tuning: LoRA cannot move this random model's output norm or its tied head
    // enough to concentrate mass on 26 random embeddings. The KL reference is a frozen copy.
    let (model, reference) = (load(Trainable::Full), load(Trainable::Frozen));
    let tok = edco::tokenizer::Tokenizer::from_dir(&model_dir).unwrap();
    let prompts: Vec<Vec<u32>> = ["Say a letter:", "Next one?", "Pick: ", "1 2 3"]
        .iter()
        .map(|p| tok.encode(p, false).unwrap())
        .collect();
    let p = GrpoParams {
        num_generations: 8,
        max_new_tokens: 2,
        sampling: Sampling::new(false, 1.0, 1.0, 0),
        epsilon: 0.2,
        epsilon_high: 0.28,
        beta: 0.01,
        scale_rewards: true,
        num_iterations: 1,
        micro_batch: 32,
        max_grad_norm: 1.0,
        pad_id: tok.pad_id(),
    };
    let adam = |m: &Decoder| {
        AdamW::new(
            m.vars().to_vec(),
            AdamWParams {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )
        .unwrap()
    };
    let mut opt = adam(&model);
    let mut reward = |_: usize, completion: &[u32]| -> anyhow::Result<f64> {
        let first = completion
            .first()
            .map(|&t| tok.decode(&[t], false))
            .transpose()?;
        let hit = first.is_some_and(|s| s.len() == 1 && s.as_bytes()[0].is_ascii_lowercase());
        Ok(if hit { 1.0 } else { 0.0 })
    };
    let mut means = Vec::new();
    for step in 0..30u64 {
        let batch: Vec<Prompt> = prompts
            .iter()
            .enumerate()
            .map(|(i, ids)| Prompt {
                ids: ids.clone(),
                seed: step * 100 + i as u64,
            })
            .collect();
        let rollouts = rollout(&model, &batch, &[], &p, &mut reward).unwrap();
        for r in &rollouts {
            let mean = r.advantages.iter().sum::<f64>() / r.advantages.len() as f64;
            assert!(mean.abs() < 1e-9, "group advantages must have zero mean");
        }
        let stats = train_on(
            &model,
            Some(&reference),
            &mut opt,
            &rollouts,
            1e-2,
            &p,
            step,
        )
        .unwrap();
        means.push(stats.reward_mean);
    }
    // With several updates per rollout batch, the later updates move the ratio away from 1;
    // their clipping shows in the step's (mean) clip fraction.
    let batch: Vec<Prompt> = prompts
        .iter()
        .map(|ids| Prompt {
            ids: ids.clone(),
            seed: 7,
        })
        .collect();
    let probe = load(Trainable::Full);
    let mut probe_opt = adam(&probe);
    let rollouts = rollout(&probe, &batch, &[], &p, &mut reward).unwrap();
    let several = GrpoParams {
        num_iterations: 4,
        epsilon: 0.01,
        epsilon_high: 0.01,
        ..p
    };
    let stats = train_on(
        &probe,
        Some(&reference),
        &mut probe_opt,
        &rollouts,
        1e-2,
        &several,
        99,
    )
    .unwrap();
    assert!(stats.clip_fraction > 0.0, "{stats:?}");
    let first: f64 = means[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = means[25..].iter().sum::<f64>() / 5.0;
    assert!(
        first < 0.3 && last > 0.9,
        "reward per step should rise from about 0.1 to near 1: {means:?}"
    );
}

/// Bad settings stop the run before anything is written, naming the key (and the line for
/// type errors).
#[test]
fn bad_settings_are_refused_by_name() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(model.path(), dir.path(), "");
    let cases = [
        ("batch_size = 2", "batch_size = 0", "sft.batch_size"),
        ("rounds = 2", "rounds = 0", "curriculum.rounds"),
        ("rounds = 2", "rounds = -1", "line"),
        (
            "learning_rate = 1e-3",
            "learning_rate = -1e-3",
            "sft.learning_rate",
        ),
        (
            "prefix_tokens = 6",
            "prefix_tokens = 0",
            "entropy.prefix_tokens",
        ),
        (
            "select_fraction = 0.25",
            "select_fraction = 1.5",
            "curriculum.select_fraction",
        ),
        ("max_length = 256", "max_length = \"long\"", "line"),
        (
            "max_length = 256",
            "max_length = 256\nmax_prompt_length = 256",
            "data.max_prompt_length",
        ),
        (
            "max_length = 256",
            "max_length = 256\nmax_response_length = 300",
            "data.max_response_length",
        ),
        (
            "max_length = 256",
            "max_length = 256\nformat = \"csv\"",
            "format",
        ),
        (
            "max_length = 256",
            "max_length = 256\nmcq_template = \"{{ question \"",
            "data.mcq_template",
        ),
        (
            "max_length = 256",
            "max_length = 256\nqa_template = \"{{ query }}\"",
            "data.qa_template",
        ),
        (
            "seed = 3",
            "seed = 3\nlog_level = \"loud\"",
            "run.log_level",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(text.contains(from), "{from}");
        let e = Config::from_toml(&text.replace(from, to), &[]).err();
        let msg = format!("{:#}", e.unwrap_or_else(|| panic!("{to} was accepted")));
        assert!(msg.contains(expected), "{to}: {msg}");
    }
    let mut cfg = config(model.path(), dir.path(), "");
    cfg.data.eval = dir.path().join("missing.jsonl");
    let msg = format!("{:#}", edco::trainer::run(&cfg, None, false).unwrap_err());
    assert!(msg.contains("missing.jsonl"), "{msg}");
    assert!(!dir.path().join("run").exists());
}

/// The `[data]` settings reach what the model sees, and `run.log_level` what the run prints: a
/// prompt cap cuts every default-template prompt and none of a terse template's, a named format
/// refuses the other shapes by file, line and field, and `info` shows the checkpoints.
#[test]
fn data_settings_and_the_log_level_apply() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(model.path(), dir.path(), "").replace("rounds = 2", "rounds = 1");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    let train = |out: &str, sets: &[&str]| {
        let mut args = vec!["train", "--config", cfg.to_str().unwrap(), "--set"];
        let out = format!("run.output_dir={}", dir.path().join(out).display());
        args.push(&out);
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = edco_under("true", &args);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        (o.status.success(), stderr)
    };
    let (ok, stderr) = train("default", &["data.max_prompt_length=100"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("16 of 16 prompts were cut from the left to fit 100 tokens"),
        "{stderr}"
    );
    assert!(!stderr.contains("INFO"), "{stderr}");
    let (ok, stderr) = train(
        "terse",
        &[
            "data.max_prompt_length=100",
            "data.mcq_template=\"{{ question }}\"",
            "run.log_level=info",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("prompts were cut"), "{stderr}");
    assert!(
        stderr.contains("INFO") && stderr.contains("checkpoint written to"),
        "{stderr}"
    );
    let (ok, stderr) = train("chat", &["data.format=chat"]);
    assert!(!ok);
    assert!(
        stderr.contains("train.jsonl:1") && stderr.contains("field `messages` is missing"),
        "{stderr}"
    );
}

/// Runs the `edco` binary with a shell prelude (to limit the file size, say).
pub(crate) fn edco_under(prelude: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("{prelude}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_edco"))
        .args(args)
        .output()
        .unwrap()
}

/// An output directory that cannot be created, and a disk that fills up while the first
/// checkpoint is written (simulated with a file-size limit, whose signal is ignored so writes
/// fail the way they do on a full disk): both stop the run with an error naming the path, and
/// leave no half-written file or checkpoint behind.
#[test]
fn an_unwritable_output_dir_or_a_full_disk_stops_cleanly() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(model.path(), dir.path(), "").replace("\"lora\"", "\"full\"");
    let run = dir.path().join("run");
    std::fs::write(dir.path().join("blocker"), "a file, not a directory").unwrap();
    let blocked = dir.path().join("blocker/run");
    let cfg = dir.path().join("blocked.toml");
    std::fs::write(
        &cfg,
        text.replace(&run.display().to_string(), &blocked.display().to_string()),
    )
    .unwrap();
    let o = edco_under("true", &["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&blocked.display().to_string()) && !err.contains("panicked"),
        "{err}"
    );

    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, &text).unwrap();
    // 64 KiB: enough for the config, metrics and curriculum files, not for the weights.
    let o = edco_under(
        "trap '' XFSZ; ulimit -f 64",
        &["train", "--config", cfg.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("saving checkpoint")
            && err.contains("File too large")
            && !err.contains("panicked"),
        "{err}"
    );
    assert!(edco::checkpoint::list(&run).unwrap().is_empty());
    let mut left = vec![];
    let mut stack = vec![run.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            left.push(p.strip_prefix(&run).unwrap().display().to_string());
        }
    }
    assert!(
        left.iter()
            .all(|p| !p.contains(".tmp") && !p.contains(".partial")),
        "{left:?}"
    );
    assert!(run.join("metrics.jsonl").is_file(), "{left:?}");
    // The directory is not a dead end: a plain rerun is refused by name, --resume starts it
    // again (there is no checkpoint to resume from) and, with room on the disk, completes.
    let o = edco_under("true", &["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("stopped before its first checkpoint"),
        "{err}"
    );
    let o = edco_under("true", &["train", "--resume", run.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("the run starts again from the beginning"),
        "{err}"
    );
    assert_eq!(edco::checkpoint::list(&run).unwrap().len(), 2);
}
