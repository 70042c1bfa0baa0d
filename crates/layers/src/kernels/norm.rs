//! Batch normalisation (Ioffe & Szegedy 2015) with PyTorch's semantics (biased batch variance
//! to normalise, unbiased for the running variance, momentum 0.1), as one fused CPU op.
//!
//! Why: Candle's `BatchNorm::forward_train` copies the input into channel-major order, builds
//! the normalisation from about ten elementwise ops (each a pass and an allocation, each
//! differentiated on its own) and returns a transposed view that the next layer copies again.
//! Here the forward is two reading passes (per-channel moments) and one writing pass, and the
//! backward is one reading pass (two per-channel sums) and one writing pass, both spread over
//! the cores. Second-order gradients (WGAN-GP through a normalised critic) and other devices
//! or dtypes take Candle's composition of ops, which they differentiate.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, Var};
use candle_nn::ModuleT;
use rayon::prelude::*;

use crate::kernels::ops::{cpu_slice, fused_cpu_f32, CpuValues};
use crate::kernels::reduce;

/// PyTorch's default running-statistics momentum.
const MOMENTUM: f64 = 0.1;

/// `nn.BatchNorm1d/2d` over dim 1 of an input of rank >= 2, with affine weight and bias.
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    /// The same parameters and buffers as Candle's layer: the path that second-order
    /// gradients and non-CPU devices take.
    composed: candle_nn::BatchNorm,
}

impl BatchNorm {
    /// Buffers that are variables of a `VarMap` stay shared with it, so saving the map saves
    /// the updated statistics.
    pub fn new(
        running_mean: Tensor,
        running_var: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    ) -> Result<Self> {
        let channels = weight.elem_count();
        let running_mean = Var::from_tensor(&running_mean)?;
        let running_var = Var::from_tensor(&running_var)?;
        let composed = candle_nn::BatchNorm::new(
            channels,
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
            weight.clone(),
            bias.clone(),
            eps,
        )?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps,
            composed,
        })
    }

    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// Training mode: normalise by the batch's statistics and update the running ones.
    pub fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        if !fused_path(x) {
            return self.composed.forward_t(x, true);
        }
        let x = x.contiguous()?;
        let (outer, channels, inner) = channel_layout(&x)?;
        let moments = {
            let (storage, layout) = x.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("batch-norm: fused path needs a CPU tensor")
            };
            channel_moments(
                cpu_slice::<f32>(cpu, layout, "batch-norm input")?,
                outer,
                channels,
                inner,
            )
        };
        self.update_running(&moments, outer * inner, x.device())?;
        let inv_std = moments
            .var
            .iter()
            .map(|v| 1.0 / (v + self.eps as f32).sqrt())
            .collect();
        let op = BatchNormTrain {
            mean: Arc::new(moments.mean),
            inv_std: Arc::new(inv_std),
            outer,
            channels,
            inner,
        };
        x.apply_op3(&self.weight.contiguous()?, &self.bias.contiguous()?, op)
    }

    /// `running = (1 - m) running + m batch`, the variance unbiased as PyTorch keeps it.
    fn update_running(
        &self,
        moments: &Moments,
        count: usize,
        device: &candle_core::Device,
    ) -> Result<()> {
        let unbias = count as f64 / (count.max(2) - 1) as f64;
        let dtype = self.running_mean.dtype();
        let mean = Tensor::new(moments.mean.as_slice(), device)?.to_dtype(dtype)?;
        let var = (Tensor::new(moments.var.as_slice(), device)?.to_dtype(dtype)? * unbias)?;
        let blend = |old: &Tensor, new: &Tensor| (old * (1.0 - MOMENTUM))? + (new * MOMENTUM)?;
        self.running_mean
            .set(&blend(self.running_mean.as_tensor(), &mean)?)?;
        self.running_var
            .set(&blend(self.running_var.as_tensor(), &var)?)
    }

    /// Evaluation mode: one affine map per channel from the running statistics.
    pub fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1; x.rank()];
        shape[1] = self.weight.elem_count();
        let scale = (&self.weight / (self.running_var.as_tensor() + self.eps)?.sqrt()?)?;
        let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
        x.broadcast_mul(&scale.reshape(shape.clone())?)?
            .broadcast_add(&shift.reshape(shape)?)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            self.forward_train(x)
        } else {
            self.forward_eval(x)
        }
    }
}

/// The fused op serves inputs with a channel dimension that [`fused_cpu_f32`] accepts.
fn fused_path(x: &Tensor) -> bool {
    x.rank() >= 2 && fused_cpu_f32(&[x])
}

/// `(outer, channels, inner)`: the input as `(n, c, everything after)`.
fn channel_layout(x: &Tensor) -> Result<(usize, usize, usize)> {
    let dims = x.dims();
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Per-channel batch mean and biased variance.
struct Moments {
    mean: Vec<f32>,
    var: Vec<f32>,
}

/// Two passes per channel (mean, then squared deviations) in f64, channels in parallel.
fn channel_moments(x: &[f32], outer: usize, channels: usize, inner: usize) -> Moments {
    let count = (outer * inner) as f64;
    let per_channel: Vec<(f32, f32)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let planes = || (0..outer).map(move |n| &x[(n * channels + c) * inner..][..inner]);
            let sum: f64 = planes().map(|p| reduce::sum_in_lanes(p, f64::from)).sum();
            let mean = sum / count;
            let squares: f64 = planes()
                .map(|p| reduce::sum_in_lanes(p, |v| (v as f64 - mean).powi(2)))
                .sum();
            (mean as f32, (squares / count) as f32)
        })
        .collect();
    let (mean, var) = per_channel.into_iter().unzip();
    Moments { mean, var }
}

/// `y = (x - mean) * inv_std * weight + bias` with the batch's statistics.
struct BatchNormTrain {
    mean: Arc<Vec<f32>>,
    inv_std: Arc<Vec<f32>>,
    outer: usize,
    channels: usize,
    inner: usize,
}

/// `out[n, c, s] = a[c] * u[n, c, s] + b[c] * v[n, c, s] + k[c]` (v optional), samples in
/// parallel: every pass of the fused op is this one.
fn per_channel_affine(
    out: &mut [f32],
    u: &[f32],
    v: Option<&[f32]>,
    coefficients: &[[f32; 3]],
    channels: usize,
    inner: usize,
) {
    let sample = channels * inner;
    out.par_chunks_mut(sample).enumerate().for_each(|(n, out)| {
        let u = &u[n * sample..][..sample];
        let v = v.map(|v| &v[n * sample..][..sample]);
        for (c, &[a, b, k]) in coefficients.iter().enumerate() {
            let range = c * inner..(c + 1) * inner;
            let (out, u) = (&mut out[range.clone()], &u[range.clone()]);
            match v {
                Some(v) => {
                    for ((o, &u), &v) in out.iter_mut().zip(u).zip(&v[range]) {
                        *o = a * u + b * v + k;
                    }
                }
                None => {
                    for (o, &u) in out.iter_mut().zip(u) {
                        *o = a * u + k;
                    }
                }
            }
        }
    });
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm"
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
        let xs = cpu_slice::<f32>(x, x_layout, "batch-norm input")?;
        let w = cpu_slice::<f32>(weight, weight_layout, "batch-norm weight")?;
        let b = cpu_slice::<f32>(bias, bias_layout, "batch-norm bias")?;
        // y = scale * x + (bias - scale * mean), scale = weight * inv_std.
        let coefficients: Vec<[f32; 3]> = (0..self.channels)
            .map(|c| {
                let scale = w[c] * self.inv_std[c];
                [scale, 0.0, b[c] - scale * self.mean[c]]
            })
            .collect();
        let mut out = vec![0f32; xs.len()];
        per_channel_affine(&mut out, xs, None, &coefficients, self.channels, self.inner);
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    /// With `xhat = (x - mean) inv_std` and `M` values per channel:
    /// `db = sum dy`, `dw = sum dy xhat`,
    /// `dx = w inv_std (dy - db / M - xhat dw / M)`.
    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let values = CpuValues::new("batch-norm", &[x, &grad, weight]);
        let xv = values.get(0, "batch-norm input")?;
        let gv = values.get(1, "batch-norm output gradient")?;
        let w = values.get(2, "batch-norm weight")?;
        let (outer, channels, inner) = (self.outer, self.channels, self.inner);
        let count = (outer * inner) as f32;
        // Per channel: (sum dy, sum dy xhat).
        let sums: Vec<(f32, f32)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let (mean, inv_std) = (self.mean[c], self.inv_std[c]);
                let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
                for n in 0..outer {
                    let at = (n * channels + c) * inner;
                    let (g, x) = (&gv[at..at + inner], &xv[at..at + inner]);
                    sum_dy += reduce::sum_in_lanes(g, f64::from);
                    sum_dy_xhat +=
                        reduce::sum_pairs_in_lanes(g, x, |g, x| (g * (x - mean) * inv_std) as f64);
                }
                (sum_dy as f32, sum_dy_xhat as f32)
            })
            .collect();
        // dx = a dy + b x + k, per channel.
        let coefficients: Vec<[f32; 3]> = (0..channels)
            .map(|c| {
                let (sum_dy, sum_dy_xhat) = sums[c];
                let (mean, inv_std) = (self.mean[c], self.inv_std[c]);
                let a = w[c] * inv_std;
                let b = -a * inv_std * sum_dy_xhat / count;
                [a, b, -a * sum_dy / count - b * mean]
            })
            .collect();
        let mut dx = vec![0f32; xv.len()];
        per_channel_affine(&mut dx, gv, Some(xv), &coefficients, channels, inner);
        let device = x.device();
        let dx = Tensor::from_vec(dx, x.shape(), device)?;
        let dw = Tensor::from_vec(sums.iter().map(|s| s.1).collect(), channels, device)?;
        let db = Tensor::from_vec(sums.iter().map(|s| s.0).collect(), channels, device)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::Device;

    /// Both layers over the same starting parameters and buffers (separate copies).
    fn pair(channels: usize, rng: &mut Rng) -> Result<(BatchNorm, candle_nn::BatchNorm, [Var; 2])> {
        let dev = Device::Cpu;
        let weight = Var::from_tensor(&(rng.normal(channels, &dev)? + 1.0)?)?;
        let bias = Var::from_tensor(&rng.normal(channels, &dev)?)?;
        let mean = rng.normal(channels, &dev)?;
        let var = (rng.uniform(channels, &dev)? + 0.5)?;
        let copy = |t: &Tensor| t.copy();
        let fused = BatchNorm::new(
            copy(&mean)?,
            copy(&var)?,
            weight.as_tensor().clone(),
            bias.as_tensor().clone(),
            1e-5,
        )?;
        let candle = candle_nn::BatchNorm::new(
            channels,
            copy(&mean)?,
            copy(&var)?,
            weight.as_tensor().clone(),
            bias.as_tensor().clone(),
            1e-5,
        )?;
        Ok((fused, candle, [weight, bias]))
    }

    use crate::kernels::ops::max_abs_diff as max_diff;

    /// Forward, every gradient and both running buffers equal Candle's `BatchNorm` in
    /// training mode, for BatchNorm1d and 2d inputs of odd sizes, after two steps; evaluation
    /// mode too.
    #[test]
    fn matches_candles_batch_norm_in_values_gradients_and_buffers() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let mut rng = Rng::new(11);
        for dims in [
            vec![5, 3],
            vec![4, 3, 5, 7],
            vec![2, 6, 1, 1],
            vec![3, 2, 9],
        ] {
            let channels = dims[1];
            let (fused, candle, params) = pair(channels, &mut rng)?;
            for _ in 0..2 {
                let x = rng
                    .normal(dims.as_slice(), &Device::Cpu)?
                    .affine(3.0, 1.0)?;
                let x = Var::from_tensor(&x)?;
                // A weighted sum, so the output gradient is not uniform.
                let probe = rng.normal(dims.as_slice(), &Device::Cpu)?;
                let y_fused = fused.forward_train(x.as_tensor())?;
                let y_candle = candle.forward_t(x.as_tensor(), true)?;
                assert!(max_diff(&y_fused, &y_candle)? < 1e-5, "{dims:?} forward");
                let g_fused = (&y_fused * &probe)?.sum_all()?.backward()?;
                let g_candle = (&y_candle * &probe)?.sum_all()?.backward()?;
                for (v, what) in [
                    (x.as_tensor(), "x"),
                    (params[0].as_tensor(), "weight"),
                    (params[1].as_tensor(), "bias"),
                ] {
                    let (a, b) = (g_fused.get(v).unwrap(), g_candle.get(v).unwrap());
                    assert!(
                        max_diff(a, b)? < 1e-4,
                        "{dims:?} d{what}: {}",
                        max_diff(a, b)?
                    );
                }
            }
            assert!(max_diff(fused.running_mean(), candle.running_mean())? < 1e-6);
            assert!(max_diff(fused.running_var(), candle.running_var())? < 1e-5);
            let x = rng.normal(dims.as_slice(), &Device::Cpu)?;
            let eval = max_diff(&fused.forward_t(&x, false)?, &candle.forward_t(&x, false)?)?;
            assert!(eval < 1e-5, "{dims:?} eval {eval}");
        }
        Ok(())
    }

    /// The input gradient against central differences of the fused forward itself.
    #[test]
    fn input_gradient_matches_finite_differences() -> Result<()> {
        let mut rng = Rng::new(12);
        let (fused, _, _) = pair(3, &mut rng)?;
        let x = rng.normal((4, 3, 2, 3), &Device::Cpu)?;
        let probe = rng.normal((4, 3, 2, 3), &Device::Cpu)?;
        let loss = |x: &Tensor| -> Result<f32> {
            (fused.forward_train(x)? * &probe)?
                .sum_all()?
                .to_scalar::<f32>()
        };
        let xv = Var::from_tensor(&x)?;
        let grad = (fused.forward_train(xv.as_tensor())? * &probe)?
            .sum_all()?
            .backward()?;
        let analytic = grad
            .get(xv.as_tensor())
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let flat = x.flatten_all()?.to_vec1::<f32>()?;
        let h = 1e-2;
        for i in [0, 7, 20, 35, 71] {
            let at = |d: f32| {
                let mut v = flat.clone();
                v[i] += d;
                Tensor::from_vec(v, x.shape(), &Device::Cpu)
            };
            let numeric = (loss(&at(h)?)? - loss(&at(-h)?)?) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 2e-2,
                "{i}: {numeric} vs {}",
                analytic[i]
            );
        }
        Ok(())
    }
}
