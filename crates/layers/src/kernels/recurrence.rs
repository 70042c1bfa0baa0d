//! The LSTM recurrence of the PixelRNNs (van den Oord et al. 2016, eq. 3) as one op.
//!
//! Both PixelRNN layers run an LSTM along a sequence of slices (rows for the Row LSTM, skewed
//! columns for the Diagonal BiLSTM). The input-to-state part is computed for every slice up
//! front; the state-to-state part is a 1-D convolution of the previous slice's hidden state:
//!
//! `[o, f, i, g]_s = x_s + sum_k W_k h_{s-1}[l + k - pad]`, `c_s = f c_{s-1} + i g`,
//! `h_s = o tanh(c_s)`.
//!
//! Written with Candle ops, every slice is a `narrow` whose gradient is a zero-padded copy of the
//! whole input, so a layer's backward pass costs O(S^2) copies (S slices) and the Diagonal
//! BiLSTM spent most of its step there. [`lstm_scan`] is a CPU custom op with the whole forward
//! and backward-through-time in linear time, parallel over the batch; other devices and dtypes
//! use [`lstm_scan_reference`], the same recurrence in Candle ops.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use candle_nn::ops::sigmoid;
use gemm::Parallelism;

use crate::kernels::conv::matmul;
use crate::kernels::ops::cpu_slice;
use crate::kernels::reduce;
use crate::kernels::simd;
use rayon::prelude::*;

/// The LSTM update from pre-activations `gates (b, 4h, ...)` ordered `[o, f, i, g]`:
/// `c = f * c_prev + i * g`, `h = o * tanh(c)`. Returns `(h, c)`.
pub fn lstm_update(gates: &Tensor, c_prev: &Tensor, hidden: usize) -> Result<(Tensor, Tensor)> {
    let o = sigmoid(&gates.narrow(1, 0, hidden)?)?;
    let f = sigmoid(&gates.narrow(1, hidden, hidden)?)?;
    let i = sigmoid(&gates.narrow(1, 2 * hidden, hidden)?)?;
    let g = gates.narrow(1, 3 * hidden, hidden)?.tanh()?;
    let c = ((f * c_prev)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Ok((h, c))
}

/// Runs the recurrence: `input_gates (b, S, 4h, L)` (slice `s`'s input-to-state
/// pre-activations), `kernel (4h, h, K)` (tap `k` reads position `l + k - pad` of the previous
/// slice's state, zero outside). Returns the hidden states `(b, S, h, L)`; the state before the
/// first slice is zero.
pub fn lstm_scan(input_gates: &Tensor, kernel: &Tensor, pad: usize) -> Result<Tensor> {
    let (_, _, gates, _) = input_gates.dims4()?;
    let (kernel_gates, hidden, taps) = kernel.dims3()?;
    if gates != 4 * hidden || kernel_gates != gates || pad >= taps {
        candle_core::bail!(
            "lstm_scan: input gates {:?} and kernel {:?} (pad {pad}) do not fit: expected (b, S, 4h, L) and (4h, h, K)",
            input_gates.dims(),
            kernel.dims()
        );
    }
    let fast = input_gates.device().is_cpu()
        && input_gates.dtype() == DType::F32
        && kernel.dtype() == DType::F32;
    if !fast {
        return lstm_scan_reference(input_gates, kernel, pad);
    }
    let op = LstmScan { hidden, taps, pad };
    // (b, S, 2, h, L): hidden and cell states; the cell states serve the backward pass.
    let states = input_gates
        .contiguous()?
        .apply_op2(&kernel.contiguous()?, op)?;
    states.narrow(2, 0, 1)?.squeeze(2)
}

/// [`lstm_scan`] in Candle ops, slice by slice.
pub fn lstm_scan_reference(input_gates: &Tensor, kernel: &Tensor, pad: usize) -> Result<Tensor> {
    let (b, slices, _, len) = input_gates.dims4()?;
    let (_, hidden, taps) = kernel.dims3()?;
    let zeros = Tensor::zeros((b, hidden, len), input_gates.dtype(), input_gates.device())?;
    let (mut h, mut c) = (zeros.clone(), zeros);
    // Each tap's weights `(b, 4h, h)`, made once: a copy per image, not a broadcast view,
    // because Candle's CUDA matmul refuses a batch stride of 0 (the CPU's accepts it).
    let taps_weights = (0..taps)
        .map(|k| {
            kernel
                .narrow(2, k, 1)?
                .squeeze(2)?
                .broadcast_left(b)?
                .contiguous()
        })
        .collect::<Result<Vec<_>>>()?;
    let mut states = Vec::with_capacity(slices);
    for s in 0..slices {
        let mut gates = input_gates.narrow(1, s, 1)?.squeeze(1)?; // (b, 4h, L)
        if s > 0 {
            let padded = h.pad_with_zeros(2, pad, taps - 1 - pad)?; // (b, h, L + K - 1)
            for (k, w) in taps_weights.iter().enumerate() {
                let shifted = padded.narrow(2, k, len)?.contiguous()?;
                gates = (gates + w.matmul(&shifted)?)?;
            }
        }
        (h, c) = lstm_update(&gates, &c, hidden)?;
        states.push(h.clone());
    }
    Tensor::stack(&states, 1) // (b, S, h, L)
}

struct LstmScan {
    hidden: usize,
    taps: usize,
    pad: usize,
}

/// The gates `(o, f, i, g)` of `pre (4, state)` in place: sigmoid for o, f, i and tanh for g.
/// Returns `(o f i, g)`.
fn activate_gates(pre: &mut [f32], state_size: usize) -> (&[f32], &[f32]) {
    let (ofi, g) = pre.split_at_mut(3 * state_size);
    simd::sigmoid_in_place(ofi);
    simd::tanh_in_place(g);
    (ofi, g)
}

impl LstmScan {
    /// Adds `sum_k W_k h_prev[l + k - pad]` to `pre (4h, L)`: one matrix product
    /// `W (4h, h*K) @ shifted (h*K, L)`, the kernel's own layout against the shifted states.
    fn add_state_to_state(
        &self,
        kernel: &[f32],
        h_prev: &[f32],
        pre: &mut [f32],
        len: usize,
        shifted: &mut Vec<f32>,
    ) {
        let hk = self.hidden * self.taps;
        self.shift_states(h_prev, len, shifted);
        matmul(
            (4 * self.hidden, len, hk),
            pre,
            true,
            kernel,
            (hk, 1),
            shifted,
            (len, 1),
            Parallelism::None,
        );
    }

    /// `shifted (h*K, L)`: row `j K + k` is `h_prev[j]` read at `l + k - pad` (zero outside).
    fn shift_states(&self, h_prev: &[f32], len: usize, shifted: &mut Vec<f32>) {
        shifted.clear();
        shifted.resize(self.hidden * self.taps * len, 0.0);
        for j in 0..self.hidden {
            let src = &h_prev[j * len..][..len];
            for k in 0..self.taps {
                let (out, inp) = self.overlap(k, len);
                shifted[(j * self.taps + k) * len..][out].copy_from_slice(&src[inp]);
            }
        }
    }

    /// The adjoint of [`Self::shift_states`]: adds each row of `dshifted` back onto `dh`.
    fn unshift_add(&self, dshifted: &[f32], len: usize, dh: &mut [f32]) {
        for j in 0..self.hidden {
            let dst = &mut dh[j * len..][..len];
            for k in 0..self.taps {
                let (out, inp) = self.overlap(k, len);
                let row = &dshifted[(j * self.taps + k) * len..][..len];
                for (d, &v) in dst[inp].iter_mut().zip(&row[out]) {
                    *d += v;
                }
            }
        }
    }

    /// For tap `k`: the output positions whose input `l + k - pad` is inside the slice, and
    /// those inputs.
    fn overlap(&self, k: usize, len: usize) -> (Range<usize>, Range<usize>) {
        let out_lo = self.pad.saturating_sub(k).min(len);
        let out_hi = (len + self.pad).saturating_sub(k).clamp(out_lo, len);
        let in_lo = out_lo + k - self.pad;
        (out_lo..out_hi, in_lo..in_lo + (out_hi - out_lo))
    }

    /// One image's forward pass: `xg (S, 4h, L)` -> `out (S, 2, h, L)`.
    fn forward_one(&self, xg: &[f32], kernel: &[f32], out: &mut [f32], slices: usize, len: usize) {
        let hidden = self.hidden;
        let (gate_size, state_size) = (4 * hidden * len, hidden * len);
        let mut pre = vec![0f32; gate_size];
        let mut shifted = Vec::new();
        for s in 0..slices {
            pre.copy_from_slice(&xg[s * gate_size..][..gate_size]);
            let (before, now) = out.split_at_mut(s * 2 * state_size);
            if s > 0 {
                let h_prev = &before[(s - 1) * 2 * state_size..][..state_size];
                self.add_state_to_state(kernel, h_prev, &mut pre, len, &mut shifted);
            }
            let c_prev = (s > 0).then(|| &before[((s - 1) * 2 + 1) * state_size..][..state_size]);
            let (h, c) = now[..2 * state_size].split_at_mut(state_size);
            let (ofi, g) = activate_gates(&mut pre, state_size);
            let (o, fi) = ofi.split_at(state_size);
            let (f, i) = fi.split_at(state_size);
            for u in 0..state_size {
                c[u] = f[u] * c_prev.map_or(0.0, |c| c[u]) + i[u] * g[u];
            }
            h.copy_from_slice(c);
            simd::tanh_in_place(h);
            for (h, &o) in h.iter_mut().zip(o) {
                *h *= o;
            }
        }
    }

    /// One image's backward pass through time. Writes `dxg (S, 4h, L)` and adds to `dkernel`.
    #[allow(clippy::too_many_arguments)]
    fn backward_one(
        &self,
        xg: &[f32],
        kernel: &[f32],
        states: &[f32],
        grad: &[f32],
        dxg: &mut [f32],
        dkernel: &mut [f32],
        slices: usize,
        len: usize,
    ) {
        let (hidden, taps) = (self.hidden, self.taps);
        let (gate_size, state_size) = (4 * hidden * len, hidden * len);
        let mut pre = vec![0f32; gate_size];
        let zeros = vec![0f32; state_size];
        // Gradients reaching h_s and c_s from slice s + 1.
        let mut dh_next = vec![0f32; state_size];
        let mut dc_next = vec![0f32; state_size];
        let mut tanh_cell = vec![0f32; state_size];
        let mut shifted = Vec::new();
        let mut dshifted = vec![0f32; hidden * taps * len];
        let hk = hidden * taps;
        for s in (0..slices).rev() {
            let at = |t: usize, which: usize| &states[(t * 2 + which) * state_size..][..state_size];
            let (h_prev, c_prev) = if s > 0 {
                (at(s - 1, 0), at(s - 1, 1))
            } else {
                (&zeros[..], &zeros[..])
            };
            pre.copy_from_slice(&xg[s * gate_size..][..gate_size]);
            if s > 0 {
                self.add_state_to_state(kernel, h_prev, &mut pre, len, &mut shifted);
            }
            let cell = at(s, 1);
            let dh_out = &grad[(s * 2) * state_size..][..state_size];
            let dc_out = &grad[(s * 2 + 1) * state_size..][..state_size];
            let dpre = &mut dxg[s * gate_size..][..gate_size];
            tanh_cell.copy_from_slice(cell);
            simd::tanh_in_place(&mut tanh_cell);
            activate_gates(&mut pre, state_size);
            for u in 0..state_size {
                let o = pre[u];
                let f = pre[state_size + u];
                let i = pre[2 * state_size + u];
                let g = pre[3 * state_size + u];
                let tc = tanh_cell[u];
                let dh = dh_out[u] + dh_next[u];
                let dc = dc_out[u] + dc_next[u] + dh * o * (1.0 - tc * tc);
                dpre[u] = dh * tc * o * (1.0 - o);
                dpre[state_size + u] = dc * c_prev[u] * f * (1.0 - f);
                dpre[2 * state_size + u] = dc * g * i * (1.0 - i);
                dpre[3 * state_size + u] = dc * i * (1.0 - g * g);
                dc_next[u] = dc * f;
            }
            dh_next.iter_mut().for_each(|v| *v = 0.0);
            if s == 0 {
                continue;
            }
            // shifted holds h_prev's shifted rows from the forward recomputation above.
            // dW (4h, h*K) += dpre (4h, L) @ shifted^T (L, h*K).
            matmul(
                (4 * hidden, hk, len),
                dkernel,
                true,
                dpre,
                (len, 1),
                &shifted,
                (1, len),
                Parallelism::None,
            );
            // dshifted (h*K, L) = W^T (h*K, 4h) @ dpre (4h, L), then back onto dh_prev.
            matmul(
                (hk, len, 4 * hidden),
                &mut dshifted,
                false,
                kernel,
                (1, hk),
                dpre,
                (len, 1),
                Parallelism::None,
            );
            self.unshift_add(&dshifted, len, &mut dh_next);
        }
    }
}

impl CustomOp2 for LstmScan {
    fn name(&self) -> &'static str {
        "lstm-scan"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xg: &[f32] = cpu_slice(s1, l1, "lstm_scan's f32 input gates")?;
        let kernel: &[f32] = cpu_slice(s2, l2, "lstm_scan's f32 kernel")?;
        let (b, slices, _, len) = l1.shape().dims4()?;
        let per_image = slices * 2 * self.hidden * len;
        let mut out = vec![0f32; b * per_image];
        let per_input = slices * 4 * self.hidden * len;
        out.par_chunks_mut(per_image)
            .zip(xg.par_chunks(per_input))
            .for_each(|(out, xg)| self.forward_one(xg, kernel, out, slices, len));
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, slices, 2, self.hidden, len)),
        ))
    }

    fn bwd(
        &self,
        input_gates: &Tensor,
        kernel: &Tensor,
        states: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, slices, gates, len) = input_gates.dims4()?;
        let xg = input_gates.flatten_all()?.to_vec1::<f32>()?;
        let w = kernel.flatten_all()?.to_vec1::<f32>()?;
        let states = states.flatten_all()?.to_vec1::<f32>()?;
        let grad = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (per_input, per_state) = (slices * gates * len, slices * 2 * self.hidden * len);
        let mut dxg = vec![0f32; xg.len()];
        // Images split into parts by the batch size alone, each part summing its own kernel
        // gradient, and the parts added in order: the same bits on any number of threads.
        let per_part = reduce::items_per_part(b);
        let parts: Vec<_> = dxg.chunks_mut(per_part * per_input).enumerate().collect();
        let dkernel = reduce::sum_parts_in_order(parts, w.len(), |(p, dxg)| {
            let mut dkernel = vec![0f32; w.len()];
            for (j, dxg) in dxg.chunks_mut(per_input).enumerate() {
                let k = p * per_part + j;
                self.backward_one(
                    &xg[k * per_input..][..per_input],
                    &w,
                    &states[k * per_state..][..per_state],
                    &grad[k * per_state..][..per_state],
                    dxg,
                    &mut dkernel,
                    slices,
                    len,
                );
            }
            dkernel
        });
        let device = input_gates.device();
        Ok((
            Some(Tensor::from_vec(dxg, (b, slices, gates, len), device)?),
            Some(Tensor::from_vec(dkernel, kernel.shape(), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::{Device, Var};

    /// Forward values and both gradients of `sum(h * r)` for random `r`, through `scan`.
    fn run(
        scan: fn(&Tensor, &Tensor, usize) -> Result<Tensor>,
        xg: &Tensor,
        w: &Tensor,
        r: &Tensor,
        pad: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (xv, wv) = (Var::from_tensor(xg)?, Var::from_tensor(w)?);
        let h = scan(xv.as_tensor(), wv.as_tensor(), pad)?;
        let grads = (&h * r)?.sum_all()?.backward()?;
        // No gradient: the value did not take part (the kernel with a single slice).
        let flat = |t: Option<&Tensor>, like: &Tensor| match t {
            Some(t) => t.flatten_all()?.to_vec1::<f32>(),
            None => Ok(vec![0.0; like.elem_count()]),
        };
        Ok((
            flat(Some(&h), &h)?,
            flat(grads.get(&xv), xg)?,
            flat(grads.get(&wv), w)?,
        ))
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn random(shape: &[usize], scale: f32, rng: &mut Rng) -> Result<Tensor> {
        rng.normal(shape, &Device::Cpu)? * scale as f64
    }

    #[test]
    fn the_op_matches_candle_ops_forward_and_backward() -> Result<()> {
        let mut rng = Rng::new(5);
        // (batch, slices, hidden, length, taps, pad): the Row LSTM's 1 x 3 kernel, the
        // Diagonal BiLSTM's 2 x 1, odd sizes, one slice, a one-wide slice.
        for (b, s, h, l, k, pad) in [
            (2, 5, 3, 7, 3, 1),
            (3, 9, 4, 5, 2, 1),
            (1, 1, 2, 4, 3, 1),
            (2, 4, 1, 1, 3, 1),
            (2, 6, 2, 5, 1, 0),
        ] {
            let xg = random(&[b, s, 4 * h, l], 1.0, &mut rng)?;
            let w = random(&[4 * h, h, k], 0.7, &mut rng)?;
            let r = random(&[b, s, h, l], 1.0, &mut rng)?;
            let fast = run(lstm_scan, &xg, &w, &r, pad)?;
            let slow = run(lstm_scan_reference, &xg, &w, &r, pad)?;
            let case = format!("b{b} s{s} h{h} l{l} k{k} pad{pad}");
            assert!(max_diff(&fast.0, &slow.0) < 1e-5, "{case}: forward");
            assert!(max_diff(&fast.1, &slow.1) < 1e-4, "{case}: input grad");
            assert!(max_diff(&fast.2, &slow.2) < 1e-4, "{case}: kernel grad");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let mut rng = Rng::new(6);
        let (b, s, h, l, k, pad) = (1, 4, 2, 3, 3, 1);
        let xg = random(&[b, s, 4 * h, l], 1.0, &mut rng)?.to_dtype(DType::F64)?;
        let w = random(&[4 * h, h, k], 0.7, &mut rng)?.to_dtype(DType::F64)?;
        let r = random(&[b, s, h, l], 1.0, &mut rng)?;
        let (_, dx, dw) = run(
            lstm_scan,
            &xg.to_dtype(DType::F32)?,
            &w.to_dtype(DType::F32)?,
            &r,
            pad,
        )?;
        let r64 = r.to_dtype(DType::F64)?;
        // f64 through the reference ops: central differences accurate to ~1e-8.
        let objective = |xg: &Tensor, w: &Tensor| -> Result<f64> {
            (lstm_scan_reference(xg, w, pad)? * &r64)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let eps = 1e-5;
        let bump = |t: &Tensor, i: usize, d: f64| -> Result<Tensor> {
            let mut v = t.flatten_all()?.to_vec1::<f64>()?;
            v[i] += d;
            Tensor::from_vec(v, t.shape(), t.device())
        };
        for i in [0, 5, 17, 40, 63] {
            let numeric = (objective(&bump(&xg, i, eps)?, &w)?
                - objective(&bump(&xg, i, -eps)?, &w)?)
                / (2.0 * eps);
            assert!((numeric - dx[i] as f64).abs() < 1e-3, "dxg[{i}]");
        }
        for i in [0, 7, 23, 47] {
            let numeric = (objective(&xg, &bump(&w, i, eps)?)?
                - objective(&xg, &bump(&w, i, -eps)?)?)
                / (2.0 * eps);
            assert!((numeric - dw[i] as f64).abs() < 1e-3, "dkernel[{i}]");
        }
        Ok(())
    }

    #[test]
    fn misshapen_inputs_are_errors() -> Result<()> {
        let xg = Tensor::zeros((1, 2, 8, 3), DType::F32, &Device::Cpu)?;
        let w = Tensor::zeros((8, 3, 3), DType::F32, &Device::Cpu)?;
        let e = lstm_scan(&xg, &w, 1).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
        Ok(())
    }
}
