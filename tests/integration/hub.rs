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

    // The weights are named in the cache by their SHA-256 (Git LFS) and hashed each time a
    // process first uses them: a cached blob changed on disk after its download is refused by
    // name, and left where it is.
    let lfs = home.join("hub/models--edco--lfs");
    let snapshot = lfs.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(lfs.join("blobs")).unwrap();
    std::fs::create_dir_all(lfs.join("refs")).unwrap();
    std::fs::write(lfs.join("refs/main"), commit).unwrap();
    copy_files(&model.path().join("model"), &snapshot);
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let weights = std::fs::read(model.path().join("model/model.safetensors")).unwrap();
    let sha256: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&weights)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let blob = lfs.join("blobs").join(&sha256);
    std::fs::write(&blob, &weights).unwrap();
    std::os::unix::fs::symlink(&blob, snapshot.join("model.safetensors")).unwrap();
    load("edco/lfs", &LoadOptions::default()).unwrap();
    let mut changed = weights.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&blob, &changed).unwrap();
    let e = match load("edco/lfs", &LoadOptions::default()) {
        Ok(_) => panic!("a changed cached weights blob was used"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains(
            "model.safetensors: the cached file does not match the hub's id for it (SHA-256"
        ),
        "{e}"
    );
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        changed,
        "the user's cache is left as it is"
    );

    revisions(home);

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

fn copy_files(from: &Path, to: &Path) {
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
    }
}

/// A revision picks the snapshot: a branch or tag through `refs/`, a commit directly (as
/// huggingface_hub leaves a cache: no ref for a commit); a bad one is refused by name.
fn revisions(home: &Path) {
    let repo = home.join("hub/models--edco--tagged");
    let (qwen, llama) = (
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    );
    for (commit, arch) in [(qwen, Arch::Qwen3), (llama, Arch::Llama)] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        copy_files(&tiny_model(arch, true, 5).path().join("model"), &snapshot);
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), qwen).unwrap();
    std::fs::write(repo.join("refs/v2"), format!("{llama}\n")).unwrap();
    let at = |rev: Option<&str>| {
        let opts = LoadOptions {
            revision: rev.map(str::to_string),
            ..Default::default()
        };
        load("edco/tagged", &opts).map(|m| (m.model.config.arch, m.origin))
    };
    let (arch, origin) = at(None).unwrap();
    assert!(arch == Arch::Qwen3 && origin.contains(qwen), "{origin}");
    let (arch, origin) = at(Some("v2")).unwrap();
    assert!(arch == Arch::Llama && origin.contains(llama), "{origin}");
    std::fs::write(repo.join("refs/main"), llama).unwrap();
    let (arch, _) = at(Some(qwen)).unwrap();
    assert_eq!(
        arch,
        Arch::Qwen3,
        "a commit names its snapshot, wherever main points"
    );
    let err = |rev: &str| format!("{:#}", at(Some(rev)).err().unwrap());
    let e = err("v3");
    assert!(
        e.contains("model `edco/tagged` at revision `v3`: no such file or directory here"),
        "{e}"
    );
    let e = err("../../../x");
    assert!(
        e.contains("revision `../../../x`: not a branch, tag or commit"),
        "{e}"
    );
    let local = tiny_model(Arch::Qwen3, true, 5);
    let opts = LoadOptions {
        revision: Some("main".into()),
        ..Default::default()
    };
    let path = local.path().join("model");
    let e = match load(path.to_str().unwrap(), &opts) {
        Ok(_) => panic!("a revision was applied to a local path"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("is a path on this machine"), "{e}");
}

/// A hub cache (in a new HF_HOME) holding `edco/NAME` at two commits, `first` (a tiny Qwen3) on
/// `main` and `moved` (a tiny Llama 3); returns the home, the repository's folder, and the shell
/// prelude that points edco at the cache, offline.
fn moving_repo(
    name: &str,
    first: &str,
    moved: &str,
) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join(format!("hub/models--edco--{name}"));
    for (commit, fixture) in [(first, "tiny-qwen3"), (moved, "tiny-llama3")] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        copy_files(
            crate::common::fixture_with_tokenizer(fixture).path(),
            &snapshot,
        );
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), first).unwrap();
    let hub = format!(
        "export HF_HOME='{}' HF_HUB_OFFLINE=1",
        home.path().display()
    );
    (home, repo, hub)
}

/// A run on a hub id records the commit it trained on (in fingerprint.json and the adapters'
/// config); after the branch moves, a resume goes on with that commit, and one that names the
/// new commit is refused, saying which the run started with.
#[test]
fn a_run_on_a_hub_id_records_and_resumes_on_its_commit() {
    use crate::train::{config_text, edco_under};
    let (first, moved) = (
        "1111111111111111111111111111111111111111",
        "2222222222222222222222222222222222222222",
    );
    let (home, repo, hub) = moving_repo("moving", first, moved);
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(Path::new("edco/moving"), dir.path(), "keep_last = 10")
        .replace("rounds = 2", "rounds = 1");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    let run = dir.path().join("run");
    let out = edco_under(&hub, &["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let fingerprint = std::fs::read_to_string(run.join("fingerprint.json")).unwrap();
    assert!(
        fingerprint.contains(&format!("\"model_commit\": \"{first}\"")),
        "{fingerprint}"
    );

    std::fs::write(repo.join("refs/main"), moved).unwrap();
    let resume = |sets: &[&str]| {
        let mut args = vec!["train", "--resume", run.to_str().unwrap()];
        for s in sets {
            args.extend(["--set", s]);
        }
        edco_under(&hub, &args)
    };
    let other = format!("model.revision=\"{moved}\"");
    let out = resume(&["curriculum.rounds=2", &other]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "resolves to commit {moved}, and the run started with commit {first}"
            )),
        "{err}"
    );
    let out = resume(&["curriculum.rounds=2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("resuming on commit {first} of `edco/moving`")),
        "{err}"
    );
    let last = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let adapter = std::fs::read_to_string(last.join("adapter/adapter_config.json")).unwrap();
    assert!(
        adapter.contains(&format!("\"revision\": \"{first}\"")),
        "{adapter}"
    );

    // The recorded commit is of `edco/moving`: a resume from another repository holding the
    // same files reads that repository's branch, and its fingerprint matches.
    let copy = home.path().join("hub/models--edco--copy");
    let third = "3333333333333333333333333333333333333333";
    std::fs::create_dir_all(copy.join("snapshots").join(third)).unwrap();
    copy_files(
        &repo.join("snapshots").join(first),
        &copy.join("snapshots").join(third),
    );
    std::fs::create_dir_all(copy.join("refs")).unwrap();
    std::fs::write(copy.join("refs/main"), third).unwrap();
    let out = resume(&["curriculum.rounds=3", "model.source=\"edco/copy\""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("resuming on commit"), "{err}");
}

/// A study on a hub id pins the commit the branch points to when it begins: a run of the
/// study started after the branch moved reads that commit too, so every run trains the same
/// model.
#[test]
fn a_study_on_a_hub_id_reads_one_commit_in_every_run() {
    use crate::train::{config_text, edco_under};
    let (first, moved) = (
        "4444444444444444444444444444444444444444",
        "5555555555555555555555555555555555555555",
    );
    let (_home, repo, hub) = moving_repo("study", first, moved);
    let dir = tempfile::tempdir().unwrap();
    let text =
        config_text(Path::new("edco/study"), dir.path(), "").replace("rounds = 2", "rounds = 1");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("study");
    let args = [
        "compare",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--arm",
        "edco,random",
        "--seeds",
        "1",
    ];
    let o = edco_under(&hub, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let study = std::fs::read_to_string(out.join("study.json")).unwrap();
    assert!(
        study.contains(&format!("\"model_commit\": \"{first}\"")),
        "{study}"
    );

    // The branch moves, and one run is to be done again (its directory removed): it runs on
    // the study's commit, and the report, which refuses runs of different models, is written.
    std::fs::write(repo.join("refs/main"), moved).unwrap();
    std::fs::remove_dir_all(out.join("runs/random")).unwrap();
    std::fs::remove_file(out.join("report.json")).unwrap();
    let o = edco_under(&hub, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run_cfg = std::fs::read_to_string(out.join("runs/random/seed-1/config.toml")).unwrap();
    assert!(
        run_cfg.contains(&format!("revision = \"{first}\"")),
        "{run_cfg}"
    );
    assert!(out.join("report.json").is_file());
}
