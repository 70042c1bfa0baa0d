//! A training run's checkpoint: the model's weights under their reference names, each
//! optimiser's moments, the weight average, the model's own training state, and the metadata
//! that rebuilds the model (`genzoo.*` keys). One builder and one loader for every model.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use layers::step::{state_under, under_any, Optimizers};
use layers::train::average::WeightAverage;
use layers::train::checkpoint::{load_into_varmap_except, varmap_tensors};
use layers::{Checkpoint, Model, Values};

use crate::config::RunConfig;
use crate::data::Binarization;
use crate::registry::{self, BuildInput};

pub const META_FORMAT: &str = "genzoo.format";
pub const META_MODEL: &str = "genzoo.model";
pub const META_CONFIG: &str = "genzoo.config";
/// Set by the evaluators' classifier files (no run config of their own): what the file holds,
/// one of the two kinds below.
pub const META_KIND: &str = "genzoo.kind";
pub const KIND_DIGIT_CLASSIFIER: &str = "mnist-classifier";
pub const KIND_ATTRIBUTE_CLASSIFIER: &str = "attribute-classifier";
pub const KIND_PUZZLE_LOCATOR: &str = "puzzle-locator";
pub const META_STEP: &str = "genzoo.step";
pub const META_EPOCH: &str = "genzoo.epoch";
pub const META_DATASET: &str = "genzoo.dataset";
pub const META_VERSION: &str = "genzoo.version";
pub const META_OPTIMIZER_STEP: &str = "genzoo.optimizer.step";
pub const META_EPOCH_SUMS: &str = "genzoo.epoch_sums";
/// Updates of the weight average so far (its warm-up): the steps, unless a stage restarted it.
pub const META_AVERAGE_UPDATES: &str = "genzoo.average.updates";
/// `averaged` where the weights are the average itself (`genzoo export --averaged`).
pub const META_WEIGHTS: &str = "genzoo.weights";
const WEIGHTS_AVERAGED: &str = "averaged";
/// The networks a file left out as only training needs them (`genzoo export --sampling-only`,
/// [`layers::Trainable::training_only`]), comma-separated: `discriminator`, `netD_A,netD_B`.
/// Sampling and evaluation accept their absence; resuming refuses the file.
pub const META_OMITTED: &str = "genzoo.omitted";
/// Values a model may have beyond those its file holds, where the file lacks whole networks:
/// left out by `--sampling-only`, or left as initialised by `genzoo convert` (the largest
/// default, StarGAN's 128 x 128 critic, has 45M).
pub const ABSENT_NETWORK_VALUES: usize = 1 << 26;
pub const FORMAT_VERSION: &str = "1";
/// Prefix of the optimisers' tensors, kept apart from the model's reference names.
pub const OPTIMIZER_PREFIX: &str = "optimizer";
/// Prefix of the weight average that samples are drawn with.
pub const AVERAGE_PREFIX: &str = "ema";
/// Prefix of a model's own training state (an image pool).
pub const STATE_PREFIX: &str = "state";

/// Where a run stands when it is saved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Per-term sums over the current epoch so far, and the number of steps summed.
    pub epoch_sums: BTreeMap<String, f64>,
    pub epoch_steps: u64,
    /// Per-term counts where a term was not recorded every step (StarGAN's generator terms);
    /// the others count `epoch_steps`.
    pub epoch_counts: BTreeMap<String, u64>,
}

impl Progress {
    /// Adds one step's terms to the epoch's sums.
    pub fn add_terms(&mut self, terms: &[(String, f64)]) {
        self.epoch_steps += 1;
        for (name, v) in terms {
            *self.epoch_sums.entry(name.clone()).or_default() += v;
            *self.epoch_counts.entry(name.clone()).or_default() += 1;
        }
    }

    /// Each term's mean over the steps that recorded it this epoch.
    pub fn epoch_means(&self) -> Vec<(String, f64)> {
        self.epoch_sums
            .iter()
            .map(|(name, sum)| {
                let n = self
                    .epoch_counts
                    .get(name)
                    .copied()
                    .unwrap_or(self.epoch_steps);
                (name.clone(), sum / n.max(1) as f64)
            })
            .collect()
    }

    /// Starts the next epoch's sums.
    pub fn clear_epoch(&mut self) {
        self.epoch_sums.clear();
        self.epoch_counts.clear();
        self.epoch_steps = 0;
    }

    /// The epoch's sums as a checkpoint keeps them: each term's sum, `__steps`, and
    /// `__count.NAME` for each term recorded on fewer steps than the epoch's.
    fn sums_to_save(&self) -> BTreeMap<String, f64> {
        let mut sums = self.epoch_sums.clone();
        sums.insert("__steps".into(), self.epoch_steps as f64);
        for (name, n) in &self.epoch_counts {
            if *n != self.epoch_steps {
                sums.insert(format!("__count.{name}"), *n as f64);
            }
        }
        sums
    }

    /// The epoch's sums, steps and counts back from [`Progress::sums_to_save`]'s map.
    fn restore_sums(&mut self, mut sums: BTreeMap<String, f64>) {
        self.epoch_steps = sums.remove("__steps").unwrap_or(0.0) as u64;
        let counted: Vec<String> = sums
            .keys()
            .filter(|k| k.starts_with("__count."))
            .cloned()
            .collect();
        self.epoch_counts = sums
            .keys()
            .filter(|k| !k.starts_with("__"))
            .map(|k| (k.clone(), self.epoch_steps))
            .collect();
        for key in counted {
            let n = sums.remove(&key).unwrap_or(0.0) as u64;
            self.epoch_counts
                .insert(key["__count.".len()..].to_string(), n);
        }
        self.epoch_sums = sums;
    }
}

/// The tensor prefix of an optimiser's moments: `optimizer` for a likelihood model's unnamed
/// one, `optimizer.generator` and so on for named ones.
pub fn optimizer_prefix(name: &str) -> String {
    if name.is_empty() {
        OPTIMIZER_PREFIX.to_string()
    } else {
        format!("{OPTIMIZER_PREFIX}.{name}")
    }
}

/// The metadata key of the step count of the optimiser saved under `prefix`
/// ([`META_OPTIMIZER_STEP`] for a one-optimiser model's `optimizer`).
fn optimizer_step_key(prefix: &str) -> String {
    format!("genzoo.{prefix}.step")
}

/// Everything a training run saves.
pub struct TrainState<'a> {
    pub run: &'a RunConfig,
    pub varmap: &'a VarMap,
    pub optimizers: &'a Optimizers,
    pub average: Option<&'a WeightAverage>,
    /// The model's own training state ([`layers::Trainable::training_state`]).
    pub model_state: HashMap<String, Tensor>,
    pub progress: &'a Progress,
    pub dataset: &'a str,
}

/// The metadata that makes a file a genzoo file `sample` and `eval` rebuild the model from:
/// format, model, resolved config, where training stood, the data and genzoo's version.
pub fn identity_metadata(
    run: &RunConfig,
    step: u64,
    epoch: u64,
    dataset: &str,
) -> Result<Vec<(String, String)>> {
    Ok([
        (META_FORMAT, FORMAT_VERSION.to_string()),
        (META_MODEL, run.model.clone()),
        (META_CONFIG, run.to_json()?),
        (META_STEP, step.to_string()),
        (META_EPOCH, epoch.to_string()),
        (META_DATASET, dataset.to_string()),
        (META_VERSION, env!("CARGO_PKG_VERSION").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect())
}

pub fn save_train_state(state: &TrainState, path: &Path) -> Result<()> {
    let mut ck = Checkpoint {
        tensors: varmap_tensors(state.varmap),
        metadata: BTreeMap::new(),
    };
    if let Some(average) = state.average {
        for (name, _, avg) in &average.slots {
            ck.tensors
                .insert(format!("{AVERAGE_PREFIX}.{name}"), avg.clone());
        }
        ck.metadata.insert(
            META_AVERAGE_UPDATES.to_string(),
            average.updates.to_string(),
        );
    }
    for (name, t) in &state.model_state {
        ck.tensors
            .insert(format!("{STATE_PREFIX}.{name}"), t.clone());
    }
    for (name, optimizer) in &state.optimizers.groups {
        let prefix = optimizer_prefix(name);
        let (moments, step) = optimizer.state(&prefix)?;
        ck.tensors.extend(moments);
        ck.metadata
            .insert(optimizer_step_key(&prefix), step.to_string());
    }
    let p = state.progress;
    let sums = p.sums_to_save();
    ck.metadata.extend(identity_metadata(
        state.run,
        p.step,
        p.epoch,
        state.dataset,
    )?);
    ck.metadata
        .insert(META_EPOCH_SUMS.to_string(), serde_json::to_string(&sums)?);
    ck.save(path)
}

/// Builds `run`'s model with fresh (seeded) weights, returning the run config with the model's
/// resolved `[model_config]`.
pub fn build_model(
    run: &RunConfig,
    device: &Device,
) -> Result<(Box<dyn Model>, VarMap, RunConfig)> {
    build_model_within(run, device, None)
}

/// [`build_model`] with at most `max_values` values in its variables (see
/// [`layers::nn::init::seeded_var_builder_within`]).
fn build_model_within(
    run: &RunConfig,
    device: &Device,
    max_values: Option<usize>,
) -> Result<(Box<dyn Model>, VarMap, RunConfig)> {
    let build = registry::builder(&run.model)?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder_within(
        &varmap,
        run.train.seed,
        DType::F32,
        device,
        max_values,
    );
    let input = BuildInput {
        model_config: &run.model_config,
        adversarial: run.gan.adversarial(),
    };
    let (model, resolved) = build(&input, vb)?;
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

/// A model rebuilt from a checkpoint.
pub struct Loaded {
    pub run: RunConfig,
    pub model: Box<dyn Model>,
    pub varmap: VarMap,
    pub checkpoint: Checkpoint,
    pub progress: Progress,
}

impl Loaded {
    /// Sets every variable that has a weight average in the file to its average: the weights
    /// samples are drawn with.
    pub fn use_average(&self) -> Result<()> {
        let data = self.varmap.data().lock().expect("varmap lock poisoned");
        for (name, var) in data.iter() {
            let key = format!("{AVERAGE_PREFIX}.{name}");
            if let Some(avg) = self.checkpoint.tensors.get(&key) {
                if avg.shape() != var.shape() {
                    bail!(
                        "tensor `{key}` has shape {:?}, the model expects {:?}",
                        avg.dims(),
                        var.dims()
                    );
                }
                var.set(&avg.to_dtype(var.dtype())?)?;
            }
        }
        Ok(())
    }
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

/// The evaluators' classifiers (models/mnist-classifier.safetensors, a translation model's
/// attribute classifier) are safetensors files with a `genzoo.config` too, but not a run's: say
/// what the file is and where it goes, rather than that its config has unknown fields.
fn refuse_classifier_weights(checkpoint: &Checkpoint, path: &Path) -> Result<()> {
    let Some(kind) = checkpoint.meta(META_KIND) else {
        return Ok(());
    };
    let used_by = match kind {
        KIND_DIGIT_CLASSIFIER => {
            "`genzoo classifier eval` and `genzoo eval CKPT --classifier FILE`"
        }
        KIND_ATTRIBUTE_CLASSIFIER => "`genzoo eval CKPT --attribute-classifier FILE`",
        KIND_PUZZLE_LOCATOR => "`genzoo eval CKPT --locator FILE` and `genzoo sample CKPT --mode puzzle --locator FILE`",
        _ => "an evaluator",
    };
    bail!(
        "{} holds an evaluator's classifier (`{kind}`, for {used_by}), not a generative model's checkpoint",
        path.display()
    )
}

/// The run config a checkpoint was trained with, or `plain`'s for a weights file without
/// genzoo metadata.
fn checkpoint_run(
    checkpoint: &Checkpoint,
    path: &Path,
    plain: Option<&RunConfig>,
) -> Result<RunConfig> {
    refuse_classifier_weights(checkpoint, path)?;
    let run = match (checkpoint.meta(META_CONFIG), plain) {
        (Some(json), _) => {
            let run = RunConfig::from_json(json).with_context(|| {
                format!(
                    "{}: metadata `{META_CONFIG}` is not a valid run config",
                    path.display()
                )
            })?;
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

/// Reads the checkpoint or weights file a command was given: a path, or an `hf:` spec
/// downloaded into the cache first ([`crate::hub`]). Every command that reads one comes here.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
    Checkpoint::load(&crate::hub::local_path(path)?, device)
}

/// The networks `checkpoint` says it left out ([`META_OMITTED`]); empty for a whole file.
pub fn omitted_networks(checkpoint: &Checkpoint) -> Vec<String> {
    checkpoint
        .meta(META_OMITTED)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Loads a genzoo checkpoint, or a plain weights file (e.g. converted from PyTorch) when
/// `plain` gives the run config to interpret it with, with every network: to resume, or
/// anything else that may need a training-only network. A file that left networks out
/// ([`META_OMITTED`]) is refused by name. The variables hold the trained weights;
/// [`Loaded::use_average`] swaps in the averaged ones.
pub fn load_model(path: &Path, device: &Device, plain: Option<&RunConfig>) -> Result<Loaded> {
    load_model_with(path, device, plain, false)
}

/// [`load_model`]; with `sampling`, a file may lack the training-only networks it says it
/// left out, which then keep their initial values (nothing that samples or evaluates reads
/// them).
fn load_model_with(
    path: &Path,
    device: &Device,
    plain: Option<&RunConfig>,
    sampling: bool,
) -> Result<Loaded> {
    let checkpoint = load_checkpoint(path, device)?;
    let omitted = omitted_networks(&checkpoint);
    if !sampling && !omitted.is_empty() {
        bail!(
            "{} leaves out `{}` (exported with --sampling-only: only what sampling and \
             evaluation use): it can be sampled and evaluated, not resumed or trained on",
            path.display(),
            omitted.join("`, `")
        );
    }
    let run = checkpoint_run(&checkpoint, path, plain)?;
    // Every variable is loaded from the file, so a model larger than the file holds cannot
    // load: a config claiming a huge model fails before it is allocated. The slack (twice the
    // file, and a million values) leaves a file that lacks a few tensors to the clearer
    // "missing tensor(s)" error of `load_into_varmap`; a file that left networks out may lack
    // up to `ABSENT_NETWORK_VALUES` more.
    let held = checkpoint.parameter_count(|_| true);
    let slack = if omitted.is_empty() {
        0
    } else {
        ABSENT_NETWORK_VALUES
    };
    let budget = held
        .saturating_mul(2)
        .saturating_add(1 << 20)
        .saturating_add(slack);
    let (mut model, varmap, run) =
        build_model_within(&run, device, Some(budget)).with_context(|| {
            format!(
                "{}: cannot build model `{}` as its config describes it",
                path.display(),
                run.model
            )
        })?;
    check_omitted(model.as_ref(), &run, &omitted, path)?;
    let unused = load_into_varmap_except(&varmap, &checkpoint.tensors, path, |name| {
        under_any(name, &omitted)
    })?;
    warn_unused(&unused, path);
    let progress = read_progress(&checkpoint, path)?;
    // Before sampling as before resuming: a Progressive GAN draws at the stage it reached.
    let state = state_under(&checkpoint.tensors, &format!("{STATE_PREFIX}."));
    model
        .restore_training_state(&state)
        .with_context(|| format!("{}: restoring the model's training state", path.display()))?;
    Ok(Loaded {
        run,
        model,
        varmap,
        checkpoint,
        progress,
    })
}

/// A file may leave out only networks its model declares training-only: one that claims to
/// have left out a network sampling reads (a generator, InfoGAN's discriminator) is refused,
/// not loaded with that network as initialised.
fn check_omitted(
    model: &dyn Model,
    run: &RunConfig,
    omitted: &[String],
    path: &Path,
) -> Result<()> {
    let training_only = model.training_only();
    if let Some(needed) = omitted.iter().find(|p| !training_only.contains(p)) {
        let declared = match training_only.is_empty() {
            true => "none".to_string(),
            false => format!("`{}`", training_only.join("`, `")),
        };
        bail!(
            "{}: metadata `{META_OMITTED}` says `{needed}` was left out, but model `{}` needs it \
             to sample or evaluate (its training-only networks: {declared})",
            path.display(),
            run.model
        );
    }
    Ok(())
}

/// Loads a checkpoint to sample or evaluate: with the weight average where the file has one,
/// unless `raw` asks for the trained weights themselves. A file exported with
/// `--sampling-only` loads without the training-only networks it left out.
pub fn load_for_sampling(
    path: &Path,
    device: &Device,
    plain: Option<&RunConfig>,
    raw: bool,
) -> Result<Loaded> {
    let loaded = load_model_with(path, device, plain, true)?;
    if raw && loaded.checkpoint.meta(META_WEIGHTS) == Some(WEIGHTS_AVERAGED) {
        bail!(
            "{} holds the weight average only (exported with --averaged): it has no trained weights for --raw",
            path.display()
        );
    }
    if !raw {
        loaded
            .use_average()
            .with_context(|| format!("{}: the weight average", path.display()))?;
    }
    Ok(loaded)
}

/// Warns about tensors in a file that nothing uses (optimiser state, weight averages and
/// training state aside).
fn warn_unused(unused: &[String], path: &Path) {
    let ours = [OPTIMIZER_PREFIX, AVERAGE_PREFIX, STATE_PREFIX];
    let foreign: Vec<&String> = unused
        .iter()
        .filter(|n| !ours.iter().any(|p| n.starts_with(&format!("{p}."))))
        .filter(|n| n.as_str() != OPTIMIZER_PREFIX)
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
    let sums: BTreeMap<String, f64> = match checkpoint.meta(META_EPOCH_SUMS) {
        Some(s) => serde_json::from_str(s).with_context(|| {
            format!(
                "{}: metadata `{META_EPOCH_SUMS}` is not valid",
                path.display()
            )
        })?,
        None => BTreeMap::new(),
    };
    let mut progress = Progress {
        step: parse_meta(checkpoint, META_STEP, path)?,
        epoch: parse_meta(checkpoint, META_EPOCH, path)?,
        ..Progress::default()
    };
    progress.restore_sums(sums);
    Ok(progress)
}

/// Restores every optimiser's moments from a checkpoint.
pub fn restore_optimizers(optimizers: &mut Optimizers, loaded: &Loaded, path: &Path) -> Result<()> {
    for (name, optimizer) in &mut optimizers.groups {
        let prefix = optimizer_prefix(name);
        let key = optimizer_step_key(&prefix);
        if loaded.checkpoint.meta(&key).is_none() {
            bail!(
                "{} holds weights only (no optimizer state `{prefix}`): it can be sampled and evaluated, not resumed",
                path.display()
            );
        }
        let step: u64 = parse_meta(&loaded.checkpoint, &key, path)?;
        optimizer
            .load_state(&prefix, &loaded.checkpoint.tensors, step)
            .with_context(|| format!("{}: cannot restore the optimizer", path.display()))?;
    }
    Ok(())
}

/// Restores the weight average from a checkpoint.
pub fn restore_average(average: &mut WeightAverage, loaded: &Loaded, path: &Path) -> Result<()> {
    for (name, _, avg) in &mut average.slots {
        let key = format!("{AVERAGE_PREFIX}.{name}");
        match loaded.checkpoint.tensors.get(&key) {
            // A file exported with --half holds the average in f16.
            Some(t) => *avg = t.to_dtype(avg.dtype())?,
            None => bail!(
                "{}: missing tensor `{key}` (the weight average)",
                path.display()
            ),
        }
    }
    // One update per step since the average (re)started; checkpoints from before the count
    // was saved never restarted it.
    average.updates = match loaded.checkpoint.meta(META_AVERAGE_UPDATES) {
        Some(_) => parse_meta(&loaded.checkpoint, META_AVERAGE_UPDATES, path)?,
        None => loaded.progress.step,
    };
    Ok(())
}

/// What [`export_weights`] wrote and left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// Tensors written.
    pub kept: usize,
    /// Optimizer and training-state tensors left out.
    pub dropped: usize,
    /// With `sampling_only`: the training-only networks left out (those an earlier export
    /// left out too), and how many tensors of them this export dropped.
    pub omitted: Vec<String>,
    pub omitted_tensors: usize,
    /// With `half`: the tensors stored in half precision.
    pub halved: usize,
}

/// How [`export_weights`] writes a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// The weight average in place of the weights it averages: one copy.
    pub averaged: bool,
    /// Without the networks only training needs.
    pub sampling_only: bool,
    /// Weight matrices and kernels in half precision (see [`store_in_half`]).
    pub half: bool,
}

/// Writes the weights and metadata of checkpoint `src` to `dst` without the optimizer state or
/// the training-only state (image pools): a file to share or ship, which `sample` and `eval`
/// read like the checkpoint. The weight average stays (samples are drawn with it), and so does
/// the state sampling reads ([`layers::step::SAMPLING_STATE`]). With `averaged`, the average
/// replaces the weights it averages (marked in [`META_WEIGHTS`]), so the file holds one copy.
/// With `sampling_only`, the networks the model declares training-only
/// ([`layers::Trainable::training_only`], a GAN's discriminator) are left out too, and named
/// in [`META_OMITTED`]; `src` must load for sampling first, so a file that lacks a tensor
/// without saying so stays refused. With `half`, [`store_in_half`].
pub fn export_weights(src: &Path, dst: &Path, options: ExportOptions) -> Result<Exported> {
    let ExportOptions {
        averaged,
        sampling_only,
        half,
    } = options;
    // To leave networks out, the model (which declares them) is built from the file, and the
    // file it was loaded from is the one exported.
    let (mut ck, training_only) = if sampling_only {
        let loaded = load_model_with(src, &Device::Cpu, None, true)?;
        (loaded.checkpoint, loaded.model.training_only())
    } else {
        (load_checkpoint(src, &Device::Cpu)?, Vec::new())
    };
    ck.require_meta(META_MODEL, src)?;
    let mut omitted = omitted_networks(&ck);
    let mut omitted_tensors = 0;
    if sampling_only {
        for network in training_only {
            if !omitted.contains(&network) {
                omitted.push(network);
            }
        }
        let average = format!("{AVERAGE_PREFIX}.");
        let count = ck.tensors.len();
        ck.tensors.retain(|name, _| {
            let net = name.strip_prefix(&average).unwrap_or(name);
            !under_any(net, &omitted)
        });
        omitted_tensors = count - ck.tensors.len();
        if !omitted.is_empty() {
            ck.metadata
                .insert(META_OMITTED.to_string(), omitted.join(","));
        }
    }
    let before = ck.tensors.len();
    let optimizer = format!("{OPTIMIZER_PREFIX}.");
    let state = format!("{STATE_PREFIX}.");
    ck.tensors.retain(|name, _| {
        let kept_state = name
            .strip_prefix(&state)
            .is_none_or(|key| layers::step::SAMPLING_STATE.contains(&key));
        !name.starts_with(&optimizer) && kept_state
    });
    ck.metadata
        .retain(|k, _| !(k.starts_with("genzoo.optimizer") && k.ends_with("step")));
    ck.metadata.remove(META_EPOCH_SUMS);
    if averaged {
        fold_average(&mut ck, src)?;
    }
    let halved = match half {
        true => store_in_half(&mut ck, src)?,
        false => 0,
    };
    ck.save(dst)?;
    Ok(Exported {
        kept: ck.tensors.len(),
        dropped: before - ck.tensors.len(),
        omitted,
        omitted_tensors,
        halved,
    })
}

/// The largest finite magnitude of IEEE half precision.
const HALF_MAX: f32 = 65504.0;

/// Stores every f32 tensor of two or more dimensions (weight matrices and kernels, which hold
/// nearly all of a model's bytes) as f16, halving a shipped file; vectors (biases, norms'
/// scales and running statistics, whose small variances half precision would round coarsely)
/// and integer state stay as they are. Loading widens the values back to the model's dtype;
/// each weight moves by at most half a unit in the 11th significant bit (a relative 2^-11;
/// below f16's normal range, 6.1e-5, by at most half its spacing there, 3e-8). A value beyond
/// half precision's range is refused by its tensor's name. Returns how many tensors were
/// stored in half.
fn store_in_half(ck: &mut Checkpoint, src: &Path) -> Result<usize> {
    let mut halved = 0;
    for (name, tensor) in ck.tensors.iter_mut() {
        if tensor.dtype() != DType::F32 || tensor.rank() < 2 || tensor.elem_count() == 0 {
            continue;
        }
        let largest = tensor.abs()?.max_all()?.to_scalar::<f32>()?;
        // Infinities and NaN are refused with the rest.
        if largest.is_nan() || largest > HALF_MAX {
            bail!(
                "{}: tensor `{name}` holds {largest}, beyond half precision's range \
                 (+-{HALF_MAX}): export it without --half",
                src.display()
            );
        }
        *tensor = tensor.to_dtype(DType::F16)?;
        halved += 1;
    }
    Ok(halved)
}

/// Puts each `ema.NAME` in place of `NAME`, and says so in the metadata. A file whose weights
/// are the average already (an earlier `--averaged` export) stays as it is, so shipped files
/// re-export with the same command.
fn fold_average(ck: &mut Checkpoint, src: &Path) -> Result<()> {
    if ck.meta(META_WEIGHTS) == Some(WEIGHTS_AVERAGED) {
        return Ok(());
    }
    let prefix = format!("{AVERAGE_PREFIX}.");
    let names: Vec<String> = ck
        .tensors
        .keys()
        .filter(|n| n.starts_with(&prefix))
        .cloned()
        .collect();
    if names.is_empty() {
        bail!(
            "{} has no weight average (`{prefix}*` tensors) to keep",
            src.display()
        );
    }
    for name in names {
        let average = ck.tensors.remove(&name).expect("listed above");
        ck.tensors.insert(name[prefix.len()..].to_string(), average);
    }
    ck.metadata
        .insert(META_WEIGHTS.to_string(), WEIGHTS_AVERAGED.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints written before the optimisers were grouped keep loading: the one optimiser's
    /// step count is still under `genzoo.optimizer.step`.
    #[test]
    fn the_main_optimizer_keeps_its_step_key() {
        assert_eq!(optimizer_step_key(OPTIMIZER_PREFIX), META_OPTIMIZER_STEP);
        assert_eq!(
            optimizer_step_key(&optimizer_prefix("generator")),
            "genzoo.optimizer.generator.step"
        );
    }

    /// A resumed epoch averages each term over the steps that recorded it: a term logged on
    /// every second step (StarGAN's generator terms) keeps its own count through the
    /// checkpoint's metadata, and the others count the epoch's steps.
    #[test]
    fn epoch_sums_and_counts_survive_the_checkpoint() {
        let mut progress = Progress::default();
        for step in 0..6 {
            let mut terms = vec![("d_loss".to_string(), 1.0)];
            if step % 2 == 1 {
                terms.push(("g_loss".to_string(), 3.0));
            }
            progress.add_terms(&terms);
        }
        let saved = progress.sums_to_save();
        assert_eq!(saved.get("__count.g_loss"), Some(&3.0));
        assert!(!saved.contains_key("__count.d_loss"), "{saved:?}");
        let mut restored = Progress::default();
        restored.restore_sums(saved);
        assert_eq!(restored, progress);
        assert_eq!(
            restored.epoch_means(),
            [("d_loss".to_string(), 1.0), ("g_loss".to_string(), 3.0)]
        );
    }

    /// Sampling and evaluation draw with the weight average where the file has one; `raw`
    /// keeps the trained weights.
    #[test]
    fn sampling_loads_the_weight_average_unless_raw() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("avg.safetensors");
        let average = Tensor::full(0.25f32, (3, 16), &Device::Cpu)?;
        let config = "hidden_dim = 3\nlatent_dim = 2\nimage_size = 4";
        write_checkpoint(&path, config, &[("ema.fc1.weight", average.clone())])?;
        let weight = |raw: bool| -> Result<Tensor> {
            let loaded = load_for_sampling(&path, &Device::Cpu, None, raw)?;
            let data = loaded.varmap.data().lock().expect("varmap lock");
            Ok(data["fc1.weight"].as_tensor().clone())
        };
        let same = |t: &Tensor| -> Result<bool> {
            Ok((t - &average)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0)
        };
        assert!(same(&weight(false)?)?);
        assert!(!same(&weight(true)?)?);
        Ok(())
    }

    /// A tiny VAE's checkpoint at `path` whose `[model_config]` is `model_config`, and with
    /// `extra` tensors beside its weights.
    fn write_checkpoint(path: &Path, model_config: &str, extra: &[(&str, Tensor)]) -> Result<()> {
        let mut run = RunConfig::new("vae");
        run.model_config = toml::from_str("hidden_dim = 3\nlatent_dim = 2\nimage_size = 4")?;
        let (_, varmap, mut run) = build_model(&run, &Device::Cpu)?;
        run.model_config = toml::from_str(model_config)?;
        let mut ck = Checkpoint {
            tensors: varmap_tensors(&varmap),
            metadata: BTreeMap::new(),
        };
        ck.tensors
            .extend(extra.iter().map(|(k, t)| (k.to_string(), t.clone())));
        ck.metadata.insert(META_CONFIG.into(), run.to_json()?);
        ck.save(path)
    }

    /// A config claiming a model of 2^44 values (found by tests/fuzz_loaders.rs) is refused
    /// before the model is allocated: without the bound, building it aborts the process.
    #[test]
    fn a_config_claiming_a_huge_model_is_refused_before_allocating() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("huge.safetensors");
        let huge = "hidden_dim = 1099511627776\nlatent_dim = 2\nimage_size = 4";
        write_checkpoint(&path, huge, &[])?;
        let e = format!("{:#}", load_model(&path, &Device::Cpu, None).err().unwrap());
        assert!(
            e.contains("huge.safetensors: cannot build model `vae`")
                && e.contains("past the values there are to load"),
            "{e}"
        );
        Ok(())
    }

    /// An invalid model config in a checkpoint's metadata (found by tests/fuzz_loaders.rs) is an
    /// error naming the file, not only the field.
    #[test]
    fn a_bad_model_config_names_the_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.safetensors");
        write_checkpoint(&path, "hiDden_dim = 3", &[])?;
        let e = format!("{:#}", load_model(&path, &Device::Cpu, None).err().unwrap());
        assert!(
            e.contains("bad.safetensors: cannot build model `vae`")
                && e.contains("unknown field `hiDden_dim`"),
            "{e}"
        );
        Ok(())
    }

    /// A weight average of another shape than its variable is an error naming the file and the
    /// tensor, not Candle's bare shape mismatch.
    #[test]
    fn a_weight_average_of_another_shape_is_a_named_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("avg.safetensors");
        let wrong = Tensor::zeros((5, 5), DType::F32, &Device::Cpu)?;
        let config = "hidden_dim = 3\nlatent_dim = 2\nimage_size = 4";
        write_checkpoint(&path, config, &[("ema.fc1.weight", wrong)])?;
        let e = format!(
            "{:#}",
            load_for_sampling(&path, &Device::Cpu, None, false)
                .err()
                .unwrap()
        );
        assert!(
            e.contains("avg.safetensors: the weight average")
                && e.contains("`ema.fc1.weight` has shape [5, 5], the model expects [3, 16]"),
            "{e}"
        );
        Ok(())
    }

    /// An image side whose square overflows is refused by the model's config, not a panic.
    #[test]
    fn an_image_size_that_overflows_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("side.safetensors");
        write_checkpoint(&path, "image_size = 4294967296", &[])?;
        let e = format!("{:#}", load_model(&path, &Device::Cpu, None).err().unwrap());
        assert!(
            e.contains("side.safetensors: cannot build model `vae`"),
            "{e}"
        );
        Ok(())
    }

    /// Every variable under `networks` set to NaN: anything that reads one turns NaN.
    fn poison(varmap: &VarMap, networks: &[String]) -> Result<usize> {
        let data = varmap.data().lock().expect("varmap lock poisoned");
        let mut n = 0;
        for (_, var) in data.iter().filter(|(n, _)| under_any(n, networks)) {
            var.set(&(var.as_tensor().zeros_like()? + f64::NAN)?)?;
            n += 1;
        }
        Ok(n)
    }

    /// What each model declares training-only is what sampling, translation and InfoGAN's code
    /// predictions never read: with those variables NaN, every output is as it was. InfoGAN
    /// declares nothing, because its code predictions read the discriminator (NaN there
    /// reaches them).
    #[test]
    fn training_only_networks_are_never_read_by_sampling_or_evaluation() -> Result<()> {
        use layers::{Rng, Stream, Target};
        let dev = Device::Cpu;
        let cases: [(&str, &str, &[&str]); 7] = [
            ("gan", "", &["discriminator"]),
            ("dcgan", "ngf = 8\nndf = 8", &["discriminator"]),
            ("cgan", "", &["discriminator"]),
            ("infogan", "", &[]),
            ("progan", "resolution = 16\nlatent_dim = 8\ndepths = [8, 8, 4]", &["discriminator"]),
            ("cyclegan", "image_size = 16\nchannels = 1\nngf = 4\nndf = 4\nn_blocks = 1\nn_layers_d = 1", &["netD_A", "netD_B"]),
            ("stargan", "image_size = 16\nchannels = 1\nc_dim = 3\ng_conv_dim = 4\nd_conv_dim = 4\ng_repeat_num = 1\nd_repeat_num = 3", &["discriminator"]),
        ];
        for (name, config, declared) in cases {
            let mut run = RunConfig::new(name);
            run.model_config = toml::from_str(config)?;
            let (model, varmap, _) = build_model(&run, &dev)?;
            let training_only = model.training_only();
            assert_eq!(training_only, declared, "{name}");
            let x = Rng::derive(2, Stream::Sample, 0).uniform(2 * 256, &dev)?;
            let x = x.reshape((2, 1, 16, 16))?;
            let outputs = || -> Result<Vec<Vec<f32>>> {
                let mut out = Vec::new();
                let mut rng = Rng::derive(1, Stream::Sample, 0);
                if let Some(t) = model.as_translator() {
                    let targets = match name {
                        "stargan" => vec![Target::Attributes(Tensor::new(
                            &[[1f32, 0.0, 1.0], [0.0, 1.0, 0.0]],
                            &dev,
                        )?)],
                        _ => vec![Target::AToB, Target::BToA],
                    };
                    for target in &targets {
                        out.push(t.translate(&x, target)?.flatten_all()?.to_vec1()?);
                    }
                } else {
                    let samples = model.sample(2, &mut rng)?;
                    out.push(samples.flatten_all()?.to_vec1()?);
                    if let Some(coded) = model.as_coded() {
                        let logits = coded.category_logits(&samples)?;
                        out.push(logits.flatten_all()?.to_vec1()?);
                    }
                }
                Ok(out)
            };
            let before = outputs()?;
            assert!(before.iter().flatten().all(|v| v.is_finite()), "{name}");
            let poisoned = poison(&varmap, &training_only)?;
            assert_eq!(poisoned > 0, !declared.is_empty(), "{name}");
            assert_eq!(
                outputs()?,
                before,
                "{name}: a training-only network was read"
            );
            if name == "infogan" {
                poison(&varmap, &["discriminator".to_string()])?;
                let after = outputs()?;
                assert!(after[1].iter().any(|v| v.is_nan()), "infogan's Q reads D");
            }
        }
        Ok(())
    }
}
