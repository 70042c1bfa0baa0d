//! The sliced Wasserstein distance of Karras et al. 2018 (section 5; the official code's
//! `metrics/sliced_wasserstein.py`): a multi-scale statistical similarity between two sets of
//! images that needs no classifier.
//!
//! Each image is split into a Laplacian pyramid (5 x 5 binomial filter, mirrored edges), from
//! its full side down to 16 x 16 (the coarsest level is the Gaussian image itself). From every
//! level, 128 random 7 x 7 neighbourhoods per image are descriptors (7 x 7 x channels values);
//! each set's descriptors are normalised per channel (its own mean and standard deviation). The
//! distance between the two sets at a level is the sliced Wasserstein distance: the average over
//! 4 x 128 random unit directions of the mean absolute difference between the sorted
//! projections. The paper reports it times 10^3, as [`SlicedWasserstein::per_level`] does.

use rayon::prelude::*;

use crate::Rng;

/// Neighbourhood side of a descriptor.
pub const NEIGHBOURHOOD: usize = 7;
/// Descriptors drawn from each image at each level.
pub const PER_IMAGE: usize = 128;
/// Directions: this many repeats of [`DIRECTIONS`] random directions each.
pub const REPEATS: usize = 4;
pub const DIRECTIONS: usize = 128;
/// The coarsest level's side.
pub const COARSEST: usize = 16;

/// Images as flat `[0, 1]` or `[-1, 1]` values, `(n, c, side, side)` in row-major order.
pub struct ImageSet<'a> {
    pub values: &'a [f32],
    pub count: usize,
    pub channels: usize,
    pub side: usize,
}

/// One distance per pyramid level, finest first, each times 10^3.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicedWasserstein {
    /// `(side, distance x 10^3)` per level: the full side first, 16 last.
    pub per_level: Vec<(usize, f64)>,
}

impl SlicedWasserstein {
    pub fn average(&self) -> f64 {
        self.per_level.iter().map(|(_, d)| d).sum::<f64>() / self.per_level.len() as f64
    }
}

/// The 5 x 5 binomial filter `[1 4 6 4 1]^T [1 4 6 4 1] / 256`, applied separably with mirrored
/// edges (scipy's `mode='mirror'`: `d c b | a b c d | c b a`).
fn blur(plane: &[f32], side: usize, gain: f32) -> Vec<f32> {
    const TAPS: [f32; 5] = [1.0, 4.0, 6.0, 4.0, 1.0];
    let mirror = |i: isize| -> usize {
        let n = side as isize;
        let mut i = i;
        if n == 1 {
            return 0;
        }
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    };
    let mut rows = vec![0f32; side * side];
    for y in 0..side {
        for x in 0..side {
            let mut acc = 0f32;
            for (k, t) in TAPS.iter().enumerate() {
                acc += t * plane[y * side + mirror(x as isize + k as isize - 2)];
            }
            rows[y * side + x] = acc / 16.0;
        }
    }
    let mut out = vec![0f32; side * side];
    for y in 0..side {
        for x in 0..side {
            let mut acc = 0f32;
            for (k, t) in TAPS.iter().enumerate() {
                acc += t * rows[mirror(y as isize + k as isize - 2) * side + x];
            }
            out[y * side + x] = acc / 16.0 * gain;
        }
    }
    out
}

/// Blur, then keep every second pixel: `side -> side / 2`.
fn pyramid_down(plane: &[f32], side: usize) -> Vec<f32> {
    let blurred = blur(plane, side, 1.0);
    let half = side / 2;
    let mut out = vec![0f32; half * half];
    for y in 0..half {
        for x in 0..half {
            out[y * half + x] = blurred[2 * y * side + 2 * x];
        }
    }
    out
}

/// Zeros between the pixels, then blur with gain 4: `side -> 2 side`.
fn pyramid_up(plane: &[f32], side: usize) -> Vec<f32> {
    let double = 2 * side;
    let mut spread = vec![0f32; double * double];
    for y in 0..side {
        for x in 0..side {
            spread[2 * y * double + 2 * x] = plane[y * side + x];
        }
    }
    blur(&spread, double, 4.0)
}

/// The Laplacian pyramid of one plane: `(side, values)` from the full side down to 16.
fn laplacian_pyramid(plane: &[f32], side: usize) -> Vec<(usize, Vec<f32>)> {
    let mut levels = Vec::new();
    let (mut current, mut s) = (plane.to_vec(), side);
    while s > COARSEST {
        let down = pyramid_down(&current, s);
        let up = pyramid_up(&down, s / 2);
        levels.push((s, current.iter().zip(&up).map(|(a, b)| a - b).collect()));
        current = down;
        s /= 2;
    }
    levels.push((s, current));
    levels
}

/// Descriptors of every level: per level, `count * PER_IMAGE` rows of `NEIGHBOURHOOD^2 *
/// channels` values (channel-major within a row), neighbourhoods at positions drawn from `rng`.
fn descriptors(set: &ImageSet, rng: &mut Rng) -> Vec<(usize, Vec<Vec<f32>>)> {
    let plane = set.side * set.side;
    let mut per_level: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
    for i in 0..set.count {
        // Every channel's pyramid of image i.
        let pyramids: Vec<Vec<(usize, Vec<f32>)>> = (0..set.channels)
            .map(|c| {
                let start = (i * set.channels + c) * plane;
                laplacian_pyramid(&set.values[start..start + plane], set.side)
            })
            .collect();
        for (level, &(side, _)) in pyramids[0].iter().enumerate() {
            if per_level.len() <= level {
                per_level.push((side, Vec::new()));
            }
            let span = side - NEIGHBOURHOOD + 1;
            for _ in 0..PER_IMAGE {
                let (y0, x0) = (rng.below(span), rng.below(span));
                let mut row = Vec::with_capacity(NEIGHBOURHOOD * NEIGHBOURHOOD * set.channels);
                for pyramid in &pyramids {
                    let values = &pyramid[level].1;
                    for y in y0..y0 + NEIGHBOURHOOD {
                        row.extend_from_slice(
                            &values[y * side + x0..y * side + x0 + NEIGHBOURHOOD],
                        );
                    }
                }
                per_level[level].1.push(row);
            }
        }
    }
    per_level
}

/// Each channel's values (a contiguous block of `NEIGHBOURHOOD^2` per row) to zero mean and unit
/// standard deviation over all rows.
fn normalise(rows: &mut [Vec<f32>], channels: usize) {
    let block = NEIGHBOURHOOD * NEIGHBOURHOOD;
    for c in 0..channels {
        let range = c * block..(c + 1) * block;
        let n = (rows.len() * block) as f64;
        let mean = rows
            .iter()
            .flat_map(|r| &r[range.clone()])
            .map(|&v| v as f64)
            .sum::<f64>()
            / n;
        let var = rows
            .iter()
            .flat_map(|r| &r[range.clone()])
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt().max(1e-12);
        for r in rows.iter_mut() {
            for v in &mut r[range.clone()] {
                *v = ((*v as f64 - mean) / std) as f32;
            }
        }
    }
}

/// The sliced Wasserstein distance of two equally sized sets of descriptor rows. The
/// directions are drawn first, the projections run in parallel, and the per-direction
/// distances are added in order, so no figure depends on the thread count.
fn sliced_distance(a: &[Vec<f32>], b: &[Vec<f32>], rng: &mut Rng) -> f64 {
    let dims = a[0].len();
    let directions: Vec<Vec<f32>> = (0..REPEATS * DIRECTIONS)
        .map(|_| {
            let mut dir = rng.normal_vec(dims);
            let norm = dir.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            dir.iter_mut().for_each(|v| *v /= norm);
            dir
        })
        .collect();
    let per_direction: Vec<f64> = directions
        .par_iter()
        .map(|dir| {
            let project = |rows: &[Vec<f32>]| -> Vec<f32> {
                let mut p: Vec<f32> = rows
                    .iter()
                    .map(|r| r.iter().zip(dir).map(|(x, d)| x * d).sum())
                    .collect();
                p.sort_unstable_by(f32::total_cmp);
                p
            };
            let (pa, pb) = (project(a), project(b));
            let diff: f64 = pa.iter().zip(&pb).map(|(x, y)| (x - y).abs() as f64).sum();
            diff / pa.len() as f64
        })
        .collect();
    per_direction.iter().sum::<f64>() / per_direction.len() as f64
}

/// The sliced Wasserstein distance between two sets of images of one shape, per level of the
/// Laplacian pyramid (times 10^3). The sets must hold the same number of images; `seed` fixes
/// the neighbourhoods and the directions.
pub fn sliced_wasserstein(
    a: &ImageSet,
    b: &ImageSet,
    seed: u64,
) -> anyhow::Result<SlicedWasserstein> {
    anyhow::ensure!(
        a.count == b.count && a.channels == b.channels && a.side == b.side,
        "sliced Wasserstein distance: {} images of {} x {0} x {} against {} of {} x {4} x {}",
        a.count,
        a.side,
        a.channels,
        b.count,
        b.side,
        b.channels
    );
    anyhow::ensure!(
        a.side >= COARSEST && a.side.is_power_of_two() && a.count > 0,
        "sliced Wasserstein distance needs images of a power-of-two side from {COARSEST}, found {} x {0} ({} images)",
        a.side,
        a.count
    );
    for set in [a, b] {
        anyhow::ensure!(
            set.values.len() == set.count * set.channels * set.side * set.side,
            "sliced Wasserstein distance: {} values for {} images of {} x {2} x {}",
            set.values.len(),
            set.count,
            set.side,
            set.channels
        );
    }
    let mut da = descriptors(a, &mut Rng::new(seed));
    let mut db = descriptors(b, &mut Rng::new(seed.wrapping_add(1)));
    let mut directions = Rng::new(seed.wrapping_add(2));
    let mut per_level = Vec::new();
    for ((side, ra), (_, rb)) in da.iter_mut().zip(db.iter_mut()) {
        normalise(ra, a.channels);
        normalise(rb, b.channels);
        per_level.push((*side, 1e3 * sliced_distance(ra, rb, &mut directions)));
    }
    Ok(SlicedWasserstein { per_level })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[f32], count: usize, side: usize) -> ImageSet<'_> {
        ImageSet {
            values,
            count,
            channels: 1,
            side,
        }
    }

    /// The filter on impulses, by hand: in the middle, the outer product of
    /// `[1 4 6 4 1] / 16` centred on the impulse; at a corner, the taps that fall outside
    /// mirror onto other pixels (`mode='mirror'`), so the corner keeps only `6/16` per axis;
    /// one pixel in from the edge, the mirrored taps land back on the impulse.
    #[test]
    fn the_binomial_filter_by_hand() {
        let side = 8;
        let impulse = |y: usize, x: usize| {
            let mut p = vec![0f32; side * side];
            p[y * side + x] = 1.0;
            blur(&p, side, 1.0)
        };
        let taps = [1.0, 4.0, 6.0, 4.0, 1.0].map(|t: f32| t / 16.0);
        let middle = impulse(4, 3);
        for y in 0..side {
            for x in 0..side {
                let (dy, dx) = (y as isize - 4 + 2, x as isize - 3 + 2);
                let want = match (0..5).contains(&dy) && (0..5).contains(&dx) {
                    true => taps[dy as usize] * taps[dx as usize],
                    false => 0.0,
                };
                assert!((middle[y * side + x] - want).abs() < 1e-7, "({y}, {x})");
            }
        }
        // The top-left 4 x 4 of `blurred` is the outer product of `axis / 16` with itself.
        let assert_corner = |blurred: &[f32], axis: [f32; 4]| {
            for y in 0..4 {
                for x in 0..4 {
                    let (got, want) = (blurred[y * side + x], axis[y] * axis[x] / 256.0);
                    assert!((got - want).abs() < 1e-7, "({y}, {x}): {got}, not {want}");
                }
            }
        };
        // The corner: per axis 6/16 at 0, 4/16 at 1, 1/16 at 2.
        assert_corner(&impulse(0, 0), [6.0, 4.0, 1.0, 0.0]);
        // One in from the edge: at 0 the taps at -1 (mirrored to 1) and +1 both read it, at 1
        // the centre tap and the one at -2 (mirrored to 1).
        assert_corner(&impulse(1, 1), [8.0, 7.0, 4.0, 1.0]);
        // The gain scales everything.
        let p: Vec<f32> = (0..side * side).map(|i| (i % 7) as f32).collect();
        let (one, four) = (blur(&p, side, 1.0), blur(&p, side, 4.0));
        assert!(one
            .iter()
            .zip(&four)
            .all(|(a, b)| (4.0 * a - b).abs() < 1e-5));
    }

    /// The Laplacian pyramid by its definition: a level down keeps every second pixel of the
    /// blurred image, a level up spreads the pixels apart and blurs with gain 4 (impulses by
    /// hand), and the detail level with the coarsest one gives back the image.
    #[test]
    fn the_pyramid_by_hand_and_back() {
        let close = |got: f32, want: f32| assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        let impulse = |side: usize, y: usize, x: usize| {
            let mut p = vec![0f32; side * side];
            p[y * side + x] = 1.0;
            p
        };
        // Down: the impulse at (4, 4) of 16 x 16 is at (2, 2) of 8 x 8, its neighbours two
        // pixels away at (1, 1), (3, 2), (3, 3).
        let down = pyramid_down(&impulse(16, 4, 4), 16);
        assert_eq!(down.len(), 64);
        close(down[2 * 8 + 2], 36.0 / 256.0);
        close(down[8 + 1], 1.0 / 256.0);
        close(down[3 * 8 + 2], 6.0 / 256.0);
        close(down[3 * 8 + 3], 1.0 / 256.0);
        // Up: the impulse at (1, 1) of 8 x 8 is spread to (2, 2) of 16 x 16, then blurred
        // with gain 4.
        let up = pyramid_up(&impulse(8, 1, 1), 8);
        assert_eq!(up.len(), 256);
        close(up[2 * 16 + 2], 4.0 * 36.0 / 256.0);
        close(up[3 * 16 + 3], 4.0 * 16.0 / 256.0);
        close(up[3 * 16 + 2], 4.0 * 24.0 / 256.0);
        // Back: detail plus the coarse level brought up.
        let plane = Rng::new(7).normal_vec(32 * 32);
        let levels = laplacian_pyramid(&plane, 32);
        let sizes: Vec<(usize, usize)> = levels.iter().map(|(s, v)| (*s, v.len())).collect();
        assert_eq!(sizes, [(32, 1024), (16, 256)]);
        let coarse_up = pyramid_up(&levels[1].1, 16);
        for ((d, c), p) in levels[0].1.iter().zip(&coarse_up).zip(&plane) {
            assert!((d + c - p).abs() < 1e-5, "{d} + {c} != {p}");
        }
    }

    /// A descriptor holds one neighbourhood of every channel of one image at one place: with
    /// the second channel twice the first, every row's second block is twice its first; each
    /// level holds `PER_IMAGE` rows per image of `7 x 7 x channels` values.
    #[test]
    fn descriptors_take_every_channel_of_one_place() {
        let (count, side) = (3, 32);
        let mut values = Vec::new();
        for i in 0..count {
            // Image i's first channel sits near 100 i, which the coarsest level keeps.
            let first: Vec<f32> = Rng::new(10 + i as u64)
                .normal_vec(side * side)
                .iter()
                .map(|v| v + 100.0 * i as f32)
                .collect();
            let second: Vec<f32> = first.iter().map(|v| 2.0 * v).collect();
            values.extend(first);
            values.extend(second);
        }
        let set = ImageSet {
            values: &values,
            count,
            channels: 2,
            side,
        };
        let levels = descriptors(&set, &mut Rng::new(0));
        assert_eq!(levels.iter().map(|l| l.0).collect::<Vec<_>>(), [32, 16]);
        let block = NEIGHBOURHOOD * NEIGHBOURHOOD;
        for (_, rows) in &levels {
            assert_eq!(rows.len(), count * PER_IMAGE);
            for row in rows {
                assert_eq!(row.len(), 2 * block);
                for (a, b) in row[..block].iter().zip(&row[block..]) {
                    assert!((2.0 * a - b).abs() < 1e-4 * (1.0 + b.abs()), "{a} and {b}");
                }
            }
        }
        // The coarsest level's rows come image by image, each from its own image.
        for (k, row) in levels[1].1.iter().enumerate() {
            let mean = row[..block].iter().sum::<f32>() / block as f32;
            let image = (k / PER_IMAGE) as f32;
            assert!((mean - 100.0 * image).abs() < 10.0, "row {k}: {mean}");
        }
    }

    /// At 16 x 16 the pyramid is the image itself, so every descriptor is a 7 x 7 window of
    /// it: with each pixel holding its own index, a row steps by 1 along and by 16 down.
    #[test]
    fn descriptors_are_windows_of_the_image() {
        let side = 16;
        let values: Vec<f32> = (0..side * side).map(|i| i as f32).collect();
        let levels = descriptors(&set(&values, 1, side), &mut Rng::new(5));
        assert_eq!(levels.len(), 1);
        let (mut rows_seen, mut columns_seen) = (vec![false; side], vec![false; side]);
        for row in &levels[0].1 {
            let (y0, x0) = (row[0] as usize / side, row[0] as usize % side);
            assert!(
                y0 + NEIGHBOURHOOD <= side && x0 + NEIGHBOURHOOD <= side,
                "{y0}, {x0}"
            );
            (rows_seen[y0], columns_seen[x0]) = (true, true);
            for r in 0..NEIGHBOURHOOD {
                for q in 0..NEIGHBOURHOOD {
                    assert_eq!(row[r * NEIGHBOURHOOD + q], row[0] + (r * side + q) as f32);
                }
            }
        }
        // 128 windows reach every place a window fits, the last one included.
        let fits = side - NEIGHBOURHOOD + 1;
        assert!(rows_seen[..fits].iter().all(|s| *s), "{rows_seen:?}");
        assert!(columns_seen[..fits].iter().all(|s| *s), "{columns_seen:?}");
    }

    /// Two point sets in the plane, one twice the other along x: each direction at angle t
    /// sees them `|cos t| / 2` apart on average, so over random directions the distance is
    /// near `E|cos t| / 2 = 1 / pi`.
    #[test]
    fn the_sliced_distance_of_scaled_points() {
        let a = vec![vec![0.0, 0.0], vec![1.0, 0.0]];
        let b = vec![vec![0.0, 0.0], vec![2.0, 0.0]];
        let d = sliced_distance(&a, &b, &mut Rng::new(1));
        assert!((d - std::f64::consts::FRAC_1_PI).abs() < 0.03, "{d}");
        assert_eq!(sliced_distance(&a, &a, &mut Rng::new(1)), 0.0);
    }

    /// Each channel's block, over all rows, to mean 0 and standard deviation 1 (population),
    /// each channel by its own statistics.
    #[test]
    fn normalise_standardises_each_channel_apart() {
        let block = NEIGHBOURHOOD * NEIGHBOURHOOD;
        let mut rng = Rng::new(3);
        let mut rows: Vec<Vec<f32>> = (0..20)
            .map(|_| {
                let mut row: Vec<f32> = rng
                    .normal_vec(block)
                    .iter()
                    .map(|v| 3.0 + 2.0 * v)
                    .collect();
                row.extend(rng.normal_vec(block).iter().map(|v| -1.0 + 0.5 * v));
                row
            })
            .collect();
        let before = rows.clone();
        normalise(&mut rows, 2);
        for c in 0..2 {
            let values: Vec<f64> = rows
                .iter()
                .flat_map(|r| &r[c * block..(c + 1) * block])
                .map(|&v| v as f64)
                .collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 1e-6, "channel {c}: mean {mean}");
            assert!((var - 1.0).abs() < 1e-5, "channel {c}: variance {var}");
        }
        // An affine map of each value: the order within a channel is kept.
        let (a, b) = (&before[4], &rows[4]);
        assert_eq!(a[0] < a[1], b[0] < b[1]);
    }

    #[test]
    fn the_average_is_over_the_levels() {
        let d = SlicedWasserstein {
            per_level: vec![(32, 1.0), (16, 4.0)],
        };
        assert_eq!(d.average(), 2.5);
    }

    /// A constant plane has no detail: its Laplacian levels are zero and its coarsest level is
    /// the constant (the filter sums to one, mirrored edges lose nothing).
    #[test]
    fn the_pyramid_of_a_constant_is_zero_detail() {
        let plane = vec![0.7f32; 32 * 32];
        let levels = laplacian_pyramid(&plane, 32);
        assert_eq!(levels.iter().map(|l| l.0).collect::<Vec<_>>(), [32, 16]);
        assert!(levels[0].1.iter().all(|v| v.abs() < 1e-6));
        assert!(levels[1].1.iter().all(|v| (v - 0.7).abs() < 1e-6));
    }

    /// Identical sets are at distance 0 only up to the sampling of neighbourhoods; two draws of
    /// one distribution are close; a different distribution (other textures) is far.
    #[test]
    fn distances_order_like_and_unlike_sets() -> anyhow::Result<()> {
        let (n, side) = (64, 16);
        let noise = |seed, amplitude: f32| -> Vec<f32> {
            Rng::new(seed)
                .normal_vec(n * side * side)
                .into_iter()
                .map(|v| v * amplitude)
                .collect()
        };
        let (a, b, c) = (noise(1, 1.0), noise(2, 1.0), noise(3, 1.0));
        // Smooth images: each row a constant.
        let smooth: Vec<f32> = c
            .iter()
            .enumerate()
            .map(|(i, _)| c[i / side * side])
            .collect();
        let same = sliced_wasserstein(&set(&a, n, side), &set(&b, n, side), 0)?.average();
        let other = sliced_wasserstein(&set(&a, n, side), &set(&smooth, n, side), 0)?.average();
        assert!(
            same > 0.0 && same < 0.2 * other,
            "alike {same}, unlike {other}"
        );
        let e = sliced_wasserstein(&set(&a, n, side), &set(&b[..side * side], 1, side), 0);
        assert!(e.unwrap_err().to_string().contains("against 1"));
        Ok(())
    }
}
