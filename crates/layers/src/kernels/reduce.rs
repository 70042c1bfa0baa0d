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

    #[test]
    fn the_split_follows_the_item_count_alone() {
        assert_eq!(items_per_part(0), 1);
        assert_eq!(items_per_part(5), 1);
        assert_eq!(items_per_part(64), 4);
        assert_eq!(items_per_part(65), 5);
        assert!(sum_parts_in_order(Vec::<Vec<f32>>::new(), 4, |p| p) == vec![0.0; 4]);
    }
}
