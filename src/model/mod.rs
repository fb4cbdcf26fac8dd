//! The model layer: Qwen3 and Llama 3.x decoders that train and generate on candle. It never sees
//! a config file, the optimizer or the curriculum; callers hand it token ids and get tensors back.
//! - `decoder`, `block`, `layers`, `products`: the architecture, layer by layer, and its matrix
//!   products on every device; `varlen`: attention over packed rows (FlashAttention's layout);
//! - `batch`, `cache`, `generate`, `sampling`: padded batches, the KV cache, batched generation
//!   with per-token entropy;
//! - `io`: loading (Hugging Face directories, GGUF, the hub) and saving; `lora`: PEFT adapters;
//! - `kernels`: the CPU's f32 kernels.

pub mod batch;
mod block;
mod builder;
pub mod cache;
pub mod config;
pub mod decoder;
pub mod device;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod layers;
pub mod lora;
pub mod products;
pub mod sampling;
#[cfg(test)]
pub(crate) mod testing;
pub mod varlen;

pub use batch::Batch;
pub use cache::LayerCache;
pub use decoder::Decoder;
use lora::LoraConfig;

/// What of the model an optimiser may change.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Nothing: inference only.
    Frozen,
    /// Every parameter (full fine-tuning).
    Full,
    /// LoRA adapters over a frozen base.
    Lora(LoraConfig),
}
