//! How and where a model runs, as users name it: its precision (`f32`, `bf16`), its device
//! (`cpu`, `cuda`, `cuda:N`) and the attention of its inference passes (`composed`, `flash`).
//! Each name is parsed here once, for the config and the command line alike, and a CUDA device
//! is opened only after its libraries are found, so a missing one is an error that names it.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use std::fmt;
use std::str::FromStr;

/// The numeric type of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => bail!("expected f32 or bf16, got `{other}`"),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// A device by name, not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// A CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device; for CUDA, after checking that the driver and libraries can be found.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                cuda_libraries_present()?;
                Device::new_cuda(ordinal).with_context(|| {
                    format!("opening CUDA device {ordinal} (was edco built with --features cuda?)")
                })
            }
        }
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
            {
                Some(n) => Ok(DeviceSpec::Cuda(n)),
                None => bail!("expected cpu, cuda or cuda:N, got `{other}`"),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The attention of inference passes (scoring, generation, evaluation, perplexity). Training
/// passes, and the passes compared with them, always take the composed attention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Attention {
    /// candle's ops, or the CPU's kernel in f32.
    #[default]
    Composed,
    /// FlashAttention-2 over packed rows: CUDA, bf16, a `flash-attn` build.
    Flash,
}

impl Attention {
    /// Why this attention cannot run in `precision` on `device` in this build; `None` when it
    /// can (the model's head size is checked when it loads).
    pub fn unavailable(self, precision: Precision, device: DeviceSpec) -> Option<&'static str> {
        match self {
            Attention::Composed => None,
            Attention::Flash if !cfg!(feature = "flash-attn") => Some(
                "this build has no FlashAttention (build with scripts/cuda_build.sh --flash-attn)",
            ),
            Attention::Flash if !device.is_cuda() => {
                Some("FlashAttention runs on CUDA devices only")
            }
            Attention::Flash if precision != Precision::Bf16 => {
                Some("FlashAttention is built for bf16 only")
            }
            Attention::Flash => None,
        }
    }
}

impl FromStr for Attention {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "composed" => Ok(Attention::Composed),
            "flash" => Ok(Attention::Flash),
            other => bail!("expected composed or flash, got `{other}`"),
        }
    }
}

impl fmt::Display for Attention {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Attention::Composed => "composed",
            Attention::Flash => "flash",
        })
    }
}

/// The CUDA build loads the driver and the CUDA libraries when a device is first opened, and the
/// loader panics on a missing one: look for them first, so that a missing library is an error
/// that names it.
#[cfg(feature = "cuda")]
fn cuda_libraries_present() -> Result<()> {
    use candle_core::cuda::cudarc::{cublas, cublaslt, curand, driver, nvrtc};
    // SAFETY: each check only tries to open the library by its candidate names.
    let found = unsafe {
        [
            (
                "the CUDA driver (libcuda.so.1)",
                driver::sys::is_culib_present(),
            ),
            ("cuBLAS (libcublas.so)", cublas::sys::is_culib_present()),
            (
                "cuBLASLt (libcublasLt.so)",
                cublaslt::sys::is_culib_present(),
            ),
            ("cuRAND (libcurand.so)", curand::sys::is_culib_present()),
            ("NVRTC (libnvrtc.so)", nvrtc::sys::is_culib_present()),
        ]
    };
    let missing: Vec<&str> = found
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        bail!(
            "cannot open a CUDA device: {} not found on the library path \
             (set LD_LIBRARY_PATH to the folders holding the CUDA 13 libraries)",
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn cuda_libraries_present() -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for s in ["f32", "bf16"] {
            assert_eq!(s.parse::<Precision>().unwrap().to_string(), s);
        }
        assert_eq!("bfloat16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "cuda:3".parse::<DeviceSpec>().unwrap().to_string(),
            "cuda:3"
        );
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(
            "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string(),
            "expected cpu, cuda or cuda:N, got `cuda:x`"
        );
        let err = "fast".parse::<Attention>().unwrap_err().to_string();
        assert!(err.contains("expected composed or flash"), "{err}");
        assert_eq!(
            "f16".parse::<Precision>().unwrap_err().to_string(),
            "expected f32 or bf16, got `f16`"
        );
    }

    #[test]
    fn flash_is_refused_off_cuda_and_bf16_whatever_the_build() {
        let flash = Attention::Flash;
        assert!(flash.unavailable(Precision::F32, DeviceSpec::Cpu).is_some());
        assert!(
            flash
                .unavailable(Precision::Bf16, DeviceSpec::Cpu)
                .is_some()
        );
        assert!(
            flash
                .unavailable(Precision::F32, DeviceSpec::Cuda(0))
                .is_some()
        );
        assert_eq!(
            flash
                .unavailable(Precision::Bf16, DeviceSpec::Cuda(0))
                .is_none(),
            cfg!(feature = "flash-attn")
        );
        assert!(
            Attention::Composed
                .unavailable(Precision::F32, DeviceSpec::Cpu)
                .is_none()
        );
    }
}
