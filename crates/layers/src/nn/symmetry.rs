//! A learned choice among the symmetries of the square: the image turned by 0, 1, 2 or 3
//! quarter turns, each also mirrored (the dihedral group D4), blended with softmax weights that
//! the training moves toward one of them.
//!
//! Why: a convolutional generator edits pixels where they are, and a map that moves every pixel
//! by where it is (a quarter turn between two domains) is out of its easy reach: CycleGAN's
//! generators redraw a rotated-looking other digit instead (models/translation.md). A learned
//! angle does not help either: at angle 0 the adversarial gradient has no side to take (turning
//! left and right look alike to a discriminator that sees upright digits), and 0 is a stable
//! point. A blend of the finitely many symmetries has no such barrier: every candidate is present
//! from the start, and the discriminator's gradient raises the weight of the one whose output
//! looks most like the other domain (`scripts/probe_rotation_warp.py --warp dihedral`).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::nn::stands::{StandsHead, StandsReader};

/// How many symmetries the square has.
pub const COUNT: usize = 8;

/// `x (b, c, h, w)` mirrored left to right.
fn mirror(x: &Tensor) -> Result<Tensor> {
    let w = x.dim(D::Minus1)?;
    let reversed: Vec<u32> = (0..w as u32).rev().collect();
    x.index_select(&Tensor::new(reversed, x.device())?, 3)
}

/// `x (b, c, h, w)` turned a quarter counter-clockwise (`torch.rot90(x, 1, dims=(2, 3))`):
/// `(b, c, w, h)`.
pub fn quarter_turn(x: &Tensor) -> Result<Tensor> {
    mirror(x)?.transpose(2, 3)?.contiguous()
}

/// The symmetries of `x (b, c, s, s)` in a fixed order: `k` quarter turns counter-clockwise for
/// `k = 0..4`, then the same four mirrored left to right.
pub fn symmetries(x: &Tensor) -> Result<Vec<Tensor>> {
    let (_, _, h, w) = x.dims4()?;
    if h != w {
        candle_core::bail!("the symmetries of a square: the images are {h} x {w}");
    }
    let mut turns = vec![x.clone()];
    for k in 1..4 {
        turns.push(quarter_turn(&turns[k - 1])?);
    }
    let mirrored = turns.iter().map(mirror).collect::<Result<Vec<_>>>()?;
    turns.extend(mirrored);
    Ok(turns)
}

/// `sum_k weights_k T_k(x)` for `weights (n, COUNT)`: one row for the whole batch (`n = 1`)
/// or one per image.
fn blend(x: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let weights = weights.to_dtype(x.dtype())?;
    let n = weights.dim(0)?;
    let mut sum: Option<Tensor> = None;
    for (k, t) in symmetries(x)?.iter().enumerate() {
        let term = t.broadcast_mul(&weights.narrow(1, k, 1)?.reshape((n, 1, 1, 1))?)?;
        sum = Some(match sum {
            Some(sum) => (sum + term)?,
            None => term,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("no symmetries".into()))
}

/// The index of each row's largest weight and that weight.
fn largest(weights: &Tensor) -> Result<Vec<(usize, f32)>> {
    let rows = weights.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|w| {
            w.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (k, p)| if *p > best.1 { (k, *p) } else { best },
            )
        })
        .collect())
}

/// The learned blend: `sum_k softmax(logits)_k T_k(x)`, the logits (named `symmetry_logits`)
/// starting equal.
pub struct SymmetryChoice {
    logits: Tensor,
}

impl SymmetryChoice {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            logits: vb.get_with_hints(COUNT, "symmetry_logits", Init::Const(0.0))?,
        })
    }

    /// The weight of each symmetry, in the order of [`symmetries`].
    pub fn weights(&self) -> Result<Tensor> {
        candle_nn::ops::softmax(&self.logits, 0)
    }

    /// The blend of `x`'s symmetries, `(b, c, s, s)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        blend(x, &self.weights()?.unsqueeze(0)?)
    }

    /// The symmetry with the largest weight and that weight: what the training chose.
    pub fn chosen(&self) -> Result<(usize, f32)> {
        Ok(largest(&self.weights()?.unsqueeze(0)?)?[0])
    }
}

/// A choice among the symmetries made for each image from where the image stands and a
/// condition `c (b, c_dim)` (StarGAN's target attributes): which turn a translation needs
/// depends on both, on whether the input is already turned and whether the target is (an
/// exclusive or). A [`StandsReader`] reads the image's stroke directions into a prediction of
/// the image's own attributes (`source`), learned from the labels of real images
/// ([`Self::source_logits`]; StarGAN's batches carry them). A two-layer
/// head reads that prediction, detached, beside `c` and gives the logits: the adversarial
/// terms reach only the head. When the head read the image features themselves, learned from
/// the adversarial terms alone, it settled on one symmetry for every image within about 230
/// generator steps, before the features told turned inputs from upright ones
/// (models/translation.md). The logits start at the identity with weight 0.8 (a fixed prior
/// added to the identity's logit, the head starting at zero): unlike [`SymmetryChoice`]'s one
/// choice for all images, an even blend here hands the generator the orbit's mean, from which
/// no digit can be read back, and the choice did not leave it. Names: `features.N`, `source`,
/// `head.N`.
pub struct ConditionedSymmetryChoice {
    reader: StandsReader,
    head: StandsHead,
}

impl ConditionedSymmetryChoice {
    /// The feature widths and the head's hidden width.
    const WIDTH: usize = 32;
    /// The identity's weight before training.
    const IDENTITY_PRIOR: f64 = 0.8;

    pub fn new(vb: VarBuilder, channels: usize, c_dim: usize) -> Result<Self> {
        let w = Self::WIDTH;
        Ok(Self {
            reader: StandsReader::new(vb.clone(), channels, c_dim, w)?,
            head: StandsHead::new(vb.pp("head"), c_dim, w, COUNT)?,
        })
    }

    /// The image's own attributes as the choice predicts them, `(b, c_dim)` logits: train them
    /// against the real images' labels (a classification loss), which is all that the
    /// features learn from.
    pub fn source_logits(&self, x: &Tensor) -> Result<Tensor> {
        self.reader.logits(x)
    }

    /// Each image's weights `(b, COUNT)`, in the order of [`symmetries`].
    pub fn weights(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let logits = self.head.forward(&self.reader.stands(x)?, c)?;
        // ln(p (COUNT - 1) / (1 - p)) on the identity: weight p against 0 logits elsewhere.
        let p = Self::IDENTITY_PRIOR;
        let mut prior = vec![0f32; COUNT];
        prior[0] = (p * (COUNT - 1) as f64 / (1.0 - p)).ln() as f32;
        let prior = Tensor::new(prior, logits.device())?.to_dtype(logits.dtype())?;
        candle_nn::ops::softmax(&logits.broadcast_add(&prior)?, 1)
    }

    /// Each image's blend of its symmetries, `(b, c, s, s)`.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        blend(x, &self.weights(x, c)?)
    }

    /// [`Self::forward`] with the choice held: no gradient reaches the head through the
    /// weights, while the blend still passes the gradient on to `x` (and so to whatever drew
    /// it: a translation that is translated back).
    pub fn forward_held(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        blend(x, &self.weights(x, c)?.detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    fn grid(rows: &[[f32; 3]; 3]) -> Result<Tensor> {
        Tensor::new(rows, &Device::Cpu)?.reshape((1, 1, 3, 3))
    }

    fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
        t.reshape((3, 3))?.to_vec2::<f32>()
    }

    /// A symmetry's name, in the order of [`symmetries`].
    fn name(k: usize) -> &'static str {
        [
            "identity",
            "quarter turn counter-clockwise",
            "half turn",
            "quarter turn clockwise",
            "mirrored",
            "quarter turn counter-clockwise, mirrored",
            "half turn, mirrored",
            "quarter turn clockwise, mirrored",
        ][k]
    }

    #[test]
    fn a_quarter_turn_is_torch_rot90() -> Result<()> {
        // torch.rot90(torch.arange(1, 10).view(3, 3), 1, dims=(0, 1)): the last column on top.
        let x = grid(&[[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]])?;
        let turned = rows(&quarter_turn(&x)?)?;
        assert_eq!(
            turned,
            vec![vec![3., 6., 9.], vec![2., 5., 8.], vec![1., 4., 7.]]
        );
        Ok(())
    }

    #[test]
    fn the_eight_symmetries_are_distinct_and_a_group() -> Result<()> {
        let x = grid(&[[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]])?;
        let all = symmetries(&x)?;
        assert_eq!(all.len(), COUNT);
        let all: Vec<_> = all.iter().map(rows).collect::<Result<_>>()?;
        for i in 0..COUNT {
            for j in 0..i {
                assert_ne!(all[i], all[j], "{} and {}", name(i), name(j));
            }
        }
        // Four quarter turns and two mirrors are the identity; the mirrored half turn is the
        // vertical flip.
        let mut y = x.clone();
        for _ in 0..4 {
            y = quarter_turn(&y)?;
        }
        assert_eq!(rows(&y)?, all[0]);
        assert_eq!(rows(&mirror(&mirror(&x)?)?)?, all[0]);
        assert_eq!(
            all[6],
            vec![vec![7., 8., 9.], vec![4., 5., 6.], vec![1., 2., 3.]]
        );
        assert!(symmetries(&Tensor::zeros((1, 1, 2, 3), DType::F32, &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn equal_logits_blend_evenly_and_a_large_one_picks_its_symmetry() -> Result<()> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let choice = SymmetryChoice::new(vb)?;
        let x = grid(&[[1., 2., 3.], [4., 5., 6.], [7., 8., 9.]])?;
        // Under the even blend each pixel is the mean of its orbit: the corners (1, 3, 7, 9),
        // the edges (2, 4, 6, 8) and the centre all average 5.
        let even = rows(&choice.forward(&x)?)?;
        for v in even.iter().flatten() {
            assert!((v - 5.0).abs() < 1e-5, "{even:?}");
        }
        let mut logits = vec![0f32; COUNT];
        logits[3] = 30.0;
        varmap.data().lock().unwrap()["symmetry_logits"]
            .set(&Tensor::new(logits, &Device::Cpu)?)?;
        assert_eq!(rows(&choice.forward(&x)?)?, rows(&symmetries(&x)?[3])?);
        assert_eq!(choice.chosen()?.0, 3);
        Ok(())
    }

    #[test]
    fn the_gradient_of_the_weights_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Var::from_tensor(&Tensor::new(
            &[0.3f64, -0.2, 0.5, 0.0, 0.1, -0.4, 0.2, 0.05],
            &dev,
        )?)?;
        let choice = SymmetryChoice {
            logits: logits.as_tensor().clone(),
        };
        let x = Tensor::new(&[[1f64, 2., 0.5], [4., -1., 6.], [0., 8., 3.]], &dev)?
            .reshape((1, 1, 3, 3))?;
        // A loss that tells the symmetries apart: the blend against a fixed image.
        let target = Tensor::new(&[[0f64, 1., 2.], [3., 4., 5.], [6., 7., 8.]], &dev)?
            .reshape((1, 1, 3, 3))?;
        let loss =
            |c: &SymmetryChoice| -> Result<Tensor> { (c.forward(&x)? - &target)?.sqr()?.sum_all() };
        let grads = loss(&choice)?.backward()?;
        let analytic = grads
            .get(logits.as_tensor())
            .expect("a gradient")
            .to_vec1::<f64>()?;
        let base = logits.as_tensor().to_vec1::<f64>()?;
        let h = 1e-6;
        for k in 0..COUNT {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += d;
                let c = SymmetryChoice {
                    logits: Tensor::new(v, &dev)?,
                };
                loss(&c)?.to_scalar::<f64>()
            };
            let numeric = (at(h)? - at(-h)?) / (2.0 * h);
            assert!(
                (numeric - analytic[k]).abs() < 1e-6 * (1.0 + numeric.abs()),
                "logit {k}: {numeric} vs {}",
                analytic[k]
            );
        }
        Ok(())
    }

    fn conditioned(varmap: &VarMap) -> Result<ConditionedSymmetryChoice> {
        let vb = crate::nn::init::seeded_var_builder(varmap, 4, DType::F32, &Device::Cpu);
        ConditionedSymmetryChoice::new(vb, 1, 2)
    }

    /// A new per-image choice gives the identity 0.8 and the others alike; a large logit
    /// picks its symmetry for every image.
    #[test]
    fn a_new_conditioned_choice_starts_at_the_identity_and_a_large_logit_picks() -> Result<()> {
        let varmap = VarMap::new();
        let choice = conditioned(&varmap)?;
        let x = crate::Rng::new(5).normal((3, 1, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu)?;
        let weights = choice.weights(&x, &c)?.to_vec2::<f32>()?;
        for row in &weights {
            assert!((row[0] - 0.8).abs() < 1e-6, "{weights:?}");
            for w in &row[1..] {
                assert!((w - 0.2 / 7.0).abs() < 1e-6, "{weights:?}");
            }
        }
        let mut bias = vec![0f32; COUNT];
        bias[6] = 40.0;
        varmap.data().lock().unwrap()["head.2.bias"].set(&Tensor::new(bias, &Device::Cpu)?)?;
        let d = (choice.forward(&x, &c)? - &symmetries(&x)?[6])?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        assert!(largest(&choice.weights(&x, &c)?)?
            .iter()
            .all(|&(k, _)| k == 6));
        Ok(())
    }

    /// The choice learns where an image stands only from labels: the weights' gradient
    /// reaches the head and not the features, which only the source prediction trains.
    #[test]
    fn the_features_learn_from_the_source_labels_and_the_head_from_the_rest() -> Result<()> {
        let varmap = VarMap::new();
        let choice = conditioned(&varmap)?;
        // A head past its zero start, so that its first layer has a gradient too.
        let w =
            crate::Rng::new(10).normal((COUNT, ConditionedSymmetryChoice::WIDTH), &Device::Cpu)?;
        varmap.data().lock().unwrap()["head.2.weight"].set(&w)?;
        let x = crate::Rng::new(8).normal((3, 1, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &Device::Cpu)?;
        assert_eq!(choice.source_logits(&x)?.dims(), &[3, 2]);
        let probe = crate::Rng::new(9).normal((3, COUNT), &Device::Cpu)?;
        let from_weights = (choice.weights(&x, &c)? * probe)?.sum_all()?.backward()?;
        let from_source = choice.source_logits(&x)?.sum_all()?.backward()?;
        crate::nn::stands::assert_reader_and_head_learn_apart(&varmap, &from_weights, &from_source)
    }

    /// With a trained-looking head each image gets its own weights, and the blend's gradient
    /// with respect to the condition matches finite differences.
    #[test]
    fn conditioned_weights_differ_by_image_and_differentiate_through_the_condition() -> Result<()> {
        let varmap = VarMap::new();
        let choice = conditioned(&varmap)?;
        let w: Vec<f32> = (0..COUNT * ConditionedSymmetryChoice::WIDTH)
            .map(|i| 0.5 * (((i * 7) % 11) as f32 / 10.0 - 0.5))
            .collect();
        let shape = (COUNT, ConditionedSymmetryChoice::WIDTH);
        varmap.data().lock().unwrap()["head.2.weight"].set(&Tensor::from_vec(
            w,
            shape,
            &Device::Cpu,
        )?)?;
        let x = crate::Rng::new(6).normal((2, 1, 8, 8), &Device::Cpu)?;
        let c = Tensor::new(&[[1f32, -1.], [0.5, 2.]], &Device::Cpu)?;
        let rows = choice.weights(&x, &c)?.to_vec2::<f32>()?;
        assert_ne!(rows[0], rows[1]);
        for row in &rows {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
        let probe = crate::Rng::new(7).normal((2, 1, 8, 8), &Device::Cpu)?;
        crate::kernels::ops::assert_gradient_matches_finite_differences(
            |c| choice.forward(&x, c),
            &c,
            &probe,
            &[0, 1, 2, 3],
            1e-2,
            1e-2,
        )
    }
}
