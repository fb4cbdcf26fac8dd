//! The commands as a user runs them: init-model, generate, perplexity and estimate-entropy on a
//! tiny model, and bad data reported with its file, line and field, with a non-zero exit, no
//! panic, and earlier output left as it was.

use crate::common;

use std::process::Command;

fn edco(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edco"))
        .args(args)
        .output()
        .unwrap()
}

/// One JSON value per line of `text`.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn init_generate_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let model = model.to_str().unwrap();
    let out = edco(&[
        "init-model",
        "--arch",
        "llama",
        "--out",
        model,
        "--layers",
        "1",
        "--seed",
        "4",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = edco(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "hello",
        "--prompt",
        "a longer prompt here",
        "--max-new-tokens",
        "5",
        "--jsonl",
        "--seed",
        "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let n = l["tokens"].as_u64().unwrap() as usize;
        assert!((1..=5).contains(&n));
        assert_eq!(l["entropies"].as_array().unwrap().len(), n);
    }

    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, "{\"id\":\"q1\",\"prompt\":\"p\",\"completion\":\"c\"}\n{\"question\":\"Q\",\"options\":{\"A\":\"a\",\"B\":\"b\"},\"answer\":\"A\"}\n").unwrap();
    let scores = dir.path().join("s.jsonl");
    let out = edco(&[
        "perplexity",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
        "--out",
        scores.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&std::fs::read_to_string(&scores).unwrap());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "q1");
    assert_eq!(lines[1]["id"], "line-2");
    // A random byte-level model is close to uniform over its 259 tokens.
    let nll = lines[0]["nll"].as_f64().unwrap();
    assert!((nll - 259f64.ln()).abs() < 0.5, "{nll}");

    std::fs::write(&data, "{\"prompt\":\"p\",\"completion\":\"c\"}\nnot json\n").unwrap();
    let out = edco(&[
        "perplexity",
        "--model",
        model,
        "--data",
        data.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("d.jsonl:2") && err.contains("not valid JSON") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn estimate_entropy_writes_scores_summary_and_pictures() {
    let model = common::fixture_with_tokenizer("tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pool.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| serde_json::json!({"id": format!("q{i}"), "question": format!("Question {i}?"), "options": {"A": "yes", "B": "no"}, "answer": "A"}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("audit/scores.jsonl");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "estimate-entropy",
            "--model",
            model.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--prefix-tokens",
            "4",
            "--max-tokens",
            "12",
            "--seed",
            "5",
            "--force",
        ];
        args.extend_from_slice(extra);
        let o = edco(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        json_lines(&std::fs::read_to_string(&out).unwrap())
    };
    let nats = run(&["--compare-full", "--per-token"]);
    assert_eq!(nats.len(), 12);
    assert!(
        nats.iter().all(
            |l| l["full_score"].is_number() && l["entropies"][0].as_array().unwrap().len() <= 4
        )
    );
    for f in [
        "scores.hist.svg",
        "scores.scatter.svg",
        "scores.summary.json",
    ] {
        assert!(dir.path().join("audit").join(f).is_file(), "{f}");
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("audit/scores.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["agreement"]["top_n"], 3);
    assert!(summary["agreement"]["spearman_rho"].as_f64().unwrap() <= 1.0);
    assert_eq!(summary["scores"]["count"], 12);

    let bits = run(&["--bits"]);
    for (n, b) in nats.iter().zip(&bits) {
        let (n, b) = (n["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!(
            (n / std::f64::consts::LN_2 - b).abs() < 1e-5,
            "{n} nats vs {b} bits"
        );
    }
}

#[test]
fn estimate_entropy_rejects_bad_data_and_keeps_earlier_scores() {
    let model = common::fixture_with_tokenizer("tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pool.jsonl");
    let out = dir.path().join("scores.jsonl");
    std::fs::write(&out, "earlier scores\n").unwrap();
    let cases = [
        ("", "no samples to score"),
        ("\n  \n", "no samples to score"),
        (
            "{\"prompt\":\"p\"}\n{\"prompt\":\n",
            "pool.jsonl:2: not valid JSON",
        ),
        (
            "{\"id\":\"a\",\"completion\":\"c\"}\n",
            "unrecognised record",
        ),
        (
            "{\"question\":\"q\",\"options\":{\"A\":\"x\",\"B\":\"y\"}}\n",
            "field `answer` is missing",
        ),
        (
            "{\"prompt\":\"p\"}\n{\"question\":\"q\",\"options\":{\"A\":\"x\",\"B\":\"y\"},\"answer\":\"E\"}\n",
            "pool.jsonl:2: field `answer`: `E` is not one of the options",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&data, text).unwrap();
        let o = edco(&[
            "estimate-entropy",
            "--model",
            model.path().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--prefix-tokens",
            "2",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{text:?} was accepted");
        assert!(
            err.contains(expected) && !err.contains("panicked"),
            "{text:?}: {err}"
        );
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier scores\n");
    }
}

/// `check-device` on the CPU: f32 is the reference's own path (no difference at all), bf16
/// differs but within its tolerance on a tiny model, and a speed line reports positive rates;
/// the CUDA flag on a CPU-only build is an error naming the device.
#[test]
fn check_device_compares_logits_and_reports_speed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let model = model.to_str().unwrap();
    let out = edco(&["init-model", "--out", model, "--seed", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = edco(&[
        "check-device",
        "--model",
        model,
        "--device",
        "cpu",
        "--speed",
        "f32",
        "--speed-batch",
        "2",
        "--speed-seq-len",
        "16",
        "--matmul-size",
        "128",
        "--reps",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (f32_check, bf16_check) = (&lines[0]["result"], &lines[1]["result"]);
    assert_eq!(f32_check["dtype"], "float32");
    assert_eq!(f32_check["relative_error"], 0.0);
    assert_eq!(bf16_check["dtype"], "bfloat16");
    let e = bf16_check["relative_error"].as_f64().unwrap();
    assert!(
        e > 0.0 && e <= 1e-2 && bf16_check["pass"] == true,
        "{bf16_check}"
    );
    let speed = &lines[2]["result"];
    for key in [
        "matmul_tflops",
        "forward_tokens_per_s",
        "train_tokens_per_s",
        "train_mfu",
    ] {
        assert!(speed[key].as_f64().unwrap() > 0.0, "{key}: {speed}");
    }

    if !cfg!(feature = "cuda") {
        let out = edco(&["check-device", "--model", model, "--device", "cuda"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("opening CUDA device 0") && !err.contains("panicked"),
            "{err}"
        );
    }
}

/// A flag that names a config setting is refused as the config refuses its key, with the same
/// message naming the flag, before any file is read: the command line and the config go
/// through the same checks.
#[test]
fn flags_are_refused_as_the_config_refuses_their_keys() {
    let score = [
        "estimate-entropy",
        "--model",
        "m",
        "--data",
        "missing.jsonl",
    ];
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["--prefix-tokens", "0"],
            "entropy.prefix_tokens=0",
            "must be positive, got 0",
        ),
        (
            &["--max-tokens", "0"],
            "entropy.max_tokens=0",
            "must be positive, got 0",
        ),
        (
            &["--top-p", "2"],
            "entropy.top_p=2",
            "must be in (0, 1], got 2",
        ),
        (
            &["--samples", "0"],
            "entropy.samples_per_prompt=0",
            "must be positive, got 0",
        ),
        (
            &["--dtype", "f16"],
            "model.dtype=f16",
            "expected f32 or bf16, got `f16`",
        ),
    ];
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/smoke.toml");
    for (flags, key, why) in cases {
        let flag = flags[0].trim_start_matches("--");
        let out = edco(&[&score[..], flags].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !err.contains("panicked"),
            "{flags:?}: {err}"
        );
        assert!(
            err.contains(&format!("`--{flag}`: {why}")),
            "{flags:?}: {err}"
        );
        let out = edco(&["train", "--config", config, "--set", key, "--dry-run"]);
        let err = String::from_utf8_lossy(&out.stderr);
        let name = key.split('=').next().unwrap();
        assert!(
            !out.status.success() && err.contains(&format!("`{name}`: {why}")),
            "{key}: {err}"
        );
    }
    let out = edco(&["generate", "--model", "m", "--prompt", "hi", "--top-p", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`--top-p`: must be in (0, 1], got 2"), "{err}");
}
