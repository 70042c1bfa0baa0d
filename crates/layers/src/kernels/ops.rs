//! Custom ops where Candle is slow.
//!
//! `exclusive_cumsum`: Candle's `cumsum` multiplies by a triangular matrix, which costs
//! O(n^2) per row instead of O(n): for NADE's `(batch, 784, 500)` pre-activations that is
//! ~79 GFLOP per forward instead of 50 M additions. This is the linear-time scan on CPU, with
//! its gradient (the reverse exclusive scan); other devices fall back to Candle's matmul form.
//!
//! `skew_rows` / `unskew_rows`: the Diagonal BiLSTM's skew (row `r` shifted right by `r`).
//! Written as one `narrow` per row, the gradient of each is a zero-padded copy of the whole map
//! (O(H^2) copies); as a custom op each direction is one pass and its gradient is the other.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, Layout, Result, Shape, Tensor};

/// The values of a custom op's contiguous CPU input, as `T`; errors name the op and input.
pub fn cpu_slice<'a, T: candle_core::WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// The f32 values of contiguous CPU tensors inside a custom op's backward pass (which gets
/// tensors, not storages); holds their storages' read locks while alive.
pub struct CpuValues<'a> {
    op: &'static str,
    storages: Vec<(candle_core::StorageRef<'a>, &'a Layout)>,
}

impl<'a> CpuValues<'a> {
    pub fn new(op: &'static str, tensors: &[&'a Tensor]) -> Self {
        let storages = tensors.iter().map(|t| t.storage_and_layout()).collect();
        Self { op, storages }
    }

    /// The values of the `i`-th tensor; `what` names it in errors.
    pub fn get(&self, i: usize, what: &str) -> Result<&[f32]> {
        let (storage, layout) = &self.storages[i];
        match &**storage {
            candle_core::Storage::Cpu(s) => cpu_slice::<f32>(s, layout, what),
            _ => candle_core::bail!("{}: the fused backward needs CPU tensors", self.op),
        }
    }
}

thread_local! {
    /// Depth of [`differentiable_twice`] scopes on this thread.
    static TWICE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with genzoo's fused kernels off on this thread, so that every op it records is one
/// whose gradient can itself be differentiated: the critic's pass at WGAN-GP's interpolates and
/// the gradient taken from it. Everything outside (the generator, the critic's passes on real
/// and generated images) keeps the fused kernels, whose backward passes are first-order only.
/// The gradient of the penalty that the outer backward pass computes runs through these
/// recorded ops, never through a fused backward.
pub fn differentiable_twice<R>(f: impl FnOnce() -> R) -> R {
    struct Scope;
    impl Drop for Scope {
        fn drop(&mut self) {
            TWICE.with(|d| d.set(d.get() - 1));
        }
    }
    TWICE.with(|d| d.set(d.get() + 1));
    let _scope = Scope;
    f()
}

/// Whether genzoo's fused CPU kernels serve these tensors: f32 on the CPU, outside a
/// [`differentiable_twice`] scope; elsewhere callers use Candle's ops.
pub fn fused_cpu_f32(tensors: &[&Tensor]) -> bool {
    cpu_f32(tensors) && TWICE.with(|d| d.get() == 0)
}

/// Whether these are f32 tensors on the CPU inside a [`differentiable_twice`] scope: where a
/// kernel whose backward pass is itself recorded (the convolutions, the bias and activation)
/// still serves them.
pub fn twice_differentiable_cpu_f32(tensors: &[&Tensor]) -> bool {
    cpu_f32(tensors) && TWICE.with(|d| d.get() > 0)
}

/// f32 tensors on the CPU.
pub fn cpu_f32(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// For tests comparing a fused kernel with Candle's ops: fails if the fused path is off (so
/// the comparison would be Candle's ops against themselves).
#[cfg(test)]
pub(crate) fn assert_fused_path_on() {
    let probe = Tensor::zeros(1, DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(
        fused_cpu_f32(&[&probe]),
        "inside a differentiable_twice scope: the fused kernels are off"
    );
}

/// The largest absolute difference between two tensors of one shape (for tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Checks the gradient of `sum(f(x) * probe)` with respect to `x` at the flat `indices`
/// against central differences of step `step` (for tests of the fused kernels): the analytic
/// gradient comes from the fused backward pass, the differences from the fused forward.
#[cfg(test)]
pub(crate) fn assert_gradient_matches_finite_differences(
    f: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Tensor,
    probe: &Tensor,
    indices: &[usize],
    step: f32,
    tolerance: f32,
) -> Result<()> {
    let loss = |x: &Tensor| -> Result<f32> { (f(x)? * probe)?.sum_all()?.to_scalar::<f32>() };
    let var = candle_core::Var::from_tensor(x)?;
    let grads = (f(var.as_tensor())? * probe)?.sum_all()?.backward()?;
    let analytic = grads
        .get(var.as_tensor())
        .expect("the loss depends on x")
        .flatten_all()?
        .to_vec1::<f32>()?;
    let flat = x.flatten_all()?.to_vec1::<f32>()?;
    for &i in indices {
        let at = |delta: f32| -> Result<Tensor> {
            let mut v = flat.clone();
            v[i] += delta;
            Tensor::from_vec(v, x.shape(), x.device())
        };
        let numeric = (loss(&at(step)?)? - loss(&at(-step)?)?) / (2.0 * step);
        assert!(
            (numeric - analytic[i]).abs() < tolerance,
            "entry {i}: finite differences {numeric}, backward {}",
            analytic[i]
        );
    }
    Ok(())
}

/// `target = decay * target + (1 - decay) * value`: in place (one pass, no allocation) for
/// contiguous f32 CPU tensors, through Candle's ops otherwise. `target` must not be part of a
/// graph (a weight average, optimiser state).
pub fn blend_into(target: &mut Tensor, value: &Tensor, decay: f64) -> Result<()> {
    let value = value.detach();
    let fast = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
    if fast(target) && fast(&value) && target.shape() == value.shape() {
        return target.inplace_op2(&value, &Blend(decay as f32));
    }
    *target = ((&*target * decay)? + (value * (1.0 - decay))?)?;
    Ok(())
}

struct Blend(f32);

impl InplaceOp2 for Blend {
    fn name(&self) -> &'static str {
        "blend"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> Result<()> {
        let src = cpu_slice::<f32>(src, src_l, "blended value")?;
        let (start, end) = dst_l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("blend target must be contiguous".into()))?;
        let CpuStorage::F32(dst) = dst else {
            candle_core::bail!("blend target must be f32")
        };
        let decay = self.0;
        for (d, &s) in dst[start..end].iter_mut().zip(src) {
            *d = decay * *d + (1.0 - decay) * s;
        }
        Ok(())
    }
}

/// `y[.., i, ..] = sum_{j < i} x[.., j, ..]` along `dim` (the first element is 0), or the
/// reverse `sum_{j > i}` when `reverse`.
pub fn exclusive_cumsum(x: &Tensor, dim: usize, reverse: bool) -> Result<Tensor> {
    let x = x.contiguous()?;
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let dims = x.dims();
        let outer: usize = dims[..dim].iter().product();
        let inner: usize = dims[dim + 1..].iter().product();
        x.apply_op1(ExclusiveScan {
            dim,
            outer,
            len: dims[dim],
            inner,
            reverse,
        })
    } else {
        fallback(&x, dim, reverse)
    }
}

/// Candle's own ops: an inclusive cumsum minus the element (or its reverse).
fn fallback(x: &Tensor, dim: usize, reverse: bool) -> Result<Tensor> {
    let inclusive = blocked_cumsum(x, dim)?;
    if reverse {
        x.sum_keepdim(dim)?.broadcast_sub(&inclusive)
    } else {
        inclusive - x
    }
}

/// The inclusive cumsum along `dim` in blocks of about `sqrt(len)`: a cumsum inside each block,
/// plus the sums of the blocks before it.
///
/// Why: a cumsum by Candle's ops multiplies by a `len x len` triangle, `len^2` operations per
/// column where a scan needs `len`: 78 GFLOP for NADE's 784-long scan over a `(128, 784, 500)`
/// batch, 2.8 in blocks of 28. Measured on an H200 (`scripts/gpu_check.sh`, nade workload):
/// 4,621 -> 4,861 images/s and 4,695 -> 4,151 MiB, so the scan was not what keeps NADE at 0.14x
/// PyTorch's speed there.
fn blocked_cumsum(x: &Tensor, dim: usize) -> Result<Tensor> {
    let len = x.dim(dim)?;
    if len < 64 {
        return triangle_cumsum(x, dim);
    }
    let block = (len as f64).sqrt().ceil() as usize;
    let blocks = len.div_ceil(block);
    let padded = x.pad_with_zeros(dim, 0, blocks * block - len)?;
    let mut grouped_shape = padded.dims().to_vec();
    grouped_shape.splice(dim..=dim, [blocks, block]);
    let within = triangle_cumsum(&padded.reshape(grouped_shape)?, dim + 1)?; // (.., blocks, block, ..)
    let totals = within.narrow(dim + 1, block - 1, 1)?; // (.., blocks, 1, ..)
    let before = (triangle_cumsum(&totals, dim)? - &totals)?;
    within
        .broadcast_add(&before)?
        .reshape(padded.dims())?
        .narrow(dim, 0, len)
}

/// The inclusive cumsum along `dim` as one matrix product of the rows, moved last and made
/// contiguous, with an upper triangle of ones. Candle's own `cumsum` hands its matmul a
/// transposed view that the matmul refuses for some shapes (`(3, 8, 1, 2)` along dim 1).
fn triangle_cumsum(x: &Tensor, dim: usize) -> Result<Tensor> {
    let last = x.rank() - 1;
    let len = x.dim(dim)?;
    let moved = x.transpose(dim, last)?.contiguous()?;
    let moved_dims = moved.dims().to_vec();
    let rows = moved.elem_count() / len.max(1);
    let triangle = Tensor::triu2(len, x.dtype(), x.device())?;
    moved
        .reshape((rows, len))?
        .matmul(&triangle)?
        .reshape(moved_dims)?
        .transpose(dim, last)
}

struct ExclusiveScan {
    dim: usize,
    outer: usize,
    len: usize,
    inner: usize,
    reverse: bool,
}

impl ExclusiveScan {
    fn scan<T: Copy + Default + std::ops::AddAssign>(&self, src: &[T]) -> Vec<T> {
        let (len, inner) = (self.len, self.inner);
        let mut out = vec![T::default(); src.len()];
        let mut acc = vec![T::default(); inner];
        for o in 0..self.outer {
            acc.iter_mut().for_each(|a| *a = T::default());
            let base = o * len * inner;
            for step in 0..len {
                let i = if self.reverse { len - 1 - step } else { step };
                let row = base + i * inner;
                out[row..row + inner].copy_from_slice(&acc);
                for (a, v) in acc.iter_mut().zip(&src[row..row + inner]) {
                    *a += *v;
                }
            }
        }
        out
    }
}

impl CustomOp1 for ExclusiveScan {
    fn name(&self) -> &'static str {
        "exclusive-scan"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let what = "exclusive-scan's input";
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(self.scan(cpu_slice(storage, layout, what)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.scan(cpu_slice(storage, layout, what)?)),
            _ => candle_core::bail!("exclusive-scan supports f32 and f64"),
        };
        Ok((out, layout.shape().clone()))
    }

    /// The adjoint of an exclusive scan is the exclusive scan in the other direction.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(exclusive_cumsum(grad_res, self.dim, !self.reverse)?))
    }
}

/// `(b, c, H, W) -> (b, c, H, W + H - 1)`: row `r` shifted right by `r`, zeros elsewhere.
pub fn skew_rows(x: &Tensor) -> Result<Tensor> {
    let (_, _, rows, width) = x.dims4()?;
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Shear {
            rows,
            width,
            skew: true,
        })
    } else {
        skew_rows_reference(x)
    }
}

/// The inverse of [`skew_rows`]: `(b, c, H, W + H - 1) -> (b, c, H, W)`.
pub fn unskew_rows(x: &Tensor, width: usize) -> Result<Tensor> {
    let (_, _, rows, columns) = x.dims4()?;
    if columns != width + rows - 1 {
        candle_core::bail!(
            "unskew_rows: a skewed map of {rows} rows and width {width} has {} columns, not {columns}",
            width + rows - 1
        );
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Shear {
            rows,
            width,
            skew: false,
        })
    } else {
        unskew_rows_reference(x, width)
    }
}

/// [`skew_rows`] in Candle ops.
pub fn skew_rows_reference(x: &Tensor) -> Result<Tensor> {
    let rows = x.dim(2)?;
    let shifted = (0..rows)
        .map(|r| x.narrow(2, r, 1)?.pad_with_zeros(3, r, rows - 1 - r))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&shifted, 2)
}

/// [`unskew_rows`] in Candle ops.
pub fn unskew_rows_reference(x: &Tensor, width: usize) -> Result<Tensor> {
    let rows = x.dim(2)?;
    let back = (0..rows)
        .map(|r| x.narrow(2, r, 1)?.narrow(3, r, width))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&back, 2)
}

/// Skew (`skew`) or unskew of maps with `rows` rows of `width` unskewed columns.
struct Shear {
    rows: usize,
    width: usize,
    skew: bool,
}

impl CustomOp1 for Shear {
    fn name(&self) -> &'static str {
        "shear-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src: &[f32] = cpu_slice(storage, layout, "shear-rows' f32 input")?;
        let (b, c, _, _) = layout.shape().dims4()?;
        let (rows, width) = (self.rows, self.width);
        let columns = width + rows - 1;
        let maps = b * c;
        let (out_width, mut out) = if self.skew {
            (columns, vec![0f32; maps * rows * columns])
        } else {
            (width, vec![0f32; maps * rows * width])
        };
        for m in 0..maps {
            for r in 0..rows {
                let skewed = (m * rows + r) * columns + r;
                let plain = (m * rows + r) * width;
                if self.skew {
                    out[skewed..skewed + width].copy_from_slice(&src[plain..plain + width]);
                } else {
                    out[plain..plain + width].copy_from_slice(&src[skewed..skewed + width]);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, rows, out_width))))
    }

    /// Each is the other's adjoint.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(if self.skew {
            unskew_rows(grad_res, self.width)?
        } else {
            skew_rows(grad_res)?
        }))
    }
}

#[cfg(test)]
mod tests {
    /// In place (f32) and through ops (f64, and a non-contiguous f32 target) agree.
    #[test]
    fn blend_into_in_place_and_through_ops() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let value = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
        let start = Tensor::new(&[[10f32, 20.0], [30.0, 40.0]], &dev)?;
        let expected = [[7.3f32, 14.6], [21.9, 29.2]];
        let mut fast = start.copy()?;
        blend_into(&mut fast, &value, 0.7)?;
        let mut wide = start.to_dtype(DType::F64)?;
        blend_into(&mut wide, &value.to_dtype(DType::F64)?, 0.7)?;
        let mut strided = start.t()?.copy()?.t()?;
        blend_into(&mut strided, &value, 0.7)?;
        for got in [fast, wide.to_dtype(DType::F32)?, strided] {
            let got = got.to_vec2::<f32>()?;
            for (g, e) in got.iter().flatten().zip(expected.iter().flatten()) {
                assert!((g - e).abs() < 1e-5, "{got:?}");
            }
        }
        Ok(())
    }

    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn skew_and_unskew_match_candle_ops_and_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(2, 3, 4, 5), (1, 1, 1, 3), (1, 2, 5, 1)] {
            let x = crate::train::rng::Rng::new(8).normal((b, c, h, w), &dev)?;
            let r = crate::train::rng::Rng::new(9).normal((b, c, h, w + h - 1), &dev)?;
            let xv = Var::from_tensor(&x)?;
            let grads = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(Vec<f32>, Vec<f32>)> {
                let y = f(xv.as_tensor())?;
                let g = (&y * &r)?.sum_all()?.backward()?;
                Ok((
                    y.flatten_all()?.to_vec1()?,
                    g.get(&xv).unwrap().flatten_all()?.to_vec1()?,
                ))
            };
            let fast = grads(&|t| skew_rows(t))?;
            let slow = grads(&|t| skew_rows_reference(t))?;
            assert_eq!(fast, slow, "skew {b}x{c}x{h}x{w}");
            let s = skew_rows(&x)?;
            assert_eq!(
                unskew_rows(&s, w)?.flatten_all()?.to_vec1::<f32>()?,
                x.flatten_all()?.to_vec1::<f32>()?
            );
            let sv = Var::from_tensor(&s)?;
            let rx = crate::train::rng::Rng::new(10).normal((b, c, h, w), &dev)?;
            let back = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Vec<f32>> {
                let g = (f(sv.as_tensor())? * &rx)?.sum_all()?.backward()?;
                g.get(&sv).unwrap().flatten_all()?.to_vec1()
            };
            assert_eq!(
                back(&|t| unskew_rows(t, w))?,
                back(&|t| unskew_rows_reference(t, w))?,
                "unskew {b}x{c}x{h}x{w}"
            );
        }
        let e = unskew_rows(&Tensor::zeros((1, 1, 3, 4), DType::F32, &dev)?, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 6 columns, not 4"), "{e}");
        Ok(())
    }

    #[test]
    fn matches_the_definition_and_candles_cumsum() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24.0, &dev)?.reshape((2, 3, 4))?;
        for dim in 0..3 {
            for reverse in [false, true] {
                let ours = exclusive_cumsum(&x, dim, reverse)?;
                let theirs = fallback(&x, dim, reverse)?;
                let d = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert_eq!(d, 0.0, "dim {dim} reverse {reverse}");
            }
        }
        // Long enough for the blocked scan, whole blocks or not.
        for (shape, dim) in [
            ((3, 64, 2), 1),
            ((2, 5, 100), 2),
            ((130, 3, 1), 0),
            ((2, 784, 3), 1),
        ] {
            let x = crate::train::rng::Rng::new(5).normal(shape, &dev)?;
            for reverse in [false, true] {
                let ours = exclusive_cumsum(&x, dim, reverse)?;
                let theirs = fallback(&x, dim, reverse)?;
                let d = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "{shape:?} dim {dim} reverse {reverse}: {d}");
            }
        }
        let v = Tensor::new(&[1f32, 2.0, 3.0], &dev)?;
        assert_eq!(
            exclusive_cumsum(&v, 0, false)?.to_vec1::<f32>()?,
            vec![0.0, 1.0, 3.0]
        );
        assert_eq!(
            exclusive_cumsum(&v, 0, true)?.to_vec1::<f32>()?,
            vec![5.0, 3.0, 0.0]
        );
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, dim) in [
            ((1usize, 5usize, 3usize), 1usize),
            ((2, 5, 3), 1),
            ((4, 1, 3), 0),
            ((2, 3, 5), 2),
        ] {
            let init = crate::train::rng::Rng::new(3)
                .normal(shape, &dev)?
                .to_dtype(DType::F64)?;
            let w = crate::train::rng::Rng::new(4)
                .normal(shape, &dev)?
                .to_dtype(DType::F64)?;
            let x = Var::from_tensor(&init)?;
            let f = |t: &Tensor| -> Result<Tensor> {
                (exclusive_cumsum(t, dim, false)?.sqr()? * &w)?.sum_all()
            };
            let grad = f(x.as_tensor())?
                .backward()?
                .get(&x)
                .unwrap()
                .flatten_all()?
                .to_vec1::<f64>()?;
            let flat = init.flatten_all()?.to_vec1::<f64>()?;
            for i in 0..flat.len() {
                let eps = 1e-6;
                let mut p = flat.clone();
                p[i] += eps;
                let mut m = flat.clone();
                m[i] -= eps;
                let fp = f(&Tensor::from_vec(p, shape, &dev)?)?.to_scalar::<f64>()?;
                let fm = f(&Tensor::from_vec(m, shape, &dev)?)?.to_scalar::<f64>()?;
                let fd = (fp - fm) / (2.0 * eps);
                assert!(
                    (fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{shape:?} dim {dim} i {i}: {fd} vs {}",
                    grad[i]
                );
            }
        }
        Ok(())
    }
}
