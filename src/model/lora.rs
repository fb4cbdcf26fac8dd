//! LoRA adapters over a frozen base, in PEFT's format: `adapter_config.json` and
//! `adapter_model.safetensors` with keys `base_model.model.<module>.lora_{A,B}.weight`, so Python
//! `peft` loads what edco saves and the other way round. Init follows PEFT: A ~ kaiming-uniform
//! (a = sqrt 5), B = 0, scale = alpha / r (alpha / sqrt r with rsLoRA).

use super::io::safetensors::{WeightSource, save_safetensors};
use super::layers::LoraAdapter;
use super::{Decoder, Trainable};
use crate::atomic_file::write_atomic;
use anyhow::{Context, Result, bail};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The projections LoRA can wrap, by their module names.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank r of A (r, in) and B (out, r).
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Module names (`q_proj`, ..., `down_proj`) to wrap.
    pub target_modules: Vec<String>,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            bail!("lora `r` must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("lora `dropout` must be in [0, 1), got {}", self.dropout);
        }
        if self.target_modules.is_empty() {
            bail!("lora `target_modules` is empty");
        }
        for m in &self.target_modules {
            if !PROJECTIONS.contains(&m.as_str()) {
                bail!(
                    "lora `target_modules`: unknown module `{m}` (expected one of {PROJECTIONS:?})"
                );
            }
        }
        Ok(())
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    fn targets(&self, module_path: &str) -> bool {
        let leaf = module_path.rsplit('.').next().unwrap_or(module_path);
        self.target_modules.iter().any(|t| t == leaf)
    }
}

/// PEFT's `adapter_config.json`: the fields edco reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f32,
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    /// The base model's hub revision (PEFT's name), when it is a hub id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    inference_mode: bool,
}

fn peft_key(module: &str, ab: &str) -> String {
    format!("base_model.model.{module}.lora_{ab}.weight")
}

/// Attaches fresh adapters (PEFT's init) to every targeted projection and makes them the
/// model's trainable variables.
pub(super) fn attach_fresh(model: &mut Decoder, cfg: &LoraConfig, seed: u64) -> Result<()> {
    cfg.validate()?;
    let (dtype, device) = (model.dtype, model.device.clone());
    let mut vars = Vec::new();
    for (i, (name, lin)) in model.linears_mut().enumerate() {
        if !cfg.targets(&name) {
            continue;
        }
        let (out, inp) = lin.weight.dims2()?;
        let bound = 1.0 / (inp as f64).sqrt();
        // candle's CPU RNG cannot be seeded, so draw A from our own generator.
        let a = seeded_uniform(seed.wrapping_add(i as u64), cfg.r * inp, bound);
        let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, inp), &device)?.to_dtype(dtype)?)?;
        let b = Var::zeros((out, cfg.r), dtype, &device)?;
        lin.lora = Some(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: cfg.scale(),
            dropout: cfg.dropout,
        });
        vars.push((peft_key(&name, "A"), a));
        vars.push((peft_key(&name, "B"), b));
    }
    if vars.is_empty() {
        bail!(
            "lora `target_modules` {:?} matched no projection",
            cfg.target_modules
        );
    }
    model.vars = vars;
    model.trainable = Trainable::Lora(cfg.clone());
    Ok(())
}

fn seeded_uniform(seed: u64, n: usize, bound: f64) -> Vec<f32> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect()
}

/// Saves the adapters in PEFT's layout into `dir` (created if needed), each file atomically;
/// `base_model` is the base as the user named it, with its hub revision if any.
pub fn save_adapter(
    model: &Decoder,
    dir: &Path,
    (base_model, revision): (&str, Option<&str>),
) -> Result<()> {
    let Trainable::Lora(cfg) = model.trainable() else {
        bail!("the model has no LoRA adapters to save");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let peft = PeftConfig {
        peft_type: "LORA".into(),
        task_type: Some("CAUSAL_LM".into()),
        r: cfg.r,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules: cfg.target_modules.clone().into(),
        use_rslora: cfg.use_rslora,
        use_dora: false,
        bias: Some("none".into()),
        base_model_name_or_path: Some(base_model.to_string()),
        revision: revision.map(str::to_string),
        fan_in_fan_out: false,
        inference_mode: true,
    };
    let tensors: Vec<(String, Tensor)> = model
        .vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
    write_atomic(
        &dir.join(ADAPTER_CONFIG),
        serde_json::to_string_pretty(&peft)?.as_bytes(),
    )
}

/// Reads a PEFT adapter directory's LoRA settings.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = crate::model::io::folder::file(dir, ADAPTER_CONFIG)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let peft: PeftConfig = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed adapter config", path.display()))?;
    if peft.peft_type != "LORA" {
        bail!(
            "{}: field `peft_type` is `{}`, edco loads only LORA",
            path.display(),
            peft.peft_type
        );
    }
    if peft.use_dora {
        bail!(
            "{}: field `use_dora`: DoRA adapters are not supported",
            path.display()
        );
    }
    if peft.fan_in_fan_out {
        bail!(
            "{}: field `fan_in_fan_out` must be false for these models",
            path.display()
        );
    }
    let target_modules = match &peft.target_modules {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| {
                format!(
                    "{}: field `target_modules`: expected strings",
                    path.display()
                )
            })?,
        serde_json::Value::String(s) if s == "all-linear" => {
            PROJECTIONS.iter().map(|s| s.to_string()).collect()
        }
        other => bail!(
            "{}: field `target_modules`: expected a list of module names or \"all-linear\", got {other}",
            path.display()
        ),
    };
    let cfg = LoraConfig {
        r: peft.r,
        alpha: peft.lora_alpha,
        dropout: peft.lora_dropout,
        target_modules,
        use_rslora: peft.use_rslora,
    };
    cfg.validate()
        .with_context(|| format!("in {}", path.display()))?;
    Ok(cfg)
}

/// Loads a PEFT adapter directory onto `model` (built with `Trainable::Frozen` or `Lora`),
/// replacing any adapters it had; the loaded adapters are trainable.
pub fn load_adapter(model: &mut Decoder, dir: &Path) -> Result<()> {
    let cfg = read_adapter_config(dir)?;
    let weights = crate::model::io::folder::file(dir, ADAPTER_WEIGHTS)?;
    let source = WeightSource::from_files(vec![weights])?;
    let (dtype, device) = (model.dtype, model.device.clone());
    let mut vars = Vec::new();
    for (name, lin) in model.linears_mut() {
        if !cfg.targets(&name) {
            lin.lora = None;
            continue;
        }
        let (out, inp) = lin.weight.dims2()?;
        let a =
            Var::from_tensor(&source.get(&peft_key(&name, "A"), &[cfg.r, inp], dtype, &device)?)?;
        let b =
            Var::from_tensor(&source.get(&peft_key(&name, "B"), &[out, cfg.r], dtype, &device)?)?;
        lin.lora = Some(LoraAdapter {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: cfg.scale(),
            dropout: cfg.dropout,
        });
        vars.push((peft_key(&name, "A"), a));
        vars.push((peft_key(&name, "B"), b));
    }
    model.vars = vars;
    model.trainable = Trainable::Lora(cfg);
    Ok(())
}

/// Folds every adapter into its base weight (`W + scale * B A`) and drops the adapters:
/// the result is a plain model that saves as a Hugging Face directory.
pub fn merge(model: &mut Decoder) -> Result<()> {
    for (_, lin) in model.linears_mut() {
        lin.weight = super::products::matmul_layout(&lin.merged_weight()?)?;
        lin.lora = None;
        // A packed copy of the old weight is of no more use.
        lin.packed = Default::default();
    }
    // Nor are the copies packed in groups (query, key and value; gate and up).
    model.release_packed();
    model.vars.clear();
    model.trainable = Trainable::Frozen;
    Ok(())
}
