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

use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::kernels::ops::differentiable_twice;
use crate::loss::softplus;
use crate::model::{CodedModel, GenerativeModel};
use crate::step::{
    Batch, DataSpec, Grid, LabelSpec, LrRole, OptimizerSpec, StepContext, Trainable,
};
use crate::{ImageShape, ModelKind, Rng, Values};

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

/// junyanz's `GANLoss(gan_mode)(prediction, target_is_real)`: the loss of a discriminator's
/// outputs (any shape, a PatchGAN's map) against the all-real or all-fake target, the mean over
/// every output. `lsgan`: `(D - t)^2`; `vanilla` (minimax and non-saturating alike):
/// binary cross-entropy with logits; `wgangp`: `-D` for real, `D` for fake. CycleGAN's
/// generator is scored as real, its discriminator halves the sum of both terms.
pub fn target_loss(loss: GanLoss, prediction: &Tensor, real: bool) -> Result<Tensor> {
    let p = prediction.flatten_all()?;
    match (loss, real) {
        (GanLoss::Lsgan, true) => (p - 1.0)?.sqr()?.mean_all(),
        (GanLoss::Lsgan, false) => p.sqr()?.mean_all(),
        // -log s(p) = softplus(-p); -log(1 - s(p)) = softplus(p).
        (GanLoss::Minimax | GanLoss::NonSaturating, true) => softplus(&p.neg()?)?.mean_all(),
        (GanLoss::Minimax | GanLoss::NonSaturating, false) => softplus(&p)?.mean_all(),
        (GanLoss::Hinge, true) => (1.0 - p)?.relu()?.mean_all(),
        (GanLoss::Hinge, false) => (p + 1.0)?.relu()?.mean_all(),
        (GanLoss::WganGp, true) => p.mean_all()?.neg(),
        (GanLoss::WganGp, false) => p.mean_all(),
    }
}

/// `mean_b (|grad_x D(x_hat_b)|_2 - 1)^2` at `x_hat = alpha real + (1 - alpha) fake`, with
/// `alpha (b)` uniform in [0, 1). Differentiable with respect to D's parameters: the gradient at
/// `x_hat` comes from [`backward_keeping_graph`]. The critic's pass at `x_hat` and its gradient
/// are recorded in a [`differentiable_twice`] scope (Candle's ops); the rest of the step keeps
/// the fused kernels.
pub fn gradient_penalty(
    critic: &dyn Fn(&Tensor) -> Result<Tensor>,
    real: &Tensor,
    fake: &Tensor,
    alpha: &Tensor,
) -> Result<Tensor> {
    let input = Var::from_tensor(&interpolate(real, fake, alpha)?.detach())?;
    differentiable_twice(|| {
        let out = critic(input.as_tensor())?.sum_all()?;
        // The input's gradient alone: the critic's weight gradients of this first pass are
        // never read (the penalty's own gradient reaches the weights through this one).
        let grads = backward_keeping_graph_for(&out, std::slice::from_ref(&input))?;
        let grad = grads
            .get(input.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("the critic ignores its input".into()))?;
        penalty_of(grad)
    })
}

/// The same penalty from a critic's own input gradient, `input_grad(x) = d sum_b D(x_b) / dx`
/// written out as ops that can be differentiated again. Candle's second-order graph keeps, for
/// every node, a zero-filled accumulator, the incoming gradient and their sum; a hand-written
/// backward pass keeps one gradient per layer, as PyTorch's `create_graph` does, and runs on
/// the fused kernels.
pub fn gradient_penalty_from(
    input_grad: &dyn Fn(&Tensor) -> Result<Tensor>,
    real: &Tensor,
    fake: &Tensor,
    alpha: &Tensor,
) -> Result<Tensor> {
    let mixed = interpolate(real, fake, alpha)?.detach();
    penalty_of(&input_grad(&mixed)?)
}

/// `alpha real + (1 - alpha) fake`, `alpha (b)` per image.
fn interpolate(real: &Tensor, fake: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    let b = real.dim(0)?;
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, real.rank() - 1));
    let alpha = alpha.reshape(shape)?;
    real.broadcast_mul(&alpha)? + fake.broadcast_mul(&(1.0 - &alpha)?)?
}

/// `mean_b (|grad_b|_2 - 1)^2`.
fn penalty_of(grad: &Tensor) -> Result<Tensor> {
    let norm = (grad.flatten_from(1)?.sqr()?.sum(1)? + 1e-12)?.sqrt()?; // (b)
    (norm - 1.0)?.sqr()?.mean_all()
}

/// The gradients of `out`, recorded as ops so that they can be differentiated again (the
/// gradient penalty's gradient with respect to the critic's weights).
///
/// Candle detaches every gradient it computes unless `CANDLE_GRAD_DO_NOT_DETACH` was set when a
/// thread made its first backward pass, and then keeps the whole graph of every later gradient
/// of that thread alive until its `GradStore` goes: for a WGAN-GP step, every intermediate
/// gradient of the outer backward pass too (5.2 GB for the progan workload against PyTorch's
/// 1.7). So only these gradients are taken on a thread of their own that keeps graphs, and
/// every other backward pass, the outer one included, frees its intermediate gradients as
/// Candle goes. Runs inside a [`differentiable_twice`] scope there, as the caller's pass does.
pub fn backward_keeping_graph(out: &Tensor) -> Result<GradStore> {
    second_order_pass(out, None)
}

/// [`backward_keeping_graph`] for the gradients of `vars` alone
/// ([`crate::backprop::backward_for`]).
pub fn backward_keeping_graph_for(out: &Tensor, vars: &[Var]) -> Result<GradStore> {
    second_order_pass(out, Some(vars.to_vec()))
}

/// Sends `out` (and the variables wanted, or all) to the second-order thread and waits.
fn second_order_pass(out: &Tensor, wanted: Option<Vec<Var>>) -> Result<GradStore> {
    let (reply, answer) = channel();
    let thread = second_order_thread()?;
    thread
        .lock()
        .map_err(|_| candle_core::Error::Msg("the second-order gradient thread failed".into()))?
        .send((out.clone(), wanted, reply))
        .map_err(|_| candle_core::Error::Msg("the second-order gradient thread is gone".into()))?;
    answer
        .recv()
        .map_err(|_| candle_core::Error::Msg("the second-order gradient thread is gone".into()))?
}

/// A tensor to take the gradients of, the variables wanted (all if none given), and where to
/// send them.
type SecondOrderJob = (Tensor, Option<Vec<Var>>, Sender<Result<GradStore>>);

/// The thread whose backward passes keep their graphs, started once.
fn second_order_thread() -> Result<&'static Mutex<Sender<SecondOrderJob>>> {
    static THREAD: OnceLock<std::result::Result<Mutex<Sender<SecondOrderJob>>, String>> =
        OnceLock::new();
    let started = THREAD.get_or_init(|| {
        let (jobs, inbox) = channel::<SecondOrderJob>();
        let (ready, started) = channel();
        std::thread::Builder::new()
            .name("second-order-gradients".into())
            .spawn(move || {
                let _ = ready.send(keep_gradient_graphs_in_this_thread());
                for (out, wanted, reply) in inbox {
                    let pass = || match &wanted {
                        Some(vars) => crate::backprop::backward_for(&out, vars),
                        None => out.backward(),
                    };
                    let _ = reply.send(differentiable_twice(pass));
                }
            })
            .map_err(|e| format!("cannot start the second-order gradient thread: {e}"))?;
        match started.recv() {
            Ok(Ok(())) => Ok(Mutex::new(jobs)),
            Ok(Err(e)) => Err(format!(
                "the second-order gradient thread failed to start: {e}"
            )),
            Err(_) => Err("the second-order gradient thread failed to start".to_string()),
        }
    });
    started
        .as_ref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// Makes Candle keep gradient graphs in the calling thread (which must not have made a
/// backward pass yet): `CANDLE_GRAD_DO_NOT_DETACH` set while its first backward pass reads it,
/// then restored, so that threads started later detach as usual.
fn keep_gradient_graphs_in_this_thread() -> Result<()> {
    const KEY: &str = "CANDLE_GRAD_DO_NOT_DETACH";
    let before = std::env::var_os(KEY);
    // SAFETY: done once, before any gradient penalty runs; Candle reads this variable once per
    // thread, at the thread's first backward pass, and genzoo reads it nowhere else.
    unsafe { std::env::set_var(KEY, "1") };
    let probe = Var::new(1f32, &candle_core::Device::Cpu)?;
    let first = (probe.as_tensor() * 2.0)?.backward();
    match before {
        // SAFETY: as above.
        Some(v) => unsafe { std::env::set_var(KEY, v) },
        None => unsafe { std::env::remove_var(KEY) },
    }
    first.map(|_| ())
}

/// Starts the thread that takes the gradient penalty's gradients, before a training run's
/// first step (a failure to start is reported here rather than at the first penalty).
pub fn enable_second_order_gradients() -> Result<()> {
    second_order_thread().map(|_| ())
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

/// A GAN of one generator and one discriminator, as [`AdversarialTraining`] trains it. Images
/// are in [-1, 1] on both sides (tanh outputs); sampling maps them to [0, 1]. The variables of
/// the two networks are named `generator.…` and `discriminator.…`, so each gets its own
/// optimiser.
pub trait Adversarial {
    /// The shape of one generated image.
    fn output_shape(&self) -> ImageShape;

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

    /// Continuous codes of an InfoGAN-style generator.
    fn continuous_codes(&self) -> usize {
        0
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

/// How a one-generator, one-discriminator GAN trains: the `[gan]` table of a run file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdversarialSettings {
    pub loss: GanLoss,
    /// Discriminator steps per generator step (each on the step's real batch).
    pub d_steps: usize,
    /// Weight of WGAN-GP's gradient penalty.
    pub gp_weight: f64,
}

impl Default for AdversarialSettings {
    fn default() -> Self {
        Self {
            loss: GanLoss::NonSaturating,
            d_steps: 1,
            gp_weight: 10.0,
        }
    }
}

/// A GAN of one generator and one discriminator ([`Adversarial`]) as the loop trains and
/// samples it: per step, `d_steps` discriminator steps on the real batch and detached
/// generated images (plus WGAN-GP's penalty), then one generator step; the generator's
/// weights averaged for sampling.
pub struct AdversarialTraining<M> {
    pub model: M,
    pub settings: AdversarialSettings,
    name: &'static str,
}

impl<M: Adversarial> AdversarialTraining<M> {
    pub fn new(model: M, settings: AdversarialSettings, name: &'static str) -> Self {
        Self {
            model,
            settings,
            name,
        }
    }

    fn conditional(&self) -> bool {
        self.model.classes().is_some()
    }

    /// `d_steps` discriminator steps; returns the last one's loss and mean real / fake logits.
    fn discriminator_steps(
        &self,
        ctx: &mut StepContext,
        real: &Tensor,
        labels: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let model = &self.model;
        let b = real.dim(0)?;
        let mut last = None;
        for _ in 0..self.settings.d_steps {
            let input = model.draw_input(b, &mut ctx.rng)?;
            let fake = model.generate(&input, true)?.detach();
            let real_verdict = model.discriminate(real, labels, true)?;
            let fake_verdict = model.discriminate(&fake, input.classes.as_ref(), true)?;
            let mut loss = discriminator_loss(
                self.settings.loss,
                &real_verdict.logits,
                &fake_verdict.logits,
            )?;
            if self.settings.loss == GanLoss::WganGp {
                let alpha = ctx.rng.uniform(b, real.device())?;
                let critic = |x: &Tensor| Ok(model.discriminate(x, labels, true)?.logits);
                let penalty = gradient_penalty(&critic, real, &fake, &alpha)?;
                loss = (loss + (penalty * self.settings.gp_weight)?)?;
            }
            // A head that learns the auxiliary loss with G leaves D's trunk out of it.
            if model.auxiliary_head().is_none() {
                if let Some(aux) = model.auxiliary_loss(&input, &fake_verdict)? {
                    loss = (loss + aux)?;
                }
            }
            ctx.minimize("discriminator", &loss)?;
            last = Some((
                loss,
                real_verdict.logits.mean_all()?,
                fake_verdict.logits.mean_all()?,
            ));
        }
        last.ok_or_else(|| candle_core::Error::Msg("gan.d_steps must be positive".into()))
    }
}

impl<M: Adversarial> Trainable for AdversarialTraining<M> {
    fn data_spec(&self) -> DataSpec {
        let mut spec = DataSpec::images(self.model.output_shape());
        if let Some(k) = self.model.classes() {
            spec.labels = LabelSpec::Classes(k);
        }
        spec
    }

    /// G (and a discriminator-side head that learns only the auxiliary loss, see
    /// [`Adversarial::auxiliary_head`]) with `gan.g_lr`; D with `train.lr`.
    fn optimizers(&self) -> Vec<OptimizerSpec> {
        let mut g = OptimizerSpec::new("generator", &["generator."], LrRole::Generator);
        let mut d = OptimizerSpec::new("discriminator", &["discriminator."], LrRole::Main);
        if let Some(head) = self.model.auxiliary_head() {
            g.prefixes.push(head.to_string());
            d.excluded.push(head.to_string());
        }
        vec![g, d]
    }

    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let batch = ctx.batch()?;
        let real = to_tanh_range(&batch.images)?;
        let labels = match self.conditional() {
            true => Some(batch.classes(self.name)?.clone()),
            false => None,
        };
        let (d_loss, d_real, d_fake) = self.discriminator_steps(ctx, &real, labels.as_ref())?;
        let model = &self.model;
        let input = model.draw_input(real.dim(0)?, &mut ctx.rng)?;
        let fake = model.generate(&input, true)?;
        let verdict = model.discriminate(&fake, input.classes.as_ref(), true)?;
        let mut g_loss = generator_loss(self.settings.loss, &verdict.logits)?;
        if let Some(aux) = model.auxiliary_loss(&input, &verdict)? {
            ctx.record("info_loss", &aux)?;
            g_loss = (g_loss + aux)?;
        }
        ctx.minimize("generator", &g_loss)?;
        ctx.record("d_loss", &d_loss)?;
        ctx.record("g_loss", &g_loss)?;
        ctx.record("d_real", &d_real)?;
        ctx.record("d_fake", &d_fake)
    }

    fn averaged(&self) -> Vec<String> {
        vec!["generator.".to_string()]
    }

    fn needs_second_order(&self) -> bool {
        self.settings.loss == GanLoss::WganGp
    }

    /// The bounded losses sit at zero when D wins outright; a WGAN critic's has no floor.
    fn collapse_term(&self) -> Option<&str> {
        (self.settings.loss != GanLoss::WganGp).then_some("d_loss")
    }

    fn headline_terms(&self) -> Vec<String> {
        vec!["d_loss".to_string(), "g_loss".to_string()]
    }

    /// The discriminator, unless the model has codes: then its trunk and Q head are what
    /// [`CodedModel::category_logits`] (`eval`'s code accuracy) reads.
    fn training_only(&self) -> Vec<String> {
        match self.model.categories() {
            None => vec!["discriminator".to_string()],
            Some(_) => Vec::new(),
        }
    }

    /// The model's grid input (classes or codes along the rows), from the generator in
    /// inference mode.
    fn grid(&self, count: usize, rng: &mut Rng, _held_out: Option<&Batch>) -> Result<Grid> {
        let input = self.model.grid_input(count, rng)?;
        Ok(Grid {
            images: to_unit_range(&self.model.generate(&input, false)?)?,
            columns: self.model.grid_columns(),
        })
    }
}

/// An implicit model of 8-bit intensities whose samples are the generator's images (inference
/// mode) mapped to [0, 1].
impl<M: Adversarial> GenerativeModel for AdversarialTraining<M> {
    fn image_shape(&self) -> ImageShape {
        self.model.output_shape()
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Implicit
    }

    fn values(&self) -> Values {
        Values::Intensities
    }

    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let input = self.model.draw_input(n, rng)?;
        to_unit_range(&self.model.generate(&input, false)?)
    }

    fn classes(&self) -> Option<usize> {
        self.model.classes()
    }

    fn sample_classes(&self, classes: &[u32], rng: &mut Rng) -> Result<Tensor> {
        let Some(k) = self.model.classes() else {
            candle_core::bail!("this model is not class-conditional");
        };
        if let Some(c) = classes.iter().find(|&&c| c as usize >= k) {
            candle_core::bail!("class {c} asked of a model of {k} classes");
        }
        let mut input = self.model.draw_input(classes.len(), rng)?;
        input.classes = Some(Tensor::new(classes, input.noise.device())?);
        to_unit_range(&self.model.generate(&input, false)?)
    }

    fn as_coded(&self) -> Option<&dyn CodedModel> {
        self.model.categories().map(|_| self as &dyn CodedModel)
    }
}

impl<M: Adversarial> CodedModel for AdversarialTraining<M> {
    fn categories(&self) -> usize {
        self.model.categories().unwrap_or(0)
    }

    fn continuous_codes(&self) -> usize {
        self.model.continuous_codes()
    }

    fn category_logits(&self, x: &Tensor) -> Result<Tensor> {
        let verdict = self.model.discriminate(&to_tanh_range(x)?, None, false)?;
        let Some(q) = verdict.q else {
            candle_core::bail!("{} has no head that predicts its codes", self.name);
        };
        q.narrow(1, 0, self.categories())
    }

    fn code_sweep(
        &self,
        rows: usize,
        columns: usize,
        code: usize,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let Some(input) = self.model.code_sweep(rows, columns, code, rng)? else {
            candle_core::bail!("{} has no latent codes to sweep", self.name);
        };
        to_unit_range(&self.model.generate(&input, false)?)
    }
}

/// `[-1, 1] -> [0, 1]`.
pub fn to_unit_range(x: &Tensor) -> Result<Tensor> {
    ((x + 1.0)? * 0.5)?.clamp(0f32, 1f32)
}

/// `[0, 1] -> [-1, 1]`, in `x`'s float type (f32 for images of bytes).
pub fn to_tanh_range(x: &Tensor) -> Result<Tensor> {
    let x = match x.dtype().is_float() {
        true => x.clone(),
        false => x.to_dtype(DType::F32)?,
    };
    (x * 2.0)? - 1.0
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
}
