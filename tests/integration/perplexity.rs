//! Teacher-forced response scoring: the batched, padded computation equals the per-sample one
//! done by hand from the logits, whatever the batch size.

use crate::common;

use candle_core::{D, Device};
use common::tiny_model;
use edco::data::parse_record;
use edco::data::tokenize::{Lengths, tokenize_pair};
use edco::model::Batch;
use edco::model::config::Arch;
use edco::model::io::{LoadOptions, load};
use edco::model::layers::Mode;
use edco::perplexity::score;

#[test]
fn batched_scores_equal_hand_computed_ones() {
    let dir = tiny_model(Arch::Llama, false, 11);
    let m = load(
        dir.path().join("model").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let samples: Vec<_> = [
        r#"{"id":"a","prompt":"Name a colour.","completion":"Blue."}"#,
        r#"{"id":"b","question":"2+2?","options":{"A":"3","B":"4"},"answer":"B"}"#,
        r#"{"id":"c","messages":[{"role":"user","content":"Hi there, how are you today?"},{"role":"assistant","content":"Fine, thanks for asking!"}]}"#,
    ]
    .iter()
    .enumerate()
    .map(|(i, l)| parse_record(l, i + 1).unwrap())
    .collect();
    let args = Default::default();
    let together = score(&m.model, &m.tokenizer, &samples, &args, 512, 3).unwrap();
    let one_by_one = score(&m.model, &m.tokenizer, &samples, &args, 512, 1).unwrap();
    for (s, (a, b)) in samples.iter().zip(together.iter().zip(&one_by_one)) {
        assert_eq!(a.id, s.id);
        assert!(
            (a.nll - b.nll).abs() < 1e-5,
            "{}: {} vs {}",
            s.id,
            a.nll,
            b.nll
        );
        // By hand: log-softmax over the unpadded sequence, response positions only.
        let pair = tokenize_pair(&m.tokenizer, s, &args, 512).unwrap();
        assert_eq!(
            *pair.response.last().unwrap(),
            m.tokenizer.token_id("<|im_end|>").unwrap()
        );
        let ids: Vec<u32> = pair.prompt.iter().chain(&pair.response).copied().collect();
        let batch = Batch::right_padded(std::slice::from_ref(&ids), 0, &Device::Cpu).unwrap();
        let logits = m
            .model
            .forward(&batch, Mode::Eval)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let lsm: Vec<Vec<f32>> = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .to_vec2()
            .unwrap();
        let p = pair.prompt.len();
        let nll: f64 = -(p..ids.len())
            .map(|t| lsm[t - 1][ids[t] as usize] as f64)
            .sum::<f64>()
            / pair.response.len() as f64;
        assert!((a.nll - nll).abs() < 1e-5, "{}: {} vs {}", s.id, a.nll, nll);
        assert_eq!(a.tokens, pair.response.len());
        assert!((a.ppl - a.nll.exp()).abs() < 1e-9);
    }
}

#[test]
fn long_pairs_are_cut_from_the_prompt_side() {
    let dir = tiny_model(Arch::Qwen3, true, 2);
    let m = load(
        dir.path().join("model").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let s = parse_record(
        &format!(r#"{{"prompt":"{}","completion":"ok"}}"#, "x".repeat(300)),
        1,
    )
    .unwrap();
    let pair = tokenize_pair(&m.tokenizer, &s, &Default::default(), 64).unwrap();
    assert_eq!(pair.prompt.len() + pair.response.len(), 64);
    assert_eq!(pair.response.len(), 3);
    let full_prompt = pair.prompt.len() + pair.cut;
    // Separate caps: the prompt keeps its last 20 tokens, the response its first 2 (of "ok" and
    // EOS), and the pair's limit is not reached.
    let lengths = Lengths {
        max_length: 64,
        max_prompt: 20,
        max_response: 2,
    };
    let capped = tokenize_pair(&m.tokenizer, &s, &Default::default(), lengths).unwrap();
    assert_eq!(capped.prompt, pair.prompt[pair.prompt.len() - 20..]);
    assert_eq!(capped.response, pair.response[..2]);
    assert_eq!((capped.cut, capped.response_cut), (full_prompt - 20, 1));
}
