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
        let weights = self.weights()?.to_dtype(x.dtype())?;
        let mut blend: Option<Tensor> = None;
        for (k, t) in symmetries(x)?.iter().enumerate() {
            let term = t.broadcast_mul(&weights.narrow(0, k, 1)?.reshape((1, 1, 1, 1))?)?;
            blend = Some(match blend {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
        blend.ok_or_else(|| candle_core::Error::Msg("no symmetries".into()))
    }

    /// The symmetry with the largest weight and that weight: what the training chose.
    pub fn chosen(&self) -> Result<(usize, f32)> {
        let w = self.weights()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (k, p) =
            w.iter().enumerate().fold(
                (0, f32::MIN),
                |best, (k, p)| if *p > best.1 { (k, *p) } else { best },
            );
        Ok((k, p))
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
}
