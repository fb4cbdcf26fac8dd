//! RMSNorm and rotary embeddings for training on the CPU in f32, each one op with a hand-written
//! backward. Composed from candle's primitives (as the training path must be, since candle's fused
//! kernels carry no gradient), each costs several passes over the activations and keeps several
//! activation-sized tensors alive for the backward; here the forward is one pass, the backward one
//! more, and RMSNorm keeps only its input and one number per row. The composed ops in `layers`
//! are the reference both are tested against.

use super::storage::{cpu_f32, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per task: the weight gradient is summed per task in a fixed order, so results do not
/// depend on the number of threads.
const ROWS: usize = 64;

/// `w * x / sqrt(mean(x^2) + eps)` over the last axis of `x` (f32, CPU), differentiable in `x`
/// and `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

/// Lanes of the partial sums below: wide enough for the compiler to keep them in vector
/// registers, and for f32 partial sums to stay accurate over a row of a few thousand.
const LANES: usize = 16;

/// The dot product of `a` and `b`: f32 partial sums in [`LANES`] lanes, combined in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// 1 / sqrt(mean(row^2) + eps).
fn inv_rms(row: &[f32], eps: f64) -> f32 {
    (1.0 / (dot(row, row) / row.len() as f64 + eps).sqrt()) as f32
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cpu-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(xs, xl, "rms-norm", "x")?;
        let w = cpu_f32(ws, wl, "rms-norm", "the weight")?;
        let h = w.len();
        if xl.shape().dims().last() != Some(&h) {
            candle_core::bail!("rms-norm: x {:?} against weight ({h})", xl.shape());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(h * ROWS)
            .zip(x.par_chunks(h * ROWS))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(h).zip(x.chunks(h)) {
                    let r = inv_rms(x, self.eps);
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                        *o = x * r * w;
                    }
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want_dw = w.track_op();
        let flat = x.apply_op3_no_bwd(
            w,
            &grad.contiguous()?,
            &RmsNormGrad {
                eps: self.eps,
                want_dw,
            },
        )?;
        let n = x.elem_count();
        let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = if want_dw {
            Some(flat.narrow(0, n, w.elem_count())?.reshape(w.shape())?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// The gradients of [`RmsNorm`] for the output gradient (third operand): one flat buffer holding
/// dx, then dw when it is wanted. Per row, with n = x r (r = 1 / rms) and u = g w:
/// dx = r (u - n mean(u n)); dw is the sum over rows of g n.
struct RmsNormGrad {
    eps: f64,
    want_dw: bool,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "cpu-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(xs, xl, "rms-norm", "x")?;
        let w = cpu_f32(ws, wl, "rms-norm", "the weight")?;
        let g = cpu_f32(gs, gl, "rms-norm", "the output gradient")?;
        let h = w.len();
        if g.len() != x.len() || x.len() % h.max(1) != 0 {
            candle_core::bail!(
                "rms-norm: gradient of {} values for x of {}",
                g.len(),
                x.len()
            );
        }
        let n = x.len();
        let mut out = vec![0f32; n + if self.want_dw { h } else { 0 }];
        let (dx, dw_out) = out.split_at_mut(n);
        let want_dw = self.want_dw;
        let partial: Vec<Vec<f32>> = dx
            .par_chunks_mut(h * ROWS)
            .zip(x.par_chunks(h * ROWS).zip(g.par_chunks(h * ROWS)))
            .map(|(dx, (x, g))| {
                let mut dw = if want_dw { vec![0f32; h] } else { Vec::new() };
                for (dx, (x, g)) in dx.chunks_mut(h).zip(x.chunks(h).zip(g.chunks(h))) {
                    let r = inv_rms(x, self.eps);
                    // u = g w goes into dx first, then dx = r u - (r^3 mean(u x)) x.
                    for i in 0..h {
                        dx[i] = g[i] * w[i];
                    }
                    let c = (f64::from(r).powi(3) * dot(dx, x) / h as f64) as f32;
                    for i in 0..h {
                        dx[i] = r * dx[i] - c * x[i];
                    }
                    if want_dw {
                        for i in 0..h {
                            dw[i] += g[i] * x[i] * r;
                        }
                    }
                }
                dw
            })
            .collect();
        if want_dw {
            // Summed in task order: the same result on any number of threads.
            for (k, v) in dw_out.iter_mut().enumerate() {
                *v = partial.iter().map(|p| f64::from(p[k])).sum::<f64>() as f32;
            }
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Rotary embedding of `x` (B, T, H, D) in the `rotate_half` convention, with `cos` and `sin` of
/// shape (B, T, D / 2) (f32, CPU): `[x1 c - x2 s, x2 c + x1 s]`. Differentiable in `x`; the
/// backward is the inverse rotation (the same op with `-sin`).
pub fn rope_thd(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { inverse: false },
    )
}

struct Rope {
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "cpu-rope-thd"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, h, d) = xl.shape().dims4()?;
        if d % 2 != 0 || cl.shape().dims() != [b, t, d / 2] || sl.shape() != cl.shape() {
            candle_core::bail!(
                "rope: x {:?} against cos {:?} / sin {:?}",
                xl.shape(),
                cl.shape(),
                sl.shape()
            );
        }
        let x = cpu_f32(xs, xl, "rope", "x")?;
        let cos = cpu_f32(cs, cl, "rope", "cos")?;
        let sin = cpu_f32(ss, sl, "rope", "sin")?;
        let half = d / 2;
        let sign = if self.inverse { -1f32 } else { 1f32 };
        // One task per (b, t) position: its H heads share one row of cos and sin.
        let fill = |out: &mut [std::mem::MaybeUninit<f32>]| {
            out.par_chunks_mut(h * d)
                .zip(x.par_chunks(h * d))
                .enumerate()
                .for_each(|(pos, (o, x))| {
                    let c = &cos[pos * half..(pos + 1) * half];
                    let s = &sin[pos * half..(pos + 1) * half];
                    for (o, x) in o.chunks_mut(d).zip(x.chunks(d)) {
                        for i in 0..half {
                            let (x1, x2, si) = (x[i], x[i + half], sign * s[i]);
                            o[i].write(x1 * c[i] - x2 * si);
                            o[i + half].write(x2 * c[i] + x1 * si);
                        }
                    }
                });
            Ok(())
        };
        // SAFETY: x is (B, T, H, D) with D even (checked above), so every head's D values are
        // written as pairs (i, i + D / 2).
        let out = unsafe { written(x.len(), fill)? };
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(
            cos,
            sin,
            &Rope {
                inverse: !self.inverse,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::RmsNorm as Composed;
    use crate::model::testing::value_and_grad_diffs;
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_matches_the_composed_op_in_values_and_gradients() {
        let dev = Device::Cpu;
        // More rows than one task holds, so the weight gradient sums partials.
        let x = Var::randn(0f32, 2.0, (3, 50, 24), &dev).unwrap();
        let w = Var::randn(1f32, 0.3, 24, &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 50, 24), &dev).unwrap();
        let reference = Composed {
            weight: w.as_tensor().clone(),
            eps: 1e-5,
        };
        let ours = rms_norm(&x, &w, 1e-5).unwrap();
        let theirs = reference.composed(&x).unwrap();
        let (value, grads) = value_and_grad_diffs(&ours, &theirs, &g, &[&x, &w]);
        assert!(value < 1e-5, "values differ by {value}");
        let (dx, dw) = (grads[0], grads[1]);
        assert!(dx < 1e-5 && dw < 1e-3, "dx {dx}, dw {dw}");
        // A frozen weight gets no gradient computed.
        let frozen = w.as_tensor().detach();
        let go = rms_norm(&x, &frozen, 1e-5)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(go.get(&x).is_some() && go.get(&frozen).is_none());
    }

    #[test]
    fn rope_matches_the_composed_op_in_values_and_gradients() {
        let dev = Device::Cpu;
        let (b, t, h, d) = (2, 7, 3, 8);
        let inv_freq = Tensor::new(&[1f32, 0.5, 0.25, 0.125], &dev).unwrap();
        let positions =
            Tensor::new(&[[0u32, 1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8, 9]], &dev).unwrap();
        let tables =
            crate::model::layers::Rope::new(&inv_freq, &positions, candle_core::DType::F32)
                .unwrap();
        let x = Var::randn(0f32, 1.0, (b, t, h, d), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (b, t, h, d), &dev).unwrap();
        let (cos, sin) = tables.halves();
        let ours = rope_thd(&x, cos, sin).unwrap();
        let theirs = tables.apply_thd_composed(&x).unwrap();
        let (value, grads) = value_and_grad_diffs(&ours, &theirs, &g, &[&x]);
        assert!(value < 1e-6 && grads[0] < 1e-6, "{value}, {grads:?}");
    }
}
