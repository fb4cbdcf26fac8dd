//! `log softmax(logits)[target]` per row, the quantity every training loss here is built from
//! (SFT's NLL, GRPO's ratios and KL). The composed form (`log_softmax` then `gather`) writes
//! several (N, V) tensors forward and backward; over a 49k-token vocabulary those dominate a
//! CPU training step (mostly the kernel zeroing fresh pages for them). On the CPU in f32 this
//! op reads the logits once forward and writes one (N, V) gradient backward:
//! d/dx = g * (onehot(target) - softmax(x)). Elsewhere it is the composed form.

use super::exp;
use super::storage::{assume_written, written};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `logits`: (N, V); `targets`: (N,) u32. Returns (N,) in the logits' dtype (f32 on the CPU path).
pub fn token_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, TokenLogProbs);
    }
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    lp.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)
}

struct TokenLogProbs;

/// The rows of a contiguous f32 (N, V) tensor and its u32 targets.
fn rows_and_targets<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> Result<(&'a [f32], usize, &'a [u32])> {
    let (_, v) = l1.shape().dims2()?;
    let (CpuStorage::F32(x), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
        candle_core::bail!("token-log-probs: logits must be contiguous f32");
    };
    let (CpuStorage::U32(t), Some((c, d))) = (s2, l2.contiguous_offsets()) else {
        candle_core::bail!("token-log-probs: targets must be contiguous u32");
    };
    let (x, t) = (&x[a..b], &t[c..d]);
    if x.len() != t.len() * v {
        candle_core::bail!(
            "token-log-probs: {} targets for logits {:?}",
            t.len(),
            l1.shape()
        );
    }
    if let Some(&bad) = t.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("token-log-probs: target {bad} outside a vocabulary of {v}");
    }
    Ok((x, v, t))
}

/// log Z of one row of logits.
fn log_partition(row: &[f32]) -> f32 {
    let max = exp::max(row);
    max + exp::sum_exp(row, max).ln() as f32
}

impl CustomOp2 for TokenLogProbs {
    fn name(&self) -> &'static str {
        "token-log-probs"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, v, t) = rows_and_targets(s1, l1, s2, l2)?;
        let out: Vec<f32> = x
            .par_chunks(v)
            .zip(t.par_iter())
            .map(|(row, &t)| row[t as usize] - log_partition(row))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(t.len())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad =
            logits.apply_op3_no_bwd(targets, &Tensor::stack(&[grad_res, res], 1)?, &Gradient)?;
        Ok((Some(grad), None))
    }
}

/// g * (onehot(target) - softmax(x)), row by row, for (g, log p(target)) pairs: the forward's
/// result gives log Z = x[target] - log p(target) without another pass of exponentials.
struct Gradient;

impl CustomOp3 for Gradient {
    fn name(&self) -> &'static str {
        "token-log-probs-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, v, t) = rows_and_targets(s1, l1, s2, l2)?;
        let (CpuStorage::F32(g), Some((a, b))) = (s3, l3.contiguous_offsets()) else {
            candle_core::bail!("token-log-probs: the gradient must be contiguous f32");
        };
        let g = &g[a..b];
        if g.len() != 2 * t.len() {
            candle_core::bail!(
                "token-log-probs: {} gradient values for {} rows",
                g.len(),
                t.len()
            );
        }
        let fill = |out: &mut [std::mem::MaybeUninit<f32>]| {
            out.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(t.par_iter().zip(g.par_chunks(2)))
                .for_each(|((out, row), (&t, g_lp))| {
                    let (g, lp) = (g_lp[0], g_lp[1]);
                    let log_z = row[t as usize] - lp;
                    exp::exp_scaled(out, row, log_z, -g);
                    // SAFETY: exp_scaled wrote the whole row.
                    let out = unsafe { assume_written(out) };
                    out[t as usize] += g;
                });
            Ok(())
        };
        // SAFETY: x holds one row of v values per target (`rows_and_targets`), so the chunks of
        // out pair up with whole rows and each exp_scaled writes its chunk in full.
        let out = unsafe { written(x.len(), fill)? };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_log_softmax_and_gather_with_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 3.0, (5, 37), &dev).unwrap();
        let t = Tensor::new(&[0u32, 36, 7, 7, 20], &dev).unwrap();
        let ours = token_log_probs(x.as_tensor(), &t).unwrap();
        let lp = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
        let reference = lp
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(max_diff(&ours, &reference) < 1e-5);
        // Weigh rows differently so a wrong per-row gradient shows.
        let w = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0, 0.0], &dev).unwrap();
        let g_ours = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&reference * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(max_diff(g_ours.get(&x).unwrap(), g_ref.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn rejects_targets_outside_the_vocabulary() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[1u32, 4], &dev).unwrap();
        let err = token_log_probs(&x, &t).unwrap_err().to_string();
        assert!(err.contains("target 4 outside a vocabulary of 4"), "{err}");
    }
}
