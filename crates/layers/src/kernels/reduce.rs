//! Sums of partial gradients that come out the same, bit for bit, whatever the thread count.
//!
//! A backward pass that sums over the images of a batch (a convolution's or a recurrence's
//! weight gradient, NADE's `du` and `dv`) splits the images into parts, sums each part on
//! its own, then adds the parts. Floating-point addition is not associative, so both the
//! split and the order of the final additions must not depend on the machine: the split here
//! follows the batch size alone, and the parts are added one after another in their order
//! (rayon's `reduce` would add them in a tree shaped by its work stealing).

use rayon::prelude::*;

/// The most parts a batch splits into: enough to keep 16 threads busy; fewer threads take
/// several parts each, and one thread takes them all, in the same split.
const MAX_PARTS: usize = 16;

/// Items per part when `items` split into at most [`MAX_PARTS`] parts: `items` alone decides.
pub(crate) fn items_per_part(items: usize) -> usize {
    items.div_ceil(MAX_PARTS).max(1)
}

/// The elementwise sum `part(items[0]) + part(items[1]) + ...`, added left to right. The
/// parts are computed in parallel, as many at a time as there are threads, and each wave is
/// added into the total before the next starts: only that many partial sums (`len` values
/// each) are alive at once, and the order of the additions, hence every bit, is the same
/// whatever the thread count.
pub(crate) fn sum_parts_in_order<I, T, F>(items: Vec<I>, len: usize, part: F) -> Vec<T>
where
    I: Send,
    T: Copy + Default + std::ops::AddAssign + Send + Sync,
    F: Fn(I) -> Vec<T> + Sync,
{
    let wave = rayon::current_num_threads().max(1);
    let mut items = items.into_iter().peekable();
    let mut total: Option<Vec<T>> = None;
    while items.peek().is_some() {
        let batch: Vec<I> = items.by_ref().take(wave).collect();
        let partials: Vec<Vec<T>> = batch.into_par_iter().map(&part).collect();
        for p in partials {
            match &mut total {
                None => total = Some(p),
                Some(t) => add_into(t, &p),
            }
        }
    }
    total.unwrap_or_else(|| vec![T::default(); len])
}

/// `total += part`, in parallel over chunks (which changes no value's order of additions).
fn add_into<T>(total: &mut [T], part: &[T])
where
    T: Copy + std::ops::AddAssign + Send + Sync,
{
    const CHUNK: usize = 1 << 14;
    total
        .par_chunks_mut(CHUNK)
        .zip(part.par_chunks(CHUNK))
        .for_each(|(t, p)| t.iter_mut().zip(p).for_each(|(t, &p)| *t += p));
}

/// `sum of f(a[i], b[i])` in f64 over two slices of one length, as eight running sums (every
/// eighth pair) added at the end: one running sum is a chain of dependent additions that the
/// compiler cannot vectorise (BatchNorm's statistics and a bias's gradient ran at one addition
/// per four cycles). The order depends on the length alone.
pub(crate) fn sum_pairs_in_lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    const LANES: usize = 8;
    assert_eq!(
        a.len(),
        b.len(),
        "sum_pairs_in_lanes: slices of unequal length"
    );
    let mut lanes = [0f64; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f64 = (chunks_a.remainder().iter())
        .zip(chunks_b.remainder())
        .map(|(&a, &b)| f(a, b))
        .sum();
    for (a, b) in chunks_a.zip(chunks_b) {
        for ((lane, &a), &b) in lanes.iter_mut().zip(a).zip(b) {
            *lane += f(a, b);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// `sum of f(a[i])` in f64, as [`sum_pairs_in_lanes`].
pub(crate) fn sum_in_lanes(a: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    sum_pairs_in_lanes(a, a, |v, _| f(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose sum depends on the order of additions: `1e8 + 1 - 1e8` is 0 in f32 when
    /// added left to right, 1 when the last two go first.
    #[test]
    fn parts_add_up_left_to_right() {
        let sum = |parts: Vec<Vec<f32>>| sum_parts_in_order(parts, 3, |p| p);
        let parts = vec![vec![1e8f32; 3], vec![1.0; 3], vec![-1e8; 3]];
        assert_eq!(sum(parts), vec![0.0; 3]);
        let parts = vec![vec![1.0f32; 3], vec![1e8; 3], vec![-1e8; 3]];
        assert_eq!(sum(parts), vec![0.0; 3]);
        let parts = vec![vec![1e8f32; 3], vec![-1e8; 3], vec![1.0; 3]];
        assert_eq!(sum(parts), vec![1.0; 3]);
    }

    /// The lane sums equal a sum in f64 of the same values (to rounding), for lengths around
    /// the lane count, and pairs are taken index by index.
    #[test]
    fn lane_sums_add_every_value_once() {
        for len in [0usize, 1, 7, 8, 9, 17, 100] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| i as f32 - 3.0).collect();
            let exact: f64 = a.iter().map(|&v| v as f64 * 2.0).sum();
            assert!(
                (sum_in_lanes(&a, |v| v as f64 * 2.0) - exact).abs() < 1e-12,
                "{len}"
            );
            let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let lanes = sum_pairs_in_lanes(&a, &b, |x, y| x as f64 * y as f64);
            assert!((lanes - dot).abs() < 1e-9, "{len}: {lanes} against {dot}");
        }
    }

    #[test]
    fn the_split_follows_the_item_count_alone() {
        assert_eq!(items_per_part(0), 1);
        assert_eq!(items_per_part(5), 1);
        assert_eq!(items_per_part(64), 4);
        assert_eq!(items_per_part(65), 5);
        assert!(sum_parts_in_order(Vec::<Vec<f32>>::new(), 4, |p| p) == vec![0.0; 4]);
    }
}
