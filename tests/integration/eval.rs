//! Evaluation's figures are what they claim: on a tiny model whose answers are worked out here
//! one prompt at a time (greedy replies, the option letter it rates most likely), eval items are
//! given answers so that a known number are right, and the batched evaluator must report
//! exactly that accuracy, by generation and by option likelihood, and the held-out loss must be
//! the token-weighted mean NLL of the references.

use crate::common;

use candle_core::{D, DType, IndexOp};
use common::fixture_with_tokenizer;
use edco::config::EvalSection;
use edco::data::tokenize::Lengths;
use edco::data::{Sample, parse_record};
use edco::model::Batch;
use edco::model::generate::{GenerateOptions, Prompt, generate};
use edco::model::io::{LoadOptions, load};
use edco::model::layers::Mode;
use edco::model::sampling::Sampling;
use edco::reward::Rule;
use edco::trainer::eval::Evaluator;

#[test]
fn eval_accuracy_and_loss_match_answers_worked_out_one_by_one() {
    let model = fixture_with_tokenizer("tiny-qwen3");
    let m = load(model.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
    let (tok, dec) = (&m.tokenizer, &m.model);
    let args = serde_json::Map::new();
    let items: Vec<Sample> = (0..9)
        .map(|i| {
            let q = format!(
                r#"{{"id":"q{i}","question":"Item {i}{}: pick one.","options":{{"A":"red","B":"green","C":"blue"}},"answer":"A"}}"#,
                "?".repeat(i % 4)
            );
            parse_record(&q, i + 1).unwrap()
        })
        .collect();
    let one_by_one = |s: &Sample| {
        let ids = tok.encode_chat(&s.messages, &args).unwrap();
        let opts = GenerateOptions {
            max_new_tokens: 4,
            sampling: Sampling::Greedy,
            eos_token_ids: m.eos_token_ids.clone(),
            pad_id: tok.pad_id(),
            keep_log_probs: false,
            keep_first_log_probs: false,
            samples_per_prompt: 1,
        };
        let g = generate(
            dec,
            &[Prompt {
                ids: ids.clone(),
                seed: 0,
            }],
            &opts,
        )
        .unwrap();
        let reply = tok.decode(&g[0].tokens, true).unwrap();
        let batch =
            Batch::left_padded(std::slice::from_ref(&ids), tok.pad_id(), dec.device()).unwrap();
        let hidden = dec.hidden_states(&batch, Mode::Eval).unwrap();
        let logits = dec
            .logits(&hidden.i((.., ids.len() - 1, ..)).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let lp: Vec<f32> = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let best = ["A", "B", "C"]
            .into_iter()
            .max_by(|a, b| {
                let id = |l: &str| tok.encode(l, false).unwrap()[0] as usize;
                lp[id(a)].total_cmp(&lp[id(b)])
            })
            .unwrap();
        (reply, best.to_string())
    };
    // Items 0..5 get answers that are right (the reply itself, the preferred letter), the others
    // answers that are wrong: 5 of 9 by both measures.
    let mut by_reply = Vec::new();
    let mut by_letter = Vec::new();
    for (i, s) in items.iter().enumerate() {
        let (reply, best) = one_by_one(s);
        let right = i < 5;
        by_reply.push(Sample {
            options: None,
            answer: Some(if right {
                reply.trim().to_string()
            } else {
                format!("{}#", reply.trim())
            }),
            ..s.clone()
        });
        let wrong = ["A", "B", "C"].into_iter().find(|l| *l != best).unwrap();
        by_letter.push(Sample {
            answer: Some(if right { best } else { wrong.to_string() }),
            ..s.clone()
        });
    }
    // Non-empty replies, so that "right" cannot be an empty string matching an empty reply.
    assert!(
        by_reply
            .iter()
            .all(|s| !s.answer.as_deref().unwrap().is_empty()),
        "{by_reply:?}"
    );
    let eval = |rule: Rule| Evaluator {
        model: dec,
        tok,
        eos_token_ids: &m.eos_token_ids,
        template_args: &args,
        lengths: Lengths::total(512),
        answer_check: rule,
    };
    let cfg = EvalSection {
        max_new_tokens: 4,
        batch_size: 4,
        ..Default::default()
    };
    let r = eval(Rule::Exact).run(&by_reply, &cfg).unwrap();
    assert_eq!(r.accuracy, Some(5.0 / 9.0), "{r:?}");
    assert_eq!(r.option_accuracy, None, "no options, no option accuracy");
    let r = eval(Rule::Auto).run(&by_letter, &cfg).unwrap();
    assert_eq!(r.option_accuracy, Some(5.0 / 9.0), "{r:?}");
    // The loss: the token-weighted mean NLL of the reference responses ("A. red" + EOS, ...).
    let scores = edco::perplexity::score(dec, tok, &by_letter, &args, 512, 1).unwrap();
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    let nll: f64 = scores.iter().map(|s| s.nll * s.tokens as f64).sum::<f64>() / tokens as f64;
    let loss = r.loss.unwrap();
    assert!((loss - nll).abs() < 1e-5, "{loss} vs {nll}");
}
