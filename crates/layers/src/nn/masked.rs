//! Masked convolutions (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", sec. 3.4):
//! a convolution whose kernel is multiplied by a fixed mask on every forward, so that the output
//! at a pixel sees only the pixels before it in raster order, and, across colour channels, only
//! the channels before it (R -> G -> B).
//!
//! Mask A (first layer) also hides the pixel's own channel group; mask B (later layers) shows it.
//! With one colour group the two differ only at the kernel's centre.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::kernels::activation::Activation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MaskType {
    A,
    B,
}

/// The colour group of channel `c` of `channels` split into `groups` contiguous blocks.
pub fn channel_group(c: usize, channels: usize, groups: usize) -> usize {
    if groups <= 1 {
        0
    } else {
        c * groups / channels
    }
}

/// The colour group of each of `channels` channels split into `groups` contiguous blocks.
pub fn contiguous_groups(channels: usize, groups: usize) -> Vec<usize> {
    (0..channels)
        .map(|c| channel_group(c, channels, groups))
        .collect()
}

/// The colour groups of LSTM gate channels `[o, f, i, g]`, each block of `hidden` channels:
/// gate `k` of hidden unit `j` belongs to unit `j`'s group, so that the cell update of a unit
/// (which combines its four gates) stays inside one colour group.
pub fn gate_groups(gates: usize, hidden: usize, groups: usize) -> Vec<usize> {
    (0..gates * hidden)
        .map(|c| channel_group(c % hidden, hidden, groups))
        .collect()
}

/// The `(out, in, kh, kw)` 0/1 mask of a masked convolution centred at `(kh / 2, kw / 2)`,
/// channels in contiguous colour groups.
pub fn conv_mask(
    out_channels: usize,
    in_channels: usize,
    kernel: (usize, usize),
    mask: MaskType,
    color_groups: usize,
) -> Vec<f32> {
    grouped_conv_mask(
        &contiguous_groups(out_channels, color_groups),
        &contiguous_groups(in_channels, color_groups),
        kernel,
        mask,
    )
}

/// The mask for explicit colour groups of the output and input channels.
pub fn grouped_conv_mask(
    out_groups: &[usize],
    in_groups: &[usize],
    (kh, kw): (usize, usize),
    mask: MaskType,
) -> Vec<f32> {
    let (cy, cx) = (kh / 2, kw / 2);
    let (out_channels, in_channels) = (out_groups.len(), in_groups.len());
    let mut m = vec![0f32; out_channels * in_channels * kh * kw];
    for (o, &go) in out_groups.iter().enumerate() {
        for (i, &gi) in in_groups.iter().enumerate() {
            for y in 0..kh {
                for x in 0..kw {
                    let visible = if y < cy || (y == cy && x < cx) {
                        true
                    } else if y == cy && x == cx {
                        match mask {
                            MaskType::A => gi < go,
                            MaskType::B => gi <= go,
                        }
                    } else {
                        false
                    };
                    m[((o * in_channels + i) * kh + y) * kw + x] = f32::from(visible);
                }
            }
        }
    }
    m
}

/// A `kh x kw` convolution (stride 1, "same" zero padding, with bias) whose kernel is masked.
#[derive(Debug, Clone)]
pub struct MaskedConv2d {
    weight: Tensor,
    bias: Tensor,
    mask: Tensor,
    kernel: (usize, usize),
}

impl MaskedConv2d {
    /// Weights `weight` `(out, in, kh, kw)` and `bias` under `vb`, PyTorch's default init;
    /// channels in `color_groups` contiguous colour groups.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize),
        mask: MaskType,
        color_groups: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::grouped(
            &contiguous_groups(in_channels, color_groups),
            &contiguous_groups(out_channels, color_groups),
            kernel,
            mask,
            vb,
        )
    }

    /// With the colour group of every input and output channel given.
    pub fn grouped(
        in_groups: &[usize],
        out_groups: &[usize],
        kernel: (usize, usize),
        mask: MaskType,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (kh, kw) = kernel;
        let (in_channels, out_channels) = (in_groups.len(), out_groups.len());
        let init = crate::nn::init::torch_uniform(in_channels * kh * kw);
        let weight = vb.get_with_hints((out_channels, in_channels, kh, kw), "weight", init)?;
        let bias = vb.get_with_hints(out_channels, "bias", init)?;
        let mask = Tensor::from_vec(
            grouped_conv_mask(out_groups, in_groups, kernel, mask),
            (out_channels, in_channels, kh, kw),
            vb.device(),
        )?
        .to_dtype(weight.dtype())?;
        Ok(Self {
            weight,
            bias,
            mask,
            kernel,
        })
    }

    /// The kernel as used: the weight times the mask.
    pub fn masked_weight(&self) -> Result<Tensor> {
        &self.weight * &self.mask
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `(kh, kw)`.
    pub fn kernel(&self) -> (usize, usize) {
        self.kernel
    }

    /// Drops the mask (for tests that show the autoregressive check catches a leak).
    pub fn without_mask(mut self) -> Result<Self> {
        self.mask = self.mask.ones_like()?;
        Ok(self)
    }

    /// The kernel entries the mask lets through, plus the biases.
    pub fn effective_parameters(&self) -> Result<usize> {
        Ok(self
            .mask
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()? as usize
            + self.bias.elem_count())
    }
}

impl MaskedConv2d {
    /// `(b, in, h, w) -> (b, out, h, w)`: `act(conv(x, weight * mask) + bias)`.
    pub fn forward_activated(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let (kh, kw) = self.kernel;
        crate::kernels::conv::conv2d_bias_activation(
            x,
            &self.masked_weight()?,
            &self.bias,
            crate::kernels::conv::ConvSpec::same_padding(kh, kw),
            act,
        )
    }
}

impl Module for MaskedConv2d {
    /// `(b, in, h, w) -> (b, out, h, w)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_activated(x, Activation::Identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_channel_masks_hide_the_centre_only_for_mask_a() {
        let a = conv_mask(1, 1, (3, 3), MaskType::A, 1);
        let b = conv_mask(1, 1, (3, 3), MaskType::B, 1);
        assert_eq!(a, vec![1., 1., 1., 1., 0., 0., 0., 0., 0.]);
        assert_eq!(b, vec![1., 1., 1., 1., 1., 0., 0., 0., 0.]);
        let row = conv_mask(1, 1, (1, 3), MaskType::B, 1);
        assert_eq!(row, vec![1., 1., 0.]);
    }

    #[test]
    fn colour_groups_follow_r_g_b() {
        // 3 -> 3 channels, centre tap: mask A is strictly lower triangular, B lower triangular.
        let centre = |m: &[f32], o: usize, i: usize| m[((o * 3 + i) * 3 + 1) * 3 + 1];
        let a = conv_mask(3, 3, (3, 3), MaskType::A, 3);
        let b = conv_mask(3, 3, (3, 3), MaskType::B, 3);
        for o in 0..3 {
            for i in 0..3 {
                assert_eq!(centre(&a, o, i), f32::from(i < o), "A o{o} i{i}");
                assert_eq!(centre(&b, o, i), f32::from(i <= o), "B o{o} i{i}");
            }
        }
        // Hidden layers: 6 channels in 3 blocks of 2.
        assert_eq!(
            (0..6).map(|c| channel_group(c, 6, 3)).collect::<Vec<_>>(),
            vec![0, 0, 1, 1, 2, 2]
        );
    }
}
