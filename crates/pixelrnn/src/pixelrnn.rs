//! What the two PixelRNNs share (van den Oord et al. 2016, sec. 3.4): a 7x7 mask-A convolution
//! to `2h` channels, a stack of recurrent layers each added to its input through a 1x1
//! convolution from `h` to `2h` channels (residual connections), then ReLU, a 1x1 ReLU layer and
//! a 1x1 layer of Bernoulli logits; and the LSTM cell update of eq. (3). The layers themselves
//! are in [`crate::row_lstm`] and [`crate::diagonal_bilstm`].
//!
//! Parameters `input_conv`, `layers.{i}.…` (the layer's own, and `residual`), `head.0`, `head.1`.

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use layers::nn::masked::{MaskType, MaskedConv2d};
use layers::ImageShape;
use serde::{Deserialize, Serialize};

use crate::ar::{Autoregressive, Head, Output};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    /// `h`: LSTM state channels; the layers' inputs and outputs have `2h`.
    pub hidden: usize,
    pub layers: usize,
    pub first_kernel: usize,
    pub head_hidden: usize,
    /// `bernoulli` (binary images) or `softmax` (256 intensity levels).
    pub output: Output,
}

impl Default for Config {
    /// The paper's MNIST size (7 layers, h = 16) and BENCHMARKS.md's rowlstm / diagbilstm.
    fn default() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            hidden: 16,
            layers: 7,
            first_kernel: 7,
            head_hidden: 32,
            output: Output::Bernoulli,
        }
    }
}

/// One recurrent layer: `(b, 2h, H, W) -> (b, h, H, W)`, autoregressive over its input.
pub trait RecurrentLayer: Sized {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self>;
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Parameters the layer's masks let through.
    fn effective_parameters(&self) -> Result<usize>;

    /// An incremental sampler for a whole model of these layers, if the layer has one
    /// (None: the reference loop is used).
    fn cached_sample(
        _model: &PixelRnn<Self>,
        _uniforms: &[f32],
        _n: usize,
    ) -> Option<Result<Tensor>> {
        None
    }
}

/// A bias-free state-to-state kernel `(4h, h, kh, kw)` named `weight`, PyTorch's default init.
pub fn state_to_state_kernel(
    shape: (usize, usize, usize, usize),
    vb: VarBuilder,
) -> Result<Tensor> {
    let fan_in = shape.1 * shape.2 * shape.3;
    vb.get_with_hints(shape, "weight", layers::nn::init::torch_uniform(fan_in))
}

pub struct PixelRnn<L> {
    pub(crate) cfg: Config,
    pub(crate) input_conv: MaskedConv2d,
    /// Each recurrent layer with its residual 1x1 convolution.
    pub(crate) layers: Vec<(L, MaskedConv2d)>,
    pub(crate) head: Head,
    pub(crate) device: Device,
}

impl<L: RecurrentLayer> PixelRnn<L> {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (k, g, h2) = (cfg.first_kernel, cfg.channels, 2 * cfg.hidden);
        let input_conv = MaskedConv2d::new(
            cfg.channels,
            h2,
            (k, k),
            MaskType::A,
            g,
            vb.pp("input_conv"),
        )?;
        let layers = (0..cfg.layers)
            .map(|i| {
                let vb = vb.pp(format!("layers.{i}"));
                let residual =
                    MaskedConv2d::new(cfg.hidden, h2, (1, 1), MaskType::B, g, vb.pp("residual"))?;
                Ok((L::new(cfg, vb)?, residual))
            })
            .collect::<Result<_>>()?;
        let head = Head::new(h2, cfg.head_hidden, cfg.channels, cfg.output, vb.pp("head"))?;
        Ok(Self {
            cfg: cfg.clone(),
            input_conv,
            layers,
            head,
            device: vb.device().clone(),
        })
    }

    pub fn layers_mut(&mut self) -> impl Iterator<Item = &mut L> {
        self.layers.iter_mut().map(|(l, _)| l)
    }

    /// Recurrent layer `i` (for tests that rewire a model).
    pub fn layer(&self, i: usize) -> &L {
        &self.layers[i].0
    }

    /// The first, mask-A convolution: `(b, c, H, W) -> (b, 2h, H, W)`.
    pub fn input_conv_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.input_conv.forward(x)
    }
}

impl<L: RecurrentLayer> Autoregressive for PixelRnn<L> {
    fn image_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn output(&self) -> Output {
        self.cfg.output
    }

    /// `(b, c, H, W) -> (b, c, H, W)` logits.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.input_conv.forward(x)?; // (b, 2h, H, W)
        for (layer, residual) in &self.layers {
            h = (&h + residual.forward(&layer.forward(&h)?)?)?; // (b, 2h, H, W)
        }
        self.head.forward(&h.relu()?)
    }

    fn effective_parameters(&self) -> Option<usize> {
        let mut total = self.input_conv.effective_parameters().ok()?;
        for (layer, residual) in &self.layers {
            total += layer.effective_parameters().ok()? + residual.effective_parameters().ok()?;
        }
        for conv in &self.head.convs {
            total += conv.effective_parameters().ok()?;
        }
        Some(total)
    }

    fn sample_from_uniforms(&self, uniforms: &[f32], n: usize) -> Result<Tensor> {
        L::cached_sample(self, uniforms, n)
            .unwrap_or_else(|| crate::ar::naive_sample(self, uniforms, n))
    }
}
