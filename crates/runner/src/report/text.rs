//! What a text-to-image model is measured by, on captioned digits whose answer is known: one
//! image drawn from a caption of each test digit, then
//! - digit: the shipped classifier names the caption's digit;
//! - traits: each trait the caption names (thickness, slant, size), measured on the image by
//!   the function that wrote the captions ([`crate::data::captions::measure`]), falls in the
//!   caption's bin (chance: 1 in 3);
//! - held out: the same, on the test captions of the (digit, bin) combinations the run left
//!   out of training: the held-out trait's bin, and the digit;
//! - interpolation: images along the line from "thin" to "thick" (all else the same, one noise
//!   vector per row): Spearman's rank correlation of the measured thickness with the step.

use anyhow::{ensure, Result};
use layers::eval::classifier::LeNet;
use layers::model::Captioned;
use layers::{Rng, Stream};
use serde::Serialize;

use crate::data::captions::{
    canonical_caption, caption_all, describe_digits, measure, Bins, Combination, Description,
    BIN_NAMES, TRAITS,
};
use crate::data::{load_split, Split};
use crate::report::quality::classifier_view;
use crate::report::translation::images_of;
use crate::report::HeldOutArgs;

#[derive(Debug, Serialize)]
pub struct TraitAccuracy {
    pub name: String,
    pub accuracy: f64,
    /// `confusion[asked][drawn]`: images whose caption asked for bin `asked` and whose
    /// measured trait fell in bin `drawn`. It tells a model that draws every image in one bin
    /// (a bias) from one that draws the bins at random.
    pub confusion: [[usize; 3]; 3],
}

#[derive(Debug, Serialize)]
pub struct HeldOutRow {
    /// `DIGIT:BIN`.
    pub combination: String,
    /// Test captions of the combination.
    pub images: usize,
    /// Share of images whose held-out trait falls in the caption's bin.
    pub trait_accuracy: f64,
    pub digit_accuracy: f64,
}

#[derive(Debug, Serialize)]
pub struct InterpolationReport {
    pub from: String,
    pub to: String,
    pub steps: usize,
    /// Rows measured (each digit, several noise vectors).
    pub rows: usize,
    pub mean_spearman: f64,
    pub min_spearman: f64,
    /// Share of rows with a rank correlation of at least 0.8.
    pub share_at_least_0_8: f64,
}

#[derive(Debug, Serialize)]
pub struct TextReport {
    pub dataset: String,
    pub images: usize,
    pub digit_accuracy: f64,
    pub traits: Vec<TraitAccuracy>,
    pub held_out: Vec<HeldOutRow>,
    /// The held-out trait right over every held-out test caption.
    pub held_out_trait_accuracy: Option<f64>,
    pub interpolation: InterpolationReport,
}

/// What one image did against its caption.
struct Judged {
    digit_right: bool,
    /// The bins the caption asked for and those measured on the image.
    asked: [usize; 3],
    drawn: [usize; 3],
}

impl Judged {
    fn bin_right(&self, t: usize) -> bool {
        self.asked[t] == self.drawn[t]
    }
}

pub fn evaluate(model: &dyn Captioned, args: &HeldOutArgs) -> Result<TextReport> {
    let mut digits = load_split(args.data, Split::Test, [1, 28, 28])?;
    if args.limit > 0 {
        digits.truncate(args.limit);
    }
    ensure!(
        digits.labels.is_some(),
        "{}: the text metrics caption digits by their labels, and these have none",
        digits.name
    );
    let descriptions = describe_digits(&digits)?;
    let captions: Vec<String> = caption_all(&descriptions, 1, args.run.data.seed)
        .into_iter()
        .map(|mut c| c.remove(0))
        .collect();
    let net = crate::report::classifier::load(args.classifier, args.device)?;
    let bins = Bins::bundled()?;
    let mut judged = Vec::with_capacity(captions.len());
    let mut rng = Rng::derive(args.seed, Stream::Eval, 0);
    for (chunk, wanted) in captions
        .chunks(args.batch_size.max(1))
        .zip(descriptions.chunks(args.batch_size.max(1)))
    {
        let images = model.sample_captions(chunk, &mut rng)?;
        judged.extend(judge(&net, &images, wanted, bins)?);
    }
    let n = judged.len().max(1) as f64;
    let share = |f: &dyn Fn(&Judged) -> bool| judged.iter().filter(|j| f(j)).count() as f64 / n;
    let traits = (0..3)
        .map(|t| TraitAccuracy {
            name: TRAITS[t].to_string(),
            accuracy: share(&|j| j.bin_right(t)),
            confusion: confusion(&judged, t),
        })
        .collect();
    let held_out = held_out_rows(
        &args.run.data.held_out_combinations()?,
        &descriptions,
        &judged,
    );
    let total: usize = held_out.iter().map(|r| r.images).sum();
    let held_out_trait_accuracy = (total > 0).then(|| {
        held_out
            .iter()
            .map(|r| r.trait_accuracy * r.images as f64)
            .sum::<f64>()
            / total as f64
    });
    Ok(TextReport {
        dataset: digits.name.clone(),
        images: judged.len(),
        digit_accuracy: share(&|j| j.digit_right),
        traits,
        held_out,
        held_out_trait_accuracy,
        interpolation: interpolation(model, args.seed)?,
    })
}

/// Each image against the description its caption came from.
fn judge(
    net: &LeNet,
    images: &candle_core::Tensor,
    wanted: &[Description],
    bins: &Bins,
) -> Result<Vec<Judged>> {
    let read = net
        .forward(&classifier_view(images)?)?
        .argmax(1)?
        .to_vec1::<u32>()?;
    images_of(images)?
        .iter()
        .zip(wanted)
        .zip(read)
        .map(|((image, d), digit)| {
            Ok(Judged {
                digit_right: digit == d.digit,
                asked: d.bins,
                drawn: bins.of(d.digit, &measure(image))?,
            })
        })
        .collect()
}

fn confusion(judged: &[Judged], t: usize) -> [[usize; 3]; 3] {
    let mut counts = [[0; 3]; 3];
    for j in judged {
        counts[j.asked[t]][j.drawn[t]] += 1;
    }
    counts
}

fn held_out_rows(
    combinations: &[Combination],
    descriptions: &[Description],
    judged: &[Judged],
) -> Vec<HeldOutRow> {
    combinations
        .iter()
        .map(|c| {
            let of: Vec<&Judged> = descriptions
                .iter()
                .zip(judged)
                .filter(|(d, _)| c.matches(d))
                .map(|(_, j)| j)
                .collect();
            let n = of.len().max(1) as f64;
            HeldOutRow {
                combination: c.name(),
                images: of.len(),
                trait_accuracy: of.iter().filter(|j| j.bin_right(c.trait_index)).count() as f64 / n,
                digit_accuracy: of.iter().filter(|j| j.digit_right).count() as f64 / n,
            }
        })
        .collect()
}

/// Steps of the thin-to-thick rows, and noise vectors per digit.
const STEPS: usize = 20;
const ROWS_PER_DIGIT: usize = 2;

/// From "thin" to "thick" for every digit (upright, medium-sized), the measured thickness
/// ranked against the step.
fn interpolation(model: &dyn Captioned, seed: u64) -> Result<InterpolationReport> {
    let caption = |digit: u32, thickness: usize| {
        canonical_caption(&Description {
            digit,
            bins: [thickness, 1, 1],
        })
    };
    let mut rng = Rng::derive(seed, Stream::Eval, 1);
    let mut rhos = Vec::new();
    for digit in 0..10 {
        let (from, to) = (caption(digit, 0), caption(digit, 2));
        for _ in 0..ROWS_PER_DIGIT {
            let row = model.interpolate_captions(&from, &to, STEPS, &mut rng)?;
            let thickness: Vec<f64> = images_of(&row)?
                .iter()
                .map(|i| measure(i)[0] as f64)
                .collect();
            let steps: Vec<f64> = (0..STEPS).map(|s| s as f64).collect();
            rhos.push(spearman(&steps, &thickness));
        }
    }
    let n = rhos.len() as f64;
    Ok(InterpolationReport {
        from: caption(7, 0),
        to: caption(7, 2),
        steps: STEPS,
        rows: rhos.len(),
        mean_spearman: rhos.iter().sum::<f64>() / n,
        min_spearman: rhos.iter().copied().fold(f64::INFINITY, f64::min),
        share_at_least_0_8: rhos.iter().filter(|&&r| r >= 0.8).count() as f64 / n,
    })
}

/// Ranks with ties sharing their mean rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        for &k in &order[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (0 where either side is constant).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        return 0.0;
    }
    cov / (va * vb).sqrt()
}

pub fn print(r: &TextReport) {
    println!(
        "captions    one per test digit of {} ({} images)",
        r.dataset, r.images
    );
    println!(
        "digit       {:5.1}% named as the caption's digit by the classifier",
        100.0 * r.digit_accuracy
    );
    for t in &r.traits {
        let names = BIN_NAMES[TRAITS.iter().position(|n| *n == t.name).unwrap_or(0)];
        println!(
            "{:<11} {:5.1}% in the caption's bin ({}; chance 33.3%)",
            t.name,
            100.0 * t.accuracy,
            names.join(" / ")
        );
        for (asked, row) in names.iter().zip(&t.confusion) {
            let drawn: Vec<String> = names
                .iter()
                .zip(row)
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            println!("  asked {:<8} drawn {}", asked, drawn.join(", "));
        }
    }
    if let Some(acc) = r.held_out_trait_accuracy {
        println!(
            "held out    {:5.1}% of the held-out combinations' traits right:",
            100.0 * acc
        );
        for h in &r.held_out {
            println!(
                "  {:<12} {:>4} captions: trait {:5.1}%, digit {:5.1}%",
                h.combination,
                h.images,
                100.0 * h.trait_accuracy,
                100.0 * h.digit_accuracy
            );
        }
    }
    let i = &r.interpolation;
    println!(
        "thin->thick Spearman of measured thickness over {} steps: mean {:.3}, min {:.3}, {:.0}% of {} rows >= 0.8 (e.g. {:?} -> {:?})",
        i.steps,
        i.mean_spearman,
        i.min_spearman,
        100.0 * i.share_at_least_0_8,
        i.rows,
        i.from,
        i.to
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_ranks_with_ties() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 35.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0]), 0.0);
        // x = 1..4, y with a tie: ranks 0, 1.5, 1.5, 3 -> 0.9487 (scipy.stats.spearmanr).
        let r = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 2.0, 9.0]);
        assert!((r - 0.948_683_3).abs() < 1e-6, "{r}");
    }

    /// Rows are the caption's bins, columns the drawn ones; the diagonal is what the accuracy
    /// counts.
    #[test]
    fn the_confusion_counts_asked_against_drawn() {
        let j = |asked: usize, drawn: usize| Judged {
            digit_right: true,
            asked: [0, 0, asked],
            drawn: [0, 1, drawn],
        };
        let judged = [j(0, 1), j(0, 1), j(2, 2), j(1, 1), j(2, 0)];
        assert_eq!(confusion(&judged, 2), [[0, 2, 0], [0, 1, 0], [1, 0, 1]]);
        assert_eq!(confusion(&judged, 1), [[0, 5, 0], [0, 0, 0], [0, 0, 0]]);
        assert_eq!(judged.iter().filter(|j| j.bin_right(2)).count(), 2);
    }
}
