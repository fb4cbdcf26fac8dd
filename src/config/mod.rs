//! The training run's configuration: one TOML file, typed, unknown keys rejected, every default
//! explicit (`sections`), `--set section.key=value` overrides applied before parsing, and every
//! value checked and resolved into the values the run uses by [`Config::resolve`] (`resolve`),
//! which [`Config::load`] runs once; the command line's flags go through the same checks.

mod resolve;
mod sections;

pub use resolve::{
    ModelSettings, Names, OptimizerSettings, Settings, max_length, positive, read_options, sampling,
};
pub use sections::*;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The trainer: sft or grpo.
    pub method: Method,
    pub model: ModelSection,
    pub data: DataSection,
    pub entropy: EntropySection,
    pub curriculum: CurriculumSection,
    pub sft: SftSection,
    pub grpo: GrpoSection,
    pub eval: EvalSection,
    pub run: RunSection,
}

/// Applies `section.key=value` overrides to a parsed TOML document. Values are read as TOML
/// (numbers, booleans, arrays, inline tables), falling back to a plain string.
fn apply_overrides(doc: &mut toml::Table, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (key, raw) = o
            .split_once('=')
            .with_context(|| format!("--set `{o}`: expected section.key=value"))?;
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        let parts: Vec<&str> = key.trim().split('.').collect();
        let (last, path) = parts.split_last().context("--set: empty key")?;
        let mut table = &mut *doc;
        for p in path {
            table = table
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .with_context(|| format!("--set `{o}`: `{p}` is not a section"))?;
        }
        table.insert(last.to_string(), value);
    }
    Ok(())
}

impl Config {
    /// Reads, overrides, parses and validates a config file; relative data paths are taken
    /// relative to the current directory, as a user types them.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::from_toml(&text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        // Without overrides, parse the text itself so errors carry its line and column.
        let cfg: Config = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?
        } else {
            let mut doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            apply_overrides(&mut doc, overrides)?;
            toml::Value::Table(doc)
                .try_into()
                .map_err(|e: toml::de::Error| anyhow::anyhow!("{e}"))?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every setting (see [`Config::resolve`]).
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(drop)
    }

    /// Samples per round for a pool of `pool` samples.
    pub fn per_round(&self, pool: usize) -> usize {
        let c = &self.curriculum;
        let n = if c.select_n > 0 {
            c.select_n
        } else {
            (pool as f64 * c.select_fraction).round() as usize
        };
        n.clamp(1, pool.max(1))
    }

    pub fn template_args(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::to_value(&self.model.template_args)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[model]\nsource = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let c = Config::from_toml(MINIMAL, &[]).unwrap();
        assert_eq!(c.sft, SftSection::default());
        assert_eq!(c.curriculum.rounds, 8);
        assert_eq!(c.per_round(7000), 1750);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e =
            Config::from_toml(&format!("{MINIMAL}[sft]\nlearning_rat = 1e-5\n"), &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("learning_rat"), "{msg}");
        let e = Config::from_toml(&format!("{MINIMAL}[sftt]\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("sftt"));
    }

    #[test]
    fn overrides_apply_before_validation() {
        let c = Config::from_toml(
            MINIMAL,
            &[
                "sft.learning_rate=1e-4".into(),
                "curriculum.strategy=random".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.sft.learning_rate, 1e-4);
        assert_eq!(c.curriculum.strategy, Strategy::Random);
        let e = Config::from_toml(MINIMAL, &["curriculum.rounds=0".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("curriculum.rounds"));
        let e = Config::from_toml(MINIMAL, &["sft.batch_size=\"eight\"".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("batch_size"), "{e:#}");
    }

    #[test]
    fn type_errors_name_the_line() {
        let e =
            Config::from_toml(&format!("{MINIMAL}[sft]\nbatch_size = \"x\"\n"), &[]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("batch_size") && msg.contains("line 6"),
            "{msg}"
        );
    }

    #[test]
    fn attention_is_checked_against_dtype_device_and_build() {
        let err = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            format!("{:#}", Config::from_toml(MINIMAL, &sets).unwrap_err())
        };
        let msg = err(&["model.attention=fast"]);
        assert!(
            msg.contains("`model.attention`: expected composed or flash"),
            "{msg}"
        );
        // On the CPU in f32 (the defaults), flash is refused whatever the build.
        let msg = err(&["model.attention=flash"]);
        assert!(msg.contains("`model.attention`: flash"), "{msg}");
        let msg = err(&["model.attention=flash", "model.device=cuda"]);
        assert!(msg.contains("`model.attention`: flash"), "{msg}");
        let with_flash = Config::from_toml(
            MINIMAL,
            &[
                "model.attention=flash".into(),
                "model.device=cuda".into(),
                "model.dtype=bf16".into(),
            ],
        );
        assert_eq!(with_flash.is_ok(), cfg!(feature = "flash-attn"));
    }
}
