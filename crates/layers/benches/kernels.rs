//! Per-op micro-benchmarks of genzoo's CPU kernels against Candle's own ops, at the sizes the
//! BENCHMARKS.md workloads use, so a regression shows up per op:
//! `cargo bench -p layers --bench kernels`.

use candle_core::{DType, Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use layers::kernels::activation::{bias_activation, bias_activation_reference, Activation};
use layers::kernels::conv::{candle_conv2d, conv2d, conv_transpose2d, ConvSpec};
use layers::kernels::instance_norm::{InstanceNorm, EPS};
use layers::kernels::linear::Linear;
use layers::kernels::ops::{exclusive_cumsum, skew_rows, skew_rows_reference};
use layers::kernels::pad::{reflection_pad2d, reflection_pad2d_reference};
use layers::kernels::pixel_norm::{pixel_norm, pixel_norm_reference};
use layers::kernels::recurrence::{lstm_scan, lstm_scan_reference};
use layers::kernels::sigmoid_scan::{sigmoid_scan_readout, sigmoid_scan_readout_reference};
use layers::Rng;

fn normal(shape: &[usize], seed: u64) -> Tensor {
    Rng::new(seed).normal(shape, &Device::Cpu).unwrap()
}

/// Forward and backward of `f` on fresh variables.
fn forward_backward(
    f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    a: &Tensor,
    b: &Tensor,
) {
    let (a, b) = (Var::from_tensor(a).unwrap(), Var::from_tensor(b).unwrap());
    let y = f(a.as_tensor(), b.as_tensor()).unwrap();
    y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
}

fn convolutions(c: &mut Criterion) {
    // PixelCNN's 3x3 64 -> 64 layer at batch 32, and DCGAN's stride-2 4x4 layers at batch 64.
    let x = normal(&[32, 64, 28, 28], 1);
    let k = normal(&[64, 64, 3, 3], 2);
    let same = ConvSpec::same_padding(3, 3);
    c.bench_function("conv2d 3x3 64->64 b32 fwd+bwd / genzoo", |b| {
        b.iter(|| forward_backward(&|x, k| conv2d(x, k, same), &x, &k))
    });
    c.bench_function("conv2d 3x3 64->64 b32 fwd+bwd / candle", |b| {
        b.iter(|| forward_backward(&|x, k| candle_conv2d(x, k, same), &x, &k))
    });
    // The run file's Progressive GAN at 32 x 32: 16 channels, whose weight gradient is the
    // dot-product kernel (`simd::add_a_bt`) rather than gemm.
    let x = normal(&[64, 16, 32, 32], 5);
    let k = normal(&[16, 16, 3, 3], 6);
    c.bench_function("conv2d 3x3 16->16 32x32 b64 fwd+bwd / genzoo", |b| {
        b.iter(|| forward_backward(&|x, k| conv2d(x, k, same), &x, &k))
    });
    c.bench_function("conv2d 3x3 16->16 32x32 b64 fwd+bwd / candle", |b| {
        b.iter(|| forward_backward(&|x, k| candle_conv2d(x, k, same), &x, &k))
    });
    let stride2 = ConvSpec {
        stride: (2, 2),
        padding: (1, 1),
    };
    let g = normal(&[64, 128, 8, 8], 3);
    let kt = normal(&[128, 64, 4, 4], 4);
    c.bench_function(
        "conv_transpose2d 4x4 s2 128->64 b64 fwd+bwd / genzoo",
        |b| b.iter(|| forward_backward(&|x, k| conv_transpose2d(x, k, stride2), &g, &kt)),
    );
    c.bench_function(
        "conv_transpose2d 4x4 s2 128->64 b64 fwd+bwd / candle",
        |b| b.iter(|| forward_backward(&|x, k| x.conv_transpose2d(k, 1, 0, 2, 1), &g, &kt)),
    );
}

fn recurrences(c: &mut Criterion) {
    // One Diagonal BiLSTM direction at batch 16: 55 skewed columns of 28 rows, h = 16.
    let xg = normal(&[16, 55, 64, 28], 5);
    let w = normal(&[64, 16, 2], 6);
    c.bench_function("lstm_scan diag b16 fwd+bwd / genzoo", |b| {
        b.iter(|| forward_backward(&|x, w| lstm_scan(x, w, 1), &xg, &w))
    });
    c.bench_function("lstm_scan diag b16 fwd+bwd / candle ops", |b| {
        b.iter(|| forward_backward(&|x, w| lstm_scan_reference(x, w, 1), &xg, &w))
    });
    let maps = normal(&[16, 32, 28, 28], 7);
    let one = normal(&[1], 8);
    c.bench_function("skew 16x32x28x28 fwd+bwd / genzoo", |b| {
        b.iter(|| forward_backward(&|x, _| skew_rows(x), &maps, &one))
    });
    c.bench_function("skew 16x32x28x28 fwd+bwd / candle ops", |b| {
        b.iter(|| forward_backward(&|x, _| skew_rows_reference(x), &maps, &one))
    });
    // NADE's pre-activations at batch 128: (128, 784, 500).
    let pre = normal(&[128, 784, 500], 9);
    c.bench_function("exclusive_cumsum 128x784x500 / genzoo", |b| {
        b.iter(|| exclusive_cumsum(&pre, 1, false).unwrap())
    });
}

fn nade_scan(c: &mut Criterion) {
    // NADE's conditionals at the benchmark's size: 128 binary images, D = 784, H = 500.
    let x = normal(&[128, 784], 10)
        .ge(0.9)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let u = normal(&[784, 500], 11);
    let v = normal(&[784, 500], 12);
    let run = |f: fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>| {
        let (u, v) = (Var::from_tensor(&u).unwrap(), Var::from_tensor(&v).unwrap());
        let y = f(&x, u.as_tensor(), v.as_tensor()).unwrap();
        y.sum_all().unwrap().backward().unwrap();
    };
    c.bench_function("sigmoid_scan_readout 128x784x500 fwd+bwd / genzoo", |b| {
        b.iter(|| run(sigmoid_scan_readout))
    });
    c.bench_function(
        "sigmoid_scan_readout 128x784x500 fwd+bwd / candle ops",
        |b| b.iter(|| run(sigmoid_scan_readout_reference)),
    );
    let a = normal(&[784 * 500], 13);
    let mut out = vec![0f32; 784 * 500];
    let a = a.to_vec1::<f32>().unwrap();
    c.bench_function("simd::sigmoid 392,000 values / genzoo", |b| {
        b.iter(|| layers::kernels::simd::sigmoid(&mut out, &a))
    });
    let t = Tensor::new(a.as_slice(), &Device::Cpu).unwrap();
    c.bench_function("sigmoid 392,000 values / candle", |b| {
        b.iter(|| candle_nn::ops::sigmoid(&t).unwrap())
    });
}

fn fused_layers(c: &mut Criterion) {
    // The MLP VAE's first layer at batch 128 (784 -> 400, ReLU), fused and as Candle's ops.
    let x = normal(&[128, 784], 14);
    let layer = Linear::new(normal(&[400, 784], 15), Some(normal(&[400], 16)));
    let run = |fused: bool| {
        let w = Var::from_tensor(layer.weight()).unwrap();
        let b = Var::from_tensor(layer.bias().unwrap()).unwrap();
        let l = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let y = if fused {
            l.forward_activated(&x, Activation::Relu)
        } else {
            l.forward_reference(&x, Activation::Relu)
        };
        y.unwrap().sum_all().unwrap().backward().unwrap();
    };
    c.bench_function("linear+relu 128x784->400 fwd+bwd / genzoo", |b| {
        b.iter(|| run(true))
    });
    c.bench_function("linear+relu 128x784->400 fwd+bwd / candle ops", |b| {
        b.iter(|| run(false))
    });
    // A PixelCNN layer's bias and ReLU at batch 32: (32, 64, 28, 28).
    let maps = normal(&[32, 64, 28, 28], 17);
    let bias = normal(&[64], 18);
    let run = |f: fn(&Tensor, Option<&Tensor>, Activation) -> candle_core::Result<Tensor>| {
        let (m, b) = (
            Var::from_tensor(&maps).unwrap(),
            Var::from_tensor(&bias).unwrap(),
        );
        let y = f(m.as_tensor(), Some(b.as_tensor()), Activation::Relu).unwrap();
        y.sum_all().unwrap().backward().unwrap();
    };
    c.bench_function("bias+relu 32x64x28x28 fwd+bwd / genzoo", |b| {
        b.iter(|| run(bias_activation))
    });
    c.bench_function("bias+relu 32x64x28x28 fwd+bwd / candle ops", |b| {
        b.iter(|| run(bias_activation_reference))
    });
}

fn instance_norm_and_padding(c: &mut Criterion) {
    // StarGAN's affine instance norm at its bottleneck and at a 32 x 32 stage, batch 8.
    for (dims, seed) in [([8, 128, 8, 8], 19), ([8, 32, 32, 32], 21)] {
        let x = normal(&dims, seed);
        let weight = (normal(&[dims[1]], seed + 1) + 1.0).unwrap();
        let bias = normal(&[dims[1]], seed + 2);
        let norm = |w: &Tensor| {
            InstanceNorm::new(dims[1], Some((w.clone(), bias.clone())), None, EPS).unwrap()
        };
        let name = format!(
            "instance_norm {}x{}x{}x{}",
            dims[0], dims[1], dims[2], dims[3]
        );
        c.bench_function(&format!("{name} fwd+bwd / genzoo"), |b| {
            b.iter(|| forward_backward(&|x, w| norm(w).forward_t(x, true), &x, &weight))
        });
        c.bench_function(&format!("{name} fwd+bwd / candle ops"), |b| {
            b.iter(|| forward_backward(&|x, w| norm(w).forward_reference(x, true), &x, &weight))
        });
    }
    // CycleGAN's residual-block padding at 256 pixels: (1, 256, 64, 64), pad 1. Forward and
    // backward include the harness's square, sum and Candle's backward of them (most of the
    // time at this size), so the forward is timed alone too.
    let maps = normal(&[1, 256, 64, 64], 24);
    let one = normal(&[1], 25);
    c.bench_function("reflection_pad2d 1x256x64x64 p1 fwd / genzoo", |b| {
        b.iter(|| reflection_pad2d(&maps, 1).unwrap())
    });
    c.bench_function("reflection_pad2d 1x256x64x64 p1 fwd / candle ops", |b| {
        b.iter(|| reflection_pad2d_reference(&maps, 1).unwrap())
    });
    c.bench_function("reflection_pad2d 1x256x64x64 p1 fwd+bwd / genzoo", |b| {
        b.iter(|| forward_backward(&|x, _| reflection_pad2d(x, 1), &maps, &one))
    });
    c.bench_function(
        "reflection_pad2d 1x256x64x64 p1 fwd+bwd / candle ops",
        |b| b.iter(|| forward_backward(&|x, _| reflection_pad2d_reference(x, 1), &maps, &one)),
    );
}

fn progressive(c: &mut Criterion) {
    // The progan workload's generator at 32 x 32: 64 maps, batch 64.
    let maps = normal(&[64, 64, 32, 32], 26);
    let one = normal(&[1], 27);
    c.bench_function("pixel_norm 64x64x32x32 fwd+bwd / genzoo", |b| {
        b.iter(|| forward_backward(&|x, _| pixel_norm(x), &maps, &one))
    });
    c.bench_function("pixel_norm 64x64x32x32 fwd+bwd / candle ops", |b| {
        b.iter(|| forward_backward(&|x, _| pixel_norm_reference(x), &maps, &one))
    });
}

criterion_group! {
    name = kernels;
    config = Criterion::default().sample_size(10);
    targets = convolutions, recurrences, nade_scan, fused_layers, instance_norm_and_padding,
        progressive
}
criterion_main!(kernels);
