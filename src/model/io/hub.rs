//! What a user names as a model: an existing path (a Hugging Face directory or a `.gguf` file) or a
//! hub id, whose files come from the local hub cache, or are downloaded through hf-hub and checked
//! against the SHA-256 the hub announces for them. `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE`
//! are honoured as hf-hub and transformers honour them.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

/// Resolves a user's model argument: an existing path (directory or `.gguf` file) or a hub id.
pub fn resolve(spec: &str) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            bail!(
                "{}: not a Hugging Face model directory (no config.json)",
                path.display()
            );
        }
        return Ok(ModelFiles::HfDir(path.to_path_buf()));
    }
    if path.is_file() {
        if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
            return Ok(ModelFiles::Gguf(path.to_path_buf()));
        }
        bail!(
            "{}: expected a model directory or a .gguf file",
            path.display()
        );
    }
    check_hub_id(spec)?;
    hub_snapshot(spec).map(ModelFiles::HfDir)
}

/// Refuses a name that is not a path on this machine and cannot be a hub id either: a path
/// with a typo is answered as a missing path, not looked up on the hub.
fn check_hub_id(spec: &str) -> Result<()> {
    let is_hub_id = spec.split('/').count() == 2
        && !spec.starts_with(['.', '/', '~'])
        && !spec.contains("//")
        && !spec.contains('\\')
        && !spec.ends_with(".gguf");
    if !is_hub_id {
        bail!("model `{spec}`: no such file or directory, and not a hub id like `Qwen/Qwen3-4B`");
    }
    let (owner, _) = spec.split_once('/').unwrap_or((spec, ""));
    if Path::new(owner).is_dir() && !in_local_cache(spec) {
        bail!(
            "model `{spec}`: no such file or directory (the folder `{owner}` here does not hold \
             it); a hub id is not read from a local folder of its owner's name"
        );
    }
    Ok(())
}

/// What loading `spec` would read, checked without reading weights or downloading: a local
/// model directory or GGUF file, or a hub id (said whether its files are cached).
pub fn check(spec: &str) -> Result<String> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(match resolve(spec)? {
            ModelFiles::HfDir(dir) => format!("the model directory {}", dir.display()),
            ModelFiles::Gguf(file) => format!("the GGUF file {}", file.display()),
        });
    }
    check_hub_id(spec)?;
    Ok(if in_local_cache(spec) {
        format!("the hub model `{spec}` from the local hub cache")
    } else {
        format!("the hub model `{spec}`, to be downloaded (it is not in the local cache)")
    })
}

/// Whether hub model `id` has its config in the local hub cache.
pub fn in_local_cache(id: &str) -> bool {
    hf_hub::Cache::from_env()
        .model(id.to_string())
        .get("config.json")
        .is_some()
}

/// Fetches (or finds in the local cache) the files of hub model `id`; returns the snapshot dir.
fn hub_snapshot(id: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "ON"));
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_string());
    let from_cache = |file: &str| cached.get(file);
    // A cached file is checked against its name each time it is used (the small files by git
    // blob id; the weights, whose SHA-256 costs seconds, when downloaded).
    let cached_checked = |file: &str| -> Result<Option<PathBuf>> {
        match from_cache(file) {
            Some(p) => {
                verify_cached_file(&p).with_context(|| format!("model `{id}`"))?;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    };
    let fetch = |file: &str| -> Result<PathBuf> {
        if let Some(p) = cached_checked(file)? {
            return Ok(p);
        }
        if offline {
            bail!("`{file}` is not in the local hub cache and HF_HUB_OFFLINE is set");
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()?;
        let path = api.model(id.to_string()).get(file)?;
        verify_hub_file(&path)
            .and_then(|()| verify_cached_file(&path))
            .with_context(|| format!("model `{id}`"))?;
        Ok(path)
    };
    let not_found = |e: anyhow::Error| {
        e.context(format!(
            "model `{id}`: no such file or directory here; as a hub id, not in the local hub \
             cache ({}) and could not be downloaded",
            cache.path().display()
        ))
    };
    let config = fetch("config.json").map_err(not_found)?;
    let dir = config
        .parent()
        .context("hub cache path has no parent")?
        .to_path_buf();
    fetch("tokenizer.json").map_err(not_found)?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        // A tampered cached copy is an error; a file the hub does not have is none.
        if cached_checked(optional)?.is_none() {
            let _ = fetch(optional);
        }
    }
    match fetch("model.safetensors.index.json") {
        Ok(index) => {
            // Every name checked (inside the snapshot, one spelling each) before any download.
            for s in super::safetensors::index_shards(&index)? {
                fetch(&s).map_err(not_found)?;
            }
        }
        Err(_) => {
            fetch("model.safetensors").map_err(not_found)?;
        }
    }
    Ok(dir)
}

/// Checks a cached hub file whose blob is named by its git blob id (the small files: config,
/// tokenizer, tokenizer_config with its chat template, generation_config, the index) against
/// that id: SHA-1 of `blob <length>\0` and the content. Other blobs pass.
pub fn verify_cached_file(path: &Path) -> Result<()> {
    use sha1::{Digest, Sha1};
    let blob = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let name = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.len() != 40 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let content = std::fs::read(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", content.len()).as_bytes());
    hasher.update(&content);
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !got.eq_ignore_ascii_case(name) {
        bail!(
            "{}: the cached file does not match the hub's id for it (git blob {name}, the \
             content hashes to {got}): it was changed after download; remove it from the hub \
             cache to download it anew",
            path.display()
        );
    }
    Ok(())
}

/// Checks a freshly downloaded hub file against the checksum the hub gave for it. The hub cache
/// names each blob by the file's ETag, which for files kept in Git LFS (the weights) is the
/// SHA-256 of the content; other files (small JSON) are named by their Git object id and are
/// not checked here. A mismatch removes the blob, so the next run downloads it again.
pub fn verify_hub_file(path: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let blob = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let name = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let mut file =
        std::fs::File::open(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", blob.display()))?;
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !got.eq_ignore_ascii_case(name) {
        let _ = std::fs::remove_file(&blob);
        bail!(
            "{}: downloaded content has SHA-256 {got}, the hub announced {name}; the file was \
             removed, run again to download it anew",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hub cache entry as hf-hub lays it out: the blob named by its ETag, a snapshot symlink.
    fn entry(dir: &Path, etag: &str, content: &str) -> PathBuf {
        let blob = dir.join("blobs").join(etag);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, content).unwrap();
        let link = dir.join("snapshots/rev").join(etag);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
        link
    }

    #[test]
    fn hub_blobs_are_checked_against_their_sha256_etag() {
        let dir = tempfile::tempdir().unwrap();
        // sha256("hello"), as `printf hello | sha256sum` gives it.
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        verify_hub_file(&entry(dir.path(), good, "hello")).unwrap();
        let bad = entry(dir.path(), &good.replace('2', "3"), "hello");
        let msg = format!("{:#}", verify_hub_file(&bad).unwrap_err());
        assert!(msg.contains("has SHA-256 2cf24dba"), "{msg}");
        assert!(
            !dir.path()
                .join("blobs")
                .join(good.replace('2', "3"))
                .exists()
        );
        // A Git object id (a small non-LFS file) is not a content hash: left alone.
        let git = "6d34772f5ca361021038b404fb913ec8dc0b1a5a";
        verify_hub_file(&entry(dir.path(), git, "{}")).unwrap();
    }
}
