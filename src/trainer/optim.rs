//! AdamW as PyTorch implements it (decoupled weight decay, bias-corrected moments), with no decay
//! on 1-D parameters (norm weights, biases) as transformers' Trainer does, gradient accumulation,
//! global-norm clipping, learning-rate schedules, and state that saves and loads for resume.
//! candle's own AdamW has no parameter groups, no clipping and no state access.

use crate::config::Schedule;
use crate::model::weights::{WeightSource, save_safetensors};
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
            self.m[i] = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            self.v[i] = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&self.m[i] / bc1)? / ((&self.v[i] / bc2)?.sqrt()? + p.eps)?)?;
            let w = match &self.master[i] {
                Some(m) => m.clone(),
                None => var.as_tensor().clone(),
            };
            let decay = if var.rank() >= 2 { p.weight_decay } else { 0.0 };
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
