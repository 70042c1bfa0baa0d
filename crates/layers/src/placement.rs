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
//!
//! A [`Prior`] per image adds what a locator knows (gan-variants' `puzzle_locator`): a cost
//! per position of each crop (added to its cost map before its cheapest positions are kept), a
//! cost per offset between two crops' boxes (added as the search places the second), and a
//! cost on the pasted image's centre of ink, `w |c - mu|^2` (added to a whole arrangement).
//! The offset and centre costs must be at least 0 (the search's bounds count on it) and are
//! checked; an offset beyond a table's reach is forbidden.

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

/// The pixels of box `[x, y, w, h]` of a `(c, h, w)` row-major image, or an error where it
/// does not lie inside.
pub fn cut(
    image: &[f32],
    (c, h, w): (usize, usize, usize),
    [x, y, bw, bh]: PatchBox,
) -> Result<Crop> {
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

/// A cost per offset of crop `second`'s box from crop `first`'s: index `(dy + reach) (2 reach
/// + 1) + (dx + reach)`, `(dx, dy)` the difference of the boxes' corners; each at least 0 (or
/// infinite: never), and an offset beyond `reach` is never taken.
#[derive(Debug, Clone, PartialEq)]
pub struct PairCost {
    pub first: usize,
    pub second: usize,
    pub reach: usize,
    pub cost: Vec<f32>,
}

impl PairCost {
    fn of(&self, a: &PatchBox, b: &PatchBox) -> f32 {
        let r = self.reach as i64;
        let (dx, dy) = (b[0] as i64 - a[0] as i64, b[1] as i64 - a[1] as i64);
        if dx.abs() > r || dy.abs() > r {
            return f32::INFINITY;
        }
        self.cost[((dy + r) * (2 * r + 1) + dx + r) as usize]
    }
}

/// What a locator adds to the costs of one image's arrangements (every cost at least 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prior {
    /// Per crop, a cost per position of its box, row-major as the cost map (or none: empty).
    pub positions: Vec<Vec<f32>>,
    /// Per pair of crops, a cost per offset.
    pub offsets: Vec<PairCost>,
    /// The centre of ink `(y, x)` the pasted image should have, and the cost per squared pixel
    /// away from it.
    pub center: Option<([f32; 2], f32)>,
}

/// What gives each image's arrangements a [`Prior`] (a locator of the patches).
pub trait Priors {
    /// One prior per image, for its crops.
    fn priors(&self, crops: &[Vec<Crop>], device: &Device) -> Result<Vec<Prior>>;
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
    /// Per image, the cost of its arrangement: its crops' places, and its prior's terms.
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
    place_with(images, masks, crops, mask_weight, None)
}

/// [`place`], each image's arrangements also costed by its [`Prior`].
pub fn place_with(
    images: &Tensor,
    masks: &Tensor,
    crops: &[Vec<Crop>],
    mask_weight: f32,
    priors: Option<&[Prior]>,
) -> Result<Placed> {
    let (b, c, h, w) = images.dims4()?;
    if priors.is_some_and(|p| p.len() != b) {
        candle_core::bail!(
            "placement needs one prior per image: {b} images, {} priors",
            priors.map_or(0, <[Prior]>::len)
        );
    }
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
        let prior = priors.map(|p| &p[i]);
        let (boxes, cost) = positions(image, mask, (c, h, w), crops, mask_weight, prior)?;
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
    prior: Option<&Prior>,
) -> Result<(Vec<PatchBox>, f32)> {
    let mut costs = Vec::with_capacity(crops.len());
    for (j, crop) in crops.iter().enumerate() {
        let (ch, ph, pw) = (crop.channels, crop.height, crop.width);
        if ch != c || ph == 0 || pw == 0 || ph > h || pw > w || crop.data.len() != ch * ph * pw {
            candle_core::bail!(
                "a {ch} x {ph} x {pw} patch of {} values cannot be placed in a {c} x {h} x {w} image",
                crop.data.len()
            );
        }
        let mut map = cost_map(image, mask, (c, h, w), crop, mask_weight);
        let extra = prior
            .and_then(|p| p.positions.get(j))
            .filter(|e| !e.is_empty());
        if let Some(extra) = extra {
            if extra.len() != map.len() {
                candle_core::bail!(
                    "the prior of patch {j} has {} position costs, and its box has {} positions",
                    extra.len(),
                    map.len()
                );
            }
            map.iter_mut().zip(extra).for_each(|(m, e)| *m += e);
        }
        costs.push(map);
    }
    if let Some(prior) = prior {
        check(prior, crops.len())?;
    }
    // Each crop's cheapest positions, then the cheapest choice of one per crop with no two
    // overlapping (key patches never do), by a search over those.
    let candidates: Vec<Vec<(f32, PatchBox)>> = crops
        .iter()
        .zip(&costs)
        .map(|(crop, map)| cheapest_positions(map, crop, w))
        .collect();
    let center = prior
        .and_then(|p| p.center)
        .map(|(at, weight)| CenterCost::new(image, (c, h, w), crops, &candidates, at, weight));
    let mut search = Search::new(&candidates, prior.map(|p| p.offsets.as_slice()), center);
    search.descend(0.0);
    if let Some(best) = search.best {
        return Ok(best);
    }
    let picked = one_by_one(&candidates);
    let boxes: Vec<PatchBox> = picked
        .iter()
        .enumerate()
        .map(|(j, &k)| candidates[j][k].1)
        .collect();
    let mut total: f32 = picked
        .iter()
        .enumerate()
        .map(|(j, &k)| candidates[j][k].0)
        .sum();
    if let Some(prior) = prior {
        total += prior
            .offsets
            .iter()
            .map(|o| o.of(&boxes[o.first], &boxes[o.second]))
            .sum::<f32>();
    }
    total += search.center.as_ref().map_or(0.0, |c| c.of(&picked));
    Ok((boxes, total))
}

/// A prior's offsets name two of the image's `crops` patches, in order, with a full table of
/// costs at least 0; its centre and weight are finite, the weight at least 0.
fn check(prior: &Prior, crops: usize) -> Result<()> {
    for o in &prior.offsets {
        if o.first >= o.second || o.second >= crops {
            candle_core::bail!(
                "an offset prior between patches {} and {} of an image with {crops}",
                o.first,
                o.second
            );
        }
        let want = (2 * o.reach + 1).pow(2);
        if o.cost.len() != want {
            candle_core::bail!(
                "the offset prior between patches {} and {} has {} costs, and reach {} has {want} offsets",
                o.first,
                o.second,
                o.cost.len(),
                o.reach
            );
        }
        if let Some(bad) = o.cost.iter().find(|c| c.is_nan() || **c < 0.0) {
            candle_core::bail!(
                "the offset prior between patches {} and {} holds the cost {bad}: costs must be at least 0",
                o.first,
                o.second
            );
        }
    }
    if let Some(([y, x], weight)) = prior.center {
        if !(y.is_finite() && x.is_finite() && weight.is_finite() && weight >= 0.0) {
            candle_core::bail!(
                "the centre prior ({y}, {x}) with weight {weight}: a finite centre and a finite weight of at least 0 are needed"
            );
        }
    }
    if let Some(bad) = prior.positions.iter().flatten().find(|c| !c.is_finite()) {
        candle_core::bail!("a position prior holds the cost {bad}: costs must be finite");
    }
    Ok(())
}

/// The centre-of-ink term of an arrangement: the pasted image's ink moments are G's whole
/// image's, less G's inside each chosen box, plus the crop's there.
struct CenterCost {
    /// `(mass, y mass, x mass)` of G's image.
    whole: [f32; 3],
    /// Per crop and candidate, the change its pasting makes to the moments.
    change: Vec<Vec<[f32; 3]>>,
    at: [f32; 2],
    weight: f32,
}

impl CenterCost {
    fn new(
        image: &[f32],
        (c, h, w): (usize, usize, usize),
        crops: &[Crop],
        candidates: &[Vec<(f32, PatchBox)>],
        at: [f32; 2],
        weight: f32,
    ) -> Self {
        let moments = |value: &dyn Fn(usize, usize) -> f32, [x, y, bw, bh]: PatchBox| {
            let mut m = [0f32; 3];
            for row in 0..bh {
                for col in 0..bw {
                    let v = value(row, col);
                    m[0] += v;
                    m[1] += v * (y + row) as f32;
                    m[2] += v * (x + col) as f32;
                }
            }
            m
        };
        let drawn = |[x, y, _, _]: PatchBox| {
            move |row: usize, col: usize| -> f32 {
                (0..c).map(|k| image[(k * h + y + row) * w + x + col]).sum()
            }
        };
        let whole = moments(&drawn([0, 0, w, h]), [0, 0, w, h]);
        let change = crops
            .iter()
            .zip(candidates)
            .map(|(crop, list)| {
                let pasted = |row: usize, col: usize| -> f32 {
                    (0..c)
                        .map(|k| crop.data[(k * crop.height + row) * crop.width + col])
                        .sum()
                };
                list.iter()
                    .map(|&(_, b)| {
                        let (added, removed) = (moments(&pasted, b), moments(&drawn(b), b));
                        [0, 1, 2].map(|i| added[i] - removed[i])
                    })
                    .collect()
            })
            .collect();
        Self {
            whole,
            change,
            at,
            weight,
        }
    }

    /// The cost of the candidates `chosen[j]` of crop `j`.
    fn of(&self, chosen: &[usize]) -> f32 {
        let mut m = self.whole;
        for (j, &k) in chosen.iter().enumerate() {
            (0..3).for_each(|i| m[i] += self.change[j][k][i]);
        }
        if m[0] <= 0.0 {
            return 0.0;
        }
        let (dy, dx) = (m[1] / m[0] - self.at[0], m[2] / m[0] - self.at[1]);
        self.weight * (dy * dy + dx * dx)
    }
}

/// Which candidate of each crop, in order: its cheapest that overlaps none placed before, or
/// its cheapest if every candidate does: where the search found no arrangement in its budget
/// (or none its offset priors allow).
fn one_by_one(candidates: &[Vec<(f32, PatchBox)>]) -> Vec<usize> {
    let mut boxes: Vec<PatchBox> = Vec::with_capacity(candidates.len());
    let mut picked = Vec::with_capacity(candidates.len());
    for list in candidates {
        let k = list
            .iter()
            .position(|(_, b)| !boxes.iter().any(|p| overlap(p, b)))
            .unwrap_or(0);
        boxes.push(list[k].1);
        picked.push(k);
    }
    picked
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

/// Candidates the search may visit per image: 3 patches take at most 48 + 48^2 + 48^3 =
/// 112,944, so with 3 the search is exhaustive; many near-equal costs (an untrained G) and more
/// patches would otherwise take exponential time.
const SEARCH_BUDGET: usize = 200_000;

/// Depth-first search over one candidate per crop, pruned by the best total so far plus the
/// least the crops still to place can add.
struct Search<'a> {
    candidates: &'a [Vec<(f32, PatchBox)>],
    /// `rest[j]`: the sum of the cheapest costs of crops `j..`.
    rest: Vec<f32>,
    offsets: &'a [PairCost],
    center: Option<CenterCost>,
    chosen: Vec<PatchBox>,
    /// Which candidate of each crop `chosen` holds.
    picked: Vec<usize>,
    best: Option<(Vec<PatchBox>, f32)>,
    visits_left: usize,
}

impl<'a> Search<'a> {
    fn new(
        candidates: &'a [Vec<(f32, PatchBox)>],
        offsets: Option<&'a [PairCost]>,
        center: Option<CenterCost>,
    ) -> Self {
        let mut rest = vec![0f32; candidates.len() + 1];
        for j in (0..candidates.len()).rev() {
            rest[j] = rest[j + 1] + candidates[j][0].0;
        }
        Self {
            candidates,
            rest,
            offsets: offsets.unwrap_or(&[]),
            center,
            chosen: Vec::with_capacity(candidates.len()),
            picked: Vec::with_capacity(candidates.len()),
            best: None,
            visits_left: SEARCH_BUDGET,
        }
    }

    fn descend(&mut self, total: f32) {
        let j = self.chosen.len();
        if j == self.candidates.len() {
            let total = total + self.center.as_ref().map_or(0.0, |c| c.of(&self.picked));
            if self.best.as_ref().is_none_or(|(_, b)| total < *b) {
                self.best = Some((self.chosen.clone(), total));
            }
            return;
        }
        for (k, &(cost, candidate)) in self.candidates[j].iter().enumerate() {
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
            let paired: f32 = self
                .offsets
                .iter()
                .filter(|o| o.second == j)
                .map(|o| o.of(&self.chosen[o.first], &candidate))
                .sum();
            if !paired.is_finite()
                || self
                    .best
                    .as_ref()
                    .is_some_and(|(_, b)| bound + paired >= *b)
            {
                continue;
            }
            self.chosen.push(candidate);
            self.picked.push(k);
            self.descend(total + cost + paired);
            self.chosen.pop();
            self.picked.pop();
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

    /// An offset table whose every offset costs `elsewhere` but `(dx, dy)`, which costs 0.
    fn offset_prior(
        first: usize,
        second: usize,
        reach: usize,
        (dx, dy): (i64, i64),
        elsewhere: f32,
    ) -> PairCost {
        let r = reach as i64;
        let mut cost = vec![elsewhere; (2 * reach + 1).pow(2)];
        cost[((dy + r) * (2 * r + 1) + dx + r) as usize] = 0.0;
        PairCost {
            first,
            second,
            reach,
            cost,
        }
    }

    /// Where G's image and mask say nothing, a position prior puts the first crop and an
    /// offset prior the second relative to it; without them both take the first free places.
    #[test]
    fn position_and_offset_priors_place_crops_where_g_says_nothing() -> Result<()> {
        let blank = tensor(vec![0.0; 64], 1)?;
        let crops = vec![vec![flat_crop(2, 2, 0.0), flat_crop(2, 2, 0.0)]];
        let plain = place_with(&blank, &blank, &crops, 1.0, None)?;
        assert_eq!(plain.boxes[0], vec![[0, 0, 2, 2], [2, 0, 2, 2]]);
        let mut first = vec![1.0f32; 49];
        first[7 + 1] = 0.0; // (x 1, y 1)
        let prior = Prior {
            positions: vec![first, vec![]],
            offsets: vec![offset_prior(0, 1, 6, (3, 2), 1.0)],
            center: None,
        };
        let placed = place_with(
            &blank,
            &blank,
            &crops,
            1.0,
            Some(std::slice::from_ref(&prior)),
        )?;
        assert_eq!(placed.boxes[0], vec![[1, 1, 2, 2], [4, 3, 2, 2]]);
        // A prior pays at most its costs: the arrangement it names costs G's alone here.
        assert!(
            (placed.costs[0] - plain.costs[0]).abs() < 1e-6,
            "{:?}",
            placed.costs
        );
        // An offset that would overlap the first box is never taken, whatever its prior.
        let overlapping = Prior {
            offsets: vec![offset_prior(0, 1, 6, (1, 0), 1.0)],
            ..prior
        };
        let placed = place_with(&blank, &blank, &crops, 1.0, Some(&[overlapping]))?;
        let b = &placed.boxes[0];
        assert!(!overlap(&b[0], &b[1]), "{b:?}");
        Ok(())
    }

    /// The centre prior moves a crop until the pasted image's ink is centred where it says.
    #[test]
    fn the_centre_prior_centres_the_pasted_ink() -> Result<()> {
        let blank = tensor(vec![0.0; 64], 1)?;
        let crops = vec![vec![flat_crop(2, 2, 1.0)]];
        let prior = Prior {
            center: Some(([5.5, 2.5], 1.0)),
            ..Prior::default()
        };
        // The crop's ink sits at its box's corner + 0.5.
        let placed = place_with(&blank, &blank, &crops, 0.0, Some(&[prior]))?;
        assert_eq!(placed.boxes[0], vec![[2, 5, 2, 2]]);
        // Without it G's image decides: the crop of ink goes to the ink G drew.
        let mut drawn = vec![0f32; 64];
        for (y, x) in [(1, 6), (1, 7), (2, 6), (2, 7)] {
            drawn[y * 8 + x] = 1.0;
        }
        let placed = place_with(&tensor(drawn, 1)?, &blank, &crops, 0.0, None)?;
        assert_eq!(placed.boxes[0], vec![[6, 1, 2, 2]]);
        Ok(())
    }

    /// The search with priors finds the cheapest arrangement: against every arrangement of
    /// three crops on random images (a 7 x 7 image keeps all 36 positions as candidates).
    #[test]
    fn the_search_with_priors_finds_the_cheapest_arrangement() -> Result<()> {
        use rand::{Rng as _, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..5 {
            let mut random = |n: usize| (0..n).map(|_| rng.random::<f32>()).collect::<Vec<_>>();
            let (image, mask) = (random(49), random(49));
            let crops: Vec<Crop> = (0..3)
                .map(|_| Crop {
                    channels: 1,
                    height: 2,
                    width: 2,
                    data: random(4),
                })
                .collect();
            let prior = Prior {
                positions: (0..3).map(|_| random(36)).collect(),
                offsets: [(0, 1), (0, 2), (1, 2)]
                    .into_iter()
                    .map(|(first, second)| PairCost {
                        first,
                        second,
                        reach: 5,
                        cost: random(121),
                    })
                    .collect(),
                center: Some(([3.0, 3.5], 0.2)),
            };
            let placed = place_with(
                &Tensor::from_vec(image.clone(), (1, 1, 7, 7), &Device::Cpu)?,
                &Tensor::from_vec(mask.clone(), (1, 1, 7, 7), &Device::Cpu)?,
                std::slice::from_ref(&crops),
                1.0,
                Some(std::slice::from_ref(&prior)),
            )?;
            let maps: Vec<Vec<f32>> = crops
                .iter()
                .map(|c| cost_map(&image, &mask, (1, 7, 7), c, 1.0))
                .collect();
            let at = |i: usize| [i % 6, i / 6, 2, 2];
            let mut best = f32::INFINITY;
            for (a, b, c) in
                (0..36).flat_map(|a| (0..36).flat_map(move |b| (0..36).map(move |c| (a, b, c))))
            {
                let boxes = [at(a), at(b), at(c)];
                if overlap(&boxes[0], &boxes[1])
                    || overlap(&boxes[0], &boxes[2])
                    || overlap(&boxes[1], &boxes[2])
                {
                    continue;
                }
                let mut total: f32 = [a, b, c]
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| maps[j][i] + prior.positions[j][i])
                    .sum();
                total += prior
                    .offsets
                    .iter()
                    .map(|o| o.of(&boxes[o.first], &boxes[o.second]))
                    .sum::<f32>();
                let mut pasted = image.clone();
                for (crop, [x, y, _, _]) in crops.iter().zip(boxes) {
                    for row in 0..2 {
                        pasted[(y + row) * 7 + x..(y + row) * 7 + x + 2]
                            .copy_from_slice(&crop.data[row * 2..row * 2 + 2]);
                    }
                }
                let mass: f32 = pasted.iter().sum();
                let cy: f32 = pasted
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * (i / 7) as f32)
                    .sum::<f32>()
                    / mass;
                let cx: f32 = pasted
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * (i % 7) as f32)
                    .sum::<f32>()
                    / mass;
                total += 0.2 * ((cy - 3.0).powi(2) + (cx - 3.5).powi(2));
                best = best.min(total);
            }
            assert!(
                (placed.costs[0] - best).abs() < 1e-4,
                "search {} against {best}",
                placed.costs[0]
            );
        }
        Ok(())
    }

    #[test]
    fn bad_priors_are_clear_errors() -> Result<()> {
        let blank = tensor(vec![0.0; 64], 1)?;
        let crops = vec![vec![flat_crop(2, 2, 0.0), flat_crop(2, 2, 0.0)]];
        let e = place_with(&blank, &blank, &crops, 1.0, Some(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one prior per image: 1 images, 0 priors"), "{e}");
        let short = Prior {
            positions: vec![vec![0.0; 10]],
            ..Prior::default()
        };
        let e = place_with(&blank, &blank, &crops, 1.0, Some(&[short]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("patch 0 has 10 position costs") && e.contains("49 positions"),
            "{e}"
        );
        let beyond = Prior {
            offsets: vec![offset_prior(0, 2, 6, (3, 0), 1.0)],
            ..Prior::default()
        };
        let e = place_with(&blank, &blank, &crops, 1.0, Some(&[beyond]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("between patches 0 and 2 of an image with 2"),
            "{e}"
        );
        Ok(())
    }
}
