//! Per-channel bias and activation, `y = act(x + b[c])` over `(n, c, ...)`, as one fused CPU op.
//!
//! Candle runs a convolution's bias as a broadcast add, whose gradient is a strided reduction
//! over batch and space, and ReLU's backward as four ops (`zeros_like`, `ge`, `to_dtype`, `mul`);
//! `candle_nn::ops::leaky_relu` is five ops forward and more backward. Here the forward pass
//! writes the output once; the backward pass reads the output (whose sign is the
//! pre-activation's) and the incoming gradient once, and sums the bias gradient per plane.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::ops::{
    cpu_f32, cpu_slice, fused_cpu_f32, twice_differentiable_cpu_f32, CpuValues,
};
use crate::kernels::reduce;

/// Evaluates `$body` with `$f` bound to `act`'s function (`apply`) or its derivative read at
/// the output (`derivative`) as a closure of its own type, one copy of `$body` per
/// activation, the slope an f32 in a register: with [`Activation::apply`] on a captured
/// activation inside the loops over a plane they stayed scalar and branching (DCGAN's
/// LeakyReLU backward took 6% of a step on one thread). Same values as those methods.
macro_rules! specialised {
    ($act:expr, apply, |$f:ident| $body:expr) => {
        match $act {
            Activation::Identity => {
                let $f = |v: f32| v;
                $body
            }
            Activation::Relu => {
                let $f = |v: f32| v.max(0.0);
                $body
            }
            Activation::LeakyRelu(slope) => {
                let slope = slope as f32;
                let $f = move |v: f32| v.max(slope * v);
                $body
            }
        }
    };
    ($act:expr, derivative, |$f:ident| $body:expr) => {
        match $act {
            Activation::Identity => {
                let $f = |_: f32| 1.0f32;
                $body
            }
            Activation::Relu => {
                let $f = |y: f32| if y > 0.0 { 1.0f32 } else { 0.0 };
                $body
            }
            Activation::LeakyRelu(slope) => {
                let slope = slope as f32;
                let $f = move |y: f32| if y > 0.0 { 1.0f32 } else { slope };
                $body
            }
        }
    };
}

/// The activation after a linear map or a convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// `max(x, slope x)` for a slope in [0, 1). An f64, so that a float64 model's slope is the
    /// decimal one (0.1f32 is 0.10000000149 in f64: a 1.5e-8 change that InfoGAN's first three
    /// training steps grew into 1e-2 in its losses, in torch against itself).
    LeakyRelu(f64),
}

impl Activation {
    #[inline]
    pub(crate) fn apply(self, v: f32) -> f32 {
        specialised!(self, apply, |f| f(v))
    }

    /// The derivative at the pre-activation, read from the output (same sign).
    #[inline]
    pub(crate) fn derivative_at_output(self, y: f32) -> f32 {
        specialised!(self, derivative, |f| f(y))
    }

    /// Candle's ops for the same activation.
    pub fn reference(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Identity => Ok(x.clone()),
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(slope) => candle_nn::ops::leaky_relu(x, slope),
        }
    }
}

/// `out = act(x + b)`, its own function so that `out` and `x` do not alias.
#[inline]
fn activate(out: &mut [f32], x: &[f32], b: f32, act: impl Fn(f32) -> f32) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = act(x + b);
    }
}

/// `dx = g act'(y)`, as [`activate`].
#[inline]
fn scale_by_derivative(dx: &mut [f32], g: &[f32], y: &[f32], derivative: impl Fn(f32) -> f32) {
    for ((d, &g), &y) in dx.iter_mut().zip(g).zip(y) {
        *d = g * derivative(y);
    }
}

/// `act(x + bias[c])` for `x` `(n, c, ...)` and `bias` `(c)` (or no bias).
pub fn bias_activation(x: &Tensor, bias: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    if x.rank() < 2 && bias.is_none() {
        return act.reference(x);
    }
    if x.rank() < 2 {
        candle_core::bail!("bias_activation: expected (n, c, ..), found {:?}", x.dims());
    }
    let channels = x.dim(1)?;
    if let Some(b) = bias {
        if b.dims() != [channels] {
            candle_core::bail!(
                "bias_activation: bias {:?} does not match the {channels} channels of input {:?}",
                b.dims(),
                x.dims()
            );
        }
    }
    let tensors: Vec<&Tensor> = std::iter::once(x).chain(bias).collect();
    let twice = twice_differentiable_cpu_f32(&tensors);
    if !fused_cpu_f32(&tensors) && !twice {
        return bias_activation_reference(x, bias, act);
    }
    let x = x.contiguous()?;
    let op = BiasActivation { act, twice };
    match bias {
        Some(b) => x.apply_op2(&b.contiguous()?, op),
        None if act == Activation::Identity => Ok(x),
        None => x.apply_op1(op),
    }
}

/// The same with Candle's ops.
pub fn bias_activation_reference(
    x: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Tensor> {
    let y = match bias {
        Some(b) => {
            let mut shape = vec![1; x.rank()];
            shape[1] = b.elem_count();
            x.broadcast_add(&b.reshape(shape)?)?
        }
        None => x.clone(),
    };
    act.reference(&y)
}

struct BiasActivation {
    act: Activation,
    /// Inside a `differentiable_twice` scope (WGAN-GP's penalty): the backward pass is made of
    /// recorded ops ([`ActivationGrad`] and a sum), so it can be differentiated again.
    twice: bool,
}

/// `g act'(y)`: the activation's backward pass as an op of its own. It is linear in `g` and
/// `act'` is piecewise constant, so its own backward pass is the same op on the incoming
/// gradient, and nothing flows to `y`: gradients of any order stay on the fused path.
struct ActivationGrad {
    act: Activation,
}

impl CustomOp2 for ActivationGrad {
    fn name(&self) -> &'static str {
        "activation-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        g_layout: &Layout,
        y: &CpuStorage,
        y_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gv = cpu_slice::<f32>(g, g_layout, "activation output gradient")?;
        let yv = cpu_slice::<f32>(y, y_layout, "activation output")?;
        if gv.len() != yv.len() {
            candle_core::bail!(
                "activation-grad: gradient {:?} for output {:?}",
                g_layout.shape(),
                y_layout.shape()
            );
        }
        let mut dx = vec![0f32; gv.len()];
        specialised!(self.act, derivative, |derivative| {
            dx.par_chunks_mut(1 << 14)
                .zip(gv.par_chunks(1 << 14).zip(yv.par_chunks(1 << 14)))
                .for_each(|(d, (g, y))| scale_by_derivative(d, g, y, derivative))
        });
        Ok((CpuStorage::F32(dx), g_layout.shape().clone()))
    }

    fn bwd(
        &self,
        _g: &Tensor,
        y: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let again = grad
            .contiguous()?
            .apply_op2(y, ActivationGrad { act: self.act })?;
        Ok((Some(again), None))
    }
}

/// `g act'(y)` from a layer's output `y = act(x)`: the gradient at the pre-activation `x`
/// given the gradient `g` at the output, as an op that can be differentiated again (linear
/// in `g`; nothing flows to `y`, since `act'` is piecewise constant). What a hand-written
/// backward pass of a network uses (the Progressive GAN critic's input gradient).
pub fn activation_grad(grad: &Tensor, y: &Tensor, act: Activation) -> Result<Tensor> {
    if grad.dims() != y.dims() {
        candle_core::bail!(
            "activation_grad: gradient {:?} for output {:?}",
            grad.dims(),
            y.dims()
        );
    }
    let y = y.detach();
    match act {
        Activation::Identity => Ok(grad.clone()),
        _ if cpu_f32(&[grad, &y]) => grad.contiguous()?.apply_op2(&y, ActivationGrad { act }),
        Activation::Relu => grad * y.gt(0.0)?.to_dtype(grad.dtype())?,
        Activation::LeakyRelu(slope) => {
            let positive = y.gt(0.0)?.to_dtype(grad.dtype())?;
            grad * ((positive * (1.0 - slope))? + slope)?
        }
    }
}

/// `dx = g act'(y)` and `db[c] = sum of dx over all but dimension 1`, as recorded ops.
fn backward_recorded(
    act: Activation,
    y: &Tensor,
    grad: &Tensor,
    with_bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    // `y` detached: nothing flows to it, and Candle's backward pass expects a gradient for
    // every recorded node on the way to a variable.
    let dx = grad
        .contiguous()?
        .apply_op2(&y.detach(), ActivationGrad { act })?;
    let db = with_bias
        .then(|| {
            let per_channel = dx.transpose(0, 1)?.flatten_from(1)?; // (c, n * space)
            per_channel.sum(1)
        })
        .transpose()?;
    Ok((dx, db))
}

/// `y = act(y + bias[c])` in place over the planes `(n, c)` of `inner` values each.
pub(crate) fn bias_activate_in_place(
    y: &mut [f32],
    bias: Option<&[f32]>,
    channels: usize,
    inner: usize,
    act: Activation,
) {
    specialised!(act, apply, |act| {
        y.par_chunks_mut(inner.max(1))
            .enumerate()
            .with_min_len(planes_per_task(inner))
            .for_each(|(p, y)| {
                let b = bias.map_or(0.0, |b| b[p % channels]);
                for v in y.iter_mut() {
                    *v = act(*v + b);
                }
            })
    });
}

/// Planes per parallel task: at least ~16K values, so a `(batch, features)` input (planes of
/// one value) is not split into one task per value.
fn planes_per_task(inner: usize) -> usize {
    (1 << 14) / inner.max(1) + 1
}

/// `(planes, plane size)` of an `(n, c, ...)` layout.
fn planes(layout: &Layout) -> (usize, usize) {
    let dims = layout.shape().dims();
    (dims[0] * dims[1], dims[2..].iter().product())
}

impl BiasActivation {
    fn forward(&self, x: &[f32], bias: Option<&[f32]>, layout: &Layout) -> CpuStorage {
        let channels = layout.shape().dims()[1];
        let (_, inner) = planes(layout);
        let mut y = vec![0f32; x.len()];
        specialised!(self.act, apply, |act| {
            y.par_chunks_mut(inner.max(1))
                .zip(x.par_chunks(inner.max(1)))
                .enumerate()
                .with_min_len(planes_per_task(inner))
                .for_each(|(p, (y, x))| activate(y, x, bias.map_or(0.0, |b| b[p % channels]), act))
        });
        CpuStorage::F32(y)
    }

    /// `dx = g act'(y)`, and with a bias `db[c] = sum over n and space of dx`.
    fn backward(
        &self,
        y: &Tensor,
        grad: &Tensor,
        with_bias: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if self.twice {
            return backward_recorded(self.act, y, grad, with_bias);
        }
        backward_fused(self.act, y, grad, with_bias)
    }
}

/// `dx = g act'(y)`, and with a bias `db[c] = sum over n and space of dx`, in one pass over
/// each plane (not recorded: first-order only). Also the backward pass of
/// `conv::conv2d_bias_activation`.
pub(crate) fn backward_fused(
    act: Activation,
    y: &Tensor,
    grad: &Tensor,
    with_bias: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let values = CpuValues::new("bias_activation", &[y, &grad]);
    let yv = values.get(0, "activation output")?;
    let gv = values.get(1, "activation output gradient")?;
    let channels = y.dim(1)?;
    let (n_planes, inner) = planes(y.layout());
    let mut dx = vec![0f32; yv.len()];
    let mut plane_sums = vec![0f32; n_planes];
    specialised!(act, derivative, |derivative| {
        dx.par_chunks_mut(inner.max(1))
            .zip(plane_sums.par_iter_mut())
            .enumerate()
            .with_min_len(planes_per_task(inner))
            .for_each(|(p, (dx, sum))| {
                let range = p * inner..(p + 1) * inner;
                scale_by_derivative(dx, &gv[range.clone()], &yv[range], derivative);
                if with_bias {
                    *sum = reduce::sum_in_lanes(dx, f64::from) as f32;
                }
            })
    });
    let device = y.device();
    let db = with_bias
        .then(|| {
            let mut db = vec![0f32; channels];
            for (p, s) in plane_sums.iter().enumerate() {
                db[p % channels] += s;
            }
            Tensor::from_vec(db, channels, device)
        })
        .transpose()?;
    Ok((Tensor::from_vec(dx, y.shape(), device)?, db))
}

impl CustomOp1 for BiasActivation {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = cpu_slice::<f32>(x, layout, "activation input")?;
        Ok((self.forward(xs, None, layout), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.backward(y, grad, false)?.0))
    }
}

impl CustomOp2 for BiasActivation {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = cpu_slice::<f32>(x, layout, "activation input")?;
        let b = cpu_slice::<f32>(bias, bias_layout, "bias")?;
        Ok((self.forward(xs, Some(b), layout), layout.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, db) = self.backward(y, grad, true)?;
        Ok((Some(dx), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;
    use candle_core::{DType, Device, Var};

    use crate::kernels::ops::max_abs_diff as max_diff;

    /// Values and the gradients of input and bias equal Candle's broadcast add and activation,
    /// for flat and image-shaped inputs of odd sizes, with and without a bias.
    #[test]
    fn matches_candles_ops_in_values_and_gradients() -> Result<()> {
        crate::kernels::ops::assert_fused_path_on();
        let dev = Device::Cpu;
        let mut rng = Rng::new(51);
        for dims in [
            vec![1, 1],
            vec![3, 5],
            vec![2, 3, 7, 5],
            vec![4, 1, 3],
            vec![1, 6, 1, 1],
        ] {
            for act in [
                Activation::Identity,
                Activation::Relu,
                Activation::LeakyRelu(0.2),
            ] {
                for with_bias in [false, true] {
                    let x = Var::from_tensor(&rng.normal(dims.as_slice(), &dev)?)?;
                    let b = Var::from_tensor(&rng.normal(dims[1], &dev)?)?;
                    let bias = with_bias.then_some(b.as_tensor());
                    let probe = rng.normal(dims.as_slice(), &dev)?;
                    let fused = bias_activation(&x, bias, act)?;
                    let reference = bias_activation_reference(&x, bias, act)?;
                    let case = format!("{dims:?} {act:?} bias {with_bias}");
                    assert!(max_diff(&fused, &reference)? < 1e-6, "{case} forward");
                    let g_fused = (&fused * &probe)?.sum_all()?.backward()?;
                    let g_ref = (&reference * &probe)?.sum_all()?.backward()?;
                    let dx = max_diff(g_fused.get(&x).unwrap(), g_ref.get(&x).unwrap())?;
                    assert!(dx < 1e-6, "{case} dx: {dx}");
                    if with_bias {
                        let db = max_diff(g_fused.get(&b).unwrap(), g_ref.get(&b).unwrap())?;
                        assert!(db < 1e-4, "{case} db: {db}");
                    }
                }
            }
        }
        Ok(())
    }

    /// The input's and the bias's gradients against central differences of the fused forward.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Rng::new(52);
        let x = rng.normal((2, 3, 2, 2), &dev)?;
        let b = rng.normal(3, &dev)?;
        let probe = rng.normal((2, 3, 2, 2), &dev)?;
        let act = Activation::LeakyRelu(0.2);
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |x| bias_activation(x, Some(&b), act),
            &x,
            &probe,
            &[0, 5, 11, 23],
            1e-3,
            2e-2,
        )?;
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |b| bias_activation(&x, Some(b), act),
            &b,
            &probe,
            &[0, 1, 2],
            1e-3,
            2e-2,
        )
    }

    #[test]
    fn a_bias_of_the_wrong_size_names_both_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        let e = bias_activation(&x, Some(&b), Activation::Relu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[4]") && e.contains("[2, 3, 4, 4]"), "{e}");
        Ok(())
    }
}
