//! A training run's checkpoint: the model's weights under their reference names, the
//! optimiser's moments, and the metadata that rebuilds the model (`genzoo.*` keys).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use layers::checkpoint::{load_into_varmap, varmap_tensors};
use layers::{Adam, Checkpoint, LikelihoodModel, Values};

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
    pub optimizer: &'a Adam,
    pub progress: &'a Progress,
    pub dataset: &'a str,
}

pub fn save_train_state(state: &TrainState, path: &Path) -> Result<()> {
    let mut ck = Checkpoint {
        tensors: varmap_tensors(state.varmap),
        metadata: BTreeMap::new(),
    };
    let (moments, opt_step) = state.optimizer.state(OPTIMIZER_PREFIX);
    ck.tensors.extend(moments);
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
        (META_OPTIMIZER_STEP, opt_step.to_string()),
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
    let vb = layers::init::seeded_var_builder(&varmap, run.train.seed, DType::F32, device);
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

/// Loads a genzoo checkpoint, or a plain weights file (e.g. converted from PyTorch) when
/// `plain` gives the run config to interpret it with.
pub fn load_model(path: &Path, device: &Device, plain: Option<&RunConfig>) -> Result<LoadedModel> {
    let checkpoint = Checkpoint::load(path, device)?;
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
    let (model, varmap, run) = build_model(&run, device)?;
    let unused = load_into_varmap(&varmap, &checkpoint.tensors, path)?;
    let foreign: Vec<&String> = unused
        .iter()
        .filter(|n| !n.starts_with(OPTIMIZER_PREFIX))
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
    let progress = if checkpoint.meta(META_STEP).is_some() {
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
        Progress {
            step: parse_meta(&checkpoint, META_STEP, path)?,
            epoch: parse_meta(&checkpoint, META_EPOCH, path)?,
            epoch_sums: sums,
            epoch_steps,
        }
    } else {
        Progress::default()
    };
    Ok(LoadedModel {
        run,
        model,
        varmap,
        checkpoint,
        progress,
    })
}

/// Restores the optimiser's moments from a loaded checkpoint.
pub fn restore_optimizer(optimizer: &mut Adam, loaded: &LoadedModel, path: &Path) -> Result<()> {
    if loaded.checkpoint.meta(META_OPTIMIZER_STEP).is_none() {
        bail!(
            "{} holds weights only (no optimizer state): it can be sampled and evaluated, not resumed",
            path.display()
        );
    }
    let step: u64 = parse_meta(&loaded.checkpoint, META_OPTIMIZER_STEP, path)?;
    optimizer
        .load_state(OPTIMIZER_PREFIX, &loaded.checkpoint.tensors, step)
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
    ck.metadata.remove(META_OPTIMIZER_STEP);
    ck.metadata.remove(META_EPOCH_SUMS);
    ck.save(dst)?;
    Ok((ck.tensors.len(), before - ck.tensors.len()))
}
