//! Attention on the CPU in f32, in the (batch, time, heads, head_dim) layout the projections
//! produce, so no transposes are copied. Per (batch row, head, block of queries) it multiplies
//! only the keys that block may see: leading padding is skipped and, under the causal mask, a
//! block stops at its last query. The softmax exponentiates only visible keys. A decoding step
//! (one query per row) instead takes the query heads that share a key/value head together, so
//! each cached key and value is read once per group, with AVX-512 kernels for the usual head
//! sizes (the general matmul's per-call cost dominates products of one query).
//!
//! For training, [`attention_with_grad`] adds a backward in the manner of FlashAttention's: the
//! probabilities are recomputed block by block from Q and K, so neither pass keeps a
//! (B, H, T, T) tensor alive, and the gradients of Q, K and V come from matrix products per
//! block. The composed path (`layers::attention`) is the reference both are tested against.

use super::attention_step::{group_scores, group_values};
use super::exp;
use super::storage::{Out, cpu_f32};
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

/// [`attention`] with a backward: for training, where the composed attention would keep several
/// (B, H, T, T) tensors per layer for its backward.
pub fn attention_with_grad(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &[Vec<u8>],
) -> Result<Tensor> {
    let (b, _, _, _) = q.dims4()?;
    if key_mask.len() != b {
        candle_core::bail!("attention: {} mask rows for a batch of {b}", key_mask.len());
    }
    q.apply_op3(
        k,
        v,
        Attention {
            key_mask: key_mask.to_vec(),
        },
    )
}

struct Attention {
    key_mask: Vec<Vec<u8>>,
}

/// Checks the shapes of q (B, Tq, H, D) against k and v (B, Tk, KVH, D) and the mask; returns
/// (B, Tq, Tk, H, KVH, D).
fn check_shapes(
    ql: &Layout,
    kl: &Layout,
    vl: &Layout,
    key_mask: &[Vec<u8>],
) -> Result<(usize, usize, usize, usize, usize, usize)> {
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
    if key_mask.iter().any(|m| m.len() != tk) {
        candle_core::bail!("attention: key mask rows must have {tk} entries");
    }
    Ok((b, tq, tk, h, kvh, d))
}

/// Shape dimensions (see [`check_shapes`]) and the f32 data of q, k and v.
type Inputs<'a> = (
    (usize, usize, usize, usize, usize, usize),
    &'a [f32],
    &'a [f32],
    &'a [f32],
);

/// Checks the operands of an attention op and returns their dimensions and data.
fn inputs<'a>(
    (qs, ql): (&'a CpuStorage, &Layout),
    (ks, kl): (&'a CpuStorage, &Layout),
    (vs, vl): (&'a CpuStorage, &Layout),
    key_mask: &[Vec<u8>],
) -> Result<Inputs<'a>> {
    Ok((
        check_shapes(ql, kl, vl, key_mask)?,
        f32_slice(qs, ql, "q")?,
        f32_slice(ks, kl, "k")?,
        f32_slice(vs, vl, "v")?,
    ))
}

/// The data of k or v (B, Tk, KVH, D) for reading batch row by batch row, and the distance
/// between rows: a cache with room after each row is contiguous within rows only.
fn batch_rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<(&'a [f32], usize)> {
    let (b, tk, kvh, d) = l.shape().dims4()?;
    let row = tk * kvh * d;
    if l.is_contiguous() {
        return Ok((f32_slice(s, l, what)?, row));
    }
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("attention: {what} must be f32");
    };
    let stride = l.stride();
    let start = l.start_offset();
    let end = start + b.saturating_sub(1) * stride[0] + row;
    if stride[1..] != [kvh * d, d, 1] || stride[0] < row || end > data.len() {
        candle_core::bail!("attention: {what} must be contiguous within each batch row");
    }
    Ok((&data[start..end], stride[0]))
}

/// The keys a block of queries [i0, i1) may see, [k0, k1), or None when it sees none.
fn block_keys(mask: &[u8], offset: usize, i1: usize) -> Option<(usize, usize)> {
    let k0 = mask.iter().position(|&m| m != 0)?;
    let k1 = offset + i1;
    (k0 < k1).then_some((k0, k1))
}

/// Turns each line of scores (`keys` wide, query `first_query + r` on line r) into softmax
/// probabilities over the keys it sees; a line that sees none becomes zeros.
fn softmax_lines(scores: &mut [f32], keys: usize, k0: usize, first_query: usize, mask: &[u8]) {
    for (r, line) in scores.chunks_mut(keys).enumerate() {
        // Query first_query + r sees keys up to that absolute index.
        let last = first_query + r;
        // Keys past the query, then padding, are hidden (their exponential is 0).
        let visible = (last + 1).saturating_sub(k0).min(keys);
        line[visible..].fill(f32::NEG_INFINITY);
        for (x, &m) in line[..visible].iter_mut().zip(&mask[k0..]) {
            if m == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
        let max = exp::max(line);
        if max == f32::NEG_INFINITY {
            // Every key hidden: the query attends to nothing. The max skips NaN, so a line of
            // NaN scores (NaN in the query or keys) lands here too and must stay NaN, for the
            // non-finite checks downstream to see it.
            let fill = if line.iter().any(|x| x.is_nan()) {
                f32::NAN
            } else {
                0.0
            };
            line.fill(fill);
            continue;
        }
        let inv = (1.0 / exp::exp_sum_in_place(line, max)) as f32;
        line.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `dst (m x n) = alpha * dst + beta * lhs (m x k) * rhs (k x n)` with explicit strides
/// (column stride, row stride) for each operand, single-threaded (tasks run in parallel).
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_strides: (isize, isize),
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (isize, isize),
    rhs: *const f32,
    rhs_strides: (isize, isize),
    beta: f32,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides.0,
            dst_strides.1,
            accumulate,
            lhs,
            lhs_strides.0,
            lhs_strides.1,
            rhs,
            rhs_strides.0,
            rhs_strides.1,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    cpu_f32(s, l, "attention", what)
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
        let (b, tq, tk, h, kvh, d) = check_shapes(ql, kl, vl, &self.key_mask)?;
        let q = f32_slice(qs, ql, "q")?;
        let (k, k_rows) = batch_rows(ks, kl, "k")?;
        let (v, v_rows) = batch_rows(vs, vl, "v")?;
        let g = h / kvh;
        let offset = tk - tq;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; b * tq * h * d];
        if tq == 1 {
            // A decoding step: the g query heads that share a key/value head are adjacent, so
            // one task takes them together and reads each cached key and value once.
            out.par_chunks_mut(g * d)
                .enumerate()
                .for_each(|(task, out)| {
                    let (row, head) = (task / kvh, task % kvh);
                    let mask = &self.key_mask[row];
                    let Some((k0, k1)) = block_keys(mask, offset, 1) else {
                        return;
                    };
                    let keys = k1 - k0;
                    let q_at = &q[(row * h + head * g) * d..][..g * d];
                    let kv_at = (k0 * kvh + head) * d;
                    let (k_at, v_at) = (&k[row * k_rows + kv_at..], &v[row * v_rows + kv_at..]);
                    let mut scores = vec![0f32; g * keys];
                    group_scores(&mut scores, q_at, k_at, kvh * d, d, scale);
                    for line in scores.chunks_mut(keys) {
                        softmax_lines(line, keys, k0, offset, mask);
                    }
                    group_values(out, &scores, v_at, kvh * d, d);
                });
            return Ok((CpuStorage::F32(out), Shape::from((b, tq, h * d))));
        }
        let out_ptr = Out(out.as_mut_ptr());
        let blocks = tq.div_ceil(QUERY_BLOCK);
        (0..b * h * blocks).into_par_iter().for_each(|task| {
            let (row, rest) = (task / (h * blocks), task % (h * blocks));
            let (head, block) = (rest / blocks, rest % blocks);
            let mask = &self.key_mask[row];
            let i0 = block * QUERY_BLOCK;
            let i1 = (i0 + QUERY_BLOCK).min(tq);
            // Keys this block may see: from the first visible one to its last query's position.
            let Some((k0, k1)) = block_keys(mask, offset, i1) else {
                return;
            };
            let (rows, keys) = (i1 - i0, k1 - k0);
            let q_at = &q[((row * tq + i0) * h + head) * d..];
            let kv_at = (k0 * kvh + head / g) * d;
            let (k_off, v_off) = (row * k_rows + kv_at, row * v_rows + kv_at);
            let mut scores = vec![0f32; rows * keys];
            let (hd, kvd, line) = ((h * d) as isize, (kvh * d) as isize, keys as isize);
            // scores = scale * Q K^T: Q rows are H*D apart, K rows KVH*D apart.
            unsafe {
                matmul(
                    (rows, keys, d),
                    scores.as_mut_ptr(),
                    (1, line),
                    false,
                    q_at.as_ptr(),
                    (1, hd),
                    k[k_off..].as_ptr(),
                    (kvd, 1),
                    scale,
                );
            }
            softmax_lines(&mut scores, keys, k0, offset + i0, mask);
            // out rows = P V, written in place: (B, Tq, H * D) has rows H*D apart.
            unsafe {
                matmul(
                    (rows, d, keys),
                    out_ptr.at(((row * tq + i0) * h + head) * d),
                    (1, hd),
                    false,
                    scores.as_ptr(),
                    (1, line),
                    v[v_off..].as_ptr(),
                    (1, kvd),
                    1.0,
                );
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, tq, h, d) = q.dims4()?;
        let (_, tk, kvh, _) = k.dims4()?;
        let grads = q.apply_op3_no_bwd(
            k,
            v,
            &AttentionGrad {
                key_mask: self.key_mask.clone(),
                grad_out: grad_out.contiguous()?,
            },
        )?;
        let (nq, nk) = (b * tq * h * d, b * tk * kvh * d);
        Ok((
            Some(grads.narrow(0, 0, nq)?.reshape((b, tq, h, d))?),
            Some(grads.narrow(0, nq, nk)?.reshape((b, tk, kvh, d))?),
            Some(grads.narrow(0, nq + nk, nk)?.reshape((b, tk, kvh, d))?),
        ))
    }
}

/// The gradients of [`Attention`] for the output gradient `grad_out` (B, Tq, H * D): one flat
/// f32 buffer holding dQ, dK and dV in the layouts of q, k and v. One task per (batch row, KV
/// head) owns that head's dK and dV and its query heads' dQ, so no two tasks write one element.
/// Per block of queries: P = softmax(scale Q K^T) recomputed, dP = dO V^T,
/// dS = P (dP - rowsum(P dP)), then dQ = scale dS K, dK += scale dS^T Q, dV += P^T dO.
struct AttentionGrad {
    key_mask: Vec<Vec<u8>>,
    grad_out: Tensor,
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "cpu-attention-grad"
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
        let ((b, tq, tk, h, kvh, d), q, k, v) =
            inputs((qs, ql), (ks, kl), (vs, vl), &self.key_mask)?;
        let (go_storage, go_layout) = self.grad_out.storage_and_layout();
        let candle_core::Storage::Cpu(go_cpu) = &*go_storage else {
            candle_core::bail!("attention: the output gradient must be on the CPU");
        };
        let go = f32_slice(go_cpu, go_layout, "the output gradient")?;
        if go.len() != b * tq * h * d {
            candle_core::bail!("attention: output gradient of {} values", go.len());
        }
        let g = h / kvh;
        let offset = tk - tq;
        let scale = 1.0 / (d as f32).sqrt();
        let (nq, nk) = (b * tq * h * d, b * tk * kvh * d);
        let mut grads = vec![0f32; nq + 2 * nk];
        let base = Out(grads.as_mut_ptr());
        let (hd, kvd) = ((h * d) as isize, (kvh * d) as isize);
        let blocks = tq.div_ceil(QUERY_BLOCK);
        (0..b * kvh).into_par_iter().for_each(|task| {
            let (row, kv_head) = (task / kvh, task % kvh);
            let mask = &self.key_mask[row];
            let (mut p, mut ds) = (Vec::new(), Vec::new());
            for head in kv_head * g..(kv_head + 1) * g {
                for block in 0..blocks {
                    let i0 = block * QUERY_BLOCK;
                    let i1 = (i0 + QUERY_BLOCK).min(tq);
                    let Some((k0, k1)) = block_keys(mask, offset, i1) else {
                        continue;
                    };
                    let (rows, keys) = (i1 - i0, k1 - k0);
                    let q_off = ((row * tq + i0) * h + head) * d;
                    let kv_off = ((row * tk + k0) * kvh + kv_head) * d;
                    p.resize(rows * keys, 0.0);
                    ds.resize(rows * keys, 0.0);
                    let line = keys as isize;
                    unsafe {
                        // P = softmax(scale Q K^T)
                        matmul(
                            (rows, keys, d),
                            p.as_mut_ptr(),
                            (1, line),
                            false,
                            q[q_off..].as_ptr(),
                            (1, hd),
                            k[kv_off..].as_ptr(),
                            (kvd, 1),
                            scale,
                        );
                        softmax_lines(&mut p, keys, k0, offset + i0, mask);
                        // dP = dO V^T
                        matmul(
                            (rows, keys, d),
                            ds.as_mut_ptr(),
                            (1, line),
                            false,
                            go[q_off..].as_ptr(),
                            (1, hd),
                            v[kv_off..].as_ptr(),
                            (kvd, 1),
                            1.0,
                        );
                    }
                    // dS = P (dP - sum_j P dP), line by line.
                    for (pl, dl) in p.chunks(keys).zip(ds.chunks_mut(keys)) {
                        let dot: f32 = pl.iter().zip(dl.iter()).map(|(a, b)| a * b).sum();
                        for (x, &pj) in dl.iter_mut().zip(pl) {
                            *x = pj * (*x - dot);
                        }
                    }
                    unsafe {
                        // dQ = scale dS K (this block's rows of this head: written once).
                        matmul(
                            (rows, d, keys),
                            base.at(q_off),
                            (1, hd),
                            false,
                            ds.as_ptr(),
                            (1, line),
                            k[kv_off..].as_ptr(),
                            (1, kvd),
                            scale,
                        );
                        // dK += scale dS^T Q
                        matmul(
                            (keys, d, rows),
                            base.at(nq + kv_off),
                            (1, kvd),
                            true,
                            ds.as_ptr(),
                            (line, 1),
                            q[q_off..].as_ptr(),
                            (1, hd),
                            scale,
                        );
                        // dV += P^T dO
                        matmul(
                            (keys, d, rows),
                            base.at(nq + nk + kv_off),
                            (1, kvd),
                            true,
                            p.as_ptr(),
                            (line, 1),
                            go[q_off..].as_ptr(),
                            (1, hd),
                            1.0,
                        );
                    }
                }
            }
        });
        Ok((CpuStorage::F32(grads), Shape::from(nq + 2 * nk)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{attention as composed, causal_mask};
    use candle_core::{D, DType, Device};

    fn check(b: usize, tq: usize, tk: usize, h: usize, kvh: usize, mask: Vec<Vec<u8>>) {
        check_d(b, tq, tk, h, kvh, 16, mask)
    }

    fn check_d(b: usize, tq: usize, tk: usize, h: usize, kvh: usize, d: usize, m: Vec<Vec<u8>>) {
        let mask = m;
        let dev = Device::Cpu;
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
    fn a_nan_in_a_query_stays_nan_and_a_masked_query_gives_zero() {
        let dev = Device::Cpu;
        let (tq, h, d) = (3, 2, 16);
        let mut values = vec![0.5f32; tq * h * d];
        values[d] = f32::NAN; // query 0, head 1
        let q = Tensor::from_vec(values, (1, tq, h, d), &dev).unwrap();
        let kv = Tensor::ones((1, tq, 1, d), DType::F32, &dev).unwrap();
        // Prefill (several queries) and a decoding step (the last query alone).
        for (q, mask) in [
            (q.clone(), vec![vec![1, 1, 1]]),
            (
                q.narrow(1, 0, 1).unwrap().contiguous().unwrap(),
                vec![vec![1, 1, 1]],
            ),
        ] {
            let out = attention(&q, &kv, &kv, &mask).unwrap();
            let row: Vec<f32> = out
                .get(0)
                .unwrap()
                .get(0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                row[..d].iter().all(|x| x.is_finite()),
                "head 0 is untouched"
            );
            assert!(
                row[d..].iter().all(|x| x.is_nan()),
                "head 1 carries the NaN"
            );
        }
        // Query 0 of a row whose first key is padding sees nothing: zeros, not NaN.
        let q = Tensor::ones((1, tq, h, d), DType::F32, &dev).unwrap();
        let out = attention(&q, &kv, &kv, &[vec![0, 1, 1]]).unwrap();
        let first: Vec<f32> = out
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(first.iter().all(|&x| x == 0.0));
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

    #[test]
    fn decoding_steps_match_composed_attention_for_every_head_size() {
        // One query per row: the grouped decoding path, with its AVX-512 kernels for head sizes
        // 64 and 128 and the portable one for the rest; padding, a hole, a fully masked row.
        let tk = 37;
        let mut holes = vec![1u8; tk];
        holes[3..9].fill(0);
        let mut left = vec![1u8; tk];
        left[..20].fill(0);
        let mut last_only = vec![0u8; tk];
        last_only[tk - 1] = 1;
        let masks = vec![vec![1u8; tk], holes, left, last_only, vec![0u8; tk]];
        for d in [64, 128, 8, 24] {
            check_d(5, 1, tk, 8, 2, d, masks.clone());
            check_d(5, 1, tk, 3, 3, d, masks.clone());
        }
    }

    #[test]
    fn reads_keys_and_values_with_room_after_each_batch_row() {
        // A cache buffer of 64 steps holding 40: rows 64 * KVH * D apart. Decoding steps (the
        // portable and the AVX-512 kernels) and a chunk of 7 queries (the general path).
        let dev = Device::Cpu;
        let (b, tk, h, kvh) = (2, 40, 6, 3);
        let mask = vec![vec![1u8; tk]; b];
        let room = |x: u64, d: usize| {
            Tensor::randn(x as f32, 1.0, (b, 64, kvh, d), &dev)
                .unwrap()
                .narrow(1, 0, tk)
                .unwrap()
        };
        for (tq, d) in [(1, 16), (1, 64), (7, 16), (7, 64)] {
            let q = Tensor::randn(0f32, 1.0, (b, tq, h, d), &dev).unwrap();
            let (k, v) = (room(0, d), room(1, d));
            assert!(!k.is_contiguous());
            let ours = attention(&q, &k, &v, &mask).unwrap();
            let want = attention(
                &q,
                &k.contiguous().unwrap(),
                &v.contiguous().unwrap(),
                &mask,
            );
            let diff = (ours - want.unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{tq} queries, d {d}");
        }
        let d = 16;
        let q = Tensor::randn(0f32, 1.0, (b, 1, h, d), &dev).unwrap();
        let (k, v) = (room(0, d), room(1, d));
        // A layout that is strided within a row is refused, not misread.
        let bad = k
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let err = attention(&q, &bad, &v, &mask).unwrap_err();
        assert!(err.to_string().contains("within each batch row"), "{err}");
    }

    #[test]
    fn gradients_match_composed_attention() {
        let dev = Device::Cpu;
        let (b, t, h, kvh, d) = (3, 150, 6, 2, 16);
        let mut left = vec![1u8; t];
        left[..70].fill(0);
        let mut right = vec![1u8; t];
        right[100..].fill(0);
        let mask = vec![vec![1u8; t], left, right];
        let var = |shape: (usize, usize, usize, usize)| {
            candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev).unwrap()).unwrap()
        };
        let (q, k, v) = (var((b, t, h, d)), var((b, t, kvh, d)), var((b, t, kvh, d)));
        // A random linear loss over the queries that see at least one key.
        let sees: Vec<f32> = mask
            .iter()
            .flat_map(|m| (0..t).map(move |i| f32::from(m[..=i].contains(&1))))
            .collect();
        let sees = Tensor::from_vec(sees, (b, t, 1), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, t, h * d), &dev)
            .unwrap()
            .broadcast_mul(&sees)
            .unwrap();
        let grads = |out: Tensor| {
            let g = (out * &w).unwrap().sum_all().unwrap().backward().unwrap();
            [&q, &k, &v].map(|x| g.get(x.as_tensor()).unwrap().clone())
        };
        let ours = grads(attention_with_grad(&q, &k, &v, &mask).unwrap());
        let tr = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let m = causal_mask(&mask, t, &dev).unwrap();
        let reference = grads(composed(&tr(&q), &tr(&k), &tr(&v), &m, false).unwrap());
        for (name, (a, r)) in ["q", "k", "v"].iter().zip(ours.iter().zip(&reference)) {
            let scale = r
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = (a - r)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                scale > 0.1 && diff < 1e-4 * scale,
                "d{name}: {diff} of {scale}"
            );
        }
    }
}
