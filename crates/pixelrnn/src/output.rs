//! The distribution of each value given the ones before it, shared by every autoregressive
//! model and by the cached samplers: a Bernoulli per binary value or a 256-way softmax per
//! intensity.

use candle_core::{DType, Result, Tensor};
use candle_nn::ops::log_softmax;
use layers::Values;
use serde::{Deserialize, Serialize};

/// Intensity levels of the softmax output (8-bit images).
pub const LEVELS: usize = 256;

/// The distribution of each value given the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Binary values; one logit of `p(x_i = 1 | x_<i)` per value.
    #[default]
    Bernoulli,
    /// Intensities `k / 255`; 256 logits per value (a softmax over `k`).
    Softmax,
}

impl Output {
    /// Logits per value.
    pub fn levels(self) -> usize {
        match self {
            Output::Bernoulli => 1,
            Output::Softmax => LEVELS,
        }
    }

    /// What the model's images hold.
    pub fn values(self) -> Values {
        match self {
            Output::Bernoulli => Values::Binary,
            Output::Softmax => Values::Intensities,
        }
    }

    /// `log p(x)` per image `(b)` from `logits (b, c * levels, h, w)` (channel `ch`'s logits
    /// at `ch * levels..`) and values `x (b, c, h, w)`.
    pub fn log_prob(self, logits: &Tensor, x: &Tensor) -> Result<Tensor> {
        match self {
            Output::Bernoulli => layers::loss::bce_with_logits_per_image(logits, x)?.neg(),
            Output::Softmax => {
                let (b, c, h, w) = x.dims4()?;
                // (b, c, 256, h * w): the softmax over the levels axis.
                let log_p = log_softmax(&logits.reshape((b, c, LEVELS, h * w))?, 2)?;
                let level = intensity_levels(x)?.reshape((b, c, 1, h * w))?;
                log_p.gather(&level, 2)?.reshape((b, ()))?.sum(1) // (b)
            }
        }
    }

    /// The value drawn for one variable from its `levels` logits and a uniform `u` in [0, 1):
    /// the first value whose cumulative probability exceeds `u`.
    pub fn draw(self, logits: &[f32], u: f32) -> f32 {
        match self {
            Output::Bernoulli => f32::from(u < layers::kernels::simd::sigmoid_scalar(logits[0])),
            Output::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let weights: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let target = u * weights.iter().sum::<f32>();
                let mut cumulative = 0.0;
                let level = weights
                    .iter()
                    .position(|w| {
                        cumulative += w;
                        target < cumulative
                    })
                    .unwrap_or(LEVELS - 1);
                level as f32 / (LEVELS - 1) as f32
            }
        }
    }
}

/// `(b, c, h, w)` intensities in [0, 1] -> the levels `round(255 x)` as u32.
pub fn intensity_levels(x: &Tensor) -> Result<Tensor> {
    (x.to_dtype(DType::F32)? * (LEVELS - 1) as f64)?
        .round()?
        .clamp(0f32, (LEVELS - 1) as f32)?
        .to_dtype(DType::U32)
}
