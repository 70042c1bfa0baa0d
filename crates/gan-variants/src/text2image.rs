//! Text-to-image GAN (Reed et al. 2016, "Generative Adversarial Text to Image Synthesis"):
//! GAN-CLS and GAN-INT, with aelnouby/Text-to-Image-Synthesis' networks and names
//! (`models/gan_cls.py`, `utils.py`'s `Concat_embed`).
//!
//! Training has two stages, as the paper's: the text encoder first learns a joint embedding
//! with images, then it is frozen and the GAN learns from its embeddings.
//!
//! 1. Text encoder: a character-level convolutional encoder `phi(t)` (the paper's char-CNN-RNN
//!    without the recurrent layer) and an image encoder `theta(v)`, trained with the deep
//!    symmetric structured joint embedding (Reed et al. 2016b): with compatibility
//!    `F(v, t) = theta(v) . phi(t)` (both unit vectors here) and margin `Delta`,
//!    `L = mean_{n != m} ([Delta + F(v_m, t_n) - F(v_n, t_n)]_+ + [Delta + F(v_n, t_m) -
//!    F(v_n, t_n)]_+)` over the batch's pairs (the paper takes the maximum over the negatives;
//!    see [`joint_embedding_loss`] for why the mean). Each image is its own
//!    class here (the batch holds no finer labels than the digit, and the captions describe
//!    more than the digit): a pair whose captions are the very same sentence is never a
//!    negative. The paper's image features come from a fixed GoogLeNet; this image encoder is
//!    a small convolutional network trained with the text encoder, used for nothing else.
//! 2. GAN on the frozen embedding `e = phi(t)`:
//!    - G: `[projection(e) (128), z (noise_dim)]` as a `1 x 1` map -> pytorch/examples' DCGAN
//!      generator (`netG`), `projection` = Linear, BatchNorm1d, LeakyReLU 0.2;
//!    - D: DCGAN's discriminator trunk to `4 x 4` (`netD_1`), the projected embedding tiled
//!      over the `4 x 4` map and concatenated (`projector`), reedscot's `1 x 1` joint layer
//!      (see [`Config::joint_layer`]; aelnouby's port has none) and a `4 x 4` convolution to
//!      one logit (`netD_2`; the reference ends in a sigmoid and BCE, equal to BCE with
//!      logits);
//!    - GAN-CLS, the matching-aware discriminator: `L_D = BCE(D(x, e), 1) + 1/2 BCE(D(x,
//!      e_wrong), 0) + 1/2 BCE(D(G(z, e), e), 0)`, `e_wrong` the embedding of another image's
//!      caption (of another digit, where the batch has classes); without it, `L_D = BCE(D(x,
//!      e), 1) + BCE(D(G(z, e), e), 0)`;
//!    - GAN-INT: G also learns from interpolated embeddings `beta e_1 + (1 - beta) e_2`
//!      (`beta = 0.5`), which D never sees with a real image: `L_G = BCE(D(G(z, e), e), 1)`
//!      over the batch's embeddings and as many interpolations;
//!    - Adam 2e-4 (0.5, 0.999) for both, D then G each step (the run file).
//!
//! Weights N(0, 0.02), BatchNorm scales N(1, 0.02) (the reference's `weights_init`); the
//! projections keep PyTorch's default init. Variables `generator.{projection.{0,1},
//! netG.i}`, `discriminator.{netD_1.i, projector.projection.{0,1}, netD_2.0}`, the reference
//! state dicts' keys under each network's prefix; `text_encoder.*` and `image_encoder.*` are
//! this file's own. The encoder's vocabulary (its alphabet) is in the config, so in every
//! checkpoint; the words seen in training and a bank of training captions (for `sample`
//! without a caption) are training state.

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use layers::gan::{target_loss, to_tanh_range, to_unit_range, GanLoss};
use layers::kernels::linear::Linear;
use layers::model::Captioned;
use layers::nn::sequential::{Layer, Sequential, Stack};
use layers::step::{
    Batch, DataSpec, Grid, LabelSpec, LrRole, OptimizerSpec, StepContext, StepProgress,
};
use layers::{GenerativeModel, ImageShape, ModelKind, Rng, Trainable, Values};
use serde::{Deserialize, Serialize};

use crate::dcgan::{discriminator_trunk, generator_stack, spec, NORM_INIT, WEIGHT_INIT};

/// The 70 characters of Reed et al.'s char-CNN-RNN (space included); captions are lowercased.
pub const REED_ALPHABET: &str =
    "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} ";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// 32 or 64 (a power of two from 8).
    pub image_size: usize,
    pub channels: usize,
    pub noise_dim: usize,
    /// The text embedding's size (the reference reads 1024-dimensional char-CNN-RNN vectors).
    pub embed_dim: usize,
    /// The paper's 128-dimensional projection of the embedding into G and D.
    pub projected_embed_dim: usize,
    pub ngf: usize,
    pub ndf: usize,
    /// The encoder's characters; any other character in a caption is an error.
    pub alphabet: String,
    /// Captions are cut (and padded with spaces) to this many characters.
    pub max_caption_chars: usize,
    pub char_dim: usize,
    /// Feature maps of the text encoder's two width-3 convolutions.
    pub encoder_width: usize,
    /// Training images of the joint-embedding stage, before the GAN trains (0: the encoder
    /// stays as initialised, for tests of the GAN alone).
    pub encoder_images: u64,
    /// The joint embedding's margin `Delta` (on cosine compatibilities).
    pub margin: f64,
    /// Adam's rate for the encoders (betas 0.9, 0.999): the run's rate is the GAN's.
    pub encoder_lr: f64,
    /// GAN-CLS's wrong-caption term.
    pub matching_aware: bool,
    /// GAN-INT's interpolated embeddings in G's batch.
    pub interpolation: bool,
    /// `beta` of the interpolations.
    pub interpolation_beta: f64,
    /// Classes of the images (10 for digits): a wrong caption is one of another class. 0: the
    /// data has no classes, and a wrong caption is another image's.
    pub classes: usize,
    /// reedscot's joint layer in D (a 1 x 1 convolution, BatchNorm and LeakyReLU over the image
    /// maps joined with the tiled text, `netD_2.{0,1}`, before the 4 x 4 convolution,
    /// `netD_2.3`). aelnouby's port leaves it out (`false`: its `netD_2.0`), which makes D's
    /// logit a sum of an image term and a text term: D cannot then tell a right caption from a
    /// wrong one for the same image, and G learns to ignore the text (measured on the digits:
    /// the caption's digit at chance, 10.1%, and the wrong-caption term above ln 2 throughout).
    pub joint_layer: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 32,
            channels: 1,
            noise_dim: 100,
            embed_dim: 256,
            projected_embed_dim: 128,
            ngf: 64,
            ndf: 64,
            alphabet: REED_ALPHABET.to_string(),
            max_caption_chars: 80,
            char_dim: 32,
            encoder_width: 256,
            encoder_images: 96_000,
            margin: 0.2,
            encoder_lr: 1e-3,
            matching_aware: true,
            interpolation: true,
            interpolation_beta: 0.5,
            classes: 10,
            joint_layer: true,
        }
    }
}

impl Config {
    /// Stride-2 stages of G and D: `log2(size) - 2`.
    fn stages(&self) -> Result<usize> {
        let s = self.image_size;
        if s < 8 || !s.is_power_of_two() {
            candle_core::bail!(
                "text2image-gan image_size must be a power of two of at least 8, got {s}"
            );
        }
        Ok(s.trailing_zeros() as usize - 2)
    }

    fn validate(&self) -> Result<()> {
        self.stages()?;
        let positive = [
            ("channels", self.channels),
            ("noise_dim", self.noise_dim),
            ("embed_dim", self.embed_dim),
            ("projected_embed_dim", self.projected_embed_dim),
            ("ngf", self.ngf),
            ("ndf", self.ndf),
            ("char_dim", self.char_dim),
            ("encoder_width", self.encoder_width),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            candle_core::bail!("text2image-gan {name} must be positive");
        }
        if self.max_caption_chars < 5 {
            candle_core::bail!(
                "text2image-gan max_caption_chars must be at least 5 (two width-3 convolutions), got {}",
                self.max_caption_chars
            );
        }
        if !self.alphabet.contains(' ') {
            candle_core::bail!(
                "text2image-gan alphabet must hold the space (captions are padded with it)"
            );
        }
        if !(0.0..=1.0).contains(&self.interpolation_beta) {
            candle_core::bail!(
                "text2image-gan interpolation_beta must lie in [0, 1], got {}",
                self.interpolation_beta
            );
        }
        Ok(())
    }
}

const EPS: f64 = 1e-5;

/// How many training captions are kept for `sample` without a caption and for the grids.
const CAPTION_BANK: usize = 512;

/// `Linear, BatchNorm1d, LeakyReLU(0.2)` from the embedding to its projection (G's
/// `projection`, D's `projector.projection`).
fn projection(cfg: &Config, vb: VarBuilder) -> Result<Stack> {
    Ok(Sequential::new(vb)
        .linear(cfg.embed_dim, cfg.projected_embed_dim)?
        .batch_norm(cfg.projected_embed_dim, EPS, None)?
        .push(Layer::LeakyRelu(0.2))
        .build())
}

/// `(b, d) -> (b, d)`, each row of unit length.
fn unit_rows(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// Characters to embedding: width-3 convolutions over the characters (as windows through a
/// linear layer), ReLU, the maximum over positions, a linear layer, unit length.
struct TextEncoder {
    embedding: Embedding,
    convs: Vec<Linear>,
    projection: Linear,
    alphabet: Vec<char>,
    length: usize,
}

impl TextEncoder {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let alphabet: Vec<char> = cfg.alphabet.chars().collect();
        let table = vb.pp("embedding").get_with_hints(
            (alphabet.len(), cfg.char_dim),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let w = cfg.encoder_width;
        let convs = vec![
            layers::nn::init::linear(3 * cfg.char_dim, w, vb.pp("conv1"))?,
            layers::nn::init::linear(3 * w, w, vb.pp("conv2"))?,
        ];
        Ok(Self {
            embedding: Embedding::new(table, cfg.char_dim),
            convs,
            projection: layers::nn::init::linear(w, cfg.embed_dim, vb.pp("projection"))?,
            alphabet,
            length: cfg.max_caption_chars,
        })
    }

    /// The character indices of `captions`, `(b, length)` u32: lowercased, cut, padded with
    /// spaces. A character outside the alphabet is an error naming it.
    fn indices(&self, captions: &[String], device: &Device) -> Result<Tensor> {
        let space = self.alphabet.iter().position(|&c| c == ' ').unwrap_or(0) as u32;
        let mut ids = Vec::with_capacity(captions.len() * self.length);
        for caption in captions {
            let mut row: Vec<u32> = Vec::with_capacity(self.length);
            for ch in caption.to_lowercase().chars().take(self.length) {
                let Some(i) = self.alphabet.iter().position(|&a| a == ch) else {
                    candle_core::bail!(
                        "caption {caption:?}: character {ch:?} is not in the model's alphabet ({:?})",
                        self.alphabet.iter().collect::<String>()
                    );
                };
                row.push(i as u32);
            }
            row.resize(self.length, space);
            ids.extend(row);
        }
        Tensor::from_vec(ids, (captions.len(), self.length), device)
    }

    /// `(b, length)` indices -> `(b, embed_dim)` unit vectors.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embedding.forward(ids)?; // (b, L, char_dim)
        for conv in &self.convs {
            let (b, l, d) = x.dims3()?;
            // Width-3 windows: (b, L - 2, 3 d), through the layer as rows of a matrix.
            let windows = Tensor::cat(
                &[
                    x.narrow(1, 0, l - 2)?,
                    x.narrow(1, 1, l - 2)?,
                    x.narrow(1, 2, l - 2)?,
                ],
                2,
            )?;
            let y = conv
                .forward(&windows.reshape((b * (l - 2), 3 * d))?)?
                .relu()?;
            x = y.reshape((b, l - 2, ()))?;
        }
        unit_rows(&self.projection.forward(&x.max(1)?)?) // (b, embed_dim)
    }
}

/// Images to the joint embedding: DCGAN-style stride-2 convolutions to `4 x 4`, a linear layer,
/// unit length.
struct ImageEncoder {
    trunk: Stack,
    projection: Linear,
}

impl ImageEncoder {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let k = cfg.stages()?;
        let mut seq = Sequential::new(vb.pp("main"));
        let (mut c, mut o) = (cfg.channels, 32);
        for _ in 0..k {
            seq = seq
                .conv((c, o, 4), spec(2, 1), true, None)?
                .push(Layer::LeakyRelu(0.2));
            (c, o) = (o, o * 2);
        }
        Ok(Self {
            trunk: seq.build(),
            projection: layers::nn::init::linear(c * 16, cfg.embed_dim, vb.pp("projection"))?,
        })
    }

    /// `(b, c, h, w)` in [-1, 1] -> `(b, embed_dim)` unit vectors.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.trunk.forward(x, true)?.flatten_from(1)?;
        unit_rows(&self.projection.forward(&h)?)
    }
}

/// The symmetric structured hinge of the joint embedding, and the share of captions whose own
/// image is the most compatible in the batch (top-1 retrieval).
///
/// `text`, `image`: `(b, d)` unit rows; `same[i][j]`: pair `(i, j)` is no negative. Each
/// caption's hinge against every other image, and each image's against every other caption,
/// averaged over the negatives: the paper's maximum over the negatives, trained from scratch,
/// left every embedding at one point (loss stuck at `2 Delta`, top-1 at chance over the first
/// 200 steps of the digits' run), as VSE++ reports of the hardest negative without a
/// pretrained encoder.
fn joint_embedding_loss(
    text: &Tensor,
    image: &Tensor,
    same: &[Vec<bool>],
    margin: f64,
) -> Result<(Tensor, f64)> {
    let b = text.dim(0)?;
    let scores = text.matmul(&image.t()?)?; // (b, b): F(v_j, t_i) at (i, j)
    let eye = Tensor::eye(b, DType::F32, text.device())?;
    let own = (&scores * eye)?.sum(1)?; // (b): F(v_i, t_i)
    let negatives: Vec<f32> = (0..b * b)
        .map(|k| f32::from(!(same[k / b][k % b] || k / b == k % b)))
        .collect();
    let count = negatives.iter().sum::<f32>().max(1.0) as f64;
    let negatives = Tensor::from_vec(negatives, (b, b), text.device())?;
    // [Delta + F(v_j, t_i) - F(v_i, t_i)]_+ and [Delta + F(v_i, t_j) - F(v_i, t_i)]_+ at (i, j).
    let for_text = ((scores.broadcast_sub(&own.unsqueeze(1)?)? + margin)?.relu()? * &negatives)?;
    let for_image = ((scores.broadcast_sub(&own.unsqueeze(0)?)? + margin)?.relu()? * &negatives)?;
    let loss = ((for_text.sum_all()? + for_image.sum_all()?)? / count)?;
    let best = scores.argmax(1)?.to_vec1::<u32>()?;
    let top1 = best
        .iter()
        .enumerate()
        .filter(|(i, &j)| *i as u32 == j || same[*i][j as usize])
        .count();
    Ok((loss, top1 as f64 / b.max(1) as f64))
}

pub struct TextToImageGan {
    cfg: Config,
    text_encoder: TextEncoder,
    image_encoder: ImageEncoder,
    g_projection: Stack,
    net_g: Stack,
    net_d1: Stack,
    d_projection: Stack,
    net_d2: Stack,
    /// Words of the training captions: a caption with none of them is refused.
    words: BTreeSet<String>,
    /// Distinct training captions, the first [`CAPTION_BANK`] seen.
    bank: Vec<String>,
    device: Device,
}

impl TextToImageGan {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let k = cfg.stages()?;
        let (g, d) = (vb.pp("generator"), vb.pp("discriminator"));
        // pytorch/examples' DCGAN networks, as the reference builds them.
        let latent = cfg.projected_embed_dim + cfg.noise_dim;
        let net_g = generator_stack(latent, (cfg.ngf, cfg.channels), k, g.pp("netG"))?;
        let (trunk, ch) = discriminator_trunk(cfg.channels, cfg.ndf, k, d.pp("netD_1"))?;
        let net_d1 = trunk.build();
        let joined = ch + cfg.projected_embed_dim;
        let net_d2 = match cfg.joint_layer {
            // reedscot's D: a 1 x 1 convolution over the joined maps (BatchNorm, LeakyReLU)
            // before the 4 x 4 one, so the logit can depend on image and text together.
            true => Sequential::new(d.pp("netD_2"))
                .conv((joined, ch, 1), spec(1, 0), false, Some(WEIGHT_INIT))?
                .batch_norm(ch, EPS, NORM_INIT)?
                .push(Layer::LeakyRelu(0.2))
                .conv((ch, 1, 4), spec(1, 0), false, Some(WEIGHT_INIT))?
                .build(),
            false => Sequential::new(d.pp("netD_2"))
                .conv((joined, 1, 4), spec(1, 0), false, Some(WEIGHT_INIT))?
                .build(),
        };
        Ok(Self {
            cfg: cfg.clone(),
            text_encoder: TextEncoder::new(cfg, vb.pp("text_encoder"))?,
            image_encoder: ImageEncoder::new(cfg, vb.pp("image_encoder"))?,
            g_projection: projection(cfg, g.pp("projection"))?,
            net_g,
            net_d1,
            d_projection: projection(cfg, d.pp("projector").pp("projection"))?,
            net_d2,
            words: BTreeSet::new(),
            bank: Vec::new(),
            device: vb.device().clone(),
        })
    }

    /// The frozen text embedding of `captions`, `(b, embed_dim)`.
    pub fn embed(&self, captions: &[String]) -> Result<Tensor> {
        let ids = self.text_encoder.indices(captions, &self.device)?;
        Ok(self.text_encoder.forward(&ids)?.detach())
    }

    /// `(b, embed_dim)`, `(b, noise_dim)` -> `(b, nc, size, size)` in [-1, 1].
    pub fn generate(&self, embed: &Tensor, z: &Tensor, train: bool) -> Result<Tensor> {
        let b = embed.dim(0)?;
        let projected = self.g_projection.forward(embed, train)?; // (b, proj)
        let latent = Tensor::cat(&[&projected, z], 1)?;
        let latent = latent.reshape((b, latent.dim(1)?, 1, 1))?;
        self.net_g.forward(&latent, train)
    }

    /// `(b, nc, size, size)` in [-1, 1] with `(b, embed_dim)` -> `(b)` logits.
    pub fn discriminate(&self, x: &Tensor, embed: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.net_d1.forward(x, train)?; // (b, ch, 4, 4)
        let (b, _, s, _) = h.dims4()?;
        let projected = self.d_projection.forward(embed, train)?; // (b, proj)
        let p = projected.dim(1)?;
        let tiled = projected
            .reshape((b, p, 1, 1))?
            .broadcast_as((b, p, s, s))?;
        let joined = Tensor::cat(&[&h, &tiled.contiguous()?], 1)?;
        self.net_d2.forward(&joined, train)?.flatten_all()
    }

    /// For each image, another image of the batch whose caption is wrong for it: the next one
    /// of another class where there are classes, else the next one with another caption.
    fn wrong_partners(captions: &[String], classes: Option<&[u32]>) -> Vec<usize> {
        let b = captions.len();
        (0..b)
            .map(|i| {
                (1..b)
                    .map(|s| (i + s) % b)
                    .find(|&j| match classes {
                        Some(c) => c[j] != c[i],
                        None => captions[j] != captions[i],
                    })
                    .unwrap_or((i + 1) % b.max(1))
            })
            .collect()
    }

    /// The discriminator's loss: GAN-CLS's three terms, or the plain two.
    pub fn discriminator_loss(
        &self,
        real: &Tensor,
        embed: &Tensor,
        wrong: &Tensor,
        fake: &Tensor,
    ) -> Result<DiscriminatorTerms> {
        let bce = |logits: &Tensor, real: bool| target_loss(GanLoss::NonSaturating, logits, real);
        // Real, wrong, fake: the reference's order, which its BatchNorm statistics follow.
        let real_term = bce(&self.discriminate(real, embed, true)?, true)?;
        let wrong_term = match self.cfg.matching_aware {
            true => Some(bce(&self.discriminate(real, wrong, true)?, false)?),
            false => None,
        };
        let fake_term = bce(&self.discriminate(fake, embed, true)?, false)?;
        let loss = match &wrong_term {
            Some(w) => (&real_term + ((w + &fake_term)? * 0.5)?)?,
            None => (&real_term + &fake_term)?,
        };
        Ok(DiscriminatorTerms {
            loss,
            real: real_term,
            wrong: wrong_term,
            fake: fake_term,
        })
    }

    /// G's embeddings: the batch's own, then (GAN-INT) `beta e_i + (1 - beta) e_pi(i)` for a
    /// random pairing `pi`.
    fn generator_embeddings(&self, embed: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        if !self.cfg.interpolation {
            return Ok(embed.clone());
        }
        let mut order: Vec<u32> = (0..embed.dim(0)? as u32).collect();
        rng.shuffle(&mut order);
        self.with_interpolations(embed, &order)
    }

    /// `[e; beta e + (1 - beta) e[order]]`, `(2 b, embed_dim)`.
    pub fn with_interpolations(&self, embed: &Tensor, order: &[u32]) -> Result<Tensor> {
        let partners = embed.index_select(&Tensor::new(order, &self.device)?, 0)?;
        let beta = self.cfg.interpolation_beta;
        let mixed = ((embed * beta)? + (partners * (1.0 - beta))?)?;
        Tensor::cat(&[embed, &mixed], 0)
    }

    /// `BCE(D(G(z, e), e), 1)` over G's embeddings and noise (training mode).
    pub fn generator_loss(&self, embed: &Tensor, z: &Tensor) -> Result<Tensor> {
        let fake = self.generate(embed, z, true)?;
        target_loss(
            GanLoss::NonSaturating,
            &self.discriminate(&fake, embed, true)?,
            true,
        )
    }

    /// Remembers the words and (up to the bank's size) the captions of a training batch.
    fn remember(&mut self, captions: &[String]) {
        for caption in captions {
            self.words.extend(words(caption));
            if self.bank.len() < CAPTION_BANK && !self.bank.contains(caption) {
                self.bank.push(caption.clone());
            }
        }
    }

    /// A caption the model can draw: not empty, and (once trained) with a word it has seen.
    fn check_caption(&self, caption: &str) -> Result<()> {
        if caption.trim().is_empty() {
            candle_core::bail!(
                "the caption is empty: describe the image, e.g. \"a thick seven leaning right\""
            );
        }
        if !self.words.is_empty() && !words(caption).any(|w| self.words.contains(&w)) {
            let known: Vec<&str> = self.words.iter().take(24).map(String::as_str).collect();
            candle_core::bail!(
                "caption {caption:?}: none of its words occurs in the training captions (they use {} words, such as: {})",
                self.words.len(),
                known.join(", ")
            );
        }
        Ok(())
    }

    fn checked(&self, captions: &[String]) -> Result<()> {
        captions.iter().try_for_each(|c| self.check_caption(c))
    }

    /// Captions for drawing without one: `n` of the bank, drawn with `rng`.
    fn bank_captions(&self, n: usize, rng: &mut Rng) -> Result<Vec<String>> {
        if self.bank.is_empty() {
            candle_core::bail!(
                "this text-to-image model has seen no captions yet: draw with --caption TEXT"
            );
        }
        Ok((0..n)
            .map(|_| self.bank[rng.below(self.bank.len())].clone())
            .collect())
    }

    /// Images of `captions`, one noise vector each, in inference mode, in [0, 1].
    fn draw(&self, captions: &[String], rng: &mut Rng) -> Result<Tensor> {
        self.checked(captions)?;
        let e = self.embed(captions)?;
        let z = rng.normal((captions.len(), self.cfg.noise_dim), &self.device)?;
        to_unit_range(&self.generate(&e, &z, false)?)
    }

    fn in_encoder_stage(&self, progress: &StepProgress) -> bool {
        progress.images() < self.cfg.encoder_images
    }

    /// The joint-embedding step of the first stage.
    fn encoder_step(&mut self, ctx: &mut StepContext, batch: &Batch) -> Result<()> {
        let captions = batch.captions("text2image-gan")?;
        let ids = self.text_encoder.indices(captions, &self.device)?;
        let text = self.text_encoder.forward(&ids)?;
        let image = self.image_encoder.forward(&to_tanh_range(&batch.images)?)?;
        let same: Vec<Vec<bool>> = captions
            .iter()
            .map(|a| captions.iter().map(|b| a == b).collect())
            .collect();
        let (loss, top1) = joint_embedding_loss(&text, &image, &same, self.cfg.margin)?;
        ctx.minimize("encoder", &loss)?;
        ctx.record("embed_loss", &loss)?;
        ctx.record_value("embed_top1", top1);
        Ok(())
    }

    /// One D step and one G step on the frozen embeddings.
    fn gan_step(&mut self, ctx: &mut StepContext, batch: &Batch) -> Result<()> {
        let captions = batch.captions("text2image-gan")?;
        let real = to_tanh_range(&batch.images)?;
        let b = real.dim(0)?;
        let embed = self.embed(captions)?;
        let classes = match self.cfg.classes {
            0 => None,
            _ => Some(batch.classes("text2image-gan")?.to_vec1::<u32>()?),
        };
        let partners = Self::wrong_partners(captions, classes.as_deref());
        let partners = Tensor::from_vec(
            partners.iter().map(|&j| j as u32).collect::<Vec<_>>(),
            b,
            &self.device,
        )?;
        let wrong = embed.index_select(&partners, 0)?;

        let z = ctx.rng.normal((b, self.cfg.noise_dim), &self.device)?;
        let fake = self.generate(&embed, &z, true)?.detach();
        let d = self.discriminator_loss(&real, &embed, &wrong, &fake)?;
        ctx.minimize("discriminator", &d.loss)?;

        let g_embed = self.generator_embeddings(&embed, &mut ctx.rng)?;
        let n = g_embed.dim(0)?;
        let z = Tensor::cat(
            &[
                z,
                ctx.rng.normal((n - b, self.cfg.noise_dim), &self.device)?,
            ],
            0,
        )?;
        let g_loss = self.generator_loss(&g_embed, &z)?;
        ctx.minimize("generator", &g_loss)?;

        ctx.record("d_loss", &d.loss)?;
        ctx.record("g_loss", &g_loss)?;
        ctx.record("d_real", &d.real)?;
        if let Some(w) = &d.wrong {
            ctx.record("d_wrong", w)?;
        }
        ctx.record("d_fake", &d.fake)
    }
}

/// The discriminator's loss and its terms (each a mean BCE).
pub struct DiscriminatorTerms {
    pub loss: Tensor,
    pub real: Tensor,
    /// GAN-CLS's real image with a wrong caption (None without the term).
    pub wrong: Option<Tensor>,
    pub fake: Tensor,
}

/// The lowercase words of a caption (letters and digits).
fn words(caption: &str) -> impl Iterator<Item = String> + '_ {
    caption
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl Trainable for TextToImageGan {
    fn data_spec(&self) -> DataSpec {
        let s = self.cfg.image_size;
        let mut spec = DataSpec::images([self.cfg.channels, s, s]);
        spec.captions = true;
        if self.cfg.classes > 0 {
            spec.labels = LabelSpec::Classes(self.cfg.classes);
        }
        spec
    }

    /// The encoders' own Adam for the first stage; G's and D's after it.
    fn optimizers(&self) -> Vec<OptimizerSpec> {
        vec![
            OptimizerSpec::new(
                "encoder",
                &["text_encoder.", "image_encoder."],
                LrRole::Own {
                    lr: self.cfg.encoder_lr,
                    beta1: 0.9,
                    beta2: 0.999,
                },
            ),
            OptimizerSpec::new("generator", &["generator."], LrRole::Generator),
            OptimizerSpec::new("discriminator", &["discriminator."], LrRole::Main),
        ]
    }

    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let batch = ctx.batch()?;
        self.remember(batch.captions("text2image-gan")?);
        match self.in_encoder_stage(&ctx.progress) {
            true => self.encoder_step(ctx, &batch),
            false => self.gan_step(ctx, &batch),
        }
    }

    fn averaged(&self) -> Vec<String> {
        vec!["generator.".to_string()]
    }

    /// Only the GAN stage has a discriminator to win.
    fn collapse_term(&self) -> Option<&str> {
        Some("d_loss")
    }

    /// The discriminator, and the image encoder that only the first stage's joint embedding
    /// learns with: drawing from captions runs the text encoder and the generator.
    fn training_only(&self) -> Vec<String> {
        vec!["discriminator".to_string(), "image_encoder".to_string()]
    }

    fn headline_terms(&self) -> Vec<String> {
        ["embed_loss", "d_loss", "g_loss"]
            .map(String::from)
            .to_vec()
    }

    /// Rows: training captions; columns: noise vectors (one per column, the same down it).
    fn grid(&self, count: usize, rng: &mut Rng, _held_out: Option<&Batch>) -> Result<Grid> {
        let columns = 8;
        let rows = count.div_ceil(columns).max(1);
        let captions: Vec<String> = match self.bank.is_empty() {
            true => {
                return Ok(Grid {
                    images: self.sample_noise_only(rows * columns, rng)?,
                    columns,
                })
            }
            false => (0..rows * columns)
                .map(|i| self.bank[(i / columns) % self.bank.len()].clone())
                .collect(),
        };
        let z = rng.normal((columns, self.cfg.noise_dim), &self.device)?;
        let z = Tensor::cat(&vec![z; rows], 0)?;
        let e = self.embed(&captions)?;
        Ok(Grid {
            images: to_unit_range(&self.generate(&e, &z, false)?)?,
            columns,
        })
    }

    fn training_state(&self) -> Result<HashMap<String, Tensor>> {
        let text = |lines: Vec<&str>| -> Result<Tensor> {
            let bytes = lines.join("\n").into_bytes();
            let n = bytes.len();
            Tensor::from_vec(bytes, n, &Device::Cpu)
        };
        Ok(HashMap::from([
            (
                "words".to_string(),
                text(self.words.iter().map(String::as_str).collect())?,
            ),
            (
                "captions".to_string(),
                text(self.bank.iter().map(String::as_str).collect())?,
            ),
        ]))
    }

    fn restore_training_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let lines = |key: &str| -> Result<Vec<String>> {
            let Some(t) = state.get(key) else {
                return Ok(Vec::new());
            };
            let bytes = t.to_dtype(DType::U8)?.flatten_all()?.to_vec1::<u8>()?;
            let text = String::from_utf8(bytes).map_err(|_| {
                candle_core::Error::Msg(format!("text2image-gan: state.{key} is not UTF-8 text"))
            })?;
            Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect())
        };
        self.words = lines("words")?.into_iter().collect();
        self.bank = lines("captions")?;
        Ok(())
    }

    /// 0 while the encoder learns, 1 for the GAN: G's and D's Adam start with the GAN.
    fn stage(&self, progress: &StepProgress) -> u64 {
        u64::from(!self.in_encoder_stage(progress))
    }

    /// G's average starts with the GAN: the encoder's stage leaves G untrained.
    fn restarts_average(&self) -> bool {
        true
    }
}

impl TextToImageGan {
    /// Before any caption is seen: embeddings of noise (the grid of a run's first moments).
    fn sample_noise_only(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let e = unit_rows(&rng.normal((n, self.cfg.embed_dim), &self.device)?)?;
        let z = rng.normal((n, self.cfg.noise_dim), &self.device)?;
        to_unit_range(&self.generate(&e, &z, false)?)
    }
}

impl GenerativeModel for TextToImageGan {
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

    /// `n` images of captions drawn from those seen in training.
    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        let captions = self.bank_captions(n, rng)?;
        self.draw(&captions, rng)
    }

    fn as_captioned(&self) -> Option<&dyn Captioned> {
        Some(self)
    }
}

impl Captioned for TextToImageGan {
    fn sample_captions(&self, captions: &[String], rng: &mut Rng) -> Result<Tensor> {
        self.draw(captions, rng)
    }

    fn interpolate_captions(
        &self,
        a: &str,
        b: &str,
        steps: usize,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let pair = [a.to_string(), b.to_string()];
        self.checked(&pair)?;
        let e = self.embed(&pair)?;
        let (ea, eb) = (e.narrow(0, 0, 1)?, e.narrow(0, 1, 1)?);
        let ts: Vec<f32> = (0..steps)
            .map(|i| i as f32 / (steps.max(2) - 1) as f32)
            .collect();
        let t = Tensor::from_vec(ts, (steps, 1), &self.device)?;
        let line = (ea.broadcast_mul(&t.affine(-1.0, 1.0)?)? + eb.broadcast_mul(&t)?)?;
        let z = rng.normal((1, self.cfg.noise_dim), &self.device)?;
        let z = z.broadcast_as((steps, self.cfg.noise_dim))?.contiguous()?;
        to_unit_range(&self.generate(&line, &z, false)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn small() -> Config {
        Config {
            ngf: 8,
            ndf: 8,
            embed_dim: 16,
            projected_embed_dim: 8,
            noise_dim: 4,
            char_dim: 4,
            encoder_width: 8,
            max_caption_chars: 24,
            ..Config::default()
        }
    }

    fn build(cfg: &Config) -> Result<(TextToImageGan, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        Ok((TextToImageGan::new(cfg, vb)?, varmap))
    }

    fn captions(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shapes_and_reference_names() -> Result<()> {
        let (m, varmap) = build(&small())?;
        let e = m.embed(&captions(&["a thick seven", "a thin one leaning left"]))?;
        assert_eq!(e.dims(), &[2, 16]);
        let norms = e.sqr()?.sum(1)?.to_vec1::<f32>()?;
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
        let z = Tensor::zeros((2, 4), DType::F32, &Device::Cpu)?;
        let x = m.generate(&e, &z, true)?;
        assert_eq!(x.dims(), &[2, 1, 32, 32]);
        assert_eq!(m.discriminate(&x, &e, true)?.dims(), &[2]);
        let names = varmap.data().lock().unwrap();
        for n in [
            "generator.projection.0.weight",
            "generator.projection.1.running_var",
            "generator.netG.0.weight",
            "generator.netG.9.weight",
            "discriminator.netD_1.0.weight",
            "discriminator.netD_1.6.running_mean",
            "discriminator.projector.projection.0.bias",
            "discriminator.netD_2.0.weight",
            "text_encoder.embedding.weight",
            "image_encoder.projection.weight",
        ] {
            assert!(names.contains_key(n), "{n}");
        }
        assert_eq!(
            names["discriminator.netD_2.0.weight"].dims(),
            &[32, 32 + 8, 1, 1]
        );
        assert_eq!(
            names["discriminator.netD_2.3.weight"].dims(),
            &[1, 32, 4, 4]
        );
        Ok(())
    }

    /// Without the joint layer D's logit is an image term plus a text term: swapping the
    /// caption moves the logit of every image alike, so D cannot learn which caption fits which
    /// image. With it, the move depends on the image.
    #[test]
    fn only_the_joint_layer_lets_the_caption_fit_the_image() -> Result<()> {
        let text_effect = |joint_layer: bool| -> Result<f32> {
            let (m, _) = build(&Config {
                joint_layer,
                ..small()
            })?;
            let e = m.embed(&captions(&["a thick seven", "a thin one"]))?;
            let mut rng = Rng::new(3);
            let x = rng
                .uniform(2 * 32 * 32, &Device::Cpu)?
                .reshape((2, 1, 32, 32))?
                .affine(2.0, -1.0)?;
            // Logits of both images under caption 0, then under caption 1 (inference mode).
            let under = |k: usize| -> Result<Vec<f32>> {
                let ek = e.narrow(0, k, 1)?.repeat((2, 1))?;
                m.discriminate(&x, &ek, false)?.to_vec1::<f32>()
            };
            let (a, b) = (under(0)?, under(1)?);
            // How far the caption's effect differs between the images, relative to its size
            // (measured: 1.8e-5, rounding, for the sum; 1.9e-3 with the joint layer at its
            // initial weights, N(0, 0.02), whose LeakyReLU bends few of the maps yet).
            let (first, second) = (b[0] - a[0], b[1] - a[1]);
            Ok((first - second).abs() / (first.abs() + second.abs()).max(1e-12))
        };
        let (sum, joint) = (text_effect(false)?, text_effect(true)?);
        assert!(
            sum < 2e-4,
            "aelnouby's D: the caption's effect is additive ({sum})"
        );
        assert!(
            joint > 5e-4,
            "reedscot's joint layer: it depends on the image ({joint})"
        );
        Ok(())
    }

    #[test]
    fn the_caption_reaches_both_networks() -> Result<()> {
        let (m, _) = build(&small())?;
        let e = m.embed(&captions(&["a thick seven", "a thin one"]))?;
        let z = Tensor::ones((2, 4), DType::F32, &Device::Cpu)?;
        let x = m.generate(&e, &z, false)?;
        // Same noise, different captions: different images.
        let diff = (x.get(0)? - x.get(1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff > 0.0);
        // Same image, different captions: different verdicts.
        let same = Tensor::cat(&vec![x.get(0)?.unsqueeze(0)?; 2], 0)?;
        let v = m.discriminate(&same, &e, false)?.to_vec1::<f32>()?;
        assert_ne!(v[0], v[1]);
        Ok(())
    }

    #[test]
    fn wrong_captions_belong_to_another_class() {
        let c = captions(&["a", "b", "c", "d"]);
        assert_eq!(
            TextToImageGan::wrong_partners(&c, Some(&[3, 3, 5, 3])),
            vec![2, 2, 3, 2]
        );
        let same = captions(&["x", "x", "y"]);
        assert_eq!(TextToImageGan::wrong_partners(&same, None), vec![2, 2, 0]);
    }

    #[test]
    fn the_joint_embedding_hinge_matches_its_definition() -> Result<()> {
        let dev = Device::Cpu;
        let t = unit_rows(&Tensor::new(&[[1f32, 0.2], [0.1, 1.0], [0.7, 0.7]], &dev)?)?;
        let v = unit_rows(&Tensor::new(&[[1f32, 0.0], [0.5, 1.0], [1.0, 0.9]], &dev)?)?;
        let no = vec![vec![false; 3]; 3];
        let (loss, top1) = joint_embedding_loss(&t, &v, &no, 0.2)?;
        let (tv, vv) = (t.to_vec2::<f32>()?, v.to_vec2::<f32>()?);
        let f = |i: usize, j: usize| -> f64 { (tv[i][0] * vv[j][0] + tv[i][1] * vv[j][1]) as f64 };
        let mut expected = 0.0;
        for i in 0..3 {
            for j in (0..3).filter(|&j| j != i) {
                expected += (0.2 + f(i, j) - f(i, i)).max(0.0) / 6.0;
                expected += (0.2 + f(j, i) - f(i, i)).max(0.0) / 6.0;
            }
        }
        let got = loss.to_scalar::<f32>()? as f64;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        assert!((0.0..=1.0).contains(&top1));
        // Identical captions are no negatives: with every pair the same, nothing is left.
        let all = vec![vec![true; 3]; 3];
        let (loss, top1) = joint_embedding_loss(&t, &v, &all, 0.2)?;
        assert_eq!(loss.to_scalar::<f32>()?, 0.0);
        assert_eq!(top1, 1.0);
        Ok(())
    }

    #[test]
    fn bad_captions_are_refused_by_name() -> Result<()> {
        let (mut m, _) = build(&small())?;
        let mut rng = Rng::new(0);
        let e = m
            .sample_captions(&captions(&["  "]), &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = m
            .sample_captions(&captions(&["a seven ☃"]), &mut rng)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'☃'") && e.contains("alphabet"), "{e}");
        let e = m.sample(2, &mut rng).unwrap_err().to_string();
        assert!(e.contains("--caption"), "{e}");
        m.remember(&captions(&["a thick seven leaning right"]));
        let e = m
            .sample_captions(&captions(&["purple elephant"]), &mut rng)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("none of its words") && e.contains("seven"),
            "{e}"
        );
        assert!(m
            .sample_captions(&captions(&["a thin SEVEN"]), &mut rng)
            .is_ok());
        assert_eq!(m.sample(3, &mut rng)?.dims(), &[3, 1, 32, 32]);
        Ok(())
    }

    #[test]
    fn words_and_captions_survive_the_checkpoint() -> Result<()> {
        let (mut m, _) = build(&small())?;
        m.remember(&captions(&["digit 7, bold", "a thin one", "digit 7, bold"]));
        let state = m.training_state()?;
        let (mut again, _) = build(&small())?;
        again.restore_training_state(&state)?;
        assert_eq!(again.words, m.words);
        assert_eq!(
            again.bank,
            vec!["digit 7, bold".to_string(), "a thin one".to_string()]
        );
        Ok(())
    }

    #[test]
    fn the_encoder_trains_first_then_the_gan() {
        let cfg = Config {
            encoder_images: 1000,
            ..small()
        };
        let (m, _) = build(&cfg).unwrap();
        let at = |step| StepProgress {
            step,
            total_steps: 100,
            steps_per_epoch: 10,
            images_per_step: 64,
        };
        assert_eq!(m.stage(&at(15)), 0); // 960 images shown
        assert_eq!(m.stage(&at(16)), 1);
    }

    #[test]
    fn bad_configs_are_refused() {
        for cfg in [
            Config {
                image_size: 24,
                ..small()
            },
            Config {
                max_caption_chars: 2,
                ..small()
            },
            Config {
                alphabet: "abc".into(),
                ..small()
            },
            Config {
                interpolation_beta: 1.5,
                ..small()
            },
            Config {
                embed_dim: 0,
                ..small()
            },
        ] {
            assert!(build(&cfg).is_err(), "{cfg:?}");
        }
    }
}
