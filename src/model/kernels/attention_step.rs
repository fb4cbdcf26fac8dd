//! The products of a decoding step's attention (one query per row): the query heads that share
//! a key/value head are taken together, so each cached key and value is read once per group, and
//! the scores and weighted values are summed by small kernels (AVX-512 for head sizes 64 and 128)
//! where the general matmul's per-call cost would dominate products of one query.

use super::exp;

/// Lanes of the dot products below: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// The sum of 16 lanes, halving them in a tree (shuffles, not 16 dependent additions).
#[inline(always)]
fn lane_sum(mut a: [f32; LANES]) -> f32 {
    for half in [8, 4, 2, 1] {
        for l in 0..half {
            a[l] += a[l + half];
        }
    }
    a[0]
}

/// The dot product of two equally long slices, in 16 lane sums added at the end.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    lane_sum(acc) + tail
}

/// `scores[r][j] = scale * q_r . k_j` for the g queries of `q` (g x d, rows back to back) and
/// the keys of `k` (key j at `j * stride`); `scores` is g lines of the same number of keys.
#[inline(always)]
fn group_scores_impl(
    scores: &mut [f32],
    q: &[f32],
    k: &[f32],
    stride: usize,
    d: usize,
    scale: f32,
) {
    let keys = scores.len() / (q.len() / d);
    for (qr, line) in q.chunks_exact(d).zip(scores.chunks_exact_mut(keys)) {
        for (j, s) in line.iter_mut().enumerate() {
            *s = scale * dot(qr, &k[j * stride..][..d]);
        }
    }
}

/// `out_r = sum_j p[r][j] v_j` for the g lines of probabilities `p` and the values of `v`
/// (value j at `j * stride`); `out` is g x d, rows back to back.
#[inline(always)]
fn group_values_impl(out: &mut [f32], p: &[f32], v: &[f32], stride: usize, d: usize) {
    let keys = p.len() / (out.len() / d);
    out.fill(0.0);
    for (o, pr) in out.chunks_exact_mut(d).zip(p.chunks_exact(keys)) {
        for (j, &pj) in pr.iter().enumerate() {
            for (o, &x) in o.iter_mut().zip(&v[j * stride..][..d]) {
                *o += pj * x;
            }
        }
    }
}

exp::dispatch!(
    group_scores_portable(
        scores: &mut [f32],
        q: &[f32],
        k: &[f32],
        stride: usize,
        d: usize,
        scale: f32
    ) -> () = group_scores_impl
);
exp::dispatch!(
    group_values_portable(out: &mut [f32], p: &[f32], v: &[f32], stride: usize, d: usize) -> ()
        = group_values_impl
);

/// Whether `x` holds `lines` rows of `d` values `stride` apart, the first at 0.
fn holds(x: &[f32], lines: usize, stride: usize, d: usize) -> bool {
    lines == 0 || x.len() >= (lines - 1) * stride + d
}

/// [`group_scores_impl`], with AVX-512 kernels for head dimensions 64 and 128.
pub(super) fn group_scores(
    scores: &mut [f32],
    q: &[f32],
    k: &[f32],
    stride: usize,
    d: usize,
    scale: f32,
) {
    let g = q.len() / d;
    let keys = scores.len() / g;
    assert!(g > 0 && q.len() == g * d && scores.len() == g * keys && holds(k, keys, stride, d));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F and the operands were checked to hold what is read.
        match d {
            64 => return unsafe { avx512::group_scores::<4>(scores, q, k, stride, scale) },
            128 => return unsafe { avx512::group_scores::<8>(scores, q, k, stride, scale) },
            _ => {}
        }
    }
    group_scores_portable(scores, q, k, stride, d, scale)
}

/// [`group_values_impl`], with AVX-512 kernels for head dimensions 64 and 128.
pub(super) fn group_values(out: &mut [f32], p: &[f32], v: &[f32], stride: usize, d: usize) {
    let g = out.len() / d;
    let keys = p.len() / g;
    assert!(g > 0 && out.len() == g * d && p.len() == g * keys && holds(v, keys, stride, d));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: as in `group_scores`.
        match d {
            64 => return unsafe { avx512::group_values::<4>(out, p, v, stride) },
            128 => return unsafe { avx512::group_values::<8>(out, p, v, stride) },
            _ => {}
        }
    }
    group_values_portable(out, p, v, stride, d)
}

/// The decoding step's attention products with the head dimension in `N` registers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::group_scores_impl`] for d = 16 N: the query sits in registers, one fused
    /// multiply-add per 16 values of a key, one horizontal sum per score.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `k` holds `keys` rows of 16 N values `stride` apart, `q` whole rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn group_scores<const N: usize>(
        scores: &mut [f32],
        q: &[f32],
        k: &[f32],
        stride: usize,
        scale: f32,
    ) {
        let d = 16 * N;
        let keys = scores.len() / (q.len() / d);
        for (qr, line) in q.chunks_exact(d).zip(scores.chunks_exact_mut(keys)) {
            let qv: [__m512; N] =
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(qr.as_ptr().add(16 * c)) });
            for (j, s) in line.iter_mut().enumerate() {
                let kj = unsafe { k.as_ptr().add(j * stride) };
                let mut acc = _mm512_setzero_ps();
                for (c, qc) in qv.iter().enumerate() {
                    acc = _mm512_fmadd_ps(*qc, unsafe { _mm512_loadu_ps(kj.add(16 * c)) }, acc);
                }
                *s = scale * _mm512_reduce_add_ps(acc);
            }
        }
    }

    /// [`super::group_values_impl`] for d = 16 N: each output row is summed in registers.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `v` holds `keys` rows of 16 N values `stride` apart.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn group_values<const N: usize>(
        out: &mut [f32],
        p: &[f32],
        v: &[f32],
        stride: usize,
    ) {
        let d = 16 * N;
        let keys = p.len() / (out.len() / d);
        for (o, pr) in out.chunks_exact_mut(d).zip(p.chunks_exact(keys)) {
            let mut acc = [_mm512_setzero_ps(); N];
            for (j, &pj) in pr.iter().enumerate() {
                let vj = unsafe { v.as_ptr().add(j * stride) };
                let pj = _mm512_set1_ps(pj);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(pj, unsafe { _mm512_loadu_ps(vj.add(16 * c)) }, *a);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), *a) };
            }
        }
    }
}
