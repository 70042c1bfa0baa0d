//! Adam whose state can be saved and restored, so that `--resume` continues exactly.
//!
//! Candle's `AdamW` keeps its moments private. This one follows `torch.optim.Adam`
//! (single-tensor path) operation for operation:
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
//! `p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, with an optional
//! L2 `weight_decay` added to the gradient as PyTorch's Adam does.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

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
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
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
            let exp_avg = var.zeros_like()?;
            let exp_avg_sq = var.zeros_like()?;
            slots.insert(
                name,
                Slot {
                    var,
                    exp_avg,
                    exp_avg_sq,
                },
            );
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
            let grad = if weight_decay != 0.0 {
                (grad + slot.var.as_tensor().detach().affine(weight_decay, 0.0)?)?
            } else {
                grad
            };
            slot.exp_avg = ((&slot.exp_avg * beta1)? + (&grad * (1.0 - beta1))?)?;
            slot.exp_avg_sq = ((&slot.exp_avg_sq * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            let denom = ((slot.exp_avg_sq.sqrt()? / bias_correction2_sqrt)? + eps)?;
            let update = ((&slot.exp_avg / denom)? * step_size)?;
            slot.var.set(&(slot.var.as_tensor() - update)?)?;
        }
        Ok(())
    }

    /// Backward pass and update in one call.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// The moments as named tensors (`{prefix}.exp_avg.{param}`, `{prefix}.exp_avg_sq.{param}`)
    /// and the step count, for a checkpoint.
    pub fn state(&self, prefix: &str) -> (HashMap<String, Tensor>, u64) {
        let mut tensors = HashMap::new();
        for (name, slot) in &self.slots {
            tensors.insert(format!("{prefix}.exp_avg.{name}"), slot.exp_avg.clone());
            tensors.insert(
                format!("{prefix}.exp_avg_sq.{name}"),
                slot.exp_avg_sq.clone(),
            );
        }
        (tensors, self.step)
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
            for (kind, target) in [
                ("exp_avg", &mut slot.exp_avg),
                ("exp_avg_sq", &mut slot.exp_avg_sq),
            ] {
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
                *target = found
                    .to_dtype(slot.var.dtype())?
                    .to_device(slot.var.device())?;
            }
        }
        self.step = step;
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
        let (state, _) = opt.state("o");
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
                    let (state, step) = opt.state("opt");
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
