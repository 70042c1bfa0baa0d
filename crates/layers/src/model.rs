//! What a model is, as the runner sees it.
//!
//! Every model samples images. An explicit model also gives `log p(x)` per image, in nats: exactly
//! (autoregressive models) or as a bound or estimate (latent-variable models). Implicit models
//! (GANs) only sample, and are measured through their samples.

use candle_core::{Device, Result, Tensor};
use serde::Serialize;

use crate::train::rng::Rng;

/// Whether a model gives the probability of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Explicit,
    Implicit,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Explicit => "explicit",
            ModelKind::Implicit => "implicit",
        })
    }
}

/// How the `log p(x)` of an explicit model is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Likelihood {
    /// Exact, by the chain rule (autoregressive models).
    Exact,
    /// A stochastic estimate that is a lower bound in expectation (importance weighting).
    ImportanceWeighted,
}

/// Images are `(channels, height, width)`, values in `[0, 1]`.
pub type ImageShape = [usize; 3];

/// What the pixel values of a model's images are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Values {
    /// 0 or 1 (binarized digits).
    Binary,
    /// 8-bit intensities `k / 255`.
    Intensities,
}

pub trait GenerativeModel {
    /// The shape of one image.
    fn image_shape(&self) -> ImageShape;

    fn kind(&self) -> ModelKind;

    /// What its pixel values are (binary unless the model says otherwise).
    fn values(&self) -> Values {
        Values::Binary
    }

    /// Draws `n` images, `(n, c, h, w)` in `[0, 1]`.
    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor>;

    /// The slow reference sampler where `sample` is a faster equivalent (autoregressive models
    /// that cache or update activations incrementally): the same images from the same `rng`.
    fn sample_reference(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.sample(n, rng)
    }

    /// Number of dimensions of one image.
    fn dims(&self) -> usize {
        self.image_shape().iter().product()
    }

    /// Parameters that can affect the output, where masking leaves fewer than are stored
    /// (None: all stored parameters count).
    fn effective_parameters(&self) -> Option<usize> {
        None
    }

    /// How many classes a class-conditional model can be asked for (None: unconditional).
    fn classes(&self) -> Option<usize> {
        None
    }

    /// Draws one image of each requested class, `(n, c, h, w)` in `[0, 1]`.
    fn sample_classes(&self, classes: &[u32], _rng: &mut Rng) -> Result<Tensor> {
        let _ = classes;
        candle_core::bail!("this model is not class-conditional")
    }

    /// Real images as the model currently draws them, so metrics compare like with like (a
    /// Progressive GAN part-way through its growth: at its stage's resolution, brought back to
    /// the full side as its samples are); the images themselves for every other model.
    fn as_generated(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }

    /// One row of `n` samples per resolution the model has grown through, each row from the
    /// same latents (a Progressive GAN's stages).
    fn sample_stages(&self, n: usize, _rng: &mut Rng) -> Result<Tensor> {
        let _ = n;
        candle_core::bail!("this model does not grow in stages (a Progressive GAN does)")
    }

    /// The model's latent space, if it has an encoder and a decoder.
    fn as_latent(&self) -> Option<&dyn LatentVariableModel> {
        None
    }

    /// The model's likelihood, if it is explicit.
    fn as_likelihood(&self) -> Option<&dyn LikelihoodModel> {
        None
    }

    /// The model's latent codes, if it has InfoGAN-style codes that a head predicts back.
    fn as_coded(&self) -> Option<&dyn CodedModel> {
        None
    }

    /// The model's translations, if it maps images between domains.
    fn as_translator(&self) -> Option<&dyn Translator> {
        None
    }

    /// The model's text conditioning, if it draws images from captions.
    fn as_captioned(&self) -> Option<&dyn Captioned> {
        None
    }

    /// The model's completion of images from key patches, if it has one.
    fn as_puzzle(&self) -> Option<&dyn Puzzle> {
        None
    }
}

/// A model that draws a whole image from a few of its key local patches (Puzzle-GAN).
pub trait Puzzle {
    /// The most patches it reads.
    fn max_patches(&self) -> usize;

    /// From the first `k` patches of each image (`k` at most [`Puzzle::max_patches`]): the
    /// generated masks `(b, 1, h, w)` and images `(b, c, h, w)`, both in `[0, 1]`, each image
    /// from its own noise, in inference mode.
    fn complete(
        &self,
        patches: &crate::step::Patches,
        k: usize,
        rng: &mut Rng,
    ) -> Result<(Tensor, Tensor)>;

    /// Five rows of the first `n` images of `batch` completed from their first `k` patches:
    /// the patches on black, the generated mask, the generated image, the generated image with
    /// the patches placed ([`crate::placement`], with `priors`' costs when given), the real
    /// image (all in [0, 1], `(5 n, c, h, w)`).
    fn rows(
        &self,
        batch: &crate::step::Batch,
        n: usize,
        k: usize,
        rng: &mut Rng,
        priors: Option<&dyn crate::placement::Priors>,
    ) -> Result<Tensor> {
        let first = batch.patches("a puzzle model")?.first(n)?;
        let x = batch.images.narrow(0, 0, n)?;
        let (_, c, h, w) = x.dims4()?;
        let (mask, image) = self.complete(&first, k, rng)?;
        let pasted = x.broadcast_mul(&first.union_mask(&first.counts(k), (h, w), x.device())?)?;
        let crops = first.crops(&x, k)?;
        let priors = priors.map(|p| p.priors(&crops, x.device())).transpose()?;
        let placed = crate::placement::place_with(
            &image,
            &mask,
            &crops,
            crate::placement::MASK_WEIGHT,
            priors.as_deref(),
        )?;
        let mask = mask.repeat((1, c, 1, 1))?;
        Tensor::cat(&[&pasted, &mask, &image, &placed.images, &x], 0)
    }
}

/// A model that draws images from sentences (text-to-image GANs).
pub trait Captioned {
    /// One image per caption, `(n, c, h, w)` in `[0, 1]`, each from its own noise.
    fn sample_captions(&self, captions: &[String], rng: &mut Rng) -> Result<Tensor>;

    /// `steps` images along the straight line between the embeddings of captions `a` and `b`,
    /// one noise vector for all, `(steps, c, h, w)` in `[0, 1]`.
    fn interpolate_captions(&self, a: &str, b: &str, steps: usize, rng: &mut Rng)
        -> Result<Tensor>;
}

/// A model whose generator reads interpretable codes (InfoGAN): a categorical code that a head
/// of the discriminator predicts back from images, and continuous codes.
pub trait CodedModel {
    /// Categories of the categorical code.
    fn categories(&self) -> usize;

    /// Continuous codes.
    fn continuous_codes(&self) -> usize;

    /// The predicted category logits `(b, categories)` of images `(b, c, h, w)` in `[0, 1]` at
    /// the model's image shape.
    fn category_logits(&self, x: &Tensor) -> Result<Tensor>;

    /// `rows x columns` images in `[0, 1]`: category `r` on row `r`, continuous code `code`
    /// swept over its range along the columns, one noise vector for all.
    fn code_sweep(&self, rows: usize, columns: usize, code: usize, rng: &mut Rng)
        -> Result<Tensor>;
}

/// The domains a translator maps between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domains {
    /// Two domains, A and B, each way (CycleGAN).
    Two,
    /// Every combination of `names.len()` binary attributes (multi-label), or one of them
    /// (single-label), from one generator (StarGAN).
    Attributes {
        names: Vec<String>,
        single_label: bool,
    },
}

impl Domains {
    /// Every domain as a target vector: the `2^k` attribute combinations (multi-label, `k` up
    /// to 16), the `k` one-hot domains (single-label), none for two domains.
    pub fn all(&self) -> Vec<Vec<f32>> {
        match self {
            Domains::Two => Vec::new(),
            Domains::Attributes {
                names,
                single_label: false,
            } => {
                let k = names.len().min(16);
                (0..1usize << k)
                    .map(|m| {
                        (0..k)
                            .map(|i| f32::from(u8::from(m >> i & 1 == 1)))
                            .collect()
                    })
                    .collect()
            }
            Domains::Attributes {
                names,
                single_label: true,
            } => {
                let k = names.len();
                (0..k)
                    .map(|d| (0..k).map(|i| f32::from(u8::from(i == d))).collect())
                    .collect()
            }
        }
    }
}

/// Where a translation goes.
#[derive(Debug, Clone)]
pub enum Target {
    AToB,
    BToA,
    /// `(b, k)` target attribute vectors (multi-hot; one-hot for a single-label model).
    Attributes(Tensor),
}

/// A model that maps images of one domain to another (image-to-image translation).
pub trait Translator {
    fn domains(&self) -> Domains;

    /// Translates `x (b, c, h, w)` in `[0, 1]` to `target`, in `[0, 1]`, in inference mode.
    /// StarGAN also needs the images' own attributes for nothing here: its generator reads only
    /// the target.
    fn translate(&self, x: &Tensor, target: &Target) -> Result<Tensor>;
}

/// A model with a continuous latent space it can encode to and decode from.
pub trait LatentVariableModel {
    fn latent_dim(&self) -> usize;

    /// `(b, c, h, w) -> (b, latent)`: a point estimate of the code of each image.
    fn encode_mean(&self, x: &Tensor) -> Result<Tensor>;

    /// `(n, latent) -> (n, c, h, w)` images in `[0, 1]`.
    fn decode(&self, z: &Tensor) -> Result<Tensor>;

    /// Images decoded from the codes of `x`.
    fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode_mean(x)?)
    }

    /// `steps` images decoded along the straight line from the code of `a` to that of `b`
    /// (each `(1, c, h, w)`).
    fn interpolate(&self, a: &Tensor, b: &Tensor, steps: usize) -> Result<Tensor> {
        let za = self.encode_mean(a)?; // (1, latent)
        let zb = self.encode_mean(b)?;
        let ts: Vec<f32> = (0..steps)
            .map(|i| i as f32 / (steps.max(2) - 1) as f32)
            .collect();
        let t = Tensor::from_vec(ts, (steps, 1), za.device())?;
        let z = (za.broadcast_mul(&t.affine(-1.0, 1.0)?)? + zb.broadcast_mul(&t)?)?; // (steps, latent)
        self.decode(&z)
    }

    /// For a 2-D latent space: images decoded over a `side x side` grid of codes at the
    /// standard-normal quantiles of evenly spaced probabilities (Kingma & Welling 2014, fig. 4).
    fn manifold(&self, side: usize, device: &Device) -> Result<Tensor> {
        if self.latent_dim() != 2 {
            candle_core::bail!(
                "the manifold grid needs a 2-D latent space; this model has latent_dim = {}",
                self.latent_dim()
            );
        }
        let q: Vec<f32> = (0..side)
            .map(|i| crate::eval::stats::normal_quantile((i as f64 + 0.5) / side as f64) as f32)
            .collect();
        let mut z = Vec::with_capacity(side * side * 2);
        for row in 0..side {
            for col in 0..side {
                // z2 decreases down the rows so the grid reads like a plot.
                z.extend([q[col], q[side - 1 - row]]);
            }
        }
        self.decode(&Tensor::from_vec(z, (side * side, 2), device)?)
    }
}

/// Options of likelihood evaluation.
#[derive(Debug, Clone, Copy)]
pub struct LikelihoodOptions {
    /// Importance samples per image for latent-variable models.
    pub importance_samples: usize,
}

impl Default for LikelihoodOptions {
    fn default() -> Self {
        Self {
            importance_samples: 1000,
        }
    }
}

pub trait ExplicitModel: GenerativeModel {
    fn likelihood(&self) -> Likelihood;

    /// `log p(x)` per image in nats, `(b, c, h, w) -> (b)`.
    fn log_prob(&self, x: &Tensor, opts: &LikelihoodOptions, rng: &mut Rng) -> Result<Tensor>;

    /// Other per-image quantities worth reporting beside `-log p(x)`, in nats
    /// (the negative ELBO of a VAE, say), as `(name, (b))` pairs.
    fn extra_metrics(&self, _x: &Tensor, _rng: &mut Rng) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
}

/// The training objective of a model fitted by minimising one loss.
pub struct Loss {
    /// The scalar to differentiate.
    pub value: Tensor,
    /// Quantities to log, each a mean per image.
    pub metrics: Vec<(String, f64)>,
}

pub trait Objective {
    /// The loss for a batch `(b, c, h, w)`; `rng` supplies any noise the objective needs.
    fn loss(&self, x: &Tensor, rng: &mut Rng) -> Result<Loss>;
}

/// A model the runner can train by likelihood and evaluate by likelihood.
pub trait LikelihoodModel: ExplicitModel + Objective {}
impl<T: ExplicitModel + Objective> LikelihoodModel for T {}
