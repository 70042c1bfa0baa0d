//! Sample quality of any image model, measured through the digit classifier: the Fréchet
//! distance of its features to held-out digits, the classifier score, class coverage and (for
//! conditional models) agreement with the requested class; and the same figures for real
//! training digits against the test digits (the floor), so every figure has a scale.

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor};
use layers::eval::classifier::LeNet;
use layers::eval::metrics::{
    accuracy, class_coverage, classifier_score, frechet_distance, predictions, Gaussian,
};
use layers::eval::swd::{sliced_wasserstein, ImageSet};
use layers::{GenerativeModel, Rng, Stream, Values};
use serde::Serialize;
use std::path::Path;

use crate::data::pipeline::digit_border;
use crate::data::{load_split, make_batch, Binarization, Dataset, Split};

/// The classifier's side.
const SIDE: usize = 28;

#[derive(Debug, Clone, Serialize)]
pub struct SampleQuality {
    pub images: usize,
    pub frechet_distance: f64,
    pub classifier_score: f64,
    /// Share of the images the classifier puts in each class.
    pub coverage: Vec<f64>,
    /// For a conditional model: share classified as the class asked for.
    pub conditional_accuracy: Option<f64>,
}

impl SampleQuality {
    pub fn min_class_share(&self) -> f64 {
        self.coverage.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Features and class probabilities of a set of images.
pub struct Described {
    pub features: Vec<Vec<f32>>,
    pub probs: Vec<Vec<f32>>,
}

/// `(n, c, h, w)` images in [0, 1] as the classifier's `(n, 1, 28, 28)`: colour averaged to
/// grey, larger images centre-cropped (genzoo pads 28-pixel digits to 32 for 32 x 32 models).
pub fn classifier_view(images: &Tensor) -> Result<Tensor> {
    let (_, c, h, w) = images.dims4()?;
    ensure!(
        h >= SIDE && w >= SIDE,
        "the digit classifier reads 28 x 28 images; these are {h} x {w}"
    );
    let grey = if c == 1 {
        images.clone()
    } else {
        images.mean_keepdim(1)?
    };
    Ok(grey
        .narrow(2, (h - SIDE) / 2, SIDE)?
        .narrow(3, (w - SIDE) / 2, SIDE)?
        .contiguous()?)
}

pub fn describe(net: &LeNet, images: &Tensor) -> Result<Described> {
    let n = images.dim(0)?;
    let view = classifier_view(images)?;
    let (mut features, mut probs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for start in (0..n).step_by(500) {
        let (f, p) = net.describe(&view.narrow(0, start, 500.min(n - start))?)?;
        features.extend(f);
        probs.extend(p);
    }
    Ok(Described { features, probs })
}

/// The figures of `images` against the reference statistics; `wanted` are the requested
/// classes of a conditional model's images.
pub fn measure(
    described: &Described,
    reference: &Gaussian,
    classes: usize,
    wanted: Option<&[usize]>,
) -> Result<SampleQuality> {
    let predicted = predictions(&described.probs);
    Ok(SampleQuality {
        images: predicted.len(),
        frechet_distance: frechet_distance(&Gaussian::fit(&described.features)?, reference)?,
        classifier_score: classifier_score(&described.probs),
        coverage: class_coverage(&predicted, classes),
        conditional_accuracy: wanted.map(|w| accuracy(&predicted, w)),
    })
}

/// How real digits are prepared to compare with a model's images.
pub fn binarization_for(values: Values) -> Binarization {
    match values {
        Values::Binary => Binarization::Threshold,
        Values::Intensities => Binarization::None,
    }
}

/// The first `n` images of `data` as a tensor of `[0, 1]` values.
pub fn real_images(data: &Dataset, n: usize, values: Values, device: &Device) -> Result<Tensor> {
    let idx: Vec<usize> = (0..n.min(data.len())).collect();
    make_batch(
        data,
        &idx,
        binarization_for(values),
        &mut Rng::new(0),
        device,
    )
}

/// The real digits a model's samples are measured against: the test digits (the reference) and
/// `n` training digits (the floor), each as the model draws images now
/// ([`GenerativeModel::as_generated`]: a Progressive GAN part-way through its growth brings them
/// to its stage's resolution and back, as it does its samples).
pub struct RealDigits {
    pub test: Tensor,
    pub train: Tensor,
}

impl RealDigits {
    pub fn load(
        model: &dyn GenerativeModel,
        train: &Dataset,
        test: &Dataset,
        n: usize,
        device: &Device,
    ) -> Result<Self> {
        let values = model.values();
        // A grey model of a larger side trained on the digits centred on a black border (the
        // data pipeline's default): the real digits get the same border.
        let shape = model.image_shape();
        let border = digit_border(shape).filter(|_| shape[0] == 1);
        let prepare = |x: Tensor| -> Result<Tensor> {
            let Some(pad) = border else {
                return Ok(x);
            };
            let x = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
            Ok(model.as_generated(&x)?)
        };
        Ok(Self {
            test: prepare(real_images(test, test.len(), values, device)?)?,
            train: prepare(real_images(train, n, values, device)?)?,
        })
    }
}

/// Reference statistics of the test digits, and the floor: the training digits measured
/// against them.
pub fn reference_and_floor(net: &LeNet, real: &RealDigits) -> Result<(Gaussian, SampleQuality)> {
    let test_described = describe(net, &real.test)?;
    let reference = Gaussian::fit(&test_described.features)?;
    let train_described = describe(net, &real.train)?;
    let classes = net.config().classes;
    let floor = measure(&train_described, &reference, classes, None)?;
    Ok((reference, floor))
}

/// The sliced Wasserstein distance (Karras et al. 2018) of the samples and of the training
/// digits (the floor) to the test digits, per Laplacian level, times 10^3.
#[derive(Debug, Clone, Serialize)]
pub struct SlicedWassersteinReport {
    /// Images per set (the smallest of samples, training and test digits).
    pub images: usize,
    /// `(side, samples, floor)` per level, the full side first.
    pub levels: Vec<(usize, f64, f64)>,
}

/// The distance of `samples` and of the training digits to the test digits, on as many images
/// as all three sets hold; None where the images are not square of a power-of-two side from 16.
pub fn sliced_wasserstein_report(
    samples: &Tensor,
    real: &RealDigits,
) -> Result<Option<SlicedWassersteinReport>> {
    let (_, c, h, w) = samples.dims4()?;
    if h != w
        || !h.is_power_of_two()
        || h < layers::eval::swd::COARSEST
        || real.test.dims()[1..] != samples.dims()[1..]
    {
        return Ok(None);
    }
    let m = samples
        .dim(0)?
        .min(real.test.dim(0)?)
        .min(real.train.dim(0)?);
    let flat = |t: &Tensor| -> Result<Vec<f32>> {
        Ok(t.narrow(0, 0, m)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let (s, test, train) = (flat(samples)?, flat(&real.test)?, flat(&real.train)?);
    let set = |values| ImageSet {
        values,
        count: m,
        channels: c,
        side: h,
    };
    let of_samples = sliced_wasserstein(&set(&s), &set(&test), 0)?;
    let floor = sliced_wasserstein(&set(&train), &set(&test), 0)?;
    let levels = of_samples
        .per_level
        .iter()
        .zip(&floor.per_level)
        .map(|(&(side, a), &(_, b))| (side, a, b))
        .collect();
    Ok(Some(SlicedWassersteinReport { images: m, levels }))
}

/// What `genzoo eval` reports about a model's samples.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub samples: SampleQuality,
    /// Real training digits against the same test digits.
    pub floor: SampleQuality,
    pub test_images: usize,
    /// At the model's own side, where it is a power of two from 16.
    pub sliced_wasserstein: Option<SlicedWassersteinReport>,
}

/// Draws `n` samples (in batches of 100, each from its own seeded stream) and measures them
/// against the test digits of `data` with the classifier at `classifier` (default: shipped).
pub fn evaluate_samples(
    model: &dyn GenerativeModel,
    n: usize,
    seed: u64,
    data: Option<&Path>,
    classifier: Option<&Path>,
    device: &Device,
) -> Result<QualityReport> {
    ensure!(
        n >= 2,
        "--samples must be at least 2 to fit a covariance (0 skips sample metrics)"
    );
    let net = crate::report::classifier::load(classifier, device)?;
    let digits = [1, SIDE, SIDE];
    let train = load_split(data, Split::Train, digits)?;
    let test = load_split(data, Split::Test, digits)?;
    let real = RealDigits::load(model, &train, &test, n, device)?;
    let (reference, floor) = reference_and_floor(&net, &real)?;
    // A conditional model is asked for every class in turn.
    let wanted: Option<Vec<u32>> = model
        .classes()
        .map(|k| (0..n).map(|i| (i % k) as u32).collect());
    let mut batches = Vec::new();
    for (k, start) in (0..n).step_by(100).enumerate() {
        let mut rng = Rng::derive(seed, Stream::Sample, k as u64);
        let count = 100.min(n - start);
        batches.push(match &wanted {
            Some(w) => model.sample_classes(&w[start..start + count], &mut rng)?,
            None => model.sample(count, &mut rng)?,
        });
    }
    let images = Tensor::cat(&batches, 0)?;
    let wanted: Option<Vec<usize>> = wanted.map(|w| w.iter().map(|&c| c as usize).collect());
    let samples = measure(
        &describe(&net, &images)?,
        &reference,
        net.config().classes,
        wanted.as_deref(),
    )?;
    Ok(QualityReport {
        samples,
        floor,
        test_images: test.len(),
        sliced_wasserstein: sliced_wasserstein_report(&images, &real)?,
    })
}

pub fn print(report: &QualityReport) {
    let (samples, floor) = (&report.samples, &report.floor);
    println!();
    println!(
        "sample quality (digit classifier; {} samples vs {} test digits)",
        samples.images, report.test_images
    );
    println!("{:<26} {:>10} {:>14}", "metric", "samples", "real (floor)");
    println!(
        "{:<26} {:>10.3} {:>14.3}",
        "Frechet distance", samples.frechet_distance, floor.frechet_distance
    );
    println!(
        "{:<26} {:>10.3} {:>14.3}",
        "classifier score (max 10)", samples.classifier_score, floor.classifier_score
    );
    println!(
        "{:<26} {:>9.1}% {:>13.1}%",
        "smallest class share",
        100.0 * samples.min_class_share(),
        100.0 * floor.min_class_share()
    );
    if let Some(a) = samples.conditional_accuracy {
        println!("{:<26} {:>9.1}%", "requested class agrees", 100.0 * a);
    }
    let shares: Vec<String> = samples
        .coverage
        .iter()
        .enumerate()
        .map(|(c, s)| format!("{c}:{:.1}%", 100.0 * s))
        .collect();
    println!("class shares               {}", shares.join(" "));
    if let Some(swd) = &report.sliced_wasserstein {
        println!(
            "sliced Wasserstein distance x 1e3 ({} images per set; Laplacian levels)",
            swd.images
        );
        for (side, of_samples, floor) in &swd.levels {
            println!(
                "{:<26} {:>10.3} {:>14.3}",
                format!("  {side} x {side}"),
                of_samples,
                floor
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn views_crop_padded_images_and_refuse_small_ones() -> Result<()> {
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu)?;
        assert_eq!(classifier_view(&x)?.dims(), &[2, 1, 28, 28]);
        let small = Tensor::zeros((2, 1, 16, 16), DType::F32, &Device::Cpu)?;
        let e = classifier_view(&small).unwrap_err().to_string();
        assert!(e.contains("16 x 16"), "{e}");
        Ok(())
    }
}
