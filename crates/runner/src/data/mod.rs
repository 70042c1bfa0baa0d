//! Data: where images come from ([`idx`] files and the bundled digits, image [`folder`]s,
//! CelebA-style [`attributes`] files, [`captions`], key [`patches`]), the [`transforms`] that compose on them, the [`source`]s
//! that yield examples by index (in memory or streamed from disk; the synthetic translation
//! domains), and the [`pipeline`] that builds a model's batches from them. Downloads of the
//! full datasets are [`download`].

pub mod attributes;
pub mod captions;
pub mod download;
pub mod folder;
pub mod idx;
pub mod patches;
pub mod pipeline;
pub mod source;
pub mod transforms;

use std::path::Path;

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use layers::{Rng, Stream};
use serde::{Deserialize, Serialize};

pub use folder::{load_image_folder, resize_center_crop};
pub use idx::{bundled_mnist, is_idx_dir, load_idx_dir, parse_idx, IDX_FILES};

/// Which half of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix of the standard MNIST files.
    pub(crate) fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Images as bytes, `(n, c, h, w)` row-major, and optional class labels (any count).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub shape: [usize; 3],
    pub pixels: Vec<u8>,
    pub labels: Option<Vec<u32>>,
}

impl Dataset {
    /// How many classes the labels take: one more than the largest.
    pub fn class_count(&self) -> Option<usize> {
        let labels = self.labels.as_ref()?;
        Some(labels.iter().copied().max().map_or(0, |m| m as usize + 1))
    }

    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_size()
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let s = self.image_size();
        &self.pixels[i * s..(i + 1) * s]
    }

    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.pixels.truncate(n * self.image_size());
            if let Some(l) = &mut self.labels {
                l.truncate(n);
            }
        }
    }
}

/// How pixel bytes become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Binarization {
    /// `pixel >= 128`: the project's standard for every likelihood reported.
    Threshold,
    /// `x ~ Bernoulli(pixel / 255)`, drawn anew each time an image is used.
    Dynamic,
    /// Intensities `pixel / 255` in [0, 1], not binarized.
    None,
}

/// Builds the `(b, c, h, w)` f32 batch of the given images. `rng` is used only for dynamic
/// binarization.
pub fn make_batch(
    data: &Dataset,
    indices: &[usize],
    binarization: Binarization,
    rng: &mut Rng,
    device: &Device,
) -> Result<Tensor> {
    let mut values = Vec::with_capacity(indices.len() * data.image_size());
    for &i in indices {
        let image = data.image(i);
        match binarization {
            Binarization::Threshold => values.extend(image.iter().map(|&p| f32::from(p >= 128))),
            Binarization::None => values.extend(image.iter().map(|&p| p as f32 / 255.0)),
            Binarization::Dynamic => {
                for &p in image {
                    values.push(f32::from(rng.uniform_f32() < p as f32 / 255.0));
                }
            }
        }
    }
    let [c, h, w] = data.shape;
    Ok(Tensor::from_vec(values, (indices.len(), c, h, w), device)?)
}

/// The batches of a run: step `s` takes batch `s mod steps_per_epoch` of epoch
/// `s / steps_per_epoch`'s order, which is drawn once per epoch.
pub struct Batches {
    len: usize,
    batch_size: usize,
    seed: u64,
    steps_per_epoch: u64,
    epoch: u64,
    order: Vec<usize>,
}

impl Batches {
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Self {
        Self {
            len,
            batch_size,
            seed,
            steps_per_epoch: batches_per_epoch(len, batch_size) as u64,
            epoch: 0,
            order: epoch_order(len, seed, 0),
        }
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// The image indices of step `step` (0-based).
    pub fn at(&mut self, step: u64) -> &[usize] {
        let epoch = step / self.steps_per_epoch;
        if epoch != self.epoch {
            self.epoch = epoch;
            self.order = epoch_order(self.len, self.seed, epoch);
        }
        let k = (step % self.steps_per_epoch) as usize;
        batch_indices(&self.order, self.batch_size, k)
    }
}

/// The order of the images in one epoch: a permutation drawn from `(seed, epoch)`, so a
/// resumed run sees the same order as an uninterrupted one.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, Stream::Shuffle, epoch).shuffle(&mut order);
    order
}

/// Batches per epoch, keeping the last partial batch (PyTorch's `drop_last=False`).
pub fn batches_per_epoch(n: usize, batch_size: usize) -> usize {
    n.div_ceil(batch_size)
}

/// The indices of batch `k` within an epoch's order.
pub fn batch_indices(order: &[usize], batch_size: usize, k: usize) -> &[usize] {
    let start = k * batch_size;
    &order[start..(start + batch_size).min(order.len())]
}

pub fn load_split(data: Option<&Path>, split: Split, image_shape: [usize; 3]) -> Result<Dataset> {
    let dataset = match data {
        None => bundled_mnist(split)?,
        Some(dir) => {
            ensure!(
                dir.exists(),
                "data directory {} does not exist",
                dir.display()
            );
            if is_idx_dir(dir) {
                load_idx_dir(dir, split)?
            } else {
                let sub = dir.join(split.name());
                let folder = if sub.is_dir() { sub } else { dir.to_path_buf() };
                load_image_folder(&folder, image_shape[1], image_shape[0])?
            }
        }
    };
    ensure!(
        dataset.shape == image_shape,
        "{}: images are {:?} (c, h, w) but the model expects {:?}",
        dataset.name,
        dataset.shape,
        image_shape
    );
    ensure!(
        !dataset.is_empty(),
        "{}: the dataset is empty",
        dataset.name
    );
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_binarization_is_pixel_at_least_128() -> Result<()> {
        let data = Dataset {
            name: "t".into(),
            shape: [1, 1, 4],
            pixels: vec![0, 127, 128, 255],
            labels: None,
        };
        let mut rng = Rng::new(0);
        let x = make_batch(&data, &[0], Binarization::Threshold, &mut rng, &Device::Cpu)?;
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?, vec![0.0, 0.0, 1.0, 1.0]);
        let x = make_batch(&data, &[0], Binarization::None, &mut rng, &Device::Cpu)?;
        assert_eq!(x.flatten_all()?.to_vec1::<f32>()?[3], 1.0);
        Ok(())
    }
    #[test]
    fn dynamic_binarization_follows_intensity() -> Result<()> {
        let data = Dataset {
            name: "t".into(),
            shape: [1, 1, 3],
            pixels: vec![0, 64, 255],
            labels: None,
        };
        let idx: Vec<usize> = vec![0; 20_000];
        let x = make_batch(
            &data,
            &idx,
            Binarization::Dynamic,
            &mut Rng::new(1),
            &Device::Cpu,
        )?;
        let m = x.mean(0)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(m[0], 0.0);
        assert_eq!(m[2], 1.0);
        assert!((m[1] - 64.0 / 255.0).abs() < 0.01, "{}", m[1]);
        Ok(())
    }
    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let a = epoch_order(100, 3, 0);
        assert_eq!(a, epoch_order(100, 3, 0));
        assert_ne!(a, epoch_order(100, 3, 1));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(batches_per_epoch(100, 32), 4);
        assert_eq!(batch_indices(&a, 32, 3).len(), 4);
    }
}
