//! Adam whose state can be saved and restored, so that `--resume` continues exactly.
//!
//! Candle's `AdamW` keeps its moments private. This one follows `torch.optim.Adam`
//! (single-tensor path) operation for operation:
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, with an optional
//! L2 `weight_decay` added to the gradient as PyTorch's Adam does.
//!
//! On the CPU in f32 the update runs in place as two passes per parameter (the moments, then
//! the parameter) without allocating: Candle's ops would take about fourteen passes, each
//! allocating its result.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::{
    backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var,
};
use candle_nn::VarMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::kernels::simd;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

struct Slot {
    var: Var,
    /// `(2, n)`: the first moment `m` in row 0, the second `v` in row 1, each flat.
    moments: Tensor,
}

impl Slot {
    fn new(var: Var) -> Result<Self> {
        let moments = Tensor::zeros((2, var.elem_count()), var.dtype(), var.device())?;
        Ok(Self { var, moments })
    }

    /// Row `i` of the moments in the parameter's shape (a view).
    fn moment(&self, i: usize) -> Result<Tensor> {
        Ok(self.moments.get(i)?.reshape(self.var.shape())?)
    }

    fn fused(&self, grad: &Tensor) -> bool {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        cpu_f32(self.var.as_tensor())
            && cpu_f32(grad)
            && self.var.as_tensor().is_contiguous()
            && self.moments.is_contiguous()
    }
}

pub struct Adam {
    cfg: AdamConfig,
    step: u64,
    slots: BTreeMap<String, Slot>,
}

impl Adam {
    /// An optimiser over every variable of `varmap`, moments at zero.
    pub fn new(varmap: &VarMap, cfg: AdamConfig) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let named: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        Self::from_named_vars(named, cfg)
    }

    /// An optimiser over the given named variables (e.g. only a generator's).
    pub fn from_named_vars(vars: Vec<(String, Var)>, cfg: AdamConfig) -> Result<Self> {
        let mut slots = BTreeMap::new();
        for (name, var) in vars {
            slots.insert(name, Slot::new(var)?);
        }
        Ok(Self {
            cfg,
            step: 0,
            slots,
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// Zeroes the moments and the step count: a fresh optimiser over the same variables (the
    /// Progressive GAN restarts Adam at each new resolution).
    pub fn reset(&mut self) -> Result<()> {
        for slot in self.slots.values_mut() {
            slot.moments = slot.moments.zeros_like()?;
        }
        self.step = 0;
        Ok(())
    }

    /// Changes the learning rate for the following steps (a schedule).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// One update from the gradients in `grads`. Variables without a gradient are left alone,
    /// as PyTorch leaves parameters whose `.grad` is None.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let t = self.step as i32;
        let step_size = lr / (1.0 - beta1.powi(t));
        let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for slot in self.slots.values_mut() {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Candle leaves a variable's gradient attached to the forward graph (only other
            // nodes' gradients are detached). Moments built from it would keep every step's
            // graph alive through the chain m_t -> m_{t-1} -> ...: a leak of one graph per step.
            let grad = grad.detach();
            if slot.fused(&grad) {
                let grad = grad.contiguous()?;
                let moments = MomentsUpdate {
                    beta1: beta1 as f32,
                    beta2: beta2 as f32,
                    weight_decay: weight_decay as f32,
                };
                slot.moments
                    .inplace_op3(&grad, slot.var.as_tensor(), &moments)?;
                let update = ParameterUpdate {
                    step_size: step_size as f32,
                    bias_correction2_sqrt: bias_correction2_sqrt as f32,
                    eps: eps as f32,
                };
                slot.var.as_tensor().inplace_op2(&slot.moments, &update)?;
                continue;
            }
            let grad = if weight_decay != 0.0 {
                (grad + slot.var.as_tensor().detach().affine(weight_decay, 0.0)?)?
            } else {
                grad
            };
            let exp_avg = ((slot.moment(0)? * beta1)? + (&grad * (1.0 - beta1))?)?;
            let exp_avg_sq = ((slot.moment(1)? * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let denom = ((exp_avg_sq.sqrt()? / bias_correction2_sqrt)? + eps)?;
            let update = ((&exp_avg / denom)? * step_size)?;
            slot.var.set(&(slot.var.as_tensor() - update)?)?;
            slot.moments = Tensor::stack(&[exp_avg.flatten_all()?, exp_avg_sq.flatten_all()?], 0)?;
        }
        Ok(())
    }

    /// Moves this optimiser's variables' gradients out of `grads` into `sum`, detached (so that
    /// the graph they were computed from can go) and added to what `sum` already holds.
    pub fn accumulate(&self, grads: &mut GradStore, sum: &mut GradStore) -> Result<()> {
        for slot in self.slots.values() {
            let var = slot.var.as_tensor();
            let Some(grad) = grads.remove(var) else {
                continue;
            };
            let total = match sum.remove(var) {
                Some(before) => (before + grad.detach())?,
                None => grad.detach(),
            };
            sum.insert(var, total);
        }
        Ok(())
    }

    /// Backward pass and update in one call; the pass computes only what this optimiser's
    /// variables need ([`crate::backprop::backward_for`]).
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = self.backward(loss)?;
        self.step(&grads)
    }

    /// `loss.backward()` for this optimiser's variables.
    pub fn backward(&self, loss: &Tensor) -> candle_core::Result<GradStore> {
        crate::backprop::backward_for(loss, self.vars())
    }

    /// The variables this optimiser steps.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.values().map(|slot| &slot.var)
    }

    /// The moments as named tensors (`{prefix}.exp_avg.{param}`, `{prefix}.exp_avg_sq.{param}`)
    /// and the step count, for a checkpoint.
    pub fn state(&self, prefix: &str) -> Result<(HashMap<String, Tensor>, u64)> {
        let mut tensors = HashMap::new();
        for (name, slot) in &self.slots {
            // Copies: the moments change in place at the next step.
            for (i, kind) in ["exp_avg", "exp_avg_sq"].into_iter().enumerate() {
                tensors.insert(format!("{prefix}.{kind}.{name}"), slot.moment(i)?.copy()?);
            }
        }
        Ok((tensors, self.step))
    }

    /// Restores the moments saved by [`Adam::state`]. Every parameter must have both moments
    /// with its own shape.
    pub fn load_state(
        &mut self,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        for (name, slot) in self.slots.iter_mut() {
            let mut moments = Vec::with_capacity(2);
            for kind in ["exp_avg", "exp_avg_sq"] {
                let key = format!("{prefix}.{kind}.{name}");
                let found = tensors
                    .get(&key)
                    .with_context(|| format!("optimizer state `{key}` is missing"))?;
                if found.shape() != slot.var.shape() {
                    bail!(
                        "optimizer state `{key}`: expected shape {:?}, found {:?}",
                        slot.var.shape().dims(),
                        found.shape().dims()
                    );
                }
                moments.push(
                    found
                        .to_dtype(slot.var.dtype())?
                        .to_device(slot.var.device())?
                        .flatten_all()?,
                );
            }
            slot.moments = Tensor::stack(&moments, 0)?;
        }
        self.step = step;
        Ok(())
    }
}

/// `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2` in place on the `(2, n)` moments, with
/// `g` the gradient plus `weight_decay` times the parameter.
/// Elements per parallel task of the in-place updates.
const CHUNK: usize = 1 << 15;

struct MomentsUpdate {
    beta1: f32,
    beta2: f32,
    weight_decay: f32,
}

/// `p -= step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps)` in place on the parameter.
struct ParameterUpdate {
    step_size: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
}

fn slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    crate::kernels::ops::cpu_slice::<f32>(storage, layout, what)
}

fn slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
    match storage {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("{what} must be f32"),
    }
}

impl InplaceOp3 for MomentsUpdate {
    fn name(&self) -> &'static str {
        "adam-moments"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        grad: &CpuStorage,
        grad_l: &Layout,
        param: &CpuStorage,
        param_l: &Layout,
    ) -> candle_core::Result<()> {
        let g = slice(grad, grad_l, "adam gradient")?;
        let p = slice(param, param_l, "adam parameter")?;
        let moments = slice_mut(dst, dst_l, "adam moments")?;
        let (m, v) = moments.split_at_mut(g.len());
        let consts = [self.beta1, self.beta2, self.weight_decay];
        m.par_chunks_mut(CHUNK)
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
            .for_each(|((m, v), (g, p))| simd::adam_moments(m, v, g, p, consts));
        Ok(())
    }
}

impl InplaceOp2 for ParameterUpdate {
    fn name(&self) -> &'static str {
        "adam-parameter"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        moments: &CpuStorage,
        moments_l: &Layout,
    ) -> candle_core::Result<()> {
        let p = slice_mut(dst, dst_l, "adam parameter")?;
        let (m, v) = slice(moments, moments_l, "adam moments")?.split_at(p.len());
        let consts = [self.step_size, self.bias_correction2_sqrt, self.eps];
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| simd::adam_parameter(p, m, v, consts));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Adam minimises a quadratic, and matches a hand-computed first step.
    #[test]
    fn first_step_moves_each_weight_by_lr_and_converges() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[3.0f32, -2.0], &dev)?;
        let mut opt = Adam::from_named_vars(
            vec![("w".into(), w.clone())],
            AdamConfig {
                lr: 0.1,
                ..Default::default()
            },
        )?;
        opt.backward_step(&w.as_tensor().sqr()?.sum_all()?)?;
        // With bias correction the first step is lr * sign(g) (up to eps).
        let v = w.as_tensor().to_vec1::<f32>()?;
        assert!(
            (v[0] - 2.9).abs() < 1e-6 && (v[1] + 1.9).abs() < 1e-6,
            "{v:?}"
        );
        for _ in 0..500 {
            opt.backward_step(&w.as_tensor().sqr()?.sum_all()?)?;
        }
        let v = w.as_tensor().to_vec1::<f32>()?;
        assert!(v.iter().all(|x| x.abs() < 0.05), "{v:?}");
        Ok(())
    }

    /// The fused f32 CPU update equals the op-by-op path (taken in f64) over several steps,
    /// weight decay and a 2-D parameter included, moments too.
    #[test]
    fn fused_update_equals_the_op_by_op_update() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::Rng::new(4);
        let init = rng.normal((3, 5), &dev)?;
        let target = rng.normal((3, 5), &dev)?;
        let cfg = AdamConfig {
            lr: 0.05,
            weight_decay: 0.01,
            // Large enough that eps's place in the denominator shows in the weights.
            eps: 1e-2,
            ..Default::default()
        };
        let run = |dtype: DType| -> Result<(Vec<f32>, Vec<f32>)> {
            let w = Var::from_tensor(&init.to_dtype(dtype)?)?;
            let target = target.to_dtype(dtype)?;
            let mut opt = Adam::from_named_vars(vec![("w".into(), w.clone())], cfg)?;
            for _ in 0..7 {
                let loss = (w.as_tensor() - &target)?.sqr()?.sum_all()?;
                opt.backward_step(&(w.as_tensor().powf(3.0)?.sum_all()? * 0.1 + loss)?)?;
            }
            let flat = |t: &Tensor| -> Result<Vec<f32>> {
                Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
            };
            let (state, _) = opt.state("o")?;
            let mut moments = flat(&state["o.exp_avg.w"])?;
            moments.extend(flat(&state["o.exp_avg_sq.w"])?);
            Ok((flat(w.as_tensor())?, moments))
        };
        let (fused, fused_moments) = run(DType::F32)?;
        let (reference, reference_moments) = run(DType::F64)?;
        for (a, b) in fused
            .iter()
            .zip(&reference)
            .chain(fused_moments.iter().zip(&reference_moments))
        {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        assert_ne!(fused, init.flatten_all()?.to_vec1::<f32>()?);
        // The f32 run above took the fused path (else it compared the op-by-op update with
        // itself), the f64 one the op-by-op path.
        let slot = |dtype: DType| Slot::new(Var::from_tensor(&init.to_dtype(dtype)?)?);
        assert!(slot(DType::F32)?.fused(&init));
        assert!(!slot(DType::F64)?.fused(&init.to_dtype(DType::F64)?));
        assert!(!slot(DType::F32)?.fused(&init.to_dtype(DType::F64)?));
        Ok(())
    }

    /// Gradients accumulated over parts, each part's backward pass apart, are the gradient of
    /// the sum, detached; a variable of another optimiser is left where it was.
    #[test]
    fn accumulated_parts_are_the_gradient_of_the_sum() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[3.0f32, -2.0], &dev)?;
        let other = Var::new(&[1.0f32], &dev)?;
        let opt = Adam::from_named_vars(vec![("w".into(), w.clone())], AdamConfig::default())?;
        let first = || -> candle_core::Result<Tensor> {
            (w.as_tensor().sqr()?.sum_all()? * other.as_tensor().sum_all()?)?.exp()
        };
        let second = || -> candle_core::Result<Tensor> { (w.as_tensor() * 3.0)?.sin()?.sum_all() };
        let mut sum = GradStore::default();
        let mut grads = first()?.backward()?;
        opt.accumulate(&mut grads, &mut sum)?;
        assert!(
            grads.get(other.as_tensor()).is_some(),
            "not this optimiser's"
        );
        assert!(grads.get(w.as_tensor()).is_none());
        opt.accumulate(&mut second()?.backward()?, &mut sum)?;
        let whole = (first()? + second()?)?.backward()?;
        let (parts, whole) = (
            &sum.get(w.as_tensor()).unwrap(),
            whole.get(w.as_tensor()).unwrap(),
        );
        assert!(!parts.track_op(), "an accumulated gradient keeps its graph");
        let (p, q) = (parts.to_vec1::<f32>()?, whole.to_vec1::<f32>()?);
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{p:?} vs {q:?}");
        }
        Ok(())
    }

    /// A schedule's `set_lr` takes effect at the next step, and `reset` starts Adam afresh: the
    /// step after it moves each weight by exactly the learning rate again, as a first step does.
    #[test]
    fn set_lr_and_reset_act_on_the_next_step() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[3.0f32, -2.0], &dev)?;
        let mut opt = Adam::from_named_vars(
            vec![("w".into(), w.clone())],
            AdamConfig {
                lr: 0.1,
                ..Default::default()
            },
        )?;
        let quadratic = |w: &Var| w.as_tensor().sqr()?.sum_all();
        for _ in 0..5 {
            opt.backward_step(&quadratic(&w)?)?;
        }
        opt.set_lr(0.01);
        assert_eq!(opt.config().lr, 0.01);
        opt.reset()?;
        let before = w.as_tensor().to_vec1::<f32>()?;
        opt.backward_step(&quadratic(&w)?)?;
        let after = w.as_tensor().to_vec1::<f32>()?;
        for (b, a) in before.iter().zip(&after) {
            // Both weights are still positive / negative: each moves 0.01 towards zero.
            assert!(
                ((b - a).abs() - 0.01).abs() < 1e-6,
                "{before:?} -> {after:?}"
            );
        }
        let (state, step) = opt.state("o")?;
        assert_eq!(step, 1);
        assert!(state.values().all(|t| t.dims() == [2]));
        Ok(())
    }

    /// The moments must not hold on to the step's graph: a variable's gradient from Candle is
    /// still attached to it (here `y = w * x` with `x` itself computed from a variable).
    #[test]
    fn moments_are_detached_from_the_graph() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, 2.0], &dev)?;
        let u = Var::new(&[3.0f32, 4.0], &dev)?;
        let x = u.as_tensor().exp()?;
        let grads = (w.as_tensor() * &x)?.sum_all()?.backward()?;
        assert!(
            grads.get(&w).unwrap().track_op(),
            "Candle's gradient is attached: the premise"
        );
        let mut opt = Adam::from_named_vars(vec![("w".into(), w.clone())], AdamConfig::default())?;
        opt.step(&grads)?;
        let (state, _) = opt.state("o")?;
        assert!(
            state.values().all(|t| !t.track_op()),
            "a moment keeps the graph alive"
        );
        Ok(())
    }

    #[test]
    fn saved_state_resumes_identically() -> Result<()> {
        let dev = Device::Cpu;
        let run = |split: Option<usize>| -> Result<Vec<f32>> {
            let w = Var::new(&[1.0f32, 2.0, -3.0], &dev)?;
            let cfg = AdamConfig::default();
            let mut opt = Adam::from_named_vars(vec![("w".into(), w.clone())], cfg)?;
            for i in 0..20 {
                if Some(i) == split {
                    let (state, step) = opt.state("opt")?;
                    let w2 = Var::from_tensor(&w.as_tensor().copy()?)?;
                    let mut fresh = Adam::from_named_vars(vec![("w".into(), w2.clone())], cfg)?;
                    fresh.load_state("opt", &state, step)?;
                    opt = fresh;
                    let loss = (w2.as_tensor().sqr()?.sum_all()? * 0.5)?;
                    opt.backward_step(&loss)?;
                    return finish(&mut opt, &w2, i + 1);
                }
                opt.backward_step(&(w.as_tensor().sqr()?.sum_all()? * 0.5)?)?;
            }
            Ok(w.as_tensor().to_vec1()?)
        };
        fn finish(opt: &mut Adam, w: &Var, from: usize) -> Result<Vec<f32>> {
            for _ in from..20 {
                opt.backward_step(&(w.as_tensor().sqr()?.sum_all()? * 0.5)?)?;
            }
            Ok(w.as_tensor().to_vec1()?)
        }
        assert_eq!(run(None)?, run(Some(7))?);
        Ok(())
    }

    #[test]
    fn load_state_rejects_missing_and_misshapen_moments() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::zeros((2, 3), DType::F32, &dev)?;
        let mut opt = Adam::from_named_vars(vec![("fc.weight".into(), w)], AdamConfig::default())?;
        let e = opt
            .load_state("o", &HashMap::new(), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`o.exp_avg.fc.weight` is missing"), "{e}");
        let mut bad = HashMap::new();
        bad.insert(
            "o.exp_avg.fc.weight".to_string(),
            Tensor::zeros(3, DType::F32, &dev)?,
        );
        let e = opt.load_state("o", &bad, 1).unwrap_err().to_string();
        assert!(e.contains("expected shape [2, 3], found [3]"), "{e}");
        Ok(())
    }
}
