//! What Puzzle-GAN is measured by, on test digits whose whole is known: each completed from its
//! first 1, 2, ..., `K` key patches (the windows of most ink), then
//! - mask IoU: the generated mask (at 0.5) against the true one (the union of the boxes);
//! - error inside the mask: the mean absolute difference from the real digit over the true
//!   mask's pixels (values in [0, 1]);
//! - digit: the shipped classifier names the source digit from the generated image;
//!
//! and the same three for G's image with the patches themselves placed where they agree best
//! with G's image and mask (`layers::placement`: the placed boxes are its mask), and again
//! with a locator's priors added to the placement (`gan_variants::puzzle_locator`) when one is
//! given;
//!
//! beside baselines: the patches pasted on black (error 0 inside the mask by construction;
//! the classifier reads the pasted patches); the nearest training digit to the patches (least
//! squared difference over the true mask), which shows what looking up a known digit gives;
//! and for the mask, the training digit whose own key patches look most like these (their
//! crops alone, as the model sees them): its boxes' IoU says how well a lookup places the
//! patches without being told where they are.

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use gan_variants::puzzle_locator::{Locator, PriorWeights};
use layers::eval::classifier::LeNet;
use layers::model::Puzzle;
use layers::placement;
use layers::step::{union_of_boxes, DataSpec, PatchBox, Patches};
use layers::{Rng, Stream};
use serde::Serialize;

use crate::data::pipeline::SplitSources;
use crate::data::source::Label;
use crate::data::{Binarization, Split};
use crate::report::quality::classifier_view;
use crate::report::HeldOutArgs;

#[derive(Debug, Serialize)]
pub struct PuzzleRow {
    pub patches: usize,
    pub mask_iou: f64,
    pub error_in_mask: f64,
    pub digit_accuracy: f64,
    /// The patches on black, read by the classifier.
    pub pasted_digit_accuracy: f64,
    /// The nearest training digit over the true mask: its error there and its digit.
    pub nearest_error_in_mask: f64,
    pub nearest_digit_accuracy: f64,
    /// The training digit whose first k key patches' crops are nearest: its boxes' IoU.
    pub lookup_mask_iou: f64,
    /// G's image with the patches placed (`layers::placement`): the placed boxes' IoU, the
    /// error in the true mask, the digit.
    pub placed_mask_iou: f64,
    pub placed_error_in_mask: f64,
    pub placed_digit_accuracy: f64,
    /// The share of patches placed exactly on their own box.
    pub placed_exactly: f64,
    /// The same four with the locator's priors in the placement, when a locator is given.
    pub located: Option<Placement>,
}

/// What placing the patches gave: the placed boxes' IoU, the error in the true mask, the
/// digit, the share of patches on their own box.
#[derive(Debug, Serialize)]
pub struct Placement {
    pub mask_iou: f64,
    pub error_in_mask: f64,
    pub digit_accuracy: f64,
    pub exactly: f64,
}

/// Sums of one placement over the images of one patch count.
#[derive(Default)]
struct PlacementTally {
    iou: f64,
    error: f64,
    digit: usize,
    exactly: usize,
}

impl PlacementTally {
    fn add(
        &mut self,
        placed: &placement::Placed,
        truth: &[Vec<PatchBox>],
        (x, mask): (&Tensor, &Tensor),
        (net, wanted): (&LeNet, &[u32]),
    ) -> Result<usize> {
        self.iou += iou(&placed.masks, mask)?.iter().sum::<f64>();
        self.error += error_in_mask(&placed.images, x, mask)?.iter().sum::<f64>();
        self.digit += right(&read(net, &placed.images)?, wanted);
        let mut patches = 0;
        for (got, truth) in placed.boxes.iter().zip(truth) {
            patches += got.len();
            self.exactly += got.iter().zip(truth).filter(|(a, b)| a == b).count();
        }
        Ok(patches)
    }

    fn figures(&self, images: f64, patches: usize) -> Placement {
        Placement {
            mask_iou: self.iou / images,
            error_in_mask: self.error / images,
            digit_accuracy: self.digit as f64 / images,
            exactly: self.exactly as f64 / patches.max(1) as f64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PuzzleReport {
    pub dataset: String,
    pub images: usize,
    /// The locator file whose priors the `located` figures add, if any.
    pub locator: Option<String>,
    /// Its priors' weights: position, offset, centre.
    pub prior_weights: Option<[f32; 3]>,
    pub rows: Vec<PuzzleRow>,
}

/// Sums over the images of one patch count.
#[derive(Default)]
struct Tally {
    iou: f64,
    error: f64,
    digit: usize,
    pasted: usize,
    nearest_error: f64,
    nearest_digit: usize,
    lookup_iou: f64,
    placed: PlacementTally,
    located: PlacementTally,
    patches: usize,
}

/// A locator for the `located` figures, and the file it came from.
pub struct LocatorArg<'a> {
    pub locator: &'a Locator,
    pub file: String,
    pub weights: PriorWeights,
    /// Named by `--locator` (not found beside the checkpoint): what it cannot place is an error
    /// rather than a warning.
    pub asked_for: bool,
}

pub fn evaluate(
    model: &dyn Puzzle,
    spec: &DataSpec,
    args: &HeldOutArgs,
    mut locator: Option<LocatorArg>,
) -> Result<PuzzleReport> {
    let test = SplitSources::load(spec, &args.run.data, args.data, Split::Test)?;
    let train = SplitSources::load(spec, &args.run.data, args.data, Split::Train)?;
    let n = match args.limit {
        0 => test.images.len(),
        l => l.min(test.images.len()),
    };
    let labels: Vec<u32> = (0..n)
        .map(|i| match test.images.label(i) {
            Label::Class(c) => Ok(c),
            _ => anyhow::bail!(
                "{}: the puzzle metrics name each image's digit, and image {i} has no label",
                test.images.name()
            ),
        })
        .collect::<Result<_>>()?;
    let net = crate::report::classifier::load(args.classifier, args.device)?;
    let (train_images, train_labels, train_patches) = all_images(&train, args.device)?;
    let lookup = Lookup::new(&train_images)?;
    let patch_lookup = PatchLookup::new(train_patches)?;
    let mut tallies: Vec<Tally> = (0..model.max_patches()).map(|_| Tally::default()).collect();
    let mut rng = Rng::derive(args.seed, Stream::Eval, 0);
    let order: Vec<usize> = (0..n).collect();
    for idx in order.chunks(args.batch_size.max(1)) {
        let batch = test.batch(idx, &[], Binarization::None, args.device)?;
        let patches = batch.patches("puzzle-gan")?;
        let x = &batch.images;
        let (_, _, h, w) = x.dims4()?;
        let wanted = &labels[idx[0]..idx[0] + idx.len()];
        for (k, tally) in tallies.iter_mut().enumerate().map(|(i, t)| (i + 1, t)) {
            let mask = patches.union_mask(&patches.counts(k), (h, w), args.device)?;
            let (generated_mask, image) = model.complete(patches, k, &mut rng)?;
            tally.iou += iou(&generated_mask, &mask)?.iter().sum::<f64>();
            tally.error += error_in_mask(&image, x, &mask)?.iter().sum::<f64>();
            tally.digit += right(&read(&net, &image)?, wanted);
            let crops = patches.crops(x, k)?;
            let placed = placement::place(&image, &generated_mask, &crops, placement::MASK_WEIGHT)?;
            let truth = (x, &mask);
            let reader = (&net, wanted);
            tally.patches += tally.placed.add(&placed, &patches.boxes, truth, reader)?;
            if let Some(l) = &locator {
                match l.locator.priors(&crops, l.weights, args.device) {
                    Ok(priors) => {
                        let located = placement::place_with(
                            &image,
                            &generated_mask,
                            &crops,
                            placement::MASK_WEIGHT,
                            Some(&priors),
                        )?;
                        tally.located.add(&located, &patches.boxes, truth, reader)?;
                    }
                    Err(e) if l.asked_for => return Err(e.into()),
                    Err(e) => {
                        eprintln!(
                            "warning: the locator {} found beside the checkpoint cannot place these patches ({e}); no located figures",
                            l.file
                        );
                        locator = None;
                    }
                }
            }
            tally.pasted += right(&read(&net, &x.broadcast_mul(&mask)?)?, wanted);
            let nearest = lookup.nearest(x, &mask)?;
            let found =
                train_images.index_select(&Tensor::new(nearest.as_slice(), args.device)?, 0)?;
            tally.nearest_error += error_in_mask(&found, x, &mask)?.iter().sum::<f64>();
            let found_labels: Vec<u32> =
                nearest.iter().map(|&j| train_labels[j as usize]).collect();
            tally.nearest_digit += right(&found_labels, wanted);
            let placed = patch_lookup.masks(patches, k, (h, w))?;
            tally.lookup_iou += iou(&placed, &mask)?.iter().sum::<f64>();
        }
    }
    let m = n.max(1) as f64;
    Ok(PuzzleReport {
        dataset: test.images.name(),
        images: n,
        locator: locator.as_ref().map(|l| l.file.clone()),
        prior_weights: locator
            .as_ref()
            .map(|l| [l.weights.position, l.weights.offset, l.weights.center]),
        rows: tallies
            .iter()
            .enumerate()
            .map(|(i, t)| (i, t, t.placed.figures(m, t.patches)))
            .map(|(i, t, placed)| PuzzleRow {
                patches: i + 1,
                mask_iou: t.iou / m,
                error_in_mask: t.error / m,
                digit_accuracy: t.digit as f64 / m,
                pasted_digit_accuracy: t.pasted as f64 / m,
                nearest_error_in_mask: t.nearest_error / m,
                nearest_digit_accuracy: t.nearest_digit as f64 / m,
                lookup_mask_iou: t.lookup_iou / m,
                placed_mask_iou: placed.mask_iou,
                placed_error_in_mask: placed.error_in_mask,
                placed_digit_accuracy: placed.digit_accuracy,
                placed_exactly: placed.exactly,
                located: locator.as_ref().map(|_| t.located.figures(m, t.patches)),
            })
            .collect(),
    })
}

/// Every image of a split `(n, c, h, w)` in [0, 1], with its digit and key patches.
fn all_images(split: &SplitSources, device: &Device) -> Result<(Tensor, Vec<u32>, Patches)> {
    let n = split.images.len();
    let labels = (0..n)
        .map(|i| match split.images.label(i) {
            Label::Class(c) => c,
            _ => u32::MAX,
        })
        .collect();
    let idx: Vec<usize> = (0..n).collect();
    let (mut parts, mut crops, mut boxes) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in idx.chunks(1000) {
        let batch = split.batch(chunk, &[], Binarization::None, device)?;
        let patches = batch.patches("puzzle-gan")?;
        crops.push(patches.images.clone());
        boxes.extend(patches.boxes.iter().cloned());
        parts.push(batch.images);
    }
    let patches = Patches {
        images: Tensor::cat(&crops, 0)?,
        boxes,
    };
    Ok((Tensor::cat(&parts, 0)?, labels, patches))
}

/// Per image, `|a AND b| / |a OR b|` of `(b, 1, h, w)` masks, `a` thresholded at 0.5 (1 where
/// both are empty).
fn iou(generated: &Tensor, truth: &Tensor) -> Result<Vec<f64>> {
    let a = generated.ge(0.5)?.to_dtype(DType::F32)?;
    let inter = (&a * truth)?.flatten_from(1)?.sum(1)?.to_vec1::<f32>()?;
    let union = ((&a + truth)? - (&a * truth)?)?
        .flatten_from(1)?
        .sum(1)?
        .to_vec1::<f32>()?;
    Ok(inter
        .iter()
        .zip(&union)
        .map(|(&i, &u)| if u > 0.0 { (i / u) as f64 } else { 1.0 })
        .collect())
}

/// Per image, the mean of `|a - b|` over the pixels of `mask` (all channels).
fn error_in_mask(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<Vec<f64>> {
    let c = a.dim(1)? as f32;
    let diff = (a - b)?
        .abs()?
        .broadcast_mul(mask)?
        .flatten_from(1)?
        .sum(1)?
        .to_vec1::<f32>()?;
    let area = mask.flatten_from(1)?.sum(1)?.to_vec1::<f32>()?;
    Ok(diff
        .iter()
        .zip(&area)
        .map(|(&d, &m)| (d / (m * c).max(1.0)) as f64)
        .collect())
}

/// The classifier's digit for each image.
fn read(net: &LeNet, images: &Tensor) -> Result<Vec<u32>> {
    Ok(net
        .forward(&classifier_view(images)?)?
        .argmax(1)?
        .to_vec1::<u32>()?)
}

fn right(got: &[u32], wanted: &[u32]) -> usize {
    got.iter().zip(wanted).filter(|(a, b)| a == b).count()
}

/// The training images as the nearest-digit baseline searches them: flattened, and squared,
/// once for every batch and patch count.
struct Lookup {
    /// `(N, c h w)`.
    flat: Tensor,
    squared: Tensor,
}

impl Lookup {
    fn new(train: &Tensor) -> Result<Self> {
        let flat = train.flatten_from(1)?;
        ensure!(flat.dim(0)? > 0, "no training images to look up");
        Ok(Self {
            squared: flat.sqr()?,
            flat,
        })
    }

    /// For each image of `x`, the index of the training image closest to it over its `mask`:
    /// `sum_p m_p (t_p - x_p)^2 = T^2 m - 2 T (m x) + const`, as two matrix products.
    fn nearest(&self, x: &Tensor, mask: &Tensor) -> Result<Vec<u32>> {
        let c = x.dim(1)?;
        let m = mask.repeat((1, c, 1, 1))?.flatten_from(1)?; // (b, c h w)
        let mx = (x.flatten_from(1)? * &m)?;
        let d = (self.squared.matmul(&m.t()?)? - (self.flat.matmul(&mx.t()?)? * 2.0)?)?; // (N, b)
        Ok(d.argmin(0)?.to_vec1::<u32>()?)
    }
}

/// The training digits' key patches, to place a test digit's patches by their looks alone.
struct PatchLookup {
    boxes: Vec<Vec<PatchBox>>,
    /// Per patch slot: every training digit's crop flattened `(N, c h w)`, and its squared norm
    /// `(N, 1)` (the slots together hold the crops once).
    slots: Vec<(Tensor, Tensor)>,
    /// Per patch count `k` (index `k - 1`): `(N, 1)`, a penalty that rules out the digits with
    /// fewer than `k` boxes.
    short: Vec<Tensor>,
}

impl PatchLookup {
    fn new(train: Patches) -> Result<Self> {
        let (n, slots) = (train.images.dim(0)?, train.images.dim(1)?);
        ensure!(n > 0, "no training images to look up");
        let device = train.images.device().clone();
        let slots_flat = (0..slots)
            .map(|p| {
                let crops = train.images.narrow(1, p, 1)?.flatten_from(1)?;
                let norms = crops.sqr()?.sum_keepdim(1)?;
                Ok((crops, norms))
            })
            .collect::<Result<_>>()?;
        let short = (1..=slots)
            .map(|k| {
                let v: Vec<f32> = train
                    .boxes
                    .iter()
                    .map(|b| if b.len() < k { f32::MAX / 4.0 } else { 0.0 })
                    .collect();
                Ok(Tensor::from_vec(v, (n, 1), &device)?)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            boxes: train.boxes,
            slots: slots_flat,
            short,
        })
    }

    /// For each image of `patches`, the union of the first `k` boxes of the training digit
    /// whose first `k` crops are nearest to its own (least squared difference), `(b, 1, h, w)`.
    fn masks(&self, patches: &Patches, k: usize, size: (usize, usize)) -> Result<Tensor> {
        // sum over the slots p < k of |t_p|^2 - 2 t_p . q_p (|q|^2 is the same for every t).
        let mut d = self.short[k - 1].clone();
        for (p, (crops, norms)) in self.slots.iter().take(k).enumerate() {
            let query = patches.images.narrow(1, p, 1)?.flatten_from(1)?; // (b, c h w)
            let dot = (crops.matmul(&query.t()?)? * 2.0)?; // (N, b)
            d = d.broadcast_add(&norms.broadcast_sub(&dot)?)?;
        }
        let found = d.argmin(0)?.to_vec1::<u32>()?;
        let boxes: Vec<Vec<PatchBox>> = found
            .iter()
            .map(|&j| self.boxes[j as usize].clone())
            .collect();
        Ok(union_of_boxes(
            &boxes,
            &vec![k; boxes.len()],
            size,
            patches.images.device(),
        )?)
    }
}

pub fn print(r: &PuzzleReport) {
    println!(
        "test digits {} ({} images), completed from their first k key patches",
        r.dataset, r.images
    );
    println!();
    println!(
        "{:>7} {:>9} {:>12} {:>7}   {:>33}   {:>13}   {:>14} {:>13}   {:>11}",
        "patches",
        "mask IoU",
        "error (mask)",
        "digit",
        "placed: IoU / error / digit / on box",
        "pasted: digit",
        "nearest: error",
        "nearest: digit",
        "lookup: IoU"
    );
    for row in &r.rows {
        println!(
            "{:>7} {:>9.3} {:>12.4} {:>6.1}%   {:>33}   {:>12.1}%   {:>14.4} {:>12.1}%   {:>11.3}",
            row.patches,
            row.mask_iou,
            row.error_in_mask,
            100.0 * row.digit_accuracy,
            format!(
                "{:.3} / {:.4} / {:.1}% / {:.1}%",
                row.placed_mask_iou,
                row.placed_error_in_mask,
                100.0 * row.placed_digit_accuracy,
                100.0 * row.placed_exactly
            ),
            100.0 * row.pasted_digit_accuracy,
            row.nearest_error_in_mask,
            100.0 * row.nearest_digit_accuracy,
            row.lookup_mask_iou
        );
    }
    if let Some(file) = &r.locator {
        println!();
        let [p, o, c] = r.prior_weights.unwrap_or_default();
        println!(
            "placed with the priors of the locator {file} (weights: position {p}, offset {o}, centre {c}):"
        );
        println!(
            "{:>7} {:>9} {:>12} {:>7} {:>7}",
            "patches", "IoU", "error (mask)", "digit", "on box"
        );
        for row in &r.rows {
            if let Some(l) = &row.located {
                println!(
                    "{:>7} {:>9.3} {:>12.4} {:>6.1}% {:>6.1}%",
                    row.patches,
                    l.mask_iou,
                    l.error_in_mask,
                    100.0 * l.digit_accuracy,
                    100.0 * l.exactly
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_error_and_nearest_on_hand_made_masks() -> Result<()> {
        let dev = Device::Cpu;
        let truth = Tensor::new(&[[[[1f32, 1.0], [0.0, 0.0]]]], &dev)?;
        let generated = Tensor::new(&[[[[0.9f32, 0.2], [0.7, 0.1]]]], &dev)?;
        // Generated at 0.5: pixels 0 and 2; truth: 0 and 1 -> 1 / 3.
        assert!((iou(&generated, &truth)?[0] - 1.0 / 3.0).abs() < 1e-6);
        let a = Tensor::new(&[[[[0.5f32, 1.0], [1.0, 1.0]]]], &dev)?;
        let b = Tensor::new(&[[[[0.0f32, 0.0], [0.0, 0.0]]]], &dev)?;
        assert!((error_in_mask(&a, &b, &truth)?[0] - 0.75).abs() < 1e-6);
        // The nearest over the mask ignores what lies outside it.
        let train = Tensor::new(
            &[[[[0.0f32, 0.0], [9.0, 9.0]]], [[[0.5, 1.0], [0.0, 0.0]]]],
            &dev,
        )?;
        let x = Tensor::new(&[[[[0.5f32, 1.0], [5.0, 5.0]]]], &dev)?;
        assert_eq!(Lookup::new(&train)?.nearest(&x, &truth)?, vec![1]);
        Ok(())
    }

    /// The lookup by the patches places a digit's patches where the training digit with the
    /// nearest crops had its boxes, and skips digits with fewer boxes than asked for.
    #[test]
    fn the_patch_lookup_takes_the_boxes_of_the_nearest_crops() -> Result<()> {
        let dev = Device::Cpu;
        // Two training digits of 2 x 2 with 2 slots of 1 x 2 x 2 crops each.
        let crops = |v: [f32; 8]| Tensor::from_vec(v.to_vec(), (1, 2, 1, 2, 2), &dev);
        let train = Patches {
            images: Tensor::cat(
                &[
                    crops([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])?,
                    crops([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])?,
                ],
                0,
            )?,
            boxes: vec![vec![[0, 0, 1, 1]], vec![[1, 1, 1, 1], [0, 0, 1, 1]]],
        };
        let lookup = PatchLookup::new(train)?;
        let query = Patches {
            images: crops([0.9, 1.0, 1.0, 0.8, 1.0, 0.0, 0.0, 1.0])?,
            boxes: vec![vec![[1, 0, 1, 1], [0, 1, 1, 1]]],
        };
        // One patch: the first digit's first crop is nearest; its box is the top left pixel.
        let one = lookup
            .masks(&query, 1, (2, 2))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(one, vec![1.0, 0.0, 0.0, 0.0]);
        // Two patches: the first digit has one box only, so the second is taken.
        let two = lookup
            .masks(&query, 2, (2, 2))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(two, vec![1.0, 0.0, 0.0, 1.0]);
        Ok(())
    }
}
