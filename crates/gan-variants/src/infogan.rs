//! InfoGAN (Chen et al. 2016, "InfoGAN: Interpretable Representation Learning by Information
//! Maximizing Generative Adversarial Nets") as in PyTorch-GAN's `implementations/infogan/`:
//! the generator reads noise `z` and latent codes `c` (a 10-way categorical and 2 continuous in
//! [-1, 1]); a head Q on the discriminator's trunk predicts `c` back from the image, and both
//! networks minimise the variational bound on `-I(c; G(z, c))` (eq. 5):
//! `L_I = CE(Q_cat(x), c_cat) + 0.1 * MSE(Q_cont(x), c_cont)`.
//!
//! - G: `[z (62), c_cat (10), c_cont (2)]` -> linear to `128 x 8 x 8` -> BatchNorm, upsample,
//!   3x3 conv 128, BatchNorm (eps 0.8), LeakyReLU, upsample, 3x3 conv 64, BatchNorm, LeakyReLU,
//!   3x3 conv to the image, tanh: 32 x 32;
//! - D trunk: four stride-2 3x3 convolutions (16, 32, 64, 128 channels), LeakyReLU 0.2,
//!   BatchNorm (eps 0.8) after all but the first (the script's Dropout2d(0.25) left out: it
//!   takes its index, [`Layer::Identity`]); heads: `adv_layer` (1 logit), `aux_layer` (10
//!   category logits), `latent_layer` (2 codes).
//!
//! Parameters `generator.l1.0`, `generator.conv_blocks.{i}`, `discriminator.conv_blocks.{i}`,
//! `discriminator.{adv,aux,latent}_layer.0`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use layers::conv::ConvSpec;
use layers::gan::{Adversarial, GeneratorInput, Verdict};
use layers::sequential::{Layer, Sequential, Stack};
use layers::{ImageShape, Rng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    pub latent_dim: usize,
    /// Categories of the categorical code.
    pub categories: usize,
    /// Continuous codes, uniform in [-1, 1].
    pub code_dim: usize,
    pub lambda_cat: f64,
    pub lambda_con: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 32,
            channels: 1,
            latent_dim: 62,
            categories: 10,
            code_dim: 2,
            lambda_cat: 1.0,
            lambda_con: 0.1,
        }
    }
}

const CONV_INIT: Option<Init> = Some(Init::Randn {
    mean: 0.0,
    stdev: 0.02,
});
const NORM_INIT: Option<Init> = Some(Init::Randn {
    mean: 1.0,
    stdev: 0.02,
});

fn same(stride: usize) -> ConvSpec {
    ConvSpec {
        stride: (stride, stride),
        padding: (1, 1),
    }
}

pub struct InfoGan {
    cfg: Config,
    l1: Linear,
    generator: Stack,
    trunk: Stack,
    adv_layer: Linear,
    aux_layer: Linear,
    latent_layer: Linear,
    device: candle_core::Device,
}

impl InfoGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if !cfg.image_size.is_multiple_of(16) {
            candle_core::bail!(
                "InfoGAN image_size must be a multiple of 16, got {}",
                cfg.image_size
            );
        }
        let (g, d) = (vb.pp("generator"), vb.pp("discriminator"));
        let init = cfg.image_size / 4;
        let input = cfg.latent_dim + cfg.categories + cfg.code_dim;
        let l1 = layers::init::linear(input, 128 * init * init, g.pp("l1").pp(0))?;
        let generator = Sequential::new(g.pp("conv_blocks"))
            .batch_norm(128, 1e-5, NORM_INIT)?
            .push(Layer::Upsample2)
            .conv((128, 128, 3), same(1), true, CONV_INIT)?
            .batch_norm(128, 0.8, NORM_INIT)?
            .push(Layer::LeakyRelu(0.2))
            .push(Layer::Upsample2)
            .conv((128, 64, 3), same(1), true, CONV_INIT)?
            .batch_norm(64, 0.8, NORM_INIT)?
            .push(Layer::LeakyRelu(0.2))
            .conv((64, cfg.channels, 3), same(1), true, CONV_INIT)?
            .push(Layer::Tanh)
            .build();
        let mut trunk = Sequential::new(d.pp("conv_blocks"));
        let mut ch = cfg.channels;
        for (k, out) in [16, 32, 64, 128].into_iter().enumerate() {
            trunk = trunk
                .conv((ch, out, 3), same(2), true, CONV_INIT)?
                .push(Layer::LeakyRelu(0.2))
                .push(Layer::Identity);
            if k > 0 {
                trunk = trunk.batch_norm(out, 0.8, NORM_INIT)?;
            }
            ch = out;
        }
        let features = 128 * (cfg.image_size / 16).pow(2);
        Ok(Self {
            cfg: cfg.clone(),
            l1,
            generator,
            trunk: trunk.build(),
            adv_layer: layers::init::linear(features, 1, d.pp("adv_layer").pp(0))?,
            aux_layer: layers::init::linear(features, cfg.categories, d.pp("aux_layer").pp(0))?,
            latent_layer: layers::init::linear(features, cfg.code_dim, d.pp("latent_layer").pp(0))?,
            device: vb.device().clone(),
        })
    }

    /// `(n, categories + code_dim)`: one-hot categories then continuous codes.
    fn codes(&self, categories: &[u32], continuous: Tensor) -> Result<Tensor> {
        let k = self.cfg.categories;
        let mut one_hot = vec![0f32; categories.len() * k];
        for (i, &c) in categories.iter().enumerate() {
            one_hot[i * k + c as usize] = 1.0;
        }
        let one_hot = Tensor::from_vec(one_hot, (categories.len(), k), &self.device)?;
        Tensor::cat(&[&one_hot, &continuous], 1)
    }
}

impl Adversarial for InfoGan {
    fn output_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn categories(&self) -> Option<usize> {
        Some(self.cfg.categories)
    }

    /// Inputs with category `r` on row `r` and continuous code `code` swept over [-1, 1] along
    /// the `columns`; one noise vector for every cell, the other codes at 0.
    fn code_sweep(
        &self,
        rows: usize,
        columns: usize,
        code: usize,
        rng: &mut Rng,
    ) -> Result<Option<GeneratorInput>> {
        if code >= self.cfg.code_dim {
            candle_core::bail!(
                "InfoGAN has {} continuous codes; --code {code} is out of range",
                self.cfg.code_dim
            );
        }
        let n = rows * columns;
        let z = rng.normal((1, self.cfg.latent_dim), &self.device)?;
        let categories: Vec<u32> = (0..n)
            .map(|i| ((i / columns) % self.cfg.categories) as u32)
            .collect();
        let mut cont = vec![0f32; n * self.cfg.code_dim];
        for i in 0..n {
            let t = (i % columns) as f32 / (columns.max(2) - 1) as f32;
            cont[i * self.cfg.code_dim + code] = -1.0 + 2.0 * t;
        }
        let cont = Tensor::from_vec(cont, (n, self.cfg.code_dim), &self.device)?;
        Ok(Some(GeneratorInput {
            noise: z.broadcast_as((n, self.cfg.latent_dim))?.contiguous()?,
            classes: None,
            codes: Some(self.codes(&categories, cont)?),
        }))
    }

    fn draw_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        let categories: Vec<u32> = (0..n)
            .map(|_| rng.below(self.cfg.categories) as u32)
            .collect();
        let cont = ((rng.uniform((n, self.cfg.code_dim), &self.device)? * 2.0)? - 1.0)?;
        Ok(GeneratorInput {
            noise: rng.normal((n, self.cfg.latent_dim), &self.device)?,
            classes: None,
            codes: Some(self.codes(&categories, cont)?),
        })
    }

    /// Category per row, the first continuous code swept along the columns.
    fn grid_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        let columns = self.grid_columns();
        self.code_sweep(n.div_ceil(columns), columns, 0, rng)?
            .ok_or_else(|| candle_core::Error::Msg("InfoGAN has no continuous code".into()))
    }

    fn grid_columns(&self) -> usize {
        10
    }

    /// `[z, c] -> (b, c, size, size)`.
    fn generate(&self, input: &GeneratorInput, train: bool) -> Result<Tensor> {
        let codes = input
            .codes
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("InfoGAN needs latent codes".into()))?;
        let b = input.noise.dim(0)?;
        let s = self.cfg.image_size / 4;
        let h = self.l1.forward(&Tensor::cat(&[&input.noise, codes], 1)?)?; // (b, 128 s s)
        self.generator.forward(&h.reshape((b, 128, s, s))?, train)
    }

    /// The adversarial logit, and Q: `(b, categories + code_dim)` category logits then codes.
    fn discriminate(&self, x: &Tensor, _classes: Option<&Tensor>, train: bool) -> Result<Verdict> {
        let features = self.trunk.forward(x, train)?.flatten_from(1)?; // (b, 128 * 2 * 2)
        let q = Tensor::cat(
            &[
                &self.aux_layer.forward(&features)?,
                &self.latent_layer.forward(&features)?,
            ],
            1,
        )?;
        Ok(Verdict {
            logits: self.adv_layer.forward(&features)?.flatten_all()?,
            q: Some(q),
        })
    }

    /// `lambda_cat CE(Q_cat, c_cat) + lambda_con MSE(Q_cont, c_cont)`.
    fn auxiliary_loss(&self, input: &GeneratorInput, verdict: &Verdict) -> Result<Option<Tensor>> {
        let (Some(codes), Some(q)) = (&input.codes, &verdict.q) else {
            return Ok(None);
        };
        let k = self.cfg.categories;
        let target = codes
            .narrow(1, 0, k)?
            .argmax(D::Minus1)?
            .to_dtype(DType::U32)?;
        let cat = candle_nn::loss::cross_entropy(&q.narrow(1, 0, k)?, &target)?;
        let cont = (q.narrow(1, k, self.cfg.code_dim)? - codes.narrow(1, k, self.cfg.code_dim)?)?
            .sqr()?
            .mean_all()?;
        Ok(Some(
            ((cat * self.cfg.lambda_cat)? + (cont * self.cfg.lambda_con)?)?,
        ))
    }
}

layers::implicit_model!(InfoGan);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn shapes_names_and_the_information_loss() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let m = InfoGan::new(&Config::default(), vb)?;
        let input = m.draw_input(4, &mut Rng::new(0))?;
        let x = m.generate(&input, true)?;
        assert_eq!(x.dims(), &[4, 1, 32, 32]);
        let v = m.discriminate(&x, None, true)?;
        assert_eq!(v.logits.dims(), &[4]);
        assert_eq!(v.q.as_ref().unwrap().dims(), &[4, 12]);
        let loss = m.auxiliary_loss(&input, &v)?.unwrap().to_scalar::<f32>()?;
        // Near chance for an untrained Q: CE about ln 10.
        assert!(loss > 1.5 && loss < 4.0, "{loss}");
        let sweep = m.code_sweep(10, 5, 1, &mut Rng::new(1))?.unwrap();
        let codes = sweep.codes.unwrap().to_vec2::<f32>()?;
        assert_eq!(codes[7][1], 1.0); // row 1: category 1
        assert_eq!((codes[0][11], codes[4][11]), (-1.0, 1.0)); // code 1 swept
        assert!(m.code_sweep(2, 2, 5, &mut Rng::new(1)).is_err());
        let names = varmap.data().lock().unwrap();
        for n in [
            "generator.l1.0.weight",
            "generator.conv_blocks.9.weight",
            "discriminator.conv_blocks.14.running_var",
            "discriminator.aux_layer.0.weight",
            "discriminator.latent_layer.0.bias",
        ] {
            assert!(names.contains_key(n), "{n}");
        }
        Ok(())
    }
}
