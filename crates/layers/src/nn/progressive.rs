//! Progressive GAN's blocks (Karras et al. 2018, "Progressive Growing of GANs for Improved
//! Quality, Stability, and Variation"), as facebookresearch/pytorch_GAN_zoo writes them
//! (`models/networks/custom_layers.py`, `mini_batch_stddev_module.py`).
//!
//! - Equalized learning rate (section 4.1): weights drawn from N(0, 1) and scaled at run time
//!   by He's constant `c = gain / sqrt(fan_in)`, so Adam's step, which is invariant to a
//!   parameter's scale, moves every layer at the same relative speed. The zoo multiplies the
//!   layer's output after the bias, `y = c (W x + b)`; the official TensorFlow code scales the
//!   weight only, `y = c W x + b`. genzoo follows the zoo, so its checkpoints load unchanged
//!   (the bias starts at zero either way).
//! - Pixel-wise feature normalisation (4.2): `b_xy = a_xy / sqrt(mean_j (a_xy^j)^2 + 1e-8)`.
//! - Minibatch standard deviation (3): the standard deviation of each feature at each pixel over
//!   a group of images, averaged into one value per group and appended as a constant map.

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::kernels::activation::{activation_grad, Activation};
use crate::kernels::conv::{conv2d_scaled_bias_activation, conv_transpose2d_scaled, ConvSpec};
use crate::kernels::linear::Linear;
pub use crate::kernels::pixel_norm::pixel_norm;
pub use crate::nn::resample::{downscale2d, downscale2d_adjoint, upscale2d};

/// He's gain for a layer followed by a (leaky) ReLU.
pub const RELU_GAIN: f64 = std::f64::consts::SQRT_2;

/// The zoo's `EqualizedConv2d` or `EqualizedLinear`: parameters `weight` and `bias` as the
/// wrapped `nn.Conv2d` / `nn.Linear` names them (the zoo's `state_dict` drops `module.`).
#[derive(Debug, Clone)]
pub struct Equalized {
    weight: Tensor,
    bias: Tensor,
    /// `gain / sqrt(fan_in)`.
    scale: f64,
    /// `Some(padding)` for a convolution, `None` for a dense layer.
    padding: Option<usize>,
}

impl Equalized {
    /// `EqualizedConv2d(in, out, kernel, padding)`: weight `(out, in, k, k)` from N(0, 1), bias 0.
    pub fn conv(
        vb: VarBuilder,
        (inputs, outputs): (usize, usize),
        kernel: usize,
        padding: usize,
        gain: f64,
    ) -> Result<Self> {
        let fan_in = inputs * kernel * kernel;
        let weight = vb.get_with_hints((outputs, inputs, kernel, kernel), "weight", standard())?;
        let bias = vb.get_with_hints(outputs, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            scale: gain / (fan_in as f64).sqrt(),
            padding: Some(padding),
        })
    }

    /// `EqualizedLinear(in, out)`: weight `(out, in)` from N(0, 1), bias 0.
    pub fn linear(vb: VarBuilder, (inputs, outputs): (usize, usize), gain: f64) -> Result<Self> {
        let weight = vb.get_with_hints((outputs, inputs), "weight", standard())?;
        let bias = vb.get_with_hints(outputs, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            scale: gain / (inputs as f64).sqrt(),
            padding: None,
        })
    }

    pub fn device(&self) -> &candle_core::Device {
        self.weight.device()
    }

    /// The run-time scale `gain / sqrt(fan_in)`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `act(c (W x + b))`: `(b, in, h, w) -> (b, out, h', w')` or `(b, in) -> (b, out)`. The
    /// same map as `act((c W) x + c b)`: the scale goes into the bias and into the convolution
    /// op (a dense layer's small weight is scaled), so the product runs through the fused
    /// kernels with the bias and activation in one pass.
    pub fn forward(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let bias = (&self.bias * self.scale)?;
        match self.conv_spec() {
            // The scale inside the convolution, whose kernel stays the variable itself.
            Some(spec) => {
                conv2d_scaled_bias_activation(x, &self.weight, &bias, spec, act, self.scale)
            }
            None => {
                let weight = (&self.weight * self.scale)?;
                Linear::new(weight, Some(bias)).forward_activated(x, act)
            }
        }
    }

    /// A convolution's stride 1 and its padding; `None` for a dense layer.
    fn conv_spec(&self) -> Option<ConvSpec> {
        self.padding.map(|p| ConvSpec {
            stride: (1, 1),
            padding: (p, p),
        })
    }
}

impl Equalized {
    /// The gradient at the layer's input from the gradient `g` at its output `y = act(c (W x +
    /// b))`: `c W^T (g act'(y))`, made of ops that can be differentiated again (with respect to
    /// `g` and the weight), so a hand-written backward pass of a critic gives WGAN-GP's penalty
    /// its gradient without Candle's second-order graph.
    pub fn input_grad(&self, y: &Tensor, g: &Tensor, act: Activation) -> Result<Tensor> {
        let g = activation_grad(g, y, act)?;
        match self.conv_spec() {
            Some(spec) => conv_transpose2d_scaled(&g, &self.weight, spec, self.scale),
            None => g.matmul(&(&self.weight * self.scale)?),
        }
    }
}

fn standard() -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: 1.0,
    }
}

/// `(members per group, groups)` of a batch of `b`: `min(group, b)` members, or `b` when that
/// does not divide the batch (the zoo's rule).
fn stddev_groups(b: usize, group: usize) -> (usize, usize) {
    let mut members = group.min(b).max(1);
    if !b.is_multiple_of(members) {
        members = b;
    }
    (members, b / members)
}

/// `(b, c, h, w) -> (b, c + 1, h, w)`: the minibatch standard deviation feature. Image `i`
/// belongs to group `i mod (b / g)` as in the official code's `reshape([g, -1, ...])`; within a
/// group the standard deviation of every feature at every pixel (the biased variance plus 1e-8,
/// then the square root), averaged over features and pixels, is appended to each member as a
/// constant map. `g = min(group, b)`, or `b` when it does not divide the batch (the zoo's rule).
///
/// The zoo differs in two details, both kept out here: it takes the unbiased variance
/// (`torch.var`), and it hands group `j`'s value to images `j g .. j g + g - 1` rather than to
/// the group's members (its `expand` undoes the stride of its `view`).
pub fn minibatch_stddev(x: &Tensor, group: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (g, groups) = stddev_groups(b, group);
    // (g, groups, c, h, w): member m of group j is image m * groups + j.
    let y = x.reshape((g, groups, c, h, w))?;
    let centred = y.broadcast_sub(&y.mean_keepdim(0)?)?;
    let std = (centred.sqr()?.mean(0)? + 1e-8)?.sqrt()?; // (groups, c, h, w)
    let per_group = std.flatten_from(1)?.mean(D::Minus1)?; // (groups)
    let map = per_group
        .reshape((1, groups, 1, 1, 1))?
        .broadcast_as((g, groups, 1, h, w))?
        .reshape((b, 1, h, w))?;
    Tensor::cat(&[x, &map], 1)
}

/// The gradient at `x` of [`minibatch_stddev`] given the gradient `g (b, c + 1, h, w)` at its
/// output, in ops that can be differentiated again (also with respect to `x`). The appended map
/// of group `j` is `s_j = mean over (c, h, w) of std_j`, with `d std_j / d x_m = (x_m - mu_j) /
/// (g std_j)` for member `m`; so `x_m` receives `G_j (x_m - mu_j) / (g std_j c h w)`, `G_j`
/// the sum of the map's gradient over group `j`'s members and pixels.
pub fn minibatch_stddev_input_grad(x: &Tensor, g: &Tensor, group: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if g.dims() != [b, c + 1, h, w] {
        candle_core::bail!(
            "minibatch_stddev_input_grad: gradient {:?} for input {:?}",
            g.dims(),
            x.dims()
        );
    }
    let (members, groups) = stddev_groups(b, group);
    let y = x.reshape((members, groups, c, h, w))?;
    let centred = y.broadcast_sub(&y.mean_keepdim(0)?)?;
    let std = (centred.sqr()?.mean_keepdim(0)? + 1e-8)?.sqrt()?; // (1, groups, c, h, w)
    let map_grad = g
        .narrow(1, c, 1)?
        .reshape((members, groups, h * w))?
        .sum_keepdim(2)?
        .sum_keepdim(0)?
        .reshape((1, groups, 1, 1, 1))?; // G_j
    let through_map = centred
        .broadcast_div(&std)?
        .broadcast_mul(&(map_grad / (members * c * h * w) as f64)?)?
        .reshape((b, c, h, w))?;
    g.narrow(1, 0, c)? + through_map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::init::seeded_var_builder;
    use crate::Rng;
    use candle_core::{DType, Device, Module, Var};
    use candle_nn::VarMap;

    /// Four images of one feature at one pixel, groups of 2: images 0 and 2 form group 0
    /// (values 1 and 5: std 2), images 1 and 3 group 1 (values 2 and 2: std 1e-4, the epsilon).
    #[test]
    fn minibatch_stddev_by_hand() -> Result<()> {
        let x = Tensor::new(&[1f32, 2., 5., 2.], &Device::Cpu)?.reshape((4, 1, 1, 1))?;
        let y = minibatch_stddev(&x, 2)?;
        assert_eq!(y.dims(), &[4, 2, 1, 1]);
        let appended = y.narrow(1, 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let want = [2.0, 1e-4, 2.0, 1e-4];
        for (a, w) in appended.iter().zip(want) {
            assert!((a - w).abs() < 1e-6, "{appended:?} vs {want:?}");
        }
        assert_eq!(
            y.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?,
            [1., 2., 5., 2.]
        );
        // Two features over a 1 x 2 image, one group of 3 (3 does not divide by 2): the mean
        // over features and pixels of the per-entry standard deviations.
        let x = Tensor::new(
            &[
                [[[0f32, 0.]], [[0., 3.]]],
                [[[3., 0.]], [[0., 0.]]],
                [[[0., 0.]], [[0., 0.]]],
            ],
            &Device::Cpu,
        )?;
        let y = minibatch_stddev(&x, 2)?;
        // Entries with values (3, 0, 0): biased std sqrt(2); the other two entries are 0 (1e-4).
        let want = (2.0 * 2f32.sqrt() + 2.0 * 1e-4) / 4.0;
        for v in y.narrow(1, 2, 1)?.flatten_all()?.to_vec1::<f32>()? {
            assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn pixel_norm_gives_unit_root_mean_square_per_pixel() -> Result<()> {
        let x = Rng::new(3).normal((2, 5, 3, 3), &Device::Cpu)?;
        let y = pixel_norm(&(x * 7.0)?)?;
        let ms = y.sqr()?.mean(1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(ms.iter().all(|m| (m - 1.0).abs() < 1e-5), "{ms:?}");
        Ok(())
    }

    /// The equalized layer's output and its weight's gradient both carry `gain / sqrt(fan_in)`:
    /// the same as a plain layer whose weight and bias were multiplied by it, and the stored
    /// weight stays N(0, 1).
    #[test]
    fn an_equalized_layer_scales_output_and_gradient() -> Result<()> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let conv = Equalized::conv(vb.pp("c"), (8, 16), 3, 1, RELU_GAIN)?;
        let want_scale = (2.0f64 / 72.0).sqrt();
        assert!((conv.scale() - want_scale).abs() < 1e-12);
        let w = varmap.data().lock().unwrap()["c.weight"]
            .as_tensor()
            .clone();
        let std = w.sqr()?.mean_all()?.to_scalar::<f32>()?.sqrt();
        assert!(
            (std - 1.0).abs() < 0.1,
            "weights drawn from N(0, 1): std {std}"
        );
        // A nonzero bias, so its scaling shows.
        varmap.data().lock().unwrap()["c.bias"].set(&Tensor::full(0.5f32, 16, &Device::Cpu)?)?;
        let x = Var::from_tensor(&Rng::new(1).normal((2, 8, 5, 5), &Device::Cpu)?)?;
        let y = conv.forward(x.as_tensor(), Activation::Identity)?;
        let plain = candle_nn::Conv2d::new(
            (&w * want_scale)?,
            Some(Tensor::full(0.5f32 * want_scale as f32, 16, &Device::Cpu)?),
            candle_nn::Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        )
        .forward(x.as_tensor());
        let diff = (&y - plain?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let wv = varmap.data().lock().unwrap()["c.weight"].clone();
        let probe = Rng::new(2).normal(y.dims(), &Device::Cpu)?;
        let grads = (&y * &probe)?.sum_all()?.backward()?;
        let g = grads.get(wv.as_tensor()).expect("a weight gradient");
        // d/dW of sum(probe * c W * x) = c * (the unscaled layer's gradient).
        let unscaled = candle_nn::Conv2d::new(
            wv.as_tensor().clone(),
            None,
            candle_nn::Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        )
        .forward(x.as_tensor())?;
        let g_unscaled = (&unscaled * &probe)?.sum_all()?.backward()?;
        let g_unscaled = g_unscaled.get(wv.as_tensor()).expect("a weight gradient");
        let ratio = (g.sqr()?.sum_all()?.to_scalar::<f32>()?
            / g_unscaled.sqr()?.sum_all()?.to_scalar::<f32>()?)
        .sqrt();
        assert!((ratio as f64 - want_scale).abs() < 1e-5, "{ratio}");
        let diff = (g - (g_unscaled * want_scale)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }

    #[test]
    fn upscale_then_downscale_is_the_identity() -> Result<()> {
        let x = Rng::new(4).normal((2, 3, 4, 4), &Device::Cpu)?;
        let up = upscale2d(&x)?;
        assert_eq!(up.dims(), &[2, 3, 8, 8]);
        let back = downscale2d(&up)?;
        assert!((back - &x)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-7);
        Ok(())
    }
}
