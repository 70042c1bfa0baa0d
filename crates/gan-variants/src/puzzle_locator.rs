//! Where Puzzle-GAN's key patches sit: a locator for placing them (`layers::placement`).
//!
//! Puzzle-GAN's generator is told what the patches look like, never where they were, and its
//! strokes land a pixel or two off; placed by agreement with G's image alone, three in four
//! patches miss their box (models/puzzle.md). Where a patch sits is also written in the
//! patches themselves and in how digits are drawn, and three priors learned from the training
//! digits say so, each added to an arrangement's cost in `layers::placement`:
//!
//! - positions: from the `K` crops of an image together (their slots in the order the key
//!   patches were chosen, most ink first; empty slots black), a perceptron gives each slot a
//!   distribution over its box's positions, `p(b_j | crops)`; cost `-w_p log p(b_j)`;
//! - offsets: from two crops (and which slots they fill), a perceptron gives the distribution
//!   of the second box's offset from the first, `p(b_j - b_i | c_i, c_j)`, up to
//!   `image_size - patch_size` either way; strokes cross from one key patch into the next (most touch), and the
//!   offset where they continue is the likely one; cost `-w_o log p(b_j - b_i)` per pair;
//! - the centre of ink: the training images' mean centre of mass `mu` (MNIST centres every
//!   digit by it), and the pasted image's centre `c` (G's image with the crops at their boxes);
//!   cost `w_c |c - mu|^2` in pixels.
//!
//! Both perceptrons are trained by cross-entropy on the boxes the data cuts (1 to `K` per image,
//! as Puzzle-GAN trains), the training digits warped a little every other epoch (rotation,
//! scale, shear; `runner::report::locator`), without which they learn the training boxes by
//! heart.
//! Variables `positions.{i}`, `pair_encoder.{i}`, `pair_slots`, `offsets.{i}`.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Embedding, Module, VarBuilder};
use layers::nn::sequential::{Layer, Sequential, Stack};
use layers::placement::{Crop, PairCost, Prior, Priors};
use layers::step::PatchBox;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    /// The side of a key patch (square).
    pub patch_size: usize,
    /// Slots: patches per image at most.
    pub max_patches: usize,
    /// Hidden width of the positions' perceptron and of the pair encoder's first layer.
    pub hidden: usize,
    /// Hidden width of the offsets' head (and the pair encoder's output).
    pub offset_hidden: usize,
    /// Features of a pair's slots (which two of the `K` slots the crops fill).
    pub slot_features: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 32,
            channels: 1,
            patch_size: 10,
            max_patches: 3,
            hidden: 512,
            offset_hidden: 256,
            slot_features: 32,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("image_size", self.image_size),
            ("channels", self.channels),
            ("patch_size", self.patch_size),
            ("max_patches", self.max_patches),
            ("hidden", self.hidden),
            ("offset_hidden", self.offset_hidden),
            ("slot_features", self.slot_features),
        ] {
            if v == 0 {
                candle_core::bail!("puzzle locator {name} must be positive");
            }
        }
        if self.patch_size > self.image_size {
            candle_core::bail!(
                "puzzle locator patch_size {} is larger than image_size {}",
                self.patch_size,
                self.image_size
            );
        }
        Ok(())
    }

    /// Positions of a box along one side.
    pub fn across(&self) -> usize {
        self.image_size - self.patch_size + 1
    }

    /// Positions of a box in the image (row-major, as `layers::placement` orders them).
    pub fn positions(&self) -> usize {
        self.across() * self.across()
    }

    /// The largest offset between two boxes along one side.
    pub fn reach(&self) -> usize {
        self.image_size - self.patch_size
    }

    /// Offsets of one box from another, `(2 reach + 1)^2`.
    pub fn offsets(&self) -> usize {
        (2 * self.reach() + 1).pow(2)
    }

    fn crop_values(&self) -> usize {
        self.channels * self.patch_size * self.patch_size
    }
}

/// How much each prior weighs against G's cost (which is a mean absolute difference plus the
/// mask term, about 0.1 to 1 per patch). Chosen on the last 500 training digits (held out
/// from the locator's training) with the shipped Puzzle-GAN and 3 patches; models/puzzle.md.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorWeights {
    pub position: f32,
    pub offset: f32,
    /// Per squared pixel between the pasted image's centre of ink and the training mean.
    pub center: f32,
}

pub const PRIOR_WEIGHTS: PriorWeights = PriorWeights {
    position: 0.05,
    offset: 0.1,
    center: 0.3,
};

/// The cross-entropies of one batch: of each present slot's position, and of each pair of
/// present slots' offset.
pub struct LocatorLoss {
    pub position: Tensor,
    pub offset: Tensor,
}

pub struct Locator {
    cfg: Config,
    positions: Stack,
    pair_encoder: Stack,
    pair_slots: Embedding,
    offsets: Stack,
    /// The training images' mean centre of ink `(y, x)`, in pixels (set by the trainer).
    pub center: [f32; 2],
}

impl Locator {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (k, v, h, o) = (
            cfg.max_patches,
            cfg.crop_values(),
            cfg.hidden,
            cfg.offset_hidden,
        );
        let positions = Sequential::new(vb.pp("positions"))
            .linear(k * v, h)?
            .push(Layer::Relu)
            .linear(h, h)?
            .push(Layer::Relu)
            .linear(h, k * cfg.positions())?
            .build();
        let pair_encoder = Sequential::new(vb.pp("pair_encoder"))
            .linear(2 * v, h)?
            .push(Layer::Relu)
            .linear(h, o)?
            .push(Layer::Relu)
            .build();
        let pair_slots = candle_nn::embedding(k * k, cfg.slot_features, vb.pp("pair_slots"))?;
        let offsets = Sequential::new(vb.pp("offsets"))
            .linear(o + cfg.slot_features, o)?
            .push(Layer::Relu)
            .linear(o, cfg.offsets())?
            .build();
        // The middle pixel's index until the trainer measures the data's centre.
        let middle = (cfg.image_size as f32 - 1.0) / 2.0;
        Ok(Self {
            cfg: cfg.clone(),
            positions,
            pair_encoder,
            pair_slots,
            offsets,
            center: [middle, middle],
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `(b, K, P)` position logits from `(b, K, c, p, p)` crops (black past an image's own).
    pub fn position_logits(&self, crops: &Tensor) -> Result<Tensor> {
        let b = crops.dim(0)?;
        let logits = self.positions.forward(&crops.flatten_from(1)?, false)?;
        logits.reshape((b, self.cfg.max_patches, self.cfg.positions()))
    }

    /// `(n, O)` offset logits of the second crop's box from the first's, from `(n, 2, c, p, p)`
    /// pairs and `(n)` u32 slot pairs `i K + j`.
    pub fn offset_logits(&self, pairs: &Tensor, slots: &Tensor) -> Result<Tensor> {
        let features = self.pair_encoder.forward(&pairs.flatten_from(1)?, false)?;
        let slots = self.pair_slots.forward(slots)?;
        self.offsets
            .forward(&Tensor::cat(&[features, slots], 1)?, false)
    }

    /// The class of `second`'s offset from `first`.
    fn offset_class(&self, first: PatchBox, second: PatchBox) -> u32 {
        let r = self.cfg.reach() as i64;
        let dx = second[0] as i64 - first[0] as i64 + r;
        let dy = second[1] as i64 - first[1] as i64 + r;
        (dy * (2 * r + 1) + dx) as u32
    }

    /// The losses on `(b, K, c, p, p)` crops whose boxes are `boxes` (each image's first
    /// `boxes[i].len()` slots; the rest black).
    pub fn loss(&self, crops: &Tensor, boxes: &[Vec<PatchBox>]) -> Result<LocatorLoss> {
        let (b, k, c, ph, pw) = crops.dims5()?;
        let p = self.cfg.patch_size;
        if (k, c, ph, pw) != (self.cfg.max_patches, self.cfg.channels, p, p) || boxes.len() != b {
            candle_core::bail!(
                "the locator takes (b, {}, {}, {p}, {p}) crops with b lists of boxes, got {:?} and {} lists",
                self.cfg.max_patches,
                self.cfg.channels,
                crops.dims(),
                boxes.len()
            );
        }
        let across = self.cfg.across();
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        let (mut pair_rows, mut pair_slots, mut pair_targets) =
            (Vec::new(), Vec::new(), Vec::new());
        for (i, list) in boxes.iter().enumerate() {
            for (j, bx) in list.iter().enumerate() {
                if j >= k || bx[2] != p || bx[3] != p || bx[0] >= across || bx[1] >= across {
                    candle_core::bail!(
                        "image {i}: box {bx:?} is not a {p} x {p} box of slot < {k} inside the {} x {} image",
                        self.cfg.image_size,
                        self.cfg.image_size
                    );
                }
                rows.push((i * k + j) as u32);
                targets.push((bx[1] * across + bx[0]) as u32);
                for (first, earlier) in list.iter().enumerate().take(j) {
                    pair_rows.push([(i * k + first) as u32, (i * k + j) as u32]);
                    pair_slots.push((first * k + j) as u32);
                    pair_targets.push(self.offset_class(*earlier, *bx));
                }
            }
        }
        let device = crops.device();
        // A batch without a box (blank images) has no position to learn: 0, not the NaN of an
        // empty mean.
        let position = if rows.is_empty() {
            Tensor::zeros((), DType::F32, device)?
        } else {
            let logits = self.position_logits(crops)?.reshape((b * k, ()))?;
            let logits = logits.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
            candle_nn::loss::cross_entropy(&logits, &Tensor::new(targets.as_slice(), device)?)?
        };
        let offset = if pair_rows.is_empty() {
            Tensor::zeros((), DType::F32, device)?
        } else {
            let flat = crops.reshape((b * k, c, p, p))?;
            let index: Vec<u32> = pair_rows.iter().flatten().copied().collect();
            let pairs = flat
                .index_select(&Tensor::new(index.as_slice(), device)?, 0)?
                .reshape((pair_rows.len(), 2, c, p, p))?;
            let logits =
                self.offset_logits(&pairs, &Tensor::new(pair_slots.as_slice(), device)?)?;
            candle_nn::loss::cross_entropy(&logits, &Tensor::new(pair_targets.as_slice(), device)?)?
        };
        Ok(LocatorLoss { position, offset })
    }

    /// `(b, K, c, p, p)` of each image's crops (at most `K`, of the locator's patch size and
    /// channels; black past them), as [`Locator::loss`] and the position logits read them.
    pub fn crop_tensor(&self, crops: &[Vec<Crop>], device: &Device) -> Result<Tensor> {
        let (k, p, c) = (self.cfg.max_patches, self.cfg.patch_size, self.cfg.channels);
        let v = self.cfg.crop_values();
        let mut values = vec![0f32; crops.len() * k * v];
        for (i, list) in crops.iter().enumerate() {
            if list.len() > k {
                candle_core::bail!(
                    "image {i}: {} patches, and the locator was trained on at most {k}",
                    list.len()
                );
            }
            for (j, crop) in list.iter().enumerate() {
                if (crop.channels, crop.height, crop.width) != (c, p, p) {
                    candle_core::bail!(
                        "image {i}: a {} x {} x {} patch, and the locator was trained on {c} x {p} x {p} patches",
                        crop.channels,
                        crop.height,
                        crop.width
                    );
                }
                values[(i * k + j) * v..(i * k + j + 1) * v].copy_from_slice(&crop.data);
            }
        }
        Tensor::from_vec(values, (crops.len(), k, c, p, p), device)
    }

    /// Per image, the priors of its crops' places (at most `K` crops each, of the locator's
    /// patch size and channels), weighted by `weights`.
    pub fn priors(
        &self,
        crops: &[Vec<Crop>],
        weights: PriorWeights,
        device: &Device,
    ) -> Result<Vec<Prior>> {
        let (k, p, c) = (self.cfg.max_patches, self.cfg.patch_size, self.cfg.channels);
        let input = self.crop_tensor(crops, device)?;
        let (mut pairs, mut slots, mut owners) = (Vec::new(), Vec::new(), Vec::new());
        for (i, list) in crops.iter().enumerate() {
            for (j, crop) in list.iter().enumerate() {
                for (first, earlier) in list.iter().enumerate().take(j) {
                    pairs.extend_from_slice(&earlier.data);
                    pairs.extend_from_slice(&crop.data);
                    slots.push((first * k + j) as u32);
                    owners.push((i, first, j));
                }
            }
        }
        let positions = costs(&self.position_logits(&input)?, weights.position)?;
        let offsets = if owners.is_empty() {
            Vec::new()
        } else {
            let pairs = Tensor::from_vec(pairs, (owners.len(), 2, c, p, p), device)?;
            let logits = self.offset_logits(&pairs, &Tensor::new(slots.as_slice(), device)?)?;
            costs(&logits, weights.offset)?
        };
        let mut priors: Vec<Prior> = crops
            .iter()
            .enumerate()
            .map(|(i, list)| Prior {
                positions: (0..list.len())
                    .map(|j| positions[i * k + j].clone())
                    .collect(),
                offsets: Vec::new(),
                center: Some((self.center, weights.center)),
            })
            .collect();
        for ((i, first, second), cost) in owners.into_iter().zip(offsets) {
            priors[i].offsets.push(PairCost {
                first,
                second,
                reach: self.cfg.reach(),
                cost,
            });
        }
        Ok(priors)
    }
}

/// The locator's priors at the weights chosen for them ([`PRIOR_WEIGHTS`]).
impl Priors for Locator {
    fn priors(&self, crops: &[Vec<Crop>], device: &Device) -> Result<Vec<Prior>> {
        Locator::priors(self, crops, PRIOR_WEIGHTS, device)
    }
}

/// `-weight log softmax` of the last dimension, one row per leading index.
fn costs(logits: &Tensor, weight: f32) -> Result<Vec<Vec<f32>>> {
    let n = logits.dim(D::Minus1)?;
    let rows = logits.elem_count() / n;
    let log_p = candle_nn::ops::log_softmax(&logits.reshape((rows, n))?, 1)?;
    (log_p * (-weight as f64))?.to_vec2::<f32>()
}

/// The mean centre of ink `(y, x)` of `(n, c, h, w)` images in `[0, 1]` (the channels summed;
/// blank images count for nothing).
pub fn mean_center(images: &Tensor) -> Result<[f32; 2]> {
    let (n, c, h, w) = images.dims4()?;
    let v = images.flatten_all()?.to_vec1::<f32>()?;
    let (mut sum, mut counted) = ([0f64; 2], 0usize);
    for image in v.chunks(c * h * w) {
        let (mut m0, mut my, mut mx) = (0f64, 0f64, 0f64);
        for (i, &value) in image.iter().enumerate() {
            let (y, x) = ((i / w) % h, i % w);
            m0 += value as f64;
            my += value as f64 * y as f64;
            mx += value as f64 * x as f64;
        }
        if m0 > 0.0 {
            sum[0] += my / m0;
            sum[1] += mx / m0;
            counted += 1;
        }
    }
    if counted == 0 {
        candle_core::bail!("the centre of ink of {n} blank images is undefined");
    }
    Ok([
        (sum[0] / counted as f64) as f32,
        (sum[1] / counted as f64) as f32,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn small() -> Config {
        Config {
            image_size: 8,
            channels: 1,
            patch_size: 2,
            max_patches: 3,
            hidden: 16,
            offset_hidden: 8,
            slot_features: 4,
        }
    }

    fn locator(cfg: &Config) -> Result<Locator> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
        Locator::new(cfg, vb)
    }

    fn crop(seed: usize) -> Crop {
        Crop {
            channels: 1,
            height: 2,
            width: 2,
            data: (0..4)
                .map(|i| ((seed * 7 + i * 3) % 5) as f32 / 4.0)
                .collect(),
        }
    }

    /// `log softmax(row)[class]`.
    fn log_p(row: &[f32], class: usize) -> f32 {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        row[class] - max - sum.ln()
    }

    /// The loss is the mean cross-entropy of each present slot's box and of each pair of
    /// present slots' offset, by hand from the logits (slots past an image's boxes ignored).
    #[test]
    fn the_loss_is_the_cross_entropy_of_each_box_and_each_offset() -> Result<()> {
        let cfg = small();
        let net = locator(&cfg)?;
        let boxes = vec![
            vec![[0, 0, 2, 2], [3, 1, 2, 2], [6, 6, 2, 2]],
            vec![[2, 5, 2, 2]],
        ];
        let mut values = vec![0f32; 2 * 3 * 4];
        for (slot, seed) in [(0, 1), (1, 2), (2, 3), (3, 4)] {
            values[slot * 4..slot * 4 + 4].copy_from_slice(&crop(seed).data);
        }
        let crops = Tensor::from_vec(values.clone(), (2, 3, 1, 2, 2), &Device::Cpu)?;
        let loss = net.loss(&crops, &boxes)?;
        let positions = net.position_logits(&crops)?.to_vec3::<f32>()?;
        let wanted = [
            (0, 0, 0),
            (0, 1, 7 + 3),
            (0, 2, 6 * 7 + 6),
            (1, 0, 5 * 7 + 2),
        ];
        let by_hand: f32 = -wanted
            .iter()
            .map(|&(i, j, at)| log_p(&positions[i][j], at))
            .sum::<f32>()
            / 4.0;
        assert!((loss.position.to_scalar::<f32>()? - by_hand).abs() < 1e-5);
        // Image 0's pairs (0, 1), (0, 2), (1, 2); reach 6, 13 offsets a side.
        let pair = |a: usize, b: usize| {
            [
                values[a * 4..a * 4 + 4].to_vec(),
                values[b * 4..b * 4 + 4].to_vec(),
            ]
            .concat()
        };
        let pairs = Tensor::from_vec(
            [pair(0, 1), pair(0, 2), pair(1, 2)].concat(),
            (3, 2, 1, 2, 2),
            &Device::Cpu,
        )?;
        let slots = Tensor::new(&[1u32, 2, 5], &Device::Cpu)?;
        let offsets = net.offset_logits(&pairs, &slots)?.to_vec2::<f32>()?;
        let class = |dx: usize, dy: usize| (dy + 6) * 13 + dx + 6;
        let by_hand = -(log_p(&offsets[0], class(3, 1))
            + log_p(&offsets[1], class(6, 6))
            + log_p(&offsets[2], class(3, 5)))
            / 3.0;
        assert!((loss.offset.to_scalar::<f32>()? - by_hand).abs() < 1e-5);
        Ok(())
    }

    /// Priors are the weighted negative log-probabilities of the same logits, a table per
    /// present pair, the trained centre; bad crops are refused by name.
    #[test]
    fn priors_are_weighted_negative_log_probabilities() -> Result<()> {
        let cfg = small();
        let mut net = locator(&cfg)?;
        net.center = [3.5, 4.0];
        let crops = vec![vec![crop(1), crop(2)], vec![crop(3)]];
        let weights = PriorWeights {
            position: 0.5,
            offset: 2.0,
            center: 0.25,
        };
        let priors = net.priors(&crops, weights, &Device::Cpu)?;
        let mut values = vec![0f32; 2 * 3 * 4];
        for (slot, c) in [(0, crop(1)), (1, crop(2)), (3, crop(3))] {
            values[slot * 4..slot * 4 + 4].copy_from_slice(&c.data);
        }
        let logits = net
            .position_logits(&Tensor::from_vec(values, (2, 3, 1, 2, 2), &Device::Cpu)?)?
            .to_vec3::<f32>()?;
        assert_eq!(priors[0].positions.len(), 2);
        assert_eq!(priors[1].positions.len(), 1);
        for at in [0, 17, 48] {
            assert!((priors[0].positions[1][at] + 0.5 * log_p(&logits[0][1], at)).abs() < 1e-5);
            assert!((priors[1].positions[0][at] + 0.5 * log_p(&logits[1][0], at)).abs() < 1e-5);
        }
        assert_eq!(priors[0].offsets.len(), 1);
        assert!(priors[1].offsets.is_empty());
        let table = &priors[0].offsets[0];
        assert_eq!(
            (table.first, table.second, table.reach, table.cost.len()),
            (0, 1, 6, 169)
        );
        let pairs = Tensor::from_vec(
            [crop(1).data, crop(2).data].concat(),
            (1, 2, 1, 2, 2),
            &Device::Cpu,
        )?;
        let row = net
            .offset_logits(&pairs, &Tensor::new(&[1u32], &Device::Cpu)?)?
            .to_vec2::<f32>()?;
        assert!((table.cost[100] + 2.0 * log_p(&row[0], 100)).abs() < 1e-5);
        assert_eq!(priors[0].center, Some(([3.5, 4.0], 0.25)));

        let wide = Crop {
            channels: 1,
            height: 2,
            width: 3,
            data: vec![0.0; 6],
        };
        let e = net
            .priors(&[vec![wide]], weights, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a 1 x 2 x 3 patch") && e.contains("trained on 1 x 2 x 2"),
            "{e}"
        );
        let four = vec![vec![crop(1), crop(2), crop(3), crop(4)]];
        let e = net
            .priors(&four, weights, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 patches") && e.contains("at most 3"), "{e}");
        Ok(())
    }

    /// The centre of ink by hand, blank images skipped, and all blank refused.
    #[test]
    fn the_mean_centre_of_ink() -> Result<()> {
        let mut v = vec![0f32; 3 * 16];
        v[5] = 1.0; // image 0: (y 1, x 1)
        v[16 + 2] = 1.0; // image 1: (0, 2) and (3, 2), three times the ink -> y 2.25
        v[16 + 14] = 3.0;
        let images = Tensor::from_vec(v, (3, 1, 4, 4), &Device::Cpu)?;
        let [y, x] = mean_center(&images)?;
        assert!(
            (y - (1.0 + 2.25) / 2.0).abs() < 1e-6 && (x - 1.5).abs() < 1e-6,
            "{y} {x}"
        );
        let e = mean_center(&Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu)?)
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 blank images"), "{e}");
        Ok(())
    }

    #[test]
    fn bad_configs_and_boxes_are_refused_by_name() -> Result<()> {
        let e = locator(&Config {
            patch_size: 9,
            ..small()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("patch_size 9 is larger than image_size 8"),
            "{e}"
        );
        let e = locator(&Config {
            hidden: 0,
            ..small()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("hidden must be positive"), "{e}");
        let net = locator(&small())?;
        let crops = Tensor::zeros((1, 3, 1, 2, 2), DType::F32, &Device::Cpu)?;
        let e = net
            .loss(&crops, &[vec![[7, 0, 2, 2]]])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("[7, 0, 2, 2]") && e.contains("inside the 8 x 8"),
            "{e}"
        );
        // Blank images (no box at all) teach nothing, and give no NaN.
        let empty = net.loss(&crops, &[vec![]])?;
        assert_eq!(empty.position.to_scalar::<f32>()?, 0.0);
        assert_eq!(empty.offset.to_scalar::<f32>()?, 0.0);
        let e = net.loss(&crops, &[]).err().unwrap().to_string();
        assert!(e.contains("0 lists"), "{e}");
        Ok(())
    }
}
