//! A training run's checkpoint: the model's weights under their reference names, the
//! optimiser's moments, and the metadata that rebuilds the model (`genzoo.*` keys).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use layers::gan::AdversarialModel;
use layers::train::checkpoint::{load_into_varmap, varmap_tensors};
use layers::{Adam, Checkpoint, GenerativeModel, LikelihoodModel, Values};

use crate::config::RunConfig;
use crate::data::Binarization;
use crate::registry;

pub const META_FORMAT: &str = "genzoo.format";
pub const META_MODEL: &str = "genzoo.model";
pub const META_CONFIG: &str = "genzoo.config";
pub const META_STEP: &str = "genzoo.step";
pub const META_EPOCH: &str = "genzoo.epoch";
pub const META_DATASET: &str = "genzoo.dataset";
pub const META_VERSION: &str = "genzoo.version";
pub const META_OPTIMIZER_STEP: &str = "genzoo.optimizer.step";
pub const META_EPOCH_SUMS: &str = "genzoo.epoch_sums";
pub const FORMAT_VERSION: &str = "1";
/// Prefix of the optimiser's tensors, kept apart from the model's reference names.
pub const OPTIMIZER_PREFIX: &str = "optimizer";
/// Prefix of a GAN generator's weight average.
pub const AVERAGE_PREFIX: &str = "ema";

/// Where a run stands when it is saved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Optimiser steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Per-metric sums over the current epoch so far, and the number of steps summed.
    pub epoch_sums: BTreeMap<String, f64>,
    pub epoch_steps: u64,
}

/// Everything a training run saves.
pub struct TrainState<'a> {
    pub run: &'a RunConfig,
    pub varmap: &'a VarMap,
    /// Each optimiser under its tensor prefix; the first is the run's main one.
    pub optimizers: &'a [(&'a str, &'a Adam)],
    /// Further tensors (a GAN generator's weight average).
    pub extra: HashMap<String, Tensor>,
    pub progress: &'a Progress,
    pub dataset: &'a str,
}

/// The metadata key of the step count of the optimiser saved under `prefix`.
fn optimizer_step_key(prefix: &str) -> String {
    if prefix == OPTIMIZER_PREFIX {
        META_OPTIMIZER_STEP.to_string()
    } else {
        format!("genzoo.{prefix}.step")
    }
}

pub fn save_train_state(state: &TrainState, path: &Path) -> Result<()> {
    let mut ck = Checkpoint {
        tensors: varmap_tensors(state.varmap),
        metadata: BTreeMap::new(),
    };
    ck.tensors.extend(state.extra.clone());
    for (prefix, optimizer) in state.optimizers {
        let (moments, step) = optimizer.state(prefix)?;
        ck.tensors.extend(moments);
        ck.metadata
            .insert(optimizer_step_key(prefix), step.to_string());
    }
    let p = state.progress;
    let mut sums = p.epoch_sums.clone();
    sums.insert("__steps".into(), p.epoch_steps as f64);
    for (k, v) in [
        (META_FORMAT, FORMAT_VERSION.to_string()),
        (META_MODEL, state.run.model.clone()),
        (META_CONFIG, state.run.to_json()?),
        (META_STEP, p.step.to_string()),
        (META_EPOCH, p.epoch.to_string()),
        (META_DATASET, state.dataset.to_string()),
        (META_VERSION, env!("CARGO_PKG_VERSION").to_string()),
        (META_EPOCH_SUMS, serde_json::to_string(&sums)?),
    ] {
        ck.metadata.insert(k.to_string(), v);
    }
    ck.save(path)
}

/// A model rebuilt from a checkpoint.
pub struct LoadedModel {
    pub run: RunConfig,
    pub model: Box<dyn LikelihoodModel>,
    pub varmap: VarMap,
    pub checkpoint: Checkpoint,
    pub progress: Progress,
}

fn parse_meta<T: std::str::FromStr>(ck: &Checkpoint, key: &str, path: &Path) -> Result<T> {
    let raw = ck.require_meta(key, path)?;
    raw.parse().map_err(|_| {
        anyhow::anyhow!(
            "{}: metadata `{key}` = {raw:?} is not a number",
            path.display()
        )
    })
}

/// Builds `run`'s model with fresh (seeded) weights.
pub fn build_model(
    run: &RunConfig,
    device: &Device,
) -> Result<(Box<dyn LikelihoodModel>, VarMap, RunConfig)> {
    let build = registry::builder(&run.model)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, run.train.seed, DType::F32, device);
    let (model, resolved) = build(&run.model_config, vb)?;
    if model.values() == Values::Intensities && run.train.binarize != Binarization::None {
        bail!(
            "model `{}` as configured models 256 intensity levels per value, but [train] binarize = \"{}\" would feed it binary images; set binarize = \"none\"",
            run.model,
            format!("{:?}", run.train.binarize).to_lowercase()
        );
    }
    let mut run = run.clone();
    run.model_config = resolved;
    Ok((model, varmap, run))
}

/// The run config a checkpoint was trained with, or `plain`'s for a weights file without
/// genzoo metadata.
fn checkpoint_run(
    checkpoint: &Checkpoint,
    path: &Path,
    plain: Option<&RunConfig>,
) -> Result<RunConfig> {
    let run = match (checkpoint.meta(META_CONFIG), plain) {
        (Some(json), _) => {
            let run = RunConfig::from_json(json)
                .with_context(|| format!("{}: metadata `{META_CONFIG}` is not a valid run config", path.display()))?;
            if let Some(other) = plain {
                if other.model != run.model {
                    bail!(
                        "{} is a checkpoint of model `{}`, not `{}`",
                        path.display(),
                        run.model,
                        other.model
                    );
                }
            }
            run
        }
        (None, Some(run)) => run.clone(),
        (None, None) => bail!(
            "{} has no genzoo metadata (`{META_CONFIG}`): it is not a genzoo checkpoint. For plain weights \
             (e.g. converted from PyTorch) name the model with --model (and its config with --config)",
            path.display()
        ),
    };
    Ok(run)
}

/// Loads a genzoo checkpoint, or a plain weights file (e.g. converted from PyTorch) when
/// `plain` gives the run config to interpret it with.
pub fn load_model(path: &Path, device: &Device, plain: Option<&RunConfig>) -> Result<LoadedModel> {
    let checkpoint = Checkpoint::load(path, device)?;
    let run = checkpoint_run(&checkpoint, path, plain)?;
    let (model, varmap, run) = build_model(&run, device)?;
    let unused = load_into_varmap(&varmap, &checkpoint.tensors, path)?;
    warn_unused(&unused, path);
    let progress = read_progress(&checkpoint, path)?;
    Ok(LoadedModel {
        run,
        model,
        varmap,
        checkpoint,
        progress,
    })
}

/// Warns about tensors in a file that nothing uses (optimiser state and weight averages
/// aside).
fn warn_unused(unused: &[String], path: &Path) {
    let foreign: Vec<&String> = unused
        .iter()
        .filter(|n| !n.starts_with(OPTIMIZER_PREFIX) && !n.starts_with(AVERAGE_PREFIX))
        .collect();
    if !foreign.is_empty() {
        tracing::warn!(
            "{}: ignored {} tensor(s) the model does not use: {}",
            path.display(),
            foreign.len(),
            foreign
                .iter()
                .take(8)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Where the run stood when `checkpoint` was saved (zero for plain weights).
fn read_progress(checkpoint: &Checkpoint, path: &Path) -> Result<Progress> {
    if checkpoint.meta(META_STEP).is_none() {
        return Ok(Progress::default());
    }
    let mut sums: BTreeMap<String, f64> = match checkpoint.meta(META_EPOCH_SUMS) {
        Some(s) => serde_json::from_str(s).with_context(|| {
            format!(
                "{}: metadata `{META_EPOCH_SUMS}` is not valid",
                path.display()
            )
        })?,
        None => BTreeMap::new(),
    };
    let epoch_steps = sums.remove("__steps").unwrap_or(0.0) as u64;
    Ok(Progress {
        step: parse_meta(checkpoint, META_STEP, path)?,
        epoch: parse_meta(checkpoint, META_EPOCH, path)?,
        epoch_sums: sums,
        epoch_steps,
    })
}

/// Builds `run`'s GAN with fresh (seeded) weights.
pub fn build_adversarial(
    run: &RunConfig,
    device: &Device,
) -> Result<(Box<dyn AdversarialModel>, VarMap, RunConfig)> {
    let build = registry::adversarial_builder(&run.model)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, run.train.seed, DType::F32, device);
    let (model, resolved) = build(&run.model_config, vb)?;
    let mut run = run.clone();
    run.model_config = resolved;
    Ok((model, varmap, run))
}

/// A GAN rebuilt from a checkpoint.
pub struct LoadedAdversarial {
    pub run: RunConfig,
    pub model: Box<dyn AdversarialModel>,
    pub varmap: VarMap,
    pub checkpoint: Checkpoint,
    pub progress: Progress,
}

/// Loads a GAN checkpoint (or plain weights with `plain`). With `averaged`, the generator
/// takes the moving average of its weights (`ema.…`) where the file has one: the weights
/// samples are drawn with.
pub fn load_adversarial(
    path: &Path,
    device: &Device,
    plain: Option<&RunConfig>,
    averaged: bool,
) -> Result<LoadedAdversarial> {
    let checkpoint = Checkpoint::load(path, device)?;
    let run = checkpoint_run(&checkpoint, path, plain)?;
    let (model, varmap, run) = build_adversarial(&run, device)?;
    let unused = load_into_varmap(&varmap, &checkpoint.tensors, path)?;
    warn_unused(&unused, path);
    if averaged {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        for (name, var) in data.iter() {
            if let Some(avg) = checkpoint.tensors.get(&format!("{AVERAGE_PREFIX}.{name}")) {
                var.set(&avg.to_dtype(var.dtype())?)?;
            }
        }
    }
    let progress = read_progress(&checkpoint, path)?;
    Ok(LoadedAdversarial {
        run,
        model,
        varmap,
        checkpoint,
        progress,
    })
}

/// Any model, for sampling and evaluation.
pub enum Loaded {
    Likelihood(LoadedModel),
    Adversarial(LoadedAdversarial),
}

impl Loaded {
    pub fn generative(&self) -> &dyn GenerativeModel {
        match self {
            Loaded::Likelihood(l) => l.model.as_ref(),
            Loaded::Adversarial(a) => a.model.as_ref(),
        }
    }

    pub fn run(&self) -> &RunConfig {
        match self {
            Loaded::Likelihood(l) => &l.run,
            Loaded::Adversarial(a) => &a.run,
        }
    }

    pub fn step(&self) -> u64 {
        match self {
            Loaded::Likelihood(l) => l.progress.step,
            Loaded::Adversarial(a) => a.progress.step,
        }
    }
}

/// Loads any checkpoint: GANs with their averaged generator weights.
pub fn load_any(path: &Path, device: &Device, plain: Option<&RunConfig>) -> Result<Loaded> {
    let model = match plain {
        Some(run) => run.model.clone(),
        None => Checkpoint::load(path, &Device::Cpu)?
            .meta(META_MODEL)
            .map(str::to_string)
            .unwrap_or_default(),
    };
    if registry::is_adversarial(&model) {
        Ok(Loaded::Adversarial(load_adversarial(
            path, device, plain, true,
        )?))
    } else {
        Ok(Loaded::Likelihood(load_model(path, device, plain)?))
    }
}

/// Restores the optimiser's moments from a loaded checkpoint.
pub fn restore_optimizer(optimizer: &mut Adam, loaded: &LoadedModel, path: &Path) -> Result<()> {
    restore_optimizer_at(optimizer, &loaded.checkpoint, OPTIMIZER_PREFIX, path)
}

/// Restores the moments of the optimiser saved under `prefix`.
pub fn restore_optimizer_at(
    optimizer: &mut Adam,
    checkpoint: &Checkpoint,
    prefix: &str,
    path: &Path,
) -> Result<()> {
    let key = optimizer_step_key(prefix);
    if checkpoint.meta(&key).is_none() {
        bail!(
            "{} holds weights only (no optimizer state `{prefix}`): it can be sampled and evaluated, not resumed",
            path.display()
        );
    }
    let step: u64 = parse_meta(checkpoint, &key, path)?;
    optimizer
        .load_state(prefix, &checkpoint.tensors, step)
        .with_context(|| format!("{}: cannot restore the optimizer", path.display()))
}

/// Writes the weights and metadata of checkpoint `src` to `dst` without the optimizer state:
/// a file to share or ship, which `sample` and `eval` read like the checkpoint.
pub fn export_weights(src: &Path, dst: &Path) -> Result<(usize, usize)> {
    let mut ck = Checkpoint::load(src, &Device::Cpu)?;
    ck.require_meta(META_MODEL, src)?;
    let before = ck.tensors.len();
    ck.tensors
        .retain(|name, _| !name.starts_with(&format!("{OPTIMIZER_PREFIX}.")));
    ck.metadata
        .retain(|k, _| !(k.starts_with("genzoo.optimizer") && k.ends_with("step")));
    ck.metadata.remove(META_EPOCH_SUMS);
    ck.save(dst)?;
    Ok((ck.tensors.len(), before - ck.tensors.len()))
}
