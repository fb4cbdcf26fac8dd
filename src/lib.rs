//! edco: fine-tune a pretrained causal LM with EDCO, an entropy-driven dynamic curriculum.
//! The library holds everything; `main.rs` only parses arguments and reports errors.

pub mod cli;
pub mod data;
pub mod init_model;
pub mod model;
pub mod perplexity;
pub mod tokenizer;
