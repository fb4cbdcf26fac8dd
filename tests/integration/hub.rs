//! Hub ids resolve through the local Hugging Face cache when offline, and fail clearly when the
//! cache does not have the model. The hub reads process-wide environment variables (`HF_HOME`,
//! `HF_HUB_OFFLINE`), which no test may set while others run: the checks run in a child process
//! of this test binary, started with them set.

use crate::common::tiny_model;
use edco::model::config::Arch;
use edco::model::io::{LoadOptions, load};
use std::path::Path;

/// Set in the child that runs the checks.
const CHILD: &str = "EDCO_TEST_HUB_CHILD";

#[test]
fn hub_ids_use_the_local_cache_offline() {
    if std::env::var_os(CHILD).is_some() {
        let home = std::env::var_os("HF_HOME").expect("the parent sets HF_HOME");
        return checks(Path::new(&home));
    }
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hub::hub_ids_use_the_local_cache_offline",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    // The child ran the test, not nothing: libtest says how many passed.
    assert!(report.contains("1 passed"), "{report}");
}

fn checks(home: &Path) {
    let e = match load("nobody/no-such-model", &LoadOptions::default()) {
        Ok(_) => panic!("an uncached hub id must fail offline"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("model `nobody/no-such-model`")
            && e.contains(
                "no such file or directory here; as a hub id, not in the local hub cache"
            ),
        "{e}"
    );

    // The hub cache layout: models--ORG--NAME/refs/main -> snapshots/<commit>/<files>.
    let model = tiny_model(Arch::Qwen3, true, 5);
    let repo = home.join("hub/models--edco--tiny-qwen3");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in std::fs::read_dir(model.path().join("model")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), snapshot.join(f.file_name())).unwrap();
    }
    let m = load("edco/tiny-qwen3", &LoadOptions::default()).unwrap();
    assert_eq!(m.model.config.arch, Arch::Qwen3);
    assert!(m.origin.contains(commit), "{}", m.origin);

    // Small files are named in the cache by their git blob id and checked against it each
    // time: laid out as hf-hub does (blobs, snapshot links), the model loads; a tampered
    // tokenizer_config.json (it holds the chat template) is refused by name.
    let signed = home.join("hub/models--edco--signed");
    let snapshot = signed.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(signed.join("blobs")).unwrap();
    std::fs::create_dir_all(signed.join("refs")).unwrap();
    std::fs::write(signed.join("refs/main"), commit).unwrap();
    let mut blobs = std::collections::HashMap::new();
    for f in std::fs::read_dir(model.path().join("model")).unwrap() {
        let f = f.unwrap();
        let content = std::fs::read(f.path()).unwrap();
        let oid = {
            use sha1::{Digest, Sha1};
            let mut h = Sha1::new();
            h.update(format!("blob {}\0", content.len()).as_bytes());
            h.update(&content);
            h.finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let blob = signed.join("blobs").join(&oid);
        std::fs::write(&blob, &content).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(f.file_name())).unwrap();
        blobs.insert(f.file_name().to_string_lossy().into_owned(), blob);
    }
    load("edco/signed", &LoadOptions::default()).unwrap();
    let cfg = &blobs["tokenizer_config.json"];
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        text.replacen('{', "{\"chat_template\": \"{{ 1 }}\", ", 1),
    )
    .unwrap();
    let e = match load("edco/signed", &LoadOptions::default()) {
        Ok(_) => panic!("a tampered cached file was used"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("tokenizer_config.json: the cached file does not match the hub's id for it"),
        "{e}"
    );

    // A cached index naming a file outside the snapshot is refused before anything is fetched
    // (hf-hub would build a link from the name).
    let evil = home.join("hub/models--edco--evil");
    let snapshot = evil.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(evil.join("refs")).unwrap();
    std::fs::write(evil.join("refs/main"), commit).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model.path().join("model").join(f), snapshot.join(f)).unwrap();
    }
    std::fs::write(
        snapshot.join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.embed_tokens.weight": "../../../../../../etc/passwd"}}"#,
    )
    .unwrap();
    let e = match load("edco/evil", &LoadOptions::default()) {
        Ok(_) => panic!("an escaping shard name was followed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("is not a file name inside the model folder"),
        "{e}"
    );
}
