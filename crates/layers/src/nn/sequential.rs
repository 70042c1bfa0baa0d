//! PyTorch's `nn.Sequential` with its numbering: every layer, activations included, takes the
//! next index, so weights load by the reference names (`model.3.weight`, `main.1.running_var`).
//! The GANs of PyTorch-GAN and pytorch/examples are written this way.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::kernels::activation::{bias_activation, Activation};
use crate::kernels::linear::Linear;

use crate::kernels::conv::{conv2d, conv_transpose2d, ConvSpec};
use crate::kernels::norm::BatchNorm;

pub enum Layer {
    Linear(Linear),
    /// Convolution with kernel `(out, in, kh, kw)` and optional bias.
    Conv(Tensor, Option<Tensor>, ConvSpec),
    /// Transposed convolution with kernel `(in, out, kh, kw)`, no bias.
    ConvTranspose(Tensor, ConvSpec),
    BatchNorm(BatchNorm),
    LeakyRelu(f64),
    Relu,
    Tanh,
    /// Nearest-neighbour upsampling by 2.
    Upsample2,
    /// Passes its input through: a reference layer left out (dropout, which Candle's CPU backend
    /// cannot seed) that still takes its index.
    Identity,
}

impl Layer {
    /// The activation this layer is, if it is one.
    fn activation(&self) -> Option<Activation> {
        match self {
            Layer::Relu => Some(Activation::Relu),
            Layer::LeakyRelu(slope) => Some(Activation::LeakyRelu(*slope as f32)),
            _ => None,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Layer::Linear(l) => l.forward(x),
            Layer::Conv(k, bias, spec) => {
                bias_activation(&conv2d(x, k, *spec)?, bias.as_ref(), Activation::Identity)
            }
            Layer::ConvTranspose(k, spec) => conv_transpose2d(x, k, *spec),
            Layer::BatchNorm(n) => n.forward_t(x, train),
            Layer::LeakyRelu(_) | Layer::Relu => {
                bias_activation(x, None, self.activation().unwrap_or(Activation::Identity))
            }
            Layer::Tanh => x.tanh(),
            Layer::Identity => Ok(x.clone()),
            Layer::Upsample2 => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(2 * h, 2 * w)
            }
        }
    }
}

/// Layers under one `VarBuilder` prefix, each at its index (or under the name given by
/// [`Sequential::named`], for references written as module attributes: `self.conv1 = ...`).
pub struct Sequential<'a> {
    vb: VarBuilder<'a>,
    pub layers: Vec<Layer>,
    name: Option<String>,
}

impl<'a> Sequential<'a> {
    pub fn new(vb: VarBuilder<'a>) -> Self {
        Self {
            vb,
            layers: Vec::new(),
            name: None,
        }
    }

    /// The next layer's weights live under `name` instead of its index.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The prefix of the next layer: its given name, else its index.
    fn next(&mut self) -> VarBuilder<'a> {
        match self.name.take() {
            Some(name) => self.vb.pp(name),
            None => self.vb.pp(self.layers.len()),
        }
    }

    /// `nn.Linear(i, o)` with PyTorch's default init.
    pub fn linear(mut self, i: usize, o: usize) -> Result<Self> {
        let l = crate::nn::init::linear(i, o, self.next())?;
        self.layers.push(Layer::Linear(l));
        Ok(self)
    }

    /// `nn.Conv2d(i, o, k, stride, padding, bias)` with the given weight init (PyTorch's
    /// default when None).
    pub fn conv(
        mut self,
        (i, o, k): (usize, usize, usize),
        spec: ConvSpec,
        bias: bool,
        init: Option<Init>,
    ) -> Result<Self> {
        let vb = self.next();
        let default = crate::nn::init::torch_uniform(i * k * k);
        let w = vb.get_with_hints((o, i, k, k), "weight", init.unwrap_or(default))?;
        let b = if bias {
            Some(vb.get_with_hints(o, "bias", default)?)
        } else {
            None
        };
        self.layers.push(Layer::Conv(w, b, spec));
        Ok(self)
    }

    /// `nn.ConvTranspose2d(i, o, k, stride, padding, bias=False)`.
    pub fn conv_transpose(
        mut self,
        (i, o, k): (usize, usize, usize),
        spec: ConvSpec,
        init: Init,
    ) -> Result<Self> {
        let w = self.next().get_with_hints((i, o, k, k), "weight", init)?;
        self.layers.push(Layer::ConvTranspose(w, spec));
        Ok(self)
    }

    /// `nn.BatchNorm1d/2d(channels, eps)`; `weight_init` None keeps PyTorch's ones.
    pub fn batch_norm(
        mut self,
        channels: usize,
        eps: f64,
        weight_init: Option<Init>,
    ) -> Result<Self> {
        let vb = self.next();
        let weight =
            vb.get_with_hints(channels, "weight", weight_init.unwrap_or(Init::Const(1.0)))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        let bn = BatchNorm::new(mean, var, weight, bias, eps)?;
        self.layers.push(Layer::BatchNorm(bn));
        Ok(self)
    }

    /// An activation or other layer without weights (it still takes an index).
    pub fn push(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    pub fn build(self) -> Stack {
        Stack(self.layers)
    }
}

/// A built sequence of layers.
pub struct Stack(pub Vec<Layer>);

impl Stack {
    /// Runs the layers in order; a linear layer or a convolution with a bias followed by an
    /// activation runs as one fused op.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.0.len() {
            let next = self.0.get(i + 1).and_then(Layer::activation);
            let fused = match (&self.0[i], next) {
                (Layer::Linear(l), Some(act)) => Some(l.forward_activated(&h, act)?),
                (Layer::Conv(k, Some(b), spec), Some(act)) => {
                    Some(bias_activation(&conv2d(&h, k, *spec)?, Some(b), act)?)
                }
                _ => None,
            };
            (h, i) = match fused {
                Some(y) => (y, i + 2),
                None => (self.0[i].forward(&h, train)?, i + 1),
            };
        }
        Ok(h)
    }
}
