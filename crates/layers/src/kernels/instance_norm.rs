//! Instance normalisation (Ulyanov et al. 2016) with the semantics of PyTorch's
//! `nn.InstanceNorm1d/2d/3d(channels, eps=1e-5, momentum=0.1, affine, track_running_stats)`,
//! the normalisation of CycleGAN's and StarGAN's generators, as one fused CPU op.
//!
//! Each (sample, channel) plane of `h * w` values is normalised by its own mean and biased
//! variance, then scaled and shifted by an optional per-channel `weight` and `bias`. With
//! `track_running_stats`, PyTorch runs batch norm over the `(1, b * c, h, w)` view and averages
//! the per-instance statistics over the batch (checked against torch 2.15):
//!
//! `running_mean = (1 - m) running_mean + m mean_n(mean[n, c])`,
//! `running_var  = (1 - m) running_var  + m mean_n(var[n, c] * M / (M - 1))`,
//!
//! with `M = h * w` (the unbiased per-instance variance; not the variance of the whole
//! channel). Instance statistics are used in training mode, and in evaluation mode when no
//! running statistics are kept (junyanz's CycleGAN default: `affine=False`,
//! `track_running_stats=False`); evaluation with running statistics uses those (StarGAN).
//! As in PyTorch, instance statistics of a single value per plane are an error.
//!
//! Why fused: Candle's composition is about eight ops (mean, subtract, square, mean, add,
//! sqrt, divide, the affine), each a pass and an allocation differentiated on its own. Here
//! the forward is a reading pass for the per-plane moments and one writing pass; the backward
//! reads each plane's output gradient and input once for two sums and writes its input
//! gradient while the plane is still in cache; planes are spread over the cores. Second-order
//! gradients and other devices or dtypes take Candle's composition
//! ([`InstanceNorm::forward_reference`]), which they differentiate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, Var};
use candle_nn::ModuleT;
use rayon::prelude::*;

use crate::kernels::ops::{cpu_slice, fused_cpu_f32, CpuValues};
use crate::kernels::reduce;

/// PyTorch's default running-statistics momentum.
const MOMENTUM: f64 = 0.1;

/// PyTorch's default `eps`.
pub const EPS: f64 = 1e-5;

/// `nn.InstanceNorm{1,2,3}d` over batched inputs `(n, c, spatial..)`.
pub struct InstanceNorm {
    channels: usize,
    /// Per-channel `(weight, bias)` when `affine`.
    affine: Option<(Tensor, Tensor)>,
    /// `(running_mean, running_var)` when `track_running_stats`.
    running: Option<(Var, Var)>,
    eps: f64,
    /// While set, training-mode passes leave the running statistics alone: a StarGAN
    /// translates with instance statistics, as yunjey's `test()` does (the model is never put
    /// in evaluation mode), without changing the buffers a checkpoint saves.
    frozen: AtomicBool,
}

/// `(samples, channels, values per plane)` of a checked input.
#[derive(Debug, Clone, Copy)]
struct Planes {
    samples: usize,
    channels: usize,
    inner: usize,
}

impl InstanceNorm {
    /// The channels it normalises.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `affine`: `(weight, bias)`; `running`: `(running_mean, running_var)`, each of
    /// `channels` values. Buffers that are variables of a `VarMap` stay shared with it, so
    /// saving the map saves the updated statistics.
    pub fn new(
        channels: usize,
        affine: Option<(Tensor, Tensor)>,
        running: Option<(Tensor, Tensor)>,
        eps: f64,
    ) -> Result<Self> {
        let tensors = affine
            .iter()
            .flat_map(|(w, b)| [("weight", w), ("bias", b)])
            .chain(
                running
                    .iter()
                    .flat_map(|(m, v)| [("running_mean", m), ("running_var", v)]),
            );
        for (name, t) in tensors {
            if t.dims() != [channels] {
                candle_core::bail!(
                    "instance-norm: {name} has shape {:?}, expected ({channels},)",
                    t.dims()
                );
            }
        }
        let running = match running {
            Some((mean, var)) => Some((Var::from_tensor(&mean)?, Var::from_tensor(&var)?)),
            None => None,
        };
        Ok(Self {
            channels,
            affine,
            running,
            eps,
            frozen: AtomicBool::new(false),
        })
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.affine.as_ref().map(|(w, _)| w)
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.affine.as_ref().map(|(_, b)| b)
    }

    pub fn running_mean(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|(m, _)| m.as_tensor())
    }

    pub fn running_var(&self) -> Option<&Tensor> {
        self.running.as_ref().map(|(_, v)| v.as_tensor())
    }

    /// PyTorch's `use_input_stats = training or not track_running_stats`.
    fn uses_instance_statistics(&self, train: bool) -> bool {
        train || self.running.is_none()
    }

    /// The input as planes; errors name the input's dims.
    fn planes(&self, x: &Tensor, instance_statistics: bool) -> Result<Planes> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.channels {
            candle_core::bail!(
                "instance-norm: expected an input (n, {}, spatial..), got {dims:?}",
                self.channels
            );
        }
        let inner = dims[2..].iter().product();
        if instance_statistics && inner < 2 {
            candle_core::bail!(
                "instance-norm: input {dims:?} has {inner} value per plane; instance statistics \
                 need more than one"
            );
        }
        Ok(Planes {
            samples: dims[0],
            channels: dims[1],
            inner,
        })
    }

    /// The fused op on f32 CPU tensors with first-order gradients, Candle's ops otherwise.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let instance = self.uses_instance_statistics(train);
        let planes = self.planes(x, instance)?;
        if !instance {
            return self.forward_running(x);
        }
        let mut tensors = vec![x];
        if let Some((w, b)) = &self.affine {
            tensors.extend([w, b]);
        }
        if !fused_cpu_f32(&tensors) {
            return self.forward_composed(x, planes, train);
        }
        self.forward_fused(&x.contiguous()?, planes, train)
    }

    /// Candle's composition of ops, whatever the device and dtype: the path of second-order
    /// gradients, and the tests' reference.
    pub fn forward_reference(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let instance = self.uses_instance_statistics(train);
        let planes = self.planes(x, instance)?;
        if instance {
            self.forward_composed(x, planes, train)
        } else {
            self.forward_running(x)
        }
    }

    fn forward_fused(&self, x: &Tensor, planes: Planes, train: bool) -> Result<Tensor> {
        let (mean, var) = {
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("instance-norm: the fused path needs a CPU tensor")
            };
            plane_moments(
                cpu_slice::<f32>(cpu, layout, "instance-norm input")?,
                planes.inner,
            )
        };
        if train && self.running.is_some() {
            let (batch_mean, batch_var) = batch_statistics(&mean, &var, planes);
            let device = x.device();
            self.update_running(
                &Tensor::new(batch_mean.as_slice(), device)?,
                &Tensor::new(batch_var.as_slice(), device)?,
            )?;
        }
        let eps = self.eps as f32;
        let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let op = InstanceNormTrain {
            mean: Arc::new(mean),
            inv_std: Arc::new(inv_std),
            planes,
        };
        match &self.affine {
            Some((w, b)) => x.apply_op3(&w.contiguous()?, &b.contiguous()?, op),
            None => x.apply_op1(op),
        }
    }

    /// Per-plane statistics through Candle's ops over the `(n, c, M)` view.
    fn forward_composed(&self, x: &Tensor, planes: Planes, train: bool) -> Result<Tensor> {
        let Planes {
            samples,
            channels,
            inner,
        } = planes;
        let flat = x.reshape((samples, channels, inner))?;
        let mean = flat.mean_keepdim(2)?;
        let centered = flat.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(2)?;
        if train && self.running.is_some() {
            // Batch averages of the per-instance mean and unbiased variance (no gradient).
            let unbias = inner as f64 / (inner - 1) as f64;
            let batch_mean = mean.detach().squeeze(2)?.mean(0)?;
            let batch_var = (var.detach().squeeze(2)?.mean(0)? * unbias)?;
            self.update_running(&batch_mean, &batch_var)?;
        }
        let normalised = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = match &self.affine {
            Some((w, b)) => normalised
                .broadcast_mul(&w.reshape((1, channels, 1))?)?
                .broadcast_add(&b.reshape((1, channels, 1))?)?,
            None => normalised,
        };
        y.reshape(x.shape())
    }

    /// Evaluation with running statistics: one affine map per channel. The buffers are
    /// detached, as PyTorch's buffers are not parameters.
    fn forward_running(&self, x: &Tensor) -> Result<Tensor> {
        let Some((mean, var)) = &self.running else {
            candle_core::bail!("instance-norm: no running statistics to evaluate with")
        };
        let dtype = x.dtype();
        let mean = mean.as_tensor().detach().to_dtype(dtype)?;
        let inv_std = (var.as_tensor().detach().to_dtype(dtype)? + self.eps)?
            .sqrt()?
            .recip()?;
        let scale = match &self.affine {
            Some((w, _)) => (w * inv_std)?,
            None => inv_std,
        };
        let shift = (mean * &scale)?.neg()?;
        let shift = match &self.affine {
            Some((_, b)) => (shift + b)?,
            None => shift,
        };
        let mut shape = vec![1; x.rank()];
        shape[1] = self.channels;
        x.broadcast_mul(&scale.reshape(shape.clone())?)?
            .broadcast_add(&shift.reshape(shape)?)
    }

    /// `running = (1 - m) running + m batch`, in the buffers' dtype.
    /// Freezes (or thaws) the running statistics: see the field `frozen`.
    pub fn freeze_running(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }

    fn update_running(&self, batch_mean: &Tensor, batch_var: &Tensor) -> Result<()> {
        let Some((running_mean, running_var)) = &self.running else {
            return Ok(());
        };
        if self.frozen.load(Ordering::SeqCst) {
            return Ok(());
        }
        let blend = |running: &Var, batch: &Tensor| -> Result<()> {
            let batch = batch.to_dtype(running.dtype())?;
            running.set(&((running.as_tensor() * (1.0 - MOMENTUM))? + (batch * MOMENTUM)?)?)
        };
        blend(running_mean, batch_mean)?;
        blend(running_var, batch_var)
    }
}

impl ModuleT for InstanceNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        InstanceNorm::forward_t(self, x, train)
    }
}

/// Planes per parallel task: at least ~16K values, so StarGAN's small late maps (planes of
/// 64 values) are not split into one task per plane.
fn planes_per_task(inner: usize) -> usize {
    (1 << 14) / inner.max(1) + 1
}

/// Each plane's mean and biased variance: two passes over the plane (it stays in cache) in
/// f64, planes in parallel.
fn plane_moments(x: &[f32], inner: usize) -> (Vec<f32>, Vec<f32>) {
    x.par_chunks(inner)
        .with_min_len(planes_per_task(inner))
        .map(|plane| {
            let mean = reduce::sum_in_lanes(plane, f64::from) / inner as f64;
            let squares = reduce::sum_in_lanes(plane, |v| (v as f64 - mean).powi(2));
            (mean as f32, (squares / inner as f64) as f32)
        })
        .unzip()
}

/// Per channel, the batch averages of the per-plane mean and unbiased variance: what
/// PyTorch's batch norm over the `(1, n * c, ..)` view folds into the running statistics.
fn batch_statistics(mean: &[f32], var: &[f32], planes: Planes) -> (Vec<f32>, Vec<f32>) {
    let Planes {
        samples,
        channels,
        inner,
    } = planes;
    let unbias = inner as f64 / (inner - 1) as f64;
    let average = |values: &[f32], c: usize| -> f64 {
        (0..samples)
            .map(|n| values[n * channels + c] as f64)
            .sum::<f64>()
            / samples as f64
    };
    (0..channels)
        .map(|c| (average(mean, c) as f32, (average(var, c) * unbias) as f32))
        .unzip()
}

/// `y = (x - mean) inv_std * weight + bias` per plane, with the statistics computed before the
/// op (the running statistics need them too). A `CustomOp3` with weight and bias, a
/// `CustomOp1` without (`affine=False`).
struct InstanceNormTrain {
    mean: Arc<Vec<f32>>,
    inv_std: Arc<Vec<f32>>,
    planes: Planes,
}

impl InstanceNormTrain {
    /// Writes `y` with `weight[c] = 1`, `bias[c] = 0` when not affine.
    fn forward(&self, x: &[f32], affine: Option<(&[f32], &[f32])>) -> Vec<f32> {
        let Planes {
            channels, inner, ..
        } = self.planes;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(inner)
            .zip(x.par_chunks(inner))
            .enumerate()
            .with_min_len(planes_per_task(inner))
            .for_each(|(p, (y, x))| {
                let (w, b) = affine.map_or((1.0, 0.0), |(w, b)| (w[p % channels], b[p % channels]));
                let scale = w * self.inv_std[p];
                let shift = b - scale * self.mean[p];
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = scale * x + shift;
                }
            });
        y
    }

    /// With `xhat = (x - mean) inv_std` and `M` values per plane, per plane:
    /// `dx = w inv_std (dy - sum dy / M - xhat sum(dy xhat) / M)`; per channel, over the
    /// batch: `dw = sum dy xhat`, `db = sum dy`. Returns `dx` and `(dw, db)`.
    fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        weight: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Planes {
            channels, inner, ..
        } = self.planes;
        let count = inner as f32;
        let mut dx = vec![0f32; x.len()];
        // Per plane: the two sums, then the writing pass while the plane is in cache.
        let sums: Vec<(f32, f32)> = dx
            .par_chunks_mut(inner)
            .zip(x.par_chunks(inner).zip(dy.par_chunks(inner)))
            .enumerate()
            .with_min_len(planes_per_task(inner))
            .map(|(p, (dx, (x, dy)))| {
                let (mean, inv_std) = (self.mean[p], self.inv_std[p]);
                let sum_dy = reduce::sum_in_lanes(dy, f64::from) as f32;
                let sum_dy_xhat =
                    reduce::sum_pairs_in_lanes(dy, x, |g, x| (g * (x - mean) * inv_std) as f64)
                        as f32;
                // dx = a dy + b x + k.
                let a = weight.map_or(1.0, |w| w[p % channels]) * inv_std;
                let b = -a * inv_std * sum_dy_xhat / count;
                let k = -a * sum_dy / count - b * mean;
                for ((dx, &g), &x) in dx.iter_mut().zip(dy).zip(x) {
                    *dx = a * g + b * x + k;
                }
                (sum_dy, sum_dy_xhat)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; channels], vec![0f32; channels]);
        for (p, (sum_dy, sum_dy_xhat)) in sums.into_iter().enumerate() {
            dw[p % channels] += sum_dy_xhat;
            db[p % channels] += sum_dy;
        }
        (dx, dw, db)
    }
}

impl CustomOp1 for InstanceNormTrain {
    fn name(&self) -> &'static str {
        "instance-norm"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = cpu_slice::<f32>(x, x_layout, "instance-norm input")?;
        Ok((
            CpuStorage::F32(self.forward(xs, None)),
            x_layout.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let values = CpuValues::new("instance-norm", &[x, &grad]);
        let (xv, gv) = (
            values.get(0, "instance-norm input")?,
            values.get(1, "instance-norm output gradient")?,
        );
        let (dx, _, _) = self.backward(xv, gv, None);
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

impl CustomOp3 for InstanceNormTrain {
    fn name(&self) -> &'static str {
        "instance-norm-affine"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = cpu_slice::<f32>(x, x_layout, "instance-norm input")?;
        let w = cpu_slice::<f32>(weight, weight_layout, "instance-norm weight")?;
        let b = cpu_slice::<f32>(bias, bias_layout, "instance-norm bias")?;
        Ok((
            CpuStorage::F32(self.forward(xs, Some((w, b)))),
            x_layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let values = CpuValues::new("instance-norm", &[x, &grad, weight]);
        let (xv, gv, w) = (
            values.get(0, "instance-norm input")?,
            values.get(1, "instance-norm output gradient")?,
            values.get(2, "instance-norm weight")?,
        );
        let (dx, dw, db) = self.backward(xv, gv, Some(w));
        let (device, channels) = (x.device(), self.planes.channels);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), device)?),
            Some(Tensor::from_vec(dw, channels, device)?),
            Some(Tensor::from_vec(db, channels, device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::{assert_gradient_matches_finite_differences, max_abs_diff};
    use crate::Rng;
    use candle_core::{DType, Device};

    /// Two layers over copies of the same parameters and buffers, and the parameters as
    /// variables (for their gradients).
    struct Pair {
        fused: InstanceNorm,
        composed: InstanceNorm,
        params: Option<(Var, Var)>,
    }

    fn pair(channels: usize, affine: bool, track: bool, rng: &mut Rng) -> Result<Pair> {
        let dev = Device::Cpu;
        let params = if affine {
            Some((
                Var::from_tensor(&(rng.normal(channels, &dev)? + 1.0)?)?,
                Var::from_tensor(&rng.normal(channels, &dev)?)?,
            ))
        } else {
            None
        };
        let buffers = if track {
            Some((
                rng.normal(channels, &dev)?,
                (rng.uniform(channels, &dev)? + 0.5)?,
            ))
        } else {
            None
        };
        let layer = || -> Result<InstanceNorm> {
            let affine = params
                .as_ref()
                .map(|(w, b)| (w.as_tensor().clone(), b.as_tensor().clone()));
            let running = match &buffers {
                Some((m, v)) => Some((m.copy()?, v.copy()?)),
                None => None,
            };
            InstanceNorm::new(channels, affine, running, EPS)
        };
        Ok(Pair {
            fused: layer()?,
            composed: layer()?,
            params,
        })
    }

    /// Forward, the gradients of input, weight and bias, and both running buffers: the fused
    /// op against Candle's composition, affine or not, with and without running statistics,
    /// in training and evaluation mode, InstanceNorm1d/2d/3d inputs, over two steps.
    #[test]
    fn fused_matches_composed_in_values_gradients_and_buffers() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let mut rng = Rng::new(21);
        let shapes = [
            vec![3, 4, 5, 7],
            vec![2, 3, 2, 1],
            vec![1, 2, 9],
            vec![2, 2, 3, 2, 2],
            vec![8, 3, 8, 8],
        ];
        for dims in shapes {
            for (affine, track, train) in (0..8).map(|i| (i & 1 == 1, i & 2 == 2, i & 4 == 4)) {
                let what = format!("{dims:?} affine {affine} track {track} train {train}");
                let p = pair(dims[1], affine, track, &mut rng)?;
                for _ in 0..2 {
                    let x = rng
                        .normal(dims.as_slice(), &Device::Cpu)?
                        .affine(3.0, 1.0)?;
                    let x = Var::from_tensor(&x)?;
                    let probe = rng.normal(dims.as_slice(), &Device::Cpu)?;
                    let y_fused = p.fused.forward_t(x.as_tensor(), train)?;
                    let y_composed = p.composed.forward_reference(x.as_tensor(), train)?;
                    let d = max_abs_diff(&y_fused, &y_composed)?;
                    assert!(d < 1e-5, "{what}: forward differs by {d}");
                    let g_fused = (&y_fused * &probe)?.sum_all()?.backward()?;
                    let g_composed = (&y_composed * &probe)?.sum_all()?.backward()?;
                    let mut vars = vec![(x.as_tensor(), "x")];
                    if let Some((w, b)) = &p.params {
                        vars.extend([(w.as_tensor(), "weight"), (b.as_tensor(), "bias")]);
                    }
                    for (v, name) in vars {
                        let (a, b) = (g_fused.get(v).unwrap(), g_composed.get(v).unwrap());
                        let d = max_abs_diff(a, b)?;
                        assert!(d < 1e-4, "{what}: d{name} differs by {d}");
                    }
                }
                if track {
                    let (f, c) = (&p.fused, &p.composed);
                    let dm = max_abs_diff(f.running_mean().unwrap(), c.running_mean().unwrap())?;
                    let dv = max_abs_diff(f.running_var().unwrap(), c.running_var().unwrap())?;
                    assert!(dm < 1e-6 && dv < 1e-5, "{what}: buffers differ {dm} {dv}");
                }
            }
        }
        Ok(())
    }

    /// The update rule written out in f64 (batch averages of the per-instance mean and
    /// unbiased variance), from both paths, over three steps; evaluation leaves the buffers.
    #[test]
    fn running_statistics_follow_pytorchs_rule() -> Result<()> {
        let mut rng = Rng::new(22);
        let (samples, channels, inner) = (3, 2, 6);
        let p = pair(channels, true, true, &mut rng)?;
        let values = |t: &Tensor| -> Result<Vec<f64>> {
            t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
        };
        let mut mean = values(p.fused.running_mean().unwrap())?;
        let mut var = values(p.fused.running_var().unwrap())?;
        for step in 0..3 {
            let x = rng
                .normal((samples, channels, 2, 3), &Device::Cpu)?
                .affine(2.0, 0.5)?;
            p.fused.forward_t(&x, true)?;
            p.composed.forward_reference(&x, true)?;
            let xv = values(&x)?;
            for c in 0..channels {
                let (mut batch_mean, mut batch_var) = (0.0, 0.0);
                for n in 0..samples {
                    let plane = &xv[(n * channels + c) * inner..][..inner];
                    let m = plane.iter().sum::<f64>() / inner as f64;
                    let unbiased =
                        plane.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (inner - 1) as f64;
                    batch_mean += m / samples as f64;
                    batch_var += unbiased / samples as f64;
                }
                mean[c] = 0.9 * mean[c] + 0.1 * batch_mean;
                var[c] = 0.9 * var[c] + 0.1 * batch_var;
            }
            p.fused.forward_t(&x, false)?;
            for layer in [&p.fused, &p.composed] {
                let got_mean = values(layer.running_mean().unwrap())?;
                let got_var = values(layer.running_var().unwrap())?;
                for c in 0..channels {
                    assert!((got_mean[c] - mean[c]).abs() < 1e-6, "step {step} mean {c}");
                    assert!((got_var[c] - var[c]).abs() < 1e-6, "step {step} var {c}");
                }
            }
        }
        Ok(())
    }

    /// Numbers from torch 2.15: `nn.InstanceNorm2d(3, track_running_stats=True)` in training
    /// mode on `x`, then on `x * x / 4`; the first output's planes (0, 0) and (1, 2).
    #[test]
    fn matches_pytorch_on_a_fixed_input() -> Result<()> {
        let dev = Device::Cpu;
        // ((n * 7 + c * 3 + s * 5) % 11 - 5) / 2 for s over the 2 x 3 plane.
        let values: Vec<f32> = (0..36)
            .map(|i| {
                let (n, c, s) = (i / 18, (i / 6) % 3, i % 6);
                (((n * 7 + c * 3 + s * 5) % 11) as f32 - 5.0) * 0.5
            })
            .collect();
        let x = Tensor::from_vec(values, (2, 3, 2, 3), &dev)?;
        let running = (
            Tensor::zeros(3, DType::F32, &dev)?,
            Tensor::ones(3, DType::F32, &dev)?,
        );
        let layer = InstanceNorm::new(3, None, Some(running), EPS)?;
        let y = layer.forward_t(&x, true)?;
        layer.forward_t(&(x.sqr()? * 0.25)?, true)?;
        // torch's f32 results, printed in full.
        let close = |got: Vec<f32>, want: &[f64], what: &str| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (&g, w) in got.iter().zip(want) {
                assert!((g as f64 - w).abs() < 2e-6, "{what}: {got:?} vs {want:?}");
            }
        };
        close(
            layer.running_mean().unwrap().to_vec1()?,
            &[0.07395833, 0.06697917, 0.0453125],
            "running_mean",
        );
        close(
            layer.running_var().unwrap().to_vec1()?,
            &[1.18209636, 1.05419385, 1.09772515],
            "running_var",
        );
        close(
            y.get(0)?.get(0)?.flatten_all()?.to_vec1()?,
            &[
                -1.50371826,
                -0.04850704,
                1.40670419,
                -0.33954927,
                1.11566186,
                -0.63059151,
            ],
            "y[0, 0]",
        );
        close(
            y.get(1)?.get(2)?.flatten_all()?.to_vec1()?,
            &[
                -0.57035023,
                1.3308171,
                -0.9505837,
                0.95058364,
                -1.33081722,
                0.57035017,
            ],
            "y[1, 2]",
        );
        Ok(())
    }

    /// Evaluation normalises by the running statistics when they are tracked, by the
    /// instance's own otherwise (junyanz's CycleGAN), and never changes the buffers.
    #[test]
    fn evaluation_uses_running_statistics_only_when_tracked() -> Result<()> {
        let mut rng = Rng::new(23);
        let dev = Device::Cpu;
        let x = rng.normal((2, 3, 4, 4), &dev)?;
        let p = pair(3, true, true, &mut rng)?;
        let (w, b) = p.params.as_ref().unwrap();
        let (mean, var) = (
            p.fused.running_mean().unwrap().copy()?,
            p.fused.running_var().unwrap().copy()?,
        );
        let shape = (1, 3, 1, 1);
        let expected = x
            .broadcast_sub(&mean.reshape(shape)?)?
            .broadcast_div(&(&var + EPS)?.sqrt()?.reshape(shape)?)?
            .broadcast_mul(&w.as_tensor().reshape(shape)?)?
            .broadcast_add(&b.as_tensor().reshape(shape)?)?;
        let d = max_abs_diff(&p.fused.forward_t(&x, false)?, &expected)?;
        assert!(d < 1e-5, "tracked eval differs by {d}");
        assert_eq!(max_abs_diff(p.fused.running_mean().unwrap(), &mean)?, 0.0);
        assert_eq!(max_abs_diff(p.fused.running_var().unwrap(), &var)?, 0.0);
        let untracked = InstanceNorm::new(3, None, None, EPS)?;
        let d = max_abs_diff(
            &untracked.forward_t(&x, false)?,
            &untracked.forward_t(&x, true)?,
        )?;
        assert_eq!(d, 0.0, "untracked eval must use instance statistics");
        Ok(())
    }

    /// The fused backward against central differences of the fused forward.
    #[test]
    fn input_gradient_matches_finite_differences() -> Result<()> {
        let mut rng = Rng::new(24);
        for affine in [false, true] {
            let p = pair(3, affine, true, &mut rng)?;
            let x = rng.normal((2, 3, 3, 4), &Device::Cpu)?;
            let probe = rng.normal((2, 3, 3, 4), &Device::Cpu)?;
            assert_gradient_matches_finite_differences(
                |x| p.fused.forward_t(x, true),
                &x,
                &probe,
                &[0, 5, 13, 30, 47, 71],
                1e-2,
                2e-2,
            )?;
        }
        Ok(())
    }

    /// The fused f32 gradients of input, weight and bias against central differences of the
    /// exact loss (Candle's composition in f64): tight enough to see a 1% error in any term of
    /// the backward, which f32 differences cannot.
    #[test]
    fn gradients_match_f64_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(25);
        let dims = (2, 3, 3, 4);
        let x = rng.normal(dims, &dev)?.affine(2.0, 1.0)?;
        let probe = rng.normal(dims, &dev)?;
        let w = (rng.normal(3, &dev)? + 1.0)?;
        let b = rng.normal(3, &dev)?;
        let f64s = |t: &Tensor| t.to_dtype(DType::F64);
        let exact = |x: &Tensor, w: &Tensor, b: &Tensor| -> Result<f64> {
            let norm = InstanceNorm::new(3, Some((f64s(w)?, f64s(b)?)), None, EPS)?;
            (norm.forward_reference(&f64s(x)?, true)? * f64s(&probe)?)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let vars = [&x, &w, &b].map(|t| Var::from_tensor(t).unwrap());
        let [xv, wv, bv] = vars.each_ref().map(|v| v.as_tensor().clone());
        let norm = InstanceNorm::new(3, Some((wv.clone(), bv.clone())), None, EPS)?;
        let grads = (norm.forward_t(&xv, true)? * &probe)?
            .sum_all()?
            .backward()?;
        for (which, var) in vars.iter().enumerate() {
            let analytic = grads.get(var).unwrap().flatten_all()?.to_vec1::<f32>()?;
            let base = f64s(var.as_tensor())?.flatten_all()?.to_vec1::<f64>()?;
            for j in (0..base.len()).step_by(5) {
                let at = |d: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[j] += d;
                    let t = Tensor::from_vec(v, var.dims(), &dev)?;
                    let mut args = [x.clone(), w.clone(), b.clone()].map(|t| f64s(&t).unwrap());
                    args[which] = t;
                    exact(&args[0], &args[1], &args[2])
                };
                let fd = (at(1e-5)? - at(-1e-5)?) / 2e-5;
                let got = analytic[j] as f64;
                assert!(
                    (fd - got).abs() < 1e-4 * (1.0 + fd.abs()),
                    "argument {which} entry {j}: finite differences {fd}, fused backward {got}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let layer = InstanceNorm::new(3, None, None, EPS)?;
        let error = |r: Result<Tensor>| r.unwrap_err().to_string();
        let e = error(layer.forward_t(&Tensor::zeros((2, 4, 3, 3), DType::F32, &dev)?, true));
        assert!(e.contains("(n, 3, spatial..), got [2, 4, 3, 3]"), "{e}");
        let e = error(layer.forward_t(&Tensor::zeros((2, 3), DType::F32, &dev)?, true));
        assert!(e.contains("got [2, 3]"), "{e}");
        let e = error(layer.forward_t(&Tensor::zeros((2, 3, 1, 1), DType::F32, &dev)?, false));
        assert!(e.contains("[2, 3, 1, 1] has 1 value per plane"), "{e}");
        let ones = Tensor::ones(4, DType::F32, &dev)?;
        let e = InstanceNorm::new(3, Some((ones.clone(), ones)), None, EPS)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("weight has shape [4], expected (3,)"), "{e}");
        Ok(())
    }
}
