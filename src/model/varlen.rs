//! Attention over sequences packed end to end, the layout FlashAttention's variable-length
//! kernel reads: a padded batch's real tokens gathered into one run, rows delimited by
//! cumulative lengths, so no work or memory goes to padding and no mask is built.
//!
//! The batch's rows may be padded anywhere (edco pads on the left); a row's real queries are
//! always its last real keys (they are the new tokens, whose keys were just appended), so the
//! kernel's causal mask, aligned to the end of each row's keys, is the batch's causal mask.

use candle_core::{DType, Device, Result, Tensor};

/// An attention kernel over packed rows: `q` (total_q, H, D) and `k`, `v` (total_k, KVH, D)
/// to (total_q, H, D), causal within each row, end-aligned.
pub type Kernel = fn(&Tensor, &Tensor, &Tensor, &Packing) -> Result<Tensor>;

/// Where a padded batch's real tokens are, for one forward pass (shared by every layer).
#[derive(Debug)]
pub struct Packing {
    rows: usize,
    tq: usize,
    tk: usize,
    /// Real queries' and keys' indices into the flattened (B * Tq) queries and (B * Tk) keys;
    /// `None` where nothing is padding.
    q_index: Option<Tensor>,
    k_index: Option<Tensor>,
    /// Per padded query position, the packed query it takes, or `total_q` (a row of zeros) for
    /// padding; `None` where nothing is padding.
    q_scatter: Option<Tensor>,
    /// Cumulative real query and key counts per row (B + 1), u32 on the device.
    pub cu_q: Tensor,
    pub cu_k: Tensor,
    /// The same counts on the host.
    pub q_lens: Vec<usize>,
    pub k_lens: Vec<usize>,
    pub max_q: usize,
    pub max_k: usize,
}

impl Packing {
    /// `key_mask`: per row, 0/1 over all Tk keys, the last `tq` of which are this pass's
    /// queries.
    pub fn new(key_mask: &[Vec<u8>], tq: usize, device: &Device) -> Result<Self> {
        let rows = key_mask.len();
        let tk = key_mask.first().map_or(0, Vec::len);
        if tq > tk || key_mask.iter().any(|m| m.len() != tk) {
            candle_core::bail!(
                "packing {tq} queries over key masks of lengths {:?}",
                key_mask.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        let offset = tk - tq;
        let (mut q_index, mut k_index) = (Vec::new(), Vec::new());
        let (mut q_lens, mut k_lens) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        for (row, keys) in key_mask.iter().enumerate() {
            let before = (q_index.len(), k_index.len());
            for (j, &m) in keys.iter().enumerate() {
                if m != 0 {
                    k_index.push((row * tk + j) as u32);
                    if j >= offset {
                        q_index.push((row * tq + j - offset) as u32);
                    }
                }
            }
            q_lens.push(q_index.len() - before.0);
            k_lens.push(k_index.len() - before.1);
        }
        let cumulative = |lens: &[usize]| -> Result<Tensor> {
            let mut acc = vec![0u32];
            for &n in lens {
                acc.push(acc[acc.len() - 1] + n as u32);
            }
            Tensor::new(acc, device)
        };
        let total_q = q_index.len();
        let q_whole = total_q == rows * tq;
        let q_scatter = if q_whole {
            None
        } else {
            let mut back = vec![total_q as u32; rows * tq];
            for (packed, &i) in q_index.iter().enumerate() {
                back[i as usize] = packed as u32;
            }
            Some(Tensor::new(back, device)?)
        };
        let k_whole = k_index.len() == rows * tk;
        Ok(Self {
            rows,
            tq,
            tk,
            q_index: if q_whole {
                None
            } else {
                Some(Tensor::new(q_index, device)?)
            },
            k_index: if k_whole {
                None
            } else {
                Some(Tensor::new(k_index, device)?)
            },
            q_scatter,
            cu_q: cumulative(&q_lens)?,
            cu_k: cumulative(&k_lens)?,
            max_q: q_lens.iter().copied().max().unwrap_or(0),
            max_k: k_lens.iter().copied().max().unwrap_or(0),
            q_lens,
            k_lens,
        })
    }

    /// Attention of `q` (B, Tq, H, D) over `k`, `v` (B, Tk, KVH, D) through `kernel`:
    /// (B, Tq, H * D), zeros at padded query positions.
    pub fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, kernel: Kernel) -> Result<Tensor> {
        let (b, tq, h, d) = q.dims4()?;
        let (kb, tk, kvh, _) = k.dims4()?;
        if (b, tq, kb, tk) != (self.rows, self.tq, self.rows, self.tk) || v.dims() != k.dims() {
            candle_core::bail!(
                "packing made for {} rows of {} queries over {} keys, given queries {:?}, keys {:?}, values {:?}",
                self.rows,
                self.tq,
                self.tk,
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        let total_q = self.q_lens.iter().sum::<usize>();
        if total_q == 0 {
            return Tensor::zeros((b, tq, h * d), q.dtype(), q.device());
        }
        let gather = |x: &Tensor, rows: usize, heads: usize, index: &Option<Tensor>| {
            let x = x.contiguous()?.reshape((rows, heads, d))?;
            match index {
                Some(i) => x.index_select(i, 0),
                None => Ok(x),
            }
        };
        let out = {
            let q = gather(q, b * tq, h, &self.q_index)?;
            let k = gather(k, b * tk, kvh, &self.k_index)?;
            let v = gather(v, b * tk, kvh, &self.k_index)?;
            kernel(&q, &k, &v, self)?.reshape((total_q, h * d))?
        };
        let out = match &self.q_scatter {
            Some(back) => {
                let zero = Tensor::zeros((1, h * d), out.dtype(), out.device())?;
                Tensor::cat(&[&out, &zero], 0)?.index_select(back, 0)?
            }
            None => out,
        };
        out.reshape((b, tq, h * d))
    }
}

/// The kernel's contract computed from candle ops, row by row: each row's queries attend to its
/// keys causally, aligned to the end, softmax in f32. The reference the fast kernels are held to.
pub fn reference(q: &Tensor, k: &Tensor, v: &Tensor, packing: &Packing) -> Result<Tensor> {
    let (mut q_at, mut k_at) = (0, 0);
    let mut outs = Vec::with_capacity(packing.q_lens.len());
    for (&nq, &nk) in packing.q_lens.iter().zip(&packing.k_lens) {
        if nq > 0 {
            let heads_first = |x: &Tensor, at: usize, n: usize| {
                x.narrow(0, at, n)?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .contiguous()
            };
            let mask = super::layers::causal_mask(&[vec![1u8; nk]], nq, q.device())?;
            let out = super::layers::attention(
                &heads_first(q, q_at, nq)?,
                &heads_first(k, k_at, nk)?,
                &heads_first(v, k_at, nk)?,
                &mask,
                true,
            )?; // (1, nq, H * D)
            outs.push(out.squeeze(0)?);
        }
        q_at += nq;
        k_at += nk;
    }
    let (_, h, d) = q.dims3()?;
    Tensor::cat(&outs, 0)?.reshape((q_at, h, d))
}

/// FlashAttention-2's variable-length forward kernel (bf16, CUDA).
#[cfg(feature = "flash-attn")]
pub fn flash(q: &Tensor, k: &Tensor, v: &Tensor, packing: &Packing) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(2)? as f32).sqrt();
    candle_flash_attn::flash_attn_varlen(
        q,
        k,
        v,
        &packing.cu_q,
        &packing.cu_k,
        packing.max_q,
        packing.max_k,
        scale,
        true,
    )
}

/// Why FlashAttention cannot serve a model of this dtype, device and head size in this build;
/// `None` when it can.
pub fn flash_unavailable(dtype: DType, device: &Device, head_dim: usize) -> Option<String> {
    if !cfg!(feature = "flash-attn") {
        return Some(
            "this build has no FlashAttention (build with scripts/cuda_build.sh --flash-attn)"
                .into(),
        );
    }
    if !device.is_cuda() {
        return Some("FlashAttention runs on CUDA devices only".into());
    }
    if dtype != DType::BF16 {
        return Some(format!(
            "FlashAttention is built for bf16 only (the model is {dtype:?})"
        ));
    }
    if head_dim > 128 || !head_dim.is_multiple_of(8) {
        return Some(format!(
            "FlashAttention is built for head sizes that are multiples of 8 up to 128 (the model's is {head_dim})"
        ));
    }
    None
}

/// The FlashAttention kernel where this build has it.
pub fn flash_kernel() -> Option<Kernel> {
    #[cfg(feature = "flash-attn")]
    {
        Some(flash)
    }
    #[cfg(not(feature = "flash-attn"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::{attention, causal_mask};

    fn randn(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n)
            .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The packed path through the reference kernel against the masked attention over the
    /// padded batch, at the real query positions; padded ones come back as zeros.
    fn check(key_mask: &[Vec<u8>], tq: usize) {
        let (b, tk, h, kvh, d) = (key_mask.len(), key_mask[0].len(), 4, 2, 8);
        let q = randn((b, tq, h, d), 1);
        let k = randn((b, tk, kvh, d), 2);
        let v = randn((b, tk, kvh, d), 3);
        let packing = Packing::new(key_mask, tq, &Device::Cpu).unwrap();
        let got = packing.attention(&q, &k, &v, reference).unwrap();
        let heads_first = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let mask = causal_mask(key_mask, tq, &Device::Cpu).unwrap();
        let want = attention(
            &heads_first(&q),
            &heads_first(&k),
            &heads_first(&v),
            &mask,
            true,
        )
        .unwrap();
        let got: Vec<Vec<Vec<f32>>> = got.to_vec3().unwrap();
        let want: Vec<Vec<Vec<f32>>> = want.to_vec3().unwrap();
        let offset = tk - tq;
        for row in 0..b {
            for i in 0..tq {
                let real = key_mask[row][offset + i] != 0;
                for (x, y) in got[row][i].iter().zip(&want[row][i]) {
                    if real {
                        assert!((x - y).abs() < 1e-5, "row {row} query {i}: {x} vs {y}");
                    } else {
                        assert_eq!(*x, 0.0, "row {row} padded query {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn packed_attention_matches_masked_attention_on_left_padded_prefill() {
        check(
            &[
                vec![0, 0, 0, 1, 1, 1, 1],
                vec![1; 7],
                vec![0, 0, 0, 0, 0, 0, 1],
            ],
            7,
        );
    }

    #[test]
    fn packed_attention_matches_masked_attention_on_decoding_steps_and_unpadded_batches() {
        // One new token per row over a left-padded cache.
        check(&[vec![0, 0, 1, 1, 1, 1], vec![1; 6]], 1);
        // Two new tokens, the first padding in one row.
        check(&[vec![0, 1, 1, 1, 0, 1], vec![1, 1, 1, 1, 1, 1]], 2);
        // Nothing padded: no gathers.
        check(&[vec![1; 5], vec![1; 5]], 5);
        check(&[vec![1; 5], vec![1; 5]], 1);
        // A row whose only new position is padding attends to nothing and gets zeros.
        check(&[vec![1, 1, 1, 0], vec![0, 1, 1, 1]], 1);
        check(&[vec![1, 1, 1, 0], vec![1, 1, 0, 0]], 1);
    }

    #[test]
    fn packed_attention_matches_masked_attention_on_right_padded_batches() {
        check(
            &[vec![1, 1, 1, 1, 0, 0], vec![1; 6], vec![1, 0, 0, 0, 0, 0]],
            6,
        );
    }

    #[test]
    fn packing_refuses_keys_it_was_not_made_for() {
        let p = Packing::new(&[vec![0, 1, 1], vec![1, 1, 1]], 1, &Device::Cpu).unwrap();
        let q = randn((2, 1, 4, 8), 1);
        let k = randn((2, 3, 2, 8), 2);
        assert!(p.attention(&q, &k, &k, reference).is_ok());
        let longer = randn((2, 4, 2, 8), 3);
        assert!(p.attention(&q, &longer, &longer, reference).is_err());
        assert!(p.attention(&q, &k, &longer, reference).is_err());
    }

    #[test]
    fn packing_counts_each_rows_real_tokens() {
        let p = Packing::new(&[vec![0, 1, 1, 1], vec![1, 1, 1, 0]], 2, &Device::Cpu).unwrap();
        assert_eq!(p.q_lens, vec![2, 1]);
        assert_eq!(p.k_lens, vec![3, 3]);
        assert_eq!(p.cu_q.to_vec1::<u32>().unwrap(), vec![0, 2, 3]);
        assert_eq!(p.cu_k.to_vec1::<u32>().unwrap(), vec![0, 3, 6]);
        assert_eq!((p.max_q, p.max_k), (2, 3));
        assert!(Packing::new(&[vec![1, 1]], 3, &Device::Cpu).is_err());
        assert!(Packing::new(&[vec![1, 1], vec![1]], 1, &Device::Cpu).is_err());
    }

    #[test]
    fn flash_is_refused_where_it_cannot_run() {
        let why = flash_unavailable(DType::BF16, &Device::Cpu, 64).unwrap();
        if cfg!(feature = "flash-attn") {
            assert!(why.contains("CUDA"), "{why}");
        } else {
            assert!(why.contains("--flash-attn"), "{why}");
        }
    }
}
