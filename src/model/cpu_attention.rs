//! Attention for inference on the CPU in f32, in the (batch, time, heads, head_dim) layout the
//! projections produce, so no transposes are copied. Per (batch row, head, block of queries) it
//! multiplies only the keys that block may see: leading padding is skipped and, under the causal
//! mask, a block stops at its last query. The softmax exponentiates only visible keys. The
//! composed path (`layers::attention`) is the reference it is tested against; it carries no
//! gradient, so training never uses it.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Queries per task: big enough for the matrix kernels, small enough to skip the masked triangle.
const QUERY_BLOCK: usize = 64;

/// `q`: (B, Tq, H, D); `k`, `v`: (B, Tk, KVH, D), all f32 on the CPU; `key_mask`: per row, 0/1
/// over the Tk keys. Query i sits at absolute key index `Tk - Tq + i` and sees the visible keys
/// up to there. Returns (B, Tq, H * D); a query that sees no key gets zeros.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: &[Vec<u8>]) -> Result<Tensor> {
    let (b, _, _, _) = q.dims4()?;
    if key_mask.len() != b {
        candle_core::bail!("attention: {} mask rows for a batch of {b}", key_mask.len());
    }
    q.apply_op3_no_bwd(
        k,
        v,
        &Attention {
            key_mask: key_mask.to_vec(),
        },
    )
}

struct Attention {
    key_mask: Vec<Vec<u8>>,
}

/// The output buffer, written by tasks that own disjoint rows of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The element at `i`; callers write only rows their task owns.
    fn at(self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        _ => candle_core::bail!("attention: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "cpu-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, tq, h, d) = ql.shape().dims4()?;
        let (kb, tk, kvh, kd) = kl.shape().dims4()?;
        if kb != b || kd != d || vl.shape() != kl.shape() || kvh == 0 || h % kvh != 0 || tk < tq {
            candle_core::bail!(
                "attention: q {:?} does not fit k {:?} / v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        if self.key_mask.iter().any(|m| m.len() != tk) {
            candle_core::bail!("attention: key mask rows must have {tk} entries");
        }
        let (q, k, v) = (
            f32_slice(qs, ql, "q")?,
            f32_slice(ks, kl, "k")?,
            f32_slice(vs, vl, "v")?,
        );
        let g = h / kvh;
        let offset = tk - tq;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * tq * h * d];
        let out_ptr = Out(out.as_mut_ptr());
        let blocks = tq.div_ceil(QUERY_BLOCK);
        (0..b * h * blocks).into_par_iter().for_each(|task| {
            let (row, rest) = (task / (h * blocks), task % (h * blocks));
            let (head, block) = (rest / blocks, rest % blocks);
            let mask = &self.key_mask[row];
            let i0 = block * QUERY_BLOCK;
            let i1 = (i0 + QUERY_BLOCK).min(tq);
            // Keys this block may see: from the first visible one to its last query's position.
            let Some(k0) = mask.iter().position(|&m| m != 0) else {
                return;
            };
            let k1 = offset + i1;
            if k0 >= k1 {
                return;
            }
            let (rows, keys) = (i1 - i0, k1 - k0);
            let q_at = &q[((row * tq + i0) * h + head) * d..];
            let kv_off = ((row * tk + k0) * kvh + head / g) * d;
            let mut scores = vec![0f32; rows * keys];
            // scores = scale * Q K^T: Q rows are H*D apart, K rows KVH*D apart.
            unsafe {
                gemm::gemm(
                    rows,
                    keys,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    keys as isize,
                    false,
                    q_at.as_ptr(),
                    1,
                    (h * d) as isize,
                    k[kv_off..].as_ptr(),
                    (kvh * d) as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (r, line) in scores.chunks_mut(keys).enumerate() {
                // Query i0 + r sees keys up to absolute index offset + i0 + r.
                let last = offset + i0 + r;
                let seen = |j: usize| k0 + j <= last && mask[k0 + j] != 0;
                let max = (0..keys)
                    .filter(|&j| seen(j))
                    .map(|j| line[j])
                    .fold(f32::NEG_INFINITY, f32::max);
                if max == f32::NEG_INFINITY {
                    // Sees nothing (a padding query): zero probabilities give a zero output.
                    line.fill(0.0);
                    continue;
                }
                let mut sum = 0f32;
                for (j, x) in line.iter_mut().enumerate() {
                    *x = if seen(j) { (*x - max).exp() } else { 0.0 };
                    sum += *x;
                }
                let inv = 1.0 / sum;
                line.iter_mut().for_each(|x| *x *= inv);
            }
            // out rows = P V, written in place: (B, Tq, H * D) has rows H*D apart.
            let dst = out_ptr.at(((row * tq + i0) * h + head) * d);
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    keys,
                    dst,
                    1,
                    (h * d) as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    keys as isize,
                    v[kv_off..].as_ptr(),
                    1,
                    (kvh * d) as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, h * d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{attention as composed, causal_mask};
    use candle_core::{D, Device};

    fn check(b: usize, tq: usize, tk: usize, h: usize, kvh: usize, mask: Vec<Vec<u8>>) {
        let dev = Device::Cpu;
        let d = 16;
        let q = Tensor::randn(0f32, 1.0, (b, tq, h, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, tk, kvh, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, tk, kvh, d), &dev).unwrap();
        let ours = attention(&q, &k, &v, &mask).unwrap();
        let t = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let m = causal_mask(&mask, tq, &dev).unwrap();
        let reference = composed(&t(&q), &t(&k), &t(&v), &m, false).unwrap();
        // Compare only queries that see at least one key (the rest are padding, ignored).
        let offset = tk - tq;
        for (row, keys) in mask.iter().enumerate() {
            for i in 0..tq {
                if !keys[..=offset + i].contains(&1) {
                    let z = ours.get(row).unwrap().get(i).unwrap();
                    let z = z.abs().unwrap().max(D::Minus1).unwrap();
                    assert_eq!(z.to_scalar::<f32>().unwrap(), 0.0);
                    continue;
                }
                let a = ours.get(row).unwrap().get(i).unwrap();
                let r = reference.get(row).unwrap().get(i).unwrap();
                let diff = (a - r).unwrap().abs().unwrap().max(D::Minus1).unwrap();
                let diff = diff.to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "row {row} query {i}: {diff}");
            }
        }
    }

    #[test]
    fn matches_composed_attention_with_padding_and_groups() {
        // Prefill over more than one query block, left padding, grouped heads.
        let t = 150;
        let left = |pad: usize| {
            std::iter::repeat_n(0u8, pad)
                .chain(std::iter::repeat_n(1u8, t - pad))
                .collect::<Vec<_>>()
        };
        check(3, t, t, 6, 2, vec![left(0), left(70), left(149)]);
        // Right padding (the perplexity path) and a hole in the middle.
        let mut right = vec![1u8; t];
        right[100..].fill(0);
        let mut holes = vec![1u8; t];
        holes[10..20].fill(0);
        check(2, t, t, 4, 4, vec![right, holes]);
        // A decoding step: one query over a longer cache, and a short chunk after a prefix.
        check(2, 1, 40, 6, 3, vec![left(5)[..40].to_vec(), vec![1; 40]]);
        check(1, 7, 40, 2, 1, vec![vec![1; 40]]);
    }
}
