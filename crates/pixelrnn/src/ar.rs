//! What the autoregressive models share: binary images as a product of Bernoulli conditionals
//! in raster order, `log p(x) = sum_i log p(x_i | x_<i)` (exact), the reference sampling loop,
//! and the check of the autoregressive property by gradients.

use candle_core::{Device, Module, Result, Tensor, Var};
use candle_nn::ops::sigmoid;
use candle_nn::VarBuilder;
use layers::masked::{MaskType, MaskedConv2d};
use layers::ImageShape;

/// A model of binary images whose every conditional is a Bernoulli with a logit computed from
/// the pixels before it (raster order: row by row, left to right, channels R -> G -> B).
pub trait BernoulliAutoregressive {
    fn image_shape(&self) -> ImageShape;

    fn device(&self) -> &Device;

    /// `(b, c, h, w) -> (b, c, h, w)`: the logit of `p(x_i = 1 | x_<i)` at every pixel, all in
    /// one pass (teacher forcing).
    fn logits(&self, x: &Tensor) -> Result<Tensor>;

    /// Draws `n` images: pixel `i` of image `k` is 1 iff `uniforms[k * dims + i] < p_i`.
    /// The default is the reference loop, which re-runs the whole network for every pixel;
    /// models override it with an incremental sampler that must give identical images.
    fn sample_from_uniforms(&self, uniforms: &[f32], n: usize) -> Result<Tensor> {
        naive_sample(self, uniforms, n)
    }

    /// Parameters the masks let through (None: every stored parameter counts).
    fn effective_parameters(&self) -> Option<usize> {
        None
    }
}

/// The output head of the convolutional models: a 1x1 ReLU layer, then a 1x1 layer of one
/// Bernoulli logit per image channel (`head.0`, `head.1`; mask B keeps colour order).
pub struct Head {
    pub convs: [MaskedConv2d; 2],
}

impl Head {
    pub fn new(in_channels: usize, hidden: usize, channels: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |i, o, vb| MaskedConv2d::new(i, o, (1, 1), MaskType::B, channels, vb);
        Ok(Self {
            convs: [
                conv(in_channels, hidden, vb.pp("0"))?,
                conv(hidden, channels, vb.pp("1"))?,
            ],
        })
    }

    /// `(b, in, H, W) -> (b, channels, H, W)` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.convs[1].forward(&self.convs[0].forward(x)?.relu()?)
    }

    /// The two layers for the cached samplers.
    pub fn cached(&self) -> Result<[crate::cached::CachedConv; 2]> {
        use crate::cached::CachedConv;
        Ok([
            CachedConv::new(&self.convs[0], true)?,
            CachedConv::new(&self.convs[1], false)?,
        ])
    }
}

/// The flat `(c, h, w)` indices in the order pixels are generated: pixel by pixel in raster
/// order, and within a pixel channel by channel.
pub fn generation_order([c, h, w]: ImageShape) -> Vec<usize> {
    let mut order = Vec::with_capacity(c * h * w);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                order.push((ch * h + y) * w + x);
            }
        }
    }
    order
}

/// The uniforms that decide `n` images: one per value, in `(n, c, h, w)` order. Both samplers
/// read the same stream, so they draw the same images.
pub fn draw_uniforms<M: BernoulliAutoregressive + ?Sized>(
    model: &M,
    n: usize,
    rng: &mut layers::Rng,
) -> Vec<f32> {
    rng.uniform_vec(n * model.image_shape().iter().product::<usize>())
}

/// The reference sampler: one full forward pass per generated value.
pub fn naive_sample<M: BernoulliAutoregressive + ?Sized>(
    model: &M,
    uniforms: &[f32],
    n: usize,
) -> Result<Tensor> {
    let shape = model.image_shape();
    let dims: usize = shape.iter().product();
    let [c, h, w] = shape;
    let mut x = vec![0f32; n * dims];
    for i in generation_order(shape) {
        let t = Tensor::from_slice(&x, (n, c, h, w), model.device())?;
        // (n, dims) -> (n) probabilities of pixel i.
        let p = sigmoid(&model.logits(&t)?.flatten_from(1)?.narrow(1, i, 1)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for k in 0..n {
            x[k * dims + i] = f32::from(uniforms[k * dims + i] < p[k]);
        }
    }
    Tensor::from_vec(x, (n, c, h, w), model.device())
}

/// What the gradient check found for one output position.
#[derive(Debug)]
pub struct Dependence {
    pub position: usize,
    /// Inputs at or after `position` (in generation order) that the output depends on: must be
    /// empty.
    pub leaks: Vec<usize>,
    /// Inputs before `position` that it depends on.
    pub past: usize,
}

/// For each flat output `position`, which inputs the logit there has a nonzero gradient with
/// respect to, at the random binary image `x` `(1, c, h, w)`.
pub fn dependencies<M: BernoulliAutoregressive + ?Sized>(
    model: &M,
    x: &Tensor,
    positions: &[usize],
) -> Result<Vec<Dependence>> {
    let order = generation_order(model.image_shape());
    let mut rank = vec![0usize; order.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let mut found = Vec::new();
    for &position in positions {
        let input = Var::from_tensor(x)?;
        let out = model
            .logits(input.as_tensor())?
            .flatten_all()?
            .narrow(0, position, 1)?
            .sum_all()?;
        let grads = out.backward()?;
        let g = match grads.get(&input) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; order.len()],
        };
        let mut leaks = Vec::new();
        let mut past = 0;
        for (j, gj) in g.iter().enumerate() {
            if *gj != 0.0 {
                if rank[j] >= rank[position] {
                    leaks.push(j);
                } else {
                    past += 1;
                }
            }
        }
        found.push(Dependence {
            position,
            leaks,
            past,
        });
    }
    Ok(found)
}

/// Positions worth checking in an image: the first pixel, row starts and ends, the middle, and
/// the last pixel.
pub fn positions_to_check([c, h, w]: ImageShape) -> Vec<usize> {
    let at = |ch: usize, y: usize, x: usize| (ch * h + y) * w + x;
    let mut p = vec![
        at(0, 0, 0),
        at(0, 0, 1.min(w - 1)),
        at(0, 0, w - 1),
        at(0, 1.min(h - 1), 0),
        at(0, h / 2, w / 2),
        at(0, h - 1, 0),
        at(0, h - 1, w - 1),
    ];
    for ch in 1..c {
        p.push(at(ch, 0, 0));
        p.push(at(ch, h / 2, w / 2));
    }
    p.sort();
    p.dedup();
    p
}

/// Implements `GenerativeModel`, `ExplicitModel` (exact likelihood) and `Objective` (mean NLL
/// per image) for a `BernoulliAutoregressive` model.
#[macro_export]
macro_rules! bernoulli_model {
    ($t:ty) => {
        impl layers::GenerativeModel for $t {
            fn image_shape(&self) -> layers::ImageShape {
                $crate::ar::BernoulliAutoregressive::image_shape(self)
            }

            fn kind(&self) -> layers::ModelKind {
                layers::ModelKind::Explicit
            }

            fn sample(
                &self,
                n: usize,
                rng: &mut layers::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                let u = $crate::ar::draw_uniforms(self, n, rng);
                $crate::ar::BernoulliAutoregressive::sample_from_uniforms(self, &u, n)
            }

            fn effective_parameters(&self) -> Option<usize> {
                $crate::ar::BernoulliAutoregressive::effective_parameters(self)
            }

            fn sample_reference(
                &self,
                n: usize,
                rng: &mut layers::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                let u = $crate::ar::draw_uniforms(self, n, rng);
                $crate::ar::naive_sample(self, &u, n)
            }
        }

        impl layers::ExplicitModel for $t {
            fn likelihood(&self) -> layers::Likelihood {
                layers::Likelihood::Exact
            }

            fn log_prob(
                &self,
                x: &candle_core::Tensor,
                _opts: &layers::LikelihoodOptions,
                _rng: &mut layers::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                let logits = $crate::ar::BernoulliAutoregressive::logits(self, x)?;
                layers::loss::bce_with_logits_per_image(&logits, x)?.neg()
            }
        }

        impl layers::Objective for $t {
            /// The NLL summed over pixels, averaged over the batch.
            fn loss(
                &self,
                x: &candle_core::Tensor,
                _rng: &mut layers::Rng,
            ) -> candle_core::Result<layers::Loss> {
                let logits = $crate::ar::BernoulliAutoregressive::logits(self, x)?;
                let value = layers::loss::bce_with_logits_per_image(&logits, x)?.mean_all()?;
                let nll = value
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
                Ok(layers::Loss {
                    value,
                    metrics: vec![("nll".to_string(), nll)],
                })
            }
        }
    };
}

/// Shared test helpers.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use layers::Rng;

    pub fn random_binary(shape: ImageShape, n: usize, seed: u64) -> Result<Tensor> {
        let [c, h, w] = shape;
        Rng::new(seed).bernoulli(&Tensor::full(0.5f32, (n, c, h, w), &Device::Cpu)?)
    }

    /// Asserts the autoregressive property at the usual positions, on two random images.
    pub fn assert_autoregressive<M: BernoulliAutoregressive>(model: &M) -> Result<()> {
        for seed in [1, 2] {
            let x = random_binary(model.image_shape(), 1, seed)?;
            for d in dependencies(model, &x, &positions_to_check(model.image_shape()))? {
                assert!(
                    d.leaks.is_empty(),
                    "output {} depends on later inputs {:?}",
                    d.position,
                    d.leaks
                );
                if d.position > 0 {
                    assert!(
                        d.past > 0,
                        "output {} depends on no earlier input",
                        d.position
                    );
                }
            }
        }
        Ok(())
    }

    /// Asserts that the check fails: some output depends on itself or a later input.
    pub fn assert_leaks<M: BernoulliAutoregressive>(model: &M) -> Result<()> {
        let x = random_binary(model.image_shape(), 1, 1)?;
        let found = dependencies(model, &x, &positions_to_check(model.image_shape()))?;
        assert!(
            found.iter().any(|d| !d.leaks.is_empty()),
            "the leak went unnoticed"
        );
        Ok(())
    }

    /// The model's own sampler and the reference loop give the same images from one stream.
    pub fn assert_sampler_matches_reference<M: BernoulliAutoregressive>(
        model: &M,
        n: usize,
    ) -> Result<()> {
        let dims: usize = model.image_shape().iter().product();
        let u = Rng::new(9).uniform_vec(n * dims);
        let fast = model
            .sample_from_uniforms(&u, n)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let slow = naive_sample(model, &u, n)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let differ = fast.iter().zip(&slow).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{differ} of {} pixels differ", fast.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_order_is_raster_then_channel() {
        // 2 channels, 1 x 2 pixels: (c0 p0), (c1 p0), (c0 p1), (c1 p1).
        assert_eq!(generation_order([2, 1, 2]), vec![0, 2, 1, 3]);
        assert_eq!(generation_order([1, 2, 2]), vec![0, 1, 2, 3]);
    }
}
