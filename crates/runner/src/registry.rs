//! Every model of genzoo's mission, and how to build the ones that exist: one builder kind,
//! which returns the model as the training loop, `sample` and `eval` drive it.

use anyhow::{bail, Context, Result};
use candle_nn::VarBuilder;
use layers::gan::{AdversarialSettings, AdversarialTraining};
use layers::step::LikelihoodTraining;
use layers::{Model, ModelKind};

/// What a builder reads besides the variables: the model's `[model_config]` table and the
/// `[gan]` settings of a one-generator GAN's step.
pub struct BuildInput<'a> {
    pub model_config: &'a toml::Table,
    pub adversarial: AdversarialSettings,
}

/// Builds a model, returning it with its resolved config (every field, defaults filled in).
pub type Builder = fn(&BuildInput, VarBuilder<'static>) -> Result<(Box<dyn Model>, toml::Table)>;

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

/// Deserialises a model's `Config` from the `[model_config]` table; unknown keys are errors.
pub fn model_config<T: serde::de::DeserializeOwned>(table: &toml::Table, model: &str) -> Result<T> {
    toml::Value::Table(table.clone())
        .try_into()
        .with_context(|| format!("invalid [model_config] for model `{model}`"))
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

/// A likelihood model, trained by its objective with one optimiser.
fn likelihood<M: layers::LikelihoodModel + 'static>(
    built: Result<(M, toml::Table)>,
) -> Result<(Box<dyn Model>, toml::Table)> {
    built.map(|(m, t)| (Box::new(LikelihoodTraining(m)) as Box<dyn Model>, t))
}

/// A one-generator, one-discriminator GAN, trained by the shared adversarial step.
fn adversarial<M: layers::gan::Adversarial + 'static>(
    input: &BuildInput,
    name: &'static str,
    built: Result<(M, toml::Table)>,
) -> Result<(Box<dyn Model>, toml::Table)> {
    built.map(|(m, t)| {
        let model = AdversarialTraining::new(m, input.adversarial, name);
        (Box::new(model) as Box<dyn Model>, t)
    })
}

/// A model that owns its training step (translation models).
fn owned<M: Model + 'static>(
    built: Result<(M, toml::Table)>,
) -> Result<(Box<dyn Model>, toml::Table)> {
    built.map(|(m, t)| (Box::new(m) as Box<dyn Model>, t))
}

pub const MODELS: &[ModelEntry] = &[
    ModelEntry {
        name: "fvsbn",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "fully visible logistic autoregression (FVSBN)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                pixelrnn::fvsbn::Config::default(),
                "fvsbn",
                pixelrnn::fvsbn::Fvsbn::new,
            ))
        }),
    },
    ModelEntry {
        name: "ar-n",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "logistic autoregression on the previous N pixels (N = 28 by default)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                pixelrnn::fvsbn::Config::ar_n(28),
                "ar-n",
                pixelrnn::fvsbn::Fvsbn::new,
            ))
        }),
    },
    ModelEntry {
        name: "nade",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "NADE (Larochelle & Murray 2011)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                pixelrnn::nade::Config::default(),
                "nade",
                pixelrnn::nade::Nade::new,
            ))
        }),
    },
    ModelEntry {
        name: "pixelcnn",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "PixelCNN with mask A / mask B convolutions",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                pixelrnn::pixelcnn::Config::default(),
                "pixelcnn",
                pixelrnn::pixelcnn::PixelCnn::new,
            ))
        }),
    },
    ModelEntry {
        name: "row-lstm",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "PixelRNN Row LSTM (van den Oord et al. 2016)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                pixelrnn::pixelrnn::Config::default(),
                "row-lstm",
                pixelrnn::row_lstm::RowLstm::new,
            ))
        }),
    },
    ModelEntry {
        name: "diagonal-bilstm",
        family: "pixelrnn",
        kind: ModelKind::Explicit,
        summary: "PixelRNN Diagonal BiLSTM (van den Oord et al. 2016)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                pixelrnn::pixelrnn::Config::default(),
                "diagonal-bilstm",
                pixelrnn::diagonal_bilstm::DiagonalBiLstm::new,
            ))
        }),
    },
    ModelEntry {
        name: "vae",
        family: "vae",
        kind: ModelKind::Explicit,
        summary: "VAE, pytorch/examples MLP 784-400-20 (ELBO; importance-weighted NLL)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                vae::Config::default(),
                "vae",
                vae::Vae::new,
            ))
        }),
    },
    ModelEntry {
        name: "conv-vae",
        family: "vae",
        kind: ModelKind::Explicit,
        summary: "convolutional VAE (ELBO; importance-weighted NLL)",
        build: Some(|input, vb| {
            likelihood(build_with(
                input.model_config,
                vb,
                vae::Config::conv(),
                "conv-vae",
                vae::Vae::new,
            ))
        }),
    },
    ModelEntry {
        name: "gan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "GAN with MLP generator and discriminator (Goodfellow et al. 2014)",
        build: Some(|input, vb| {
            adversarial(
                input,
                "gan",
                build_with(
                    input.model_config,
                    vb,
                    gan_variants::gan::Config::default(),
                    "gan",
                    gan_variants::gan::Gan::new,
                ),
            )
        }),
    },
    ModelEntry {
        name: "dcgan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "DCGAN (Radford et al. 2015), pytorch/examples architecture",
        build: Some(|input, vb| {
            adversarial(
                input,
                "dcgan",
                build_with(
                    input.model_config,
                    vb,
                    gan_variants::dcgan::Config::default(),
                    "dcgan",
                    gan_variants::dcgan::Dcgan::new,
                ),
            )
        }),
    },
    ModelEntry {
        name: "cgan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "class-conditional GAN (Mirza & Osindero 2014), PyTorch-GAN architecture",
        build: Some(|input, vb| {
            adversarial(
                input,
                "cgan",
                build_with(
                    input.model_config,
                    vb,
                    gan_variants::cgan::Config::default(),
                    "cgan",
                    gan_variants::cgan::ConditionalGan::new,
                ),
            )
        }),
    },
    ModelEntry {
        name: "infogan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "InfoGAN (Chen et al. 2016), PyTorch-GAN or the paper's networks",
        build: Some(|input, vb| {
            adversarial(
                input,
                "infogan",
                build_with(
                    input.model_config,
                    vb,
                    gan_variants::infogan::Config::default(),
                    "infogan",
                    gan_variants::infogan::InfoGan::new,
                ),
            )
        }),
    },
    ModelEntry {
        name: "text2image-gan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "text-to-image GAN, GAN-CLS / GAN-INT (Reed et al. 2016), aelnouby's networks",
        build: Some(|input, vb| {
            owned(build_with(
                input.model_config,
                vb,
                gan_variants::text2image::Config::default(),
                "text2image-gan",
                gan_variants::text2image::TextToImageGan::new,
            ))
        }),
    },
    ModelEntry {
        name: "puzzle-gan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "Puzzle-GAN: whole image from key local patches (Lee et al. 2018), hellbell/KeyPatchGan's U-net",
        build: Some(|input, vb| {
            owned(build_with(
                input.model_config,
                vb,
                gan_variants::puzzle::Config::default(),
                "puzzle-gan",
                gan_variants::puzzle::PuzzleGan::new,
            ))
        }),
    },
    ModelEntry {
        name: "cyclegan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "CycleGAN (Zhu et al. 2017), junyanz/pytorch-CycleGAN-and-pix2pix networks",
        build: Some(|input, vb| {
            owned(build_with(
                input.model_config,
                vb,
                gan_variants::cyclegan::Config::default(),
                "cyclegan",
                gan_variants::cyclegan::CycleGan::new,
            ))
        }),
    },
    ModelEntry {
        name: "stargan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "StarGAN (Choi et al. 2018), yunjey/stargan networks",
        build: Some(|input, vb| {
            owned(build_with(
                input.model_config,
                vb,
                gan_variants::stargan::Config::default(),
                "stargan",
                gan_variants::stargan::StarGan::new,
            ))
        }),
    },
    ModelEntry {
        name: "progan",
        family: "gan-variants",
        kind: ModelKind::Implicit,
        summary: "Progressive GAN (Karras et al. 2018), pytorch_GAN_zoo's PGAN networks",
        build: Some(|input, vb| {
            owned(build_with(
                input.model_config,
                vb,
                gan_variants::progan::Config::default(),
                "progan",
                gan_variants::progan::ProGan::new,
            ))
        }),
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

/// A built model's config with every default filled in (the model built once on the CPU and
/// dropped).
pub fn default_config(name: &str) -> Result<toml::Table> {
    let build = builder(name)?;
    let varmap = candle_nn::VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(
        &varmap,
        0,
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    );
    let empty = toml::Table::new();
    let input = BuildInput {
        model_config: &empty,
        adversarial: AdversarialSettings::default(),
    };
    Ok(build(&input, vb)?.1)
}

/// The builder of a model that is built, or an error that says it is not built yet.
pub fn builder(name: &str) -> Result<Builder> {
    let entry = find(name)?;
    match entry.build {
        Some(b) => Ok(b),
        None => bail!(
            "model `{name}` ({}) is part of genzoo's mission but not built yet; `genzoo list` shows what is",
            entry.summary
        ),
    }
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
        assert!(builder("cyclegan").is_ok() && builder("puzzle-gan").is_ok());
        // Every model of the mission is built.
        assert!(MODELS.iter().all(ModelEntry::is_built));
    }
}
