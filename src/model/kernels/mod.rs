//! The CPU's f32 kernels: candle ops written by hand where the composed ops cost passes over
//! memory, each with the backward training needs and each tested against the composed ops it
//! replaces. Other devices and dtypes never reach them: the model's layers dispatch here only on
//! the CPU in f32.

pub mod attention;
mod attention_step;
pub mod decode;
pub mod exp;
pub mod gemm;
pub mod lora;
pub mod matmul;
pub mod norm_rope;
pub mod storage;
pub mod swiglu;
pub mod token_log_probs;
