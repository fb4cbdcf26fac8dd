//! AdamW as PyTorch implements it (decoupled weight decay, bias-corrected moments), with no decay
//! on 1-D parameters (norm weights, biases) as transformers' Trainer does, gradient accumulation,
//! global-norm clipping, learning-rate schedules, and state that saves and loads for resume.
//! candle's own AdamW has no parameter groups, no clipping and no state access.

use crate::config::{OptimizerSettings, Schedule};
use crate::model::io::safetensors::{WeightSource, save_safetensors};
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl From<&OptimizerSettings> for AdamWParams {
    fn from(o: &OptimizerSettings) -> Self {
        Self {
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        }
    }
}

pub struct AdamW {
    params: AdamWParams,
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// f32 master copies of variables stored in a narrower type (bf16): updates of lr ~ 1e-6
    /// are far below bf16's resolution and would round away without them.
    master: Vec<Option<Tensor>>,
    pub step: usize,
}

fn zeros_like(vars: &[(String, Var)]) -> Result<Vec<Tensor>> {
    Ok(vars
        .iter()
        .map(|(_, v)| Tensor::zeros(v.shape(), DType::F32, v.device()))
        .collect::<candle_core::Result<_>>()?)
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let master = vars
            .iter()
            .map(|(_, v)| {
                (v.dtype() != DType::F32)
                    .then(|| v.as_tensor().to_dtype(DType::F32))
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            params,
            m: zeros_like(&vars)?,
            v: zeros_like(&vars)?,
            vars,
            master,
            step: 0,
        })
    }

    /// Forgets the moments (EDCO resets them every round); master weights are kept.
    pub fn reset(&mut self) -> Result<()> {
        self.m = zeros_like(&self.vars)?;
        self.v = zeros_like(&self.vars)?;
        self.step = 0;
        Ok(())
    }

    /// One update with `lr` from accumulated gradients (f32, one per variable, in order).
    pub fn apply(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let (bc1, bc2) = (
            1.0 - p.beta1.powi(self.step as i32),
            1.0 - p.beta2.powi(self.step as i32),
        );
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let g = &grads[i];
            let decay = if var.rank() >= 2 { p.weight_decay } else { 0.0 };
            if in_place::applies(var, g, &self.m[i], &self.v[i], self.master[i].is_some()) {
                let step = in_place::Step {
                    params: p,
                    lr,
                    decay,
                    bc1,
                    bc2,
                };
                step.apply(var.as_tensor(), g, &self.m[i], &self.v[i])?;
                continue;
            }
            self.m[i] = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            self.v[i] = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&self.m[i] / bc1)? / ((&self.v[i] / bc2)?.sqrt()? + p.eps)?)?;
            let w = match &self.master[i] {
                Some(m) => m.clone(),
                None => var.as_tensor().clone(),
            };
            let new = ((w * (1.0 - lr * decay))? - (update * lr)?)?;
            var.set(&new.to_dtype(var.dtype())?)?;
            if let Some(m) = self.master[i].as_mut() {
                *m = new;
            }
        }
        Ok(())
    }

    /// Writes the moments, the master weights and the step count (`optimizer.safetensors`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::with_capacity(self.vars.len() * 3 + 1);
        for (i, (name, _)) in self.vars.iter().enumerate() {
            tensors.push((format!("m.{name}"), self.m[i].clone()));
            tensors.push((format!("v.{name}"), self.v[i].clone()));
            if let Some(w) = &self.master[i] {
                tensors.push((format!("w.{name}"), w.clone()));
            }
        }
        let device = self
            .m
            .first()
            .map(|t| t.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        tensors.push(("step".into(), Tensor::new(&[self.step as i64], &device)?));
        save_safetensors(&tensors, path)
    }

    pub fn load(&mut self, path: &Path) -> Result<()> {
        let src = WeightSource::from_files(vec![path.to_path_buf()])?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let device = var.device();
            self.m[i] = src.get(&format!("m.{name}"), var.dims(), DType::F32, device)?;
            self.v[i] = src.get(&format!("v.{name}"), var.dims(), DType::F32, device)?;
            if self.master[i].is_some() {
                self.master[i] =
                    Some(src.get(&format!("w.{name}"), var.dims(), DType::F32, device)?);
            }
        }
        let step = src.get("step", &[1], DType::I64, &candle_core::Device::Cpu)?;
        self.step = step
            .to_vec1::<i64>()?
            .first()
            .copied()
            .context("empty step")? as usize;
        Ok(())
    }
}

/// The update of [`AdamW::apply`] for contiguous f32 CPU tensors, in place: one pass over each
/// moment and one over the weight, where the composed ops make about fourteen passes and as many
/// fresh tensors. The arithmetic is the composed ops' own, in the same order and precision, so
/// both paths give the same bits (tested below).
mod in_place {
    use super::AdamWParams;
    use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
    use rayon::prelude::*;

    /// Values per task.
    const CHUNK: usize = 1 << 14;

    /// Whether the in-place update takes this variable: f32 on the CPU, weight and moments
    /// contiguous, no master copy.
    pub fn applies(var: &Var, g: &Tensor, m: &Tensor, v: &Tensor, master: bool) -> bool {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
        !master
            && [var.as_tensor(), m, v]
                .iter()
                .all(|t| cpu_f32(t) && t.is_contiguous())
            && cpu_f32(g)
            && g.shape() == var.shape()
    }

    fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
        crate::model::kernels::storage::cpu_f32(s, l, "adamw", what)
    }

    fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(d), Some((a, b))) => Ok(&mut d[a..b]),
            _ => candle_core::bail!("adamw: {what} must be contiguous f32"),
        }
    }

    /// A moment, in place: m = m * beta + g * (1 - beta), or with g * g for the second.
    struct Moment {
        beta: f32,
        one_minus: f32,
        square: bool,
    }

    impl InplaceOp2 for Moment {
        fn name(&self) -> &'static str {
            "adamw-moment"
        }

        fn cpu_fwd(
            &self,
            ms: &mut CpuStorage,
            ml: &Layout,
            gs: &CpuStorage,
            gl: &Layout,
        ) -> Result<()> {
            let g = slice(gs, gl, "the gradient")?;
            let m = slice_mut(ms, ml, "a moment")?;
            if m.len() != g.len() {
                candle_core::bail!("adamw: {} gradient values for {}", g.len(), m.len());
            }
            let (beta, one_minus, square) = (self.beta, self.one_minus, self.square);
            m.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(m, g)| {
                    for (m, &g) in m.iter_mut().zip(g) {
                        let g = if square { g * g } else { g };
                        *m = *m * beta + g * one_minus;
                    }
                });
            Ok(())
        }
    }

    /// One step's constants.
    pub struct Step {
        pub params: AdamWParams,
        pub lr: f64,
        pub decay: f64,
        pub bc1: f64,
        pub bc2: f64,
    }

    /// The weight, in place, from the updated moments:
    /// w = w * (1 - lr decay) - lr * (m / bc1) / (sqrt(v / bc2) + eps).
    #[derive(Clone, Copy)]
    struct Weight {
        keep: f32,
        lr: f32,
        inv_bc1: f32,
        inv_bc2: f32,
        eps: f32,
    }

    impl InplaceOp3 for Weight {
        fn name(&self) -> &'static str {
            "adamw-weight"
        }

        fn cpu_fwd(
            &self,
            ws: &mut CpuStorage,
            wl: &Layout,
            ms: &CpuStorage,
            ml: &Layout,
            vs: &CpuStorage,
            vl: &Layout,
        ) -> Result<()> {
            let m = slice(ms, ml, "the first moment")?;
            let v = slice(vs, vl, "the second moment")?;
            let w = slice_mut(ws, wl, "the weight")?;
            if m.len() != w.len() || v.len() != w.len() {
                candle_core::bail!(
                    "adamw: moments of {} and {} for {}",
                    m.len(),
                    v.len(),
                    w.len()
                );
            }
            let Weight {
                keep,
                lr,
                inv_bc1,
                inv_bc2,
                eps,
            } = *self;
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
                .for_each(|(w, (m, v))| {
                    for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                        let update = (m * inv_bc1) / ((v * inv_bc2).sqrt() + eps);
                        *w = *w * keep - update * lr;
                    }
                });
            Ok(())
        }
    }

    impl Step {
        pub fn apply(&self, w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
            let p = self.params;
            let g = &g.contiguous()?;
            // As candle's `x * c` and `x / c` do: the constant rounded to f32 (the reciprocal for
            // a division), one multiply per value.
            m.inplace_op2(
                g,
                &Moment {
                    beta: p.beta1 as f32,
                    one_minus: (1.0 - p.beta1) as f32,
                    square: false,
                },
            )?;
            v.inplace_op2(
                g,
                &Moment {
                    beta: p.beta2 as f32,
                    one_minus: (1.0 - p.beta2) as f32,
                    square: true,
                },
            )?;
            w.inplace_op3(
                m,
                v,
                &Weight {
                    keep: (1.0 - self.lr * self.decay) as f32,
                    lr: self.lr as f32,
                    inv_bc1: (1.0 / self.bc1) as f32,
                    inv_bc2: (1.0 / self.bc2) as f32,
                    eps: p.eps as f32,
                },
            )
        }
    }
}

/// Sums micro-batch gradients per variable (f32), for accumulation.
pub struct GradAccumulator {
    pub grads: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(n: usize) -> Self {
        Self {
            grads: vec![None; n],
        }
    }

    pub fn add(&mut self, vars: &[(String, Var)], store: &GradStore) -> Result<()> {
        for (i, (_, var)) in vars.iter().enumerate() {
            if let Some(g) = store.get(var.as_tensor()) {
                let g = g.to_dtype(DType::F32)?;
                self.grads[i] = Some(match self.grads[i].take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The accumulated gradients (zeros where a variable got none), clipped to `max_norm`
    /// (0 disables), and the global norm before clipping.
    pub fn finish(self, vars: &[(String, Var)], max_norm: f64) -> Result<(Vec<Tensor>, f64)> {
        let grads: Vec<Tensor> = self
            .grads
            .into_iter()
            .zip(vars)
            .map(|(g, (_, v))| match g {
                Some(g) => Ok(g),
                None => Tensor::zeros(v.shape(), DType::F32, v.device()),
            })
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0f64;
        for g in &grads {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let norm = sq.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            let clipped = grads
                .iter()
                .map(|g| g * scale)
                .collect::<candle_core::Result<_>>()?;
            return Ok((clipped, norm));
        }
        Ok((grads, norm))
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`: linear warmup (step k of W
/// uses lr (k + 1) / W, so no step is wasted at 0), then
/// constant, linear or cosine decay from `lr` to `min_lr`.
pub fn learning_rate(
    schedule: Schedule,
    lr: f64,
    min_lr: f64,
    warmup: usize,
    step: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    match schedule {
        Schedule::Constant => lr,
        Schedule::Linear => lr + (min_lr - lr) * progress,
        Schedule::Cosine => {
            min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_pytorch_on_one_parameter() {
        // torch.optim.AdamW semantics (lr 0.1, betas (0.9, 0.95), weight decay 0.1), two steps
        // with a constant gradient g = [[0.5, -1], [2, 0]].
        let w = Var::new(&[[1f32, -2.0], [3.0, 0.5]], &Device::Cpu).unwrap();
        let g = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.0]], &Device::Cpu).unwrap();
        let params = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], params).unwrap();
        opt.apply(std::slice::from_ref(&g), 0.1).unwrap();
        opt.apply(std::slice::from_ref(&g), 0.1).unwrap();
        let got: Vec<Vec<f32>> = w.as_tensor().to_vec2().unwrap();
        // Hand derivation: a constant gradient gives update sign(g) each step (m_hat/sqrt(v_hat)
        // = g/|g|), and decay multiplies by (1 - 0.01) each step.
        let expect = |w0: f32, s: f32| ((w0 * 0.99) - 0.1 * s) * 0.99 - 0.1 * s;
        let want = [
            [expect(1.0, 1.0), expect(-2.0, -1.0)],
            [expect(3.0, 1.0), 0.5 * 0.99 * 0.99],
        ];
        for (r, wr) in got.iter().zip(want) {
            for (a, b) in r.iter().zip(wr) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn in_place_update_gives_the_composed_ops_bits() {
        // The same three steps through the in-place path and through the composed ops (forced by
        // a non-contiguous moment); a 2-D weight (decayed) and a 1-D one (not).
        let dev = Device::Cpu;
        let params = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        // Values in [-0.5, 0.5) that differ with `salt`.
        let values = |n: usize, salt: u64| -> Vec<f32> {
            (0..n as u64)
                .map(|i| ((i * 2_654_435_761 + salt * 97) % 1000) as f32 * 1e-3 - 0.5)
                .collect()
        };
        let run = |composed: bool| -> Vec<f32> {
            let w2 = Var::from_vec(values(120_000, 1), (40, 3000), &dev).unwrap();
            let w1 = Var::from_vec(values(70, 2), 70, &dev).unwrap();
            let vars = vec![
                ("w2".to_string(), w2.clone()),
                ("w1".to_string(), w1.clone()),
            ];
            let mut opt = AdamW::new(vars, params).unwrap();
            if composed {
                // A transposed view: the in-place path refuses it, the composed ops take it.
                opt.m[0] = Tensor::zeros((3000, 40), DType::F32, &dev)
                    .unwrap()
                    .t()
                    .unwrap();
                let every_other = Tensor::zeros((70, 2), DType::F32, &dev).unwrap();
                opt.m[1] = every_other.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
                assert!(!opt.m[0].is_contiguous() && !opt.m[1].is_contiguous());
            }
            let moments: Vec<_> = opt.m.iter().map(|m| m.id()).collect();
            for step in 0..3u64 {
                let g2 = Tensor::from_vec(values(120_000, 10 + step), (40, 3000), &dev).unwrap();
                let g1 = Tensor::from_vec(values(70, 20 + step), 70, &dev).unwrap();
                opt.apply(&[g2, g1], 1e-3 * (step + 1) as f64).unwrap();
            }
            // The in-place path keeps the moment tensors; the composed ops replace them.
            let kept = opt.m.iter().zip(&moments).all(|(m, &id)| m.id() == id);
            assert_eq!(kept, !composed, "composed: {composed}");
            [w2, w1]
                .iter()
                .flat_map(|w| {
                    w.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect()
        };
        let (fused, composed) = (run(false), run(true));
        let first_diff = fused
            .iter()
            .zip(&composed)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(first_diff, None, "the paths differ");
        // The weights moved.
        assert_ne!(&fused[..70], &values(120_000, 1)[..70]);
    }

    #[test]
    fn bf16_weights_accumulate_updates_below_their_resolution() {
        // 1.0 in bf16 has a resolution of 2^-7; 100 updates of 1e-4 must still move it by ~0.01.
        let w = Var::from_tensor(&Tensor::ones(4, DType::BF16, &Device::Cpu).unwrap()).unwrap();
        let params = AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], params).unwrap();
        let g = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        for _ in 0..100 {
            opt.apply(std::slice::from_ref(&g), 1e-4).unwrap();
        }
        let v: Vec<f32> = w
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((v[0] - 0.99).abs() < 2e-3, "{v:?}");
    }

    #[test]
    fn schedules_warm_up_and_decay_to_the_floor() {
        use Schedule::*;
        assert!((learning_rate(Cosine, 1.0, 0.1, 2, 0, 12) - 0.5).abs() < 1e-12);
        assert!((learning_rate(Cosine, 1.0, 0.1, 2, 2, 12) - 1.0).abs() < 1e-12);
        assert!((learning_rate(Cosine, 1.0, 0.1, 2, 7, 12) - 0.55).abs() < 1e-12);
        assert!((learning_rate(Cosine, 1.0, 0.1, 2, 12, 12) - 0.1).abs() < 1e-12);
        assert!((learning_rate(Linear, 1.0, 0.0, 0, 5, 10) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(Constant, 0.3, 0.0, 0, 9, 10), 0.3);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_state_round_trips() {
        let a = Var::new(&[3f32, 0.0], &Device::Cpu).unwrap();
        let b = Var::new(&[[0f32, 4.0]], &Device::Cpu).unwrap();
        let vars = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let mut acc = GradAccumulator::new(2);
        acc.grads = vec![
            Some(Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap()),
            Some(Tensor::new(&[[0f32, 4.0]], &Device::Cpu).unwrap()),
        ];
        let (g, norm) = acc.finish(&vars, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let total: f32 = g
            .iter()
            .map(|t| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum();
        assert!((total.sqrt() - 1.0).abs() < 1e-4);

        let params = AdamWParams {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(vars.clone(), params).unwrap();
        opt.apply(&g, 0.01).unwrap();
        let dir = tempfile::tempdir().unwrap();
        opt.save(&dir.path().join("opt.safetensors")).unwrap();
        let mut back = AdamW::new(vars, params).unwrap();
        back.load(&dir.path().join("opt.safetensors")).unwrap();
        assert_eq!(back.step, 1);
        let m0: Vec<f32> = opt.m[0].to_vec1().unwrap();
        assert_eq!(back.m[0].to_vec1::<f32>().unwrap(), m0);
    }
}
