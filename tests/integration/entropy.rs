//! The entropy estimator on a briefly trained tiny model: batch size does not change a score,
//! a prefix score is the first K positions of the full run under the same seed, several samples
//! average their own completions, and teacher-forced entropies follow the reference answer.

use crate::common;

use common::fixture_with_tokenizer;
use edco::data::tokenize::Lengths;
use edco::data::{Sample, parse_record};
use edco::entropy::{Aggregate, EntropyConfig, Horizon, estimate};
use edco::model::io::{LoadOptions, Loaded, load};

fn setup() -> (tempfile::TempDir, Loaded, Vec<Sample>) {
    let dir = fixture_with_tokenizer("tiny-qwen3");
    let m = load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let texts = [
        "What is 2 + 2?",
        "Name a colour.",
        "x",
        "Explain the rules of chess in detail, please.",
        "hi",
        "Which organ produces insulin?",
        "ok then",
        "abc def ghi",
        "A longer prompt that keeps going on and on.",
        "q",
        "What is the capital of France?",
        "zz",
        "Tell me a story.",
        "1 2 3 4 5 6 7 8 9",
        "yes or no?",
        "Why is the sky blue?",
        "end",
    ];
    let samples = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let line =
                serde_json::json!({"id": format!("s{i}"), "prompt": t, "completion": "Fine."})
                    .to_string();
            parse_record(&line, i + 1).unwrap()
        })
        .collect();
    (dir, m, samples)
}

fn run(m: &Loaded, samples: &[Sample], cfg: &EntropyConfig) -> Vec<edco::entropy::SampleEntropy> {
    estimate(
        &m.model,
        &m.tokenizer,
        &m.eos_token_ids,
        samples,
        cfg,
        &mut |_, _| {},
    )
    .unwrap()
}

#[test]
fn batch_size_does_not_change_scores() {
    let (_d, m, samples) = setup();
    let cfg = EntropyConfig {
        horizon: Horizon::Prefix(8),
        samples_per_prompt: 2,
        seed: 7,
        batch_size: 16,
        ..Default::default()
    };
    let big = run(&m, &samples, &cfg);
    let one = run(
        &m,
        &samples,
        &EntropyConfig {
            batch_size: 1,
            ..cfg.clone()
        },
    );
    assert_eq!(big.len(), samples.len());
    for (a, b) in big.iter().zip(&one) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.entropies.len(), 2);
        assert_eq!(
            a.entropies.iter().map(Vec::len).collect::<Vec<_>>(),
            b.entropies.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (x, y) in a
            .entropies
            .iter()
            .flatten()
            .zip(b.entropies.iter().flatten())
        {
            assert!((x - y).abs() < 1e-4, "{}: {x} vs {y}", a.id);
        }
        assert!((a.score - b.score).abs() < 1e-4);
    }
    // Scores differ across samples: the estimator is not returning a constant.
    let spread = big.iter().map(|e| e.score).fold(0f32, f32::max)
        - big.iter().map(|e| e.score).fold(f32::MAX, f32::min);
    assert!(spread > 0.05, "spread {spread}");
}

#[test]
fn prefix_scores_are_the_first_k_positions_of_the_full_run() {
    let (_d, m, samples) = setup();
    let k = 6;
    let prefix_cfg = EntropyConfig {
        horizon: Horizon::Prefix(k),
        seed: 3,
        batch_size: 5,
        ..Default::default()
    };
    let prefix = run(&m, &samples, &prefix_cfg);
    let full = run(
        &m,
        &samples,
        &EntropyConfig {
            horizon: Horizon::Full(40),
            ..prefix_cfg.clone()
        },
    );
    let mut longer = 0;
    for (p, f) in prefix.iter().zip(&full) {
        let (hp, hf) = (&p.entropies[0], &f.entropies[0]);
        assert_eq!(hp.len(), hf.len().min(k), "{}", p.id);
        for (x, y) in hp.iter().zip(hf) {
            assert!((x - y).abs() < 1e-5, "{}", p.id);
        }
        longer += usize::from(hf.len() > k);
        let expected = Aggregate::Mean.apply(hp);
        assert!((p.score - expected).abs() < 1e-6);
    }
    assert!(longer > 0, "some full answers must run past the prefix");
}

#[test]
fn samples_average_their_completions_and_top_fraction_aggregates() {
    let (_d, m, samples) = setup();
    let cfg = EntropyConfig {
        horizon: Horizon::Prefix(10),
        aggregate: Aggregate::TopFraction(0.2),
        samples_per_prompt: 3,
        seed: 11,
        ..Default::default()
    };
    for e in run(&m, &samples[..5], &cfg) {
        assert_eq!(e.entropies.len(), 3);
        let mean = e
            .entropies
            .iter()
            .map(|h| Aggregate::TopFraction(0.2).apply(h))
            .sum::<f32>()
            / 3.0;
        assert!((e.score - mean).abs() < 1e-6);
    }
}

#[test]
fn greedy_scores_do_not_depend_on_the_seed() {
    let (_d, m, samples) = setup();
    let cfg = EntropyConfig {
        horizon: Horizon::Prefix(5),
        sampling: edco::model::sampling::Sampling::Greedy,
        ..Default::default()
    };
    let a = run(
        &m,
        &samples,
        &EntropyConfig {
            seed: 1,
            ..cfg.clone()
        },
    );
    let b = run(&m, &samples, &EntropyConfig { seed: 2, ..cfg });
    assert_eq!(a, b);
}

#[test]
fn teacher_forced_scores_one_position_per_reference_token() {
    let (_d, m, samples) = setup();
    let cfg = EntropyConfig {
        horizon: Horizon::TeacherForced,
        batch_size: 4,
        ..Default::default()
    };
    let tf = run(&m, &samples, &cfg);
    // "Fine." is 5 byte tokens, plus the EOS token.
    assert!(
        tf.iter()
            .all(|e| e.entropies[0].len() == 6 && e.eos == vec![true])
    );
    let again = run(
        &m,
        &samples,
        &EntropyConfig {
            batch_size: 1,
            ..cfg
        },
    );
    for (a, b) in tf.iter().zip(&again) {
        assert!((a.score - b.score).abs() < 1e-5);
    }
}

#[test]
fn long_prompts_are_cut_and_reported() {
    let (_d, m, samples) = setup();
    let cfg = EntropyConfig {
        horizon: Horizon::Prefix(4),
        lengths: Lengths::total(40),
        ..Default::default()
    };
    let scores = run(&m, &samples, &cfg);
    // The byte-level chat prompt of "Explain the rules of chess in detail, please." plus the
    // quick-answer instruction is far longer than 40 tokens; "x" with it is too.
    let cut: Vec<&str> = scores
        .iter()
        .filter(|e| e.prompt_cut > 0)
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(
        cut.len(),
        samples.len(),
        "every prompt with the instruction exceeds 40 byte tokens"
    );
    let uncut = run(
        &m,
        &samples,
        &EntropyConfig {
            quick_answer: None,
            lengths: Lengths::total(40),
            ..cfg
        },
    );
    assert!(uncut.iter().any(|e| e.prompt_cut == 0) && uncut.iter().any(|e| e.prompt_cut > 0));
}
