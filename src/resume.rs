//! What may change when a run resumes. A run records a fingerprint of what it trains on (the
//! base model's files, the pool, the held-out set) in `fingerprint.json` when it starts; a
//! resume recomputes it and refuses to go on if any of them changed, since the stored scores,
//! curricula and weights would then belong to other samples or another model. Overrides
//! (`--set`) on resume are checked against the run's own config: the ones that change how the
//! run goes on (learning rate, rounds, evaluation, device) are allowed and recorded in
//! `resumes.jsonl`, with the original config kept as `config.initial.toml`; the ones that would
//! make the run's state mean something else are refused. All of it before anything is written.

use crate::atomic_file::write_atomic;
use crate::config::Config;
use crate::model::io::hub::{ModelFiles, commit_of, resolve};
use crate::model::io::safetensors::weight_files;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const FINGERPRINT: &str = "fingerprint.json";
pub const RESUMES: &str = "resumes.jsonl";
pub const INITIAL_CONFIG: &str = "config.initial.toml";

/// Settings a resume may change: how the run goes on, not what its state means.
const MAY_CHANGE: &[&str] = &[
    // Paths may move: the fingerprint checks that they hold what they held.
    "model.source",
    "model.revision",
    "data.train",
    "data.eval",
    "model.device",
    "model.attention",
    "model.dtype",
    "curriculum.rounds",
    "entropy.batch_size",
    "sft.learning_rate",
    "sft.min_learning_rate",
    "sft.schedule",
    "sft.warmup_steps",
    "sft.weight_decay",
    "sft.max_grad_norm",
    "grpo.learning_rate",
    "grpo.min_learning_rate",
    "grpo.schedule",
    "grpo.warmup_steps",
    "grpo.weight_decay",
    "grpo.max_grad_norm",
    "eval.",
    "run.checkpoint_every_steps",
    "run.keep_last",
    "run.log_level",
];

fn may_change(key: &str) -> bool {
    MAY_CHANGE
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
}

/// A data file as the run read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPrint {
    pub samples: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// What a run trains on, in a form cheap to recompute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// A digest of the model's files: names, sizes and sampled content (the whole of small
    /// files; of large ones their start, end and 16 slices between). Empty when a resume that
    /// does not read the base model (full fine-tuning) cannot find it.
    pub model: String,
    /// The hub commit the model's files came from, when `model.source` is a hub id: a resume
    /// that names no revision goes on with this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_commit: Option<String>,
    /// The hub id that commit is of: a resume that names another source is not pinned to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_source: Option<String>,
    pub train: DataPrint,
    pub eval: Option<DataPrint>,
}

impl Fingerprint {
    /// The fingerprint of `cfg`'s model (`None`: not looked at) at its revision, and of its
    /// data, with the sample counts the run read.
    pub fn of(
        cfg: &Config,
        model: Option<(&str, Option<&str>)>,
        samples: (usize, usize),
    ) -> Result<Self> {
        let eval = (!cfg.data.eval.as_os_str().is_empty())
            .then(|| data_print(&cfg.data.eval, samples.1))
            .transpose()?;
        let (model, model_commit, model_source) = match model {
            Some((source, revision)) => {
                let (print, commit) = model_print(source, revision)?;
                let source = commit.is_some().then(|| source.to_string());
                (print, commit, source)
            }
            None => (String::new(), None, None),
        };
        Ok(Self {
            model,
            model_commit,
            model_source,
            train: data_print(&cfg.data.train, samples.0)?,
            eval,
        })
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        write_atomic(
            &run.join(FINGERPRINT),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }

    /// The run's recorded fingerprint; `None` for a run started before edco recorded one.
    pub fn load(run: &Path) -> Result<Option<Self>> {
        let path = run.join(FINGERPRINT);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: malformed", path.display()))
    }

    /// Refuses a resume whose model or data are not the ones the run began with.
    pub fn check_unchanged(&self, now: &Self, cfg: &Config, run: &Path) -> Result<()> {
        let fresh =
            "restore it, or start a new run (a new run.output_dir) to train on what is there now";
        if !now.model.is_empty() && !self.model.is_empty() && self.model != now.model {
            // The advice to name the run's commit holds for the repository it is of.
            let same_repo = self
                .model_source
                .as_deref()
                .is_none_or(|s| s == cfg.model.source);
            if let (Some(then), Some(now)) = (&self.model_commit, &now.model_commit)
                && then != now
                && same_repo
            {
                bail!(
                    "cannot resume {}: model.source `{}` resolves to commit {now}, and the run \
                     started with commit {then} ({FINGERPRINT}); set model.revision = \"{then}\" \
                     to resume on it, or start a new run (a new run.output_dir) to train on \
                     the other",
                    run.display(),
                    cfg.model.source
                );
            }
            let began = match (&self.model_source, &self.model_commit) {
                (Some(s), Some(c)) if *s != cfg.model.source => format!(" (`{s}` at commit {c})"),
                _ => String::new(),
            };
            bail!(
                "cannot resume {}: model.source `{}` is not the model the run started with{began} \
                 (its files differ from those recorded in {FINGERPRINT}); {fresh}",
                run.display(),
                cfg.model.source
            );
        }
        let data = [
            (
                "data.train",
                &cfg.data.train,
                Some(&self.train),
                Some(&now.train),
            ),
            (
                "data.eval",
                &cfg.data.eval,
                self.eval.as_ref(),
                now.eval.as_ref(),
            ),
        ];
        for (key, path, then, now) in data {
            if then != now {
                let counts = match (then, now) {
                    (Some(a), Some(b)) if a.samples != b.samples => {
                        format!("{} samples then, {} now", a.samples, b.samples)
                    }
                    (Some(_), Some(_)) => "the same number of samples, other content".into(),
                    (Some(_), None) => "given then, not now".into(),
                    (None, _) => "not given then".into(),
                };
                bail!(
                    "cannot resume {}: {key} {} changed since the run began ({counts}); the \
                     run's scores and curricula belong to the samples it had; {fresh}",
                    run.display(),
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// A data file's size, SHA-256 and sample count.
/// The print of the data file at `path`, which holds `samples` samples.
pub fn data_print(path: &Path, samples: usize) -> Result<DataPrint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(DataPrint {
        samples,
        bytes: bytes.len() as u64,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files at most this large are hashed whole; larger ones by slices of this size.
const SLICE: u64 = 1 << 20;
const SLICES: u64 = 16;

/// A digest of the files a model is loaded from (its config and weights, or its GGUF file) by
/// name, size and sampled content (any other checkpoint differs in it, and a 4B model costs a
/// few dozen megabytes of reading), and the hub commit they came from for a hub id.
pub fn model_print(source: &str, revision: Option<&str>) -> Result<(String, Option<String>)> {
    let resolved = resolve(source, revision)?;
    let commit = commit_of(source, &resolved);
    Ok((model_digest(resolved)?, commit))
}

fn model_digest(resolved: ModelFiles) -> Result<String> {
    let files = match resolved {
        ModelFiles::Gguf(path) => vec![path],
        ModelFiles::HfDir(dir) => {
            let mut files = vec![crate::model::io::folder::file(&dir, "config.json")?];
            files.extend(weight_files(&dir)?);
            files
        }
    };
    let mut hasher = Sha256::new();
    for path in files {
        let mut file =
            std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let len = file.metadata()?.len();
        hasher.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(len.to_le_bytes());
        let mut buf = vec![0u8; SLICE as usize];
        let offsets: Vec<u64> = if len <= SLICE * (SLICES + 2) {
            (0..len.div_ceil(SLICE)).map(|i| i * SLICE).collect()
        } else {
            (0..SLICES + 2)
                .map(|i| i * (len - SLICE) / (SLICES + 1))
                .collect()
        };
        for at in offsets {
            file.seek(SeekFrom::Start(at))?;
            let n = (len - at).min(SLICE) as usize;
            file.read_exact(&mut buf[..n])
                .with_context(|| format!("reading {}", path.display()))?;
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex(&hasher.finalize()))
}

/// One override a resume applies: the key, and its value before and after.
#[derive(Debug, Serialize)]
pub struct Change {
    pub key: String,
    pub was: String,
    pub now: String,
}

/// The settings `now` changes from the run's own config `stored`; refuses those a resume may
/// not change, naming each and why.
pub fn changes(stored: &Config, now: &Config) -> Result<Vec<Change>> {
    let (a, b) = (toml::Value::try_from(stored)?, toml::Value::try_from(now)?);
    let mut diffs = Vec::new();
    diff(&a, &b, "", &mut diffs);
    let refused: Vec<&Change> = diffs.iter().filter(|c| !may_change(&c.key)).collect();
    if let Some(first) = refused.first() {
        let keys: Vec<&str> = refused.iter().map(|c| c.key.as_str()).collect();
        bail!(
            "cannot resume with `{}` = {} (the run started with {}): a resumed run keeps what \
             its checkpoints and curricula were made with ({}); start a new run to change it. \
             A resume may change: {}",
            first.key,
            first.now,
            first.was,
            keys.join(", "),
            MAY_CHANGE
                .iter()
                .map(|k| k
                    .strip_suffix('.')
                    .map_or(k.to_string(), |s| format!("{s}.*")))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(diffs)
}

fn diff(a: &toml::Value, b: &toml::Value, key: &str, out: &mut Vec<Change>) {
    let join = |k: &str| {
        if key.is_empty() {
            k.to_string()
        } else {
            format!("{key}.{k}")
        }
    };
    match (a, b) {
        (toml::Value::Table(x), toml::Value::Table(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let none = toml::Value::String(String::from("(unset)"));
            for k in keys {
                diff(
                    x.get(k).unwrap_or(&none),
                    y.get(k).unwrap_or(&none),
                    &join(k),
                    out,
                );
            }
        }
        _ if a != b => out.push(Change {
            key: key.to_string(),
            was: a.to_string(),
            now: b.to_string(),
        }),
        _ => {}
    }
}

/// Records a resume's changes: the original config kept (once) as `config.initial.toml`, and a
/// line in `resumes.jsonl` saying from which checkpoint and what changed.
pub fn record(run: &Path, checkpoint: Option<&Path>, changes: &[Change]) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let initial = run.join(INITIAL_CONFIG);
    if !initial.exists() {
        let config = run.join("config.toml");
        let text =
            std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
        write_atomic(&initial, &text)?;
    }
    let line = serde_json::json!({
        "checkpoint": checkpoint.map(|c| c.display().to_string()),
        "changed": changes,
    });
    let path = run.join(RESUMES);
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&format!("{line}\n"));
    write_atomic(&path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_may_change_how_the_run_goes_on_but_not_what_it_is() {
        let base = Config::from_toml(
            "[model]\nsource = \"m\"\n[data]\ntrain = \"t.jsonl\"\n",
            &[],
        )
        .unwrap();
        let lr = Config::from_toml(
            "[model]\nsource = \"m\"\n[data]\ntrain = \"t.jsonl\"\n",
            &["sft.learning_rate=1e-5".into(), "eval.batch_size=3".into()],
        )
        .unwrap();
        let c = changes(&base, &lr).unwrap();
        let keys: Vec<&str> = c.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["eval.batch_size", "sft.learning_rate"]);
        for set in [
            "model.lora.r=8",
            "data.format=chat",
            "run.seed=3",
            "sft.batch_size=2",
        ] {
            let other = Config::from_toml(
                "[model]\nsource = \"m\"\n[data]\ntrain = \"t.jsonl\"\n",
                &[set.into()],
            )
            .unwrap();
            let e = format!("{:#}", changes(&base, &other).unwrap_err());
            let key = set.split('=').next().unwrap();
            assert!(e.contains(&format!("cannot resume with `{key}`")), "{e}");
        }
    }

    #[test]
    fn the_model_digest_sees_content_not_only_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.gguf");
        let mut bytes = vec![7u8; (SLICE * 40) as usize];
        std::fs::write(&m, &bytes).unwrap();
        let digest = |m: &Path| model_print(m.to_str().unwrap(), None).unwrap();
        let a = digest(&m);
        assert_eq!(a.1, None, "a local file has no hub commit");
        // A change inside a sampled slice (the last one) changes the digest.
        *bytes.last_mut().unwrap() = 8;
        std::fs::write(&m, &bytes).unwrap();
        assert_ne!(a.0, digest(&m).0);
    }
}
