//! Matrix products on f32 slices through the `gemm` crate, with every operand's extent checked
//! against its slice; and the product of rows against a frozen weight, on its packed copy when
//! there is one (a decoding step) and by gemm otherwise.

use super::decode::PackedWeight;
use super::storage::{with_f32, written};
use candle_core::{Result, Tensor};
use std::mem::MaybeUninit;

/// A matrix operand for [`gemm`]: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major (rows, cols) matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose: the same values with rows and columns swapped.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst = beta * lhs rhs`, or `dst += beta * lhs rhs` when `accumulate`; `dst` row-major;
/// the extents of every operand checked against its slice.
pub fn gemm(dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat, beta: f32) -> Result<()> {
    // SAFETY: dst is initialised, so reading it (when accumulating) is sound.
    unsafe { gemm_raw(dst.as_mut_ptr(), dst.len(), accumulate, lhs, rhs, beta) }
}

/// `dst = beta * lhs rhs` into values not written yet: every value of `dst` is written and
/// none is read (gemm skips reading the destination when not accumulating, and writes zeros
/// when the inner dimension is 0).
pub fn gemm_into(dst: &mut [MaybeUninit<f32>], lhs: Mat, rhs: Mat, beta: f32) -> Result<()> {
    if lhs.rows == 1 || rhs.cols == 1 {
        // gemm's matrix-vector paths view the destination as a `&mut [f32]`, which must not
        // cover unwritten memory; one row or column is cheap to zero.
        dst.fill(MaybeUninit::new(0.0));
    }
    // SAFETY: not accumulating, gemm only writes dst (initialised above where gemm makes a
    // slice of it).
    unsafe { gemm_raw(dst.as_mut_ptr().cast(), dst.len(), false, lhs, rhs, beta) }
}

/// [`gemm`] on a destination of `len` values at `dst`.
///
/// # Safety
/// `dst` is valid for writing `len` values, and for reading them when `accumulate`.
unsafe fn gemm_raw(
    dst: *mut f32,
    len: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || len != m * n || !lhs.fits() || !rhs.fits() {
        candle_core::bail!(
            "lora: cannot multiply ({m}, {k}) by ({}, {n}) into {len} values",
            rhs.rows,
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: every operand's extent was checked against its slice above; dst is (m, n) with
    // row stride n, valid as the caller vouches.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(candle_core::utils::get_num_threads()),
        );
    }
    Ok(())
}

/// `x W^T` (m, n) for `x` (m, k) and a frozen weight given as `wt` = W^T (k, n), contiguous: on
/// the packed copy of W when there is one (a few rows), else by gemm; `op` names the caller in
/// errors.
pub fn frozen_product(
    x: &[f32],
    wt: &Tensor,
    packed: Option<&PackedWeight>,
    op: &str,
) -> Result<Vec<f32>> {
    let (k, n) = wt.dims2()?;
    let m = x.len() / k.max(1);
    match packed {
        Some(p) => {
            let mut out = vec![0f32; m * n];
            p.matmul(&mut out, x, m)?;
            Ok(out)
        }
        // SAFETY: gemm_into writes every value.
        None => unsafe {
            written(m * n, |out| {
                with_f32(wt, (op, "the frozen weight"), |wt| {
                    gemm_into(out, Mat::rows(x, m, k), Mat::rows(wt, k, n), 1.0)
                })
            })
        },
    }
}
