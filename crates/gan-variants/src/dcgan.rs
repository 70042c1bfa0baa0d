//! DCGAN (Radford et al. 2015, "Unsupervised Representation Learning with Deep Convolutional
//! Generative Adversarial Networks") as in pytorch/examples `dcgan/main.py`:
//!
//! - G: `z (b, nz, 1, 1)` -> 4x4 transposed convolution to `ngf * 2^(k-1)` channels, then
//!   stride-2 4x4 transposed convolutions halving the channels and doubling the side, each with
//!   BatchNorm and ReLU, then one to `nc` channels and tanh;
//! - D: stride-2 4x4 convolutions doubling the channels (LeakyReLU 0.2; BatchNorm after all but
//!   the first), then a 4x4 valid convolution to one logit;
//! - no biases, weights N(0, 0.02), BatchNorm scales N(1, 0.02) (the script's `weights_init`).
//!
//! `k = log2(size) - 2` (3 for 32 x 32, 4 for the script's 64 x 64). Parameters
//! `generator.main.{i}` and `discriminator.main.{i}` with the script's `nn.Sequential` indices.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::gan::{Adversarial, GeneratorInput, Verdict};
use layers::kernels::conv::ConvSpec;
use layers::nn::sequential::{Layer, Sequential, Stack};
use layers::{ImageShape, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// 32 or 64 (any power of two from 8).
    pub image_size: usize,
    pub channels: usize,
    pub nz: usize,
    pub ngf: usize,
    pub ndf: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 32,
            channels: 1,
            nz: 100,
            ngf: 64,
            ndf: 64,
        }
    }
}

impl Config {
    /// Stride-2 stages: `log2(size) - 2`.
    fn stages(&self) -> Result<usize> {
        let s = self.image_size;
        if s < 8 || !s.is_power_of_two() {
            candle_core::bail!("DCGAN image_size must be a power of two of at least 8, got {s}");
        }
        Ok(s.trailing_zeros() as usize - 2)
    }
}

pub(crate) const WEIGHT_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// BatchNorm scales N(1, 0.02), as `weights_init` sets them.
pub(crate) const NORM_INIT: Option<Init> = Some(Init::Randn {
    mean: 1.0,
    stdev: 0.02,
});

const EPS: f64 = 1e-5;

pub(crate) fn spec(stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        stride: (stride, stride),
        padding: (padding, padding),
    }
}

/// pytorch/examples' generator from a `(b, latent, 1, 1)` input: a 4 x 4 transposed
/// convolution to `ngf 2^(k-1)` maps, `k - 1` stride-2 ones halving them, each with BatchNorm
/// and ReLU, then one to `channels` and tanh: `(b, channels, 4 2^k, 4 2^k)`. The layers take the
/// indices of one `nn.Sequential` under `vb`.
pub(crate) fn generator_stack(
    latent: usize,
    (ngf, channels): (usize, usize),
    k: usize,
    vb: VarBuilder,
) -> Result<Stack> {
    let mut ch = ngf << (k - 1);
    // (b, latent, 1, 1) -> (b, ngf 2^(k-1), 4, 4)
    let mut g = Sequential::new(vb)
        .conv_transpose((latent, ch, 4), spec(1, 0), WEIGHT_INIT)?
        .batch_norm(ch, EPS, NORM_INIT)?
        .push(Layer::Relu);
    for _ in 1..k {
        g = g
            .conv_transpose((ch, ch / 2, 4), spec(2, 1), WEIGHT_INIT)?
            .batch_norm(ch / 2, EPS, NORM_INIT)?
            .push(Layer::Relu);
        ch /= 2;
    }
    Ok(
        g.conv_transpose((ch, channels, 4), spec(2, 1), WEIGHT_INIT)?
            .push(Layer::Tanh)
            .build(),
    )
}

/// pytorch/examples' discriminator down to `4 x 4`: stride-2 4 x 4 convolutions doubling the
/// maps from `ndf` (LeakyReLU 0.2; BatchNorm after all but the first), `k` of them. Returns the
/// layers (for a caller to finish) and the maps they end with, `ndf 2^(k-1)`.
pub(crate) fn discriminator_trunk(
    channels: usize,
    ndf: usize,
    k: usize,
    vb: VarBuilder,
) -> Result<(Sequential, usize)> {
    let mut d = Sequential::new(vb)
        .conv((channels, ndf, 4), spec(2, 1), false, Some(WEIGHT_INIT))?
        .push(Layer::LeakyRelu(0.2));
    let mut ch = ndf;
    for _ in 1..k {
        d = d
            .conv((ch, ch * 2, 4), spec(2, 1), false, Some(WEIGHT_INIT))?
            .batch_norm(ch * 2, EPS, NORM_INIT)?
            .push(Layer::LeakyRelu(0.2));
        ch *= 2;
    }
    Ok((d, ch))
}

pub struct Dcgan {
    cfg: Config,
    generator: Stack,
    discriminator: Stack,
    device: candle_core::Device,
}

impl Dcgan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let k = cfg.stages()?;
        let generator = generator_stack(
            cfg.nz,
            (cfg.ngf, cfg.channels),
            k,
            vb.pp("generator").pp("main"),
        )?;
        let (d, ch) =
            discriminator_trunk(cfg.channels, cfg.ndf, k, vb.pp("discriminator").pp("main"))?;
        // (b, 1, 1, 1)
        let discriminator = d
            .conv((ch, 1, 4), spec(1, 0), false, Some(WEIGHT_INIT))?
            .build();
        Ok(Self {
            cfg: cfg.clone(),
            generator,
            discriminator,
            device: vb.device().clone(),
        })
    }
}

impl Adversarial for Dcgan {
    fn output_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn draw_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        GeneratorInput::noise(n, self.cfg.nz, rng, &self.device)
    }

    /// `(b, nz) -> (b, nc, size, size)`.
    fn generate(&self, input: &GeneratorInput, train: bool) -> Result<Tensor> {
        let z = input
            .noise
            .reshape((input.noise.dim(0)?, self.cfg.nz, 1, 1))?;
        self.generator.forward(&z, train)
    }

    fn discriminate(&self, x: &Tensor, _classes: Option<&Tensor>, train: bool) -> Result<Verdict> {
        Ok(Verdict {
            logits: self.discriminator.forward(x, train)?.flatten_all()?, // (b)
            q: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_and_reference_names_for_32_and_64() -> Result<()> {
        for (size, last_g, last_d) in [(32, 9, 8), (64, 12, 11)] {
            let varmap = VarMap::new();
            let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
            let cfg = Config {
                image_size: size,
                ngf: 8,
                ndf: 8,
                ..Config::default()
            };
            let m = Dcgan::new(&cfg, vb)?;
            let input = m.draw_input(2, &mut Rng::new(1))?;
            let x = m.generate(&input, true)?;
            assert_eq!(x.dims(), &[2, 1, size, size]);
            assert_eq!(m.discriminate(&x, None, true)?.logits.dims(), &[2]);
            let names = varmap.data().lock().unwrap();
            assert!(names.contains_key(&format!("generator.main.{last_g}.weight")));
            assert!(names.contains_key(&format!("discriminator.main.{last_d}.weight")));
            assert!(names.contains_key("generator.main.1.running_var"));
        }
        Ok(())
    }
}
