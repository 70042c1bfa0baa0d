//! Resampling by 2 as two fused CPU ops, each the other's adjoint: `spread` (nearest-neighbour
//! upsampling, each value times `scale` over a 2 x 2 block) and `pool` (each 2 x 2 block's sum
//! times `scale`). With `scale = 1` and `0.25` they are the Progressive GAN's `upscale2d` and
//! `downscale2d` (`nn::resample`).
//!
//! Why: built from Candle's reshape, broadcast and sum, the pool is a reduction over two strided
//! dimensions and the spread a strided copy, and a Progressive GAN step at 32 x 32 spent 5% of
//! its time in them (`perf record`, one thread, 2026-12-02). Here each is one pass per plane.
//! Both are linear and each one's backward pass is the other op, recorded like any op, so they
//! serve second-order passes (WGAN-GP's penalty through a critic's pools) as well.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::ops::{cpu_f32, cpu_slice};

/// `(b, c, h, w) -> (b, c, 2h, 2w)`: `y[2i + di][2j + dj] = scale x[i][j]`. f32 on the CPU.
pub(crate) fn spread(x: &Tensor, scale: f32) -> Result<Tensor> {
    check_cpu_f32(x, "spread")?;
    x.contiguous()?.apply_op1(Resample {
        kind: Kind::Spread,
        scale,
    })
}

/// `(b, c, h, w) -> (b, c, h / 2, w / 2)` for even `h` and `w`: `y[i][j] = scale` times the sum
/// of `x[2i..2i + 2][2j..2j + 2]`. f32 on the CPU.
pub(crate) fn pool(x: &Tensor, scale: f32) -> Result<Tensor> {
    check_cpu_f32(x, "pool")?;
    let (_, _, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("pool: {h} x {w} does not halve");
    }
    x.contiguous()?.apply_op1(Resample {
        kind: Kind::Pool,
        scale,
    })
}

fn check_cpu_f32(x: &Tensor, op: &str) -> Result<()> {
    if !cpu_f32(&[x]) {
        candle_core::bail!(
            "{op}: the fused resampling takes f32 on the CPU, found {:?} on {:?}",
            x.dtype(),
            x.device()
        );
    }
    x.dims4().map(|_| ())
}

#[derive(Clone, Copy)]
enum Kind {
    Spread,
    Pool,
}

struct Resample {
    kind: Kind,
    scale: f32,
}

/// Planes per parallel task: enough values that a task outweighs its scheduling.
fn planes_per_task(plane: usize) -> usize {
    (16_384 / plane.max(1)).max(1)
}

/// One plane `(h, w)` into its `(2h, 2w)` spread.
fn spread_plane(x: &[f32], w: usize, scale: f32, y: &mut [f32]) {
    for (row, out) in x.chunks_exact(w).zip(y.chunks_exact_mut(4 * w)) {
        let (top, bottom) = out.split_at_mut(2 * w);
        for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
            pair.fill(scale * v);
        }
        bottom.copy_from_slice(top);
    }
}

/// One plane `(h, w)` into its `(h / 2, w / 2)` pool.
fn pool_plane(x: &[f32], w: usize, scale: f32, y: &mut [f32]) {
    for (rows, out) in x.chunks_exact(2 * w).zip(y.chunks_exact_mut(w / 2)) {
        let (top, bottom) = rows.split_at(w);
        for ((o, t), b) in out
            .iter_mut()
            .zip(top.chunks_exact(2))
            .zip(bottom.chunks_exact(2))
        {
            *o = scale * ((t[0] + t[1]) + (b[0] + b[1]));
        }
    }
}

impl CustomOp1 for Resample {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Spread => "spread2",
            Kind::Pool => "pool2",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(storage, layout, self.name())?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let (shape, out_plane) = match self.kind {
            Kind::Spread => (Shape::from((b, c, 2 * h, 2 * w)), 4 * h * w),
            Kind::Pool => (Shape::from((b, c, h / 2, w / 2)), h * w / 4),
        };
        let in_plane = h * w;
        let mut y = vec![0f32; b * c * out_plane];
        if in_plane == 0 {
            return Ok((CpuStorage::F32(y), shape));
        }
        let per_task = planes_per_task(in_plane);
        let (kind, scale) = (self.kind, self.scale);
        y.par_chunks_mut(per_task * out_plane.max(1))
            .zip(x.par_chunks(per_task * in_plane))
            .for_each(|(y, x)| {
                for (y, x) in y
                    .chunks_exact_mut(out_plane.max(1))
                    .zip(x.chunks_exact(in_plane))
                {
                    match kind {
                        Kind::Spread => spread_plane(x, w, scale, y),
                        Kind::Pool => pool_plane(x, w, scale, y),
                    }
                }
            });
        Ok((CpuStorage::F32(y), shape))
    }

    /// The adjoint: a spread's gradient is the pool of its output gradient and the reverse,
    /// at the same scale.
    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(match self.kind {
            Kind::Spread => pool(grad, self.scale)?,
            Kind::Pool => spread(grad, self.scale)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::max_abs_diff;
    use crate::Rng;
    use candle_core::{Device, Var};

    /// The same with Candle's ops.
    fn spread_reference(x: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        x.reshape((b, c, h, 1, w, 1))?
            .broadcast_as((b, c, h, 2, w, 2))?
            .reshape((b, c, 2 * h, 2 * w))?
            * scale
    }

    fn pool_reference(x: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let blocks = x.reshape((b, c, h / 2, 2, w / 2, 2))?;
        (blocks.sum_keepdim(5)?.sum_keepdim(3)? * scale)?.reshape((b, c, h / 2, w / 2))
    }

    /// Values and input gradients equal Candle's ops at two scales, for a batch of planes,
    /// one plane, more planes than one task takes, and a map of 2 x 2.
    #[test]
    fn matches_candles_ops_in_values_and_gradients() -> Result<()> {
        let mut rng = Rng::new(5);
        for dims in [(2, 3, 4, 6), (1, 1, 8, 2), (3, 40, 16, 16), (2, 2, 2, 2)] {
            let (b, c, h, w) = dims;
            for scale in [1.0f32, 0.25] {
                let x = Var::from_tensor(&rng.normal(dims, &Device::Cpu)?)?;
                let up_probe = rng.normal((b, c, 2 * h, 2 * w), &Device::Cpu)?;
                let down_probe = rng.normal((b, c, h / 2, w / 2), &Device::Cpu)?;
                let s = scale as f64;
                let cases: [(Tensor, Tensor, &Tensor); 2] = [
                    (spread(&x, scale)?, spread_reference(&x, s)?, &up_probe),
                    (pool(&x, scale)?, pool_reference(&x, s)?, &down_probe),
                ];
                for (fused, reference, probe) in cases {
                    assert!(max_abs_diff(&fused, &reference)? < 1e-6, "{dims:?} {scale}");
                    let g = (&fused * probe)?.sum_all()?.backward()?;
                    let g_ref = (&reference * probe)?.sum_all()?.backward()?;
                    let (g, g_ref) = (g.get(&x).unwrap(), g_ref.get(&x).unwrap());
                    assert!(max_abs_diff(g, g_ref)? < 1e-5, "{dims:?} {scale} gradient");
                }
            }
        }
        Ok(())
    }

    /// `<spread(x), y> = <x, pool(y)>`: each is the other's adjoint, which is what makes the
    /// backward passes right to every order.
    #[test]
    fn spread_and_pool_are_adjoint() -> Result<()> {
        let mut rng = Rng::new(6);
        let x = rng.normal((2, 3, 5, 7), &Device::Cpu)?;
        let y = rng.normal((2, 3, 10, 14), &Device::Cpu)?;
        let left = (spread(&x, 0.25)? * &y)?.sum_all()?.to_scalar::<f32>()?;
        let right = (&x * pool(&y, 0.25)?)?.sum_all()?.to_scalar::<f32>()?;
        assert!(
            (left - right).abs() < 1e-4 * left.abs().max(1.0),
            "{left} {right}"
        );
        Ok(())
    }

    #[test]
    fn bad_input_is_refused_by_name() -> Result<()> {
        let odd = Tensor::zeros((1, 1, 3, 4), candle_core::DType::F32, &Device::Cpu)?;
        let err = pool(&odd, 0.25).unwrap_err().to_string();
        assert!(err.contains("3 x 4 does not halve"), "{err}");
        let f64s = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F64, &Device::Cpu)?;
        let err = spread(&f64s, 1.0).unwrap_err().to_string();
        assert!(err.contains("spread") && err.contains("F64"), "{err}");
        let flat = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu)?;
        assert!(pool(&flat, 1.0).is_err());
        Ok(())
    }
}
