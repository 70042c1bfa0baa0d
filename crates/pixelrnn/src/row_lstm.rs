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

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use layers::kernels::recurrence::lstm_scan;
use layers::nn::masked::{contiguous_groups, gate_groups, MaskType, MaskedConv2d};

use crate::ar::Autoregressive;
use crate::cached::{draw_at, CachedConv};
use crate::pixelrnn::{state_to_state_kernel, Config, PixelRnn, RecurrentLayer};
use layers::kernels::simd::sigmoid_scalar as sigmoid;

/// Width of both row convolutions (the paper's k = 3).
pub const KERNEL: usize = 3;

pub struct RowLstmLayer {
    input_to_state: MaskedConv2d,
    /// `(4h, h, 1, k)`.
    state_to_state: Tensor,
}

impl RecurrentLayer for RowLstmLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden;
        // Each hidden unit's four gates in the unit's colour group.
        let input_to_state = MaskedConv2d::grouped(
            &contiguous_groups(2 * h, cfg.channels),
            &gate_groups(4, h, cfg.channels),
            (1, KERNEL),
            MaskType::B,
            vb.pp("input_to_state"),
        )?;
        let state_to_state = state_to_state_kernel((4 * h, h, 1, KERNEL), vb.pp("state_to_state"))?;
        Ok(Self {
            input_to_state,
            state_to_state,
        })
    }

    /// `(b, 2h, H, W) -> (b, h, H, W)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let input_gates = self.input_to_state.forward(x)?; // (b, 4h, H, W)
        let kernel = self.state_to_state.squeeze(2)?; // (4h, h, k)
                                                      // Rows are the slices of the recurrence: (b, H, 4h, W) -> (b, H, h, W).
        let h = lstm_scan(&input_gates.permute((0, 2, 1, 3))?, &kernel, KERNEL / 2)?;
        h.permute((0, 2, 1, 3)) // (b, h, H, W)
    }

    fn effective_parameters(&self) -> Result<usize> {
        Ok(self.input_to_state.effective_parameters()? + self.state_to_state.elem_count())
    }

    /// Position by position: each layer's state at `(r, c)` needs its input at `(r, c - 1..=c)`
    /// and the previous row's states, all final by then.
    fn cached_sample(model: &PixelRnn<Self>, uniforms: &[f32], n: usize) -> Option<Result<Tensor>> {
        Some(sample_row_lstm(model, uniforms, n))
    }
}

/// Per-position buffers of one layer, each `(n, channels, H, W)`.
struct LayerCache {
    input_to_state: CachedConv,
    state_to_state: CachedConv,
    residual: CachedConv,
    gates_in: Vec<f32>,
    gates_state: Vec<f32>,
    h: Vec<f32>,
    c: Vec<f32>,
    out: Vec<f32>,
}

fn sample_row_lstm(model: &RowLstm, uniforms: &[f32], n: usize) -> Result<Tensor> {
    let [ch, rows, width] = model.image_shape();
    if ch != 1 {
        return crate::ar::naive_sample(model, uniforms, n);
    }
    let hid = model.cfg.hidden;
    let plane = rows * width;
    let buf = |c: usize| vec![0f32; n * c * plane];
    let input_conv = CachedConv::new(&model.input_conv, false)?;
    let mut x0 = buf(2 * hid);
    let mut caches = model
        .layers
        .iter()
        .map(|(layer, residual)| {
            Ok(LayerCache {
                input_to_state: CachedConv::new(&layer.input_to_state, false)?,
                state_to_state: CachedConv::from_parts(&layer.state_to_state, None, false)?,
                residual: CachedConv::new(residual, false)?,
                gates_in: buf(4 * hid),
                gates_state: buf(4 * hid),
                h: buf(hid),
                c: buf(hid),
                out: buf(2 * hid),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let [head0, head1] = model.head.cached()?;
    let output = model.cfg.output;
    let (mut relu_in, mut head_hidden, mut logits) = (
        buf(2 * hid),
        buf(model.cfg.head_hidden),
        buf(output.levels()),
    );
    let mut image = vec![0f32; n * plane];
    let at = |buf: &[f32], channels: usize, k: usize, c: usize, r: usize, col: usize| {
        buf[((k * channels + c) * rows + r) * width + col]
    };
    for r in 0..rows {
        for col in 0..width {
            for k in 0..n {
                input_conv.at(&image, &mut x0, (rows, width), k, (r, col));
                for l in 0..caches.len() {
                    let (before, rest) = caches.split_at_mut(l);
                    let cache = &mut rest[0];
                    let input: &[f32] = if l == 0 { &x0 } else { &before[l - 1].out };
                    cache
                        .input_to_state
                        .at(input, &mut cache.gates_in, (rows, width), k, (r, col));
                    if r > 0 {
                        cache.state_to_state.at(
                            &cache.h,
                            &mut cache.gates_state,
                            (rows, width),
                            k,
                            (r - 1, col),
                        );
                    }
                    for j in 0..hid {
                        let gate = |g: usize| {
                            let state = if r > 0 {
                                at(&cache.gates_state, 4 * hid, k, g * hid + j, r - 1, col)
                            } else {
                                0.0
                            };
                            at(&cache.gates_in, 4 * hid, k, g * hid + j, r, col) + state
                        };
                        let (o, f, i, g) = (
                            sigmoid(gate(0)),
                            sigmoid(gate(1)),
                            sigmoid(gate(2)),
                            gate(3).tanh(),
                        );
                        let c_prev = if r > 0 {
                            at(&cache.c, hid, k, j, r - 1, col)
                        } else {
                            0.0
                        };
                        let c = f * c_prev + i * g;
                        let idx = ((k * hid + j) * rows + r) * width + col;
                        cache.c[idx] = c;
                        cache.h[idx] = o * c.tanh();
                    }
                    cache
                        .residual
                        .at(&cache.h, &mut cache.out, (rows, width), k, (r, col));
                    for j in 0..2 * hid {
                        let idx = ((k * 2 * hid + j) * rows + r) * width + col;
                        cache.out[idx] += input[idx];
                    }
                }
                let last: &[f32] = caches.last().map(|c| c.out.as_slice()).unwrap_or(&x0);
                for j in 0..2 * hid {
                    let idx = ((k * 2 * hid + j) * rows + r) * width + col;
                    relu_in[idx] = last[idx].max(0.0);
                }
                head0.at(&relu_in, &mut head_hidden, (rows, width), k, (r, col));
                head1.at(&head_hidden, &mut logits, (rows, width), k, (r, col));
                let i = r * width + col;
                image[k * plane + i] = draw_at(
                    &logits,
                    output,
                    1,
                    (rows, width),
                    k,
                    (0, r, col),
                    uniforms[k * plane + i],
                );
            }
        }
    }
    Tensor::from_vec(image, (n, 1, rows, width), &model.device)
}

/// The Row LSTM PixelRNN.
pub type RowLstm = PixelRnn<RowLstmLayer>;

crate::autoregressive_model!(RowLstm);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::testing::*;
    use crate::ar::Output;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn build(channels: usize, output: Output) -> Result<(RowLstm, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 4, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 7,
            channels,
            hidden: 6,
            layers: 2,
            first_kernel: 3,
            head_hidden: 24,
            output,
        };
        Ok((RowLstm::new(&cfg, vb)?, varmap))
    }

    fn small() -> Result<RowLstm> {
        Ok(build(1, Output::Bernoulli)?.0)
    }

    #[test]
    fn outputs_see_only_earlier_pixels() -> Result<()> {
        assert_autoregressive(&small()?)
    }

    /// With colours, each hidden unit's four gates must share its colour group.
    #[test]
    fn outputs_see_only_earlier_pixels_and_channels() -> Result<()> {
        assert_autoregressive(&build(3, Output::Bernoulli)?.0)?;
        assert_autoregressive(&build(3, Output::Softmax)?.0)
    }

    #[test]
    fn softmax_outputs_learn_green_and_blue_from_red() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 4, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 4,
            channels: 3,
            hidden: 12,
            layers: 1,
            first_kernel: 3,
            head_hidden: 24,
            output: Output::Softmax,
        };
        assert_learns_colour_dependence(&RowLstm::new(&cfg, vb)?, &varmap, 400)
    }

    #[test]
    fn the_cached_sampler_equals_the_reference_loop() -> Result<()> {
        assert_sampler_matches_reference(&small()?, 4)?;
        assert_sampler_matches_reference(&build(1, Output::Softmax)?.0, 2)
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
