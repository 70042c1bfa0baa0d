//! The attribute classifier behind the translation metrics of multi-domain models (StarGAN):
//! the LeNet of the digit classifier at the run's image shape, with one logit per attribute,
//! trained by binary cross-entropy on the real images of the run's data (every domain, each
//! image with its own attributes). `genzoo classifier train --attributes --config RUN` trains
//! it; `genzoo eval` reads it to say whether a translation shows the attributes asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use layers::eval::classifier::{Config, LeNet};
use layers::loss::bce_with_logits_per_image;
use layers::step::{DataSpec, LabelSpec};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors};
use layers::{Adam, AdamConfig, Checkpoint, Labels};
use serde::Serialize;

use crate::config::RunConfig;
use crate::data::pipeline::SplitSources;
use crate::data::{batch_indices, batches_per_epoch, epoch_order, Binarization, Split};
use crate::run::checkpoint::{KIND_ATTRIBUTE_CLASSIFIER, META_KIND};

const KIND: &str = KIND_ATTRIBUTE_CLASSIFIER;
const META_NAMES: &str = "genzoo.attributes";
const META_CONFIG: &str = "genzoo.config";

pub struct AttributeClassifier {
    net: LeNet,
    pub names: Vec<String>,
    pub shape: [usize; 3],
}

impl AttributeClassifier {
    /// Whether each image `(b, c, h, w)` in [0, 1] shows each attribute.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<Vec<bool>>> {
        let logits = self.net.forward(x)?.to_vec2::<f32>()?;
        Ok(logits
            .into_iter()
            .map(|row| row.into_iter().map(|l| l > 0.0).collect())
            .collect())
    }
}

pub struct TrainArgs {
    /// The run whose data (and model shape) the classifier reads.
    pub run: RunConfig,
    pub data: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    pub out: PathBuf,
    pub device: Device,
}

#[derive(Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    /// Test accuracy per attribute.
    pub test_accuracy: Vec<f64>,
}

/// The run's data as the classifier reads it: its model's image shape and attributes.
fn data_spec(run: &RunConfig, dir: Option<&Path>) -> Result<DataSpec> {
    let mut run = run.clone();
    crate::run::fit_to_data(&mut run, dir)?;
    let (model, _, _) = crate::run::checkpoint::build_model(&run, &Device::Cpu)?;
    let spec = model.data_spec();
    let LabelSpec::Attributes(_) = spec.labels else {
        bail!(
            "model `{}` is not trained on attribute vectors: an attribute classifier needs [data] attributes or --attrs",
            run.model
        );
    };
    Ok(DataSpec {
        two_domains: false,
        held_out_grid: false,
        ..spec
    })
}

pub fn train(args: &TrainArgs, mut on_epoch: impl FnMut(&EpochReport)) -> Result<Vec<EpochReport>> {
    ensure!(
        args.epochs > 0 && args.batch_size > 0,
        "--epochs and --batch-size must be positive"
    );
    let spec = data_spec(&args.run, args.data.as_deref())?;
    let LabelSpec::Attributes(k) = spec.labels else {
        unreachable!("data_spec checks the labels")
    };
    let data = &args.run.data;
    let train = SplitSources::load(&spec, data, args.data.as_deref(), Split::Train)?;
    let test = SplitSources::load(&spec, data, args.data.as_deref(), Split::Test)?;
    let names = train.images.attribute_names().unwrap_or_default();
    let [c, s, _] = spec.shape;
    let cfg = Config {
        channels: c,
        image_size: s,
        features: 128,
        classes: k,
    };
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, args.seed, DType::F32, &args.device);
    let net = LeNet::new(&cfg, vb)?;
    let mut adam = Adam::new(
        &varmap,
        AdamConfig {
            lr: args.lr,
            ..AdamConfig::default()
        },
    )?;
    let n = train.images.len();
    let mut reports = Vec::new();
    for epoch in 0..args.epochs {
        let order = epoch_order(n, args.seed, epoch as u64);
        let mut total = 0.0;
        for b in 0..batches_per_epoch(n, args.batch_size) {
            let idx = batch_indices(&order, args.batch_size, b);
            let batch = train.batch(idx, &[], Binarization::None, &args.device)?;
            let Some(Labels::Attributes(y)) = &batch.labels else {
                bail!("the training batch has no attribute vectors");
            };
            let loss = (bce_with_logits_per_image(&net.forward(&batch.images)?, y)?.mean_all()?
                / k as f64)?;
            total += loss.to_scalar::<f32>()? as f64 * idx.len() as f64;
            adam.backward_step(&loss)?;
        }
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: total / n as f64,
            test_accuracy: accuracy(&net, &test, k, &args.device)?,
        };
        on_epoch(&report);
        reports.push(report);
    }
    let mut metadata = BTreeMap::new();
    metadata.insert(META_KIND.to_string(), KIND.to_string());
    metadata.insert(META_CONFIG.into(), serde_json::to_string(&cfg)?);
    metadata.insert(META_NAMES.into(), serde_json::to_string(&names)?);
    let last = reports.last().expect("at least one epoch");
    metadata.insert(
        "genzoo.test_accuracy".into(),
        serde_json::to_string(&last.test_accuracy)?,
    );
    metadata.insert("genzoo.test_images".into(), test.images.len().to_string());
    Checkpoint {
        tensors: varmap_tensors(&varmap),
        metadata,
    }
    .save(&args.out)?;
    Ok(reports)
}

/// Per attribute, the share of `sources`' images the net reads right.
fn accuracy(net: &LeNet, sources: &SplitSources, k: usize, device: &Device) -> Result<Vec<f64>> {
    let n = sources.images.len();
    let order: Vec<usize> = (0..n).collect();
    let mut right = vec![0usize; k];
    for b in 0..batches_per_epoch(n, 500) {
        let idx = batch_indices(&order, 500, b);
        let batch = sources.batch(idx, &[], Binarization::None, device)?;
        let Some(Labels::Attributes(y)) = &batch.labels else {
            bail!("the test batch has no attribute vectors");
        };
        let predicted = net.forward(&batch.images)?.to_vec2::<f32>()?;
        for (p, t) in predicted.iter().zip(y.to_vec2::<f32>()?) {
            for a in 0..k {
                right[a] += usize::from((p[a] > 0.0) == (t[a] > 0.5));
            }
        }
    }
    Ok(right.iter().map(|&r| r as f64 / n as f64).collect())
}

/// Loads an attribute classifier file.
pub fn load(path: &Path, device: &Device) -> Result<AttributeClassifier> {
    let ck = super::load_evaluator(path, KIND, "an attribute classifier", device)?;
    let cfg: Config = super::meta_json(&ck, META_CONFIG, path, "a classifier config")?;
    let names: Vec<String> = super::meta_json(&ck, META_NAMES, path, "a list of names")?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, device);
    let net = LeNet::new(&cfg, vb)?;
    load_into_varmap(&varmap, &ck.tensors, path)?;
    Ok(AttributeClassifier {
        shape: [cfg.channels, cfg.image_size, cfg.image_size],
        names,
        net,
    })
}

/// Where a checkpoint's attribute classifier is looked for by default: beside it, named after
/// it (`models/stargan-digits.safetensors` -> `models/stargan-digits-attributes.safetensors`).
pub fn beside(checkpoint: &Path) -> PathBuf {
    super::beside(checkpoint, "attributes")
}
