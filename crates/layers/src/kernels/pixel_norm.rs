//! Pixel-wise feature normalisation (Karras et al. 2018, section 4.2) as one fused CPU op:
//! `y = x / r`, `r = sqrt(mean_c x^2 + 1e-8)` at every pixel of `(b, c, ...)`.
//!
//! Candle runs it as five ops forward (square, mean, add, square root, broadcast division) and
//! about twice as many backward, each a pass over the activations into a fresh buffer; a
//! Progressive GAN's generator normalises after every convolution. Here the forward pass reads
//! `x` twice and writes `y` once; the backward pass recomputes `r` from `x` and writes
//! `dx = (g - y mean_c(g y)) / r`. Each image is its own task, so no value depends on the
//! thread count.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::ops::{cpu_slice, fused_cpu_f32, CpuValues};

pub const EPS: f32 = 1e-8;

/// `x / sqrt(mean over dimension 1 of x^2 + 1e-8)` for `x (b, c, ...)`.
pub fn pixel_norm(x: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 {
        candle_core::bail!("pixel_norm: expected (b, c, ..), found {:?}", x.dims());
    }
    if !fused_cpu_f32(&[x]) {
        return pixel_norm_reference(x);
    }
    x.contiguous()?.apply_op1(PixelNorm)
}

/// The same with Candle's ops.
pub fn pixel_norm_reference(x: &Tensor) -> Result<Tensor> {
    let rms = (x.sqr()?.mean_keepdim(1)? + EPS as f64)?.sqrt()?;
    x.broadcast_div(&rms)
}

struct PixelNorm;

/// `(images, channels, pixels per channel)` of a `(b, c, ...)` layout.
fn geometry(layout: &Layout) -> (usize, usize, usize) {
    let dims = layout.shape().dims();
    (dims[0], dims[1], dims[2..].iter().product())
}

/// `1 / r` at each of an image's `pixels`, from its `(channels, pixels)` values.
fn inverse_rms(x: &[f32], channels: usize, pixels: usize) -> Vec<f32> {
    let mut sums = vec![0f32; pixels];
    for plane in x.chunks_exact(pixels) {
        for (s, &v) in sums.iter_mut().zip(plane) {
            *s += v * v;
        }
    }
    let c = channels as f32;
    sums.iter().map(|s| 1.0 / (s / c + EPS).sqrt()).collect()
}

impl CustomOp1 for PixelNorm {
    fn name(&self) -> &'static str {
        "pixel-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(storage, layout, "pixel_norm input")?;
        let (_, channels, pixels) = geometry(layout);
        let per_image = (channels * pixels).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(per_image)
            .zip(x.par_chunks(per_image))
            .for_each(|(y, x)| {
                let inv = inverse_rms(x, channels, pixels);
                for (yp, xp) in y.chunks_exact_mut(pixels).zip(x.chunks_exact(pixels)) {
                    for ((y, &x), &i) in yp.iter_mut().zip(xp).zip(&inv) {
                        *y = x * i;
                    }
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let values = CpuValues::new("pixel_norm", &[x, y, &grad]);
        let xv = values.get(0, "pixel_norm input")?;
        let yv = values.get(1, "pixel_norm output")?;
        let gv = values.get(2, "pixel_norm output gradient")?;
        let (_, channels, pixels) = geometry(x.layout());
        let per_image = (channels * pixels).max(1);
        let c = channels as f32;
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(per_image)
            .zip(xv.par_chunks(per_image))
            .zip(yv.par_chunks(per_image).zip(gv.par_chunks(per_image)))
            .for_each(|((dx, x), (y, g))| {
                let inv = inverse_rms(x, channels, pixels);
                let mut dots = vec![0f32; pixels];
                for (yp, gp) in y.chunks_exact(pixels).zip(g.chunks_exact(pixels)) {
                    for ((d, &y), &g) in dots.iter_mut().zip(yp).zip(gp) {
                        *d += g * y;
                    }
                }
                dots.iter_mut().for_each(|d| *d /= c);
                for ((dp, yp), gp) in dx
                    .chunks_exact_mut(pixels)
                    .zip(y.chunks_exact(pixels))
                    .zip(g.chunks_exact(pixels))
                {
                    for ((((d, &y), &g), &dot), &i) in
                        dp.iter_mut().zip(yp).zip(gp).zip(&dots).zip(&inv)
                    {
                        *d = (g - y * dot) * i;
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::max_abs_diff;
    use crate::Rng;
    use candle_core::{Device, Var};

    /// Values and input gradients equal Candle's ops for images, flat features and one channel.
    #[test]
    fn matches_candles_ops_in_values_and_gradients() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let mut rng = Rng::new(61);
        for dims in [
            vec![3, 5, 4, 6],
            vec![4, 7],
            vec![2, 1, 3, 3],
            vec![1, 9, 1, 1],
        ] {
            let x = Var::from_tensor(&(rng.normal(dims.as_slice(), &Device::Cpu)? * 3.0)?)?;
            let probe = rng.normal(dims.as_slice(), &Device::Cpu)?;
            let fused = pixel_norm(&x)?;
            let reference = pixel_norm_reference(&x)?;
            assert!(max_abs_diff(&fused, &reference)? < 1e-6, "{dims:?} forward");
            let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
            let g_ref = (&reference * &probe)?.sum_all()?.backward()?;
            let dx = max_abs_diff(g_fused.get(&x).unwrap(), g_ref.get(&x).unwrap())?;
            assert!(dx < 1e-5, "{dims:?} dx: {dx}");
        }
        Ok(())
    }

    #[test]
    fn the_gradient_matches_finite_differences() -> Result<()> {
        let mut rng = Rng::new(62);
        let x = rng.normal((2, 4, 3, 3), &Device::Cpu)?;
        let probe = rng.normal((2, 4, 3, 3), &Device::Cpu)?;
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            pixel_norm,
            &x,
            &probe,
            &[0, 7, 20, 41, 71],
            1e-2,
            2e-2,
        )
    }
}
