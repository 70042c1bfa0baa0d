//! What `genzoo eval` reports for an image-to-image translation model, computed on the test
//! images of the run's data (the digits of `--data`, by default the bundled ones):
//!
//! - mean absolute error of each translation against the true one, where the domains are
//!   synthetic transforms of the digits, so the true translation of every test digit is known;
//! - digit kept: the shipped digit classifier names the same digit after the translation is
//!   brought back to plain digits (the target domain's transforms undone);
//! - attributes right (multi-domain models): an attribute classifier trained on real images of
//!   every domain reads the attributes asked for;
//! - cycle error: translating back gives the input (CycleGAN's cycle, StarGAN's
//!   reconstruction), which needs no ground truth and so is reported for any data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use layers::eval::classifier::LeNet;
use layers::step::DataSpec;
use layers::{Domains, Model, Rng, Target, Translator};
use serde::Serialize;

use crate::config::RunConfig;
use crate::data::pipeline::{synthetic_attributes, synthetic_domains, SplitSources};
use crate::data::source::{Label, Source};
use crate::data::transforms::{Image, Pipeline};
use crate::data::{Binarization, Split};
use crate::report::attributes::{self, AttributeClassifier};
use crate::report::quality::classifier_view;

/// The figures of one direction or target domain.
#[derive(Debug, Clone, Serialize)]
pub struct TranslationRow {
    /// `a2b`, `b2a`, or the target's attributes (`inverted+red`, `none`).
    pub target: String,
    pub translations: usize,
    /// Mean absolute error against the true translation (pixels in [0, 1]).
    pub mean_abs_error: Option<f64>,
    /// Share of translations the digit classifier reads as the input's digit.
    pub digit_kept: Option<f64>,
    /// Per attribute, share of translations whose attribute is the one asked for.
    pub attributes_right: Option<Vec<f64>>,
    /// Share of translations with every attribute right.
    pub all_attributes_right: Option<f64>,
    /// Mean absolute error of the translation back to the input's own domain.
    pub cycle_error: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TranslationReport {
    /// Test inputs.
    pub images: usize,
    /// Whether the true translations are known (synthetic domains of the digits).
    pub ground_truth: bool,
    pub attribute_names: Vec<String>,
    pub rows: Vec<TranslationRow>,
    /// Over every row (multi-domain models).
    pub overall: Option<TranslationRow>,
    /// The attribute classifier read, or why none was.
    pub attribute_classifier: Option<String>,
    /// Multi-domain models: per attribute, the digit kept where the translation changes it
    /// and where it keeps it (which attribute's change loses the digit).
    pub digit_kept_by_change: Vec<KeptByChange>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeptByChange {
    pub attribute: String,
    pub changed: f64,
    pub same: f64,
}

/// Digits kept / translations, where an attribute changes and where it stays.
#[derive(Debug, Clone, Copy, Default)]
struct KeptSplit {
    changed: (usize, usize),
    same: (usize, usize),
}

impl KeptSplit {
    fn add(&mut self, changed: bool, kept: bool) {
        let side = if changed {
            &mut self.changed
        } else {
            &mut self.same
        };
        side.0 += usize::from(kept);
        side.1 += 1;
    }
}

pub struct TranslationArgs<'a> {
    pub run: &'a RunConfig,
    pub checkpoint: &'a Path,
    pub data: Option<&'a Path>,
    /// First N test images (0: all).
    pub limit: usize,
    pub batch_size: usize,
    pub classifier: Option<&'a Path>,
    pub attribute_classifier: Option<PathBuf>,
    pub device: &'a Device,
}

/// Images `(n, c, h, w)` as one image each.
pub fn images_of(t: &Tensor) -> Result<Vec<Image>> {
    let (n, c, h, w) = t.dims4()?;
    let flat = t.flatten_all()?.to_vec1::<f32>()?;
    let size = c * h * w;
    (0..n)
        .map(|i| Image::new([c, h, w], flat[i * size..(i + 1) * size].to_vec()))
        .collect()
}

/// Images of one shape as `(n, c, h, w)`.
pub fn tensor_of(images: &[Image], device: &Device) -> Result<Tensor> {
    let [c, h, w] = images.first().map_or([1, 1, 1], |i| i.shape);
    let flat: Vec<f32> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
    Ok(Tensor::from_vec(flat, (images.len(), c, h, w), device)?)
}

fn mean_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a - b)?.abs()?.mean_all()?.to_scalar::<f32>()? as f64)
}

/// Accumulates one row's figures over batches.
#[derive(Default)]
struct Tally {
    n: usize,
    error: f64,
    cycle: f64,
    kept: usize,
    attributes: Vec<usize>,
    all: usize,
    truth: bool,
    digits: bool,
    classified: bool,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.n += other.n;
        self.error += other.error;
        self.cycle += other.cycle;
        self.kept += other.kept;
        if self.attributes.len() < other.attributes.len() {
            self.attributes.resize(other.attributes.len(), 0);
        }
        for (a, b) in self.attributes.iter_mut().zip(&other.attributes) {
            *a += b;
        }
        self.all += other.all;
        self.truth |= other.truth;
        self.digits |= other.digits;
        self.classified |= other.classified;
    }

    fn row(&self, target: String) -> TranslationRow {
        let n = self.n.max(1) as f64;
        TranslationRow {
            target,
            translations: self.n,
            mean_abs_error: self.truth.then_some(self.error / n),
            digit_kept: self.digits.then_some(self.kept as f64 / n),
            attributes_right: self
                .classified
                .then(|| self.attributes.iter().map(|&a| a as f64 / n).collect()),
            all_attributes_right: self.classified.then_some(self.all as f64 / n),
            cycle_error: self.cycle / n,
        }
    }
}

/// The digit classifier's reading of images brought back to plain digits by `back`.
fn digits_read(net: &LeNet, images: &Tensor, back: &Pipeline, device: &Device) -> Result<Vec<u32>> {
    let plain: Vec<Image> = images_of(images)?
        .into_iter()
        .map(|i| back.apply(i, &mut Rng::new(0)))
        .collect::<Result<_>>()?;
    let view = classifier_view(&tensor_of(&plain, device)?)?;
    Ok(net.forward(&view)?.argmax(1)?.to_vec1::<u32>()?)
}

fn digit_of(source: &dyn Source, i: usize) -> Option<u32> {
    match source.label(i) {
        Label::Class(c) => Some(c),
        _ => None,
    }
}

pub fn evaluate(model: &dyn Model, args: &TranslationArgs) -> Result<TranslationReport> {
    let Some(translator) = model.as_translator() else {
        bail!("model `{}` does not translate images", args.run.model);
    };
    let net = crate::report::classifier::load(args.classifier, args.device)?;
    match translator.domains() {
        Domains::Two => two_domains(translator, model.data_spec(), &net, args),
        Domains::Attributes { names, .. } => {
            attribute_domains(translator, model, names, &net, args)
        }
    }
}

fn limited(n: usize, limit: usize) -> usize {
    if limit == 0 {
        n
    } else {
        n.min(limit)
    }
}

/// CycleGAN: both directions, against the truth where the domains are synthetic.
fn two_domains(
    t: &dyn Translator,
    spec: DataSpec,
    net: &LeNet,
    args: &TranslationArgs,
) -> Result<TranslationReport> {
    let data = &args.run.data;
    let synthetic = synthetic_domains(data, args.data, Split::Test)?;
    let sources = SplitSources::load(&spec, data, args.data, Split::Test)?;
    let b_source = sources.domain_b.as_ref().expect("two domains");
    let (n_a, n_b) = (sources.images.len(), b_source.len());
    let backs = match (&data.domain_a, &data.domain_b) {
        (Some(a), Some(b)) => Some((a.inverse().ok(), b.inverse().ok())),
        _ => None,
    };
    let mut rows = Vec::new();
    for (name, forward, backward) in [
        ("a2b", Target::AToB, Target::BToA),
        ("b2a", Target::BToA, Target::AToB),
    ] {
        let a2b = name == "a2b";
        let n = limited(if a2b { n_a } else { n_b }, args.limit);
        let mut tally = Tally::default();
        for start in (0..n).step_by(args.batch_size) {
            let idx: Vec<usize> = (start..(start + args.batch_size).min(n)).collect();
            let batch = sources.batch(&idx, &idx, Binarization::None, args.device)?;
            let b = batch.domain_b.clone().expect("two domains");
            let (x, truth) = if a2b {
                (batch.images, b)
            } else {
                (b, batch.images)
            };
            let y = t.translate(&x, &forward)?;
            let back = t.translate(&y, &backward)?;
            let k = idx.len();
            tally.n += k;
            tally.cycle += mean_abs(&back, &x)? * k as f64;
            if synthetic.is_some() {
                // Test digit i appears in both domains: its other side is the truth.
                tally.truth = true;
                tally.error += mean_abs(&y, &truth)? * k as f64;
            }
            let undo = backs
                .as_ref()
                .and_then(|(a, b)| if a2b { b.clone() } else { a.clone() });
            if let (Some(undo), Some(_)) = (undo, &synthetic) {
                let read = digits_read(net, &y, &undo, args.device)?;
                let source = sources.images.as_ref();
                tally.digits = true;
                tally.kept += idx
                    .iter()
                    .zip(&read)
                    .filter(|(&i, &r)| digit_of(source, i) == Some(r))
                    .count();
            }
        }
        rows.push(tally.row(name.to_string()));
    }
    Ok(TranslationReport {
        images: limited(n_a, args.limit),
        ground_truth: synthetic.is_some(),
        attribute_names: Vec::new(),
        rows,
        overall: None,
        attribute_classifier: None,
        digit_kept_by_change: Vec::new(),
    })
}

/// The attribute classifier to read translations with: `--attribute-classifier`, or the file
/// beside the checkpoint; None (with why) when there is none.
fn attribute_classifier(
    args: &TranslationArgs,
    names: &[String],
) -> Result<(Option<AttributeClassifier>, String)> {
    let path = args
        .attribute_classifier
        .clone()
        .unwrap_or_else(|| attributes::beside(args.checkpoint));
    if !crate::hub::is_spec(&path) && !path.exists() {
        let why = format!(
            "no attribute classifier at {}: train one with `genzoo classifier train --attributes --config RUN.toml --out {}` (or pass --attribute-classifier)",
            path.display(),
            path.display()
        );
        return Ok((None, why));
    }
    let c = attributes::load(&path, args.device)?;
    if c.names != names {
        bail!(
            "{} reads the attributes {:?}; the model translates {:?}",
            path.display(),
            c.names,
            names
        );
    }
    Ok((Some(c), path.display().to_string()))
}

/// StarGAN: every test image into every domain.
fn attribute_domains(
    t: &dyn Translator,
    model: &dyn Model,
    names: Vec<String>,
    net: &LeNet,
    args: &TranslationArgs,
) -> Result<TranslationReport> {
    let data = &args.run.data;
    let spec = model.data_spec();
    if data.attributes.is_empty() {
        bail!(
            "translation metrics of attribute files are not measured: their true translations are unknown (the run's data has no synthetic attributes)"
        );
    }
    let source = synthetic_attributes(&spec, data, args.data, Split::Test)?;
    let (classifier, note) = attribute_classifier(args, &names)?;
    let k = names.len();
    let n = limited(source.len(), args.limit);
    let base = &source.inner;
    let domains = t.domains().all();
    let mut rows = Vec::new();
    let mut overall = Tally::default();
    let mut by_change = vec![KeptSplit::default(); k];
    for target in &domains {
        let mut tally = Tally::default();
        // The transforms that made a digit into this domain, undone.
        let mut made = data.transforms.0.clone();
        for (a, on) in data.attributes.iter().zip(target) {
            if *on > 0.5 {
                made.extend(a.transforms.0.iter().cloned());
            }
        }
        let undo = Pipeline(made).inverse().ok();
        for start in (0..n).step_by(args.batch_size) {
            let idx: Vec<usize> = (start..(start + args.batch_size).min(n)).collect();
            let mut rng = Rng::new(0);
            let x: Vec<Image> = idx
                .iter()
                .map(|&i| source.image(i, &mut rng))
                .collect::<Result<_>>()?;
            let truth: Vec<Image> = idx
                .iter()
                .map(|&i| source.image_as(i, target, &mut rng))
                .collect::<Result<_>>()?;
            let own: Vec<f32> = idx.iter().flat_map(|&i| source.values[i].clone()).collect();
            let x = tensor_of(&x, args.device)?;
            let truth = tensor_of(&truth, args.device)?;
            let want = Tensor::new(target.as_slice(), args.device)?
                .unsqueeze(0)?
                .repeat((idx.len(), 1))?;
            let y = t.translate(&x, &Target::Attributes(want))?;
            let own = Tensor::from_vec(own, (idx.len(), k), args.device)?;
            let back = t.translate(&y, &Target::Attributes(own))?;
            let m = idx.len();
            tally.n += m;
            tally.truth = true;
            tally.error += mean_abs(&y, &truth)? * m as f64;
            tally.cycle += mean_abs(&back, &x)? * m as f64;
            if let Some(undo) = &undo {
                let read = digits_read(net, &y, undo, args.device)?;
                tally.digits = true;
                for (&i, &r) in idx.iter().zip(&read) {
                    let kept = digit_of(base.as_ref(), i) == Some(r);
                    tally.kept += usize::from(kept);
                    for (a, split) in by_change.iter_mut().enumerate() {
                        let changed = (source.values[i][a] > 0.5) != (target[a] > 0.5);
                        split.add(changed, kept);
                    }
                }
            }
            if let Some(c) = &classifier {
                tally.classified = true;
                tally.attributes.resize(k, 0);
                for p in c.predict(&y)? {
                    let right: Vec<bool> = p
                        .iter()
                        .zip(target)
                        .map(|(p, t)| *p == (*t > 0.5))
                        .collect();
                    for (a, r) in right.iter().enumerate() {
                        tally.attributes[a] += usize::from(*r);
                    }
                    tally.all += usize::from(right.iter().all(|r| *r));
                }
            }
        }
        let label: Vec<&str> = names
            .iter()
            .zip(target)
            .filter(|(_, on)| **on > 0.5)
            .map(|(n, _)| n.as_str())
            .collect();
        let label = if label.is_empty() {
            "none".to_string()
        } else {
            label.join("+")
        };
        overall.add(&tally);
        rows.push(tally.row(label));
    }
    let digit_kept_by_change = names
        .iter()
        .zip(&by_change)
        .filter(|(_, split)| split.changed.1 + split.same.1 > 0)
        .map(|(name, split)| KeptByChange {
            attribute: name.clone(),
            changed: split.changed.0 as f64 / split.changed.1.max(1) as f64,
            same: split.same.0 as f64 / split.same.1.max(1) as f64,
        })
        .collect();
    Ok(TranslationReport {
        images: n,
        ground_truth: true,
        attribute_names: names,
        rows,
        overall: Some(overall.row("all domains".into())),
        attribute_classifier: Some(note),
        digit_kept_by_change,
    })
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v))
}

pub fn print(r: &TranslationReport) {
    println!();
    println!(
        "translation ({} test images{})",
        r.images,
        if r.ground_truth {
            ", true translations known"
        } else {
            "; no ground truth: cycle error only"
        }
    );
    println!(
        "{:<28} {:>8} {:>12} {:>11} {:>12} {:>12}",
        "target", "images", "abs error", "digit kept", "attributes", "cycle error"
    );
    for row in r.rows.iter().chain(r.overall.iter()) {
        println!(
            "{:<28} {:>8} {:>12} {:>11} {:>12} {:>12.4}",
            row.target,
            row.translations,
            row.mean_abs_error.map_or("-".into(), |e| format!("{e:.4}")),
            percent(row.digit_kept),
            percent(row.all_attributes_right),
            row.cycle_error
        );
    }
    if let (Some(overall), false) = (&r.overall, r.attribute_names.is_empty()) {
        if let Some(per) = &overall.attributes_right {
            let each: Vec<String> = r
                .attribute_names
                .iter()
                .zip(per)
                .map(|(n, v)| format!("{n} {:.1}%", 100.0 * v))
                .collect();
            println!("attributes right, each: {}", each.join(", "));
        }
    }
    if !r.digit_kept_by_change.is_empty() {
        let each: Vec<String> = r
            .digit_kept_by_change
            .iter()
            .map(|k| {
                format!(
                    "{} {:.1}% where it changes, {:.1}% where it stays",
                    k.attribute,
                    100.0 * k.changed,
                    100.0 * k.same
                )
            })
            .collect();
        println!("digit kept: {}", each.join("; "));
    }
    if let Some(note) = &r.attribute_classifier {
        println!("attribute classifier: {note}");
    }
}
