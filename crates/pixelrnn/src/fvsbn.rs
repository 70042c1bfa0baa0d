//! Fully visible sigmoid belief network (Frey 1998; the "logistic autoregressive model"):
//! `p(x_i = 1 | x_<i) = sigmoid(b_i + sum_{j<i} W_ij x_j)`, one logistic regression per pixel on
//! all the pixels before it in raster order: n(n-1)/2 weights and n biases.
//!
//! With `window = N > 0` it is the AR-N model, each pixel regressed on the previous N pixels
//! only (`j` in `[i - N, i)`): about nN weights.
//!
//! Parameters `weight` `(n, n)` (masked to the strictly lower triangle, or its band) and `bias`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::nn::init::torch_uniform;
use layers::ImageShape;
use serde::{Deserialize, Serialize};

use crate::ar::{generation_order, Autoregressive};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    /// 0: every earlier pixel (FVSBN); N: the previous N pixels only (AR-N).
    pub window: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            window: 0,
        }
    }
}

impl Config {
    /// AR-N with the given window.
    pub fn ar_n(window: usize) -> Self {
        Self {
            window,
            ..Self::default()
        }
    }
}

pub struct Fvsbn {
    cfg: Config,
    weight: Tensor,
    bias: Tensor,
    /// `(n, n)` 0/1, `mask[i][j] = 1` iff pixel `i` may see pixel `j`.
    mask: Tensor,
    device: Device,
}

/// The visibility mask in flat `(c, h, w)` indices, for generation order `order`.
fn visibility(order: &[usize], window: usize) -> Vec<f32> {
    let n = order.len();
    let mut m = vec![0f32; n * n];
    for (ri, &i) in order.iter().enumerate() {
        let from = if window == 0 {
            0
        } else {
            ri.saturating_sub(window)
        };
        for &j in &order[from..ri] {
            m[i * n + j] = 1.0;
        }
    }
    m
}

impl Fvsbn {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let n = cfg.channels * cfg.image_size * cfg.image_size;
        let shape = [cfg.channels, cfg.image_size, cfg.image_size];
        let seen = if cfg.window == 0 {
            n
        } else {
            cfg.window.min(n)
        };
        let weight = vb.get_with_hints((n, n), "weight", torch_uniform(seen))?;
        let bias = vb.get_with_hints(n, "bias", Init::Const(0.0))?;
        let mask = Tensor::from_vec(
            visibility(&generation_order(shape), cfg.window),
            (n, n),
            vb.device(),
        )?
        .to_dtype(DType::F32)?;
        Ok(Self {
            cfg: cfg.clone(),
            weight,
            bias,
            mask,
            device: vb.device().clone(),
        })
    }
}

impl Autoregressive for Fvsbn {
    fn image_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// The visible weights and the biases.
    fn effective_parameters(&self) -> Option<usize> {
        let visible = self.mask.sum_all().ok()?.to_scalar::<f32>().ok()? as usize;
        Some(visible + self.bias.elem_count())
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let flat = x.flatten_from(1)?; // (b, n)
        let w = (&self.weight * &self.mask)?; // (n, n)
        let logits = flat.matmul(&w.t()?)?.broadcast_add(&self.bias)?; // (b, n)
        logits.reshape(x.shape())
    }

    /// Each logit is one dot product with the pixels drawn so far: O(n) per pixel instead of
    /// the O(n^2) full pass.
    fn sample_from_uniforms(&self, uniforms: &[f32], count: usize) -> Result<Tensor> {
        let n = self.bias.elem_count();
        let w = (&self.weight * &self.mask)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let b = self.bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let order = generation_order(self.image_shape());
        let mut x = vec![0f32; count * n];
        for k in 0..count {
            let img = &mut x[k * n..(k + 1) * n];
            for &i in &order {
                let row = &w[i * n..(i + 1) * n];
                let logit = b[i] + row.iter().zip(img.iter()).map(|(a, v)| a * v).sum::<f32>();
                img[i] =
                    f32::from(uniforms[k * n + i] < layers::kernels::simd::sigmoid_scalar(logit));
            }
        }
        let [c, h, wd] = self.image_shape();
        Tensor::from_vec(x, (count, c, h, wd), &self.device)
    }
}

crate::autoregressive_model!(Fvsbn);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::testing::*;
    use candle_nn::VarMap;

    fn small(window: usize) -> Result<Fvsbn> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu);
        Fvsbn::new(
            &Config {
                image_size: 6,
                channels: 1,
                window,
            },
            vb,
        )
    }

    #[test]
    fn each_pixel_sees_only_earlier_pixels() -> Result<()> {
        assert_autoregressive(&small(0)?)?;
        assert_autoregressive(&small(3)?)
    }

    #[test]
    fn the_check_catches_a_full_matrix() -> Result<()> {
        let mut m = small(0)?;
        m.mask = m.mask.ones_like()?;
        assert_leaks(&m)
    }

    /// The pixels (raster order: one channel) whose output does not depend on exactly the
    /// `window` pixels just before it (fewer at the start), and on nothing else.
    fn outside_window(m: &Fvsbn, window: usize) -> Result<Vec<usize>> {
        // With all-one inputs every visible weight contributes to the gradient.
        let ones = Tensor::ones((1, 1, 6, 6), DType::F32, &Device::Cpu)?;
        let every: Vec<usize> = (0..36).collect();
        let wrong = crate::ar::dependencies(m, &ones, &every)?
            .into_iter()
            .filter(|d| {
                let seen = d.position.min(window);
                let earliest = (seen > 0).then(|| d.position - seen);
                !d.leaks.is_empty() || d.past != seen || d.earliest_past != earliest
            })
            .map(|d| d.position)
            .collect();
        Ok(wrong)
    }

    fn with_mask(mut m: Fvsbn, mask: Vec<f32>) -> Result<Fvsbn> {
        m.mask = Tensor::from_vec(mask, (36, 36), &Device::Cpu)?;
        Ok(m)
    }

    #[test]
    fn ar_n_sees_exactly_its_window() -> Result<()> {
        assert_eq!(outside_window(&small(3)?, 3)?, Vec::<usize>::new());
        // n(n-1)/2 + n for FVSBN; for AR-3, 0 + 1 + 2 + 3 * 33 weights plus 36 biases.
        assert_eq!(small(0)?.effective_parameters().unwrap(), 36 * 35 / 2 + 36);
        assert_eq!(small(3)?.effective_parameters().unwrap(), 3 + 3 * 33 + 36);
        Ok(())
    }

    /// Negative controls: masks that see no pixel at or after their own but not AR-3's window,
    /// each of which the window check must catch.
    #[test]
    fn the_window_check_catches_a_wider_an_unbounded_and_a_shifted_window() -> Result<()> {
        let order = generation_order([1, 6, 6]);
        let wider = visibility(&order, 4);
        let unbounded = visibility(&order, 0);
        // Pixels i-4 .. i-2: three of them, as many as AR-3 sees, but not the latest three.
        let shifted: Vec<f32> = wider
            .iter()
            .zip(visibility(&order, 1))
            .map(|(w, latest)| w - latest)
            .collect();
        for (name, mask) in [
            ("wider", wider),
            ("unbounded", unbounded),
            ("shifted", shifted),
        ] {
            let m = with_mask(small(3)?, mask)?;
            assert!(!outside_window(&m, 3)?.is_empty(), "{name} went unnoticed");
        }
        Ok(())
    }

    #[test]
    fn the_incremental_sampler_equals_the_reference_loop() -> Result<()> {
        assert_sampler_matches_reference(&small(0)?, 5)?;
        assert_sampler_matches_reference(&small(2)?, 5)
    }
}
