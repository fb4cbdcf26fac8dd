//! GGUF checkpoints (llama.cpp's format) turned into what a Hugging Face directory would give:
//! a resolved config from the metadata, tensors dequantized under HF names (with the Q/K rows of
//! `llama` models put back from llama.cpp's interleaved rotary layout), and a byte-level BPE
//! tokenizer rebuilt from `tokenizer.ggml.*` with the embedded chat template.

use super::safetensors::WeightSource;
use crate::model::config::{Arch, ModelConfig};
use crate::tokenizer::{Tokenizer, TokenizerMeta};
use anyhow::{Context, Result, bail};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

pub struct GgufModel {
    pub config: ModelConfig,
    pub weights: WeightSource,
    pub tokenizer: Tokenizer,
}

struct Meta<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.map
            .get(key)
            .with_context(|| format!("{}: missing GGUF metadata `{key}`", self.path.display()))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| x.max(0) as u64))
            .map(|x| x as usize)
            .with_context(|| {
                format!(
                    "{}: GGUF metadata `{key}` is not an integer",
                    self.path.display()
                )
            })
    }
    fn f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .with_context(|| {
                format!(
                    "{}: GGUF metadata `{key}` is not a number",
                    self.path.display()
                )
            })
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.map.get(key).and_then(|v| v.to_u32().ok())
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.get(key)?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<candle_core::Result<_>>()
            .with_context(|| {
                format!(
                    "{}: GGUF metadata `{key}` is not a list of strings",
                    self.path.display()
                )
            })
    }
}

/// Refuses tensors whose dimensions overflow or whose data would not fit in the file, before
/// any is read or allocated.
fn check_tensor_sizes(content: &Content, file_len: u64) -> Result<()> {
    let data = file_len.saturating_sub(content.tensor_data_offset);
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elems = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let bytes = elems.and_then(|n| {
            let block = info.ggml_dtype.block_size() as u64;
            (n / block).checked_mul(info.ggml_dtype.type_size() as u64)
        });
        match bytes {
            Some(b) if info.offset.checked_add(b).is_some_and(|end| end <= data) => {}
            Some(b) => bail!(
                "tensor `{name}` ({dims:?}) needs {b} bytes at offset {}, the file has {data} \
                 bytes of tensor data (truncated or corrupt?)",
                info.offset
            ),
            None => bail!("tensor `{name}`: dimensions {dims:?} overflow"),
        }
    }
    Ok(())
}

/// Reads a GGUF file, dequantizing every tensor to `dtype` on the CPU.
pub fn load(path: &Path, dtype: DType) -> Result<GgufModel> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = file.metadata()?.len();
    // Buffered: the reader takes metadata a few bytes at a time.
    let mut file = std::io::BufReader::new(file);
    let content = crate::contain::contained(path.display(), || Content::read(&mut file))?
        .with_context(|| {
            format!(
                "{}: not a readable GGUF file (truncated or corrupt?)",
                path.display()
            )
        })?;
    check_tensor_sizes(&content, file_len).with_context(|| format!("{}", path.display()))?;
    let meta = Meta {
        path,
        map: &content.metadata,
    };
    let arch_name = meta.get("general.architecture")?.to_string()?.clone();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen3" => Arch::Qwen3,
        other => bail!(
            "{}: unsupported GGUF architecture `{other}` (general.architecture): edco supports llama and qwen3",
            path.display()
        ),
    };
    let k = |s: &str| format!("{arch_name}.{s}");
    // llama.cpp stores Llama 3.1+ frequency scaling as `rope_freqs.weight` factors; loading
    // without them would be silently wrong, so such files are refused until they are supported.
    let scaling = meta
        .map
        .get(&k("rope.scaling.type"))
        .and_then(|v| v.to_string().ok())
        .cloned();
    if content.tensor_infos.contains_key("rope_freqs.weight")
        || scaling.as_deref().is_some_and(|t| t != "none")
    {
        bail!(
            "{}: rope frequency scaling in GGUF files (rope_freqs.weight / {arch_name}.rope.scaling.type) is not supported; use the Hugging Face checkpoint",
            path.display()
        );
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let hidden_size = meta.usize(&k("embedding_length"))?;
    let num_attention_heads = meta.usize(&k("attention.head_count"))?;
    let num_key_value_heads = meta
        .usize(&k("attention.head_count_kv"))
        .unwrap_or(num_attention_heads);
    if num_attention_heads == 0
        || num_key_value_heads == 0
        || num_attention_heads % num_key_value_heads != 0
    {
        bail!(
            "{}: inconsistent head counts {num_attention_heads} / {num_key_value_heads} \
             ({arch_name}.attention.head_count / head_count_kv)",
            path.display()
        );
    }
    let head_dim = meta
        .usize(&k("attention.key_length"))
        .unwrap_or(hidden_size / num_attention_heads);
    let tied = !content.tensor_infos.contains_key("output.weight");
    let eos = meta.opt_u32("tokenizer.ggml.eos_token_id");
    let config = ModelConfig {
        arch,
        vocab_size: meta.usize(&k("vocab_size")).unwrap_or(tokens.len()),
        hidden_size,
        intermediate_size: meta.usize(&k("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&k("block_count"))?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: meta.f64(&k("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.f64(&k("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: meta.usize(&k("context_length")).unwrap_or(4096),
        tie_word_embeddings: tied,
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        mlp_bias: false,
        bos_token_id: meta.opt_u32("tokenizer.ggml.bos_token_id"),
        eos_token_ids: eos.into_iter().collect(),
    };
    // The checks a config.json gets (its fields are GGUF keys here).
    let positive = [
        ("vocab_size", config.vocab_size),
        ("embedding_length", config.hidden_size),
        ("feed_forward_length", config.intermediate_size),
        ("block_count", config.num_hidden_layers),
    ];
    for (key, v) in positive {
        if v == 0 {
            bail!("{}: `{arch_name}.{key}` must be positive", path.display());
        }
    }
    config.check_numbers(|key| {
        let key = match key {
            "rms_norm_eps" => "attention.layer_norm_rms_epsilon",
            "rope_theta" => "rope.freq_base",
            other => other,
        };
        format!("{}: `{arch_name}.{key}`", path.display())
    })?;
    if config.head_dim == 0 || !config.head_dim.is_multiple_of(2) {
        bail!(
            "{}: head size {} must be even and positive ({arch_name}.attention.key_length)",
            path.display(),
            config.head_dim
        );
    }

    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else { continue };
        let q = content.tensor(&mut file, name, &device).with_context(|| {
            format!(
                "{}: reading tensor `{name}` (truncated file?)",
                path.display()
            )
        })?;
        let mut t = q.dequantize(&device)?;
        if arch == Arch::Llama && hf.ends_with("self_attn.q_proj.weight") {
            t = unpermute_rotary(&t, num_attention_heads)?;
        } else if arch == Arch::Llama && hf.ends_with("self_attn.k_proj.weight") {
            t = unpermute_rotary(&t, num_key_value_heads)?;
        }
        tensors.insert(hf, t.to_dtype(dtype)?);
    }
    let tokenizer = rebuild_tokenizer(&meta, tokens)?;
    Ok(GgufModel {
        config,
        weights: WeightSource::Memory {
            origin: path.display().to_string(),
            tensors,
        },
        tokenizer,
    })
}

/// llama.cpp's converter interleaves the two rotary halves of each head's Q/K rows
/// (`w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)`); this is its inverse.
fn unpermute_rotary(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let half = out / n_head / 2;
    Ok(w.reshape((n_head, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, rest) = rest.split_once('.')?;
            let (module, kind) = rest.rsplit_once('.')?;
            let hf = match module {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}.{kind}")
        }
    })
}

fn rebuild_tokenizer(meta: &Meta, tokens: Vec<String>) -> Result<Tokenizer> {
    let model = meta.get("tokenizer.ggml.model")?.to_string()?.clone();
    if model != "gpt2" {
        bail!(
            "{}: GGUF tokenizer model `{model}` (tokenizer.ggml.model) is not supported; edco rebuilds byte-level BPE (`gpt2`) tokenizers",
            meta.path.display()
        );
    }
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let types: Vec<i32> = match meta.map.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|x| x.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };
    let pre = meta
        .map
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let chat_template = meta
        .map
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let name_of = |key: &str| {
        meta.opt_u32(key)
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    let info = TokenizerMeta {
        chat_template,
        bos_token: name_of("tokenizer.ggml.bos_token_id"),
        eos_token: name_of("tokenizer.ggml.eos_token_id"),
        pad_token: name_of("tokenizer.ggml.padding_token_id"),
        add_bos_token: meta
            .map
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
    };
    // Token types 3 (control) and 4 (user-defined) are llama.cpp's special tokens.
    let special: Vec<(u32, String)> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| (i as u32, t.clone()))
        .collect();
    let origin = format!("the tokenizer in {}'s metadata", meta.path.display());
    Tokenizer::byte_level_bpe(tokens, merges, &special, pre.as_deref(), info, origin).with_context(
        || {
            format!(
                "{}: rebuilding the tokenizer from GGUF metadata",
                meta.path.display()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let (n_head, d, inp) = (2, 4, 3);
        let w = Tensor::arange(0f32, (n_head * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((n_head * d, inp))
            .unwrap();
        // llama.cpp: w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)
        let permuted = w
            .reshape((n_head, 2, d / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((n_head * d, inp))
            .unwrap();
        let back = unpermute_rotary(&permuted, n_head).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_ne!(
            permuted.to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("rope_freqs.weight").is_none());
    }

    #[test]
    fn truncated_gguf_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.gguf");
        std::fs::write(&p, b"GGUF\x03\x00\x00\x00\x05").unwrap();
        let e = load(&p, DType::F32).err().unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("bad.gguf") && msg.contains("not a readable GGUF"),
            "{msg}"
        );
    }
}
