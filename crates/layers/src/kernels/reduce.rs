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

/// The elementwise sum `parts[0] + parts[1] + ...`, added in that order; in parallel over
/// chunks of the result, which changes no value's order of additions.
pub(crate) fn sum_in_order<T>(mut parts: Vec<Vec<T>>, len: usize) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign + Send + Sync,
{
    const CHUNK: usize = 1 << 14;
    if parts.is_empty() {
        return vec![T::default(); len];
    }
    let mut total = parts.remove(0);
    total
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, total)| {
            for part in &parts {
                for (t, &p) in total.iter_mut().zip(&part[c * CHUNK..]) {
                    *t += p;
                }
            }
        });
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose sum depends on the order of additions: `1e8 + 1 - 1e8` is 0 in f32 when
    /// added left to right, 1 when the last two go first.
    #[test]
    fn parts_add_up_left_to_right() {
        let parts = vec![vec![1e8f32; 3], vec![1.0; 3], vec![-1e8; 3]];
        assert_eq!(sum_in_order(parts, 3), vec![0.0; 3]);
        let parts = vec![vec![1.0f32; 3], vec![1e8; 3], vec![-1e8; 3]];
        assert_eq!(sum_in_order(parts, 3), vec![0.0; 3]);
        let parts = vec![vec![1e8f32; 3], vec![-1e8; 3], vec![1.0; 3]];
        assert_eq!(sum_in_order(parts, 3), vec![1.0; 3]);
    }

    #[test]
    fn the_split_follows_the_item_count_alone() {
        assert_eq!(items_per_part(0), 1);
        assert_eq!(items_per_part(5), 1);
        assert_eq!(items_per_part(64), 4);
        assert_eq!(items_per_part(65), 5);
        assert!(sum_in_order::<f32>(vec![], 4) == vec![0.0; 4]);
    }
}
