//! What a command may write, checked before its work starts: never one of its own inputs, never
//! a file or directory that is already there unless the user asked for it to be replaced
//! (`--force`), and only where writing is possible. A refusal leaves everything as it was.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// An input of the command, by the flag or key that named it.
pub struct Input<'a> {
    pub name: &'a str,
    pub path: &'a Path,
}

/// Whether `a` and `b` are the same file or directory (through links and spellings alike).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Whether `path` is `dir` or lies inside it.
fn within(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    // The deepest existing ancestor of `path` decides (the path itself may not exist yet); a
    // bare relative name lies in the current directory.
    let mut probe = Some(path);
    while let Some(p) = probe {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        if let Ok(c) = p.canonicalize() {
            return c.starts_with(&dir);
        }
        probe = p.parent();
    }
    false
}

/// Refuses an output that is one of the inputs, lies inside one, or holds one.
pub fn refuse_inputs(flag: &str, out: &Path, inputs: &[Input]) -> Result<()> {
    for input in inputs {
        let clash = same_file(out, input.path)
            || (input.path.is_dir() && within(out, input.path))
            || (out.is_dir() && within(input.path, out));
        if clash {
            bail!(
                "{flag} {}: that is, holds or lies inside the {} {}, which this command \
                 reads; choose another {flag}",
                out.display(),
                input.name,
                input.path.display()
            );
        }
    }
    Ok(())
}

/// Checks that a command may write the file `path` (named by `flag`): it is not there, or
/// `force` replaces it; it is not a directory; its folder exists or can be made, and can be
/// written. Makes the folder when missing; writes nothing else.
pub fn check_file(flag: &str, path: &Path, force: bool) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{flag} {}: is a directory; give a file name",
            path.display()
        );
    }
    if path.exists() && !force {
        bail!(
            "{flag} {}: already exists; pass --force to replace it, or choose another {flag}",
            path.display()
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: creating {}", path.display(), dir.display()))?;
    probe_writable(dir).with_context(|| format!("{flag} {}", path.display()))
}

/// Checks that a command may make the directory `dir` (named by `flag`): it is not there or is
/// empty, or `force` replaces it; its parent can be written. Writes nothing.
pub fn check_dir(flag: &str, dir: &Path, force: bool) -> Result<()> {
    if dir.is_file() && !force {
        bail!(
            "{flag} {}: is a file; pass --force to replace it, or choose another {flag}",
            dir.display()
        );
    }
    if dir.is_dir() && !is_empty_dir(dir)? && !force {
        bail!(
            "{flag} {}: already exists and is not empty; pass --force to replace it and \
             everything in it, or choose another {flag}",
            dir.display()
        );
    }
    let mut parent = dir
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The nearest ancestor that exists is where the directory will be made.
    while !parent.exists() {
        match parent.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(p) => parent = p,
            None => {
                parent = Path::new(".");
                break;
            }
        }
    }
    probe_writable(parent).with_context(|| format!("{flag} {}", dir.display()))
}

pub fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none())
}

/// Creates (exclusively, under a name no one can predict) and removes a file in `dir`, so a
/// read-only or full folder is found before the work.
fn probe_writable(dir: &Path) -> Result<()> {
    tempfile::tempfile_in(dir).with_context(|| format!("{} cannot be written", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_may_not_be_an_input_under_any_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pool.jsonl");
        std::fs::write(&data, "x").unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let inputs = [
            Input {
                name: "--data",
                path: &data,
            },
            Input {
                name: "--model",
                path: &model,
            },
        ];
        let spelled = dir.path().join("model/../pool.jsonl");
        let e = refuse_inputs("--out", &spelled, &inputs).unwrap_err();
        assert!(format!("{e}").contains("the --data"), "{e}");
        let inside = model.join("new/scores.jsonl");
        let e = refuse_inputs("--out", &inside, &inputs).unwrap_err();
        assert!(format!("{e}").contains("the --model"), "{e}");
        refuse_inputs("--out", &dir.path().join("scores.jsonl"), &inputs).unwrap();
    }

    #[test]
    fn existing_outputs_need_force_and_nothing_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.jsonl");
        std::fs::write(&file, "mine").unwrap();
        let e = check_file("--out", &file, false).unwrap_err();
        assert!(format!("{e}").contains("pass --force"), "{e}");
        check_file("--out", &file, true).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
        let e = check_file("--out", dir.path(), true).unwrap_err();
        assert!(format!("{e}").contains("is a directory"), "{e}");

        let full = dir.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("keep"), "k").unwrap();
        assert!(check_dir("--out", &full, false).is_err());
        check_dir("--out", &full, true).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        check_dir("--out", &empty, false).unwrap();
        check_dir("--out", &dir.path().join("a/b/c"), false).unwrap();
        assert!(!dir.path().join("a").exists());
        assert!(check_dir("--out", &file, false).is_err());
        assert_eq!(std::fs::read_to_string(full.join("keep")).unwrap(), "k");
        // Nothing but what was there.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["empty", "full", "out.jsonl"]);
    }
}
