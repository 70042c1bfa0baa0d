//! Losses and log-densities shared by the models. Every function returns one value per image
//! (summed over all non-batch dimensions) so callers choose how to reduce over the batch.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::kernels::ops::{cpu_slice, fused_cpu_f32, CpuValues};
use crate::kernels::simd;

/// Sums every dimension but the first: `(b, ...) -> (b)`.
pub fn sum_per_image(t: &Tensor) -> Result<Tensor> {
    t.flatten_from(1)?.sum(1)
}

/// `softplus(x) = log(1 + exp(x))`, computed as `max(x, 0) + log(1 + exp(-|x|))` so that
/// neither tail overflows.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let pos = x.relu()?;
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    pos + tail
}

/// Binary cross-entropy between Bernoulli `logits` and `targets` in [0, 1], per image, in nats:
/// `sum_i softplus(l_i) - t_i l_i`, the negative Bernoulli log-likelihood.
///
/// Candle's `binary_cross_entropy_with_logit` computes `sigmoid` then `log` and returns inf
/// for logits of +-100; this form stays finite. On the CPU it is one fused op: written with
/// tensor ops it is nine forward and about thirty backward passes over the whole batch, the
/// largest elementwise cost of the VAE and PixelCNN steps.
pub fn bce_with_logits_per_image(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if logits.shape() != targets.shape() {
        candle_core::bail!(
            "bce_with_logits: logits {:?} and targets {:?} must have the same shape",
            logits.dims(),
            targets.dims()
        );
    }
    if logits.rank() >= 2 && fused_cpu_f32(&[logits, targets]) {
        let op = BceWithLogits {
            targets_need_grad: targets.track_op(),
        };
        logits.contiguous()?.apply_op2(&targets.contiguous()?, op)
    } else {
        bce_with_logits_per_image_reference(logits, targets)
    }
}

/// The same with Candle's ops.
pub fn bce_with_logits_per_image_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let nll = (softplus(logits)? - (logits * targets)?)?;
    sum_per_image(&nll)
}

/// `(b, ...)` logits and targets -> `(b)` summed Bernoulli negative log-likelihoods.
struct BceWithLogits {
    /// Whether to compute `dL/dt = -l` (targets are usually data).
    targets_need_grad: bool,
}

impl CustomOp2 for BceWithLogits {
    fn name(&self) -> &'static str {
        "bce-with-logits-per-image"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let batch = logits_layout.shape().dims()[0];
        let l = cpu_slice::<f32>(logits, logits_layout, "bce logits")?;
        let t = cpu_slice::<f32>(targets, targets_layout, "bce targets")?;
        let per_image = l.len() / batch.max(1);
        let mut out = vec![0f32; batch];
        out.par_iter_mut().enumerate().for_each(|(n, o)| {
            let range = n * per_image..(n + 1) * per_image;
            *o = simd::bce_with_logits_sum(&l[range.clone()], &t[range]);
        });
        Ok((CpuStorage::F32(out), Shape::from(batch)))
    }

    /// `dL/dl_i = g_b (sigmoid(l_i) - t_i)`, `dL/dt_i = -g_b l_i`.
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_vec1::<f32>()?;
        let values = CpuValues::new("bce-with-logits", &[logits, targets]);
        let l = values.get(0, "bce logits")?;
        let t = values.get(1, "bce targets")?;
        let per_image = l.len() / g.len().max(1);
        let mut dl = vec![0f32; l.len()];
        dl.par_chunks_mut(per_image.max(1))
            .enumerate()
            .for_each(|(n, dl)| {
                let range = n * per_image..(n + 1) * per_image;
                simd::bce_with_logits_grad(dl, g[n], &l[range.clone()], &t[range]);
            });
        let dl = Tensor::from_vec(dl, logits.shape(), logits.device())?;
        let dt = if self.targets_need_grad {
            let scale = Tensor::from_vec(g, logits.dim(0)?, logits.device())?;
            let per_image_scale = scale.reshape(
                std::iter::once(logits.dim(0)?)
                    .chain(std::iter::repeat_n(1, logits.rank() - 1))
                    .collect::<Vec<_>>(),
            )?;
            Some(logits.broadcast_mul(&per_image_scale)?.neg()?)
        } else {
            None
        };
        Ok((Some(dl), dt))
    }
}

/// `KL(N(mu, exp(logvar)) || N(0, I))` per image, in nats:
/// `-1/2 sum(1 + logvar - mu^2 - exp(logvar))` (Kingma & Welling 2014, appendix B).
pub fn gaussian_kl_per_image(mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let inner = ((logvar.affine(1.0, 1.0)? - mu.sqr()?)? - logvar.exp()?)?;
    sum_per_image(&inner)?.affine(-0.5, 0.0)
}

const LN_2PI: f64 = 1.837_877_066_409_345_3;

/// `log N(z; mu, exp(logvar))` summed over the last dimension.
pub fn gaussian_log_density(z: &Tensor, mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    let sq = (z.broadcast_sub(mu)?.sqr()? * logvar.neg()?.exp()?)?;
    let per_dim = ((sq + logvar)?.affine(-0.5, -0.5 * LN_2PI))?;
    per_dim.sum(D::Minus1)
}

/// `log N(z; 0, I)` summed over the last dimension.
pub fn standard_normal_log_density(z: &Tensor) -> Result<Tensor> {
    z.sqr()?.affine(-0.5, -0.5 * LN_2PI)?.sum(D::Minus1)
}

/// `log sum_k exp(x_k)` over `dim`, stable for large magnitudes.
pub fn log_sum_exp(x: &Tensor, dim: usize) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let shifted = x.broadcast_sub(&max)?.exp()?.sum_keepdim(dim)?.log()?;
    (shifted + max)?.squeeze(dim)
}

/// Nats per image to bits per dimension.
pub fn bits_per_dim(nats_per_image: f64, dims: usize) -> f64 {
    nats_per_image / (dims as f64 * std::f64::consts::LN_2)
}

/// Mean of a per-image tensor as f64.
pub fn mean_f64(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn bce_is_finite_and_exact_at_extreme_logits() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[100f32, -100.0, 0.0, 3.0]], &dev)?;
        let targets = Tensor::new(&[[0f32, 1.0, 1.0, 1.0]], &dev)?;
        let v = bce_with_logits_per_image(&logits, &targets)?.to_vec1::<f32>()?[0] as f64;
        // -log sigmoid(-100) = 100, -log sigmoid(-100) = 100, log 2, -log sigmoid(3).
        let expected = 200.0 + 2f64.ln() + (1.0 + (-3f64).exp()).ln();
        close(v, expected, 1e-3);
        // Candle's own loss gives inf here: this is the bug the stable form avoids.
        let candle = candle_nn::loss::binary_cross_entropy_with_logit(&logits, &targets)?;
        assert!(!candle.to_scalar::<f32>()?.is_finite());
        Ok(())
    }

    /// The fused op and the tensor formula agree in values and in both gradients (targets as a
    /// variable too), for flat and image-shaped inputs of odd sizes and a non-uniform probe.
    #[test]
    fn fused_bce_matches_the_tensor_formula() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let dev = Device::Cpu;
        let mut rng = crate::Rng::new(31);
        for dims in [vec![1, 1], vec![3, 37], vec![5, 1, 7, 9], vec![2, 3, 4, 5]] {
            let logits = Var::from_tensor(&rng.normal(dims.as_slice(), &dev)?.affine(6.0, 0.0)?)?;
            let targets = Var::from_tensor(&rng.uniform(dims.as_slice(), &dev)?)?;
            let probe = rng.normal(dims[0], &dev)?;
            let fused = bce_with_logits_per_image(&logits, &targets)?;
            let reference = bce_with_logits_per_image_reference(&logits, &targets)?;
            let diff = (&fused - &reference)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{dims:?} values: {diff}");
            let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
            let g_ref = (&reference * &probe)?.sum_all()?.backward()?;
            for (v, what) in [(&logits, "logits"), (&targets, "targets")] {
                let (a, b) = (g_fused.get(v).unwrap(), g_ref.get(v).unwrap());
                let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "{dims:?} d{what}: {diff}");
            }
        }
        let e = bce_with_logits_per_image(
            &Tensor::zeros((2, 3), DType::F32, &dev)?,
            &Tensor::zeros((2, 4), DType::F32, &dev)?,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("[2, 3]") && e.contains("[2, 4]"), "{e}");
        Ok(())
    }

    /// The logits' gradient against central differences of the fused forward.
    #[test]
    fn fused_bce_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::Rng::new(32);
        let logits = rng.normal((3, 7), &dev)?.affine(3.0, 0.0)?;
        let targets = rng.uniform((3, 7), &dev)?;
        let probe = rng.normal(3, &dev)?;
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |l| bce_with_logits_per_image(l, &targets),
            &logits,
            &probe,
            &[0, 6, 10, 20],
            1e-2,
            1e-2,
        )
    }

    #[test]
    fn bce_gradient_is_sigmoid_minus_target() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[[-30f32, -1.0, 0.5, 40.0]], &dev)?;
        let t = Tensor::new(&[[1f32, 0.0, 1.0, 0.0]], &dev)?;
        let grads = bce_with_logits_per_image(x.as_tensor(), &t)?
            .sum_all()?
            .backward()?;
        let g = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let xs = [-30f32, -1.0, 0.5, 40.0];
        let ts = [1f32, 0.0, 1.0, 0.0];
        for i in 0..4 {
            let sig = 1.0 / (1.0 + (-xs[i]).exp());
            close(g[i] as f64, (sig - ts[i]) as f64, 1e-6);
        }
        Ok(())
    }

    #[test]
    fn kl_matches_closed_form() -> Result<()> {
        let dev = Device::Cpu;
        let mu = Tensor::new(&[[0.5f32, -1.0]], &dev)?;
        let logvar = Tensor::new(&[[0.0f32, (0.25f32).ln()]], &dev)?;
        let kl = gaussian_kl_per_image(&mu, &logvar)?.to_vec1::<f32>()?[0] as f64;
        // Per dim: 0.5 * (var + mu^2 - 1 - ln var).
        let expected = 0.5 * (1.0 + 0.25 - 1.0) + 0.5 * (0.25 + 1.0 - 1.0 - 0.25f64.ln());
        close(kl, expected, 1e-6);
        Ok(())
    }

    #[test]
    fn bits_per_dim_and_the_mean() -> Result<()> {
        // 784 dimensions at 1.5 bits each; PixelCNN's 81.30 nats on binarized MNIST.
        close(
            bits_per_dim(784.0 * 1.5 * std::f64::consts::LN_2, 784),
            1.5,
            1e-12,
        );
        close(bits_per_dim(81.30, 784), 0.149_606, 1e-6);
        let per_image = Tensor::new(&[1f32, 2.0, 3.0, 6.5], &Device::Cpu)?;
        close(mean_f64(&per_image)?, 3.125, 1e-12);
        Ok(())
    }

    #[test]
    fn log_densities_and_log_sum_exp() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[1.0f64, -2.0]], &dev)?;
        let mu = Tensor::new(&[[0.0f64, 0.0]], &dev)?;
        let lv = Tensor::new(&[[0.0f64, 0.0]], &dev)?;
        let a = gaussian_log_density(&z, &mu, &lv)?.to_vec1::<f64>()?[0];
        let b = standard_normal_log_density(&z)?.to_vec1::<f64>()?[0];
        close(a, -LN_2PI - 2.5, 1e-12);
        close(b, a, 1e-12);
        // Off the standard normal: each dimension's -1/2 ((z - mu)^2 / var + log var + log 2 pi).
        let mu = Tensor::new(&[[0.5f64, -1.0]], &dev)?;
        let lv = Tensor::new(&[[0.7f64, -1.2]], &dev)?;
        let a = gaussian_log_density(&z, &mu, &lv)?.to_vec1::<f64>()?[0];
        let expected: f64 = [(1.0, 0.5, 0.7), (-2.0, -1.0, -1.2)]
            .iter()
            .map(|&(z, mu, lv): &(f64, f64, f64)| {
                -0.5 * ((z - mu).powi(2) / lv.exp() + lv + LN_2PI)
            })
            .sum();
        close(a, expected, 1e-12);
        let x = Tensor::new(&[[1000.0f64, 1000.0], [-5.0, 0.0]], &dev)?;
        let l = log_sum_exp(&x, 1)?.to_vec1::<f64>()?;
        close(l[0], 1000.0 + 2f64.ln(), 1e-9);
        close(l[1], (1.0 + (-5f64).exp()).ln(), 1e-9);
        Ok(())
    }
}
