//! Datasets: MNIST-format IDX files (gzipped or raw; Fashion-MNIST shares the format), image
//! folders, and the bundled MNIST subset. Images are held once in memory as bytes; batches are
//! built from them each step, so no file is read again after loading.

pub mod download;
pub mod pipeline;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use flate2::read::GzDecoder;
use layers::{Rng, Stream};
use serde::{Deserialize, Serialize};

/// Which half of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix of the standard MNIST files.
    fn idx_prefix(self) -> &'static str {
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

/// Images as bytes, `(n, c, h, w)` row-major, and optional class labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub shape: [usize; 3],
    pub pixels: Vec<u8>,
    pub labels: Option<Vec<u8>>,
}

impl Dataset {
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

// ---------------------------------------------------------------------------------------------
// IDX (MNIST) files.

const IDX_UBYTE: u8 = 0x08;

/// Reads a possibly gzipped file whole.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decompress_if_gz(raw, path)
}

fn decompress_if_gz(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| {
                format!(
                    "{} is not a valid gzip file (corrupt or truncated)",
                    path.display()
                )
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes with `rank` dimensions; returns the dims and the data.
pub fn parse_idx(bytes: &[u8], rank: u8, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(
        bytes.len() >= 4,
        "{}: {} bytes is too short for an IDX header",
        path.display(),
        bytes.len()
    );
    ensure!(
        bytes[0] == 0 && bytes[1] == 0 && bytes[2] == IDX_UBYTE && bytes[3] == rank,
        "{}: expected an IDX file of unsigned bytes with {rank} dimension(s) (magic 00 00 08 0{rank}), found magic {:02x} {:02x} {:02x} {:02x}",
        path.display(),
        bytes[0],
        bytes[1],
        bytes[2],
        bytes[3]
    );
    let header = 4 + 4 * rank as usize;
    ensure!(
        bytes.len() >= header,
        "{}: truncated IDX header ({} bytes, expected at least {header})",
        path.display(),
        bytes.len()
    );
    let dims: Vec<usize> = (0..rank as usize)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let expected = dims.iter().product::<usize>();
    let found = bytes.len() - header;
    ensure!(
        found == expected,
        "{}: header says {dims:?} = {expected} bytes of data, found {found} (truncated or corrupt)",
        path.display()
    );
    Ok((dims, bytes[header..].to_vec()))
}

/// Finds `{stem}` or `{stem}.gz` in `dir`.
fn find_idx_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The four standard file names of an IDX dataset.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

pub fn is_idx_dir(dir: &Path) -> bool {
    IDX_FILES.iter().any(|f| find_idx_file(dir, f).is_some())
}

/// Loads one split of an MNIST-format dataset from `dir`.
pub fn load_idx_dir(dir: &Path, split: Split) -> Result<Dataset> {
    let prefix = split.idx_prefix();
    let find = |kind: &str| {
        let stem = format!("{prefix}-{kind}");
        find_idx_file(dir, &stem).with_context(|| {
            format!(
                "{}: missing {stem} (or {stem}.gz); an MNIST-format directory holds {}",
                dir.display(),
                IDX_FILES.join(", ")
            )
        })
    };
    let images_path = find("images-idx3-ubyte")?;
    let labels_path = find("labels-idx1-ubyte")?;
    from_idx_bytes(
        &read_maybe_gz(&images_path)?,
        &images_path,
        &read_maybe_gz(&labels_path)?,
        &labels_path,
        format!("{}:{}", dir.display(), split.name()),
    )
}

fn from_idx_bytes(
    images: &[u8],
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    name: String,
) -> Result<Dataset> {
    let (dims, pixels) = parse_idx(images, 3, images_path)?;
    let (ldims, labels) = parse_idx(labels, 1, labels_path)?;
    ensure!(
        ldims[0] == dims[0],
        "{} holds {} labels but {} holds {} images",
        labels_path.display(),
        ldims[0],
        images_path.display(),
        dims[0]
    );
    if let Some(bad) = labels.iter().find(|&&l| l > 9) {
        bail!("{}: label {bad} is outside 0-9", labels_path.display());
    }
    Ok(Dataset {
        name,
        shape: [1, dims[1], dims[2]],
        pixels,
        labels: Some(labels),
    })
}

/// The bundled MNIST subset (8,006 training and 997 test digits; MNIST by LeCun, Cortes and
/// Burges, CC BY-SA 3.0), compiled into the binary so that `genzoo train` needs no files.
pub fn bundled_mnist(split: Split) -> Result<Dataset> {
    const TRAIN_IMAGES: &[u8] = include_bytes!("../../../../data/mnist/train-images-idx3-ubyte.gz");
    const TRAIN_LABELS: &[u8] = include_bytes!("../../../../data/mnist/train-labels-idx1-ubyte.gz");
    const TEST_IMAGES: &[u8] = include_bytes!("../../../../data/mnist/t10k-images-idx3-ubyte.gz");
    const TEST_LABELS: &[u8] = include_bytes!("../../../../data/mnist/t10k-labels-idx1-ubyte.gz");
    let (images, labels) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS),
        Split::Test => (TEST_IMAGES, TEST_LABELS),
    };
    let ip = Path::new("<bundled>/images");
    let lp = Path::new("<bundled>/labels");
    from_idx_bytes(
        &decompress_if_gz(images.to_vec(), ip)?,
        ip,
        &decompress_if_gz(labels.to_vec(), lp)?,
        lp,
        format!("bundled-mnist:{}", split.name()),
    )
}

// ---------------------------------------------------------------------------------------------
// Image folders.

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every png/jpg under `dir` (recursively), resized so the shorter side is `size` and
/// center-cropped to `size x size` (torchvision's `Resize(size)` + `CenterCrop(size)`), as
/// grayscale (`channels = 1`) or RGB (`channels = 3`). Images in sub-folders are labelled by
/// folder, in sorted order, as torchvision's `ImageFolder` does.
pub fn load_image_folder(dir: &Path, size: usize, channels: usize) -> Result<Dataset> {
    ensure!(
        channels == 1 || channels == 3,
        "image folders load as 1 (grayscale) or 3 (RGB) channels, not {channels}"
    );
    ensure!(size > 0, "image size must be positive");
    let mut paths = Vec::new();
    collect_images(dir, &mut paths)?;
    paths.sort();
    ensure!(
        !paths.is_empty(),
        "{}: no png or jpg images found (and no MNIST IDX files)",
        dir.display()
    );
    let mut classes: Vec<String> = paths.iter().filter_map(|p| class_of(dir, p)).collect();
    classes.sort();
    classes.dedup();
    let mut pixels = Vec::with_capacity(paths.len() * channels * size * size);
    let mut labels = Vec::new();
    for path in &paths {
        let img =
            image::open(path).with_context(|| format!("cannot decode image {}", path.display()))?;
        pixels.extend(resize_center_crop(&img, size, channels));
        if let Some(class) = class_of(dir, path) {
            labels.push(classes.binary_search(&class).unwrap() as u8);
        }
    }
    let labelled = !classes.is_empty() && labels.len() == paths.len() && classes.len() <= 256;
    Ok(Dataset {
        name: dir.display().to_string(),
        shape: [channels, size, size],
        pixels,
        labels: labelled.then_some(labels),
    })
}

fn class_of(root: &Path, path: &Path) -> Option<String> {
    let parent = path.parent()?;
    (parent != root).then(|| {
        parent
            .strip_prefix(root)
            .ok()?
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    })?
}

/// `(c, size, size)` bytes, channel-major.
fn resize_center_crop(img: &image::DynamicImage, size: usize, channels: usize) -> Vec<u8> {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let scale = size as f64 / w.min(h);
    let nw = ((w * scale).round() as u32).max(size as u32);
    let nh = ((h * scale).round() as u32).max(size as u32);
    let resized = img.resize_exact(nw, nh, image::imageops::FilterType::Triangle);
    let left = (nw - size as u32) / 2;
    let top = (nh - size as u32) / 2;
    let cropped = resized.crop_imm(left, top, size as u32, size as u32);
    if channels == 1 {
        cropped.to_luma8().into_raw()
    } else {
        let rgb = cropped.to_rgb8();
        let mut planar = vec![0u8; 3 * size * size];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                planar[c * size * size + i] = px.0[c];
            }
        }
        planar
    }
}

/// Where data comes from: the bundled subset, or a directory of IDX files or images.
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

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, IDX_UBYTE, rank];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn bundled_subset_has_the_documented_sizes() -> Result<()> {
        let train = bundled_mnist(Split::Train)?;
        let test = bundled_mnist(Split::Test)?;
        assert_eq!((train.len(), test.len()), (8006, 997));
        assert_eq!(train.shape, [1, 28, 28]);
        // Every digit is present in the test split.
        let labels = test.labels.as_ref().unwrap();
        for d in 0..10u8 {
            assert!(labels.iter().filter(|&&l| l == d).count() > 50);
        }
        Ok(())
    }

    #[test]
    fn idx_parser_rejects_bad_headers_and_lengths() {
        let p = Path::new("f.idx");
        let ok = idx(3, &[2, 2, 2], &[0; 8]);
        assert!(parse_idx(&ok, 3, p).is_ok());
        let e = parse_idx(&ok[..ok.len() - 1], 3, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("found 7"), "{e}");
        let e = parse_idx(&idx(1, &[8], &[0; 8]), 3, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("magic 00 00 08 03") && e.contains("found magic 00 00 08 01"),
            "{e}"
        );
        let e = parse_idx(&[1, 2], 3, p).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
    }

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

    #[test]
    fn image_folder_resizes_crops_and_labels_by_folder() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for (class, shade) in [("cats", 10u8), ("dogs", 200u8)] {
            fs::create_dir(dir.path().join(class))?;
            let img = image::RgbImage::from_pixel(40, 20, image::Rgb([shade, shade, shade]));
            img.save(dir.path().join(class).join("a.png"))?;
        }
        let data = load_image_folder(dir.path(), 8, 3)?;
        assert_eq!(data.len(), 2);
        assert_eq!(data.shape, [3, 8, 8]);
        assert_eq!(data.labels, Some(vec![0, 1]));
        assert!(data.image(0).iter().all(|&p| p == 10));
        assert!(data.image(1).iter().all(|&p| p == 200));
        let gray = load_image_folder(dir.path(), 4, 1)?;
        assert_eq!(gray.image_size(), 16);
        Ok(())
    }

    #[test]
    fn missing_and_corrupt_files_are_named() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let e = format!("{:#}", load_idx_dir(dir.path(), Split::Train).unwrap_err());
        assert!(e.contains("missing train-images-idx3-ubyte"), "{e}");
        fs::write(
            dir.path().join("train-images-idx3-ubyte.gz"),
            [0x1f, 0x8b, 1, 2, 3],
        )?;
        fs::write(
            dir.path().join("train-labels-idx1-ubyte"),
            idx(1, &[1], &[3]),
        )?;
        let e = format!("{:#}", load_idx_dir(dir.path(), Split::Train).unwrap_err());
        assert!(
            e.contains("train-images-idx3-ubyte.gz is not a valid gzip file"),
            "{e}"
        );
        fs::write(
            dir.path().join("train-images-idx3-ubyte.gz"),
            idx(3, &[2, 1, 1], &[0, 1]),
        )?;
        let e = format!("{:#}", load_idx_dir(dir.path(), Split::Train).unwrap_err());
        assert!(
            e.contains("holds 1 labels but") && e.contains("holds 2 images"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_image_folder(&dir.path().join("none"), 8, 1).unwrap_err()
        );
        assert!(e.contains("cannot read directory"), "{e}");
        Ok(())
    }
}
