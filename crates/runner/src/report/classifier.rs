//! `genzoo classifier`: trains and evaluates the LeNet digit classifier that the sample
//! metrics use ([`crate::report::quality`]). The shipped weights (`models/mnist-classifier.safetensors`)
//! are compiled into the binary, so `genzoo eval` needs no file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use layers::eval::classifier::{Config, LeNet};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors};
use layers::{Adam, AdamConfig, Checkpoint, Rng, Stream};
use serde::Serialize;

use crate::data::{batch_indices, batches_per_epoch, epoch_order, load_split, Dataset, Split};
use crate::run::checkpoint::{KIND_DIGIT_CLASSIFIER, META_KIND};

/// The shipped classifier's weights.
pub const SHIPPED: &[u8] = include_bytes!("../../../../models/mnist-classifier.safetensors");

const KIND: &str = KIND_DIGIT_CLASSIFIER;

pub struct TrainArgs {
    pub data: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Random translation of each training image by up to this many pixels.
    pub max_shift: usize,
    pub out: PathBuf,
    pub device: Device,
}

#[derive(Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_accuracy: f64,
}

/// Trains LeNet on the training split, reports test accuracy after every epoch, and saves the
/// weights (with the final accuracy in the metadata) atomically to `out`.
pub fn train(args: &TrainArgs, mut on_epoch: impl FnMut(&EpochReport)) -> Result<Vec<EpochReport>> {
    ensure!(
        args.epochs > 0 && args.batch_size > 0,
        "--epochs and --batch-size must be positive"
    );
    let cfg = Config::default();
    let shape = [cfg.channels, cfg.image_size, cfg.image_size];
    let train = load_split(args.data.as_deref(), Split::Train, shape)?;
    let test = load_split(args.data.as_deref(), Split::Test, shape)?;
    let labels = |d: &Dataset| -> Result<Vec<u32>> {
        d.labels
            .clone()
            .with_context(|| format!("dataset {} has no labels to train a classifier on", d.name))
    };
    let (train_labels, test_labels) = (labels(&train)?, labels(&test)?);
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
    let mut reports = Vec::new();
    for epoch in 0..args.epochs {
        // The last third of the epochs at a tenth of the rate: Adam's noise settles.
        if epoch == args.epochs - args.epochs / 3 {
            adam.set_lr(args.lr / 10.0);
        }
        let order = epoch_order(train.len(), args.seed, epoch as u64);
        let mut rng = Rng::derive(args.seed, Stream::Step, epoch as u64);
        let mut total = 0.0;
        for k in 0..batches_per_epoch(train.len(), args.batch_size) {
            let idx = batch_indices(&order, args.batch_size, k);
            let x = shifted_batch(&train, idx, args.max_shift, &mut rng, &args.device)?;
            let y: Vec<u32> = idx.iter().map(|&i| train_labels[i]).collect();
            let y = Tensor::new(y, &args.device)?;
            let loss = candle_nn::loss::cross_entropy(&net.forward(&x)?, &y)?;
            total += loss.to_scalar::<f32>()? as f64 * idx.len() as f64;
            adam.backward_step(&loss)?;
        }
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: total / train.len() as f64,
            test_accuracy: accuracy(&net, &test, &test_labels, &args.device)?,
        };
        on_epoch(&report);
        reports.push(report);
    }
    let mut metadata = BTreeMap::new();
    metadata.insert(META_KIND.to_string(), KIND.to_string());
    metadata.insert("genzoo.config".into(), serde_json::to_string(&cfg)?);
    let last = reports.last().expect("at least one epoch");
    metadata.insert(
        "genzoo.test_accuracy".into(),
        format!("{:.4}", last.test_accuracy),
    );
    metadata.insert("genzoo.test_images".into(), test.len().to_string());
    Checkpoint {
        tensors: varmap_tensors(&varmap),
        metadata,
    }
    .save(&args.out)?;
    Ok(reports)
}

/// `(b, 1, h, w)` intensities, each image moved by a random offset of up to `max_shift`
/// pixels in each direction (zeros fill in).
fn shifted_batch(
    data: &Dataset,
    idx: &[usize],
    max_shift: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    let [c, h, w] = data.shape;
    let mut values = vec![0f32; idx.len() * c * h * w];
    let span = 2 * max_shift + 1;
    for (k, &i) in idx.iter().enumerate() {
        let dy = rng.below(span) as isize - max_shift as isize;
        let dx = rng.below(span) as isize - max_shift as isize;
        let image = data.image(i);
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize - dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                for x in 0..w {
                    let sx = x as isize - dx;
                    if sx < 0 || sx >= w as isize {
                        continue;
                    }
                    values[((k * c + ch) * h + y) * w + x] =
                        image[(ch * h + sy as usize) * w + sx as usize] as f32 / 255.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(values, (idx.len(), c, h, w), device)?)
}

/// The share of `data` the classifier labels correctly.
pub fn accuracy(net: &LeNet, data: &Dataset, labels: &[u32], device: &Device) -> Result<f64> {
    let order: Vec<usize> = (0..data.len()).collect();
    let mut hits = 0usize;
    for k in 0..batches_per_epoch(data.len(), 500) {
        let idx = batch_indices(&order, 500, k);
        let x = shifted_batch(data, idx, 0, &mut Rng::new(0), device)?;
        let predicted = net.forward(&x)?.argmax(1)?.to_vec1::<u32>()?;
        hits += predicted
            .iter()
            .zip(idx)
            .filter(|(p, &i)| **p == labels[i])
            .count();
    }
    Ok(hits as f64 / data.len() as f64)
}

/// Loads a classifier file, or the shipped one when `path` is None.
pub fn load(path: Option<&Path>, device: &Device) -> Result<LeNet> {
    let checkpoint = match path {
        Some(p) => crate::run::checkpoint::load_checkpoint(p, device)?,
        None => {
            let tensors = candle_core::safetensors::load_buffer(SHIPPED, device)?;
            Checkpoint {
                tensors,
                metadata: BTreeMap::new(),
            }
        }
    };
    let name = path.map_or("the shipped classifier".into(), |p| p.display().to_string());
    if let Some(kind) = checkpoint.meta(META_KIND) {
        if kind != KIND {
            bail!("{name} is a `{kind}` file, not a digit classifier");
        }
    }
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, device);
    let net = LeNet::new(&Config::default(), vb)?;
    load_into_varmap(&varmap, &checkpoint.tensors, Path::new(&name))?;
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bar for the evaluator: at least 98.5% of the 997 bundled test digits.
    #[test]
    fn the_shipped_classifier_reads_the_test_digits() -> Result<()> {
        let device = Device::Cpu;
        let net = load(None, &device)?;
        let test = load_split(None, Split::Test, [1, 28, 28])?;
        let labels = test.labels.clone().expect("bundled digits have labels");
        let acc = accuracy(&net, &test, &labels, &device)?;
        assert!(acc >= 0.985, "test accuracy {acc}");
        Ok(())
    }

    #[test]
    fn shifts_move_pixels_and_fill_zeros() -> Result<()> {
        let data = Dataset {
            name: "tiny".into(),
            shape: [1, 2, 2],
            pixels: vec![255, 0, 0, 0],
            labels: None,
        };
        // With a maximum shift of 1 some draw moves the lit pixel off (0, 0).
        let mut rng = Rng::new(1);
        let moved = (0..20).any(|_| {
            let x = shifted_batch(&data, &[0], 1, &mut rng, &Device::Cpu).unwrap();
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] == 0.0
        });
        assert!(moved);
        let same = shifted_batch(&data, &[0], 0, &mut rng, &Device::Cpu)?;
        assert_eq!(
            same.flatten_all()?.to_vec1::<f32>()?,
            vec![1.0, 0.0, 0.0, 0.0]
        );
        Ok(())
    }
}
