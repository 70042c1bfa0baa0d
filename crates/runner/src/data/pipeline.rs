//! The batches a model trains on, built to its [`DataSpec`]: the images at its shape (digits
//! centred on a black border for a larger model), binarized as the run says, with the labels it
//! needs. Batch `k` of a run is a function of `(seed, k)` alone, so a resumed run sees exactly
//! what the uninterrupted one saw.

use std::path::Path;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use layers::step::{Batch, DataSpec, LabelSpec, Labels};
use layers::{Rng, Stream};

use crate::data::{
    batch_indices, batches_per_epoch, is_idx_dir, load_split, make_batch, Batches, Binarization,
    Dataset, Split,
};

/// Side of the digits (IDX files and the bundled subset).
const DIGIT_SIDE: usize = 28;

/// One split of a dataset as a model wants it.
pub struct SplitData {
    pub data: Dataset,
    /// Zero rows and columns added on each side to reach the model's shape.
    pad: (usize, usize),
    labels: LabelSpec,
}

impl SplitData {
    /// Loads `split` of `data` (default: the bundled digits) for a model of shape
    /// `spec.shape`: digits are loaded at 28 x 28 and centred on a black border for a larger
    /// model (DCGAN's 32 x 32), image folders are resized to the shape.
    pub fn load(data: Option<&Path>, split: Split, spec: &DataSpec) -> Result<Self> {
        let [c, h, w] = spec.shape;
        let digits = data.is_none_or(is_idx_dir);
        let (dataset, pad) = if digits && h > DIGIT_SIDE && w > DIGIT_SIDE {
            let d = load_split(data, split, [c, DIGIT_SIDE, DIGIT_SIDE])?;
            (d, ((h - DIGIT_SIDE) / 2, (w - DIGIT_SIDE) / 2))
        } else {
            (load_split(data, split, spec.shape)?, (0, 0))
        };
        if let LabelSpec::Classes(k) = spec.labels {
            let Some(labels) = &dataset.labels else {
                bail!(
                    "{} has no class labels, and the model is conditioned on {k} classes",
                    dataset.name
                );
            };
            if let Some(bad) = labels.iter().find(|&&l| l as usize >= k) {
                bail!(
                    "{}: label {bad} is outside the model's {k} classes",
                    dataset.name
                );
            }
        }
        if let LabelSpec::Attributes(_) = spec.labels {
            bail!(
                "{}: attribute labels need a [data] table that says where they come from",
                dataset.name
            );
        }
        Ok(Self {
            data: dataset,
            pad,
            labels: spec.labels,
        })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The batch of the images at `idx`; `rng` draws dynamic binarization.
    pub fn batch(
        &self,
        idx: &[usize],
        binarize: Binarization,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Batch> {
        let x = make_batch(&self.data, idx, binarize, rng, device)?;
        let (ph, pw) = self.pad;
        let images = x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?;
        let labels = match (self.labels, &self.data.labels) {
            (LabelSpec::Classes(_), Some(labels)) => {
                let l: Vec<u32> = idx.iter().map(|&i| labels[i] as u32).collect();
                Some(Labels::Classes(Tensor::new(l, device)?))
            }
            _ => None,
        };
        Ok(Batch {
            images,
            labels,
            domain_b: None,
        })
    }
}

/// A run's training images (and held-out ones, where the model reports on them or shows
/// them in its grid).
pub struct TrainData {
    pub train: SplitData,
    pub test: Option<SplitData>,
    batches: Batches,
    binarize: Binarization,
    seed: u64,
    batch_size: usize,
    device: Device,
}

/// How a run reads its data.
pub struct DataOptions<'a> {
    pub dir: Option<&'a Path>,
    pub binarize: Binarization,
    pub seed: u64,
    pub batch_size: usize,
    /// Use only the first N training images (0: all).
    pub limit: usize,
    /// Load the test split too.
    pub held_out: bool,
}

impl TrainData {
    pub fn load(spec: &DataSpec, options: &DataOptions, device: &Device) -> Result<Self> {
        let mut train = SplitData::load(options.dir, Split::Train, spec)?;
        if options.limit > 0 {
            train.data.truncate(options.limit);
        }
        let test = match options.held_out {
            true => Some(SplitData::load(options.dir, Split::Test, spec)?),
            false => None,
        };
        Ok(Self {
            batches: Batches::new(train.len(), options.batch_size, options.seed),
            train,
            test,
            binarize: options.binarize,
            seed: options.seed,
            batch_size: options.batch_size,
            device: device.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.train.data.name
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.batches.steps_per_epoch()
    }

    /// Training batch `index` of the run (0-based, counting every batch taken).
    pub fn train_batch(&mut self, index: u64) -> Result<Batch> {
        let idx = self.batches.at(index).to_vec();
        let mut rng = Rng::derive(self.seed, Stream::Binarize, index);
        self.train
            .batch(&idx, self.binarize, &mut rng, &self.device)
    }

    /// The held-out batches in order, binarized deterministically (`pixel >= 128`) whatever
    /// the training option, as every likelihood is reported.
    pub fn held_out_batches(&self) -> Result<Vec<Batch>> {
        let Some(test) = &self.test else {
            return Ok(Vec::new());
        };
        let binarize = match self.binarize {
            Binarization::None => Binarization::None,
            _ => Binarization::Threshold,
        };
        let order: Vec<usize> = (0..test.len()).collect();
        (0..batches_per_epoch(test.len(), self.batch_size))
            .map(|k| {
                let idx = batch_indices(&order, self.batch_size, k);
                test.batch(idx, binarize, &mut Rng::new(0), &self.device)
            })
            .collect()
    }

    /// The first `n` held-out images, for a grid that shows translations of fixed inputs.
    pub fn held_out_grid(&self, n: usize) -> Result<Option<Batch>> {
        let Some(test) = &self.test else {
            return Ok(None);
        };
        let idx: Vec<usize> = (0..n.min(test.len())).collect();
        Ok(Some(test.batch(
            &idx,
            Binarization::None,
            &mut Rng::new(0),
            &self.device,
        )?))
    }
}
