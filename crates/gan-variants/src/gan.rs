//! GAN (Goodfellow et al. 2014, "Generative Adversarial Nets") with the multilayer perceptrons
//! of PyTorch-GAN's `implementations/gan/gan.py`, on 28 x 28 digits:
//!
//! - G: `z (b, 100)` -> 128 -> 256 -> 512 -> 1024 -> 784, LeakyReLU 0.2 after each hidden layer,
//!   BatchNorm on all but the first (with the script's `eps = 0.8`, the second positional
//!   argument of `BatchNorm1d`), tanh at the end;
//! - D: 784 -> 512 -> 256 -> 1 logit, LeakyReLU 0.2 (the script's final sigmoid lives in the
//!   loss here, for numerical stability).
//!
//! Parameters `generator.model.{i}` and `discriminator.model.{i}`, the script's indices.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use layers::gan::{Adversarial, GeneratorInput, Verdict};
use layers::nn::sequential::{Layer, Sequential, Stack};
use layers::{ImageShape, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    pub latent_dim: usize,
    /// BatchNorm's epsilon in G (the reference's 0.8).
    pub batch_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            latent_dim: 100,
            batch_norm_eps: 0.8,
        }
    }
}

/// PyTorch-GAN's generator MLP from `input` features to `pixels` tanh outputs.
pub fn mlp_generator(input: usize, pixels: usize, eps: f64, vb: VarBuilder) -> Result<Stack> {
    let mut seq = Sequential::new(vb);
    let widths = [input, 128, 256, 512, 1024];
    for (k, pair) in widths.windows(2).enumerate() {
        seq = seq.linear(pair[0], pair[1])?;
        if k > 0 {
            seq = seq.batch_norm(pair[1], eps, None)?;
        }
        seq = seq.push(Layer::LeakyRelu(0.2));
    }
    Ok(seq.linear(1024, pixels)?.push(Layer::Tanh).build())
}

pub struct Gan {
    cfg: Config,
    generator: Stack,
    discriminator: Stack,
    device: candle_core::Device,
}

impl Gan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let pixels = cfg.channels * cfg.image_size * cfg.image_size;
        let generator = mlp_generator(
            cfg.latent_dim,
            pixels,
            cfg.batch_norm_eps,
            vb.pp("generator").pp("model"),
        )?;
        let discriminator = Sequential::new(vb.pp("discriminator").pp("model"))
            .linear(pixels, 512)?
            .push(Layer::LeakyRelu(0.2))
            .linear(512, 256)?
            .push(Layer::LeakyRelu(0.2))
            .linear(256, 1)?
            .build();
        Ok(Self {
            cfg: cfg.clone(),
            generator,
            discriminator,
            device: vb.device().clone(),
        })
    }
}

impl Adversarial for Gan {
    fn output_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn draw_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        GeneratorInput::noise(n, self.cfg.latent_dim, rng, &self.device)
    }

    /// `(b, latent) -> (b, c, h, w)`.
    fn generate(&self, input: &GeneratorInput, train: bool) -> Result<Tensor> {
        let [c, h, w] = self.output_shape();
        let b = input.noise.dim(0)?;
        self.generator
            .forward(&input.noise, train)?
            .reshape((b, c, h, w))
    }

    fn discriminate(&self, x: &Tensor, _classes: Option<&Tensor>, train: bool) -> Result<Verdict> {
        Ok(Verdict {
            logits: self
                .discriminator
                .forward(&x.flatten_from(1)?, train)?
                .flatten_all()?,
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
    fn shapes_and_reference_names() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let m = Gan::new(&Config::default(), vb)?;
        let x = m.generate(&m.draw_input(3, &mut Rng::new(0))?, true)?;
        assert_eq!(x.dims(), &[3, 1, 28, 28]);
        assert_eq!(m.discriminate(&x, None, true)?.logits.dims(), &[3]);
        let names = varmap.data().lock().unwrap();
        for n in [
            "generator.model.0.weight",
            "generator.model.3.running_mean",
            "generator.model.11.weight",
            "discriminator.model.4.weight",
        ] {
            assert!(names.contains_key(n), "{n}");
        }
        Ok(())
    }
}
