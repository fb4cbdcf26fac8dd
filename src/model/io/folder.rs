//! The files of a model or adapter folder, as the loader may read them. A folder from a
//! stranger (a git clone of a hub repository keeps its links) can hold links that point
//! anywhere: `tokenizer.json -> ~/.ssh/id_rsa`. Every file the loader reads is named through
//! [`file`], which refuses a link that resolves outside the folder. A hub cache snapshot
//! (`models--ORG--NAME/snapshots/<commit>/`) links every file to its repository's `blobs/`,
//! which is allowed as hf-hub and huggingface_hub lay it out.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// `name` inside `dir`, checked to resolve inside the folder when it exists; a missing file is
/// returned as it is, for the caller's own message.
pub fn file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(path);
    }
    let real = std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))?;
    let root = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    if real.starts_with(&root) || blobs_of_snapshot(&root).is_some_and(|b| real.starts_with(b)) {
        return Ok(path);
    }
    bail!(
        "{}: a link to {}, outside the folder {}; edco reads a model's or adapter's files only \
         from inside its folder, since a folder from elsewhere could point anywhere: put the \
         file itself in the folder, or name the folder it is in",
        path.display(),
        real.display(),
        dir.display()
    )
}

/// The `blobs/` folder of the hub cache repository whose snapshot `root` is.
fn blobs_of_snapshot(root: &Path) -> Option<PathBuf> {
    let snapshots = root.parent()?;
    let repo = snapshots.parent()?;
    let repo_name = repo.file_name()?.to_str()?;
    let kinds = ["models--", "datasets--", "spaces--"];
    (snapshots.file_name()? == "snapshots" && kinds.iter().any(|k| repo_name.starts_with(k)))
        .then(|| repo.join("blobs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_may_point_inside_the_folder_or_to_a_snapshot_s_blobs_only() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "key").unwrap();
        let dir = tmp.path().join("model");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/real.json"), "{}").unwrap();
        symlink(dir.join("sub/real.json"), dir.join("inside.json")).unwrap();
        symlink(&secret, dir.join("tokenizer.json")).unwrap();
        assert!(file(&dir, "inside.json").is_ok());
        assert!(file(&dir, "missing.json").is_ok());
        let e = format!("{:#}", file(&dir, "tokenizer.json").unwrap_err());
        assert!(
            e.contains("tokenizer.json: a link to") && e.contains("outside the folder"),
            "{e}"
        );
        // A hub cache snapshot's links go to its repository's blobs, and no further.
        let repo = tmp.path().join("hub/models--org--name");
        let snapshot = repo.join("snapshots/0123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs/abc"), "{}").unwrap();
        symlink("../../blobs/abc", snapshot.join("config.json")).unwrap();
        symlink(&secret, snapshot.join("tokenizer.json")).unwrap();
        assert!(file(&snapshot, "config.json").is_ok());
        assert!(file(&snapshot, "tokenizer.json").is_err());
    }
}
