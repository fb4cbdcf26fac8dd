//! Products of a few rows against a frozen f32 weight on the CPU: the projections and the head
//! of a decoding step, where each row is one new token (entropy scoring, GRPO rollouts).
//!
//! Such a product reads the whole weight from memory for a handful of rows, so it is bound by
//! memory, and the general matmul, which repacks the weight on every call, streams it at well
//! under half of what memory delivers. Here the weight is packed once into panels of 16 output
//! columns, each panel holding all of its input rows back to back (`(n / 16, k, 16)`): a call
//! reads the panels front to back with software prefetch ahead of the loads, and each 16 values
//! loaded feed up to 16 rows from registers. Past [`MAX_ROWS`] rows the general matmul is faster
//! and is used instead.
//!
//! Every output element is one chain of fused multiply-adds over the input axis in order, the same
//! whatever the number of rows: a row's result does not depend on the other rows of its batch.
//! Built for AVX-512 and for AVX2 with FMA, chosen at run time; other CPUs keep the general
//! matmul.

use super::storage::{Out, with_f32};
use candle_core::{DType, Result, Tensor, TensorId};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Output columns per panel: one AVX-512 register, two AVX2 ones.
const PANEL: usize = 16;
/// How far ahead of its loads (in f32 values, within the contiguous panels) a kernel prefetches:
/// 8 KiB. Two threads streaming five (16, 576) x (576, 49152) products, whose weights outgrow the
/// last-level cache, read 17-21 GB/s at 8 KiB ahead against 15-19 at 2 KiB and 12-15 at 512 B
/// (three runs of each, in turn). Decoding SmolLM2-135M, 16 x 128 new tokens, 6 pairs: process
/// wall 0.95 of the 2 KiB version's; the 20M Qwen3 shape, whose weights fit, 1.00.
const PREFETCH: usize = 2048;
/// Up to this many rows a product runs here; beyond, the general matmul is faster.
pub const MAX_ROWS: usize = 64;

/// The instruction sets the kernels are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
}

impl Isa {
    /// Every kernel this CPU can run, the fastest first.
    fn supported() -> Vec<Isa> {
        let mut isas = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                isas.push(Isa::Avx2);
            }
        }
        isas
    }

    fn detect() -> Option<Isa> {
        Self::supported().first().copied()
    }

    /// Rows one kernel call keeps in registers.
    fn rows(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }
}

/// A weight W (n, k) packed for `x W^T`: panel `p` holds 16 columns of W^T for every input row,
/// zero beyond the weight's columns. Several weights with the same input size (a layer's query,
/// key and value projections) can be packed as one: their products are one call, whose output
/// holds each weight's columns in turn.
#[derive(Debug)]
pub struct PackedWeight {
    k: usize,
    /// Output columns, over all the weights.
    n: usize,
    panels: Vec<f32>,
    /// Per panel, the output columns it fills: `c0..c1`, at most 16.
    cols: Vec<(usize, usize)>,
    /// The tensors this was packed from.
    sources: Vec<TensorId>,
    isa: Isa,
}

impl PackedWeight {
    /// Packs the weights W (n_i, k), CPU f32 tensors in any layout, as one; `None` where no
    /// kernel fits this CPU.
    fn pack(weights: &[&Tensor]) -> Result<Option<PackedWeight>> {
        let Some(isa) = Isa::detect() else {
            return Ok(None);
        };
        Self::pack_for(weights, isa).map(Some)
    }

    fn pack_for(weights: &[&Tensor], isa: Isa) -> Result<PackedWeight> {
        let Some(first) = weights.first() else {
            candle_core::bail!("packed matmul: no weight to pack");
        };
        let k = first.dim(1)?;
        let mut cols = Vec::new();
        for w in weights {
            let (n, wk) = w.dims2()?;
            if wk != k {
                candle_core::bail!("packed matmul: weights of {k} and {wk} inputs packed together");
            }
            let c = cols.last().map_or(0, |&(_, c1)| c1);
            cols.extend(
                (0..n)
                    .step_by(PANEL)
                    .map(|c0| (c + c0, c + (c0 + PANEL).min(n))),
            );
        }
        let mut panels = vec![0f32; cols.len() * k * PANEL];
        let mut rest = &mut panels[..];
        for w in weights {
            let n = w.dim(0)?;
            let (mine, after) = rest.split_at_mut(n.div_ceil(PANEL) * k * PANEL);
            rest = after;
            if k == 0 || n == 0 {
                continue;
            }
            // W^T (k, n) row-major, what a panel reads row by row: read in place when the weight
            // is stored so (`layers::matmul_layout`), copied once otherwise.
            let wt = w.t()?.contiguous()?;
            with_f32(&wt, ("packed matmul", "the weight"), |wt| {
                mine.par_chunks_mut(k * PANEL)
                    .enumerate()
                    .for_each(|(p, panel)| {
                        let (c0, c1) = (p * PANEL, ((p + 1) * PANEL).min(n));
                        for (row, dst) in panel.chunks_exact_mut(PANEL).enumerate() {
                            dst[..c1 - c0].copy_from_slice(&wt[row * n + c0..row * n + c1]);
                        }
                    });
                Ok(())
            })?;
        }
        Ok(PackedWeight {
            k,
            n: cols.last().map_or(0, |&(_, c1)| c1),
            panels,
            cols,
            sources: weights.iter().map(|w| w.id()).collect(),
            isa,
        })
    }

    /// Output columns, over all the weights packed.
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `out = x W^T` for `x` (m, k) row-major and `out` (m, n) row-major, overwritten.
    pub fn matmul(&self, out: &mut [f32], x: &[f32], m: usize) -> Result<()> {
        let (k, n) = (self.k, self.n);
        if x.len() != m * k || out.len() != m * n {
            candle_core::bail!(
                "packed matmul: x of {} and out of {} values for ({m}, {k}) x ({k}, {n})",
                x.len(),
                out.len()
            );
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let count = self.cols.len();
        // Contiguous runs of panels, one per thread, so each streams its part of the weight.
        let tasks = rayon::current_num_threads().clamp(1, count);
        let per = count.div_ceil(tasks);
        let dst = Out(out.as_mut_ptr());
        (0..tasks).into_par_iter().for_each(|t| {
            let mut tile = [0f32; 16 * PANEL];
            for p in t * per..((t + 1) * per).min(count) {
                let panel = &self.panels[p * k * PANEL..(p + 1) * k * PANEL];
                let (c0, c1) = self.cols[p];
                let mut r0 = 0;
                while r0 < m {
                    let rows = (m - r0).min(self.isa.rows());
                    let xs = &x[r0 * k..(r0 + rows) * k];
                    if c1 - c0 == PANEL {
                        // SAFETY: rows r0..r0 + rows, columns c0..c0 + 16 of `out` (in bounds:
                        // checked above) belong to this task's panel only.
                        unsafe { self.panel(rows, xs, panel, dst.at(r0 * n + c0), n) };
                    } else {
                        // The last, partial panel: through a tile, then its valid columns.
                        // SAFETY: the tile holds `rows` rows of 16.
                        unsafe { self.panel(rows, xs, panel, tile.as_mut_ptr(), PANEL) };
                        for i in 0..rows {
                            // SAFETY: as above; columns c0..c1 < n of this task's panel.
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(dst.at((r0 + i) * n + c0), c1 - c0)
                            };
                            row.copy_from_slice(&tile[i * PANEL..i * PANEL + c1 - c0]);
                        }
                    }
                    r0 += rows;
                }
            }
        });
        Ok(())
    }

    /// `rows` (at most `isa.rows()`) rows of `x` (row stride k) times one panel, into `c` (16
    /// values per row, row stride `cs`).
    ///
    /// # Safety
    /// `c` must be valid for writes of 16 values at each of the `rows` rows.
    unsafe fn panel(&self, rows: usize, x: &[f32], panel: &[f32], c: *mut f32, cs: usize) {
        debug_assert!(rows >= 1 && rows <= self.isa.rows() && x.len() == rows * self.k);
        debug_assert_eq!(panel.len(), self.k * PANEL);
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! by_rows {
                ($f:ident, $($r:literal)*) => {
                    match rows {
                        // SAFETY: the ISA was detected on this CPU; slices as asserted above.
                        $($r => unsafe { kernels::$f::<$r>(self.k, x.as_ptr(), panel.as_ptr(), c, cs) },)*
                        _ => unreachable!("at most {} rows", self.isa.rows()),
                    }
                };
            }
            match self.isa {
                Isa::Avx512 => by_rows!(avx512, 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16),
                Isa::Avx2 => by_rows!(avx2, 1 2 3 4 5 6 7 8),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!(
            "no packed kernel on this architecture: {:?}",
            (x, panel, c, cs)
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod kernels {
    use super::{PANEL, PREFETCH};
    use std::arch::x86_64::*;

    /// `c[i, 0..16] = sum_k x[i, k] * panel[k, 0..16]` for `R` rows.
    ///
    /// # Safety
    /// AVX-512F; `x` holds R rows of `k`, `panel` k rows of 16, `c` R rows of 16 (stride `cs`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512<const R: usize>(
        k: usize,
        x: *const f32,
        panel: *const f32,
        c: *mut f32,
        cs: usize,
    ) {
        unsafe {
            let mut acc = [_mm512_setzero_ps(); R];
            for kk in 0..k {
                let b = panel.add(kk * PANEL);
                // Prefetch never faults, so running past the weight's end is harmless.
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH) as *const i8);
                let bv = _mm512_loadu_ps(b);
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(i * k + kk)), bv, *acc);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * cs), *acc);
            }
        }
    }

    /// As [`avx512`], for AVX2 with FMA: two registers per row.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`avx512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2<const R: usize>(
        k: usize,
        x: *const f32,
        panel: *const f32,
        c: *mut f32,
        cs: usize,
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for kk in 0..k {
                let b = panel.add(kk * PANEL);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH) as *const i8);
                let (b0, b1) = (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let a = _mm256_set1_ps(*x.add(i * k + kk));
                    acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(i * cs), acc[0]);
                _mm256_storeu_ps(c.add(i * cs + 8), acc[1]);
            }
        }
    }
}

/// A projection's packed weight (or a group of projections' one), made on first use and shared
/// by the projection's clones. It is kept only for weights that cannot change (frozen, not a
/// training variable), and remade if a weight is replaced.
#[derive(Debug, Clone, Default)]
pub struct PackedCache(Arc<Mutex<Option<Arc<PackedWeight>>>>);

impl PackedCache {
    /// The packed form of `weight` (n, k) for a product of `rows` rows, when that product should
    /// run here: a frozen CPU f32 weight, at most [`MAX_ROWS`] rows, a CPU with a kernel.
    pub fn get(&self, weight: &Tensor, rows: usize) -> Result<Option<Arc<PackedWeight>>> {
        self.get_group(&[weight], rows)
    }

    /// As [`get`](Self::get), for weights with the same input size packed as one.
    pub fn get_group(&self, weights: &[&Tensor], rows: usize) -> Result<Option<Arc<PackedWeight>>> {
        let packable = |w: &&Tensor| {
            w.device().is_cpu() && w.dtype() == DType::F32 && w.rank() == 2 && !w.track_op()
        };
        if rows == 0 || rows > MAX_ROWS || weights.is_empty() || !weights.iter().all(packable) {
            return Ok(None);
        }
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = slot.as_ref()
            && p.sources.iter().copied().eq(weights.iter().map(|w| w.id()))
        {
            return Ok(Some(p.clone()));
        }
        let packed = PackedWeight::pack(weights)?.map(Arc::new);
        slot.clone_from(&packed);
        Ok(packed)
    }

    /// Drops the packed weight (the next few-row product packs it again).
    pub fn release(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether a packed weight is held.
    pub fn is_packed(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// Whether this CPU has a packed kernel (otherwise the general matmul runs for every product).
pub fn kernel_available() -> bool {
    Isa::detect().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn isas() -> Vec<Isa> {
        Isa::supported()
    }

    /// An (m, k) matrix of standard normal values, row-major.
    fn random_rows(m: usize, k: usize) -> Vec<f32> {
        Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `x W^T` in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
                    .sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn packed_products_match_a_reference_for_every_kernel_and_odd_shapes() {
        let dev = Device::Cpu;
        if isas().is_empty() {
            eprintln!("no packed kernel for this CPU: nothing to check");
        }
        for isa in isas() {
            // Rows past one kernel call and not a multiple of it; columns past one panel and
            // not a multiple of it; a prefetch distance past the weight's end.
            for &(m, k, n) in &[
                (1, 1, 1),
                (5, 7, 40),
                (16, 64, 16),
                (17, 33, 192),
                (64, 96, 50),
            ] {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                // A transposed view, as frozen weights are laid out for the general matmul.
                let laid_out = w.t().unwrap().contiguous().unwrap().t().unwrap();
                for weight in [&w, &laid_out] {
                    let p = PackedWeight::pack_for(&[weight], isa).unwrap();
                    let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                    let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
                    let mut out = vec![f32::NAN; m * n];
                    p.matmul(&mut out, &xv, m).unwrap();
                    let want = reference(&xv, &wv, m, k, n);
                    let err = out
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                        .fold(0f32, f32::max);
                    assert!(err < 1e-5, "{isa:?} ({m}, {k}) x ({k}, {n}): off by {err}");
                }
            }
        }
    }

    #[test]
    fn weights_packed_together_give_each_weights_product_in_turn() {
        let dev = Device::Cpu;
        let k = 37;
        // Widths below, at and past a panel, not multiples of it, and an empty one.
        let ws: Vec<Tensor> = [40, 16, 0, 23]
            .iter()
            .map(|&n| Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap())
            .collect();
        let refs: Vec<&Tensor> = ws.iter().collect();
        let total: usize = ws.iter().map(|w| w.dim(0).unwrap()).sum();
        for isa in isas() {
            let group = PackedWeight::pack_for(&refs, isa).unwrap();
            assert_eq!(group.out_features(), total);
            for m in [1, 5, 17] {
                let x = random_rows(m, k);
                let mut all = vec![f32::NAN; m * total];
                group.matmul(&mut all, &x, m).unwrap();
                let mut c0 = 0;
                for w in &ws {
                    let n = w.dim(0).unwrap();
                    let alone = PackedWeight::pack_for(&[w], isa).unwrap();
                    let mut one = vec![f32::NAN; m * n];
                    alone.matmul(&mut one, &x, m).unwrap();
                    for i in 0..m {
                        assert_eq!(
                            all[i * total + c0..i * total + c0 + n],
                            one[i * n..(i + 1) * n],
                            "{isa:?}: {m} rows, row {i}, the weight at column {c0}"
                        );
                    }
                    c0 += n;
                }
            }
        }
        // Input sizes that differ cannot be packed together.
        let other = Tensor::randn(0f32, 1.0, (8, k + 1), &dev).unwrap();
        if let Some(&isa) = isas().first() {
            assert!(PackedWeight::pack_for(&[&ws[0], &other], isa).is_err());
        }
    }

    #[test]
    fn a_rows_result_does_not_depend_on_the_rest_of_its_batch() {
        let dev = Device::Cpu;
        let (m, k, n) = (37, 50, 70);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let x = random_rows(m, k);
        for isa in isas() {
            let p = PackedWeight::pack_for(&[&w], isa).unwrap();
            let mut all = vec![0f32; m * n];
            p.matmul(&mut all, &x, m).unwrap();
            for i in [0, 8, 16, 36] {
                let mut one = vec![0f32; n];
                p.matmul(&mut one, &x[i * k..(i + 1) * k], 1).unwrap();
                assert_eq!(one, all[i * n..(i + 1) * n], "{isa:?}: row {i}");
            }
        }
    }

    #[test]
    fn the_cache_packs_only_frozen_weights_and_follows_a_replaced_weight() {
        let dev = Device::Cpu;
        let cache = PackedCache::default();
        let w = Tensor::randn(0f32, 1.0, (8, 4), &dev).unwrap();
        let var = Var::randn(0f32, 1.0, (8, 4), &dev).unwrap();
        assert!(cache.get(var.as_tensor(), 4).unwrap().is_none());
        assert!(cache.get(&w, MAX_ROWS + 1).unwrap().is_none());
        assert!(
            cache
                .get(&w.to_dtype(DType::F64).unwrap(), 4)
                .unwrap()
                .is_none()
        );
        if Isa::detect().is_none() {
            return;
        }
        let first = cache.get(&w, 4).unwrap().expect("packed");
        let again = cache.get(&w, 1).unwrap().expect("packed");
        assert!(Arc::ptr_eq(&first, &again), "packed once");
        let clone = cache.clone();
        let w2 = (&w * 2.0).unwrap();
        let second = clone.get(&w2, 4).unwrap().expect("packed");
        assert_eq!(second.sources, [w2.id()]);
        let x = vec![1f32; 4];
        let (mut a, mut b) = (vec![0f32; 8], vec![0f32; 8]);
        first.matmul(&mut a, &x, 1).unwrap();
        second.matmul(&mut b, &x, 1).unwrap();
        for (a, b) in a.iter().zip(&b) {
            assert!((2.0 * a - b).abs() < 1e-5, "the replaced weight is used");
        }
        // A group is remade when any of its weights is replaced.
        let group = PackedCache::default();
        let g1 = group.get_group(&[&w, &w2], 4).unwrap().expect("packed");
        assert!(Arc::ptr_eq(
            &g1,
            &group.get_group(&[&w, &w2], 2).unwrap().unwrap()
        ));
        let g2 = group.get_group(&[&w, &w], 4).unwrap().expect("packed");
        assert_eq!(g2.sources, [w.id(), w.id()]);
        assert!(
            group
                .get_group(&[&w, var.as_tensor()], 4)
                .unwrap()
                .is_none()
        );
        assert!(cache.is_packed());
        clone.release();
        assert!(!cache.is_packed(), "clones share one slot");
    }
}
