//! How a model trains: the contract between a model, which owns its training step, and the
//! runner's one training loop, which owns everything around it.
//!
//! The split follows burn's `TrainStep` and junyanz's `optimize_parameters`:
//!
//! - the model ([`Trainable`]) says what it needs of its data ([`DataSpec`]), which optimisers
//!   it has ([`OptimizerSpec`]: parameter groups by name prefix), and computes one step from a
//!   typed [`Batch`]: its named loss terms, each minimised by the optimiser it belongs to, in
//!   the order it needs (G then D, a critic step every step and G every fifth, ...);
//! - the loop owns data iteration, the optimisers and their learning-rate schedules, logging
//!   of the recorded terms, sample grids (drawn by the model), checkpoints with the model's
//!   extra training state, exact resume, the weight average, and the stops (a non-finite term,
//!   a collapsed discriminator).
//!
//! A likelihood model is the one-optimiser case ([`LikelihoodTraining`]); a GAN with one
//! generator and one discriminator uses [`crate::gan::AdversarialTraining`]; models with more
//! networks (CycleGAN, StarGAN) implement [`Trainable`] themselves.

use std::collections::HashMap;

use anyhow::{bail, ensure};
use candle_core::{DType, Result, Tensor};

use crate::model::{CodedModel, GenerativeModel, LatentVariableModel, LikelihoodModel, Translator};
use crate::train::optim::Adam;
use crate::{ImageShape, ModelKind, Rng, Values};

/// What a dataset yields for one step. Images are `(b, c, h, w)` in `[0, 1]` (binarized when the
/// run binarizes).
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Option<Labels>,
    /// Images of an unpaired second domain, `(b, c, h, w)` in `[0, 1]` (translation models).
    pub domain_b: Option<Tensor>,
    /// One caption per image (text-to-image models): one of the image's captions, drawn anew
    /// each time the image is used.
    pub captions: Option<Vec<String>>,
    /// Key patches of each image (Puzzle-GAN).
    pub patches: Option<Patches>,
}

/// A box `[x, y, w, h]` in pixels of the image as the model sees it.
pub type PatchBox = [usize; 4];

/// Whether two boxes share a pixel.
pub fn overlap(a: &PatchBox, b: &PatchBox) -> bool {
    a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3]
}

impl Patches {
    /// `(b, 1, h, w)`: 1 inside the union of each image's first `counts[i]` boxes (the true
    /// mask of Puzzle-GAN), cut at the image's edge.
    pub fn union_mask(
        &self,
        counts: &[usize],
        size: (usize, usize),
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        union_of_boxes(&self.boxes, counts, size, device)
    }

    /// The first `n` images' patches.
    pub fn first(&self, n: usize) -> Result<Self> {
        Ok(Self {
            images: self.images.narrow(0, 0, n)?,
            boxes: self.boxes[..n.min(self.boxes.len())].to_vec(),
        })
    }

    /// Each image's patch count when at most `k` are used.
    pub fn counts(&self, k: usize) -> Vec<usize> {
        self.boxes.iter().map(|b| b.len().min(k)).collect()
    }
}

/// `(b, 1, h, w)`: 1 inside the union of image `i`'s first `counts[i]` boxes of `boxes[i]`,
/// cut at the image's edge.
pub fn union_of_boxes(
    boxes: &[Vec<PatchBox>],
    counts: &[usize],
    (h, w): (usize, usize),
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut values = vec![0f32; counts.len() * h * w];
    for (i, (boxes, &k)) in boxes.iter().zip(counts).enumerate() {
        for &[x, y, bw, bh] in boxes.iter().take(k) {
            for row in y..(y + bh).min(h) {
                for col in x..(x + bw).min(w) {
                    values[(i * h + row) * w + col] = 1.0;
                }
            }
        }
    }
    Tensor::from_vec(values, (counts.len(), 1, h, w), device)
}

/// The key patches of a batch: each image's boxes, most important first, and each box's crop
/// resized to the full image (as the reference feeds its part encoder).
#[derive(Debug, Clone)]
pub struct Patches {
    /// `(b, k, c, h, w)` in `[0, 1]`; the slots past an image's boxes are black.
    pub images: Tensor,
    /// Per image, its boxes (at most `k`).
    pub boxes: Vec<Vec<PatchBox>>,
}

impl Batch {
    pub fn images(images: Tensor) -> Self {
        Self {
            images,
            labels: None,
            domain_b: None,
            captions: None,
            patches: None,
        }
    }

    pub fn size(&self) -> Result<usize> {
        self.images.dim(0)
    }

    /// `(b)` u32 class indices, or an error naming what the model needed.
    pub fn classes(&self, model: &str) -> Result<&Tensor> {
        match &self.labels {
            Some(Labels::Classes(t)) => Ok(t),
            _ => candle_core::bail!("{model} needs class labels, and the batch has none"),
        }
    }

    /// The images' key patches, or an error naming what the model needed.
    pub fn patches(&self, model: &str) -> Result<&Patches> {
        match &self.patches {
            Some(p) => Ok(p),
            None => candle_core::bail!(
                "{model} needs key patches of each image, and the batch has none"
            ),
        }
    }

    /// The images' captions, or an error naming what the model needed.
    pub fn captions(&self, model: &str) -> Result<&[String]> {
        match &self.captions {
            Some(c) => Ok(c),
            None => candle_core::bail!("{model} needs a caption per image, and the batch has none"),
        }
    }

    /// The second domain's images, or an error naming what the model needed.
    pub fn domain_b(&self, model: &str) -> Result<&Tensor> {
        self.domain_b.as_ref().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{model} needs images of a second domain, and the batch has none"
            ))
        })
    }
}

/// Labels of a batch.
#[derive(Debug, Clone)]
pub enum Labels {
    /// `(b)` u32 class indices.
    Classes(Tensor),
    /// `(b, k)` f32 multi-hot attribute vectors.
    Attributes(Tensor),
}

/// The labels a model trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelSpec {
    None,
    /// Integer classes, this many.
    Classes(usize),
    /// Multi-hot attribute vectors of this length.
    Attributes(usize),
}

/// What a model needs of its data; the loop builds the batches to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSpec {
    /// The shape of one training image (both domains' for translation models).
    pub shape: ImageShape,
    pub labels: LabelSpec,
    /// Unpaired images of a second domain in every batch.
    pub two_domains: bool,
    /// Held-out images for the per-epoch grid (translation models show test inputs).
    pub held_out_grid: bool,
    /// A caption per image (text-to-image models).
    pub captions: bool,
    /// Key patches per image (Puzzle-GAN): this many boxes and their crops.
    pub patches: usize,
}

impl DataSpec {
    pub fn images(shape: ImageShape) -> Self {
        Self {
            shape,
            labels: LabelSpec::None,
            two_domains: false,
            held_out_grid: false,
            captions: false,
            patches: 0,
        }
    }
}

/// Which learning rate of the run file an optimiser takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrRole {
    /// `train.lr`.
    Main,
    /// `gan.g_lr` when set, else `train.lr` (InfoGAN's paper trains G faster than D).
    Generator,
    /// The model's own Adam, for a network the run file's rates do not fit (a text encoder
    /// pretrained before a GAN's stage).
    Own { lr: f64, beta1: f64, beta2: f64 },
}

/// One optimiser: Adam over the variables whose names start with one of `prefixes` and with
/// none of `excluded`.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerSpec {
    /// How the model names it in [`StepContext::minimize`]; its moments are saved under
    /// `optimizer.{name}` (`optimizer` for the unnamed optimiser of a likelihood model).
    pub name: String,
    pub prefixes: Vec<String>,
    pub excluded: Vec<String>,
    pub lr: LrRole,
}

impl OptimizerSpec {
    pub fn new(name: &str, prefixes: &[&str], lr: LrRole) -> Self {
        Self {
            name: name.to_string(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            excluded: Vec::new(),
            lr,
        }
    }

    /// Whether the variable `name` belongs to this optimiser.
    pub fn owns(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            && !self.excluded.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// The optimisers of a run, by name.
pub struct Optimizers {
    pub groups: Vec<(String, Adam)>,
}

impl Optimizers {
    pub fn get_mut(&mut self, name: &str) -> Result<&mut Adam> {
        let known: Vec<&str> = self.groups.iter().map(|(n, _)| n.as_str()).collect();
        let known = known.join(", ");
        match self.groups.iter_mut().find(|(n, _)| n == name) {
            Some((_, adam)) => Ok(adam),
            None => candle_core::bail!("no optimizer `{name}` (the model has: {known})"),
        }
    }
}

/// Where the run stands at a step, as the model may need it (Progressive GAN's fade, a
/// schedule of its own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Steps taken before this one.
    pub step: u64,
    /// Steps the run takes in all.
    pub total_steps: u64,
    pub steps_per_epoch: u64,
    /// Training images one step consumes (its batches' sizes): the phases of a Progressive GAN
    /// are counted in images.
    pub images_per_step: u64,
}

impl StepProgress {
    /// Training images shown before this step.
    pub fn images(&self) -> u64 {
        self.step * self.images_per_step
    }
}

/// What a model's step works with: its batches, its optimisers, its random numbers and the
/// terms it records. Built by the loop for each step.
pub struct StepContext<'a> {
    pub progress: StepProgress,
    /// This step's random stream (`Stream::Step` at the step's index): the same on resume.
    pub rng: Rng,
    batches: &'a mut dyn FnMut(u64) -> anyhow::Result<Batch>,
    batches_per_step: u64,
    batches_taken: u64,
    optimizers: &'a mut Optimizers,
    terms: Vec<(String, f64)>,
}

impl<'a> StepContext<'a> {
    /// `batches(k)` builds the `k`-th batch of this step (`k < batches_per_step`).
    pub fn new(
        progress: StepProgress,
        rng: Rng,
        batches: &'a mut dyn FnMut(u64) -> anyhow::Result<Batch>,
        batches_per_step: u64,
        optimizers: &'a mut Optimizers,
    ) -> Self {
        Self {
            progress,
            rng,
            batches,
            batches_per_step,
            batches_taken: 0,
            optimizers,
            terms: Vec::new(),
        }
    }

    /// The step's next batch: the first call gives its batch, each further one a fresh batch
    /// (up to [`Trainable::batches_per_step`]).
    pub fn batch(&mut self) -> Result<Batch> {
        if self.batches_taken >= self.batches_per_step {
            candle_core::bail!(
                "the model asked for batch {} of a step that has {} (Trainable::batches_per_step)",
                self.batches_taken + 1,
                self.batches_per_step
            );
        }
        let k = self.batches_taken;
        self.batches_taken += 1;
        (self.batches)(k).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    /// Backward pass of `loss` and one step of optimiser `name` (its own variables only).
    pub fn minimize(&mut self, optimizer: &str, loss: &Tensor) -> Result<()> {
        self.optimizers
            .get_mut(optimizer)?
            .backward_step(loss)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    /// One backward pass of `loss` and one step of each optimiser in `optimizers`: for
    /// variables one loss trains at different rates (CycleGAN's symmetry weights beside its
    /// generators).
    pub fn minimize_together(&mut self, optimizers: &[&str], loss: &Tensor) -> Result<()> {
        let mut vars = Vec::new();
        for name in optimizers {
            vars.extend(self.optimizers.get_mut(name)?.vars().cloned());
        }
        let grads = crate::backprop::backward_for(loss, &vars)?;
        for name in optimizers {
            self.optimizers
                .get_mut(name)?
                .step(&grads)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// One step of optimiser `name` on the sum of the losses `parts` build, each part built,
    /// differentiated and dropped before the next, so that the step holds one part's graph at a
    /// time, not all of them (WGAN-GP: the critic's plain passes, then the penalty's
    /// twice-differentiated one). Returns each part's loss, detached, for the log.
    pub fn minimize_in_parts(
        &mut self,
        optimizer: &str,
        parts: &mut [&mut dyn FnMut() -> Result<Tensor>],
    ) -> Result<Vec<Tensor>> {
        let adam = self.optimizers.get_mut(optimizer)?;
        let mut sum = candle_core::backprop::GradStore::default();
        let mut losses = Vec::with_capacity(parts.len());
        for part in parts.iter_mut() {
            let loss = part()?;
            let mut grads = adam.backward(&loss)?;
            adam.accumulate(&mut grads, &mut sum)
                .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
            losses.push(loss.detach());
        }
        adam.step(&sum)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        Ok(losses)
    }

    /// Records a named scalar term for the log (a loss, a critic value, an accuracy).
    pub fn record(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let v = value.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        self.record_value(name, v);
        Ok(())
    }

    pub fn record_value(&mut self, name: &str, value: f64) {
        self.terms.push((name.to_string(), value));
    }

    /// The recorded terms, in the order recorded.
    pub fn into_terms(self) -> Vec<(String, f64)> {
        self.terms
    }
}

/// What the per-epoch grid shows: images in `[0, 1]` and how many per row.
pub struct Grid {
    pub images: Tensor,
    pub columns: usize,
}

/// A model as the training loop drives it.
pub trait Trainable {
    /// What the model needs of its data.
    fn data_spec(&self) -> DataSpec;

    /// Its optimisers, by name and parameter prefix.
    fn optimizers(&self) -> Vec<OptimizerSpec>;

    /// One training step: take batches from `ctx`, minimise each loss with its optimiser,
    /// record the terms to log.
    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()>;

    /// Batches one step consumes (StarGAN-style critic steps on fresh batches take several).
    fn batches_per_step(&self) -> u64 {
        1
    }

    /// Variable prefixes whose moving average the loop keeps for sampling (`generator.`).
    fn averaged(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the step differentiates a gradient (WGAN-GP's penalty): the loop must switch
    /// Candle's second-order gradients on before the first backward pass.
    fn needs_second_order(&self) -> bool {
        false
    }

    /// The recorded term that sits near zero when the discriminator wins outright (the
    /// collapse stop), for losses bounded below by zero; `None` where no such term exists
    /// (a WGAN critic's loss is unbounded below).
    fn collapse_term(&self) -> Option<&str> {
        None
    }

    /// The terms the progress bar and the loss plot show, most important first (empty: the
    /// first term recorded).
    fn headline_terms(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether [`Trainable::held_out_metrics`] has anything to say (the loop then reads the test
    /// split every epoch).
    fn has_held_out_metrics(&self) -> bool {
        false
    }

    /// Metrics on one held-out batch (means per image), e.g. a likelihood model's loss terms.
    fn held_out_metrics(&self, _batch: &Batch, _rng: &mut Rng) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }

    /// The per-epoch grid: `count` images drawn with `rng` (a fixed stream, so every epoch's
    /// grid shows the same inputs), or translations of `held_out`.
    fn grid(&self, count: usize, rng: &mut Rng, held_out: Option<&Batch>) -> Result<Grid>;

    /// Whether a grid is drawn when a run stops between epochs (cheap for generators; an
    /// autoregressive sampler takes seconds to minutes).
    fn grid_when_stopping(&self) -> bool {
        true
    }

    /// Training state beyond the variables and optimisers (an image pool, a stage counter),
    /// saved in the checkpoint under `state.`.
    fn training_state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(HashMap::new())
    }

    /// Restores what [`Trainable::training_state`] saved.
    fn restore_training_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }

    /// The training stage at `step` (Progressive GAN's resolution): when it changes, the loop
    /// resets every optimiser's moments, as the paper does at each new resolution.
    fn stage(&self, _progress: &StepProgress) -> u64 {
        0
    }

    /// Whether the weight average starts again at each new stage: for a model whose averaged
    /// networks begin to train only in a later stage (a text-to-image GAN after its encoder),
    /// so the average holds none of the untrained weights of the stages before.
    fn restarts_average(&self) -> bool {
        false
    }

    /// The networks only training needs, by variable prefix without its dot (a GAN's
    /// `discriminator`: every variable named `discriminator.…`): sampling and every capability
    /// of [`GenerativeModel`] (evaluation included) read none of their variables, so a file
    /// for sampling may leave them out (`genzoo export --sampling-only`), and a loader for
    /// sampling accepts their absence where the file says so. A network a capability reads
    /// (InfoGAN's Q head on its discriminator's trunk, which `eval` scores its codes with) is
    /// never one of them. Default: none.
    fn training_only(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Whether variable `name` belongs to one of the networks `prefixes` names (without their
/// dots, as [`Trainable::training_only`] gives them): `P` itself or `P.…`.
pub fn under_any(name: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        name.strip_prefix(p.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// The keys of [`Trainable::training_state`] that sampling reads too (a Progressive GAN's
/// phase, the words and captions a text-to-image model has seen): exported weights keep them
/// and drop the rest (image pools, which only training reads and which grow with the images).
pub const SAMPLING_STATE: &[&str] = &["phase", "words", "captions"];

/// Everything the runner holds: a model it can train, and sample or evaluate through the
/// capabilities of [`GenerativeModel`].
pub trait Model: GenerativeModel + Trainable {}
impl<T: GenerativeModel + Trainable> Model for T {}

/// A likelihood model trained by minimising its objective with one Adam: the one-optimiser
/// case of [`Trainable`].
pub struct LikelihoodTraining<M>(pub M);

impl<M: LikelihoodModel + 'static> Trainable for LikelihoodTraining<M> {
    fn data_spec(&self) -> DataSpec {
        DataSpec::images(self.0.image_shape())
    }

    fn optimizers(&self) -> Vec<OptimizerSpec> {
        vec![OptimizerSpec::new("", &[""], LrRole::Main)]
    }

    fn train_step(&mut self, ctx: &mut StepContext) -> Result<()> {
        let batch = ctx.batch()?;
        let loss = self.0.loss(&batch.images, &mut ctx.rng)?;
        // Checked before the update, so a diverged step never touches the weights.
        let value = loss.value.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            ctx.record_value("loss", value);
            return Ok(());
        }
        ctx.minimize("", &loss.value)?;
        for (name, v) in loss.metrics {
            ctx.record_value(&name, v);
        }
        Ok(())
    }

    fn has_held_out_metrics(&self) -> bool {
        true
    }

    fn held_out_metrics(&self, batch: &Batch, rng: &mut Rng) -> Result<Vec<(String, f64)>> {
        Ok(self.0.loss(&batch.images, rng)?.metrics)
    }

    fn grid(&self, count: usize, rng: &mut Rng, _held_out: Option<&Batch>) -> Result<Grid> {
        Ok(Grid {
            images: self.0.sample(count, rng)?,
            columns: 8,
        })
    }

    fn grid_when_stopping(&self) -> bool {
        false
    }
}

impl<M: LikelihoodModel + 'static> GenerativeModel for LikelihoodTraining<M> {
    fn image_shape(&self) -> ImageShape {
        self.0.image_shape()
    }
    fn kind(&self) -> ModelKind {
        self.0.kind()
    }
    fn values(&self) -> Values {
        self.0.values()
    }
    fn sample(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.0.sample(n, rng)
    }
    fn sample_reference(&self, n: usize, rng: &mut Rng) -> Result<Tensor> {
        self.0.sample_reference(n, rng)
    }
    fn effective_parameters(&self) -> Option<usize> {
        self.0.effective_parameters()
    }
    fn classes(&self) -> Option<usize> {
        self.0.classes()
    }
    fn sample_classes(&self, classes: &[u32], rng: &mut Rng) -> Result<Tensor> {
        self.0.sample_classes(classes, rng)
    }
    fn as_latent(&self) -> Option<&dyn LatentVariableModel> {
        self.0.as_latent()
    }
    fn as_likelihood(&self) -> Option<&dyn LikelihoodModel> {
        Some(&self.0)
    }
    fn as_coded(&self) -> Option<&dyn CodedModel> {
        self.0.as_coded()
    }
    fn as_translator(&self) -> Option<&dyn Translator> {
        self.0.as_translator()
    }
}

/// The state tensors under `prefix` (`state.pool_a` -> `pool_a`), for
/// [`Trainable::restore_training_state`].
pub fn state_under(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_string(), v.clone())))
        .collect()
}

/// Checks that every variable belongs to exactly one optimiser at most once and that each
/// optimiser owns something: a model's groups that overlap would step a variable twice.
pub fn check_groups(specs: &[OptimizerSpec], names: &[String]) -> anyhow::Result<()> {
    ensure!(!specs.is_empty(), "the model declares no optimizer");
    for spec in specs {
        let owned = names.iter().filter(|n| spec.owns(n)).count();
        ensure!(
            owned > 0,
            "optimizer `{}` (prefixes {:?}) owns no variable of the model",
            spec.name,
            spec.prefixes
        );
    }
    for name in names {
        let owners: Vec<&str> = specs
            .iter()
            .filter(|s| s.owns(name))
            .map(|s| s.name.as_str())
            .collect();
        if owners.len() > 1 {
            bail!("variable `{name}` belongs to several optimizers: {owners:?}");
        }
    }
    Ok(())
}

/// Implements `GenerativeModel` for a translation model `$t` (a `Translator` and a
/// `Trainable`): an implicit model of 8-bit intensities at its data's shape that translates
/// rather than draws, `sample` answering with `$how` (what to run instead).
#[macro_export]
macro_rules! translation_model {
    ($t:ty, $how:expr) => {
        impl $crate::GenerativeModel for $t {
            fn image_shape(&self) -> $crate::ImageShape {
                $crate::step::Trainable::data_spec(self).shape
            }

            fn kind(&self) -> $crate::ModelKind {
                $crate::ModelKind::Implicit
            }

            fn values(&self) -> $crate::Values {
                $crate::Values::Intensities
            }

            fn sample(
                &self,
                _n: usize,
                _rng: &mut $crate::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                candle_core::bail!(
                    "this model translates images rather than drawing them: {}",
                    $how
                )
            }

            fn as_translator(&self) -> Option<&dyn $crate::Translator> {
                Some(self)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_must_not_overlap_and_must_own_something() {
        let names: Vec<String> = ["generator.a", "discriminator.b", "discriminator.q_head.c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let g = OptimizerSpec::new("generator", &["generator."], LrRole::Generator);
        let mut d = OptimizerSpec::new("discriminator", &["discriminator."], LrRole::Main);
        assert!(check_groups(&[g.clone(), d.clone()], &names).is_ok());
        let mut g_with_head = g.clone();
        g_with_head.prefixes.push("discriminator.q_head.".into());
        let e = check_groups(&[g_with_head.clone(), d.clone()], &names)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("discriminator.q_head.c") && e.contains("several"),
            "{e}"
        );
        d.excluded.push("discriminator.q_head.".into());
        assert!(check_groups(&[g_with_head, d], &names).is_ok());
        let none = OptimizerSpec::new("critic", &["critic."], LrRole::Main);
        let e = check_groups(&[g, none], &names).unwrap_err().to_string();
        assert!(
            e.contains("`critic`") && e.contains("owns no variable"),
            "{e}"
        );
    }

    /// A network's prefix covers its variables and nothing that merely starts alike.
    #[test]
    fn under_any_matches_whole_network_names() {
        let d = vec!["discriminator".to_string(), "netD_A".to_string()];
        assert!(under_any("discriminator.main.0.weight", &d));
        assert!(under_any("netD_A.model.8.bias", &d));
        assert!(under_any("discriminator", &d));
        assert!(!under_any("discriminator2.weight", &d));
        assert!(!under_any("netD_AB.weight", &d));
        assert!(!under_any("netD_B.model.0.weight", &d));
        assert!(!under_any("generator.main.0.weight", &d));
        assert!(!under_any("ema.discriminator.x", &d));
        assert!(!under_any("discriminator.x", &[]));
    }
}
