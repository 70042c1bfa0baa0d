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
use candle_nn::{BatchNorm, BatchNormConfig, Init, ModuleT, VarBuilder};
use layers::conv::{conv2d, conv_transpose2d, ConvSpec};
use layers::gan::{Adversarial, GeneratorInput, Verdict};
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

const WEIGHT_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

fn batch_norm(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    let weight = vb.get_with_hints(
        channels,
        "weight",
        Init::Randn {
            mean: 1.0,
            stdev: 0.02,
        },
    )?;
    let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
    let mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
    let var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
    BatchNorm::new(
        channels,
        mean,
        var,
        weight,
        bias,
        BatchNormConfig::default().eps,
    )
}

/// A layer of the `main` sequence.
enum Layer {
    /// Transposed convolution: kernel `(in, out, 4, 4)`.
    Up(Tensor, ConvSpec),
    /// Convolution: kernel `(out, in, 4, 4)`.
    Down(Tensor, ConvSpec),
    Norm(BatchNorm),
    Relu,
    LeakyRelu,
    Tanh,
}

impl Layer {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Layer::Up(k, spec) => conv_transpose2d(x, k, *spec),
            Layer::Down(k, spec) => conv2d(x, k, *spec),
            Layer::Norm(n) => n.forward_t(x, train),
            Layer::Relu => x.relu(),
            Layer::LeakyRelu => candle_nn::ops::leaky_relu(x, 0.2),
            Layer::Tanh => x.tanh(),
        }
    }
}

/// `nn.Sequential` with PyTorch's indices (activations take an index too).
struct Sequential(Vec<Layer>);

impl Sequential {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.0
            .iter()
            .try_fold(x.clone(), |h, l| l.forward(&h, train))
    }
}

fn spec(stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        stride: (stride, stride),
        padding: (padding, padding),
    }
}

fn up(i: usize, o: usize, stride: usize, padding: usize, vb: VarBuilder) -> Result<Layer> {
    let w = vb.get_with_hints((i, o, 4, 4), "weight", WEIGHT_INIT)?;
    Ok(Layer::Up(w, spec(stride, padding)))
}

fn down(i: usize, o: usize, stride: usize, padding: usize, vb: VarBuilder) -> Result<Layer> {
    let w = vb.get_with_hints((o, i, 4, 4), "weight", WEIGHT_INIT)?;
    Ok(Layer::Down(w, spec(stride, padding)))
}

pub struct Dcgan {
    cfg: Config,
    generator: Sequential,
    discriminator: Sequential,
    device: candle_core::Device,
}

impl Dcgan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let k = cfg.stages()?;
        let g = vb.pp("generator").pp("main");
        let mut gl = Vec::new();
        let mut ch = cfg.ngf << (k - 1);
        // (b, nz, 1, 1) -> (b, ngf 2^(k-1), 4, 4)
        gl.push(up(cfg.nz, ch, 1, 0, g.pp(gl.len()))?);
        gl.push(Layer::Norm(batch_norm(ch, g.pp(gl.len()))?));
        gl.push(Layer::Relu);
        for _ in 1..k {
            gl.push(up(ch, ch / 2, 2, 1, g.pp(gl.len()))?);
            ch /= 2;
            gl.push(Layer::Norm(batch_norm(ch, g.pp(gl.len()))?));
            gl.push(Layer::Relu);
        }
        gl.push(up(ch, cfg.channels, 2, 1, g.pp(gl.len()))?); // (b, nc, size, size)
        gl.push(Layer::Tanh);

        let d = vb.pp("discriminator").pp("main");
        let mut dl = Vec::new();
        dl.push(down(cfg.channels, cfg.ndf, 2, 1, d.pp(dl.len()))?);
        dl.push(Layer::LeakyRelu);
        let mut ch = cfg.ndf;
        for _ in 1..k {
            dl.push(down(ch, ch * 2, 2, 1, d.pp(dl.len()))?);
            ch *= 2;
            dl.push(Layer::Norm(batch_norm(ch, d.pp(dl.len()))?));
            dl.push(Layer::LeakyRelu);
        }
        dl.push(down(ch, 1, 1, 0, d.pp(dl.len()))?); // (b, 1, 1, 1)
        Ok(Self {
            cfg: cfg.clone(),
            generator: Sequential(gl),
            discriminator: Sequential(dl),
            device: vb.device().clone(),
        })
    }
}

impl Adversarial for Dcgan {
    fn output_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn draw_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        Ok(GeneratorInput {
            noise: rng.normal((n, self.cfg.nz), &self.device)?,
            classes: None,
            codes: None,
        })
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

layers::implicit_model!(Dcgan);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_and_reference_names_for_32_and_64() -> Result<()> {
        for (size, last_g, last_d) in [(32, 9, 8), (64, 12, 11)] {
            let varmap = VarMap::new();
            let vb = layers::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
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
