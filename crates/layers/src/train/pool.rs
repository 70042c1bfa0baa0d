//! The history of generated images a discriminator also sees (Shrivastava et al. 2017), as
//! junyanz's `util/image_pool.py` keeps it for CycleGAN: until the pool holds `size` images each
//! new one enters and is returned; after that, each new image is returned as is with
//! probability one half, or swapped for a random stored one that it replaces. The pool is
//! training state: a checkpoint stores it, so a resumed run draws what the uninterrupted one
//! drew.

use candle_core::{Result, Tensor};

use crate::Rng;

pub struct ImagePool {
    size: usize,
    /// Stored images, each `(1, c, h, w)`, detached.
    images: Vec<Tensor>,
}

impl ImagePool {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            images: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The images to show the discriminator in place of `images (b, c, h, w)`: detached, some
    /// swapped for older ones once the pool is full.
    pub fn query(&mut self, images: &Tensor, rng: &mut Rng) -> Result<Tensor> {
        let images = images.detach();
        if self.size == 0 {
            return Ok(images);
        }
        let mut out = Vec::with_capacity(images.dim(0)?);
        for i in 0..images.dim(0)? {
            let image = images.narrow(0, i, 1)?;
            if self.images.len() < self.size {
                self.images.push(image.clone());
                out.push(image);
            } else if rng.uniform_f32() > 0.5 {
                let id = rng.below(self.size);
                out.push(std::mem::replace(&mut self.images[id], image));
            } else {
                out.push(image);
            }
        }
        Tensor::cat(&out, 0)
    }

    /// The stored images as one `(n, c, h, w)` tensor (None while empty), for a checkpoint.
    pub fn state(&self) -> Result<Option<Tensor>> {
        if self.images.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::cat(&self.images, 0)?))
    }

    /// Restores what [`ImagePool::state`] saved (None: empty).
    pub fn restore(&mut self, state: Option<&Tensor>) -> Result<()> {
        self.images.clear();
        let Some(t) = state else {
            return Ok(());
        };
        let n = t.dim(0)?;
        if n > self.size {
            candle_core::bail!(
                "the saved image pool holds {n} images, more than its size {}",
                self.size
            );
        }
        for i in 0..n {
            self.images.push(t.narrow(0, i, 1)?.contiguous()?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn batch(start: f32, n: usize) -> Tensor {
        let v: Vec<f32> = (0..n).map(|i| start + i as f32).collect();
        Tensor::from_vec(v, (n, 1, 1, 1), &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn fills_then_swaps_about_half_and_restores_exactly() -> Result<()> {
        let mut pool = ImagePool::new(4);
        let mut rng = Rng::new(0);
        assert!(pool.is_empty());
        // Filling: the images come back as they are.
        assert_eq!(
            values(&pool.query(&batch(0.0, 3), &mut rng)?),
            [0.0, 1.0, 2.0]
        );
        assert_eq!((pool.len(), pool.is_empty()), (3, false));
        assert_eq!(values(&pool.query(&batch(3.0, 1), &mut rng)?), [3.0]);
        assert_eq!(pool.len(), 4);
        let mut swapped = 0;
        for k in 0..50 {
            let fresh = batch(100.0 + 10.0 * k as f32, 4);
            let out = values(&pool.query(&fresh, &mut rng)?);
            swapped += out
                .iter()
                .zip(values(&fresh))
                .filter(|(a, b)| **a != *b)
                .count();
        }
        // About half of 200 images were swapped for stored ones.
        assert!((70..130).contains(&swapped), "{swapped}");
        // A restored pool answers exactly as the original.
        let mut copy = ImagePool::new(4);
        copy.restore(pool.state()?.as_ref())?;
        let q = batch(7.0, 4);
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        assert_eq!(
            values(&pool.query(&q, &mut r1)?),
            values(&copy.query(&q, &mut r2)?)
        );
        // Size zero passes the images through.
        let mut none = ImagePool::new(0);
        assert_eq!(values(&none.query(&q, &mut rng)?), values(&q));
        assert!(none.state()?.is_none());
        assert!(ImagePool::new(2).restore(Some(&batch(0.0, 3))).is_err());
        Ok(())
    }
}
