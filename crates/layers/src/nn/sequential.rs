//! PyTorch's `nn.Sequential` with its numbering: every layer, activations included, takes the
//! next index, so weights load by the reference names (`model.3.weight`, `main.1.running_var`).
//! The GANs of PyTorch-GAN and pytorch/examples are written this way.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, ModuleT, VarBuilder};

use crate::kernels::activation::{activation_grad, bias_activation, Activation};
use crate::kernels::linear::Linear;

use crate::kernels::conv::{
    conv2d, conv2d_bias_activation, conv_transpose2d, conv_transpose2d_padded, ConvSpec,
};
use crate::kernels::instance_norm::{InstanceNorm, EPS};
use crate::kernels::norm::BatchNorm;
use crate::kernels::pad::reflection_pad2d;

pub enum Layer {
    Linear(Linear),
    /// Convolution with kernel `(out, in, kh, kw)` and optional bias.
    Conv(Tensor, Option<Tensor>, ConvSpec),
    /// Transposed convolution with kernel `(in, out, kh, kw)`, no bias.
    ConvTranspose(Tensor, ConvSpec),
    /// Transposed convolution with kernel `(in, out, kh, kw)`, optional bias and PyTorch's
    /// `output_padding` (CycleGAN's upsampling layers).
    ConvTransposeWith {
        kernel: Tensor,
        bias: Option<Tensor>,
        spec: ConvSpec,
        output_padding: (usize, usize),
    },
    BatchNorm(BatchNorm),
    /// `nn.InstanceNorm2d`: instance statistics in training mode, running ones (if tracked)
    /// in evaluation mode.
    InstanceNorm(InstanceNorm),
    /// An instance norm whose output is then scaled and shifted per channel by the condition
    /// `c (b, c_dim)` given to [`Stack::forward_conditioned`]: `h (1 + gamma(c)) + beta(c)`,
    /// `[gamma, beta]` one linear map of `c` (conditional instance normalisation, Dumoulin et
    /// al. 2017). Its weights live under the norm's own name (`main.1.cond.weight`), so the
    /// indices stay the reference's.
    ConditionedInstanceNorm(InstanceNorm, Linear),
    /// `nn.ReflectionPad2d(p)`: no weights, but it takes an index.
    ReflectionPad(usize),
    LeakyRelu(f64),
    Relu,
    Tanh,
    Sigmoid,
    /// Nearest-neighbour upsampling by 2.
    Upsample2,
    /// Passes its input through: a reference layer left out (dropout, which Candle's CPU backend
    /// cannot seed) that still takes its index.
    Identity,
    /// `x + block(x)`: a residual block (CycleGAN's `ResnetBlock`, StarGAN's
    /// `ResidualBlock`), its layers under one name (`conv_block`, `main`).
    Residual(Stack),
}

impl Layer {
    /// The activation this layer is, if it is one.
    fn activation(&self) -> Option<Activation> {
        match self {
            Layer::Relu => Some(Activation::Relu),
            Layer::LeakyRelu(slope) => Some(Activation::LeakyRelu(*slope)),
            _ => None,
        }
    }

    /// The layer's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Linear(_) => "linear",
            Layer::Conv(..) => "convolution",
            Layer::ConvTranspose(..) | Layer::ConvTransposeWith { .. } => "transposed convolution",
            Layer::BatchNorm(_) => "batch norm",
            Layer::InstanceNorm(_) => "instance norm",
            Layer::ConditionedInstanceNorm(..) => "conditioned instance norm",
            Layer::ReflectionPad(_) => "reflection padding",
            Layer::LeakyRelu(_) => "LeakyReLU",
            Layer::Relu => "ReLU",
            Layer::Tanh => "tanh",
            Layer::Sigmoid => "sigmoid",
            Layer::Upsample2 => "upsampling",
            Layer::Identity => "identity",
            Layer::Residual(_) => "residual block",
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Layer::Linear(l) => l.forward(x),
            Layer::Conv(k, bias, spec) => {
                bias_activation(&conv2d(x, k, *spec)?, bias.as_ref(), Activation::Identity)
            }
            Layer::ConvTranspose(k, spec) => conv_transpose2d(x, k, *spec),
            Layer::ConvTransposeWith { .. } => {
                self.conv_transpose_activated(x, Activation::Identity)
            }
            Layer::BatchNorm(n) => n.forward_t(x, train),
            Layer::InstanceNorm(n) => n.forward_t(x, train),
            Layer::ConditionedInstanceNorm(..) => {
                candle_core::bail!("a conditioned instance norm needs the condition: call Stack::forward_conditioned")
            }
            Layer::ReflectionPad(p) => reflection_pad2d(x, *p),
            Layer::LeakyRelu(_) | Layer::Relu => {
                bias_activation(x, None, self.activation().unwrap_or(Activation::Identity))
            }
            Layer::Tanh => x.tanh(),
            Layer::Sigmoid => candle_nn::ops::sigmoid(x),
            Layer::Identity => Ok(x.clone()),
            Layer::Residual(block) => x + block.forward(x, train)?,
            Layer::Upsample2 => crate::nn::resample::upscale2d(x),
        }
    }

    /// A [`Layer::ConvTransposeWith`] and the activation after it: the bias and the
    /// activation as one fused op over the convolution's output.
    fn conv_transpose_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let Layer::ConvTransposeWith {
            kernel,
            bias,
            spec,
            output_padding,
        } = self
        else {
            candle_core::bail!("conv_transpose_activated: not a ConvTransposeWith layer")
        };
        let y = conv_transpose2d_padded(x, kernel, *spec, *output_padding)?;
        bias_activation(&y, bias.as_ref(), act)
    }
}

/// Layers under one `VarBuilder` prefix, each at its index (or under the name given by
/// [`Sequential::named`], for references written as module attributes: `self.conv1 = ...`).
pub struct Sequential<'a> {
    vb: VarBuilder<'a>,
    pub layers: Vec<Layer>,
    name: Option<String>,
    /// The init of every later convolution's bias (None: PyTorch's default uniform).
    bias_init: Option<Init>,
}

impl<'a> Sequential<'a> {
    pub fn new(vb: VarBuilder<'a>) -> Self {
        Self {
            vb,
            layers: Vec::new(),
            name: None,
            bias_init: None,
        }
    }

    /// Initialises the biases of the convolutions added from now on with `init` (junyanz's
    /// `init_weights` sets them to zero).
    pub fn bias_init(mut self, init: Init) -> Self {
        self.bias_init = Some(init);
        self
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
            Some(vb.get_with_hints(o, "bias", self.bias_init.unwrap_or(default))?)
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

    /// `nn.ConvTranspose2d(i, o, k, stride, padding, output_padding, bias)` with the given
    /// weight init (PyTorch's default when None). PyTorch's fan-in of a transposed
    /// convolution's weight `(i, o, k, k)` is `o * k * k` (its dim 1 times the kernel area),
    /// for the default weight init and for the bias's `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    pub fn conv_transpose_with(
        mut self,
        (i, o, k): (usize, usize, usize),
        spec: ConvSpec,
        output_padding: (usize, usize),
        bias: bool,
        init: Option<Init>,
    ) -> Result<Self> {
        let vb = self.next();
        let default = crate::nn::init::torch_uniform(o * k * k);
        let kernel = vb.get_with_hints((i, o, k, k), "weight", init.unwrap_or(default))?;
        let bias = if bias {
            Some(vb.get_with_hints(o, "bias", self.bias_init.unwrap_or(default))?)
        } else {
            None
        };
        self.layers.push(Layer::ConvTransposeWith {
            kernel,
            bias,
            spec,
            output_padding,
        });
        Ok(self)
    }

    /// `nn.InstanceNorm2d(channels, eps=1e-5, momentum=0.1, affine, track_running_stats)`:
    /// `weight` (ones) and `bias` (zeros) when affine, `running_mean` (zeros) and
    /// `running_var` (ones) when tracked, under the layer's index.
    pub fn instance_norm(
        mut self,
        channels: usize,
        affine: bool,
        track_running_stats: bool,
    ) -> Result<Self> {
        let vb = self.next();
        let pair = |a: (&str, f64), b: (&str, f64)| -> Result<(Tensor, Tensor)> {
            Ok((
                vb.get_with_hints(channels, a.0, Init::Const(a.1))?,
                vb.get_with_hints(channels, b.0, Init::Const(b.1))?,
            ))
        };
        let weights = if affine {
            Some(pair(("weight", 1.0), ("bias", 0.0))?)
        } else {
            None
        };
        let running = if track_running_stats {
            Some(pair(("running_mean", 0.0), ("running_var", 1.0))?)
        } else {
            None
        };
        let norm = InstanceNorm::new(channels, weights, running, EPS)?;
        self.layers.push(Layer::InstanceNorm(norm));
        Ok(self)
    }

    /// Makes the instance norm just added a conditioned one ([`Layer::ConditionedInstanceNorm`])
    /// reading a condition of `c_dim` numbers. Its map starts at zero, so a new network
    /// computes what the plain one does.
    pub fn conditioned(mut self, c_dim: usize) -> Result<Self> {
        let Some(Layer::InstanceNorm(norm)) = self.layers.pop() else {
            candle_core::bail!("conditioned: the layer before is not an instance norm");
        };
        let vb = self.vb.pp(self.layers.len()).pp("cond");
        let channels = norm.channels();
        let zero = Init::Const(0.0);
        let weight = vb.get_with_hints((2 * channels, c_dim), "weight", zero)?;
        let bias = vb.get_with_hints(2 * channels, "bias", zero)?;
        let map = Linear::new(weight, Some(bias));
        self.layers.push(Layer::ConditionedInstanceNorm(norm, map));
        Ok(self)
    }

    /// `nn.ReflectionPad2d(p)` (no weights; it takes the next index).
    pub fn reflection_pad(self, p: usize) -> Self {
        self.push(Layer::ReflectionPad(p))
    }

    /// A residual block `x + block(x)` at the next index, its layers built by `block` under
    /// `name` (`model.10.conv_block.1.weight`).
    pub fn residual(
        mut self,
        name: &str,
        block: impl FnOnce(Sequential<'a>) -> Result<Sequential<'a>>,
    ) -> Result<Self> {
        let vb = self.next().pp(name);
        let mut inner = Sequential::new(vb);
        inner.bias_init = self.bias_init;
        let inner = block(inner)?.build();
        self.layers.push(Layer::Residual(inner));
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
    /// Freezes (or thaws) the running statistics of every instance norm, residual blocks
    /// included (see [`InstanceNorm::freeze_running`]).
    pub fn freeze_instance_statistics(&self, frozen: bool) {
        for layer in &self.0 {
            match layer {
                Layer::InstanceNorm(n) | Layer::ConditionedInstanceNorm(n, _) => {
                    n.freeze_running(frozen)
                }
                Layer::Residual(block) => block.freeze_instance_statistics(frozen),
                _ => {}
            }
        }
    }

    /// Runs the layers in order; a linear layer or a (transposed) convolution with a bias
    /// followed by an activation runs as one fused op.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_conditioned(x, None, train)
    }

    /// [`Stack::forward`] with the condition `c (b, c_dim)` that conditioned instance norms
    /// read, residual blocks included.
    pub fn forward_conditioned(
        &self,
        x: &Tensor,
        c: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.0.len() {
            let next = self.0.get(i + 1).and_then(Layer::activation);
            // The output and how many layers it took: two where an activation was fused.
            let (y, taken) = match (&self.0[i], next) {
                (Layer::Linear(l), Some(act)) => (l.forward_activated(&h, act)?, 2),
                (Layer::Conv(k, Some(b), spec), Some(act)) => {
                    (conv2d_bias_activation(&h, k, b, *spec, act)?, 2)
                }
                (layer @ Layer::ConvTransposeWith { bias: Some(_), .. }, Some(act)) => {
                    (layer.conv_transpose_activated(&h, act)?, 2)
                }
                (Layer::ConditionedInstanceNorm(norm, map), _) => {
                    (conditioned_norm(&h, norm, map, c, train)?, 1)
                }
                (Layer::Residual(block), _) => {
                    ((&h + block.forward_conditioned(&h, c, train)?)?, 1)
                }
                (layer, _) => (layer.forward(&h, train)?, 1),
            };
            (h, i) = (y, i + taken);
        }
        Ok(h)
    }
}

/// A forward pass of a [`Stack`] that keeps what its input gradient needs: each unit's input
/// and output (a convolution with the activation fused after it is one unit).
pub struct Tape<'a> {
    stack: &'a Stack,
    /// `(first layer, layers taken, input, output)` per unit.
    units: Vec<(usize, usize, Tensor, Tensor)>,
}

impl Stack {
    /// Whether [`Stack::forward_taped`] takes every layer of this stack.
    pub fn can_tape(&self) -> bool {
        self.0.iter().all(|layer| {
            matches!(
                layer,
                Layer::Conv(..) | Layer::LeakyRelu(_) | Layer::Relu | Layer::Identity
            )
        })
    }

    /// [`Stack::forward`], taped for [`Tape::input_grad`]. Convolutions (any stride and
    /// padding), ReLU, LeakyReLU and identities only: a critic's layers (WGAN-GP).
    pub fn forward_taped(&self, x: &Tensor) -> Result<Tape<'_>> {
        let mut units = Vec::new();
        let mut h = x.clone();
        let mut i = 0;
        while i < self.0.len() {
            let next = self.0.get(i + 1).and_then(Layer::activation);
            let (y, taken) = match (&self.0[i], next) {
                (Layer::Conv(k, b, spec), Some(act)) => {
                    (bias_activation(&conv2d(&h, k, *spec)?, b.as_ref(), act)?, 2)
                }
                (
                    layer @ (Layer::Conv(..) | Layer::LeakyRelu(_) | Layer::Relu | Layer::Identity),
                    _,
                ) => (layer.forward(&h, true)?, 1),
                (layer, _) => candle_core::bail!(
                    "layer {i} ({}) has no hand-written input gradient: only convolutions, ReLU, LeakyReLU and identities do",
                    layer.kind()
                ),
            };
            units.push((i, taken, h, y.clone()));
            (h, i) = (y, i + taken);
        }
        Ok(Tape { stack: self, units })
    }
}

impl Tape<'_> {
    /// The stack's output.
    pub fn output(&self) -> Option<&Tensor> {
        self.units.last().map(|(_, _, _, y)| y)
    }

    /// The gradient at the stack's input from the gradient `g` at its output, in ops that can
    /// be differentiated again with respect to `g` and the weights (the activations' slopes are
    /// piecewise constant): a critic's input gradient for WGAN-GP's penalty without Candle's
    /// second-order graph.
    pub fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        let mut g = g.clone();
        for (first, taken, x, y) in self.units.iter().rev() {
            let layers = &self.stack.0[*first..first + taken];
            if let Some(act) = layers.last().and_then(Layer::activation) {
                g = activation_grad(&g, y, act)?;
            }
            if let Layer::Conv(k, _, spec) = &layers[0] {
                g = conv_input_grad(&g, k, *spec, x.dims())?;
            }
        }
        Ok(g)
    }
}

/// The gradient at a convolution's input `(b, c, h, w)` from `g` at its output: the transposed
/// convolution with the output padding that gives back `h x w` (a strided convolution drops
/// the rows its last window does not reach).
fn conv_input_grad(
    g: &Tensor,
    kernel: &Tensor,
    spec: ConvSpec,
    x_dims: &[usize],
) -> Result<Tensor> {
    let (_, _, ho, wo) = g.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    let reach = |out: usize, stride: usize, pad: usize, k: usize| (out - 1) * stride + k - 2 * pad;
    let output_padding = (
        x_dims[2] - reach(ho, spec.stride.0, spec.padding.0, kh),
        x_dims[3] - reach(wo, spec.stride.1, spec.padding.1, kw),
    );
    conv_transpose2d_padded(g, kernel, spec, output_padding)
}

/// `norm(h) (1 + gamma(c)) + beta(c)`, `[gamma, beta] = map(c)` per image and channel.
fn conditioned_norm(
    h: &Tensor,
    norm: &InstanceNorm,
    map: &Linear,
    c: Option<&Tensor>,
    train: bool,
) -> Result<Tensor> {
    let Some(c) = c else {
        candle_core::bail!("a conditioned instance norm needs the condition, and none was given");
    };
    let (b, channels, _, _) = h.dims4()?;
    let scale_shift = map.forward(c)?.reshape((b, 2, channels, 1, 1))?;
    let scale = (scale_shift.get_on_dim(1, 0)? + 1.0)?;
    let shift = scale_shift.get_on_dim(1, 1)?;
    norm.forward_t(h, train)?
        .broadcast_mul(&scale)?
        .broadcast_add(&shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::init::seeded_var_builder;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// A CycleGAN-like stack: pad, 7x7 convolution, affine tracked instance norm, ReLU,
    /// upsampling transposed convolution with bias and output padding, plain instance norm,
    /// LeakyReLU.
    fn cyclegan_like(varmap: &VarMap) -> Result<Stack> {
        let vb = seeded_var_builder(varmap, 5, DType::F32, &Device::Cpu);
        let up = ConvSpec {
            stride: (2, 2),
            padding: (1, 1),
        };
        Ok(Sequential::new(vb)
            .reflection_pad(3)
            .conv((3, 4, 7), ConvSpec::default(), true, None)?
            .instance_norm(4, true, true)?
            .push(Layer::Relu)
            .conv_transpose_with((4, 2, 3), up, (1, 1), true, None)?
            .instance_norm(2, false, false)?
            .push(Layer::LeakyRelu(0.2))
            .build())
    }

    fn values(varmap: &VarMap, name: &str) -> Vec<f32> {
        let data = varmap.data().lock().unwrap();
        data[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Variables under PyTorch's `nn.Sequential` indices with PyTorch's initial values; the
    /// pad and the untracked, non-affine norm have none.
    #[test]
    fn new_layers_take_pytorchs_indices_names_and_init() -> Result<()> {
        let varmap = VarMap::new();
        let stack = cyclegan_like(&varmap)?;
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let want = [
            "1.bias",
            "1.weight",
            "2.bias",
            "2.running_mean",
            "2.running_var",
            "2.weight",
            "4.bias",
            "4.weight",
        ];
        assert_eq!(names, want);
        assert_eq!(values(&varmap, "2.weight"), [1.0; 4]);
        assert_eq!(values(&varmap, "2.bias"), [0.0; 4]);
        assert_eq!(values(&varmap, "2.running_mean"), [0.0; 4]);
        assert_eq!(values(&varmap, "2.running_var"), [1.0; 4]);
        // ConvTranspose2d(4, 2, 3): fan-in 2 * 3 * 3 for weight and bias.
        let bound = 1.0 / 18f32.sqrt();
        for name in ["4.weight", "4.bias"] {
            let v = values(&varmap, name);
            assert!(v.iter().all(|v| v.abs() <= bound), "{name}");
            assert!(v.iter().any(|v| v.abs() > bound / 2.0), "{name}");
        }
        let x = crate::Rng::new(6).normal((2, 3, 8, 8), &Device::Cpu)?;
        assert_eq!(stack.forward(&x, true)?.dims(), [2, 2, 16, 16]);
        Ok(())
    }

    /// The transposed convolution's bias and the LeakyReLU after it, fused by
    /// `Stack::forward`, give the same bits as the layers one by one.
    #[test]
    fn fused_transposed_convolution_equals_its_layers_one_by_one() -> Result<()> {
        let varmap = VarMap::new();
        let stack = cyclegan_like(&varmap)?;
        let x = crate::Rng::new(7).normal((2, 3, 8, 8), &Device::Cpu)?;
        let mut h = x.clone();
        for layer in &stack.0 {
            h = layer.forward(&h, false)?;
        }
        let fused = stack.forward(&x, false)?;
        let d = (fused - h)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        Ok(())
    }

    /// Training mode updates the instance norm's running statistics and evaluation uses
    /// them without changing them.
    #[test]
    fn stack_passes_the_mode_to_instance_norm() -> Result<()> {
        let varmap = VarMap::new();
        let stack = cyclegan_like(&varmap)?;
        let x = crate::Rng::new(8).normal((2, 3, 8, 8), &Device::Cpu)?;
        let eval_before = stack.forward(&x, false)?;
        assert_eq!(values(&varmap, "2.running_var"), [1.0; 4]);
        stack.forward(&x, true)?;
        let after = values(&varmap, "2.running_var");
        assert!(after.iter().all(|&v| v != 1.0), "{after:?}");
        let eval_after = stack.forward(&x, false)?;
        assert_eq!(values(&varmap, "2.running_var"), after);
        let d = (eval_after - eval_before)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(
            d > 1e-3,
            "evaluation must read the updated running statistics"
        );
        Ok(())
    }

    /// An instance norm conditioned on 2 numbers, alone and inside a residual block (tanh
    /// between them: smooth, for finite differences).
    fn conditioned_like(varmap: &VarMap) -> Result<Stack> {
        let vb = seeded_var_builder(varmap, 9, DType::F32, &Device::Cpu);
        let same = ConvSpec {
            stride: (1, 1),
            padding: (1, 1),
        };
        Ok(Sequential::new(vb)
            .instance_norm(3, true, false)?
            .conditioned(2)?
            .push(Layer::Tanh)
            .residual("main", |b| {
                b.conv((3, 3, 3), same, false, None)?
                    .instance_norm(3, true, false)?
                    .conditioned(2)
            })?
            .build())
    }

    fn set(varmap: &VarMap, name: &str, values: &[f32]) -> Result<()> {
        let data = varmap.data().lock().unwrap();
        let var = &data[name];
        var.set(&Tensor::from_slice(values, var.shape(), &Device::Cpu)?)
    }

    /// The condition's map lives under the norm's name without taking an index, starts at
    /// zero (the plain norm), and then scales and shifts each image's channels by
    /// `1 + gamma(c)` and `beta(c)`, computed here by hand.
    #[test]
    fn conditioned_norm_scales_and_shifts_each_image_by_its_condition() -> Result<()> {
        let varmap = VarMap::new();
        let stack = conditioned_like(&varmap)?;
        let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let want = [
            "0.bias",
            "0.cond.bias",
            "0.cond.weight",
            "0.weight",
            "2.main.0.weight",
            "2.main.1.bias",
            "2.main.1.cond.bias",
            "2.main.1.cond.weight",
            "2.main.1.weight",
        ];
        assert_eq!(names, want);

        let dev = Device::Cpu;
        let x = crate::Rng::new(10).normal((2, 3, 4, 4), &dev)?;
        let cs = [[1f32, 0.0], [0.5, -2.0]];
        let c = Tensor::new(&cs, &dev)?;
        let Layer::ConditionedInstanceNorm(norm, _) = &stack.0[0] else {
            panic!("layer 0 is not a conditioned norm")
        };
        let plain = norm.forward_t(&x, true)?.flatten_all()?.to_vec1::<f32>()?;
        let first = || -> Result<Vec<f32>> {
            let Layer::ConditionedInstanceNorm(norm, map) = &stack.0[0] else {
                unreachable!()
            };
            conditioned_norm(&x, norm, map, Some(&c), true)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        assert_eq!(first()?, plain, "a new conditioned norm is the plain norm");

        // weight (6, 2): row r is [0.1 r, -0.2]; bias (6): 0.05 r.
        let weight: Vec<f32> = (0..6).flat_map(|r| [0.1 * r as f32, -0.2]).collect();
        let bias: Vec<f32> = (0..6).map(|r| 0.05 * r as f32).collect();
        set(&varmap, "0.cond.weight", &weight)?;
        set(&varmap, "0.cond.bias", &bias)?;
        for (i, (g, p)) in first()?.into_iter().zip(plain).enumerate() {
            let (image, channel) = (i / 48, (i / 16) % 3);
            let map = |r: usize| {
                weight[2 * r] * cs[image][0] + weight[2 * r + 1] * cs[image][1] + bias[r]
            };
            let want = p * (1.0 + map(channel)) + map(3 + channel);
            assert!((g - want).abs() < 1e-5, "element {i}: {g} against {want}");
        }
        Ok(())
    }

    /// The whole stack needs its condition, and its gradient with respect to the condition,
    /// through both conditioned norms, matches finite differences.
    #[test]
    fn conditioned_stack_needs_its_condition_and_differentiates_through_it() -> Result<()> {
        let varmap = VarMap::new();
        let stack = conditioned_like(&varmap)?;
        let dev = Device::Cpu;
        let x = crate::Rng::new(11).normal((2, 3, 4, 4), &dev)?;
        let err = stack.forward(&x, true).unwrap_err().to_string();
        assert!(err.contains("needs the condition"), "{err}");

        for (name, n) in [("0.cond.weight", 12), ("2.main.1.cond.weight", 12)] {
            let w: Vec<f32> = (0..n).map(|i| 0.3 * ((i % 5) as f32 - 2.0)).collect();
            set(&varmap, name, &w)?;
        }
        let c = Tensor::new(&[[0.3f32, -0.7], [1.1, 0.2]], &dev)?;
        let probe = crate::Rng::new(12).normal((2, 3, 4, 4), &dev)?;
        let f = |c: &Tensor| stack.forward_conditioned(&x, Some(c), true);
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            f,
            &c,
            &probe,
            &[0, 1, 2, 3],
            1e-2,
            2e-2,
        )
    }

    /// A strided critic on odd sizes (the last window does not reach the last row: output
    /// padding), fused and unfused activations: the taped input gradient against Candle's
    /// autograd, and the penalty built on it against the penalty through Candle's second-order
    /// graph, value and every weight's gradient. f64 (the mathematics) and f32 (the fused ops).
    #[test]
    fn a_taped_critic_gives_autograd_s_input_gradient_and_penalty() -> Result<()> {
        use crate::gan::{gradient_penalty, gradient_penalty_from};
        use crate::train::checkpoint::vars_with_prefix;
        for (dtype, tolerance) in [(DType::F64, 1e-9), (DType::F32, 1e-4)] {
            let varmap = VarMap::new();
            let vb = seeded_var_builder(&varmap, 3, dtype, &Device::Cpu);
            let s2 = ConvSpec {
                stride: (2, 2),
                padding: (1, 1),
            };
            let critic = Sequential::new(vb)
                .conv((3, 4, 4), s2, true, None)?
                .push(Layer::LeakyRelu(0.01))
                .conv((4, 5, 3), s2, false, None)?
                .push(Layer::Relu)
                .push(Layer::Identity)
                .conv((5, 1, 3), ConvSpec::same_padding(3, 3), true, None)?
                .build();
            assert!(critic.can_tape());
            let draw = |seed, shape: (usize, usize, usize, usize)| {
                crate::Rng::new(seed)
                    .normal(shape, &Device::Cpu)?
                    .to_dtype(dtype)
            };
            let largest = |t: &Tensor| -> Result<f64> {
                t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
            };
            let x = draw(1, (3, 3, 9, 7))?;
            let input = candle_core::Var::from_tensor(&x)?;
            let want = critic
                .forward(input.as_tensor(), true)?
                .sum_all()?
                .backward()?;
            let want = want.get(input.as_tensor()).expect("a gradient").clone();
            let tape = critic.forward_taped(&x)?;
            let out = tape.output().expect("an output");
            let got = tape.input_grad(&out.ones_like()?)?;
            assert_eq!(got.dims(), x.dims());
            let diff = largest(&(&got - &want)?)?;
            assert!(diff <= tolerance * largest(&want)?, "{dtype:?}: {diff}");

            let fake = draw(2, (3, 3, 9, 7))?;
            let alpha = crate::Rng::new(3)
                .uniform(3, &Device::Cpu)?
                .to_dtype(dtype)?;
            let input_grad = |x: &Tensor| {
                let tape = critic.forward_taped(x)?;
                let out = tape.output().expect("an output");
                tape.input_grad(&out.ones_like()?)
            };
            let ours = gradient_penalty_from(&input_grad, &x, &fake, &alpha)?;
            let forward = |x: &Tensor| critic.forward(x, true);
            let theirs = gradient_penalty(&forward, &x, &fake, &alpha)?;
            let diff = largest(&(&ours - &theirs)?)?;
            assert!(
                diff <= tolerance * largest(&theirs)?,
                "{dtype:?}: penalty {diff}"
            );
            let (ours, theirs) = (ours.backward()?, theirs.backward()?);
            let mut compared = 0;
            for (name, var) in vars_with_prefix(&varmap, "") {
                match (ours.get(var.as_tensor()), theirs.get(var.as_tensor())) {
                    (Some(o), Some(t)) => {
                        let diff = largest(&(o - t)?)?;
                        let scale = largest(t)?.max(1e-6);
                        assert!(diff <= tolerance * scale, "{dtype:?} {name}: {diff}");
                        compared += 1;
                    }
                    // A bias moves D's values and its activations' switches, not the
                    // gradient's value.
                    (None, None) => assert!(name.ends_with("bias"), "{name}"),
                    (o, _) => panic!("{name}: a gradient in one only (ours: {})", o.is_some()),
                }
            }
            assert_eq!(compared, 3, "{dtype:?}: the three kernels");
        }
        Ok(())
    }

    #[test]
    fn a_stack_with_other_layers_is_not_taped() -> Result<()> {
        let varmap = VarMap::new();
        let stack = cyclegan_like(&varmap)?;
        assert!(!stack.can_tape());
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu)?;
        let msg = stack.forward_taped(&x).err().expect("an error").to_string();
        assert!(msg.contains("layer 0 (reflection padding)"), "{msg}");
        Ok(())
    }
}
