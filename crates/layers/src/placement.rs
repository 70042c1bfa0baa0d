//! Placing key patches into a completed image (Puzzle-GAN at inference).
//!
//! Puzzle-GAN's generator is told the patches' looks, never where they sit, and draws an image
//! and a mask of where it put them. Its strokes land a pixel or two off, which costs much inside
//! a small box; the patches themselves are known exactly. Placement puts each patch's own pixels
//! where the generator's output agrees with them best:
//!
//! `cost_j(x, y) = mean |g[box] - p_j| + mask_weight (1 - mean m[box])`
//!
//! over every position of patch `j`'s box inside the image (`g` the generated image, `m` its
//! mask, both in `[0, 1]`), and the places of an image's patches together minimise the summed
//! cost with no two boxes overlapping (key patches chosen by their ink never do; boxes a user's
//! file gives are placed apart too): a search over each patch's 48 cheapest positions, within a
//! budget of arrangements, and failing that (none of those apart, or the budget spent) one
//! patch at a time. (Placing them one by one, cheapest first, lost to this on the
//! training digits with 3 patches: IoU 0.780 against 0.808, error 0.156 against 0.130.) The
//! patches are pasted there and the mask becomes the union of the placed boxes.
//!
//! A [`Crop`] carries a patch's size and pixels and nothing of where it came from: placement
//! sees what the generator sees.

use candle_core::{Device, Result, Tensor};

use crate::step::{overlap, union_of_boxes, PatchBox, Patches};

/// The mask term's weight. Chosen on 500 training digits (the last of the bundled 8,006) with
/// the shipped weights; mask IoU / error in the true mask / digit with 3 patches: weight 0:
/// 0.709 / 0.153 / 89.0%; 0.25: 0.805 / 0.134 / 91.6%; 0.5: 0.821 / 0.127 / 91.2%; 1: 0.808 /
/// 0.130 / 87.8%; 2: 0.771 / 0.143 / 85.0% (16 candidates each); 1 with 48 candidates: 0.833 /
/// 0.123 / 90.8%, and with 1 and 2 patches the best IoU of those (0.645, 0.827).
pub const MASK_WEIGHT: f32 = 1.0;

/// A patch's own pixels, `(c, h, w)` row-major in `[0, 1]`, without its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Crop {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Patches {
    /// Per image, the pixels of its first `k` boxes cut from `images` `(b, c, h, w)` (the
    /// images the patches were taken from), each without its position.
    pub fn crops(&self, images: &Tensor, k: usize) -> Result<Vec<Vec<Crop>>> {
        let (b, c, h, w) = images.dims4()?;
        if b != self.boxes.len() {
            candle_core::bail!("{b} images for the patches of {} images", self.boxes.len());
        }
        let values = images.flatten_all()?.to_vec1::<f32>()?;
        let mut all = Vec::with_capacity(b);
        for (i, boxes) in self.boxes.iter().enumerate() {
            let image = &values[i * c * h * w..(i + 1) * c * h * w];
            all.push(
                boxes
                    .iter()
                    .take(k)
                    .map(|&b| cut(image, (c, h, w), b))
                    .collect::<Result<_>>()?,
            );
        }
        Ok(all)
    }
}

fn cut(image: &[f32], (c, h, w): (usize, usize, usize), [x, y, bw, bh]: PatchBox) -> Result<Crop> {
    let inside =
        |at: usize, len: usize, side: usize| at.checked_add(len).is_some_and(|e| e <= side);
    if bw == 0 || bh == 0 || !inside(x, bw, w) || !inside(y, bh, h) {
        candle_core::bail!(
            "box [{x}, {y}, {bw}, {bh}] (x, y, w, h) lies outside the {w} x {h} image"
        );
    }
    let mut data = Vec::with_capacity(c * bh * bw);
    for k in 0..c {
        for row in y..y + bh {
            let start = (k * h + row) * w + x;
            data.extend_from_slice(&image[start..start + bw]);
        }
    }
    Ok(Crop {
        channels: c,
        height: bh,
        width: bw,
        data,
    })
}

/// What placement made of a batch.
#[derive(Debug, Clone)]
pub struct Placed {
    /// `(b, c, h, w)`: the generated images with each image's crops pasted.
    pub images: Tensor,
    /// `(b, 1, h, w)`: the union of the placed boxes.
    pub masks: Tensor,
    /// Per image, each crop's box, in the order of the crops.
    pub boxes: Vec<Vec<PatchBox>>,
    /// Per image, the summed cost of its crops' places.
    pub costs: Vec<f32>,
}

/// The generated images `(b, c, h, w)` with each image's crops pasted where placement puts
/// them, given G's masks `(b, 1, h, w)`.
pub fn place(
    images: &Tensor,
    masks: &Tensor,
    crops: &[Vec<Crop>],
    mask_weight: f32,
) -> Result<Placed> {
    let (b, c, h, w) = images.dims4()?;
    if crops.len() != b || masks.dims4()? != (b, 1, h, w) {
        candle_core::bail!(
            "placement needs one mask (b, 1, h, w) and one list of crops per image: images {:?}, masks {:?}, {} lists",
            images.dims(),
            masks.dims(),
            crops.len()
        );
    }
    if !(mask_weight.is_finite() && mask_weight >= 0.0) {
        candle_core::bail!(
            "placement's mask weight must be finite and at least 0, got {mask_weight}"
        );
    }
    let mut image_values = images.flatten_all()?.to_vec1::<f32>()?;
    let mask_values = masks.flatten_all()?.to_vec1::<f32>()?;
    let mut all_boxes = Vec::with_capacity(b);
    let mut costs = Vec::with_capacity(b);
    for (i, crops) in crops.iter().enumerate() {
        let image = &mut image_values[i * c * h * w..(i + 1) * c * h * w];
        let mask = &mask_values[i * h * w..(i + 1) * h * w];
        let (boxes, cost) = positions(image, mask, (c, h, w), crops, mask_weight)?;
        costs.push(cost);
        for (crop, &[x, y, bw, bh]) in crops.iter().zip(&boxes) {
            for k in 0..c {
                for row in 0..bh {
                    let to = (k * h + y + row) * w + x;
                    let from = (k * bh + row) * bw;
                    image[to..to + bw].copy_from_slice(&crop.data[from..from + bw]);
                }
            }
        }
        all_boxes.push(boxes);
    }
    let device: &Device = images.device();
    let counts: Vec<usize> = all_boxes.iter().map(Vec::len).collect();
    Ok(Placed {
        images: Tensor::from_vec(image_values, (b, c, h, w), device)?,
        masks: union_of_boxes(&all_boxes, &counts, (h, w), device)?,
        boxes: all_boxes,
        costs,
    })
}

/// Each crop's box (in the order of `crops`) and their summed cost.
fn positions(
    image: &[f32],
    mask: &[f32],
    (c, h, w): (usize, usize, usize),
    crops: &[Crop],
    mask_weight: f32,
) -> Result<(Vec<PatchBox>, f32)> {
    let mut costs = Vec::with_capacity(crops.len());
    for crop in crops {
        let (ch, ph, pw) = (crop.channels, crop.height, crop.width);
        if ch != c || ph == 0 || pw == 0 || ph > h || pw > w || crop.data.len() != ch * ph * pw {
            candle_core::bail!(
                "a {ch} x {ph} x {pw} patch of {} values cannot be placed in a {c} x {h} x {w} image",
                crop.data.len()
            );
        }
        costs.push(cost_map(image, mask, (c, h, w), crop, mask_weight));
    }
    // Each crop's cheapest positions, then the cheapest choice of one per crop with no two
    // overlapping (key patches never do), by a search over those.
    let candidates: Vec<Vec<(f32, PatchBox)>> = crops
        .iter()
        .zip(&costs)
        .map(|(crop, map)| cheapest_positions(map, crop, w))
        .collect();
    let mut search = Search::new(&candidates);
    search.descend(0.0);
    Ok(search.best.unwrap_or_else(|| one_by_one(&candidates)))
}

/// The crops in order, each at its cheapest candidate that overlaps none placed before, or at
/// its cheapest if every candidate does: where the search found no arrangement in its budget.
fn one_by_one(candidates: &[Vec<(f32, PatchBox)>]) -> (Vec<PatchBox>, f32) {
    let (mut boxes, mut total) = (Vec::with_capacity(candidates.len()), 0.0);
    for list in candidates {
        let free = list
            .iter()
            .find(|(_, b)| !boxes.iter().any(|p| overlap(p, b)))
            .unwrap_or(&list[0]);
        boxes.push(free.1);
        total += free.0;
    }
    (boxes, total)
}

/// Positions kept per crop for the joint search (16 against 48, weight 0.5, 3 patches: IoU
/// 0.821 against 0.833, error 0.127 against 0.124).
const CANDIDATES: usize = 48;

/// A crop's `CANDIDATES` cheapest positions, cheapest first (ties: first in reading order).
fn cheapest_positions(map: &[f32], crop: &Crop, w: usize) -> Vec<(f32, PatchBox)> {
    let across = w - crop.width + 1;
    let mut order: Vec<usize> = (0..map.len()).collect();
    order.sort_by(|&a, &b| map[a].total_cmp(&map[b]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(CANDIDATES)
        .map(|i| (map[i], [i % across, i / across, crop.width, crop.height]))
        .collect()
}

/// Arrangements the search may visit per image: 3 patches take at most 48^2 = 2,304 partial
/// ones; many near-equal costs (an untrained G) and more patches would otherwise take
/// exponential time.
const SEARCH_BUDGET: usize = 200_000;

/// Depth-first search over one candidate per crop, pruned by the best total so far plus the
/// least the crops still to place can add.
struct Search<'a> {
    candidates: &'a [Vec<(f32, PatchBox)>],
    /// `rest[j]`: the sum of the cheapest costs of crops `j..`.
    rest: Vec<f32>,
    chosen: Vec<PatchBox>,
    best: Option<(Vec<PatchBox>, f32)>,
    visits_left: usize,
}

impl<'a> Search<'a> {
    fn new(candidates: &'a [Vec<(f32, PatchBox)>]) -> Self {
        let mut rest = vec![0f32; candidates.len() + 1];
        for j in (0..candidates.len()).rev() {
            rest[j] = rest[j + 1] + candidates[j][0].0;
        }
        Self {
            candidates,
            rest,
            chosen: Vec::with_capacity(candidates.len()),
            best: None,
            visits_left: SEARCH_BUDGET,
        }
    }

    fn descend(&mut self, total: f32) {
        let j = self.chosen.len();
        if j == self.candidates.len() {
            if self.best.as_ref().is_none_or(|(_, b)| total < *b) {
                self.best = Some((self.chosen.clone(), total));
            }
            return;
        }
        for &(cost, candidate) in &self.candidates[j] {
            if self.visits_left == 0 {
                return;
            }
            self.visits_left -= 1;
            let bound = total + cost + self.rest[j + 1];
            // Candidates are cheapest first: none after this one can do better.
            if self.best.as_ref().is_some_and(|(_, b)| bound >= *b) {
                break;
            }
            if self.chosen.iter().any(|p| overlap(p, &candidate)) {
                continue;
            }
            self.chosen.push(candidate);
            self.descend(total + cost);
            self.chosen.pop();
        }
    }
}

/// `cost(x, y)` for every position, row-major over `(h - crop h + 1, w - crop w + 1)`.
fn cost_map(
    image: &[f32],
    mask: &[f32],
    (c, h, w): (usize, usize, usize),
    crop: &Crop,
    mask_weight: f32,
) -> Vec<f32> {
    let (bw, bh) = (crop.width, crop.height);
    let (across, down) = (w - bw + 1, h - bh + 1);
    let pixels = (c * bw * bh) as f32;
    let area = (bw * bh) as f32;
    let mut map = Vec::with_capacity(across * down);
    for y in 0..down {
        for x in 0..across {
            let mut difference = 0f32;
            for k in 0..c {
                for row in 0..bh {
                    let at = (k * h + y + row) * w + x;
                    let from = (k * bh + row) * bw;
                    difference += image[at..at + bw]
                        .iter()
                        .zip(&crop.data[from..from + bw])
                        .map(|(a, b)| (a - b).abs())
                        .sum::<f32>();
                }
            }
            let inside: f32 = (y..y + bh)
                .map(|row| mask[row * w + x..row * w + x + bw].iter().sum::<f32>())
                .sum();
            map.push(difference / pixels + mask_weight * (1.0 - inside / area));
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 x 8 x 8 image with two strokes: a vertical bar in column 1 (rows 1-4) and a
    /// horizontal bar in row 6 (columns 3-6).
    fn strokes() -> Vec<f32> {
        let mut v = vec![0f32; 64];
        for row in 1..5 {
            v[row * 8 + 1] = 1.0;
        }
        for col in 3..7 {
            v[6 * 8 + col] = 0.8;
        }
        v
    }

    /// A one-channel crop of one value.
    fn flat_crop(height: usize, width: usize, value: f32) -> Crop {
        Crop {
            channels: 1,
            height,
            width,
            data: vec![value; height * width],
        }
    }

    fn tensor(v: Vec<f32>, c: usize) -> Result<Tensor> {
        Tensor::from_vec(v, (1, c, 8, 8), &Device::Cpu)
    }

    /// Patches cut from an image, placed into that same image, land on their own boxes: the
    /// image comes back unchanged and the mask is the boxes' union.
    #[test]
    fn patches_go_back_where_the_image_agrees_with_them() -> Result<()> {
        let image = tensor(strokes(), 1)?;
        let boxes = vec![vec![[0, 0, 3, 6], [3, 5, 4, 2]]];
        let patches = Patches {
            images: Tensor::zeros((1, 2, 1, 8, 8), candle_core::DType::F32, &Device::Cpu)?,
            boxes: boxes.clone(),
        };
        let crops = patches.crops(&image, 2)?;
        assert_eq!(crops[0][0].data.len(), 18);
        let blank_mask = tensor(vec![0.0; 64], 1)?;
        let placed = place(&image, &blank_mask, &crops, 0.0)?;
        assert_eq!(placed.boxes, boxes);
        assert_eq!(
            placed.images.flatten_all()?.to_vec1::<f32>()?,
            image.flatten_all()?.to_vec1::<f32>()?
        );
        let truth = crate::step::union_of_boxes(&boxes, &[2], (8, 8), &Device::Cpu)?;
        assert_eq!(
            placed.masks.flatten_all()?.to_vec1::<f32>()?,
            truth.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(placed.costs[0].abs() < 1e-6);
        Ok(())
    }

    /// The patches are pasted, whatever G drew there: an image of noise-free strokes offset
    /// by a pixel gets the crop's exact pixels at the best match.
    #[test]
    fn a_crop_is_pasted_at_the_nearest_match_of_a_shifted_drawing() -> Result<()> {
        // G drew the vertical bar one column right and fainter.
        let mut drawn = vec![0f32; 64];
        for row in 1..5 {
            drawn[row * 8 + 2] = 0.6;
        }
        let crop = flat_crop(4, 1, 1.0);
        let placed = place(
            &tensor(drawn, 1)?,
            &tensor(vec![0.0; 64], 1)?,
            &[vec![crop]],
            0.0,
        )?;
        assert_eq!(placed.boxes[0], vec![[2, 1, 1, 4]]);
        let v = placed.images.flatten_all()?.to_vec1::<f32>()?;
        assert!((1..5).all(|row| v[row * 8 + 2] == 1.0));
        Ok(())
    }

    /// Where the image says nothing (blank), the mask decides; and two identical crops never
    /// share pixels (key patches do not overlap).
    #[test]
    fn the_mask_breaks_ties_and_placed_boxes_do_not_overlap() -> Result<()> {
        let blank = tensor(vec![0.0; 64], 1)?;
        let mut mask = vec![0f32; 64];
        for row in 4..6 {
            for col in 4..8 {
                mask[row * 8 + col] = 1.0;
            }
        }
        let crop = flat_crop(2, 2, 0.0);
        let placed = place(
            &blank,
            &tensor(mask.clone(), 1)?,
            &[vec![crop.clone(), crop.clone()]],
            1.0,
        )?;
        let b = &placed.boxes[0];
        assert!(!overlap(&b[0], &b[1]), "{b:?}");
        // The marked 4 x 2 area holds both: the first at its first free place, the second
        // beside it rather than on it.
        assert_eq!(b[0], [4, 4, 2, 2]);
        assert_eq!(b[1], [6, 4, 2, 2]);
        // Without the mask term every position costs the same, and the first one is taken.
        let free = place(&blank, &tensor(mask, 1)?, &[vec![crop]], 0.0)?;
        assert_eq!(free.boxes[0], vec![[0, 0, 2, 2]]);
        Ok(())
    }

    /// Eight patches on a blank image with a flat mask (every place costs the same): placed
    /// apart, each on a place of its own, without searching every arrangement.
    #[test]
    fn many_patches_of_equal_cost_are_placed_apart() -> Result<()> {
        let crops = vec![flat_crop(2, 2, 0.0); 8];
        let placed = place(
            &tensor(vec![0.0; 64], 1)?,
            &tensor(vec![0.5; 64], 1)?,
            &[crops],
            1.0,
        )?;
        let b = &placed.boxes[0];
        assert_eq!(b.len(), 8);
        for i in 0..8 {
            for j in 0..i {
                assert!(!overlap(&b[i], &b[j]), "{b:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_inputs_are_refused_by_name() -> Result<()> {
        let image = tensor(strokes(), 1)?;
        let mask = tensor(vec![0.0; 64], 1)?;
        let big = flat_crop(9, 2, 0.0);
        let e = place(&image, &mask, &[vec![big]], 1.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 x 9 x 2 patch") && e.contains("1 x 8 x 8 image"),
            "{e}"
        );
        let e = place(&image, &mask, &[], 1.0).unwrap_err().to_string();
        assert!(e.contains("0 lists"), "{e}");
        let mut short = flat_crop(2, 2, 0.0);
        short.data.pop();
        let e = place(&image, &mask, &[vec![short]], 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 x 2 x 2 patch of 3 values"), "{e}");
        let e = place(&image, &mask, &[vec![flat_crop(0, 2, 0.0)]], 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 x 0 x 2 patch"), "{e}");
        for weight in [-1.0, f32::NAN] {
            let e = place(&image, &mask, &[vec![flat_crop(2, 2, 0.0)]], weight)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("mask weight must be finite and at least 0"),
                "{e}"
            );
        }
        let patches = Patches {
            images: Tensor::zeros((2, 1, 1, 8, 8), candle_core::DType::F32, &Device::Cpu)?,
            boxes: vec![vec![[0, 0, 2, 2]], vec![[6, 6, 3, 3]]],
        };
        let two = Tensor::cat(&[&image, &image], 0)?;
        let e = patches.crops(&image, 1).unwrap_err().to_string();
        assert!(e.contains("1 images for the patches of 2"), "{e}");
        let e = patches.crops(&two, 1).unwrap_err().to_string();
        assert!(
            e.contains("[6, 6, 3, 3]") && e.contains("outside the 8 x 8"),
            "{e}"
        );
        Ok(())
    }
}
