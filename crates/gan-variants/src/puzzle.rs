//! Puzzle-GAN (Lee et al. 2018, "Unsupervised Holistic Image Generation from Key Local
//! Patches", ECCV), with the authors' U-net networks and names (hellbell/KeyPatchGan
//! `models/networks.py`: `PartEncoderU`, `MaskGeneratorU`, `ImageGeneratorU`, `DiscriminatorU`;
//! `models/model.py` for the step).
//!
//! From up to `K` key patches of an image (each crop resized to the full side), G draws the
//! whole image and the mask of where the patches belong:
//! - part encoder `E`: stride-2 `5 x 5` convolutions (LeakyReLU 0.2, BatchNorm after all but
//!   the first) down to `4 x 4`, then a `4 x 4` valid convolution to a `part_embed_dim` code;
//!   one encoder shared by every patch, the patches' features summed at every level, so the
//!   order of the patches does not matter (`e_l = sum_p E_l(p)`; an absent patch adds nothing);
//! - mask generator `M`: transposed convolutions from the code back up (BatchNorm, ReLU), each
//!   level's output concatenated with the encoder's features of the same side (the U-net's
//!   skips); a sigmoid gives the mask `m`;
//! - image generator `G`: from `[code, z]` (`z ~ U[-1, 1]`), transposed convolutions whose
//!   outputs are concatenated with `M`'s features of the same side; tanh gives the image `y`;
//! - discriminator `D`: the encoder's shape to one logit. It learns `x` as real and as fake
//!   `y`, the shuffled parts of another image on `x`'s background (`s m* + x (1 - m*)`) and
//!   `x`'s parts on another image's background (`x m* + s (1 - m*)`), `m*` the true mask (the
//!   union of the patches' boxes), `s` another real image of the batch:
//!   `L_D = BCE(D(x), 1) + BCE(D(y), 0) + BCE(D(s m* + x (1 - m*)), 0) + BCE(D(x m* +
//!   s (1 - m*)), 0)`;
//! - `L_G = a BCE(D(y), 1) + w |m - m*|_1 + w |y m - x m*|_1` (means over pixels), `w` decaying
//!   log-linearly per epoch from `l1_weight_start` to `l1_weight_end` over `l1_weight_epochs`
//!   (the reference's `np.logspace(-2, -4, epochs)`), `a` the `adversarial_weight` (the
//!   reference: 1). D steps every iteration, G every second (odd iterations), after a fresh
//!   forward pass, as the reference's loop does. Two terms not in the reference, off by
//!   default: a soft Dice term on the mask (`mask_dice_weight`) and an L1 term over the whole
//!   image `|y - x|_1` (`image_l1_weight`), which asks G to draw the rest of the digit where it
//!   lies, not only the patches.
//!
//! Where the patches belong is uncertain, and the L1 mask term's optimum is the median: 1 only
//! where a pixel is inside the boxes more often than not. Its pull is weak, and an adversarial
//! term of full strength outweighs it, so that the masks stay empty (measured on the digits;
//! models/puzzle.md): the digits' run file weights the adversarial term 1/50 of the L1 terms.
//!
//! The reference's D ends in a sigmoid that its `BCEWithLogitsLoss` squashes a second time;
//! here D's last convolution is the logit (not copied, like PyTorch-GAN's softmax before its
//! cross-entropy). The reference always takes three patches; training here takes from 1 to
//! `max_patches` per image (drawn per image and step), so one model answers to 1, 2 or 3.
//! PyTorch's default initialisation (the reference leaves its `weights_init` commented out).
//! Variables `part_encoder.model.{i}.{0, 1.0}`, `mask_generator.model.{j}`,
//! `generator.model.{j}`, `discriminator.model.{j}`: the reference's four state dicts, each
//! under its network's prefix.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use layers::gan::{target_loss, to_tanh_range, to_unit_range, GanLoss};
use layers::kernels::conv::ConvSpec;
use layers::model::Puzzle;
use layers::nn::sequential::{Layer, Sequential, Stack};
use layers::step::{
    Batch, DataSpec, Grid, LrRole, OptimizerSpec, Patches, StepContext, StepProgress,
};
use layers::{GenerativeModel, ImageShape, ModelKind, Rng, Trainable, Values};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A power of two from 16 (32 for the padded digits; the reference trains at 64).
    pub image_size: usize,
    pub channels: usize,
    /// Feature maps of the first level (`conv_dim`), doubling per level up to 8 times.
    pub conv_dim: usize,
    pub part_embed_dim: usize,
    pub z_dim: usize,
    /// Patches per image at most (the reference: 3).
    pub max_patches: usize,
    /// The L1 terms' weight at the first epoch, at `l1_weight_epochs - 1` and after.
    pub l1_weight_start: f64,
    pub l1_weight_end: f64,
    pub l1_weight_epochs: u64,
    /// G steps on every `g_every`-th iteration (the reference: 2).
    pub g_every: u64,
    /// The weight of G's adversarial term (the reference: 1).
    pub adversarial_weight: f64,
    /// The weight of a soft Dice term on the mask, `1 - (2 |m m*| + 1) / (|m| + |m*| + 1)` per
    /// image (the reference: 0, none). Where a patch's place is uncertain the L1 term keeps only
    /// the pixels more likely in than out, a shrunken blob; the Dice term pays for the area
    /// missed, so the mask commits to a whole box.
    pub mask_dice_weight: f64,
    /// The weight of an L1 term over the whole image, `|y - x|` (the reference: 0, none): G
    /// draws the rest of the digit where it lies in the real image, not only the patches.
    pub image_l1_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 32,
            channels: 1,
            conv_dim: 64,
            part_embed_dim: 128,
            z_dim: 128,
            max_patches: 3,
            l1_weight_start: 1e-2,
            l1_weight_end: 1e-4,
            l1_weight_epochs: 25,
            g_every: 2,
            adversarial_weight: 1.0,
            mask_dice_weight: 0.0,
            image_l1_weight: 0.0,
        }
    }
}

impl Config {
    /// Stride-2 levels from the full side down to `4 x 4` (the reference's `num_conv_layers`).
    fn levels(&self) -> Result<usize> {
        let s = self.image_size;
        if s < 16 || !s.is_power_of_two() {
            candle_core::bail!(
                "puzzle-gan image_size must be a power of two of at least 16, got {s}"
            );
        }
        Ok(s.trailing_zeros() as usize - 2)
    }

    fn validate(&self) -> Result<()> {
        self.levels()?;
        for (name, v) in [
            ("channels", self.channels),
            ("conv_dim", self.conv_dim),
            ("part_embed_dim", self.part_embed_dim),
            ("z_dim", self.z_dim),
            ("max_patches", self.max_patches),
        ] {
            if v == 0 {
                candle_core::bail!("puzzle-gan {name} must be positive");
            }
        }
        if self.g_every == 0 || self.l1_weight_epochs == 0 {
            candle_core::bail!("puzzle-gan g_every and l1_weight_epochs must be positive");
        }
        for (name, v) in [
            ("adversarial_weight", self.adversarial_weight),
            ("mask_dice_weight", self.mask_dice_weight),
            ("image_l1_weight", self.image_l1_weight),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                candle_core::bail!("puzzle-gan {name} must be finite and at least 0, got {v}");
            }
        }
        if !(self.l1_weight_start > 0.0 && self.l1_weight_end > 0.0) {
            candle_core::bail!(
                "puzzle-gan L1 weights must be positive (a log-linear schedule), got {} and {}",
                self.l1_weight_start,
                self.l1_weight_end
            );
        }
        Ok(())
    }

    /// Feature maps of level `l` (the reference's `conv_dim * 2^min(3, l)`).
    fn width(&self, l: usize) -> usize {
        self.conv_dim << l.min(3)
    }

    /// The L1 weight of epoch `epoch` (0-based): `np.logspace(log10 start, log10 end,
    /// epochs)[epoch]`, the last value after.
    pub fn l1_weight(&self, epoch: u64) -> f64 {
        let last = self.l1_weight_epochs.saturating_sub(1);
        let t = match last {
            0 => 0.0,
            _ => epoch.min(last) as f64 / last as f64,
        };
        let (a, b) = (self.l1_weight_start.log10(), self.l1_weight_end.log10());
        10f64.powf(a + t * (b - a))
    }
}

fn spec(stride: usize, padding: usize) -> ConvSpec {
    ConvSpec {
        stride: (stride, stride),
        padding: (padding, padding),
    }
}

const EPS: f64 = 1e-5;

/// What G produces from a batch's patches.
pub struct Completion {
    /// `(b, 1, h, w)` in [0, 1].
    pub mask: Tensor,
    /// `(b, c, h, w)` in [-1, 1].
    pub image: Tensor,
}

pub struct PuzzleGan {
    cfg: Config,
    /// One stack per level: the reference's `model.{i}` (a convolution, then its activation).
    encoder: Vec<Stack>,
    /// One stack per level: `model.{2j}` (transposed convolution) and its BatchNorm
    /// `model.{2j+1}.0` and ReLU; the last ends in a sigmoid (tanh for the image).
    mask_generator: Vec<Stack>,
    image_generator: Vec<Stack>,
    discriminator: Stack,
    device: Device,
}

impl PuzzleGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.levels()?;
        let k = cfg.image_size >> n; // 4: the valid convolution's kernel
                                     // Encoder level i: c -> w(0) -> ... -> w(n-1), then the code.
        let vb_e = vb.pp("part_encoder").pp("model");
        let mut encoder = Vec::with_capacity(n + 1);
        for i in 0..=n {
            let input = if i == 0 {
                cfg.channels
            } else {
                cfg.width(i - 1)
            };
            let seq = Sequential::new(vb_e.pp(i));
            let seq = match i == n {
                false => seq.conv((input, cfg.width(i), 5), spec(2, 2), true, None)?,
                true => seq.conv((input, cfg.part_embed_dim, k), spec(1, 0), true, None)?,
            };
            let seq = match i == 0 || i == n {
                true => seq,
                false => seq.named("1.0").batch_norm(cfg.width(i), EPS, None)?,
            };
            encoder.push(seq.push(Layer::LeakyRelu(0.2)).build());
        }
        // Mask generator level j: from the code up; j's output (after its skip) feeds j + 1.
        let vb_m = vb.pp("mask_generator").pp("model");
        let mut mask_generator = Vec::with_capacity(n + 1);
        for j in 0..=n {
            let input = match j {
                0 => cfg.part_embed_dim,
                _ => 2 * cfg.width(n - j),
            };
            let output = if j == n { 1 } else { cfg.width(n - 1 - j) };
            let last = if j == n { Layer::Sigmoid } else { Layer::Relu };
            mask_generator.push(up_level(vb_m.clone(), j, (input, output), k, last)?);
        }
        let vb_g = vb.pp("generator").pp("model");
        let mut image_generator = Vec::with_capacity(n + 1);
        for j in 0..=n {
            let input = match j {
                0 => cfg.part_embed_dim + cfg.z_dim,
                _ => 3 * cfg.width(n - j),
            };
            let output = if j == n {
                cfg.channels
            } else {
                cfg.width(n - 1 - j)
            };
            let last = if j == n { Layer::Tanh } else { Layer::Relu };
            image_generator.push(up_level(vb_g.clone(), j, (input, output), k, last)?);
        }
        // D: c -> w(0) (LeakyReLU), then BatchNorm and LeakyReLU per level, then the logit.
        // Explicit names: the reference's activation after a BatchNorm shares its index.
        let mut d = Sequential::new(vb.pp("discriminator").pp("model"));
        for i in 0..=n {
            let input = if i == 0 {
                cfg.channels
            } else {
                cfg.width(i - 1)
            };
            d = d.named(&(2 * i).to_string());
            if i == n {
                d = d.conv((input, 1, k), spec(1, 0), true, None)?;
            } else {
                d = d.conv((input, cfg.width(i), 5), spec(2, 2), true, None)?;
                d = match i {
                    0 => d.push(Layer::LeakyRelu(0.2)),
                    _ => d
                        .named(&format!("{}.0", 2 * i + 1))
                        .batch_norm(cfg.width(i), EPS, None)?
                        .push(Layer::LeakyRelu(0.2)),
                };
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            mask_generator,
            image_generator,
            discriminator: d.build(),
            device: vb.device().clone(),
        })
    }

    /// The encoder's features of one patch per image, level by level (`(b, c, h, w)` each, the
    /// code `(b, part_embed_dim, 1, 1)` last).
    fn encode(&self, part: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.encoder.len());
        let mut x = part.clone();
        for level in &self.encoder {
            x = level.forward(&x, train)?;
            out.push(x.clone());
        }
        Ok(out)
    }

    /// The patches' features summed at every level over the patches present: `parts (b, K, c,
    /// h, w)` in [-1, 1], `present (b, K)` 1 or 0. Each patch slot goes through the encoder on
    /// its own, as the reference encodes `part1`, `part2`, `part3`.
    fn encode_parts(&self, parts: &Tensor, present: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let slots = parts.dim(1)?;
        let mut sum: Option<Vec<Tensor>> = None;
        for p in 0..slots {
            let on = present.narrow(1, p, 1)?.reshape(((), 1, 1, 1))?; // (b, 1, 1, 1)
            let features = self.encode(&parts.narrow(1, p, 1)?.squeeze(1)?, train)?;
            let features = features
                .iter()
                .map(|f| f.broadcast_mul(&on))
                .collect::<Result<Vec<_>>>()?;
            sum = Some(match sum {
                None => features,
                Some(s) => s
                    .iter()
                    .zip(&features)
                    .map(|(a, b)| a + b)
                    .collect::<Result<_>>()?,
            });
        }
        sum.ok_or_else(|| candle_core::Error::Msg("puzzle-gan: no patch slots".into()))
    }

    /// The mask generator's outputs level by level (each after its skip), the mask last.
    fn masks(&self, parts: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        let n = self.encoder.len() - 1;
        let mut out = Vec::with_capacity(n + 1);
        let mut x = parts[n].clone();
        for (j, level) in self.mask_generator.iter().enumerate() {
            x = level.forward(&x, train)?;
            if j < n {
                x = Tensor::cat(&[&x, &parts[n - 1 - j]], 1)?;
            }
            out.push(x.clone());
        }
        Ok(out)
    }

    /// `[code, z]` up through the levels, each concatenated with the mask generator's output
    /// of the same side: the image in [-1, 1].
    fn image(&self, code: &Tensor, z: &Tensor, masks: &[Tensor], train: bool) -> Result<Tensor> {
        let b = z.dim(0)?;
        let mut x = Tensor::cat(&[code, &z.reshape((b, (), 1, 1))?], 1)?;
        let n = self.image_generator.len() - 1;
        for (j, level) in self.image_generator.iter().enumerate() {
            x = level.forward(&x, train)?;
            if j < n {
                x = Tensor::cat(&[&x, &masks[j]], 1)?;
            }
        }
        Ok(x)
    }

    /// G from the patches: `parts (b, K, c, h, w)` in [-1, 1], `present (b, K)`, `z (b, z_dim)`.
    pub fn complete_parts(
        &self,
        parts: &Tensor,
        present: &Tensor,
        z: &Tensor,
        train: bool,
    ) -> Result<Completion> {
        let features = self.encode_parts(parts, present, train)?;
        let masks = self.masks(&features, train)?;
        let code = features.last().expect("levels");
        let image = self.image(code, z, &masks, train)?;
        Ok(Completion {
            mask: masks.last().expect("levels").clone(),
            image,
        })
    }

    /// `(b, c, h, w)` in [-1, 1] -> `(b)` logits.
    pub fn discriminate(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.discriminator.forward(x, train)?.flatten_all()
    }

    /// D's four terms and their sum: `x` real, `shuffled` another real image per row, `mask`
    /// the true mask, `fake` G's image (detached by the caller).
    pub fn discriminator_terms(
        &self,
        x: &Tensor,
        shuffled: &Tensor,
        mask: &Tensor,
        fake: &Tensor,
    ) -> Result<[Tensor; 5]> {
        let bce = |x: &Tensor, real: bool| -> Result<Tensor> {
            target_loss(GanLoss::NonSaturating, &self.discriminate(x, true)?, real)
        };
        let outside = (1.0 - mask)?;
        let shuffled_parts = (shuffled.broadcast_mul(mask)? + x.broadcast_mul(&outside)?)?;
        let shuffled_background = (x.broadcast_mul(mask)? + shuffled.broadcast_mul(&outside)?)?;
        let real = bce(x, true)?;
        let fake = bce(fake, false)?;
        let parts = bce(&shuffled_parts, false)?;
        let background = bce(&shuffled_background, false)?;
        let total = (((&real + &fake)? + &parts)? + &background)?;
        Ok([total, real, fake, parts, background])
    }

    /// G's loss and its terms `[total, adversarial, mask L1, appearance L1, mask Dice, image
    /// L1]` (the first two L1
    /// terms weighted by `w`, the others by their own weights), from a fresh forward pass. The reference also runs D on the real
    /// images here (for nothing but D's BatchNorm statistics); so does this.
    pub fn generator_terms(
        &self,
        x: &Tensor,
        mask: &Tensor,
        completion: &Completion,
        w: f64,
    ) -> Result<[Tensor; 6]> {
        let _ = self.discriminate(x, true)?;
        let adversarial = (target_loss(
            GanLoss::NonSaturating,
            &self.discriminate(&completion.image, true)?,
            true,
        )? * self.cfg.adversarial_weight)?;
        let mask_l1 = ((&completion.mask - mask)?.abs()?.mean_all()? * w)?;
        let generated = completion.image.broadcast_mul(&completion.mask)?;
        let appearance = ((generated - x.broadcast_mul(mask)?)?.abs()?.mean_all()? * w)?;
        let dice = (soft_dice(&completion.mask, mask)? * self.cfg.mask_dice_weight)?;
        let whole = ((&completion.image - x)?.abs()?.mean_all()? * self.cfg.image_l1_weight)?;
        let total = ((((&adversarial + &mask_l1)? + &appearance)? + &dice)? + &whole)?;
        Ok([total, adversarial, mask_l1, appearance, dice, whole])
    }

    /// The true mask `(b, 1, h, w)`: the union of each image's first `counts[i]` boxes.
    fn true_mask(&self, patches: &Patches, counts: &[usize]) -> Result<Tensor> {
        let s = self.cfg.image_size;
        patches.union_mask(counts, (s, s), &self.device)
    }

    /// `(b, K)`: 1 for each image's first `counts[i]` slots.
    fn presence(&self, counts: &[usize]) -> Result<Tensor> {
        let k = self.cfg.max_patches;
        let values: Vec<f32> = counts
            .iter()
            .flat_map(|&c| (0..k).map(move |p| f32::from(u8::from(p < c))))
            .collect();
        Tensor::from_vec(values, (counts.len(), k), &self.device)
    }

    /// The patch slots as the encoder reads them, `(b, K, c, h, w)` in [-1, 1].
    fn part_inputs(&self, patches: &Patches) -> Result<Tensor> {
        let k = patches.images.dim(1)?;
        if k != self.cfg.max_patches {
            candle_core::bail!(
                "puzzle-gan reads {} patch slots per image, and the batch holds {k}",
                self.cfg.max_patches
            );
        }
        to_tanh_range(&patches.images)
    }

    /// Patches per image for a training step: each from 1 to its own number of boxes (at most
    /// `max_patches`).
    fn draw_counts(&self, patches: &Patches, rng: &mut Rng) -> Vec<usize> {
        patches
            .boxes
            .iter()
            .map(|b| {
                let most = b.len().clamp(1, self.cfg.max_patches);
                1 + rng.below(most)
            })
            .collect()
    }

    fn noise(&self, b: usize, rng: &mut Rng) -> Result<Tensor> {
        rng.uniform(b * self.cfg.z_dim, &self.device)?
            .affine(2.0, -1.0)?
            .reshape((b, self.cfg.z_dim))
    }
}

/// The soft Dice loss of masks `(b, 1, h, w)`, `1 - (2 |a b| + 1) / (|a| + |b| + 1)` per image
/// (sums over the pixels), averaged over the batch.
fn soft_dice(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let both = (a * b)?.flatten_from(1)?.sum(1)?;
    let sizes = (a.flatten_from(1)?.sum(1)? + b.flatten_from(1)?.sum(1)?)?;
    let overlap = ((both * 2.0)? + 1.0)?.div(&(sizes + 1.0)?)?;
    (1.0 - overlap)?.mean_all()
}

/// One level of the mask or image generator: `model.{2j}` (transposed convolution: `k x k`
/// valid from the code at `j = 0`, else stride 2 with `5 x 5` kernels doubling the side), then
/// BatchNorm at `model.{2j+1}.0` and ReLU, or the last activation.
fn up_level(
    vb: VarBuilder,
    j: usize,
    (input, output): (usize, usize),
    k: usize,
    activation: Layer,
) -> Result<Stack> {
    let seq = Sequential::new(vb).named(&(2 * j).to_string());
    let seq = match j {
        0 => seq.conv_transpose_with((input, output, k), spec(1, 0), (0, 0), true, None)?,
        _ => seq.conv_transpose_with((input, output, 5), spec(2, 2), (1, 1), true, None)?,
    };
    let seq = match activation {
        Layer::Relu => seq
            .named(&format!("{}.0", 2 * j + 1))
            .batch_norm(output, EPS, None)?
            .push(Layer::Relu),
        last => seq.push(last),
    };
    Ok(seq.build())
}

impl Trainable for PuzzleGan {
    fn data_spec(&self) -> DataSpec {
        let s = self.cfg.image_size;
        let mut spec = DataSpec::images([self.cfg.channels, s, s]);
        spec.patches = self.cfg.max_patches;
        spec.held_out_grid = true;
        spec
    }

    /// The reference's `optimizer_G` over the image generator, part encoder and mask
    /// generator; `optimizer_D` over D.
    fn optimizers(&self) -> Vec<OptimizerSpec> {
        vec![
            OptimizerSpec::new(
                "generator",
                &["generator.", "part_encoder.", "mask_generator."],
                LrRole::Generator,
            ),
            OptimizerSpec::new("discriminator", &["discriminator."], LrRole::Main),
        ]
    }

    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let batch = ctx.batch()?;
        let patches = batch.patches("puzzle-gan")?;
        let x = to_tanh_range(&batch.images)?;
        let b = x.dim(0)?;
        let counts = self.draw_counts(patches, &mut ctx.rng);
        let mask = self.true_mask(patches, &counts)?;
        let parts = self.part_inputs(patches)?;
        let present = self.presence(&counts)?;
        // Another real image per row: the batch turned by one.
        let turn: Vec<u32> = (0..b as u32).map(|i| (i + 1) % b as u32).collect();
        let shuffled = x.index_select(&Tensor::new(turn, &self.device)?, 0)?;
        let z = self.noise(b, &mut ctx.rng)?;

        let completion = self.complete_parts(&parts, &present, &z, true)?;
        let d = self.discriminator_terms(&x, &shuffled, &mask, &completion.image.detach())?;
        ctx.minimize("discriminator", &d[0])?;
        for (name, t) in [
            "d_loss",
            "d_real",
            "d_fake",
            "d_shuffled_parts",
            "d_shuffled_background",
        ]
        .iter()
        .zip(&d)
        {
            ctx.record(name, t)?;
        }
        if ctx.progress.step % self.cfg.g_every == self.cfg.g_every - 1 {
            let epoch = ctx.progress.step / ctx.progress.steps_per_epoch.max(1);
            let w = self.cfg.l1_weight(epoch);
            let completion = self.complete_parts(&parts, &present, &z, true)?;
            let g = self.generator_terms(&x, &mask, &completion, w)?;
            ctx.minimize("generator", &g[0])?;
            for (name, t) in ["g_loss", "g_adversarial", "g_mask_l1", "g_appearance_l1"]
                .iter()
                .zip(&g)
            {
                ctx.record(name, t)?;
            }
            if self.cfg.mask_dice_weight > 0.0 {
                ctx.record("g_mask_dice", &g[4])?;
            }
            if self.cfg.image_l1_weight > 0.0 {
                ctx.record("g_image_l1", &g[5])?;
            }
        }
        Ok(())
    }

    fn averaged(&self) -> Vec<String> {
        ["generator.", "part_encoder.", "mask_generator."]
            .map(String::from)
            .to_vec()
    }

    fn collapse_term(&self) -> Option<&str> {
        Some("d_real")
    }

    /// The discriminator: completion runs the part encoder, the mask and image generators.
    fn training_only(&self) -> Vec<String> {
        vec!["discriminator".to_string()]
    }

    fn headline_terms(&self) -> Vec<String> {
        ["d_loss", "g_loss", "g_mask_l1"].map(String::from).to_vec()
    }

    /// Rows of `count / 5` held-out images: their patches pasted on black, the generated
    /// mask, the generated image, the image with the patches placed, the real image.
    fn grid(&self, count: usize, rng: &mut Rng, held_out: Option<&Batch>) -> Result<Grid> {
        let Some(batch) = held_out else {
            candle_core::bail!("Puzzle-GAN's grid shows held-out images, and none were given");
        };
        let columns = (count / 5).clamp(1, 16).min(batch.size()?);
        let rows = self.rows(batch, columns, self.cfg.max_patches, rng, None)?;
        Ok(Grid {
            images: rows,
            columns,
        })
    }

    fn stage(&self, _progress: &StepProgress) -> u64 {
        0
    }
}

impl Puzzle for PuzzleGan {
    fn max_patches(&self) -> usize {
        self.cfg.max_patches
    }

    fn complete(&self, patches: &Patches, k: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        if k == 0 || k > self.cfg.max_patches {
            candle_core::bail!(
                "puzzle-gan completes from 1 to {} patches, asked for {k}",
                self.cfg.max_patches
            );
        }
        let counts = patches.counts(k);
        let parts = self.part_inputs(patches)?;
        let z = self.noise(counts.len(), rng)?;
        let done = self.complete_parts(&parts, &self.presence(&counts)?, &z, false)?;
        Ok((done.mask, to_unit_range(&done.image)?))
    }
}

impl GenerativeModel for PuzzleGan {
    fn image_shape(&self) -> ImageShape {
        let s = self.cfg.image_size;
        [self.cfg.channels, s, s]
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Implicit
    }

    fn values(&self) -> Values {
        Values::Intensities
    }

    fn sample(&self, _n: usize, _rng: &mut Rng) -> Result<Tensor> {
        candle_core::bail!(
            "puzzle-gan completes images from key patches rather than drawing them: `genzoo sample CKPT --mode puzzle --from-test N [--patches K]`"
        )
    }

    fn as_puzzle(&self) -> Option<&dyn Puzzle> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use candle_nn::VarMap;

    fn small() -> Config {
        Config {
            conv_dim: 4,
            part_embed_dim: 8,
            z_dim: 4,
            ..Config::default()
        }
    }

    fn build(cfg: &Config) -> Result<(PuzzleGan, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        Ok((PuzzleGan::new(cfg, vb)?, varmap))
    }

    fn patches(b: usize, k: usize, rng: &mut Rng) -> Result<Patches> {
        Ok(Patches {
            images: rng
                .uniform(b * k * 32 * 32, &Device::Cpu)?
                .reshape((b, k, 1, 32, 32))?,
            boxes: (0..b)
                .map(|i| (0..k).map(|p| [2 * p + i, 3 * p, 8, 10]).collect())
                .collect(),
        })
    }

    #[test]
    fn shapes_and_reference_names() -> Result<()> {
        let (m, varmap) = build(&small())?;
        let mut rng = Rng::new(0);
        let p = patches(2, 3, &mut rng)?;
        let (mask, image) = m.complete(&p, 3, &mut rng)?;
        assert_eq!(mask.dims(), &[2, 1, 32, 32]);
        assert_eq!(image.dims(), &[2, 1, 32, 32]);
        assert_eq!(m.discriminate(&to_tanh_range(&image)?, true)?.dims(), &[2]);
        let names = varmap.data().lock().unwrap();
        let shape = |n: &str| names.get(n).map(|v| v.as_tensor().dims().to_vec());
        // The reference at 32 x 32 with conv_dim 4: 3 levels; widths 4, 8, 16.
        assert_eq!(
            shape("part_encoder.model.0.0.weight"),
            Some(vec![4, 1, 5, 5])
        );
        assert_eq!(shape("part_encoder.model.1.1.0.running_var"), Some(vec![8]));
        assert_eq!(
            shape("part_encoder.model.3.0.weight"),
            Some(vec![8, 16, 4, 4])
        );
        assert_eq!(
            shape("mask_generator.model.0.weight"),
            Some(vec![8, 16, 4, 4])
        );
        assert_eq!(shape("mask_generator.model.1.0.weight"), Some(vec![16]));
        assert_eq!(
            shape("mask_generator.model.2.weight"),
            Some(vec![32, 8, 5, 5])
        );
        assert_eq!(
            shape("mask_generator.model.6.weight"),
            Some(vec![8, 1, 5, 5])
        );
        assert_eq!(shape("generator.model.0.weight"), Some(vec![12, 16, 4, 4]));
        assert_eq!(shape("generator.model.2.weight"), Some(vec![48, 8, 5, 5]));
        assert_eq!(shape("generator.model.6.weight"), Some(vec![12, 1, 5, 5]));
        assert_eq!(shape("discriminator.model.3.0.weight"), Some(vec![8]));
        assert_eq!(
            shape("discriminator.model.6.weight"),
            Some(vec![1, 16, 4, 4])
        );
        Ok(())
    }

    #[test]
    fn the_order_of_the_patches_does_not_matter_and_absent_ones_add_nothing() -> Result<()> {
        let (m, _) = build(&small())?;
        let mut rng = Rng::new(1);
        let p = patches(2, 3, &mut rng)?;
        let parts = to_tanh_range(&p.images)?;
        let all = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?;
        let z = m.noise(2, &mut rng)?;
        let a = m.complete_parts(&parts, &all, &z, false)?.image;
        let order = Tensor::new(&[2u32, 0, 1], &Device::Cpu)?;
        let b = m
            .complete_parts(&parts.index_select(&order, 1)?, &all, &z, false)?
            .image;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        // Two patches present: what the third slot holds changes nothing.
        let two = Tensor::new(&[[1f32, 1.0, 0.0], [1.0, 1.0, 0.0]], &Device::Cpu)?;
        let c = m.complete_parts(&parts, &two, &z, false)?.image;
        let other = Tensor::cat(&[parts.narrow(1, 0, 2)?, parts.narrow(1, 0, 1)?.neg()?], 1)?;
        let d = m.complete_parts(&other, &two, &z, false)?.image;
        assert_eq!((c - d)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn the_true_mask_is_the_union_of_the_first_boxes() -> Result<()> {
        let (m, _) = build(&small())?;
        let p = Patches {
            images: Tensor::zeros((1, 3, 1, 32, 32), DType::F32, &Device::Cpu)?,
            boxes: vec![vec![[0, 0, 4, 2], [2, 1, 2, 2], [30, 30, 8, 8]]],
        };
        let two = m.true_mask(&p, &[2])?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(two, 8.0 + 4.0 - 2.0);
        let three = m.true_mask(&p, &[3])?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(three, two + 4.0, "a box past the edge is cut");
        Ok(())
    }

    #[test]
    fn the_l1_weight_decays_log_linearly() {
        let cfg = Config::default();
        assert!((cfg.l1_weight(0) - 1e-2).abs() < 1e-12);
        assert!((cfg.l1_weight(12) - 1e-3).abs() < 1e-9);
        assert!((cfg.l1_weight(24) - 1e-4).abs() < 1e-12);
        assert_eq!(cfg.l1_weight(99), cfg.l1_weight(24));
    }

    /// Two real images, their true mask from their first `k` of 3 patches and one completion
    /// of them, to score G's terms on.
    struct GeneratorCase {
        x: Tensor,
        truth: Tensor,
        done: Completion,
    }

    impl GeneratorCase {
        fn new(m: &PuzzleGan, seed: u64, k: usize) -> Result<Self> {
            let mut rng = Rng::new(seed);
            let p = patches(2, 3, &mut rng)?;
            let x = rng
                .uniform(2 * 32 * 32, &Device::Cpu)?
                .reshape((2, 1, 32, 32))?;
            let counts = p.counts(k);
            let z = m.noise(2, &mut rng)?;
            Ok(Self {
                x: to_tanh_range(&x)?,
                truth: m.true_mask(&p, &counts)?,
                done: m.complete_parts(&m.part_inputs(&p)?, &m.presence(&counts)?, &z, false)?,
            })
        }

        /// G's terms with L1 weight `w`, as numbers.
        fn terms(&self, m: &PuzzleGan, w: f64) -> Result<Vec<f32>> {
            m.generator_terms(&self.x, &self.truth, &self.done, w)?
                .iter()
                .map(|t| t.to_scalar::<f32>())
                .collect()
        }
    }

    /// The weight scales G's adversarial term alone (one completion for both calls; D in
    /// training mode normalises by the batch's own statistics, so it scores it the same twice).
    #[test]
    fn the_adversarial_weight_scales_only_the_adversarial_term() -> Result<()> {
        let (mut m, _) = build(&small())?;
        let case = GeneratorCase::new(&m, 2, 3)?;
        let full = case.terms(&m, 0.5)?;
        m.cfg.adversarial_weight = 0.25;
        let quarter = case.terms(&m, 0.5)?;
        assert!(full[1] > 0.0);
        assert!(
            (quarter[1] - 0.25 * full[1]).abs() < 1e-6,
            "{quarter:?} {full:?}"
        );
        assert_eq!(quarter[2..], full[2..]);
        assert!((quarter[0] - (quarter[1] + quarter[2] + quarter[3])).abs() < 1e-6);
        Ok(())
    }

    /// Dice on hand-made masks, and its weight adds it to G's total and nothing else.
    #[test]
    fn the_mask_dice_term() -> Result<()> {
        let dev = Device::Cpu;
        let mask = |v: [f32; 4]| Tensor::from_vec(v.to_vec(), (1, 1, 2, 2), &dev);
        let truth = mask([1.0, 1.0, 0.0, 0.0])?;
        let dice = |a: &Tensor| soft_dice(a, &truth)?.to_scalar::<f32>();
        // Overlap 1 of sizes 1 + 2: 1 - 3 / 4.
        assert!((dice(&mask([1.0, 0.0, 0.0, 0.0])?)? - 0.25).abs() < 1e-6);
        assert!(dice(&truth)?.abs() < 1e-6);
        // A half-sure mask over the box scores worse than the box, better than the wrong half.
        let unsure = dice(&mask([0.5, 0.5, 0.0, 0.0])?)?;
        assert!(unsure > 0.0 && unsure < dice(&mask([0.0, 0.0, 1.0, 1.0])?)?);

        let (mut m, _) = build(&small())?;
        let case = GeneratorCase::new(&m, 3, 2)?;
        let without = case.terms(&m, 1.0)?;
        assert_eq!(without[4], 0.0);
        m.cfg.mask_dice_weight = 2.0;
        let with = case.terms(&m, 1.0)?;
        let expected = 2.0 * soft_dice(&case.done.mask, &case.truth)?.to_scalar::<f32>()?;
        assert!((with[4] - expected).abs() < 1e-6 && expected > 0.0);
        assert!((with[0] - without[0] - expected).abs() < 1e-5);
        assert_eq!(with[1..4], without[1..4]);
        Ok(())
    }

    /// The whole image's L1 term is `mean |y - x|` times its weight, off by default, and adds
    /// to G's total and nothing else.
    #[test]
    fn the_whole_image_l1_term() -> Result<()> {
        let (mut m, _) = build(&small())?;
        let case = GeneratorCase::new(&m, 4, 3)?;
        let without = case.terms(&m, 1.0)?;
        assert_eq!(without[5], 0.0);
        m.cfg.image_l1_weight = 3.0;
        let with = case.terms(&m, 1.0)?;
        let y = case.done.image.flatten_all()?.to_vec1::<f32>()?;
        let x = case.x.flatten_all()?.to_vec1::<f32>()?;
        let mean = y.iter().zip(&x).map(|(a, b)| (a - b).abs()).sum::<f32>() / y.len() as f32;
        assert!(
            (with[5] - 3.0 * mean).abs() < 1e-5 && mean > 0.0,
            "{with:?} {mean}"
        );
        assert!((with[0] - without[0] - with[5]).abs() < 1e-5);
        assert_eq!(with[1..5], without[1..5]);
        Ok(())
    }

    #[test]
    fn bad_configs_and_inputs_are_refused() -> Result<()> {
        for cfg in [
            Config {
                image_size: 24,
                ..small()
            },
            Config {
                max_patches: 0,
                ..small()
            },
            Config {
                l1_weight_end: 0.0,
                ..small()
            },
            Config {
                g_every: 0,
                ..small()
            },
            Config {
                adversarial_weight: -1.0,
                ..small()
            },
            Config {
                adversarial_weight: f64::NAN,
                ..small()
            },
            Config {
                mask_dice_weight: -0.5,
                ..small()
            },
            Config {
                image_l1_weight: -1.0,
                ..small()
            },
        ] {
            assert!(build(&cfg).is_err(), "{cfg:?}");
        }
        let (m, _) = build(&small())?;
        let mut rng = Rng::new(0);
        let p = patches(1, 2, &mut rng)?;
        let e = m.complete(&p, 2, &mut rng).unwrap_err().to_string();
        assert!(e.contains("3 patch slots") && e.contains("holds 2"), "{e}");
        let p = patches(1, 3, &mut rng)?;
        assert!(m.complete(&p, 4, &mut rng).is_err());
        assert!(m
            .sample(1, &mut rng)
            .unwrap_err()
            .to_string()
            .contains("--mode puzzle"));
        Ok(())
    }
}
