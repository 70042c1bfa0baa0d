//! PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", sec. 3.5) for binary
//! images: a stack of masked convolutions that keeps the receptive field of every output above
//! and to the left of it. A `k0 x k0` mask-A convolution, `layers` mask-B `k x k` convolutions
//! with ReLU, a 1x1 ReLU layer and a 1x1 output layer of Bernoulli logits. The defaults are the
//! `pixelcnn` workload of BENCHMARKS.md (7x7 then 7 x 3x3, 64 channels).
//!
//! Parameters `input_conv`, `layers.{i}`, `head.0`, `head.1`, each `weight` and `bias`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use layers::kernels::activation::Activation;
use layers::nn::masked::{MaskType, MaskedConv2d};
use layers::ImageShape;
use serde::{Deserialize, Serialize};

use crate::ar::{Autoregressive, Head, Output};
use crate::cached::{sample_conv_stack, CachedConv};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    pub hidden: usize,
    pub layers: usize,
    pub first_kernel: usize,
    pub kernel: usize,
    pub head_hidden: usize,
    /// `bernoulli` (binary images) or `softmax` (256 intensity levels).
    pub output: Output,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            hidden: 64,
            layers: 7,
            first_kernel: 7,
            kernel: 3,
            head_hidden: 64,
            output: Output::Bernoulli,
        }
    }
}

pub struct PixelCnn {
    cfg: Config,
    input_conv: MaskedConv2d,
    layers: Vec<MaskedConv2d>,
    head: Head,
    device: Device,
}

impl PixelCnn {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let groups = cfg.channels;
        let conv = |i, o, k, m, vb| MaskedConv2d::new(i, o, (k, k), m, groups, vb);
        let input_conv = conv(
            cfg.channels,
            cfg.hidden,
            cfg.first_kernel,
            MaskType::A,
            vb.pp("input_conv"),
        )?;
        let layers = (0..cfg.layers)
            .map(|i| {
                conv(
                    cfg.hidden,
                    cfg.hidden,
                    cfg.kernel,
                    MaskType::B,
                    vb.pp(format!("layers.{i}")),
                )
            })
            .collect::<Result<_>>()?;
        let head = Head::new(
            cfg.hidden,
            cfg.head_hidden,
            cfg.channels,
            cfg.output,
            vb.pp("head"),
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            input_conv,
            layers,
            head,
            device: vb.device().clone(),
        })
    }

    /// Replaces the first layer's mask by mask B: the output at a pixel then sees the pixel
    /// itself. For tests that show the autoregressive check catches it.
    pub fn with_leaky_first_layer(mut self, vb: VarBuilder) -> Result<Self> {
        let c = &self.cfg;
        self.input_conv = MaskedConv2d::new(
            c.channels,
            c.hidden,
            (c.first_kernel, c.first_kernel),
            MaskType::B,
            c.channels,
            vb.pp("input_conv"),
        )?;
        Ok(self)
    }
}

impl Autoregressive for PixelCnn {
    fn image_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn output(&self) -> Output {
        self.cfg.output
    }

    fn effective_parameters(&self) -> Option<usize> {
        let convs = std::iter::once(&self.input_conv)
            .chain(&self.layers)
            .chain(&self.head.convs);
        convs.map(|c| c.effective_parameters().ok()).sum()
    }

    /// `(b, c, h, w) -> (b, c, h, w)` logits.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.input_conv.forward(x)?; // (b, hidden, h, w)
        for layer in &self.layers {
            h = layer.forward_activated(&h, Activation::Relu)?;
        }
        self.head.forward(&h)
    }

    /// Cached sampling: each layer evaluated at the new position only.
    fn sample_from_uniforms(&self, uniforms: &[f32], n: usize) -> Result<Tensor> {
        let mut convs = vec![CachedConv::new(&self.input_conv, false)?];
        for layer in &self.layers {
            convs.push(CachedConv::new(layer, true)?);
        }
        convs.extend(self.head.cached()?);
        sample_conv_stack(
            &convs,
            self.image_shape(),
            self.cfg.output,
            uniforms,
            n,
            &self.device,
        )
    }
}

crate::autoregressive_model!(PixelCnn);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::testing::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    fn cfg(channels: usize) -> Config {
        Config {
            image_size: 8,
            channels,
            hidden: 24,
            layers: 2,
            first_kernel: 5,
            kernel: 3,
            head_hidden: 24,
            output: Output::Bernoulli,
        }
    }

    fn softmax(channels: usize) -> Config {
        Config {
            output: Output::Softmax,
            ..cfg(channels)
        }
    }

    fn build(cfg: &Config) -> Result<(PixelCnn, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
        Ok((PixelCnn::new(cfg, vb)?, varmap))
    }

    #[test]
    fn outputs_see_only_earlier_pixels_and_channels() -> Result<()> {
        assert_autoregressive(&build(&cfg(1))?.0)?;
        assert_autoregressive(&build(&cfg(3))?.0)?;
        assert_autoregressive(&build(&softmax(1))?.0)?;
        assert_autoregressive(&build(&softmax(3))?.0)
    }

    /// RGB, 256-way, 4 x 4: small enough to train on the synthetic colour task in seconds.
    fn colour_test_config() -> Config {
        Config {
            image_size: 4,
            hidden: 24,
            first_kernel: 3,
            ..softmax(3)
        }
    }

    #[test]
    fn softmax_outputs_learn_green_and_blue_from_red() -> Result<()> {
        let (model, varmap) = build(&colour_test_config())?;
        assert_learns_colour_dependence(&model, &varmap, 400)
    }

    /// Negative control for the colour checks: mask B in the first layer lets each colour see
    /// its own value at its pixel. The gradient check must catch it, and so must the colour
    /// NLL's floor: trained, the leaky model copies red and goes far below red's entropy.
    #[test]
    fn the_colour_checks_catch_a_model_that_sees_its_own_colour() -> Result<()> {
        let (model, varmap) = build(&colour_test_config())?;
        let vb = layers::nn::init::seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
        let leaky = model.with_leaky_first_layer(vb)?;
        assert_leaks(&leaky)?;
        let (_, after) = train_on_synthetic_rgb(&leaky, &varmap, 200)?;
        let floor = FLOOR * red_entropy(&leaky);
        assert!(
            after < floor,
            "NLL {after:.2} stayed above {floor:.2}: the floor would miss the leak"
        );
        Ok(())
    }

    #[test]
    fn the_check_catches_mask_b_in_the_first_layer() -> Result<()> {
        let (model, varmap) = build(&cfg(1))?;
        let vb = layers::nn::init::seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
        assert_leaks(&model.with_leaky_first_layer(vb)?)
    }

    #[test]
    fn the_cached_sampler_equals_the_reference_loop() -> Result<()> {
        assert_sampler_matches_reference(&build(&cfg(1))?.0, 4)?;
        assert_sampler_matches_reference(&build(&cfg(3))?.0, 2)?;
        assert_sampler_matches_reference(&build(&softmax(3))?.0, 2)
    }
}
