//! Every fused CPU op against the same op on CUDA, where Candle's own ops run instead: the values
//! and the gradients of a random weighting of the output, with respect to every input. The CPU
//! side is the fused kernel that the CPU tests compare with Candle's ops; the CUDA side is the
//! fallback path that a `--device cuda` run takes. Built only with `--features cuda`, and run by
//! `scripts/gpu_check.sh` on a GPU machine (each case prints its differences for the table).

#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor, Var};
use layers::gan::{enable_second_order_gradients, gradient_penalty};
use layers::kernels::activation::{bias_activation, Activation};
use layers::kernels::conv::{conv2d, conv_transpose2d_padded, ConvSpec};
use layers::kernels::instance_norm::{InstanceNorm, EPS};
use layers::kernels::linear::Linear;
use layers::kernels::norm::BatchNorm;
use layers::kernels::ops::{exclusive_cumsum, skew_rows, unskew_rows};
use layers::kernels::pad::reflection_pad2d;
use layers::kernels::pixel_norm::pixel_norm;
use layers::kernels::recurrence::{lstm_scan, lstm_update};
use layers::kernels::sigmoid_scan::sigmoid_scan_readout;
use layers::train::optim::{Adam, AdamConfig};
use layers::Rng;

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device (this test runs on a GPU machine)")
}

/// `max |a - b| / max(1, max |a|)`.
fn relative_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let b = b.to_device(a.device())?;
    let scale = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(f64::from(diff / scale))
}

/// Runs `f` on `inputs` on the CPU and on CUDA; returns the worst relative difference of the
/// outputs and of the gradients of `sum(out * r)` (fixed random `r`) with respect to each input.
fn compare(
    name: &str,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<(f64, f64)> {
    let run = |device: &Device| -> Result<(Tensor, Vec<Tensor>)> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(device)?))
            .collect::<Result<_>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors)?;
        let weights = Rng::new(99)
            .normal(out.shape(), &Device::Cpu)?
            .to_device(device)?;
        let grads = (&out * &weights)?.sum_all()?.backward()?;
        let grads = tensors
            .iter()
            .map(|t| match grads.get(t) {
                Some(g) => g.to_device(&Device::Cpu),
                None => t.zeros_like()?.to_device(&Device::Cpu),
            })
            .collect::<Result<_>>()?;
        Ok((out.to_device(&Device::Cpu)?, grads))
    };
    let (out_cpu, grads_cpu) = run(&Device::Cpu)?;
    let (out_gpu, grads_gpu) = run(&cuda())?;
    let forward = relative_diff(&out_cpu, &out_gpu)?;
    let mut backward = 0f64;
    for (a, b) in grads_cpu.iter().zip(&grads_gpu) {
        backward = backward.max(relative_diff(a, b)?);
    }
    println!("cuda-vs-cpu {name:<34} forward {forward:.2e}  gradients {backward:.2e}");
    Ok((forward, backward))
}

fn assert_close(name: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let (forward, backward) = compare(name, inputs, f).unwrap();
    assert!(forward < 1e-4, "{name}: forward differs by {forward}");
    assert!(backward < 1e-4, "{name}: gradients differ by {backward}");
}

fn normal(seed: u64, shape: &[usize]) -> Tensor {
    Rng::new(seed).normal(shape, &Device::Cpu).unwrap()
}

/// (x dims, kernel dims, stride, padding).
type ConvCase = ([usize; 4], [usize; 4], usize, (usize, usize));
/// (x dims, kernel dims, stride, padding, output padding).
type TransposedCase = ([usize; 4], [usize; 4], usize, usize, usize);

#[test]
fn convolutions_match() {
    // (x, kernel, stride, padding): square, 4x4 stride 2, unequal paddings, and a stride-2
    // input whose height and width leave different remainders (Candle's conv backward takes
    // its output padding from the height only).
    let cases: [ConvCase; 5] = [
        ([4, 3, 12, 12], [8, 3, 3, 3], 1, (1, 1)),
        ([4, 8, 16, 16], [16, 8, 4, 4], 2, (1, 1)),
        ([2, 3, 9, 7], [5, 3, 3, 1], 1, (1, 0)),
        ([2, 3, 8, 9], [4, 3, 3, 3], 2, (1, 1)),
        ([2, 3, 9, 8], [4, 3, 4, 4], 2, (1, 1)),
    ];
    for (i, (x, k, s, p)) in cases.iter().enumerate() {
        let spec = ConvSpec {
            stride: (*s, *s),
            padding: *p,
        };
        assert_close(
            &format!("conv2d {x:?} k{k:?} s{s} p{p:?}"),
            &[normal(i as u64, x), normal(10 + i as u64, k)],
            &|t| conv2d(&t[0], &t[1], spec),
        );
    }
    // Transposed: DCGAN's 4x4 stride 2, CycleGAN's 3x3 stride 2 with output padding 1.
    let transposed: [TransposedCase; 2] = [
        ([4, 16, 8, 8], [16, 8, 4, 4], 2, 1, 0),
        ([2, 8, 7, 7], [8, 4, 3, 3], 2, 1, 1),
    ];
    for (i, (x, k, s, p, op)) in transposed.iter().enumerate() {
        let spec = ConvSpec {
            stride: (*s, *s),
            padding: (*p, *p),
        };
        assert_close(
            &format!("conv_transpose2d {x:?} s{s} p{p} op{op}"),
            &[normal(20 + i as u64, x), normal(30 + i as u64, k)],
            &|t| conv_transpose2d_padded(&t[0], &t[1], spec, (*op, *op)),
        );
    }
}

#[test]
fn pointwise_and_dense_ops_match() {
    for act in [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.2),
    ] {
        assert_close(
            &format!("bias_activation {act:?}"),
            &[normal(1, &[4, 6, 5, 5]), normal(2, &[6])],
            &|t| bias_activation(&t[0], Some(&t[1]), act),
        );
        assert_close(
            &format!("linear {act:?}"),
            &[normal(3, &[8, 20]), normal(4, &[12, 20]), normal(5, &[12])],
            &|t| Linear::new(t[1].clone(), Some(t[2].clone())).forward_activated(&t[0], act),
        );
    }
    assert_close("reflection_pad2d 3", &[normal(6, &[2, 3, 8, 7])], &|t| {
        reflection_pad2d(&t[0], 3)
    });
    assert_close("pixel_norm", &[normal(7, &[4, 16, 4, 4])], &|t| {
        pixel_norm(&t[0])
    });
    assert_close("exclusive_cumsum", &[normal(8, &[3, 10, 4])], &|t| {
        exclusive_cumsum(&t[0], 1, false)? + exclusive_cumsum(&t[0], 2, true)?
    });
    // Long enough for the blocked scan of the CUDA path (NADE's 784 pixels).
    assert_close(
        "exclusive_cumsum 784 long",
        &[normal(13, &[2, 784, 5])],
        &|t| exclusive_cumsum(&t[0], 1, false)? + exclusive_cumsum(&t[0], 1, true)?,
    );
    assert_close(
        "skew_rows / unskew_rows",
        &[normal(9, &[2, 3, 6, 5])],
        &|t| {
            let skewed = skew_rows(&t[0])?;
            skewed
                .sqr()?
                .sum_all()?
                .broadcast_add(&unskew_rows(&skewed, 5)?)
        },
    );
    assert_close(
        "sigmoid_scan_readout",
        &[
            Rng::new(10)
                .uniform((4, 30), &Device::Cpu)
                .unwrap()
                .ge(0.5)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
            normal(11, &[30, 16]),
            normal(12, &[30, 16]),
        ],
        &|t| sigmoid_scan_readout(&t[0], &t[1], &t[2]),
    );
}

#[test]
fn normalisations_match() {
    for train in [true, false] {
        assert_close(
            &format!("instance_norm affine train={train}"),
            &[normal(1, &[4, 6, 7, 7]), normal(2, &[6]), normal(3, &[6])],
            &|t| {
                let mean = Tensor::zeros(6, DType::F32, t[0].device())?;
                let var = Tensor::ones(6, DType::F32, t[0].device())?;
                InstanceNorm::new(
                    6,
                    Some((t[1].clone(), t[2].clone())),
                    Some((mean, var)),
                    EPS,
                )?
                .forward_t(&t[0], train)
            },
        );
    }
    assert_close(
        "batch_norm train",
        &[normal(4, &[8, 5, 6, 6]), normal(5, &[5]), normal(6, &[5])],
        &|t| {
            let mean = Tensor::zeros(5, DType::F32, t[0].device())?;
            let var = Tensor::ones(5, DType::F32, t[0].device())?;
            BatchNorm::new(mean, var, t[1].clone(), t[2].clone(), 1e-5)?.forward_train(&t[0])
        },
    );
}

#[test]
fn recurrences_match() {
    assert_close(
        "lstm_update",
        &[normal(1, &[3, 4 * 5, 7]), normal(2, &[3, 5, 7])],
        &|t| {
            let (h, c) = lstm_update(&t[0], &t[1], 5)?;
            h + c
        },
    );
    assert_close(
        "lstm_scan",
        &[
            (normal(3, &[2, 6, 4 * 4, 6]) * 0.5).unwrap(),
            (normal(4, &[4 * 4, 4, 3]) * 0.3).unwrap(),
        ],
        &|t| lstm_scan(&t[0], &t[1], 1),
    );
}

/// WGAN-GP's penalty through a conv critic: its gradient with respect to the critic's kernel,
/// which needs Candle's second-order gradients on the device.
#[test]
fn gradient_penalty_matches() {
    enable_second_order_gradients().unwrap();
    let spec = ConvSpec {
        stride: (2, 2),
        padding: (1, 1),
    };
    assert_close(
        "gradient_penalty (conv critic)",
        &[
            normal(1, &[4, 2, 8, 8]),
            normal(2, &[4, 2, 8, 8]),
            (normal(3, &[3, 2, 4, 4]) * 0.3).unwrap(),
        ],
        &|t| {
            let alpha = Tensor::new(&[0.1f32, 0.4, 0.6, 0.9], t[0].device())?;
            let kernel = t[2].clone();
            let critic = move |x: &Tensor| -> Result<Tensor> { conv2d(x, &kernel, spec)?.tanh() };
            gradient_penalty(&critic, &t[0].detach(), &t[1].detach(), &alpha)
        },
    );
}

/// Adam's fused CPU update against its Candle-op update on CUDA, over three steps.
#[test]
fn adam_matches() {
    let run = |device: &Device| -> anyhow::Result<Tensor> {
        let w = Var::from_tensor(&normal(1, &[40, 30]).to_device(device)?)?;
        let mut adam = Adam::from_named_vars(
            vec![("w".into(), w.clone())],
            AdamConfig {
                lr: 1e-2,
                weight_decay: 1e-3,
                ..AdamConfig::default()
            },
        )?;
        let target = normal(2, &[40, 30]).to_device(device)?;
        for _ in 0..3 {
            adam.backward_step(&(w.as_tensor() - &target)?.sqr()?.sum_all()?)?;
        }
        Ok(w.as_tensor().to_device(&Device::Cpu)?)
    };
    let diff = relative_diff(&run(&Device::Cpu).unwrap(), &run(&cuda()).unwrap()).unwrap();
    println!("cuda-vs-cpu {:<34} after 3 steps {diff:.2e}", "adam");
    assert!(diff < 1e-5, "Adam differs by {diff}");
}
