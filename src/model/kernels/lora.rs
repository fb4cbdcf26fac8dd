//! A LoRA projection for the CPU in f32 as one op with a hand-written backward:
//! `y = x W^T + scale * (dropout(x) A^T) B^T`, W frozen.
//!
//! Composed from candle's ops, the adapter costs two matmuls, a pass that scales their product, a
//! pass that adds it to the base output, another scaling pass in the backward, and two inputs to
//! accumulate gradients into. Here the products accumulate into one output buffer (gemm's
//! `dst = dst + beta * lhs rhs`), and the backward writes `dx` as one buffer too. The small
//! (rows, r) product is recomputed in the backward rather than kept. `Linear::forward` in
//! `layers` composes the same sum and is the reference this op is tested against.

use super::decode::PackedWeight;
use super::gemm::{Mat, frozen_product, gemm, gemm_into};
use super::storage::{assume_written, cpu_f32, with_f32, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

/// The adapter's first product `xd A^T` (m, r) for `xd` (m, k) and A (r, k).
fn down(xd: &[f32], a: &[f32], m: usize, k: usize, r: usize) -> Result<Vec<f32>> {
    // SAFETY: gemm_into writes every value.
    unsafe {
        written(m * r, |h| {
            gemm_into(h, Mat::rows(xd, m, k), Mat::rows(a, r, k).t(), 1.0)
        })
    }
}

/// `x * mask`, or `x` itself without dropout.
fn masked<'a>(x: &'a [f32], mask: Option<&[f32]>, buf: &'a mut Vec<f32>) -> &'a [f32] {
    match mask {
        None => x,
        Some(mask) => {
            *buf = x.par_iter().zip(mask).map(|(&x, &m)| x * m).collect();
            buf
        }
    }
}

/// `x W^T + scale * ((x * mask) A^T) B^T` for `x` (..., in), the frozen weight given as
/// `wt` = W^T (in, out), `a` (r, in), `b` (out, r); differentiable in `x`, `a` and `b`.
/// `mask` (x's shape, or none) is the inverted-dropout mask of the adapter's input. `packed`, the
/// same weight packed for a few rows, computes the base product when given.
pub fn lora_linear(
    x: &Tensor,
    wt: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<Vec<f32>>,
    packed: Option<Arc<PackedWeight>>,
) -> Result<Tensor> {
    if let Some(mask) = &mask
        && mask.len() != x.elem_count()
    {
        candle_core::bail!("lora: a dropout mask of {} for {:?}", mask.len(), x.shape());
    }
    x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        LoraLinear {
            wt: wt.contiguous()?,
            scale: scale as f32,
            mask,
            packed,
        },
    )
}

struct LoraLinear {
    /// W^T: (in, out), contiguous.
    wt: Tensor,
    scale: f32,
    mask: Option<Vec<f32>>,
    packed: Option<Arc<PackedWeight>>,
}

impl LoraLinear {
    fn dims(&self, xl: &Layout, al: &Layout, bl: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (k, n) = self.wt.dims2()?;
        let (r, ak) = al.shape().dims2()?;
        let (bn, br) = bl.shape().dims2()?;
        let dims = xl.shape().dims();
        if dims.last() != Some(&k) || ak != k || bn != n || br != r {
            candle_core::bail!(
                "lora: x {dims:?}, W^T ({k}, {n}), A ({r}, {ak}), B ({bn}, {br}) do not fit"
            );
        }
        Ok((xl.shape().elem_count() / k.max(1), k, n, r))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "cpu-lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k, n, r) = self.dims(xl, al, bl)?;
        let x = cpu_f32(xs, xl, "lora", "x")?;
        let a = cpu_f32(as_, al, "lora", "A")?;
        let b = cpu_f32(bs, bl, "lora", "B")?;
        let mut out = frozen_product(x, &self.wt, self.packed.as_deref(), "lora")?;
        let mut buf = Vec::new();
        let xd = masked(x, self.mask.as_deref(), &mut buf);
        let h = down(xd, a, m, k, r)?;
        gemm(
            &mut out,
            true,
            Mat::rows(&h, m, r),
            Mat::rows(b, n, r).t(),
            self.scale,
        )?;
        let mut shape = xl.shape().dims().to_vec();
        *shape.last_mut().expect("x has the input axis") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_dx = x.track_op();
        let grads = LoraGrad {
            wt: self.wt.clone(),
            a: a.clone(),
            b: b.clone(),
            scale: self.scale,
            mask: self.mask.clone(),
            want_dx,
        };
        let flat = x.apply_op2_no_bwd(&grad.contiguous()?, &grads)?;
        let (nx, na, nb) = (
            if want_dx { x.elem_count() } else { 0 },
            a.elem_count(),
            b.elem_count(),
        );
        let dx = if want_dx {
            Some(flat.narrow(0, 0, nx)?.reshape(x.shape())?)
        } else {
            None
        };
        let da = flat.narrow(0, nx, na)?.reshape(a.shape())?;
        let db = flat.narrow(0, nx + na, nb)?.reshape(b.shape())?;
        Ok((dx, Some(da), Some(db)))
    }
}

/// The gradients of [`LoraLinear`] for the output gradient g (second operand), in one flat
/// buffer: dx (when wanted), then dA, then dB. With u = g B and xd = x * mask:
/// dx = g W + scale (u A) * mask; dA = scale u^T xd; dB = scale g^T (xd A^T).
struct LoraGrad {
    wt: Tensor,
    a: Tensor,
    b: Tensor,
    scale: f32,
    mask: Option<Vec<f32>>,
    want_dx: bool,
}

impl CustomOp2 for LoraGrad {
    fn name(&self) -> &'static str {
        "cpu-lora-linear-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (k, n) = self.wt.dims2()?;
        let (r, _) = self.a.dims2()?;
        let x = cpu_f32(xs, xl, "lora", "x")?;
        let g = cpu_f32(gs, gl, "lora", "the output gradient")?;
        let m = x.len() / k.max(1);
        if g.len() != m * n {
            candle_core::bail!("lora: gradient of {} values for {m} rows of {n}", g.len());
        }
        let nx = if self.want_dx { m * k } else { 0 };
        // SAFETY: dx (when wanted), dA and dB are each written in full by a gemm_into below;
        // dx is accumulated into only after its gemm_into.
        let flat = unsafe {
            written(nx + r * k + n * r, |flat| {
                let (dx, rest) = flat.split_at_mut(nx);
                let (da, db) = rest.split_at_mut(r * k);
                self.write(dx, da, db, x, g, (m, k, n, r))
            })?
        };
        Ok((CpuStorage::F32(flat), Shape::from(nx + r * k + n * r)))
    }
}

impl LoraGrad {
    /// Writes dx (when wanted), dA and dB in full.
    fn write(
        &self,
        dx: &mut [MaybeUninit<f32>],
        da: &mut [MaybeUninit<f32>],
        db: &mut [MaybeUninit<f32>],
        x: &[f32],
        g: &[f32],
        (m, k, n, r): (usize, usize, usize, usize),
    ) -> Result<()> {
        with_f32(&self.a, ("lora", "A"), |a| {
            with_f32(&self.b, ("lora", "B"), |b| {
                // SAFETY: gemm_into writes every value.
                let u = unsafe {
                    written(m * r, |u| {
                        gemm_into(u, Mat::rows(g, m, n), Mat::rows(b, n, r), 1.0)
                    })?
                };
                if self.want_dx {
                    with_f32(&self.wt, ("lora", "the frozen weight"), |wt| {
                        gemm_into(dx, Mat::rows(g, m, n), Mat::rows(wt, k, n).t(), 1.0)
                    })?;
                    // SAFETY: the gemm_into above wrote all of dx.
                    let dx = unsafe { assume_written(dx) };
                    match &self.mask {
                        None => gemm(
                            dx,
                            true,
                            Mat::rows(&u, m, r),
                            Mat::rows(a, r, k),
                            self.scale,
                        )?,
                        Some(mask) => {
                            // SAFETY: gemm_into writes every value.
                            let v = unsafe {
                                written(m * k, |v| {
                                    gemm_into(v, Mat::rows(&u, m, r), Mat::rows(a, r, k), 1.0)
                                })?
                            };
                            let s = self.scale;
                            dx.par_iter_mut()
                                .zip(v.par_iter().zip(mask.par_iter()))
                                .for_each(|(d, (&v, &mk))| *d += s * v * mk);
                        }
                    }
                }
                let mut buf = Vec::new();
                let xd = masked(x, self.mask.as_deref(), &mut buf);
                gemm_into(da, Mat::rows(&u, m, r).t(), Mat::rows(xd, m, k), self.scale)?;
                let h = down(xd, a, m, k, r)?;
                gemm_into(db, Mat::rows(g, m, n).t(), Mat::rows(&h, m, r), self.scale)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::model::layers::{Linear, LoraAdapter, Mode};
    use crate::model::products::matmul_layout;
    use crate::model::testing::{max_diff, value_and_grad_diffs};
    use candle_core::{Device, Tensor, Var};

    /// A projection (out 24, in 20) with an r = 4 adapter whose B is not zero.
    fn projection(dropout: f32) -> (Linear, Var, Var) {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.3, (24, 20), &dev).unwrap();
        let a = Var::randn(0f32, 0.3, (4, 20), &dev).unwrap();
        let b = Var::randn(0f32, 0.3, (24, 4), &dev).unwrap();
        let lin = Linear {
            weight: matmul_layout(&w).unwrap(),
            bias: None,
            lora: Some(LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 1.5,
                dropout,
            }),
            stream: 3,
            packed: Default::default(),
        };
        (lin, a, b)
    }

    /// The op against the composed ops, in values and in the gradients of x, A and B; rows (70)
    /// not a multiple of any kernel tile.
    fn check(dropout: f32, mode: Mode) {
        let dev = Device::Cpu;
        let (lin, a, b) = projection(dropout);
        let x = Var::randn(0f32, 1.0, (2, 35, 20), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 35, 24), &dev).unwrap();
        let ours = lin.forward(&x, mode).unwrap();
        let theirs = lin.composed(&x, mode).unwrap();
        assert_eq!(ours.dims(), &[2, 35, 24]);
        let (value, grads) = value_and_grad_diffs(&ours, &theirs, &g, &[&x, &a, &b]);
        assert!(value < 1e-5, "{mode:?}: values differ by {value}");
        for (name, d) in ["x", "A", "B"].iter().zip(grads) {
            assert!(d < 1e-4, "{mode:?}: d{name} differs by {d}");
        }
    }

    /// `ours` against `x W^T + 1.5 ((x * mask) A^T) B^T` written out with candle's ops, in values
    /// and in the gradients of x, A and B.
    fn check_formula(ours: &Tensor, lin: &Linear, x: &Var, a: &Var, b: &Var, mask: Option<Tensor>) {
        let g = Tensor::randn(0f32, 1.0, ours.shape(), x.device()).unwrap();
        let wt = lin.weight.t().unwrap();
        let xd = match mask {
            Some(mask) => (x.as_tensor() * mask).unwrap(),
            None => x.as_tensor().clone(),
        };
        let adapter = xd
            .matmul(&a.t().unwrap())
            .unwrap()
            .matmul(&b.t().unwrap())
            .unwrap();
        let theirs = (x.matmul(&wt).unwrap() + (adapter * 1.5).unwrap()).unwrap();
        let (value, grads) = value_and_grad_diffs(ours, &theirs, &g, &[x, a, b]);
        assert!(value < 1e-5, "values differ by {value}");
        for (name, d) in ["x", "A", "B"].iter().zip(grads) {
            assert!(d < 1e-4, "d{name} differs by {d}");
        }
    }

    #[test]
    fn lora_op_called_directly_matches_the_formula_with_a_given_mask() {
        let dev = Device::Cpu;
        let (lin, a, b) = projection(0.0);
        let x = Var::randn(0f32, 1.0, (70, 20), &dev).unwrap();
        let mask: Vec<f32> = (0..70 * 20).map(|i| [0.0, 2.0][i % 3 % 2]).collect();
        let wt = lin.weight.t().unwrap();
        let ours = super::lora_linear(&x, &wt, &a, &b, 1.5, Some(mask.clone()), None).unwrap();
        let mask = Tensor::from_vec(mask, (70, 20), &dev).unwrap();
        check_formula(&ours, &lin, &x, &a, &b, Some(mask));
    }

    #[test]
    fn a_few_rows_take_the_packed_base_and_keep_values_and_gradients() {
        // A decoding step's rows.
        let (lin, a, b) = projection(0.0);
        let x = Var::randn(0f32, 1.0, (5, 20), &Device::Cpu).unwrap();
        let ours = lin.forward(&x, Mode::Eval).unwrap();
        assert_eq!(
            lin.packed.is_packed(),
            crate::model::kernels::decode::kernel_available()
        );
        check_formula(&ours, &lin, &x, &a, &b, None);
    }

    #[test]
    fn lora_op_matches_the_composed_ops_in_values_and_gradients() {
        check(0.0, Mode::Train { seed: 1 });
        check(0.0, Mode::Eval);
    }

    #[test]
    fn lora_op_applies_the_same_dropout_as_the_composed_ops() {
        check(0.3, Mode::Train { seed: 5 });
        // A different step draws a different mask.
        let (lin, _, _) = projection(0.3);
        let x = Tensor::randn(0f32, 1.0, (5, 20), &Device::Cpu).unwrap();
        let one = lin.forward(&x, Mode::Train { seed: 1 }).unwrap();
        let two = lin.forward(&x, Mode::Train { seed: 2 }).unwrap();
        assert!(max_diff(&one, &two) > 1e-3);
    }

    #[test]
    fn lora_op_skips_the_input_gradient_when_nothing_needs_it() {
        let (lin, a, b) = projection(0.0);
        let x = Tensor::randn(0f32, 1.0, (6, 20), &Device::Cpu).unwrap();
        let grads = lin
            .forward(&x, Mode::Train { seed: 0 })
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&a).is_some() && grads.get(&b).is_some());
    }

    #[test]
    fn lora_op_refuses_operands_that_do_not_fit() {
        let dev = Device::Cpu;
        let wt = Tensor::zeros((20, 24), candle_core::DType::F32, &dev).unwrap();
        let a = Tensor::zeros((4, 20), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros((24, 4), candle_core::DType::F32, &dev).unwrap();
        let x = Tensor::zeros((3, 21), candle_core::DType::F32, &dev).unwrap();
        let err = super::lora_linear(&x, &wt, &a, &b, 1.0, None, None).unwrap_err();
        assert!(err.to_string().contains("do not fit"), "{err}");
        let x = Tensor::zeros((3, 20), candle_core::DType::F32, &dev).unwrap();
        let err = super::lora_linear(&x, &wt, &a, &b, 1.0, Some(vec![1.0; 7]), None).unwrap_err();
        assert!(err.to_string().contains("dropout mask"), "{err}");
    }
}
