//! PixelRNN Diagonal BiLSTM (van den Oord et al. 2016, sec. 3.2): each LSTM state sees the
//! whole context above and to the left of its pixel, through recurrences along diagonals.
//!
//! - Skew: row `r` of the `(b, 2h, H, W)` input is shifted right by `r`, giving
//!   `(b, 2h, H, W + H - 1)`, so that each diagonal of the image becomes a column.
//! - input-to-state: a 1x1 convolution (mask B) of the skewed map: `K^is * x`.
//! - state-to-state: column by column, a 2x1 convolution of the previous column's hidden state
//!   (this row and the row above): `[o, f, i, g] = K^ss * h_{j-1} + (K^is * x)_j`, then eq. (3).
//! - Unskew back to `(b, h, H, W)`.
//!
//! The right-to-left direction is the same on the mirrored map (its own weights); its output is
//! shifted down one row before it is added, so a pixel never sees its own row to the right.
//! Parameters per layer: `left.{input_to_state,state_to_state}`, `right.{…}`, `residual`.
//!
//! Sampling is incremental (the `sampler` submodule): one position per layer and direction for
//! each pixel, each row's right-to-left states once the row is drawn; the same images as the
//! reference loop.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use layers::kernels::ops::{skew_rows as skew, unskew_rows as unskew};
use layers::kernels::recurrence::lstm_scan;
use layers::nn::masked::{contiguous_groups, gate_groups, MaskType, MaskedConv2d};

use crate::pixelrnn::{state_to_state_kernel, Config, PixelRnn, RecurrentLayer};

mod sampler;

/// Mirrors the last axis.
fn flip_width(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(3)?;
    let idx = Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, x.device())?;
    x.contiguous()?.index_select(&idx, 3)
}

/// One direction of the layer.
struct DiagonalLstm {
    input_to_state: MaskedConv2d,
    /// `(4h, h, 2, 1)`: taps on the row above and on this row of the previous column.
    state_to_state: Tensor,
}

impl DiagonalLstm {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden;
        // Each hidden unit's four gates in the unit's colour group.
        let input_to_state = MaskedConv2d::grouped(
            &contiguous_groups(2 * h, cfg.channels),
            &gate_groups(4, h, cfg.channels),
            (1, 1),
            MaskType::B,
            vb.pp("input_to_state"),
        )?;
        let state_to_state = state_to_state_kernel((4 * h, h, 2, 1), vb.pp("state_to_state"))?;
        Ok(Self {
            input_to_state,
            state_to_state,
        })
    }

    /// `(b, 2h, H, W) -> (b, h, H, W)`, left to right.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let width = x.dim(3)?;
        let input_gates = self.input_to_state.forward(&skew(x)?)?; // (b, 4h, H, W + H - 1)
                                                                   // Tap 0 reads the previous column's row r - 1, tap 1 its row r.
        let kernel = self.state_to_state.squeeze(3)?; // (4h, h, 2)
                                                      // Skewed columns are the slices: (b, W + H - 1, 4h, H) -> (b, W + H - 1, h, H).
        let h = lstm_scan(&input_gates.permute((0, 3, 1, 2))?, &kernel, 1)?;
        unskew(&h.permute((0, 2, 3, 1))?, width) // (b, h, H, W)
    }
}

pub struct DiagonalBiLstmLayer {
    left: DiagonalLstm,
    right: DiagonalLstm,
}

impl DiagonalLstm {
    fn effective_parameters(&self) -> Result<usize> {
        Ok(self.input_to_state.effective_parameters()? + self.state_to_state.elem_count())
    }
}

impl RecurrentLayer for DiagonalBiLstmLayer {
    fn effective_parameters(&self) -> Result<usize> {
        Ok(self.left.effective_parameters()? + self.right.effective_parameters()?)
    }

    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            left: DiagonalLstm::new(cfg, vb.pp("left"))?,
            right: DiagonalLstm::new(cfg, vb.pp("right"))?,
        })
    }

    /// `(b, 2h, H, W) -> (b, h, H, W)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dim(2)?;
        let left_to_right = self.left.forward(x)?;
        let right_to_left = flip_width(&self.right.forward(&flip_width(x)?)?)?;
        // Shift down one row: the state at (r, c) takes the right-to-left state of (r - 1, c).
        let shifted = right_to_left.pad_with_zeros(2, 1, 0)?.narrow(2, 0, rows)?;
        left_to_right + shifted
    }

    /// Pixel by pixel from cached states: `L(r, c)` from `L(r, c - 1)` and `L(r - 1, c)`, and
    /// row `r`'s right-to-left states after its last pixel, as the one-row shift allows.
    fn cached_sample(model: &PixelRnn<Self>, uniforms: &[f32], n: usize) -> Option<Result<Tensor>> {
        Some(sampler::sample(model, uniforms, n))
    }
}

impl DiagonalBiLstmLayer {
    /// Removes the one-row shift (for the test that shows the check catches the leak).
    #[cfg(test)]
    fn forward_unshifted(&self, x: &Tensor) -> Result<Tensor> {
        self.left.forward(x)? + flip_width(&self.right.forward(&flip_width(x)?)?)?
    }
}

/// The Diagonal BiLSTM PixelRNN.
pub type DiagonalBiLstm = PixelRnn<DiagonalBiLstmLayer>;

crate::autoregressive_model!(DiagonalBiLstm);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::testing::*;
    use crate::ar::{Autoregressive, Output};
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use layers::ImageShape;

    fn cfg() -> Config {
        Config {
            image_size: 6,
            channels: 1,
            hidden: 4,
            layers: 2,
            first_kernel: 3,
            head_hidden: 8,
            output: Output::Bernoulli,
        }
    }

    fn small() -> Result<DiagonalBiLstm> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
        DiagonalBiLstm::new(&cfg(), vb)
    }

    #[test]
    fn skew_and_unskew_are_inverse() -> Result<()> {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((1, 1, 3, 4))?;
        let s = skew(&x)?;
        assert_eq!(s.dims(), &[1, 1, 3, 6]);
        assert_eq!(
            s.get(0)?.get(0)?.get(1)?.to_vec1::<f32>()?,
            vec![0., 4., 5., 6., 7., 0.]
        );
        assert_eq!(
            unskew(&s, 4)?.squeeze(0)?.to_vec3::<f32>()?,
            x.squeeze(0)?.to_vec3::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn outputs_see_only_earlier_pixels() -> Result<()> {
        assert_autoregressive(&small()?)
    }

    #[test]
    fn outputs_see_only_earlier_pixels_and_channels() -> Result<()> {
        for output in [Output::Bernoulli, Output::Softmax] {
            let varmap = VarMap::new();
            let vb = layers::nn::init::seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
            let cfg = Config {
                channels: 3,
                hidden: 6,
                output,
                ..cfg()
            };
            assert_autoregressive(&DiagonalBiLstm::new(&cfg, vb)?)?;
        }
        Ok(())
    }

    #[test]
    fn softmax_outputs_learn_green_and_blue_from_red() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 4,
            channels: 3,
            hidden: 12,
            layers: 1,
            head_hidden: 24,
            output: Output::Softmax,
            ..cfg()
        };
        assert_learns_colour_dependence(&DiagonalBiLstm::new(&cfg, vb)?, &varmap, 150)
    }

    /// A small model with its initial weights tripled. At PyTorch's init the draws hardly
    /// depend on the right-to-left states: computed from unfinished rows, they changed 2 of the
    /// 2304 pixels of 64 binary images of [`small`], too few for the equality test to see it.
    pub(super) fn sharp(channels: usize, depth: usize, output: Output) -> Result<DiagonalBiLstm> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 7, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 5,
            channels,
            hidden: 6,
            layers: depth,
            output,
            ..cfg()
        };
        let model = DiagonalBiLstm::new(&cfg, vb)?;
        for var in varmap.all_vars() {
            var.set(&(var.as_tensor() * 3.0)?)?;
        }
        Ok(model)
    }

    /// Binary and 256-way outputs, one and three channels, up to three layers (each with its
    /// residual). Negative controls: `sampler::tests`.
    #[test]
    fn the_cached_sampler_equals_the_reference_loop() -> Result<()> {
        assert_sampler_matches_reference(&small()?, 4)?;
        assert_sampler_matches_reference(&sharp(1, 3, Output::Bernoulli)?, 4)?;
        assert_sampler_matches_reference(&sharp(1, 2, Output::Softmax)?, 2)?;
        assert_sampler_matches_reference(&sharp(3, 2, Output::Bernoulli)?, 2)?;
        assert_sampler_matches_reference(&sharp(3, 1, Output::Softmax)?, 2)
    }

    /// A model whose right-to-left direction is not shifted down: pixels see their right.
    #[test]
    fn the_check_catches_a_missing_shift() -> Result<()> {
        struct Unshifted(DiagonalBiLstm, MaskedConv2d);
        impl Autoregressive for Unshifted {
            fn image_shape(&self) -> ImageShape {
                self.0.image_shape()
            }
            fn device(&self) -> &Device {
                self.0.device()
            }
            fn logits(&self, x: &Tensor) -> Result<Tensor> {
                // The first layer alone, unshifted, then the model's 1x1 residual of it.
                let h = self.0.input_conv_forward(x)?;
                let layer = self.0.layer(0);
                self.1.forward(&layer.forward_unshifted(&h)?)
            }
        }
        let model = small()?;
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 6, DType::F32, &Device::Cpu);
        let out = MaskedConv2d::new(4, 1, (1, 1), MaskType::B, 1, vb)?;
        assert_leaks(&Unshifted(model, out))
    }
}
