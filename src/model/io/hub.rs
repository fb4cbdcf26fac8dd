//! What a user names as a model: an existing path (a Hugging Face directory or a `.gguf` file) or a
//! hub id at a revision (a branch, tag or commit; `main` by default), whose files come from the
//! local hub cache, or are downloaded through hf-hub, all from the one commit the revision
//! resolves to. Every file is checked against the id the hub names it by (SHA-256 for the
//! weights, the git blob id for the small files) each time a process first uses it, cached or
//! fresh. `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` are honoured as hf-hub and transformers
//! honour them.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelFiles {
    HfDir(PathBuf),
    Gguf(PathBuf),
}

/// Resolves a user's model argument: an existing path (directory or `.gguf` file) or a hub id,
/// at `revision` (a branch, tag or commit; the default branch when `None`) for a hub id.
pub fn resolve(spec: &str, revision: Option<&str>) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.exists() {
        refuse_local_revision(spec, revision)?;
    }
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
    check_hub_id(spec, revision)?;
    hub_snapshot(spec, revision.unwrap_or(DEFAULT_BRANCH)).map(ModelFiles::HfDir)
}

/// The branch a hub id means without a revision.
const DEFAULT_BRANCH: &str = "main";

/// The commit a hub id resolves to (the snapshot its files were taken from); `None` for a
/// local path. `files` is what [`resolve`] returned for `spec`.
pub fn commit_of(spec: &str, files: &ModelFiles) -> Option<String> {
    match files {
        ModelFiles::HfDir(dir) if !Path::new(spec).exists() => dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_commit(n))
            .map(str::to_string),
        _ => None,
    }
}

/// Whether `rev` is a full commit id (40 hex digits), which names a snapshot directly.
fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a revision's spelling: a branch, tag or commit (`main`, `v1.0`, `refs/pr/3`, 40 hex
/// digits), never a path that leaves the cache's `refs` folder.
pub fn check_revision(rev: &str) -> Result<()> {
    let ok_chars = rev
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b));
    let ok_parts = rev
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if rev.is_empty() || !ok_chars || !ok_parts {
        bail!(
            "revision `{rev}`: not a branch, tag or commit of the hub (letters, digits, `.`, \
             `_`, `-` and `/` between names)"
        );
    }
    Ok(())
}

fn refuse_local_revision(spec: &str, revision: Option<&str>) -> Result<()> {
    if let Some(rev) = revision {
        bail!(
            "revision `{rev}`: the model `{spec}` is a path on this machine, and a revision \
             names a commit of a hub id; leave the revision out for a local model"
        );
    }
    Ok(())
}

/// Refuses a name that is not a path on this machine and cannot be a hub id either: a path
/// with a typo is answered as a missing path, not looked up on the hub.
fn check_hub_id(spec: &str, revision: Option<&str>) -> Result<()> {
    let is_hub_id = spec.split('/').count() == 2
        && !spec.starts_with(['.', '/', '~'])
        && !spec.contains("//")
        && !spec.contains('\\')
        && !spec.ends_with(".gguf");
    if !is_hub_id {
        bail!("model `{spec}`: no such file or directory, and not a hub id like `Qwen/Qwen3-4B`");
    }
    if let Some(rev) = revision {
        check_revision(rev)?;
    }
    let (owner, _) = spec.split_once('/').unwrap_or((spec, ""));
    if Path::new(owner).is_dir() && !in_local_cache(spec, revision) {
        bail!(
            "model `{spec}`: no such file or directory (the folder `{owner}` here does not hold \
             it); a hub id is not read from a local folder of its owner's name"
        );
    }
    Ok(())
}

/// What loading `spec` would read, checked without reading weights or downloading: a local
/// model directory or GGUF file, or a hub id (said whether its files are cached).
pub fn check(spec: &str, revision: Option<&str>) -> Result<String> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(match resolve(spec, revision)? {
            ModelFiles::HfDir(dir) => format!("the model directory {}", dir.display()),
            ModelFiles::Gguf(file) => format!("the GGUF file {}", file.display()),
        });
    }
    check_hub_id(spec, revision)?;
    let at = revision.map_or(String::new(), |r| format!(" at revision `{r}`"));
    let repo = HubRepo::new(spec);
    Ok(
        match repo.cached(revision.unwrap_or(DEFAULT_BRANCH), "config.json") {
            Some(config) => {
                let commit = config
                    .parent()
                    .and_then(|d| d.file_name())
                    .map_or(String::new(), |c| {
                        format!(", commit {}", c.to_string_lossy())
                    });
                format!("the hub model `{spec}`{at} from the local hub cache{commit}")
            }
            None => {
                format!(
                    "the hub model `{spec}`{at}, to be downloaded (it is not in the local cache)"
                )
            }
        },
    )
}

/// Whether hub model `id` has its config in the local hub cache (at `revision`).
pub fn in_local_cache(id: &str, revision: Option<&str>) -> bool {
    HubRepo::new(id)
        .cached(revision.unwrap_or(DEFAULT_BRANCH), "config.json")
        .is_some()
}

/// A hub model's folder in the local hub cache, laid out as hf-hub and huggingface_hub lay it
/// out: `refs/<branch>` holds a commit, `snapshots/<commit>/<file>` links to `blobs/<etag>`.
struct HubRepo {
    dir: PathBuf,
}

impl HubRepo {
    fn new(id: &str) -> Self {
        let cache = hf_hub::Cache::from_env();
        let dir = cache
            .path()
            .join(hf_hub::Repo::model(id.to_string()).folder_name());
        Self { dir }
    }

    /// The cached `file` of `revision`: a commit names its snapshot; a branch or tag is read
    /// from `refs/` (a ref that does not hold a commit id is none).
    fn cached(&self, revision: &str, file: &str) -> Option<PathBuf> {
        let commit = if is_commit(revision) {
            revision.to_string()
        } else {
            let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
            Some(text.trim().to_string()).filter(|c| is_commit(c))?
        };
        let path = self.dir.join("snapshots").join(commit).join(file);
        path.exists().then_some(path)
    }
}

/// Fetches (or finds in the local cache) the files of hub model `id` at `revision`; returns the
/// snapshot dir. The revision resolves to a commit with `config.json`, and every other file is
/// taken from that commit, so a branch that moves during a download cannot mix two versions.
fn hub_snapshot(id: &str, revision: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "ON"));
    let repo = HubRepo::new(id);
    // A cached file is checked against its name (git blob id or SHA-256) before it is used.
    let cached_checked = |rev: &str, file: &str| -> Result<Option<PathBuf>> {
        match repo.cached(rev, file) {
            Some(p) => {
                verify_blob(&p, false).with_context(|| format!("model `{id}`"))?;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    };
    let fetch = |rev: &str, file: &str| -> Result<PathBuf> {
        if let Some(p) = cached_checked(rev, file)? {
            return Ok(p);
        }
        if offline {
            bail!("`{file}` is not in the local hub cache and HF_HUB_OFFLINE is set");
        }
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()?;
        let repo =
            hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, rev.to_string());
        let path = api.repo(repo).get(file)?;
        verify_blob(&path, true).with_context(|| format!("model `{id}`"))?;
        Ok(path)
    };
    let at = if revision == DEFAULT_BRANCH {
        String::new()
    } else {
        format!(" at revision `{revision}`")
    };
    let not_found = |e: anyhow::Error| {
        e.context(format!(
            "model `{id}`{at}: no such file or directory here; as a hub id, not in the local \
             hub cache ({}) and could not be downloaded",
            repo.dir.display()
        ))
    };
    let config = fetch(revision, "config.json").map_err(not_found)?;
    let dir = config
        .parent()
        .context("hub cache path has no parent")?
        .to_path_buf();
    let commit = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|c| is_commit(c))
        .with_context(|| format!("model `{id}`: {} is not a snapshot", dir.display()))?
        .to_string();
    let fetch = |file: &str| fetch(&commit, file);
    fetch("tokenizer.json").map_err(not_found)?;
    for optional in ["tokenizer_config.json", "generation_config.json"] {
        // A tampered cached copy is an error; a file the hub does not have is none.
        if cached_checked(&commit, optional)?.is_none() {
            let _ = fetch(optional);
        }
    }
    let shards = match fetch("model.safetensors.index.json") {
        // Every name checked (inside the snapshot, one spelling each) before any download.
        Ok(index) => super::safetensors::index_shards(&index)?,
        Err(_) => vec!["model.safetensors".to_string()],
    };
    // The cached weights are hashed in parallel (seconds for a 4B model); the missing ones are
    // downloaded one after the other.
    use rayon::prelude::*;
    let unhashed_bytes: u64 = shards
        .iter()
        .filter_map(|s| std::fs::canonicalize(repo.cached(&commit, s)?).ok())
        .filter(|blob| blob.file_name().is_some_and(|n| n.len() == 64))
        .filter_map(|blob| blob_key(&blob).filter(|k| !verified(k)))
        .map(|(_, len, _)| len)
        .sum();
    if unhashed_bytes > 1 << 30 {
        eprintln!(
            "checking the {:.1} GB of cached weights of `{id}` against their SHA-256",
            unhashed_bytes as f64 / 1e9
        );
    }
    shards
        .par_iter()
        .try_for_each(|s| cached_checked(&commit, s).map(drop))?;
    for s in &shards {
        fetch(s).map_err(not_found)?;
    }
    Ok(dir)
}

/// A blob as last hashed: its path, size and modification time.
type BlobKey = (PathBuf, u64, std::time::SystemTime);

/// Blobs already hashed in this process: a model resolved several times (its fingerprint, its
/// load, GRPO's reference) is hashed once, unless its file changed in between.
static VERIFIED: std::sync::Mutex<Vec<BlobKey>> = std::sync::Mutex::new(Vec::new());

/// A blob's key in [`VERIFIED`]: its real path, size and modification time.
fn blob_key(blob: &Path) -> Option<BlobKey> {
    std::fs::metadata(blob)
        .and_then(|m| Ok((blob.to_path_buf(), m.len(), m.modified()?)))
        .ok()
}

fn verified(key: &BlobKey) -> bool {
    VERIFIED.lock().is_ok_and(|v| v.contains(key))
}

/// Checks a hub cache file against the name of its blob. The hub cache names each blob by the
/// file's ETag: for files kept in Git LFS (the weights) the SHA-256 of the content, for the
/// small files (config, tokenizer, tokenizer_config with its chat template, generation_config,
/// the index) their git blob id, the SHA-1 of `blob <length>\0` and the content. Blobs named
/// otherwise pass. A `fresh` download that does not match is removed, so that the next run
/// downloads it again; a cached one is left for the user to remove.
pub fn verify_blob(path: &Path, fresh: bool) -> Result<()> {
    use sha2::Digest;
    let blob = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let name = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (kind, lfs) = match name.len() {
        _ if !name.bytes().all(|b| b.is_ascii_hexdigit()) => return Ok(()),
        40 => ("git blob", false),
        64 => ("SHA-256", true),
        _ => return Ok(()),
    };
    let key = blob_key(&blob);
    if key.as_ref().is_some_and(verified) {
        return Ok(());
    }
    let mut file =
        std::fs::File::open(&blob).with_context(|| format!("reading {}", blob.display()))?;
    let read = |e| anyhow::Error::new(e).context(format!("reading {}", blob.display()));
    let digest: Vec<u8> = if lfs {
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(read)?;
        hasher.finalize().to_vec()
    } else {
        let len = file.metadata().map_err(read)?.len();
        let mut hasher = sha1::Sha1::new();
        hasher.update(format!("blob {len}\0").as_bytes());
        std::io::copy(&mut file, &mut hasher).map_err(read)?;
        hasher.finalize().to_vec()
    };
    let got: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if got != name {
        if fresh {
            let _ = std::fs::remove_file(&blob);
            bail!(
                "{}: downloaded content has {kind} {got}, the hub announced {name}; the file \
                 was removed, run again to download it anew",
                path.display()
            );
        }
        bail!(
            "{}: the cached file does not match the hub's id for it ({kind} {name}, the \
             content hashes to {got}): it was changed after download; remove it from the hub \
             cache to download it anew",
            path.display()
        );
    }
    if let (Some(k), Ok(mut v)) = (key, VERIFIED.lock()) {
        v.push(k);
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
    fn hub_blobs_are_checked_against_their_etag() {
        let dir = tempfile::tempdir().unwrap();
        // sha256("hello"), as `printf hello | sha256sum` gives it.
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        verify_blob(&entry(dir.path(), good, "hello"), true).unwrap();
        let bad = entry(dir.path(), &good.replace('2', "3"), "hello");
        let msg = format!("{:#}", verify_blob(&bad, true).unwrap_err());
        assert!(msg.contains("has SHA-256 2cf24dba"), "{msg}");
        assert!(
            !dir.path()
                .join("blobs")
                .join(good.replace('2', "3"))
                .exists()
        );
        // A small file is named by its git blob id (`printf '{}' | git hash-object --stdin`).
        let git = "9e26dfeeb6e641a33dae4961196235bdb965b21b";
        verify_blob(&entry(dir.path(), git, "{}"), false).unwrap();
        // A cached blob that no longer matches is refused by name and left where it is.
        let changed = entry(dir.path(), &good.replace('2', "4"), "hello");
        let msg = format!("{:#}", verify_blob(&changed, false).unwrap_err());
        assert!(
            msg.contains("the cached file does not match the hub's id for it (SHA-256"),
            "{msg}"
        );
        assert!(changed.exists());
        // Names that are not content ids are not checked.
        verify_blob(&entry(dir.path(), "not-an-id", "x"), false).unwrap();
    }
}
