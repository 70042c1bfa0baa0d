//! Second-order gradients (WGAN-GP's penalty) against finite differences: the inner gradients
//! from `backward_keeping_graph`, on the one thread where Candle keeps gradient graphs. The
//! fused first-order kernels stay on outside the penalty's `differentiable_twice` scope, and
//! every other backward pass detaches its gradients as before.

use candle_core::{DType, Device, Result, Tensor, Var};
use layers::gan::{backward_keeping_graph, enable_second_order_gradients, gradient_penalty};
use layers::kernels::conv::{conv2d, ConvSpec};
use layers::kernels::instance_norm::{InstanceNorm, EPS};
use layers::kernels::pad::reflection_pad2d;
use layers::nn::resample;
use layers::Rng;

/// A gradient penalty through the convolution: d/dk |grad_x sum(conv(x, k)^2)|^2 against
/// finite differences, so conv critics can train with WGAN-GP.
#[test]
fn second_order_gradients_match_finite_differences() -> Result<()> {
    enable_second_order_gradients()?;
    let dev = Device::Cpu;
    let spec = ConvSpec {
        stride: (2, 2),
        padding: (1, 1),
    };
    let x0 = Rng::new(1)
        .normal((2, 2, 6, 6), &dev)?
        .to_dtype(DType::F64)?;
    let k0 = Rng::new(2)
        .normal((3, 2, 4, 4), &dev)?
        .to_dtype(DType::F64)?;
    let penalty = |k: &Tensor| -> Result<Tensor> {
        let x = Var::from_tensor(&x0)?;
        let g = backward_keeping_graph(&conv2d(x.as_tensor(), k, spec)?.sqr()?.sum_all()?)?;
        g.get(x.as_tensor()).unwrap().sqr()?.sum_all()
    };
    let k = Var::from_tensor(&k0)?;
    let analytic = penalty(k.as_tensor())?
        .backward()?
        .get(k.as_tensor())
        .expect("the penalty depends on the kernel")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = k0.flatten_all()?.to_vec1::<f64>()?;
    for j in (0..base.len()).step_by(9) {
        let at = |d: f64| -> Result<f64> {
            let mut v = base.clone();
            v[j] += d;
            penalty(&Tensor::from_vec(v, k0.dims(), &dev)?)?.to_scalar::<f64>()
        };
        let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
        assert!(
            (fd - analytic[j]).abs() < 1e-5 * (1.0 + fd.abs()),
            "entry {j}: {fd} vs {}",
            analytic[j]
        );
    }
    Ok(())
}

/// The penalty's gradient with respect to the critic's weights, through the gradient of
/// the critic, against central finite differences (f64).
#[test]
fn gradient_penalty_gradient_matches_finite_differences() -> Result<()> {
    enable_second_order_gradients()?;
    let dev = Device::Cpu;
    let mut rng = Rng::new(3);
    let (b, d, h) = (4, 3, 5);
    let real = rng.normal((b, d), &dev)?.to_dtype(DType::F64)?;
    let fake = rng.normal((b, d), &dev)?.to_dtype(DType::F64)?;
    let alpha = rng.uniform(b, &dev)?.to_dtype(DType::F64)?;
    let w1 = Var::from_tensor(&rng.normal((d, h), &dev)?.to_dtype(DType::F64)?)?;
    let w2 = Var::from_tensor(&rng.normal((h, 1), &dev)?.to_dtype(DType::F64)?)?;
    // A two-layer tanh critic: its input gradient depends on both weights.
    let penalty = |w1: &Tensor, w2: &Tensor| -> Result<Tensor> {
        let critic = |x: &Tensor| x.matmul(w1)?.tanh()?.matmul(w2);
        gradient_penalty(&critic, &real, &fake, &alpha)
    };
    let grads = penalty(w1.as_tensor(), w2.as_tensor())?.backward()?;
    let analytic = grads
        .get(w1.as_tensor())
        .expect("the penalty depends on w1")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = w1.as_tensor().flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-6;
    for i in 0..base.len() {
        let at = |delta: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] += delta;
            let w = Tensor::from_vec(v, (d, h), &dev)?;
            penalty(&w, &w2.as_tensor().detach())?.to_scalar::<f64>()
        };
        let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
        assert!(
            (numeric - analytic[i]).abs() < 1e-5 * (1.0 + numeric.abs()),
            "w1[{i}]: finite differences {numeric}, backward {}",
            analytic[i]
        );
    }
    Ok(())
}

/// The gradient of `penalty(params)` (a gradient penalty, so a second-order gradient) with
/// respect to each of `params` against central differences (f64), at every `step`-th entry.
fn assert_penalty_gradients(
    penalty: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    params: &[Tensor],
    names: &[&str],
    step: usize,
) -> Result<()> {
    let vars = params
        .iter()
        .map(Var::from_tensor)
        .collect::<Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = penalty(&tensors)?.backward()?;
    for (p, name) in names.iter().enumerate() {
        let analytic = grads
            .get(vars[p].as_tensor())
            .unwrap_or_else(|| panic!("the penalty depends on {name}"))
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = params[p].flatten_all()?.to_vec1::<f64>()?;
        for j in (0..base.len()).step_by(step) {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += d;
                let mut moved = params.to_vec();
                moved[p] = Tensor::from_vec(v, params[p].dims(), params[p].device())?;
                penalty(&moved)?.to_scalar::<f64>()
            };
            let fd = (at(1e-6)? - at(-1e-6)?) / 2e-6;
            assert!(
                (fd - analytic[j]).abs() < 1e-5 * (1.0 + fd.abs()),
                "{name}[{j}]: finite differences {fd}, backward {}",
                analytic[j]
            );
        }
    }
    Ok(())
}

/// A gradient penalty through an affine instance norm (StarGAN's, in training mode) with
/// respect to its weight, its bias and the convolution before it: Candle's composition of
/// ops, which second-order gradients take, differentiates twice correctly.
#[test]
fn instance_norm_second_order_gradients_match_finite_differences() -> Result<()> {
    enable_second_order_gradients()?;
    let dev = Device::Cpu;
    let mut rng = Rng::new(4);
    let x0 = rng.normal((2, 2, 4, 4), &dev)?.to_dtype(DType::F64)?;
    let probe = rng.normal((2, 3, 4, 4), &dev)?.to_dtype(DType::F64)?;
    let kernel = rng.normal((3, 2, 3, 3), &dev)?.to_dtype(DType::F64)?;
    let weight = (rng.normal(3, &dev)? + 1.0)?.to_dtype(DType::F64)?;
    let bias = rng.normal(3, &dev)?.to_dtype(DType::F64)?;
    let penalty = |p: &[Tensor]| -> Result<Tensor> {
        let norm = InstanceNorm::new(3, Some((p[1].clone(), p[2].clone())), None, EPS)?;
        let x = Var::from_tensor(&x0)?;
        let h = conv2d(x.as_tensor(), &p[0], ConvSpec::same_padding(3, 3))?;
        let critic = (norm.forward_t(&h, true)?.tanh()? * &probe)?.sum_all()?;
        let g = backward_keeping_graph(&critic)?;
        g.get(x.as_tensor()).unwrap().sqr()?.sum_all()
    };
    assert_penalty_gradients(
        &penalty,
        &[kernel, weight, bias],
        &["kernel", "weight", "bias"],
        5,
    )
}

/// The same through reflection padding (CycleGAN's pad before a convolution), whose fused op
/// differentiates to any order through its adjoint.
#[test]
fn reflection_pad_second_order_gradients_match_finite_differences() -> Result<()> {
    enable_second_order_gradients()?;
    let dev = Device::Cpu;
    let mut rng = Rng::new(5);
    let x0 = rng.normal((2, 2, 4, 5), &dev)?.to_dtype(DType::F64)?;
    let probe = rng.normal((2, 3, 4, 5), &dev)?.to_dtype(DType::F64)?;
    let kernel = rng.normal((3, 2, 5, 5), &dev)?.to_dtype(DType::F64)?;
    let penalty = |p: &[Tensor]| -> Result<Tensor> {
        let x = Var::from_tensor(&x0)?;
        let h = conv2d(
            &reflection_pad2d(x.as_tensor(), 2)?,
            &p[0],
            ConvSpec::default(),
        )?;
        let g = backward_keeping_graph(&(h.tanh()? * &probe)?.sum_all()?)?;
        g.get(x.as_tensor()).unwrap().sqr()?.sum_all()
    };
    assert_penalty_gradients(&penalty, &[kernel], &["kernel"], 7)
}

/// The penalty in f32 on the fused kernels (outside its scope the first-order ones; inside it
/// the convolution and the bias and activation whose backward passes are recorded ops) gives
/// the gradients, of the weight and of the bias, that Candle's composed ops give in f64.
#[test]
fn a_fused_step_around_the_penalty_differentiates_like_candles_ops() -> Result<()> {
    use layers::kernels::activation::{bias_activation, Activation};
    use layers::kernels::ops::fused_cpu_f32;
    enable_second_order_gradients()?;
    let dev = Device::Cpu;
    let probe = Tensor::zeros(1, DType::F32, &dev)?;
    assert!(
        fused_cpu_f32(&[&probe]),
        "second-order gradients must not switch the fused kernels off outside the penalty"
    );
    let mut rng = Rng::new(6);
    let (b, d, h) = (6, 5, 7);
    let real = rng.normal((b, d), &dev)?;
    let fake = rng.normal((b, d), &dev)?;
    let alpha = rng.uniform(b, &dev)?;
    let w1 = rng.normal((d, h), &dev)?;
    let b1 = rng.normal(h, &dev)?;
    let w2 = rng.normal((h, 1), &dev)?;
    let gradient = |dtype: DType| -> Result<Vec<f64>> {
        let cast = |t: &Tensor| t.to_dtype(dtype);
        let w1 = Var::from_tensor(&cast(&w1)?)?;
        let b1 = Var::from_tensor(&cast(&b1)?)?;
        let w2 = cast(&w2)?;
        let critic = |x: &Tensor| -> Result<Tensor> {
            let hidden = bias_activation(
                &x.matmul(w1.as_tensor())?,
                Some(b1.as_tensor()),
                Activation::LeakyRelu(0.2),
            )?;
            hidden.matmul(&w2)
        };
        let (real, fake, alpha) = (cast(&real)?, cast(&fake)?, cast(&alpha)?);
        let gp = gradient_penalty(&critic, &real, &fake, &alpha)?;
        let loss = (critic(&real)?.mean_all()? + (gp * 10.0)?)?;
        let grads = loss.backward()?;
        let mut values = Vec::new();
        for v in [&w1, &b1] {
            let g = grads
                .get(v.as_tensor())
                .expect("the loss depends on w1 and b1");
            values.extend(g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(values)
    };
    let (fused, composed) = (gradient(DType::F32)?, gradient(DType::F64)?);
    for (i, (a, c)) in fused.iter().zip(&composed).enumerate() {
        assert!(
            (a - c).abs() < 1e-4 * (1.0 + c.abs()),
            "w1 and b1 [{i}]: f32 with fused kernels {a}, f64 composed {c}"
        );
    }
    Ok(())
}

/// Second order: the gradient of `|grad_x sum(p * up(down(x)) * x)|^2` with respect to x,
/// against central differences (what WGAN-GP's penalty takes through D's pools).
#[test]
fn resampling_second_order_gradients_match_finite_differences() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(9);
    let x0 = rng.normal((1, 2, 4, 4), &dev)?;
    let p = rng.normal((1, 2, 4, 4), &dev)?;
    let penalty = |x: &Var| -> Result<Tensor> {
        let f = ((resample::upscale2d(&resample::downscale2d(x.as_tensor())?)? * x.as_tensor())?
            * &p)?
            .sum_all()?;
        let g = backward_keeping_graph(&f)?;
        g.get(x.as_tensor()).unwrap().sqr()?.sum_all()
    };
    enable_second_order_gradients()?;
    let x = Var::from_tensor(&x0)?;
    let grads = penalty(&x)?.backward()?;
    let analytic = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f32>()?;
    let values = x0.flatten_all()?.to_vec1::<f32>()?;
    for i in [0, 5, 17, 31] {
        let at = |delta: f32| -> Result<f32> {
            let mut v = values.clone();
            v[i] += delta;
            let x = Var::from_tensor(&Tensor::from_vec(v, x0.shape(), &dev)?)?;
            penalty(&x)?.to_scalar::<f32>()
        };
        let numeric = (at(1e-2)? - at(-1e-2)?) / 2e-2;
        assert!(
            (numeric - analytic[i]).abs() < 1e-2 * numeric.abs().max(1.0),
            "{i}: {numeric} vs {}",
            analytic[i]
        );
    }
    Ok(())
}

/// Only the penalty's own gradients keep their graph: every other backward pass of the process
/// detaches its gradients, so Candle frees the intermediate ones as it goes. (With
/// `CANDLE_GRAD_DO_NOT_DETACH` set for the whole process, as before, the outer pass of a
/// WGAN-GP step kept all of them: the progan workload peaked at 5.2 GB.)
#[test]
fn only_the_penalty_keeps_gradient_graphs() -> Result<()> {
    enable_second_order_gradients()?;
    let dev = Device::Cpu;
    let w = Var::new(&[1.5f32, -0.5], &dev)?;
    let x = Var::new(&[2f32, 3.0], &dev)?;
    let out = (w.as_tensor() * x.as_tensor())?.sqr()?.sum_all()?;
    let kept = backward_keeping_graph(&out)?;
    let plain = out.backward()?;
    let (inner, outer) = (
        kept.get(x.as_tensor()).expect("out depends on x"),
        plain.get(x.as_tensor()).expect("out depends on x"),
    );
    // Both are d out / dx = 2 w^2 x.
    assert_eq!(inner.to_vec1::<f32>()?, vec![9.0, 1.5]);
    assert_eq!(outer.to_vec1::<f32>()?, vec![9.0, 1.5]);
    // Differentiated again: 2 w^2 through the kept graph; nothing through the detached one,
    // whose x enters only through a gradient Candle detached.
    let again = |g: &Tensor| -> Result<Option<Vec<f32>>> {
        let grads = g.sum_all()?.backward()?;
        grads
            .get(x.as_tensor())
            .map(|t| t.to_vec1::<f32>())
            .transpose()
    };
    assert_eq!(again(inner)?, Some(vec![4.5, 0.5]));
    assert_eq!(again(outer)?, None, "a first-order gradient kept its graph");
    Ok(())
}
