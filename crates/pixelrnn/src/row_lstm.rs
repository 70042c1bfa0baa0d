//! PixelRNN Row LSTM (van den Oord et al. 2016, sec. 3.1): the image is processed row by row
//! from the top; a whole row of LSTM states is computed at once.
//!
//! - input-to-state: a `1 x k` convolution along the row, masked (mask B) so that a pixel sees
//!   itself and the pixels to its left, computed for the whole map at once: `K^is * x`.
//! - state-to-state: a `1 x k` convolution of the previous row's hidden state, row by row:
//!   `[o, f, i, g] = K^ss * h_{r-1} + K^is * x_r`, then eq. (3).
//!
//! Each output sees a triangle above it and the pixels to its left. Parameters per layer:
//! `input_to_state` (with bias), `state_to_state` (no bias), and the shared `residual`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::conv::{conv2d, ConvSpec};
use layers::masked::{MaskType, MaskedConv2d};

use crate::pixelrnn::{lstm_update, Config, PixelRnn, RecurrentLayer};

/// Width of both row convolutions (the paper's k = 3).
pub const KERNEL: usize = 3;

pub struct RowLstmLayer {
    input_to_state: MaskedConv2d,
    /// `(4h, h, 1, k)`.
    state_to_state: Tensor,
    hidden: usize,
}

impl RecurrentLayer for RowLstmLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden;
        let input_to_state = MaskedConv2d::new(
            2 * h,
            4 * h,
            (1, KERNEL),
            MaskType::B,
            cfg.channels,
            vb.pp("input_to_state"),
        )?;
        let bound = 1.0 / ((h * KERNEL) as f64).sqrt();
        let state_to_state = vb.pp("state_to_state").get_with_hints(
            (4 * h, h, 1, KERNEL),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            input_to_state,
            state_to_state,
            hidden: h,
        })
    }

    /// `(b, 2h, H, W) -> (b, h, H, W)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, rows, width) = x.dims4()?;
        let input_gates = self.input_to_state.forward(x)?; // (b, 4h, H, W)
        let zeros = Tensor::zeros((b, self.hidden, 1, width), DType::F32, x.device())?
            .to_dtype(x.dtype())?;
        let (mut h, mut c) = (zeros.clone(), zeros);
        let mut outputs = Vec::with_capacity(rows);
        let spec = ConvSpec::same_padding(1, KERNEL);
        for r in 0..rows {
            // (b, 4h, 1, W): this row's input plus the previous row's state.
            let gates = (input_gates.narrow(2, r, 1)? + conv2d(&h, &self.state_to_state, spec)?)?;
            (h, c) = lstm_update(&gates, &c, self.hidden)?;
            outputs.push(h.clone());
        }
        Tensor::cat(&outputs, 2) // (b, h, H, W)
    }
}

/// The Row LSTM PixelRNN.
pub type RowLstm = PixelRnn<RowLstmLayer>;

crate::bernoulli_model!(RowLstm);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::testing::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn small() -> Result<RowLstm> {
        let varmap = VarMap::new();
        let vb = layers::init::seeded_var_builder(&varmap, 4, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 7,
            channels: 1,
            hidden: 4,
            layers: 2,
            first_kernel: 3,
            head_hidden: 8,
        };
        RowLstm::new(&cfg, vb)
    }

    #[test]
    fn outputs_see_only_earlier_pixels() -> Result<()> {
        assert_autoregressive(&small()?)
    }

    #[test]
    fn the_check_catches_an_unmasked_input_to_state_convolution() -> Result<()> {
        let mut model = small()?;
        for layer in model.layers_mut() {
            layer.input_to_state = layer.input_to_state.clone().without_mask()?;
        }
        assert_leaks(&model)
    }
}
