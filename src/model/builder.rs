//! Hands out a decoder's parameters by their Hugging Face names: each is read from the weight
//! source in the model's dtype and device, and becomes a trainable variable (recorded with its
//! name) when the whole model is trained. Frozen projection weights get the layout the CPU's
//! product reads fastest (`products::matmul_layout`).

use super::io::safetensors::WeightSource;
use super::layers::{Linear, RmsNorm};
use super::products::matmul_layout;
use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};

pub(super) struct Builder<'a> {
    pub source: &'a WeightSource,
    pub dtype: DType,
    pub device: &'a Device,
    /// Every parameter is trainable (full fine-tuning).
    pub full: bool,
    /// The trainable variables handed out so far, in order, with their names.
    pub vars: Vec<(String, Var)>,
}

impl Builder<'_> {
    pub fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.source.get(name, shape, self.dtype, self.device)?;
        if !self.full {
            return Ok(t);
        }
        let var = Var::from_tensor(&t)?;
        let t = var.as_tensor().clone();
        self.vars.push((name.to_string(), var));
        Ok(t)
    }

    /// The projection `name` (out, in), its bias when it has one; `stream` tells its dropout
    /// stream apart from the other projections'.
    pub fn linear(
        &mut self,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        stream: u64,
    ) -> Result<Linear> {
        let weight = self.get(&format!("{name}.weight"), &[out, inp])?;
        let weight = if self.full {
            weight
        } else {
            matmul_layout(&weight)?
        };
        let bias = if bias {
            Some(self.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
            stream,
            packed: Default::default(),
        })
    }

    pub fn norm(&mut self, name: &str, dim: usize, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: self.get(&format!("{name}.weight"), &[dim])?,
            eps,
        })
    }
}
