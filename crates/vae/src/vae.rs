//! Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes") with a
//! Bernoulli decoder on binarized images.
//!
//! - Encoder q(z|x) = N(mu(x), diag exp(logvar(x))), prior p(z) = N(0, I), decoder
//!   p(x|z) = Bernoulli(sigmoid(f(z))).
//! - Training maximises the ELBO (eq. 10 of the paper, with the closed-form KL of appendix B):
//!   `log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z))`, one reparameterised sample
//!   `z = mu + exp(logvar / 2) * eps`. As in pytorch/examples the loss is summed over the batch.
//! - `log_prob` is the importance-weighted estimate of Burda et al. 2015 (eq. 8):
//!   `log p(x) ~= log (1/k) sum_i p(x, z_i) / q(z_i | x)`, `z_i ~ q(z|x)`, which tends to
//!   `log p(x)` from below as k grows.
//!
//! `arch = "mlp"` is the pytorch/examples network (weights `fc1`, `fc21`, `fc22`, `fc3`, `fc4`);
//! `arch = "conv"` a small convolutional one.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{ops::sigmoid, VarBuilder};
use layers::loss::{
    bce_with_logits_per_image, gaussian_kl_per_image, gaussian_log_density, log_sum_exp,
    standard_normal_log_density,
};
use layers::{
    ExplicitModel, GenerativeModel, ImageShape, LatentVariableModel, Likelihood, LikelihoodOptions,
    Loss, ModelKind, Objective, Rng,
};
use serde::{Deserialize, Serialize};

use crate::conv::{ConvDecoder, ConvEncoder};
use crate::mlp::{MlpDecoder, MlpEncoder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Mlp,
    Conv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub arch: Arch,
    pub image_channels: usize,
    pub image_size: usize,
    /// Hidden units of the MLP (400 in pytorch/examples).
    pub hidden_dim: usize,
    pub latent_dim: usize,
    /// Channels of the two convolutions of the conv arch.
    pub conv_channels: [usize; 2],
    /// Importance samples are decoded this many at a time, to bound memory.
    pub eval_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            arch: Arch::Mlp,
            image_channels: 1,
            image_size: 28,
            hidden_dim: 400,
            latent_dim: 20,
            conv_channels: [32, 64],
            eval_chunk: 100,
        }
    }
}

impl Config {
    /// The convolutional VAE's defaults.
    pub fn conv() -> Self {
        Self {
            arch: Arch::Conv,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.latent_dim > 0, "latent_dim must be positive");
        anyhow::ensure!(
            self.image_channels > 0 && self.image_size > 0,
            "image size must be positive"
        );
        anyhow::ensure!(self.eval_chunk > 0, "eval_chunk must be positive");
        // The config may come from a file's metadata: a side whose pixel count overflows is
        // refused here, before the layers multiply it out.
        anyhow::ensure!(
            self.image_channels
                .checked_mul(self.image_size)
                .and_then(|n| n.checked_mul(self.image_size))
                .is_some(),
            "image_channels = {} and image_size = {} make more pixels than fit in memory",
            self.image_channels,
            self.image_size
        );
        if self.arch == Arch::Conv {
            anyhow::ensure!(
                self.image_size.is_multiple_of(4),
                "the conv VAE needs image_size divisible by 4, found {}",
                self.image_size
            );
        }
        Ok(())
    }
}

enum Encoder {
    Mlp(MlpEncoder),
    Conv(ConvEncoder),
}

enum Decoder {
    Mlp(MlpDecoder),
    Conv(ConvDecoder),
}

pub struct Vae {
    cfg: Config,
    encoder: Encoder,
    decoder: Decoder,
    device: Device,
}

/// What one pass of the ELBO computes, per image.
pub struct ElboTerms {
    /// `-E_q log p(x|z)` with one sample, `(b)`.
    pub reconstruction: Tensor,
    /// `KL(q(z|x) || p(z))`, `(b)`.
    pub kl: Tensor,
}

impl Vae {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::wrap)?;
        let dims = cfg.image_channels * cfg.image_size * cfg.image_size;
        let (encoder, decoder) = match cfg.arch {
            Arch::Mlp => (
                Encoder::Mlp(MlpEncoder::new(dims, cfg.hidden_dim, cfg.latent_dim, &vb)?),
                Decoder::Mlp(MlpDecoder::new(cfg.latent_dim, cfg.hidden_dim, dims, &vb)?),
            ),
            Arch::Conv => {
                let (c, s, w) = (cfg.image_channels, cfg.image_size, cfg.conv_channels);
                (
                    Encoder::Conv(ConvEncoder::new(c, s, w, cfg.latent_dim, &vb)?),
                    Decoder::Conv(ConvDecoder::new(c, s, w, cfg.latent_dim, &vb)?),
                )
            }
        };
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `(b, c, h, w) -> ((b, latent), (b, latent))`: mean and log-variance of q(z|x).
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.encoder {
            Encoder::Mlp(e) => e.forward(x),
            Encoder::Conv(e) => e.forward(x),
        }
    }

    /// `(n, latent) -> (n, c * h * w)` Bernoulli logits.
    pub fn decode_logits(&self, z: &Tensor) -> Result<Tensor> {
        match &self.decoder {
            Decoder::Mlp(d) => d.forward(z),
            Decoder::Conv(d) => d.forward(z),
        }
    }

    /// `z = mu + exp(logvar / 2) * eps`.
    pub fn reparameterize(mu: &Tensor, logvar: &Tensor, eps: &Tensor) -> Result<Tensor> {
        mu + (logvar.affine(0.5, 0.0)?.exp()? * eps)?
    }

    /// The two ELBO terms per image with the given noise `eps` `(b, latent)`.
    pub fn elbo_terms(&self, x: &Tensor, eps: &Tensor) -> Result<ElboTerms> {
        let (mu, logvar) = self.encode(x)?;
        let z = Self::reparameterize(&mu, &logvar, eps)?;
        let logits = self.decode_logits(&z)?;
        Ok(ElboTerms {
            reconstruction: bce_with_logits_per_image(&logits, &x.flatten_from(1)?)?,
            kl: gaussian_kl_per_image(&mu, &logvar)?,
        })
    }

    fn noise(&self, b: usize, rng: &mut Rng) -> Result<Tensor> {
        rng.normal((b, self.cfg.latent_dim), &self.device)
    }

    /// Importance-weighted `log p(x)` per image with `k` samples (Burda et al. 2015, eq. 8).
    /// The noise is drawn up front, so how the samples are chunked changes only the order of
    /// summation, not the estimate.
    pub fn importance_weighted_log_prob(
        &self,
        x: &Tensor,
        k: usize,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let latent = self.cfg.latent_dim;
        let target = x.flatten_from(1)?.to_dtype(DType::F32)?; // (b, d)
        let (mu, logvar) = self.encode(x)?; // (b, latent)
        let all_eps = rng.normal((b, k, latent), &self.device)?; // (b, k, latent)
        let mut log_weights = Vec::new();
        let mut done = 0;
        // At most `eval_chunk` samples per image, and so few that one decode holds at most
        // DECODED_AT_ONCE images (a batch of 100 digits at 100 samples each was 10,000).
        let per_image = (DECODED_AT_ONCE / b.max(1)).max(1);
        while done < k {
            let kc = self.cfg.eval_chunk.min(per_image).min(k - done);
            let eps = all_eps.narrow(1, done, kc)?.contiguous()?; // (b, kc, latent)
            let (mu3, lv3) = (mu.unsqueeze(1)?, logvar.unsqueeze(1)?); // (b, 1, latent)
            let z = (mu3.broadcast_add(&(lv3.affine(0.5, 0.0)?.exp()?.broadcast_mul(&eps)?)))?; // (b, kc, latent)
            let log_q = gaussian_log_density(
                &z,
                &mu3.broadcast_as(z.shape())?,
                &lv3.broadcast_as(z.shape())?,
            )?; // (b, kc)
            let log_prior = standard_normal_log_density(&z)?; // (b, kc)
            let logits = self.decode_logits(&z.reshape((b * kc, latent))?)?; // (b*kc, d)
            let d = logits.dim(1)?;
            let targets = target
                .unsqueeze(1)?
                .broadcast_as((b, kc, d))?
                .reshape((b * kc, d))?;
            let log_lik = bce_with_logits_per_image(&logits, &targets)?
                .neg()?
                .reshape((b, kc))?;
            // Detached: the weights are variables, so each chunk's log weights would otherwise
            // keep its whole decode graph alive until the last chunk (86 KB per image and
            // sample for the conv arch: 8.6 GB for 100 digits at k = 1000).
            log_weights.push(((log_lik + log_prior)? - log_q)?.detach());
            done += kc;
        }
        let log_w = Tensor::cat(&log_weights, 1)?.to_dtype(DType::F64)?; // (b, k)
        let log_mean_w = (log_sum_exp(&log_w, 1)? - (k as f64).ln())?; // (b)
        log_mean_w.to_dtype(DType::F32)
    }
}

/// The most images one decode of the importance-weighted estimate holds.
const DECODED_AT_ONCE: usize = 500;

impl GenerativeModel for Vae {
    fn image_shape(&self) -> ImageShape {
        [
            self.cfg.image_channels,
            self.cfg.image_size,
            self.cfg.image_size,
        ]
    }

    fn kind(&self) -> ModelKind {
        ModelKind::Explicit
    }

    /// Bernoulli means of the decoder at `z ~ N(0, I)`.
    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.decode(&self.noise(n, rng)?)
    }

    fn as_latent(&self) -> Option<&dyn LatentVariableModel> {
        Some(self)
    }
}

impl LatentVariableModel for Vae {
    fn latent_dim(&self) -> usize {
        self.cfg.latent_dim
    }

    /// The posterior mean of q(z|x).
    fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.encode(x)?.0)
    }

    /// Bernoulli means of p(x|z), `(n, latent) -> (n, c, h, w)`.
    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.image_shape();
        sigmoid(&self.decode_logits(z)?)?.reshape((z.dim(0)?, c, h, w))
    }
}

impl ExplicitModel for Vae {
    fn likelihood(&self) -> Likelihood {
        Likelihood::ImportanceWeighted
    }

    fn log_prob(&self, x: &Tensor, opts: &LikelihoodOptions, rng: &mut Rng) -> Result<Tensor> {
        self.importance_weighted_log_prob(x, opts.importance_samples, rng)
    }

    fn extra_metrics(&self, x: &Tensor, rng: &mut Rng) -> Result<Vec<(String, Tensor)>> {
        let terms = self.elbo_terms(x, &self.noise(x.dim(0)?, rng)?)?;
        let neg_elbo = (&terms.reconstruction + &terms.kl)?;
        Ok(vec![
            ("neg_elbo".into(), neg_elbo),
            ("reconstruction".into(), terms.reconstruction),
            ("kl".into(), terms.kl),
        ])
    }
}

impl Objective for Vae {
    /// The negative ELBO summed over the batch, as pytorch/examples trains it.
    fn loss(&self, x: &Tensor, rng: &mut Rng) -> Result<Loss> {
        let b = x.dim(0)?;
        let terms = self.elbo_terms(x, &self.noise(b, rng)?)?;
        let recon = terms.reconstruction.sum_all()?;
        let kl = terms.kl.sum_all()?;
        let value = (&recon + &kl)?;
        let per_image = |t: &Tensor| -> Result<f64> {
            Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()? / b as f64)
        };
        let metrics = vec![
            ("neg_elbo".to_string(), per_image(&value)?),
            ("reconstruction".to_string(), per_image(&recon)?),
            ("kl".to_string(), per_image(&kl)?),
        ];
        Ok(Loss { value, metrics })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use layers::loss::mean_f64;

    fn build(cfg: &Config, seed: u64) -> Result<(Vae, VarMap)> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
        Ok((Vae::new(cfg, vb)?, varmap))
    }

    /// Binary "digits": random blobs, so the tests need no data files.
    fn batch(n: usize, seed: u64) -> Result<Tensor> {
        let p = Tensor::full(0.3f32, (n, 1, 28, 28), &Device::Cpu)?;
        Rng::new(seed).bernoulli(&p)
    }

    #[test]
    fn both_archs_sample_images_and_every_parameter_gets_a_gradient() -> Result<()> {
        for cfg in [Config::default(), Config::conv()] {
            let (model, varmap) = build(&cfg, 1)?;
            let s = model.sample(5, &mut Rng::new(2))?;
            assert_eq!(s.dims(), &[5, 1, 28, 28]);
            let (lo, hi) = (
                s.min_all()?.to_scalar::<f32>()?,
                s.max_all()?.to_scalar::<f32>()?,
            );
            assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
            let loss = model.loss(&batch(4, 3)?, &mut Rng::new(4))?;
            let grads = loss.value.backward()?;
            for (name, var) in varmap.data().lock().unwrap().iter() {
                let g = grads
                    .get(var)
                    .unwrap_or_else(|| panic!("{name}: no gradient"));
                assert!(
                    g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
                    "{name}: zero gradient"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn the_conv_arch_rejects_sizes_it_cannot_halve_twice() {
        let cfg = Config {
            image_size: 30,
            ..Config::conv()
        };
        let e = build(&cfg, 0).err().unwrap().to_string();
        assert!(e.contains("divisible by 4"), "{e}");
    }

    /// One importance sample is an unbiased estimate of the ELBO; more samples tighten it
    /// (Burda et al. 2015, theorem 1), and it never exceeds the true log-likelihood on average.
    #[test]
    fn importance_weighting_starts_at_the_elbo_and_tightens() -> Result<()> {
        let (model, _) = build(&Config::default(), 5)?;
        let x = batch(8, 6)?;
        let mut rng = Rng::new(8);
        // The ELBO with the analytic KL, its reconstruction term averaged over many draws.
        let elbos: Vec<f64> = (0..400)
            .map(|_| mean_f64(&model.extra_metrics(&x, &mut rng)?[0].1))
            .collect::<Result<_>>()?;
        let elbo = -elbos.iter().sum::<f64>() / elbos.len() as f64;
        let k1: Vec<f64> = (0..400)
            .map(|_| mean_f64(&model.importance_weighted_log_prob(&x, 1, &mut rng)?))
            .collect::<Result<_>>()?;
        let k1_mean = k1.iter().sum::<f64>() / k1.len() as f64;
        let k200 = mean_f64(&model.importance_weighted_log_prob(&x, 200, &mut rng)?)?;
        // The analytic-KL ELBO and the mean single-sample estimate agree to within noise.
        assert!((k1_mean - elbo).abs() < 0.5, "k=1 {k1_mean} vs ELBO {elbo}");
        assert!(k200 > k1_mean + 1.0, "k=200 {k200} vs k=1 {k1_mean}");
        Ok(())
    }

    #[test]
    fn chunked_importance_sampling_equals_one_chunk() -> Result<()> {
        let x = batch(3, 9)?;
        let (a, _) = build(
            &Config {
                eval_chunk: 7,
                ..Config::default()
            },
            10,
        )?;
        let (b, _) = build(
            &Config {
                eval_chunk: 50,
                ..Config::default()
            },
            10,
        )?;
        let la = a.importance_weighted_log_prob(&x, 50, &mut Rng::new(11))?;
        let lb = b.importance_weighted_log_prob(&x, 50, &mut Rng::new(11))?;
        let diff = (&la - lb)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // The same noise drawn in other chunk sizes: only the summation order differs.
        assert!(diff < 1e-3, "{diff}");
        // The estimate holds no graph: the chunks' decodes are freed as it goes.
        assert!(!la.track_op(), "the estimate keeps its decode graphs alive");
        // With more digits than DECODED_AT_ONCE / eval_chunk, each decodes fewer samples at a
        // time (3 here): the first three (the same images, the same noise) estimate the same.
        let many = batch(2 * DECODED_AT_ONCE / 7, 9)?;
        let same = (many.narrow(0, 0, 3)? - &x)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(same, 0.0);
        let lm = a.importance_weighted_log_prob(&many, 50, &mut Rng::new(11))?;
        let diff = (lm.narrow(0, 0, 3)? - &la)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-3, "{diff}");
        Ok(())
    }
}
