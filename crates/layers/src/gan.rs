//! What every GAN of genzoo shares: the adversarial losses, the WGAN-GP gradient penalty, the
//! generator / discriminator interface the training loop drives, and the moving average of the
//! generator's weights used for sampling.
//!
//! Losses, with `D(x)` the discriminator's logit (critic value for WGAN-GP):
//! - minimax (Goodfellow et al. 2014): D maximises `log s(D(x)) + log(1 - s(D(G(z))))`, G
//!   minimises `log(1 - s(D(G(z))))`;
//! - non-saturating (same paper, sec. 3): G maximises `log s(D(G(z)))` instead;
//! - LSGAN (Mao et al. 2017): `(D(x) - 1)^2 + D(G(z))^2` for D, `(D(G(z)) - 1)^2` for G (halved);
//! - hinge (Lim & Ye 2017): `relu(1 - D(x)) + relu(1 + D(G(z)))` for D, `-D(G(z))` for G;
//! - WGAN-GP (Gulrajani et al. 2017): `D(G(z)) - D(x) + lambda (|grad D(x_hat)| - 1)^2` for D at
//!   random interpolates `x_hat`, `-D(G(z))` for G.

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::loss::softplus;
use crate::train::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GanLoss {
    Minimax,
    #[default]
    NonSaturating,
    Lsgan,
    Hinge,
    WganGp,
}

/// The discriminator's loss from its outputs on real and generated images, each `(b)` or
/// `(b, 1)`; a scalar, the mean over the batch.
pub fn discriminator_loss(loss: GanLoss, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
    let (real, fake) = (real.flatten_all()?, fake.flatten_all()?);
    match loss {
        // -log s(r) = softplus(-r); -log(1 - s(f)) = softplus(f).
        GanLoss::Minimax | GanLoss::NonSaturating => {
            softplus(&real.neg()?)?.mean_all()? + softplus(&fake)?.mean_all()?
        }
        GanLoss::Lsgan => ((real - 1.0)?.sqr()?.mean_all()? + fake.sqr()?.mean_all()?)? * 0.5,
        GanLoss::Hinge => (1.0 - real)?.relu()?.mean_all()? + (fake + 1.0)?.relu()?.mean_all()?,
        GanLoss::WganGp => fake.mean_all()? - real.mean_all()?,
    }
}

/// The generator's loss from the discriminator's outputs on its images.
pub fn generator_loss(loss: GanLoss, fake: &Tensor) -> Result<Tensor> {
    let fake = fake.flatten_all()?;
    match loss {
        // log(1 - s(f)) = -softplus(f).
        GanLoss::Minimax => softplus(&fake)?.mean_all()?.neg(),
        GanLoss::NonSaturating => softplus(&fake.neg()?)?.mean_all(),
        GanLoss::Lsgan => (fake - 1.0)?.sqr()?.mean_all()? * 0.5,
        GanLoss::Hinge | GanLoss::WganGp => fake.mean_all()?.neg(),
    }
}

/// `mean_b (|grad_x D(x_hat_b)|_2 - 1)^2` at `x_hat = alpha real + (1 - alpha) fake`, with
/// `alpha (b)` uniform in [0, 1). Differentiable with respect to D's parameters, which needs
/// Candle's second-order gradients: call [`enable_second_order_gradients`] before the first
/// backward pass of the thread.
pub fn gradient_penalty(
    critic: &dyn Fn(&Tensor) -> Result<Tensor>,
    real: &Tensor,
    fake: &Tensor,
    alpha: &Tensor,
) -> Result<Tensor> {
    let b = real.dim(0)?;
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, real.rank() - 1));
    let alpha = alpha.reshape(shape)?;
    let mixed = (real.broadcast_mul(&alpha)? + fake.broadcast_mul(&(1.0 - &alpha)?)?)?;
    let input = Var::from_tensor(&mixed.detach())?;
    let out = critic(input.as_tensor())?.sum_all()?;
    let grads = out.backward()?;
    let grad = grads
        .get(input.as_tensor())
        .ok_or_else(|| candle_core::Error::Msg("the critic ignores its input".into()))?;
    let norm = (grad.flatten_from(1)?.sqr()?.sum(1)? + 1e-12)?.sqrt()?; // (b)
    (norm - 1.0)?.sqr()?.mean_all()
}

/// Candle detaches gradients unless `CANDLE_GRAD_DO_NOT_DETACH` is set before a thread's
/// first backward pass; the gradient penalty needs the gradient of a gradient.
pub fn enable_second_order_gradients() {
    // SAFETY: called before training starts; no other thread reads or writes the environment
    // concurrently (Candle reads this variable once per thread, at its first backward pass).
    unsafe { std::env::set_var("CANDLE_GRAD_DO_NOT_DETACH", "1") };
}

/// The generator's input: noise, and for conditional models the classes asked for and any
/// latent codes.
#[derive(Debug, Clone)]
pub struct GeneratorInput {
    /// `(b, noise)`.
    pub noise: Tensor,
    /// `(b)` u32 classes for class-conditional models.
    pub classes: Option<Tensor>,
    /// `(b, codes)` InfoGAN's latent codes (one-hot categorical, then continuous).
    pub codes: Option<Tensor>,
}

impl GeneratorInput {
    /// `n` standard normal noise vectors of `dim` values, nothing else.
    pub fn noise(
        n: usize,
        dim: usize,
        rng: &mut Rng,
        device: &candle_core::Device,
    ) -> Result<Self> {
        Ok(Self {
            noise: rng.normal((n, dim), device)?,
            classes: None,
            codes: None,
        })
    }
}

/// What the discriminator says about a batch.
pub struct Verdict {
    /// `(b)` logits (critic values for WGAN-GP).
    pub logits: Tensor,
    /// Extra heads sharing the discriminator's trunk (InfoGAN's Q): `(b, codes)`.
    pub q: Option<Tensor>,
}

/// A GAN as the training loop sees it. Images are in [-1, 1] on both sides (tanh outputs);
/// `GenerativeModel::sample` ([`implicit_model!`]) returns them mapped to [0, 1]. The variables
/// of the two networks are named `generator.…` and `discriminator.…`, so each gets its own
/// optimiser ([`vars_with_prefix`]).
pub trait Adversarial {
    /// The shape of one generated image.
    fn output_shape(&self) -> crate::ImageShape;

    /// Draws the generator's input for `n` images.
    fn draw_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput>;

    /// `(b, c, h, w)` images in [-1, 1]. `train` selects batch statistics in normalisation.
    fn generate(&self, input: &GeneratorInput, train: bool) -> Result<Tensor>;

    /// The discriminator on images in [-1, 1], with their classes for conditional models.
    fn discriminate(&self, x: &Tensor, classes: Option<&Tensor>, train: bool) -> Result<Verdict>;

    /// Classes of the model's conditioning (None: unconditional).
    fn classes(&self) -> Option<usize> {
        None
    }

    /// The fixed input of the per-epoch grid (default: random noise); conditional models lay
    /// their classes or codes out along the rows.
    fn grid_input(&self, n: usize, rng: &mut Rng) -> Result<GeneratorInput> {
        self.draw_input(n, rng)
    }

    /// Images per row of that grid.
    fn grid_columns(&self) -> usize {
        8
    }

    /// Categories of an InfoGAN-style categorical code that Q predicts (None: no code).
    fn categories(&self) -> Option<usize> {
        None
    }

    /// For models with latent codes: `rows x columns` inputs with the categorical code fixed
    /// per row and continuous code `code` swept along the columns (None: no codes).
    fn code_sweep(
        &self,
        _rows: usize,
        _columns: usize,
        _code: usize,
        _rng: &mut Rng,
    ) -> Result<Option<GeneratorInput>> {
        Ok(None)
    }

    /// A loss both networks add (InfoGAN's mutual-information term), from the generator's
    /// input and the discriminator's verdict on the generated images.
    fn auxiliary_loss(
        &self,
        _input: &GeneratorInput,
        _verdict: &Verdict,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The variable prefix of a discriminator-side head that alone, with G, learns the
    /// auxiliary loss: the head then steps with G's optimiser and D's trunk learns only the
    /// adversarial loss, so G cannot satisfy the head with features D itself was taught to
    /// see. `None`: the auxiliary loss trains all of G and D.
    fn auxiliary_head(&self) -> Option<&'static str> {
        None
    }
}

/// A GAN that is also a [`crate::GenerativeModel`] (what the runner holds).
pub trait AdversarialModel: Adversarial + crate::GenerativeModel {}
impl<T: Adversarial + crate::GenerativeModel> AdversarialModel for T {}

/// Implements `GenerativeModel` for an [`Adversarial`] type: an implicit model of 8-bit
/// intensities whose samples are the generator's images (inference mode) mapped to [0, 1].
#[macro_export]
macro_rules! implicit_model {
    ($t:ty) => {
        impl $crate::GenerativeModel for $t {
            fn image_shape(&self) -> $crate::ImageShape {
                $crate::gan::Adversarial::output_shape(self)
            }

            fn kind(&self) -> $crate::ModelKind {
                $crate::ModelKind::Implicit
            }

            fn values(&self) -> $crate::Values {
                $crate::Values::Intensities
            }

            fn sample(
                &self,
                n: usize,
                rng: &mut $crate::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                let input = $crate::gan::Adversarial::draw_input(self, n, rng)?;
                let x = $crate::gan::Adversarial::generate(self, &input, false)?;
                $crate::gan::to_unit_range(&x)
            }

            fn classes(&self) -> Option<usize> {
                $crate::gan::Adversarial::classes(self)
            }

            fn sample_classes(
                &self,
                classes: &[u32],
                rng: &mut $crate::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                let Some(k) = $crate::gan::Adversarial::classes(self) else {
                    candle_core::bail!("this model is not class-conditional");
                };
                if let Some(c) = classes.iter().find(|&&c| c as usize >= k) {
                    candle_core::bail!("class {c} asked of a model of {k} classes");
                }
                let mut input = $crate::gan::Adversarial::draw_input(self, classes.len(), rng)?;
                input.classes = Some(candle_core::Tensor::new(classes, input.noise.device())?);
                let x = $crate::gan::Adversarial::generate(self, &input, false)?;
                $crate::gan::to_unit_range(&x)
            }
        }
    };
}

/// An exponential moving average of some variables: `avg = d avg + (1 - d) value` with
/// `d = min(decay, (1 + n) / (10 + n))` at the `n`-th update. The warm-up keeps short runs from
/// sampling mostly the initial weights (0.999^630 = 0.53 of them would remain after 630 steps).
pub struct WeightAverage {
    pub decay: f64,
    /// Updates so far.
    pub updates: u64,
    pub slots: Vec<(String, Var, Tensor)>,
}

impl WeightAverage {
    /// Starts at the variables' current values.
    pub fn new(vars: Vec<(String, Var)>, decay: f64) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let avg = var.as_tensor().detach().copy()?;
                Ok((name, var, avg))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            updates: 0,
            slots,
        })
    }

    /// The decay the next update uses.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }

    pub fn update(&mut self) -> Result<()> {
        let d = self.current_decay();
        for (_, var, avg) in &mut self.slots {
            crate::kernels::ops::blend_into(avg, var.as_tensor(), d)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Swaps the averages into the variables (and the variables into the averages): call
    /// twice to restore.
    pub fn swap(&mut self) -> Result<()> {
        for (_, var, avg) in &mut self.slots {
            let current = var.as_tensor().detach().copy()?;
            var.set(avg)?;
            *avg = current;
        }
        Ok(())
    }
}

/// The variables of `varmap` whose names start with `prefix`.
pub fn vars_with_prefix(varmap: &VarMap, prefix: &str) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// `[-1, 1] -> [0, 1]`.
pub fn to_unit_range(x: &Tensor) -> Result<Tensor> {
    ((x + 1.0)? * 0.5)?.clamp(0f32, 1f32)
}

/// `[0, 1] -> [-1, 1]`.
pub fn to_tanh_range(x: &Tensor) -> Result<Tensor> {
    (x.to_dtype(DType::F32)? * 2.0)? - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f64 {
        x.to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn losses_match_their_definitions() -> Result<()> {
        let (real, fake) = (t(&[2.0, -1.0]), t(&[0.5, -3.0]));
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let mean = |f: &dyn Fn(f64) -> f64, v: &[f64]| v.iter().map(|x| f(*x)).sum::<f64>() / 2.0;
        let (r, f) = ([2.0, -1.0], [0.5, -3.0]);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let d_bce = mean(&|x| sp(-x), &r) + mean(&sp, &f);
        close(
            scalar(discriminator_loss(GanLoss::NonSaturating, &real, &fake)?),
            d_bce,
        );
        close(
            scalar(discriminator_loss(GanLoss::Minimax, &real, &fake)?),
            d_bce,
        );
        close(
            scalar(generator_loss(GanLoss::NonSaturating, &fake)?),
            mean(&|x| sp(-x), &f),
        );
        close(
            scalar(generator_loss(GanLoss::Minimax, &fake)?),
            -mean(&sp, &f),
        );
        close(
            scalar(discriminator_loss(GanLoss::Lsgan, &real, &fake)?),
            0.5 * (mean(&|x| (x - 1.0) * (x - 1.0), &r) + mean(&|x| x * x, &f)),
        );
        close(
            scalar(generator_loss(GanLoss::Lsgan, &fake)?),
            0.5 * mean(&|x| (x - 1.0) * (x - 1.0), &f),
        );
        close(
            scalar(discriminator_loss(GanLoss::Hinge, &real, &fake)?),
            mean(&|x| (1.0 - x).max(0.0), &r) + mean(&|x| (1.0 + x).max(0.0), &f),
        );
        close(
            scalar(generator_loss(GanLoss::Hinge, &fake)?),
            -mean(&|x| x, &f),
        );
        close(
            scalar(discriminator_loss(GanLoss::WganGp, &real, &fake)?),
            mean(&|x| x, &f) - mean(&|x| x, &r),
        );
        // Stable at extreme logits.
        let huge = t(&[200.0, -200.0]);
        assert!(scalar(discriminator_loss(GanLoss::NonSaturating, &huge, &huge)?).is_finite());
        Ok(())
    }

    #[test]
    fn the_average_follows_and_swaps() -> Result<()> {
        let v = Var::from_tensor(&t(&[0.0, 10.0]))?;
        let mut avg = WeightAverage::new(vec![("w".into(), v.clone())], 0.5)?;
        // The first update's warm-up decay is 1/10.
        assert!((avg.current_decay() - 0.1).abs() < 1e-12);
        avg.updates = 100;
        v.set(&t(&[2.0, 2.0]))?;
        avg.update()?;
        assert_eq!(avg.slots[0].2.to_vec1::<f32>()?, vec![1.0, 6.0]);
        assert!((WeightAverage::new(vec![], 0.999)?.current_decay() - 0.1).abs() < 1e-12);
        avg.swap()?;
        assert_eq!(v.as_tensor().to_vec1::<f32>()?, vec![1.0, 6.0]);
        avg.swap()?;
        assert_eq!(v.as_tensor().to_vec1::<f32>()?, vec![2.0, 2.0]);
        Ok(())
    }
}
