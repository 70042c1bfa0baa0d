//! CycleGAN (Zhu et al. 2017, "Unpaired Image-to-Image Translation using Cycle-Consistent
//! Adversarial Networks") as junyanz/pytorch-CycleGAN-and-pix2pix trains it
//! (`models/cycle_gan_model.py`, `models/networks.py`, `util/image_pool.py`).
//!
//! Two generators map between unpaired domains, `G_A: A -> B` and `G_B: B -> A`, each judged by
//! a PatchGAN: `D_A` tells real B from `G_A(a)`, `D_B` real A from `G_B(b)`. The generators
//! minimise (eq. 3 of the paper, with junyanz's identity term)
//!
//! `L_GAN(G_A, D_A) + L_GAN(G_B, D_B) + lambda_A |G_B(G_A(a)) - a|_1 + lambda_B |G_A(G_B(b)) - b|_1
//!  + lambda_idt (lambda_B |G_A(b) - b|_1 + lambda_A |G_B(a) - a|_1)`,
//!
//! with the least-squares GAN loss `(D(G(x)) - 1)^2` by default; each discriminator minimises
//! `((D(real) - 1)^2 + D(fake)^2) / 2`, its fakes drawn from a pool of the last 50 generated
//! images. Both generators step with one Adam, then both discriminators with another, on the
//! fakes made before the generators' step, as `optimize_parameters` does.
//!
//! Variables `netG_A.model.N`, `netG_B.model.N`, `netD_A.model.N`, `netD_B.model.N`: the keys of
//! junyanz's `latest_net_G_A.pth` and the others under the attribute names of the model.
//!
//! Beyond junyanz (off by default, so his weights load as they are): `coordinates` (CoordConv)
//! and `symmetries`, a learned choice among the input's quarter turns and mirrors before each
//! generator (`layers::nn::symmetry`, `netG_A.symmetry_logits`), for maps between domains that
//! differ by a turn of the whole image, which the generators alone do not learn.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use layers::gan::{target_loss, to_tanh_range, to_unit_range, GanLoss};
use layers::nn::sequential::Stack;
use layers::nn::symmetry::SymmetryChoice;
use layers::nn::translation::{patch_discriminator, resnet_generator, with_coordinates};
use layers::step::{Batch, DataSpec, Grid, LrRole, OptimizerSpec, StepContext, Trainable};
use layers::train::pool::ImagePool;
use layers::{Domains, Rng, Target, Translator};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Image side, a multiple of 4 (256 in the paper; 28 for the digits).
    pub image_size: usize,
    /// Channels of both domains (`input_nc = output_nc`).
    pub channels: usize,
    /// Generator width (`--ngf`).
    pub ngf: usize,
    /// Discriminator width (`--ndf`).
    pub ndf: usize,
    /// Residual blocks: 9 for `resnet_9blocks` (256 px), 6 for `resnet_6blocks` (128 px).
    pub n_blocks: usize,
    /// Stride-2 layers of the PatchGAN (`--n_layers_D`; 3 is the 70 x 70 PatchGAN).
    pub n_layers_d: usize,
    /// The adversarial loss (`--gan_mode`): lsgan, or non-saturating (junyanz's "vanilla").
    pub gan_loss: GanLoss,
    /// Weight of the cycle A -> B -> A (`--lambda_A`).
    pub lambda_a: f64,
    /// Weight of the cycle B -> A -> B (`--lambda_B`).
    pub lambda_b: f64,
    /// Identity term, as a share of the cycle weights (`--lambda_identity`); 0 where mapping a
    /// domain's image to itself contradicts the map (digits <-> inverted digits).
    pub lambda_identity: f64,
    /// Generated images each discriminator's pool keeps (`--pool_size`; 0: none).
    pub pool_size: usize,
    /// Two coordinate channels added to each generator's input (CoordConv; not in junyanz's
    /// networks, whose weights load only without it): what a map that moves pixels by where
    /// they are, such as a rotation, needs.
    pub coordinates: bool,
    /// Each generator first blends its input's 8 quarter turns and mirrors with learned
    /// weights, which the training drives to one of them (`layers::nn::symmetry`): for domains
    /// that differ by a turn of the whole image. The weights step with their own Adam.
    pub symmetries: bool,
    /// The symmetry weights' learning rate: their logits must travel a few units while the
    /// generators' weights move by thousandths, so they get a rate of their own.
    pub symmetry_lr: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 256,
            channels: 3,
            ngf: 64,
            ndf: 64,
            n_blocks: 9,
            n_layers_d: 3,
            gan_loss: GanLoss::Lsgan,
            lambda_a: 10.0,
            lambda_b: 10.0,
            lambda_identity: 0.5,
            pool_size: 50,
            coordinates: false,
            symmetries: false,
            symmetry_lr: 1e-2,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<()> {
        let s = self.image_size;
        if s == 0 || !s.is_multiple_of(4) {
            candle_core::bail!("CycleGAN image_size must be a positive multiple of 4, got {s}");
        }
        if self.channels != 1 && self.channels != 3 {
            candle_core::bail!("CycleGAN channels must be 1 or 3, got {}", self.channels);
        }
        // The PatchGAN halves the side n_layers_d times, then two 4x4 convolutions at stride 1
        // take 1 each.
        let patch = (s >> self.n_layers_d) as i64 - 2;
        if patch < 1 {
            candle_core::bail!(
                "a PatchGAN with n_layers_d = {} leaves no output at image_size {s}",
                self.n_layers_d
            );
        }
        if !(self.symmetry_lr.is_finite() && self.symmetry_lr > 0.0) {
            candle_core::bail!(
                "CycleGAN symmetry_lr must be a positive number, got {}",
                self.symmetry_lr
            );
        }
        if self.gan_loss == GanLoss::WganGp {
            candle_core::bail!(
                "CycleGAN trains with lsgan or non-saturating losses here (wgan-gp needs its penalty)"
            );
        }
        Ok(())
    }
}

pub struct CycleGan {
    cfg: Config,
    g_a: Stack,
    g_b: Stack,
    /// The learned symmetry in front of each generator, with `symmetries`.
    symmetry_a: Option<SymmetryChoice>,
    symmetry_b: Option<SymmetryChoice>,
    d_a: Stack,
    d_b: Stack,
    /// Past `G_B(b)` for `D_B`.
    pool_a: ImagePool,
    /// Past `G_A(a)` for `D_A`.
    pool_b: ImagePool,
}

/// Every image the step computes, in [-1, 1].
pub struct Forward {
    pub real_a: Tensor,
    pub real_b: Tensor,
    pub fake_b: Tensor,
    pub rec_a: Tensor,
    pub fake_a: Tensor,
    pub rec_b: Tensor,
}

/// The generators' loss and its terms (junyanz's `loss_G_A`, `loss_cycle_A`, `loss_idt_A`...).
pub struct GeneratorTerms {
    /// Identity terms, when `lambda_identity > 0`.
    pub idt: Option<(Tensor, Tensor)>,
    pub g_a: Tensor,
    pub g_b: Tensor,
    pub cycle_a: Tensor,
    pub cycle_b: Tensor,
    pub total: Tensor,
}

/// The symmetry weights' variables, which step with their own optimiser.
const SYMMETRY_LOGITS: [&str; 2] = ["netG_A.symmetry_logits", "netG_B.symmetry_logits"];

fn l1(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (a - b)?.abs()?.mean_all()
}

impl CycleGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.channels;
        let input = c + if cfg.coordinates { 2 } else { 0 };
        let symmetry = |net: &str| -> Result<Option<SymmetryChoice>> {
            match cfg.symmetries {
                true => SymmetryChoice::new(vb.pp(net)).map(Some),
                false => Ok(None),
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            g_a: resnet_generator(vb.pp("netG_A"), (input, c), cfg.ngf, cfg.n_blocks)?,
            g_b: resnet_generator(vb.pp("netG_B"), (input, c), cfg.ngf, cfg.n_blocks)?,
            symmetry_a: symmetry("netG_A")?,
            symmetry_b: symmetry("netG_B")?,
            d_a: patch_discriminator(vb.pp("netD_A"), c, cfg.ndf, cfg.n_layers_d)?,
            d_b: patch_discriminator(vb.pp("netD_B"), c, cfg.ndf, cfg.n_layers_d)?,
            pool_a: ImagePool::new(cfg.pool_size),
            pool_b: ImagePool::new(cfg.pool_size),
        })
    }

    /// `G_A` on images in [-1, 1].
    pub fn g_a(&self, x: &Tensor) -> Result<Tensor> {
        self.generate(&self.g_a, self.symmetry_a.as_ref(), x)
    }

    /// `G_B` on images in [-1, 1].
    pub fn g_b(&self, x: &Tensor) -> Result<Tensor> {
        self.generate(&self.g_b, self.symmetry_b.as_ref(), x)
    }

    /// A generator on images in [-1, 1]: turned by its learned symmetry and given their
    /// coordinates, if the config says so. Instance statistics without running ones: the same
    /// in training and inference.
    fn generate(&self, g: &Stack, symmetry: Option<&SymmetryChoice>, x: &Tensor) -> Result<Tensor> {
        let x = match symmetry {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        match self.cfg.coordinates {
            true => g.forward(&with_coordinates(&x)?, true),
            false => g.forward(&x, true),
        }
    }

    /// The symmetry each generator has chosen so far and its weight (`G_A`'s, `G_B`'s), with
    /// `symmetries`.
    pub fn chosen_symmetries(&self) -> Result<Option<[(usize, f32); 2]>> {
        match (&self.symmetry_a, &self.symmetry_b) {
            (Some(a), Some(b)) => Ok(Some([a.chosen()?, b.chosen()?])),
            _ => Ok(None),
        }
    }

    pub fn d_a(&self, x: &Tensor) -> Result<Tensor> {
        self.d_a.forward(x, true)
    }

    pub fn d_b(&self, x: &Tensor) -> Result<Tensor> {
        self.d_b.forward(x, true)
    }

    /// junyanz's `forward()`: both translations and both reconstructions of a batch (images in
    /// [0, 1]).
    pub fn forward(&self, batch: &Batch) -> Result<Forward> {
        let real_a = to_tanh_range(&batch.images)?;
        let real_b = to_tanh_range(batch.domain_b("cyclegan")?)?;
        let fake_b = self.g_a(&real_a)?;
        let rec_a = self.g_b(&fake_b)?;
        let fake_a = self.g_b(&real_b)?;
        let rec_b = self.g_a(&fake_a)?;
        Ok(Forward {
            real_a,
            real_b,
            fake_b,
            rec_a,
            fake_a,
            rec_b,
        })
    }

    /// junyanz's `backward_G`: the generators' loss and its terms.
    pub fn generator_terms(&self, f: &Forward) -> Result<GeneratorTerms> {
        let cfg = &self.cfg;
        let idt = if cfg.lambda_identity > 0.0 {
            // G_A should leave B alone, G_B should leave A alone.
            let w_a = cfg.lambda_b * cfg.lambda_identity;
            let w_b = cfg.lambda_a * cfg.lambda_identity;
            Some((
                (l1(&self.g_a(&f.real_b)?, &f.real_b)? * w_a)?,
                (l1(&self.g_b(&f.real_a)?, &f.real_a)? * w_b)?,
            ))
        } else {
            None
        };
        let g_a = target_loss(cfg.gan_loss, &self.d_a(&f.fake_b)?, true)?;
        let g_b = target_loss(cfg.gan_loss, &self.d_b(&f.fake_a)?, true)?;
        let cycle_a = (l1(&f.rec_a, &f.real_a)? * cfg.lambda_a)?;
        let cycle_b = (l1(&f.rec_b, &f.real_b)? * cfg.lambda_b)?;
        let mut total = (((&g_a + &g_b)? + &cycle_a)? + &cycle_b)?;
        if let Some((a, b)) = &idt {
            total = ((total + a)? + b)?;
        }
        Ok(GeneratorTerms {
            idt,
            g_a,
            g_b,
            cycle_a,
            cycle_b,
            total,
        })
    }

    /// junyanz's `backward_D_A`: `D_A` on real B against (pooled) `G_A(a)`.
    pub fn d_a_loss(&self, real_b: &Tensor, fake_b: &Tensor) -> Result<Tensor> {
        self.discriminator_loss(&self.d_a, real_b, fake_b)
    }

    /// junyanz's `backward_D_B`: `D_B` on real A against (pooled) `G_B(b)`.
    pub fn d_b_loss(&self, real_a: &Tensor, fake_a: &Tensor) -> Result<Tensor> {
        self.discriminator_loss(&self.d_b, real_a, fake_a)
    }

    /// junyanz's `backward_D_basic`: `(loss(D(real), real) + loss(D(fake), fake)) / 2`.
    fn discriminator_loss(&self, d: &Stack, real: &Tensor, fake: &Tensor) -> Result<Tensor> {
        let l = self.cfg.gan_loss;
        let real = target_loss(l, &d.forward(real, true)?, true)?;
        let fake = target_loss(l, &d.forward(&fake.detach(), true)?, false)?;
        (real + fake)? * 0.5
    }
}

impl Trainable for CycleGan {
    fn data_spec(&self) -> DataSpec {
        let s = self.cfg.image_size;
        DataSpec {
            two_domains: true,
            held_out_grid: true,
            ..DataSpec::images([self.cfg.channels, s, s])
        }
    }

    /// One Adam over both generators, one over both discriminators (junyanz's
    /// `itertools.chain`), and with `symmetries` one over the symmetry weights.
    fn optimizers(&self) -> Vec<OptimizerSpec> {
        let mut generator =
            OptimizerSpec::new("generator", &["netG_A.", "netG_B."], LrRole::Generator);
        let discriminator =
            OptimizerSpec::new("discriminator", &["netD_A.", "netD_B."], LrRole::Main);
        let mut symmetry = None;
        if self.cfg.symmetries {
            let logits = SYMMETRY_LOGITS.map(String::from).to_vec();
            generator.excluded = logits.clone();
            symmetry = Some(OptimizerSpec {
                name: "symmetry".to_string(),
                prefixes: logits,
                excluded: Vec::new(),
                // The generators' betas (junyanz's 0.5), at the symmetries' own rate.
                lr: LrRole::Own {
                    lr: self.cfg.symmetry_lr,
                    beta1: 0.5,
                    beta2: 0.999,
                },
            });
        }
        [Some(generator), Some(discriminator), symmetry]
            .into_iter()
            .flatten()
            .collect()
    }

    /// junyanz's `optimize_parameters`: the forward pass, the generators' step, then the
    /// discriminators' on the fakes of that forward pass (through the pools).
    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let batch = ctx.batch()?;
        let f = self.forward(&batch)?;
        let g = self.generator_terms(&f)?;
        match self.cfg.symmetries {
            true => ctx.minimize_together(&["generator", "symmetry"], &g.total)?,
            false => ctx.minimize("generator", &g.total)?,
        }
        let fake_b = self.pool_b.query(&f.fake_b, &mut ctx.rng)?;
        let d_a = self.d_a_loss(&f.real_b, &fake_b)?;
        let fake_a = self.pool_a.query(&f.fake_a, &mut ctx.rng)?;
        let d_b = self.d_b_loss(&f.real_a, &fake_a)?;
        let d_loss = (&d_a + &d_b)?;
        ctx.minimize("discriminator", &d_loss)?;
        if let Some((a, b)) = &g.idt {
            ctx.record("idt_a", a)?;
            ctx.record("idt_b", b)?;
        }
        for (name, t) in [
            ("g_a", &g.g_a),
            ("g_b", &g.g_b),
            ("cycle_a", &g.cycle_a),
            ("cycle_b", &g.cycle_b),
            ("g_loss", &g.total),
            ("d_a", &d_a),
            ("d_b", &d_b),
            ("d_loss", &d_loss),
        ] {
            ctx.record(name, t)?;
        }
        // The weight of the symmetry each generator leans to: 1/8 at the start, 1 once chosen.
        if let Some([(_, a), (_, b)]) = self.chosen_symmetries()? {
            ctx.record_value("symmetry_a", a as f64);
            ctx.record_value("symmetry_b", b as f64);
        }
        Ok(())
    }

    /// The least-squares and cross-entropy losses sit at zero when the discriminators win.
    fn collapse_term(&self) -> Option<&str> {
        Some("d_loss")
    }

    /// Both discriminators: translation (and so `eval`) runs the generators only.
    fn training_only(&self) -> Vec<String> {
        vec!["netD_A".to_string(), "netD_B".to_string()]
    }

    fn headline_terms(&self) -> Vec<String> {
        ["g_loss", "d_loss", "cycle_a", "cycle_b"]
            .map(String::from)
            .to_vec()
    }

    /// Six rows of held-out images: A, G_A(A), G_B(G_A(A)), B, G_B(B), G_A(G_B(B)).
    fn grid(&self, count: usize, _rng: &mut Rng, held_out: Option<&Batch>) -> Result<Grid> {
        let Some(batch) = held_out else {
            candle_core::bail!("CycleGAN's grid shows held-out images, and none were given");
        };
        let n = count.clamp(1, 8).min(batch.size()?);
        let a = batch.images.narrow(0, 0, n)?;
        let b = batch.domain_b("cyclegan")?;
        let b = b.narrow(0, 0, n.min(b.dim(0)?))?;
        let fake_b = self.translate(&a, &Target::AToB)?;
        let rec_a = self.translate(&fake_b, &Target::BToA)?;
        let fake_a = self.translate(&b, &Target::BToA)?;
        let rec_b = self.translate(&fake_a, &Target::AToB)?;
        Ok(Grid {
            images: Tensor::cat(&[&a, &fake_b, &rec_a, &b, &fake_a, &rec_b], 0)?,
            columns: n,
        })
    }

    fn training_state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = HashMap::new();
        for (name, pool) in [("pool_a", &self.pool_a), ("pool_b", &self.pool_b)] {
            if let Some(t) = pool.state()? {
                state.insert(name.to_string(), t);
            }
        }
        Ok(state)
    }

    fn restore_training_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.pool_a.restore(state.get("pool_a"))?;
        self.pool_b.restore(state.get("pool_b"))
    }
}

layers::translation_model!(
    CycleGan,
    "use `genzoo sample CKPT --translate a2b` (or b2a)"
);

impl Translator for CycleGan {
    fn domains(&self) -> Domains {
        Domains::Two
    }

    fn translate(&self, x: &Tensor, target: &Target) -> Result<Tensor> {
        let x = to_tanh_range(x)?;
        let y = match target {
            Target::AToB => self.g_a(&x)?,
            Target::BToA => self.g_b(&x)?,
            Target::Attributes(_) => {
                candle_core::bail!("CycleGAN translates between two domains, not to attributes")
            }
        };
        to_unit_range(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use layers::GenerativeModel;

    #[test]
    fn shapes_names_and_bad_configs() -> Result<()> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let cfg = Config {
            image_size: 28,
            channels: 1,
            ngf: 4,
            ndf: 4,
            n_blocks: 2,
            n_layers_d: 2,
            ..Config::default()
        };
        let m = CycleGan::new(&cfg, vb)?;
        let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
        let y = m.translate(&x, &Target::AToB)?;
        assert_eq!(y.dims(), &[2, 1, 28, 28]);
        // 28 -> 14 -> 7 -> 6 -> 5.
        assert_eq!(m.d_a(&x)?.dims(), &[2, 1, 5, 5]);
        let names = varmap.data().lock().unwrap();
        for n in [
            "netG_A.model.1.weight",
            "netG_B.model.11.conv_block.5.bias",
            "netD_A.model.8.bias",
            "netD_B.model.0.weight",
        ] {
            assert!(names.contains_key(n), "{n}");
        }
        drop(names);
        for (bad, needle) in [
            (
                Config {
                    image_size: 30,
                    ..cfg.clone()
                },
                "multiple of 4",
            ),
            (
                Config {
                    image_size: 8,
                    n_layers_d: 3,
                    ..cfg.clone()
                },
                "no output",
            ),
            (
                Config {
                    channels: 2,
                    ..cfg.clone()
                },
                "channels",
            ),
        ] {
            let vb =
                layers::nn::init::seeded_var_builder(&VarMap::new(), 0, DType::F32, &Device::Cpu);
            let e = CycleGan::new(&bad, vb).err().unwrap().to_string();
            assert!(e.contains(needle), "{e}");
        }
        // With coordinates the generators read two more channels.
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let with = CycleGan::new(
            &Config {
                coordinates: true,
                ..cfg.clone()
            },
            vb,
        )?;
        assert_eq!(with.translate(&x, &Target::BToA)?.dims(), &[2, 1, 28, 28]);
        let w = varmap.data().lock().unwrap()["netG_A.model.1.weight"]
            .as_tensor()
            .dims()
            .to_vec();
        assert_eq!(w, [4, 3, 7, 7]);
        assert!(m
            .sample(1, &mut Rng::new(0))
            .unwrap_err()
            .to_string()
            .contains("--translate"));
        Ok(())
    }

    #[test]
    fn symmetries_turn_the_input_and_step_with_their_own_optimizer() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &dev);
        let cfg = Config {
            image_size: 8,
            channels: 1,
            ngf: 2,
            ndf: 2,
            n_blocks: 1,
            n_layers_d: 1,
            symmetries: true,
            ..Config::default()
        };
        let m = CycleGan::new(&cfg, vb)?;
        // Each variable in exactly one optimiser; the logits in the symmetry one only.
        let specs = m.optimizers();
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        for n in &names {
            let owners: Vec<&str> = specs
                .iter()
                .filter(|s| s.owns(n))
                .map(|s| s.name.as_str())
                .collect();
            let expected = match SYMMETRY_LOGITS.contains(&n.as_str()) {
                true => "symmetry",
                false if n.starts_with("netG") => "generator",
                false => "discriminator",
            };
            assert_eq!(owners, [expected], "{n}");
        }
        assert!(SYMMETRY_LOGITS.iter().all(|l| names.iter().any(|n| n == l)));
        // With the weight on one quarter turn, G_A is the generator on the turned input.
        let x = Tensor::randn(0f32, 1., (2, 1, 8, 8), &dev)?;
        let pick = |k: usize| -> Result<()> {
            let mut logits = vec![0f32; layers::nn::symmetry::COUNT];
            logits[k] = 40.0;
            varmap.data().lock().unwrap()["netG_A.symmetry_logits"].set(&Tensor::new(logits, &dev)?)
        };
        pick(1)?;
        let turned_by_the_choice = m.g_a(&x)?;
        assert_eq!(m.chosen_symmetries()?.map(|c| c[0].0), Some(1));
        pick(0)?;
        let turned_first = m.g_a(&layers::nn::symmetry::quarter_turn(&x)?)?;
        let diff = (turned_by_the_choice - turned_first)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        let bad = Config {
            symmetry_lr: 0.0,
            ..cfg
        };
        let vb = layers::nn::init::seeded_var_builder(&VarMap::new(), 0, DType::F32, &dev);
        let e = CycleGan::new(&bad, vb).err().unwrap().to_string();
        assert!(e.contains("symmetry_lr"), "{e}");
        Ok(())
    }
}
