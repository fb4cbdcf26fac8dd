//! Writing without losing what was there: a file goes to a temporary sibling, is synced and
//! renamed over its path; a directory is staged beside its place and moved in, the old one kept
//! until the new one stands. An interrupted write (a full disk, a kill) leaves the old content.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary sibling, syncs it, and renames it over `path`. On failure (a
/// full disk, say) the temporary is removed and `path` keeps what it had.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    let written = (|| -> Result<()> {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", path.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The hidden sibling a directory is staged in before [`replace_dir`] moves it into place.
pub fn staging_dir(dir: &Path) -> PathBuf {
    dir.with_file_name(format!(
        ".{}.partial",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ))
}

/// Moves a finished directory over `dir` (a directory or, replaced on request, a file), keeping
/// the old one until the new one is in place.
pub fn replace_dir(stage: &Path, dir: &Path) -> Result<()> {
    let old = dir.with_file_name(format!(
        ".{}.old",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ));
    remove(&old)?;
    if dir.symlink_metadata().is_ok() {
        std::fs::rename(dir, &old).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(stage, dir) {
        // Put the old one back: a failed replace leaves what was there.
        let _ = std::fs::rename(&old, dir);
        return Err(e).with_context(|| format!("moving {} into place", dir.display()));
    }
    remove(&old)
}

/// Removes what is at `path` (a directory with its content, or a file), if anything.
fn remove(path: &Path) -> Result<()> {
    let removed = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    removed.with_context(|| format!("removing {}", path.display()))
}
