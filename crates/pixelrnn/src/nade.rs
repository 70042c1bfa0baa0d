//! NADE, the neural autoregressive distribution estimator (Larochelle & Murray 2011):
//!
//! `h_d = sigmoid(c + W[:, <d] x_<d)`, `p(x_d = 1 | x_<d) = sigmoid(b_d + V_d . h_d)`
//!
//! with one hidden layer of H units whose weights `W` `(H, D)` are shared across the D
//! conditionals. The pre-activations satisfy `a_{d+1} = a_d + W[:, d] x_d`, so all D
//! conditionals cost O(DH) (eq. 4 of the paper): training runs the fused scan of
//! `layers::kernels::sigmoid_scan` (one running `H`-vector per image, and the paper's O(DH) gradient),
//! sampling a running sum. Parameters `W`, `c`, `V`, `b`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use layers::kernels::sigmoid_scan::sigmoid_scan_readout;
use layers::nn::init::torch_uniform;
use layers::ImageShape;
use serde::{Deserialize, Serialize};

use crate::ar::{generation_order, Autoregressive};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub image_size: usize,
    pub channels: usize,
    pub hidden: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            image_size: 28,
            channels: 1,
            hidden: 500,
        }
    }
}

pub struct Nade {
    cfg: Config,
    w: Tensor,
    c: Tensor,
    v: Tensor,
    b: Tensor,
    /// Flat indices in generation order.
    order: Vec<usize>,
    /// For several channels, where generation order differs from the `(c, h, w)` layout: the
    /// index tensors to generation order and back.
    permutation: Option<(Tensor, Tensor)>,
    device: Device,
}

impl Nade {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let shape = [cfg.channels, cfg.image_size, cfg.image_size];
        let d: usize = shape.iter().product();
        let h = cfg.hidden;
        let order = generation_order(shape);
        let permutation = if order.iter().enumerate().all(|(r, &i)| r == i) {
            None
        } else {
            let mut inverse = vec![0u32; d];
            for (r, &i) in order.iter().enumerate() {
                inverse[i] = r as u32;
            }
            let to_gen: Vec<u32> = order.iter().map(|&i| i as u32).collect();
            Some((
                Tensor::new(to_gen, vb.device())?,
                Tensor::new(inverse, vb.device())?,
            ))
        };
        Ok(Self {
            cfg: cfg.clone(),
            w: vb.get_with_hints((h, d), "W", torch_uniform(d))?,
            c: vb.get_with_hints(h, "c", Init::Const(0.0))?,
            v: vb.get_with_hints((d, h), "V", torch_uniform(h))?,
            b: vb.get_with_hints(d, "b", Init::Const(0.0))?,
            order,
            permutation,
            device: vb.device().clone(),
        })
    }
}

impl Autoregressive for Nade {
    fn image_shape(&self) -> ImageShape {
        [self.cfg.channels, self.cfg.image_size, self.cfg.image_size]
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let flat = x.flatten_from(1)?; // (b, d), flat (c, h, w) order
                                       // With several channels, work in generation order and map back at the end.
        let (flat, w, v, b) = match &self.permutation {
            None => (flat, self.w.clone(), self.v.clone(), self.b.clone()),
            Some((to_gen, _)) => (
                flat.index_select(to_gen, 1)?,
                self.w.index_select(to_gen, 1)?,
                self.v.index_select(to_gen, 0)?,
                self.b.index_select(to_gen, 0)?,
            ),
        };
        // a_d = c + sum_{j<d} W[:, j] x_j is an inclusive scan over (1, x_0 .. x_{D-2}) with
        // rows (c, W[:, 0] .. W[:, D-2]): the last pixel conditions nothing.
        let (batch, d) = flat.dims2()?;
        let inputs = Tensor::cat(
            &[
                Tensor::ones((batch, 1), flat.dtype(), flat.device())?,
                flat.narrow(1, 0, d - 1)?,
            ],
            1,
        )?; // (b, d)
        let rows = Tensor::cat(&[self.c.unsqueeze(0)?, w.t()?.narrow(0, 0, d - 1)?], 0)?; // (d, H)
        let logits = sigmoid_scan_readout(&inputs, &rows, &v)?.broadcast_add(&b)?; // (b, d)
        let logits = match &self.permutation {
            None => logits,
            Some((_, from_gen)) => logits.index_select(from_gen, 1)?,
        };
        logits.reshape(x.shape())
    }

    /// The running pre-activation `a += W[:, d] x_d`: O(DH) per image.
    fn sample_from_uniforms(&self, uniforms: &[f32], n: usize) -> Result<Tensor> {
        let d = self.order.len();
        let hdim = self.cfg.hidden;
        let to_vec = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        // W transposed so each pixel's column is contiguous.
        let wt = to_vec(&self.w.t()?.contiguous()?)?; // (d, H)
        let (c, v, b) = (to_vec(&self.c)?, to_vec(&self.v)?, to_vec(&self.b)?);
        let mut x = vec![0f32; n * d];
        let mut a = vec![0f32; hdim];
        let mut h = vec![0f32; hdim];
        for k in 0..n {
            a.copy_from_slice(&c);
            for &i in &self.order {
                for (hj, aj) in h.iter_mut().zip(&a) {
                    *hj = layers::kernels::simd::sigmoid_scalar(*aj);
                }
                let vi = &v[i * hdim..(i + 1) * hdim];
                let logit = b[i] + vi.iter().zip(&h).map(|(p, q)| p * q).sum::<f32>();
                let xi =
                    f32::from(uniforms[k * d + i] < layers::kernels::simd::sigmoid_scalar(logit));
                x[k * d + i] = xi;
                if xi != 0.0 {
                    for (aj, wj) in a.iter_mut().zip(&wt[i * hdim..(i + 1) * hdim]) {
                        *aj += wj;
                    }
                }
            }
        }
        let [ch, hh, ww] = self.image_shape();
        Tensor::from_vec(x, (n, ch, hh, ww), &self.device)
    }
}

crate::autoregressive_model!(Nade);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ar::testing::*;
    use candle_nn::ops::sigmoid;
    use candle_nn::VarMap;

    fn small(channels: usize) -> Result<Nade> {
        let varmap = VarMap::new();
        let vb = layers::nn::init::seeded_var_builder(&varmap, 2, DType::F32, &Device::Cpu);
        Nade::new(
            &Config {
                image_size: 5,
                channels,
                hidden: 7,
            },
            vb,
        )
    }

    #[test]
    fn each_conditional_sees_only_earlier_pixels() -> Result<()> {
        assert_autoregressive(&small(1)?)?;
        assert_autoregressive(&small(3)?)
    }

    #[test]
    fn the_check_catches_an_inclusive_sum() -> Result<()> {
        /// NADE with `a_d` including `x_d` itself: the classic off-by-one.
        struct Leaky(Nade);
        impl Autoregressive for Leaky {
            fn image_shape(&self) -> ImageShape {
                self.0.image_shape()
            }
            fn device(&self) -> &Device {
                self.0.device()
            }
            fn logits(&self, x: &Tensor) -> Result<Tensor> {
                let m = &self.0;
                let flat = x.flatten_from(1)?;
                let contributions = flat.unsqueeze(2)?.broadcast_mul(&m.w.t()?.unsqueeze(0)?)?;
                let a = contributions.cumsum(1)?.broadcast_add(&m.c)?;
                let logits = sigmoid(&a)?
                    .broadcast_mul(&m.v.unsqueeze(0)?)?
                    .sum(2)?
                    .broadcast_add(&m.b)?;
                logits.reshape(x.shape())
            }
        }
        assert_leaks(&Leaky(small(1)?))
    }

    #[test]
    fn the_running_sum_sampler_equals_the_reference_loop() -> Result<()> {
        assert_sampler_matches_reference(&small(1)?, 6)?;
        assert_sampler_matches_reference(&small(3)?, 3)
    }
}
