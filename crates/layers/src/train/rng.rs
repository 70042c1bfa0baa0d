//! The project's own seeded random numbers.
//!
//! Candle cannot seed its CPU generator (`Device::set_seed` fails on CPU), so every random
//! tensor in genzoo is drawn here and copied to the device. Streams are derived from
//! `(seed, stream, index)` rather than carried along, so that a run resumed at step `k`
//! draws exactly what the uninterrupted run drew at step `k`.

use candle_core::{Device, Result, Shape, Tensor};
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Named purposes, so that two uses of one seed never share a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    Init = 1,
    Shuffle = 2,
    Step = 3,
    Sample = 4,
    Eval = 5,
    Binarize = 6,
    /// The second domain's images of an unpaired two-domain batch.
    SecondDomain = 7,
    /// Random transforms (crops, flips) of a batch's images.
    Augment = 8,
    /// Synthetic attributes drawn for each image of a dataset.
    Attributes = 9,
    /// Captions written for each image of a dataset (the captioned digits).
    Captions = 10,
}

/// A seeded, portable random generator (ChaCha8).
#[derive(Debug, Clone)]
pub struct Rng {
    inner: ChaCha8Rng,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The generator for one purpose and one index (an epoch, a step) of a run.
    pub fn derive(seed: u64, stream: Stream, index: u64) -> Self {
        let mut inner = ChaCha8Rng::seed_from_u64(seed);
        // ChaCha streams are independent sequences of the same key.
        inner.set_stream(((stream as u64) << 56) ^ index);
        Self { inner }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.inner.random()
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform_f32(&mut self) -> f32 {
        self.inner.random()
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.inner.random_range(0..n)
    }

    pub fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| StandardNormal.sample(&mut self.inner))
            .collect()
    }

    pub fn uniform_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform_f32()).collect()
    }

    /// A standard normal tensor (f32) on `device`.
    pub fn normal(&mut self, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(self.normal_vec(shape.elem_count()), shape, device)
    }

    /// A tensor uniform in `[0, 1)` (f32) on `device`.
    pub fn uniform(&mut self, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(self.uniform_vec(shape.elem_count()), shape, device)
    }

    /// Draws `x ~ Bernoulli(probs)` elementwise, as 0/1 in the dtype of `probs`.
    pub fn bernoulli(&mut self, probs: &Tensor) -> Result<Tensor> {
        let u = self.uniform(probs.shape(), probs.device())?;
        u.lt(&probs.to_dtype(candle_core::DType::F32)?)?
            .to_dtype(probs.dtype())
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let a = Rng::derive(7, Stream::Step, 3).normal_vec(16);
        let b = Rng::derive(7, Stream::Step, 3).normal_vec(16);
        let c = Rng::derive(7, Stream::Step, 4).normal_vec(16);
        let d = Rng::derive(7, Stream::Shuffle, 3).normal_vec(16);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn normal_has_unit_moments() {
        let v = Rng::new(1).normal_vec(200_000);
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn bernoulli_matches_probabilities() -> Result<()> {
        let p = Tensor::new(&[0.0f32, 1.0, 0.25], &Device::Cpu)?;
        let p = p.unsqueeze(0)?.repeat((20_000, 1))?;
        let x = Rng::new(3).bernoulli(&p)?.mean(0)?.to_vec1::<f32>()?;
        assert_eq!(x[0], 0.0);
        assert_eq!(x[1], 1.0);
        assert!((x[2] - 0.25).abs() < 0.01, "{}", x[2]);
        Ok(())
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        Rng::new(5).shuffle(&mut v);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    /// Every order of three items equally often (1/6 each): a shuffle that never leaves an
    /// item in place (Sattolo's, `below(i)` for `below(i + 1)`) draws only the two cycles.
    #[test]
    fn shuffle_draws_every_order_alike() {
        let mut rng = Rng::new(6);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..6_000 {
            let mut v = [0, 1, 2];
            rng.shuffle(&mut v);
            *counts.entry(v).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 6, "{counts:?}");
        assert!(
            counts.values().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    /// The raw draws (an augmentation's per-image seeds) vary and follow the seed.
    #[test]
    fn raw_draws_vary_and_repeat_with_the_seed() {
        let draws = |seed| -> Vec<u64> {
            let mut rng = Rng::new(seed);
            (0..4).map(|_| rng.next_u64()).collect()
        };
        let a = draws(1);
        assert_eq!(a, draws(1));
        assert_ne!(a, draws(2));
        assert!(a.windows(2).all(|w| w[0] != w[1]), "{a:?}");
    }
}
