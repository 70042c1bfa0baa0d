//! Where an image stands on some attributes, read by a small network of its own and learned
//! from the labels of real images: what the conditioned fronts of a translation generator
//! ([`crate::nn::symmetry::ConditionedSymmetryChoice`], [`crate::nn::negation::ConditionedNegation`])
//! read beside the target, since what a translation must do depends on both (an exclusive or:
//! turn back an image that is turned and should not be, invert one that is inverted and should
//! not be).

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::activation::Activation;
use crate::kernels::conv::ConvSpec;
use crate::kernels::linear::Linear;
use crate::nn::sequential::{Layer, Sequential, Stack};

/// Three stride-2 convolutions averaged over the image, then a linear map to one logit per
/// attribute. Names: `features.N`, `source`.
pub struct StandsReader {
    features: Stack,
    source: Linear,
}

impl StandsReader {
    /// `width` features read from `channels`-channel images, `attributes` logits.
    pub fn new(vb: VarBuilder, channels: usize, attributes: usize, width: usize) -> Result<Self> {
        let down = ConvSpec {
            stride: (2, 2),
            padding: (1, 1),
        };
        let mut features = Sequential::new(vb.pp("features"));
        let mut inputs = channels;
        for _ in 0..3 {
            features = features
                .conv((inputs, width, 4), down, true, None)?
                .push(Layer::LeakyRelu(0.2));
            inputs = width;
        }
        Ok(Self {
            features: features.build(),
            source: crate::nn::init::linear(width, attributes, vb.pp("source"))?,
        })
    }

    /// `(b, attributes)` logits of the image's own attributes: train them against the real
    /// images' labels (a classification loss), which is all that this reader learns from.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let read = self.features.forward(x, true)?.mean((2, 3))?;
        self.source.forward_activated(&read, Activation::Identity)
    }

    /// The probabilities, detached: what a front's head reads, so that the head's gradient
    /// never reaches the reader (a head that learned where images stand from the adversarial
    /// terms moved alike for all images before it told them apart; models/translation.md).
    pub fn stands(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logits(x)?.detach())
    }
}

/// A front's head: where the image stands (from a [`StandsReader`]) beside the condition `c`,
/// through one hidden layer (LeakyReLU 0.2), to the front's outputs. The last layer starts at
/// zero, so a front starts wherever its fixed offsets put it. Names: `0` and `2` under the
/// head's prefix (a `Sequential`'s indices: linear, activation, linear).
pub struct StandsHead {
    hidden: Linear,
    out: Linear,
}

impl StandsHead {
    /// `2 c_dim` inputs (the image's state and the condition), `width` hidden, `outputs`.
    pub fn new(vb: VarBuilder, c_dim: usize, width: usize, outputs: usize) -> Result<Self> {
        let zero = Init::Const(0.0);
        Ok(Self {
            hidden: crate::nn::init::linear(2 * c_dim, width, vb.pp(0))?,
            out: Linear::new(
                vb.pp(2).get_with_hints((outputs, width), "weight", zero)?,
                Some(vb.pp(2).get_with_hints(outputs, "bias", zero)?),
            ),
        })
    }

    /// `(b, outputs)` from `stands (b, c_dim)` and `c (b, c_dim)`.
    pub fn forward(&self, stands: &Tensor, c: &Tensor) -> Result<Tensor> {
        let h = self.hidden.forward_activated(
            &Tensor::cat(&[stands, &c.to_dtype(stands.dtype())?], 1)?,
            Activation::LeakyRelu(0.2),
        )?;
        self.out.forward_activated(&h, Activation::Identity)
    }
}

/// For the fronts' tests: the gradient of a front's output (`from_front`) reaches its head and
/// not its reader, and the gradient of the reader's logits (`from_labels`) the reverse.
#[cfg(test)]
pub(crate) fn assert_reader_and_head_learn_apart(
    varmap: &candle_nn::VarMap,
    from_front: &candle_core::backprop::GradStore,
    from_labels: &candle_core::backprop::GradStore,
) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    let reached = |grads: &candle_core::backprop::GradStore, key: &str| -> Result<bool> {
        Ok(match grads.get(data[key].as_tensor()) {
            Some(g) => g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
            None => false,
        })
    };
    for key in ["features.0.weight", "source.weight"] {
        assert!(!reached(from_front, key)?, "the front reached {key}");
        assert!(reached(from_labels, key)?, "the labels missed {key}");
    }
    for key in ["head.0.weight", "head.2.weight"] {
        assert!(reached(from_front, key)?, "the front missed {key}");
        assert!(!reached(from_labels, key)?, "the labels reached {key}");
    }
    Ok(())
}
