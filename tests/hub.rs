//! Hub ids resolve through the local Hugging Face cache when offline, and fail clearly when the
//! cache does not have the model. One test, because both set process-wide environment variables.

mod common;

use common::tiny_model;
use edco::model::config::Arch;
use edco::model::io::{LoadOptions, load};

#[test]
fn hub_ids_use_the_local_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary; nothing else reads the environment concurrently.
    unsafe {
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let e = match load("nobody/no-such-model", &LoadOptions::default()) {
        Ok(_) => panic!("an uncached hub id must fail offline"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("model `nobody/no-such-model`")
            && e.contains("not found in the local hub cache"),
        "{e}"
    );

    // The hub cache layout: models--ORG--NAME/refs/main -> snapshots/<commit>/<files>.
    let model = tiny_model(Arch::Qwen3, true, 5);
    let repo = home.path().join("hub/models--edco--tiny-qwen3");
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
}
