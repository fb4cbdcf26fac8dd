//! The model's matrix products, `x @ W^T` on every device: on the CPU in f32 a frozen weight
//! (LoRA's base, a frozen head) gets no gradient computed, a trainable one gets it in its own
//! layout, and a few rows against a frozen weight (a decoding step) run on its packed copy, one
//! group of projections at a time where they read the same input; elsewhere candle's product,
//! held to the operand layouts CUDA's product accepts.

use super::kernels::decode::PackedCache;
use super::kernels::matmul::{FrozenMatmul, TrainableMatmul};
use candle_core::{DType, Result, Tensor};

/// A frozen weight (out, in) laid out for `x @ W^T` on the CPU: the same logical tensor, a
/// transposed view over an (in, out) contiguous buffer. The CPU matmul then reads W^T as it is
/// instead of repacking (transposing) the whole weight on every call, which dominated decoding,
/// where each call multiplies only a few rows. Other devices keep the layout they were given.
pub fn matmul_layout(weight: &Tensor) -> Result<Tensor> {
    if !weight.device().is_cpu() || weight.rank() != 2 {
        return Ok(weight.clone());
    }
    weight.t()?.contiguous()?.t()
}

/// `x @ W^T (+ b)`. When a gradient flows back through `x` but not into the weight (a frozen
/// f32 weight on the CPU: LoRA's base, the frozen head), the backward computes only `x`'s
/// gradient; candle's matmul backward would also compute the weight's, a third of a linear
/// layer's training FLOPs, and throw it away. A product of a few rows against such a weight (a
/// decoding step) runs on the weight packed in `packed` (see `kernels::decode`). A trainable f32
/// weight on the CPU gets its gradient in its own layout (see [`TrainableMatmul`]).
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    packed: &PackedCache,
) -> Result<Tensor> {
    let frozen = on_cpu_f32(x)
        && !weight.track_op()
        && weight.device().is_cpu()
        && weight.dtype() == DType::F32;
    let rows = x.elem_count() / weight.dim(1)?.max(1);
    let packed = if frozen {
        packed.get(weight, rows)?
    } else {
        None
    };
    let trainable = on_cpu_f32(x)
        && weight.track_op()
        && weight.device().is_cpu()
        && weight.dtype() == DType::F32
        && weight.is_contiguous();
    let y = if frozen && (x.track_op() || packed.is_some()) {
        x.contiguous()?.apply_op1(FrozenMatmul {
            wt: weight.t()?.contiguous()?,
            packed,
        })?
    } else if trainable {
        x.contiguous()?.apply_op2(weight, TrainableMatmul)?
    } else {
        project(x, weight)?
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `x @ W^T` for `x` (..., in) and `weight` (out, in) with candle's ops: `x` is made contiguous
/// and flattened to rows first, because CUDA's product takes rows only at one stride (a view
/// such as the last position of every row of a batch is refused there, though the CPU's
/// product takes it).
pub(super) fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out, inp) = weight.dims2()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / inp.max(1);
    let y = matmul(&x.contiguous()?.reshape((rows, inp))?, &weight.t()?)?;
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    y.reshape(dims)
}

/// candle's matrix product, on operands laid out as CUDA's product takes them: an operand that
/// is not (see [`cuda_gemm_accepts`]; the CPU's product takes more) is copied contiguous first.
/// In the unit tests, and wherever `EDCO_CUDA_LAYOUT_CHECK=1` is set (the test script sets it),
/// such a product is an error instead, so that every layout the model produces is held to
/// CUDA's rules on the CPU.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a_ok, b_ok) = cuda_gemm_operands(a, b);
    if a_ok && b_ok {
        return a.matmul(b);
    }
    if strict_cuda_layouts() {
        candle_core::bail!(
            "a matrix product CUDA refuses (EDCO_CUDA_LAYOUT_CHECK): {:?} strides {:?} x {:?} strides {:?}",
            a.dims(),
            a.stride(),
            b.dims(),
            b.stride()
        );
    }
    let fix = |x: &Tensor, ok: bool| if ok { Ok(x.clone()) } else { x.contiguous() };
    fix(a, a_ok)?.matmul(&fix(b, b_ok)?)
}

/// Whether a product CUDA would refuse is an error (see [`matmul`]).
fn strict_cuda_layouts() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(test)
        || *STRICT.get_or_init(|| std::env::var("EDCO_CUDA_LAYOUT_CHECK").is_ok_and(|v| v == "1"))
}

/// Whether candle's CUDA matmul (cuBLAS strided batched gemm) accepts these operands' layouts.
pub fn cuda_gemm_accepts(lhs: &Tensor, rhs: &Tensor) -> bool {
    let (l, r) = cuda_gemm_operands(lhs, rhs);
    l && r
}

/// Whether each operand's layout passes the rules of `gemm_config` in candle-core's CUDA
/// backend (0.11), restated: a row-major or transposed matrix, and batches one stride apart. A
/// contiguous operand always does. Products with nothing to compute, which candle returns
/// before looking at layouts, pass; operands of different ranks do not.
fn cuda_gemm_operands(lhs: &Tensor, rhs: &Tensor) -> (bool, bool) {
    let (ld, rd) = (lhs.dims(), rhs.dims());
    let (ls, rs) = (lhs.stride(), rhs.stride());
    let r = ld.len();
    if r < 2 || rd.len() != r {
        return (false, false);
    }
    let (m, k, n) = (ld[r - 2], ld[r - 1], rd[r - 1]);
    if m * n == 0 || k == 0 {
        return (true, true);
    }
    let (rhs_m1, rhs_m2, lhs_m1, lhs_m2) = (rs[r - 1], rs[r - 2], ls[r - 1], ls[r - 2]);
    let rhs_ok = ((rhs_m1 == 1 || n == 1) && (rhs_m2 == n || k == 1))
        || ((rhs_m1 == k || n == 1) && (rhs_m2 == 1 || k == 1));
    let lhs_ok = ((lhs_m1 == 1 || k == 1) && (lhs_m2 == k || m == 1))
        || ((lhs_m1 == m || k == 1) && (lhs_m2 == 1 || m == 1));
    let batch_ok = |dims: &[usize], strides: &[usize]| match strides[..r - 2] {
        [s1, stride] => s1 == stride * dims[1] || dims[0] == 1 || dims[1] == 1,
        [_] | [] => true,
        _ => false,
    };
    (lhs_ok && batch_ok(ld, ls), rhs_ok && batch_ok(rd, rs))
}

/// Whether `x` takes the CPU f32 training kernels.
pub(super) fn on_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::decode::{MAX_ROWS, kernel_available};
    use crate::model::testing::value_and_grad_diffs;
    use candle_core::{Device, Module, Var};

    #[test]
    fn cuda_product_layouts_are_told_apart() {
        let dev = candle_core::Device::Cpu;
        let (n, t, h, out) = (3, 5, 8, 4);
        let hidden = Tensor::zeros((n, t, h), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((out, h), DType::F32, &dev).unwrap();
        // The last position of every row: rows t * h apart, which cuBLAS cannot take.
        let last = hidden.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap();
        assert!(!cuda_gemm_accepts(&last, &w.t().unwrap()));
        assert!(cuda_gemm_accepts(
            &last.contiguous().unwrap(),
            &w.t().unwrap()
        ));
        // One row alone, and a transposed right-hand side, are fine.
        let one = hidden
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(1, t - 1, 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        assert!(cuda_gemm_accepts(&one, &w.t().unwrap()));
        // Batched: keys with room after each (row, head) matrix, but not a time-major view.
        let q = Tensor::zeros((2, 4, 1, h), DType::F32, &dev).unwrap();
        let room = Tensor::zeros((2, 4, 9, h), DType::F32, &dev).unwrap();
        let k = room.narrow(2, 0, t).unwrap();
        assert!(cuda_gemm_accepts(&q, &k.t().unwrap()));
        let time_major = Tensor::zeros((2, t, 4, h), DType::F32, &dev)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        assert!(!cuda_gemm_accepts(&q, &time_major.t().unwrap()));
        // A projection of such rows makes them contiguous first.
        let y = project(&last, &w).unwrap();
        assert_eq!(y.dims(), [n, out]);
    }

    /// A cache's view with room after each row is read in place; a transposed view is copied;

    #[test]
    fn frozen_linear_matches_matmul_and_its_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        // The reference: candle's own Linear over a trainable copy of the weight.
        let trainable = Var::from_tensor(&w).unwrap();
        let reference = candle_nn::Linear::new(trainable.as_tensor().clone(), Some(b.clone()));
        // A few rows (the packed kernel, where the CPU has one) and more than it takes.
        for rows in [3, MAX_ROWS + 1] {
            let x = Var::randn(0f32, 1.0, (2, rows, 5), &dev).unwrap();
            for weight in [w.clone(), matmul_layout(&w).unwrap()] {
                let packed = PackedCache::default();
                let ours = linear(x.as_tensor(), &weight, Some(&b), &packed).unwrap();
                assert_eq!(packed.is_packed(), rows <= MAX_ROWS && kernel_available());
                let plain = reference.forward(x.as_tensor()).unwrap();
                assert!(max_diff(&ours, &plain) < 1e-5);
                // A loss that weighs every output differently, so a wrong gradient shows.
                let weights = Tensor::randn(0f32, 1.0, (2, rows, 6), &dev).unwrap();
                let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
                let g_ours = loss(&ours).backward().unwrap();
                let g_plain = loss(&plain).backward().unwrap();
                let (a, b) = (g_ours.get(&x).unwrap(), g_plain.get(&x).unwrap());
                assert!(max_diff(a, b) < 1e-5);
                // The frozen weight gets no gradient at all.
                assert!(g_ours.get(&weight).is_none());
            }
        }
    }

    #[test]
    fn trainable_linear_matches_candle_in_values_and_both_gradients() {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 6, &dev).unwrap();
        let x = Var::randn(0f32, 1.0, (2, 7, 5), &dev).unwrap();
        let ours = x.apply_op2(w.as_tensor(), TrainableMatmul).unwrap();
        let theirs = candle_nn::Linear::new(w.as_tensor().clone(), None)
            .forward(x.as_tensor())
            .unwrap();
        let g = Tensor::randn(0f32, 1.0, (2, 7, 6), &dev).unwrap();
        let (value, grads) = value_and_grad_diffs(&ours, &theirs, &g, &[&x, &w]);
        assert!(value < 1e-5, "values differ by {value}");
        assert!(
            grads.iter().all(|&d| d < 1e-5),
            "gradients differ by {grads:?}"
        );
        // Through `linear`, with a bias; an input that needs no gradient gets none.
        let frozen_x = Tensor::randn(0f32, 1.0, (3, 5), &dev).unwrap();
        let y = linear(&frozen_x, w.as_tensor(), Some(&b), &PackedCache::default()).unwrap();
        let reference = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.clone()))
            .forward(&frozen_x)
            .unwrap();
        let g = Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap();
        let (value, grads) = value_and_grad_diffs(&y, &reference, &g, &[&w]);
        assert!(value < 1e-5 && grads[0] < 1e-5, "{value} {grads:?}");
        let store = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(store.get(&frozen_x).is_none());
        let dw = store.get(&w).unwrap();
        assert!(dw.is_contiguous() && dw.dims() == [6, 5]);
        // A stored gradient records no op: one would keep the output gradient alive with it.
        assert!(!dw.track_op());
    }
}
