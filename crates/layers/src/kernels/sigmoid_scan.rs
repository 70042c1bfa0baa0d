//! `out[n, d] = v[d] . sigmoid(sum_{j <= d} x[n, j] u[j])`: NADE's D conditionals in O(DH)
//! per image (Larochelle & Murray 2011, eq. 4, and its O(DH) gradient, section 3).
//!
//! Written with tensor ops, the running sums of every prefix are materialised: `(batch, D, H)`
//! contributions, their scan, the sigmoid and the product with `v`, each 200 MB for the
//! benchmark's batch of 128 x 784 x 500, and as many again in the backward pass. PyTorch's
//! NADE does the same and spends its step in page faults. The fused CPU op keeps one running
//! `H`-vector per image: the forward pass writes only `(batch, D)`; the backward pass recomputes
//! an image's D hidden vectors into a per-thread buffer and walks them in reverse, carrying
//! `sum_{d' >= d} dL/da_{d'}`. Images run in parallel, each thread with its own gradient sums.
//! Other devices, other dtypes and second-order gradients use the tensor formula, its scan as
//! one matrix product ([`sigmoid_scan_readout_by_product`]).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::ops::{cpu_slice, exclusive_cumsum, fused_cpu_f32, CpuValues};
use crate::kernels::reduce;
use crate::kernels::simd;

/// `x` `(batch, D)`, `u` `(D, H)`, `v` `(D, H)` -> `(batch, D)`.
pub fn sigmoid_scan_readout(x: &Tensor, u: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (batch, d) = x.dims2()?;
    let (du, h) = u.dims2()?;
    if du != d || v.dims2()? != (d, h) {
        candle_core::bail!(
            "sigmoid_scan_readout: expected u and v of shape ({d}, H) for x of shape ({batch}, {d}), found u {:?} and v {:?}",
            u.dims(),
            v.dims()
        );
    }
    if fused_cpu_f32(&[x, u, v]) {
        x.contiguous()?
            .apply_op3(&u.contiguous()?, &v.contiguous()?, SigmoidScan)
    } else {
        sigmoid_scan_readout_by_product(x, u, v)
    }
}

/// The tensor formula with the scan as one product: the contributions laid out `(D, batch H)`
/// and multiplied by the lower triangle of ones, `a = L c`, so that no pass broadcasts over the
/// `(batch, D, H)` activations but the two products with `u` and `v`.
///
/// Why: on CUDA the scan by Candle's ops (cumsums, broadcast sums and differences) made NADE's
/// step some 22 passes over 200 MB tensors, 77% of its GPU time (`scripts/gpu_profile.sh`, H200,
/// 2026-11-30); the product is one cuBLAS call of `2 D^2 batch H` operations. Not yet timed on
/// a GPU.
pub fn sigmoid_scan_readout_by_product(x: &Tensor, u: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (batch, d) = x.dims2()?;
    let h = u.dim(1)?;
    let contributions = x
        .t()?
        .contiguous()?
        .unsqueeze(2)?
        .broadcast_mul(&u.unsqueeze(1)?)?; // (D, b, H)
    let lower = Tensor::tril2(d, x.dtype(), x.device())?;
    let a = lower
        .matmul(&contributions.reshape((d, batch * h))?)?
        .reshape((d, batch, h))?;
    candle_nn::ops::sigmoid(&a)?
        .broadcast_mul(&v.unsqueeze(1)?)?
        .sum(2)? // (D, b)
        .t()
}

/// The same with Candle's ops, materialising `(batch, D, H)`.
pub fn sigmoid_scan_readout_reference(x: &Tensor, u: &Tensor, v: &Tensor) -> Result<Tensor> {
    let contributions = x.unsqueeze(2)?.broadcast_mul(&u.unsqueeze(0)?)?; // (b, D, H)
    let a = (exclusive_cumsum(&contributions, 1, false)? + &contributions)?; // inclusive scan
    candle_nn::ops::sigmoid(&a)?
        .broadcast_mul(&v.unsqueeze(0)?)?
        .sum(2) // (b, D)
}

struct SigmoidScan;

/// Scratch for one image: the running pre-activation and the hidden vector, both `H` long.
struct Scratch {
    a: Vec<f32>,
    hidden: Vec<f32>,
}

impl Scratch {
    fn new(h: usize) -> Self {
        Self {
            a: vec![0f32; h],
            hidden: vec![0f32; h],
        }
    }

    /// Calls `each(d, h_d)` for `h_d = sigmoid(sum_{j <= d} x_j u_j)`, `d` = 0, 1, ..
    fn hidden_states(&mut self, x: &[f32], u: &[f32], mut each: impl FnMut(usize, &[f32])) {
        let h = self.a.len();
        self.a.fill(0.0);
        for (d, &xd) in x.iter().enumerate() {
            if xd != 0.0 {
                simd::axpy(&mut self.a, xd, &u[d * h..(d + 1) * h]);
            }
            simd::sigmoid(&mut self.hidden, &self.a);
            each(d, &self.hidden);
        }
    }
}

impl CustomOp3 for SigmoidScan {
    fn name(&self) -> &'static str {
        "sigmoid-scan-readout"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        u: &CpuStorage,
        u_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, d) = x_layout.shape().dims2()?;
        let h = u_layout.shape().dims2()?.1;
        let x = cpu_slice::<f32>(x, x_layout, "sigmoid-scan input")?;
        let u = cpu_slice::<f32>(u, u_layout, "sigmoid-scan u")?;
        let v = cpu_slice::<f32>(v, v_layout, "sigmoid-scan v")?;
        let mut out = vec![0f32; batch * d];
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each_init(
            || Scratch::new(h),
            |scratch, (out, x)| {
                scratch.hidden_states(x, u, |j, hidden| {
                    out[j] = simd::dot(&v[j * h..(j + 1) * h], hidden)
                })
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((batch, d))))
    }

    /// With `a_d = sum_{j <= d} x_j u_j`, `h_d = sigmoid(a_d)`, `out_d = v_d . h_d`:
    /// `dv_d = g_d h_d`, `da_d = g_d v_d h_d (1 - h_d)`, `du_j = x_j sum_{d >= j} da_d`,
    /// `dx_j = u_j . sum_{d >= j} da_d`.
    fn bwd(
        &self,
        x: &Tensor,
        u: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (batch, d) = x.dims2()?;
        let h = u.dims2()?.1;
        let values = CpuValues::new("sigmoid-scan", &[x, u, v, &grad]);
        let xv = values.get(0, "sigmoid-scan input")?;
        let uv = values.get(1, "sigmoid-scan u")?;
        let vv = values.get(2, "sigmoid-scan v")?;
        let gv = values.get(3, "sigmoid-scan output gradient")?;

        let mut dx = vec![0f32; batch * d];
        // Images split into runs by the batch size alone; each run sums its own du and dv, and
        // the runs add up in order (the same bits on any number of threads).
        let per_run = reduce::items_per_part(batch);
        // Each run's sums are one buffer: du's values, then dv's.
        let runs: Vec<_> = dx.chunks_mut(per_run * d).enumerate().collect();
        let mut du = reduce::sum_parts_in_order(runs, 2 * d * h, |(r, dx)| {
            let mut sums = vec![0f32; 2 * d * h];
            let (du, dv) = sums.split_at_mut(d * h);
            let mut hidden = vec![0f32; d * h];
            let mut scratch = Scratch::new(h);
            let mut carry = vec![0f32; h];
            for (k, dx) in dx.chunks_mut(d).enumerate() {
                let n = r * per_run + k;
                let (x, g) = (&xv[n * d..(n + 1) * d], &gv[n * d..(n + 1) * d]);
                scratch.hidden_states(x, uv, |j, row| {
                    hidden[j * h..(j + 1) * h].copy_from_slice(row)
                });
                carry.fill(0.0);
                for j in (0..d).rev() {
                    let row = j * h..(j + 1) * h;
                    let hj = &hidden[row.clone()];
                    if g[j] != 0.0 {
                        simd::axpy(&mut dv[row.clone()], g[j], hj);
                        simd::sigmoid_grad_accumulate(&mut carry, g[j], &vv[row.clone()], hj);
                    }
                    if x[j] != 0.0 {
                        simd::axpy(&mut du[row.clone()], x[j], &carry);
                    }
                    dx[j] = simd::dot(&uv[row], &carry);
                }
            }
            sums
        });
        let dv = du.split_off(d * h);
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (batch, d), device)?),
            Some(Tensor::from_vec(du, (d, h), device)?),
            Some(Tensor::from_vec(dv, (d, h), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::{DType, Device, Var};

    use crate::kernels::ops::max_abs_diff as max_diff;

    /// Binary-and-zero inputs (the skipped additions) and real-valued ones.
    fn inputs(rng: &mut Rng, batch: usize, d: usize, binary: bool) -> Result<Tensor> {
        let x = rng.uniform((batch, d), &Device::Cpu)?;
        if binary {
            x.ge(0.6)?.to_dtype(DType::F32)
        } else {
            x.affine(2.0, -1.0)
        }
    }

    /// Output and the gradients of x, u and v equal the tensor formula's, for odd sizes,
    /// one image and several, more images than threads.
    #[test]
    fn matches_the_tensor_formula_in_values_and_gradients() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let mut rng = Rng::new(21);
        for (batch, d, h, binary) in [
            (1, 1, 1, false),
            (3, 13, 7, true),
            (5, 9, 33, false),
            (9, 17, 20, true),
        ] {
            let x = Var::from_tensor(&inputs(&mut rng, batch, d, binary)?)?;
            let u = Var::from_tensor(&rng.normal((d, h), &Device::Cpu)?)?;
            let v = Var::from_tensor(&rng.normal((d, h), &Device::Cpu)?)?;
            let probe = rng.normal((batch, d), &Device::Cpu)?;
            let fused = sigmoid_scan_readout(&x, &u, &v)?;
            let shape = (batch, d, h);
            let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
            // The materialising formula, and the one off the CPU (the scan as a product).
            for other in [
                sigmoid_scan_readout_reference(&x, &u, &v)?,
                sigmoid_scan_readout_by_product(&x, &u, &v)?,
            ] {
                assert!(max_diff(&fused, &other)? < 1e-5, "{shape:?} forward");
                let g_other = (&other * &probe)?.sum_all()?.backward()?;
                for (t, what) in [(&x, "x"), (&u, "u"), (&v, "v")] {
                    let (a, b) = (g_fused.get(t).unwrap(), g_other.get(t).unwrap());
                    let diff = max_diff(a, b)?;
                    assert!(diff < 1e-4, "{shape:?} d{what}: {diff}");
                }
            }
        }
        Ok(())
    }

    /// The gradient of u against central differences of the fused forward itself.
    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let mut rng = Rng::new(22);
        let (batch, d, h) = (2, 6, 5);
        let x = inputs(&mut rng, batch, d, false)?;
        let u = rng.normal((d, h), &Device::Cpu)?;
        let v = rng.normal((d, h), &Device::Cpu)?;
        let probe = rng.normal((batch, d), &Device::Cpu)?;
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |u| sigmoid_scan_readout(&x, u, &v),
            &u,
            &probe,
            &[0, 4, 11, 17, 29],
            1e-2,
            5e-3,
        )
    }

    #[test]
    fn mismatched_shapes_are_errors_that_name_them() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev)?;
        let u = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let v = Tensor::zeros((5, 3), DType::F32, &dev)?;
        let e = sigmoid_scan_readout(&x, &u, &v).unwrap_err().to_string();
        assert!(e.contains("(4, H)") && e.contains("[5, 3]"), "{e}");
        Ok(())
    }
}
