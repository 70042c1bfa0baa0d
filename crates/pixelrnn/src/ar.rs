//! What the autoregressive models share: images as a product of conditionals in raster order,
//! `log p(x) = sum_i log p(x_i | x_<i)` (exact), each conditional a Bernoulli (binary images)
//! or a 256-way softmax over intensities (van den Oord et al. 2016, sec. 5.3), the reference
//! sampling loop, and the check of the autoregressive property by gradients.

use candle_core::{Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use layers::nn::masked::{MaskType, MaskedConv2d};
use layers::ImageShape;

pub use crate::output::{intensity_levels, Output, LEVELS};

/// A model of images whose every conditional is computed from the values before it (raster
/// order: row by row, left to right, channels R -> G -> B).
pub trait Autoregressive {
    fn image_shape(&self) -> ImageShape;

    fn device(&self) -> &Device;

    /// The distribution of each value (Bernoulli unless the model says otherwise).
    fn output(&self) -> Output {
        Output::Bernoulli
    }

    /// `(b, c, h, w) -> (b, c * levels, h, w)`: the logits of every conditional, all in one
    /// pass (teacher forcing).
    fn logits(&self, x: &Tensor) -> Result<Tensor>;

    /// Draws `n` images: value `i` of image `k` is drawn from its conditional with the uniform
    /// `uniforms[k * dims + i]` ([`Output::draw`]). The default is the reference loop, which
    /// re-runs the whole network for every value; models override it with an incremental
    /// sampler that must give identical images.
    fn sample_from_uniforms(&self, uniforms: &[f32], n: usize) -> Result<Tensor> {
        naive_sample(self, uniforms, n)
    }

    /// Parameters the masks let through (None: every stored parameter counts).
    fn effective_parameters(&self) -> Option<usize> {
        None
    }
}

/// The output head of the convolutional models: a 1x1 ReLU layer, then a 1x1 layer of the
/// logits of each image channel (`head.0`, `head.1`; mask B keeps colour order, and channel
/// `ch`'s `levels` logits form colour group `ch`).
pub struct Head {
    pub convs: [MaskedConv2d; 2],
}

impl Head {
    pub fn new(
        in_channels: usize,
        hidden: usize,
        channels: usize,
        output: Output,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = |i, o, vb| MaskedConv2d::new(i, o, (1, 1), MaskType::B, channels, vb);
        Ok(Self {
            convs: [
                conv(in_channels, hidden, vb.pp("0"))?,
                conv(hidden, channels * output.levels(), vb.pp("1"))?,
            ],
        })
    }

    /// `(b, in, H, W) -> (b, channels * levels, H, W)` logits.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.convs[1].forward(
            &self.convs[0].forward_activated(x, layers::kernels::activation::Activation::Relu)?,
        )
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
pub fn draw_uniforms<M: Autoregressive + ?Sized>(
    model: &M,
    n: usize,
    rng: &mut layers::Rng,
) -> Vec<f32> {
    rng.uniform_vec(n * model.image_shape().iter().product::<usize>())
}

/// The reference sampler: one full forward pass per generated value.
pub fn naive_sample<M: Autoregressive + ?Sized>(
    model: &M,
    uniforms: &[f32],
    n: usize,
) -> Result<Tensor> {
    let shape = model.image_shape();
    let dims: usize = shape.iter().product();
    let [c, h, w] = shape;
    let (output, plane) = (model.output(), h * w);
    let levels = output.levels();
    let mut x = vec![0f32; n * dims];
    for i in generation_order(shape) {
        let t = Tensor::from_slice(&x, (n, c, h, w), model.device())?;
        // (n, c * levels, h, w) -> (n, levels): the logits of value i.
        let (ch, pixel) = (i / plane, i % plane);
        let logits = model
            .logits(&t)?
            .reshape((n, c * levels, plane))?
            .narrow(1, ch * levels, levels)?
            .narrow(2, pixel, 1)?
            .flatten_from(1)?
            .to_vec2::<f32>()?;
        for (k, l) in logits.iter().enumerate() {
            x[k * dims + i] = output.draw(l, uniforms[k * dims + i]);
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
    /// The earliest of those in generation order (its rank), if any: with `past`, says whether
    /// the inputs seen are the most recent ones (AR-N's window).
    pub earliest_past: Option<usize>,
}

/// For each flat output `position`, which inputs the logits there (all `levels` of them) have
/// a nonzero gradient with respect to, at the image `x` `(1, c, h, w)`.
pub fn dependencies<M: Autoregressive + ?Sized>(
    model: &M,
    x: &Tensor,
    positions: &[usize],
) -> Result<Vec<Dependence>> {
    let order = generation_order(model.image_shape());
    let mut rank = vec![0usize; order.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let [c, h, w] = model.image_shape();
    let levels = model.output().levels();
    let mut found = Vec::new();
    for &position in positions {
        let input = Var::from_tensor(x)?;
        let (ch, pixel) = (position / (h * w), position % (h * w));
        let out = model
            .logits(input.as_tensor())?
            .reshape((c * levels, h * w))?
            .narrow(0, ch * levels, levels)?
            .narrow(1, pixel, 1)?
            .sum_all()?;
        let grads = out.backward()?;
        let g = match grads.get(&input) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; order.len()],
        };
        let mut leaks = Vec::new();
        let mut past = 0;
        let mut earliest_past: Option<usize> = None;
        for (j, gj) in g.iter().enumerate() {
            if *gj != 0.0 {
                if rank[j] >= rank[position] {
                    leaks.push(j);
                } else {
                    past += 1;
                    earliest_past = Some(earliest_past.map_or(rank[j], |e| e.min(rank[j])));
                }
            }
        }
        found.push(Dependence {
            position,
            leaks,
            past,
            earliest_past,
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
/// per image) for an `Autoregressive` model.
#[macro_export]
macro_rules! autoregressive_model {
    ($t:ty) => {
        impl layers::GenerativeModel for $t {
            fn image_shape(&self) -> layers::ImageShape {
                $crate::ar::Autoregressive::image_shape(self)
            }

            fn kind(&self) -> layers::ModelKind {
                layers::ModelKind::Explicit
            }

            fn values(&self) -> layers::Values {
                $crate::ar::Autoregressive::output(self).values()
            }

            fn sample(
                &self,
                n: usize,
                rng: &mut layers::Rng,
            ) -> candle_core::Result<candle_core::Tensor> {
                let u = $crate::ar::draw_uniforms(self, n, rng);
                $crate::ar::Autoregressive::sample_from_uniforms(self, &u, n)
            }

            fn effective_parameters(&self) -> Option<usize> {
                $crate::ar::Autoregressive::effective_parameters(self)
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
                let logits = $crate::ar::Autoregressive::logits(self, x)?;
                $crate::ar::Autoregressive::output(self).log_prob(&logits, x)
            }
        }

        impl layers::Objective for $t {
            /// The NLL summed over pixels, averaged over the batch.
            fn loss(
                &self,
                x: &candle_core::Tensor,
                _rng: &mut layers::Rng,
            ) -> candle_core::Result<layers::Loss> {
                let logits = $crate::ar::Autoregressive::logits(self, x)?;
                let value = $crate::ar::Autoregressive::output(self)
                    .log_prob(&logits, x)?
                    .neg()?
                    .mean_all()?;
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
    use candle_nn::VarMap;
    use layers::{Adam, AdamConfig, Rng};

    /// Synthetic RGB images `(n, 3, side, side)`: every pixel's red is one of 4 levels at
    /// random, green equals red, blue is `1 - red`. Per pixel the entropy is `ln 4` nats, all
    /// of it in red: a model that predicts G from R and B from R, G pays only for red.
    pub fn synthetic_rgb(n: usize, side: usize, rng: &mut Rng) -> Result<Tensor> {
        let plane = side * side;
        let mut v = vec![0f32; n * 3 * plane];
        for k in 0..n {
            for p in 0..plane {
                let red = rng.below(4) as f32 * 85.0 / 255.0;
                v[k * 3 * plane + p] = red;
                v[(k * 3 + 1) * plane + p] = red;
                v[(k * 3 + 2) * plane + p] = 1.0 - red;
            }
        }
        Tensor::from_vec(v, (n, 3, side, side), &Device::Cpu)
    }

    /// Trains a softmax model on [`synthetic_rgb`] with Adam and returns the test NLL per
    /// image in nats, before and after.
    pub fn train_on_synthetic_rgb<M: Autoregressive>(
        model: &M,
        varmap: &VarMap,
        steps: usize,
    ) -> Result<(f64, f64)> {
        let side = model.image_shape()[1];
        let mut rng = Rng::new(11);
        let test = synthetic_rgb(64, side, &mut rng)?;
        let nll = |m: &M| -> Result<f64> {
            let logits = m.logits(&test)?;
            m.output()
                .log_prob(&logits, &test)?
                .neg()?
                .mean_all()?
                .to_scalar::<f32>()
                .map(f64::from)
        };
        let before = nll(model)?;
        let cfg = AdamConfig {
            lr: 1e-2,
            ..AdamConfig::default()
        };
        let mut adam = Adam::new(varmap, cfg).map_err(candle_core::Error::wrap)?;
        for _ in 0..steps {
            let x = synthetic_rgb(32, side, &mut rng)?;
            let loss = model
                .output()
                .log_prob(&model.logits(&x)?, &x)?
                .neg()?
                .mean_all()?;
            adam.backward_step(&loss)
                .map_err(candle_core::Error::wrap)?;
        }
        Ok((before, nll(model)?))
    }

    /// The model learnt the R -> G -> B dependence, and no more: after training its NLL is
    /// within 25% above red's entropy (`ln 4` per pixel), far below the `3 ln 4` of independent
    /// channels, and not below it (a model that sees the red it predicts goes under: see
    /// pixelcnn's leaky colour control).
    pub fn assert_learns_colour_dependence<M: Autoregressive>(
        model: &M,
        varmap: &VarMap,
        steps: usize,
    ) -> Result<()> {
        let red_entropy = red_entropy(model);
        let (before, after) = train_on_synthetic_rgb(model, varmap, steps)?;
        assert!(
            after < 1.25 * red_entropy,
            "NLL {before:.2} -> {after:.2} nats; red alone carries {red_entropy:.2}, independent channels {:.2}",
            3.0 * red_entropy
        );
        assert!(
            after > FLOOR * red_entropy,
            "NLL {after:.2} nats on held-out images is below red's entropy {red_entropy:.2}: the model sees what it predicts"
        );
        Ok(())
    }

    /// The share of red's entropy below which a held-out NLL means a leak: no model can beat
    /// the entropy in expectation, and 64 test images of 16 pixels leave little room for luck.
    pub const FLOOR: f64 = 0.95;

    /// `ln 4` nats per pixel: what red costs a model that predicts G and B from it.
    pub fn red_entropy<M: Autoregressive>(model: &M) -> f64 {
        let [_, h, w] = model.image_shape();
        (h * w) as f64 * 4f64.ln()
    }

    pub fn random_binary(shape: ImageShape, n: usize, seed: u64) -> Result<Tensor> {
        let [c, h, w] = shape;
        Rng::new(seed).bernoulli(&Tensor::full(0.5f32, (n, c, h, w), &Device::Cpu)?)
    }

    /// Asserts the autoregressive property at the usual positions, on two random images.
    pub fn assert_autoregressive<M: Autoregressive>(model: &M) -> Result<()> {
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
    pub fn assert_leaks<M: Autoregressive>(model: &M) -> Result<()> {
        let x = random_binary(model.image_shape(), 1, 1)?;
        let found = dependencies(model, &x, &positions_to_check(model.image_shape()))?;
        assert!(
            found.iter().any(|d| !d.leaks.is_empty()),
            "the leak went unnoticed"
        );
        Ok(())
    }

    /// The model's own sampler and the reference loop give the same images from one stream.
    pub fn assert_sampler_matches_reference<M: Autoregressive>(model: &M, n: usize) -> Result<()> {
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
    fn softmax_draw_inverts_the_cumulative_distribution() {
        // Probabilities 0.5 at level 3 and 0.5 at level 200, nothing elsewhere.
        let mut logits = vec![-1e9f32; LEVELS];
        logits[3] = 0.0;
        logits[200] = 0.0;
        let draw = |u| Output::Softmax.draw(&logits, u) * 255.0;
        assert_eq!(draw(0.0).round(), 3.0);
        assert_eq!(draw(0.49).round(), 3.0);
        assert_eq!(draw(0.51).round(), 200.0);
        assert_eq!(draw(0.999_999).round(), 200.0);
        assert_eq!(Output::Bernoulli.draw(&[0.0], 0.49), 1.0);
        assert_eq!(Output::Bernoulli.draw(&[0.0], 0.51), 0.0);
    }

    #[test]
    fn softmax_log_prob_picks_each_values_level() -> Result<()> {
        // One image, 2 channels of 1 x 2 pixels; the logit of level l is l / 10 everywhere.
        let levels: Vec<f32> = (0..LEVELS).map(|l| l as f32 / 10.0).collect();
        // (1, 2 * 256, 1, 2): channel-major, then level, then pixel.
        let per_channel: Vec<f32> = levels.iter().flat_map(|&l| [l, l]).collect();
        let logits = Tensor::from_vec(per_channel.repeat(2), (1, 2 * LEVELS, 1, 2), &Device::Cpu)?;
        let values = [0u32, 17, 255, 128];
        let x = Tensor::from_vec(
            values.iter().map(|&v| v as f32 / 255.0).collect::<Vec<_>>(),
            (1, 2, 1, 2),
            &Device::Cpu,
        )?;
        let got = Output::Softmax.log_prob(&logits, &x)?.to_vec1::<f32>()?[0] as f64;
        let log_z = levels.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        let want: f64 = values.iter().map(|&v| v as f64 / 10.0 - log_z).sum();
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn generation_order_is_raster_then_channel() {
        // 2 channels, 1 x 2 pixels: (c0 p0), (c1 p0), (c0 p1), (c1 p1).
        assert_eq!(generation_order([2, 1, 2]), vec![0, 2, 1, 3]);
        assert_eq!(generation_order([1, 2, 2]), vec![0, 1, 2, 3]);
    }
}
