//! Every model of genzoo's mission, and how to build the ones that exist.

use anyhow::{bail, Result};
use candle_nn::VarBuilder;
use layers::gan::AdversarialModel;
use layers::{LikelihoodModel, ModelKind};

use crate::config::model_config;

/// How a built model is constructed from its `[model_config]` table, returning it with the
/// resolved config (every field, defaults filled in).
pub type LikelihoodBuilder =
    fn(&toml::Table, VarBuilder<'static>) -> Result<(Box<dyn LikelihoodModel>, toml::Table)>;
pub type AdversarialBuilder =
    fn(&toml::Table, VarBuilder<'static>) -> Result<(Box<dyn AdversarialModel>, toml::Table)>;

/// How a model trains: by its likelihood (or a bound), or adversarially.
#[derive(Clone, Copy)]
pub enum Builder {
    Likelihood(LikelihoodBuilder),
    Adversarial(AdversarialBuilder),
}

pub struct ModelEntry {
    pub name: &'static str,
    /// The crate it lives in.
    pub family: &'static str,
    pub kind: ModelKind,
    pub summary: &'static str,
    /// `None` while the model is not built yet.
    pub build: Option<Builder>,
}

impl ModelEntry {
    pub fn is_built(&self) -> bool {
        self.build.is_some()
    }
}

/// Builds a model from the `[model_config]` table laid over the variant's `base` config,
/// returning it with the resolved config (every field, defaults filled in).
fn build_with<C, M>(
    table: &toml::Table,
    vb: VarBuilder<'static>,
    base: C,
    name: &str,
    new: fn(&C, VarBuilder<'static>) -> candle_core::Result<M>,
) -> Result<(M, toml::Table)>
where
    C: serde::Serialize + serde::de::DeserializeOwned,
{
    // Keys the user gave override the variant's defaults.
    let mut merged = toml::Table::try_from(&base)?;
    merged.extend(table.clone());
    let cfg: C = model_config(&merged, name)?;
    let model = new(&cfg, vb)?;
    Ok((model, toml::Table::try_from(&cfg)?))
}

fn likelihood<M: LikelihoodModel + 'static>(
    built: Result<(M, toml::Table)>,
) -> Result<(Box<dyn LikelihoodModel>, toml::Table)> {
    built.map(|(m, t)| (Box::new(m) as Box<dyn LikelihoodModel>, t))
}

fn adversarial<M: AdversarialModel + 'static>(
    built: Result<(M, toml::Table)>,
) -> Result<(Box<dyn AdversarialModel>, toml::Table)> {
    built.map(|(m, t)| (Box::new(m) as Box<dyn AdversarialModel>, t))
}

pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        name: "fvsbn",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "fully visible logistic autoregression (FVSBN)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                pixelrnn::fvsbn::Config::default(),
                "fvsbn",
                pixelrnn::fvsbn::Fvsbn::new,
            ))
        })),
    },
    ModelEntry {
        name: "ar-n",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "logistic autoregression on the previous N pixels (N = 28 by default)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                pixelrnn::fvsbn::Config::ar_n(28),
                "ar-n",
                pixelrnn::fvsbn::Fvsbn::new,
            ))
        })),
    },
    ModelEntry {
        name: "nade",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "NADE (Larochelle & Murray 2011)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                pixelrnn::nade::Config::default(),
                "nade",
                pixelrnn::nade::Nade::new,
            ))
        })),
    },
    ModelEntry {
        name: "pixelcnn",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "PixelCNN with mask A / mask B convolutions",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                pixelrnn::pixelcnn::Config::default(),
                "pixelcnn",
                pixelrnn::pixelcnn::PixelCnn::new,
            ))
        })),
    },
    ModelEntry {
        name: "row-lstm",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "PixelRNN Row LSTM (van den Oord et al. 2016)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                pixelrnn::pixelrnn::Config::default(),
                "row-lstm",
                pixelrnn::row_lstm::RowLstm::new,
            ))
        })),
    },
    ModelEntry {
        name: "diagonal-bilstm",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "PixelRNN Diagonal BiLSTM (van den Oord et al. 2016)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                pixelrnn::pixelrnn::Config::default(),
                "diagonal-bilstm",
                pixelrnn::diagonal_bilstm::DiagonalBiLstm::new,
            ))
        })),
    },
    ModelEntry {
        name: "vae",
        family: "vae",
        kind: ModelKind::Explicit,
        summary: "VAE, pytorch/examples MLP 784-400-20 (ELBO; importance-weighted NLL)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                vae::Config::default(),
                "vae",
                vae::Vae::new,
            ))
        })),
    },
    ModelEntry {
        name: "conv-vae",
        family: "vae",
        kind: ModelKind::Explicit,
        summary: "convolutional VAE (ELBO; importance-weighted NLL)",
        build: Some(Builder::Likelihood(|t, vb| {
            likelihood(build_with(
                t,
                vb,
                vae::Config::conv(),
                "conv-vae",
                vae::Vae::new,
            ))
        })),
    },
    ModelEntry {
        name: "gan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "GAN with MLP generator and discriminator (Goodfellow et al. 2014)",
        build: Some(Builder::Adversarial(|t, vb| {
            adversarial(build_with(
                t,
                vb,
                gan_variants::gan::Config::default(),
                "gan",
                gan_variants::gan::Gan::new,
            ))
        })),
    },
    ModelEntry {
        name: "dcgan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "DCGAN (Radford et al. 2015), pytorch/examples architecture",
        build: Some(Builder::Adversarial(|t, vb| {
            adversarial(build_with(
                t,
                vb,
                gan_variants::dcgan::Config::default(),
                "dcgan",
                gan_variants::dcgan::Dcgan::new,
            ))
        })),
    },
    ModelEntry {
        name: "cgan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "class-conditional GAN (Mirza & Osindero 2014), PyTorch-GAN architecture",
        build: Some(Builder::Adversarial(|t, vb| {
            adversarial(build_with(
                t,
                vb,
                gan_variants::cgan::Config::default(),
                "cgan",
                gan_variants::cgan::ConditionalGan::new,
            ))
        })),
    },
    ModelEntry {
        name: "infogan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "InfoGAN (Chen et al. 2016), PyTorch-GAN or the paper's networks",
        build: Some(Builder::Adversarial(|t, vb| {
            adversarial(build_with(
                t,
                vb,
                gan_variants::infogan::Config::default(),
                "infogan",
                gan_variants::infogan::InfoGan::new,
            ))
        })),
    },
    ModelEntry {
        name: "text2image-gan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "text-to-image GAN, GAN-CLS / GAN-INT (Reed et al. 2016)",
        build: None,
    },
    ModelEntry {
        name: "puzzle-gan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "Puzzle-GAN: whole image from key local patches (Lee et al. 2018)",
        build: None,
    },
    ModelEntry {
        name: "cyclegan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "CycleGAN (Zhu et al. 2017)",
        build: None,
    },
    ModelEntry {
        name: "stargan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "StarGAN (Choi et al. 2018)",
        build: None,
    },
    ModelEntry {
        name: "progan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "Progressive GAN (Karras et al. 2018)",
        build: None,
    },
];

/// The entry of a model that exists, or an error that says why not.
pub fn find(name: &str) -> Result<&'static ModelEntry> {
    let Some(entry) = MODELS.iter().find(|m| m.name == name) else {
        let known: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        bail!(
            "unknown model `{name}`; the models are: {}",
            known.join(", ")
        );
    };
    Ok(entry)
}

/// The builder of a model that is built, or an error that says it is not built yet.
pub fn any_builder(name: &str) -> Result<Builder> {
    let entry = find(name)?;
    match entry.build {
        Some(b) => Ok(b),
        None => bail!(
            "model `{name}` ({}) is part of genzoo's mission but not built yet; `genzoo list` shows what is",
            entry.summary
        ),
    }
}

/// The builder of a likelihood model.
pub fn builder(name: &str) -> Result<LikelihoodBuilder> {
    match any_builder(name)? {
        Builder::Likelihood(b) => Ok(b),
        Builder::Adversarial(_) => {
            bail!("model `{name}` is an implicit model (a GAN): it has no likelihood")
        }
    }
}

/// The builder of a GAN.
pub fn adversarial_builder(name: &str) -> Result<AdversarialBuilder> {
    match any_builder(name)? {
        Builder::Adversarial(b) => Ok(b),
        Builder::Likelihood(_) => bail!("model `{name}` is not a GAN"),
    }
}

/// Whether `name` is a built GAN.
pub fn is_adversarial(name: &str) -> bool {
    matches!(any_builder(name), Ok(Builder::Adversarial(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_errors_are_clear() {
        let mut names: Vec<&str> = MODELS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MODELS.len());
        assert!(builder("vae").is_ok());
        let e = builder("vea").err().unwrap().to_string();
        assert!(
            e.contains("unknown model `vea`") && e.contains("vae"),
            "{e}"
        );
        let e = builder("progan").err().unwrap().to_string();
        assert!(e.contains("not built yet"), "{e}");
    }
}
