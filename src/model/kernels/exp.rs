//! Exponentials over slices of f32, for the softmaxes of the CPU kernels (attention, the
//! vocabulary's log-partition and its gradient). libm's `expf` is one call per value; here the
//! exponential is a branch-free polynomial the compiler vectorises, built for AVX-512 and for
//! AVX2 when the CPU has them (detected at run time) and for the baseline otherwise. Every
//! build runs the same operations in the same order (no fused multiply-adds), so results do not
//! depend on the CPU.
//!
//! The method is Cephes' `expf`: n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, so
//! n * the first part is exact), exp(r) by a degree-7 polynomial on [-ln 2 / 2, ln 2 / 2], times
//! 2^n built from its exponent bits. The relative error is within 2 ulp of f32 (tested against
//! f64 below). Inputs below -87.3 give 0 (exp of them is below f32's normal range); above 88.37
//! they give exp(88.37) ~ 2.4e38, not infinity (callers pass x - max, at most 0); NaN stays NaN.

use std::mem::MaybeUninit;

const MIN_X: f32 = -87.336_54;
const MAX_X: f32 = 88.376_26;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds an f32 of magnitude below 2^22 to an integer, kept in the low
/// mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// exp(x), vectorisable: selects, no branches.
#[inline(always)]
pub(super) fn exp1(x: f32) -> f32 {
    let xc = if x > MAX_X { MAX_X } else { x };
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2^n: n (an integer in [-126, 127] here) sits in t's low mantissa bits.
    let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    let y = e * f32::from_bits(bits as u32);
    if x < MIN_X { 0.0 } else { y }
}

/// Sums in 16 f32 lanes over blocks of `BLOCK` values, the blocks added in f64: the lanes
/// vectorise, and f32 partial sums of at most `BLOCK / 16` terms stay accurate.
const LANES: usize = 16;
const BLOCK: usize = 1024;

#[inline(always)]
fn lane_sum(xs: &[f32]) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(BLOCK) {
        let mut acc = [0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for k in 0..LANES {
                acc[k] += c[k];
            }
        }
        total += acc.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail);
    }
    total
}

#[inline(always)]
fn exp_scaled_impl(dst: &mut [f32], src: &[f32], shift: f32, scale: f32) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = scale * exp1(x - shift);
    }
}

#[inline(always)]
fn exp_sum_in_place_impl(xs: &mut [f32], shift: f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks_mut(BLOCK) {
        for x in block.iter_mut() {
            *x = exp1(*x - shift);
        }
        total += lane_sum(block);
    }
    total
}

#[inline(always)]
fn sum_exp_impl(xs: &[f32], shift: f32) -> f64 {
    let mut buf = [0f32; BLOCK];
    let mut total = 0f64;
    for block in xs.chunks(BLOCK) {
        let b = &mut buf[..block.len()];
        exp_scaled_impl(b, block, shift, 1.0);
        total += lane_sum(b);
    }
    total
}

#[inline(always)]
fn exp_moments_impl(xs: &[f32], shift: f32) -> (f64, f64) {
    let (mut e, mut w) = ([0f32; BLOCK], [0f32; BLOCK]);
    let (mut sum, mut weighted) = (0f64, 0f64);
    for block in xs.chunks(BLOCK) {
        let n = block.len();
        for ((e, w), &x) in e[..n].iter_mut().zip(&mut w[..n]).zip(block) {
            let y = x - shift;
            let v = exp1(y);
            *e = v;
            // A value of probability 0 (-inf) weighs nothing.
            *w = if v == 0.0 { 0.0 } else { v * y };
        }
        sum += lane_sum(&e[..n]);
        weighted += lane_sum(&w[..n]);
    }
    (sum, weighted)
}

#[inline(always)]
fn max_impl(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for c in chunks {
        for k in 0..LANES {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    acc.iter().fold(tail, |m, &x| if x > m { x } else { m })
}

/// Defines `pub fn $name` that runs `$impl` (an `#[inline(always)]` function) built for the best
/// of AVX-512, AVX2 and the baseline this CPU has.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $impl:ident) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $impl($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $impl($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the feature the function was built for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $impl($($arg),*)
        }
    };
}

pub(super) use dispatch;

#[inline(always)]
fn exp_scaled_into_impl(dst: &mut [MaybeUninit<f32>], src: &[f32], shift: f32, scale: f32) {
    for (d, &x) in dst.iter_mut().zip(src) {
        d.write(scale * exp1(x - shift));
    }
}

dispatch!(
    /// `dst[i] = scale * exp(src[i] - shift)` over the shorter of the two, into values not
    /// written yet.
    exp_scaled(dst: &mut [MaybeUninit<f32>], src: &[f32], shift: f32, scale: f32) -> ()
        = exp_scaled_into_impl
);

dispatch!(
    /// `xs[i] = exp(xs[i] - shift)`; returns their sum (accumulated as [`sum_exp`] does).
    exp_sum_in_place(xs: &mut [f32], shift: f32) -> f64 = exp_sum_in_place_impl
);

dispatch!(
    /// The sum of `exp(x - shift)` over `xs`: f32 lanes over blocks of 1024, blocks in f64.
    sum_exp(xs: &[f32], shift: f32) -> f64 = sum_exp_impl
);

dispatch!(
    /// Over `xs`, the sums of `exp(x - shift)` and of `exp(x - shift) * (x - shift)`, each
    /// accumulated as [`sum_exp`] does: the partition function and first moment of a softmax.
    exp_moments(xs: &[f32], shift: f32) -> (f64, f64) = exp_moments_impl
);

dispatch!(
    /// The largest value of `xs` (-inf when empty; NaNs are skipped, and the sums of
    /// `exp(x - max)` carry them).
    max(xs: &[f32]) -> f32 = max_impl
);

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp(x)` for each x, through [`exp_scaled`].
    fn exp_of(xs: &[f32]) -> Vec<f32> {
        let mut got = vec![MaybeUninit::new(f32::NAN); xs.len()];
        exp_scaled(&mut got, xs, 0.0, 1.0);
        // SAFETY: every value was initialised (to NaN) before exp_scaled overwrote it.
        got.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    }

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        ((a - b32).abs() / (b32.abs() * f32::EPSILON)) as f64
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_over_the_softmax_range() {
        // Every 1/997 from -87 to 88, then the edges of the reduced range.
        let xs: Vec<f32> = (0..175 * 997)
            .map(|i| -87.0 + i as f32 / 997.0)
            .chain([-0.346_573_6, 0.346_573_6, 0.0, -1e-7, 1e-7])
            .collect();
        let got = exp_of(&xs);
        let worst = xs
            .iter()
            .zip(&got)
            .map(|(&x, &y)| ulps(y, f64::from(x).exp()))
            .fold(0f64, f64::max);
        assert!(worst <= 2.0, "worst error {worst} ulp");
        // The baseline build gives the same bits as the vector builds.
        for (&x, &y) in xs.iter().zip(&got).step_by(101) {
            assert_eq!(exp1(x).to_bits(), y.to_bits(), "x = {x}");
        }
    }

    #[test]
    fn exp_edges() {
        let xs = [f32::NEG_INFINITY, -1000.0, -88.0, 89.0, f32::NAN, 0.0];
        let got = exp_of(&xs);
        assert_eq!(&got[..3], &[0.0, 0.0, 0.0]);
        assert!(got[3].is_finite() && got[3] > 2e38);
        assert!(got[4].is_nan());
        assert_eq!(got[5], 1.0);
    }

    #[test]
    fn sums_and_max_match_plain_loops() {
        // Lengths around the lane and block sizes, with a shift.
        for n in [0, 1, 15, 16, 17, 1023, 1024, 1025, 49_152] {
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
                .collect();
            let want: f64 = xs.iter().map(|&x| (f64::from(x) - 3.0).exp()).sum();
            let got = sum_exp(&xs, 3.0);
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1e-30),
                "n {n}: {got} vs {want}"
            );
            let mut ys = xs.clone();
            let s = exp_sum_in_place(&mut ys, 3.0);
            assert!((s - want).abs() <= 1e-6 * want.max(1e-30), "n {n}");
            let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&xs), m, "n {n}");
            let first: f64 = xs
                .iter()
                .map(|&x| (f64::from(x) - 3.0).exp() * (f64::from(x) - 3.0))
                .sum();
            let (s, w) = exp_moments(&xs, 3.0);
            assert!((s - want).abs() <= 1e-6 * want.max(1e-30), "n {n}");
            let scale = xs
                .iter()
                .map(|&x| (f64::from(x) - 3.0).exp() * 8.0)
                .sum::<f64>();
            assert!(
                (w - first).abs() <= 1e-6 * scale.max(1e-30),
                "n {n}: {w} vs {first}"
            );
        }
    }
}
