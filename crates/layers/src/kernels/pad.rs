//! Reflection padding with PyTorch's `nn.ReflectionPad2d(p)` semantics (the same `p` on all
//! four sides, `p` below the height and the width; the edge row or column is not repeated:
//! `[a b c]` padded by 2 is `[c b a b c b a]`), as CycleGAN's generator pads before its 7x7
//! convolutions and inside its residual blocks.
//!
//! Why a fused op: Candle has no reflection padding; its composition is two `index_select`s
//! with reflected indices, each a gather forward and an `index_add` backward. Here the
//! forward writes each padded plane once, and the backward ([`Fold`]) adds every padded
//! position's gradient back onto the position it was copied from, one pass per plane. The two
//! are each other's adjoints (both linear), so each one's gradient is the other and
//! gradients of any order (WGAN-GP) stay on the fused path, f32 or f64 on the CPU; other
//! devices and dtypes take Candle's composition ([`reflection_pad2d_reference`]).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::conv::Element;
use crate::kernels::ops::cpu_slice;

/// `x (b, c, h, w)` -> `(b, c, h + 2 pad, w + 2 pad)`, mirrored at the edges.
pub fn reflection_pad2d(x: &Tensor, pad: usize) -> Result<Tensor> {
    let (h, w) = check(x, pad)?;
    if pad == 0 {
        return Ok(x.clone());
    }
    if !fused_path(x) {
        return reflection_pad2d_reference(x, pad);
    }
    x.contiguous()?.apply_op1(Reflection {
        pad,
        h,
        w,
        fold: false,
    })
}

/// The same padding through Candle's ops: `index_select` with reflected indices on the rows,
/// then on the columns (differentiable to any order on every device).
pub fn reflection_pad2d_reference(x: &Tensor, pad: usize) -> Result<Tensor> {
    let (h, w) = check(x, pad)?;
    let indices = |len: usize| -> Result<Tensor> {
        let reflected: Vec<u32> = (0..len + 2 * pad)
            .map(|i| reflect(i, pad, len) as u32)
            .collect();
        Tensor::new(reflected.as_slice(), x.device())
    };
    x.index_select(&indices(h)?, 2)?
        .index_select(&indices(w)?, 3)
}

/// `(h, w)` of a `(b, c, h, w)` input that `pad` fits; errors name the input's dims.
fn check(x: &Tensor, pad: usize) -> Result<(usize, usize)> {
    let &[_, _, h, w] = x.dims() else {
        candle_core::bail!(
            "reflection_pad2d: expected an input (b, c, h, w), got {:?}",
            x.dims()
        )
    };
    if pad >= h || pad >= w {
        candle_core::bail!(
            "reflection_pad2d: pad {pad} must be less than the height {h} and the width {w} of \
             input {:?}",
            x.dims()
        );
    }
    Ok((h, w))
}

/// f32 and f64 on the CPU: being linear, the op has no first-order-only restriction.
fn fused_path(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// The source index of padded position `i` along an axis of `len` values padded by `pad`.
#[inline]
fn reflect(i: usize, pad: usize, len: usize) -> usize {
    if i < pad {
        pad - i
    } else if i - pad >= len {
        2 * (len - 1) + pad - i
    } else {
        i - pad
    }
}

/// The padding (`fold: false`) of planes of `h x w`, or its adjoint (`fold: true`), which
/// maps a padded gradient `(.., h + 2 pad, w + 2 pad)` back to `(.., h, w)`.
struct Reflection {
    pad: usize,
    h: usize,
    w: usize,
    fold: bool,
}

impl Reflection {
    fn padded(&self) -> (usize, usize) {
        (self.h + 2 * self.pad, self.w + 2 * self.pad)
    }

    /// Planes per parallel task: at least ~16K values.
    fn planes_per_task(&self) -> usize {
        let (hp, wp) = self.padded();
        (1 << 14) / (hp * wp) + 1
    }

    /// Each padded row is the reflected source row, with its columns reflected.
    fn pad_plane<T: Element>(&self, src: &[T], dst: &mut [T]) {
        let (p, w) = (self.pad, self.w);
        let (_, wp) = self.padded();
        for (r, row) in dst.chunks_mut(wp).enumerate() {
            let from = &src[reflect(r, p, self.h) * w..][..w];
            row[p..p + w].copy_from_slice(from);
            for j in 0..p {
                row[j] = from[p - j];
                row[p + w + j] = from[w - 2 - j];
            }
        }
    }

    /// Adds each padded row's gradient onto the row and columns it was copied from.
    fn fold_plane<T: Element>(&self, src: &[T], dst: &mut [T]) {
        let (p, w) = (self.pad, self.w);
        let (_, wp) = self.padded();
        dst.fill(T::default());
        for (r, row) in src.chunks(wp).enumerate() {
            let to = &mut dst[reflect(r, p, self.h) * w..][..w];
            for (t, &g) in to.iter_mut().zip(&row[p..p + w]) {
                *t += g;
            }
            for j in 0..p {
                to[p - j] += row[j];
                to[w - 2 - j] += row[p + w + j];
            }
        }
    }

    fn run<T: Element>(&self, src: &[T]) -> Vec<T> {
        let (hp, wp) = self.padded();
        let (plane_in, plane_out) = if self.fold {
            (hp * wp, self.h * self.w)
        } else {
            (self.h * self.w, hp * wp)
        };
        let mut out = vec![T::default(); src.len() / plane_in * plane_out];
        out.par_chunks_mut(plane_out)
            .zip(src.par_chunks(plane_in))
            .with_min_len(self.planes_per_task())
            .for_each(|(dst, src)| {
                if self.fold {
                    self.fold_plane(src, dst)
                } else {
                    self.pad_plane(src, dst)
                }
            });
        out
    }

    fn out_shape(&self, input: &Shape) -> Result<Shape> {
        let (b, c, _, _) = input.dims4()?;
        let (hp, wp) = self.padded();
        Ok(if self.fold {
            Shape::from((b, c, self.h, self.w))
        } else {
            Shape::from((b, c, hp, wp))
        })
    }
}

impl CustomOp1 for Reflection {
    fn name(&self) -> &'static str {
        if self.fold {
            "reflection-pad2d-fold"
        } else {
            "reflection-pad2d"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = self.out_shape(layout.shape())?;
        let what = "reflection-pad2d input";
        let out = match storage {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.run(cpu_slice::<f32>(storage, layout, what)?))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.run(cpu_slice::<f64>(storage, layout, what)?))
            }
            _ => candle_core::bail!("{}: f32 or f64 input", self.name()),
        };
        Ok((out, shape))
    }

    /// Padding and folding are each other's adjoints.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let adjoint = Reflection {
            fold: !self.fold,
            ..*self
        };
        Ok(Some(grad.contiguous()?.apply_op1(adjoint)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::ops::{assert_gradient_matches_finite_differences, max_abs_diff};
    use crate::Rng;
    use candle_core::{Device, Var};

    /// PyTorch's `nn.ReflectionPad2d` on small maps (values printed by torch 2.15).
    #[test]
    fn values_match_pytorch_on_small_maps() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[[[1f32, 2., 3.], [4., 5., 6.]]]], &dev)?;
        let want = [
            [5f32, 4., 5., 6., 5.],
            [2., 1., 2., 3., 2.],
            [5., 4., 5., 6., 5.],
            [2., 1., 2., 3., 2.],
        ];
        for y in [reflection_pad2d(&x, 1)?, reflection_pad2d_reference(&x, 1)?] {
            assert_eq!(y.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?, want);
        }
        let x = Tensor::arange(0f32, 12., &dev)?.reshape((1, 1, 3, 4))?;
        let row = |r: [f32; 8]| r.to_vec();
        let (a, b, c) = (
            row([10., 9., 8., 9., 10., 11., 10., 9.]),
            row([6., 5., 4., 5., 6., 7., 6., 5.]),
            row([2., 1., 0., 1., 2., 3., 2., 1.]),
        );
        let want = vec![a.clone(), b.clone(), c.clone(), b.clone(), a, b, c];
        let y = reflection_pad2d(&x, 2)?.squeeze(0)?.squeeze(0)?;
        assert_eq!(y.to_vec2::<f32>()?, want);
        Ok(())
    }

    /// Values and input gradients of the fused op equal Candle's composition, in f32 and
    /// f64, and the gradient of the gradient (the fold's backward) too.
    #[test]
    fn fused_matches_composed_in_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(31);
        for (dims, pad) in [
            ((2, 3, 5, 7), 1),
            ((1, 2, 4, 4), 3),
            ((3, 1, 2, 9), 1),
            ((2, 2, 8, 3), 2),
            ((1, 1, 1, 1), 0),
        ] {
            for dtype in [DType::F32, DType::F64] {
                let x = Var::from_tensor(&rng.normal(dims, &dev)?.to_dtype(dtype)?)?;
                let fused = reflection_pad2d(x.as_tensor(), pad)?;
                let composed = reflection_pad2d_reference(x.as_tensor(), pad)?;
                assert_eq!(fused.dims(), composed.dims());
                let to32 = |t: &Tensor| t.to_dtype(DType::F32);
                assert_eq!(max_abs_diff(&to32(&fused)?, &to32(&composed)?)?, 0.0);
                let probe = rng.normal(fused.dims(), &dev)?.to_dtype(dtype)?;
                let gf = (&fused * &probe)?.sum_all()?.backward()?;
                let gc = (&composed * &probe)?.sum_all()?.backward()?;
                let (gf, gc) = (gf.get(&x).unwrap(), gc.get(&x).unwrap());
                let d = max_abs_diff(&to32(gf)?, &to32(gc)?)?;
                assert!(
                    d < 1e-5,
                    "{dims:?} pad {pad} {dtype:?}: gradient differs by {d}"
                );
                // The fold's own gradient (a padding of the probe's gradient).
                let g = Var::from_tensor(&probe)?;
                let folded = Reflection {
                    pad,
                    h: dims.2,
                    w: dims.3,
                    fold: true,
                };
                if pad > 0 {
                    let back = g.as_tensor().apply_op1(folded)?;
                    let r = rng.normal(dims, &dev)?.to_dtype(dtype)?;
                    let gg = (back * &r)?.sum_all()?.backward()?;
                    let want = reflection_pad2d_reference(&r, pad)?;
                    let d = max_abs_diff(&to32(gg.get(&g).unwrap())?, &to32(&want)?)?;
                    assert!(
                        d < 1e-6,
                        "{dims:?} pad {pad}: fold's gradient differs by {d}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let mut rng = Rng::new(32);
        let x = rng.normal((2, 2, 3, 4), &Device::Cpu)?;
        let probe = rng.normal((2, 2, 7, 8), &Device::Cpu)?;
        assert_gradient_matches_finite_differences(
            |x| reflection_pad2d(x, 2),
            &x,
            &probe,
            &[0, 1, 5, 11, 12, 30, 47],
            1e-2,
            1e-3,
        )
    }

    #[test]
    fn bad_pad_sizes_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 3, 5), DType::F32, &dev)?;
        for (pad, f) in [
            (3, reflection_pad2d as fn(&Tensor, usize) -> Result<Tensor>),
            (3, reflection_pad2d_reference),
            (7, reflection_pad2d),
        ] {
            let e = f(&x, pad).unwrap_err().to_string();
            let want = format!(
                "pad {pad} must be less than the height 3 and the width 5 of input [1, 2, 3, 5]"
            );
            assert!(e.contains(&want), "{e}");
        }
        let e = reflection_pad2d(&Tensor::zeros((2, 3, 4), DType::F32, &dev)?, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(b, c, h, w), got [2, 3, 4]"), "{e}");
        Ok(())
    }
}
