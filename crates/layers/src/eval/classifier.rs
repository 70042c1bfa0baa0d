//! The digit classifier behind genzoo's sample metrics ([`crate::eval::metrics`]): LeNet (LeCun et
//! al. 1998) in the form of Caffe's MNIST example: 5x5 convolutions of 20 and 50 channels, each
//! followed by ReLU and 2x2 max pooling, a fully connected ReLU layer whose output is the
//! feature vector the Fréchet distance uses, and a linear layer of class logits.
//!
//! Parameters `conv1`, `conv2`, `fc1`, `fc2`, each `weight` and `bias` (PyTorch layouts).
//! Input `(b, 1, 28, 28)` intensities in [0, 1].

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::linear::Linear;
use serde::{Deserialize, Serialize};

use crate::kernels::conv::{conv2d, ConvSpec};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub channels: usize,
    pub image_size: usize,
    /// Width of the penultimate (feature) layer.
    pub features: usize,
    pub classes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channels: 1,
            image_size: 28,
            features: 128,
            classes: 10,
        }
    }
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn new(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        let init = crate::nn::init::torch_uniform(inp * 25);
        Ok(Self {
            weight: vb.get_with_hints((out, inp, 5, 5), "weight", init)?,
            bias: vb.get_with_hints(out, "bias", init)?,
        })
    }

    /// `(b, in, h, w) -> (b, out, (h - 4) / 2, (w - 4) / 2)`: convolution, ReLU, 2x2 max pool.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d(x, &self.weight, ConvSpec::default())?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?
            .relu()?;
        max_pool_2x2(&y)
    }
}

/// 2x2 max pooling by reshape and max, whose gradient is right (Candle 0.11's `max_pool2d`
/// backward scales it by 1/4).
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

/// One row of values per image.
pub type Rows = Vec<Vec<f32>>;

pub struct LeNet {
    cfg: Config,
    conv1: Conv,
    conv2: Conv,
    fc1: Linear,
    fc2: Linear,
}

impl LeNet {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let side = ((cfg.image_size - 4) / 2 - 4) / 2;
        Ok(Self {
            cfg: cfg.clone(),
            conv1: Conv::new(cfg.channels, 20, vb.pp("conv1"))?,
            conv2: Conv::new(20, 50, vb.pp("conv2"))?,
            fc1: crate::nn::init::linear(50 * side * side, cfg.features, vb.pp("fc1"))?,
            fc2: crate::nn::init::linear(cfg.features, cfg.classes, vb.pp("fc2"))?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `(b, c, 28, 28) -> (b, features)`: the penultimate activations.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv2.forward(&self.conv1.forward(x)?)?; // (b, 50, 4, 4)
        self.fc1.forward(&h.flatten_from(1)?)?.relu()
    }

    /// `(b, c, 28, 28) -> (b, classes)` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.features(x)?)
    }

    /// Features and class probabilities of a batch, as plain rows.
    pub fn describe(&self, x: &Tensor) -> Result<(Rows, Rows)> {
        let features = self.features(x)?;
        let logits = self.fc2.forward(&features)?;
        let probs = candle_nn::ops::softmax(&logits, 1)?;
        Ok((features.to_vec2()?, probs.to_vec2()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    #[test]
    fn shapes_and_a_pooling_gradient_of_one() -> Result<()> {
        let varmap = VarMap::new();
        let vb = crate::nn::init::seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu);
        let net = LeNet::new(&Config::default(), vb)?;
        let x = Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu)?;
        assert_eq!(net.features(&x)?.dims(), &[3, 128]);
        assert_eq!(net.forward(&x)?.dims(), &[3, 10]);
        // Each 2x2 window passes its maximum's gradient through unscaled.
        let v = Var::from_tensor(&Tensor::new(&[[[[1f32, 2.0], [4.0, 3.0]]]], &Device::Cpu)?)?;
        let g = max_pool_2x2(v.as_tensor())?.sum_all()?.backward()?;
        let g = g.get(&v).unwrap().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(g, vec![0.0, 0.0, 1.0, 0.0]);
        Ok(())
    }
}
