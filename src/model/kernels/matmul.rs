//! The CPU f32 products behind `products::linear`, each one op with its own backward: against a
//! frozen weight (the input's gradient only, on the packed weight for a few rows) and against a
//! trainable one (its gradient computed in its own layout).

use super::decode::PackedWeight;
use super::gemm::{Mat, frozen_product, gemm_into};
use super::storage::{cpu_f32, written};
use candle_core::{Result, Tensor};
use std::sync::Arc;

/// `x @ wt` over the last axis of `x`, with a backward for `x` only.
pub struct FrozenMatmul {
    /// (in, out), contiguous.
    pub wt: Tensor,
    /// The same weight packed for a few rows, when the product has that few.
    pub packed: Option<Arc<PackedWeight>>,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (k, n) = self.wt.dims2()?;
        let dims = layout.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("frozen-matmul: input {:?} against weight ({k}, {n})", dims);
        }
        let x = cpu_f32(storage, layout, "frozen-matmul", "the input")?;
        let out = frozen_product(x, &self.wt, self.packed.as_deref(), "frozen-matmul")?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = n;
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from(shape),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (k, n) = self.wt.dims2()?;
        let m = arg.elem_count() / k.max(1);
        let grad = grad_res
            .reshape((m, n))?
            .matmul(&self.wt.t()?)?
            .reshape(arg.shape())?;
        Ok(Some(grad))
    }
}

/// `x @ W^T` over the last axis of `x` for a trainable weight W (out, in), contiguous. candle's
/// product differentiates through the view `W.t()`, so W's gradient arrives as a transposed
/// view of an (in, out) buffer and is then copied element by element into W's layout (about 5%
/// of a full fine-tuning step on SmolLM2-135M); here the backward computes `dW = g^T x` as
/// (out, in) directly.
pub struct TrainableMatmul;

impl candle_core::CustomOp2 for TrainableMatmul {
    fn name(&self) -> &'static str {
        "trainable-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        ws: &candle_core::CpuStorage,
        wl: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (n, k) = wl.shape().dims2()?;
        let dims = xl.shape().dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("trainable-matmul: input {dims:?} against weight ({n}, {k})");
        }
        let x = cpu_f32(xs, xl, "trainable-matmul", "the input")?;
        let w = cpu_f32(ws, wl, "trainable-matmul", "the weight")?;
        let m = x.len() / k.max(1);
        // SAFETY: gemm_into writes every value.
        let out = unsafe {
            written(m * n, |out| {
                gemm_into(out, Mat::rows(x, m, k), Mat::rows(w, n, k).t(), 1.0)
            })?
        };
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = n;
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from(shape),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k.max(1);
        let g = grad.reshape((m, n))?;
        // Detached: W and x track the graph, so these products would otherwise record ops that
        // keep g alive for as long as the gradients are (an output gradient per projection).
        let dx = if x.track_op() {
            Some(g.matmul(w)?.reshape(x.shape())?.detach())
        } else {
            None
        };
        let dw = g.t()?.matmul(&x.reshape((m, k))?)?.detach();
        Ok((dx, Some(dw)))
    }
}
