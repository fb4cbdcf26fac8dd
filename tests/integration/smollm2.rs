//! SmolLM2-135M-Instruct, real weights from the GGUF that scripts/fetch_assets.sh caches:
//! greedy on the chat prompt "What is the capital of France?" it must answer with Paris.

use crate::common;

use edco::model::generate::{GenerateOptions, Prompt, generate};
use edco::model::io::{LoadOptions, load};
use edco::model::sampling::Sampling;
use edco::tokenizer::Message;

#[test]
fn smollm2_gguf_answers_the_france_prompt() {
    let path = common::asset("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let m = load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(m.model.config.num_hidden_layers, 30);
    assert!(m.model.config.tie_word_embeddings);
    let ids = m
        .tokenizer
        .encode_chat(
            &[Message::new("user", "What is the capital of France?")],
            &Default::default(),
        )
        .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 20,
        sampling: Sampling::Greedy,
        eos_token_ids: m.eos_token_ids.clone(),
        pad_id: m.tokenizer.pad_id(),
        keep_log_probs: false,
        keep_first_log_probs: false,
        samples_per_prompt: 1,
    };
    let g = generate(&m.model, &[Prompt { ids, seed: 0 }], &opts).unwrap();
    let text = m.tokenizer.decode(&g[0].tokens, true).unwrap();
    assert_eq!(text.trim(), "The capital of France is Paris.");
    assert!(g[0].finished, "stops at <|im_end|>");
}
