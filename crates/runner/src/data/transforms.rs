//! Composable image transforms, as torchvision's `transforms` compose them: resize, crops, pad,
//! flip, channel changes, a colour tint, rotation by quarter turns and inversion. A run file
//! lists them by name (`transforms = [{ pad = 2 }, "rgb", "invert"]`); the synthetic domains of
//! the translation models are such lists applied to the bundled digits, so the true translation
//! of every test digit is known. The deterministic ones have an inverse, which the translation
//! metrics use to bring a translated digit back to the plain digits the classifier reads.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use layers::Rng;

/// One image, `(c, h, w)` values in `[0, 1]`, channel-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

impl Image {
    pub fn new(shape: [usize; 3], data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        ensure!(
            data.len() == n,
            "an image of shape {shape:?} holds {n} values, found {}",
            data.len()
        );
        Ok(Self { shape, data })
    }

    /// From 8-bit values as genzoo has always read them (`p / 255`).
    pub fn from_bytes(shape: [usize; 3], bytes: &[u8]) -> Result<Self> {
        Self::new(shape, bytes.iter().map(|&p| p as f32 / 255.0).collect())
    }

    #[cfg(test)]
    fn plane(&self, c: usize) -> &[f32] {
        let [_, h, w] = self.shape;
        &self.data[c * h * w..(c + 1) * h * w]
    }

    fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        let [_, h, w] = self.shape;
        self.data[(c * h + y) * w + x]
    }

    /// A new image of `shape` whose value at `(c, y, x)` is `f(c, y, x)`.
    fn from_fn(shape: [usize; 3], f: impl Fn(usize, usize, usize) -> f32) -> Self {
        let [c, h, w] = shape;
        let mut data = Vec::with_capacity(c * h * w);
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    data.push(f(ci, y, x));
                }
            }
        }
        Self { shape, data }
    }
}

/// One transform. In a run file: `"rgb"`, `"invert"`, `"flip"`, `"grey"`, or a table such as
/// `{ pad = 2 }`, `{ rotate = 90 }`, `{ tint = [1.0, 0.35, 0.35] }`, `{ resize = 32 }`,
/// `{ center-crop = 28 }`, `{ random-crop = 28 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Transform {
    /// Bilinear resize of the shorter side to this many pixels (torchvision's `Resize(n)`).
    Resize(usize),
    /// The central `n x n` square.
    CenterCrop(usize),
    /// A random `n x n` square (seeded: the same on resume).
    RandomCrop(usize),
    /// This many black pixels on every side.
    Pad(usize),
    /// A horizontal flip with probability one half (seeded).
    Flip,
    /// One channel repeated to three.
    Rgb,
    /// The mean of the channels as one.
    Grey,
    /// `1 - x`.
    Invert,
    /// A rotation by a multiple of 90 degrees, counter-clockwise.
    Rotate(i32),
    /// Each channel scaled by its factor (`[1, 0.35, 0.35]` tints white strokes red); a
    /// one-channel image becomes RGB first.
    Tint([f64; 3]),
    /// The grey image a tint by these factors came from, by least squares over the channels
    /// (the inverse of `tint`).
    Untint([f64; 3]),
}

impl Transform {
    /// Checks the parameters (a rotation that is not a quarter turn, an empty crop).
    pub fn validate(&self) -> Result<()> {
        match self {
            Transform::Rotate(deg) => ensure!(
                deg % 90 == 0,
                "rotate = {deg}: only multiples of 90 degrees keep every pixel (exact and invertible)"
            ),
            Transform::Resize(n) | Transform::CenterCrop(n) | Transform::RandomCrop(n) => {
                ensure!(
                    *n > 0 && *n <= MAX_SIDE,
                    "{self:?}: the size must be 1 to {MAX_SIDE}"
                )
            }
            Transform::Pad(p) => ensure!(*p <= MAX_SIDE, "{self:?}: at most {MAX_SIDE} pixels"),
            Transform::Tint(f) | Transform::Untint(f) => ensure!(
                f.iter().all(|v| v.is_finite() && *v >= 0.0) && f.iter().any(|v| *v > 0.0),
                "{self:?}: the factors must be non-negative and not all zero"
            ),
            _ => {}
        }
        Ok(())
    }

    /// Whether it draws random numbers.
    pub fn is_random(&self) -> bool {
        matches!(self, Transform::RandomCrop(_) | Transform::Flip)
    }

    /// The shape of the output for an input of `shape`.
    pub fn output_shape(&self, [c, h, w]: [usize; 3]) -> Result<[usize; 3]> {
        Ok(match self {
            Transform::Resize(n) => {
                let (nh, nw) = resized(h, w, *n);
                [c, nh, nw]
            }
            Transform::CenterCrop(n) | Transform::RandomCrop(n) => {
                ensure!(
                    *n <= h && *n <= w,
                    "a {n} x {n} crop of a {h} x {w} image does not fit"
                );
                [c, *n, *n]
            }
            Transform::Pad(p) => [c, h + 2 * p, w + 2 * p],
            Transform::Rgb => {
                ensure!(
                    c == 1,
                    "rgb makes a one-channel image RGB; this one has {c}"
                );
                [3, h, w]
            }
            Transform::Grey => [1, h, w],
            Transform::Rotate(deg) if (deg / 90).rem_euclid(2) == 1 => [c, w, h],
            Transform::Tint(_) => {
                ensure!(c == 1 || c == 3, "tint needs 1 or 3 channels, found {c}");
                [3, h, w]
            }
            Transform::Untint(_) => {
                ensure!(c == 3, "untint reads 3 channels, found {c}");
                [1, h, w]
            }
            _ => [c, h, w],
        })
    }

    pub fn apply(&self, image: &Image, rng: &mut Rng) -> Result<Image> {
        let shape = self.output_shape(image.shape)?;
        let [_, h, w] = image.shape;
        Ok(match self {
            Transform::Resize(_) => resize_bilinear(image, shape[1], shape[2]),
            Transform::CenterCrop(n) => crop(image, (h - n) / 2, (w - n) / 2, *n),
            Transform::RandomCrop(n) => {
                let top = rng.below(h - n + 1);
                let left = rng.below(w - n + 1);
                crop(image, top, left, *n)
            }
            Transform::Pad(p) => Image::from_fn(shape, |c, y, x| {
                let inside = (*p..p + h).contains(&y) && (*p..p + w).contains(&x);
                if inside {
                    image.at(c, y - p, x - p)
                } else {
                    0.0
                }
            }),
            Transform::Flip => {
                if rng.uniform_f32() < 0.5 {
                    Image::from_fn(shape, |c, y, x| image.at(c, y, w - 1 - x))
                } else {
                    image.clone()
                }
            }
            Transform::Rgb => Image::from_fn(shape, |_, y, x| image.at(0, y, x)),
            Transform::Grey => {
                let c = image.shape[0] as f32;
                Image::from_fn(shape, |_, y, x| {
                    (0..image.shape[0])
                        .map(|ci| image.at(ci, y, x))
                        .sum::<f32>()
                        / c
                })
            }
            Transform::Invert => Image {
                shape,
                data: image.data.iter().map(|v| 1.0 - v).collect(),
            },
            Transform::Rotate(deg) => rotate(image, deg / 90),
            Transform::Tint(f) => {
                let rgb = match image.shape[0] {
                    1 => Transform::Rgb.apply(image, rng)?,
                    _ => image.clone(),
                };
                Image::from_fn(shape, |c, y, x| rgb.at(c, y, x) * f[c] as f32)
            }
            Transform::Untint(f) => {
                let norm: f64 = f.iter().map(|v| v * v).sum();
                Image::from_fn(shape, |_, y, x| {
                    let dot: f64 = (0..3).map(|c| image.at(c, y, x) as f64 * f[c]).sum();
                    (dot / norm).clamp(0.0, 1.0) as f32
                })
            }
        })
    }

    /// The transform that undoes this one, where one exists (deterministic transforms that
    /// keep every value).
    pub fn inverse(&self) -> Option<Transform> {
        Some(match self {
            Transform::Invert => Transform::Invert,
            Transform::Rotate(deg) => Transform::Rotate(-deg),
            Transform::Rgb => Transform::Grey,
            Transform::Tint(f) => Transform::Untint(*f),
            _ => return None,
        })
    }
}

/// `(h, w)` with the shorter side at `n`, the aspect kept (torchvision rounds down).
fn resized(h: usize, w: usize, n: usize) -> (usize, usize) {
    if h <= w {
        (n, (w * n / h).max(1))
    } else {
        ((h * n / w).max(1), n)
    }
}

fn crop(image: &Image, top: usize, left: usize, n: usize) -> Image {
    let c = image.shape[0];
    Image::from_fn([c, n, n], |ci, y, x| image.at(ci, top + y, left + x))
}

/// A quarter turn counter-clockwise `k` times (negative: clockwise).
fn rotate(image: &Image, k: i32) -> Image {
    let [c, h, w] = image.shape;
    match k.rem_euclid(4) {
        0 => image.clone(),
        // Counter-clockwise: the top row becomes the left column, read bottom to top.
        1 => Image::from_fn([c, w, h], |ci, y, x| image.at(ci, x, w - 1 - y)),
        2 => Image::from_fn([c, h, w], |ci, y, x| image.at(ci, h - 1 - y, w - 1 - x)),
        _ => Image::from_fn([c, w, h], |ci, y, x| image.at(ci, h - 1 - x, y)),
    }
}

/// Bilinear interpolation with half-pixel centres (PyTorch's `align_corners=False`).
fn resize_bilinear(image: &Image, nh: usize, nw: usize) -> Image {
    let [c, h, w] = image.shape;
    let source = |out: usize, n_out: usize, n_in: usize| -> (usize, usize, f32) {
        let s = ((out as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).max(0.0);
        let lo = (s.floor() as usize).min(n_in - 1);
        let hi = (lo + 1).min(n_in - 1);
        (lo, hi, s - lo as f32)
    };
    Image::from_fn([c, nh, nw], |ci, y, x| {
        let (y0, y1, fy) = source(y, nh, h);
        let (x0, x1, fx) = source(x, nw, w);
        let top = image.at(ci, y0, x0) * (1.0 - fx) + image.at(ci, y0, x1) * fx;
        let bottom = image.at(ci, y1, x0) * (1.0 - fx) + image.at(ci, y1, x1) * fx;
        top * (1.0 - fy) + bottom * fy
    })
}

/// The longest side an image may reach through the transforms (and a transform's size or
/// padding): far past any model here, and small enough that sides multiply without overflow.
pub const MAX_SIDE: usize = 1 << 14;

/// A list of transforms applied in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pipeline(pub Vec<Transform>);

impl Pipeline {
    pub fn validate(&self) -> Result<()> {
        self.0.iter().try_for_each(Transform::validate)
    }

    /// The shape the transforms make of `shape`; a side past [`MAX_SIDE`] at any step is an
    /// error, so no transform's arithmetic (a pad, a resize's ratio) can overflow.
    pub fn output_shape(&self, shape: [usize; 3]) -> Result<[usize; 3]> {
        self.0.iter().try_fold(shape, |s, t| {
            let [c, h, w] = t.output_shape(s)?;
            ensure!(
                h <= MAX_SIDE && w <= MAX_SIDE,
                "{t:?} makes a {h} x {w} image of a {} x {} one; the most is {MAX_SIDE} x {MAX_SIDE}",
                s[1],
                s[2]
            );
            Ok([c, h, w])
        })
    }

    pub fn apply(&self, image: Image, rng: &mut Rng) -> Result<Image> {
        self.0.iter().try_fold(image, |img, t| t.apply(&img, rng))
    }

    pub fn is_random(&self) -> bool {
        self.0.iter().any(Transform::is_random)
    }

    /// The transforms that undo these, in reverse order; an error names the first that has no
    /// inverse.
    pub fn inverse(&self) -> Result<Pipeline> {
        let mut out = Vec::with_capacity(self.0.len());
        for t in self.0.iter().rev() {
            match (t, t.inverse()) {
                // Padding is undone by the classifier's centre crop.
                (Transform::Pad(_), _) => {}
                (_, Some(inv)) => out.push(inv),
                (_, None) => bail!("{t:?} cannot be undone"),
            }
        }
        Ok(Pipeline(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes and pads past any image (`h + 2 * pad` overflowed, a panic, in the run files
    /// tests/fuzz_loaders.rs reads) are refused by `validate`, and chains that grow past
    /// [`MAX_SIDE`] by `output_shape`.
    #[test]
    fn huge_sizes_and_pads_are_refused_not_overflowed() {
        for t in [
            Transform::Pad(usize::MAX),
            Transform::Resize(usize::MAX),
            Transform::RandomCrop(MAX_SIDE + 1),
        ] {
            let e = t.validate().unwrap_err().to_string();
            assert!(e.contains(&MAX_SIDE.to_string()), "{e}");
        }
        let growing = Pipeline(vec![Transform::Pad(MAX_SIDE); 3]);
        let e = growing.output_shape([1, 28, 28]).unwrap_err().to_string();
        assert!(e.contains("the most is 16384 x 16384"), "{e}");
        let tall = Pipeline(vec![Transform::Resize(MAX_SIDE)]);
        assert!(tall.output_shape([1, 1, 1 << 20]).is_err());
    }

    fn ramp(shape: [usize; 3]) -> Image {
        let n: usize = shape.iter().product();
        Image::new(shape, (0..n).map(|i| i as f32 / n as f32).collect()).unwrap()
    }

    #[test]
    fn quarter_turns_compose_and_undo() -> Result<()> {
        let img = ramp([1, 2, 3]);
        let mut rng = Rng::new(0);
        let once = Transform::Rotate(90).apply(&img, &mut rng)?;
        assert_eq!(once.shape, [1, 3, 2]);
        // Counter-clockwise: the top-right value ends at the top-left.
        assert_eq!(once.at(0, 0, 0), img.at(0, 0, 2));
        assert_eq!(once.at(0, 2, 0), img.at(0, 0, 0));
        let back = Transform::Rotate(-90).apply(&once, &mut rng)?;
        assert_eq!(back, img);
        let four = Pipeline(vec![Transform::Rotate(90); 4]).apply(img.clone(), &mut rng)?;
        assert_eq!(four, img);
        assert_eq!(
            Transform::Rotate(180).apply(&img, &mut rng)?.at(0, 0, 0),
            img.at(0, 1, 2)
        );
        assert!(Transform::Rotate(45).validate().is_err());
        Ok(())
    }

    #[test]
    fn pad_crop_channels_tint_and_invert() -> Result<()> {
        let mut rng = Rng::new(0);
        let img = ramp([1, 2, 2]);
        let padded = Transform::Pad(1).apply(&img, &mut rng)?;
        assert_eq!(padded.shape, [1, 4, 4]);
        assert_eq!(padded.at(0, 0, 0), 0.0);
        assert_eq!(padded.at(0, 1, 1), img.at(0, 0, 0));
        assert_eq!(Transform::CenterCrop(2).apply(&padded, &mut rng)?, img);
        let rgb = Transform::Rgb.apply(&img, &mut rng)?;
        assert_eq!(rgb.shape, [3, 2, 2]);
        assert_eq!(rgb.plane(2), img.data.as_slice());
        let red = Transform::Tint([1.0, 0.5, 0.0]).apply(&img, &mut rng)?;
        assert_eq!(red.at(1, 1, 1), 0.5 * img.at(0, 1, 1));
        assert_eq!(red.at(2, 1, 1), 0.0);
        let back = Transform::Tint([1.0, 0.5, 0.0])
            .inverse()
            .unwrap()
            .apply(&red, &mut rng)?;
        for (a, b) in back.data.iter().zip(&img.data) {
            assert!((a - b).abs() < 1e-6);
        }
        let inv = Transform::Invert.apply(&img, &mut rng)?;
        assert_eq!(inv.at(0, 0, 1), 1.0 - img.at(0, 0, 1));
        assert!(Transform::Rgb.output_shape([3, 2, 2]).is_err());
        assert!(Transform::CenterCrop(5).output_shape([1, 4, 4]).is_err());
        Ok(())
    }

    #[test]
    fn inverses_undo_the_digit_domains() -> Result<()> {
        let mut rng = Rng::new(0);
        let digit = ramp([1, 4, 4]);
        let domain = Pipeline(vec![
            Transform::Pad(1),
            Transform::Rgb,
            Transform::Invert,
            Transform::Rotate(90),
        ]);
        let x = domain.apply(digit.clone(), &mut rng)?;
        let back = domain.inverse()?.apply(x, &mut rng)?;
        // Padding stays (the classifier crops it); everything else is undone exactly.
        let cropped = Transform::CenterCrop(4).apply(&back, &mut rng)?;
        for (a, b) in cropped.data.iter().zip(&digit.data) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!(Pipeline(vec![Transform::Flip]).inverse().is_err());
        Ok(())
    }

    #[test]
    fn random_transforms_follow_the_stream() -> Result<()> {
        let img = ramp([1, 6, 6]);
        let p = Pipeline(vec![Transform::RandomCrop(4), Transform::Flip]);
        assert!(p.is_random());
        let a = p.apply(img.clone(), &mut Rng::new(3))?;
        let b = p.apply(img.clone(), &mut Rng::new(3))?;
        assert_eq!(a, b);
        let distinct = (0..20)
            .map(|s| {
                let out = p.apply(img.clone(), &mut Rng::new(s)).unwrap();
                out.data.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
            })
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 4, "{}", distinct.len());
        Ok(())
    }

    #[test]
    fn resize_keeps_a_constant_image_and_the_aspect() -> Result<()> {
        let img = Image::new([1, 4, 8], vec![0.25; 32])?;
        let r = Transform::Resize(2).apply(&img, &mut Rng::new(0))?;
        assert_eq!(r.shape, [1, 2, 4]);
        assert!(r.data.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let parsed: Pipeline =
            toml::from_str::<toml::Table>("t = [{ pad = 2 }, \"rgb\", { rotate = 90 }, { tint = [1.0, 0.35, 0.35] }, { center-crop = 28 }]")?["t"]
                .clone()
                .try_into()?;
        assert_eq!(parsed.0.len(), 5);
        assert_eq!(parsed.0[2], Transform::Rotate(90));
        Ok(())
    }
}
