//! Checks shared by the tests of the CPU ops against their composed references, and a tiny
//! model to run them on.

use candle_core::{D, DType, Tensor};

/// A random tiny model (hidden 64, two layers, 4 query heads over 2 KV heads) written to a
/// temporary directory, loaded on the CPU in `dtype`; the directory lives as long as the
/// first value.
pub fn tiny_model(
    arch: crate::model::config::Arch,
    seed: u64,
    dtype: DType,
) -> (tempfile::TempDir, crate::model::Decoder) {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::init_model::InitSpec {
        arch,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: None,
        tie_word_embeddings: false,
        vocab_size: None,
        seed,
    };
    let path = dir.path().join("model");
    crate::init_model::init_model(&spec, None, &path).unwrap();
    let opts = crate::model::io::LoadOptions {
        dtype,
        ..Default::default()
    };
    let model = crate::model::io::load(path.to_str().unwrap(), &opts)
        .unwrap()
        .model;
    (dir, model)
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(D::Minus1)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// The largest difference between `ours` and `theirs`, then between their gradients with
/// respect to each of `wrt` under the loss sum(out * g).
pub fn value_and_grad_diffs(
    ours: &Tensor,
    theirs: &Tensor,
    g: &Tensor,
    wrt: &[&Tensor],
) -> (f32, Vec<f32>) {
    let grads = |out: &Tensor| (out * g).unwrap().sum_all().unwrap().backward().unwrap();
    let (go, gt) = (grads(ours), grads(theirs));
    let diffs = wrt
        .iter()
        .map(|v| max_diff(go.get(v).unwrap(), gt.get(v).unwrap()))
        .collect();
    (max_diff(ours, theirs), diffs)
}
