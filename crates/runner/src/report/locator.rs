//! The locator behind Puzzle-GAN's placement priors (`gan_variants::puzzle_locator`):
//! `genzoo classifier train --locator --config RUN` trains it on the key patches of the run's
//! training images, holding out the last `validation` of them to report how often it names a
//! patch's place and a pair's offset; `genzoo eval` and `genzoo sample --mode puzzle` read it
//! (`--locator FILE`, by default `NAME-locator.safetensors` beside the checkpoint) to place
//! the patches.
//!
//! Every other epoch the training images are warped a little (rotation up to 0.25 rad, scale
//! and shear up to 10% and 0.2, about the centre) and their key patches chosen again: without
//! it both perceptrons learn the training digits' boxes by heart (60 epochs, the last 500
//! training digits held out: positions 30.6% and offsets 49.0% right, falling from 33.4%
//! at epoch 20, against 36.4% and 53.8% warped; with the shipped Puzzle-GAN and 3 patches the
//! error in the mask on the test digits 0.0952 against 0.0816; models/puzzle.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use gan_variants::puzzle_locator::{mean_center, Config, Locator};
use image::{ImageBuffer, Luma};
use imageproc::geometric_transformations::{warp, Interpolation, Projection};
use layers::placement::{self, Crop};
use layers::step::{DataSpec, PatchBox};
use layers::train::checkpoint::{load_into_varmap, varmap_tensors};
use layers::{Adam, AdamConfig, Checkpoint, Rng, Stream};
use serde::Serialize;

use crate::config::RunConfig;
use crate::data::patches::key_patches;
use crate::data::pipeline::SplitSources;
use crate::data::transforms::Image;
use crate::data::{epoch_order, Binarization, Split};
use crate::run::checkpoint::{KIND_PUZZLE_LOCATOR, META_KIND};

const KIND: &str = KIND_PUZZLE_LOCATOR;
const META_CONFIG: &str = "genzoo.config";
const META_CENTER: &str = "genzoo.center";

pub struct TrainArgs {
    /// The Puzzle-GAN run whose data (image side, patches) the locator learns.
    pub run: RunConfig,
    pub data: Option<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// The last this many training images are held out for the report.
    pub validation: usize,
    pub out: PathBuf,
    pub device: Device,
}

#[derive(Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    /// On the held-out images with all their patches: the share of patches whose most likely
    /// position is their box, and of pairs whose most likely offset is theirs.
    pub position_accuracy: f64,
    pub offset_accuracy: f64,
}

/// The training images of a Puzzle-GAN run, each with its key patches.
struct Digits {
    images: Vec<Image>,
    boxes: Vec<Vec<PatchBox>>,
    /// Whether the boxes are the key-patch rule's (not a boxes file's), so a warped image's
    /// can be chosen again.
    chosen_by_ink: bool,
}

fn puzzle_spec(run: &RunConfig, dir: Option<&Path>) -> Result<(RunConfig, DataSpec)> {
    let mut run = run.clone();
    crate::run::fit_to_data(&mut run, dir)?;
    let (model, _, _) = crate::run::checkpoint::build_model(&run, &Device::Cpu)?;
    let spec = model.data_spec();
    ensure!(
        spec.patches > 0,
        "model `{}` takes no key patches: a locator needs a Puzzle-GAN run",
        run.model
    );
    Ok((run, spec))
}

fn load_digits(run: &RunConfig, spec: &DataSpec, dir: Option<&Path>) -> Result<Digits> {
    let split = SplitSources::load(spec, &run.data, dir, Split::Train)?;
    let n = split.images.len();
    let chosen_by_ink = (0..n).all(|i| split.images.boxes(i).is_none());
    let (mut images, mut boxes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(1000) {
        let batch = split.batch(chunk, &[], Binarization::None, &Device::Cpu)?;
        let patches = batch.patches("puzzle-gan")?;
        let (b, c, h, w) = batch.images.dims4()?;
        let values = batch.images.flatten_all()?.to_vec1::<f32>()?;
        for i in 0..b {
            images.push(Image::new(
                [c, h, w],
                values[i * c * h * w..(i + 1) * c * h * w].to_vec(),
            )?);
        }
        boxes.extend(patches.boxes.iter().cloned());
    }
    Ok(Digits {
        images,
        boxes,
        chosen_by_ink,
    })
}

/// `image` rotated, scaled and sheared about its centre by a random amount.
fn warped(image: &Image, rng: &mut Rng) -> Result<Image> {
    let [c, h, w] = image.shape;
    let mut draw = |reach: f32| (rng.uniform_f32() * 2.0 - 1.0) * reach;
    let (angle, scale, shear) = (draw(0.25), 1.0 + draw(0.1), draw(0.2));
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let shear = Projection::from_matrix([1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
        .context("a shear is invertible")?;
    let projection = Projection::translate(cx, cy)
        * Projection::rotate(angle)
        * Projection::scale(scale, scale)
        * shear
        * Projection::translate(-cx, -cy);
    let mut data = Vec::with_capacity(image.data.len());
    for k in 0..c {
        let plane: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_raw(
            w as u32,
            h as u32,
            image.data[k * h * w..(k + 1) * h * w].to_vec(),
        )
        .context("a channel of the image")?;
        let out = warp(&plane, &projection, Interpolation::Bilinear, Luma([0.0]));
        data.extend(out.pixels().map(|p| p.0[0].clamp(0.0, 1.0)));
    }
    Image::new(image.shape, data)
}

/// Each image's crops of its boxes, as placement and the locator take them.
fn crops_of(images: &[&Image], boxes: &[Vec<PatchBox>]) -> Result<Vec<Vec<Crop>>> {
    images
        .iter()
        .zip(boxes)
        .map(|(image, list)| {
            let [c, h, w] = image.shape;
            list.iter()
                .map(|&b| Ok(placement::cut(&image.data, (c, h, w), b)?))
                .collect()
        })
        .collect()
}

pub fn train(args: &TrainArgs, mut on_epoch: impl FnMut(&EpochReport)) -> Result<Vec<EpochReport>> {
    ensure!(
        args.epochs > 0 && args.batch_size > 0,
        "--epochs and --batch-size must be positive"
    );
    let (run, spec) = puzzle_spec(&args.run, args.data.as_deref())?;
    let digits = load_digits(&run, &spec, args.data.as_deref())?;
    let n = digits.images.len();
    ensure!(
        args.validation < n,
        "--validation {} leaves none of the {n} training images to train on",
        args.validation
    );
    let trained = n - args.validation;
    let [c, s, _] = spec.shape;
    let cfg = Config {
        image_size: s,
        channels: c,
        patch_size: run.data.patch_size(s),
        max_patches: spec.patches,
        ..Config::default()
    };
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, args.seed, DType::F32, &args.device);
    let mut locator = Locator::new(&cfg, vb)?;
    let all: Vec<Tensor> = digits.images[..trained]
        .iter()
        .map(|im| Tensor::from_slice(&im.data, (1, c, s, s), &Device::Cpu))
        .collect::<candle_core::Result<_>>()?;
    locator.center = mean_center(&Tensor::cat(&all, 0)?)?;
    let mut adam = Adam::new(
        &varmap,
        AdamConfig {
            lr: args.lr,
            ..AdamConfig::default()
        },
    )?;
    let mut reports = Vec::new();
    for epoch in 0..args.epochs {
        let mut rng = Rng::derive(args.seed, Stream::Augment, epoch as u64);
        // Every other epoch the digits warped, their patches chosen again.
        let warp_now = epoch % 2 == 1 && digits.chosen_by_ink;
        let order = epoch_order(trained, args.seed, epoch as u64);
        let mut total = 0.0;
        for idx in order.chunks(args.batch_size) {
            let mut crops = Vec::with_capacity(idx.len());
            let mut boxes = Vec::with_capacity(idx.len());
            for &i in idx {
                let warped_image;
                let (image, mut list) = if warp_now {
                    warped_image = warped(&digits.images[i], &mut rng)?;
                    let list = key_patches(&warped_image, cfg.max_patches, cfg.patch_size);
                    (&warped_image, list)
                } else {
                    (&digits.images[i], digits.boxes[i].clone())
                };
                // 1 to K patches, as Puzzle-GAN trains.
                list.truncate(1 + rng.below(cfg.max_patches));
                crops.extend(crops_of(&[image], std::slice::from_ref(&list))?);
                boxes.push(list);
            }
            let x = locator.crop_tensor(&crops, &args.device)?;
            let loss = locator.loss(&x, &boxes)?;
            let sum = (&loss.position + &loss.offset)?;
            total += sum.to_scalar::<f32>()? as f64 * idx.len() as f64;
            adam.backward_step(&sum)?;
        }
        let (position_accuracy, offset_accuracy) =
            accuracy(&locator, &digits, trained..n, &args.device)?;
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: total / trained as f64,
            position_accuracy,
            offset_accuracy,
        };
        on_epoch(&report);
        reports.push(report);
    }
    let mut metadata = BTreeMap::new();
    metadata.insert(META_KIND.to_string(), KIND.to_string());
    metadata.insert(META_CONFIG.into(), serde_json::to_string(&cfg)?);
    metadata.insert(META_CENTER.into(), serde_json::to_string(&locator.center)?);
    let last = reports.last().expect("at least one epoch");
    metadata.insert(
        "genzoo.validation".into(),
        serde_json::to_string(&serde_json::json!({
            "images": args.validation,
            "position_accuracy": last.position_accuracy,
            "offset_accuracy": last.offset_accuracy,
        }))?,
    );
    // Weight matrices in half precision, for a small file beside Puzzle-GAN's weights (loaded
    // back as f32). The held-out figures above were measured in f32; the shipped file's
    // placement figures (models/puzzle.md) were measured from the f16 file itself.
    let tensors = varmap_tensors(&varmap)
        .into_iter()
        .map(|(name, t)| {
            let t = if t.rank() >= 2 {
                t.to_dtype(DType::F16)?
            } else {
                t
            };
            Ok((name, t))
        })
        .collect::<candle_core::Result<_>>()?;
    Checkpoint { tensors, metadata }.save(&args.out)?;
    Ok(reports)
}

/// On `range` of the digits with all their patches: the share of patches whose most likely
/// position is theirs, and of pairs whose most likely offset is theirs (NaN where none).
fn accuracy(
    locator: &Locator,
    digits: &Digits,
    range: std::ops::Range<usize>,
    device: &Device,
) -> Result<(f64, f64)> {
    let cfg = locator.config().clone();
    let (mut right, mut seen, mut pairs_right, mut pairs) = (0usize, 0usize, 0usize, 0usize);
    let idx: Vec<usize> = range.collect();
    for chunk in idx.chunks(500) {
        let images: Vec<&Image> = chunk.iter().map(|&i| &digits.images[i]).collect();
        let boxes = &digits.boxes[chunk[0]..chunk[0] + chunk.len()];
        // Costs -log p at weight 1: the likeliest position or offset is the cheapest.
        let priors = locator.priors(
            &crops_of(&images, boxes)?,
            gan_variants::puzzle_locator::PriorWeights {
                position: 1.0,
                offset: 1.0,
                center: 0.0,
            },
            device,
        )?;
        for (list, prior) in boxes.iter().zip(&priors) {
            for (b, costs) in list.iter().zip(&prior.positions) {
                seen += 1;
                right += usize::from(cheapest(costs) == Some(b[1] * cfg.across() + b[0]));
            }
            for pair in &prior.offsets {
                let (a, b) = (list[pair.first], list[pair.second]);
                let r = pair.reach;
                let truth = (b[1] + r - a[1]) * (2 * r + 1) + (b[0] + r - a[0]);
                pairs += 1;
                pairs_right += usize::from(cheapest(&pair.cost) == Some(truth));
            }
        }
    }
    let share = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    Ok((share(right, seen), share(pairs_right, pairs)))
}

/// The index of the least cost (the first of equal ones).
fn cheapest(costs: &[f32]) -> Option<usize> {
    costs
        .iter()
        .enumerate()
        .min_by(|x, y| x.1.total_cmp(y.1))
        .map(|(i, _)| i)
}

/// Loads a locator file.
pub fn load(path: &Path, device: &Device) -> Result<Locator> {
    let ck = super::load_evaluator(path, KIND, "a Puzzle-GAN locator", device)?;
    let cfg: Config = super::meta_json(&ck, META_CONFIG, path, "a locator config")?;
    let center: [f32; 2] = super::meta_json(&ck, META_CENTER, path, "a (y, x) centre")?;
    let varmap = VarMap::new();
    let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, device);
    let mut locator = Locator::new(&cfg, vb)?;
    load_into_varmap(&varmap, &ck.tensors, path)?;
    locator.center = center;
    Ok(locator)
}

/// Where a checkpoint's locator is looked for by default: beside it, named after it
/// (`models/puzzle.safetensors` -> `models/puzzle-locator.safetensors`).
pub fn beside(checkpoint: &Path) -> PathBuf {
    super::beside(checkpoint, "locator")
}

/// The locator `explicit` names, else the one beside `checkpoint` when there is one.
pub fn find(
    explicit: Option<&Path>,
    checkpoint: &Path,
    device: &Device,
) -> Result<Option<Locator>> {
    let file = match explicit {
        Some(path) => path.to_path_buf(),
        None => match Some(beside(checkpoint)).filter(|p| p.exists()) {
            Some(path) => path,
            None => return Ok(None),
        },
    };
    load(&file, device).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puzzle_run() -> Result<RunConfig> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/puzzle.toml");
        RunConfig::from_file(&file, None)
    }

    /// One epoch of the digits' run file, the last `validation` training digits held out.
    fn one_epoch(validation: usize, out: PathBuf) -> Result<TrainArgs> {
        Ok(TrainArgs {
            run: puzzle_run()?,
            data: None,
            epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            seed: 0,
            validation,
            out,
            device: Device::Cpu,
        })
    }

    /// Two steps on 106 digits: the report's shares are shares, the file loads back with its
    /// centre (near the middle of the padded digits) and gives priors for key patches.
    #[test]
    fn a_locator_trains_saves_and_loads_back() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("locator.safetensors");
        let args = one_epoch(7_900, out.clone())?;
        let reports = train(&args, |_| {})?;
        let r = &reports[0];
        assert!(
            r.train_loss.is_finite() && r.train_loss > 0.0,
            "{}",
            r.train_loss
        );
        for share in [r.position_accuracy, r.offset_accuracy] {
            assert!((0.0..=1.0).contains(&share), "{share}");
        }
        let locator = load(&out, &Device::Cpu)?;
        let [y, x] = locator.center;
        assert!((y - 16.0).abs() < 1.0 && (x - 16.0).abs() < 1.0, "{y} {x}");
        let crop = layers::placement::Crop {
            channels: 1,
            height: 10,
            width: 10,
            data: vec![0.5; 100],
        };
        let priors =
            layers::placement::Priors::priors(&locator, &[vec![crop.clone(), crop]], &Device::Cpu)?;
        assert_eq!(priors[0].positions[0].len(), 23 * 23);
        assert_eq!(priors[0].offsets.len(), 1);
        assert!(priors[0].positions[0]
            .iter()
            .all(|c| c.is_finite() && *c >= 0.0));
        Ok(())
    }

    #[test]
    fn bad_files_and_arguments_are_clear_errors() -> Result<()> {
        let classifier =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mnist-classifier.safetensors");
        let e = format!("{:#}", load(&classifier, &Device::Cpu).err().unwrap());
        assert!(
            e.contains("`mnist-classifier` file, not a Puzzle-GAN locator"),
            "{e}"
        );
        let missing = Path::new("/nonexistent/puzzle-locator.safetensors");
        let e = format!(
            "{:#}",
            find(Some(missing), missing, &Device::Cpu).err().unwrap()
        );
        assert!(e.contains("/nonexistent/puzzle-locator.safetensors"), "{e}");
        // No file beside a checkpoint: no locator, and no error.
        assert!(find(
            None,
            Path::new("/nonexistent/puzzle.safetensors"),
            &Device::Cpu
        )?
        .is_none());
        let args = one_epoch(
            9_000,
            std::env::temp_dir().join("never-written.safetensors"),
        )?;
        let e = format!("{:#}", train(&args, |_| {}).err().unwrap());
        assert!(
            e.contains("--validation 9000 leaves none of the 8006"),
            "{e}"
        );
        let dcgan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/dcgan.toml");
        let gan = RunConfig::from_file(&dcgan, None)?;
        let e = format!(
            "{:#}",
            train(&TrainArgs { run: gan, ..args }, |_| {})
                .err()
                .unwrap()
        );
        assert!(e.contains("takes no key patches"), "{e}");
        Ok(())
    }

    /// The held-out figures count a patch right when the locator's likeliest position is its
    /// box, and a pair when its likeliest offset is theirs: a locator whose logits are only
    /// biases towards one box pair reads 100% / 100% on that pair and 50% / 0% when the second
    /// box moves.
    #[test]
    fn held_out_accuracy_counts_the_likeliest_position_and_offset() -> Result<()> {
        let cfg = Config::default();
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let locator = Locator::new(&cfg, vb)?;
        let (across, reach) = (cfg.across(), cfg.reach());
        let first: PatchBox = [3, 4, 10, 10];
        let second: PatchBox = [13, 4, 10, 10];
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let mut values = vec![0f32; var.elem_count()];
            if name == "positions.4.bias" {
                values[4 * across + 3] = 1.0;
                values[cfg.positions() + 4 * across + 13] = 1.0;
            }
            if name == "offsets.2.bias" {
                values[reach * (2 * reach + 1) + 10 + reach] = 1.0;
            }
            var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
        }
        let image = Image::new([1, 32, 32], vec![0.5; 32 * 32])?;
        let digits = |boxes: Vec<PatchBox>| Digits {
            images: vec![image.clone()],
            boxes: vec![boxes],
            chosen_by_ink: true,
        };
        let right = accuracy(&locator, &digits(vec![first, second]), 0..1, &Device::Cpu)?;
        assert_eq!(right, (1.0, 1.0));
        let moved = accuracy(
            &locator,
            &digits(vec![first, [14, 4, 10, 10]]),
            0..1,
            &Device::Cpu,
        )?;
        assert_eq!(moved, (0.5, 0.0));
        Ok(())
    }

    /// A warp turns a digit about the middle: its ink moves, its centre stays near.
    #[test]
    fn warping_turns_a_digit_about_the_middle() -> Result<()> {
        let run = puzzle_run()?;
        let (run, spec) = puzzle_spec(&run, None)?;
        let split = SplitSources::load(&spec, &run.data, None, Split::Train)?;
        let batch = split.batch(&[0], &[], Binarization::None, &Device::Cpu)?;
        let image = Image::new([1, 32, 32], batch.images.flatten_all()?.to_vec1::<f32>()?)?;
        let mut rng = Rng::new(5);
        let turned = warped(&image, &mut rng)?;
        let moved: f32 = image
            .data
            .iter()
            .zip(&turned.data)
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(moved > 1.0, "{moved}");
        let center =
            |im: &Image| mean_center(&Tensor::from_slice(&im.data, (1, 1, 32, 32), &Device::Cpu)?);
        let (a, b) = (center(&image)?, center(&turned)?);
        assert!(
            (a[0] - b[0]).abs() < 2.0 && (a[1] - b[1]).abs() < 2.0,
            "{a:?} {b:?}"
        );
        assert!(!key_patches(&turned, 3, 10).is_empty());
        Ok(())
    }
}
