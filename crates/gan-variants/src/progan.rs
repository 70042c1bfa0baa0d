//! Progressive GAN (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality,
//! Stability, and Variation"), with facebookresearch/pytorch_GAN_zoo's networks and names
//! (`models/networks/progressive_conv_net.py`, `GNet` and `DNet`).
//!
//! Training starts at 4 x 4 and doubles the resolution stage by stage. A new block fades in:
//! with `alpha` rising from 0 to 1 over the fade phase's images,
//!
//! - G: `x_r = alpha toRGB_r(block_r(up(h))) + (1 - alpha) up(toRGB_{r/2}(h))`;
//! - D: `h = alpha down(block_r(fromRGB_r(x))) + (1 - alpha) fromRGB_{r/2}(down(x))`;
//! - the real images alike (the official code's `process_reals`): at resolution `r`, the box
//!   downscaled digits blended with their own `down`-then-`up` copy by `1 - alpha`.
//!
//! `up` is nearest-neighbour, `down` a 2 x 2 average. Then a stable phase at the new resolution.
//! Adam's moments start afresh at every phase, as the official `reset_opt_for_new_lod` does (the
//! loop resets them whenever [`Trainable::stage`] changes). Phases are counted in images.
//!
//! - G: latent `z (b, latent_dim)` pixel-normalised, an equalized dense layer to `d_0 x 4 x 4`,
//!   a 3 x 3 convolution, then per resolution nearest x2 and two 3 x 3 convolutions; LeakyReLU
//!   0.2 and pixel normalisation after each; a 1 x 1 toRGB per resolution, no output activation.
//! - D mirrors it: fromRGB 1 x 1 per resolution, two 3 x 3 convolutions and a 2 x 2 average pool
//!   per resolution, the minibatch standard deviation (groups of 4), a 3 x 3 convolution, a
//!   dense layer from `d_0 x 4 x 4` to `d_0`, and the decision layer to one value.
//! - Loss: WGAN-GP, `L_D = E D(G(z)) - E D(x) + lambda (|grad D(x_hat)|_2 - 1)^2 + eps_drift
//!   E D(x)^2`, the drift term keeping the critic's values near zero; `L_G = -E D(G(z))`. One D
//!   step and one G step (on a fresh latent) per iteration; Adam 1e-3, betas (0, 0.99); G's
//!   weights averaged for sampling (the loop's weight average; `models/progan.toml` uses 0.99889,
//!   the official half-life of 10,000 images at its batch of 16).
//!
//! Every layer is equalized ([`layers::nn::progressive::Equalized`]): He's constant at run time,
//! sqrt(2) / sqrt(fan_in) as the zoo has it for every layer; `official_gains` takes the official
//! code's exceptions instead (the 4 x 4 dense layer sqrt(2) / 4, toRGB and D's decision 1).
//! Variables `generator.{formatLayer, groupScale0.0, scaleLayers.i.j, toRGBLayers.k}` and
//! `discriminator.{fromRGBLayers.k, scaleLayers.i.j, groupScaleZero.{0,1}, decisionLayer}`, the
//! keys of the zoo's `netG` / `netD` state dicts. The zoo's `alpha` is this file's `1 - alpha`.

use std::cell::Cell;
use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use layers::gan::{gradient_penalty_from, to_tanh_range, to_unit_range};
use layers::kernels::activation::Activation;
use layers::nn::progressive::{
    downscale2d, downscale2d_adjoint, minibatch_stddev, minibatch_stddev_input_grad, pixel_norm,
    upscale2d, Equalized, RELU_GAIN,
};
use layers::step::{Batch, DataSpec, Grid, LrRole, OptimizerSpec, StepContext, StepProgress};
use layers::{GenerativeModel, ImageShape, ModelKind, Rng, Trainable, Values};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The final side, `4 * 2^(depths.len() - 1)`: a power of two from 4.
    pub resolution: usize,
    pub channels: usize,
    pub latent_dim: usize,
    /// Feature maps at 4 x 4, 8 x 8, ... up to `resolution` (the zoo's `depthScale0` and the
    /// `depthOtherScales` it grows with).
    pub depths: Vec<usize>,
    /// The side training starts at (the official `lod_initial_resolution`; 4 in the paper).
    pub initial_resolution: usize,
    /// Images of each stable phase (the first resolution's included).
    pub stable_images: u64,
    /// Images over which each new resolution fades in.
    pub fade_images: u64,
    pub leaky_slope: f64,
    /// Group size of the minibatch standard deviation (0: no such feature).
    pub minibatch_group: usize,
    pub lambda_gp: f64,
    /// The penalty on every `gp_every`-th critic step only, weighted `gp_every x lambda_gp`
    /// (the lazy regularisation of Karras et al. 2020, "Analyzing and Improving the Image
    /// Quality of StyleGAN", there for R1 every 16 steps). 1: every step, as the paper. The
    /// penalty's second-order pass is about half a step's cost at batch 16.
    pub gp_every: u64,
    /// Weight of the drift term `E D(x)^2` (the paper's epsilon_drift).
    pub drift: f64,
    /// The official code's gains (dense layer at 4 x 4: sqrt(2) / 4; toRGB and the decision
    /// layer: 1) instead of the zoo's sqrt(2) everywhere; the zoo's checkpoints need `false`.
    pub official_gains: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            resolution: 32,
            channels: 1,
            latent_dim: 128,
            depths: vec![128, 128, 128, 64],
            initial_resolution: 4,
            stable_images: 40_000,
            fade_images: 40_000,
            leaky_slope: 0.2,
            minibatch_group: 4,
            lambda_gp: 10.0,
            gp_every: 1,
            drift: 0.001,
            official_gains: false,
        }
    }
}

/// Where training stands: the resolution level (0 for 4 x 4), the new block's weight, and the
/// phase's index (stable 4, fade 8, stable 8, ...), which the loop's optimiser resets follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    pub level: usize,
    pub alpha: f64,
    pub index: u64,
}

impl Phase {
    pub fn side(&self) -> usize {
        4 << self.level
    }
}

/// `log2(side / 4)` for a power of two from 4.
fn level_of(side: usize, what: &str) -> Result<usize> {
    if side < 4 || !side.is_power_of_two() {
        candle_core::bail!("Progressive GAN: {what} must be a power of two from 4, got {side}");
    }
    Ok(side.trailing_zeros() as usize - 2)
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let last = level_of(self.resolution, "resolution")?;
        let first = level_of(self.initial_resolution, "initial_resolution")?;
        if self.depths.len() != last + 1 {
            candle_core::bail!(
                "Progressive GAN: resolution {} has {} levels (4 x 4 to {0} x {0}), and depths has {} entries {:?}",
                self.resolution,
                last + 1,
                self.depths.len(),
                self.depths
            );
        }
        if first > last {
            candle_core::bail!(
                "Progressive GAN: initial_resolution {} is above resolution {}",
                self.initial_resolution,
                self.resolution
            );
        }
        if self.depths.contains(&0) || self.channels == 0 || self.latent_dim == 0 {
            candle_core::bail!("Progressive GAN: depths, channels and latent_dim must be positive");
        }
        if self.stable_images == 0 || (first < last && self.fade_images == 0) {
            candle_core::bail!(
                "Progressive GAN: phase lengths must be positive (stable_images {}, fade_images {})",
                self.stable_images,
                self.fade_images
            );
        }
        if !(0.0..1.0).contains(&self.leaky_slope) || self.lambda_gp < 0.0 || self.drift < 0.0 {
            candle_core::bail!(
                "Progressive GAN: leaky_slope must be in [0, 1), lambda_gp and drift at least 0"
            );
        }
        if self.gp_every == 0 {
            candle_core::bail!("Progressive GAN: gp_every must be at least 1 (1: every step)");
        }
        Ok(())
    }

    fn last_level(&self) -> usize {
        self.depths.len() - 1
    }

    fn first_level(&self) -> usize {
        self.initial_resolution.trailing_zeros() as usize - 2
    }

    /// The phase after `images` training images: a stable phase at the initial resolution,
    /// then a fade and a stable phase per further resolution; the last stable phase lasts to
    /// the end of the run.
    pub fn phase_at(&self, images: u64) -> Phase {
        let (first, last) = (self.first_level(), self.last_level());
        let stable = |level, index| Phase {
            level,
            alpha: 1.0,
            index,
        };
        if images < self.stable_images {
            return stable(first, 0);
        }
        let mut rest = images - self.stable_images;
        for level in first + 1..=last {
            let index = 2 * (level - first) as u64 - 1;
            if rest < self.fade_images {
                let alpha = rest as f64 / self.fade_images as f64;
                return Phase {
                    level,
                    alpha,
                    index,
                };
            }
            rest -= self.fade_images;
            if rest < self.stable_images || level == last {
                return stable(level, index + 1);
            }
            rest -= self.stable_images;
        }
        stable(last, 2 * (last - first) as u64)
    }

    /// Images until the final resolution is stable.
    pub fn images_to_final_stage(&self) -> u64 {
        let growths = (self.last_level() - self.first_level()) as u64;
        self.stable_images + growths * (self.fade_images + self.stable_images)
    }
}

struct Generator {
    format: Equalized,
    scale0: Equalized,
    /// Two convolutions per resolution above 4 x 4.
    scales: Vec<[Equalized; 2]>,
    to_rgb: Vec<Equalized>,
}

struct Discriminator {
    from_rgb: Vec<Equalized>,
    /// Two convolutions per resolution above 4 x 4, applied from the highest down.
    scales: Vec<[Equalized; 2]>,
    scale0_conv: Equalized,
    scale0_dense: Equalized,
    decision: Equalized,
}

pub struct ProGan {
    cfg: Config,
    g: Generator,
    d: Discriminator,
    /// The phase of the last training step (or of the checkpoint): what samples are drawn at.
    phase: Cell<Phase>,
}

impl ProGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (g_format_gain, rgb_gain, decision_gain) = match cfg.official_gains {
            true => (RELU_GAIN / 4.0, 1.0, 1.0),
            false => (RELU_GAIN, RELU_GAIN, RELU_GAIN),
        };
        let d0 = cfg.depths[0];
        let c = cfg.channels;
        let gv = vb.pp("generator");
        let conv3 = |vb: VarBuilder, io| Equalized::conv(vb, io, 3, 1, RELU_GAIN);
        let pairs = |vb: VarBuilder, io: &dyn Fn(usize) -> [(usize, usize); 2]| {
            (1..cfg.depths.len())
                .map(|level| {
                    let vb = vb.pp(level - 1);
                    let [a, b] = io(level);
                    Ok([conv3(vb.pp(0), a)?, conv3(vb.pp(1), b)?])
                })
                .collect::<Result<Vec<_>>>()
        };
        let depth = |level: usize| cfg.depths[level];
        let g = Generator {
            format: Equalized::linear(
                gv.pp("formatLayer"),
                (cfg.latent_dim, 16 * d0),
                g_format_gain,
            )?,
            scale0: conv3(gv.pp("groupScale0").pp(0), (d0, d0))?,
            scales: pairs(gv.pp("scaleLayers"), &|l| {
                [(depth(l - 1), depth(l)), (depth(l), depth(l))]
            })?,
            to_rgb: (0..cfg.depths.len())
                .map(|l| Equalized::conv(gv.pp("toRGBLayers").pp(l), (depth(l), c), 1, 0, rgb_gain))
                .collect::<Result<_>>()?,
        };
        let dv = vb.pp("discriminator");
        let stddev = usize::from(cfg.minibatch_group > 0);
        let d = Discriminator {
            from_rgb: (0..cfg.depths.len())
                .map(|l| {
                    Equalized::conv(dv.pp("fromRGBLayers").pp(l), (c, depth(l)), 1, 0, RELU_GAIN)
                })
                .collect::<Result<_>>()?,
            scales: pairs(dv.pp("scaleLayers"), &|l| {
                [(depth(l), depth(l)), (depth(l), depth(l - 1))]
            })?,
            scale0_conv: conv3(dv.pp("groupScaleZero").pp(0), (d0 + stddev, d0))?,
            scale0_dense: Equalized::linear(
                dv.pp("groupScaleZero").pp(1),
                (16 * d0, d0),
                RELU_GAIN,
            )?,
            decision: Equalized::linear(dv.pp("decisionLayer"), (d0, 1), decision_gain)?,
        };
        let last = cfg.last_level();
        Ok(Self {
            cfg: cfg.clone(),
            g,
            d,
            phase: Cell::new(Phase {
                level: last,
                alpha: 1.0,
                index: 2 * (last - cfg.first_level()) as u64,
            }),
        })
    }

    /// The phase samples are drawn at (the last trained, the checkpoint's, or the final one).
    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    fn leaky(&self) -> Activation {
        Activation::LeakyRelu(self.cfg.leaky_slope)
    }

    fn check_phase(&self, phase: Phase) -> Result<()> {
        if phase.level > self.cfg.last_level() || !(0.0..=1.0).contains(&phase.alpha) {
            candle_core::bail!(
                "Progressive GAN: phase at level {} (alpha {}) for a model of {} levels",
                phase.level,
                phase.alpha,
                self.cfg.depths.len()
            );
        }
        Ok(())
    }

    /// `G(z)` at `phase`: `z (b, latent_dim)` -> `(b, channels, side, side)`, values around
    /// [-1, 1] (no output activation).
    pub fn generate(&self, z: &Tensor, phase: Phase) -> Result<Tensor> {
        self.check_phase(phase)?;
        let (b, d0) = (z.dim(0)?, self.cfg.depths[0]);
        let leaky = self.leaky();
        let x = self.g.format.forward(&pixel_norm(z)?, leaky)?;
        let x = pixel_norm(&x.reshape((b, d0, 4, 4))?)?;
        let mut x = pixel_norm(&self.g.scale0.forward(&x, leaky)?)?;
        let fading = phase.alpha < 1.0 && phase.level > 0;
        let mut previous = None;
        for (i, convs) in self.g.scales.iter().take(phase.level).enumerate() {
            if fading && i + 1 == phase.level {
                let rgb = self.g.to_rgb[i].forward(&x, Activation::Identity)?;
                previous = Some(upscale2d(&rgb)?);
            }
            x = upscale2d(&x)?;
            for conv in convs {
                x = pixel_norm(&conv.forward(&x, leaky)?)?;
            }
        }
        let out = self.g.to_rgb[phase.level].forward(&x, Activation::Identity)?;
        match previous {
            Some(y) => (out * phase.alpha)? + (y * (1.0 - phase.alpha))?,
            None => Ok(out),
        }
    }

    /// `D(x)` at `phase`: `(b, channels, side, side)` -> `(b, 1)`.
    pub fn critique(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        self.check_phase(phase)?;
        let leaky = self.leaky();
        let fading = phase.alpha < 1.0 && phase.level > 0;
        let mut previous = match fading {
            true => Some(self.d.from_rgb[phase.level - 1].forward(&downscale2d(x)?, leaky)?),
            false => None,
        };
        let mut h = self.d.from_rgb[phase.level].forward(x, leaky)?;
        for convs in self.d.scales.iter().take(phase.level).rev() {
            for conv in convs {
                h = conv.forward(&h, leaky)?;
            }
            h = downscale2d(&h)?;
            if let Some(y) = previous.take() {
                h = ((h * phase.alpha)? + (y * (1.0 - phase.alpha))?)?;
            }
        }
        if self.cfg.minibatch_group > 0 {
            h = minibatch_stddev(&h, self.cfg.minibatch_group)?;
        }
        let h = self.d.scale0_conv.forward(&h, leaky)?;
        let h = self.d.scale0_dense.forward(&h.flatten_from(1)?, leaky)?;
        self.d.decision.forward(&h, Activation::Identity)
    }

    /// `d sum_b D(x_b) / dx` at `phase`, written out layer by layer in ops that can be
    /// differentiated again: WGAN-GP's penalty without Candle's second-order graph (see
    /// [`gradient_penalty_from`]). The forward pass mirrors [`Self::critique`] and keeps each
    /// layer's output; the test `the_critic_input_gradient_is_autograd_s` holds the two together.
    pub fn critic_input_grad(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        self.check_phase(phase)?;
        let leaky = self.leaky();
        let fading = phase.alpha < 1.0 && phase.level > 0;
        // Forward, keeping what the backward pass reads.
        let coarse = match fading {
            true => Some(self.d.from_rgb[phase.level - 1].forward(&downscale2d(x)?, leaky)?),
            false => None,
        };
        let rgb = self.d.from_rgb[phase.level].forward(x, leaky)?;
        let mut h = rgb.clone();
        let mut block_outputs = Vec::with_capacity(phase.level); // from the finest block down
        for (i, convs) in self.d.scales.iter().take(phase.level).rev().enumerate() {
            let mut outputs = Vec::with_capacity(convs.len());
            for conv in convs {
                h = conv.forward(&h, leaky)?;
                outputs.push(h.clone());
            }
            h = downscale2d(&h)?;
            if let (0, Some(y)) = (i, &coarse) {
                h = ((h * phase.alpha)? + (y * (1.0 - phase.alpha))?)?;
            }
            block_outputs.push(outputs);
        }
        let before_stddev = h.clone();
        if self.cfg.minibatch_group > 0 {
            h = minibatch_stddev(&h, self.cfg.minibatch_group)?;
        }
        let conv0 = self.d.scale0_conv.forward(&h, leaky)?;
        let dense = self
            .d
            .scale0_dense
            .forward(&conv0.flatten_from(1)?, leaky)?;
        let out = self.d.decision.forward(&dense, Activation::Identity)?; // (b, 1)
                                                                          // Backward from d sum(out) / d out = 1.
        let g = self
            .d
            .decision
            .input_grad(&out, &out.ones_like()?, Activation::Identity)?;
        let g = self.d.scale0_dense.input_grad(&dense, &g, leaky)?;
        let g = g.reshape(conv0.dims())?;
        let mut g = self.d.scale0_conv.input_grad(&conv0, &g, leaky)?;
        if self.cfg.minibatch_group > 0 {
            g = minibatch_stddev_input_grad(&before_stddev, &g, self.cfg.minibatch_group)?;
        }
        let mut g_coarse = None;
        let blocks = self
            .d
            .scales
            .iter()
            .take(phase.level)
            .rev()
            .zip(&block_outputs);
        for (i, (convs, outputs)) in blocks.enumerate().rev() {
            if let (0, true) = (i, fading) {
                g_coarse = Some((&g * (1.0 - phase.alpha))?);
                g = (g * phase.alpha)?;
            }
            g = downscale2d_adjoint(&g)?;
            for (conv, y) in convs.iter().zip(outputs).rev() {
                g = conv.input_grad(y, &g, leaky)?;
            }
        }
        let g = self.d.from_rgb[phase.level].input_grad(&rgb, &g, leaky)?;
        match (g_coarse, coarse) {
            (Some(gc), Some(y)) => {
                let gc = self.d.from_rgb[phase.level - 1].input_grad(&y, &gc, leaky)?;
                g + downscale2d_adjoint(&gc)?
            }
            _ => Ok(g),
        }
    }

    /// Real images (in [-1, 1], at the final resolution) as D sees them at `phase`: box
    /// downscaled to its side, and while a resolution fades in, blended with their own
    /// half-resolution copy by `1 - alpha` (the official `process_reals`).
    pub fn reals_at(&self, x: &Tensor, phase: Phase) -> Result<Tensor> {
        let mut x = x.clone();
        while x.dim(2)? > phase.side() {
            x = downscale2d(&x)?;
        }
        if phase.alpha < 1.0 && phase.level > 0 {
            let coarse = upscale2d(&downscale2d(&x)?)?;
            x = ((x * phase.alpha)? + (coarse * (1.0 - phase.alpha))?)?;
        }
        Ok(x)
    }

    /// `(b, c, side, side)` -> the final resolution, each pixel repeated.
    fn to_full_side(&self, mut x: Tensor) -> Result<Tensor> {
        while x.dim(2)? < self.cfg.resolution {
            x = upscale2d(&x)?;
        }
        Ok(x)
    }

    /// The critic's and the generator's losses and the terms they log.
    pub fn critic_terms(
        &self,
        real: &Tensor,
        z: &Tensor,
        mix: &Tensor,
        phase: Phase,
    ) -> Result<CriticTerms> {
        let fake = self.generate(z, phase)?.detach();
        let (wasserstein, drift) = self.plain_critic_terms(real, &fake, phase)?;
        let gp = self.penalty(real, &fake, mix, phase)?;
        let total = (self.plain_critic_loss(&wasserstein, &drift)? + (&gp * self.cfg.lambda_gp)?)?;
        Ok(CriticTerms {
            wasserstein,
            gp,
            drift,
            total,
        })
    }

    /// The critic's passes on real and generated images: the Wasserstein estimate
    /// `mean D(real) - mean D(fake)` and the drift `mean D(real)^2`.
    fn plain_critic_terms(
        &self,
        real: &Tensor,
        fake: &Tensor,
        phase: Phase,
    ) -> Result<(Tensor, Tensor)> {
        let d_real = self.critique(real, phase)?;
        let d_fake = self.critique(fake, phase)?;
        let drift = d_real.sqr()?.mean_all()?;
        let wasserstein = (d_real.mean_all()? - d_fake.mean_all()?)?;
        Ok((wasserstein, drift))
    }

    /// The critic's loss without its penalty: `-wasserstein + drift weight x drift`.
    fn plain_critic_loss(&self, wasserstein: &Tensor, drift: &Tensor) -> Result<Tensor> {
        wasserstein.neg()? + (drift * self.cfg.drift)?
    }

    /// WGAN-GP's penalty at the interpolates `mix` of the way from fake to real.
    fn penalty(&self, real: &Tensor, fake: &Tensor, mix: &Tensor, phase: Phase) -> Result<Tensor> {
        let input_grad = |x: &Tensor| self.critic_input_grad(x, phase);
        gradient_penalty_from(&input_grad, real, fake, mix)
    }

    /// The penalty through Candle's second-order graph (what the hand-written gradient is
    /// tested against).
    #[cfg(test)]
    fn penalty_by_autograd(
        &self,
        real: &Tensor,
        fake: &Tensor,
        mix: &Tensor,
        phase: Phase,
    ) -> Result<Tensor> {
        let critic = |x: &Tensor| self.critique(x, phase);
        layers::gan::gradient_penalty(&critic, real, fake, mix)
    }

    pub fn generator_loss(&self, z: &Tensor, phase: Phase) -> Result<Tensor> {
        self.critique(&self.generate(z, phase)?, phase)?
            .mean_all()?
            .neg()
    }

    /// One row of `n` images per resolution up to the current one, each from the same
    /// latents, at full size: what each stage's toRGB makes of them (alpha 1).
    pub fn stage_rows(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let z = rng.normal((n, self.cfg.latent_dim), &self.device())?;
        let current = self.phase().level;
        let rows = (0..=current)
            .map(|level| {
                let phase = Phase {
                    level,
                    alpha: 1.0,
                    index: 0,
                };
                self.to_full_side(to_unit_range(&self.generate(&z, phase)?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    }

    fn device(&self) -> Device {
        self.g.format.device().clone()
    }
}

/// The critic's terms: `E D(x) - E D(G(z))`, the penalty, the drift, and `L_D`.
pub struct CriticTerms {
    pub wasserstein: Tensor,
    pub gp: Tensor,
    pub drift: Tensor,
    pub total: Tensor,
}

impl Trainable for ProGan {
    fn data_spec(&self) -> DataSpec {
        let s = self.cfg.resolution;
        DataSpec::images([self.cfg.channels, s, s])
    }

    fn optimizers(&self) -> Vec<OptimizerSpec> {
        vec![
            OptimizerSpec::new("generator", &["generator."], LrRole::Generator),
            OptimizerSpec::new("discriminator", &["discriminator."], LrRole::Main),
        ]
    }

    /// One critic step on the batch, then one generator step on fresh latents, at the phase
    /// the images shown so far reach.
    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let phase = self.cfg.phase_at(ctx.progress.images());
        self.phase.set(phase);
        let batch = ctx.batch()?;
        let real = self.reals_at(&to_tanh_range(&batch.images)?, phase)?;
        let (b, dev) = (real.dim(0)?, real.device().clone());
        let z = ctx.rng.normal((b, self.cfg.latent_dim), &dev)?;
        let mix = ctx.rng.uniform(b, &dev)?;
        // The critic's loss in two parts, the plain passes and the penalty, each differentiated
        // and dropped before the next is built: the step holds one of their graphs at a time
        // (critic_terms, the same loss in one part, is what the parity test checks).
        let fake = self.generate(&z, phase)?.detach();
        let (mut plain, mut gp) = (None, None);
        let mut plain_part = || {
            let (wasserstein, drift) = self.plain_critic_terms(&real, &fake, phase)?;
            let loss = self.plain_critic_loss(&wasserstein, &drift)?;
            plain = Some((wasserstein.detach(), drift.detach()));
            Ok(loss)
        };
        let mut penalty_part = || {
            let penalty = self.penalty(&real, &fake, &mix, phase)?;
            gp = Some(penalty.detach());
            penalty * (self.cfg.lambda_gp * self.cfg.gp_every as f64)
        };
        let d_parts = match ctx.progress.step.is_multiple_of(self.cfg.gp_every) {
            true => {
                ctx.minimize_in_parts("discriminator", &mut [&mut plain_part, &mut penalty_part])?
            }
            false => ctx.minimize_in_parts("discriminator", &mut [&mut plain_part])?,
        };
        let d_loss = d_parts
            .iter()
            .try_fold(d_parts[0].zeros_like()?, |sum, part| sum + part)?;
        let z = ctx.rng.normal((b, self.cfg.latent_dim), &dev)?;
        let g_loss = self.generator_loss(&z, phase)?;
        ctx.minimize("generator", &g_loss)?;
        let Some((wasserstein, drift)) = plain else {
            candle_core::bail!("the critic's terms were not computed");
        };
        ctx.record("d_loss", &d_loss)?;
        ctx.record("g_loss", &g_loss)?;
        ctx.record("wasserstein", &wasserstein)?;
        if let Some(gp) = gp {
            // Only on the steps that take it: the epoch's mean is over those.
            ctx.record("gp", &gp)?;
        }
        ctx.record("drift", &drift)?;
        ctx.record_value("resolution", phase.side() as f64);
        ctx.record_value("alpha", phase.alpha);
        Ok(())
    }

    fn averaged(&self) -> Vec<String> {
        vec!["generator.".into()]
    }

    /// The critic: sampling (per stage too) runs the generator, and `as_generated` only
    /// resizes real images.
    fn training_only(&self) -> Vec<String> {
        vec!["discriminator".to_string()]
    }

    fn headline_terms(&self) -> Vec<String> {
        ["wasserstein", "resolution", "alpha"]
            .map(String::from)
            .to_vec()
    }

    fn grid(&self, count: usize, rng: &mut Rng, _held_out: Option<&Batch>) -> Result<Grid> {
        Ok(Grid {
            images: self.sample(count, rng)?,
            columns: 8,
        })
    }

    /// The phase reached, so a checkpoint samples (and is evaluated) at its own resolution.
    fn training_state(&self) -> Result<HashMap<String, Tensor>> {
        let p = self.phase();
        let values = [p.level as f32, p.alpha as f32, p.index as f32];
        let t = Tensor::new(&values, &Device::Cpu)?;
        Ok(HashMap::from([("phase".to_string(), t)]))
    }

    fn restore_training_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let Some(t) = state.get("phase") else {
            return Ok(()); // plain weights: the final resolution
        };
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let [level, alpha, index] = v[..] else {
            candle_core::bail!(
                "Progressive GAN: state.phase holds {} values, expected 3",
                v.len()
            );
        };
        let phase = Phase {
            level: level as usize,
            alpha: alpha as f64,
            index: index as u64,
        };
        self.check_phase(phase)?;
        self.phase.set(phase);
        Ok(())
    }

    fn stage(&self, progress: &StepProgress) -> u64 {
        self.cfg.phase_at(progress.images()).index
    }
}

impl GenerativeModel for ProGan {
    fn image_shape(&self) -> ImageShape {
        let s = self.cfg.resolution;
        [self.cfg.channels, s, s]
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Implicit
    }

    fn values(&self) -> Values {
        Values::Intensities
    }

    /// `n` images at the current phase, brought to the final side by repeating pixels.
    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let z = rng.normal((n, self.cfg.latent_dim), &self.device())?;
        let x = self.generate(&z, self.phase())?;
        self.to_full_side(to_unit_range(&x)?)
    }

    fn sample_stages(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.stage_rows(n, rng)
    }

    /// Real images as the current phase generates them: at its side (and fading), then
    /// brought to the final side as samples are.
    fn as_generated(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.reals_at(&to_tanh_range(x)?, self.phase())?;
        self.to_full_side(to_unit_range(&x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(cfg: Config) -> Result<(ProGan, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        Ok((ProGan::new(&cfg, vb)?, varmap))
    }

    fn small() -> Config {
        Config {
            resolution: 16,
            latent_dim: 8,
            depths: vec![8, 8, 4],
            stable_images: 100,
            fade_images: 50,
            ..Config::default()
        }
    }

    #[test]
    fn phases_follow_the_images_shown() {
        let cfg = small();
        let at = |images| {
            let p = cfg.phase_at(images);
            (p.side(), p.alpha, p.index)
        };
        assert_eq!(at(0), (4, 1.0, 0));
        assert_eq!(at(99), (4, 1.0, 0));
        assert_eq!(at(100), (8, 0.0, 1));
        assert_eq!(at(125), (8, 0.5, 1));
        assert_eq!(at(150), (8, 1.0, 2));
        assert_eq!(at(250), (16, 0.0, 3));
        assert_eq!(at(299), (16, 49.0 / 50.0, 3));
        assert_eq!(at(300), (16, 1.0, 4));
        assert_eq!(at(10_000_000), (16, 1.0, 4));
        assert_eq!(cfg.images_to_final_stage(), 400);
        let late = Config {
            initial_resolution: 8,
            ..small()
        };
        assert_eq!(late.phase_at(0).side(), 8);
        assert_eq!(late.phase_at(100).index, 1);
        assert_eq!(late.phase_at(150).index, 2);
    }

    /// With alpha = 0 the faded-in block contributes nothing: G's output is exactly the
    /// previous stage's output, upsampled; D's value is the previous stage's on the downscaled
    /// image; and the reals are the previous stage's reals, upsampled.
    #[test]
    fn alpha_zero_is_the_previous_stage() -> Result<()> {
        let (m, _) = tiny(small())?;
        let z = Rng::new(1).normal((4, 8), &Device::Cpu)?;
        for level in 1..=2 {
            let fading = Phase {
                level,
                alpha: 0.0,
                index: 0,
            };
            let before = Phase {
                level: level - 1,
                alpha: 1.0,
                index: 0,
            };
            let grown = m.generate(&z, fading)?;
            let previous = upscale2d(&m.generate(&z, before)?)?;
            assert_eq!(grown.dims(), previous.dims());
            let diff = (&grown - &previous)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "G at level {level}");
            let x = Rng::new(2).normal(grown.dims(), &Device::Cpu)?;
            let d_grown = m.critique(&x, fading)?;
            let d_before = m.critique(&downscale2d(&x)?, before)?;
            let diff = (d_grown - d_before)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "D at level {level}: {diff}");
            let full = Rng::new(3).uniform((4, 1, 16, 16), &Device::Cpu)?;
            let reals = m.reals_at(&full, fading)?;
            let coarse = upscale2d(&m.reals_at(&full, before)?)?;
            let diff = (reals - coarse)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-6, "reals at level {level}: {diff}");
        }
        // At alpha 1 the new block is all there is: the previous stage's output differs.
        let grown = m.generate(
            &z,
            Phase {
                level: 1,
                alpha: 1.0,
                index: 0,
            },
        )?;
        let previous = upscale2d(&m.generate(
            &z,
            Phase {
                level: 0,
                alpha: 1.0,
                index: 0,
            },
        )?)?;
        let diff = (grown - previous)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff > 1e-3, "{diff}");
        Ok(())
    }

    #[test]
    fn bad_configs_are_refused_with_what_was_found() {
        let e = |cfg: Config| tiny(cfg).err().expect("an error").to_string();
        let msg = e(Config {
            resolution: 24,
            ..small()
        });
        assert!(msg.contains("power of two") && msg.contains("24"), "{msg}");
        let msg = e(Config {
            depths: vec![8, 8],
            ..small()
        });
        assert!(msg.contains("depths has 2 entries"), "{msg}");
        let msg = e(Config {
            stable_images: 0,
            ..small()
        });
        assert!(msg.contains("phase lengths must be positive"), "{msg}");
        let msg = e(Config {
            fade_images: 0,
            ..small()
        });
        assert!(msg.contains("fade_images 0"), "{msg}");
        let msg = e(Config {
            initial_resolution: 32,
            ..small()
        });
        assert!(msg.contains("above resolution"), "{msg}");
    }

    #[test]
    fn the_phase_round_trips_through_the_training_state() -> Result<()> {
        let (mut m, _) = tiny(small())?;
        assert_eq!(m.phase().side(), 16);
        let mid = small().phase_at(125);
        m.phase.set(mid);
        let state = m.training_state()?;
        let (mut other, _) = tiny(small())?;
        other.restore_training_state(&state)?;
        assert_eq!(other.phase(), mid);
        let x = other.sample(3, &mut Rng::new(0))?;
        assert_eq!(x.dims(), &[3, 1, 16, 16]);
        let bad = HashMap::from([(
            "phase".to_string(),
            Tensor::new(&[5f32, 1.0, 8.0], &Device::Cpu)?,
        )]);
        let msg = m.restore_training_state(&bad).unwrap_err().to_string();
        assert!(msg.contains("level 5") && msg.contains("3 levels"), "{msg}");
        Ok(())
    }

    /// One training step at `step`: its terms and the critic's weights after it.
    fn step_once(cfg: Config, step: u64) -> anyhow::Result<(HashMap<String, f64>, Vec<f32>)> {
        use layers::step::Optimizers;
        use layers::train::checkpoint::vars_with_prefix;
        use layers::{Adam, AdamConfig};
        let (mut m, varmap) = tiny(cfg)?;
        let all = vars_with_prefix(&varmap, "");
        let groups = m
            .optimizers()
            .iter()
            .map(|spec| {
                let vars = all.iter().filter(|(n, _)| spec.owns(n)).cloned().collect();
                Ok((
                    spec.name.clone(),
                    Adam::from_named_vars(vars, AdamConfig::default())?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let mut optimizers = Optimizers { groups };
        let images = Rng::new(5).uniform((4, 1, 16, 16), &Device::Cpu)?;
        let batch = Batch::images(images);
        let mut take = |_: u64| Ok(batch.clone());
        let progress = StepProgress {
            step,
            total_steps: step + 1,
            steps_per_epoch: step + 1,
            images_per_step: 4,
        };
        let mut ctx = StepContext::new(progress, Rng::new(7), &mut take, 1, &mut optimizers);
        m.train_step(&mut ctx)?;
        let terms = ctx.into_terms().into_iter().collect();
        let critic = vars_with_prefix(&varmap, "discriminator.")
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all()?.to_vec1::<f32>())
            .collect::<Result<Vec<_>>>()?
            .concat();
        Ok((terms, critic))
    }

    /// The lazy penalty: on its steps it weighs `gp_every` times as much (the critic moves as
    /// it does with `lambda_gp` that many times larger), and the other steps leave it out.
    #[test]
    fn a_lazy_penalty_is_taken_every_nth_step_at_n_times_the_weight() -> anyhow::Result<()> {
        let lazy = Config {
            gp_every: 3,
            ..small()
        };
        let heavy = Config {
            lambda_gp: 30.0,
            ..small()
        };
        let (terms, critic) = step_once(lazy.clone(), 6)?;
        let (heavy_terms, heavy_critic) = step_once(heavy, 6)?;
        assert_eq!(terms["gp"], heavy_terms["gp"]);
        let plain = -terms["wasserstein"] + 0.001 * terms["drift"];
        let weighted = (terms["d_loss"] - plain) / terms["gp"];
        assert!((weighted - 30.0).abs() < 1e-3, "penalty weighed {weighted}");
        assert_eq!(critic, heavy_critic);
        let (every, every_critic) = step_once(small(), 6)?;
        assert_ne!(critic, every_critic, "the weight moves the critic");
        assert!(every.contains_key("gp"));
        for step in [4, 7] {
            let (terms, _) = step_once(lazy.clone(), step)?;
            assert!(!terms.contains_key("gp"), "step {step}: {terms:?}");
            let plain = -terms["wasserstein"] + 0.001 * terms["drift"];
            assert!(
                (terms["d_loss"] - plain).abs() < 1e-6,
                "step {step}: {terms:?}"
            );
        }
        let msg = tiny(Config {
            gp_every: 0,
            ..small()
        })
        .err()
        .expect("an error")
        .to_string();
        assert!(msg.contains("gp_every"), "{msg}");
        Ok(())
    }

    /// The hand-written input gradient against Candle's autograd, and the penalty built on it
    /// against the penalty through Candle's second-order graph: equal values, and equal
    /// gradients for every critic weight, at a stable stage, in a fade, and at 4 x 4. In f64
    /// (Candle's ops: the mathematics, to 1e-9) and in f32 (the fused kernels; rounding).
    #[test]
    fn the_critic_input_gradient_is_autograd_s() -> Result<()> {
        for (dtype, tolerance) in [(DType::F64, 1e-9), (DType::F32, 1e-4)] {
            input_gradient_and_penalty_match(dtype, tolerance)?;
        }
        Ok(())
    }

    fn input_gradient_and_penalty_match(dtype: DType, tolerance: f64) -> Result<()> {
        let cfg = Config {
            minibatch_group: 2,
            ..small()
        };
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, dtype, &Device::Cpu);
        let m = ProGan::new(&cfg, vb)?;
        let critic_vars = layers::train::checkpoint::vars_with_prefix(&varmap, "discriminator.");
        let largest = |t: &Tensor| -> Result<f64> {
            t.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()
        };
        let phases = [(2, 1.0), (1, 0.3), (2, 0.6), (0, 1.0)];
        for (k, (level, alpha)) in phases.into_iter().enumerate() {
            let phase = Phase {
                level,
                alpha,
                index: 0,
            };
            let side = phase.side();
            let mut rng = Rng::new(10 + k as u64);
            let mut draw = || {
                rng.normal((6, 1, side, side), &Device::Cpu)?
                    .to_dtype(dtype)
            };
            let (x, fake) = (draw()?, draw()?);
            let mix = Rng::new(20 + k as u64)
                .uniform(6, &Device::Cpu)?
                .to_dtype(dtype)?;
            let input = candle_core::Var::from_tensor(&x)?;
            let by_autograd = m
                .critique(input.as_tensor(), phase)?
                .sum_all()?
                .backward()?;
            let want = by_autograd.get(input.as_tensor()).expect("a gradient");
            let got = m.critic_input_grad(&x, phase)?;
            let diff = largest(&(&got - want)?)?;
            let scale = largest(want)?;
            assert!(
                diff <= tolerance * scale,
                "{dtype:?} {phase:?}: {diff} of {scale}"
            );

            let ours = m.penalty(&x, &fake, &mix, phase)?;
            let theirs = m.penalty_by_autograd(&x, &fake, &mix, phase)?;
            let diff = largest(&(&ours - &theirs)?)?;
            let scale = largest(&theirs)?;
            assert!(
                diff <= tolerance * scale,
                "{dtype:?} {phase:?}: penalty {diff} of {scale}"
            );
            let (ours, theirs) = (ours.backward()?, theirs.backward()?);
            let mut pairs = Vec::new();
            for (name, var) in &critic_vars {
                match (ours.get(var.as_tensor()), theirs.get(var.as_tensor())) {
                    (Some(o), Some(t)) => pairs.push((name, o.clone(), t.clone())),
                    (None, None) => {}
                    (o, _) => panic!("{name}: a gradient in one only (ours: {})", o.is_some()),
                }
            }
            assert!(
                pairs.len() >= 4,
                "{phase:?}: {} weights compared",
                pairs.len()
            );
            // Against the largest gradient of all: a bias reached only through the minibatch
            // deviation has a small gradient made of cancelling terms.
            let mut scale = 0f64;
            for (_, _, t) in &pairs {
                scale = scale.max(largest(t)?);
            }
            for (name, o, t) in &pairs {
                let diff = largest(&(o - t)?)?;
                assert!(
                    diff <= tolerance * scale,
                    "{dtype:?} {phase:?} {name}: {diff} of {scale}"
                );
            }
        }
        Ok(())
    }
}
