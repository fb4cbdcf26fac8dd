//! Model configuration: the on-disk Hugging Face `config.json` (every field optional, both the
//! older `rope_theta`/`rope_scaling` keys and transformers 5's `rope_parameters`) resolved once
//! into a [`ModelConfig`] with no options left, which is what the decoder is built from.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The two decoder flavours edco trains. They differ only in Qwen3's per-head q/k RMSNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Qwen3,
    Llama,
}

impl Arch {
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Llama => "LlamaForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen3 => "qwen3",
            Arch::Llama => "llama",
        }
    }
}

/// Llama 3.x frequency scaling (`rope_type: llama3`), as Llama-3.1/3.2 use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// A resolved configuration: every value the decoder needs, nothing optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// `config.json` as written by transformers (4.x or 5.x); unknown keys are ignored because real
/// checkpoints carry many that do not affect the maths.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Refuses the real numbers the model cannot run with (they would give NaN at the first
    /// token, or divide by zero): the norm's epsilon and the rope base must be finite and
    /// positive, and so must llama3 rope scaling's factors. `name` says how the file names a
    /// setting.
    pub fn check_numbers(&self, name: impl Fn(&str) -> String) -> Result<()> {
        let mut numbers = vec![
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ];
        if let Some(s) = &self.rope_scaling {
            numbers.extend([
                ("rope_scaling.factor", s.factor),
                ("rope_scaling.low_freq_factor", s.low_freq_factor),
                ("rope_scaling.high_freq_factor", s.high_freq_factor),
                (
                    "rope_scaling.original_max_position_embeddings",
                    s.original_max_position_embeddings as f64,
                ),
            ]);
        }
        for (key, v) in numbers {
            if !(v.is_finite() && v > 0.0) {
                bail!("{}: must be finite and positive, got {v}", name(key));
            }
        }
        Ok(())
    }

    /// Reads and resolves a `config.json`; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading model config {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("in model config {}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text).context("malformed config.json")?;
        hf.resolve()
    }

    pub fn num_kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The `config.json` that transformers loads for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_architecture()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "torch_dtype": "float32",
        });
        let obj = v.as_object_mut().expect("json! object");
        if self.arch == Arch::Llama {
            obj.insert("mlp_bias".into(), self.mlp_bias.into());
        }
        if let Some(s) = self.rope_scaling {
            obj.insert(
                "rope_scaling".into(),
                serde_json::json!({
                    "rope_type": "llama3",
                    "factor": s.factor,
                    "low_freq_factor": s.low_freq_factor,
                    "high_freq_factor": s.high_freq_factor,
                    "original_max_position_embeddings": s.original_max_position_embeddings,
                }),
            );
        }
        if let Some(bos) = self.bos_token_id {
            obj.insert("bos_token_id".into(), bos.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                obj.insert("eos_token_id".into(), many.into());
            }
        }
        v
    }
}

fn require<T>(value: Option<T>, field: &str) -> Result<T> {
    value.with_context(|| format!("missing field `{field}`"))
}

/// Token ids in config files are a number, a list of numbers, or null.
pub(crate) fn token_ids(value: &Option<serde_json::Value>, field: &str) -> Result<Vec<u32>> {
    let as_id = |v: &serde_json::Value| -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .with_context(|| format!("field `{field}`: expected a token id, got {v}"))
    };
    match value {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

impl HfConfig {
    fn arch(&self) -> Result<Arch> {
        let model_type = self.model_type.as_deref().or_else(|| {
            self.architectures
                .as_ref()
                .and_then(|a| a.first())
                .map(|a| match a.as_str() {
                    "Qwen3ForCausalLM" => "qwen3",
                    "LlamaForCausalLM" => "llama",
                    other => other,
                })
        });
        match model_type {
            Some("qwen3") => Ok(Arch::Qwen3),
            Some("llama") => Ok(Arch::Llama),
            Some(other) => bail!(
                "unsupported architecture `{other}` (field `model_type`): edco supports `qwen3` and `llama`"
            ),
            None => bail!("missing field `model_type` (and no `architectures`)"),
        }
    }

    /// Rope settings from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`.
    fn rope(&self) -> Result<(f64, Option<Llama3RopeScaling>)> {
        let (theta, scaling, field) = match &self.rope_parameters {
            Some(p) => (
                p.get("rope_theta")
                    .and_then(|t| t.as_f64())
                    .or(self.rope_theta),
                Some(p.clone()),
                "rope_parameters",
            ),
            None => (self.rope_theta, self.rope_scaling.clone(), "rope_scaling"),
        };
        let theta = theta.unwrap_or(10_000.0);
        let Some(scaling) = scaling.filter(|s| !s.is_null()) else {
            return Ok((theta, None));
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        match kind {
            "default" => Ok((theta, None)),
            "llama3" => {
                let num = |key: &str| -> Result<f64> {
                    scaling
                        .get(key)
                        .and_then(|v| v.as_f64())
                        .with_context(|| format!("field `{field}.{key}`: expected a number"))
                };
                let scaling = Llama3RopeScaling {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?
                        as usize,
                };
                if scaling.high_freq_factor <= scaling.low_freq_factor {
                    bail!("field `{field}`: high_freq_factor must exceed low_freq_factor");
                }
                Ok((theta, Some(scaling)))
            }
            other => bail!(
                "unsupported rope type `{other}` (field `{field}.rope_type`): edco supports `default` and `llama3`"
            ),
        }
    }

    fn resolve(self) -> Result<ModelConfig> {
        let arch = self.arch()?;
        if self.use_sliding_window == Some(true) {
            bail!("field `use_sliding_window`: sliding-window attention is not supported");
        }
        let hidden_size = require(self.hidden_size, "hidden_size")?;
        let num_attention_heads = require(self.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 {
            bail!("fields `num_attention_heads` and `num_key_value_heads` must be positive");
        }
        if num_attention_heads % num_key_value_heads != 0 {
            bail!(
                "field `num_key_value_heads`: {num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
            );
        }
        let head_dim = self.head_dim.unwrap_or(hidden_size / num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            bail!("field `head_dim`: {head_dim} must be even and positive");
        }
        let (rope_theta, rope_scaling) = self.rope()?;
        let config = ModelConfig {
            arch,
            vocab_size: require(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: require(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: require(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            // transformers' default is tied for both architectures' PretrainedConfig.
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
            attention_bias: self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            bos_token_id: token_ids(&self.bos_token_id, "bos_token_id")?
                .first()
                .copied(),
            eos_token_ids: token_ids(&self.eos_token_id, "eos_token_id")?,
        };
        if config.vocab_size == 0 || config.hidden_size == 0 || config.num_hidden_layers == 0 {
            bail!("fields `vocab_size`, `hidden_size` and `num_hidden_layers` must be positive");
        }
        config.check_numbers(|name| format!("field `{name}`"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3: &str = r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3",
        "vocab_size":151936,"hidden_size":2560,"intermediate_size":9728,"num_hidden_layers":36,
        "num_attention_heads":32,"num_key_value_heads":8,"head_dim":128,"rms_norm_eps":1e-6,
        "rope_theta":1000000,"rope_scaling":null,"max_position_embeddings":40960,
        "tie_word_embeddings":true,"attention_bias":false,"eos_token_id":151645,"bos_token_id":151643}"#;

    #[test]
    fn qwen3_4b_config_resolves() {
        let c = ModelConfig::from_json_str(QWEN3).unwrap();
        assert_eq!(c.arch, Arch::Qwen3);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.num_kv_groups(), 4);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.eos_token_ids, vec![151645]);
    }

    #[test]
    fn both_rope_layouts_give_the_same_config() {
        let old = r#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192},"eos_token_id":[1,2]}"#;
        let new = r#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_parameters":{"rope_type":"llama3",
            "rope_theta":500000.0,"factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192},"eos_token_id":[1,2]}"#;
        let a = ModelConfig::from_json_str(old).unwrap();
        let b = ModelConfig::from_json_str(new).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rope_scaling.unwrap().factor, 32.0);
        assert_eq!(a.eos_token_ids, vec![1, 2]);
        // The written config reads back to the same thing.
        let c = ModelConfig::from_json_str(&a.to_hf_json().to_string()).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ModelConfig::from_json_str(r#"{"model_type":"gpt2"}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("unsupported architecture `gpt2`"),
            "{e:#}"
        );
        let e = ModelConfig::from_json_str(r#"{"model_type":"llama","vocab_size":8}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("missing field `hidden_size`"),
            "{e:#}"
        );
        let e = ModelConfig::from_json_str("{not json").unwrap_err();
        assert!(format!("{e:#}").contains("malformed config.json"), "{e:#}");
        let bad_rope = QWEN3.replace(
            r#""rope_scaling":null"#,
            r#""rope_scaling":{"rope_type":"yarn"}"#,
        );
        let e = ModelConfig::from_json_str(&bad_rope).unwrap_err();
        assert!(
            format!("{e:#}").contains("unsupported rope type `yarn`"),
            "{e:#}"
        );
    }
}
