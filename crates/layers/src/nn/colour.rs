//! A learned colour map per image, `y = A x + t` over the channels (`A (c, c)`, `t (c)`), chosen
//! from where the image stands and a condition `c` (StarGAN's target attributes): the front of a
//! translation generator for attributes that change every pixel alike by its colour alone.
//!
//! Why: StarGAN's generator learns an inversion of the digits' colours as a map to its own
//! kind only (keeping the digit where the inversion stays, redrawing another where it changes,
//! or the reverse without the identity term), while CycleGAN's generators, one per direction,
//! learn `1 - x` (models/translation.md). One generator must flip the sign of its output by an
//! exclusive or of the input's state and the target's, which its features do not learn. Every
//! combination of inverting and tinting is one affine map of the channels (with the digits
//! here: inverting `x -> -x` in [-1, 1]; the red tint scales green and blue; untinting copies
//! red into them), so a small head reading the image's state and the target can choose it, and
//! the generator behind it is left the identity. A map per pixel instead (`pixel_affine` in
//! StarGAN's config) let the generator paint blobs where its maps gave up the input.
//!
//! The head starts at the identity map (its last layer zero), reads the image's state detached
//! (a [`StandsReader`] learned from labels), and learns from the terms behind it. Names:
//! `features.N`, `source`, `head.0`, `head.2`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::stands::{StandsHead, StandsReader};

pub struct ConditionedColourMap {
    reader: StandsReader,
    /// `c * c + c` outputs: `A - I` row by row, then `t`.
    head: StandsHead,
    channels: usize,
}

impl ConditionedColourMap {
    /// The reader's and the head's width.
    const WIDTH: usize = 32;

    /// For `channels`-channel images and `c_dim` attributes (as many predicted as read).
    pub fn new(vb: VarBuilder, channels: usize, c_dim: usize) -> Result<Self> {
        let w = Self::WIDTH;
        Ok(Self {
            reader: StandsReader::new(vb.clone(), channels, c_dim, w)?,
            head: StandsHead::new(vb.pp("head"), c_dim, w, channels * channels + channels)?,
            channels,
        })
    }

    /// The image's own attributes as the map predicts them, `(b, c_dim)` logits: train them
    /// against the real images' labels, which is all that the reader learns from.
    pub fn source_logits(&self, x: &Tensor) -> Result<Tensor> {
        self.reader.logits(x)
    }

    /// Each image's map: `A (b, c, c)` and `t (b, c)`.
    pub fn maps(&self, x: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let out = self.head.forward(&self.reader.stands(x)?, c)?;
        let (b, k) = (out.dim(0)?, self.channels);
        let eye = Tensor::eye(k, out.dtype(), out.device())?;
        let a = out
            .narrow(1, 0, k * k)?
            .reshape((b, k, k))?
            .broadcast_add(&eye)?;
        Ok((a, out.narrow(1, k * k, k)?))
    }

    /// `A x + t` for each image, `(b, c, h, w)`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let (b, k, h, w) = x.dims4()?;
        if k != self.channels {
            candle_core::bail!(
                "the colour map was built for {} channels, the images have {k}",
                self.channels
            );
        }
        let (a, t) = self.maps(x, c)?;
        a.matmul(&x.reshape((b, k, h * w))?)?
            .broadcast_add(&t.unsqueeze(2)?)?
            .reshape((b, k, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn colour_map(varmap: &VarMap) -> Result<ConditionedColourMap> {
        let vb = crate::nn::init::seeded_var_builder(varmap, 4, DType::F32, &Device::Cpu);
        ConditionedColourMap::new(vb, 3, 2)
    }

    fn largest_difference(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// A new map leaves every image as it is; a head whose bias says `-I` and a shift inverts
    /// every image, and one that copies the first channel into the others makes it grey.
    #[test]
    fn a_new_map_is_the_identity_and_its_bias_sets_any_affine_map() -> Result<()> {
        let varmap = VarMap::new();
        let map = colour_map(&varmap)?;
        let x = crate::Rng::new(5).normal((3, 3, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu)?;
        assert_eq!(largest_difference(&map.forward(&x, &c)?, &x)?, 0.0);
        let set_bias = |bias: Vec<f32>| -> Result<()> {
            varmap.data().lock().unwrap()["head.2.bias"].set(&Tensor::new(bias, &Device::Cpu)?)
        };
        // A - I = -2 I: A = -I; t = 0.25 on every channel.
        set_bias(vec![
            -2., 0., 0., 0., -2., 0., 0., 0., -2., 0.25, 0.25, 0.25,
        ])?;
        let inverted = (x.neg()? + 0.25)?;
        assert!(largest_difference(&map.forward(&x, &c)?, &inverted)? < 1e-5);
        // Every output channel the first input channel: A's first column ones.
        set_bias(vec![0., 0., 0., 1., -1., 0., 1., 0., -1., 0., 0., 0.])?;
        let red = x.narrow(1, 0, 1)?;
        let grey = Tensor::cat(&[&red, &red, &red], 1)?;
        assert!(largest_difference(&map.forward(&x, &c)?, &grey)? < 1e-5);
        let one_channel = crate::Rng::new(6).normal((3, 1, 8, 8), &Device::Cpu)?;
        let err = map.forward(&one_channel, &c).unwrap_err().to_string();
        assert!(
            err.contains("3 channels") && err.contains("have 1"),
            "{err}"
        );
        Ok(())
    }

    /// The map's gradient reaches the head and not the reader, which only the source
    /// prediction trains; the map's gradient with respect to the condition matches finite
    /// differences.
    #[test]
    fn the_head_learns_from_the_map_and_the_reader_from_the_labels() -> Result<()> {
        let varmap = VarMap::new();
        let map = colour_map(&varmap)?;
        // A head past its zero start, so that its first layer has a gradient too.
        let w =
            (crate::Rng::new(10).normal((12, ConditionedColourMap::WIDTH), &Device::Cpu)? * 0.3)?;
        varmap.data().lock().unwrap()["head.2.weight"].set(&w)?;
        let x = crate::Rng::new(8).normal((2, 3, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, -1.], [0.5, 2.]], &Device::Cpu)?;
        assert_eq!(map.source_logits(&x)?.dims(), &[2, 2]);
        let probe = crate::Rng::new(9).normal((2, 3, 8, 8), &Device::Cpu)?;
        let from_map = (map.forward(&x, &c)? * &probe)?.sum_all()?.backward()?;
        let from_source = map.source_logits(&x)?.sum_all()?.backward()?;
        crate::nn::stands::assert_reader_and_head_learn_apart(&varmap, &from_map, &from_source)?;
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |c| map.forward(&x, c),
            &c,
            &probe,
            &[0, 1, 2, 3],
            1e-2,
            1e-2,
        )
    }
}
