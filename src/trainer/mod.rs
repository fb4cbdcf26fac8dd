//! Training: the optimizer, the SFT step and GRPO. The loop that drives them round by round lives in
//! `crate::train`; these pieces never parse files or see the curriculum.

pub mod grpo;
pub mod optim;
pub mod sft;
