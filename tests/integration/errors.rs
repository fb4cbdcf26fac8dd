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

/// Shard names in an index are files inside the model folder: an absolute name or `..` is
/// refused before anything is read, and one file under several spellings is loaded once.
#[test]
fn shard_names_are_confined_to_the_model_folder() {
    let dir = tiny_model(Arch::Qwen3, true, 0);
    let model = dir.path().join("model");
    let weights = model.join("model.safetensors");
    std::fs::rename(&weights, model.join("shard-1.safetensors")).unwrap();
    let index = model.join("model.safetensors.index.json");
    let header = {
        let bytes = std::fs::read(model.join("shard-1.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes[8..8 + n])
            .unwrap()
    };
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    let map_with = |spell: &dyn Fn(usize) -> String| {
        let map: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), spell(i).into()))
            .collect();
        serde_json::json!({ "weight_map": map }).to_string()
    };
    // One file, three spellings: it loads.
    let spellings = [
        "shard-1.safetensors",
        "./shard-1.safetensors",
        ".//shard-1.safetensors",
    ];
    std::fs::write(&index, map_with(&|i| spellings[i % 3].to_string())).unwrap();
    load(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    // Escapes are refused by name.
    for escape in ["/etc/passwd", "../model/shard-1.safetensors"] {
        std::fs::write(
            &index,
            map_with(&|i| {
                if i == 1 {
                    escape.to_string()
                } else {
                    "shard-1.safetensors".into()
                }
            }),
        )
        .unwrap();
        let e = load_err(model.to_str().unwrap());
        assert!(
            e.contains("model.safetensors.index.json")
                && e.contains(&format!(
                    "shard `{escape}` is not a file name inside the model folder"
                )),
            "{e}"
        );
    }
}
