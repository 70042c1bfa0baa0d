//! Captions: the captioned digits (each bundled digit described by its label and three
//! measured traits), a user's captions as JSONL (`{"image": path, "caption": text}` per line)
//! or in the reference layout of reedscot/icml2016's CUB and Oxford-102 data (`images/` and
//! `text_c10/`, one text file of captions per image), and the source that hands them out.
//!
//! The traits of a digit are measured by one function, [`measure`], which writes the captions
//! and judges generated images alike:
//! - thickness: twice the ink over its perimeter (`2 sum p / (sum |dp/dx| + sum |dp/dy|)`),
//!   a stroke's width in pixels;
//! - slant: the shear `-cov(x, y) / var(y)` of the ink (positive: the top leans right);
//! - size: the ink's radius of gyration `sqrt(var(x) + var(y))`, in pixels.
//!
//! Each trait falls in one of three bins at the terciles of the bundled training digits of the
//! same class ([`Bins`]), so every digit is thin, regular or thick for a digit of its kind, and
//! every (digit, bin) combination holds about a third of that digit's images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, ensure, Context, Result};
use layers::{Rng, Stream};
use serde::Deserialize;

use crate::data::source::Annotated;
use crate::data::transforms::Image;
use crate::data::Dataset;

/// The three traits of a digit, in [`TRAITS`] order.
pub type Traits = [f32; 3];

/// Trait names, and each trait's bins' names (canonical: what a run file's `hold_out` uses).
pub const TRAITS: [&str; 3] = ["thickness", "slant", "size"];
pub const BIN_NAMES: [[&str; 3]; 3] = [
    ["thin", "regular", "thick"],
    ["left", "upright", "right"],
    ["small", "medium", "large"],
];

/// Values below this are background, not ink. A generator's background is a faint haze
/// (tanh never reaches -1), and the radius of gyration weighs each value by its squared
/// distance from the centre: a haze of 1-2% over the frame measured the text-to-image GAN's
/// digits a bin too large (size in the caption's bin: 49.0%, against 85.7% with the floor,
/// recorded 2026-12-01 in models/text2image.md). On the bundled training digits, whose
/// background is exactly 0, the floor moves 18, 12 and 34 of the 8,006 digits' thickness, slant
/// and size bins.
pub const INK_FLOOR: f64 = 0.05;

/// Measures a `(c, h, w)` image in [0, 1] (the channels averaged), values below
/// [`INK_FLOOR`] counted as background. An image without ink measures zero on every trait.
pub fn measure(image: &Image) -> Traits {
    let [c, h, w] = image.shape;
    let ink = |y: usize, x: usize| -> f64 {
        let p = (0..c)
            .map(|k| image.data[(k * h + y) * w + x] as f64)
            .sum::<f64>()
            / c as f64;
        if p < INK_FLOOR {
            0.0
        } else {
            p
        }
    };
    let (mut mass, mut sy, mut sx) = (0.0, 0.0, 0.0);
    let mut perimeter = 0.0;
    for y in 0..h {
        for x in 0..w {
            let p = ink(y, x);
            mass += p;
            sy += p * y as f64;
            sx += p * x as f64;
            // Edges against the next pixel (and the image's border, outside which is black).
            let right = if x + 1 < w { ink(y, x + 1) } else { 0.0 };
            let below = if y + 1 < h { ink(y + 1, x) } else { 0.0 };
            perimeter += (p - right).abs() + (p - below).abs();
            if x == 0 {
                perimeter += p;
            }
            if y == 0 {
                perimeter += p;
            }
        }
    }
    if mass < 1e-3 {
        return [0.0; 3];
    }
    let (cy, cx) = (sy / mass, sx / mass);
    let (mut vyy, mut vxx, mut vxy) = (0.0, 0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            let p = ink(y, x);
            let (dy, dx) = (y as f64 - cy, x as f64 - cx);
            vyy += p * dy * dy;
            vxx += p * dx * dx;
            vxy += p * dx * dy;
        }
    }
    let (vyy, vxx, vxy) = (vyy / mass, vxx / mass, vxy / mass);
    [
        (2.0 * mass / perimeter.max(1e-6)) as f32,
        (-vxy / vyy.max(1e-6)) as f32,
        (vxx + vyy).sqrt() as f32,
    ]
}

/// The two cut points of each trait for each digit class: `cuts[class][trait]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bins {
    pub cuts: Vec<[[f32; 2]; 3]>,
}

impl Bins {
    /// The terciles of each trait over each class of `digits`.
    pub fn terciles(digits: &Dataset) -> Result<Self> {
        let labels = digits
            .labels
            .as_ref()
            .with_context(|| format!("{}: the digits have no labels", digits.name))?;
        let classes = digits.class_count().unwrap_or(0);
        let mut values: Vec<[Vec<f32>; 3]> = vec![Default::default(); classes];
        for (i, &label) in labels.iter().enumerate() {
            let traits = measure(&Image::from_bytes(digits.shape, digits.image(i))?);
            for (t, v) in traits.into_iter().enumerate() {
                values[label as usize][t].push(v);
            }
        }
        let cuts = values
            .into_iter()
            .map(|mut per_trait| {
                let mut cut = [[0f32; 2]; 3];
                for (t, v) in per_trait.iter_mut().enumerate() {
                    v.sort_by(f32::total_cmp);
                    let at = |q: f64| {
                        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
                            .copied()
                            .unwrap_or(0.0)
                    };
                    cut[t] = [at(1.0 / 3.0), at(2.0 / 3.0)];
                }
                cut
            })
            .collect();
        Ok(Self { cuts })
    }

    /// The bins of the bundled training digits, measured once.
    pub fn bundled() -> Result<&'static Self> {
        static BINS: OnceLock<Bins> = OnceLock::new();
        if let Some(b) = BINS.get() {
            return Ok(b);
        }
        let digits = crate::data::bundled_mnist(crate::data::Split::Train)?;
        Ok(BINS.get_or_init(|| Self::terciles(&digits).expect("labelled digits")))
    }

    /// Each trait's bin (0, 1, 2) for a digit of `class`.
    pub fn of(&self, class: u32, traits: &Traits) -> Result<[usize; 3]> {
        let cuts = self.cuts.get(class as usize).with_context(|| {
            format!(
                "class {class}: the trait bins know {} classes",
                self.cuts.len()
            )
        })?;
        Ok(std::array::from_fn(|t| {
            cuts[t].iter().filter(|&&c| traits[t] >= c).count()
        }))
    }
}

/// What a caption says of a digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Description {
    pub digit: u32,
    /// Thickness, slant and size bins.
    pub bins: [usize; 3],
}

const DIGIT_NAMES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The words of each bin of each trait: synonyms a template picks among.
const THICKNESS: [&[&str]; 3] = [
    &["thin", "light", "fine"],
    &["regular", "medium", "normal"],
    &["thick", "bold", "heavy"],
];
const SLANT: [&[&str]; 3] = [
    &["leaning left", "slanted to the left", "tilted left"],
    &["upright", "standing straight", "not slanted"],
    &["leaning right", "slanted to the right", "tilted right"],
];
const SIZE: [&[&str]; 3] = [
    &["small", "little", "tiny"],
    &["medium-sized", "average-sized", "mid-sized"],
    &["large", "big", "wide"],
];

/// One sentence for `d`, its template and synonyms drawn with `rng`.
pub fn describe(d: &Description, rng: &mut Rng) -> String {
    let mut pick = |words: &[&'static str]| words[rng.below(words.len())];
    let thick = pick(THICKNESS[d.bins[0]]);
    let slant = pick(SLANT[d.bins[1]]);
    let size = pick(SIZE[d.bins[2]]);
    let name = DIGIT_NAMES[d.digit as usize % 10];
    let n = d.digit;
    match rng.below(5) {
        0 => format!("a {size} {thick} {name} {slant}"),
        1 => format!("digit {n}, {thick}, {slant}, {size}"),
        2 => format!("the number {name}, {size} and {thick}, {slant}"),
        3 => format!("a {thick} {size} {n} {slant}"),
        _ => format!("{size} {name} in {thick} strokes, {slant}"),
    }
}

/// The first template with the first word of each bin: "a medium-sized thin seven upright".
pub fn canonical_caption(d: &Description) -> String {
    format!(
        "a {} {} {} {}",
        SIZE[d.bins[2]][0],
        THICKNESS[d.bins[0]][0],
        DIGIT_NAMES[d.digit as usize % 10],
        SLANT[d.bins[1]][0]
    )
}

/// A combination of a digit and one trait's bin (`7:thick`), as a run file holds it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Combination {
    pub digit: u32,
    pub trait_index: usize,
    pub bin: usize,
}

impl Combination {
    /// Parses `DIGIT:BIN`, the bin by its canonical name ([`BIN_NAMES`]).
    pub fn parse(text: &str) -> Result<Self> {
        let known = || {
            BIN_NAMES
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((digit, bin)) = text.split_once(':') else {
            bail!(
                "[data] hold_out entry {text:?}: expected DIGIT:BIN, e.g. \"7:thick\" (bins: {})",
                known()
            );
        };
        let digit: u32 = digit
            .trim()
            .parse()
            .ok()
            .filter(|d| *d < 10)
            .with_context(|| format!("[data] hold_out entry {text:?}: the digit must be 0-9"))?;
        for (t, names) in BIN_NAMES.iter().enumerate() {
            if let Some(b) = names.iter().position(|n| *n == bin.trim()) {
                return Ok(Self {
                    digit,
                    trait_index: t,
                    bin: b,
                });
            }
        }
        bail!(
            "[data] hold_out entry {text:?}: unknown bin {bin:?} (bins: {})",
            known()
        )
    }

    pub fn matches(&self, d: &Description) -> bool {
        d.digit == self.digit && d.bins[self.trait_index] == self.bin
    }

    pub fn name(&self) -> String {
        format!("{}:{}", self.digit, BIN_NAMES[self.trait_index][self.bin])
    }
}

/// The descriptions of `digits` (measured, binned by the bundled terciles).
pub fn describe_digits(digits: &Dataset) -> Result<Vec<Description>> {
    let bins = Bins::bundled()?;
    let labels = digits
        .labels
        .as_ref()
        .with_context(|| format!("{}: captioned digits need their labels", digits.name))?;
    labels
        .iter()
        .enumerate()
        .map(|(i, &digit)| {
            let traits = measure(&Image::from_bytes(digits.shape, digits.image(i))?);
            Ok(Description {
                digit,
                bins: bins.of(digit, &traits)?,
            })
        })
        .collect()
}

/// `per_image` captions of each description, seeded by `seed` and the image's index.
pub fn caption_all(descriptions: &[Description], per_image: usize, seed: u64) -> Vec<Vec<String>> {
    descriptions
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut rng = Rng::derive(seed, Stream::Captions, i as u64);
            (0..per_image.max(1))
                .map(|_| describe(d, &mut rng))
                .collect()
        })
        .collect()
}

/// The captioned digits of a split: every digit with `per_image` captions, the training split
/// without the digits of a held-out combination.
pub fn captioned_digits(
    digits: Arc<Dataset>,
    transforms: crate::data::transforms::Pipeline,
    hold_out: &[Combination],
    per_image: usize,
    seed: u64,
    train: bool,
) -> Result<Annotated> {
    let descriptions = describe_digits(&digits)?;
    let captions = caption_all(&descriptions, per_image, seed);
    let kept: Vec<usize> = (0..digits.len())
        .filter(|&i| !train || !hold_out.iter().any(|c| c.matches(&descriptions[i])))
        .collect();
    let captions = kept.iter().map(|&i| captions[i].clone()).collect();
    let inner = crate::data::source::InMemory::new(digits, Some(kept), transforms)?;
    Annotated::with_captions(Box::new(inner), captions)
}

/// One line of a JSONL captions file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptionLine {
    image: PathBuf,
    caption: String,
}

/// Images and their captions read from a JSONL file (paths relative to its folder; an image
/// on several lines has several captions), in the order first named.
pub fn read_jsonl(path: &Path) -> Result<(Vec<PathBuf>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the captions file {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut order: Vec<PathBuf> = Vec::new();
    let mut captions: HashMap<PathBuf, Vec<String>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: CaptionLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected {{\"image\": PATH, \"caption\": TEXT}}",
                path.display(),
                n + 1
            )
        })?;
        ensure!(
            !entry.caption.trim().is_empty(),
            "{} line {}: the caption of {} is empty",
            path.display(),
            n + 1,
            entry.image.display()
        );
        let image = dir.join(&entry.image);
        ensure!(
            image.is_file(),
            "{} line {}: image {} does not exist",
            path.display(),
            n + 1,
            image.display()
        );
        if !captions.contains_key(&image) {
            order.push(image.clone());
        }
        captions.entry(image).or_default().push(entry.caption);
    }
    ensure!(!order.is_empty(), "{}: no captioned images", path.display());
    let sets = order
        .iter()
        .map(|p| captions.remove(p).unwrap_or_default())
        .collect();
    Ok((order, sets))
}

/// reedscot/icml2016's layout: `images/**/NAME.jpg` and `text_c10/**/NAME.txt` (one caption
/// per line) at the same relative path. Every image needs its text file.
pub fn read_reference_layout(dir: &Path) -> Result<(Vec<PathBuf>, Vec<Vec<String>>)> {
    let images_dir = dir.join("images");
    let text_dir = ["text_c10", "text"]
        .iter()
        .map(|t| dir.join(t))
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has no text_c10/ folder of captions", dir.display()))?;
    let listing = crate::data::folder::list_images(&images_dir)?;
    let mut sets = Vec::with_capacity(listing.paths.len());
    for image in &listing.paths {
        let relative = image.strip_prefix(&images_dir).unwrap_or(image);
        let text = text_dir.join(relative).with_extension("txt");
        let body = std::fs::read_to_string(&text).with_context(|| {
            format!(
                "image {} has no captions: {} is missing",
                image.display(),
                text.display()
            )
        })?;
        let lines: Vec<String> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        ensure!(
            !lines.is_empty(),
            "{}: the captions file is empty",
            text.display()
        );
        sets.push(lines);
    }
    Ok((listing.paths, sets))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::data::source::{Label, Source};

    fn image(side: usize, f: impl Fn(usize, usize) -> f32) -> Image {
        let data = (0..side * side).map(|k| f(k / side, k % side)).collect();
        Image::new([1, side, side], data).unwrap()
    }

    #[test]
    fn traits_measure_what_they_say() {
        // A vertical bar 2 wide, 12 tall: thickness near 2, no slant.
        let bar = |width: usize| {
            image(28, move |y, x| {
                f32::from((8..20).contains(&y) && (10..10 + width).contains(&x))
            })
        };
        let [t2, s, _] = measure(&bar(2));
        let [t4, _, _] = measure(&bar(4));
        assert!((t2 - 2.0 * 24.0 / 28.0).abs() < 1e-4, "{t2}");
        assert!(t4 > t2 && s.abs() < 1e-6);
        // A bar sheared so its top leans right: positive slant; leaning left: negative.
        let leaning = |dir: f32| {
            image(28, move |y, x| {
                let centre = 14.0 + dir * (14.0 - y as f32) * 0.3;
                f32::from((4..24).contains(&y) && (x as f32 - centre).abs() < 1.0)
            })
        };
        assert!(measure(&leaning(1.0))[1] > 0.2);
        assert!(measure(&leaning(-1.0))[1] < -0.2);
        // A larger square is larger; padding with black changes nothing.
        let square = |half: usize| {
            image(28, move |y, x| {
                f32::from(y.abs_diff(14) < half && x.abs_diff(14) < half)
            })
        };
        assert!(measure(&square(8))[2] > measure(&square(4))[2]);
        let small = square(4);
        let padded = image(32, |y, x| match (y.checked_sub(2), x.checked_sub(2)) {
            (Some(y), Some(x)) if y < 28 && x < 28 => small.data[y * 28 + x],
            _ => 0.0,
        });
        let (a, b) = (measure(&small), measure(&padded));
        assert!(
            a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-4),
            "{a:?} {b:?}"
        );
        assert_eq!(measure(&image(28, |_, _| 0.0)), [0.0; 3]);
    }

    /// A generator's faint background is not ink: a haze of 3% over the frame (above it the
    /// small square measured as large as a square twice its side) changes no trait.
    #[test]
    fn a_faint_background_is_not_ink() {
        let square = |half: usize, haze: f32| {
            image(28, move |y, x| {
                if y.abs_diff(14) < half && x.abs_diff(14) < half {
                    1.0
                } else {
                    haze
                }
            })
        };
        let (clean, hazy) = (measure(&square(4, 0.0)), measure(&square(4, 0.03)));
        assert!(
            clean.iter().zip(&hazy).all(|(p, q)| (p - q).abs() < 1e-6),
            "{clean:?} {hazy:?}"
        );
        assert!(hazy[2] < measure(&square(8, 0.0))[2]);
        // Ink just above the floor counts.
        assert!(measure(&square(4, INK_FLOOR as f32 + 0.01))[2] > clean[2]);
    }

    #[test]
    fn bins_are_the_terciles_of_each_class() -> Result<()> {
        let digits = crate::data::bundled_mnist(crate::data::Split::Train)?;
        let bins = Bins::bundled()?;
        let descriptions = describe_digits(&digits)?;
        for class in 0..10u32 {
            let of: Vec<&Description> = descriptions.iter().filter(|d| d.digit == class).collect();
            for t in 0..3 {
                for b in 0..3 {
                    let share =
                        of.iter().filter(|d| d.bins[t] == b).count() as f64 / of.len() as f64;
                    assert!(
                        (0.30..0.37).contains(&share),
                        "class {class} trait {t} bin {b}: {share}"
                    );
                }
            }
        }
        assert!(bins.of(10, &[0.0; 3]).is_err());
        Ok(())
    }

    #[test]
    fn captions_name_the_digit_and_every_trait() {
        let d = Description {
            digit: 7,
            bins: [2, 2, 0],
        };
        let mut rng = Rng::new(0);
        for _ in 0..50 {
            let c = describe(&d, &mut rng);
            assert!(c.contains("seven") || c.contains('7'), "{c}");
            assert!(
                ["thick", "bold", "heavy"].iter().any(|w| c.contains(w)),
                "{c}"
            );
            assert!(c.contains("right"), "{c}");
            assert!(
                ["small", "little", "tiny"].iter().any(|w| c.contains(w)),
                "{c}"
            );
        }
    }

    #[test]
    fn held_out_combinations_parse_and_leave_training() -> Result<()> {
        let c = Combination::parse("7:thick")?;
        assert_eq!((c.digit, c.trait_index, c.bin), (7, 0, 2));
        assert_eq!(Combination::parse("3: left")?.trait_index, 1);
        for bad in ["7", "x:thick", "12:thick", "7:purple"] {
            let e = Combination::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        let digits = Arc::new(crate::data::bundled_mnist(crate::data::Split::Train)?);
        let all = captioned_digits(digits.clone(), Default::default(), &[], 3, 0, true)?;
        let held = captioned_digits(digits, Default::default(), &[c], 3, 0, true)?;
        let sevens = digits_of(&all, 7);
        assert!(sevens > 600, "{sevens}");
        let removed = all.len() - held.len();
        assert!(
            (sevens / 4..sevens / 2).contains(&removed),
            "{removed} of {sevens}"
        );
        let thick = |s: &String| ["thick", "bold", "heavy"].iter().any(|w| s.contains(w));
        let kept_thick_sevens = (0..held.len())
            .filter(|&i| {
                held.label(i) == Label::Class(7) && held.captions(i).unwrap().iter().any(thick)
            })
            .count();
        assert_eq!(kept_thick_sevens, 0);
        Ok(())
    }

    fn digits_of(s: &Annotated, d: u32) -> usize {
        (0..s.len())
            .filter(|&i| s.label(i) == Label::Class(d))
            .count()
    }

    #[test]
    fn user_captions_read_with_clear_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let img = image::GrayImage::from_pixel(8, 8, image::Luma([200u8]));
        img.save(dir.path().join("a.png"))?;
        let jsonl = dir.path().join("captions.jsonl");
        std::fs::write(
            &jsonl,
            "{\"image\": \"a.png\", \"caption\": \"a grey square\"}\n{\"image\": \"a.png\", \"caption\": \"flat grey\"}\n",
        )?;
        let (paths, sets) = read_jsonl(&jsonl)?;
        assert_eq!(paths.len(), 1);
        assert_eq!(sets[0], vec!["a grey square", "flat grey"]);
        std::fs::write(&jsonl, "{\"image\": \"b.png\", \"caption\": \"gone\"}\n")?;
        let e = format!("{:#}", read_jsonl(&jsonl).unwrap_err());
        assert!(
            e.contains("b.png") && e.contains("does not exist") && e.contains("line 1"),
            "{e}"
        );
        std::fs::write(&jsonl, "{\"image\": \"a.png\", \"caption\": \"  \"}\n")?;
        let e = format!("{:#}", read_jsonl(&jsonl).unwrap_err());
        assert!(e.contains("empty"), "{e}");
        std::fs::write(&jsonl, "{\"img\": \"a.png\"}\n")?;
        let e = format!("{:#}", read_jsonl(&jsonl).unwrap_err());
        assert!(e.contains("line 1") && e.contains("caption"), "{e}");
        // The reference layout: a missing text file names the image.
        std::fs::create_dir_all(dir.path().join("ref/images/birds"))?;
        std::fs::create_dir_all(dir.path().join("ref/text_c10/birds"))?;
        img.save(dir.path().join("ref/images/birds/x.png"))?;
        let e = format!(
            "{:#}",
            read_reference_layout(&dir.path().join("ref")).unwrap_err()
        );
        assert!(e.contains("x.png") && e.contains("x.txt"), "{e}");
        std::fs::write(
            dir.path().join("ref/text_c10/birds/x.txt"),
            "a bird\n\nsmall bird\n",
        )?;
        let (_, sets) = read_reference_layout(&dir.path().join("ref"))?;
        assert_eq!(
            sets,
            vec![vec!["a bird".to_string(), "small bird".to_string()]]
        );
        Ok(())
    }
}
