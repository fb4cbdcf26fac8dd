//! Bad model input gets an error that names the file and what is wrong, never a panic.

use crate::common;

use common::tiny_model;
use edco::model::config::Arch;
use edco::model::io::{LoadOptions, load};

fn load_err(spec: &str) -> String {
    match load(spec, &LoadOptions::default()) {
        Ok(_) => panic!("loading {spec} should fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_good_tiny_model_loads() {
    let dir = tiny_model(Arch::Llama, false, 3);
    let m = load(
        dir.path().join("model").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(m.model.config.arch, Arch::Llama);
    assert_eq!(m.eos_token_ids, vec![258]);
}

#[test]
fn missing_or_malformed_config() {
    let dir = tiny_model(Arch::Qwen3, true, 0);
    let model = dir.path().join("model");
    let cfg = model.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();

    std::fs::write(&cfg, "{\"model_type\": \"qwen3\",").unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(e.contains("config.json") && e.contains("malformed"), "{e}");

    std::fs::write(&cfg, text.replace("\"qwen3\"", "\"mamba\"")).unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("config.json") && e.contains("unsupported architecture `mamba`"),
        "{e}"
    );

    std::fs::remove_file(&cfg).unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(e.contains("no config.json"), "{e}");
}

#[test]
fn missing_tensor_and_shape_mismatch() {
    let dir = tiny_model(Arch::Qwen3, true, 0);
    let model = dir.path().join("model");
    let cfg = model.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();

    // An untied head that the checkpoint does not have.
    std::fs::write(
        &cfg,
        text.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("model.safetensors") && e.contains("missing tensor `lm_head.weight`"),
        "{e}"
    );

    std::fs::write(
        &cfg,
        text.replace("\"intermediate_size\": 96", "\"intermediate_size\": 100"),
    )
    .unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("model.safetensors")
            && e.contains("has shape [96, 64], the config implies [100, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let dir = tiny_model(Arch::Llama, true, 0);
    let model = dir.path().join("model");
    let st = model.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::write(&st, &bytes[..5]).unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn sharded_checkpoint_loads_and_missing_shard_is_named() {
    let dir = tiny_model(Arch::Llama, true, 0);
    let model = dir.path().join("model");
    let st = model.join("model.safetensors");
    let whole = edco::model::io::safetensors::WeightSource::from_files(vec![st.clone()]).unwrap();
    let tensors = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let ts: Vec<(String, candle_core::Tensor)> = part
            .iter()
            .map(|n| (n.clone(), tensors[n].clone()))
            .collect();
        edco::model::io::safetensors::save_safetensors(&ts, &model.join(shard)).unwrap();
        for n in part {
            map.insert(n.clone(), shard.into());
        }
    }
    drop(whole);
    std::fs::remove_file(&st).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        model.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    load(model.to_str().unwrap(), &LoadOptions::default()).unwrap();

    std::fs::remove_file(model.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("model-00002-of-00002.safetensors does not exist"),
        "{e}"
    );
}

#[test]
fn truncated_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00").unwrap();
    let e = load_err(p.to_str().unwrap());
    assert!(
        e.contains("m.gguf") && e.contains("not a readable GGUF"),
        "{e}"
    );
}

#[test]
fn a_path_that_is_neither_file_nor_hub_id() {
    let e = load_err("./no/such/dir");
    assert!(e.contains("no such file or directory"), "{e}");
}
