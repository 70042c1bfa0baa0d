//! Conditional GAN (Mirza & Osindero 2014, "Conditional Generative Adversarial Nets") as in
//! PyTorch-GAN's `implementations/cgan/cgan.py`: the class label, embedded, is concatenated to
//! the generator's noise and to the discriminator's flattened image.
//!
//! - G: `[embed(y) (10), z (100)]` -> the GAN's MLP ([`crate::gan::mlp_generator`]) -> 784, tanh;
//! - D: `[image (784), embed(y) (10)]` -> 512 -> 512 -> 512 -> 1, LeakyReLU 0.2 (the script's
//!   dropout 0.4 after the second and third layers is left out: Candle's CPU dropout is not
//!   seeded, and genzoo runs are reproducible; an identity layer holds each dropout's index, so
//!   the linear layers are `model.0`, `.2`, `.5`, `.8` as in the script's checkpoints).
//!
//! Parameters `generator.label_emb.weight`, `generator.model.{i}`,
//! `discriminator.label_embedding.weight`, `discriminator.model.{i}`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
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
    pub classes: usize,
    pub batch_norm_eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            latent_dim: 100,
            classes: 10,
            batch_norm_eps: 0.8,
        }
    }
}

/// `nn.Embedding(n, n)` (weights N(0, 1), as PyTorch initialises them).
fn embedding(n: usize, vb: VarBuilder) -> Result<Embedding> {
    let w = vb.get_with_hints(
        (n, n),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )?;
    Ok(Embedding::new(w, n))
}

pub struct ConditionalGan {
    cfg: Config,
    label_emb: Embedding,
    generator: Stack,
    label_embedding: Embedding,
    discriminator: Stack,
    device: candle_core::Device,
}

impl ConditionalGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let pixels = cfg.channels * cfg.image_size * cfg.image_size;
        let (g, d) = (vb.pp("generator"), vb.pp("discriminator"));
        let generator = crate::gan::mlp_generator(
            cfg.latent_dim + cfg.classes,
            pixels,
            cfg.batch_norm_eps,
            g.pp("model"),
        )?;
        let discriminator = Sequential::new(d.pp("model"))
            .linear(pixels + cfg.classes, 512)?
            .push(Layer::LeakyRelu(0.2))
            .linear(512, 512)?
            .push(Layer::Identity) // the script's Dropout(0.4): its index keeps the names
            .push(Layer::LeakyRelu(0.2))
            .linear(512, 512)?
            .push(Layer::Identity)
            .push(Layer::LeakyRelu(0.2))
            .linear(512, 1)?
            .build();
        Ok(Self {
            cfg: cfg.clone(),
            label_emb: embedding(cfg.classes, g.pp("label_emb"))?,
            generator,
            label_embedding: embedding(cfg.classes, d.pp("label_embedding"))?,
            discriminator,
            device: vb.device().clone(),
        })
    }

    fn labels<'a>(&self, classes: Option<&'a Tensor>) -> Result<&'a Tensor> {
        classes
            .ok_or_else(|| candle_core::Error::Msg("the conditional GAN needs class labels".into()))
    }
}

impl Adversarial for ConditionalGan {
    fn output_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn classes(&self) -> Option<usize> {
        Some(self.cfg.classes)
    }

    fn draw_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        let classes: Vec<u32> = (0..n).map(|_| rng.below(self.cfg.classes) as u32).collect();
        Ok(GeneratorInput {
            noise: rng.normal((n, self.cfg.latent_dim), &self.device)?,
            classes: Some(Tensor::new(classes, &self.device)?),
            codes: None,
        })
    }

    /// Row `r` of the grid shows class `r`.
    fn grid_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        let mut input = self.draw_input(n, rng)?;
        let per_row = self.grid_columns();
        let classes: Vec<u32> = (0..n)
            .map(|i| ((i / per_row) % self.cfg.classes) as u32)
            .collect();
        input.classes = Some(Tensor::new(classes, &self.device)?);
        Ok(input)
    }

    fn grid_columns(&self) -> usize {
        10
    }

    /// `[embed(y), z] (b, 110) -> (b, c, h, w)`.
    fn generate(&self, input: &GeneratorInput, train: bool) -> Result<Tensor> {
        let [c, h, w] = self.output_shape();
        let b = input.noise.dim(0)?;
        let y = self
            .label_emb
            .forward(self.labels(input.classes.as_ref())?)?;
        let gen_input = Tensor::cat(&[&y, &input.noise], 1)?;
        self.generator
            .forward(&gen_input, train)?
            .reshape((b, c, h, w))
    }

    /// `[image, embed(y)] (b, 794) -> (b)`.
    fn discriminate(&self, x: &Tensor, classes: Option<&Tensor>, train: bool) -> Result<Verdict> {
        let y = self.label_embedding.forward(self.labels(classes)?)?;
        let d_in = Tensor::cat(&[&x.flatten_from(1)?, &y], 1)?;
        Ok(Verdict {
            logits: self.discriminator.forward(&d_in, train)?.flatten_all()?,
            q: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use layers::gan::{AdversarialSettings, AdversarialTraining};
    use layers::GenerativeModel;

    #[test]
    fn labels_steer_both_networks() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let m = ConditionalGan::new(&Config::default(), vb)?;
        let mut input = m.draw_input(2, &mut Rng::new(0))?;
        let a = m.generate(&input, false)?;
        input.classes = Some((input.classes.unwrap() + 1.0)?.to_dtype(DType::U32)?);
        let b = m.generate(&input, false)?;
        let moved = (a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 0.0, "the label does not reach G");
        assert_eq!(b.dims(), &[2, 1, 28, 28]);
        assert!(m.discriminate(&b, None, false).is_err());
        let names = varmap.data().lock().unwrap();
        for n in [
            "generator.label_emb.weight",
            "discriminator.label_embedding.weight",
            "discriminator.model.8.weight",
        ] {
            assert!(names.contains_key(n), "{n}");
        }
        let m = AdversarialTraining::new(m, AdversarialSettings::default(), "cgan");
        let x = m.sample_classes(&[3, 7, 9], &mut Rng::new(1))?;
        assert_eq!(x.dims(), &[3, 1, 28, 28]);
        assert!(m.sample_classes(&[10], &mut Rng::new(1)).is_err());
        Ok(())
    }
}
