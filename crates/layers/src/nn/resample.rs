//! Resampling by 2 that differentiates correctly to any order.
//!
//! Candle 0.11's `upsample_nearest2d` backward pass assigns its gradient to the input instead
//! of adding it (`*sum_grad = conv_sum` in `backprop.rs`): when the input also feeds another
//! op, that op's gradient is lost. A Progressive GAN's generator upsamples the same features
//! into the new block and into the fading-out toRGB, so its gradients were wrong at every
//! alpha between 0 and 1 (the parity test of the fade caught it). `avg_pool2d`'s backward pass
//! upsamples the gradient with that op, so a second-order pass through it (WGAN-GP) is exposed
//! alike. Both are built here as genzoo's own ops on the CPU (`kernels::resample`: each one's
//! gradient is the other, which adds up as every gradient does) and from a reshape, a
//! broadcast and a sum elsewhere, whose gradients Candle adds up correctly, on every device.

use candle_core::{Result, Tensor};

use crate::kernels::ops::cpu_f32;
use crate::kernels::resample::{pool, spread};

/// Nearest-neighbour upsampling by 2: `(b, c, h, w) -> (b, c, 2h, 2w)`, each value repeated
/// over a 2 x 2 block (the zoo's `Upscale2d`). f32 on the CPU: one fused pass
/// (`kernels::resample`).
pub fn upscale2d(x: &Tensor) -> Result<Tensor> {
    if cpu_f32(&[x]) {
        return spread(x, 1.0);
    }
    upscale2d_reference(x)
}

/// 2 x 2 average pooling: `(b, c, h, w) -> (b, c, h / 2, w / 2)` for even `h` and `w`.
pub fn downscale2d(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("downscale2d: {h} x {w} does not halve");
    }
    if cpu_f32(&[x]) {
        return pool(x, 0.25);
    }
    downscale2d_reference(x)
}

/// The adjoint of [`downscale2d`] (the gradient it passes back): each value times 1/4 over its
/// 2 x 2 block.
pub fn downscale2d_adjoint(g: &Tensor) -> Result<Tensor> {
    if cpu_f32(&[g]) {
        return spread(g, 0.25);
    }
    upscale2d_reference(g)? * 0.25
}

/// [`upscale2d`] from Candle's reshape and broadcast (every device).
fn upscale2d_reference(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// [`downscale2d`] from Candle's reshape and sums (every device).
fn downscale2d_reference(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("downscale2d: {h} x {w} does not halve");
    }
    let blocks = x.reshape((b, c, h / 2, 2, w / 2, 2))?;
    (blocks.sum_keepdim(5)?.sum_keepdim(3)? * 0.25)?.reshape((b, c, h / 2, w / 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// `L = sum(p * up(x)) + sum(q * x)`: x feeds the upsampling and another op, and its
    /// gradient is the sum of both, `sumpool(p) + q`. Candle's own op drops `q` (the bug this
    /// module exists for: the assertion on it fails once Candle adds the two, and then this
    /// module can go).
    #[test]
    fn the_gradient_of_an_input_used_twice_adds_both_uses() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(7);
        let x = Var::from_tensor(&rng.normal((2, 3, 4, 5), &dev)?)?;
        let p = rng.normal((2, 3, 8, 10), &dev)?;
        let q = rng.normal((2, 3, 4, 5), &dev)?;
        let want = ((downscale2d(&p)? * 4.0)? + &q)?;
        let loss = |up: &Tensor| -> Result<Tensor> {
            (up * &p)?.sum_all()? + (x.as_tensor() * &q)?.sum_all()?
        };
        let ours = loss(&upscale2d(x.as_tensor())?)?.backward()?;
        assert!(max_diff(ours.get(x.as_tensor()).unwrap(), &want)? < 1e-5);
        let candles = loss(&x.as_tensor().upsample_nearest2d(8, 10)?)?.backward()?;
        let candles = candles.get(x.as_tensor()).unwrap();
        assert!(
            max_diff(candles, &want)? > 0.1,
            "Candle's upsample_nearest2d now adds its gradient: use it again"
        );
        Ok(())
    }

    #[test]
    fn values_match_candles_ops() -> Result<()> {
        let x = Rng::new(8).normal((2, 3, 6, 4), &Device::Cpu)?;
        assert_eq!(
            max_diff(&upscale2d(&x)?, &x.upsample_nearest2d(12, 8)?)?,
            0.0
        );
        assert!(max_diff(&downscale2d(&x)?, &x.avg_pool2d(2)?)? < 1e-6);
        // The compositions other devices take, checked here on the CPU.
        assert_eq!(
            max_diff(&upscale2d_reference(&x)?, &x.upsample_nearest2d(12, 8)?)?,
            0.0
        );
        assert!(max_diff(&downscale2d_reference(&x)?, &x.avg_pool2d(2)?)? < 1e-6);
        let adjoint = (x.upsample_nearest2d(12, 8)? * 0.25)?;
        assert!(max_diff(&downscale2d_adjoint(&x)?, &adjoint)? < 1e-7);
        assert!(downscale2d(&Tensor::zeros(
            (1, 1, 3, 4),
            candle_core::DType::F32,
            &Device::Cpu
        )?)
        .is_err());
        Ok(())
    }
}
