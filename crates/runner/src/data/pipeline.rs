//! The batches a model trains on, built to its [`DataSpec`] from the run's `[data]` table and
//! `--data`: images at its shape (digits centred on a black border for a larger model, image
//! folders resized), through the run's transforms, binarized as the run says, with the labels
//! it needs and, for translation models, an unpaired second domain. Batch `k` of a run is a
//! function of `(seed, k)` alone, so a resumed run sees exactly what the uninterrupted one saw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use layers::step::{Batch, DataSpec, LabelSpec, Labels, PatchBox, Patches};
use layers::{Rng, Stream};
use rayon::prelude::*;

use crate::config::DataConfig;
use crate::data::attributes::AttributeTable;
use crate::data::folder::{folder_source, list_images, probe_channels, Listing};
use crate::data::source::{Annotated, InMemory, Label, Source, WithAttributes};
use crate::data::transforms::{Image, Pipeline, Transform};
use crate::data::{is_idx_dir, load_split, Batches, Binarization, Dataset, Split};

/// Side of the digits (IDX files and the bundled subset).
pub const DIGIT_SIDE: usize = 28;

/// The digits of `dir` (or the bundled ones) when `dir` holds digits rather than images.
fn digits(dir: Option<&Path>, split: Split) -> Result<Option<Arc<Dataset>>> {
    if dir.is_some_and(|d| !is_idx_dir(d)) {
        return Ok(None);
    }
    let d = load_split(dir, split, [1, DIGIT_SIDE, DIGIT_SIDE])?;
    Ok(Some(Arc::new(d)))
}

/// The black border that centres the 28-pixel digits in a model's larger square side (DCGAN's
/// and the Progressive GAN's 32 x 32), if its side takes one.
pub fn digit_border(shape: [usize; 3]) -> Option<usize> {
    let [_, h, w] = shape;
    (h > DIGIT_SIDE && h == w && (h - DIGIT_SIDE).is_multiple_of(2)).then(|| (h - DIGIT_SIDE) / 2)
}

/// The transforms of plain digits for a model of `shape`: the run's own, or the border of
/// [`digit_border`].
fn digit_transforms(data: &DataConfig, shape: [usize; 3]) -> Pipeline {
    match digit_border(shape) {
        Some(pad) if data.transforms.0.is_empty() => Pipeline(vec![Transform::Pad(pad)]),
        _ => data.transforms.clone(),
    }
}

/// One split's sources as the model wants them.
pub struct SplitSources {
    pub images: Box<dyn Source>,
    /// The second domain of a translation model.
    pub domain_b: Option<Box<dyn Source>>,
    labels: LabelSpec,
    captions: bool,
    /// Key patches per image, and their side where chosen from the ink.
    patches: (usize, usize),
}

impl SplitSources {
    /// Builds `split` for a model of `spec` from `[data]` and `--data`.
    pub fn load(
        spec: &DataSpec,
        data: &DataConfig,
        dir: Option<&Path>,
        split: Split,
    ) -> Result<Self> {
        if let Some(d) = dir {
            ensure!(d.exists(), "data directory {} does not exist", d.display());
        }
        let (images, domain_b) = if spec.captions {
            (caption_source(spec, data, dir, split)?, None)
        } else if spec.patches > 0 {
            (boxed_source(spec, data, dir, split)?, None)
        } else if spec.two_domains {
            let (a, b) = two_domains(spec, data, dir, split)?;
            (a, Some(b))
        } else if let LabelSpec::Attributes(k) = spec.labels {
            (attribute_source(spec, data, dir, split, k)?, None)
        } else {
            (plain_source(spec, data, dir, split)?, None)
        };
        for s in std::iter::once(&images).chain(domain_b.as_ref()) {
            ensure!(
                s.shape() == spec.shape,
                "{}: images come out {:?} (c, h, w) after the [data] transforms, but the model expects {:?}",
                s.name(),
                s.shape(),
                spec.shape
            );
            ensure!(!s.is_empty(), "{}: the dataset is empty", s.name());
        }
        if let LabelSpec::Classes(k) = spec.labels {
            check_classes(images.as_ref(), k)?;
        }
        Ok(Self {
            images,
            domain_b,
            labels: spec.labels,
            captions: spec.captions,
            patches: (spec.patches, data.patch_size(spec.shape[1])),
        })
    }

    /// The batch of `idx` (and `idx_b` of the second domain), with fixed random streams: for
    /// evaluation and grids.
    pub fn batch(
        &self,
        idx: &[usize],
        idx_b: &[usize],
        binarize: Binarization,
        device: &Device,
    ) -> Result<Batch> {
        let a = assemble(
            self.images.as_ref(),
            idx,
            &mut Rng::new(0),
            binarize,
            &mut Rng::new(0),
            self.wanted(),
            device,
        )?;
        let domain_b = match &self.domain_b {
            Some(b) => Some(
                assemble(
                    b.as_ref(),
                    idx_b,
                    &mut Rng::new(1),
                    binarize,
                    &mut Rng::new(1),
                    Wanted::default(),
                    device,
                )?
                .images,
            ),
            None => None,
        };
        Ok(Batch { domain_b, ..a })
    }

    /// What a batch of the first domain carries besides its images.
    fn wanted(&self) -> Wanted {
        Wanted {
            labels: self.labels,
            captions: self.captions,
            patches: self.patches,
        }
    }

    /// The first `n` images of each domain.
    pub fn first(&self, n: usize, binarize: Binarization, device: &Device) -> Result<Batch> {
        let idx: Vec<usize> = (0..n.min(self.images.len())).collect();
        let len_b = self.domain_b.as_ref().map_or(0, |b| b.len());
        let idx_b: Vec<usize> = (0..n.min(len_b)).collect();
        self.batch(&idx, &idx_b, binarize, device)
    }
}

fn check_classes(source: &dyn Source, k: usize) -> Result<()> {
    let Some(found) = source.classes() else {
        bail!(
            "{} has no class labels, and the model is conditioned on {k} classes",
            source.name()
        );
    };
    ensure!(
        found <= k,
        "{}: labels take {found} classes, more than the model's {k}",
        source.name()
    );
    Ok(())
}

/// One domain: the digits through transforms, or an image folder.
fn plain_source(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<Box<dyn Source>> {
    if let Some(d) = digits(dir, split)? {
        return Ok(Box::new(InMemory::new(
            d,
            None,
            digit_transforms(data, spec.shape),
        )?));
    }
    let dir = dir.context("an image folder needs --data")?;
    let sub = dir.join(split.name());
    let folder = if sub.is_dir() { sub } else { dir.to_path_buf() };
    folder_for(list_images(&folder)?, spec, data)
}

/// An image folder at the model's size (or `[data] load_size`, for transforms that crop), in
/// the run's channel count (or the images').
fn folder_for(listing: Listing, spec: &DataSpec, data: &DataConfig) -> Result<Box<dyn Source>> {
    let size = match data.load_size {
        0 => spec.shape[1],
        n => n,
    };
    let channels = match data.channels {
        0 => spec.shape[0],
        c => c,
    };
    folder_source(
        listing,
        size,
        channels,
        data.transforms.clone(),
        data.memory_limit(),
    )
}

/// The two domains of a translation model: synthetic transforms of the digits (A on the
/// even-numbered training digits, B on the odd ones; every test digit in both), or junyanz's
/// folders `trainA`, `trainB`, `testA`, `testB`.
fn two_domains(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<(Box<dyn Source>, Box<dyn Source>)> {
    if let Some((a, b)) = synthetic_domains(data, dir, split)? {
        return Ok((Box::new(a), Box::new(b)));
    }
    let Some(dir) = dir.filter(|d| !is_idx_dir(d)) else {
        bail!(
            "a translation model needs two domains: [data] domain_a and domain_b (transforms of the digits), or --data DIR with junyanz's folders trainA/, trainB/, testA/, testB/"
        );
    };
    let prefix = split.name();
    let folder = |side: &str| -> Result<Listing> {
        let path = dir.join(format!("{prefix}{side}"));
        ensure!(
            path.is_dir(),
            "{} has no {prefix}{side}/ folder (the two-domain layout is trainA/, trainB/, testA/, testB/)",
            dir.display()
        );
        list_images(&path)
    };
    let (a, b) = (folder("A")?, folder("B")?);
    if data.channels == 0 {
        let (ca, cb) = (probe_channels(&a.paths, 16)?, probe_channels(&b.paths, 16)?);
        ensure!(
            ca == cb,
            "{}/{prefix}A holds {} images and {prefix}B {}: the domains differ in channels; set [data] channels = 1 or 3 to convert both",
            dir.display(),
            channel_word(ca),
            channel_word(cb)
        );
    }
    Ok((folder_for(a, spec, data)?, folder_for(b, spec, data)?))
}

/// The two synthetic domains of `[data]` (transforms of the digits), if it defines them.
pub fn synthetic_domains(
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<Option<(InMemory, InMemory)>> {
    let (Some(a), Some(b)) = (&data.domain_a, &data.domain_b) else {
        return Ok(None);
    };
    let Some(d) = digits(dir, split)? else {
        bail!(
            "[data] domain_a and domain_b transform the digits, but --data {} is an image folder; for two folders of images leave them out and use trainA/ and trainB/",
            dir.map_or(String::new(), |d| d.display().to_string())
        );
    };
    let n = d.len();
    let half = |parity: usize| -> Option<Vec<usize>> {
        match split {
            Split::Train => Some((parity..n).step_by(2).collect()),
            Split::Test => None,
        }
    };
    let a = InMemory::new(d.clone(), half(0), a.clone())?;
    let b = InMemory::new(d, half(1), b.clone())?;
    Ok(Some((a, b)))
}

fn channel_word(c: usize) -> &'static str {
    if c == 3 {
        "RGB"
    } else {
        "grayscale"
    }
}

/// Images with attribute vectors: the digits with synthetic attributes drawn per image, or
/// images named in a CelebA-style attribute file.
fn attribute_source(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
    k: usize,
) -> Result<Box<dyn Source>> {
    let source: Box<dyn Source> = if !data.attributes.is_empty() {
        Box::new(synthetic_attributes(spec, data, dir, split)?)
    } else if !data.attrs.is_empty() {
        attribute_file_source(spec, data, dir, split)?
    } else {
        bail!(
            "the model is conditioned on {k} attributes: give [data] attributes (synthetic, of the digits) or --attrs NAME,... with an attribute file (list_attr_celeba.txt in --data)"
        );
    };
    let names = source.attribute_names().unwrap_or_default();
    ensure!(
        names.len() == k,
        "the model is built for {k} attributes but the data gives {}: {}",
        names.len(),
        names.join(", ")
    );
    Ok(source)
}

/// 0/1 per attribute per image, each a fair coin from the data's own seed.
pub fn draw_attributes(n: usize, k: usize, seed: u64, split: Split) -> Vec<Vec<f32>> {
    let mut rng = Rng::derive(seed, Stream::Attributes, split as u64);
    (0..n)
        .map(|_| (0..k).map(|_| f32::from(rng.uniform_f32() < 0.5)).collect())
        .collect()
}

/// The digits with the synthetic attributes of `[data]`, each drawn per image.
pub fn synthetic_attributes(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<WithAttributes> {
    let Some(d) = digits(dir, split)? else {
        bail!(
            "[data] attributes transform the digits, but --data {} is an image folder; for real attributes use --attrs with an attribute file",
            dir.map_or(String::new(), |d| d.display().to_string())
        );
    };
    let base = InMemory::new(d, None, digit_transforms(data, spec.shape))?;
    let names: Vec<String> = data.attributes.iter().map(|a| a.name.clone()).collect();
    let values = draw_attributes(base.len(), names.len(), data.seed, split);
    let transforms = data
        .attributes
        .iter()
        .map(|a| a.transforms.clone())
        .collect();
    WithAttributes::new(Box::new(base), names, values, transforms)
}

/// Images named in an attribute file under `--data`, the file's rows split by a seeded shuffle
/// into `test_count` held-out images and the rest (as yunjey/stargan splits CelebA).
fn attribute_file_source(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<Box<dyn Source>> {
    let dir = dir.context("--attrs reads an attribute file and its images from --data DIR")?;
    let path: PathBuf = data
        .attribute_file
        .clone()
        .unwrap_or_else(|| dir.join("list_attr_celeba.txt"));
    let table = AttributeTable::read(&path)?;
    let values = table.select(&data.attrs, &path)?;
    let listing = list_images(dir)?;
    let by_name: HashMap<String, PathBuf> = listing
        .paths
        .iter()
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p.clone())))
        .collect();
    let chosen = held_out_rows(table.rows.len(), data, split);
    let mut paths = Vec::with_capacity(chosen.len());
    let mut rows = Vec::with_capacity(chosen.len());
    for &i in &chosen {
        let name = &table.rows[i].0;
        let p = by_name.get(name).with_context(|| {
            format!(
                "{} names image {name}, which is not under {}",
                path.display(),
                dir.display()
            )
        })?;
        paths.push(p.clone());
        rows.push(values[i].clone());
    }
    let listing = Listing {
        dir: dir.to_path_buf(),
        paths,
        labels: None,
    };
    let inner = folder_for(listing, spec, data)?;
    Ok(Box::new(WithAttributes::new(
        inner,
        data.attrs.clone(),
        rows,
        Vec::new(),
    )?))
}

/// `pixel >= 128` on values `p / 255`: the same comparison on the same f32 values.
const THRESHOLD: f32 = 128.0 / 255.0;

/// What a batch carries besides its images.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    labels: LabelSpec,
    captions: bool,
    /// Key patches per image and their side (0 patches: none).
    patches: (usize, usize),
}

impl Default for Wanted {
    fn default() -> Self {
        Self {
            labels: LabelSpec::None,
            captions: false,
            patches: (0, 0),
        }
    }
}

/// The images of `idx` as one `(b, c, h, w)` tensor (decoded and transformed in parallel, each
/// image with its own stream drawn from `augment`), binarized in order from `binarize_rng`,
/// with their labels, one caption each (drawn from `augment`) and their key patches when
/// `wanted` asks for them. The batch's second domain is left empty.
fn assemble(
    source: &dyn Source,
    idx: &[usize],
    augment: &mut Rng,
    binarize: Binarization,
    binarize_rng: &mut Rng,
    wanted: Wanted,
    device: &Device,
) -> Result<Batch> {
    let labels = wanted.labels;
    let seeds: Vec<u64> = idx.iter().map(|_| augment.next_u64()).collect();
    let captions = match wanted.captions {
        true => Some(pick_captions(source, idx, augment)?),
        false => None,
    };
    let images = idx
        .par_iter()
        .zip(&seeds)
        .map(|(&i, &seed)| source.image(i, &mut Rng::new(seed)))
        .collect::<Result<Vec<_>>>()?;
    let [c, h, w] = source.shape();
    let mut values = Vec::with_capacity(idx.len() * c * h * w);
    for image in &images {
        match binarize {
            Binarization::None => values.extend_from_slice(&image.data),
            Binarization::Threshold => {
                values.extend(image.data.iter().map(|&x| f32::from(x >= THRESHOLD)))
            }
            Binarization::Dynamic => {
                for &x in &image.data {
                    values.push(f32::from(binarize_rng.uniform_f32() < x));
                }
            }
        }
    }
    let tensor = Tensor::from_vec(values, (idx.len(), c, h, w), device)?;
    let patches = match wanted.patches {
        (0, _) => None,
        (k, size) => Some(key_patches_of(source, idx, &images, k, size, device)?),
    };
    let labels = match labels {
        LabelSpec::None => None,
        LabelSpec::Classes(_) => {
            let classes = idx
                .iter()
                .map(|&i| match source.label(i) {
                    Label::Class(c) => Ok(c),
                    _ => bail!("{}: image {i} has no class label", source.name()),
                })
                .collect::<Result<Vec<u32>>>()?;
            Some(Labels::Classes(Tensor::new(classes, device)?))
        }
        LabelSpec::Attributes(k) => {
            let mut flat = Vec::with_capacity(idx.len() * k);
            for &i in idx {
                match source.label(i) {
                    Label::Attributes(a) if a.len() == k => flat.extend(a),
                    _ => bail!("{}: image {i} has no {k} attributes", source.name()),
                }
            }
            Some(Labels::Attributes(Tensor::from_vec(
                flat,
                (idx.len(), k),
                device,
            )?))
        }
    };
    Ok(Batch {
        images: tensor,
        labels,
        domain_b: None,
        captions,
        patches,
    })
}

/// Each image's key patches: the source's boxes, or up to `k` windows of `size` chosen from
/// its ink; the crops resized to the full side, black past an image's boxes.
fn key_patches_of(
    source: &dyn Source,
    idx: &[usize],
    images: &[Image],
    k: usize,
    size: usize,
    device: &Device,
) -> Result<Patches> {
    let [c, h, w] = source.shape();
    let mut values = Vec::with_capacity(idx.len() * k * c * h * w);
    let mut boxes = Vec::with_capacity(idx.len());
    for (&i, image) in idx.iter().zip(images) {
        let chosen: Vec<PatchBox> = match source.boxes(i) {
            Some(b) => b.iter().take(k).copied().collect(),
            None => crate::data::patches::key_patches(image, k, size),
        };
        for slot in 0..k {
            match chosen.get(slot) {
                Some(&b) => values.extend(
                    crate::data::patches::crop_resized(image, b)
                        .with_context(|| format!("{}: image {i}", source.name()))?
                        .data,
                ),
                None => values.extend(std::iter::repeat_n(0f32, c * h * w)),
            }
        }
        boxes.push(chosen);
    }
    Ok(Patches {
        images: Tensor::from_vec(values, (idx.len(), k, c, h, w), device)?,
        boxes,
    })
}

/// Images for key patches: the digits or an image folder, with a boxes file's boxes when there
/// is one (`[data] boxes_file`, or `boxes.txt` in `--data`).
fn boxed_source(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<Box<dyn Source>> {
    let file = data
        .boxes_file
        .clone()
        .or_else(|| dir.map(|d| d.join("boxes.txt")).filter(|p| p.is_file()));
    let Some(file) = file else {
        return plain_source(spec, data, dir, split);
    };
    let dir = dir.context("a boxes file names images of an image folder: give --data DIR")?;
    let boxes = crate::data::patches::read_boxes(&file, spec.shape[1])?;
    let sub = dir.join(split.name());
    let folder = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let listing = list_images(&folder)?;
    let per_image = listing
        .paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            boxes.get(&name).cloned().with_context(|| {
                format!("{} has no boxes for image {}", file.display(), p.display())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let inner = folder_for(listing, spec, data)?;
    Ok(Box::new(Annotated::with_boxes(inner, per_image)?))
}

/// One caption of each image of `idx`, each drawn from its image's captions.
fn pick_captions(source: &dyn Source, idx: &[usize], rng: &mut Rng) -> Result<Vec<String>> {
    idx.iter()
        .map(|&i| match source.captions(i) {
            Some(c) if !c.is_empty() => Ok(c[rng.below(c.len())].clone()),
            _ => bail!("{}: image {i} has no caption", source.name()),
        })
        .collect()
}

/// Captioned images: the captioned digits (the bundled ones, or IDX digits in `--data`), a
/// JSONL captions file, or reedscot's `images/` + `text_c10/` folders.
fn caption_source(
    spec: &DataSpec,
    data: &DataConfig,
    dir: Option<&Path>,
    split: Split,
) -> Result<Box<dyn Source>> {
    if data.captions_file.is_none() {
        if let Some(d) = digits(dir, split)? {
            let source = crate::data::captions::captioned_digits(
                d,
                digit_transforms(data, spec.shape),
                &data.held_out_combinations()?,
                data.captions_per_image(),
                data.seed,
                split == Split::Train,
            )?;
            return Ok(Box::new(source));
        }
    }
    let (paths, sets) = match (&data.captions_file, dir) {
        (Some(file), _) => crate::data::captions::read_jsonl(file)?,
        (None, Some(d)) if d.join("captions.jsonl").is_file() => {
            crate::data::captions::read_jsonl(&d.join("captions.jsonl"))?
        }
        (None, Some(d)) if d.join("images").is_dir() => {
            crate::data::captions::read_reference_layout(d)?
        }
        (None, Some(d)) => bail!(
            "{} holds no captions: a text-to-image model reads captions.jsonl ({{\"image\": PATH, \"caption\": TEXT}} per line), reedscot's images/ and text_c10/ folders, or digits (captioned from their traits)",
            d.display()
        ),
        (None, None) => bail!("a text-to-image model needs captioned images"),
    };
    let chosen = held_out_rows(paths.len(), data, split);
    let listing = Listing {
        dir: dir.map_or_else(PathBuf::new, Path::to_path_buf),
        paths: chosen.iter().map(|&i| paths[i].clone()).collect(),
        labels: None,
    };
    let sets = chosen.iter().map(|&i| sets[i].clone()).collect();
    let inner = folder_for(listing, spec, data)?;
    Ok(Box::new(Annotated::with_captions(inner, sets)?))
}

/// The rows of a split of `n` user images: a seeded shuffle, `[data] test_count` (at most half)
/// held out for testing, as yunjey/stargan splits CelebA.
fn held_out_rows(n: usize, data: &DataConfig, split: Split) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(data.seed, Stream::Shuffle, u64::MAX).shuffle(&mut order);
    let held_out = data.held_out().min(order.len() / 2);
    match split {
        Split::Test => order[..held_out].to_vec(),
        Split::Train => order[held_out..].to_vec(),
    }
}

/// A run's training images (and held-out ones, where the model reports on them or shows them
/// in its grid).
pub struct TrainData {
    pub train: SplitSources,
    pub test: Option<SplitSources>,
    /// Images per epoch: the first domain's (the larger domain's for two), cut by `limit`.
    len: usize,
    limit: usize,
    batches: Batches,
    binarize: Binarization,
    seed: u64,
    batch_size: usize,
    device: Device,
}

/// How a run reads its data.
pub struct DataOptions<'a> {
    pub dir: Option<&'a Path>,
    pub config: &'a DataConfig,
    pub binarize: Binarization,
    pub seed: u64,
    pub batch_size: usize,
    /// Use only the first N training images of each domain (0: all).
    pub limit: usize,
    /// Load the test split too: the model reports on it every epoch.
    pub held_out: bool,
    /// The model's grid shows held-out images: the test split where there is one, else the
    /// first training images (a folder of two domains without testA/ and testB/).
    pub held_out_grid: bool,
}

impl TrainData {
    pub fn load(spec: &DataSpec, options: &DataOptions, device: &Device) -> Result<Self> {
        let train = SplitSources::load(spec, options.config, options.dir, Split::Train)?;
        let load_test = || SplitSources::load(spec, options.config, options.dir, Split::Test);
        let test = match (options.held_out, options.held_out_grid) {
            (true, _) => Some(load_test().context("the model reads held-out images every epoch")?),
            (false, true) => load_test()
                .inspect_err(|e| {
                    tracing::warn!(
                        "no test images for the grids ({e:#}): they show training images"
                    )
                })
                .ok(),
            (false, false) => None,
        };
        let limited = |n: usize| match options.limit {
            0 => n,
            l => n.min(l),
        };
        let len_b = train.domain_b.as_ref().map_or(0, |b| limited(b.len()));
        let len = limited(train.images.len()).max(len_b);
        Ok(Self {
            batches: Batches::new(len, options.batch_size, options.seed),
            len,
            limit: options.limit,
            train,
            test,
            binarize: options.binarize,
            seed: options.seed,
            batch_size: options.batch_size,
            device: device.clone(),
        })
    }

    pub fn name(&self) -> String {
        match &self.train.domain_b {
            Some(b) => format!("{} | {}", self.train.images.name(), b.name()),
            None => self.train.images.name(),
        }
    }

    /// Images per epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batches_per_epoch(&self) -> u64 {
        self.batches.steps_per_epoch()
    }

    /// Training batch `index` of the run (0-based, counting every batch taken). With two
    /// domains, A's images follow the epoch's order and B's are drawn at random, as junyanz's
    /// unaligned dataset draws them.
    pub fn train_batch(&mut self, index: u64) -> Result<Batch> {
        let len_a = self.limited(self.train.images.len());
        let idx: Vec<usize> = self.batches.at(index).iter().map(|i| i % len_a).collect();
        let mut augment = Rng::derive(self.seed, Stream::Augment, index);
        let mut binarize = Rng::derive(self.seed, Stream::Binarize, index);
        let batch = assemble(
            self.train.images.as_ref(),
            &idx,
            &mut augment,
            self.binarize,
            &mut binarize,
            self.train.wanted(),
            &self.device,
        )?;
        let domain_b = match &self.train.domain_b {
            Some(b) => {
                let len_b = self.limited(b.len());
                let mut pick = Rng::derive(self.seed, Stream::SecondDomain, index);
                let idx_b: Vec<usize> = idx.iter().map(|_| pick.below(len_b)).collect();
                let b = assemble(
                    b.as_ref(),
                    &idx_b,
                    &mut augment,
                    self.binarize,
                    &mut binarize,
                    Wanted::default(),
                    &self.device,
                )?;
                Some(b.images)
            }
            None => None,
        };
        Ok(Batch { domain_b, ..batch })
    }

    /// A domain's images in use: all, or the first `limit`.
    fn limited(&self, n: usize) -> usize {
        match self.limit {
            0 => n,
            l => n.min(l),
        }
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
        let n = test.images.len();
        (0..n)
            .step_by(self.batch_size)
            .map(|start| {
                let idx: Vec<usize> = (start..(start + self.batch_size).min(n)).collect();
                test.batch(&idx, &idx, binarize, &self.device)
            })
            .collect()
    }

    /// The first `n` held-out images (training images where there are none), for a grid that
    /// shows translations of fixed inputs.
    pub fn held_out_grid(&self, n: usize) -> Result<Batch> {
        let split = self.test.as_ref().unwrap_or(&self.train);
        split.first(n, Binarization::None, &self.device)
    }
}

/// What the data says the model's config should be: the channels of an image folder's images
/// and the number of attributes, for a model whose config has those keys and a run file that
/// does not set them. Returns the lines that say what was chosen.
pub fn fit_model_to_data(
    model_config: &mut toml::Table,
    defaults: &toml::Table,
    data: &DataConfig,
    dir: Option<&Path>,
) -> Result<Vec<String>> {
    let mut said = Vec::new();
    if let Some(channels) = folder_channels(data, dir)? {
        let (c, why) = channels;
        said.extend(set_if_free(model_config, defaults, "channels", c, &why));
    }
    let names: Vec<String> = match (&data.attributes, &data.attrs) {
        (a, _) if !a.is_empty() => a.iter().map(|a| a.name.clone()).collect(),
        (_, a) => a.clone(),
    };
    if !names.is_empty() {
        let why = format!("[data] gives {} attributes", names.len());
        said.extend(set_if_free(
            model_config,
            defaults,
            "c_dim",
            names.len(),
            &why,
        ));
        // The names go with them, for grids and reports.
        let listed = model_config
            .get("attributes")
            .and_then(|v| v.as_array())
            .is_some_and(|a| !a.is_empty());
        if defaults.contains_key("attributes") && !listed {
            let list = names.iter().cloned().map(toml::Value::String).collect();
            model_config.insert("attributes".into(), toml::Value::Array(list));
        }
    }
    Ok(said)
}

/// The channel count of `--data`'s image folder (with why), when it is a folder.
fn folder_channels(data: &DataConfig, dir: Option<&Path>) -> Result<Option<(usize, String)>> {
    let Some(dir) = dir.filter(|d| d.is_dir() && !is_idx_dir(d)) else {
        return Ok(None);
    };
    if data.channels != 0 {
        let why = format!("[data] channels = {}", data.channels);
        return Ok(Some((data.channels, why)));
    }
    let first = ["trainA", "train"]
        .iter()
        .map(|s| dir.join(s))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| dir.to_path_buf());
    let listing = list_images(&first)?;
    let c = probe_channels(&listing.paths, 16)?;
    let why = format!("{} holds {} images", first.display(), channel_word(c));
    Ok(Some((c, why)))
}

/// Sets `key` to `value` when the model has the key and the run file leaves it to the default;
/// says what it did, or that the run file's value wins.
fn set_if_free(
    model_config: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
    value: usize,
    why: &str,
) -> Option<String> {
    defaults.get(key)?;
    match model_config.get(key).and_then(|v| v.as_integer()) {
        Some(set) if set as usize != value => Some(format!(
            "data: {why}, but [model_config] {key} = {set}: the images are converted to it"
        )),
        Some(_) => None,
        None => {
            model_config.insert(key.to_string(), toml::Value::Integer(value as i64));
            Some(format!("data: {why}: [model_config] {key} = {value}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::transforms::Transform;

    /// Whether `a` is `1 - b`, pixel by pixel.
    fn negatives(a: &crate::data::transforms::Image, b: &crate::data::transforms::Image) -> bool {
        a.data
            .iter()
            .zip(&b.data)
            .all(|(p, q)| (p + q - 1.0).abs() < 1e-6)
    }

    fn inverted() -> DataConfig {
        DataConfig {
            domain_a: Some(Pipeline::default()),
            domain_b: Some(Pipeline(vec![Transform::Invert])),
            ..DataConfig::default()
        }
    }

    #[test]
    fn synthetic_domains_split_the_training_digits_and_pair_the_test_ones() -> Result<()> {
        let (a, b) = synthetic_domains(&inverted(), None, Split::Train)?.expect("two domains");
        assert_eq!((a.len(), b.len()), (4003, 4003));
        let mut rng = Rng::new(0);
        // B's first image is the second digit, inverted: no digit is in both halves.
        let digits = load_split(None, Split::Train, [1, 28, 28])?;
        let second = crate::data::transforms::Image::from_bytes([1, 28, 28], digits.image(1))?;
        let b0 = b.image(0, &mut rng)?;
        assert!(negatives(&b0, &second));
        assert_eq!(b.label(0), Label::Class(digits.labels.as_ref().unwrap()[1]));
        // The test split pairs every digit with its own translation.
        let (a, b) = synthetic_domains(&inverted(), None, Split::Test)?.expect("two domains");
        assert_eq!((a.len(), b.len()), (997, 997));
        let (x, y) = (a.image(5, &mut rng)?, b.image(5, &mut rng)?);
        assert!(negatives(&x, &y));
        Ok(())
    }

    #[test]
    fn two_domain_batches_are_a_function_of_their_index() -> Result<()> {
        let spec = DataSpec {
            two_domains: true,
            ..DataSpec::images([1, 28, 28])
        };
        let config = inverted();
        let options = DataOptions {
            dir: None,
            config: &config,
            binarize: Binarization::None,
            seed: 3,
            batch_size: 4,
            limit: 40,
            held_out: false,
            held_out_grid: false,
        };
        let mut data = TrainData::load(&spec, &options, &Device::Cpu)?;
        assert_eq!(data.batches_per_epoch(), 10);
        let first = data.train_batch(7)?;
        let _ = data.train_batch(23)?;
        let again = data.train_batch(7)?;
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values(&first.images), values(&again.images));
        let b = first.domain_b.as_ref().expect("a second domain");
        assert_eq!(values(b), values(again.domain_b.as_ref().unwrap()));
        // B's images are drawn apart from A's order: another step, other B images.
        let other = data.train_batch(8)?;
        assert_ne!(values(b), values(other.domain_b.as_ref().unwrap()));
        Ok(())
    }

    #[test]
    fn synthetic_attributes_are_fixed_per_dataset_and_transform_when_on() -> Result<()> {
        let config = DataConfig {
            transforms: Pipeline(vec![Transform::Pad(2), Transform::Rgb]),
            attributes: vec![crate::config::SyntheticAttribute {
                name: "inverted".into(),
                transforms: Pipeline(vec![Transform::Invert]),
            }],
            ..DataConfig::default()
        };
        let spec = DataSpec {
            labels: LabelSpec::Attributes(1),
            ..DataSpec::images([3, 32, 32])
        };
        let source = synthetic_attributes(&spec, &config, None, Split::Test)?;
        let again = synthetic_attributes(&spec, &config, None, Split::Test)?;
        assert_eq!(source.values, again.values);
        let on = source.values.iter().filter(|v| v[0] > 0.5).count();
        assert!((400..600).contains(&on), "{on} of 997 inverted");
        let mut rng = Rng::new(0);
        let plain = source.image_as(0, &[0.0], &mut rng)?;
        let flipped = source.image_as(0, &[1.0], &mut rng)?;
        assert_eq!(plain.shape, [3, 32, 32]);
        assert!(negatives(&plain, &flipped));
        Ok(())
    }
}
