//! The run configuration: which model, its own `Config` (the `[model_config]` table), how to
//! train it (`[train]`, `[gan]`) and on what (`[data]`). Written to every run directory as `config.toml` and into
//! every checkpoint as JSON, so `sample` and `eval` need nothing else.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::transforms::Pipeline;
use crate::data::Binarization;
use layers::gan::{AdversarialSettings, GanLoss};
use layers::train::schedule::Schedule;
use layers::ModelKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub binarize: Binarization,
    /// Use only the first N training images (0 = all).
    pub limit: usize,
    /// Stop (with a checkpoint) after this many optimiser steps in all (0 = no limit).
    pub max_steps: u64,
    /// Keep an `epoch-N.safetensors` checkpoint every N epochs (0 = only `last.safetensors`).
    pub checkpoint_every: u64,
    /// Images in the per-epoch sample grid.
    pub sample_count: usize,
    /// Log a JSONL line every N steps.
    pub log_every: u64,
    /// The learning rates' schedule: "constant", or "linear" decay to zero from epoch
    /// `decay_start` to the end (CycleGAN and StarGAN).
    pub schedule: Schedule,
    /// The epoch (0-based) from which a linear schedule decays.
    pub decay_start: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            weight_decay: 0.0,
            seed: 0,
            binarize: Binarization::Threshold,
            limit: 0,
            max_steps: 0,
            checkpoint_every: 10,
            sample_count: 64,
            log_every: 10,
            schedule: Schedule::Constant,
            decay_start: 0,
        }
    }
}

impl TrainConfig {
    /// The defaults of `model`'s kind: implicit models (GANs) train as in DCGAN's paper (Adam
    /// 2e-4, beta1 0.5, batch 64) on intensities, the Progressive GAN as in its paper (Adam
    /// 1e-3, betas (0, 0.99)) for long enough to reach its last stage with its default phases;
    /// the rest with [`TrainConfig::default`].
    pub fn defaults_for(model: &str) -> Self {
        let implicit = crate::registry::find(model).is_ok_and(|m| m.kind == ModelKind::Implicit);
        if model == "progan" {
            Self {
                epochs: 40,
                lr: 1e-3,
                beta1: 0.0,
                beta2: 0.99,
                ..Self::defaults_for("dcgan")
            }
        } else if model == "text2image-gan" || model == "puzzle-gan" {
            // Past the text encoder's stage to the GAN; the reference's 25 epochs of L1 decay.
            Self {
                epochs: if model == "puzzle-gan" { 25 } else { 40 },
                ..Self::defaults_for("dcgan")
            }
        } else if implicit {
            Self {
                epochs: 5,
                batch_size: 64,
                lr: 2e-4,
                beta1: 0.5,
                binarize: Binarization::None,
                checkpoint_every: 0,
                ..Self::default()
            }
        } else {
            Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.batch_size > 0, "train.batch_size must be positive");
        anyhow::ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "train.lr must be positive, found {}",
            self.lr
        );
        anyhow::ensure!(self.log_every > 0, "train.log_every must be positive");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.beta1) && (0.0..1.0).contains(&self.beta2),
            "train.beta1 and train.beta2 must be in [0, 1)"
        );
        anyhow::ensure!(
            self.schedule == Schedule::Constant || self.decay_start < self.epochs,
            "train.decay_start ({}) must be below train.epochs ({}) for a linear schedule",
            self.decay_start,
            self.epochs
        );
        Ok(())
    }

    /// The step from which a linear schedule decays. Saturating: a run file may ask for more
    /// epochs than steps can count, which is a run that does not end, not an overflow.
    pub fn decay_start_step(&self, steps_per_epoch: u64) -> u64 {
        self.decay_start.saturating_mul(steps_per_epoch)
    }

    /// Steps the run takes in all: its epochs (saturating, as above), cut short by
    /// `max_steps`.
    pub fn total_steps(&self, steps_per_epoch: u64) -> u64 {
        let all = self.epochs.saturating_mul(steps_per_epoch);
        if self.max_steps > 0 {
            all.min(self.max_steps)
        } else {
            all
        }
    }

    pub fn adam(&self) -> layers::AdamConfig {
        layers::AdamConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            ..Default::default()
        }
    }
}

/// Adversarial training (GANs only): `[gan]` in a run file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GanConfig {
    /// minimax, non-saturating, lsgan, hinge or wgan-gp.
    pub loss: GanLoss,
    /// Discriminator steps per generator step.
    pub d_steps: usize,
    /// The generator's learning rate (and its auxiliary head's); 0 means `train.lr`, which the
    /// discriminator always uses. InfoGAN's paper trains G at 1e-3 and D at 2e-4.
    pub g_lr: f64,
    /// Weight of WGAN-GP's gradient penalty.
    pub gp_weight: f64,
    /// Decay of the generator's weight average that samples are drawn with (0: none).
    pub ema_decay: f64,
    /// Stop when the discriminator's loss stays below `collapse_loss` for this many
    /// consecutive steps (0: never).
    pub collapse_steps: u64,
    pub collapse_loss: f64,
}

impl Default for GanConfig {
    fn default() -> Self {
        Self {
            loss: GanLoss::NonSaturating,
            d_steps: 1,
            g_lr: 0.0,
            gp_weight: 10.0,
            ema_decay: 0.999,
            collapse_steps: 500,
            collapse_loss: 1e-4,
        }
    }
}

impl GanConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.d_steps > 0, "gan.d_steps must be positive");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.ema_decay),
            "gan.ema_decay must be in [0, 1), found {}",
            self.ema_decay
        );
        anyhow::ensure!(self.gp_weight >= 0.0, "gan.gp_weight must not be negative");
        anyhow::ensure!(
            self.g_lr >= 0.0 && self.g_lr.is_finite(),
            "gan.g_lr must be 0 (use train.lr) or positive, found {}",
            self.g_lr
        );
        Ok(())
    }

    /// The generator's Adam settings: `train`'s, with `g_lr` when it is set.
    pub fn generator_adam(&self, train: &TrainConfig) -> layers::AdamConfig {
        let mut adam = train.adam();
        if self.g_lr > 0.0 {
            adam.lr = self.g_lr;
        }
        adam
    }

    /// What a one-generator GAN's step reads.
    pub fn adversarial(&self) -> AdversarialSettings {
        AdversarialSettings {
            loss: self.loss,
            d_steps: self.d_steps,
            gp_weight: self.gp_weight,
        }
    }
}

/// Where a run's images come from and what is done to them: `[data]` in a run file. Without
/// it, a model trains on the bundled digits (or `--data`), padded to its size.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Transforms of every image, in order (`[{ pad = 2 }, "rgb"]`).
    pub transforms: Pipeline,
    /// Channels of an image folder's images: 1 or 3 (0: 3 if any image has colour, else 1).
    pub channels: usize,
    /// The side image folders are resized (shorter side) and centre-cropped to before the
    /// transforms, as junyanz's `--load_size` (0: the model's size; larger for a random crop).
    pub load_size: usize,
    /// Two synthetic domains of the digits for translation models: each domain's transforms.
    /// Domain A trains on the even-numbered training digits and B on the odd ones, so no image
    /// meets its own translation; both are measured on every test digit.
    pub domain_a: Option<Pipeline>,
    pub domain_b: Option<Pipeline>,
    /// Synthetic binary attributes of the digits (StarGAN): each drawn at random per image
    /// (from `seed`), its transforms applied in this order when it is on.
    pub attributes: Vec<SyntheticAttribute>,
    /// A CelebA-style attribute file (`list_attr_celeba.txt`) naming images under `--data`
    /// (default: `list_attr_celeba.txt` in `--data`, when `attrs` is given).
    pub attribute_file: Option<PathBuf>,
    /// The attribute file's columns to train on, in order (`--attrs`).
    pub attrs: Vec<String>,
    /// Images held out from an attribute file for testing (yunjey/stargan holds out 2,000).
    pub test_count: usize,
    /// Seed of the synthetic attributes and of an attribute file's split (fixed per dataset,
    /// not per run, so every run and every evaluation sees the same data).
    pub seed: u64,
    /// Image folders whose decoded images would take more than this many MiB are read from
    /// disk batch by batch, decoded on worker threads.
    pub memory_limit_mib: usize,
    /// Captioned digits: (digit, trait bin) combinations left out of training (`"7:thick"`,
    /// `"3:left"`, `"0:small"`), to measure how the model composes what it has not seen.
    pub hold_out: Vec<String>,
    /// Captioned digits: sentences written per digit (0: 5).
    pub captions_per_image: usize,
    /// A JSONL captions file (`{"image": path, "caption": text}` per line; default:
    /// `captions.jsonl` in `--data`, else reedscot's `images/` and `text_c10/` there).
    pub captions_file: Option<PathBuf>,
    /// Puzzle-GAN: the side of the key patches chosen from the ink (0: 5/16 of the image's side,
    /// 10 at 32 x 32).
    pub patch_size: usize,
    /// Puzzle-GAN on a user's images: a boxes file (`NAME x,y,w,h ...` per line, in pixels of
    /// the model's side; default: `boxes.txt` in `--data` if there is one, else the boxes are
    /// chosen from the ink).
    pub boxes_file: Option<PathBuf>,
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        self.transforms.validate()?;
        for p in [&self.domain_a, &self.domain_b].into_iter().flatten() {
            p.validate()?;
        }
        anyhow::ensure!(
            self.domain_a.is_some() == self.domain_b.is_some(),
            "[data] domain_a and domain_b come together: one without the other names one domain"
        );
        for a in &self.attributes {
            a.transforms.validate()?;
        }
        anyhow::ensure!(
            self.attributes.is_empty() || self.attrs.is_empty(),
            "[data] has both synthetic attributes and attrs of an attribute file; choose one"
        );
        for h in &self.hold_out {
            crate::data::captions::Combination::parse(h)?;
        }
        anyhow::ensure!(
            self.channels == 0 || self.channels == 1 || self.channels == 3,
            "[data] channels must be 1, 3 or 0 (from the images), found {}",
            self.channels
        );
        Ok(())
    }

    /// The test images an attribute file holds out.
    pub fn held_out(&self) -> usize {
        if self.test_count == 0 {
            2000
        } else {
            self.test_count
        }
    }

    /// The held-out combinations of the captioned digits.
    pub fn held_out_combinations(&self) -> Result<Vec<crate::data::captions::Combination>> {
        self.hold_out
            .iter()
            .map(|h| crate::data::captions::Combination::parse(h))
            .collect()
    }

    /// The side of the key patches of images of side `side`.
    pub fn patch_size(&self, side: usize) -> usize {
        match self.patch_size {
            0 => (side * 5).div_ceil(16),
            n => n,
        }
    }

    pub fn captions_per_image(&self) -> usize {
        match self.captions_per_image {
            0 => 5,
            n => n,
        }
    }

    pub fn memory_limit(&self) -> usize {
        if self.memory_limit_mib == 0 {
            2048
        } else {
            self.memory_limit_mib
        }
    }
}

/// One synthetic attribute: its name and what it does to an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticAttribute {
    pub name: String,
    pub transforms: Pipeline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: String,
    #[serde(default)]
    pub train: TrainConfig,
    /// Adversarial training settings (GANs only).
    #[serde(default)]
    pub gan: GanConfig,
    /// Where the images come from and their transforms.
    #[serde(default)]
    pub data: DataConfig,
    /// The model's own `Config`, checked by the model's deserialiser.
    #[serde(default = "empty_table")]
    pub model_config: toml::Table,
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

/// The TOML file as users write it: `model = "..."`, `[train]`, `[model_config]`; the model
/// may instead be named on the command line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunFile {
    model: Option<String>,
    /// Laid over the model family's defaults.
    #[serde(default = "empty_table")]
    train: toml::Table,
    #[serde(default)]
    gan: GanConfig,
    #[serde(default)]
    data: DataConfig,
    #[serde(default = "empty_table")]
    model_config: toml::Table,
}

impl RunConfig {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            train: TrainConfig::defaults_for(model),
            gan: GanConfig::default(),
            data: DataConfig::default(),
            model_config: toml::Table::new(),
        }
    }

    /// Reads a run file. A model named on the command line must agree with the file's.
    pub fn from_file(path: &Path, model: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let file: RunFile =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let model = match (model, file.model.as_deref()) {
            (Some(cli), Some(f)) if cli != f => anyhow::bail!(
                "{} is a config for model `{f}`, but `{cli}` was asked for",
                path.display()
            ),
            (Some(m), _) | (None, Some(m)) => m.to_string(),
            (None, None) => anyhow::bail!(
                "{} names no model: add `model = \"vae\"` (say) or name it on the command line",
                path.display()
            ),
        };
        let mut train = toml::Table::try_from(TrainConfig::defaults_for(&model))?;
        train.extend(file.train);
        let train: TrainConfig = toml::Value::Table(train)
            .try_into()
            .with_context(|| format!("invalid [train] in {}", path.display()))?;
        file.data
            .validate()
            .with_context(|| format!("invalid [data] in {}", path.display()))?;
        Ok(Self {
            model,
            train,
            gan: file.gan,
            data: file.data,
            model_config: file.model_config,
        })
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epochs past what steps can count (found by tests/fuzz_loaders.rs: the product
    /// overflowed, a panic) make a run of as many steps as a u64 holds.
    #[test]
    fn huge_epoch_counts_saturate_the_step_counts() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("run.toml");
        let text = "model = \"vae\"\n[train]\nepochs = 9223372036854775807\ndecay_start = 9223372036854775806\nschedule = \"linear\"\n";
        std::fs::write(&path, text)?;
        let run = RunConfig::from_file(&path, None)?;
        run.train.validate()?;
        assert_eq!(run.train.total_steps(1000), u64::MAX);
        assert_eq!(run.train.decay_start_step(1000), u64::MAX);
        Ok(())
    }

    #[test]
    fn reads_model_train_and_model_tables() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "model = \"vae\"\n[train]\nepochs = 3\n[model_config]\nlatent_dim = 2\n",
        )?;
        let c = RunConfig::from_file(&p, None)?;
        assert_eq!(c.model, "vae");
        assert_eq!(c.train.epochs, 3);
        assert_eq!(c.train.batch_size, 128);
        let v: vae::Config = crate::registry::model_config(&c.model_config, "vae")?;
        assert_eq!(v.latent_dim, 2);
        // JSON round trip as stored in checkpoints.
        assert_eq!(RunConfig::from_json(&c.to_json()?)?, c);
        Ok(())
    }

    #[test]
    fn unknown_keys_and_conflicting_models_are_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "model = \"vae\"\n[train]\nepoks = 3\n")?;
        let e = format!("{:#}", RunConfig::from_file(&p, None).unwrap_err());
        assert!(
            e.contains("c.toml") && e.contains("unknown field `epoks`"),
            "{e}"
        );
        std::fs::write(&p, "model = \"vae\"\n[model_config]\nlatnt_dim = 3\n")?;
        let c = RunConfig::from_file(&p, None)?;
        let e = format!(
            "{:#}",
            crate::registry::model_config::<vae::Config>(&c.model_config, "vae").unwrap_err()
        );
        assert!(e.contains("unknown field `latnt_dim`"), "{e}");
        std::fs::write(&p, "model = \"vae\"\n")?;
        let e = format!("{:#}", RunConfig::from_file(&p, Some("nade")).unwrap_err());
        assert!(e.contains("config for model `vae`"), "{e}");
        Ok(())
    }

    #[test]
    fn generator_learning_rate_defaults_to_the_shared_one() -> Result<()> {
        let train = TrainConfig::defaults_for("infogan");
        let mut gan = GanConfig::default();
        assert_eq!(gan.generator_adam(&train).lr, train.lr);
        gan.g_lr = 1e-3;
        assert_eq!(gan.generator_adam(&train).lr, 1e-3);
        assert_eq!(train.adam().lr, 2e-4);
        gan.g_lr = -1.0;
        let e = format!("{:#}", gan.validate().unwrap_err());
        assert!(e.contains("gan.g_lr") && e.contains("-1"), "{e}");
        Ok(())
    }

    /// `genzoo train progan` with no run file trains with the paper's Adam and long enough for
    /// the default phases to reach the last stage on the bundled 8,006 digits.
    #[test]
    fn the_progressive_gan_defaults_reach_its_last_stage() {
        let train = TrainConfig::defaults_for("progan");
        assert_eq!((train.lr, train.beta1, train.beta2), (1e-3, 0.0, 0.99));
        let images = train.epochs * (8006 / train.batch_size as u64 * train.batch_size as u64);
        let model = gan_variants::progan::Config::default();
        assert!(
            images > model.images_to_final_stage(),
            "{images} images, {} to reach the last stage",
            model.images_to_final_stage()
        );
    }

    /// `genzoo train text2image-gan` with no run file goes past the encoder's stage and trains
    /// the GAN for at least as long again; `puzzle-gan` runs the reference's 25 epochs.
    #[test]
    fn text2image_and_puzzle_defaults_reach_their_gans() {
        let train = TrainConfig::defaults_for("text2image-gan");
        let images = train.epochs * 8006;
        let encoder = gan_variants::text2image::Config::default().encoder_images;
        assert!(
            images > 2 * encoder,
            "{images} images, {encoder} for the encoder"
        );
        assert_eq!(TrainConfig::defaults_for("puzzle-gan").epochs, 25);
        assert_eq!(TrainConfig::defaults_for("puzzle-gan").lr, 2e-4);
    }
}
