//! The run directory of `edco train`: whether a run may start or resume in it, the lock that
//! keeps a second run out, and its files: `config.toml`, `metrics.jsonl` (appended line by line,
//! cut back to a checkpoint's count on resume), each round's `scores/` and `curriculum/`, and the
//! checkpoints (`crate::checkpoint`). The plots and the summary are `crate::report`'s.

use crate::atomic_file::write_atomic;
use crate::checkpoint::{self, TrainState};
use crate::config::Config;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A run directory that a run may use, and where it stands.
pub struct RunDir {
    pub path: PathBuf,
    /// The checkpoint to resume from and its state; `None` for a run from the beginning.
    pub resumed: Option<(PathBuf, TrainState)>,
    /// Damaged checkpoints newer than the one resumed from, moved aside when the run opens.
    damaged: Vec<PathBuf>,
}

/// Whether a run has started in `dir` (written its config or a metrics line).
fn started(dir: &Path) -> bool {
    dir.join("metrics.jsonl").exists() || dir.join("config.toml").exists()
}

/// What a run makes in its directory before its config: the folders (empty) and the lock.
const SKELETON: [&str; 5] = ["curriculum", "scores", "eval", "plots", ".lock"];

/// Whether `dir` holds nothing but what a run makes before it starts (or nothing at all).
fn holds_only_skeleton(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let ours = SKELETON.iter().any(|s| name == *s);
        let empty = !entry.path().is_dir() || crate::outputs::is_empty_dir(&entry.path())?;
        if !(ours && empty) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether another `edco train` holds the lock of `dir` now. Takes nothing and writes nothing.
fn live(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(".lock")) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

impl RunDir {
    /// Decides, without writing anything, where the run goes and what it resumes: `--resume
    /// DIR` continues from DIR's newest checkpoint (or starts again there if it stopped before
    /// its first), and a new run refuses a directory that already holds one, or anything else.
    pub fn claim(output_dir: &Path, resume: Option<&Path>) -> Result<Self> {
        let path = resume.unwrap_or(output_dir).to_path_buf();
        if live(&path) {
            bail!(
                "{}: another edco train is running in this directory now; wait for it to end, \
                 or choose another run.output_dir",
                path.display()
            );
        }
        let mut damaged = Vec::new();
        let resumed = match resume {
            // A run that stopped before its first checkpoint has nothing to resume: it starts
            // again.
            Some(dir) if checkpoint::list(dir)?.is_empty() => {
                if !started(dir) {
                    bail!(
                        "{}: not a run directory (no checkpoint, config.toml or metrics.jsonl)",
                        dir.display()
                    );
                }
                eprintln!(
                    "{}: no checkpoint yet; the run starts again from the beginning",
                    dir.display()
                );
                None
            }
            Some(dir) => {
                let (ckpt, state, bad) = checkpoint::latest_intact(dir)?;
                for (d, why) in &bad {
                    eprintln!(
                        "warning: checkpoint {} is damaged ({why}); resuming from the older {}",
                        d.display(),
                        ckpt.display()
                    );
                }
                damaged = bad.into_iter().map(|(d, _)| d).collect();
                Some((ckpt, state))
            }
            None => {
                if checkpoint::list(&path)?.last().is_some() {
                    bail!(
                        "{}: already holds a run; resume it with --resume {0} or choose another run.output_dir",
                        path.display()
                    );
                }
                if started(&path) {
                    bail!(
                        "{}: holds a run that stopped before its first checkpoint; start it again with \
                         --resume {0} or choose another run.output_dir",
                        path.display()
                    );
                }
                if path.exists() && !path.is_dir() {
                    bail!(
                        "run.output_dir {}: is a file; choose a new or empty directory",
                        path.display()
                    );
                }
                if path.is_dir() && !holds_only_skeleton(&path)? {
                    bail!(
                        "run.output_dir {}: already exists and holds files that are not a run's; \
                         edco train writes its run there (config.toml, metrics.jsonl, checkpoints/, \
                         ...), so choose a new or empty directory",
                        path.display()
                    );
                }
                None
            }
        };
        Ok(Self {
            path,
            resumed,
            damaged,
        })
    }

    /// The checkpoint the run resumes from.
    pub fn checkpoint(&self) -> Option<&Path> {
        self.resumed.as_ref().map(|(d, _)| d.as_path())
    }

    /// Creates the directory's folders and takes its lock (held while the returned file lives);
    /// moves damaged checkpoints aside (kept, named `damaged_...`), so rotation never keeps one
    /// over a good checkpoint.
    pub fn open(&self) -> Result<std::fs::File> {
        for sub in &SKELETON[..4] {
            let d = self.path.join(sub);
            std::fs::create_dir_all(&d).with_context(|| {
                format!(
                    "creating {} (run.output_dir is {})",
                    d.display(),
                    self.path.display()
                )
            })?;
        }
        let lock = self.lock()?;
        for d in &self.damaged {
            let to = checkpoint::set_aside(d)?;
            eprintln!("moved the damaged checkpoint aside to {}", to.display());
        }
        Ok(lock)
    }

    /// Writes the run's resolved config, which `--resume` reads.
    pub fn write_config(&self, cfg: &Config) -> Result<()> {
        write_atomic(
            &self.path.join("config.toml"),
            toml::to_string(cfg)?.as_bytes(),
        )
    }

    /// Holds an exclusive lock on `.lock` for as long as the returned file lives, so that two
    /// runs never write one directory.
    fn lock(&self) -> Result<std::fs::File> {
        let path = self.path.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{}: another edco train is writing this run directory",
                self.path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::Error::from(e).context(format!("locking {}", path.display())))
            }
        }
    }

    /// `metrics.jsonl`, keeping its first `keep_lines` lines (a resume) or none (a new run).
    pub fn metrics(&self, keep_lines: Option<usize>) -> Result<Metrics> {
        Metrics::open(&self.path.join("metrics.jsonl"), keep_lines)
    }

    /// Writes a round's file (`scores`, `curriculum` or `eval`) of one JSON line per sample.
    pub fn write_round(&self, kind: &str, round: usize, lines: &[serde_json::Value]) -> Result<()> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        write_atomic(
            &self.path.join(format!("{kind}/round_{round:03}.jsonl")),
            text.as_bytes(),
        )
    }
}

/// Appends JSON lines to `metrics.jsonl`, counting them for checkpoints.
pub struct Metrics {
    file: std::fs::File,
    path: PathBuf,
    pub lines: usize,
}

impl Metrics {
    fn open(path: &Path, keep_lines: Option<usize>) -> Result<Self> {
        let existing = match keep_lines {
            Some(n) => std::fs::read_to_string(path)
                .with_context(|| format!("reading {} to resume", path.display()))?
                .lines()
                .take(n)
                .map(|l| format!("{l}\n"))
                .collect(),
            None => String::new(),
        };
        write_atomic(path, existing.as_bytes())?;
        let lines = existing.lines().count();
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            lines,
            path: path.to_path_buf(),
        })
    }

    pub fn log(&mut self, value: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{value}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.lines += 1;
        Ok(())
    }
}

/// Every line of a run's `metrics.jsonl`.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = run_dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: malformed metrics line", path.display(), i + 1))
        })
        .collect()
}
