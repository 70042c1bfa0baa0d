//! Examples by index: what a batch is built from. A source holds images in memory (the bundled
//! digits, IDX files, small image folders) or decodes them from disk on demand (folders larger
//! than memory), and applies its transforms to each image as it is taken. The synthetic
//! translation domains are sources over the digits too: two halves, each through its own
//! transforms, or digits with random attributes, each attribute a transform.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use layers::step::PatchBox;
use layers::Rng;

use crate::data::transforms::{Image, Pipeline};
use crate::data::Dataset;

/// What a source says about one image besides its pixels.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    None,
    Class(u32),
    /// 0/1 per attribute.
    Attributes(Vec<f32>),
}

/// Images by index, each with its label.
pub trait Source: Send + Sync {
    fn name(&self) -> String;

    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of every image it yields.
    fn shape(&self) -> [usize; 3];

    /// Image `i` in `[0, 1]`; `rng` feeds the random transforms.
    fn image(&self, i: usize, rng: &mut Rng) -> Result<Image>;

    fn label(&self, i: usize) -> Label;

    /// How many classes its labels take (None: no classes).
    fn classes(&self) -> Option<usize> {
        None
    }

    /// The names of its attributes (None: no attributes).
    fn attribute_names(&self) -> Option<Vec<String>> {
        None
    }

    /// Image `i`'s captions (None: the source has no captions).
    fn captions(&self, _i: usize) -> Option<&[String]> {
        None
    }

    /// Image `i`'s key patch boxes, given rather than chosen (None: chosen from the ink).
    fn boxes(&self, _i: usize) -> Option<&[PatchBox]> {
        None
    }
}

/// Images held in memory as bytes (a subset of them, optionally), through transforms.
pub struct InMemory {
    pub data: Arc<Dataset>,
    /// Which of `data`'s images, in order (None: all).
    pub subset: Option<Vec<usize>>,
    pub transforms: Pipeline,
    shape: [usize; 3],
}

impl InMemory {
    pub fn new(
        data: Arc<Dataset>,
        subset: Option<Vec<usize>>,
        transforms: Pipeline,
    ) -> Result<Self> {
        transforms.validate()?;
        let shape = transforms
            .output_shape(data.shape)
            .with_context(|| format!("the transforms of {}", data.name))?;
        Ok(Self {
            data,
            subset,
            transforms,
            shape,
        })
    }

    fn index(&self, i: usize) -> usize {
        self.subset.as_ref().map_or(i, |s| s[i])
    }
}

impl Source for InMemory {
    fn name(&self) -> String {
        self.data.name.clone()
    }

    fn len(&self) -> usize {
        self.subset.as_ref().map_or(self.data.len(), Vec::len)
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn image(&self, i: usize, rng: &mut Rng) -> Result<Image> {
        let raw = Image::from_bytes(self.data.shape, self.data.image(self.index(i)))?;
        self.transforms.apply(raw, rng)
    }

    fn label(&self, i: usize) -> Label {
        match &self.data.labels {
            Some(l) => Label::Class(l[self.index(i)]),
            None => Label::None,
        }
    }

    fn classes(&self) -> Option<usize> {
        self.data.class_count()
    }
}

/// Image files decoded when taken: a folder larger than memory.
pub struct Streamed {
    pub name: String,
    pub paths: Vec<PathBuf>,
    pub labels: Option<Vec<u32>>,
    pub classes: Option<usize>,
    /// Decoded at this size and channel count, then transformed.
    pub size: usize,
    pub channels: usize,
    pub transforms: Pipeline,
    shape: [usize; 3],
}

impl Streamed {
    pub fn new(
        name: String,
        paths: Vec<PathBuf>,
        labels: Option<Vec<u32>>,
        size: usize,
        channels: usize,
        transforms: Pipeline,
    ) -> Result<Self> {
        transforms.validate()?;
        let shape = transforms.output_shape([channels, size, size])?;
        let classes = labels
            .as_ref()
            .map(|l| l.iter().copied().max().map_or(0, |m| m as usize + 1));
        Ok(Self {
            name,
            paths,
            labels,
            classes,
            size,
            channels,
            transforms,
            shape,
        })
    }
}

impl Source for Streamed {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn len(&self) -> usize {
        self.paths.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn image(&self, i: usize, rng: &mut Rng) -> Result<Image> {
        let path = &self.paths[i];
        let img = crate::data::folder::open_image(path)?;
        let bytes = crate::data::resize_center_crop(&img, self.size, self.channels);
        let raw = Image::from_bytes([self.channels, self.size, self.size], &bytes)?;
        self.transforms.apply(raw, rng)
    }

    fn label(&self, i: usize) -> Label {
        match &self.labels {
            Some(l) => Label::Class(l[i]),
            None => Label::None,
        }
    }

    fn classes(&self) -> Option<usize> {
        self.classes
    }
}

/// A source whose images carry attribute vectors instead of classes: digits with synthetic
/// attributes (each attribute a transform, applied when it is on), or images named in a
/// CelebA-style attribute file.
pub struct WithAttributes {
    pub inner: Box<dyn Source>,
    pub names: Vec<String>,
    /// Per image, 0/1 per attribute.
    pub values: Vec<Vec<f32>>,
    /// For synthetic attributes: each attribute's transform, applied in attribute order to the
    /// inner image when the attribute is on (empty for real attributes).
    pub transforms: Vec<Pipeline>,
    shape: [usize; 3],
}

impl WithAttributes {
    pub fn new(
        inner: Box<dyn Source>,
        names: Vec<String>,
        values: Vec<Vec<f32>>,
        transforms: Vec<Pipeline>,
    ) -> Result<Self> {
        ensure!(
            values.len() == inner.len(),
            "{}: {} attribute rows for {} images",
            inner.name(),
            values.len(),
            inner.len()
        );
        ensure!(
            transforms.is_empty() || transforms.len() == names.len(),
            "one transform per synthetic attribute"
        );
        let mut shape = inner.shape();
        for t in &transforms {
            t.validate()?;
            let out = t.output_shape(shape)?;
            ensure!(
                out == shape,
                "the transform of a synthetic attribute must keep the image shape {shape:?} (found {out:?}), so that every combination has one shape"
            );
            shape = out;
        }
        Ok(Self {
            inner,
            names,
            values,
            transforms,
            shape,
        })
    }

    /// Image `i` under the attributes `on` instead of its own (the true translation of a
    /// synthetic domain).
    pub fn image_as(&self, i: usize, on: &[f32], rng: &mut Rng) -> Result<Image> {
        let mut img = self.inner.image(i, rng)?;
        for (t, &v) in self.transforms.iter().zip(on) {
            if v > 0.5 {
                img = t.apply(img, rng)?;
            }
        }
        Ok(img)
    }
}

impl Source for WithAttributes {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn shape(&self) -> [usize; 3] {
        self.shape
    }

    fn image(&self, i: usize, rng: &mut Rng) -> Result<Image> {
        self.image_as(i, &self.values[i], rng)
    }

    fn label(&self, i: usize) -> Label {
        Label::Attributes(self.values[i].clone())
    }

    fn attribute_names(&self) -> Option<Vec<String>> {
        Some(self.names.clone())
    }
}

/// Images with what is said of each beyond its label: its captions (a batch takes one at
/// random), or the boxes of its key patches (from a boxes file).
pub struct Annotated {
    pub inner: Box<dyn Source>,
    captions: Option<Vec<Vec<String>>>,
    boxes: Option<Vec<Vec<PatchBox>>>,
}

impl Annotated {
    /// Captions for every image, at least one of them not empty per image.
    pub fn with_captions(inner: Box<dyn Source>, captions: Vec<Vec<String>>) -> Result<Self> {
        ensure!(
            captions.len() == inner.len(),
            "{}: {} caption sets for {} images",
            inner.name(),
            captions.len(),
            inner.len()
        );
        if let Some(i) = captions
            .iter()
            .position(|c| c.iter().all(|s| s.trim().is_empty()))
        {
            anyhow::bail!(
                "{}: image {i} has no caption (every caption is empty)",
                inner.name()
            );
        }
        Ok(Self {
            inner,
            captions: Some(captions),
            boxes: None,
        })
    }

    /// Boxes for every image.
    pub fn with_boxes(inner: Box<dyn Source>, boxes: Vec<Vec<PatchBox>>) -> Result<Self> {
        ensure!(
            boxes.len() == inner.len(),
            "{}: {} box lists for {} images",
            inner.name(),
            boxes.len(),
            inner.len()
        );
        Ok(Self {
            inner,
            captions: None,
            boxes: Some(boxes),
        })
    }
}

impl Source for Annotated {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn shape(&self) -> [usize; 3] {
        self.inner.shape()
    }
    fn image(&self, i: usize, rng: &mut Rng) -> Result<Image> {
        self.inner.image(i, rng)
    }
    fn label(&self, i: usize) -> Label {
        self.inner.label(i)
    }
    fn classes(&self) -> Option<usize> {
        self.inner.classes()
    }
    fn captions(&self, i: usize) -> Option<&[String]> {
        self.captions.as_ref().map(|c| c[i].as_slice())
    }
    fn boxes(&self, i: usize) -> Option<&[PatchBox]> {
        self.boxes.as_ref().map(|b| b[i].as_slice())
    }
}
