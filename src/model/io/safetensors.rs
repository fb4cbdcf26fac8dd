//! Where a decoder's tensors come from and go to: Hugging Face safetensors (one file or a sharded
//! set with `model.safetensors.index.json`), an in-memory map (GGUF, random init), and safetensors
//! writes with the `format: pt` metadata transformers expects.

use crate::atomic_file::write_atomic;
use anyhow::{Context, Result, bail};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A read-only source of named tensors.
pub enum WeightSource {
    Safetensors {
        files: Vec<PathBuf>,
        tensors: MmapedSafetensors,
    },
    Memory {
        origin: String,
        tensors: HashMap<String, Tensor>,
    },
}

impl WeightSource {
    /// The safetensors of a Hugging Face model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        Self::from_files(weight_files(dir)?)
    }

    pub fn from_files(files: Vec<PathBuf>) -> Result<Self> {
        for f in &files {
            check_safetensors_header(f)?;
        }
        // SAFETY: the files are opened read-only; edco never writes a file it has mapped, and
        // checkpoints are written under a new name and renamed into place.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }
            .with_context(|| format!("opening safetensors {}", display_list(&files)))?;
        Ok(Self::Safetensors { files, tensors })
    }

    pub fn origin(&self) -> String {
        match self {
            Self::Safetensors { files, .. } => display_list(files),
            Self::Memory { origin, .. } => origin.clone(),
        }
    }

    /// The tensor `name`, checked against `shape`, converted to `dtype` on `device`.
    pub fn get(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = match self {
            Self::Safetensors { tensors, .. } => {
                if tensors.get(name).is_err() {
                    bail!("{}: missing tensor `{name}`", self.origin());
                }
                tensors
                    .load(name, device)
                    .with_context(|| format!("{}: reading tensor `{name}`", self.origin()))?
            }
            Self::Memory { tensors, .. } => tensors
                .get(name)
                .with_context(|| format!("{}: missing tensor `{name}`", self.origin()))?
                .to_device(device)?,
        };
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, the config implies {:?}",
                self.origin(),
                t.dims(),
                shape
            );
        }
        Ok(t.to_dtype(dtype)?)
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::Safetensors { tensors, .. } => tensors.get(name).is_ok(),
            Self::Memory { tensors, .. } => tensors.contains_key(name),
        }
    }
}

fn display_list(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        _ => format!(
            "{} (+{} shards)",
            files
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            files.len().saturating_sub(1)
        ),
    }
}

/// The shard files named by `model.safetensors.index.json`, in a stable order.
/// The weight files a Hugging Face directory is loaded from: `model.safetensors`, or the shards
/// its index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = super::folder::file(dir, "model.safetensors")?;
    let index = super::folder::file(dir, "model.safetensors.index.json")?;
    if single.is_file() {
        Ok(vec![single])
    } else if index.is_file() {
        shard_files(&index)
    } else {
        bail!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        )
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let files = index_shards(index)?
        .iter()
        .map(|n| super::folder::file(dir, n))
        .collect::<Result<Vec<PathBuf>>>()?;
    for f in &files {
        if !f.is_file() {
            bail!("{}: shard {} does not exist", index.display(), f.display());
        }
    }
    Ok(files)
}

/// The largest `model.safetensors.index.json` read (the hub's largest are a few hundred KB).
const MAX_INDEX_BYTES: u64 = 16 << 20;

/// The distinct shard names an index's `weight_map` gives, each a file inside the model folder
/// ([`shard_name`]), in order. Checked before any shard is read or downloaded.
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    let size = std::fs::metadata(index)
        .with_context(|| format!("reading {}", index.display()))?
        .len();
    if size > MAX_INDEX_BYTES {
        bail!(
            "{}: {size} bytes, more than an index of shards needs (at most {MAX_INDEX_BYTES})",
            index.display()
        );
    }
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: malformed JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: missing object `weight_map`", index.display()))?;
    let mut names = std::collections::BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().with_context(|| {
            format!(
                "{}: `weight_map.{tensor}` is not a file name",
                index.display()
            )
        })?;
        names.insert(
            shard_name(file)
                .with_context(|| format!("{}: `weight_map.{tensor}`", index.display()))?,
        );
    }
    Ok(names.into_iter().collect())
}

/// A shard name as a path inside the model folder: relative, without `..`, a root or a
/// backslash; `./a` and `.//a` are `a`, so one file has one name.
pub fn shard_name(name: &str) -> Result<String> {
    use std::path::Component;
    let refuse = || {
        anyhow::anyhow!(
            "shard `{name}` is not a file name inside the model folder (absolute, `..` or empty)"
        )
    };
    if name.contains('\\') {
        return Err(refuse());
    }
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().ok_or_else(refuse)?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(refuse());
            }
        }
    }
    if parts.is_empty() {
        return Err(refuse());
    }
    Ok(parts.join("/"))
}

/// Bytes per element of a safetensors dtype; `None` for the sub-byte ones (F4, F6_*), whose
/// sizes are not checked here, and for names safetensors does not define.
fn dtype_size(dtype: &str) -> Option<Option<u64>> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => Some(1),
        "I16" | "U16" | "F16" | "BF16" => Some(2),
        "I32" | "U32" | "F32" => Some(4),
        "C64" | "F64" | "I64" | "U64" => Some(8),
        "F4" | "F6_E2M3" | "F6_E3M2" => None,
        _ => return None,
    })
}

/// Checks one tensor's header entry against the data section, naming the tensor.
fn check_entry(name: &str, entry: &serde_json::Value, data_len: u64) -> Result<()> {
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
    let Some(size) = dtype_size(dtype) else {
        bail!("tensor `{name}`: unknown dtype `{dtype}`");
    };
    let shape: Option<Vec<u64>> = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|s| s.iter().map(|d| d.as_u64()).collect());
    let Some(shape) = shape else {
        bail!("tensor `{name}`: `shape` is not a list of sizes");
    };
    let offsets = entry
        .get("data_offsets")
        .and_then(|o| Some((o.get(0)?.as_u64()?, o.get(1)?.as_u64()?)));
    let Some((start, end)) = offsets.filter(|(a, b)| a <= b) else {
        bail!("tensor `{name}`: `data_offsets` is not a [start, end] pair");
    };
    if end > data_len {
        bail!(
            "tensor `{name}`: truncated safetensors file (the tensor's data ends at byte {end}, \
             the file has {data_len} bytes of data)"
        );
    }
    let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    if let (Some(size), Some(n)) = (size, elements)
        && n.checked_mul(size) != Some(end - start)
    {
        bail!(
            "tensor `{name}`: shape {shape:?} of {dtype} needs {} bytes, its data_offsets give {}",
            n.saturating_mul(size),
            end - start
        );
    }
    Ok(())
}

/// The largest header the safetensors format accepts (its reference reader's limit): refused
/// before it is read, not after it was parsed.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Validates that the header fits in the file and every tensor's entry is well formed, with
/// its bytes inside the file, so a truncated download or a corrupt header is reported by file
/// and tensor instead of failing deep in a read.
pub fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let file_len = f.metadata()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: truncated safetensors file (no header)", path.display()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES {
        bail!(
            "{}: a safetensors header of {header_len} bytes, more than the format allows \
             ({MAX_HEADER_BYTES})",
            path.display()
        );
    }
    if header_len > file_len.saturating_sub(8) {
        bail!(
            "{}: truncated or corrupt safetensors file (header of {header_len} bytes, file of {file_len})",
            path.display()
        );
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: corrupt safetensors header", path.display()))?;
    let data_len = file_len - 8 - header_len;
    let Some(entries) = json.as_object() else {
        bail!(
            "{}: corrupt safetensors header (not a JSON object)",
            path.display()
        );
    };
    for (name, entry) in entries.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        check_entry(name, entry, data_len).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// Writes `tensors` to `path` as safetensors with transformers' metadata, atomically.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let mut cpu = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        cpu.push((name.as_str(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = safetensors::serialize(cpu.iter().map(|(n, t)| (*n, t)), metadata)
        .with_context(|| format!("serialising {}", path.display()))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_stay_inside_the_folder_with_one_spelling_each() {
        assert_eq!(shard_name("./a.safetensors").unwrap(), "a.safetensors");
        assert_eq!(shard_name(".//a.safetensors").unwrap(), "a.safetensors");
        assert_eq!(shard_name("sub/./b").unwrap(), "sub/b");
        for bad in ["/etc/passwd", "../a", "sub/../../a", "", ".", "a\\..\\b"] {
            let e = shard_name(bad).unwrap_err().to_string();
            assert!(
                e.contains("not a file name inside the model folder"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn an_oversized_header_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.safetensors");
        let file = std::fs::File::create(&path).unwrap();
        use std::io::Write;
        (&file).write_all(&155_000_000u64.to_le_bytes()).unwrap();
        // Sparse: the length is there, the bytes are not read.
        file.set_len(8 + 155_000_000 + 16).unwrap();
        let e = check_safetensors_header(&path).unwrap_err().to_string();
        assert!(
            e.contains("a safetensors header of 155000000 bytes, more than"),
            "{e}"
        );
    }

    #[test]
    fn an_index_is_read_once_per_shard_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("model.safetensors.index.json");
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "s.safetensors", "b": "./s.safetensors", "c": ".//s.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(index_shards(&index).unwrap(), ["s.safetensors"]);
        std::fs::write(
            &index,
            r#"{"weight_map": {"a": "s.safetensors", "b": "../../etc/passwd"}}"#,
        )
        .unwrap();
        let e = format!("{:#}", index_shards(&index).unwrap_err());
        assert!(
            e.contains("model.safetensors.index.json: `weight_map.b`: shard `../../etc/passwd`"),
            "{e}"
        );
    }
}
