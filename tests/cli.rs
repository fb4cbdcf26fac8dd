//! The commands as a user runs them: init-model, generate and perplexity on a tiny model, and a
//! bad data line reported with its file and line, with a non-zero exit and no panic.

use std::process::Command;

fn edco(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edco"))
        .args(args)
        .output()
        .unwrap()
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
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&scores)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
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
