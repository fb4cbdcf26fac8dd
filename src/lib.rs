//! edco: fine-tune a pretrained causal LM with EDCO, an entropy-driven dynamic curriculum.
//! The library holds everything; `main.rs` only parses arguments and reports errors.

pub mod alloc;
pub mod atomic_file;
pub mod audit;
pub mod checkpoint;
pub mod cli;
pub mod compare;
pub mod config;
pub mod contain;
pub mod curriculum;
pub mod data;
pub mod device_check;
pub mod entropy;
pub mod init_model;
pub mod interrupt;
pub mod jinja;
pub mod logging;
pub mod model;
pub mod outputs;
pub mod perplexity;
pub mod plot;
pub mod progress;
pub mod report;
pub mod response;
pub mod resume;
pub mod reward;
pub mod run_dir;
pub mod seed;
pub mod stats;
pub mod threads;
pub mod tokenizer;
pub mod trainer;
