//! StarGAN (Choi et al. 2018, "StarGAN: Unified Generative Adversarial Networks for
//! Multi-Domain Image-to-Image Translation") as yunjey/stargan trains it (`model.py`,
//! `solver.py`): one generator translates an image `x` to any target domain `c` (attribute
//! vectors, the domain tiled over the image and concatenated to it), one critic both judges
//! realism `D_src` and classifies domains `D_cls`.
//!
//! - critic (every iteration): `L_D = -D_src(x) + D_src(G(x, c)) + lambda_cls L_cls(D_cls(x), c')
//!   + lambda_gp (|grad D_src(x_hat)|_2 - 1)^2`, the WGAN-GP penalty at random interpolates
//!   `x_hat` of real and translated images, `c'` the images' own domains;
//! - generator (every `n_critic`-th iteration): `L_G = -D_src(G(x, c)) + lambda_cls
//!   L_cls(D_cls(G(x, c)), c) + lambda_rec |x - G(G(x, c), c')|_1`;
//! - optionally (`adversarial = "lsgan"`, not in yunjey's StarGAN): CycleGAN's least-squares
//!   realism terms, `(D_src(x) - 1)^2 + D_src(G(x, c))^2` for the critic and `(D_src(G(x, c)) -
//!   1)^2` for the generator (means over the patches), the penalty only with `lambda_gp > 0`;
//! - optionally (`lambda_id > 0`, not in yunjey's StarGAN): `+ lambda_id |x - G(x, c')|_1`,
//!   CycleGAN's identity term: the translation into the image's own domain is the image. Without
//!   it nothing asks a translation to leave alone what its target does not change, only that the
//!   input can be recovered from it;
//! - optionally (`negation`, not in yunjey's StarGAN): the generator is given `x` or `-x`, while
//!   training as the critic says (of the two, the one `D_cls` reads as the target on the
//!   attributes the choice serves), and a head learns that choice, `+ L_logistic(head(x, c),
//!   N(x, c))`; translating asks the head;
//! - `L_cls`: binary cross-entropy summed over the attributes and averaged over the batch
//!   (multi-label, CelebA), or cross-entropy over domains (single-label, RaFD); targets `c` are
//!   the batch's own labels in a random order.
//!
//! Variables `generator.main.N` and `discriminator.{main.N, conv1, conv2}`: the keys of
//! yunjey's `200000-G.ckpt` / `-D.ckpt` under the solver's attribute names. The generator's
//! instance norms keep running statistics as yunjey's do, but translate with each image's own
//! statistics, as his `test()` does (the model is never switched to evaluation mode).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;
use layers::gan::{
    gradient_penalty, gradient_penalty_from, target_loss, to_tanh_range, to_unit_range, GanLoss,
};
use layers::loss::bce_with_logits_per_image;
use layers::nn::negation::{negate_where, ConditionedNegation};
use layers::nn::sequential::Stack;
use layers::nn::symmetry::ConditionedSymmetryChoice;
use layers::nn::translation::{
    stargan_discriminator, stargan_generator, with_coordinates, StarGanCritic,
};
use layers::step::{
    Batch, DataSpec, Grid, LabelSpec, Labels, LrRole, OptimizerSpec, StepContext, Trainable,
};
use layers::{Domains, Rng, Target, Translator};
use serde::{Deserialize, Serialize};

/// `a x + t (1 - |a|)` for `maps = [a, t]` along the channels (`pixel_affine`): in [-1, 1]
/// when `x`, `a` and `t` are.
fn apply_pixel_affine(maps: &Tensor, x: &Tensor) -> Result<Tensor> {
    let channels = x.dim(1)?;
    let a = maps.narrow(1, 0, channels)?;
    let t = maps.narrow(1, channels, channels)?;
    a.mul(x)? + t.mul(&(1.0 - a.abs()?)?)?
}

/// How domains are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelMode {
    /// Independent binary attributes (CelebA): every combination is a domain.
    MultiLabel,
    /// One domain per image (RaFD's expressions): integer classes.
    SingleLabel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Image side (128 for CelebA), a multiple of `2^d_repeat_num`.
    pub image_size: usize,
    pub channels: usize,
    /// Attributes (multi-label) or domains (single-label).
    pub c_dim: usize,
    /// Their names, for grids and reports (set from the data).
    pub attributes: Vec<String>,
    pub mode: LabelMode,
    pub g_conv_dim: usize,
    pub d_conv_dim: usize,
    /// Residual blocks of the generator.
    pub g_repeat_num: usize,
    /// Stride-2 down (and up) samplings of the generator: yunjey's 2.
    pub g_down_num: usize,
    /// Two coordinate channels added to the generator's input (CoordConv; not in yunjey's
    /// networks, whose weights load only without it): what a map that moves pixels by where
    /// they are, such as a rotation, needs.
    pub coordinates: bool,
    /// Every instance norm of the generator scaled and shifted per channel by a linear map of
    /// the target `c` (conditional instance normalisation; not in yunjey's network, whose
    /// weights load only without it). yunjey's generator reads `c` only as constant planes
    /// beside the image, and its first instance norm subtracts each channel's mean, which
    /// removes a constant plane's contribution everywhere but near the borders (zero
    /// padding): the target reaches the middle of the image only through the network's
    /// receptive field. Conditioned norms give every layer the target at every pixel.
    pub conditional_norm: bool,
    /// A choice among the input's quarter turns and mirrors made per image from the image's
    /// own attributes (as the choice predicts them, learned from the real images' labels) and
    /// the target, in front of the generator (`layers::nn::symmetry::ConditionedSymmetryChoice`,
    /// variables `symmetry.*`; not in yunjey's network). For attributes that move every pixel
    /// by where it is (a quarter turn), which a convolutional generator redraws instead of
    /// turning, as CycleGAN's did before its own symmetry front (models/translation.md).
    pub symmetries: bool,
    /// The symmetry choice's learning rate (its own Adam, the generator's betas).
    pub symmetry_lr: f64,
    /// The attributes the symmetry choice serves: those a turn or a mirror changes (the run
    /// file's `rotated`). The choice predicts where an image stands on them, reads the target's,
    /// and its own term classifies the turned input on them alone. Empty: every attribute.
    /// A turn cannot change the others (an inversion, a tint), and with them in its term the
    /// choice drifted into blends (its largest weight 0.3 after 900 steps) while the term stood
    /// at 8 to 14, most of it the attributes no turn can change (models/translation.md).
    pub symmetry_attributes: Vec<String>,
    /// Iterations at the start during which the choice's head does not learn: the input is
    /// blended by its starting weights (the identity's 0.8) with no gradient to them, and its
    /// own term is left out, while its features learn where images stand from their labels.
    /// A head that learns from the first step moves before that prediction tells the images
    /// apart, and so moves alike for all of them: to one symmetry for every image (with
    /// `pixel_affine`) or to blends that hedge the critic's classification (without), within
    /// 200 iterations, when the prediction was still at chance (models/translation.md).
    pub symmetry_warmup: u64,
    /// A choice per image between the input and its negative, in front of the symmetry choice
    /// and the generator (`layers::nn::negation::ConditionedNegation`, variables `negation.*`;
    /// not in yunjey's network), for an attribute that inverts every pixel (the run file's
    /// `inverted`). The choice is hard, never a blend; while training, the critic teaches it
    /// (the candidate its classifier reads as the target on `negation_attributes`), and its
    /// head learns to predict that from where the image stands and the target, so that
    /// translating needs no critic. StarGAN's generator alone redraws a digit whose inversion
    /// changes (16-20% kept) while keeping it where the inversion stays (90-95%), and soft
    /// fronts never learned the negative (models/translation.md).
    pub negation: bool,
    /// The negation choice's learning rate (its own Adam, the generator's betas).
    pub negation_lr: f64,
    /// The attributes the negation serves and its teacher reads (the run file's `inverted`).
    /// Empty: every attribute.
    pub negation_attributes: Vec<String>,
    /// The generator draws, for each pixel and channel, an affine map of its input pixel
    /// instead of the pixel: its last layer gives `a` and `t` (tanh of twice the channels), and
    /// the translation is `a x + t (1 - |a|)`, in [-1, 1] for any `a`, `t` (not in yunjey's
    /// network). Inversion (`a = -1`), a tint and the identity are each one such map, so the
    /// stroke the input has is carried to the output instead of redrawn; what the generator
    /// learns is which map each pixel needs.
    pub pixel_affine: bool,
    /// Stride-2 layers of the critic.
    pub d_repeat_num: usize,
    pub lambda_cls: f64,
    pub lambda_rec: f64,
    /// The realism loss: `wgan-gp` (yunjey's: `-D_src` for real, `D_src` for fake, with the
    /// penalty) or `lsgan` (CycleGAN's: `(D_src - 1)^2` for real, `D_src^2` for fake; not in
    /// yunjey's StarGAN), the penalty then added only when `lambda_gp > 0`.
    pub adversarial: GanLoss,
    pub lambda_gp: f64,
    /// Weight of the identity term `|x - G(x, c')|_1` (0: yunjey's objective, without it).
    pub lambda_id: f64,
    /// Critic iterations per generator step.
    pub n_critic: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 128,
            channels: 3,
            c_dim: 5,
            attributes: Vec::new(),
            mode: LabelMode::MultiLabel,
            g_conv_dim: 64,
            d_conv_dim: 64,
            g_repeat_num: 6,
            g_down_num: 2,
            coordinates: false,
            conditional_norm: false,
            symmetries: false,
            symmetry_lr: 1e-3,
            symmetry_attributes: Vec::new(),
            symmetry_warmup: 0,
            negation: false,
            negation_lr: 1e-3,
            negation_attributes: Vec::new(),
            pixel_affine: false,
            d_repeat_num: 6,
            lambda_cls: 1.0,
            lambda_rec: 10.0,
            adversarial: GanLoss::WganGp,
            lambda_gp: 10.0,
            lambda_id: 0.0,
            n_critic: 5,
        }
    }
}

pub struct StarGan {
    cfg: Config,
    generator: Stack,
    /// In front of the generator, with `symmetries`.
    symmetry: Option<ConditionedSymmetryChoice>,
    /// The attributes it serves, as indices into `c` (`symmetry_attributes`).
    served: Vec<u32>,
    /// In front of the symmetry choice, with `negation`.
    negation: Option<ConditionedNegation>,
    /// The attributes it serves (`negation_attributes`).
    negation_served: Vec<u32>,
    critic: StarGanCritic,
}

/// yunjey's `d_loss_real`, `d_loss_fake`, `d_loss_cls`, `d_loss_gp` and their weighted sum.
pub struct CriticTerms {
    pub real: Tensor,
    pub fake: Tensor,
    pub cls: Tensor,
    pub gp: Tensor,
    pub total: Tensor,
}

/// yunjey's `g_loss_fake`, `g_loss_rec`, `g_loss_cls`, the identity term and the symmetry
/// choice's term when they are on, and their weighted sum.
pub struct GeneratorTerms {
    pub fake: Tensor,
    pub rec: Tensor,
    pub cls: Tensor,
    pub id: Option<Tensor>,
    pub front: Option<Tensor>,
    /// The fronts' predictions of the real images' own attributes (those each serves), against
    /// their labels.
    pub source: Option<Tensor>,
    /// The negation choice's head against its teacher (the logistic loss), and the share of
    /// its choices that agree with the teacher's.
    pub negation: Option<(Tensor, Tensor)>,
    pub total: Tensor,
}

/// The critic's two outputs.
pub struct Critique {
    /// `(b, 1, h', w')` critic values per patch.
    pub src: Tensor,
    /// `(b, c_dim)` domain logits.
    pub cls: Tensor,
}

/// The indices of a front's attributes (`field`: `symmetry_attributes` or
/// `negation_attributes`) among the attribute names (all of them when empty).
fn served_attributes(cfg: &Config, field: &str, names: &[String]) -> Result<Vec<u32>> {
    if names.is_empty() {
        return Ok((0..cfg.c_dim as u32).collect());
    }
    if cfg.mode != LabelMode::MultiLabel {
        candle_core::bail!("StarGAN {field} are attributes: they need multi-label mode");
    }
    names
        .iter()
        .map(|name| match cfg.attributes.iter().position(|a| a == name) {
            Some(i) => Ok(i as u32),
            None => candle_core::bail!(
                "StarGAN {field} names {name:?}, which is not among the attributes [{}]",
                cfg.attributes.join(", ")
            ),
        })
        .collect()
}

/// The columns `columns` of `(b, c_dim)` attributes or logits.
fn select(c: &Tensor, columns: &[u32]) -> Result<Tensor> {
    if columns.len() == c.dim(1)? && columns.iter().enumerate().all(|(i, &k)| i as u32 == k) {
        return Ok(c.clone());
    }
    c.index_select(&Tensor::new(columns, c.device())?, 1)
}

impl StarGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        if cfg.c_dim == 0 {
            candle_core::bail!("StarGAN needs at least one attribute (c_dim = 0)");
        }
        let weight_ok = |w: f64| w.is_finite() && w >= 0.0;
        if !weight_ok(cfg.lambda_id) || !weight_ok(cfg.lambda_gp) {
            candle_core::bail!(
                "StarGAN lambda_id and lambda_gp must be finite and 0 or more (found {} and {})",
                cfg.lambda_id,
                cfg.lambda_gp
            );
        }
        match cfg.adversarial {
            GanLoss::WganGp if cfg.lambda_gp == 0.0 => candle_core::bail!(
                "StarGAN adversarial = \"wgan-gp\" needs its penalty (lambda_gp > 0): a critic without it is unbounded"
            ),
            GanLoss::WganGp | GanLoss::Lsgan => {}
            other => candle_core::bail!(
                "StarGAN adversarial must be wgan-gp or lsgan, got {other:?}"
            ),
        }
        if !cfg.attributes.is_empty() && cfg.attributes.len() != cfg.c_dim {
            candle_core::bail!(
                "StarGAN: {} attribute names for c_dim = {}",
                cfg.attributes.len(),
                cfg.c_dim
            );
        }
        if cfg.n_critic == 0 {
            candle_core::bail!("StarGAN n_critic must be positive");
        }
        for (name, lr) in [
            ("symmetry_lr", cfg.symmetry_lr),
            ("negation_lr", cfg.negation_lr),
        ] {
            if !(lr.is_finite() && lr > 0.0) {
                candle_core::bail!("StarGAN {name} must be a positive number, got {lr}");
            }
        }
        if cfg.negation && cfg.mode != LabelMode::MultiLabel {
            candle_core::bail!(
                "StarGAN negation serves attributes, which its teacher reads one by one: it needs \
                 multi-label mode"
            );
        }
        if cfg.g_down_num == 0 || !cfg.image_size.is_multiple_of(1 << cfg.g_down_num) {
            candle_core::bail!(
                "StarGAN's generator halves image_size {} {} times: it must be a multiple of 2^{}",
                cfg.image_size,
                cfg.g_down_num,
                cfg.g_down_num
            );
        }
        if !cfg.symmetries && (cfg.symmetry_warmup > 0 || !cfg.symmetry_attributes.is_empty()) {
            candle_core::bail!(
                "StarGAN symmetry_warmup and symmetry_attributes set how the symmetry choice \
                 works: they need symmetries = true"
            );
        }
        if !cfg.negation && !cfg.negation_attributes.is_empty() {
            candle_core::bail!(
                "StarGAN negation_attributes set what the negation serves: it needs negation = true"
            );
        }
        let served = served_attributes(cfg, "symmetry_attributes", &cfg.symmetry_attributes)?;
        let negation_served =
            served_attributes(cfg, "negation_attributes", &cfg.negation_attributes)?;
        let dims = (cfg.channels, cfg.c_dim);
        let g_extra = if cfg.coordinates { 2 } else { 0 };
        Ok(Self {
            cfg: cfg.clone(),
            generator: stargan_generator(
                vb.pp("generator"),
                (cfg.channels, cfg.c_dim + g_extra),
                cfg.g_conv_dim,
                (cfg.g_down_num, cfg.g_repeat_num),
                cfg.conditional_norm.then_some(cfg.c_dim),
                cfg.channels * if cfg.pixel_affine { 2 } else { 1 },
            )?,
            symmetry: match cfg.symmetries {
                true => Some(ConditionedSymmetryChoice::new(
                    vb.pp("symmetry"),
                    cfg.channels,
                    served.len(),
                )?),
                false => None,
            },
            negation: match cfg.negation {
                true => Some(ConditionedNegation::new(
                    vb.pp("negation"),
                    cfg.channels,
                    negation_served.len(),
                )?),
                false => None,
            },
            served,
            negation_served,
            critic: stargan_discriminator(
                vb.pp("discriminator"),
                dims,
                cfg.image_size,
                cfg.d_conv_dim,
                cfg.d_repeat_num,
            )?,
        })
    }

    /// `G(x, c)`: images in [-1, 1], `c (b, c_dim)` the target domains, tiled over the image.
    /// The negation choice, if any, decides by its head.
    pub fn generate(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let negated = match &self.negation {
            Some(negation) => negation.forward(x, &self.negation_columns(c)?)?,
            None => x.clone(),
        };
        self.generate_unturned(&self.turn(&negated, c, true)?, c)
    }

    /// [`Self::generate`] while training: the negation choice, if any, decides as the critic
    /// teaches it, and the symmetry choice's head gets a gradient only if `learns`.
    fn generate_learning(&self, x: &Tensor, c: &Tensor, learns: bool) -> Result<Tensor> {
        let negated = self.negate_taught(x, c)?;
        self.generate_unturned(&self.turn(&negated, c, learns)?, c)
    }

    /// `x` negated where the negation choice's teacher says (`x` itself without a choice).
    fn negate_taught(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        match &self.negation {
            Some(_) => negate_where(x, &self.negation_taught(x, c)?),
            None => Ok(x.clone()),
        }
    }

    /// The negation choice's teacher: `(b)` ones where the critic classifies the image's
    /// negative as the target `c` better than the image itself, on the attributes the choice
    /// serves (the summed logistic loss of each candidate), zeros elsewhere; detached. The
    /// critic learns those attributes from the real images' labels, so it tells within a few
    /// iterations which of the two looks like the target: an inverted digit from an upright one.
    fn negation_taught(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let c = self.negation_columns(c)?;
        let loss = |candidate: &Tensor| -> Result<Tensor> {
            let logits = self.negation_columns(&self.critique(&candidate.detach())?.cls)?;
            bce_with_logits_per_image(&logits, &c)
        };
        let (keep, negate) = (loss(x)?, loss(&x.neg()?)?);
        negate.lt(&keep)?.to_dtype(x.dtype())
    }

    /// The columns of `(b, c_dim)` attributes (or logits) that the negation choice serves.
    fn negation_columns(&self, c: &Tensor) -> Result<Tensor> {
        select(c, &self.negation_served)
    }

    /// The input as the symmetry choice turns it for the target `c` (the input itself
    /// without a choice); `learns`: whether the choice's head gets a gradient through it. Held,
    /// the choice still passes the gradient on to `x`: the reconstruction term reaches the
    /// first translation through the second one's input. (Until 2026-12-02 the held choice
    /// detached the whole turned image, so during the warm-up the reconstruction term trained
    /// only the second translation.)
    fn turn(&self, x: &Tensor, c: &Tensor, learns: bool) -> Result<Tensor> {
        match &self.symmetry {
            Some(symmetry) if learns => symmetry.forward(x, &self.served(c)?),
            Some(symmetry) => symmetry.forward_held(x, &self.served(c)?),
            None => Ok(x.clone()),
        }
    }

    /// The generator without the symmetry choice in front (with its pixel maps, if any).
    fn generate_unturned(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let planes =
            c.reshape((b, self.cfg.c_dim, 1, 1))?
                .broadcast_as((b, self.cfg.c_dim, h, w))?;
        let mut input = Tensor::cat(&[x, &planes.contiguous()?], 1)?;
        if self.cfg.coordinates {
            input = with_coordinates(&input)?;
        }
        let out = self.generator.forward_conditioned(&input, Some(c), true)?;
        match self.cfg.pixel_affine {
            true => apply_pixel_affine(&out, x),
            false => Ok(out),
        }
    }

    /// `D(x)`: critic values per patch and domain logits.
    pub fn critique(&self, x: &Tensor) -> Result<Critique> {
        let h = self.critic.main.forward(x, true)?;
        let src = self.critic.src.forward(&h, true)?;
        let cls = self.critic.cls.forward(&h, true)?.flatten_from(1)?;
        Ok(Critique { src, cls })
    }

    /// WGAN-GP's penalty at interpolates of `real` and `fake` by `alpha (b)`: from the critic's
    /// taped input gradient where its layers allow ([`Stack::forward_taped`]: convolutions and
    /// activations, yunjey's critic), else through Candle's second-order graph.
    fn penalty(&self, real: &Tensor, fake: &Tensor, alpha: &Tensor) -> Result<Tensor> {
        match self.critic_is_taped() {
            true => gradient_penalty_from(&|x| self.critic_input_grad(x), real, fake, alpha),
            false => {
                let critic = |x: &Tensor| Ok(self.critique(x)?.src);
                gradient_penalty(&critic, real, fake, alpha)
            }
        }
    }

    fn critic_is_taped(&self) -> bool {
        self.critic.main.can_tape() && self.critic.src.can_tape()
    }

    /// `d sum D_src(x) / dx` through the taped critic (the patch map's values summed).
    fn critic_input_grad(&self, x: &Tensor) -> Result<Tensor> {
        let main = self.critic.main.forward_taped(x)?;
        let features = main
            .output()
            .ok_or_else(|| candle_core::Error::Msg("StarGAN: the critic has no layers".into()))?;
        let src = self.critic.src.forward_taped(features)?;
        let out = src
            .output()
            .ok_or_else(|| candle_core::Error::Msg("StarGAN: the src head has no layers".into()))?;
        main.input_grad(&src.input_grad(&out.ones_like()?)?)
    }

    /// yunjey's `classification_loss`: BCE summed over attributes, averaged over the batch
    /// (multi-label), or cross-entropy against the domain index (single-label, `c` one-hot).
    pub fn classification_loss(&self, logits: &Tensor, c: &Tensor) -> Result<Tensor> {
        match self.cfg.mode {
            LabelMode::MultiLabel => {
                bce_with_logits_per_image(logits, c)?.sum_all()? / logits.dim(0)? as f64
            }
            LabelMode::SingleLabel => {
                let target = c.argmax(D::Minus1)?.to_dtype(DType::U32)?;
                candle_nn::loss::cross_entropy(logits, &target)
            }
        }
    }

    /// The batch's domains as the generator reads them: attribute vectors, or one-hot classes.
    fn domains_of(&self, batch: &Batch) -> Result<Tensor> {
        match (&batch.labels, self.cfg.mode) {
            (Some(Labels::Attributes(a)), LabelMode::MultiLabel) => Ok(a.clone()),
            (Some(Labels::Classes(c)), LabelMode::SingleLabel) => {
                let k = self.cfg.c_dim;
                let ids = c.to_vec1::<u32>()?;
                let mut one_hot = vec![0f32; ids.len() * k];
                for (i, &id) in ids.iter().enumerate() {
                    if id as usize >= k {
                        candle_core::bail!(
                            "StarGAN: domain {id} of an image is outside c_dim = {k}"
                        );
                    }
                    one_hot[i * k + id as usize] = 1.0;
                }
                Tensor::from_vec(one_hot, (ids.len(), k), c.device())
            }
            _ => candle_core::bail!(
                "StarGAN ({:?}) needs {} in every batch",
                self.cfg.mode,
                match self.cfg.mode {
                    LabelMode::MultiLabel => "attribute vectors",
                    LabelMode::SingleLabel => "class labels",
                }
            ),
        }
    }

    /// The critic's step: real images with their own domains, translations to `c_trg`
    /// (detached), the gradient penalty at interpolates drawn from `alpha (b)`.
    pub fn critic_terms(
        &self,
        x_real: &Tensor,
        c_org: &Tensor,
        c_trg: &Tensor,
        alpha: &Tensor,
    ) -> Result<CriticTerms> {
        let cfg = &self.cfg;
        let real = self.critique(x_real)?;
        let d_real = target_loss(cfg.adversarial, &real.src, true)?;
        let d_cls = self.classification_loss(&real.cls, c_org)?;
        let x_fake = self.generate_learning(x_real, c_trg, true)?.detach();
        let d_fake = target_loss(cfg.adversarial, &self.critique(&x_fake)?.src, false)?;
        let d_gp = match cfg.lambda_gp > 0.0 {
            true => self.penalty(x_real, &x_fake, alpha)?,
            false => Tensor::zeros((), DType::F32, x_real.device())?,
        };
        let total =
            (((&d_real + &d_fake)? + (&d_cls * cfg.lambda_cls)?)? + (&d_gp * cfg.lambda_gp)?)?;
        Ok(CriticTerms {
            real: d_real,
            fake: d_fake,
            cls: d_cls,
            gp: d_gp,
            total,
        })
    }

    /// The generator's step: translate to `c_trg`, fool the critic and its classifier, and
    /// come back to `c_org`.
    /// `choice_learns`: whether the symmetry choice's head learns this step (after its warm-up).
    pub fn generator_terms(
        &self,
        x_real: &Tensor,
        c_org: &Tensor,
        c_trg: &Tensor,
        choice_learns: bool,
    ) -> Result<GeneratorTerms> {
        let cfg = &self.cfg;
        // The negation choice's teacher, once: the translation and the head's term read it.
        let taught = match &self.negation {
            Some(_) => Some(self.negation_taught(x_real, c_trg)?),
            None => None,
        };
        let negated = match &taught {
            Some(taught) => negate_where(x_real, taught)?,
            None => x_real.clone(),
        };
        // The turned input, once: the translation and the choice's own term both read it.
        let turned = self.turn(&negated, c_trg, choice_learns)?;
        let x_fake = self.generate_unturned(&turned, c_trg)?;
        let fake = self.critique(&x_fake)?;
        let g_fake = target_loss(cfg.adversarial, &fake.src, true)?;
        let g_cls = self.classification_loss(&fake.cls, c_trg)?;
        let x_reconst = self.generate_learning(&x_fake, c_org, choice_learns)?;
        let g_rec = (x_real - x_reconst)?.abs()?.mean_all()?;
        let mut total = ((&g_fake + (&g_rec * cfg.lambda_rec)?)? + (&g_cls * cfg.lambda_cls)?)?;
        let g_id = if cfg.lambda_id > 0.0 {
            let g_id = (x_real - self.generate_learning(x_real, c_org, choice_learns)?)?
                .abs()?
                .mean_all()?;
            total = (total + (&g_id * cfg.lambda_id)?)?;
            Some(g_id)
        } else {
            None
        };
        let g_front = match self.symmetry.is_some() && choice_learns {
            true => {
                let g_front = self.front_terms(&turned, c_trg)?;
                total = (total + &g_front)?;
                Some(g_front)
            }
            false => None,
        };
        let g_source = self.source_terms(x_real, c_org)?;
        if let Some(term) = &g_source {
            total = (total + term)?;
        }
        // The negation choice's head learns the teacher's choice (weight 1: it reaches only
        // the head).
        let g_negation = match (&self.negation, &taught) {
            (Some(negation), Some(taught)) => {
                let c = self.negation_columns(c_trg)?;
                let (loss, chosen) = negation.loss(x_real, &c, taught)?;
                total = (total + &loss)?;
                let agree = chosen.eq(taught)?.to_dtype(DType::F32)?;
                Some((loss, agree.mean_all()?))
            }
            _ => None,
        };
        Ok(GeneratorTerms {
            fake: g_fake,
            rec: g_rec,
            cls: g_cls,
            id: g_id,
            front: g_front,
            source: g_source,
            negation: g_negation,
            total,
        })
    }

    /// Where each real image stands, as each front predicts it, against the labels (weight 1:
    /// it reaches only the fronts' readers, which nothing else trains).
    fn source_terms(&self, x_real: &Tensor, c_org: &Tensor) -> Result<Option<Tensor>> {
        let mut terms = Vec::new();
        if let Some(symmetry) = &self.symmetry {
            terms.push(
                self.classification_loss(&symmetry.source_logits(x_real)?, &self.served(c_org)?)?,
            );
        }
        if let Some(negation) = &self.negation {
            terms.push(self.classification_loss(
                &negation.source_logits(x_real)?,
                &self.negation_columns(c_org)?,
            )?);
        }
        terms
            .into_iter()
            .try_fold(None, |sum: Option<Tensor>, term| {
                Ok(Some(match sum {
                    Some(sum) => (sum + term)?,
                    None => term,
                }))
            })
    }

    /// The symmetry choice's own term: the turned input classified as a translation is,
    /// `lambda_cls L_cls(D_cls(T(x)), c)`. A turn changes only what a turn can (the quarter
    /// turn, not the inversion or the tint), so the critic's gradient through the turned input
    /// tells the choice which turn the target needs. Without it the choice learns only through
    /// the generator behind it, which redraws instead, and it stayed at the identity. Not the
    /// critic's realism `-D_src(T(x))`: an unturned digit is real whatever the target, and with
    /// that term too the choice went to the identity for every image within 250 steps.
    fn front_terms(&self, turned: &Tensor, c_trg: &Tensor) -> Result<Tensor> {
        let judged = self.critique(turned)?;
        self.classification_loss(&self.served(&judged.cls)?, &self.served(c_trg)?)?
            * self.cfg.lambda_cls
    }

    /// The columns of `(b, c_dim)` attributes (or logits) that the symmetry choice serves.
    fn served(&self, c: &Tensor) -> Result<Tensor> {
        select(c, &self.served)
    }

    /// The attribute names, or `attr0`, `attr1`, ... when the data gave none.
    fn names(&self) -> Vec<String> {
        if self.cfg.attributes.is_empty() {
            (0..self.cfg.c_dim).map(|i| format!("attr{i}")).collect()
        } else {
            self.cfg.attributes.clone()
        }
    }

    /// Translations of `x` (in [0, 1]) to each of `targets` rows: `(b * t, c, h, w)`, image by
    /// image (each image followed by its translations).
    fn translations(&self, x: &Tensor, targets: &[Vec<f32>]) -> Result<Tensor> {
        let b = x.dim(0)?;
        let mut per_target = Vec::with_capacity(targets.len());
        for t in targets {
            let c = Tensor::new(t.as_slice(), x.device())?
                .unsqueeze(0)?
                .broadcast_as((b, t.len()))?
                .contiguous()?;
            per_target.push(self.translate(x, &Target::Attributes(c))?);
        }
        // (t, b, ...) -> (b, t, ...)
        let stacked = Tensor::stack(&per_target, 1)?;
        let (_, _, c, h, w) = stacked.dims5()?;
        stacked.reshape((b * targets.len(), c, h, w))
    }
}

impl Trainable for StarGan {
    fn data_spec(&self) -> DataSpec {
        let labels = match self.cfg.mode {
            LabelMode::MultiLabel => LabelSpec::Attributes(self.cfg.c_dim),
            LabelMode::SingleLabel => LabelSpec::Classes(self.cfg.c_dim),
        };
        let s = self.cfg.image_size;
        DataSpec {
            labels,
            held_out_grid: true,
            ..DataSpec::images([self.cfg.channels, s, s])
        }
    }

    /// yunjey's two Adams, and one over each front (the symmetry choice, the negation).
    fn optimizers(&self) -> Vec<OptimizerSpec> {
        let mut specs = vec![
            OptimizerSpec::new("generator", &["generator."], LrRole::Generator),
            OptimizerSpec::new("discriminator", &["discriminator."], LrRole::Main),
        ];
        if self.cfg.symmetries {
            specs.push(OptimizerSpec {
                name: "symmetry".to_string(),
                prefixes: vec!["symmetry.".to_string()],
                excluded: Vec::new(),
                // yunjey's betas (0.5, 0.999), at the choice's own rate.
                lr: LrRole::Own {
                    lr: self.cfg.symmetry_lr,
                    beta1: 0.5,
                    beta2: 0.999,
                },
            });
        }
        if self.cfg.negation {
            specs.push(OptimizerSpec {
                name: "negation".to_string(),
                prefixes: vec!["negation.".to_string()],
                excluded: Vec::new(),
                lr: LrRole::Own {
                    lr: self.cfg.negation_lr,
                    beta1: 0.5,
                    beta2: 0.999,
                },
            });
        }
        specs
    }

    /// One iteration of yunjey's `Solver.train`: a critic step on this iteration's batch, and
    /// a generator step on the same batch every `n_critic`-th iteration.
    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let batch = ctx.batch()?;
        let x_real = to_tanh_range(&batch.images)?;
        let c_org = self.domains_of(&batch)?;
        let b = x_real.dim(0)?;
        let mut order: Vec<u32> = (0..b as u32).collect();
        ctx.rng.shuffle(&mut order);
        let c_trg = c_org.index_select(&Tensor::new(order, x_real.device())?, 0)?;
        let alpha = ctx.rng.uniform(b, x_real.device())?;
        let d = self.critic_terms(&x_real, &c_org, &c_trg, &alpha)?;
        ctx.minimize("discriminator", &d.total)?;
        for (name, t) in [
            ("d_loss_real", &d.real),
            ("d_loss_fake", &d.fake),
            ("d_loss_cls", &d.cls),
            ("d_loss_gp", &d.gp),
            ("d_loss", &d.total),
        ] {
            ctx.record(name, t)?;
        }
        if (ctx.progress.step + 1).is_multiple_of(self.cfg.n_critic) {
            let choice_learns = ctx.progress.step >= self.cfg.symmetry_warmup;
            let g = self.generator_terms(&x_real, &c_org, &c_trg, choice_learns)?;
            let mut stepped = vec!["generator"];
            if self.symmetry.is_some() {
                stepped.push("symmetry");
            }
            if self.negation.is_some() {
                stepped.push("negation");
            }
            match stepped.len() {
                1 => ctx.minimize("generator", &g.total)?,
                _ => ctx.minimize_together(&stepped, &g.total)?,
            }
            if let Some(symmetry) = &self.symmetry {
                // How decided the choices are: the mean of each translation's largest
                // weight (1 / 8 at the start).
                let weights = symmetry.weights(&x_real, &self.served(&c_trg)?)?;
                ctx.record("g_symmetry_weight", &weights.max(1)?.mean_all()?)?;
            }
            if let Some((loss, agree)) = &g.negation {
                ctx.record("g_loss_negation", loss)?;
                ctx.record("g_negation_agree", agree)?;
            }
            for (name, t) in [
                ("g_loss_fake", &g.fake),
                ("g_loss_rec", &g.rec),
                ("g_loss_cls", &g.cls),
                ("g_loss", &g.total),
            ] {
                ctx.record(name, t)?;
            }
            if let Some(id) = &g.id {
                ctx.record("g_loss_id", id)?;
            }
            if let Some(front) = &g.front {
                ctx.record("g_loss_front", front)?;
            }
            if let Some(source) = &g.source {
                ctx.record("g_loss_source", source)?;
            }
        }
        Ok(())
    }

    /// Only a penalty through a critic that cannot be taped differentiates Candle's graph twice.
    fn needs_second_order(&self) -> bool {
        self.cfg.lambda_gp > 0.0 && !self.critic_is_taped()
    }

    /// The critic (and its domain classifier): `translate` runs the generator only, and
    /// `eval` judges attributes with its own attribute classifier.
    fn training_only(&self) -> Vec<String> {
        vec!["discriminator".to_string()]
    }

    fn headline_terms(&self) -> Vec<String> {
        ["d_loss", "g_loss", "d_loss_cls", "g_loss_rec"]
            .map(String::from)
            .to_vec()
    }

    /// Each held-out image beside its translation with each attribute flipped (yunjey's
    /// debugging grid; single-label: into each domain).
    fn grid(&self, count: usize, _rng: &mut Rng, held_out: Option<&Batch>) -> Result<Grid> {
        let Some(batch) = held_out else {
            candle_core::bail!("StarGAN's grid shows held-out images, and none were given");
        };
        let n = count.clamp(1, 8).min(batch.size()?);
        let x = batch.images.narrow(0, 0, n)?;
        let own = self.domains_of(&Batch {
            images: x.clone(),
            labels: batch.labels.as_ref().map(|l| match l {
                Labels::Attributes(a) => Labels::Attributes(a.narrow(0, 0, n).unwrap_or(a.clone())),
                Labels::Classes(c) => Labels::Classes(c.narrow(0, 0, n).unwrap_or(c.clone())),
            }),
            domain_b: None,
            captions: None,
            patches: None,
        })?;
        let own = own.to_vec2::<f32>()?;
        let k = self.cfg.c_dim;
        let mut rows = Vec::with_capacity(n);
        for (i, c) in own.iter().enumerate() {
            let xi = x.narrow(0, i, 1)?;
            let targets: Vec<Vec<f32>> = (0..k)
                .map(|a| match self.cfg.mode {
                    LabelMode::MultiLabel => {
                        let mut t = c.clone();
                        t[a] = 1.0 - t[a];
                        t
                    }
                    LabelMode::SingleLabel => (0..k).map(|j| f32::from(u8::from(j == a))).collect(),
                })
                .collect();
            rows.push(xi.clone());
            rows.push(self.translations(&xi, &targets)?);
        }
        Ok(Grid {
            images: Tensor::cat(&rows, 0)?,
            columns: k + 1,
        })
    }
}

layers::translation_model!(StarGan, "use `genzoo sample CKPT --mode domains`");

impl Translator for StarGan {
    fn domains(&self) -> Domains {
        Domains::Attributes {
            names: self.names(),
            single_label: self.cfg.mode == LabelMode::SingleLabel,
        }
    }

    /// `G(x, c)` with each image's own instance statistics, the running ones left as they are.
    fn translate(&self, x: &Tensor, target: &Target) -> Result<Tensor> {
        let Target::Attributes(c) = target else {
            candle_core::bail!("StarGAN translates to attribute vectors, not between two domains");
        };
        let (b, k) = c.dims2()?;
        if k != self.cfg.c_dim || b != x.dim(0)? {
            candle_core::bail!(
                "StarGAN: targets {:?} for {} images of a model of {} attributes",
                c.dims(),
                x.dim(0)?,
                self.cfg.c_dim
            );
        }
        self.generator.freeze_instance_statistics(true);
        let y = self.generate(&to_tanh_range(x)?, c);
        self.generator.freeze_instance_statistics(false);
        to_unit_range(&y?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn small() -> Result<(StarGan, VarMap)> {
        small_with(0.0)
    }

    fn small_with(lambda_id: f64) -> Result<(StarGan, VarMap)> {
        small_config(Config {
            lambda_id,
            ..Config::default()
        })
    }

    fn keys(varmap: &VarMap) -> Vec<String> {
        let mut keys: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Conditioned norms add one map per generator norm under its own name and leave
    /// yunjey's names and indices as they are.
    #[test]
    fn conditioned_norms_add_maps_beside_yunjeys_names() -> Result<()> {
        let (_, plain) = small()?;
        let (conditioned, varmap) = small_config(Config {
            conditional_norm: true,
            ..Config::default()
        })?;
        let (maps, rest): (Vec<String>, Vec<String>) = keys(&varmap)
            .into_iter()
            .partition(|k| k.contains(".cond."));
        assert_eq!(rest, keys(&plain));
        // c7s1, two downsamplings, one residual block's two norms, two upsamplings.
        assert_eq!(maps.len(), 2 * 7, "{maps:?}");
        assert!(maps.iter().all(|k| k.starts_with("generator.main.")));
        assert!(maps.contains(&"generator.main.1.cond.weight".to_string()));
        let x = to_tanh_range(&Rng::new(2).uniform((2, 3, 16, 16), &Device::Cpu)?)?;
        let c = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        assert_eq!(conditioned.generate(&x, &c)?.dims(), &[2, 3, 16, 16]);
        Ok(())
    }

    /// With `symmetries` the choice's variables step with their own optimiser and nothing else
    /// does; a choice set on one quarter turn gives yunjey's generator on the turned input.
    #[test]
    fn symmetries_turn_each_input_and_step_with_their_own_optimizer() -> Result<()> {
        let (m, varmap) = small_config(Config {
            symmetries: true,
            conditional_norm: true,
            pixel_affine: true,
            ..Config::default()
        })?;
        assert_each_variable_steps_with_its_prefix(&m, &varmap);
        let mut bias = vec![0f32; layers::nn::symmetry::COUNT];
        bias[1] = 40.0;
        varmap.data().lock().unwrap()["symmetry.head.2.bias"]
            .set(&Tensor::new(bias, &Device::Cpu)?)?;
        let x = to_tanh_range(&Rng::new(3).uniform((2, 3, 16, 16), &Device::Cpu)?)?;
        let c = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let turned = layers::nn::symmetry::quarter_turn(&x)?;
        let d = (m.generate(&x, &c)? - m.generate_unturned(&turned, &c)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        // The choice's own term classifies the turned input: lambda_cls L_cls, by hand.
        let g = m.generator_terms(&x, &c, &c, true)?;
        let judged = m.critique(&turned)?;
        let want = m.classification_loss(&judged.cls, &c)?.to_scalar::<f32>()?;
        let front = g.front.expect("the choice's term").to_scalar::<f32>()?;
        assert!((front - want).abs() < 1e-5, "{front} vs {want}");
        // Its prediction of where the real images stand, against their own labels.
        let c_org = Tensor::new(&[[0f32, 1., 1.], [1., 0., 0.]], &Device::Cpu)?;
        let g = m.generator_terms(&x, &c_org, &c, true)?;
        let symmetry = m.symmetry.as_ref().expect("a choice");
        let want = m
            .classification_loss(&symmetry.source_logits(&x)?, &c_org)?
            .to_scalar::<f32>()?;
        let source = g.source.expect("the source term").to_scalar::<f32>()?;
        assert!((source - want).abs() < 1e-5, "{source} vs {want}");
        let bad = Config {
            symmetry_lr: 0.0,
            ..Config::default()
        };
        assert!(small_config(bad).is_err());
        Ok(())
    }

    /// With `symmetry_attributes` the choice predicts, reads and is judged on those
    /// attributes alone; a name outside the attributes is an error that names it.
    #[test]
    fn the_symmetry_choice_serves_the_attributes_it_is_given() -> Result<()> {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cfg = |served: &[&str]| Config {
            symmetries: true,
            attributes: names(&["inverted", "rotated", "red"]),
            symmetry_attributes: names(served),
            ..Config::default()
        };
        let (m, _) = small_config(cfg(&["rotated"]))?;
        let x = to_tanh_range(&Rng::new(4).uniform((2, 3, 16, 16), &Device::Cpu)?)?;
        let c_org = Tensor::new(&[[0f32, 1., 1.], [1., 0., 0.]], &Device::Cpu)?;
        let c_trg = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let symmetry = m.symmetry.as_ref().expect("a choice");
        assert_eq!(symmetry.source_logits(&x)?.dims(), &[2, 1]);
        let column = |c: &Tensor| c.narrow(1, 1, 1);
        let g = m.generator_terms(&x, &c_org, &c_trg, true)?;
        let turned = symmetry.forward(&x, &column(&c_trg)?)?;
        let judged = m.critique(&turned)?;
        let want_front = m
            .classification_loss(&column(&judged.cls)?, &column(&c_trg)?)?
            .to_scalar::<f32>()?;
        let want_source = m
            .classification_loss(&symmetry.source_logits(&x)?, &column(&c_org)?)?
            .to_scalar::<f32>()?;
        let front = g.front.expect("the choice's term").to_scalar::<f32>()?;
        let source = g.source.expect("the source term").to_scalar::<f32>()?;
        assert!((front - want_front).abs() < 1e-5, "{front} vs {want_front}");
        assert!(
            (source - want_source).abs() < 1e-5,
            "{source} vs {want_source}"
        );
        let err = small_config(cfg(&["slanted"])).err().expect("an error");
        assert!(err.to_string().contains("\"slanted\""), "{err}");
        let single = Config {
            mode: LabelMode::SingleLabel,
            ..cfg(&["rotated"])
        };
        assert!(small_config(single).is_err());
        let without_choice = Config {
            symmetries: false,
            ..cfg(&["rotated"])
        };
        let err = small_config(without_choice).err().expect("an error");
        assert!(err.to_string().contains("symmetries = true"), "{err}");
        Ok(())
    }

    /// During the choice's warm-up its head gets no gradient from any term and its own term is
    /// left out, while its features learn from the labels and the generator from the rest,
    /// the reconstruction term reaching both translations.
    #[test]
    fn during_the_warm_up_only_the_choice_s_features_learn() -> Result<()> {
        let (m, varmap) = small_config(Config {
            symmetries: true,
            lambda_id: 10.0,
            ..Config::default()
        })?;
        let x = to_tanh_range(&Rng::new(5).uniform((2, 3, 16, 16), &Device::Cpu)?)?;
        let c_org = Tensor::new(&[[0f32, 1., 1.], [1., 0., 0.]], &Device::Cpu)?;
        let c_trg = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let reached = |learns: bool, key: &str| -> Result<bool> {
            let g = m.generator_terms(&x, &c_org, &c_trg, learns)?;
            assert_eq!(g.front.is_some(), learns);
            let grads = g.total.backward()?;
            let data = varmap.data().lock().unwrap();
            Ok(match grads.get(data[key].as_tensor()) {
                Some(g) => g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                None => false,
            })
        };
        for key in ["symmetry.features.0.weight", "generator.main.0.weight"] {
            assert!(
                reached(false, key)?,
                "{key} did not learn during the warm-up"
            );
        }
        assert!(!reached(false, "symmetry.head.2.weight")?);
        assert!(reached(true, "symmetry.head.2.weight")?);

        // Held, the choice still passes the gradient to its input: the reconstruction and
        // identity terms train the generator exactly as when the choice learns (the same
        // values; only the head's gradient differs). Detaching the turned image instead
        // cut the reconstruction term off from the first translation.
        type Term = fn(&GeneratorTerms) -> Tensor;
        let generator_gradient = |learns: bool, term: Term| {
            let g = m.generator_terms(&x, &c_org, &c_trg, learns)?;
            let grads = term(&g).backward()?;
            let data = varmap.data().lock().unwrap();
            let w = data["generator.main.0.weight"].as_tensor();
            grads
                .get(w)
                .expect("a gradient")
                .flatten_all()?
                .to_vec1::<f32>()
        };
        let terms: [(&str, Term); 2] = [
            ("reconstruction", |g| g.rec.clone()),
            ("identity", |g| g.id.clone().expect("lambda_id > 0")),
        ];
        for (name, term) in terms {
            let (held, learning) = (
                generator_gradient(false, term)?,
                generator_gradient(true, term)?,
            );
            let scale = learning.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{name}: no gradient");
            for (a, b) in held.iter().zip(&learning) {
                assert!(
                    (a - b).abs() <= 1e-6 * scale,
                    "{name}: {a} held vs {b} learning"
                );
            }
        }
        Ok(())
    }

    /// The identity, the inversion and the red tint of the run file are each one pixel map:
    /// `a = 1`, `a = -1`, and `a = 0.3`, `t = -1` on the tinted channels (in [0, 1]: `0.3 x`).
    #[test]
    fn pixel_maps_give_the_identity_the_inversion_and_a_tint() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[-1f32, -0.2, 0.5, 1.0], &dev)?.reshape((1, 1, 2, 2))?;
        let map = |a: f32, t: f32| -> Result<Vec<f32>> {
            let maps = Tensor::new(&[a, a, a, a, t, t, t, t], &dev)?.reshape((1, 2, 2, 2))?;
            apply_pixel_affine(&maps, &x)?
                .flatten_all()?
                .to_vec1::<f32>()
        };
        assert_eq!(map(1.0, 0.7)?, [-1.0, -0.2, 0.5, 1.0]);
        assert_eq!(map(-1.0, 0.7)?, [1.0, 0.2, -0.5, -1.0]);
        let tinted: Vec<f32> = [0.0f32, 0.4, 0.75, 1.0]
            .iter()
            .map(|p| 2.0 * (0.3 * p) - 1.0)
            .collect();
        for (got, want) in map(0.3, -1.0)?.iter().zip(&tinted) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Any a and t in [-1, 1] stay in range.
        for (a, t) in [(0.5, 1.0), (-0.5, -1.0), (0.0, 1.0), (0.9, -1.0)] {
            assert!(map(a, t)?.iter().all(|v| v.abs() <= 1.0 + 1e-6));
        }
        Ok(())
    }

    /// yunjey's critic is taped: its penalty, value and every critic weight's gradient, is the
    /// one through Candle's second-order graph.
    #[test]
    fn the_taped_penalty_is_the_second_order_one() -> Result<()> {
        let (m, varmap) = small()?;
        assert!(m.critic_is_taped());
        let mut rng = Rng::new(9);
        let x = to_tanh_range(&rng.uniform((3, 3, 16, 16), &Device::Cpu)?)?;
        let fake = to_tanh_range(&rng.uniform((3, 3, 16, 16), &Device::Cpu)?)?;
        let alpha = rng.uniform(3, &Device::Cpu)?;
        let ours = m.penalty(&x, &fake, &alpha)?;
        let critic = |x: &Tensor| Ok(m.critique(x)?.src);
        let theirs = gradient_penalty(&critic, &x, &fake, &alpha)?;
        let largest = |t: &Tensor| -> Result<f32> { t.abs()?.max_all()?.to_scalar::<f32>() };
        let diff = largest(&(&ours - &theirs)?)?;
        assert!(diff <= 1e-5 * largest(&theirs)?, "penalty: {diff}");
        let (ours, theirs) = (ours.backward()?, theirs.backward()?);
        let mut compared = 0;
        for (name, var) in layers::train::checkpoint::vars_with_prefix(&varmap, "discriminator.") {
            match (ours.get(var.as_tensor()), theirs.get(var.as_tensor())) {
                (Some(o), Some(t)) => {
                    let diff = largest(&(o - t)?)?;
                    assert!(diff <= 1e-4 * largest(t)?.max(1e-6), "{name}: {diff}");
                    compared += 1;
                }
                (None, None) => {}
                (o, _) => panic!("{name}: a gradient in one only (ours: {})", o.is_some()),
            }
        }
        // d_repeat_num 3 convolutions and the src head (biases and the cls head get none).
        assert_eq!(compared, 4, "critic weights compared");
        Ok(())
    }

    /// With `negation` the critic teaches, per image, whether the input or its negative goes
    /// into the generator (the candidate it classifies as the target on the served attributes),
    /// the training translation follows the teacher, translating follows the head, the head
    /// learns the teacher's choice, its reader the labels, and each part steps with its own
    /// optimiser.
    #[test]
    fn the_critic_teaches_the_negation_and_its_head_learns_it() -> Result<()> {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cfg = Config {
            negation: true,
            attributes: names(&["inverted", "rotated", "red"]),
            negation_attributes: names(&["inverted"]),
            lambda_id: 1.0,
            ..Config::default()
        };
        let (m, varmap) = small_config(cfg.clone())?;
        assert_each_variable_steps_with_its_prefix(&m, &varmap);
        // One image asked into both states of `inverted`: the teacher must negate it for
        // exactly one of them (whichever candidate the critic reads as inverted).
        let one = to_tanh_range(&Rng::new(3).uniform((1, 3, 16, 16), &Device::Cpu)?)?;
        let x = Tensor::cat(&[&one, &one], 0)?;
        let c_org = Tensor::new(&[[0f32, 1., 1.], [0., 1., 1.]], &Device::Cpu)?;
        let c_trg = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let taught = m.negation_taught(&x, &c_trg)?;
        let inverted_logit =
            |x: &Tensor| -> Result<f32> { m.critique(x)?.cls.get(0)?.get(0)?.to_scalar::<f32>() };
        let (kept, negated) = (inverted_logit(&one)?, inverted_logit(&one.neg()?)?);
        assert_ne!(kept, negated);
        let for_inverted = if negated > kept { 1f32 } else { 0. };
        assert_eq!(taught.to_vec1::<f32>()?, [for_inverted, 1.0 - for_inverted]);

        let largest = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let taught_input = negate_where(&x, &taught)?;
        let want = m.generate_unturned(&taught_input, &c_trg)?;
        assert_eq!(
            largest(&m.generate_learning(&x, &c_trg, true)?, &want)?,
            0.0
        );
        // A new head keeps every image.
        let want = m.generate_unturned(&x, &c_trg)?;
        assert_eq!(largest(&m.generate(&x, &c_trg)?, &want)?, 0.0);

        let g = m.generator_terms(&x, &c_org, &c_trg, true)?;
        let negation = m.negation.as_ref().expect("a negation choice");
        let column = |c: &Tensor| c.narrow(1, 0, 1);
        let (loss, agree) = g.negation.as_ref().expect("the negation's terms");
        let (want, _) = negation.loss(&x, &column(&c_trg)?, &taught)?;
        assert!(largest(loss, &want)? < 1e-6);
        assert_eq!(agree.to_scalar::<f32>()?, 0.5);
        let want = m.classification_loss(&negation.source_logits(&x)?, &column(&c_org)?)?;
        assert!(largest(g.source.as_ref().expect("the source term"), &want)? < 1e-6);
        let grads = g.total.backward()?;
        let data = varmap.data().lock().unwrap();
        for key in [
            "negation.head.0.weight",
            "negation.source.weight",
            "generator.main.0.weight",
        ] {
            assert!(
                grads.get(data[key].as_tensor()).is_some(),
                "{key} has no gradient"
            );
        }
        drop(data);

        for (bad, field) in [
            (
                Config {
                    negation: false,
                    ..cfg.clone()
                },
                "negation = true",
            ),
            (
                Config {
                    negation_lr: -1.0,
                    ..cfg.clone()
                },
                "negation_lr",
            ),
            (
                Config {
                    negation_attributes: names(&["blue"]),
                    ..cfg.clone()
                },
                "\"blue\"",
            ),
            (
                Config {
                    mode: LabelMode::SingleLabel,
                    negation_attributes: Vec::new(),
                    ..cfg.clone()
                },
                "multi-label",
            ),
        ] {
            let err = small_config(bad).err().expect("an error");
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        Ok(())
    }

    /// Each variable is stepped by one optimiser, the one its first name part names
    /// (`generator`, `discriminator`, `symmetry`, `negation`).
    fn assert_each_variable_steps_with_its_prefix(m: &StarGan, varmap: &VarMap) {
        let specs = m.optimizers();
        for key in keys(varmap) {
            let owners: Vec<&str> = specs
                .iter()
                .filter(|s| s.prefixes.iter().any(|p| key.starts_with(p.as_str())))
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(owners, [key.split('.').next().expect("a prefix")], "{key}");
        }
    }

    fn small_config(base: Config) -> Result<(StarGan, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 16,
            c_dim: 3,
            g_conv_dim: 4,
            d_conv_dim: 4,
            g_repeat_num: 1,
            d_repeat_num: 3,
            ..base
        };
        Ok((StarGan::new(&cfg, vb)?, varmap))
    }

    /// The identity term is `|x - G(x, c_own)|_1`, added with its weight, and absent at 0
    /// (yunjey's objective, which the parity test checks).
    #[test]
    fn the_identity_term_adds_the_translation_into_the_own_domain() -> Result<()> {
        let x = to_tanh_range(&Rng::new(1).uniform((2, 3, 16, 16), &Device::Cpu)?)?;
        let own = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let target = Tensor::new(&[[0f32, 1., 0.], [1., 0., 1.]], &Device::Cpu)?;
        let (plain, _) = small_with(0.0)?;
        let (with_id, _) = small_with(2.5)?;
        let g0 = plain.generator_terms(&x, &own, &target, true)?;
        assert!(g0.id.is_none());
        let g1 = with_id.generator_terms(&x, &own, &target, true)?;
        let id = g1.id.expect("the identity term").to_scalar::<f32>()?;
        let want = (&x - with_id.generate(&x, &own)?)?
            .abs()?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!((id - want).abs() < 1e-6, "{id} vs {want}");
        let added = g1.total.to_scalar::<f32>()? - g0.total.to_scalar::<f32>()?;
        assert!((added - 2.5 * id).abs() < 1e-4, "{added} vs {}", 2.5 * id);
        assert!(small_with(-1.0).is_err());
        Ok(())
    }

    /// With `adversarial = "lsgan"` the critic scores real patches against 1 and translations
    /// against 0, the generator its translations against 1, and without a penalty no step
    /// differentiates twice; WGAN-GP without its penalty and other losses are refused.
    #[test]
    fn the_least_squares_loss_replaces_the_wasserstein_terms() -> Result<()> {
        let (m, _) = small_config(Config {
            adversarial: GanLoss::Lsgan,
            lambda_gp: 0.0,
            ..Config::default()
        })?;
        assert!(!m.needs_second_order());
        let x = to_tanh_range(&Rng::new(4).uniform((2, 3, 16, 16), &Device::Cpu)?)?;
        let own = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let target = Tensor::new(&[[0f32, 1., 0.], [1., 0., 1.]], &Device::Cpu)?;
        let alpha = Tensor::new(&[0.3f32, 0.7], &Device::Cpu)?;
        let d = m.critic_terms(&x, &own, &target, &alpha)?;
        let mean_sq = |t: &Tensor, shift: f64| -> Result<f32> {
            (t - shift)?.sqr()?.mean_all()?.to_scalar::<f32>()
        };
        let fake = m.generate(&x, &target)?;
        let (real_src, fake_src) = (m.critique(&x)?.src, m.critique(&fake)?.src);
        let close = |a: &Tensor, b: f32| -> Result<()> {
            let a = a.to_scalar::<f32>()?;
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            Ok(())
        };
        close(&d.real, mean_sq(&real_src, 1.0)?)?;
        close(&d.fake, mean_sq(&fake_src, 0.0)?)?;
        close(&d.gp, 0.0)?;
        let g = m.generator_terms(&x, &own, &target, true)?;
        close(&g.fake, mean_sq(&fake_src, 1.0)?)?;
        // The default, yunjey's, is the Wasserstein pair with its penalty, through the taped
        // critic (no second-order graph).
        let (w, _) = small()?;
        assert!(!w.needs_second_order());
        let d = w.critic_terms(&x, &own, &target, &alpha)?;
        close(
            &d.real,
            -w.critique(&x)?.src.mean_all()?.to_scalar::<f32>()?,
        )?;
        assert!(d.gp.to_scalar::<f32>()? > 0.0);
        for bad in [
            Config {
                lambda_gp: 0.0,
                ..Config::default()
            },
            Config {
                adversarial: GanLoss::Hinge,
                ..Config::default()
            },
            Config {
                adversarial: GanLoss::Lsgan,
                lambda_gp: -1.0,
                ..Config::default()
            },
            Config {
                lambda_id: f64::NAN,
                ..Config::default()
            },
        ] {
            let e = small_config(bad).err().expect("refused").to_string();
            assert!(e.contains("StarGAN"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn translation_keeps_the_running_statistics_and_domains_are_all_combinations() -> Result<()> {
        let (m, varmap) = small()?;
        let x = Rng::new(0).uniform((2, 3, 16, 16), &Device::Cpu)?;
        let key = "generator.main.1.running_mean";
        let before = varmap.data().lock().unwrap()[key]
            .as_tensor()
            .to_vec1::<f32>()?;
        let c = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &Device::Cpu)?;
        let y = m.translate(&x, &Target::Attributes(c.clone()))?;
        assert_eq!(y.dims(), &[2, 3, 16, 16]);
        let after = varmap.data().lock().unwrap()[key]
            .as_tensor()
            .to_vec1::<f32>()?;
        assert_eq!(before, after, "translation moved the running statistics");
        // A training-mode forward does move them.
        m.generate(&to_tanh_range(&x)?, &c)?;
        let trained = varmap.data().lock().unwrap()[key]
            .as_tensor()
            .to_vec1::<f32>()?;
        assert_ne!(before, trained);
        let all = m.domains().all();
        assert_eq!(all.len(), 8);
        assert_eq!(all[5], vec![1.0, 0.0, 1.0]);
        let wrong = Tensor::new(&[[1f32, 0.]], &Device::Cpu)?;
        assert!(m.translate(&x, &Target::Attributes(wrong)).is_err());
        Ok(())
    }
}
