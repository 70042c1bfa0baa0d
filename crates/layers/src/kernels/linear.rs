//! `nn.Linear` (`y = act(x W^T + b)`, weight `(out, in)`, bias `(out)`) as one fused CPU op.
//!
//! Candle's `Linear` is a matmul against the transposed weight, a broadcast bias add and the
//! activation as separate ops; backward adds a transpose copy, a broadcast reduction, the
//! activation's mask, and a zero-filled gradient buffer per node. For the MLP VAE those passes
//! cost more than the matrix products. Here the forward pass is one gemm into the output with
//! bias and activation applied in place; the backward pass masks the output gradient once and
//! runs two gemms (`dW = g^T x`, `dx = g W`), skipping `dx` when the input is data.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};
use gemm::Parallelism;

use crate::kernels::activation::{bias_activation, Activation};
use crate::kernels::conv::matmul;
use crate::kernels::ops::{cpu_slice, fused_cpu_f32, twice_differentiable_cpu_f32, CpuValues};
use crate::kernels::precision;

/// `nn.Linear(in, out)` with PyTorch's parameter names `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `act(x W^T + b)` for `x` `(b, in)` -> `(b, out)`; other ranks through Candle's ops.
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (outputs, inputs) = self.weight.dims2()?;
        let bias_fits = self.bias.as_ref().is_none_or(|b| b.dims() == [outputs]);
        if x.dim(candle_core::D::Minus1)? != inputs || !bias_fits {
            candle_core::bail!(
                "linear: input {:?} does not fit weight {:?} and bias {:?}",
                x.dims(),
                self.weight.dims(),
                self.bias.as_ref().map(|b| b.dims())
            );
        }
        // Reduced precision: the product alone lowered, the bias and activation in f32.
        if let Some([x, weight]) = precision::lowered([x, &self.weight])? {
            let product = x.broadcast_matmul(&weight.t()?)?.to_dtype(DType::F32)?;
            let biased = match &self.bias {
                Some(bias) => product.broadcast_add(bias)?,
                None => product,
            };
            return act.reference(&biased);
        }
        match &self.bias {
            Some(bias) if x.rank() == 2 && fused_cpu_f32(&[x, &self.weight, bias]) => {
                let op = FusedLinear {
                    act,
                    input_needs_grad: x.track_op(),
                };
                x.contiguous()?
                    .apply_op3(&self.weight.contiguous()?, bias, op)
            }
            // Inside WGAN-GP's penalty: Candle's product (differentiable again) and the bias
            // and activation whose backward pass is recorded.
            Some(bias)
                if x.rank() == 2 && twice_differentiable_cpu_f32(&[x, &self.weight, bias]) =>
            {
                bias_activation(&x.matmul(&self.weight.t()?)?, Some(bias), act)
            }
            _ => self.forward_reference(x, act),
        }
    }

    /// The same with Candle's `Linear` and activation ops.
    pub fn forward_reference(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let linear = candle_nn::Linear::new(self.weight.clone(), self.bias.clone());
        act.reference(&linear.forward(x)?)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_activated(x, Activation::Identity)
    }
}

struct FusedLinear {
    act: Activation,
    input_needs_grad: bool,
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

impl CustomOp3 for FusedLinear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
        b: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, inputs) = x_layout.shape().dims2()?;
        let outputs = w_layout.shape().dims2()?.0;
        let x = cpu_slice::<f32>(x, x_layout, "linear input")?;
        let w = cpu_slice::<f32>(w, w_layout, "linear weight")?;
        let b = cpu_slice::<f32>(b, b_layout, "linear bias")?;
        // Every row starts as the bias; gemm accumulates x W^T onto it.
        let mut y: Vec<f32> = b.iter().copied().cycle().take(batch * outputs).collect();
        if batch > 0 && outputs > 0 && inputs > 0 {
            matmul(
                (batch, outputs, inputs),
                &mut y,
                true,
                x,
                (inputs, 1),
                w,
                (1, inputs),
                threads(),
            );
        }
        if self.act != Activation::Identity {
            for v in &mut y {
                *v = self.act.apply(*v);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, inputs) = x.dims2()?;
        let outputs = w.dims2()?.0;
        let grad = grad.contiguous()?;
        let values = CpuValues::new("linear", &[x, w, y, &grad]);
        let xv = values.get(0, "linear input")?;
        let wv = values.get(1, "linear weight")?;
        let yv = values.get(2, "linear output")?;
        let gv = values.get(3, "linear output gradient")?;
        // The gradient at the pre-activation.
        let g: Vec<f32> = match self.act {
            Activation::Identity => gv.to_vec(),
            act => gv
                .iter()
                .zip(yv)
                .map(|(&g, &y)| g * act.derivative_at_output(y))
                .collect(),
        };
        let mut db = vec![0f32; outputs];
        for row in g.chunks_exact(outputs.max(1)) {
            for (d, &v) in db.iter_mut().zip(row) {
                *d += v;
            }
        }
        let mut dw = vec![0f32; outputs * inputs];
        let mut dx = self.input_needs_grad.then(|| vec![0f32; batch * inputs]);
        if batch > 0 && outputs > 0 && inputs > 0 {
            // dW (out, in) = g^T (out, b) @ x (b, in).
            matmul(
                (outputs, inputs, batch),
                &mut dw,
                false,
                &g,
                (1, outputs),
                xv,
                (inputs, 1),
                threads(),
            );
            if let Some(dx) = dx.as_mut() {
                // dx (b, in) = g (b, out) @ W (out, in).
                matmul(
                    (batch, inputs, outputs),
                    dx,
                    false,
                    &g,
                    (outputs, 1),
                    wv,
                    (inputs, 1),
                    threads(),
                );
            }
        }
        let device = x.device();
        let dx = dx
            .map(|dx| Tensor::from_vec(dx, (batch, inputs), device))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(dw, (outputs, inputs), device)?),
            Some(Tensor::from_vec(db, outputs, device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::{Device, Var};

    use crate::kernels::ops::max_abs_diff as max_diff;

    /// Values and the gradients of input, weight and bias equal Candle's `Linear` and
    /// activation, for odd sizes, a batch of one, and each activation.
    #[test]
    fn matches_candles_linear_in_values_and_gradients() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let dev = Device::Cpu;
        let mut rng = Rng::new(41);
        for (batch, inputs, outputs) in [(1, 1, 1), (3, 7, 5), (17, 33, 9), (128, 20, 400)] {
            for act in [
                Activation::Identity,
                Activation::Relu,
                Activation::LeakyRelu(0.2),
            ] {
                let x = Var::from_tensor(&rng.normal((batch, inputs), &dev)?)?;
                let w = Var::from_tensor(&rng.normal((outputs, inputs), &dev)?)?;
                let b = Var::from_tensor(&rng.normal(outputs, &dev)?)?;
                let probe = rng.normal((batch, outputs), &dev)?;
                let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
                let fused = layer.forward_activated(&x, act)?;
                let reference = layer.forward_reference(&x, act)?;
                let case = format!("{batch}x{inputs}->{outputs} {act:?}");
                assert!(max_diff(&fused, &reference)? < 1e-4, "{case} forward");
                let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
                let g_ref = (&reference * &probe)?.sum_all()?.backward()?;
                for (v, what) in [(&x, "x"), (&w, "weight"), (&b, "bias")] {
                    let (a, r) = (g_fused.get(v).unwrap(), g_ref.get(v).unwrap());
                    let diff = max_diff(a, r)?;
                    assert!(diff < 1e-3, "{case} d{what}: {diff}");
                }
            }
        }
        Ok(())
    }

    /// The weight's and the input's gradients against central differences of the fused
    /// forward (LeakyReLU, values away from its kink).
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(43);
        let x = rng.normal((3, 5), &dev)?;
        let w = rng.normal((4, 5), &dev)?;
        let b = rng.normal(4, &dev)?;
        let probe = rng.normal((3, 4), &dev)?;
        let act = Activation::LeakyRelu(0.2);
        let with_weight =
            |w: &Tensor| Linear::new(w.clone(), Some(b.clone())).forward_activated(&x, act);
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            with_weight,
            &w,
            &probe,
            &[0, 3, 7, 12, 19],
            1e-3,
            2e-2,
        )?;
        let layer = Linear::new(w.clone(), Some(b.clone()));
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |x| layer.forward_activated(x, act),
            &x,
            &probe,
            &[0, 6, 14],
            1e-3,
            2e-2,
        )
    }

    /// Data inputs get no gradient (the skipped gemm), parameters still do.
    #[test]
    fn data_inputs_skip_their_gradient() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let dev = Device::Cpu;
        let mut rng = Rng::new(42);
        let x = rng.normal((4, 6), &dev)?;
        let w = Var::from_tensor(&rng.normal((3, 6), &dev)?)?;
        let b = Var::from_tensor(&rng.normal(3, &dev)?)?;
        let layer = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let grads = layer
            .forward_activated(&x, Activation::Relu)?
            .sum_all()?
            .backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(&w).is_some() && grads.get(&b).is_some());
        Ok(())
    }

    #[test]
    fn mismatched_inputs_name_the_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let layer = Linear::new(
            Tensor::zeros((3, 6), candle_core::DType::F32, &dev)?,
            Some(Tensor::zeros(3, candle_core::DType::F32, &dev)?),
        );
        let x = Tensor::zeros((2, 5), candle_core::DType::F32, &dev)?;
        let e = layer.forward(&x).unwrap_err().to_string();
        assert!(e.contains("[2, 5]") && e.contains("[3, 6]"), "{e}");
        Ok(())
    }
}
