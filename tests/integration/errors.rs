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

    // Numbers the model cannot run with are refused by field before any weight is read.
    for (from, to, expected) in [
        (
            "\"rope_theta\": ",
            "\"rope_theta\": -",
            "field `rope_theta`: must be finite and positive, got -",
        ),
        (
            "\"rms_norm_eps\": ",
            "\"rms_norm_eps\": -",
            "field `rms_norm_eps`: must be finite and positive",
        ),
        // A layer count no file could hold names the first layer missing, allocating nothing.
        (
            "\"num_hidden_layers\": 2",
            "\"num_hidden_layers\": 1000000000000",
            "missing tensor `model.layers.2.",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        std::fs::write(&cfg, text.replacen(from, to, 1)).unwrap();
        let e = load_err(model.to_str().unwrap());
        assert!(e.contains(expected), "{e}");
    }

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

/// A minimal GGUF v3 file: metadata (key, type, value bytes) and tensor infos (name, dims in
/// GGUF order, ggml type, offset), then `data`.
fn gguf(
    kvs: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, &[u64], u32, u64)],
    data: &[u8],
) -> Vec<u8> {
    let string = |s: &str| {
        [
            (s.len() as u64).to_le_bytes().to_vec(),
            s.as_bytes().to_vec(),
        ]
        .concat()
    };
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, t, v) in kvs {
        out.extend(string(k));
        out.extend(t.to_le_bytes());
        out.extend(v);
    }
    for (name, dims, ty, offset) in tensors {
        out.extend(string(name));
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.extend(data);
    out
}

/// Crafted GGUF headers fail with an error naming the file, before anything large is read or
/// allocated: a zero alignment, a zero head count, tensor dimensions that overflow or data the
/// file does not have.
#[test]
fn crafted_gguf_headers_are_refused_by_name() {
    const U32: u32 = 4;
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;
    let s = |v: &str| {
        [
            (v.len() as u64).to_le_bytes().to_vec(),
            v.as_bytes().to_vec(),
        ]
        .concat()
    };
    let u = |v: u32| v.to_le_bytes().to_vec();
    let tokens = [
        STRING.to_le_bytes().to_vec(),
        1u64.to_le_bytes().to_vec(),
        s("a"),
    ]
    .concat();
    let base = |heads: u32| {
        vec![
            ("general.architecture", STRING, s("llama")),
            ("tokenizer.ggml.tokens", ARRAY, tokens.clone()),
            ("llama.embedding_length", U32, u(8)),
            ("llama.attention.head_count", U32, u(heads)),
        ]
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.gguf");
    let err = |bytes: Vec<u8>| {
        std::fs::write(&path, bytes).unwrap();
        match edco::model::io::gguf::load(&path, candle_core::DType::F32) {
            Ok(_) => panic!("a crafted GGUF loaded"),
            Err(e) => format!("{e:#}"),
        }
    };
    let mut zero_alignment = base(2);
    zero_alignment.push(("general.alignment", U32, u(0)));
    let e = err(gguf(&zero_alignment, &[], &[]));
    assert!(e.contains("crafted.gguf: malformed ("), "{e}");
    let e = err(gguf(&base(0), &[], &[]));
    assert!(
        e.contains("crafted.gguf: inconsistent head counts 0 / 0"),
        "{e}"
    );
    let huge: &[u64] = &[1 << 40, 1 << 40];
    let e = err(gguf(
        &base(2),
        &[("token_embd.weight", huge, 0, 0)],
        &[0; 64],
    ));
    assert!(e.contains("crafted.gguf") && e.contains("overflow"), "{e}");
    let big: &[u64] = &[1 << 20, 1 << 10];
    let e = err(gguf(
        &base(2),
        &[("token_embd.weight", big, 0, 0)],
        &[0; 64],
    ));
    assert!(
        e.contains("needs 4294967296 bytes at offset 0, the file has 64 bytes"),
        "{e}"
    );
    // A metadata string or array longer than the file is refused before it is allocated.
    let mut long = base(2);
    long.push((
        "general.name",
        STRING,
        ((1u64 << 30) - 1).to_le_bytes().to_vec(),
    ));
    let e = err(gguf(&long, &[], &[]));
    assert!(
        e.contains("string length 1073741823 exceeds remaining file bytes"),
        "{e}"
    );
    let mut many = base(2);
    let array = [
        U32.to_le_bytes().to_vec(),
        ((1u64 << 30) - 1).to_le_bytes().to_vec(),
    ]
    .concat();
    many.push(("general.tags", ARRAY, array));
    let e = err(gguf(&many, &[], &[]));
    assert!(
        e.contains("array of 1073741823 elements needs at least"),
        "{e}"
    );
}

/// A tokenizer.json whose normalizer tables panic the tokenizer library is an error naming
/// the file when the model loads, not a crash later.
#[test]
fn a_panicking_tokenizer_is_an_error_at_load() {
    let dir = tiny_model(Arch::Llama, true, 0);
    let model = dir.path().join("model");
    let path = model.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    t["normalizer"] =
        serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "AQAAAA=="});
    std::fs::write(&path, t.to_string()).unwrap();
    let e = load_err(model.to_str().unwrap());
    assert!(
        e.contains("tokenizer.json: cannot load tokenizer") && e.contains("malformed ("),
        "{e}"
    );
}

/// A chat template from a stranger's model, or a data template, that would loop for hours or
/// allocate gigabytes stops within seconds, naming the template.
#[test]
fn template_bombs_stop_naming_the_template() {
    let dir = tiny_model(Arch::Qwen3, true, 0);
    let model = dir.path().join("model");
    let cfg_path = model.join("tokenizer_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    // Each runs in the binary under a 1 GiB address-space limit: a bomb that allocated its
    // gigabytes would abort the process instead of failing with the message.
    for (bomb, expected) in [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}\
             {{ messages[0].content }}{% endfor %}{% endfor %}",
            "fuel",
        ),
        ("{{ ['x' * 10000] * 100000000 ~ '' }}", "fuel"),
        ("{{ '%s'|format(['x' * 10000] * 100000000) }}", "fuel"),
        (
            "{% set l = ['x' * 100000] * 2000 %}{% set m = [l, l, l, l, l, l, l, l, l, l] %}\
             {{ [m, m, m, m, m, m, m, m, m, m]|upper }}",
            "the text of its lists and maps would exceed",
        ),
        (
            "{% set l = ['x' * 100000] * 2000 %}{{ [l, l, l, l, l, l, l, l, l, l]|tojson }}",
            "tojson: the value's text would exceed",
        ),
        // Indentation is text an estimate made beforehand did not see: 2 million empty
        // strings, 30 levels deep at 64 spaces a level, are 4 GB of JSON.
        (
            "{% set ns = namespace(l=[''] * 2000000) %}{% for i in range(30) %}\
             {% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|tojson(indent=64) }}",
            "tojson: the value's text would exceed",
        ),
        (
            "{{ [[1]]|tojson(indent=10000000000000) }}",
            "tojson: the value's text would exceed",
        ),
        // A value nested millions deep, dropped when fuel runs out: the drop recurses once per
        // level, beyond an ordinary thread's stack.
        (
            "{% set ns = namespace(l=[]) %}{% for i in range(10000) %}{% for j in range(10000) %}\
             {% set ns.l = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ns.l]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]] %}\
             {% endfor %}{% endfor %}",
            "fuel",
        ),
    ] {
        cfg["chat_template"] = bomb.into();
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let start = std::time::Instant::now();
        let out = crate::train::edco_under(
            "ulimit -v 1048576",
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bomb}: {err}");
        assert!(
            err.contains("rendering the chat template") && err.contains(expected),
            "{bomb}: {err}"
        );
        assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
    }

    let doubling = "{% set s = namespace(v=question) %}{% for i in range(64) %}\
        {% set s.v = s.v ~ s.v %}{% endfor %}{{ s.v }}";
    let e = match edco::data::PromptTemplates::new(edco::data::MCQ_TEMPLATE, doubling) {
        Ok(_) => panic!("a doubling template compiled and rendered"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("rendering the qa template") && e.contains("fuel"),
        "{e}"
    );
}

/// A folder from elsewhere may hold links that point anywhere (a git clone keeps them): the
/// loader reads a model's or adapter's files only when they resolve inside the folder.
#[test]
fn links_out_of_a_model_or_adapter_folder_are_refused() {
    use std::os::unix::fs::symlink;
    let elsewhere = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "config.json", "model.safetensors"] {
        let dir = tiny_model(Arch::Qwen3, true, 0);
        let model = dir.path().join("model");
        let outside = elsewhere.path().join(file);
        std::fs::rename(model.join(file), &outside).unwrap();
        symlink(&outside, model.join(file)).unwrap();
        let e = load_err(model.to_str().unwrap());
        assert!(
            e.contains(&format!("{file}: a link to")) && e.contains("outside the folder"),
            "{file}: {e}"
        );
        // A link inside the folder is fine.
        std::fs::rename(&outside, model.join("real")).unwrap();
        std::fs::remove_file(model.join(file)).unwrap();
        symlink("real", model.join(file)).unwrap();
        load(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    }
    // An adapter folder is checked the same way.
    let dir = tiny_model(Arch::Qwen3, true, 0);
    let model = dir.path().join("model");
    let mut m = load(model.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let adapter = tempfile::tempdir().unwrap();
    let trained = load(
        model.to_str().unwrap(),
        &LoadOptions {
            trainable: edco::model::Trainable::Lora(Default::default()),
            ..Default::default()
        },
    )
    .unwrap();
    edco::model::lora::save_adapter(&trained.model, adapter.path(), ("m", None)).unwrap();
    let config = adapter.path().join("adapter_config.json");
    let outside = elsewhere.path().join("adapter_config.json");
    std::fs::rename(&config, &outside).unwrap();
    symlink(&outside, &config).unwrap();
    let e = format!(
        "{:#}",
        edco::model::lora::load_adapter(&mut m.model, adapter.path()).unwrap_err()
    );
    assert!(e.contains("adapter_config.json: a link to"), "{e}");
}

/// A stranger's pre-tokenizer pattern that backtracks catastrophically on some text: the regex
/// engine stops it at its retry limit and panics, on that text only (the load-time probe passes).
/// The command fails with the sample named, in well under a second, instead of crashing.
#[test]
fn a_pathological_pre_tokenizer_pattern_fails_naming_the_sample() {
    let dir = tiny_model(Arch::Qwen3, true, 0);
    let model = dir.path().join("model");
    let path = model.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let byte_level = t["pre_tokenizer"].clone();
    t["pre_tokenizer"] = serde_json::json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": false},
            byte_level,
        ],
    });
    std::fs::write(&path, t.to_string()).unwrap();
    let data = dir.path().join("d.jsonl");
    let line = serde_json::json!({"id": "runs", "question": format!("{}!", "a".repeat(60)), "answer": "y"});
    std::fs::write(&data, format!("{line}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edco"))
        .args([
            "estimate-entropy",
            "--model",
            model.to_str().unwrap(),
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("s.jsonl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "sample `runs`: tokenizing: the model's {}: malformed",
            path.display()
        )) && err.contains("retry-limit-in-match")
            && !err.contains("panicked"),
        "{err}"
    );
}
