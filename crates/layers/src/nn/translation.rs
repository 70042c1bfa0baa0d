//! The networks of image-to-image translation under their reference names, shared by the
//! translation models (and the blocks a later one reuses):
//!
//! - junyanz/pytorch-CycleGAN-and-pix2pix `models/networks.py`: `ResnetGenerator` (keys
//!   `model.N`, residual blocks `model.K.conv_block.{1,5}`) and `NLayerDiscriminator` (the
//!   70 x 70 PatchGAN at `n_layers = 3`, keys `model.N`), both with instance normalisation
//!   without affine parameters or running statistics (so every convolution has a bias),
//!   reflection padding, weights N(0, 0.02) and zero biases (`init_type = normal`);
//! - yunjey/stargan `model.py`: the `Generator` (keys `main.N`, residual blocks
//!   `main.K.main.{0,1,3,4}`; bias-free, affine instance norm with running statistics,
//!   PyTorch's default init) and the `Discriminator` (`main.N`, `conv1`, `conv2`).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::conv::ConvSpec;
use crate::nn::sequential::{Layer, Sequential, Stack};

/// `x (b, c, h, w)` with two more channels holding each pixel's column and row, from -1 to 1:
/// CoordConv (Liu et al. 2018, "An Intriguing Failing of Convolutional Neural Networks and the
/// CoordConv Solution"). A convolution sees the same weights everywhere, so a map that sends a
/// pixel somewhere that depends on where it is (a quarter turn) is out of its reach unless the
/// input says where each pixel is.
pub fn with_coordinates(x: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = x.dims4()?;
    let ramp = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                if n > 1 {
                    2.0 * i as f32 / (n - 1) as f32 - 1.0
                } else {
                    0.0
                }
            })
            .collect()
    };
    let dev = x.device();
    let cols = Tensor::new(ramp(w), dev)?
        .reshape((1, 1, 1, w))?
        .broadcast_as((b, 1, h, w))?;
    let rows = Tensor::new(ramp(h), dev)?
        .reshape((1, 1, h, 1))?
        .broadcast_as((b, 1, h, w))?;
    Tensor::cat(
        &[x, &cols.to_dtype(x.dtype())?, &rows.to_dtype(x.dtype())?],
        1,
    )
}

/// junyanz's `init_type = normal`, `init_gain = 0.02`.
const NORMAL_002: Option<Init> = Some(Init::Randn {
    mean: 0.0,
    stdev: 0.02,
});

fn spec(stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        stride: (stride, stride),
        padding: (padding, padding),
    }
}

/// junyanz's `ResnetGenerator(input_nc, output_nc, ngf, norm=instance, use_dropout=False,
/// n_blocks, padding_type='reflect')`: c7s1-ngf, two stride-2 3x3 convolutions, `n_blocks`
/// residual blocks at `4 ngf` channels, two stride-2 3x3 transposed convolutions (output
/// padding 1), c7s1-output_nc and tanh, under `model`. Images `(b, c, h, w)` with `h` and `w`
/// divisible by 4.
pub fn resnet_generator(
    vb: VarBuilder,
    (input_nc, output_nc): (usize, usize),
    ngf: usize,
    n_blocks: usize,
) -> Result<Stack> {
    let mut g = Sequential::new(vb.pp("model"))
        .bias_init(Init::Const(0.0))
        .reflection_pad(3)
        .conv((input_nc, ngf, 7), spec(1, 0), true, NORMAL_002)?
        .instance_norm(ngf, false, false)?
        .push(Layer::Relu);
    let mut ch = ngf;
    for _ in 0..2 {
        g = g
            .conv((ch, 2 * ch, 3), spec(2, 1), true, NORMAL_002)?
            .instance_norm(2 * ch, false, false)?
            .push(Layer::Relu);
        ch *= 2;
    }
    for _ in 0..n_blocks {
        g = g.residual("conv_block", |b| {
            b.reflection_pad(1)
                .conv((ch, ch, 3), spec(1, 0), true, NORMAL_002)?
                .instance_norm(ch, false, false)?
                .push(Layer::Relu)
                .reflection_pad(1)
                .conv((ch, ch, 3), spec(1, 0), true, NORMAL_002)?
                .instance_norm(ch, false, false)
        })?;
    }
    for _ in 0..2 {
        g = g
            .conv_transpose_with((ch, ch / 2, 3), spec(2, 1), (1, 1), true, NORMAL_002)?
            .instance_norm(ch / 2, false, false)?
            .push(Layer::Relu);
        ch /= 2;
    }
    Ok(g.reflection_pad(3)
        .conv((ch, output_nc, 7), spec(1, 0), true, NORMAL_002)?
        .push(Layer::Tanh)
        .build())
}

/// junyanz's `NLayerDiscriminator(input_nc, ndf, n_layers, norm=instance)`: a PatchGAN whose
/// every output judges one overlapping patch (70 x 70 at `n_layers = 3`): a stride-2 4x4
/// convolution and LeakyReLU 0.2, `n_layers - 1` more with instance norm, doubling the width up
/// to `8 ndf`, one at stride 1, and a 4x4 convolution to one map of logits.
pub fn patch_discriminator(
    vb: VarBuilder,
    input_nc: usize,
    ndf: usize,
    n_layers: usize,
) -> Result<Stack> {
    let mut d = Sequential::new(vb.pp("model"))
        .bias_init(Init::Const(0.0))
        .conv((input_nc, ndf, 4), spec(2, 1), true, NORMAL_002)?
        .push(Layer::LeakyRelu(0.2));
    let width = |n: usize| ndf * (1usize << n.min(3));
    for n in 1..=n_layers {
        let stride = if n < n_layers { 2 } else { 1 };
        d = d
            .conv(
                (width(n - 1), width(n), 4),
                spec(stride, 1),
                true,
                NORMAL_002,
            )?
            .instance_norm(width(n), false, false)?
            .push(Layer::LeakyRelu(0.2));
    }
    Ok(
        d.conv((width(n_layers), 1, 4), spec(1, 1), true, NORMAL_002)?
            .build(),
    )
}

/// yunjey's instance norm (affine, tracked), conditioned on the target when asked.
fn stargan_norm(
    s: Sequential<'_>,
    channels: usize,
    conditioned_on: Option<usize>,
) -> Result<Sequential<'_>> {
    let s = s.instance_norm(channels, true, true)?;
    match conditioned_on {
        Some(c_dim) => s.conditioned(c_dim),
        None => Ok(s),
    }
}

/// yunjey's StarGAN `Generator(conv_dim, c_dim, repeat_num)` as a stack over the image with
/// its target domain tiled and concatenated (`3 + c_dim` channels): c7s1-conv_dim, `down`
/// stride-2 4x4 convolutions (yunjey's two), `repeat_num` residual blocks, as many stride-2 4x4
/// transposed convolutions, c7s1-`channels` and tanh; every convolution bias-free, each followed
/// by an affine instance norm that keeps running statistics. `conditioned_on: Some(c_dim)`
/// conditions every norm on the target (not in yunjey's network; see [`Sequential::conditioned`]);
/// `outputs`: the last convolution's maps (yunjey's: the image's channels).
pub fn stargan_generator(
    vb: VarBuilder,
    (channels, c_dim): (usize, usize),
    conv_dim: usize,
    (down, repeat_num): (usize, usize),
    conditioned_on: Option<usize>,
    outputs: usize,
) -> Result<Stack> {
    let norm = |s, ch| stargan_norm(s, ch, conditioned_on);
    let mut g = norm(
        Sequential::new(vb.pp("main")).conv(
            (channels + c_dim, conv_dim, 7),
            spec(1, 3),
            false,
            None,
        )?,
        conv_dim,
    )?
    .push(Layer::Relu);
    let mut ch = conv_dim;
    for _ in 0..down {
        g = norm(g.conv((ch, 2 * ch, 4), spec(2, 1), false, None)?, 2 * ch)?.push(Layer::Relu);
        ch *= 2;
    }
    for _ in 0..repeat_num {
        g = g.residual("main", |b| {
            let b = norm(b.conv((ch, ch, 3), spec(1, 1), false, None)?, ch)?
                .push(Layer::Relu)
                .conv((ch, ch, 3), spec(1, 1), false, None)?;
            norm(b, ch)
        })?;
    }
    for _ in 0..down {
        g = norm(
            g.conv_transpose_with((ch, ch / 2, 4), spec(2, 1), (0, 0), false, None)?,
            ch / 2,
        )?
        .push(Layer::Relu);
        ch /= 2;
    }
    Ok(g.conv((ch, outputs, 7), spec(1, 3), false, None)?
        .push(Layer::Tanh)
        .build())
}

/// yunjey's StarGAN `Discriminator(image_size, conv_dim, c_dim, repeat_num)`: `main`, stride-2
/// 4x4 convolutions with biases and LeakyReLU 0.01, doubling from `conv_dim`; then two heads on
/// its output: `conv1` (3x3, one map of critic values) and `conv2` (a kernel the size of the
/// map, the `c_dim` domain logits), both bias-free.
pub struct StarGanCritic {
    pub main: Stack,
    pub src: Stack,
    pub cls: Stack,
}

pub fn stargan_discriminator(
    vb: VarBuilder,
    (channels, c_dim): (usize, usize),
    image_size: usize,
    conv_dim: usize,
    repeat_num: usize,
) -> Result<StarGanCritic> {
    let side = image_size >> repeat_num;
    if side == 0 || side << repeat_num != image_size {
        candle_core::bail!(
            "StarGAN's discriminator halves image_size {image_size} {repeat_num} times: it must be a multiple of 2^{repeat_num}"
        );
    }
    let mut main = Sequential::new(vb.pp("main"))
        .conv((channels, conv_dim, 4), spec(2, 1), true, None)?
        .push(Layer::LeakyRelu(0.01));
    let mut ch = conv_dim;
    for _ in 1..repeat_num {
        main = main
            .conv((ch, 2 * ch, 4), spec(2, 1), true, None)?
            .push(Layer::LeakyRelu(0.01));
        ch *= 2;
    }
    let src = Sequential::new(vb.clone())
        .named("conv1")
        .conv((ch, 1, 3), spec(1, 1), false, None)?
        .build();
    let cls = Sequential::new(vb)
        .named("conv2")
        .conv((ch, c_dim, side), spec(1, 0), false, None)?
        .build();
    Ok(StarGanCritic {
        main: main.build(),
        src,
        cls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarMap;

    fn names(varmap: &VarMap) -> Vec<String> {
        let mut n: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        n.sort();
        n
    }

    #[test]
    fn junyanz_networks_take_the_reference_keys_and_shapes() -> Result<()> {
        let varmap = VarMap::new();
        let vb = crate::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let g = resnet_generator(vb.pp("g"), (1, 1), 4, 9)?;
        let d = patch_discriminator(vb.pp("d"), 1, 4, 3)?;
        let n = names(&varmap);
        for key in [
            "g.model.1.weight",
            "g.model.4.bias",
            "g.model.10.conv_block.1.weight",
            "g.model.18.conv_block.5.bias",
            "g.model.19.weight",
            "g.model.22.weight",
            "g.model.26.weight",
            "d.model.0.weight",
            "d.model.2.weight",
            "d.model.5.weight",
            "d.model.8.weight",
            "d.model.11.bias",
        ] {
            assert!(n.contains(&key.to_string()), "{key} missing from {n:?}");
        }
        let x = Tensor::zeros((2, 1, 32, 32), DType::F32, &Device::Cpu)?;
        assert_eq!(g.forward(&x, true)?.dims(), &[2, 1, 32, 32]);
        // 32 -> 16 -> 8 -> 4 -> 3 (stride 1) -> 2: one logit per patch.
        assert_eq!(d.forward(&x, true)?.dims(), &[2, 1, 2, 2]);
        Ok(())
    }

    #[test]
    fn coordinates_are_two_ramps_from_minus_one_to_one() -> Result<()> {
        let x = Tensor::zeros((2, 1, 3, 5), DType::F32, &Device::Cpu)?;
        let y = with_coordinates(&x)?;
        assert_eq!(y.dims(), &[2, 3, 3, 5]);
        let cols = y.narrow(1, 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(&cols[..5], &[-1.0, -0.5, 0.0, 0.5, 1.0]);
        let rows = y.narrow(1, 2, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!((rows[0], rows[5], rows[14]), (-1.0, 0.0, 1.0));
        Ok(())
    }

    #[test]
    fn stargan_networks_take_the_reference_keys_and_shapes() -> Result<()> {
        let varmap = VarMap::new();
        let vb = crate::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let g = stargan_generator(vb.pp("generator"), (3, 5), 8, (2, 6), None, 3)?;
        let d = stargan_discriminator(vb.pp("discriminator"), (3, 5), 128, 8, 6)?;
        let n = names(&varmap);
        for key in [
            "generator.main.0.weight",
            "generator.main.1.running_var",
            "generator.main.9.main.0.weight",
            "generator.main.14.main.4.bias",
            "generator.main.15.weight",
            "generator.main.18.weight",
            "generator.main.21.weight",
            "discriminator.main.10.bias",
            "discriminator.conv1.weight",
            "discriminator.conv2.weight",
        ] {
            assert!(n.contains(&key.to_string()), "{key} missing");
        }
        assert!(!n.contains(&"generator.main.0.bias".to_string()));
        let x = Tensor::zeros((2, 8, 16, 16), DType::F32, &Device::Cpu)?;
        assert_eq!(g.forward(&x, true)?.dims(), &[2, 3, 16, 16]);
        let x = Tensor::zeros((2, 3, 128, 128), DType::F32, &Device::Cpu)?;
        let h = d.main.forward(&x, true)?;
        assert_eq!(d.src.forward(&h, true)?.dims(), &[2, 1, 2, 2]);
        assert_eq!(d.cls.forward(&h, true)?.dims(), &[2, 5, 1, 1]);
        let e = stargan_discriminator(vb.pp("bad"), (3, 5), 100, 8, 6)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("image_size 100") && e.contains("2^6"), "{e}");
        Ok(())
    }
}
