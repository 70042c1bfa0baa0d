//! A choice, per image, between the image and its negative (`x` or `-x`, images in [-1, 1]),
//! made from where the image stands and a condition `c` (StarGAN's target attributes): the
//! front of a translation generator for an attribute that inverts every pixel (the digits'
//! `inverted`). Whether a translation must invert depends on both, an exclusive or: invert an
//! image that is inverted and should not be, or is not and should be.
//!
//! Why a hard choice taught from outside: StarGAN's generator keeps the digit where the
//! inversion stays and redraws it as an outline where it changes, and every soft way to offer
//! it the negative failed (models/translation.md): the negated candidates blended beside the
//! symmetries spread (largest weight 0.35), and a colour map per image, in front of the
//! generator or of a generator drawing only an edit, never crossed to the inverting side. A
//! blend `(1 - w) x + w (-x) = (1 - 2w) x` passes through the blank image on its way from `x`
//! to `-x`, and the critic's gradient along that path does not lead across it. Here the
//! generator is shown `x` or `-x`, never a blend; which one is told by a teacher (StarGAN: the
//! candidate its critic classifies as the target), and the head learns to predict the
//! teacher's choice (a logistic loss), so that translating needs no teacher.
//!
//! The head reads where the image stands, detached, from a [`StandsReader`] learned from the
//! labels of real images, beside `c`; it starts at zero (a logit of 0: keep the image). Names:
//! `features.N`, `source`, `head.0`, `head.2`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::stands::{StandsHead, StandsReader};

pub struct ConditionedNegation {
    reader: StandsReader,
    /// One output: the logit of negating.
    head: StandsHead,
}

impl ConditionedNegation {
    /// The reader's and the head's width.
    const WIDTH: usize = 32;

    /// For `channels`-channel images and `c_dim` attributes (as many predicted as read).
    pub fn new(vb: VarBuilder, channels: usize, c_dim: usize) -> Result<Self> {
        let w = Self::WIDTH;
        Ok(Self {
            reader: StandsReader::new(vb.clone(), channels, c_dim, w)?,
            head: StandsHead::new(vb.pp("head"), c_dim, w, 1)?,
        })
    }

    /// The image's own attributes as the choice predicts them, `(b, c_dim)` logits: train them
    /// against the real images' labels, which is all that the reader learns from.
    pub fn source_logits(&self, x: &Tensor) -> Result<Tensor> {
        self.reader.logits(x)
    }

    /// `(b)` logits of negating each image for the condition `c (b, c_dim)`.
    pub fn logits(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.reader.stands(x)?, c)?.squeeze(1)
    }

    /// `(b)` ones where the head negates (a positive logit), zeros elsewhere.
    pub fn chosen(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        self.logits(x, c)?.gt(0f32)?.to_dtype(x.dtype())
    }

    /// The head's loss against the teacher's choice `taught (b)` (ones where it negates): the
    /// mean logistic loss, which reaches the head only; and the head's own choices `(b)`, as
    /// [`Self::chosen`] gives them, from the same logits.
    pub fn loss(&self, x: &Tensor, c: &Tensor, taught: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = self.logits(x, c)?;
        let nll =
            crate::loss::bce_with_logits_per_image(&logits.unsqueeze(1)?, &taught.unsqueeze(1)?)?;
        Ok((nll.mean_all()?, logits.gt(0f32)?.to_dtype(x.dtype())?))
    }

    /// Each image as the head chooses it for `c`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        negate_where(x, &self.chosen(x, c)?)
    }
}

/// `x (b, ...)` with the images where `negate (b)` is 1 negated (0: kept). The gradient passes
/// to `x` (the sign of each image), not to `negate`.
pub fn negate_where(x: &Tensor, negate: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    if negate.dims() != [b] {
        candle_core::bail!(
            "negate_where: one choice per image expected ({b}), got shape {:?}",
            negate.dims()
        );
    }
    let mut shape = vec![1usize; x.rank()];
    shape[0] = b;
    let sign = (1.0 - (negate.detach() * 2.0)?)?
        .to_dtype(x.dtype())?
        .reshape(shape)?;
    x.broadcast_mul(&sign)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn negation(varmap: &VarMap) -> Result<ConditionedNegation> {
        let vb = crate::nn::init::seeded_var_builder(varmap, 4, DType::F32, &Device::Cpu);
        ConditionedNegation::new(vb, 3, 2)
    }

    /// A new choice keeps every image; a head whose bias is positive negates every image, and
    /// `negate_where` negates exactly the images it is told to.
    #[test]
    fn a_new_choice_keeps_the_image_and_a_positive_logit_negates_it() -> Result<()> {
        let varmap = VarMap::new();
        let choice = negation(&varmap)?;
        let x = crate::Rng::new(5).normal((3, 3, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu)?;
        assert_eq!(choice.chosen(&x, &c)?.to_vec1::<f32>()?, [0., 0., 0.]);
        let same = (choice.forward(&x, &c)? - &x)?.abs()?.max_all()?;
        assert_eq!(same.to_scalar::<f32>()?, 0.0);
        varmap.data().lock().unwrap()["head.2.bias"].set(&Tensor::new(&[2f32], &Device::Cpu)?)?;
        assert_eq!(choice.chosen(&x, &c)?.to_vec1::<f32>()?, [1., 1., 1.]);
        let negated = (choice.forward(&x, &c)? + &x)?.abs()?.max_all()?;
        assert_eq!(negated.to_scalar::<f32>()?, 0.0);

        let some = negate_where(&x, &Tensor::new(&[0f32, 1., 0.], &Device::Cpu)?)?;
        for (i, sign) in [1f32, -1., 1.].into_iter().enumerate() {
            let want = (x.get(i)? * sign as f64)?;
            let diff = (some.get(i)? - want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "image {i}");
        }
        let err = negate_where(&x, &Tensor::new(&[0f32, 1.], &Device::Cpu)?).unwrap_err();
        assert!(
            err.to_string()
                .contains("one choice per image expected (3)"),
            "{err}"
        );
        Ok(())
    }

    /// The head learns from the teacher's choice and not the reader, which only the labels
    /// train; the loss is the logistic loss of the logits against the taught choice.
    #[test]
    fn the_head_learns_from_the_teacher_and_the_reader_from_the_labels() -> Result<()> {
        let varmap = VarMap::new();
        let choice = negation(&varmap)?;
        // A head past its zero start, so that its first layer has a gradient too.
        let w = (crate::Rng::new(10).normal((1, ConditionedNegation::WIDTH), &Device::Cpu)? * 0.3)?;
        varmap.data().lock().unwrap()["head.2.weight"].set(&w)?;
        let x = crate::Rng::new(8).normal((2, 3, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, 0.], [0., 1.]], &Device::Cpu)?;
        let taught = Tensor::new(&[1f32, 0.], &Device::Cpu)?;
        let logits = choice.logits(&x, &c)?.to_vec1::<f32>()?;
        let softplus = |v: f32| (1.0 + v.exp()).ln();
        let want = (softplus(-logits[0]) + softplus(logits[1])) / 2.0;
        let (loss, chosen) = choice.loss(&x, &c, &taught)?;
        assert_eq!(
            chosen.to_vec1::<f32>()?,
            choice.chosen(&x, &c)?.to_vec1::<f32>()?
        );
        assert!((loss.to_scalar::<f32>()? - want).abs() < 1e-5);
        let labels = Tensor::new(&[[1f32, 0.], [0., 0.]], &Device::Cpu)?;
        let from_labels =
            crate::loss::bce_with_logits_per_image(&choice.source_logits(&x)?, &labels)?
                .sum_all()?
                .backward()?;
        crate::nn::stands::assert_reader_and_head_learn_apart(
            &varmap,
            &loss.backward()?,
            &from_labels,
        )
    }
}
