//! InfoGAN (Chen et al. 2016, "InfoGAN: Interpretable Representation Learning by Information
//! Maximizing Generative Adversarial Nets"): the generator reads noise `z` and latent codes `c`
//! (a 10-way categorical and 2 continuous in [-1, 1]); a head Q on the discriminator's trunk
//! predicts `c` back from the image, and both networks minimise the variational bound on
//! `-I(c; G(z, c))` (eq. 5): `L_I = CE(Q_cat(x), c_cat) + 0.1 * MSE(Q_cont(x), c_cont)`.
//!
//! Two networks (`network` in the config):
//!
//! `"pytorch-gan"` (the default), PyTorch-GAN's `implementations/infogan/`, 32 x 32:
//! - G: `[z (62), c_cat (10), c_cont (2)]` -> linear to `128 x 8 x 8` -> BatchNorm, upsample,
//!   3x3 conv 128, BatchNorm (eps 0.8), LeakyReLU, upsample, 3x3 conv 64, BatchNorm, LeakyReLU,
//!   3x3 conv to the image, tanh;
//! - D trunk: four stride-2 3x3 convolutions (16, 32, 64, 128 channels), LeakyReLU 0.2,
//!   BatchNorm (eps 0.8) after all but the first (the script's Dropout2d(0.25) left out: it
//!   takes its index, [`Layer::Identity`]); heads: `adv_layer` (1 logit), `aux_layer` (10
//!   category logits), `latent_layer` (2 codes).
//! - Parameters `generator.l1.0`, `generator.conv_blocks.{i}`, `discriminator.conv_blocks.{i}`,
//!   `discriminator.{adv,aux,latent}_layer.0`.
//!
//! `"paper"`, the paper's MNIST networks (appendix C, table 1), 28 x 28, with the module names of
//! Natsu6767/InfoGAN-PyTorch (fully connected layers as 1x1 / 7x7 convolutions):
//! - G: `c (74)` -> FC 1024 (`fc_width`), BN, ReLU (`tconv1`, `bn1`) -> FC 7 x 7 x 128, BN,
//!   ReLU (`tconv2`, `bn2`) -> 4x4 stride-2 upconv 64, BN, ReLU (`tconv3`, `bn3`) -> 4x4
//!   stride-2 upconv to the image (`tconv4`), tanh (the reference's sigmoid would not match
//!   genzoo's [-1, 1] images);
//! - D trunk: 4x4 stride-2 conv 64, LeakyReLU 0.1 (`conv1`) -> 4x4 stride-2 conv 128, BN,
//!   LeakyReLU (`conv2`, `bn2`) -> FC 1024 (`fc_width`), BN, LeakyReLU (`conv3`, `bn3`); D head:
//!   FC to one logit (`d_head.conv`); Q head: FC 128, BN, LeakyReLU (`q_head.conv1`,
//!   `q_head.bn1`), then the category logits (`q_head.conv_disc`) and the codes (`q_head.conv_mu`).
//! - Parameters `generator.{tconv1..4, bn1..3}`, `discriminator.{conv1..3, bn2, bn3}`,
//!   `discriminator.d_head.conv`, `discriminator.q_head.{conv1, bn1, conv_disc, conv_mu}`.
//!
//! The paper's network is the faster (about 26 M multiply-adds per image each way against
//! PyTorch-GAN's 3x3 convolutions at 16 x 16 and 32 x 32) and the one the paper's 5% error
//! comes from.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use layers::gan::{Adversarial, GeneratorInput, Verdict};
use layers::kernels::conv::ConvSpec;
use layers::kernels::linear::Linear;
use layers::nn::sequential::{Layer, Sequential, Stack};
use layers::{ImageShape, Rng};
use serde::{Deserialize, Serialize};

/// Which InfoGAN networks (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    PytorchGan,
    Paper,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub network: Network,
    pub image_size: usize,
    pub channels: usize,
    pub latent_dim: usize,
    /// Categories of the categorical code.
    pub categories: usize,
    /// Continuous codes, uniform in [-1, 1].
    pub code_dim: usize,
    pub lambda_cat: f64,
    pub lambda_con: f64,
    /// The paper network's fully connected width: G's first layer and D's last trunk layer
    /// (1024 in the paper, where they hold 98% of both networks' weights). Narrower widths make
    /// files small enough to ship (models/infogan.toml). PyTorch-GAN's network has none.
    pub fc_width: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            network: Network::PytorchGan,
            image_size: 32,
            channels: 1,
            latent_dim: 62,
            categories: 10,
            code_dim: 2,
            lambda_cat: 1.0,
            lambda_con: 0.1,
            fc_width: PAPER_FC_WIDTH,
        }
    }
}

/// The paper's fully connected width (appendix C, table 1).
const PAPER_FC_WIDTH: usize = 1024;

/// N(0, 0.02), both references' convolution init.
const NORMAL_002: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};
const CONV_INIT: Option<Init> = Some(NORMAL_002);
const NORM_INIT: Option<Init> = Some(Init::Randn {
    mean: 1.0,
    stdev: 0.02,
});

/// The layers of either network, as stages the forward passes share.
struct Networks {
    /// PyTorch-GAN's `l1` (`[z, c]` -> `128 x s x s`); the paper's G reads `[z, c]` as a
    /// `(b, 74, 1, 1)` map.
    project: Option<Linear>,
    generator: Stack,
    trunk: Stack,
    /// Q's layers before its two outputs (empty for PyTorch-GAN).
    q_shared: Stack,
    adversarial: Stack,
    q_categories: Stack,
    q_codes: Stack,
}

pub struct InfoGan {
    cfg: Config,
    nets: Networks,
    device: candle_core::Device,
}

/// A one-layer stack (a head) under `vb`'s prefix.
fn linear_head(i: usize, o: usize, vb: VarBuilder) -> Result<Stack> {
    Ok(Stack(vec![Layer::Linear(layers::nn::init::linear(
        i, o, vb,
    )?)]))
}

/// A 1x1 convolution with bias as a one-layer stack: the paper's fully connected head as
/// the reference writes it.
fn conv_head(i: usize, o: usize, vb: VarBuilder, name: &str) -> Result<Stack> {
    Ok(Sequential::new(vb)
        .named(name)
        .conv((i, o, 1), conv_spec(1, 0), true, CONV_INIT)?
        .build())
}

/// Square stride and padding.
fn conv_spec(stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        stride: (stride, stride),
        padding: (padding, padding),
    }
}

fn pytorch_gan(cfg: &Config, g: VarBuilder, d: VarBuilder) -> Result<Networks> {
    if !cfg.image_size.is_multiple_of(16) {
        candle_core::bail!(
            "InfoGAN (pytorch-gan) image_size must be a multiple of 16, got {}",
            cfg.image_size
        );
    }
    if cfg.fc_width != PAPER_FC_WIDTH {
        candle_core::bail!(
            "InfoGAN fc_width ({}) is the paper network's; PyTorch-GAN's network has no fully \
             connected width to set (leave it out, or set network = \"paper\")",
            cfg.fc_width
        );
    }
    let init = cfg.image_size / 4;
    let input = cfg.latent_dim + cfg.categories + cfg.code_dim;
    let project = layers::nn::init::linear(input, 128 * init * init, g.pp("l1").pp(0))?;
    let generator = Sequential::new(g.pp("conv_blocks"))
        .batch_norm(128, 1e-5, NORM_INIT)?
        .push(Layer::Upsample2)
        .conv((128, 128, 3), conv_spec(1, 1), true, CONV_INIT)?
        .batch_norm(128, 0.8, NORM_INIT)?
        .push(Layer::LeakyRelu(0.2))
        .push(Layer::Upsample2)
        .conv((128, 64, 3), conv_spec(1, 1), true, CONV_INIT)?
        .batch_norm(64, 0.8, NORM_INIT)?
        .push(Layer::LeakyRelu(0.2))
        .conv((64, cfg.channels, 3), conv_spec(1, 1), true, CONV_INIT)?
        .push(Layer::Tanh)
        .build();
    let mut trunk = Sequential::new(d.pp("conv_blocks"));
    let mut ch = cfg.channels;
    for (k, out) in [16, 32, 64, 128].into_iter().enumerate() {
        trunk = trunk
            .conv((ch, out, 3), conv_spec(2, 1), true, CONV_INIT)?
            .push(Layer::LeakyRelu(0.2))
            .push(Layer::Identity);
        if k > 0 {
            trunk = trunk.batch_norm(out, 0.8, NORM_INIT)?;
        }
        ch = out;
    }
    let features = 128 * (cfg.image_size / 16).pow(2);
    Ok(Networks {
        project: Some(project),
        generator,
        trunk: trunk.build(),
        q_shared: Stack(Vec::new()),
        adversarial: linear_head(features, 1, d.pp("adv_layer").pp(0))?,
        q_categories: linear_head(features, cfg.categories, d.pp("aux_layer").pp(0))?,
        q_codes: linear_head(features, cfg.code_dim, d.pp("latent_layer").pp(0))?,
    })
}

fn paper(cfg: &Config, g: VarBuilder, d: VarBuilder) -> Result<Networks> {
    if cfg.image_size != 28 {
        candle_core::bail!(
            "InfoGAN (paper) is built for 28 x 28 images, got image_size {}",
            cfg.image_size
        );
    }
    if cfg.fc_width == 0 {
        candle_core::bail!("InfoGAN (paper) fc_width must be at least 1, got 0");
    }
    let width = cfg.fc_width;
    let input = cfg.latent_dim + cfg.categories + cfg.code_dim;
    let up = conv_spec(2, 1);
    let generator = Sequential::new(g)
        .named("tconv1")
        .conv_transpose((input, width, 1), conv_spec(1, 0), NORMAL_002)?
        .named("bn1")
        .batch_norm(width, 1e-5, NORM_INIT)?
        .push(Layer::Relu)
        .named("tconv2")
        .conv_transpose((width, 128, 7), conv_spec(1, 0), NORMAL_002)?
        .named("bn2")
        .batch_norm(128, 1e-5, NORM_INIT)?
        .push(Layer::Relu)
        .named("tconv3")
        .conv_transpose((128, 64, 4), up, NORMAL_002)?
        .named("bn3")
        .batch_norm(64, 1e-5, NORM_INIT)?
        .push(Layer::Relu)
        .named("tconv4")
        .conv_transpose((64, cfg.channels, 4), up, NORMAL_002)?
        .push(Layer::Tanh)
        .build();
    let trunk = Sequential::new(d.clone())
        .named("conv1")
        .conv((cfg.channels, 64, 4), up, true, CONV_INIT)?
        .push(Layer::LeakyRelu(0.1))
        .named("conv2")
        .conv((64, 128, 4), up, false, CONV_INIT)?
        .named("bn2")
        .batch_norm(128, 1e-5, NORM_INIT)?
        .push(Layer::LeakyRelu(0.1))
        .named("conv3")
        .conv((128, width, 7), conv_spec(1, 0), false, CONV_INIT)?
        .named("bn3")
        .batch_norm(width, 1e-5, NORM_INIT)?
        .push(Layer::LeakyRelu(0.1))
        .build();
    let q = d.pp("q_head");
    let q_shared = Sequential::new(q.clone())
        .named("conv1")
        .conv((width, 128, 1), conv_spec(1, 0), false, CONV_INIT)?
        .named("bn1")
        .batch_norm(128, 1e-5, NORM_INIT)?
        .push(Layer::LeakyRelu(0.1))
        .build();
    Ok(Networks {
        project: None,
        generator,
        trunk,
        q_shared,
        adversarial: conv_head(width, 1, d.pp("d_head"), "conv")?,
        q_categories: conv_head(128, cfg.categories, q.clone(), "conv_disc")?,
        q_codes: conv_head(128, cfg.code_dim, q, "conv_mu")?,
    })
}

impl InfoGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (g, d) = (vb.pp("generator"), vb.pp("discriminator"));
        let nets = match cfg.network {
            Network::PytorchGan => pytorch_gan(cfg, g, d)?,
            Network::Paper => paper(cfg, g, d)?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            nets,
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

    fn continuous_codes(&self) -> usize {
        self.cfg.code_dim
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
        let zc = Tensor::cat(&[&input.noise, codes], 1)?; // (b, 74)
        let h = match &self.nets.project {
            Some(l1) => {
                let s = self.cfg.image_size / 4;
                l1.forward(&zc)?.reshape((b, 128, s, s))?
            }
            None => zc.reshape((b, (), 1, 1))?,
        };
        self.nets.generator.forward(&h, train)
    }

    /// The adversarial logit, and Q: `(b, categories + code_dim)` category logits then codes.
    fn discriminate(&self, x: &Tensor, _classes: Option<&Tensor>, train: bool) -> Result<Verdict> {
        let mut features = self.nets.trunk.forward(x, train)?;
        if self.nets.project.is_some() {
            features = features.flatten_from(1)?; // (b, 128 * 2 * 2) for the linear heads
        }
        let q = self.nets.q_shared.forward(&features, train)?;
        let q = Tensor::cat(
            &[
                &self.nets.q_categories.forward(&q, train)?.flatten_from(1)?,
                &self.nets.q_codes.forward(&q, train)?.flatten_from(1)?,
            ],
            1,
        )?;
        Ok(Verdict {
            logits: self
                .nets
                .adversarial
                .forward(&features, train)?
                .flatten_all()?,
            q: Some(q),
        })
    }

    /// The paper's network trains as Natsu6767/InfoGAN-PyTorch does: Q's head with G, D's
    /// trunk by the adversarial loss alone. With the trunk also learning `L_I` (PyTorch-GAN's
    /// single optimiser over everything), 500 steps of the paper's network drove `L_I` to 0.12
    /// while every category drew the same digit: G had hidden the code in texture that the
    /// trunk learned to read.
    fn auxiliary_head(&self) -> Option<&'static str> {
        match self.cfg.network {
            Network::PytorchGan => None,
            Network::Paper => Some("discriminator.q_head."),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn shapes_names_and_the_information_loss() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
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

    /// The paper network at 28 x 28 with fully connected layers `fc_width` wide, and its
    /// variables.
    fn paper_network(fc_width: usize) -> Result<(InfoGan, VarMap, Config)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let cfg = Config {
            network: Network::Paper,
            image_size: 28,
            fc_width,
            ..Config::default()
        };
        Ok((InfoGan::new(&cfg, vb)?, varmap, cfg))
    }

    /// Each named variable is there with its shape.
    fn assert_shapes(varmap: &VarMap, expected: &[(&str, &[usize])]) {
        let names = varmap.data().lock().unwrap();
        for (n, shape) in expected {
            let t = names.get(*n).unwrap_or_else(|| panic!("{n} missing"));
            assert_eq!(t.dims(), *shape, "{n}");
        }
    }

    /// The error building `cfg` gives, if any.
    fn build_error(cfg: &Config) -> Option<String> {
        let vb = layers::nn::init::seeded_var_builder(&VarMap::new(), 0, DType::F32, &Device::Cpu);
        InfoGan::new(cfg, vb).err().map(|e| e.to_string())
    }

    #[test]
    fn the_paper_network_at_28_pixels_under_the_reference_names() -> Result<()> {
        let (m, varmap, cfg) = paper_network(PAPER_FC_WIDTH)?;
        let input = m.draw_input(3, &mut Rng::new(0))?;
        let x = m.generate(&input, true)?;
        assert_eq!(x.dims(), &[3, 1, 28, 28]);
        let v = m.discriminate(&x, None, true)?;
        assert_eq!(v.logits.dims(), &[3]);
        assert_eq!(v.q.as_ref().unwrap().dims(), &[3, 12]);
        assert_shapes(
            &varmap,
            &[
                ("generator.tconv1.weight", &[74, 1024, 1, 1]),
                ("generator.tconv2.weight", &[1024, 128, 7, 7]),
                ("generator.bn3.running_var", &[64]),
                ("generator.tconv4.weight", &[64, 1, 4, 4]),
                ("discriminator.conv1.bias", &[64]),
                ("discriminator.conv3.weight", &[1024, 128, 7, 7]),
                ("discriminator.d_head.conv.weight", &[1, 1024, 1, 1]),
                ("discriminator.q_head.conv1.weight", &[128, 1024, 1, 1]),
                ("discriminator.q_head.conv_disc.bias", &[10]),
                ("discriminator.q_head.conv_mu.weight", &[2, 128, 1, 1]),
            ],
        );
        assert!(!varmap
            .data()
            .lock()
            .unwrap()
            .contains_key("discriminator.conv2.bias"));
        let err = build_error(&Config {
            image_size: 32,
            ..cfg
        })
        .unwrap();
        assert!(err.contains("28 x 28") && err.contains("32"), "{err}");
        Ok(())
    }

    /// `fc_width` narrows the paper network's two fully connected layers and what reads them,
    /// and nothing else; PyTorch-GAN's network, which has no such layer, refuses it.
    #[test]
    fn the_fully_connected_width_sets_the_paper_networks_wide_layers() -> Result<()> {
        let (m, varmap, cfg) = paper_network(48)?;
        let v = m.discriminate(
            &m.generate(&m.draw_input(2, &mut Rng::new(0))?, true)?,
            None,
            true,
        )?;
        assert_eq!(v.q.as_ref().unwrap().dims(), &[2, 12]);
        assert_shapes(
            &varmap,
            &[
                ("generator.tconv1.weight", &[74, 48, 1, 1]),
                ("generator.bn1.running_var", &[48]),
                ("generator.tconv2.weight", &[48, 128, 7, 7]),
                ("generator.tconv3.weight", &[128, 64, 4, 4]),
                ("discriminator.conv3.weight", &[48, 128, 7, 7]),
                ("discriminator.bn3.weight", &[48]),
                ("discriminator.d_head.conv.weight", &[1, 48, 1, 1]),
                ("discriminator.q_head.conv1.weight", &[128, 48, 1, 1]),
            ],
        );
        let err = build_error(&Config { fc_width: 0, ..cfg }).unwrap();
        assert!(err.contains("fc_width must be at least 1"), "{err}");
        let err = build_error(&Config {
            fc_width: 256,
            ..Config::default()
        })
        .unwrap();
        assert!(
            err.contains("fc_width (256)") && err.contains("paper"),
            "{err}"
        );
        assert_eq!(build_error(&Config::default()), None);
        Ok(())
    }
}
