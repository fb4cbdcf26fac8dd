//! Writing without losing what was there: a file goes to a temporary sibling, is synced and
//! renamed over its path; a directory is staged beside its place and moved in, the old one kept
//! until the new one stands. An interrupted write (a full disk, a kill) leaves the old content.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary sibling, syncs it, and renames it over `path`. The temporary
/// is created exclusively under an unpredictable name (by `tempfile`), so a link planted beside
/// `path` is never written through. On failure (a full disk, say) the temporary is removed and
/// `path` keeps what it had.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = written_temporary(path, bytes)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

/// As [`write_atomic`], for a file that must not exist yet: of two processes creating it at
/// once, one succeeds and the other gets an error (`AlreadyExists`) and leaves it as it is.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = written_temporary(path, bytes)?;
    tmp.persist_noclobber(path)
        .map_err(|e| e.error)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// A synced temporary sibling of `path` holding `bytes`, removed if dropped.
fn written_temporary(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // The mode a plain create gives (the umask applies), not a temporary's owner-only one: the
    // file is the user's output.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(tmp)
}

/// The hidden sibling a directory is staged in before [`replace_dir`] moves it into place.
pub fn staging_dir(dir: &Path) -> PathBuf {
    dir.with_file_name(format!(
        ".{}.partial",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ))
}

/// Makes `stage` afresh and empty: what was there removed (a link, never what it points to),
/// then created exclusively, so a link planted in between fails the call instead of being
/// written through.
pub fn fresh_dir(stage: &Path) -> Result<()> {
    remove(stage)?;
    if let Some(parent) = stage.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::create_dir(stage).with_context(|| format!("creating {}", stage.display()))
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

/// Removes what is at `path` (a directory with its content, or a file or link, never what a
/// link points to), if anything.
pub fn remove(path: &Path) -> Result<()> {
    let removed = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    removed.with_context(|| format!("removing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_never_written_over_one_that_appeared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("study.json");
        write_new(&path, b"first").unwrap();
        let e = write_new(&path, b"second").unwrap_err();
        assert!(format!("{e:#}").contains("creating"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        // No temporary is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_link_planted_where_a_temporary_could_go_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "keep").unwrap();
        let out = dir.path().join("out.jsonl");
        // The names temporaries had (predictable from the process id) and plausible others.
        let planted = [
            format!("out.jsonl.tmp{}", std::process::id()),
            ".out.jsonl.tmp".to_string(),
            ".out.jsonl.partial".to_string(),
        ];
        for name in &planted {
            std::os::unix::fs::symlink(&secret, dir.path().join(name)).unwrap();
        }
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep");
        for name in &planted {
            assert!(
                dir.path()
                    .join(name)
                    .symlink_metadata()
                    .unwrap()
                    .is_symlink()
            );
        }
        // A staged directory's place holding a link: the link goes, never what it points to.
        let stage = staging_dir(&dir.path().join("model"));
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(&target, &stage).unwrap();
        remove(&stage).unwrap();
        assert!(stage.symlink_metadata().is_err() && target.join("f").is_file());
    }
}
