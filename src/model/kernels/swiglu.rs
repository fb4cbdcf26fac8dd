//! SwiGLU's product `silu(gate) * up` for training on the CPU in f32, one op with a
//! hand-written backward. Composed, it is two passes forward (silu, then the product) and about
//! ten backward (candle differentiates silu through negation, exp, add, reciprocal and products,
//! then sums each gradient into a fresh zero tensor); here it is one pass each way, with the
//! sigmoid from the vectorised exponential. `Mlp::forward` in `layers` composes the same product
//! and is the reference.

use super::exp::{dispatch, exp1};
use super::storage::{cpu_f32, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// An output value not written yet.
type Uninit = std::mem::MaybeUninit<f32>;

/// Values per task.
const CHUNK: usize = 16 * 1024;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp1(-x))
}

/// Writes `out` in full (the slices have one length).
#[inline(always)]
fn forward_impl(out: &mut [Uninit], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(g * sigmoid(g) * u);
    }
}

/// d/dgate = grad * up * s (1 + g (1 - s)) and d/dup = grad * g * s, with s = sigmoid(g);
/// writes `dg` and `du` in full (the slices have one length).
#[inline(always)]
fn backward_impl(dg: &mut [Uninit], du: &mut [Uninit], gate: &[f32], up: &[f32], grad: &[f32]) {
    for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(gate).zip(up).zip(grad) {
        let s = sigmoid(g);
        dg.write(d * u * s * (1.0 + g * (1.0 - s)));
        du.write(d * g * s);
    }
}

dispatch!(forward(out: &mut [Uninit], gate: &[f32], up: &[f32]) -> () = forward_impl);
dispatch!(
    backward(dg: &mut [Uninit], du: &mut [Uninit], gate: &[f32], up: &[f32], grad: &[f32]) -> ()
        = backward_impl
);

/// `silu(gate) * up` (f32, CPU, same shapes), differentiable in both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)
}

struct Swiglu;

fn same_len(a: &[f32], b: &[f32], al: &Layout, bl: &Layout) -> Result<()> {
    if a.len() != b.len() || al.shape() != bl.shape() {
        candle_core::bail!(
            "swiglu: gate {:?} and up {:?} differ",
            al.shape(),
            bl.shape()
        );
    }
    Ok(())
}

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "cpu-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = cpu_f32(gs, gl, "swiglu", "gate")?;
        let up = cpu_f32(us, ul, "swiglu", "up")?;
        same_len(gate, up, gl, ul)?;
        // SAFETY: out, gate and up have one length, so their chunks pair up and each `forward`
        // writes its chunk in full.
        let out = unsafe {
            written(gate.len(), |out| {
                out.par_chunks_mut(CHUNK)
                    .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
                    .for_each(|(o, (g, u))| forward(o, g, u));
                Ok(())
            })?
        };
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let flat = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &SwigluGrad)?;
        let n = gate.elem_count();
        let dg = flat.narrow(0, 0, n)?.reshape(gate.shape())?;
        let du = flat.narrow(0, n, n)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// The gradients of [`Swiglu`] for the output gradient (third operand): d/dgate then d/dup in
/// one flat buffer.
struct SwigluGrad;

impl CustomOp3 for SwigluGrad {
    fn name(&self) -> &'static str {
        "cpu-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = cpu_f32(gs, gl, "swiglu", "gate")?;
        let up = cpu_f32(us, ul, "swiglu", "up")?;
        let grad = cpu_f32(ds, dl, "swiglu", "the output gradient")?;
        same_len(gate, up, gl, ul)?;
        same_len(gate, grad, gl, dl)?;
        let n = gate.len();
        // SAFETY: dg, du, gate, up and grad have one length, so their chunks pair up and each
        // `backward` writes its chunks of dg and du in full.
        let flat = unsafe {
            written(2 * n, |flat| {
                let (dg, du) = flat.split_at_mut(n);
                dg.par_chunks_mut(CHUNK)
                    .zip(du.par_chunks_mut(CHUNK))
                    .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
                    .zip(grad.par_chunks(CHUNK))
                    .for_each(|(((dg, du), (g, u)), d)| backward(dg, du, g, u, d));
                Ok(())
            })?
        };
        Ok((CpuStorage::F32(flat), Shape::from(2 * n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::value_and_grad_diffs;
    use candle_core::{Device, Var};

    #[test]
    fn swiglu_matches_the_composed_ops_in_values_and_gradients() {
        let dev = Device::Cpu;
        // More values than one task holds; gates far into both tails.
        let gate = Var::randn(0f32, 6.0, (3, 50, 130), &dev).unwrap();
        let up = Var::randn(0f32, 1.0, (3, 50, 130), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 50, 130), &dev).unwrap();
        let ours = swiglu(&gate, &up).unwrap();
        let theirs = (gate.silu().unwrap() * up.as_tensor()).unwrap();
        let (value, grads) = value_and_grad_diffs(&ours, &theirs, &g, &[&gate, &up]);
        assert!(value < 1e-5, "values differ by {value}");
        for (name, d) in ["gate", "up"].iter().zip(grads) {
            assert!(d < 1e-5, "d{name} differs by {d}");
        }
    }

    #[test]
    fn swiglu_refuses_shapes_that_differ() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros((3, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(swiglu(&a, &b).unwrap_err().to_string().contains("differ"));
    }
}
