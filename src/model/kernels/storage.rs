//! What every CPU kernel does with candle's storage: read an operand as contiguous f32 (or say
//! which operand is not), and write an op's output into fresh memory that is never zeroed first,
//! from parallel tasks that each own a part of it.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use std::mem::MaybeUninit;

/// An output buffer, written by parallel tasks that each own a disjoint part of it.
#[derive(Clone, Copy)]
pub struct Out(pub *mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element at `i`; callers write only the part their task owns.
    pub fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// The contiguous f32 data of a CPU operand of `op`; anything else is an error naming `what`.
pub fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{op}: {what} must be f32");
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&d[start..end]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 values of a CPU tensor held by an op.
pub fn with_f32<R>(
    t: &Tensor,
    (op, what): (&str, &str),
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        candle_core::bail!("{op}: {what} must be on the CPU");
    };
    f(cpu_f32(s, layout, op, what)?)
}

/// A vector of `n` values that `write` fills in full, not zeroed first: an op's output is
/// megabytes, and zeroing it was a pass over memory the op then overwrote (a few percent of a
/// training step).
///
/// # Safety
/// When `write` returns `Ok`, it has written every value of the slice it was given.
pub unsafe fn written(
    n: usize,
    write: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<()>,
) -> Result<Vec<f32>> {
    let mut v = Vec::with_capacity(n);
    write(&mut v.spare_capacity_mut()[..n])?;
    // SAFETY: the caller's `write` initialised all n values.
    unsafe { v.set_len(n) };
    Ok(v)
}

/// The values of `x` as initialised f32 (what `MaybeUninit::slice_assume_init_mut` does).
///
/// # Safety
/// Every value of `x` has been written.
pub unsafe fn assume_written(x: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller vouches that all are written.
    unsafe { &mut *(x as *mut [MaybeUninit<f32>] as *mut [f32]) }
}
